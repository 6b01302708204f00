"""compress.budgets: what a model costs (fvcore MACs, params) and whether it fits a budget.

May import: ``compress.profiling`` (Target), ``compress.exporters``. Never ``compress`` proper.

Importing the package is light: the names below are loaded on first use (``from compress.budgets
import Budget`` loads :mod:`compress.budgets.budget`, and torch with it), so that
``compress.errors``, which imports :mod:`compress.budgets.errors`, loads neither torch nor fvcore.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress._lazy import lazy_getattr  # a leaf: the standard library only

__all__ = ["Budget", "BudgetCheck", "BudgetError", "Cost", "CostError", "LATENCY_NOT_REDUCED", "METRICS", "Violation",
           "measure_cost", "onnx_cost"]

_LAZY = {
    "Budget": ("compress.budgets.budget", "Budget"),
    "BudgetCheck": ("compress.budgets.budget", "BudgetCheck"),
    "LATENCY_NOT_REDUCED": ("compress.budgets.budget", "LATENCY_NOT_REDUCED"),
    "METRICS": ("compress.budgets.budget", "METRICS"),
    "Violation": ("compress.budgets.budget", "Violation"),
    "Cost": ("compress.budgets.cost", "Cost"),
    "measure_cost": ("compress.budgets.cost", "measure_cost"),
    "BudgetError": ("compress.budgets.errors", "BudgetError"),
    "CostError": ("compress.budgets.errors", "CostError"),
    "onnx_cost": ("compress.budgets.onnx_cost", "onnx_cost"),
}

if TYPE_CHECKING:  # pragma: no cover
    from compress.budgets.budget import LATENCY_NOT_REDUCED, METRICS, Budget, BudgetCheck, Violation
    from compress.budgets.cost import Cost, measure_cost
    from compress.budgets.errors import BudgetError, CostError
    from compress.budgets.onnx_cost import onnx_cost


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
