"""The shared DARTS substrate (used by ``eg-nas`` and ``darts-gal``).

Liu, Simonyan, Yang, "DARTS: Differentiable Architecture Search", ICLR 2019, with the PC-DARTS
options of Xu et al., ICLR 2020 (docs/algorithms/darts-space.md). Modules:

* :mod:`.ops` -- the op set (``PRIMITIVES`` 8 ops, ``EGNAS_PRIMITIVES`` 7 ops), ``make_op``.
* :mod:`.search` -- ``MixedOp``, ``SearchCell``, ``SearchNetwork`` (alphas outside ``parameters()``).
* :mod:`.architect` -- ``Architect``: first- and second-order DARTS alpha steps.
* :mod:`.supernet_search` -- ``SupernetSearch``: the one search loop (weight steps on the training
  runtime, checkpoints, resume) with a pluggable ``ArchUpdater`` (``Architect``, EG-NAS's CMA-ES).
* :mod:`.genotype` -- ``Genotype`` (frozen, JSON), published cells, ``derive_genotype``, ``alpha_entropy``.
* :mod:`.model` -- ``NetworkCIFAR`` evaluation network, ``CellSpec`` per-cell structure,
  node-mask hook, ``build_from_arch``.
* :mod:`.sizing` -- ``size_to_budget``: measured (C, cells) grid search against the budget oracle.
"""

from compress.strategies.darts.architect import Architect
from compress.strategies.darts.genotype import (
    DARTS_V1,
    DARTS_V2,
    EG_NAS_CIFAR10,
    GENOTYPES,
    PC_DARTS_CIFAR,
    Genotype,
    alpha_entropy,
    derive_genotype,
    num_edges,
)
from compress.strategies.darts.model import CellSpec, EvalCell, NetworkCIFAR, build_from_arch, cell_specs_from_genotype
from compress.strategies.darts.ops import EGNAS_PRIMITIVES, PRIMITIVES, make_op, resolve_primitives
from compress.strategies.darts.search import MixedOp, SearchCell, SearchNetwork, reduction_positions
from compress.strategies.darts.sizing import SizingResult, size_to_budget
from compress.strategies.darts.supernet_search import (ArchUpdater, SearchOutcome, SearchSchedule, SupernetSearch,
                                                       build_supernet)

__all__ = [
    "Architect", "Genotype", "DARTS_V1", "DARTS_V2", "PC_DARTS_CIFAR", "EG_NAS_CIFAR10", "GENOTYPES",
    "derive_genotype", "alpha_entropy", "num_edges", "CellSpec", "EvalCell", "NetworkCIFAR", "build_from_arch",
    "cell_specs_from_genotype", "PRIMITIVES", "EGNAS_PRIMITIVES", "make_op", "resolve_primitives", "MixedOp",
    "SearchCell", "SearchNetwork", "reduction_positions", "SizingResult", "size_to_budget", "ArchUpdater",
    "SearchOutcome", "SearchSchedule", "SupernetSearch", "build_supernet",
]
