"""Graph surgery that makes models digestible for compression tools.

:func:`pad_shortcuts_to_conv` replaces parameter-free :class:`PadShortcut`
modules (slicing + channel zero-padding, which dependency-graph pruners such as
torch-pruning cannot trace channel-wise) with an equivalent fixed 1x1
convolution whose weight is the 0/1 channel-shift matrix. Pruners then see a
normal conv in the residual branch and prune its input/output channels
together with the layers it connects.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from compress.errors import UnsupportedModelError
from compress.models.cifar_resnet import PadShortcut

__all__ = ["FixedShortcutConv", "freeze_fixed_shortcuts", "pad_shortcuts_to_conv", "shortcut_as_conv"]

_TOLERANCE = 1e-5
_CHECK_SEED = 0


class FixedShortcutConv(nn.Conv2d):
    """A plain ``nn.Conv2d`` (1x1, no bias) that stands in for a :class:`PadShortcut`.

    Behaves exactly like ``nn.Conv2d``; the subclass only marks the layer so it
    can be found again after pruning (pruners replace pruned weights with new
    ``nn.Parameter`` objects, which makes them trainable again -- call
    :func:`freeze_fixed_shortcuts` afterwards if they should stay fixed).
    """


def freeze_fixed_shortcuts(model: nn.Module) -> int:
    """Set ``requires_grad=False`` on every :class:`FixedShortcutConv` weight; returns how many."""
    count = 0
    for m in model.modules():
        if isinstance(m, FixedShortcutConv):
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
            count += 1
    return count


def shortcut_as_conv(shortcut: PadShortcut, *, device=None, dtype=None) -> FixedShortcutConv:
    """A fixed 1x1 conv computing exactly what ``shortcut`` computes.

    1x1 kernel, stride ``shortcut.stride``, no padding, no bias; weight
    ``(planes_out, planes_in, 1, 1)`` with ``W[pad_front + i, i] = 1`` and zeros
    elsewhere; ``weight.requires_grad`` is False (the map is not trainable).
    """
    conv = FixedShortcutConv(
        shortcut.planes_in,
        shortcut.planes_out,
        kernel_size=1,
        stride=shortcut.stride,
        padding=0,
        bias=False,
        device=device,
        dtype=dtype,
    )
    with torch.no_grad():
        conv.weight.zero_()
        idx = torch.arange(shortcut.planes_in, device=conv.weight.device)
        conv.weight[idx + shortcut.pad_front, idx, 0, 0] = 1.0
    conv.weight.requires_grad_(False)
    return conv


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Temporarily put every submodule in eval mode (BN stats untouched), then restore."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.train(flag)


def _first_param_like(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _set_submodule(root: nn.Module, qualname: str, new: nn.Module) -> None:
    parent_name, _, child = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _infer_example_input(model: nn.Module, device, dtype) -> torch.Tensor | None:
    """A seeded ``(2, C, 32, 32)`` input, C = in_channels of the first conv; None if no conv."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            gen = torch.Generator().manual_seed(_CHECK_SEED)
            return torch.randn(2, m.in_channels, 32, 32, generator=gen).to(device=device, dtype=dtype)
    return None


def _max_abs_diff(a, b) -> float:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return float("inf")
        return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return max((_max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return max((_max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    return 0.0 if a == b else float("inf")


def pad_shortcuts_to_conv(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple | None = None,
) -> nn.Module:
    """Deep copy of ``model`` with every :class:`PadShortcut` replaced by a fixed 1x1 conv.

    The replacement is a :class:`FixedShortcutConv` (an ``nn.Conv2d`` subclass),
    so torch-pruning & co. prune its input/output channels with the layers it
    connects. It adds ``planes_in * planes_out`` parameters per shortcut
    (2,560 for the CIFAR ResNets), all with ``requires_grad=False``.

    Each replacement conv has stride = the shortcut's stride, weight = the 0/1
    channel-shift matrix ``(planes_out, planes_in, 1, 1)``, no bias and
    ``requires_grad=False``. ``model`` itself is not modified; the copy keeps
    ``model``'s train/eval flags, device and dtype.

    Equivalence is verified numerically on seeded random inputs: each
    replacement is checked against its shortcut on a ``(2, planes_in, 9, 9)``
    tensor, and the whole model (in eval mode, no grad) is checked on
    ``example_inputs`` -- by default a seeded ``(2, C, 32, 32)`` tensor with C
    the ``in_channels`` of the first ``nn.Conv2d``; pass ``example_inputs`` for
    models that need another input size (a tensor, or a tuple of positional
    arguments).

    Returns:
        The converted copy (a copy even when there is nothing to replace).

    Raises:
        UnsupportedModelError: a replacement or the converted model differs from
            the original by more than 1e-5 (max abs); ``.layer`` names the module.
    """
    converted = copy.deepcopy(model)
    device, dtype = _first_param_like(model)
    targets = [(name, m) for name, m in converted.named_modules() if isinstance(m, PadShortcut)]
    if not targets:
        return converted

    gen = torch.Generator().manual_seed(_CHECK_SEED)
    for name, shortcut in targets:
        conv = shortcut_as_conv(shortcut, device=device, dtype=dtype)
        conv.train(shortcut.training)
        probe = torch.randn(2, shortcut.planes_in, 9, 9, generator=gen).to(device=device, dtype=dtype)
        with torch.no_grad():
            diff = _max_abs_diff(shortcut(probe), conv(probe))
        if not diff <= _TOLERANCE:
            raise UnsupportedModelError(
                f"cannot replace PadShortcut '{name}' by a 1x1 conv: outputs differ by {diff:.3g} "
                f"(> {_TOLERANCE}); keep this model's shortcuts as they are and use a strategy that "
                "does not need a dependency graph, or report this as a bug",
                layer=name,
            )
        _set_submodule(converted, name, conv)

    if example_inputs is None:
        example = _infer_example_input(model, device, dtype)
        args = None if example is None else (example,)
        user_given = False
    else:
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        user_given = True
    if args is not None:
        with torch.no_grad(), _eval_mode(model), _eval_mode(converted):
            try:
                ref = model(*args)
            except Exception:
                if user_given:
                    raise
                # The default probe does not fit this model (e.g. it needs other
                # input sizes); each replacement was already checked on its own.
                ref = None
            if ref is not None:
                diff = _max_abs_diff(ref, converted(*args))
                if not diff <= _TOLERANCE:
                    raise UnsupportedModelError(
                        f"model outputs changed by {diff:.3g} (> {_TOLERANCE}) after replacing "
                        f"{len(targets)} PadShortcut module(s) by 1x1 convs (first: '{targets[0][0]}'); "
                        "the model probably uses these modules outside their forward() -- "
                        "prune it without dependency-graph surgery",
                        layer=targets[0][0],
                    )
    return converted
