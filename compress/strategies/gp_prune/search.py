"""gp-prune's search for how much to prune: the pruning amount ``t`` in ``[0, hi]`` (the uniform
ratio, the global ratio or the latency knapsack's cut; larger ``t``: smaller network) that just
meets the budget, each candidate built by the caller (:mod:`.modes`) and checked by the budget
oracle (``ctx.check``). :func:`bisect_to_budget` probes by safeguarded interpolation (Illinois
regula falsi) on the square root of the tightest limit's usage (config ``budget_tolerance``, issue
17) or by plain halving;
:func:`verify_latency` re-times a latency budget's chosen network with a margin (issue 19). See
:mod:`.strategy` for the method."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

from torch import nn

from compress.errors import BudgetUnreachableError
from compress.strategies.base import StrategyContext
from compress.strategies.gp_prune.config import GPPruneConfig
from compress.strategies.gp_prune.pruning import forward_or_explain

__all__ = ["bisect_to_budget", "verify_latency", "LATENCY_MARGIN", "VERIFY_STEPS", "VERIFY_NOISE_Z"]

LATENCY_MARGIN = 0.02
"""A latency budget's chosen network must re-time this share under the limit (see :func:`verify_latency`)."""
VERIFY_STEPS = 3
"""Steps toward more pruning :func:`verify_latency` may take."""
VERIFY_NOISE_Z = 2.0
""":func:`verify_latency`'s margin in relative standard errors of the re-timing (one-sided ~98%), when
that is wider than :data:`LATENCY_MARGIN`."""


def bisect_to_budget(ctx: StrategyContext, cfg: GPPruneConfig, model: nn.Module, hi: float,
                     build: Callable[[float], nn.Module], what: str, describe: Callable[[float], dict],
                     rounding_log: list[dict], strict: bool = False) -> tuple[nn.Module, float, list[dict]]:
    """Bisect the pruning amount ``t`` in ``[0, hi]`` (larger ``t``: smaller network) to the
    smallest that meets the budget, each candidate ``build(t)`` checked by the budget oracle.
    Returns (best network, its ``t``, the rounding log of its build).

    Raises:
        BudgetUnreachableError: ``build(hi)`` does not meet the budget (``what`` says why not), or,
            with ``strict``, a latency budget's chosen network misses it on re-timing
            (:func:`verify_latency`), so that the caller can fall back to another allocation.
    """
    expected = (ctx.example_inputs.shape[0], ctx.data.spec.num_classes)
    cost0, check0, lat0 = ctx.check(model)
    ctx.log(phase="bisection", step=0, **describe(0.0), macs=cost0.macs, params=cost0.params,
            latency_ms=lat0, ok=check0.ok)
    if check0.ok:
        return copy.deepcopy(model), 0.0, []
    hi_model = build(hi)
    forward_or_explain(hi_model, ctx.example_inputs, expected, "gp-prune")
    cost_hi, check_hi, lat_hi = ctx.check(hi_model)
    ctx.log(phase="bisection", step=1, **describe(hi), macs=cost_hi.macs, params=cost_hi.params,
            latency_ms=lat_hi, ok=check_hi.ok)
    if not check_hi.ok:
        raise BudgetUnreachableError(
            f"gp-prune cannot meet budget {ctx.budget.describe()!r}: "
            + "; ".join(str(v) for v in check_hi.violations) + f" even after {what}.")
    lo, best, best_t, best_rounding, top = 0.0, hi_model, hi, list(rounding_log), hi
    tol = cfg.prune.budget_tolerance
    # the tightest limit's usage (actual / limit) at both ends, for the interpolation (Illinois)
    f_lo, f_hi, kept_side = _usage(ctx.budget, check0), _usage(ctx.budget, check_hi), None
    used_best, target = f_hi, 1.0 - 0.5 * tol
    # the usage's mean slope over [0, hi]: a bracket narrower than tol / (2 * slope) cannot hold a
    # candidate much closer to the limit, unless the cost jumps there (widths snapped by channel
    # rounding), and then no probe inside it gets closer either
    slope = (f_lo - f_hi) / hi if f_lo is not None and f_hi is not None and hi > 0 else 0.0
    ctx.progress("bisection", 0, cfg.prune.bisection_steps, {})
    for step in range(cfg.prune.bisection_steps):
        if tol > 0 and used_best is not None and used_best >= 1.0 - tol:
            break  # the best candidate is within the tolerance of its limit
        if tol > 0 and slope > 0 and (hi - lo) * slope <= 0.5 * tol:
            break  # the bracket is narrower than the tolerance
        mid = 0.5 * (lo + hi)
        if tol > 0 and f_lo is not None and f_hi is not None and f_lo > f_hi:
            # interpolated on the usage's square root: a count that falls as (1 - t)^2 (MACs and
            # params when every width shrinks by 1 - t) is then a line in t, and one probe lands
            # near the limit instead of creeping toward it from the convex side
            g_lo, g_hi, g_target = (math.sqrt(max(v, 0.0)) for v in (f_lo, f_hi, target))
            frac = min(max((g_lo - g_target) / (g_lo - g_hi), 0.02), 0.98)
            mid = lo + frac * (hi - lo)
        cand = build(mid)
        cost, check, lat = ctx.check(cand)
        ctx.log(phase="bisection", step=step + 2, **describe(mid), macs=cost.macs, params=cost.params,
                latency_ms=lat, ok=check.ok)
        ctx.progress("bisection", step + 1, cfg.prune.bisection_steps, {**describe(mid), "ok": check.ok})
        f_mid = _usage(ctx.budget, check)
        if check.ok:
            hi, best, best_t, best_rounding = mid, cand, mid, list(rounding_log)
            if kept_side == "lo" and f_lo is not None:  # lo kept twice: Illinois halves its distance
                f_lo = target + 0.5 * (f_lo - target)
            f_hi, used_best, kept_side = f_mid, f_mid, "lo"
        else:
            lo = mid
            if kept_side == "hi" and f_hi is not None:
                f_hi = target + 0.5 * (f_hi - target)
            f_lo, kept_side = f_mid, "hi"
    if ctx.budget.needs_latency:
        best, best_t, best_rounding, ok = verify_latency(ctx, best, best_t, top, build, describe,
                                                          rounding_log, best_rounding)
        if not ok and strict:
            raise BudgetUnreachableError(
                f"gp-prune cannot meet budget {ctx.budget.describe()!r} with its margin (at least "
                f"{100 * LATENCY_MARGIN:.0f}%, wider on a noisy machine) on re-timing, even after {what}.")
    return best, best_t, best_rounding


def verify_latency(ctx: StrategyContext, best: nn.Module, t: float, top: float,
                   build: Callable[[float], nn.Module], describe: Callable[[float], dict],
                   rounding_log: list[dict], rounding: list[dict]) -> tuple[nn.Module, float, list[dict], bool]:
    """The bisection stops where a candidate *just* met a latency limit, so a second measurement
    misses it about half the time (measured: 1.4-6% over in 3 of 6 runs at ``latency=0.5x``). Re-time
    the chosen network; while it is not a margin under the limit, move a quarter of the way toward
    ``top`` (which met the budget once) and re-time, at most :data:`VERIFY_STEPS` times, then ``top``
    itself. The margin is :data:`LATENCY_MARGIN`, or :data:`VERIFY_NOISE_Z` relative standard errors
    of the re-timing when the probe reports a larger one (:class:`~compress.profiling.LatencyEstimate`).
    On a noisy VM a 2% margin is inside the noise: a regnetx_002 student that passed a 2% re-timing
    at ``latency=0.5x`` measured 13% over in compress's final check. Returns (network, ``t``, its
    rounding log, whether it passed)."""
    limit = ctx.budget.max_latency_ms
    steps = [t + (1.0 - 0.75 ** k) * (top - t) for k in range(VERIFY_STEPS + 1)] + [top]
    for step, t_step in enumerate(steps):
        if step > 0:
            if t_step <= t:
                continue
            t, best, rounding = t_step, build(t_step), list(rounding_log)
        cost, check, lat = ctx.check(best)
        margin = max(LATENCY_MARGIN, VERIFY_NOISE_Z * getattr(lat, "rel_se", 0.0))
        ok = check.ok and (lat is None or limit is None or lat <= (1.0 - margin) * limit)
        ctx.log(phase="bisection", step=f"verify-{step}", **describe(t), macs=cost.macs, params=cost.params,
                latency_ms=None if lat is None else float(lat), margin=margin, ok=ok)
        if ok:
            return best, t, rounding, True
    return best, t, rounding, False


def _usage(budget, check) -> float | None:
    """The tightest limit's usage, ``max(actual / limit)`` over the limits ``check`` measured
    (1.0: exactly at the limit; above 1: over it); None when no limit was checked."""
    limits = {"macs": budget.max_macs, "params": budget.max_params, "latency_ms": budget.max_latency_ms,
              "memory_bytes": budget.max_memory_bytes}
    used = [1.0 - room / limits[m] for m, room in check.headroom.items() if limits.get(m)]
    return max(used) if used else None
