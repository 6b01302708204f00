"""One growth step of grow: the start network ``G_1``, a split decision applied to the student
(deepen or widen with Eq. 6's new node, :mod:`.selection`), and the hardware-aware ranking of the
highest-``S`` candidate splits by predicted latency or MACs (issue 18, part 4; not in the paper)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.budgets import measure_cost
from compress.profiling.latency_model import LayerLatencyTable, default_cache_dir, layer_configs
from compress.strategies.base import StrategyContext
from compress.strategies.grow.config import GrowConfig
from compress.strategies.grow.partition import TeacherPartition, halve
from compress.strategies.grow.selection import Decision, PricedSplit, rank_by_cost, split_candidates
from compress.strategies.grow.student import GrowStudent, NodeSpec, edge_units, initial_structure

__all__ = ["apply_decision", "build_initial", "LATENCY_TIMING"]

#: timing of the per-layer latency table behind the latency ranking (rounds, repeats, warmup)
LATENCY_TIMING = {"rounds": 3, "repeats": 5, "warmup": 2}


def apply_decision(student: GrowStudent, d: Decision, partition: TeacherPartition, cfg: GrowConfig, *,
                   seed: int | None = None) -> int | None:
    """Apply a :class:`Decision` in place; returns the new node id for a widen (else None)."""
    if d.op == "deepen":
        student.deepen(d.src, d.dst, d.n_new, seed=seed)
        return None
    s = student.structure
    ni, nj = s.node(d.src), s.node(d.dst)
    q_k = int(d.q_k)
    pt = partition.points[q_k - 1]
    in_hw = s.node(s.input_id).hw
    level = min(max(pt.level, ni.level), nj.level)  # keep the new node between its neighbours
    channels = _width(pt.shape[0], cfg)
    node = NodeSpec(s.next_id(), q_k, channels, level, (halve(in_hw[0], level), halve(in_hw[1], level)))

    def wal(lv: int) -> int:
        return _width(partition.width_at_level(lv), cfg)

    u_in = edge_units(ni.channels, ni.level, node.channels, node.level, width_at_level=wal,
                      initial_ops=cfg.growth.initial_ops, stride_rule=cfg.growth.stride_rule)
    u_out = edge_units(node.channels, node.level, nj.channels, nj.level, width_at_level=wal,
                       initial_ops=cfg.growth.initial_ops, stride_rule=cfg.growth.stride_rule)
    return student.widen(d.src, d.dst, node, u_in, u_out, init=cfg.growth.widen_init, seed=seed)


def _width(c_teacher: int, cfg: GrowConfig) -> int:
    return max(1, int(round(cfg.growth.width_mult * c_teacher)))


def build_initial(partition: TeacherPartition, num_classes: int, cfg: GrowConfig, *, seed: int) -> GrowStudent:
    """``G_1`` for this teacher (module init seeded, global RNG restored)."""
    first, last = partition.points[0], partition.points[-1]
    in_hw = (first.shape[1], first.shape[2])
    s = initial_structure(
        in_channels=first.shape[0], in_hw=in_hw, q_sink=partition.m, c_sink=_width(last.shape[0], cfg),
        level_sink=last.level, sink_hw=(halve(in_hw[0], last.level), halve(in_hw[1], last.level)),
        num_classes=num_classes, width_at_level=lambda lv: _width(partition.width_at_level(lv), cfg),
        initial_ops=cfg.growth.initial_ops, stride_rule=cfg.growth.stride_rule,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GrowStudent(s).eval()


# ------------------------------------------------------------------------------------ ranking


def _ranking(cfg: GrowConfig, ctx: StrategyContext) -> str | None:
    """``"ms"``, ``"macs"`` or None (Eq. 5 alone) for this config and budget."""
    if cfg.growth.split_policy != "score" or cfg.growth.objective == "score":
        return None
    if cfg.growth.objective == "latency" or (cfg.growth.objective == "auto" and ctx.budget.needs_latency):
        return "ms"
    if cfg.growth.objective == "macs":
        return "macs"
    return None


class _Pricer:
    """Prices candidate splits: predicted ms from the target's per-layer latency table (the sum of
    every conv / linear layer's table latency, cached on disk), MACs from fvcore; both as the
    difference between the split copy and the current student."""

    def __init__(self, ctx: StrategyContext, table: Any = None) -> None:
        self.x = ctx.example_inputs
        self.table = table if table is not None else LayerLatencyTable(
            ctx.target, cache_dir=Path(default_cache_dir()) / "grow", **LATENCY_TIMING)

    def predicted_ms(self, net: nn.Module) -> float:
        """Sum of the table latencies of ``net``'s conv and linear layers (ms per batch)."""
        return float(sum(self.table.latency(cfg) for _name, cfg in layer_configs(net, self.x)))

    def macs(self, net: nn.Module) -> float:
        return float(measure_cost(net, self.x).macs)

    def choose(self, student: GrowStudent, scores: dict[int, float], partition: TeacherPartition, cfg: GrowConfig,
               per: str, *, seed: int) -> tuple[Decision | None, list[PricedSplit]]:
        """The best of the ``cfg.growth.rank_candidates`` highest-``S`` splits by :func:`rank_by_cost`
        (None when no node can be split) and every priced candidate, best first."""
        g = cfg.growth
        cands = split_candidates(student.structure, scores, limit=g.rank_candidates, b_op=g.b_op,
                                 deepen_step=g.deepen_step, c=g.c, adjacent=g.adjacent_widen)
        if not cands:
            return None, []
        ms0, macs0 = self.predicted_ms(student), self.macs(student)
        priced = []
        for d in cands:
            cand = copy.deepcopy(student)
            apply_decision(cand, d, partition, cfg, seed=seed)
            cand.eval()
            priced.append(PricedSplit(d, float(scores[d.dst]), self.predicted_ms(cand) - ms0, self.macs(cand) - macs0))
        if hasattr(self.table, "save"):
            self.table.save()
        ranked = rank_by_cost(priced, per)
        return ranked[0].decision, ranked
