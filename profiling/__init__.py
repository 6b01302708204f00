"""compress.profiling: deployment targets and latency measurement (onnxruntime or torch eager).

May import only ``compress.exporters`` from the project. ``onnxruntime`` is imported lazily.
"""

from compress.profiling.errors import ProfilingError, TargetError
from compress.profiling.latency import ENGINES, LatencyEstimate, LatencyStats, profile_latency
from compress.profiling.memory import MemoryStats, profile_peak_memory
from compress.profiling.target import GRAPH_OPTIMIZATION_LEVELS, PRESETS, Target

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
