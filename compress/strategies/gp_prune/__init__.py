"""Strategy ``gp-prune`` (GECCO'22): channel pruning ranked by an expression-tree metric."""

from compress.strategies.gp_prune.strategy import GPPrune, GPPruneConfig

__all__ = ["GPPrune", "GPPruneConfig"]
