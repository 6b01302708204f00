"""gp-prune's channel surgery: Torch-Pruning's uniform pruning with a metric's importance, the
classifier and train-only modules found and kept, the pruned network's widths, and rebuilding a
pruned network from its checkpoint (GECCO'22 §5 "Transfer pruning"; see :mod:`.strategy`)."""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Callable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from compress.errors import CheckpointError, TimeLimitError, UnsupportedModelError
from compress.models import apply_widths, describe_widths
from compress.models.blocks import drop_blocks, dropped_block_names
from compress.strategies._parts import channel_rounding
from compress.strategies._parts.time_limit import time_limit
from compress.strategies._parts import partial_pruning as partial
from compress.strategies.gp_prune.importance import TreeImportance
from compress.evolution.metrics import MetricError, PruningMetric, get_metric

class MagnitudeBaseline(tp.importance.MagnitudeImportance):
    """Baseline ``metric="tp-l1"``: Torch-Pruning's own group L1 magnitude
    (``MagnitudeImportance(p=1)``, mean group reduction and normaliser), i.e. plain L1 pruning
    as users of Torch-Pruning get it, for side-by-side comparisons with the tree metrics."""

    def __init__(self) -> None:
        super().__init__(p=1, group_reduction="mean", normalizer="mean")

    def bind(self, candidate: nn.Module) -> "MagnitudeBaseline":
        return self


def _head_outputs(m: nn.Module) -> int | None:
    """Outputs of a would-be class head (``nn.Linear`` or 1x1 ``Conv2d``), else None."""
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
        return m.out_channels
    return None


#: Names of the modules that run only in train mode (aux heads) while gp-prune traces in train mode.
_TRAIN_ONLY: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("slimforge_train_only",
                                                                              default=frozenset())


def train_only_modules(model: nn.Module, x: torch.Tensor) -> frozenset[str]:
    """The modules that run only in train mode, when ``model`` returns a tuple / list in train mode but a
    tensor in eval mode (torchvision GoogLeNet and Inception v3 add aux logits in training); else an
    empty set. Buffers and the RNG are left as found."""
    ran: dict[str, set[str]] = {"eval": set(), "train": set()}
    mode = ["eval"]
    hooks = [m.register_forward_hook(lambda _m, _i, _o, n=n: ran[mode[0]].add(n))
             for n, m in model.named_modules() if n]
    was = model.training
    try:
        with torch.no_grad():
            eval_out = model.eval()(x)
            mode[0] = "train"
            train_out = channel_rounding.train_mode_forward(model, x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    if not (isinstance(eval_out, torch.Tensor) and isinstance(train_out, (tuple, list))):
        return frozenset()
    return frozenset(ran["train"] - ran["eval"]) or frozenset({"<none>"})


def find_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """The last ``Linear`` (or 1x1 ``Conv2d``) producing ``num_classes`` outputs.

    Raises:
        UnsupportedModelError: no such layer (the pruner would otherwise remove class outputs).
    """
    found = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            found = m
        elif isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.kernel_size == (1, 1):
            found = m
    if found is None:
        raise UnsupportedModelError(
            f"No classifier layer with {num_classes} outputs (nn.Linear or 1x1 Conv2d) found in "
            f"{type(model).__name__}; gp-prune keeps the classifier's outputs intact and needs to find it. "
            "Make the model end in such a layer.",
        )
    return found


def forward_or_explain(model: nn.Module, x: torch.Tensor, expected: tuple[int, ...], what: str) -> torch.Tensor:
    """Run ``model(x)``; on failure raise :class:`UnsupportedModelError` naming the innermost
    module that was executing (found with forward pre/post hooks)."""
    stack: list[str] = []
    deepest: list[str] = []
    last_layer: list[str] = []  # the last Conv2d / Linear that finished: what feeds the failing module
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def pre(_m, _i, name=name):
            stack.append(name)
            deepest[:] = list(stack)

        def post(m, _i, _o, name=name):
            if stack and stack[-1] == name:
                stack.pop()
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                last_layer[:] = [name]

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        where = stack[-1] if stack else (deepest[-1] if deepest else type(model).__name__)
        mod = dict(model.named_modules()).get(where)
        kind = type(mod).__name__ if mod is not None else "op"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsupportedModelError(
            f"{what}: layer {where!r} ({kind}) failed after channel removal: {first}. "
            "It holds channel-dependent state the dependency graph cannot see (e.g. a plain tensor attribute "
            "or a hard-coded channel count). Register such tensors as parameters/buffers"
            + (f", or keep the layer that feeds it whole: config prune.ignored_layers, e.g. --config "
               f"'{{\"prune\": {{\"ignored_layers\": [\"{last_layer[0]}\"]}}}}'"
               if last_layer and last_layer[0] != where else "")
            + ".",
            layer=where,
        ) from exc
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(expected):
        raise UnsupportedModelError(
            f"{what}: the pruned model returns {getattr(out, 'shape', type(out).__name__)}, expected {expected}. "
            "A layer mixes channels in a way the dependency graph cannot follow.",
            layer=type(model).__name__,
        )
    return out


def prune_uniform(
    reference: nn.Module,
    ratio: float,
    importance: "TreeImportance | MagnitudeBaseline",
    example_inputs: torch.Tensor,
    classifier_name: str,
    round_to: int | None = None,
    width_planner: "Callable[[nn.Module, float, list[nn.Module]], dict[nn.Module, int]] | None" = None,
    *,
    time_limit_s: float | None = None,
    keep_whole: Sequence[str] = (),
) -> nn.Module:
    """A deep copy of ``reference`` with ``ratio`` of the channels of every prunable group
    removed (Torch-Pruning ``MetaPruner``, ``global_pruning=False``). ``width_planner(candidate,
    ratio, ignored)`` may return the exact kept width of each group (by root module) instead.
    ``time_limit_s`` bounds the dependency-graph build (``MetaPruner``'s constructor).
    ``keep_whole`` names further modules (``named_modules()`` names) whose output channels stay.

    Raises:
        UnsupportedModelError: Torch-Pruning cannot build the dependency graph or prune.
        TimeLimitError: the dependency-graph build took longer than ``time_limit_s``.
    """
    cand = copy.deepcopy(reference).eval()
    if ratio <= 0.0 and width_planner is None:
        return cand
    modules = dict(cand.named_modules())
    partial_plan = partial.CURRENT_PLAN.get()
    # the classifier, keep_whole and, under train-mode tracing, the class heads and train-only layers
    ignored: list[nn.Module] = []
    for n in _ignored_names(cand, classifier_name, keep_whole):
        if not any(modules[n] is m for m in ignored):
            ignored.append(modules[n])
    if partial_plan is not None:  # groups Torch-Pruning cannot follow (channel shuffles, failing groups): kept whole
        ignored += [modules[n] for n in partial_plan.keep_whole
                    if n in modules and not any(modules[n] is m for m in ignored)]
    forward_fn = channel_rounding.TRACE_FORWARD.get()
    importance.bind(cand)
    try:
        ratio_dict = None
        if width_planner is not None:
            plan = width_planner(cand, ratio, ignored)
            ratio_dict = {}
            for root, keep in plan.items():
                c = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
                ratio_dict[root] = 1.0 - (keep + 0.5) / c  # Torch-Pruning keeps int(C * (1 - r)) = keep
        with time_limit(time_limit_s, "building Torch-Pruning's dependency graph (gp-prune)"):
            pruner = partial.meta_pruner(
                cand,
                example_inputs,
                plan=partial_plan,
                importance=importance,
                pruning_ratio=ratio,
                pruning_ratio_dict=ratio_dict or None,
                global_pruning=False,
                ignored_layers=ignored,
                round_to=round_to,
                forward_fn=forward_fn,
            )
        pruner.step()
    except (MetricError, TimeLimitError, UnsupportedModelError):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsupportedModelError(
            f"Torch-Pruning could not prune {type(reference).__name__}: {type(exc).__name__}: {first}. "
            "Check that forward() uses standard torch ops on channel dimensions.",
            layer=type(reference).__name__,
        ) from exc
    return cand.eval()


def _layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels (conv) / features (linear) of every layer, by module name."""
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _widths_markdown(before: dict[str, int], after: dict[str, int]) -> str:
    rows = ["| layer | teacher | student | kept |", "| --- | --- | --- | --- |"]
    for name, w in after.items():
        b = before.get(name)
        kept = "-" if not b else f"{100 * w / b:.0f}%"
        rows.append(f"| `{name}` | {b if b is not None else '-'} | {w} | {kept} |")
    return "\n".join(rows)


def _ignored_names(model: nn.Module, classifier_name: str, keep_whole: Sequence[str]) -> list[str]:
    """Names of the modules whose output channels gp-prune never prunes: the classifier, the user's
    ``ignored_layers`` and, when the model is traced in train mode (aux heads), every class head and
    the layers that run only in training (used by :func:`prune_uniform` and the allocations)."""
    modules = dict(model.named_modules())
    names = [classifier_name] + [n for n in keep_whole if n != classifier_name]
    if channel_rounding.TRACE_FORWARD.get() is not None:
        k = _head_outputs(modules[classifier_name])
        train_only = _TRAIN_ONLY.get()
        names += [n for n, m in modules.items() if n and n != classifier_name
                  and (_head_outputs(m) == k or (n in train_only and isinstance(m, (nn.Conv2d, nn.Linear))))]
    return names


def _shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _rebuildable(base: nn.Module, pruned: nn.Module) -> bool:
    """True when resizing a copy of ``base`` to ``pruned``'s Conv/Linear/BN widths gives its
    state_dict shapes (Torch-Pruning may also resize layers the width record does not cover)."""
    try:
        like = drop_blocks(base, dropped_block_names(pruned))  # a deep copy, without the blocks pruned lacks
        return _shapes(apply_widths(like, describe_widths(pruned))) == _shapes(pruned)
    except Exception:  # noqa: BLE001 - any failure only means "no pruned checkpoint"
        return False


def _rebuild_pruned(base: nn.Module, state: dict, weights: dict) -> nn.Module:
    """The pruned network of a ``pruned`` checkpoint: ``base`` without the saved dropped blocks,
    resized to the saved widths,
    weights loaded, ``requires_grad`` as saved.

    Raises:
        CheckpointError: the saved widths or tensors do not fit ``base``.
    """
    try:
        net = drop_blocks(base, state.get("dropped_blocks", [])).eval()  # a deep copy (depth pruning: config prune.drop_blocks)
        apply_widths(net, state["widths"])
        net.load_state_dict(weights, strict=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"the gp-prune 'pruned' checkpoint does not fit this model ({str(exc).splitlines()[0]}); delete the "
            "checkpoints folder (or pass resume=False, CLI --no-resume) to start the run over."
        ) from exc
    trainable = state["trainable"]
    for n, p in net.named_parameters():
        p.requires_grad_(bool(trainable.get(n, p.requires_grad)))
    return net


def _metric_from_string(expr: str):
    return PruningMetric.from_string(expr, name="custom")


def resolve_metric(spec: str):
    """A metric from a registered name (``xi_star``, ``l1`` ...), a tree string
    (``"sum_g(abs(WI))"``), or the path of a JSON file written by ``slimforge evolve-metric``
    (``PruningMetric.to_dict()``; JSON only, never pickle).

    Raises:
        MetricError: unknown name, unparsable tree, or unreadable file.
    """
    import json
    from pathlib import Path

    if spec.endswith(".json"):
        p = Path(spec)
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MetricError(f"cannot read metric file {p}: {exc}; pass a best_metric.json from evolve-metric.") from exc
        return PruningMetric.from_dict(data)
    if "(" in spec:
        return _metric_from_string(spec)
    return get_metric(spec)



