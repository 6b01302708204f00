"""Depth pruning: remove whole residual blocks whose shortcut is the identity.

Channel pruning keeps every layer, and on a CPU at batch 1 each convolution costs a fixed overhead
besides its MACs: measured on ``cpu-1t`` (``benchmarks/results/depth_floor.md``), a least-squares
fit over channel-pruned ResNet-56s and the stock CIFAR ResNets gives about 17 us per convolution
and 14 us per million MACs, so a ResNet-56 pruned to ResNet-32's MACs stays slower than ResNet-32
(1.56 vs 1.34 ms). Removing blocks removes that overhead.

A residual block ``y = act(F(x) + x)`` with an identity shortcut and a ReLU after the sum equals
the identity when its branch ``F`` is zero, because its input is itself the output of a ReLU
(non-negative). Veit, Wilber & Belongie ("Residual networks behave like ensembles of relatively
shallow networks", NeurIPS 2016, §4) show that deleting single such blocks from a trained ResNet
costs little, and that the blocks differ in how much they change their input. We score a block by
that change, ``mean_n ||y_n - x_n||_2 / ||x_n||_2`` over calibration samples (common practice for
block-level pruning; the paper measures the effect of deleting, we measure the change), drop the
lowest-scoring ones, and let knowledge distillation recover the rest. Each stage (the module
holding the blocks) keeps at least one block.

Recognised blocks (anything else is never removed):

* :class:`compress.models.cifar_resnet.BasicBlock` whose ``shortcut`` is ``nn.Identity``;
* torchvision ``BasicBlock`` / ``Bottleneck`` and timm ``BasicBlock`` / ``Bottleneck`` with
  ``downsample=None`` (their shortcut is the identity; in, out and stride match).

A removed block becomes a :class:`DroppedBlock` (an ``nn.Identity``), so that a saved student
records which blocks it lacks (:func:`dropped_block_names`) and :func:`compress.serialization.load_student`
removes the same ones before loading the tensors.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from compress.errors import ModelSpecError
from compress.models.cifar_resnet import BasicBlock as CifarBlock
from compress.models.surgery import _set_submodule

__all__ = ["DroppedBlock", "removable_blocks", "block_scores", "choose_blocks", "drop_blocks",
           "dropped_block_names", "stage_sizes"]


class DroppedBlock(nn.Identity):
    """The place of a residual block removed by :func:`drop_blocks`: ``(N, C, H, W) -> (N, C, H, W)`` unchanged."""


def _is_identity_block(m: nn.Module) -> bool:
    if isinstance(m, CifarBlock):
        return isinstance(m.shortcut, nn.Identity)
    cls = type(m)
    if cls.__name__ in ("BasicBlock", "Bottleneck") and cls.__module__ in ("torchvision.models.resnet",
                                                                          "timm.models.resnet"):
        return getattr(m, "downsample", "absent") is None
    return False


def removable_blocks(model: nn.Module) -> list[str]:
    """``named_modules()`` names of the residual blocks :func:`drop_blocks` may remove (identity
    shortcut, a recognised class), in model order."""
    return [n for n, m in model.named_modules() if n and _is_identity_block(m)]


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


@torch.no_grad()
def block_scores(model: nn.Module, names: Sequence[str], x: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """How much each block changes its input: ``mean_n ||y_n - x_n||_2 / ||x_n||_2`` over the
    samples of ``x`` (``(N, C, H, W)``, moved batch by batch to the model's device), one eval-mode
    forward pass of ``model`` with hooks.

    Raises:
        ModelSpecError: a name is not a module of ``model``, or a block's output shape differs
            from its input's (not an identity-shortcut block).
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ModelSpecError(f"no module named {missing[0]!r} in {type(model).__name__}; pass names from removable_blocks().")
    sums = {n: 0.0 for n in names}
    handles = []

    def hook(name):
        def fn(_m, inputs, output):
            xin = inputs[0]
            if output.shape != xin.shape:
                raise ModelSpecError(f"block {name!r} maps {tuple(xin.shape)} to {tuple(output.shape)}: only blocks "
                                     "with an identity shortcut can be removed.")
            diff = (output - xin).flatten(1).norm(dim=1)
            ref = xin.flatten(1).norm(dim=1).clamp_min(1e-12)
            sums[name] += float((diff / ref).sum())
        return fn

    for n in names:
        handles.append(modules[n].register_forward_hook(hook(n)))
    was_training = model.training
    model.eval()
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    try:
        for i in range(0, len(x), batch_size):
            model(x[i: i + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: sums[n] / max(1, len(x)) for n in names}


def choose_blocks(scores: dict[str, float], share: float, stage_sizes: dict[str, int]) -> list[str]:
    """The ``floor(share * len(scores))`` lowest-scoring blocks (ties: model order), each stage
    (parent module, ``stage_sizes[parent]`` blocks in all) keeping at least one block.

    Raises:
        ValueError: ``share`` outside ``[0, 1)``.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share must be in [0, 1), got {share}")
    want = math.floor(share * len(scores) + 1e-9)
    order = sorted(scores, key=lambda n: (scores[n], list(scores).index(n)))
    left = dict(stage_sizes)
    chosen: list[str] = []
    for n in order:
        if len(chosen) >= want:
            break
        if left[_parent(n)] > 1:
            chosen.append(n)
            left[_parent(n)] -= 1
    return [n for n in scores if n in chosen]


def drop_blocks(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A deep copy of ``model`` with the blocks ``names`` replaced by :class:`DroppedBlock`.

    Raises:
        ModelSpecError: a name is not a removable block of ``model`` (:func:`removable_blocks`).
    """
    allowed = set(removable_blocks(model))
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ModelSpecError(f"{bad[0]!r} is not a residual block with an identity shortcut in "
                             f"{type(model).__name__}; removable: {sorted(allowed)[:6]}{' ...' if len(allowed) > 6 else ''}.")
    out = copy.deepcopy(model)
    for n in names:
        _set_submodule(out, n, DroppedBlock())
    return out


def dropped_block_names(model: nn.Module) -> list[str]:
    """Names of the :class:`DroppedBlock` places in ``model``, in model order."""
    return [n for n, m in model.named_modules() if isinstance(m, DroppedBlock)]


def stage_sizes(model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """Blocks per stage (parent module of each name): every child of the parent that is a
    residual block, removable or not (a stage's downsampling block counts)."""
    out: dict[str, int] = {}
    for parent in {_parent(n) for n in names}:
        holder = model.get_submodule(parent) if parent else model
        out[parent] = sum(1 for c in holder.children() if not isinstance(c, DroppedBlock))
    return out
