"""Runtime-friendly channel counts, chosen from measurements on the target.

Pruning to arbitrary widths can make a network *slower* on onnxruntime's CPU provider even though
its MACs halve: its convolution kernels work on channel blocks (NCHWc, 8 or 16 wide) and pay for
re-layout when a width does not fit. A fixed ``round_to`` guesses the right multiple; we measure.

For every Torch-Pruning group that a uniform ratio ``r`` would cut to ``k = floor(C * (1 - r))``
channels, the candidate widths are ``k`` itself and the multiples of 4, 8, 16 and 32 within
``±window * k`` (never above ``C``). Each candidate's cost is the latency, read from the target's
:class:`~compress.profiling.latency_model.LayerLatencyTable` (measured once, cached), of every
conv/linear the group touches: the layers producing the group's channels, the layers consuming
them, and depthwise convs inside it, with their other side at its nominal width. The winner is
the most *efficient* width, lowest measured ms per kept channel (the budget, enforced by the
caller's ratio bisection, then buys as many efficient channels as it allows); widths within
``tie_band`` (3%) of the best efficiency count as ties, broken by closeness to ``k``.
"""

from __future__ import annotations

import math

import torch
import torch_pruning as tp
from torch import nn

from compress.profiling.latency_model import ConvConfig, LayerLatencyTable, LinearConfig, layer_configs
from compress.strategies._parts.time_limit import time_limit

__all__ = ["plan_widths", "plan_fixed_widths", "candidate_widths"]

_MULTIPLES = (4, 8, 16, 32)


def candidate_widths(k: int, c: int, window: float) -> list[int]:
    """``k`` and the multiples of 4/8/16/32 in ``[k - window*k, k + window*k]``, capped at ``c``."""
    lo, hi = max(1, math.floor(k * (1 - window))), min(c, math.ceil(k * (1 + window)))
    out = {k}
    for m in _MULTIPLES:
        start = max(m, (lo + m - 1) // m * m)
        out.update(range(start, hi + 1, m))
    return sorted(w for w in out if 1 <= w <= c)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _prunable_groups(model: nn.Module, example_inputs: torch.Tensor, ratio: float, ignored: list[nn.Module],
                     time_limit_s: float | None = None):
    """Yield ``(group, root module, channels C, nominal kept width k)`` for every Torch-Pruning group
    that ratio ``r`` would cut, with ``k = floor(C * (1 - r))`` as Torch-Pruning computes it. The
    dependency-graph build is bounded by ``time_limit_s`` (:class:`TimeLimitError`)."""
    with time_limit(time_limit_s, "building Torch-Pruning's dependency graph (channel rounding)"):
        dg = tp.DependencyGraph().build_dependency(model, example_inputs)
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        root = group[0].dep.target.module
        c = dg.get_out_channels(root)
        if not c:
            continue
        k = int(c * (1 - ratio))
        if 1 <= k < c:
            yield group, root, c, k


def plan_widths(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratio: float,
    ignored: list[nn.Module],
    table: LayerLatencyTable,
    *,
    window: float = 0.2,
    tie_band: float = 0.03,
    time_limit_s: float | None = None,
) -> tuple[dict[nn.Module, int], list[dict]]:
    """Choose the kept width of every prunable group of ``model`` at uniform ratio ``ratio``.
    ``time_limit_s`` bounds the dependency-graph build (:class:`~compress.errors.TimeLimitError`).

    Returns:
        ``({root module: kept channels}, records)``; the records (one per group: nominal width,
        chosen width, predicted ms of both) go into the strategy history.
    """
    names = {m: n for n, m in model.named_modules()}
    spatial = {n: cfg for n, cfg in layer_configs(model, example_inputs) if isinstance(cfg, ConvConfig)}
    in_ch = example_inputs.shape[1]

    def nominal(c: int, fixed: bool) -> int:
        return c if fixed else max(1, int(c * (1 - ratio)))

    plan: dict[nn.Module, int] = {}
    records: list[dict] = []
    for group, root, c, k in _prunable_groups(model, example_inputs, ratio, ignored, time_limit_s):
        producers, consumers, depthwise = [], [], []
        for dep, _ in group:
            m, fn = dep.target.module, dep.handler
            if _is_depthwise(m):
                if m not in depthwise:
                    depthwise.append(m)
            elif fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
                producers.append(m)
            elif fn in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                consumers.append(m)

        def cost(w: int) -> float:
            total = 0.0
            for m in producers:
                if isinstance(m, nn.Conv2d) and names.get(m) in spatial:
                    s = spatial[names[m]]
                    cin = nominal(m.in_channels, m.in_channels == in_ch and s.h == example_inputs.shape[2])
                    total += table.latency(ConvConfig(cin, w, s.k, s.stride, s.padding, 1, s.h, s.w))
                elif isinstance(m, nn.Linear):
                    total += table.latency(LinearConfig(nominal(m.in_features, False), w))
            for m in consumers:
                if isinstance(m, nn.Conv2d) and names.get(m) in spatial:
                    s = spatial[names[m]]
                    total += table.latency(ConvConfig(w, nominal(m.out_channels, m in ignored), s.k, s.stride,
                                                      s.padding, 1, s.h, s.w))
                elif isinstance(m, nn.Linear):
                    total += table.latency(LinearConfig(w, nominal(m.out_features, m in ignored)))
            for m in depthwise:
                if names.get(m) in spatial:
                    s = spatial[names[m]]
                    total += table.latency(ConvConfig(w, w, s.k, s.stride, s.padding, w, s.h, s.w))
            return total

        cands = candidate_widths(k, c, window)
        costs = {w: cost(w) for w in cands}
        per_channel = {w: costs[w] / w for w in cands}
        floor = min(per_channel.values())
        efficient = [w for w in cands if per_channel[w] <= floor * (1 + tie_band)]
        best = min(efficient, key=lambda w: (abs(w - k), -w))
        plan[root] = best
        records.append({"group": names.get(root, "?"), "channels": c, "nominal": k, "chosen": best,
                        "nominal_ms": costs[k], "chosen_ms": costs[best]})
    table.save()
    return plan, records


def plan_fixed_widths(model: nn.Module, example_inputs: torch.Tensor, ratio: float, ignored: list[nn.Module],
                      multiple: int, *, time_limit_s: float | None = None) -> dict[nn.Module, int]:
    """Kept width of every group rounded *up* to a fixed multiple (never above the group's width).
    ``time_limit_s`` bounds the dependency-graph build (:class:`~compress.errors.TimeLimitError`)."""
    return {root: min(c, -(-k // multiple) * multiple)
            for _, root, c, k in _prunable_groups(model, example_inputs, ratio, ignored, time_limit_s)}
