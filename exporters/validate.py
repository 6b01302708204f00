"""Check an exported ONNX file against the PyTorch model it came from (onnxruntime, CPU).

``onnxruntime`` is imported inside :func:`validate_onnx` only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compress.exporters.errors import InputShapeError, OnnxValidationError

__all__ = ["ValidationReport", "validate_onnx"]

logger = logging.getLogger(__name__)

CHUNK_SIZE = 64
DEFAULT_MAX_SAMPLES = 256
"""The all-inputs pass of :func:`validate_onnx` uses at most this many inputs unless told otherwise
(issue 17: each input runs through torch and onnxruntime, ~0.1 s a 224x224 resnet50 image on one
core, and ``compress()`` hands over the whole test split; top-1 agreement on 256 images already
resolves a 1% disagreement rate)."""
"""Samples per forward pass for the all-inputs (top-1) pass."""

_ORT_FLOAT_TYPES = {
    "tensor(float)": torch.float32,
    "tensor(double)": torch.float64,
    "tensor(float16)": torch.float16,
}


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_onnx`.

    Attributes:
        ok: no mismatch was found.
        path: the ONNX file checked.
        atol, rtol: tolerances used; an element passes when
            ``|onnx - torch| <= atol + rtol * |torch|``.
        max_abs_diff: largest ``|onnx - torch|`` over every checked batch size, the all-inputs
            pass and all outputs (``inf`` when NaNs disagree or nothing could be compared).
        per_batch: batch size -> ``{"max_abs_diff": float, "max_rel_diff": float, "ok": bool}``;
            ``max_rel_diff`` is ``|onnx - torch| / max(|torch|, atol)``.
        top1_agreement: fraction (0..1) of the ``n_samples`` inputs whose argmax over the first
            output agrees between torch and onnxruntime; ``None`` if that output is not
            ``(N, num_classes)`` logits or the pass could not run.
        n_samples: number of inputs used for the all-inputs pass.
        mismatches: every problem found, human-readable (empty when ``ok``).
    """

    ok: bool
    path: str
    atol: float
    rtol: float
    max_abs_diff: float
    per_batch: dict[int, dict] = field(default_factory=dict)
    top1_agreement: float | None = None
    n_samples: int = 0
    mismatches: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict (non-finite floats become ``None``; ``per_batch`` keys stay ints)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return clean(asdict(self))


@dataclass
class _Compare:
    max_abs: float = 0.0
    max_rel: float = 0.0
    problems: list[str] = field(default_factory=list)


def _to_numpy_list(out: Any) -> list[np.ndarray]:
    if isinstance(out, Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, (tuple, list)):
        arrays: list[np.ndarray] = []
        for o in out:
            arrays.extend(_to_numpy_list(o))
        return arrays
    if isinstance(out, dict):
        arrays = []
        for o in out.values():
            arrays.extend(_to_numpy_list(o))
        return arrays
    raise TypeError(f"model returned {type(out).__name__}; expected Tensor(s)")


def _compare(
    ref: list[np.ndarray], got: list[np.ndarray], names: list[str], atol: float, rtol: float, where: str
) -> _Compare:
    res = _Compare()
    if len(ref) != len(got):
        res.max_abs = math.inf
        res.problems.append(f"{where}: torch returned {len(ref)} output(s), onnxruntime {len(got)}")
        return res
    for i, (r, g) in enumerate(zip(ref, got)):
        name = names[i] if i < len(names) else f"output {i}"
        if r.shape != g.shape:
            res.max_abs = math.inf
            res.problems.append(f"{where}: output {name!r} shape differs: torch {r.shape} vs onnx {g.shape}")
            continue
        if r.size == 0:
            continue
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        diff = np.abs(g64 - r64)
        both_nan = np.isnan(r64) & np.isnan(g64)
        diff = np.where(both_nan, 0.0, diff)
        diff = np.where(np.isnan(diff), np.inf, diff)
        rel = diff / np.maximum(np.abs(np.nan_to_num(r64)), atol if atol > 0 else np.finfo(np.float64).tiny)
        res.max_abs = max(res.max_abs, float(diff.max()))
        res.max_rel = max(res.max_rel, float(rel.max()))
        bad = ~np.isclose(g64, r64, atol=atol, rtol=rtol, equal_nan=True)
        n_bad = int(bad.sum())
        if n_bad:
            idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
            res.problems.append(
                f"{where}: output {name!r} outside tolerance at {n_bad}/{r.size} elements; max |diff| "
                f"{float(diff[idx]):.3g} at {tuple(int(j) for j in idx)} (torch {float(r64[idx]):.6g} vs onnx "
                f"{float(g64[idx]):.6g}; allowed {atol:g} + {rtol:g}*|torch|)"
            )
    return res


class _Runner:
    """Runs the same batch through the torch model and an onnxruntime session."""

    def __init__(self, model: nn.Module, sess: Any, input_name: str, output_names: list[str], dtype: torch.dtype):
        self.model, self.sess, self.input_name, self.output_names, self.dtype = (
            model,
            sess,
            input_name,
            output_names,
            dtype,
        )

    def torch(self, x: Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            return _to_numpy_list(self.model(x))

    def ort(self, x: Tensor) -> list[np.ndarray]:
        return list(self.sess.run(None, {self.input_name: x.detach().cpu().numpy()}))


def _take(inputs: Tensor, b: int) -> Tensor:
    """First ``b`` samples; cycles through ``inputs`` when there are fewer than ``b``."""
    if inputs.shape[0] >= b:
        return inputs[:b]
    idx = torch.arange(b) % inputs.shape[0]
    return inputs[idx]


def _check_input_shape(inputs: Tensor, onnx_shape: list[Any], input_name: str) -> None:
    want = ["N" if i == 0 else (d if isinstance(d, int) else "?") for i, d in enumerate(onnx_shape)]
    if inputs.dim() != len(onnx_shape):
        raise InputShapeError(
            f"inputs have shape {tuple(inputs.shape)} but ONNX input {input_name!r} expects rank {len(onnx_shape)} "
            f"{tuple(want)}; pass a batch of samples shaped (N, *sample_shape)"
        )
    for axis in range(1, inputs.dim()):
        d = onnx_shape[axis]
        if isinstance(d, int) and d != inputs.shape[axis]:
            raise InputShapeError(
                f"inputs have shape {tuple(inputs.shape)} but ONNX input {input_name!r} expects {tuple(want)} "
                f"(dim {axis} is {inputs.shape[axis]}, must be {d})"
            )


def _make_session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def validate_onnx(
    model: nn.Module,
    path: str | Path,
    inputs: Tensor,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    batch_sizes: tuple[int, ...] = (1, 8),
    *,
    raise_on_failure: bool = True,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
) -> ValidationReport:
    """Compare the ONNX file at ``path`` with ``model`` on CPU (onnxruntime, 1 intra-op thread).

    Two checks, every problem is collected before anything is raised:

    1. For each ``b`` in ``batch_sizes``: ``inputs[:b]`` (cycled if ``inputs`` has fewer than
       ``b`` samples) through torch (eval, ``no_grad``) and onnxruntime; every output element
       must satisfy ``|onnx - torch| <= atol + rtol * |torch|`` and shapes must match.
    2. All ``inputs`` (at most ``max_samples``) in chunks of 64: same tolerance, plus top-1
       agreement of the first output when it is ``(N, num_classes)`` logits. A disagreement
       counts as a mismatch unless torch's top-2 logits are within tolerance of each other (a tie).

    Args:
        model: the PyTorch model the file should reproduce; its train/eval flags are restored.
        path: ONNX file with a single input.
        inputs: real samples, shape ``(N, *sample_shape)`` e.g. ``(N, C, H, W)``; cast to the
            ONNX input's float dtype.
        atol, rtol: absolute / relative tolerance (see above).
        batch_sizes: batch sizes for check 1 (each ``>= 1``).
        raise_on_failure: raise :class:`OnnxValidationError` on any mismatch (default); if
            False, return the failing report instead.
        max_samples: cap on the number of ``inputs`` used in check 2, the first ones
            (default :data:`DEFAULT_MAX_SAMPLES`; ``None`` = all).

    Returns:
        A :class:`ValidationReport`.

    Raises:
        OnnxValidationError: there were mismatches (``.report`` holds the full report) and
            ``raise_on_failure`` is True; also when onnxruntime cannot load the file.
        InputShapeError: ``inputs`` is empty or its shape does not fit the ONNX input
            (subclass of both ``ExportError`` and ``ValueError``).
        FileNotFoundError: ``path`` does not exist.
        ValueError: bad ``atol``/``rtol``/``batch_sizes``/``max_samples``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    if atol < 0 or rtol < 0:
        raise ValueError(f"atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
    batch_sizes = tuple(batch_sizes)
    if not batch_sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be a non-empty tuple of ints >= 1, got {batch_sizes!r}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    if not isinstance(inputs, Tensor):
        raise InputShapeError(f"inputs must be a Tensor shaped (N, *sample_shape), got {type(inputs).__name__}")
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise InputShapeError(f"inputs must hold at least one sample shaped (N, *sample_shape), got {tuple(inputs.shape)}")

    def fail_report(msg: str) -> ValidationReport:
        return ValidationReport(False, str(path), atol, rtol, math.inf, {}, None, 0, [msg])

    try:
        sess = _make_session(path)
    except Exception as exc:
        report = fail_report(f"onnxruntime could not load {path}: {str(exc).strip().splitlines()[0]}")
        raise OnnxValidationError(_message(report, model), report) from exc

    ort_inputs = sess.get_inputs()
    if len(ort_inputs) != 1:
        raise InputShapeError(
            f"{path} has {len(ort_inputs)} inputs ({[i.name for i in ort_inputs]}); validate_onnx handles single-input models"
        )
    onnx_in = ort_inputs[0]
    _check_input_shape(inputs, list(onnx_in.shape), onnx_in.name)
    dtype = _ORT_FLOAT_TYPES.get(onnx_in.type)
    if dtype is not None and inputs.dtype != dtype:
        inputs = inputs.to(dtype)
    static_batch = onnx_in.shape[0] if isinstance(onnx_in.shape[0], int) else None
    output_names = [o.name for o in sess.get_outputs()]
    runner = _Runner(model, sess, onnx_in.name, output_names, inputs.dtype)

    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        report = _validate(runner, path, inputs, atol, rtol, batch_sizes, max_samples, static_batch, output_names)
    finally:
        for m, flag in flags:
            m.training = flag

    if report.ok:
        logger.info(
            "ONNX %s matches %s: max |diff| %.3g, top-1 agreement %s over %d samples",
            path.name,
            type(model).__name__,
            report.max_abs_diff,
            "n/a" if report.top1_agreement is None else f"{report.top1_agreement:.4f}",
            report.n_samples,
        )
    elif raise_on_failure:
        raise OnnxValidationError(_message(report, model), report)
    else:
        logger.warning("ONNX %s does not match %s: %s", path.name, type(model).__name__, "; ".join(report.mismatches))
    return report


def _validate(
    runner: _Runner,
    path: Path,
    inputs: Tensor,
    atol: float,
    rtol: float,
    batch_sizes: tuple[int, ...],
    max_samples: int | None,
    static_batch: int | None,
    output_names: list[str],
) -> ValidationReport:
    mismatches: list[str] = []
    per_batch: dict[int, dict] = {}
    max_abs = 0.0

    # 1. fixed batch sizes
    for b in batch_sizes:
        where = f"batch {b}"
        if static_batch is not None and b != static_batch:
            mismatches.append(f"{where}: the ONNX input has a static batch of {static_batch}; re-export with dynamic_batch=True")
            per_batch[b] = {"max_abs_diff": math.inf, "max_rel_diff": math.inf, "ok": False}
            max_abs = math.inf
            continue
        x = _take(inputs, b)
        try:
            ref = runner.torch(x)
        except Exception as exc:
            mismatches.append(f"{where}: torch model failed: {type(exc).__name__}: {_line(exc)}")
            per_batch[b] = {"max_abs_diff": math.inf, "max_rel_diff": math.inf, "ok": False}
            max_abs = math.inf
            continue
        try:
            got = runner.ort(x)
        except Exception as exc:
            mismatches.append(f"{where}: onnxruntime failed: {_line(exc)}")
            per_batch[b] = {"max_abs_diff": math.inf, "max_rel_diff": math.inf, "ok": False}
            max_abs = math.inf
            continue
        cmp = _compare(ref, got, output_names, atol, rtol, where)
        per_batch[b] = {"max_abs_diff": cmp.max_abs, "max_rel_diff": cmp.max_rel, "ok": not cmp.problems}
        max_abs = max(max_abs, cmp.max_abs)
        mismatches.extend(cmp.problems)

    # 2. every input, in chunks: tolerance + top-1 agreement
    data = inputs if max_samples is None else inputs[:max_samples]
    n = int(data.shape[0])
    chunk = static_batch or CHUNK_SIZE
    agree = ties = compared = 0
    top1_ok = True
    n_bad_chunks = 0
    worst = _Compare()
    try:
        for start in range(0, n, chunk):
            x = data[start : start + chunk]
            real = x.shape[0]
            if static_batch is not None and real < static_batch:
                x = _take(x, static_batch)  # pad the last chunk of a static-batch model
            ref, got = runner.torch(x), runner.ort(x)
            cmp = _compare(ref, got, output_names, atol, rtol, f"samples {start}..{start + real - 1}")
            worst.max_abs = max(worst.max_abs, cmp.max_abs)
            worst.max_rel = max(worst.max_rel, cmp.max_rel)
            if cmp.problems:
                n_bad_chunks += 1
                if not worst.problems:
                    worst.problems = cmp.problems
            is_logits = bool(ref) and bool(got) and ref[0].ndim == 2 and ref[0].shape[1] >= 2
            if top1_ok and is_logits and got[0].shape == ref[0].shape:
                r0, g0 = ref[0][:real], got[0][:real]
                r_top = r0.argmax(axis=1)
                g_top = g0.argmax(axis=1)
                same = r_top == g_top
                agree += int(same.sum())
                compared += real
                if not same.all():
                    part = np.sort(r0[~same].astype(np.float64), axis=1)
                    gap = part[:, -1] - part[:, -2]
                    ties += int((gap <= atol + rtol * np.abs(part[:, -1])).sum())
            else:
                top1_ok = False
    except Exception as exc:
        mismatches.append(f"all-inputs pass: failed after {compared} samples: {type(exc).__name__}: {_line(exc)}")
        top1_ok = False
        max_abs = math.inf

    max_abs = max(max_abs, worst.max_abs)
    if worst.problems:
        mismatches.append(
            f"all {n} samples (chunks of {chunk}): {n_bad_chunks} chunk(s) outside tolerance; first: {worst.problems[0]}"
        )
    top1 = agree / compared if top1_ok and compared == n and n > 0 else None
    if top1 is not None and agree < compared:
        disagree = compared - agree
        real_disagree = disagree - ties
        if real_disagree > 0:
            mismatches.append(
                f"top-1 disagrees on {disagree}/{compared} samples (agreement {top1:.4f}"
                + (f"; {ties} of them near-ties within tolerance" if ties else "")
                + ")"
            )
        else:
            logger.info("top-1 differs on %d near-tie sample(s) within tolerance; not counted as a mismatch", ties)

    return ValidationReport(
        ok=not mismatches,
        path=str(path),
        atol=atol,
        rtol=rtol,
        max_abs_diff=max_abs,
        per_batch=per_batch,
        top1_agreement=top1,
        n_samples=n,
        mismatches=mismatches,
    )


def _line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def _message(report: ValidationReport, model: nn.Module) -> str:
    lines = [f"ONNX file {report.path} does not reproduce {type(model).__name__} ({len(report.mismatches)} problem(s)):"]
    lines += [f"  - {m}" for m in report.mismatches]
    lines.append(
        "  what to do: if the differences are tiny numerical noise, loosen atol/rtol; otherwise make sure the file "
        "was exported from this exact model (same weights, eval mode) and re-export it."
    )
    return "\n".join(lines)
