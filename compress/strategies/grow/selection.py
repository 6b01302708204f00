"""Bottleneck identification (SEArch §3.3, Eq. 5) and the edge-splitting plan (§3.4).

``S(v_j) = deg+(v_j) / deg-(v_j) * Rbar(v_j)`` for every node with ``deg- >= 1`` (the input
node is never a candidate); ``Rbar`` is the mean ``R_inner`` over the scoring split. The node
with the largest ``S`` is picked (ties: lowest node id), then the edge from its *closest
precursor* -- the in-neighbour with the largest teacher index ``q_i`` (ties: lowest id,
docs/algorithms/grow.md, choice 5). Ablation (A) drops the degree factor (``S = Rbar``).

Split of ``e_ij`` (§3.4, App. B; docs/algorithms/grow.md, choice 8): while ``n_ij < B_op`` deepen by
``min(deepen_step, B_op - n_ij)`` units (1 -> 4 -> 7), then widen with
``q_k = floor(c q_i + (1 - c) q_j)`` (Eq. 6). When ``q_j - q_i <= 1`` Eq. 6 returns ``q_i``
(docs/algorithms/grow.md, choice 6): ``adjacent="allow"`` widens anyway (duplicate supervision; the
algorithm notes' recommendation); ``adjacent="next_node"`` skips the node and tries the next-best
one. ``GrowConfig`` defaults to ``"next_node"``: with ``"allow"`` a widen of ``v1 -> v_k`` with
``q_k = 2`` creates a node supervised by the *image* (``q = 1``), which then has the largest
``R_inner`` and is widened again, and so on -- on a 4-point teacher we saw 30+ iterations of
such image-supervised 3-channel nodes before the budget stopped it.

Hardware-aware ranking (issue 18, part 4; not in the paper): when the budget names latency or
``GrowConfig.objective="latency"``, the ``rank_candidates`` highest-``S`` splits are each applied
to a copy and priced -- predicted extra milliseconds (the target's per-layer latency table) and
extra MACs -- and :func:`rank_by_cost` orders them by ``S`` per predicted ms, then ``S`` per MAC.
``S`` is SEArch's bottleneck score (Eq. 5), its proxy for the accuracy a split gains; it is not a
measured accuracy gain.

Ablation (C), random splitting: a uniformly random candidate node, a uniformly random in-edge,
and a random choice of deepen/widen (widen forced once the edge has ``B_op`` units).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from compress.errors import ConfigError
from compress.strategies.grow.student import Structure, widen_index

__all__ = ["Decision", "modification_scores", "closest_precursor", "plan_split", "choose_split", "random_split",
           "ADJACENT_POLICIES", "split_candidates", "PricedSplit", "rank_by_cost"]

ADJACENT_POLICIES = ("allow", "next_node")


@dataclass(frozen=True)
class Decision:
    """One growth step: ``op`` ``"deepen"`` (``n_new`` units) or ``"widen"`` (new node at ``q_k``)
    on edge ``src -> dst``, chosen for node ``dst``."""

    op: str
    src: int
    dst: int
    n_new: int = 0
    q_k: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "edge": [self.src, self.dst], "node": self.dst, "n_new": self.n_new, "q_k": self.q_k}


def modification_scores(structure: Structure, rbar: dict[int, float], *, deg_factor: bool = True,
                        head_counts: bool = True) -> dict[int, float]:
    """Eq. 5 for every node with at least one in-edge (``deg_factor=False``: ablation A, ``S = Rbar``)."""
    out = {}
    for n in structure.nodes:
        d_in = structure.deg_in(n.id)
        if d_in < 1:
            continue
        r = float(rbar.get(n.id, 0.0))
        out[n.id] = structure.deg_out(n.id, head_counts=head_counts) / d_in * r if deg_factor else r
    return out


def closest_precursor(structure: Structure, j: int) -> int:
    """The in-neighbour of ``j`` with the largest ``q`` (ties: lowest id)."""
    pre = sorted({e.src for e in structure.in_edges(j)})
    if not pre:
        raise ValueError(f"node {j} has no precursor")
    return max(pre, key=lambda i: (structure.node(i).q, -i))


def plan_split(structure: Structure, i: int, j: int, *, b_op: int = 7, deepen_step: int = 3, c: float = 0.5) -> Decision:
    """Deepen ``e_ij`` until ``B_op`` units, then widen it (Eq. 6 for ``q_k``)."""
    n = structure.edge(i, j).n_ops
    if n < b_op:
        return Decision("deepen", i, j, n_new=min(deepen_step, b_op - n))
    return Decision("widen", i, j, q_k=widen_index(structure.node(i).q, structure.node(j).q, c))


def split_candidates(structure: Structure, scores: dict[int, float], *, limit: int | None = None, b_op: int = 7,
                     deepen_step: int = 3, c: float = 0.5, adjacent: str = "allow") -> list[Decision]:
    """The splits of the nodes in decreasing ``S`` (ties: lowest id), each from its closest
    precursor (:func:`plan_split`), at most ``limit`` (None: all). With ``adjacent="next_node"`` a
    widen between adjacent teacher nodes is left out."""
    out: list[Decision] = []
    for j in sorted(scores, key=lambda v: (-scores[v], v)):
        if limit is not None and len(out) >= limit:
            break
        i = closest_precursor(structure, j)
        d = plan_split(structure, i, j, b_op=b_op, deepen_step=deepen_step, c=c)
        if d.op == "widen" and adjacent == "next_node" and structure.node(j).q - structure.node(i).q <= 1:
            continue
        out.append(d)
    return out


def choose_split(structure: Structure, scores: dict[int, float], *, b_op: int = 7, deepen_step: int = 3,
                 c: float = 0.5, adjacent: str = "allow") -> Decision | None:
    """Highest-``S`` node (ties: lowest id) -> closest precursor -> :func:`plan_split`. With
    ``adjacent="next_node"`` a widen between adjacent teacher nodes moves on to the next node;
    returns None when no node can be split."""
    cands = split_candidates(structure, scores, limit=1, b_op=b_op, deepen_step=deepen_step, c=c, adjacent=adjacent)
    return cands[0] if cands else None


@dataclass(frozen=True)
class PricedSplit:
    """A candidate split with its gain and what it adds.

    Attributes:
        decision: the split. gain: its node's ``S`` (Eq. 5; the accuracy-gain proxy, unitless).
        delta_ms: predicted extra latency in ms per batch on the target (per-layer table).
        delta_macs: extra MACs per sample.
    """

    decision: Decision
    gain: float
    delta_ms: float
    delta_macs: float

    @property
    def gain_per_ms(self) -> float:
        """``gain / delta_ms`` (``delta_ms`` floored at 1e-6 ms: a split is never free)."""
        return self.gain / max(self.delta_ms, 1e-6)

    @property
    def gain_per_mac(self) -> float:
        """``gain / delta_macs`` (``delta_macs`` floored at 1)."""
        return self.gain / max(self.delta_macs, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {**self.decision.to_dict(), "gain": self.gain, "delta_ms": self.delta_ms,
                "delta_macs": self.delta_macs, "gain_per_ms": self.gain_per_ms, "gain_per_mac": self.gain_per_mac}


def rank_by_cost(cands: list[PricedSplit], per: str = "ms") -> list[PricedSplit]:
    """Candidates best first: by gain per predicted ms, then gain per MAC (``per="ms"``), or by
    gain per MAC, then per ms (``per="macs"``); remaining ties: lowest node id.

    Raises:
        ConfigError: ``per`` is neither ``"ms"`` nor ``"macs"``.
    """
    if per == "ms":
        return sorted(cands, key=lambda p: (-p.gain_per_ms, -p.gain_per_mac, p.decision.dst))
    if per == "macs":
        return sorted(cands, key=lambda p: (-p.gain_per_mac, -p.gain_per_ms, p.decision.dst))
    raise ConfigError(f"rank_by_cost: per must be 'ms' or 'macs', got {per!r}")


def random_split(structure: Structure, rng: random.Random, *, b_op: int = 7, deepen_step: int = 3,
                 c: float = 0.5) -> Decision:
    """Ablation (C): random node, random in-edge, random deepen/widen (widen once ``n = B_op``)."""
    cands = sorted(n.id for n in structure.nodes if structure.deg_in(n.id) >= 1)
    j = rng.choice(cands)
    i = rng.choice(sorted(e.src for e in structure.in_edges(j)))
    n = structure.edge(i, j).n_ops
    if n < b_op and rng.random() < 0.5:
        return Decision("deepen", i, j, n_new=min(deepen_step, b_op - n))
    return Decision("widen", i, j, q_k=widen_index(structure.node(i).q, structure.node(j).q, c))
