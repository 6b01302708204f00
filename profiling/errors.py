"""Errors raised by :mod:`compress.profiling`. All derive from :class:`~compress.errors.SlimforgeError`."""

from __future__ import annotations

from compress._error_root import SlimforgeError

__all__ = ["ProfilingError", "TargetError"]


class ProfilingError(SlimforgeError, RuntimeError):
    """Latency could not be measured (bad provider, unknown input shape, export failure, ...)."""


class TargetError(ProfilingError, ValueError):
    """A :class:`~compress.profiling.target.Target` field is invalid or a preset is unknown.

    Subclasses both :class:`ProfilingError` and :class:`ValueError`.
    """
