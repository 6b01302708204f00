"""compress.exporters: PyTorch module -> checked, self-contained ONNX file, and its validation.

Imports nothing from the project. ``onnx``/``onnxruntime``/``onnxscript`` are imported lazily
inside the functions that need them.

Importing the package is light: the names below are loaded on first use (the atomic writes and
the errors without torch; ``export_onnx`` and ``validate_onnx`` with torch and numpy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress._lazy import lazy_getattr  # a leaf: the standard library only

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportError",
    "InputShapeError",
    "OnnxValidationError",
    "ValidationReport",
    "export_onnx",
    "validate_onnx",
    "write_bytes_atomic",
    "write_text_atomic",
]

_LAZY = {
    "write_bytes_atomic": ("compress.exporters.atomic", "write_bytes_atomic"),
    "write_text_atomic": ("compress.exporters.atomic", "write_text_atomic"),
    "ExportError": ("compress.exporters.errors", "ExportError"),
    "InputShapeError": ("compress.exporters.errors", "InputShapeError"),
    "OnnxValidationError": ("compress.exporters.errors", "OnnxValidationError"),
    "INPUT_NAME": ("compress.exporters.onnx_export", "INPUT_NAME"),
    "OUTPUT_NAME": ("compress.exporters.onnx_export", "OUTPUT_NAME"),
    "export_onnx": ("compress.exporters.onnx_export", "export_onnx"),
    "ValidationReport": ("compress.exporters.validate", "ValidationReport"),
    "validate_onnx": ("compress.exporters.validate", "validate_onnx"),
}

if TYPE_CHECKING:  # pragma: no cover
    from compress.exporters.atomic import write_bytes_atomic, write_text_atomic
    from compress.exporters.errors import ExportError, InputShapeError, OnnxValidationError
    from compress.exporters.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
    from compress.exporters.validate import ValidationReport, validate_onnx


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
