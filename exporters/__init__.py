"""compress.exporters: PyTorch module -> checked, self-contained ONNX file, and its validation.

Imports nothing from the project. ``onnx``/``onnxruntime``/``onnxscript`` are imported lazily
inside the functions that need them, so importing this package only pulls in torch and numpy.
"""

from compress.exporters.atomic import write_bytes_atomic, write_text_atomic
from compress.exporters.errors import ExportError, InputShapeError, OnnxValidationError
from compress.exporters.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from compress.exporters.validate import ValidationReport, validate_onnx

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
