"""DARTS genotypes as plain data, the published cells, and derivation from architecture weights.

A :class:`Genotype` describes one normal and one reduction cell (docs/algorithms/darts-space.md). Each cell
is a tuple of ``(op_name, input_state)`` pairs, two per intermediate node: pairs ``(2i, 2i+1)``
are the inputs of node ``i + 2``; states 0 and 1 are the two cell inputs (outputs of the cells
``k-2`` and ``k-1``). ``*_concat`` lists the states concatenated into the cell output
(``(2, 3, 4, 5)`` for every published cell).

:func:`derive_genotype` is the DARTS discretisation (Liu et al. 2019, §2.4): per intermediate
node keep the 2 incoming edges with the largest strongest non-``'none'`` op weight, and on each
kept edge the argmax non-``'none'`` op. With PC-DARTS edge normalisation the edge ranking uses
``softmax(alpha) * softmax(beta)`` (Xu et al. 2020, §3.3).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from compress.errors import ConfigError
from compress.strategies.darts.ops import OPS, PRIMITIVES, resolve_primitives

__all__ = [
    "Genotype",
    "DARTS_V1",
    "DARTS_V2",
    "PC_DARTS_CIFAR",
    "EG_NAS_CIFAR10",
    "GENOTYPES",
    "derive_genotype",
    "num_edges",
    "alpha_entropy",
    "random_genotypes",
    "genotype_stability",
]

Pair = tuple[str, int]


def num_edges(steps: int = 4) -> int:
    """Edges of a search cell with ``steps`` intermediate nodes: ``2 + 3 + ... + (steps + 1)`` (14 for 4)."""
    return sum(2 + i for i in range(steps))


def _as_pairs(seq: Any, where: str) -> tuple[Pair, ...]:
    try:
        out = tuple((str(op), int(idx)) for op, idx in seq)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Genotype.{where} must be a sequence of (op_name, input_state) pairs: {exc}") from exc
    return out


@dataclass(frozen=True)
class Genotype:
    """One normal and one reduction cell as data (JSON round trip via :meth:`to_json` / :meth:`from_json`).

    Attributes:
        normal, reduce: ``(op_name, input_state)`` pairs, 2 per intermediate node.
        normal_concat, reduce_concat: states concatenated into the cell output.

    Raises:
        ConfigError: odd number of pairs, unknown op, an input that is not an earlier state,
            or a concat index that is not a state of the cell.
    """

    normal: tuple[Pair, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Pair, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for kind in ("normal", "reduce"):
            pairs = _as_pairs(getattr(self, kind), kind)
            concat = tuple(int(c) for c in getattr(self, f"{kind}_concat"))
            object.__setattr__(self, kind, pairs)
            object.__setattr__(self, f"{kind}_concat", concat)
            if not pairs or len(pairs) % 2:
                raise ConfigError(f"Genotype.{kind} needs 2 pairs per intermediate node, got {len(pairs)} pairs.")
            steps = len(pairs) // 2
            for k, (op, idx) in enumerate(pairs):
                if op not in OPS:
                    raise ConfigError(f"Genotype.{kind}[{k}] uses unknown op {op!r}; known ops: {sorted(OPS)}.")
                node = 2 + k // 2
                if not 0 <= idx < node:
                    raise ConfigError(
                        f"Genotype.{kind}[{k}] = ({op!r}, {idx}): node {node} may only read states 0..{node - 1}."
                    )
            if not concat or any(not 0 <= c < steps + 2 for c in concat) or len(set(concat)) != len(concat):
                raise ConfigError(f"Genotype.{kind}_concat {concat} must list distinct states in 0..{steps + 1}.")

    @property
    def steps(self) -> int:
        """Number of intermediate nodes of the normal cell."""
        return len(self.normal) // 2

    def nodes(self, kind: str = "normal") -> tuple[tuple[Pair, ...], ...]:
        """Per intermediate node (states ``2 .. steps+1``), its incoming ``(op, input)`` pairs."""
        pairs = self.normal if kind == "normal" else self.reduce
        return tuple(pairs[2 * i: 2 * i + 2] for i in range(len(pairs) // 2))

    def ops_used(self) -> set[str]:
        return {op for op, _ in self.normal + self.reduce}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"normal": [[op, idx], ...], "normal_concat": [...], "reduce": ..., "reduce_concat": ...}``."""
        return {
            "normal": [[op, idx] for op, idx in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, idx] for op, idx in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Genotype":
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: missing keys or invalid content.
        """
        missing = {"normal", "normal_concat", "reduce", "reduce_concat"} - set(data)
        if missing:
            raise ConfigError(f"Genotype data lacks {sorted(missing)}.")
        return cls(
            normal=_as_pairs(data["normal"], "normal"),
            normal_concat=tuple(data["normal_concat"]),
            reduce=_as_pairs(data["reduce"], "reduce"),
            reduce_concat=tuple(data["reduce_concat"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """Readable one-line-per-node summary, e.g. ``normal n2: sep_conv_3x3(0) + sep_conv_3x3(1)``."""
        lines = []
        for kind in ("normal", "reduce"):
            for i, node in enumerate(self.nodes(kind)):
                lines.append(f"{kind} n{i + 2}: " + " + ".join(f"{op}({idx})" for op, idx in node))
            lines.append(f"{kind} concat: {list(getattr(self, kind + '_concat'))}")
        return "\n".join(lines)


def _g(normal: list[Pair], reduce: list[Pair]) -> Genotype:
    return Genotype(tuple(normal), (2, 3, 4, 5), tuple(reduce), (2, 3, 4, 5))


#: DARTS first order (quark0/darts ``genotypes.py``), docs/algorithms/darts-space.md.
DARTS_V1 = _g(
    [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
     ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
)

#: DARTS second order (the ``DARTS`` cell; DARTS-GAL's Fig. 5).
DARTS_V2 = _g(
    [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
     ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
)

#: PC-DARTS CIFAR-10 cell (yuhuixu1993/PC-DARTS ``genotypes.py``).
PC_DARTS_CIFAR = _g(
    [("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
     ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
    [("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
     ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
)

#: EG-NAS CIFAR-10 cell as in effect in the released ``genotypes.py`` (its second definition).
EG_NAS_CIFAR10 = _g(
    [("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_3x3", 2), ("sep_conv_3x3", 0),
     ("sep_conv_3x3", 2), ("max_pool_3x3", 0), ("avg_pool_3x3", 0), ("sep_conv_5x5", 4)],
    [("skip_connect", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0),
     ("sep_conv_5x5", 3), ("max_pool_3x3", 1), ("sep_conv_3x3", 4), ("max_pool_3x3", 2)],
)

GENOTYPES: dict[str, Genotype] = {
    "DARTS_V1": DARTS_V1,
    "DARTS_V2": DARTS_V2,
    "PC_DARTS_CIFAR": PC_DARTS_CIFAR,
    "EG_NAS_CIFAR10": EG_NAS_CIFAR10,
}


def _parse_cell(
    weights: torch.Tensor,
    primitives: Sequence[str],
    steps: int,
    edge_weights: torch.Tensor | None,
) -> tuple[Pair, ...]:
    """Top-2 incoming edges per node and the argmax non-'none' op per kept edge.

    Ties are broken by the lower edge / op index, so the result is deterministic.
    """
    w = weights.detach().double().cpu()
    usable = [k for k, p in enumerate(primitives) if p != "none"]
    if not usable:
        raise ConfigError("Cannot derive a genotype: every primitive is 'none'.")
    ew = None if edge_weights is None else edge_weights.detach().double().cpu()
    pairs: list[Pair] = []
    start, n = 0, 2
    for _ in range(steps):
        rows = w[start: start + n]
        scores = []
        for j in range(n):
            best_k = max(usable, key=lambda k: (float(rows[j, k]), -k))
            strength = float(rows[j, best_k]) * (1.0 if ew is None else float(ew[start + j]))
            scores.append((strength, j, best_k))
        top = sorted(scores, key=lambda s: (-s[0], s[1]))[:2]
        for _strength, j, k in sorted(top, key=lambda s: s[1]):
            pairs.append((primitives[k], j))
        start += n
        n += 1
    return tuple(pairs)


def _edge_softmax(betas: torch.Tensor, steps: int) -> torch.Tensor:
    parts, start, n = [], 0, 2
    for _ in range(steps):
        parts.append(torch.softmax(betas[start: start + n].detach().double(), dim=-1))
        start += n
        n += 1
    return torch.cat(parts)


def derive_genotype(
    alphas_normal: torch.Tensor,
    alphas_reduce: torch.Tensor,
    primitives: Sequence[str] = PRIMITIVES,
    *,
    steps: int = 4,
    multiplier: int = 4,
    betas_normal: torch.Tensor | None = None,
    betas_reduce: torch.Tensor | None = None,
) -> Genotype:
    """The DARTS discretisation of architecture logits.

    Args:
        alphas_normal, alphas_reduce: logits ``(num_edges(steps), len(primitives))``; op weights
            are their row-wise softmax.
        primitives: op names of the columns; ``'none'`` is never selected.
        steps, multiplier: intermediate nodes, and how many of the last states are concatenated.
        betas_normal, betas_reduce: optional PC-DARTS edge-normalisation logits ``(num_edges,)``;
            edges are then ranked by ``softmax(alpha) * softmax_per_node(beta)``.

    Returns:
        :class:`Genotype` with 2 distinct inputs per node and concat ``[steps + 2 - multiplier, ..., steps + 1]``.

    Raises:
        ConfigError: wrong shapes.
    """
    E = num_edges(steps)
    for name, a in (("alphas_normal", alphas_normal), ("alphas_reduce", alphas_reduce)):
        if tuple(a.shape) != (E, len(primitives)):
            raise ConfigError(f"{name} has shape {tuple(a.shape)}, expected ({E}, {len(primitives)}).")
    wn = torch.softmax(alphas_normal.detach().double(), dim=-1)
    wr = torch.softmax(alphas_reduce.detach().double(), dim=-1)
    en = None if betas_normal is None else _edge_softmax(betas_normal, steps)
    er = None if betas_reduce is None else _edge_softmax(betas_reduce, steps)
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return Genotype(
        normal=_parse_cell(wn, primitives, steps, en),
        normal_concat=concat,
        reduce=_parse_cell(wr, primitives, steps, er),
        reduce_concat=concat,
    )


def alpha_entropy(alphas: torch.Tensor) -> float:
    """Mean per-edge entropy (nats) of ``softmax(alphas)`` over the last dim; ``log(num_ops)``
    for uniform weights, 0 for one-hot."""
    p = torch.softmax(alphas.detach().double(), dim=-1)
    h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    v = float(h.mean())
    return v if math.isfinite(v) else 0.0


def random_genotypes(k: int, seed: int, primitives: str | Sequence[str] = "eg-nas", *, steps: int = 4,
                     multiplier: int = 4) -> list[Genotype]:
    """``k`` genotypes drawn uniformly from the search space of a supernet with these ``primitives``
    and ``steps`` intermediate nodes: the random-search baseline of the NAS benchmarks (issue 18,
    part 3; Li & Talwalkar 2019, "Random Search and Reproducibility for NAS", §3).

    Per cell (normal and reduce independently) and per intermediate node ``i`` (state ``i + 2``):
    2 distinct inputs drawn uniformly among the unordered pairs of the ``i + 2`` earlier states (the
    DARTS discretisation keeps exactly 2 distinct incoming edges per node, §2.4), then on each kept
    edge one op drawn uniformly among the non-``'none'`` primitives. Pairs are stored in increasing
    input order, as :func:`derive_genotype` stores them. Every genotype of the space has probability
    ``prod_i [1 / C(i+2, 2)] * (1/|O|)^(2 * steps)`` per cell.

    Deterministic given ``seed`` (a private ``numpy.random.Generator``; no global RNG is touched).

    Args:
        k: how many genotypes (>= 1).
        seed: the sampler's seed.
        primitives: an op-set name (``"darts"``, ``"eg-nas"``) or op names (the supernet's).
        steps, multiplier: intermediate nodes and concatenated states (DARTS: 4, 4).

    Returns:
        ``k`` :class:`Genotype` (possibly with repeats), concat ``[steps + 2 - multiplier, ..., steps + 1]``.

    Raises:
        ConfigError: ``k < 1``, ``steps < 1``, a bad ``multiplier``, an unknown op set, or no
            usable (non-``'none'``) primitive.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"random_genotypes: k must be an int >= 1, got {k!r}.")
    if steps < 1 or not 1 <= multiplier <= steps + 2:
        raise ConfigError(f"random_genotypes: need steps >= 1 and 1 <= multiplier <= steps + 2, got {steps}, {multiplier}.")
    usable = [p for p in resolve_primitives(primitives) if p != "none"]
    if not usable:
        raise ConfigError("random_genotypes: every primitive is 'none'; pass an op set with real ops.")
    rng = np.random.default_rng(int(seed))
    concat = tuple(range(2 + steps - multiplier, steps + 2))

    def cell() -> tuple[Pair, ...]:
        pairs: list[Pair] = []
        for i in range(steps):
            a, b = sorted(int(v) for v in rng.choice(i + 2, size=2, replace=False))
            ops = rng.integers(0, len(usable), size=2)
            pairs += [(usable[int(ops[0])], a), (usable[int(ops[1])], b)]
        return tuple(pairs)

    out = []
    for _ in range(k):
        normal = cell()
        out.append(Genotype(normal, concat, cell(), concat))
    return out


def genotype_stability(alphas: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float | None:
    """The share of edges whose argmax op is the same in every one of several searches (issue 18, part 1).

    Args:
        alphas: one ``(alphas_normal, alphas_reduce)`` pair of logits ``(E, |O|)`` per search
            (e.g. the final alpha of 3 seeds).

    Returns:
        In [0, 1]: over the ``2 * E`` edges of both cells, the fraction where ``argmax_o alpha``
        agrees across all searches (ties broken by the lower op index). A search that leaves
        alpha uniform agrees with another only by chance (``1/|O|^(n-1)`` per edge for ``n``
        searches); None for fewer than 2 searches.

    Raises:
        ConfigError: the searches' alpha shapes differ.
    """
    if len(alphas) < 2:
        return None
    shapes = {(tuple(a.shape), tuple(r.shape)) for a, r in alphas}
    if len(shapes) != 1:
        raise ConfigError(f"genotype_stability: the searches' alpha shapes differ: {sorted(shapes)}.")
    arg = torch.stack([torch.cat([a.detach().cpu().double(), r.detach().cpu().double()]).argmax(-1)
                       for a, r in alphas])
    same = (arg == arg[0]).all(0)
    return float(same.double().mean())
