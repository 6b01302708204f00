"""Errors raised by :mod:`compress.profiling`."""

from __future__ import annotations

__all__ = ["ProfilingError", "TargetError"]


class ProfilingError(RuntimeError):
    """Latency could not be measured (bad provider, unknown input shape, export failure, ...)."""


class TargetError(ProfilingError, ValueError):
    """A :class:`~compress.profiling.target.Target` field is invalid or a preset is unknown.

    Subclasses both :class:`ProfilingError` and :class:`ValueError`.
    """
