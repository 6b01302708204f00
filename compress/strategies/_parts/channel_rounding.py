"""Runtime-friendly channel counts, chosen from measurements on the target.

Pruning to arbitrary widths can make a network *slower* on onnxruntime's CPU provider even though
its MACs halve: its convolution kernels work on channel blocks (NCHWc, 8 or 16 wide) and pay for
re-layout when a width does not fit. A fixed ``round_to`` guesses the right multiple; we measure.

For every Torch-Pruning group that a uniform ratio ``r`` would cut to ``k = floor(C * (1 - r))``
channels, the candidate widths are ``k`` itself and the nearest multiples of 4, 8, 16 and 32
below and above it within ``±window * k`` (never above ``C``). Each candidate's cost is the
latency, read from the target's :class:`~compress.profiling.latency_model.LayerLatencyTable`
(measured once, cached with its per-round figures), of every conv/linear the group touches: the layers producing the group's channels, the layers consuming
them, and depthwise convs inside it, with their other side at its nominal width. The criterion is
efficiency, measured ms per kept channel (the budget, enforced by the caller's ratio bisection,
then buys as many efficient channels as it allows).

Timings are noisy, and a shared machine's load changes them (a CPU-bound neighbour on the
sibling hyperthread slows some kernels more than others), so a width other than ``k`` is picked
only when the gain exceeds the measurement's noise. A group's candidates are timed together in
interleaved rounds, each round with fresh onnxruntime sessions
(:meth:`~compress.profiling.latency_model.LayerLatencyTable.measure_layers`), and each is
compared with ``k`` round by round. A width that misses the kernels' channel blocks is slower
than *all* its aligned neighbours alike, so the decision is made on the group: the median of the
candidates' cuts in ms per kept channel must exceed ``MIN_GAIN`` (24%) and ``NOISE_Z`` (3)
standard errors. Only then is the pick structural, not the noisiest figure: among the widths
that cut at least half the bar, the most aligned (power-of-two factor up to 16, the widest NCHWc
block), then the nearest to ``k``. Measured on a 2-core AVX-512 machine (resnet18 and resnet10t
at two ratios on 32x32 digits, 15 rounds, half of the sweeps beside two CPU burners, 16 while
a training job ran, 34 sweeps in all), resnet18's groups had median cuts either of a layout
cliff, 26-73% in every sweep, or of at most 20% (cuts of 5-10% idle reached 20% under load):
hence the bar of 24%, and its widths were the same in all 22 of its sweeps. resnet10t's cliffs
cut 27-77%, but two of its groups lie across the bar (a 19-channel stem conv, 3-27%; a layer2
conv, 14-24%), and the stem one flipped in 1 sweep of 6: the rule narrows, not removes, the
band where load can change a pick.
Every decision, with the widths considered, their per-round timings, gains, noise and the
bar, is in the records :func:`plan_widths` returns (gp-prune writes them to
``info["channel_rounding"]``, so ``report.json``).
"""

from __future__ import annotations

import contextvars
import math
import time

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from compress.profiling.latency_model import ConvConfig, LayerLatencyTable, LinearConfig, layer_configs
from compress.time_limit import time_limit
from compress.strategies._parts import partial_pruning

__all__ = ["plan_widths", "plan_fixed_widths", "candidate_widths", "timing_cost_s"]

_MULTIPLES = (4, 8, 16, 32)
MIN_GAIN = 0.24
"""The group's median cut in ms per kept channel must exceed this fraction ..."""
NOISE_Z = 3.0
"""... and this many standard errors (from the round-by-round spread) to leave the nominal width."""
TIME_BUDGET_S = 10.0
"""Estimated seconds (:func:`timing_cost_s`) one :func:`plan_widths` call of gp-prune may spend timing layers
that no earlier call of the same search timed; past it, the groups that need such layers take the most aligned
candidate width, untimed (issue 17: at 224x224 the first probes of a mobilenetv3_small_050 spent 24-35 s each
timing new layers, a resnet50 more). An estimate, not the clock, and layers new to the *search*, not to the
on-disk table: which groups are timed is then the same on a fast or slow or loaded machine and whatever the
cache holds (the determinism contract; with elapsed seconds and the table's contents, a resnet50 run with a
warmer cache timed more groups and gave another student)."""
TIMING_COST = {"per_mac_s": 6e-11, "per_input_value_s": 35e-9, "per_weight_s": 30e-9, "per_session_s": 2e-3}
"""The coefficients of :func:`timing_cost_s`, fitted to :meth:`LayerLatencyTable.measure_layers` at
:data:`TIMING` on the 2-core AVX-512 development machine, one thread, its sibling core running a training job
(2026-12-03; conv 64->64 3x3 at 56x56: 1.12 s measured / 1.40 s estimated; 256->64 1x1 at 56x56: 1.27 / 1.38;
512->512 3x3 at 7x7: 2.16 / 2.25; depthwise 96 3x3 at 56x56: 0.39 / 0.38): the calls' MACs, the fresh random
input of the layer's graph and of its Identity-overhead graph every round, the weights a session prepacks, and
a session's fixed cost. Only the scale of the bound depends on them; a faster machine times the same groups."""
_CHARGED = ("layers timed in this search",)
"""The key under which ``plan_widths``' ``cache`` keeps the layers its earlier calls timed."""
TIMING = {"rounds": 15, "repeats": 8, "warmup": 3}
"""How gp-prune's table times layers for rounding: many short rounds, each with fresh sessions
(the spread between sessions, not between calls, is most of the noise)."""


def candidate_widths(k: int, c: int, window: float) -> list[int]:
    """``k`` and, for each of 4/8/16/32, the nearest multiple below and above ``k``, kept when
    inside ``[k - window*k, k + window*k]`` and at most ``c`` (at most 9 widths: each is timed in
    several interleaved rounds, so the set is kept small)."""
    lo, hi = max(1, math.floor(k * (1 - window))), min(c, math.ceil(k * (1 + window)))
    out = {k}
    for m in _MULTIPLES:
        out.update((k // m * m, -(-k // m) * m))
    return sorted(w for w in out if lo <= w <= hi and 1 <= w <= c or w == k)


def timing_cost_s(cfg: "ConvConfig | LinearConfig", timing: dict | None = None) -> float:
    """The estimated seconds :meth:`LayerLatencyTable.measure_layers` takes to time ``cfg`` at
    ``timing`` (default :data:`TIMING`): per round, ``warmup + repeats`` calls at
    :data:`TIMING_COST` ``per_mac_s`` each MAC, two fresh random inputs (the layer's graph and its
    Identity-overhead graph) at ``per_input_value_s`` each value, the weights at ``per_weight_s``
    each, and ``per_session_s``. A function of the layer's shape only (no clock), so the bound it
    sets (:data:`TIME_BUDGET_S`) is deterministic.
    """
    t = TIMING if timing is None else timing
    if isinstance(cfg, ConvConfig):
        oh = (cfg.h + 2 * cfg.padding - cfg.k) // cfg.stride + 1
        ow = (cfg.w + 2 * cfg.padding - cfg.k) // cfg.stride + 1
        weights = cfg.cin // cfg.groups * cfg.cout * cfg.k * cfg.k
        macs, inputs = weights * max(oh, 0) * max(ow, 0), cfg.cin * cfg.h * cfg.w
    else:
        weights = cfg.fin * cfg.fout
        macs, inputs = weights * cfg.rows, cfg.fin * cfg.rows
    c = TIMING_COST
    per_round = ((t["warmup"] + t["repeats"]) * macs * c["per_mac_s"] + 2 * inputs * c["per_input_value_s"]
                 + weights * c["per_weight_s"] + c["per_session_s"])
    return t["rounds"] * per_round


#: How Torch-Pruning runs the model while it builds a dependency graph (None: ``model(x)`` in eval
#: mode). gp-prune sets :func:`train_mode_forward` for models whose train mode runs more modules
#: than eval mode (GoogLeNet / Inception aux heads), so that those modules are pruned consistently.
TRACE_FORWARD: contextvars.ContextVar = contextvars.ContextVar("slimforge_trace_forward", default=None)


def train_mode_forward(model: nn.Module, example_inputs: torch.Tensor):
    """``model(x)`` in train mode, for Torch-Pruning's tracer (which calls ``model.eval()`` first):
    every module that runs in training is in the graph. Buffers (BatchNorm statistics) and the torch
    RNG are restored after, and the model is left in eval mode."""
    saved = {k: b.detach().clone() for k, b in model.named_buffers()}
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            return model(example_inputs)
    finally:
        model.eval()
        with torch.no_grad():
            for k, b in model.named_buffers():
                if k in saved and b.shape == saved[k].shape:
                    b.copy_(saved[k])


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _prunable_groups(model: nn.Module, example_inputs: torch.Tensor, ratio: float, ignored: list[nn.Module],
                     time_limit_s: float | None = None, nominal: "dict[nn.Module, int] | None" = None):
    """Yield ``(group, root module, channels C, nominal kept width k)`` for every Torch-Pruning group
    that ratio ``r`` would cut, with ``k = floor(C * (1 - r))`` as Torch-Pruning computes it, or
    ``k = nominal[root]`` when ``nominal`` is given (groups it does not name are not cut). The
    dependency-graph build is bounded by ``time_limit_s`` (:class:`TimeLimitError`)."""
    for group, root, c in _all_groups(model, example_inputs, ignored, time_limit_s):
        k = int(c * (1 - ratio)) if nominal is None else int(nominal.get(root, c))
        if 1 <= k < c:
            yield group, root, c, k


def _all_groups(model: nn.Module, example_inputs: torch.Tensor, ignored: list[nn.Module],
                time_limit_s: float | None = None):
    """Yield ``(group, root module, channels C)`` for every Torch-Pruning group of ``model`` with a root
    Conv2d / Linear of known width, ``ignored`` left out (see :func:`_prunable_groups`)."""
    with time_limit(time_limit_s, "building Torch-Pruning's dependency graph (channel rounding)"):
        # the partial-pruning plan's channel shuffles and kept-whole groups (issue 19)
        dg = partial_pruning.dependency_graph(model, example_inputs, plan=partial_pruning.CURRENT_PLAN.get(),
                                      forward_fn=TRACE_FORWARD.get())
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        root = group[0].dep.target.module
        c = dg.get_out_channels(root)
        if c:
            yield group, root, c


def _group_layers(model: nn.Module, example_inputs: torch.Tensor, ignored: list[nn.Module],
                  time_limit_s: float | None) -> list[tuple[str, int, list[str], list[str], list[str]]]:
    """Per Torch-Pruning group of ``model`` (unpruned, as :func:`_prunable_groups` builds it, whatever the
    ratio): ``(root name, channels C, producer names, consumer names, depthwise names)``, the layers whose
    latency the group's width changes (see :func:`plan_widths`)."""
    names = {m: n for n, m in model.named_modules()}
    out = []
    for group, root, c in _all_groups(model, example_inputs, ignored, time_limit_s):
        producers, consumers, depthwise = _group_members(group)
        out.append((names[root], c, [names[m] for m in producers], [names[m] for m in consumers],
                    [names[m] for m in depthwise]))
    return out


def _group_members(group) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
    """The group's layers whose cost its width sets: (producers, consumers, depthwise convs)."""
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
    return producers, consumers, depthwise


def plan_widths(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratio: float,
    ignored: list[nn.Module],
    table: LayerLatencyTable,
    *,
    window: float = 0.2,
    min_gain: float = MIN_GAIN,
    noise_z: float = NOISE_Z,
    time_limit_s: float | None = None,
    nominal: "dict[nn.Module, int] | None" = None,
    time_budget_s: float | None = None,
    cache: dict | None = None,
) -> tuple[dict[nn.Module, int], list[dict]]:
    """Choose the kept width of every prunable group of ``model`` at uniform ratio ``ratio``, or
    around the per-group widths ``nominal`` (root module -> kept channels, from a non-uniform
    allocation; ``ratio`` is then the overall pruned share, used for the far side of each layer).
    ``time_limit_s`` bounds the dependency-graph build (:class:`~compress.errors.TimeLimitError`).
    ``time_budget_s`` (None: no bound; gp-prune passes :data:`TIME_BUDGET_S`) bounds the estimated
    time (:func:`timing_cost_s`, from the layers' shapes, not the clock) this call spends on layers
    that no earlier call sharing ``cache`` timed (every layer, without ``cache``), whether or not the
    on-disk ``table`` holds them: once it is spent, a group that needs such layers takes, untimed,
    the most aligned of its candidate widths (power-of-two factor up to 16), then the nearest to
    ``k``, the pick the measured rule makes among widths that gain (its record says so); groups
    whose layers were all timed earlier in the search are still decided. Not ``k`` itself: an
    unaligned width can be far slower (timm mobilenetv3_small_050 at 224x224 pruned to ratio 0.38:
    15.1 ms at the nominal widths, 1.13 ms at the aligned ones, 1.72 ms unpruned, onnxruntime on
    one thread). Which groups are timed depends neither on the machine's speed nor on the table's
    contents; what a timed group picks can still flip within the noise band described above.

    ``cache`` (a dict, or None): where a call keeps, by layer name, what the unpruned ``model`` gives
    whatever the ratio (each conv's input size, one forward; each group's layers, one dependency-graph
    build), for the next call to read. Pass one dict only to calls on deep copies of one unpruned model
    with the same ``example_inputs`` and ``ignored`` (gp-prune's ratio search: every probe is such a copy;
    issue 17, timm resnet50 at 224x224: the two took about 1.6 s of each probe's 10 s of planning, under
    cProfile on a loaded core). It also keeps which layers the search has timed (``time_budget_s``).

    The layers of all of a group's candidates are timed together, interleaved
    (:meth:`LayerLatencyTable.measure_layers`), and compared round by round: in round ``r`` a
    candidate ``w`` has ``q_r = (cost_r(w) / w) / (cost_r(k) / k)``, its ms per kept channel
    relative to the nominal width's. Its gain is ``1 - median(q)``; its noise the standard error
    of that median, ``1.253 * 1.4826 * MAD(q) / sqrt(rounds)``. The group leaves ``k`` only when
    the median gain over its candidates exceeds ``max(min_gain, noise_z * median noise)`` (and the
    nominal layers do not time at zero, below the timer's resolution). It then takes, among the
    widths that gain more than ``min_gain / 2``, the most aligned (largest power-of-two factor up
    to 16), then the nearest to ``k``, then the wider. A uniform slowdown of the machine during a
    sweep cancels in the ratios; what load adds beyond that is noise (which raises the bar) and a
    bias of up to about 20% on some kernels (which ``min_gain`` is set above).

    Returns:
        ``({root module: kept channels}, records)``; one record per group: ``group``,
        ``channels``, ``nominal``, ``chosen``, ``nominal_ms``, ``chosen_ms``, ``decision``
        (why), ``group_gain`` and ``group_noise`` (the medians over the candidates),
        ``threshold`` (the bar ``group_gain`` had to exceed; None when the nominal layers time
        at zero) and ``candidates`` (per width: ``ms``, ``ms_rounds``, ``gain``, ``noise``,
        ``accepted``: in the pool the pick was made from), and ``timing_s`` (seconds spent
        timing its new layers).
    """
    names = {m: n for n, m in model.named_modules()}
    modules = {n: m for m, n in names.items()}
    key = (tuple(example_inputs.shape), tuple(names.get(m) for m in ignored),
           id(partial_pruning.CURRENT_PLAN.get()), TRACE_FORWARD.get())
    layout = cache.get(key) if cache is not None else None
    if layout is None:  # the layers' input sizes and the groups' layers, by name: the same for every copy
        layout = ({n: cfg for n, cfg in layer_configs(model, example_inputs) if isinstance(cfg, ConvConfig)},
                  _group_layers(model, example_inputs, ignored, time_limit_s))
        if cache is not None:
            cache[key] = layout
    spatial, group_layers = layout
    in_ch = example_inputs.shape[1]

    def far_side(c: int, fixed: bool) -> int:
        return c if fixed else max(1, int(c * (1 - ratio)))

    plan: dict[nn.Module, int] = {}
    records: list[dict] = []
    spent = 0.0  # estimated seconds (timing_cost_s) of the layers this call times first in its search
    charged: set[str] = cache.setdefault(_CHARGED, set()) if cache is not None else set()
    for root_name, c, producer_names, consumer_names, depthwise_names in group_layers:
        root = modules[root_name]
        k = int(c * (1 - ratio)) if nominal is None else int(nominal.get(root, c))
        if not 1 <= k < c:
            continue
        producers = [modules[n] for n in producer_names]
        consumers = [modules[n] for n in consumer_names]
        depthwise = [modules[n] for n in depthwise_names]

        def layers(w: int) -> list:
            out = []
            for m in producers:
                if isinstance(m, nn.Conv2d) and names.get(m) in spatial:
                    s = spatial[names[m]]
                    cin = far_side(m.in_channels, m.in_channels == in_ch and s.h == example_inputs.shape[2])
                    out.append(ConvConfig(cin, w, s.k, s.stride, s.padding, 1, s.h, s.w))
                elif isinstance(m, nn.Linear):
                    out.append(LinearConfig(far_side(m.in_features, False), w))
            for m in consumers:
                if isinstance(m, nn.Conv2d) and names.get(m) in spatial:
                    s = spatial[names[m]]
                    out.append(ConvConfig(w, far_side(m.out_channels, m in ignored), s.k, s.stride, s.padding, 1,
                                          s.h, s.w))
                elif isinstance(m, nn.Linear):
                    out.append(LinearConfig(w, far_side(m.out_features, m in ignored)))
            for m in depthwise:
                if names.get(m) in spatial:
                    s = spatial[names[m]]
                    out.append(ConvConfig(w, w, s.k, s.stride, s.padding, w, s.h, s.w))
            return out

        cands = candidate_widths(k, c, window)
        cand_layers = {w: layers(w) for w in cands}
        cfgs = [cfg for w in cands for cfg in cand_layers[w]]
        new_cfgs = {cfg.key(): cfg for cfg in cfgs if cfg.key() not in charged}
        new_layers = len(new_cfgs)
        if new_layers and time_budget_s is not None and spent >= time_budget_s:
            best = min(cands, key=lambda w: (-_alignment(w), abs(w - k), -w))  # the structural pick, untimed
            plan[root] = best
            records.append({"group": names.get(root, "?"), "channels": c, "nominal": k, "chosen": best,
                            "nominal_ms": None, "chosen_ms": None, "group_gain": None, "group_noise": None,
                            "threshold": None, "candidates": [], "timing_s": 0.0,
                            "decision": f"{best}, not timed: the budget of {time_budget_s:g} estimated s for timing "
                                        f"new layers was spent before this group ({new_layers} of its layers not "
                                        "timed earlier in this search); the most aligned candidate, then the "
                                        "nearest"})
            continue
        t0 = time.perf_counter()
        table.measure_layers(cfgs)
        timing_s = time.perf_counter() - t0  # reported only: the bound counts the estimate
        spent += sum(timing_cost_s(cfg) for cfg in new_cfgs.values())
        charged.update(new_cfgs)
        best, rec = _decide(k, {w: [table.latency_rounds(cfg) for cfg in cand_layers[w]] for w in cands},
                            min_gain=min_gain, noise_z=noise_z)
        plan[root] = best
        records.append({"group": names.get(root, "?"), "channels": c, **rec, "timing_s": timing_s})
    table.save()
    return plan, records


def _alignment(w: int) -> int:
    """The largest of 16, 8, 4, 2, 1 that divides ``w`` (16: the widest NCHWc channel block)."""
    return next(m for m in (16, 8, 4, 2, 1) if w % m == 0)


def _decide(k: int, rounds_of: dict[int, list[list[float]]], *, min_gain: float,
            noise_z: float) -> tuple[int, dict]:
    """The rounding decision for one group (see :func:`plan_widths`). ``rounds_of[w]`` holds the
    per-round ms of every layer candidate ``w`` touches; returns ``(chosen width, record)``."""
    n_rounds = min((len(r) for layers in rounds_of.values() for r in layers), default=0)
    cost = {w: [sum(r[i] for r in layers) for i in range(n_rounds)] for w, layers in rounds_of.items()}
    ms = {w: float(np.median(v)) if v else 0.0 for w, v in cost.items()}
    rows: dict[int, dict] = {w: {"width": w, "ms": ms[w], "ms_rounds": cost[w], "gain": None, "noise": None,
                                 "accepted": False} for w in sorted(cost)}
    others = [w for w in cost if w != k]
    resolvable = n_rounds > 0 and min(cost[k]) > 0.0 and bool(others)
    group_gain = group_noise = threshold = None
    if resolvable:
        rows[k].update(gain=0.0, noise=0.0)
        for w in others:
            q = np.array([(cost[w][i] / w) / (cost[k][i] / k) for i in range(n_rounds)])
            med = float(np.median(q))
            rows[w].update(gain=1.0 - med, noise=float(1.253 * 1.4826 * np.median(np.abs(q - med)) / np.sqrt(n_rounds)))
        group_gain = float(np.median([rows[w]["gain"] for w in others]))
        group_noise = float(np.median([rows[w]["noise"] for w in others]))
        threshold = max(min_gain, noise_z * group_noise)
    bar = f"max({min_gain:g}, {noise_z:g} x the median standard error)"
    pool = [w for w in others if resolvable and group_gain > threshold and rows[w]["gain"] > min_gain / 2]
    if not resolvable:
        best, why = k, "nominal: its layers time at zero net of the call overhead (below the timer), or no other width"
    elif not pool:
        best, why = k, (f"nominal: the candidates' median cut in ms per kept channel, {100 * group_gain:.1f}%, "
                        f"does not exceed {bar} = {100 * threshold:.1f}%")
    else:
        for w in pool:
            rows[w]["accepted"] = True
        best = min(pool, key=lambda w: (-_alignment(w), abs(w - k), -w))
        why = (f"{best}: the candidates' median cut in ms per kept channel, {100 * group_gain:.1f}%, exceeds {bar} = "
               f"{100 * threshold:.1f}%; the most aligned, then nearest, of the {len(pool)} width(s) cutting over "
               f"{100 * min_gain / 2:.1f}%")
    return best, {"nominal": k, "chosen": best, "nominal_ms": ms[k], "chosen_ms": ms[best], "decision": why,
                  "group_gain": group_gain, "group_noise": group_noise, "threshold": threshold,
                  "candidates": list(rows.values())}


def plan_fixed_widths(model: nn.Module, example_inputs: torch.Tensor, ratio: float, ignored: list[nn.Module],
                      multiple: int, *, time_limit_s: float | None = None,
                      nominal: "dict[nn.Module, int] | None" = None) -> dict[nn.Module, int]:
    """Kept width of every group rounded *up* to a fixed multiple (never above the group's width),
    from ``ratio`` or from per-group widths ``nominal`` (see :func:`plan_widths`).
    ``time_limit_s`` bounds the dependency-graph build (:class:`~compress.errors.TimeLimitError`)."""
    return {root: min(c, -(-k // multiple) * multiple)
            for _, root, c, k in _prunable_groups(model, example_inputs, ratio, ignored, time_limit_s, nominal)}
