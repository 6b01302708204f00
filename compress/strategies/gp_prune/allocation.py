"""How many channels each Torch-Pruning group keeps: ``uniform``, ``global`` or ``latency``.

* ``uniform`` -- the GECCO'22 paper (§5): the same ratio for every group
  (:func:`compress.strategies.gp_prune.modes.prune_uniform_to_budget`); not in this module.
* ``global`` -- one ranking across groups (Torch-Pruning's ``global_pruning``; DepGraph, Fang et
  al. CVPR 2023, §3.3): the ``r * N`` channels of lowest normalised importance are removed
  wherever they are, and no group loses more than ``max_group_ratio`` of its channels.
* ``latency`` -- HALP (Shen et al., "Structural Pruning via Latency-Saliency Knapsack",
  NeurIPS 2022, §3.2-3.3): each group's latency as a function of its kept width is read from a
  table measured on the target, and the kept widths of all groups are chosen together to keep
  the most importance under a latency limit -- a multiple-choice knapsack
  (:func:`solve_knapsack`), solved exactly by dynamic programming on a discretised latency axis.

Shared by ``global`` and ``latency``, and where the paper leaves us a choice:

* **Groups and scores** are Torch-Pruning's own: a ``MetaPruner`` built on a copy of the model with
  gp-prune's ignored layers lists the groups (``DG.get_all_groups``), the metric scores each group
  (the same call ``MetaPruner`` makes), and a group with channel groups (grouped convs) is scored
  per channel position averaged over its channel groups and keeps a multiple of them, exactly as
  ``MetaPruner`` prunes it. Attention groups are left whole.
* **Normalisation** (HALP normalises saliency per layer group; we follow Torch-Pruning's ``"mean"``
  normaliser): a group's scores are shifted to be non-negative when some are negative, then
  divided by their mean, so that importance is comparable across groups whatever the metric's
  scale; then multiplied by the number of layers whose outputs the group prunes, since HALP's
  saliency of a group channel is the sum over its layers (a residual stream's channel, cut from
  every block of a stage, is worth that many single-layer channels).
* **Latency of a group** (HALP §3.2, "the latency of a layer as a function of its output channels,
  input channels fixed at the current count"): every Conv2d / Linear is charged to one group --
  the group of its output channels; a depthwise conv to the group it belongs to; a layer whose
  outputs are never pruned (the classifier, ignored layers) to the largest group feeding its
  input. Each charge is a one-layer onnxruntime graph timed on the target
  (:class:`~compress.profiling.latency_model.LayerLatencyTable`, cached on disk) at each
  candidate width, with the layer's other side at a reference width. The reference is first the
  full width; a second pass re-times every charge with its input at the widths the knapsack chose
  for the first guess of the budget (HALP updates the input counts after every pruning step;
  we do it once). Element-wise ops, pooling and re-layouts are not charged: the strategy corrects
  for them by bisecting the knapsack's limit against real measurement.
* **Candidate widths**: at most :data:`GRID_POINTS` per group, multiples of a step that is a power
  of two (at least 8 for groups of 64 channels or more, onnxruntime's NCHWc channel block), plus
  the full width; never below ``ceil(C * (1 - max_group_ratio))``. The table is therefore a
  measured channel rounding as well: a width that misses the kernels' blocks costs what it
  measures.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from compress.profiling.latency_model import ConvConfig, LayerLatencyTable, LinearConfig, default_cache_dir, layer_configs
from compress.strategies._parts.time_limit import time_limit
from compress.strategies._parts import partial_pruning as partial

__all__ = [
    "ALLOCATIONS",
    "ALLOCATION_TIMING",
    "GRID_POINTS",
    "GroupInfo",
    "LatencyCharges",
    "analyse_groups",
    "global_widths",
    "latency_charges",
    "latency_table",
    "resolve_allocation",
    "solve_knapsack",
    "width_grid",
]

ALLOCATIONS = ("auto", "uniform", "global", "latency")
"""``allocation`` values; ``"auto"`` is ``"latency"`` when the budget limits latency, else ``"uniform"``."""

GRID_POINTS = 16
"""Candidate kept widths per group (plus the full width) in the latency table."""

ALLOCATION_TIMING = {"rounds": 3, "repeats": 5, "warmup": 2}
"""How the allocation's table times layers: it needs many widths of many layers, and its errors are
corrected by the bisection against real measurement, so each is timed more briefly than channel
rounding's near-ties (its own cache file, so that the two never share figures)."""

KNAPSACK_RESOLUTION = 4000
"""Bins of the knapsack's latency axis (the limit minus the minimum widths' latency)."""


@dataclass
class GroupInfo:
    """One prunable Torch-Pruning group of the reference model.

    Attributes:
        name: the root module's name (``model.named_modules()``).
        channels: C, the group's channels.
        unit: the group's channel groups (grouped convs); kept widths are multiples of it.
        scores: ``(C / unit,)`` importance per channel position, sorted descending, never
            negative: normalised to mean 1, times the number of layers whose output channels
            the group prunes (HALP's group saliency is a sum over the group's layers).
        producers: names of the Conv2d / Linear layers whose output channels the group prunes.
        consumers: ``{name: channels of its input in this group}`` for layers whose input it prunes.
        depthwise: names of depthwise convs inside the group.
        min_width: the narrowest width allowed (``max_group_ratio``), a multiple of ``unit``.
    """

    name: str
    channels: int
    unit: int
    scores: np.ndarray
    producers: list[str] = field(default_factory=list)
    consumers: dict[str, int] = field(default_factory=dict)
    depthwise: list[str] = field(default_factory=list)
    min_width: int = 1

    def value(self, width: int) -> float:
        """Normalised importance kept at ``width`` channels (the top ``width / unit`` positions)."""
        m = width // self.unit
        return float(self.unit * self.scores[:m].sum())


def _normalise(scores: torch.Tensor) -> np.ndarray:
    s = scores.detach().double().cpu().numpy()
    s = np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)
    if s.min() < 0:
        s = s - s.min()
    mean = s.mean()
    s = s / mean if mean > 0 else np.ones_like(s)
    return np.sort(s)[::-1]


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def analyse_groups(model: nn.Module, example_inputs: torch.Tensor, importance, ignored_names: Sequence[str], *,
                   max_group_ratio: float, forward_fn: Callable | None = None,
                   time_limit_s: float | None = None) -> list[GroupInfo]:
    """The prunable groups of ``model`` as Torch-Pruning's ``MetaPruner`` sees them, each scored by
    ``importance`` (bound to a deep copy of ``model`` with :meth:`bind` when it has one).

    Args:
        model: the reference network (not modified).
        example_inputs: ``(B, C, H, W)`` tracing input.
        importance: a Torch-Pruning importance (``importance(group) -> (C,) tensor``).
        ignored_names: modules whose output channels are never pruned (the classifier first).
        max_group_ratio: largest share of a group's channels that may be removed, in (0, 1).
        forward_fn, time_limit_s: as for ``MetaPruner`` / :func:`time_limit` (graph build).

    Raises:
        TimeLimitError: the dependency-graph build took longer than ``time_limit_s``.
    """
    ref = copy.deepcopy(model).eval()
    modules = dict(ref.named_modules())
    names = {m: n for n, m in modules.items()}
    ignored = [modules[n] for n in ignored_names if n in modules]
    if hasattr(importance, "bind"):
        importance.bind(ref)
    with time_limit(time_limit_s, "building Torch-Pruning's dependency graph (channel allocation)"):
        pruner = partial.meta_pruner(ref, example_inputs, plan=partial.CURRENT_PLAN.get(), importance=importance,
                                     pruning_ratio=0.0, ignored_layers=ignored, forward_fn=forward_fn)
    out: list[GroupInfo] = []
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        if pruner._is_atten_group(group)[0]:
            continue
        root = group[0].dep.target.module
        c = pruner.DG.get_out_channels(root)
        if not c or c < 2:
            continue
        unit = max(1, int(pruner._get_channel_groups(group)))
        if c % unit:
            continue
        with torch.no_grad():
            imp = importance(group)
        if imp is None or imp.numel() != c:
            continue
        info = GroupInfo(names.get(root, "?"), int(c), unit, _normalise(imp.view(unit, -1).mean(0)))
        for dep, idxs in group:
            m, fn = dep.target.module, dep.handler
            n = names.get(m)
            if n is None:
                continue
            if _is_depthwise(m):
                if n not in info.depthwise:
                    info.depthwise.append(n)
            elif fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
                if n not in info.producers:
                    info.producers.append(n)
            elif fn in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                info.consumers[n] = info.consumers.get(n, 0) + len(idxs)
        # HALP sums a channel's saliency over the layers of its group: a channel that feeds a residual
        # stream through ten layers is worth ten of one layer's (the metric's score is a mean over them)
        info.scores = info.scores * max(1, len(info.producers) + len(info.depthwise))
        lowest = math.ceil(c * (1.0 - max_group_ratio) / unit) * unit
        info.min_width = int(min(c, max(unit, lowest)))
        out.append(info)
    return out


def width_grid(channels: int, unit: int, min_width: int, points: int = GRID_POINTS) -> list[int]:
    """Candidate kept widths of a group, ascending, ending at ``channels``: multiples of a step
    ``s`` (a power of two times ``unit``, at least ``8 * unit`` when ``channels >= 64 * unit``,
    so that the widths fit onnxruntime's NCHWc blocks) with at most ``points`` of them, plus
    ``min_width`` and ``channels``."""
    n = channels // unit
    step = 1
    while n / step > points:
        step *= 2
    if n >= 64:
        step = max(step, 8)
    low = -(-min_width // (step * unit)) * step * unit  # min_width rounded up to the grid
    widths = {channels, min(low, channels)}
    widths.update(w * unit for w in range(step, n + 1, step) if w * unit >= min_width)
    return sorted(widths)


@dataclass
class LatencyCharges:
    """The latency table of a set of groups.

    Attributes:
        widths: per group, its candidate widths (ascending).
        ms: per group, ``(len(widths),)`` predicted ms of the layers charged to it.
        fixed_ms: ms of the layers charged to no group (timed at their reference widths).
        charged: per group, the names of the layers charged to it.
    """

    widths: list[list[int]]
    ms: list[np.ndarray]
    fixed_ms: float
    charged: list[list[str]]

    def predict(self, choice: Sequence[int]) -> float:
        """Predicted ms of the network with group ``g`` at ``widths[g][choice[g]]``."""
        return self.fixed_ms + float(sum(self.ms[g][i] for g, i in enumerate(choice)))


def latency_table(target, cache_dir=None) -> LayerLatencyTable:
    """The allocation's own per-layer table on ``target`` (see :data:`ALLOCATION_TIMING`)."""
    base = cache_dir or default_cache_dir()
    return LayerLatencyTable(target, cache_dir=f"{base}/allocation", **ALLOCATION_TIMING)


def latency_charges(model: nn.Module, example_inputs: torch.Tensor, groups: Sequence[GroupInfo],
                    table: LayerLatencyTable, reference: Mapping[str, int] | None = None) -> LatencyCharges:
    """Time every group's charged layers at every candidate width (see the module docstring).

    Args:
        model: the reference network (read only).
        example_inputs: ``(B, C, H, W)``.
        groups: from :func:`analyse_groups` on ``model``.
        table: where layers are timed (cached).
        reference: kept width per group name that the *other* side of each layer is timed at
            (None: every group at full width).

    Raises:
        ProfilingError: onnxruntime cannot time a layer.
    """
    reference = dict(reference or {})
    configs = dict(layer_configs(model, example_inputs))
    modules = dict(model.named_modules())
    kept = {g.name: reference.get(g.name, g.channels) for g in groups}
    owner: dict[str, int] = {}
    feeds: dict[str, list[tuple[int, int]]] = {}
    for gi, g in enumerate(groups):
        for n in g.producers + g.depthwise:
            owner.setdefault(n, gi)
        for n, cnt in g.consumers.items():
            feeds.setdefault(n, []).append((gi, cnt))

    def cin_at(name: str, cin_full: int, override: tuple[int, int] | None = None) -> int:
        cin = cin_full
        for gi, cnt in feeds.get(name, []):
            g = groups[gi]
            w = override[1] if override is not None and override[0] == gi else kept[g.name]
            cin -= cnt - round(cnt * w / g.channels)
        return max(1, cin)

    def config(name: str, cout: int | None = None, override: tuple[int, int] | None = None):
        cfg = configs.get(name)
        m = modules.get(name)
        if cfg is None or m is None:
            return None
        if isinstance(cfg, ConvConfig):
            if _is_depthwise(m):
                w = cout if cout is not None else cfg.cout
                return ConvConfig(w, w, cfg.k, cfg.stride, cfg.padding, w, cfg.h, cfg.w)
            cin = cin_at(name, cfg.cin, override)
            cout = cfg.cout if cout is None else cout
            if cfg.groups > 1:  # grouped conv: the number of groups stays, group widths shrink
                cin = max(cfg.groups, cin // cfg.groups * cfg.groups)
                cout = max(cfg.groups, cout // cfg.groups * cfg.groups)
            return ConvConfig(cin, cout, cfg.k, cfg.stride, cfg.padding, cfg.groups, cfg.h, cfg.w)
        return LinearConfig(cin_at(name, cfg.fin, override), cfg.fout if cout is None else cout, cfg.rows)

    charged: list[list[tuple[str, str]]] = [[] for _ in groups]  # (name, "out" | "in")
    fixed: list[str] = []
    for name in configs:
        if name in owner:
            charged[owner[name]].append((name, "out"))
        elif name in feeds:
            gi = max(feeds[name], key=lambda t: t[1])[0]
            charged[gi].append((name, "in"))
        else:
            fixed.append(name)
    widths = [width_grid(g.channels, g.unit, g.min_width) for g in groups]
    plan: list[list[list]] = []
    for gi, g in enumerate(groups):
        rows = []
        for w in widths[gi]:
            cfgs = []
            for name, side in charged[gi]:
                cfg = config(name, cout=w) if side == "out" else config(name, override=(gi, w))
                if cfg is not None:
                    cfgs.append(cfg)
            rows.append(cfgs)
        plan.append(rows)
    fixed_cfgs = [c for c in (config(n) for n in fixed) if c is not None]
    table.measure_layers([c for rows in plan for cfgs in rows for c in cfgs] + fixed_cfgs)
    table.save()
    ms = [monotone_charges(np.array([sum(table.latency(c) for c in cfgs) for cfgs in rows])) for rows in plan]
    return LatencyCharges(widths=widths, ms=ms, fixed_ms=float(sum(table.latency(c) for c in fixed_cfgs)),
                          charged=[[n for n, _ in ch] for ch in charged])


def monotone_charges(ms: np.ndarray) -> np.ndarray:
    """A group's measured ms per width (ascending widths), made strictly increasing in width.

    Each width is charged the best of itself and every wider width (``min(ms[i:])``): measured
    channel rounding, which runs after the allocation, snaps a width to a faster nearby one, so
    a width is never worth more than a wider width that is faster. Then a tie-break of
    ``1e-9 * i`` ms makes the narrowest width the one cheapest option, so the knapsack's far end
    (the limit at the sum of minima) is the narrowest allocation.

    Why (measured, tests/unit/test_allocation.py): on a network whose layers are dominated by
    per-op overhead the raw table is flat and noisy, the cheapest option of a group was often a
    wide width, and the "narrowest" allocation kept 79% of the MACs, so ``macs=0.6x`` fell back
    to uniform pruning depending on the timings.

    Args:
        ms: ``(n_widths,)`` ms, widths ascending.

    Returns:
        ``(n_widths,)`` ms, strictly increasing, never above ``ms``'s running minimum from the
        wide end plus ``1e-9 * (n_widths - 1)``.
    """
    ms = np.asarray(ms, dtype=float)
    best = np.minimum.accumulate(ms[::-1])[::-1]
    return best + 1e-9 * np.arange(len(best))


def solve_knapsack(values: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], limit: float, *,
                   resolution: int = KNAPSACK_RESOLUTION) -> list[int] | None:
    """Multiple-choice knapsack: pick one option ``i_g`` per group to maximise
    ``sum_g values[g][i_g]`` subject to ``sum_g costs[g][i_g] <= limit``.

    Exact dynamic programming over a discretised cost axis: each group's cheapest option is taken
    as a base, and the extra cost of every option is rounded *up* to a multiple of
    ``(limit - base) / resolution``, so the chosen options never exceed ``limit`` and the result is
    the exact optimum whenever the costs are multiples of that bin (ties go to the cheaper
    option). ``O(groups * options * resolution)`` time.

    Args:
        values: per group, the value of each option (any real numbers).
        costs: per group, the cost of each option (>= 0, same length as ``values[g]``).
        limit: the largest total cost.
        resolution: bins of the cost axis above the base.

    Returns:
        The chosen option index per group, or None when even the cheapest options exceed ``limit``.
    """
    vals = [np.asarray(v, dtype=float) for v in values]
    cst = [np.asarray(c, dtype=float) for c in costs]
    base = float(sum(c.min() for c in cst))
    if base > limit * (1 + 1e-12):
        return None
    room = limit - base
    cheapest = [int(np.argmin(c)) for c in cst]
    if room <= 0:
        return cheapest
    b = resolution
    unit = room / b
    neg = -np.inf
    dp = np.zeros(b + 1)  # dp[x]: best value with extra cost <= x bins
    choices = []
    for v, c in zip(vals, cst):
        extra = np.minimum(np.ceil((c - c.min()) / unit - 1e-9), b + 1).astype(int)
        new = np.full(b + 1, neg)
        arg = np.zeros(b + 1, dtype=int)
        for i in np.argsort(extra, kind="stable"):
            e = extra[i]
            if e > b:
                continue
            cand = np.full(b + 1, neg)
            cand[e:] = dp[: b + 1 - e] + v[i]
            better = cand > new
            new[better] = cand[better]
            arg[better] = i
        dp = new
        choices.append(arg)
    picks: list[int] = []
    x = b
    for g in range(len(cst) - 1, -1, -1):
        i = int(choices[g][x])
        picks.append(i)
        x -= int(min(np.ceil((cst[g][i] - cst[g].min()) / unit - 1e-9), b + 1))
    return picks[::-1]


def global_widths(groups: Sequence[GroupInfo], ratio: float) -> dict[str, int]:
    """Kept width per group when the ``ratio`` share of all channels with the lowest normalised
    scores is removed across groups (global ranking), no group going below its ``min_width``.
    Removal is in channel-group units (``unit`` channels at a time, scored ``unit * score``)."""
    total = sum(g.channels for g in groups)
    to_remove = int(ratio * total)
    items = []  # (score, group index, position from the bottom)
    for gi, g in enumerate(groups):
        n = g.channels // g.unit
        removable = n - g.min_width // g.unit
        for j in range(removable):
            items.append((float(g.scores[n - 1 - j]), gi, j))
    items.sort(key=lambda t: (t[0], t[1], t[2]))
    removed = [0] * len(groups)
    done = 0
    for _score, gi, _j in items:
        if done >= to_remove:
            break
        removed[gi] += 1
        done += groups[gi].unit
    return {g.name: g.channels - removed[gi] * g.unit for gi, g in enumerate(groups)}


def resolve_allocation(allocation: str, budget) -> str:
    """``allocation`` with ``"auto"`` resolved: ``"latency"`` when ``budget`` limits latency (issue 19:
    a budget in milliseconds is met by cutting where the milliseconds are), else ``"uniform"`` (the paper)."""
    if allocation == "auto":
        return "latency" if budget.needs_latency else "uniform"
    return allocation
