"""Errors raised by :mod:`compress.exporters`. All derive from :class:`~compress.errors.SlimforgeError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress._error_root import SlimforgeError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from compress.exporters.validate import ValidationReport

__all__ = ["ExportError", "InputShapeError", "OnnxValidationError"]


class ExportError(SlimforgeError, RuntimeError):
    """A model could not be exported to a valid ONNX file.

    The message names the failing op / model location when it is known and says what to do.
    """


class InputShapeError(ExportError, ValueError):
    """Inputs given to an exporter function do not match the model / ONNX graph.

    Subclasses both :class:`ExportError` and :class:`ValueError`, so either can catch it.
    """


class OnnxValidationError(ExportError):
    """The exported ONNX model disagrees with the PyTorch model.

    ``.report`` is the full :class:`~compress.exporters.validate.ValidationReport`; the message
    lists every mismatch found (all batch sizes are checked before raising).
    """

    def __init__(self, message: str, report: "ValidationReport") -> None:
        super().__init__(message)
        self.report = report
