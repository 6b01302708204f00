"""Strategy ``gp-prune`` (GECCO'22): channel pruning ranked by an expression-tree metric.

Modules: :mod:`.config` (``GPPruneConfig``, its checks, the checkpoint key's config),
:mod:`.features` and :mod:`.importance` (feature maps, channel scores of a tree), :mod:`.pruning`
(the channel surgery, the classifier, rebuilding a pruned network), :mod:`.allocation` (groups,
global ranking, latency knapsack), :mod:`.modes` (each allocation mode pruned to the budget),
:mod:`.search` (the bisection toward the budget, the latency re-timing), :mod:`.schedule` (sparse
learning, iterative budgets), :mod:`.report` (report sections), :mod:`.strategy` (``GPPrune``: the
phases, their checkpoints, the fallback between allocations). Importing this package registers the
strategy.
"""

from compress.strategies.gp_prune.strategy import GPPrune, GPPruneConfig

__all__ = ["GPPrune", "GPPruneConfig"]
