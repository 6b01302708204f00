"""The latency objective of ``darts-gal`` (issue 18, part 4): when a run is latency-aware, the
target's per-layer latency table it times once, and the per-node L1 weights of the GAL penalty.

A latency-aware run (``objective="latency"``, or ``"auto"`` with a budget that names latency) shares
one table between the DARTS search's expected-latency term and GAL's weighted ``||m||_1``
(docs/algorithms/darts-gal.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compress.profiling import latency_model
from compress.strategies.base import StrategyContext
from compress.strategies.darts.model import NetworkCIFAR
from compress.strategies.darts_gal.config import STRATEGY, DartsGalConfig

__all__ = ["LATENCY_TIMING", "latency_aware", "latency_table", "node_latency_weights"]

#: timing of the per-layer latency table behind the latency-weighted penalty (rounds, repeats, warmup)
LATENCY_TIMING = {"rounds": 3, "repeats": 5, "warmup": 2}


def latency_aware(ctx: StrategyContext, cfg: DartsGalConfig) -> bool:
    """``objective="latency"``, or ``"auto"`` with a budget that names latency."""
    return cfg.objective == "latency" or (cfg.objective == "auto" and ctx.budget.needs_latency)


def latency_table(ctx: StrategyContext) -> Any:
    """The target's per-layer latency table (cached on disk under the strategy's name)."""
    return latency_model.LayerLatencyTable(ctx.target, cache_dir=Path(latency_model.default_cache_dir()) / STRATEGY,
                                           **LATENCY_TIMING)


def node_latency_weights(net: NetworkCIFAR, example_inputs: torch.Tensor, table: Any,
                         floor: float = 0.05) -> tuple[tuple[float, ...], ...]:
    """Per-node L1 weights of the latency-weighted GAL penalty (issue 18, part 4).

    Node ``j`` of cell ``c`` is charged the predicted latency of the convolutions on its in-edges
    (modules ``cells.c.edges.n{j+2}_*``), each from ``table.latency(ConvConfig)`` at the input size it
    sees for ``example_inputs`` ``(B, C, H, W)`` -- what removing the node saves. Its consumers'
    1x1 preprocess columns and the pools/skips are not charged. The weights are divided by their
    mean over the live nodes, floored at ``floor`` (a node of skips and pools still costs something),
    and divided by their mean again, so that the mean weight is 1 and lambda keeps its scale.
    Removed nodes (``None``) get weight 0.

    Args:
        net: the baseline (read only). example_inputs: ``(B, C, H, W)``.
        table: anything with ``latency(cfg) -> ms`` (a
            :class:`~compress.profiling.latency_model.LayerLatencyTable` on the target).
        floor: smallest weight as a fraction of the mean, in ``[0, 1]``.

    Returns:
        one tuple of ``steps`` weights per cell.

    Raises:
        ProfilingError: the table cannot time a layer.
    """
    configs = latency_model.layer_configs(net, example_inputs)
    raw: list[list[float | None]] = []
    for c, cell in enumerate(net.cells):
        row: list[float | None] = []
        for j, node in enumerate(cell.spec.nodes):
            if node is None:
                row.append(None)
                continue
            prefix = f"cells.{c}.edges.n{j + 2}_"
            row.append(float(sum(table.latency(cfg) for name, cfg in configs if name.startswith(prefix))))
        raw.append(row)
    live = [v for row in raw for v in row if v is not None]
    mean = sum(live) / len(live) if live else 0.0
    if mean <= 0.0:
        return tuple(tuple(0.0 if v is None else 1.0 for v in row) for row in raw)
    floored = [[None if v is None else max(v / mean, floor) for v in row] for row in raw]
    live_f = [v for row in floored for v in row if v is not None]
    mean_f = sum(live_f) / len(live_f)
    return tuple(tuple(0.0 if v is None else v / mean_f for v in row) for row in floored)
