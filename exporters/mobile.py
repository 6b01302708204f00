"""Mobile artifacts next to ``student.onnx``: ORT format, mobile usability, int8, manifest.

Every function here is a thin, quiet wrapper over onnxruntime's own tools (the ORT converter,
the mobile usability checker's partition analysis, ``onnxruntime.quantization``); we add atomic
writes, structured (JSON-ready) results and clear errors.

* :func:`convert_to_ort` -- ``onnxruntime.tools.convert_onnx_models_to_ort`` (fixed
  optimisation style), the ``.ort`` file ORT Mobile loads.
* :func:`mobile_usability` -- NNAPI and CoreML partition coverage, as
  ``python -m onnxruntime.tools.check_onnx_model_mobile_usability`` prints it, but as data.
* :func:`quantize_int8` -- static int8 quantisation calibrated on the user's data, with the
  :class:`Int8Settings` measured fastest on x86 (``benchmarks/results/int8.md``).
* :func:`int8_recommendation` -- the rule that marks an int8 file recommended or not.
* :func:`onnx_accuracy` -- top-1 accuracy of an ONNX file on labelled inputs.
* :func:`write_manifest` -- ``manifest.json``: hashes, sizes, opset, input/output specs and the
  validation and latency figures of every artifact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.exporters.atomic import write_bytes_atomic, write_text_atomic
from compress.exporters.errors import ExportError

__all__ = [
    "convert_to_ort",
    "mobile_usability",
    "quantize_int8",
    "Int8Settings",
    "DEFAULT_INT8_SETTINGS",
    "int8_recommendation",
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


QUANT_FORMATS = ("qdq", "qoperator")
"""``Int8Settings.quant_format`` values: ``"qdq"`` (QuantizeLinear/DequantizeLinear pairs around
float ops, fused into integer kernels by ORT at load) or ``"qoperator"`` (QLinearConv, ...)."""
QUANT_TYPES = ("int8", "uint8")
"""``Int8Settings.activation_type`` / ``weight_type`` values (QInt8 / QUInt8)."""
OP_SETS = ("all", "conv-matmul")
"""``Int8Settings.ops``: every op ORT can quantise, or only Conv, MatMul and Gemm."""
_OP_TYPES = {"all": None, "conv-matmul": ["Conv", "MatMul", "Gemm"]}


@dataclass(frozen=True)
class Int8Settings:
    """How :func:`quantize_int8` calls ``onnxruntime.quantization.quantize_static``.

    The defaults (QDQ, uint8 activations, int8 per-channel weights, every op ORT can quantise,
    no layer kept in float32, no ``reduce_range``) measured fastest at <= 1 point of accuracy drop
    on this project's x86 reference machine (Xeon with AVX-512 VNNI and AMX, onnxruntime 1.31,
    ``cpu-1t``): ``benchmarks/results/int8.md``, written by ``benchmarks/bench_int8.py``, which
    sweeps every field below on the demo students, the pretrained CIFAR ResNet-20/56 and timm
    ResNet-18 / MobileNetV3 at 224x224.

    onnxruntime's guide (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html)
    names QDQ with S8S8 as the first choice, U8S8 as the alternative, warns that S8S8 in the
    QOperator format is slow on x86-64, says ``reduce_range`` (7-bit weights) is only for x86
    CPUs *without* VNNI (whose ``vpmaddubsw`` u8s8 path can saturate), and recommends running
    ``quant_pre_process`` (shape inference and ORT's basic fusions) first. On our machine S8S8
    QDQ was slower than float32 (0.66x, geometric mean over the CIFAR ResNets and the timm nets)
    and QOperator S8S8 5-8x slower, while QDQ U8S8 was 2.0-2.9x faster (QOperator U8S8 no faster) on the CIFAR ResNet-20/56 and ResNet-18 at
    224x224, at -0.3 to +0.2 points of CIFAR accuracy: hence uint8 activations. Per-tensor
    weights, ``reduce_range``, quantising only Conv/MatMul/Gemm and keeping the first and last
    layers in float32 were each no faster on those models. int8 does not pay everywhere: 0.98x on
    MobileNetV3-Large and 0.64-0.87x on the tiny demo students, which is why
    :func:`int8_recommendation` exists. On an x86 CPU without VNNI, pass ``reduce_range=True``;
    the accuracy the report re-measures shows whether it is needed.

    Attributes:
        quant_format: ``"qdq"`` or ``"qoperator"``.
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: 7-bit weights (avoids the u8s8 ``vpmaddubsw`` saturation of pre-VNNI x86).
        activation_type / weight_type: ``"int8"`` or ``"uint8"`` (``uint8``/``int8`` = U8S8).
        ops: ``"all"`` (every op ORT can quantise) or ``"conv-matmul"`` (Conv, MatMul, Gemm only).
        exclude_first_last: keep the first Conv and the last Gemm/MatMul in float32.
        preprocess: run ``quant_pre_process`` first.

    Raises:
        ValueError: an unknown value (the message lists the valid ones).
    """

    quant_format: str = "qdq"
    per_channel: bool = True
    reduce_range: bool = False
    activation_type: str = "uint8"
    weight_type: str = "int8"
    ops: str = "all"
    exclude_first_last: bool = False
    preprocess: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (("quant_format", QUANT_FORMATS), ("activation_type", QUANT_TYPES),
                              ("weight_type", QUANT_TYPES), ("ops", OP_SETS)):
            v = getattr(self, name)
            if v not in allowed:
                raise ValueError(f"Int8Settings.{name} must be one of {list(allowed)}, got {v!r}")
        for name in ("per_channel", "reduce_range", "exclude_first_last", "preprocess"):
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ValueError(f"Int8Settings.{name} must be True or False, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of all fields."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Int8Settings":
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def label(self) -> str:
        """Short human-readable description, e.g. ``QDQ S8S8 per-channel all-ops``."""
        fmt = {"qdq": "QDQ", "qoperator": "QOperator"}[self.quant_format]
        types = f"{'S' if self.activation_type == 'int8' else 'U'}8{'S' if self.weight_type == 'int8' else 'U'}8"
        parts = [fmt, types, "per-channel" if self.per_channel else "per-tensor", f"{self.ops}-ops"]
        if self.reduce_range:
            parts.append("reduce-range")
        if self.exclude_first_last:
            parts.append("first/last fp32")
        if not self.preprocess:
            parts.append("no-preprocess")
        return " ".join(parts)


DEFAULT_INT8_SETTINGS = Int8Settings()
"""The settings :func:`quantize_int8` uses unless told otherwise."""


def _first_last_nodes(model: Any) -> list[str]:
    """Names of the first Conv and the last Gemm/MatMul node (graph order is topological);
    unnamed nodes get a name so that they can be excluded."""
    nodes = list(model.graph.node)
    for i, n in enumerate(nodes):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    first = next((n.name for n in nodes if n.op_type == "Conv"), None)
    last = next((n.name for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul")), None)
    return [x for x in (first, last) if x is not None]


def quantize_int8(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration: np.ndarray,
    *,
    per_channel: bool | None = None,
    batch: int = 16,
    settings: Int8Settings | None = None,
    quant_format: str | None = None,
    reduce_range: bool | None = None,
    activation_type: str | None = None,
    weight_type: str | None = None,
    ops: str | None = None,
    exclude_first_last: bool | None = None,
) -> Path:
    """Static int8 quantisation with ``onnxruntime.quantization.quantize_static`` (MinMax
    calibration), by default with :data:`DEFAULT_INT8_SETTINGS` (see :class:`Int8Settings` for
    what each setting does and why the defaults, measured in ``benchmarks/results/int8.md``).

    Args:
        calibration: ``(N, C, H, W)`` float32 inputs from the user's data (a few hundred suffice).
        per_channel, quant_format, reduce_range, activation_type, weight_type, ops,
            exclude_first_last: override one field of ``settings`` (``None`` = keep it).
        batch: calibration batch size.
        settings: the base settings (default :data:`DEFAULT_INT8_SETTINGS`).

    Raises:
        ValueError: an invalid setting.
        ExportError: quantisation failed.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    overrides = {k: v for k, v in dict(per_channel=per_channel, quant_format=quant_format, reduce_range=reduce_range,
                                       activation_type=activation_type, weight_type=weight_type, ops=ops,
                                       exclude_first_last=exclude_first_last).items() if v is not None}
    st = (settings or DEFAULT_INT8_SETTINGS).replace(**overrides)
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    src, dst = Path(onnx_path), Path(out_path)
    name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    x = np.ascontiguousarray(calibration, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix=".int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        q = Path(tmp) / "q.onnx"
        try:
            with _quiet():
                if st.preprocess:
                    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                else:
                    shutil.copyfile(src, pre)
                exclude = None
                if st.exclude_first_last:
                    model = onnx.load(str(pre))
                    exclude = _first_last_nodes(model)
                    onnx.save(model, str(pre))
                quantize_static(str(pre), str(q), _Reader(name, x, batch),
                                quant_format=QuantFormat.QDQ if st.quant_format == "qdq" else QuantFormat.QOperator,
                                op_types_to_quantize=_OP_TYPES[st.ops], per_channel=st.per_channel,
                                reduce_range=st.reduce_range, activation_type=qtype[st.activation_type],
                                weight_type=qtype[st.weight_type], nodes_to_exclude=exclude)
        except Exception as exc:
            raise ExportError(f"int8 quantisation of {src.name} failed ({st.label()}): {exc}") from exc
        write_bytes_atomic(dst, q.read_bytes())
    return dst


INT8_MIN_SPEEDUP = 1.0
"""int8 is recommended only when it runs at least this many times as fast as fp32 on the target."""
INT8_MAX_DROP_PTS = 1.0
"""... and loses at most this many points of top-1 accuracy."""


def int8_recommendation(fp32_ms: float, int8_ms: float, drop_pts: float, *, min_speedup: float = INT8_MIN_SPEEDUP,
                        max_drop_pts: float = INT8_MAX_DROP_PTS) -> dict[str, Any]:
    """Whether to recommend the int8 model over the fp32 one: the rule is ``speedup >= min_speedup``
    (``speedup = fp32_ms / int8_ms``, both measured side by side on the target) and
    ``drop_pts <= max_drop_pts`` (fp32 minus int8 top-1, in points). A pure function of its
    arguments, so that the rule is testable without timing anything.

    Returns:
        ``{"recommended": bool, "speedup": float, "reason": str | None}``; ``reason`` says what
        failed (``"slower than fp32 (0.40x on the target)"``, ``"accuracy drop 2.30 points > 1"``),
        ``None`` when recommended.

    Raises:
        ValueError: a latency that is not a positive finite number, or a non-finite drop.
    """
    for name, v in (("fp32_ms", fp32_ms), ("int8_ms", int8_ms)):
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite latency in ms, got {v!r}")
    if not (isinstance(drop_pts, (int, float)) and np.isfinite(drop_pts)):
        raise ValueError(f"drop_pts must be a finite number of points, got {drop_pts!r}")
    speedup = float(fp32_ms) / float(int8_ms)
    reasons = []
    if speedup < min_speedup:
        reasons.append(f"slower than fp32 ({speedup:.2f}x on the target)" if speedup < 1.0
                       else f"speedup {speedup:.2f}x < {min_speedup:g}x")
    if drop_pts > max_drop_pts:
        reasons.append(f"accuracy drop {drop_pts:.2f} points > {max_drop_pts:g}")
    return {"recommended": not reasons, "speedup": speedup, "reason": "; ".join(reasons) or None}


def onnx_accuracy(path: str | Path, inputs: np.ndarray, labels: np.ndarray, *, batch: int = 64) -> float:
    """Top-1 accuracy in [0, 1] of the ONNX model at ``path`` (CPU, 1 thread) on ``inputs``
    ``(N, C, H, W)`` float and ``labels`` ``(N,)``, run ``batch`` samples at a time."""
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    y = np.asarray(labels)
    return onnx_accuracy_batches(path, ((x[i: i + batch], y[i: i + batch]) for i in range(0, len(x), batch)))


def onnx_accuracy_batches(path: str | Path, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Top-1 accuracy in [0, 1] of the ONNX model at ``path`` (CPU, 1 thread, one session) over
    ``(x, y)`` batches that are read one at a time (a split that does not fit in memory): ``x``
    ``(B, C, H, W)`` float32-castable, ``y`` ``(B,)`` integer class indices.

    Raises:
        ValueError: ``batches`` is empty.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct, n = 0, 0
    for x, y in batches:
        pred = sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0].argmax(1)
        correct += int((pred == np.asarray(y)).sum())
        n += len(pred)
    if n == 0:
        raise ValueError("onnx_accuracy: no samples")
    return correct / n


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


def write_manifest(directory: str | Path, artifacts: Sequence[Mapping[str, Any]], *,
                   preprocess: Mapping[str, Any] | None = None, **extra: Any) -> Path:
    """Write ``manifest.json`` listing every artifact with its sha256, size in bytes and the
    figures passed in each mapping (``{"file": "student.onnx", "kind": ..., "validation": ..., "latency_ms": ...}``).
    ONNX files also get their opset and input/output specs.

    ``preprocess`` (key always written; None when unknown): how an image becomes the model's input,
    for a mobile runtime to reproduce -- ``input_size`` (C, H, W), ``interpolation``, ``resize_size``
    (one int: the shorter side), ``crop_size``, ``crop_pct``, ``mean``/``std`` of [0, 1] pixels and
    their ``source`` (``compress.data.Preprocess.to_dict``, issue 17)."""
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
    payload = {"format": "slimforge-manifest/1", **extra, "preprocess": None if preprocess is None else dict(preprocess),
               "artifacts": rows}
    return write_text_atomic(d / "manifest.json", json.dumps(payload, indent=2, default=str))
