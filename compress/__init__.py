"""slimforge: teacher + data + budget -> a student that meets the budget, a validated ONNX
artifact, its measured latency, and a report.

``import compress`` is light: it touches neither CUDA, onnxruntime nor the strategies until a
name below is used.

Layering (one way): ``compress`` (API, registry, strategies, CLI) -> ``compress.budgets`` ->
``compress.profiling`` -> ``compress.exporters``.

Every error slimforge raises on purpose, in any layer, is a :class:`SlimforgeError` (see
:mod:`compress.errors`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress._error_root import SlimforgeError  # a leaf: imports nothing
from compress._lazy import lazy_getattr  # a leaf: the standard library only

__version__ = "0.1.0"

__all__ = [
    "compress",
    "CompressOptions",
    "list_strategies",
    "get_strategy",
    "register_strategy",
    "CompressionResult",
    "Budget",
    "Target",
    "load_student",
    "SlimforgeError",
    "__version__",
]

_LAZY = {
    "compress": ("compress.api", "compress"),
    "CompressOptions": ("compress.options", "CompressOptions"),
    "list_strategies": ("compress.strategies", "list_strategies"),  # the package registers the built-ins
    "get_strategy": ("compress.strategies", "get_strategy"),
    "register_strategy": ("compress.registry", "register_strategy"),
    "CompressionResult": ("compress.result", "CompressionResult"),
    "Budget": ("compress.budgets", "Budget"),
    "Target": ("compress.profiling", "Target"),
    "load_student": ("compress.serialization", "load_student"),
}

if TYPE_CHECKING:  # pragma: no cover
    from compress.api import compress
    from compress.budgets import Budget
    from compress.options import CompressOptions
    from compress.profiling import Target
    from compress.registry import register_strategy
    from compress.strategies import get_strategy, list_strategies
    from compress.result import CompressionResult
    from compress.serialization import load_student


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
