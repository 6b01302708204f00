"""Built-in strategies. Importing this package registers them with :mod:`compress.registry`."""

from compress.strategies.gp_prune import GPPrune, GPPruneConfig  # noqa: F401
from compress.strategies.darts_gal import DartsGal, DartsGalConfig  # noqa: F401
from compress.strategies.eg_nas import EGNAS, EGNASConfig  # noqa: F401
from compress.strategies.grow import Grow, GrowConfig  # noqa: F401

__all__ = ["DartsGal", "DartsGalConfig", "EGNAS", "EGNASConfig", "GPPrune", "GPPruneConfig", "Grow", "GrowConfig"]
