"""Physical node pruning of a DARTS evaluation network, the nodes-kept table and genotype drawings
(DARTS-GAL §3.3 "structured pruning of the intermediate state nodes", Tables 1/3/5/7;
docs/algorithms/darts-gal.md, choice 8).

:func:`kept_nodes` turns masks into the set of surviving nodes per cell; :func:`prune_network`
builds the smaller :class:`~compress.strategies.darts.model.NetworkCIFAR` (removed nodes become
``None`` in the :class:`~compress.strategies.darts.model.CellSpec`, their edges and concat channels
disappear, the consumers' input columns are cut) and copies the surviving weights.

Exactness (eval mode): with the mask placement of ``EvalCell`` a node with mask 0 contributes
exact zeros both to the cell output and to every edge that reads it, and a zero input channel of a
``ReLU -> 1x1 conv`` consumer adds nothing, so masked == pruned (up to float summation order)
when the pruned network keeps the surviving nodes' mask values (``keep_masks=True``). Two rules
keep the network well formed:

* **dead cascade** -- a surviving node whose inputs were all removed computes zero; it is removed
  too. This is exact unless it feeds a conv op of a surviving node (``op(0)`` is a BN shift, not
  zero); :class:`PruneResult.exact` reports it.
* **non-empty cells** (``keep_nonempty``) -- a cell whose nodes were all removed keeps the node
  with the largest mask that reads a cell input directly. Its mask (0) is kept with the masks, so
  masked == pruned still holds; the retrained student computes it. The paper's Tables 3/5 show
  empty cells ("None"); an empty cell outputs a constant, which ``CellSpec`` cannot express.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compress.errors import ConfigError
from compress.strategies.darts.drawing import draw_cell, draw_genotype
from compress.strategies.darts.model import CellSpec, NetworkCIFAR

__all__ = [
    "CellKeep",
    "PruneResult",
    "kept_nodes",
    "prune_network",
    "nodes_kept_rows",
    "nodes_kept_markdown",
    "draw_cell",
    "draw_genotype",
    "node_count",
]

_ZERO_PRESERVING = {"skip_connect", "max_pool_3x3", "avg_pool_3x3", "none"}


@dataclass(frozen=True)
class CellKeep:
    """Which intermediate nodes (0-based, node ``i`` = state ``2 + i``) of one cell survive.

    Attributes:
        kept: surviving nodes in order.
        forced: nodes kept only by the non-empty rule (their masks were <= threshold).
        cascaded: nodes removed because all their inputs were removed (their masks were > threshold).
        inexact: cascaded nodes feeding a conv op of a surviving node (removal changes the output).
    """

    kept: tuple[int, ...]
    forced: tuple[int, ...] = ()
    cascaded: tuple[int, ...] = ()
    inexact: tuple[int, ...] = ()


def _mask_list(masks: Any, net: NetworkCIFAR) -> list[list[float]]:
    if masks is None:
        return [[float(v) for v in cell.node_mask.detach()] for cell in net.cells]
    out = [[float(v) for v in (m.detach() if isinstance(m, torch.Tensor) else m)] for m in masks]
    if len(out) != len(net.cells):
        raise ConfigError(f"masks has {len(out)} rows for {len(net.cells)} cells.")
    return out


def _keep_cell(spec: CellSpec, mask: Sequence[float], threshold: float, keep_nonempty: bool) -> CellKeep:
    steps = len(spec.nodes)
    if len(mask) != steps:
        raise ConfigError(f"a cell mask has {len(mask)} entries for {steps} nodes.")

    def alive_inputs(i: int, live: set[int]) -> list[tuple[str, int]]:
        node = spec.nodes[i]
        return [] if node is None else [(op, idx) for op, idx in node if idx < 2 or (idx - 2) in live]

    live: set[int] = set()
    cascaded: list[int] = []
    for i in range(steps):  # nodes read only earlier states, so one forward pass settles the cascade
        if spec.nodes[i] is None or mask[i] <= threshold:
            continue
        if alive_inputs(i, live):
            live.add(i)
        else:
            cascaded.append(i)
    # a node neither concatenated nor read by a surviving node does nothing: drop it (backwards)
    for i in reversed(range(steps)):
        if i in live and (2 + i) not in spec.concat and not any(
                idx == 2 + i for j in live if j > i for _op, idx in (spec.nodes[j] or ())):
            live.discard(i)
    forced: list[int] = []
    if keep_nonempty and not any(c < 2 or (c - 2) in live for c in spec.concat):
        cands = [c - 2 for c in spec.concat if c >= 2 and spec.nodes[c - 2] is not None
                 and any(idx < 2 for _op, idx in spec.nodes[c - 2])]
        if not cands:
            raise ConfigError("keep_nonempty: no node of this cell reads a cell input directly; cannot keep one.")
        best = max(cands, key=lambda i: (mask[i], -i))
        live.add(best)
        forced.append(best)
    inexact = [i for i in cascaded
               if any(idx == 2 + i and op not in _ZERO_PRESERVING for j in live for op, idx in (spec.nodes[j] or ()))]
    return CellKeep(tuple(sorted(live)), tuple(forced), tuple(cascaded), tuple(inexact))


def kept_nodes(net: NetworkCIFAR, masks: Any = None, *, threshold: float = 0.0,
               keep_nonempty: bool = True) -> list[CellKeep]:
    """Surviving nodes per cell: mask ``> threshold``, minus the dead cascade, plus forced nodes.

    Args:
        net: the (possibly already pruned) network; removed nodes stay removed.
        masks: per-cell mask values (tensors or lists, ``(steps,)`` each); None = the cells' ``node_mask``.
        threshold: GAL prunes masks ``<= 0``.
        keep_nonempty: see the module docstring.

    Raises:
        ConfigError: a mask row of the wrong length, or a cell that cannot stay non-empty.
    """
    rows = _mask_list(masks, net)
    return [_keep_cell(cell.spec, row, threshold, keep_nonempty) for cell, row in zip(net.cells, rows)]


@dataclass
class PruneResult:
    """The pruned network and what was removed.

    Attributes:
        net: the smaller :class:`NetworkCIFAR` carrying the surviving weights (eval mode).
        keep: per-cell :class:`CellKeep`.
        removed: node count removed (live nodes of the input network not in ``keep``).
        exact: False when a cascaded node fed a conv op (masked != pruned there).
    """

    net: NetworkCIFAR
    keep: list[CellKeep]
    removed: int
    exact: bool


def _pruned_spec(spec: CellSpec, keep: CellKeep) -> tuple[CellSpec, dict[int, list[int]]]:
    """The pruned cell spec and, per surviving node, the old input positions of its new inputs."""
    live = set(keep.kept)
    nodes: list[tuple[tuple[str, int], ...] | None] = []
    positions: dict[int, list[int]] = {}
    for i, node in enumerate(spec.nodes):
        if node is None or i not in live:
            nodes.append(None)
            continue
        ks = [k for k, (_op, idx) in enumerate(node) if idx < 2 or (idx - 2) in live]
        nodes.append(tuple(node[k] for k in ks))
        positions[i] = ks
    concat = tuple(c for c in spec.concat if c < 2 or (c - 2) in live)
    return CellSpec(tuple(nodes), concat, spec.reduction), positions


def _channels_kept(spec: CellSpec, new_concat: Sequence[int], C: int) -> list[int]:
    """Indices of the old cell-output channels that survive (old concat order, C channels each)."""
    keep = set(new_concat)
    out: list[int] = []
    for slot, state in enumerate(spec.concat):
        if state in keep:
            out.extend(range(slot * C, (slot + 1) * C))
    return out


def prune_network(net: NetworkCIFAR, keep: Sequence[CellKeep], *, keep_masks: bool = True) -> PruneResult:
    """Remove the nodes not in ``keep`` (and their edges and output channels) and copy the weights.

    Args:
        net: masked or plain network (its ``node_mask`` values are read when ``keep_masks``).
        keep: per-cell survivors (:func:`kept_nodes`).
        keep_masks: carry the surviving nodes' mask values into the pruned network (turned on), so
            that it computes exactly what the masked network computes; False gives a plain network
            (masks off), e.g. the student.

    Returns:
        :class:`PruneResult`; ``result.net`` is in eval mode and shares no tensors with ``net``.

    Raises:
        ConfigError: ``keep`` does not match the cells.
    """
    if len(keep) != len(net.cells):
        raise ConfigError(f"keep has {len(keep)} entries for {len(net.cells)} cells.")
    specs, positions, kept_channels = [], [], []
    for cell, k in zip(net.cells, keep):
        spec, pos = _pruned_spec(cell.spec, k)
        specs.append(spec)
        positions.append(pos)
        kept_channels.append(_channels_kept(cell.spec, spec.concat, cell.C))
    new = NetworkCIFAR(net.C, net.num_classes, net.layers, net.genotype, in_channels=net.in_channels,
                       stem_multiplier=net.stem_multiplier, stem_stride=net.stem_stride, cell_specs=specs)
    old_sd = {k: v.detach() for k, v in net.state_dict().items()}
    new_sd = new.state_dict()
    out: dict[str, torch.Tensor] = {}
    last = len(net.cells) - 1
    for key, ref in new_sd.items():
        parts = key.split(".")
        src = key
        cols: list[int] | None = None
        if parts[0] == "cells":
            c = int(parts[1])
            if parts[2] == "edges":
                node_s, k_s = parts[3][1:].split("_")
                node = int(node_s)
                old_k = positions[c][node - 2][int(k_s)]
                src = ".".join(parts[:3] + [f"n{node}_{old_k}"] + parts[4:])
            elif parts[2] in ("preprocess0", "preprocess1") and parts[-1] == "weight":
                producer = c - 2 if parts[2] == "preprocess0" else c - 1
                is_conv = old_sd[key].dim() == 4
                if producer >= 0 and is_conv:
                    cols = kept_channels[producer]
            elif parts[2] == "node_mask":
                out[key] = old_sd[key].clone() if keep_masks else torch.ones_like(ref)
                continue
        elif key == "classifier.weight":
            cols = kept_channels[last]
        val = old_sd[src]
        if cols is not None:
            val = val[:, cols]
        if tuple(val.shape) != tuple(ref.shape):  # pragma: no cover - would be a bug in the surgery
            raise ConfigError(f"pruning surgery: {key} has shape {tuple(val.shape)}, expected {tuple(ref.shape)}.")
        out[key] = val.clone()
    new.load_state_dict(out)
    for cell in new.cells:
        cell.apply_node_mask = bool(keep_masks)
    removed = sum(1 for cell, k in zip(net.cells, keep) for i, n in enumerate(cell.spec.nodes)
                  if n is not None and i not in k.kept)
    exact = not any(k.inexact for k in keep)
    return PruneResult(new.eval(), list(keep), removed, exact)


def node_count(net: NetworkCIFAR) -> int:
    """Intermediate nodes still present (not ``None``) over all cells."""
    return sum(1 for cell in net.cells for n in cell.spec.nodes if n is not None)


# --------------------------------------------------------------------------- reporting


def nodes_kept_rows(net: NetworkCIFAR, keep: Sequence[CellKeep], masks: Any = None) -> list[dict[str, Any]]:
    """The paper's Table 1/3/5/7 as data: one row per cell (1-based), its type, the reserved
    intermediate nodes (0-based as in the paper), forced ones, and the final mask values."""
    rows_m = _mask_list(masks, net)
    rows = []
    for c, (cell, k, m) in enumerate(zip(net.cells, keep, rows_m)):
        rows.append({"cell": c + 1, "type": "Reduction" if cell.spec.reduction else "Normal",
                     "kept": list(k.kept), "forced": list(k.forced), "cascaded": list(k.cascaded),
                     "masks": [round(float(v), 6) for v in m]})
    return rows


def nodes_kept_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`nodes_kept_rows` (``*`` marks a node kept only to keep the cell non-empty)."""
    lines = ["| Cell | Type | Reserved intermediate nodes | masks (nodes 0-3) |", "| --- | --- | --- | --- |"]
    for r in rows:
        kept = ", ".join(f"{i}*" if i in r["forced"] else str(i) for i in r["kept"]) or "None"
        lines.append(f"| {r['cell']} | {r['type']} | {kept} | {' '.join(f'{v:.3f}' for v in r['masks'])} |")
    kept_total = sum(len(r["kept"]) for r in rows)
    total = sum(len(r["masks"]) for r in rows)
    lines.append("")
    lines.append(f"{kept_total} of {total} intermediate nodes kept ({total - kept_total} pruned)."
                 + (" `*` = kept only so that the cell has an output." if any(r["forced"] for r in rows) else ""))
    return "\n".join(lines)
