"""Strategy ``eg-nas``: a DARTS supernet whose architecture is moved by CMA-ES directions.

Source: Cai et al., "EG-NAS: Neural Architecture Search with Fast Evolutionary Exploration",
AAAI 2024; implementation notes in docs/algorithms/eg-nas.md.

Pipeline: search -> DARTS genotype -> size ``(C, cells)`` of the evaluation network to the
budget by measuring a small grid through ``ctx.check`` -> retrain it from scratch with KD from the
teacher -> student.

Modules: :mod:`.config` (``EGNASConfig`` and its sub-configs, presets, the checkpoint keys), :mod:`.cmaes` (the
CMA-ES architecture update of Alg. 1, Eq. 3-9: step size, compound fitness, restarts, direction),
:mod:`.search` (the supernet search: fitness forwards, the CMA-ES updater, the search loop with
checkpoints), :mod:`.strategy` (the pipeline). Importing this package registers the strategy.

Not copied from the released code: the 6-of-7-argument ``CFF`` call, ``--mon`` as ``int``, the
undefined ImageNet arguments, the identical restarts, the stuck sigma.
"""

from compress.strategies.eg_nas.cmaes import (
    ESEpochResult,
    RestartResult,
    apply_direction,
    compound_fitness,
    es_epoch,
    l2_similarity,
    run_restart,
    select_direction,
    sigma_schedule,
)
from compress.strategies.eg_nas.config import _PRESETS  # noqa: F401  (the benchmarks read it)
from compress.strategies.eg_nas.config import (
    CMAESConfig,
    EGNASConfig,
    EGNASSearchConfig,
    final_key,
    search_key,
)
from compress.strategies.eg_nas.search import (
    CMAESUpdater,
    EGNASSearch,
    SearchOutcome,
    SupernetEvaluator,
    derive_seed,
)
from compress.strategies.eg_nas.strategy import EGNAS

__all__ = [
    "EGNASConfig",
    "EGNASSearchConfig",
    "CMAESConfig",
    "search_key",
    "final_key",
    "EGNAS",
    "sigma_schedule",
    "l2_similarity",
    "compound_fitness",
    "select_direction",
    "apply_direction",
    "run_restart",
    "es_epoch",
    "RestartResult",
    "ESEpochResult",
    "SupernetEvaluator",
    "CMAESUpdater",
    "EGNASSearch",
    "SearchOutcome",
    "derive_seed",
]
