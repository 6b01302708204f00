"""compress.profiling: deployment targets and latency measurement (onnxruntime or torch eager).

May import only ``compress.exporters`` from the project. ``onnxruntime`` is imported lazily.

Importing the package is light: the names below are loaded on first use (``Target`` and the
errors without torch; ``profile_latency`` and ``profile_peak_memory`` with it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress._lazy import lazy_getattr  # a leaf: the standard library only

__all__ = [
    "ENGINES",
    "GRAPH_OPTIMIZATION_LEVELS",
    "PRESETS",
    "LatencyEstimate",
    "LatencyStats",
    "MemoryStats",
    "ProfilingError",
    "Target",
    "TargetError",
    "profile_latency",
    "profile_peak_memory",
]

_LAZY = {
    "ProfilingError": ("compress.profiling.errors", "ProfilingError"),
    "TargetError": ("compress.profiling.errors", "TargetError"),
    "ENGINES": ("compress.profiling.latency", "ENGINES"),
    "LatencyEstimate": ("compress.profiling.latency", "LatencyEstimate"),
    "LatencyStats": ("compress.profiling.latency", "LatencyStats"),
    "profile_latency": ("compress.profiling.latency", "profile_latency"),
    "MemoryStats": ("compress.profiling.memory", "MemoryStats"),
    "profile_peak_memory": ("compress.profiling.memory", "profile_peak_memory"),
    "GRAPH_OPTIMIZATION_LEVELS": ("compress.profiling.target", "GRAPH_OPTIMIZATION_LEVELS"),
    "PRESETS": ("compress.profiling.target", "PRESETS"),
    "Target": ("compress.profiling.target", "Target"),
}

if TYPE_CHECKING:  # pragma: no cover
    from compress.profiling.errors import ProfilingError, TargetError
    from compress.profiling.latency import ENGINES, LatencyEstimate, LatencyStats, profile_latency
    from compress.profiling.memory import MemoryStats, profile_peak_memory
    from compress.profiling.target import GRAPH_OPTIMIZATION_LEVELS, PRESETS, Target


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
