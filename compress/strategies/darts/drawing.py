"""Text drawings of DARTS cells and genotypes (for reports and logs).

Used by both DARTS-based strategies (darts-gal, eg-nas): an adjacency grid per cell, rows = the
intermediate nodes, columns = the states they read (``c_{k-2}``, ``c_{k-1}``, earlier nodes),
entries = the op on that edge; removed nodes (GAL) are marked.
"""

from __future__ import annotations

from compress.errors import ConfigError
from compress.strategies.darts.genotype import Genotype
from compress.strategies.darts.model import CellSpec
from compress.strategies.darts.ops import OPS

__all__ = ["draw_cell", "draw_genotype"]


_ABBR = {"none": "none", "max_pool_3x3": "max3", "avg_pool_3x3": "avg3", "skip_connect": "skip",
         "sep_conv_3x3": "sep3", "sep_conv_5x5": "sep5", "dil_conv_3x3": "dil3", "dil_conv_5x5": "dil5"}


def draw_cell(spec: CellSpec, title: str = "") -> str:
    """A text drawing of one cell: an adjacency grid (rows = nodes, columns = input states, entries =
    ops) and the output concat. ``c_{k-2}``, ``c_{k-1}`` are the cell inputs; node i is state 2+i."""
    steps = len(spec.nodes)
    names = ["c_{k-2}", "c_{k-1}"] + [f"n{i}" for i in range(steps)]
    width = max(7, max(len(_ABBR.get(op, op)) for node in spec.nodes if node for op, _ in node))
    lines = [title] if title else []
    lines.append(" " * 8 + " ".join(f"{n:>{width}}" for n in names[: steps + 1]))
    for i, node in enumerate(spec.nodes):
        cells = ["" for _ in range(steps + 1)]
        if node is None:
            lines.append(f"{names[2 + i]:>6} x " + "(removed)")
            continue
        for op, idx in node:
            cells[idx] = _ABBR.get(op, op) if not cells[idx] else cells[idx] + "+" + _ABBR.get(op, op)
        lines.append(f"{names[2 + i]:>6} = " + " ".join(f"{(c or '.'):>{width}}" for c in cells))
    lines.append(f"{'out':>6} = concat[" + ", ".join(names[c] for c in spec.concat) + "]"
                 + ("  (reduction: edges from c_{k-2}, c_{k-1} have stride 2)" if spec.reduction else ""))
    return "\n".join(lines)


def draw_genotype(genotype: Genotype) -> str:
    """Text drawing of the normal and the reduction cell of a genotype (see :func:`draw_cell`)."""
    normal = CellSpec(genotype.nodes("normal"), genotype.normal_concat, False)
    reduce = CellSpec(genotype.nodes("reduce"), genotype.reduce_concat, True)
    return draw_cell(normal, "normal cell") + "\n\n" + draw_cell(reduce, "reduction cell")


def _check_ops() -> None:  # keep the abbreviations in sync with the op set
    missing = set(OPS) - set(_ABBR)
    if missing:  # pragma: no cover
        raise ConfigError(f"no abbreviation for ops {sorted(missing)}")


_check_ops()
