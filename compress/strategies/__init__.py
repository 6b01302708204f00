"""Built-in strategies. Importing this package registers them with :mod:`compress.registry`.

``get_strategy`` / ``list_strategies`` imported from here (or as ``compress.get_strategy`` /
``compress.list_strategies``) therefore see every built-in strategy, and, through the registry,
every out-of-tree one of the ``slimforge.strategies`` entry-point group.
"""

from compress.registry import get_strategy, list_strategies, register_strategy
from compress.strategies.gp_prune import GPPrune, GPPruneConfig  # noqa: F401
from compress.strategies.darts_gal import DartsGal, DartsGalConfig  # noqa: F401
from compress.strategies.eg_nas import EGNAS, EGNASConfig  # noqa: F401
from compress.strategies.grow import Grow, GrowConfig  # noqa: F401

__all__ = ["DartsGal", "DartsGalConfig", "EGNAS", "EGNASConfig", "GPPrune", "GPPruneConfig", "Grow", "GrowConfig",
           "get_strategy", "list_strategies", "register_strategy"]
