"""Strategy ``darts-gal`` (Zhang et al., Information Sciences 2021): DARTS cells sized to the
budget, intermediate nodes pruned by generative adversarial learning, KD retrain.

Modules: :mod:`.config` (``DartsGalConfig``), :mod:`.search` (DARTS search loop with
checkpoints), :mod:`.gal` (discriminator, losses, FISTA, the GAL trainer), :mod:`.prune`
(physical node removal, nodes-kept table, cell drawings), :mod:`.latency` (the latency objective:
per-layer table, per-node penalty weights), :mod:`.gal_phase` (stage 3: lambda search, GAL runs,
closing loop), :mod:`.checkpoints` (phase keys and store), :mod:`.strategy` (the pipeline).
Importing this package registers the strategy.
"""

from compress.strategies.darts_gal.config import DartsGalConfig
from compress.strategies.darts_gal.gal import (
    Discriminator,
    GALSettings,
    GALTrainer,
    MaskFISTA,
    attach_masks,
    data_loss,
    discriminator_loss,
    generator_adv_loss,
    mask_penalty,
    soft_threshold,
)
from compress.strategies.darts_gal.prune import (
    CellKeep,
    draw_genotype,
    kept_nodes,
    nodes_kept_markdown,
    nodes_kept_rows,
    prune_network,
)
from compress.strategies.darts_gal.gal_phase import budget_ratio
from compress.strategies.darts_gal.latency import node_latency_weights
from compress.strategies.darts_gal.search import DartsSearch
from compress.strategies.darts_gal.strategy import DartsGal

__all__ = [
    "DartsGal", "DartsGalConfig", "DartsSearch", "Discriminator", "GALSettings", "GALTrainer", "MaskFISTA",
    "attach_masks", "data_loss", "mask_penalty", "budget_ratio", "node_latency_weights",
    "discriminator_loss", "generator_adv_loss", "soft_threshold", "CellKeep",
    "kept_nodes", "prune_network", "nodes_kept_rows", "nodes_kept_markdown", "draw_genotype",
]
