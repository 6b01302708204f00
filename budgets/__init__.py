"""compress.budgets: what a model costs (fvcore MACs, params) and whether it fits a budget.

May import: ``compress.profiling`` (Target), ``compress.exporters``. Never ``compress`` proper.
"""

from compress.budgets.budget import METRICS, Budget, BudgetCheck, Violation
from compress.budgets.cost import Cost, measure_cost
from compress.budgets.errors import BudgetError, CostError

__all__ = ["Budget", "BudgetCheck", "BudgetError", "Cost", "CostError", "METRICS", "Violation", "measure_cost"]
