"""Config blocks both DARTS-space strategies (``darts-gal``, ``eg-nas``) share: the sizing grid of
the stacked network and its training block (the shared fine-tune block plus drop-path).

Each strategy declares them as sub-configs (:func:`compress.strategies.config_tree.subconfig`) with
its own defaults and the flat spelling its configs had before (issue 15, part 5).
"""

from __future__ import annotations

from dataclasses import dataclass

from compress.errors import ConfigError
from compress.strategies._parts.config_fields import check_fields, raise_problems
from compress.strategies.config_tree import FinetuneConfig
from compress.strategies.darts.sizing import DEFAULT_C, DEFAULT_LAYERS

__all__ = ["SizingConfig", "DARTSTrainConfig"]


@dataclass(frozen=True)
class SizingConfig:
    """The (C, cells, stem stride) grid a searched genotype is stacked over to fit the budget
    (:func:`~compress.strategies.darts.sizing.size_to_budget`; no formula: every candidate is
    measured by the budget oracle).

    Attributes:
        candidates_C: initial channel counts tried (even ints >= 2).
        candidates_layers: cell counts tried (ints >= 1).
        stem_strides: stem strides tried (1 and/or 2).
        capacity: ``"params"`` or ``"macs"``: which cost the largest network that fits maximises.

    Raises:
        ConfigError: a value out of range (the message names the field).
    """

    candidates_C: tuple[int, ...] = DEFAULT_C
    candidates_layers: tuple[int, ...] = DEFAULT_LAYERS
    stem_strides: tuple[int, ...] = (1, 2)
    capacity: str = "params"

    def __post_init__(self) -> None:
        check_fields(self)
        problems = []
        if not self.candidates_C or not all(c >= 2 and c % 2 == 0 for c in self.candidates_C):
            problems.append(f"candidates_C must be even ints >= 2, got {self.candidates_C}")
        if not self.candidates_layers or not all(v >= 1 for v in self.candidates_layers):
            problems.append(f"candidates_layers must be ints >= 1, got {self.candidates_layers}")
        if not self.stem_strides or not all(s in (1, 2) for s in self.stem_strides):
            problems.append(f"stem_strides must be 1 and/or 2, got {self.stem_strides}")
        if self.capacity not in ("params", "macs"):
            problems.append(f"capacity must be 'params' or 'macs', got {self.capacity!r}")
        raise_problems("SizingConfig", problems)


@dataclass(frozen=True)
class DARTSTrainConfig(FinetuneConfig):
    """The training block of a stacked DARTS network (a baseline or a retrain): the shared
    fine-tune block (:class:`~compress.strategies.config_tree.FinetuneConfig`) plus

    Attributes:
        drop_path: drop-path probability, ramped linearly over the epochs (DARTS §A.2 uses 0.2 at
            600 epochs; 0 = off).

    Raises:
        ConfigError: a value out of range (the message names the field).
    """

    drop_path: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"DARTSTrainConfig: drop_path must be in [0, 1), got {self.drop_path}.")
