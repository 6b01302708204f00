"""gp-prune's allocation modes pruned to the budget: for each mode the candidate network of a
pruning amount ``t`` that :func:`~.search.bisect_to_budget` searches over. ``"uniform"`` (the
paper's one-shot mode, GECCO'22 §5) removes the same ratio of every group; ``"global"`` and
``"latency"`` (issue 19) take per-group widths from one ranking or from HALP's latency knapsack
(:mod:`.allocation`). Every candidate's widths go through the channel-rounding planner
(:func:`width_planner`) and the channel surgery of :func:`~.pruning.prune_uniform`. See
:mod:`.strategy` for the method and the fallback between modes."""

from __future__ import annotations

from torch import nn

from compress.errors import UnsupportedModelError
from compress.models import freeze_fixed_shortcuts
from compress.profiling.latency_model import LayerLatencyTable
from compress.strategies._parts import channel_rounding
from compress.strategies._parts.channel_rounding import plan_fixed_widths, plan_widths
from compress.strategies.base import StrategyContext
from compress.strategies.gp_prune.allocation import (
    analyse_groups,
    global_widths,
    latency_charges,
    latency_table,
    solve_knapsack,
)
from compress.strategies.gp_prune.config import GPPruneConfig
from compress.strategies.gp_prune.pruning import _ignored_names, _layer_widths, forward_or_explain, prune_uniform
from compress.strategies.gp_prune.search import bisect_to_budget

__all__ = ["width_planner", "prune_uniform_to_budget", "prune_allocated_to_budget", "budget_fraction"]


def width_planner(ctx: StrategyContext, cfg: GPPruneConfig, rounding_log: list[dict]):
    """The width planner of ``channel_rounding`` (None for "off"), for :func:`prune_uniform`;
    ``planner(candidate, ratio, ignored, nominal=None)``, ``nominal`` a kept width per root."""
    if cfg.prune.channel_rounding == "fixed":
        def planner(cand: nn.Module, ratio: float, ignored: list[nn.Module], nominal=None) -> dict[nn.Module, int]:
            return plan_fixed_widths(cand, ctx.example_inputs, ratio, ignored, cfg.prune.round_to,
                                     time_limit_s=ctx.trace_time_limit_s, nominal=nominal)
        return planner
    if cfg.prune.channel_rounding == "measured":
        table = LayerLatencyTable(ctx.target, **channel_rounding.TIMING)
        layout: dict = {}  # every candidate is a deep copy of one unpruned model: its layout is read once

        def planner(cand: nn.Module, ratio: float, ignored: list[nn.Module], nominal=None) -> dict[nn.Module, int]:
            plan, records = plan_widths(cand, ctx.example_inputs, ratio, ignored, table,
                                        window=cfg.prune.rounding_window, time_limit_s=ctx.trace_time_limit_s,
                                        nominal=nominal, time_budget_s=channel_rounding.TIME_BUDGET_S,
                                        cache=layout)
            rounding_log[:] = records
            return plan
        return planner
    return None


def prune_uniform_to_budget(ctx: StrategyContext, cfg: GPPruneConfig, importance, model: nn.Module,
                            classifier_name: str) -> tuple[nn.Module, float, list[dict]]:
    """The paper's uniform one-shot pruning: bisect the ratio of every group."""
    rounding_log: list[dict] = []
    planner = width_planner(ctx, cfg, rounding_log)
    expected = (ctx.example_inputs.shape[0], ctx.data.spec.num_classes)
    with ctx.phase("prune"):
        # Torch-Pruning keeps floor(C * (1 - r)) channels of a C-channel group and skips a group
        # that would keep none, so the uniform ratio is capped where the narrowest layer keeps one.
        narrowest = min(
            (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and n != classifier_name
        )
        max_ratio = min(cfg.prune.max_ratio, 1.0 - 1.0 / narrowest - 1e-6)

        def build(ratio: float) -> nn.Module:
            return prune_uniform(model, ratio, importance, ctx.example_inputs, classifier_name, None, planner,
                                 time_limit_s=ctx.trace_time_limit_s, keep_whole=cfg.prune.ignored_layers)

        best, best_ratio, best_rounding = bisect_to_budget(
            ctx, cfg, model, max_ratio, build,
            f"removing {100 * max_ratio:.1f}% of the channels of every layer (loosen the budget or raise config "
            "prune.max_ratio)", lambda r: {"ratio": r}, rounding_log)
        forward_or_explain(best, ctx.example_inputs, expected, "gp-prune")
        freeze_fixed_shortcuts(best)  # Torch-Pruning re-creates parameters; the 0/1 shortcut stays fixed
    return best, best_ratio, best_rounding


def prune_allocated_to_budget(ctx: StrategyContext, cfg: GPPruneConfig, importance, model: nn.Module,
                              classifier_name: str, allocation: str) -> tuple[nn.Module, float, list[dict], dict]:
    """``allocation="global"`` or ``"latency"`` (``allocation.py``): per-group widths from one
    ranking or from the latency knapsack, bisected toward the budget (the knapsack's latency
    limit, in predicted ms, or the global ratio), every candidate checked by real measurement."""
    expected = (ctx.example_inputs.shape[0], ctx.data.spec.num_classes)
    ignored_names = _ignored_names(model, classifier_name, cfg.prune.ignored_layers)
    with ctx.phase("prepare"):
        groups = analyse_groups(model, ctx.example_inputs, importance, ignored_names,
                                max_group_ratio=cfg.prune.max_group_ratio,
                                forward_fn=channel_rounding.TRACE_FORWARD.get(), time_limit_s=ctx.trace_time_limit_s)
    if not groups:
        raise UnsupportedModelError(
            f"gp-prune allocation={allocation!r} found no prunable channel group in {type(model).__name__} "
            "(every conv/linear is ignored or cannot be pruned); try allocation='uniform'.",
            layer=type(model).__name__)
    total = sum(g.channels for g in groups)
    rounding_log: list[dict] = []
    record: dict = {"mode": allocation, "max_group_ratio": cfg.prune.max_group_ratio}

    def apply(widths: dict[str, int], planner=None, ratio: float = 0.0) -> nn.Module:
        def plan(cand: nn.Module, r: float, ignored: list[nn.Module]) -> dict[nn.Module, int]:
            mods = dict(cand.named_modules())
            nominal = {mods[n]: k for n, k in widths.items() if n in mods}
            return planner(cand, ratio, ignored, nominal=nominal) if planner is not None else nominal
        return prune_uniform(model, 0.0, importance, ctx.example_inputs, classifier_name, None, plan,
                             time_limit_s=ctx.trace_time_limit_s, keep_whole=cfg.prune.ignored_layers)

    if allocation == "global":
        planner = width_planner(ctx, cfg, rounding_log)
        hi = cfg.prune.max_ratio
        with ctx.phase("prune"):
            best, t, best_rounding = bisect_to_budget(
                ctx, cfg, model, hi, lambda r: apply(global_widths(groups, r), planner, r),
                f"removing the {100 * hi:.1f}% least important channels across layers, no layer losing over "
                f"{100 * cfg.prune.max_group_ratio:.0f}% (loosen the budget, or raise config prune.max_ratio / "
                "prune.max_group_ratio)",
                lambda r: {"ratio": r}, rounding_log, strict=True)
        record["ratio"] = t
    else:
        with ctx.phase("prepare"):
            table = latency_table(ctx.target)
            ctx.progress("latency table", 0, 2, {"groups": len(groups)})
            charges = latency_charges(model, ctx.example_inputs, groups, table)
            values = [[g.value(w) for w in ws] for g, ws in zip(groups, charges.widths)]
            lo_ms = float(sum(ms.min() for ms in charges.ms))
            hi_ms = float(sum(ms.max() for ms in charges.ms))
            full_ms = ctx.latency_fn(model) if ctx.budget.max_latency_ms is not None and ctx.latency_fn else None
            guess = budget_fraction(ctx, full_ms) * hi_ms
            pick = solve_knapsack(values, charges.ms, max(guess, lo_ms))
            reference = {g.name: charges.widths[i][pick[i]] for i, g in enumerate(groups)}
            ctx.progress("latency table", 1, 2, {"groups": len(groups)})
            charges = latency_charges(model, ctx.example_inputs, groups, table, reference)  # HALP: inputs as pruned
            ctx.progress("latency table", 2, 2, {"layers_timed": table.measured})
            lo_ms = float(sum(ms.min() for ms in charges.ms))
            hi_ms = float(sum(ms.max() for ms in charges.ms))

        def widths_at(t: float) -> tuple[dict[str, int], float]:
            limit = hi_ms - t * (hi_ms - lo_ms)
            choice = solve_knapsack(values, charges.ms, limit)
            return ({g.name: charges.widths[i][choice[i]] for i, g in enumerate(groups)},
                    charges.predict(choice))

        def describe(t: float) -> dict:
            return {"limit_ms": charges.fixed_ms + hi_ms - t * (hi_ms - lo_ms), "predicted_ms": widths_at(t)[1]}

        with ctx.phase("prune"):
            best, t, best_rounding = bisect_to_budget(
                ctx, cfg, model, 1.0, lambda t: apply(widths_at(t)[0]),
                f"the knapsack's narrowest allocation, every group losing {100 * cfg.prune.max_group_ratio:.0f}% "
                "of its channels (loosen the budget or raise config prune.max_group_ratio, e.g. --config "
                "'{\"prune\": {\"max_group_ratio\": 0.9}}')", describe, rounding_log, strict=True)
        chosen, predicted = widths_at(t)
        record.update({
            "solver": "multiple-choice knapsack, exact dynamic programming on a discretised latency axis "
                      "(HALP, Shen et al. NeurIPS 2022)",
            "limit_ms": charges.fixed_ms + hi_ms - t * (hi_ms - lo_ms), "predicted_ms": predicted,
            "predicted_full_ms": charges.fixed_ms + hi_ms, "fixed_ms": charges.fixed_ms,
            "table": str(table.path), "reference_widths": reference,
            "groups": [{"group": g.name, "channels": g.channels, "kept": chosen[g.name],
                        "ms_full": float(charges.ms[i][-1]),
                        "ms_kept": float(charges.ms[i][charges.widths[i].index(chosen[g.name])]),
                        "charged_layers": charges.charged[i]} for i, g in enumerate(groups)],
        })
    forward_or_explain(best, ctx.example_inputs, expected, "gp-prune")
    freeze_fixed_shortcuts(best)
    kept = _layer_widths(best)
    ratio = 1.0 - sum(min(kept.get(g.name, g.channels), g.channels) for g in groups) / total
    record["pruned_channel_share"] = ratio
    return best, ratio, best_rounding, record


def budget_fraction(ctx: StrategyContext, model_ms: float | None) -> float:
    """The tightest limit of the budget relative to the model (0.5 for ``macs=0.5x``), in [0.05, 1]:
    the first guess of the knapsack's limit (a share of the full network's predicted latency).
    A latency limit is compared with ``model_ms``, the model's measured latency."""
    b, c = ctx.budget, ctx.teacher_cost
    fractions = [1.0]
    if b.max_macs is not None and c.macs:
        fractions.append(b.max_macs / c.macs)
    if b.max_params is not None and c.params:
        fractions.append(b.max_params / c.params)
    if b.max_latency_ms is not None and model_ms:
        fractions.append(b.max_latency_ms / model_ms)
    return float(min(1.0, max(0.05, min(fractions))))
