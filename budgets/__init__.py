"""compress.budgets: what a model costs (fvcore MACs, params) and whether it fits a budget.

May import: ``compress.profiling`` (Target), ``compress.exporters``. Never ``compress`` proper.
"""

from compress.budgets.budget import LATENCY_NOT_REDUCED, METRICS, Budget, BudgetCheck, Violation
from compress.budgets.cost import Cost, measure_cost
from compress.budgets.errors import BudgetError, CostError
from compress.budgets.onnx_cost import onnx_cost

__all__ = ["Budget", "BudgetCheck", "BudgetError", "Cost", "CostError", "LATENCY_NOT_REDUCED", "METRICS", "Violation",
           "measure_cost", "onnx_cost"]
