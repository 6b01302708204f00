"""Stage 3 of ``darts-gal`` (paper §3.3): GAL node pruning of the baseline into the budget.

Lambda (issue 18) is searched toward the budget (:func:`lambda_search`: each probe a GAL run on a fresh
copy of the baseline, pruned and measured, its binding :func:`budget_ratio` deciding the next lambda),
or given (``gal.sparse_lambda``), or swept (``gal.lambda_sweep``). Each GAL run (:class:`.gal.GALTrainer`) is
followed by the closing loop (:func:`gal_one`): GAL at a larger lambda while the pruned net is over
budget, then the smallest masks zeroed one at a time. :func:`run_gal` returns the phase's JSON state
(report key ``gal``) and the pruned network.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any

import torch
from torch.utils.data import Dataset

from compress.budgets import BudgetCheck, Cost
from compress.errors import BudgetUnreachableError
from compress.strategies.base import StrategyContext
from compress.strategies.darts.model import NetworkCIFAR
from compress.strategies.darts_gal.checkpoints import PhaseStore
from compress.strategies.darts_gal.config import DartsGalConfig
from compress.strategies.darts_gal.gal import GALSettings, GALTrainer, attach_masks, mask_values
from compress.strategies.darts_gal.latency import latency_aware, latency_table, node_latency_weights
from compress.strategies.darts_gal.prune import draw_cell, kept_nodes, node_count, nodes_kept_rows, prune_network
from compress.training import evaluate
from compress.training.checkpoint import stable_hash
from compress.training.data import derive_seed

__all__ = ["run_gal", "lambda_search", "gal_one", "penalty_weights", "gal_settings", "budget_ratio"]


def gal_settings(cfg: DartsGalConfig, lam: float, seed: int, *, epochs: int | None = None,
                 mask_weights: tuple[tuple[float, ...], ...] | None = None) -> GALSettings:
    """The :class:`GALSettings` of a config's ``gal`` block at sparsity ``lam`` (``epochs``: None =
    ``gal.epochs``; ``mask_weights``: per-node L1 weights, None = 1)."""
    g = cfg.gal
    # every GALSettings field the gal block has, by name (a new field of both cannot be left out), then
    # the run's own: the epochs, lambda, seed and mask weights
    same = {f.name for f in dataclasses.fields(GALSettings)} & {f.name for f in dataclasses.fields(g)}
    return GALSettings(**{name: getattr(g, name) for name in same if name != "epochs"},
                       epochs=g.epochs if epochs is None else int(epochs), lam=lam, seed=seed,
                       mask_weights=mask_weights)


def _cost_dict(cost: Cost, lat: float | None) -> dict[str, Any]:
    return {"macs": int(cost.macs), "params": int(cost.params), "latency_ms": lat}


def budget_ratio(budget: Any, cost: Cost, latency_ms: float | None) -> float:
    """The binding ``cost / limit`` of an absolute budget: the largest of ``params / max_params``,
    ``macs / max_macs`` and ``latency_ms / max_latency_ms`` over the limits it sets (<= 1: met).
    The lambda search aims it into ``[1 - tolerance, 1]``.

    Raises:
        BudgetUnreachableError: the budget sets none of these limits (memory only), or names latency
            and no latency was measured.
    """
    ratios = []
    if budget.max_params is not None:
        ratios.append(float(cost.params) / max(float(budget.max_params), 1e-12))
    if budget.max_macs is not None:
        ratios.append(float(cost.macs) / max(float(budget.max_macs), 1e-12))
    if budget.max_latency_ms is not None:
        if latency_ms is None:
            raise BudgetUnreachableError("darts-gal's lambda search needs a measured latency for a latency budget; "
                                         "give a target that can time the network, or set gal.sparse_lambda.")
        ratios.append(float(latency_ms) / max(float(budget.max_latency_ms), 1e-12))
    if not ratios:
        raise BudgetUnreachableError(
            f"darts-gal's lambda search needs a params, MACs or latency limit, budget {budget.describe()!r} has none; "
            "set gal.sparse_lambda to fix lambda instead.")
    return max(ratios)


def run_gal(ctx: StrategyContext, cfg: DartsGalConfig, baseline: NetworkCIFAR, train_ds: Dataset,
            K: int, store: PhaseStore | None = None, h_gal: str = "",
            table: Any = None) -> tuple[dict[str, Any], NetworkCIFAR]:
    """GAL at the searched lambda (``gal.sparse_lambda=None``, :func:`lambda_search`), at the given
    ``gal.sparse_lambda``, or for each lambda of ``gal.lambda_sweep`` (the candidate whose removed
    fraction is closest to ``gal.target_prune_fraction`` wins); each followed by the closing loop. Returns the
    JSON state and the pruned network (masks off, pruned weights)."""
    total_nodes = node_count(baseline)
    weights, penalty = penalty_weights(ctx, cfg, baseline, table)
    search: dict[str, Any] | None = None
    if cfg.gal.lambda_sweep:
        lambdas = cfg.gal.lambda_sweep
        candidates = [gal_one(ctx, cfg, baseline, train_ds, K, lam0, total_nodes,
                              tag=f"gal[{n}]" if len(lambdas) > 1 else "gal", weights=weights)
                      for n, lam0 in enumerate(lambdas)]
    elif cfg.gal.sparse_lambda is not None:
        candidates = [gal_one(ctx, cfg, baseline, train_ds, K, cfg.gal.sparse_lambda, total_nodes, tag="gal",
                              weights=weights)]
    else:
        search = lambda_search(ctx, cfg, baseline, train_ds, K, weights, store, h_gal)
        trainer = search.pop("_trainer")
        threshold_only = search.pop("_threshold_only")
        candidates = [gal_one(ctx, cfg, baseline, train_ds, K, search["lambda"], total_nodes, tag="gal",
                              weights=weights, trainer=trainer, history=search.pop("_history"),
                              lambda_rounds=not threshold_only)]
    best = min(range(len(candidates)),
               key=lambda i: (abs(candidates[i]["removed_fraction"] - cfg.gal.target_prune_fraction), i))
    chosen = candidates[best]
    G, keep = chosen.pop("_G"), chosen.pop("_keep")
    for c in candidates:
        c.pop("_G", None)
        c.pop("_keep", None)
    plain = prune_network(G, keep, keep_masks=False).net
    masks = mask_values(G)
    rows = nodes_kept_rows(G, keep, masks)
    drawing = "\n\n".join(draw_cell(cell.spec, f"cell {i + 1} ({'reduction' if cell.spec.reduction else 'normal'})")
                          for i, cell in enumerate(plain.cells))
    state = {
        "arch": plain.arch_dict(), "lambda": chosen["lambda"],
        "lambda_sweep": [{k: v for k, v in c.items() if k not in ("history",)} for c in candidates],
        "rounds": chosen["rounds"], "closing_loop": chosen["closing_loop"], "d_steps": chosen["d_steps"],
        "g_steps": chosen["g_steps"], "mask_updates": chosen["mask_updates"], "final_masks": masks,
        "exact": chosen["exact"], "nodes_kept": rows, "nodes_total": total_nodes,
        "nodes_removed": chosen["removed"], "pruned": chosen["pruned"], "history": chosen["history"],
        "drawing": drawing, "penalty": penalty,
    }
    if search is not None:  # where the pruned network (after any closing loop) sits against the budget
        pc = chosen["pruned"]
        final = budget_ratio(ctx.budget, Cost(macs=pc["macs"], params=pc["params"]), pc["latency_ms"])
        state["lambda_search"] = {**search, "final_ratio": final,
                                  "final_within_tolerance": bool(1.0 - search["tolerance"] <= final <= 1.0)}
    return state, plain.eval()


def penalty_weights(ctx: StrategyContext, cfg: DartsGalConfig, baseline: NetworkCIFAR,
                    table: Any = None) -> tuple[tuple[tuple[float, ...], ...] | None, dict[str, Any]]:
    """Per-node L1 weights (None: plain ``||m||_1``) and their report entry: latency-weighted when
    ``objective="latency"``, or ``"auto"`` and the budget names latency (:func:`node_latency_weights`
    on the target's per-layer table ``table``, else one made here, timed once and cached)."""
    if not latency_aware(ctx, cfg):
        return None, {"objective": "size", "weights": None}
    if table is None:
        table = latency_table(ctx)
    weights = node_latency_weights(baseline, ctx.example_inputs, table, cfg.gal.latency_weight_floor)
    table.save()
    return weights, {"objective": "latency", "weights": [list(r) for r in weights],
                     "floor": cfg.gal.latency_weight_floor, "target": ctx.target.to_dict()}


def lambda_search(ctx: StrategyContext, cfg: DartsGalConfig, baseline: NetworkCIFAR, train_ds: Dataset,
                  K: int, weights: tuple[tuple[float, ...], ...] | None, store: PhaseStore | None,
                  h_gal: str) -> dict[str, Any]:
    """Search lambda toward the budget, as gp-prune bisects its ratio (issue 18, part 2).

    Each probe is a GAL run of ``gal.lambda_probe_epochs`` on a fresh copy of the baseline, pruned and
    measured by ``ctx.check``; its binding ratio ``r`` (:func:`budget_ratio`) decides the next
    lambda: ``r > 1`` (over budget) -> larger, ``r < 1 - tol`` (pruned too much) -> smaller; x or /
    ``gal.lambda_growth`` until both sides are seen, then the geometric mean of the bracket. It stops
    at the first ``r`` in ``[1 - tol, 1]`` or after ``gal.lambda_search_probes`` probes. Without a probe
    in the window it keeps the probe least over the budget and zeroes its smallest masks one at a
    time until the budget is met (the closing loop without its lambda rounds; measured on digits:
    5 probes ended at ratios 1.06 and 0.68 around the window), else the probe with the largest
    ``r <= 1`` (none at all: the smallest ``r``, then the full closing loop). Every probe is
    committed as checkpoint ``gal-probe-<n>``, so a killed run re-uses the finished probes (their
    generator; a closing-loop round after a resume starts a fresh discriminator).

    Returns:
        the report entry (``probes``: lambda, params, MACs, latency, nodes and masks removed, ratio
        per probe) with ``_trainer`` (the kept probe's :class:`GALTrainer`, or None when the probes
        were shorter than ``gal.epochs``) and ``_history``.
    """
    tol = cfg.gal.lambda_search_tolerance
    epochs = cfg.gal.lambda_probe_epochs or cfg.gal.epochs
    seed = derive_seed(ctx.seed, "gal")
    probes: list[dict[str, Any]] = []
    kept: tuple[int, GALTrainer, list[dict[str, Any]]] | None = None
    fallback: tuple[int, GALTrainer, list[dict[str, Any]]] | None = None
    over: tuple[int, GALTrainer, list[dict[str, Any]]] | None = None  # least over the budget
    lo: float | None = None  # largest lambda seen over the budget
    hi: float | None = None  # smallest lambda seen pruning below 1 - tol
    lam = float(cfg.gal.lambda_search_start)
    ctx.progress("lambda-search", 0, cfg.gal.lambda_search_probes, {})
    for n in range(cfg.gal.lambda_search_probes):
        settings = gal_settings(cfg, lam, seed, epochs=epochs, mask_weights=weights)
        key = stable_hash({"prev": h_gal, "probe": n, "lambda": lam})
        loaded = store.load(f"gal-probe-{n}", key, ctx) if store is not None else None
        if loaded is not None:
            rec, tensors = loaded
            G = copy.deepcopy(baseline)
            G.drop_path_prob = 0.0
            attach_masks(G)
            G.load_state_dict(tensors["G"])
            trainer = GALTrainer(baseline, train_ds, K, settings, generator_net=G, progress=ctx.progress,
                                 log=ctx.log, phase_name="gal", runtime=ctx.runtime)
            history = list(rec.pop("_history"))
            trainer.g_steps, trainer.d_steps, trainer.fista.steps = (int(v) for v in rec.pop("_steps"))
            rec = {**rec, "resumed": True}
        else:
            trainer = GALTrainer(baseline, train_ds, K, settings, progress=ctx.progress, log=ctx.log,
                                 phase_name=f"gal-probe[{n}]", runtime=ctx.runtime)
            history = list(trainer.run().history)
            keep = kept_nodes(trainer.G, threshold=cfg.gal.mask_threshold, keep_nonempty=cfg.gal.keep_nonempty)
            pr = prune_network(trainer.G, keep, keep_masks=False)
            cost, chk, lat = ctx.check(pr.net)
            zero = sum(1 for row in mask_values(trainer.G) for v in row if v <= cfg.gal.mask_threshold)
            rec = {"probe": n, "lambda": lam, "epochs": epochs, **_cost_dict(cost, lat),
                   "nodes_removed": int(pr.removed), "masks_removed": int(zero),
                   "ratio": budget_ratio(ctx.budget, cost, lat), "ok": bool(chk.ok)}
            if store is not None:
                store.save(f"gal-probe-{n}", key, {**rec, "_history": history,
                                                   "_steps": [trainer.g_steps, trainer.d_steps, trainer.fista.steps]},
                           {"G": trainer.G.state_dict()}, ctx)
            rec = {**rec, "resumed": False}
        probes.append(rec)
        ctx.log(phase="lambda-search", **rec)
        ctx.progress("lambda-search", n + 1, cfg.gal.lambda_search_probes,
                     {"lambda": lam, "ratio": rec["ratio"], "removed": rec["nodes_removed"]})
        r = rec["ratio"]
        if r <= 1.0 and (kept is None or r > probes[kept[0]]["ratio"]):
            kept = (n, trainer, history)
        if fallback is None or r < probes[fallback[0]]["ratio"]:
            fallback = (n, trainer, history)
        if r > 1.0 and (over is None or r < probes[over[0]]["ratio"]):
            over = (n, trainer, history)
        if 1.0 - tol <= r <= 1.0:
            break
        if r > 1.0:
            lo = lam if lo is None else max(lo, lam)
        else:
            hi = lam if hi is None else min(hi, lam)
        lam = math.sqrt(lo * hi) if lo is not None and hi is not None else (
            lam * cfg.gal.lambda_growth if hi is None else lam / cfg.gal.lambda_growth)
    full = epochs == cfg.gal.epochs
    choice = kept if kept is not None else fallback
    assert choice is not None  # at least one probe ran (lambda_search_probes >= 1)
    within = 1.0 - tol <= probes[choice[0]]["ratio"] <= 1.0
    how = "within tolerance" if within else "best probe within the budget" if kept is not None else \
        "no probe within the budget: the closing loop prunes the smallest-ratio probe"
    threshold_only = False
    if not within and over is not None and full:
        # no probe landed: the least-over-budget probe, its smallest masks zeroed one at a time until the
        # budget is met (the closing loop without its lambda rounds) lands closer than an over-pruned probe
        choice, threshold_only = over, True
        how = "no probe within tolerance: the least-over-budget probe, smallest masks zeroed until it fits"
    idx, trainer, history = choice
    chosen = probes[idx]
    return {"lambda": chosen["lambda"], "chosen_probe": idx, "probes": probes, "tolerance": tol,
            "max_probes": cfg.gal.lambda_search_probes, "probe_epochs": epochs,
            "within_tolerance": bool(within), "choice": how, "budget": ctx.budget.describe(),
            "_trainer": trainer if full else None, "_history": history if full else None,
            "_threshold_only": threshold_only}


def gal_one(ctx: StrategyContext, cfg: DartsGalConfig, baseline: NetworkCIFAR, train_ds: Dataset, K: int,
            lam: float, total_nodes: int, tag: str, weights: tuple[tuple[float, ...], ...] | None = None,
            trainer: GALTrainer | None = None, history: list[dict[str, Any]] | None = None,
            lambda_rounds: bool = True) -> dict[str, Any]:
    """GAL at ``lam`` (or continue ``trainer``, already run for ``gal.epochs`` with ``history``),
    then the closing loop into the budget (``lambda_rounds=False``: without its GAL rounds at a
    larger lambda, only the zeroing of the smallest masks)."""
    check = ctx.check
    settings = gal_settings(cfg, lam, derive_seed(ctx.seed, "gal"), mask_weights=weights)
    t0 = time.perf_counter()
    if trainer is None:
        trainer = GALTrainer(baseline, train_ds, K, settings, progress=ctx.progress, log=ctx.log, phase_name=tag,
                             runtime=ctx.runtime)
        history = list(trainer.run().history)
    history = list(history or [])
    epochs_done = cfg.gal.epochs

    def measure() -> tuple[Any, Any, tuple[Cost, BudgetCheck, float | None]]:
        keep = kept_nodes(trainer.G, threshold=cfg.gal.mask_threshold, keep_nonempty=cfg.gal.keep_nonempty)
        pr = prune_network(trainer.G, keep, keep_masks=False)
        return keep, pr, check(pr.net)

    keep, pr, (cost, chk, lat) = measure()
    rounds = [{"round": 0, "lambda": lam, "epochs": cfg.gal.epochs, "removed": pr.removed, **_cost_dict(cost, lat),
               "ok": chk.ok}]
    ctx.log(phase="closing-loop", **rounds[-1])
    r = 0
    while lambda_rounds and not chk.ok and r < cfg.gal.max_prune_rounds:
        r += 1
        lam *= cfg.gal.lambda_growth
        trainer.s = dataclasses.replace(trainer.s, lam=lam)
        trainer.fista.lam = lam
        extra = cfg.gal.prune_round_epochs or cfg.gal.epochs
        history += trainer.run(epochs=extra, start_epoch=epochs_done).history
        epochs_done += extra
        keep, pr, (cost, chk, lat) = measure()
        rounds.append({"round": r, "lambda": lam, "epochs": extra, "removed": pr.removed,
                       **_cost_dict(cost, lat), "ok": chk.ok})
        ctx.log(phase="closing-loop", **rounds[-1])
    thresholded: list[list[int]] = []
    while not chk.ok:
        # zero the smallest surviving mask (non-forced) and re-measure
        with torch.no_grad():
            cands = [(float(cell.node_mask[i]), c, i) for c, (cell, k) in enumerate(zip(trainer.G.cells, keep))
                     for i in k.kept if i not in k.forced and float(cell.node_mask[i]) > cfg.gal.mask_threshold]
            if not cands:
                raise BudgetUnreachableError(
                    f"darts-gal: even with every prunable node removed the network costs {cost.macs:,} MACs and "
                    f"{cost.params:,} params and violates " + "; ".join(str(v) for v in chk.violations)
                    + ". Lower sizing.size_margin (the baseline is sized to size_margin x the budget) or add smaller "
                      "sizing.candidates_C / sizing.candidates_layers.")
            _v, c, i = min(cands)
            trainer.G.cells[c].node_mask[i] = 0.0
            thresholded.append([c + 1, i])
        keep, pr, (cost, chk, lat) = measure()
        ctx.log(phase="closing-loop", thresholded=[c + 1, i], removed=pr.removed, **_cost_dict(cost, lat),
                ok=chk.ok)
    closing = {"rounds": r, "thresholded_nodes": thresholded, "ok": bool(chk.ok)}
    removed = total_nodes - node_count(pr.net)
    masked_pruned = prune_network(trainer.G, keep, keep_masks=True)
    val_acc = evaluate(masked_pruned.net, ctx.data.val)
    return {
        "lambda": lam, "lambda_start": settings.lam, "rounds": rounds, "closing_loop": closing,
        "removed": removed, "removed_fraction": removed / max(total_nodes, 1),
        "pruned": {**_cost_dict(cost, lat), "val_acc_before_retrain": val_acc},
        "d_steps": trainer.d_steps, "g_steps": trainer.g_steps, "mask_updates": trainer.fista.steps,
        "exact": masked_pruned.exact, "wall_s": time.perf_counter() - t0, "history": history,
        "_G": trainer.G, "_keep": keep,
    }
