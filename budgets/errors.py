"""Errors of the budgets layer. Each message says what to do."""

from __future__ import annotations

__all__ = ["BudgetError", "CostError"]


class BudgetError(ValueError):
    """An invalid, unresolved or uncheckable budget (bad spec string, non-positive limit,
    relative limit used before it was resolved against the teacher, missing measurement)."""


class CostError(RuntimeError):
    """The cost of a model could not be counted (fvcore could not trace it)."""
