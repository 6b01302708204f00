"""Built-in strategies. Importing this package registers them with :mod:`compress.registry`."""

from compress.strategies.gp_prune import GPPrune, GPPruneConfig  # noqa: F401

__all__ = ["GPPrune", "GPPruneConfig"]
