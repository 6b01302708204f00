"""Graceful partial pruning: prune the channel groups Torch-Pruning can follow, keep the others whole
and name them (issue #19, part 3).

Source: Torch-Pruning 1.6.1 (Fang et al., "DepGraph", CVPR'23), read in ``torch_pruning/dependency``.
Torch-Pruning traces the model's autograd graph and follows channel indices from layer to layer.
Ops it does not know are taken as element-wise (channel ``i`` in is channel ``i`` out), and a
``view`` / ``reshape`` is taken as a flatten before a ``Linear``. A channel shuffle
(``x.view(B, g, C//g, H, W).transpose(1, 2).reshape(B, C, H, W)``, ``nn.ChannelShuffle``,
``F.channel_shuffle``) breaks both assumptions:

* its reshapes get a wrong flatten mapping, or none; in torchvision's ShuffleNetV2 one of them
  makes ``update_reshape_index_mapping`` divide by zero while the graph is built (the
  ``ZeroDivisionError`` of the issue), so nothing at all can be pruned;
* where nothing raises (a shuffle between two convs, ``nn.ChannelShuffle`` anywhere) the shuffle is
  followed as the identity: the model still runs and has the right shapes, but the next layer
  loses the input columns of *other* channels than the ones removed. Nothing reports it.

What this module does, using Torch-Pruning's own extension points:

* :func:`scan_channel_ops` (one forward) finds the reshapes that split or merge the channel
  dimension (shape rule in :func:`mixes_channels`; not in models that run a ``Linear`` on
  ``(B, N, C)`` tokens, where Torch-Pruning follows every reshape as the identity, which is right
  for their channels-last reshapes) and the channel / pixel shuffle functions. While the
  dependency graph is traced, each is routed through a placeholder module (``_ChannelBarrier``)
  registered as a Torch-Pruning *customized pruner* and put in ``ignored_layers``: every group
  whose channels pass through one is kept whole, the rest prune.
* ``nn.ChannelShuffle`` modules get a real customized pruner (:class:`ChannelShufflePruner`): its
  channel groups make ``MetaPruner`` cut the same column of every shuffle group, and an index
  mapping carries channel ``a*C/g + b`` to ``b*g + a``. That prunes a shuffle between ordinary
  layers exactly. A shuffle whose group would be cut otherwise (a concat or split between it and the
  group's root, as in ShuffleNetV2 units, whose shuffled channels run on into the next unit) is
  kept whole instead, decided before pruning. A functional shuffle in ``forward`` has no module to
  register: it is kept whole by the barriers, as are ``pixel_shuffle`` / ``pixel_unshuffle``.
  Not covered: channel permutations by indexing (``x[:, perm]``), still followed as the identity,
  and reshapes in token-layout models.
* :func:`find_unprunable_groups` is for a model whose pruning still fails (an exception in
  ``step()``, a forward that fails or returns the wrong shape, e.g. a plain tensor attribute sized
  by channels): it prunes the groups by halves on deep copies (group testing; at most
  ``max_probes`` prunes) and adds the groups that fail alone to the plan.

The result of both is a :class:`PartialPlan`; :func:`meta_pruner` and :func:`dependency_graph`
build Torch-Pruning objects that follow it. A caller (gp-prune) scans once, prunes with the plan,
and only when that fails looks for the failing groups::

    plan = scan_channel_ops(model, x, ignored_names, forward_fn=fwd)           # before bisection
    try:
        pruned = prune(plan)                # meta_pruner(cand, x, plan=plan, ...).step(), forward check
    except UnsupportedModelError:
        plan = find_unprunable_groups(model, x, ignored_names, plan=plan, ratio=r, forward_fn=fwd,
                                      expected_shape=expected)
        pruned = prune(plan)
    report["untouched_groups"] = list(plan.untouched)
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch_pruning import ops as tp_ops
from torch_pruning._helpers import _HybridIndex

from compress.errors import TimeLimitError, UnsupportedModelError
from compress.time_limit import time_limit

__all__ = [
    "ChannelMixOp",
    "ChannelShufflePruner",
    "PartialPlan",
    "mixes_channels",
    "scan_channel_ops",
    "find_unprunable_groups",
    "meta_pruner",
    "dependency_graph",
]

log = logging.getLogger(__name__)

ForwardFn = Callable[[nn.Module, torch.Tensor], object]

_RESHAPES = frozenset({
    torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.flatten, torch.flatten,
    torch.Tensor.unflatten, torch.Tensor.view_as, torch.Tensor.reshape_as,
})
_SHUFFLES = frozenset({torch.channel_shuffle, torch.native_channel_shuffle, F.channel_shuffle,
                       torch.pixel_shuffle, torch.pixel_unshuffle})
_RESHAPE_NAMES = frozenset(f.__name__ for f in _RESHAPES)
#: Node types whose index mappings Torch-Pruning rewrites on their output edges (a shuffle fed by one
#: of them cannot carry its own mapping on that edge).
_REMAPPED = frozenset({tp_ops.OPTYPE.SPLIT, tp_ops.OPTYPE.RESHAPE, tp_ops.OPTYPE.SLICE,
                       tp_ops.OPTYPE.UNBIND, tp_ops.OPTYPE.EXPAND})
_MARKERS = "_slimforge_channel_barriers"  # attribute the placeholders live under while a graph is traced


def mixes_channels(in_shape: Sequence[int], out_shape: Sequence[int]) -> bool:
    """True when a reshape from ``in_shape`` to ``out_shape`` splits or merges the channel
    dimension (dim 1) in a way Torch-Pruning's reshape rules do not follow.

    Followed (False): both shapes of rank <= 3 (token layouts, Torch-Pruning's own rules); a rank-1
    side (a parameter vector reshaped to broadcast, ``(C,) -> (1, C, 1, 1)``); ``(B, C, ...) -> (B, C, ...)``
    (spatial dims only); the flatten before a ``Linear``
    ``(B, C, H, W) -> (B, C*H*W)`` and its inverse. Anything else of rank >= 4 is True, e.g. a channel
    shuffle's ``(B, C, H, W) -> (B, g, C/g, H, W)`` or a batch/channel merge ``(B*T, C, H, W)``.
    """
    i, o = tuple(in_shape), tuple(out_shape)
    if len(i) < 2 or len(o) < 2 or (len(i) <= 3 and len(o) <= 3):
        return False
    if i[:2] == o[:2]:
        return False
    if i[0] == o[0] and len(o) == 2 and o[1] == math.prod(i[1:]):
        return False
    if i[0] == o[0] and len(i) == 2 and i[1] == math.prod(o[1:]):
        return False
    return True


@dataclass(frozen=True)
class ChannelMixOp:
    """One call, in forward order, that mixes channels in a way Torch-Pruning cannot follow.

    Attributes:
        index: its rank among such calls in one forward (the same in every deep copy).
        op: the function (``"view"``, ``"reshape"``, ``"channel_shuffle"`` ...).
        module: qualified name of the innermost module running it (``""``: the model's own forward).
        in_shape, out_shape: tensor shapes on the example inputs.
    """

    index: int
    op: str
    module: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def describe(self) -> str:
        where = f"in {self.module!r}" if self.module else "in the model's forward"
        return f"{self.op} {self.in_shape} -> {self.out_shape} {where}"


@dataclass(frozen=True)
class PartialPlan:
    """What to keep whole when pruning a model, and why.

    Attributes:
        barrier_ops: calls that mix channels (:func:`mixes_channels`, shuffles); every group whose
            channels pass through one is kept whole.
        keep_whole: qualified module names to pass as ``ignored_layers``: roots of groups that
            failed when pruned, and ``nn.ChannelShuffle`` modules that cannot be cut column-wise.
            Names, so they resolve in any deep copy of the model.
        untouched: one record per group kept whole, for the report: ``{"group": root module name,
            "layers": [names of the modules whose channels it holds], "reason": one line}``.
        probes: trial prunes :func:`find_unprunable_groups` ran (0 for a plan from a scan).
    """

    barrier_ops: tuple[ChannelMixOp, ...] = ()
    keep_whole: tuple[str, ...] = ()
    untouched: tuple[dict, ...] = ()
    probes: int = 0

    @property
    def partial(self) -> bool:
        """True when some groups are kept whole."""
        return bool(self.untouched)


#: The plan in force while gp-prune prunes (None: scan on demand). gp-prune sets it once per run so
#: that every graph build -- the pruner's, channel rounding's and the allocation's -- follows the same
#: plan without threading it through every call.
CURRENT_PLAN: contextvars.ContextVar["PartialPlan | None"] = contextvars.ContextVar("slimforge_partial_plan",
                                                                                    default=None)


# --- tracing: find channel-mixing calls, route them through placeholders -------------------------


class _Barrier(torch.autograd.Function):
    """Returns ``out`` as a new autograd node whose only input is ``x``: Torch-Pruning sees one
    node (the placeholder module) between ``x`` and ``out``, not the reshapes that made ``out``."""

    @staticmethod
    def forward(ctx, x, out):  # noqa: D102
        return out.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102  (Torch-Pruning never runs backward)
        return None, None


class _ChannelBarrier(nn.Module):
    """Placeholder for one :class:`ChannelMixOp` while a dependency graph is traced."""

    def __init__(self, op: ChannelMixOp) -> None:
        super().__init__()
        self.op = op
        self.in_channels = op.in_shape[1] if len(op.in_shape) > 1 else None
        self.out_channels = op.out_shape[1] if len(op.out_shape) > 1 else None

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return _Barrier.apply(x, out.detach())


class _BarrierPruner(tp.pruner.BasePruningFunc):
    """Customized pruner of a :class:`_ChannelBarrier`: input and output channels are coupled (so one
    ignored placeholder blocks every group through it); it is never asked to prune."""

    TARGET_MODULES = (_ChannelBarrier,)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise UnsupportedModelError(
            f"internal error: Torch-Pruning tried to prune through {layer.op.describe()}, which slimforge keeps "
            "whole. Please report it; meanwhile keep the layer before it whole (config ignored_layers).",
            layer=layer.op.module or None)

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int | None:
        return layer.in_channels

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return 1

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return 1


class ChannelShufflePruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning customized pruner for ``nn.ChannelShuffle(g)`` (register it with
    ``customized_pruners={nn.ChannelShuffle: pruner}``; :func:`meta_pruner` does).

    A shuffle of ``C`` channels sends input channel ``a*C/g + b`` to output ``b*g + a``
    (``a < g``, ``b < C/g``). Removing column ``b`` of every group keeps it a shuffle of ``C - g``
    channels; any other cut would change the permutation. So the pruner reports ``g`` channel
    groups (``MetaPruner`` then cuts the same ``b`` in each of ``g`` blocks of the group's root) and
    :meth:`attach` installs the index mapping on the edge from the shuffle's producer. Indices at
    the shuffle are in output order. A module has no parameters to cut; the pruner checks the cut
    and keeps the channel count.

    Raises (from ``prune_*``): :class:`UnsupportedModelError` for a cut that is not whole columns
    (:func:`scan_channel_ops` keeps such shuffles whole before pruning, so this means a bug).
    """

    TARGET_MODULES = (nn.ChannelShuffle,)

    def __init__(self) -> None:
        super().__init__()
        self.channels: dict[nn.Module, int] = {}  # current input (= output) channels, by module

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        g, cut = layer.groups, set(int(i) for i in idxs)
        columns = {j // g for j in cut}
        if cut != {b * g + a for b in columns for a in range(g)}:
            raise UnsupportedModelError(
                f"a channel shuffle (groups={g}) can only lose whole columns of its groups, but Torch-Pruning "
                f"asked to remove channels {sorted(cut)[:12]}...; keep the layer before it whole "
                "(config ignored_layers).")
        if layer in self.channels:
            self.channels[layer] -= len(cut)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return self.channels.get(layer)

    get_in_channels = get_out_channels

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return layer.groups

    get_out_channel_groups = get_in_channel_groups

    def attach(self, dg: tp.DependencyGraph, keep_whole: Sequence[nn.Module] = ()) -> list[nn.Module]:
        """Install the shuffle's index mapping on the edges between each traced ``nn.ChannelShuffle``
        (not in ``keep_whole``) and its producer. Returns the shuffles it could not attach to (fed by
        a split / reshape / slice, whose edges Torch-Pruning remaps itself, or by the model input):
        keep those whole."""
        skipped, attached = [], False
        for module, node in list(dg.module2node.items()):
            if not isinstance(module, nn.ChannelShuffle) or module in keep_whole:
                continue
            if len(node.inputs) != 1 or node.inputs[0].type in _REMAPPED or module not in self.channels:
                skipped.append(module)
                continue
            producer = node.inputs[0]
            for dep in producer.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = _ShuffleIndexMapping(self, module, to_output=True)
            for dep in node.dependencies:
                if dep.target is producer:
                    dep.index_mapping[0] = _ShuffleIndexMapping(self, module, to_output=False)
            attached = True
        if attached:
            _upstream_roots(dg)
        return skipped


def _upstream_roots(dg: tp.DependencyGraph) -> None:
    """Reorder ``dg.module2node`` producers-first. ``get_all_groups`` roots each group at the first of
    its layers in that order, which Torch-Pruning fills while walking back from the output, so a
    depthwise conv *after* a shuffle would be the root; ``MetaPruner``'s channel grouping (cut the same
    ``b`` in each of ``g`` blocks of the root) matches the shuffle's columns only from a root before it."""
    order: list = []
    seen: set = set()
    for start in list(dg.module2node.values()):
        stack = [(start, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
                continue
            if node in seen:
                continue
            seen.add(node)
            stack.append((node, True))
            stack.extend((n, False) for n in reversed(node.inputs) if n not in seen)
    dg.module2node = {n.module: n for n in order}


class _ShuffleIndexMapping:
    """Torch-Pruning index mapping across a channel shuffle (input ``a*s + b`` <-> output ``b*g + a``,
    ``s = C/g``), using the shuffle's current channel count."""

    def __init__(self, pruner: ChannelShufflePruner, layer: nn.ChannelShuffle, *, to_output: bool) -> None:
        self.pruner, self.layer, self.to_output = pruner, layer, to_output

    def __call__(self, idxs):
        g = self.layer.groups
        s = self.pruner.channels[self.layer] // g
        if self.to_output:
            return [_HybridIndex(idx=(i.idx % s) * g + i.idx // s, root_idx=i.root_idx) for i in idxs]
        return [_HybridIndex(idx=(i.idx % g) * s + i.idx // g, root_idx=i.root_idx) for i in idxs]


class _ChannelOpMode(TorchFunctionMode):
    """During one forward: record channel-mixing calls (and each ``nn.ChannelShuffle``'s input channels);
    with ``barriers``, replace the result of call ``k`` by ``barriers[k](input, result)``."""

    def __init__(self, model: nn.Module, barriers: dict[int, nn.Module] | None = None,
                 shuffle_channels: dict[nn.Module, int] | None = None) -> None:
        super().__init__()
        self.model, self.barriers = model, barriers or {}
        self.shuffle_channels = shuffle_channels if shuffle_channels is not None else {}
        self.found: list[ChannelMixOp] = []
        self._stack: list[str] = []
        self._in_shuffle = 0
        self._hooks: list = []
        self.token_layout = False  # a Linear ran on a (B, N, C) tensor: Torch-Pruning's token regime

    def __enter__(self):
        for name, mod in self.model.named_modules():
            if not name or isinstance(mod, _ChannelBarrier):
                continue
            self._hooks.append(mod.register_forward_pre_hook(self._pre(name, mod)))
            self._hooks.append(mod.register_forward_hook(self._post(name, mod)))
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        return super().__exit__(*exc)

    def _pre(self, name: str, mod: nn.Module):
        def hook(_m, args):
            self._stack.append(name)
            if isinstance(mod, nn.ChannelShuffle):
                self._in_shuffle += 1
                if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 1:
                    self.shuffle_channels[mod] = int(args[0].shape[1])
        return hook

    def _post(self, name: str, mod: nn.Module):
        def hook(_m, _args, out):
            if self._stack and self._stack[-1] == name:
                self._stack.pop()
            if isinstance(mod, nn.Linear) and isinstance(out, torch.Tensor) and out.dim() == 3:
                self.token_layout = True
            if isinstance(mod, nn.ChannelShuffle):
                self._in_shuffle -= 1
        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._in_shuffle or (func not in _RESHAPES and func not in _SHUFFLES):
            return out
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
            return out
        i, o = tuple(x.shape), tuple(out.shape)
        if func in _SHUFFLES or mixes_channels(i, o):
            k = len(self.found)
            name = getattr(func, "__name__", str(func))
            self.found.append(ChannelMixOp(k, name, self._stack[-1] if self._stack else "", i, o))
            if k in self.barriers and x.requires_grad:
                out = self.barriers[k](x, out)
        return out


def _needs_help(model: nn.Module, plan: PartialPlan) -> bool:
    return bool(plan.barrier_ops) or any(isinstance(m, nn.ChannelShuffle) for m in model.modules())


def _forward(model: nn.Module, example_inputs: torch.Tensor, forward_fn: ForwardFn | None):
    return forward_fn(model, example_inputs) if forward_fn is not None else model(example_inputs)


@contextlib.contextmanager
def _instrumented(model: nn.Module, plan: PartialPlan, forward_fn: ForwardFn | None,
                  shuffles: ChannelShufflePruner) -> Iterator[tuple[ForwardFn, list[nn.Module]]]:
    """While inside: the plan's placeholders are submodules of ``model`` (so Torch-Pruning hooks
    them) and the yielded forward function routes the barrier calls through them."""
    markers = {op.index: _ChannelBarrier(op) for op in plan.barrier_ops}
    if markers:
        model.add_module(_MARKERS, nn.ModuleList(markers.values()))

    def traced(m: nn.Module, x: torch.Tensor):
        with _ChannelOpMode(model, markers, shuffles.channels):
            return _forward(m, x, forward_fn)

    try:
        yield traced, list(markers.values())
    finally:
        model._modules.pop(_MARKERS, None)


def _resolve(model: nn.Module, layers: Sequence["str | nn.Module"]) -> list[nn.Module]:
    """Modules of ``model`` for names or modules (a module must belong to ``model``)."""
    modules = dict(model.named_modules())
    ids = {id(m) for m in modules.values()}
    out = []
    for item in layers:
        if isinstance(item, str):
            if item not in modules:
                raise UnsupportedModelError(f"no module named {item!r} in {type(model).__name__}; pass names from "
                                            "model.named_modules().", layer=item)
            out.append(modules[item])
        elif id(item) in ids:
            out.append(item)
        else:
            raise UnsupportedModelError(f"{type(item).__name__} is not a module of {type(model).__name__}; pass "
                                        "its name instead.", layer=None)
    return out


def _names(model: nn.Module, layers: Sequence["str | nn.Module"]) -> list[str]:
    """Qualified names for names or modules of ``model`` (checked as in :func:`_resolve`)."""
    name_of = {id(m): n for n, m in model.named_modules()}
    return [name_of[id(m)] for m in _resolve(model, layers)]


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + ((str(exc).strip().splitlines() or [""])[0])


# --- public builders ----------------------------------------------------------------------------


def meta_pruner(model: nn.Module, example_inputs: torch.Tensor, *, plan: PartialPlan | None = None,
                ignored_layers: Sequence[nn.Module] = (), forward_fn: ForwardFn | None = None,
                pruner_cls: type[tp.pruner.MetaPruner] = tp.pruner.MetaPruner, **kwargs) -> tp.pruner.MetaPruner:
    """``tp.pruner.MetaPruner(model, example_inputs, ...)`` that follows ``plan``: its barrier calls
    are traced through placeholders, its ``keep_whole`` modules are ignored, ``nn.ChannelShuffle``
    gets :class:`ChannelShufflePruner`. ``kwargs`` go to ``MetaPruner`` unchanged (``importance``,
    ``pruning_ratio``, ``pruning_ratio_dict``, ``round_to`` ...); ``pruner_cls`` is ``MetaPruner`` or
    a subclass (``GroupNormPruner`` for sparse learning, with its ``reg``). ``plan=None`` scans ``model``
    first (:func:`scan_channel_ops`, one forward); pass a plan to skip that.

    The placeholders are removed from ``model`` before this returns; call ``pruner.step()`` as usual.
    gp-prune's ``prune_uniform`` uses it in place of ``tp.pruner.MetaPruner``::

        pruner = partial.meta_pruner(cand, example_inputs, plan=plan, importance=importance,
                                     pruning_ratio=ratio, pruning_ratio_dict=ratio_dict or None,
                                     global_pruning=False, ignored_layers=ignored, round_to=round_to,
                                     forward_fn=forward_fn)

    Raises: whatever ``MetaPruner`` raises (the caller translates it), and
    :class:`UnsupportedModelError` for a ``keep_whole`` name ``model`` does not have.
    """
    if plan is None:
        plan = scan_channel_ops(model, example_inputs, ignored_layers, forward_fn=forward_fn)
    keep = _resolve(model, plan.keep_whole)
    if not _needs_help(model, plan):  # nothing Torch-Pruning mis-follows: exactly its own MetaPruner
        return pruner_cls(model, example_inputs, ignored_layers=[*ignored_layers, *keep], forward_fn=forward_fn,
                          **kwargs)
    shuffles = ChannelShufflePruner()
    customized = {nn.ChannelShuffle: shuffles, _ChannelBarrier: _BarrierPruner(),
                  **kwargs.pop("customized_pruners", {})}
    with _instrumented(model, plan, forward_fn, shuffles) as (traced, markers):
        pruner = pruner_cls(model, example_inputs, ignored_layers=[*ignored_layers, *keep, *markers],
                            forward_fn=traced, customized_pruners=customized, **kwargs)
    pruner.ignored_layers.extend(shuffles.attach(pruner.DG, keep))
    return pruner


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor, *, plan: PartialPlan | None = None,
                     forward_fn: ForwardFn | None = None) -> tp.DependencyGraph:
    """``tp.DependencyGraph().build_dependency(model, example_inputs, forward_fn=...)`` that follows
    ``plan`` like :func:`meta_pruner`; the plan's placeholders and ``keep_whole`` modules are in the
    graph's ``IGNORED_LAYERS_IN_TRACING``, so ``dg.get_all_groups(...)`` yields only the groups that
    may be pruned. For channel rounding's ``_prunable_groups``::

        dg = partial.dependency_graph(model, example_inputs, plan=plan, forward_fn=TRACE_FORWARD.get())
    """
    if plan is None:
        plan = scan_channel_ops(model, example_inputs, forward_fn=forward_fn)
    keep = _resolve(model, plan.keep_whole)
    if not _needs_help(model, plan):
        dg = tp.DependencyGraph().build_dependency(model, example_inputs, forward_fn=forward_fn)
        dg.IGNORED_LAYERS_IN_TRACING.extend(keep)
        return dg
    shuffles = ChannelShufflePruner()
    with _instrumented(model, plan, forward_fn, shuffles) as (traced, markers):
        dg = tp.DependencyGraph().build_dependency(
            model, example_inputs, forward_fn=traced, verbose=False,
            customized_pruners={nn.ChannelShuffle: shuffles, _ChannelBarrier: _BarrierPruner()})
    skipped = shuffles.attach(dg, keep)
    # only after the build: modules in this list are also left out of the trace itself
    dg.IGNORED_LAYERS_IN_TRACING.extend([*markers, *keep, *skipped])
    return dg


def _layers_of(dg: tp.DependencyGraph, group) -> list[str]:
    names: list[str] = []
    for dep, _ in group:
        name = dg._module2name.get(dep.target.module)
        if name and not name.startswith(_MARKERS) and name not in names:
            names.append(name)
    return names


# --- scan -----------------------------------------------------------------------------------------


def scan_channel_ops(model: nn.Module, example_inputs: torch.Tensor, ignored: Sequence["str | nn.Module"] = (),
                     *, forward_fn: ForwardFn | None = None, time_limit_s: float | None = None,
                     root_module_types: Sequence[type] = (nn.Conv2d, nn.Linear)) -> PartialPlan:
    """Find what Torch-Pruning cannot prune through, before pruning.

    One forward of ``model`` on ``example_inputs`` (eval mode, or ``forward_fn(model, x)`` as the
    tracer will run it) records the channel-mixing calls. When there are none and no
    ``nn.ChannelShuffle``, that is all (an empty plan). Otherwise one dependency graph is built on a
    deep copy: shuffles that cannot be cut column-wise go to ``keep_whole``, and every group held by
    a barrier or such a shuffle gets an ``untouched`` record (groups already kept by ``ignored``,
    names or modules of ``model``, are not reported). ``model`` is left as it was.

    If the graph cannot be built even with the placeholders, the plan is empty (Torch-Pruning's own
    error then comes from the prune itself, as before) and a warning is logged.

    Raises:
        TimeLimitError: the forward or the graph build took longer than ``time_limit_s``.
    """
    was = model.training
    mode = _ChannelOpMode(model)
    try:
        with time_limit(time_limit_s, "scanning the model for channel shuffles (gp-prune)"), torch.no_grad(), mode:
            model.eval()
            _forward(model, example_inputs, forward_fn)
    finally:
        model.train(was)
    found = mode.found
    if mode.token_layout:  # Torch-Pruning follows every reshape as the identity here (its "_2d_4d" switch),
        # which is right for channels-last token reshapes (Swin, LeViT, EdgeNeXt); only shuffles stay barriers
        found = [op for op in found if op.op not in _RESHAPE_NAMES]
    has_shuffle = any(isinstance(m, nn.ChannelShuffle) for m in model.modules())
    if not found and not has_shuffle:
        return PartialPlan()
    plan = PartialPlan(barrier_ops=tuple(found))
    ignored_names = _names(model, ignored)
    try:
        with time_limit(time_limit_s, "building Torch-Pruning's dependency graph (partial pruning scan)"):
            return _settle(copy.deepcopy(model), example_inputs, plan, ignored_names, forward_fn,
                           tuple(root_module_types))
    except (TimeLimitError, UnsupportedModelError):
        raise
    except Exception as exc:  # noqa: BLE001 - the prune will meet (and translate) the same failure
        log.warning("partial pruning: the dependency graph cannot be built even around %d channel-mixing call(s) "
                    "(%s); pruning goes on without them.", len(found), _first_line(exc))
        return PartialPlan()


def _settle(cand: nn.Module, example_inputs: torch.Tensor, plan: PartialPlan, ignored_names: list[str],
            forward_fn: ForwardFn | None, root_types: tuple[type, ...]) -> PartialPlan:
    """Decide which ``nn.ChannelShuffle`` modules stay whole, and write the untouched records."""
    modules = dict(cand.named_modules())
    name_of = {m: n for n, m in modules.items()}
    base = [modules[n] for n in ignored_names]
    reasons: dict[str, str] = {}  # keep_whole shuffle name -> why
    for _ in range(sum(isinstance(m, nn.ChannelShuffle) for m in modules.values()) + 1):
        keep = [modules[n] for n in reasons]
        shuffles = ChannelShufflePruner()
        with _instrumented(cand, plan, forward_fn, shuffles) as (traced, markers):
            pruner = tp.pruner.MetaPruner(
                cand, example_inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                ignored_layers=[*base, *keep, *markers], forward_fn=traced, root_module_types=list(root_types),
                customized_pruners={nn.ChannelShuffle: shuffles, _ChannelBarrier: _BarrierPruner()})
        for m in shuffles.attach(pruner.DG, keep):
            reasons[name_of[m]] = (f"channel shuffle {name_of[m]!r} is fed by a split, reshape or slice; Torch-Pruning "
                                   "cannot carry the shuffle's channel order across it")
        new = _uncuttable_shuffles(pruner, name_of, reasons)
        if not new:
            break
        reasons.update(new)
    dg = pruner.DG
    records = []
    for group in dg.get_all_groups(ignored_layers=base, root_module_types=list(root_types)):
        why = []
        for dep, _ in group:
            m = dep.target.module
            if isinstance(m, _ChannelBarrier):
                why.append(f"channels pass through {m.op.describe()}, which mixes channels in a way Torch-Pruning "
                           "cannot follow (a channel shuffle?)")
            elif name_of.get(m) in reasons:
                why.append(reasons[name_of[m]])
        if why:
            root = group[0].dep.target.module
            records.append({"group": name_of.get(root, dg._module2name.get(root, "?")),
                            "layers": _layers_of(dg, group), "reason": why[0]})
    if records:
        log.info("partial pruning: %d group(s) kept whole around %d channel-mixing call(s) and %d channel shuffle "
                 "module(s)", len(records), len(plan.barrier_ops), len(reasons))
    return replace(plan, keep_whole=tuple(reasons), untouched=tuple(records))


def _uncuttable_shuffles(pruner: tp.pruner.MetaPruner, name_of: dict, done: dict[str, str]) -> dict[str, str]:
    """Shuffles in a group that ``MetaPruner`` would cut in other than whole columns (checked for up
    to 16 columns of the root per group, each through Torch-Pruning's own group expansion)."""
    dg, new = pruner.DG, {}
    for group in dg.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        shuffles = [dep.target.module for dep, _ in group
                    if isinstance(dep.target.module, nn.ChannelShuffle) and name_of.get(dep.target.module) not in done]
        if not shuffles:
            continue
        root, fn = group[0].dep.target.module, group[0].dep.handler
        c = dg.get_out_channels(root)
        ch = pruner._get_channel_groups(group)  # MetaPruner's own channel grouping for this group
        size = c // ch
        for b in sorted({round(k * (size - 1) / 15) for k in range(16)}) if size > 1 else [0]:
            probe = dg.get_pruning_group(root, fn, [b + k * size for k in range(ch)])
            for dep, idxs in probe:
                m = dep.target.module
                if m in shuffles and name_of[m] not in new:
                    g, cut = m.groups, set(idxs)
                    if cut != {j // g * g + a for j in cut for a in range(g)}:
                        new[name_of[m]] = (f"channel shuffle {name_of[m]!r} (groups={g}) would lose parts of its "
                                           f"columns when the group of {name_of.get(root, '?')!r} is cut")
    return new


# --- find the groups that fail -------------------------------------------------------------------


def find_unprunable_groups(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ignored: Sequence["str | nn.Module"] = (),
    *,
    plan: PartialPlan | None = None,
    ratio: float = 0.5,
    round_to: int | None = None,
    forward_fn: ForwardFn | None = None,
    expected_shape: Sequence[int] | None = None,
    time_limit_s: float | None = None,
    max_probes: int = 64,
    root_module_types: Sequence[type] = (nn.Conv2d, nn.Linear),
) -> PartialPlan:
    """Find the groups of ``model`` that cannot be pruned, for a model whose full prune failed.

    A probe prunes a set of groups (``MetaPruner``, magnitude importance, ``ratio`` of each group's
    channels, ``round_to``) on a deep copy, every other group ignored, then runs the pruned copy on
    ``example_inputs``: it fails on an exception in the graph build or ``step()``, or a forward that
    fails or does not return ``expected_shape`` (default: the unpruned model's output shape). All
    groups are probed together first (a model with no bad group costs that one probe); a failing set
    is split in halves until the failing groups are found alone, then what remains is probed once
    more. Groups are named by their root module (``ignored`` names or modules of ``model`` and
    ``plan``'s ``keep_whole`` are left out; ``plan=None`` scans first). Each build is bounded by
    ``time_limit_s``.

    Returns ``plan`` plus the failing groups: their roots in ``keep_whole``, a record each in
    ``untouched`` (``reason``: the first line of the error), ``probes`` increased. Logs the count.

    Raises:
        UnsupportedModelError: no probe can build the graph, the failures cannot be isolated within
            ``max_probes`` probes, or nothing is left to prune. The message says what to do.
        TimeLimitError: a graph build took longer than ``time_limit_s``.
    """
    if plan is None:
        plan = scan_channel_ops(model, example_inputs, ignored, forward_fn=forward_fn, time_limit_s=time_limit_s)
    ignored_names = _names(model, ignored)
    root_types = list(root_module_types)
    if expected_shape is None:
        was = model.training
        with torch.no_grad():
            expected_shape = tuple(model.eval()(example_inputs).shape)
        model.train(was)
    expected_shape = tuple(expected_shape)

    cand = copy.deepcopy(model)
    try:
        with time_limit(time_limit_s, "building Torch-Pruning's dependency graph (partial pruning)"):
            dg = dependency_graph(cand, example_inputs, plan=plan, forward_fn=forward_fn)
    except (TimeLimitError, UnsupportedModelError):
        raise
    except Exception as exc:
        raise UnsupportedModelError(
            f"Torch-Pruning cannot trace {type(model).__name__} ({_first_line(exc)}), so no part of it can be pruned. "
            "Check that forward() uses standard torch ops on channel dimensions.", layer=type(model).__name__) from exc
    base = _resolve(cand, ignored_names)
    groups: dict[str, list[str]] = {}
    for group in dg.get_all_groups(ignored_layers=base, root_module_types=root_types):
        root = dg._module2name.get(group[0].dep.target.module)
        if root is not None:
            groups[root] = _layers_of(dg, group)
    del cand, dg

    probes = 0

    def probe(roots: Sequence[str]) -> str | None:
        """None when pruning exactly ``roots`` works, else the reason."""
        nonlocal probes
        if probes >= max_probes:
            raise UnsupportedModelError(
                f"gp-prune could not isolate the channel groups of {type(model).__name__} that fail to prune within "
                f"{max_probes} trial prunes. Keep the failing layers whole with config ignored_layers.",
                layer=type(model).__name__)
        probes += 1
        trial = copy.deepcopy(model).eval()
        keep = set(roots)
        skip = ignored_names + [n for n in groups if n not in keep]
        try:
            with time_limit(time_limit_s, "building Torch-Pruning's dependency graph (partial pruning probe)"):
                pruner = meta_pruner(trial, example_inputs, plan=plan, ignored_layers=_resolve(trial, skip),
                                     importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                                     global_pruning=False, round_to=round_to, root_module_types=root_types,
                                     forward_fn=forward_fn)
            pruner.step()
        except TimeLimitError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the trial prune marks the set bad
            return _first_line(exc)
        try:
            with torch.no_grad():
                out = trial(example_inputs)
        except Exception as exc:  # noqa: BLE001
            return f"the pruned model's forward fails: {_first_line(exc)}"
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected_shape:
            return (f"the pruned model returns {tuple(getattr(out, 'shape', ())) or type(out).__name__}, "
                    f"expected {expected_shape}")
        return None

    bad: dict[str, str] = {}

    def search(roots: list[str], reason: str) -> None:
        if len(roots) == 1:
            bad[roots[0]] = reason
            return
        half = len(roots) // 2
        failed = False
        for part in (roots[:half], roots[half:]):
            why = probe(part)
            if why is not None:
                failed = True
                search(part, why)
        if not failed:  # each half prunes alone, not together: keep the second half whole
            for r in roots[half:]:
                bad[r] = f"prunes alone but not together with {roots[0]!r} ...: {reason}"

    remaining = list(groups)
    why = probe(remaining) if remaining else None
    while why is not None:
        search(remaining, why)
        remaining = [r for r in remaining if r not in bad]
        why = probe(remaining) if remaining else None
    if bad and not remaining:
        raise UnsupportedModelError(
            f"none of the {len(groups)} channel groups of {type(model).__name__} can be pruned (first: "
            f"{next(iter(bad))!r}: {next(iter(bad.values()))}). Check that forward() uses standard torch ops on "
            "channel dimensions.",
            layer=next(iter(bad)))
    log.info("partial pruning: %d trial prune(s) over %d group(s) of %s; %d kept whole", probes, len(groups),
             type(model).__name__, len(bad))
    records = tuple({"group": r, "layers": groups[r], "reason": bad[r]} for r in groups if r in bad)
    return replace(plan, keep_whole=plan.keep_whole + tuple(r for r in groups if r in bad),
                   untouched=plan.untouched + records, probes=plan.probes + probes)
