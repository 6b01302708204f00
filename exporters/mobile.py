"""Mobile artifacts next to ``student.onnx``: ORT format, mobile usability, int8, manifest.

Every function here is a thin, quiet wrapper over onnxruntime's own tools (the ORT converter,
the mobile usability checker's partition analysis, ``onnxruntime.quantization``); we add atomic
writes, structured (JSON-ready) results and clear errors.

* :func:`convert_to_ort` -- ``onnxruntime.tools.convert_onnx_models_to_ort`` (fixed
  optimisation style), the ``.ort`` file ORT Mobile loads.
* :func:`mobile_usability` -- NNAPI and CoreML partition coverage, as
  ``python -m onnxruntime.tools.check_onnx_model_mobile_usability`` prints it, but as data.
* :func:`quantize_int8` -- static QDQ int8 quantisation calibrated on the user's data.
* :func:`onnx_accuracy` -- top-1 accuracy of an ONNX file on labelled inputs.
* :func:`write_manifest` -- ``manifest.json``: hashes, sizes, opset, input/output specs and the
  validation and latency figures of every artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compress.exporters.atomic import write_bytes_atomic, write_text_atomic
from compress.exporters.errors import ExportError

__all__ = [
    "convert_to_ort",
    "mobile_usability",
    "quantize_int8",
    "onnx_accuracy",
    "onnx_spec",
    "sha256_file",
    "write_manifest",
]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet():
    """Keep onnxruntime tools' prints and INFO logs off the console."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("usability_checker", "check_usability", "onnxruntime", "root", "ort_format_model",
                                           "ort_format_model.utils")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        if buf.getvalue().strip():
            log.debug("onnxruntime tool output:\n%s", buf.getvalue())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_to_ort(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Convert an ONNX file to ORT format (``.ort``) with ORT's own converter.

    Raises:
        ExportError: the converter failed (its message is included).
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    src, dst = Path(onnx_path), Path(out_path)
    with tempfile.TemporaryDirectory(prefix=".ort-", dir=dst.parent if dst.parent.exists() else None) as tmp:
        tmp_dir = Path(tmp)
        staged = tmp_dir / "in" / "model.onnx"
        staged.parent.mkdir()
        shutil.copyfile(src, staged)
        try:
            with _quiet():
                convert_onnx_models_to_ort(staged, output_dir=tmp_dir / "out",
                                           optimization_styles=[OptimizationStyle.Fixed])
        except Exception as exc:  # the converter raises plain exceptions
            raise ExportError(f"ORT-format conversion of {src.name} failed: {exc}. The .onnx file is still usable.") from exc
        produced = sorted((tmp_dir / "out").rglob("*.ort"))
        if not produced:
            raise ExportError(f"ORT-format conversion of {src.name} produced no .ort file.")
        write_bytes_atomic(dst, produced[0].read_bytes())
    return dst


def mobile_usability(onnx_path: str | Path) -> dict[str, Any]:
    """How well the model partitions onto NNAPI (Android) and CoreML (iOS).

    Returns, per execution provider (``nnapi``, ``coreml_neuralnetwork``, ``coreml_mlprogram``):
    ``nodes``, ``supported_nodes``, ``coverage`` (fraction), ``partitions``, ``unsupported_ops``,
    ``suitability`` ("YES" / "MAYBE" / "NO", ORT's rule) with the dynamic batch as is, and
    ``suitability_fixed_shapes`` if the input shapes were made fixed.
    """
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    checks = {
        "nnapi": lambda m, fixed: uc.check_nnapi_partitions(m, fixed),
        "coreml_neuralnetwork": lambda m, fixed: uc.check_coreml_partitions(m, fixed, "coreml_supported_neuralnetwork_ops.md"),
        "coreml_mlprogram": lambda m, fixed: uc.check_coreml_partitions(m, fixed, "coreml_supported_mlprogram_ops.md"),
    }
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        opt = Path(tmp) / "basic.onnx"
        optimize_model(Path(onnx_path), opt)  # ORT-format conversion optimises to this level too
        model = ModelProtoWithShapeInfo(opt).model_with_shape_info
        for ep, fn in checks.items():
            info = fn(model, True)
            info_fixed = fn(model, False)
            out[ep] = {
                "nodes": int(info.num_nodes),
                "supported_nodes": int(info.num_supported_nodes),
                "coverage": float(info.num_supported_nodes / max(info.num_nodes, 1)),
                "partitions": int(info.num_partitions),
                "unsupported_ops": sorted(info.unsupported_ops),
                "suitability": info.suitability().name,
                "suitability_fixed_shapes": info_fixed.suitability().name,
                "coverage_fixed_shapes": float(info_fixed.num_supported_nodes / max(info_fixed.num_nodes, 1)),
            }
    return out


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over an in-memory array."""

    def __init__(self, name: str, x: np.ndarray, batch: int) -> None:
        self.items = [{name: x[i: i + batch]} for i in range(0, len(x), batch)]
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.items):
            return None
        self.pos += 1
        return self.items[self.pos - 1]

    def rewind(self) -> None:
        self.pos = 0


def quantize_int8(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    batch: int = 16,
) -> Path:
    """Static int8 quantisation (QDQ format, ``onnxruntime.quantization.quantize_static``).

    Args:
        calibration: ``(N, C, H, W)`` float32 inputs from the user's data (a few hundred suffice).

    Raises:
        ExportError: quantisation failed.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(onnx_path), Path(out_path)
    name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    x = np.ascontiguousarray(calibration, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix=".int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        q = Path(tmp) / "q.onnx"
        try:
            with _quiet():
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                quantize_static(str(pre), str(q), _Reader(name, x, batch), quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
        except Exception as exc:
            raise ExportError(f"int8 quantisation of {src.name} failed: {exc}") from exc
        write_bytes_atomic(dst, q.read_bytes())
    return dst


def onnx_accuracy(path: str | Path, inputs: np.ndarray, labels: np.ndarray, *, batch: int = 64) -> float:
    """Top-1 accuracy in [0, 1] of the ONNX model at ``path`` (CPU, 1 thread)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    preds = [sess.run(None, {name: x[i: i + batch]})[0].argmax(1) for i in range(0, len(x), batch)]
    return float((np.concatenate(preds) == np.asarray(labels)).mean())


def onnx_spec(path: str | Path) -> dict[str, Any]:
    """Opset, IR version and input/output names, shapes (symbolic dims as strings) and dtypes."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def io_spec(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
            out.append({"name": v.name, "shape": dims, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower()})
        return out

    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "ir_version": int(m.ir_version), "inputs": io_spec(m.graph.input), "outputs": io_spec(m.graph.output)}


def write_manifest(directory: str | Path, artifacts: Sequence[Mapping[str, Any]], **extra: Any) -> Path:
    """Write ``manifest.json`` listing every artifact with its sha256, size in bytes and the
    figures passed in each mapping (``{"file": "student.onnx", "kind": ..., "validation": ..., "latency_ms": ...}``).
    ONNX files also get their opset and input/output specs."""
    d = Path(directory)
    rows = []
    for a in artifacts:
        p = d / a["file"]
        if not p.is_file():
            raise ExportError(f"manifest: artifact {a['file']} is missing in {d}")
        row = {**a, "sha256": sha256_file(p), "bytes": p.stat().st_size}
        if p.suffix == ".onnx":
            row.update(onnx_spec(p))
        rows.append(row)
    payload = {"format": "slimforge-manifest/1", **extra, "artifacts": rows}
    return write_text_atomic(d / "manifest.json", json.dumps(payload, indent=2, default=str))
