"""Errors of the budgets layer. Each message says what to do. Both derive from
:class:`~compress.errors.SlimforgeError`."""

from __future__ import annotations

from compress._error_root import SlimforgeError

__all__ = ["BudgetError", "CostError"]


class BudgetError(SlimforgeError, ValueError):
    """An invalid, unresolved or uncheckable budget (bad spec string, non-positive limit,
    relative limit used before it was resolved against the teacher, missing measurement)."""


class CostError(SlimforgeError, RuntimeError):
    """The cost of a model could not be counted (fvcore could not trace it)."""
