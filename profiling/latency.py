"""Wall-clock inference latency of a model on a :class:`~compress.profiling.target.Target`.

``onnxruntime`` is imported inside the functions that use it.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compress.exporters import ExportError, export_onnx
from compress.exporters.mobile import convert_to_ort
from compress.profiling.errors import ProfilingError
from compress.profiling.target import Target

__all__ = ["ENGINES", "LatencyEstimate", "LatencyStats", "profile_latency"]

logger = logging.getLogger(__name__)

ENGINES = ("onnxruntime", "torch")
"""Accepted ``engine`` values for :func:`profile_latency`."""
SEED = 0
"""Seed of the random inputs fed during timing."""

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one inference call (one batch of ``batch_size``), in milliseconds.

    ``median_ms <= p90_ms``; ``iqr_ms`` is the 75th minus the 25th percentile; ``std_ms`` is the
    population standard deviation over the ``repeats`` timed calls (``warmup`` calls not counted).
    """

    engine: str
    target: str
    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    iqr_ms: float
    warmup: int
    repeats: int
    batch_size: int

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of all fields."""
        return dataclasses.asdict(self)


class LatencyEstimate(float):
    """A latency in milliseconds (a ``float``) that also carries ``rel_se``, the relative standard
    error of the estimate (standard error / value; 0 when unknown), so that a caller deciding
    "under the limit?" can keep a margin as wide as the measurement's own noise.

    For a median of ``n`` timings (or per-round medians) with standard deviation ``s``,
    ``rel_se = 1.2533 * s / sqrt(n) / median`` (the asymptotic standard error of a median,
    sqrt(pi / 2) times that of a mean, for roughly normal timings). See :meth:`from_samples`.
    """

    rel_se: float

    def __new__(cls, ms: float, rel_se: float = 0.0) -> "LatencyEstimate":
        obj = super().__new__(cls, ms)
        obj.rel_se = float(rel_se) if np.isfinite(rel_se) and rel_se > 0 else 0.0
        return obj

    @classmethod
    def from_samples(cls, samples: "list[float] | np.ndarray", scale: float = 1.0) -> "LatencyEstimate":
        """``scale`` x the median of ``samples`` (ms, or ratios to a reference timed alongside), with
        the relative standard error of that median. Fewer than 2 samples: ``rel_se`` 0."""
        x = np.asarray(samples, dtype=np.float64)
        med = float(np.median(x))
        rel = 1.2533 * float(x.std(ddof=1)) / np.sqrt(x.size) / med if x.size > 1 and med > 0 else 0.0
        return cls(med * scale, rel)

    def __reduce__(self):  # pickles (and deep-copies) with its error
        return (LatencyEstimate, (float(self), self.rel_se))


def _summarise(times_ms: list[float], engine: str, target: Target, warmup: int) -> LatencyStats:
    t = np.asarray(times_ms, dtype=np.float64)
    p25, p50, p75, p90 = np.percentile(t, [25, 50, 75, 90])
    return LatencyStats(
        engine=engine,
        target=target.name,
        median_ms=float(p50),
        p90_ms=float(p90),
        mean_ms=float(t.mean()),
        std_ms=float(t.std()),
        min_ms=float(t.min()),
        max_ms=float(t.max()),
        iqr_ms=float(p75 - p25),
        warmup=warmup,
        repeats=len(times_ms),
        batch_size=target.batch_size,
    )


TIME_BUDGET_S = 5.0
"""Default bound of one measurement's timed calls, in seconds (issue 17: a 224x224 resnet50 takes
~0.1 s a call on one core, 0.3 s on a loaded one, and ``compress()`` times teacher and student with
both engines): past it, timing stops once :data:`MIN_TIMED` calls are done; the untimed warm-up
stops after a quarter of it (at least one call). :class:`LatencyStats` ``repeats`` says how many
calls were timed."""
MIN_TIMED = 10
"""Timed calls made whatever the time budget (fewer only when ``repeats`` asks for fewer)."""


def _time_calls(fn: Callable[[], Any], warmup: int, repeats: int,
                time_budget_s: float | None = TIME_BUDGET_S) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; per-call ms. With
    ``time_budget_s`` (seconds), the warm-up stops after ``time_budget_s / 4`` (at least one call)
    and the timing once ``time_budget_s`` of timed calls and ``min(MIN_TIMED, repeats)`` calls are done."""
    t_start = time.perf_counter()
    for i in range(warmup):
        if time_budget_s is not None and i > 0 and time.perf_counter() - t_start >= 0.25 * time_budget_s:
            break
        fn()
    times: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    spent, least = 0.0, min(MIN_TIMED, repeats)
    try:
        for _ in range(repeats):
            if time_budget_s is not None and spent >= time_budget_s and len(times) >= least:
                break
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            spent += dt
            times.append(dt * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def _check_counts(warmup: int, repeats: int) -> None:
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ProfilingError(f"warmup must be an int >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ProfilingError(f"repeats must be an int >= 1, got {repeats!r}")


def profile_latency(
    model_or_path: nn.Module | str | Path,
    target: Target,
    *,
    engine: str = "onnxruntime",
    warmup: int = 10,
    repeats: int = 50,
    example_inputs: Tensor | None = None,
    time_budget_s: float | None = TIME_BUDGET_S,
) -> LatencyStats:
    """Measure per-call latency (ms, ``time.perf_counter``) of a model on ``target``.

    Inputs are seeded random tensors of shape ``(target.batch_size, *input_shape)``; the sample
    shape is ``target.input_shape``, else the ONNX input's static dims, else
    ``example_inputs.shape[1:]``.

    Args:
        model_or_path: an ``nn.Module`` or the path of an ``.onnx`` file (single input).
        target: threads, provider, batch size, input shape, graph optimisation level.
        engine: ``"onnxruntime"`` (a module is first exported to a temporary ONNX file with
            :func:`compress.exporters.export_onnx`) or ``"torch"`` (eager module under
            ``torch.no_grad`` with ``torch.set_num_threads(target.intra_op_threads)``, restored
            afterwards; needs a module).
        warmup: untimed calls before timing (>= 0); the first call also checks that the model
            runs, so at least one untimed call always happens.
        repeats: timed calls (>= 1), at most: see ``time_budget_s``.
        time_budget_s: seconds of timed calls after which timing stops once ``min(MIN_TIMED,
            repeats)`` calls are done (the warm-up stops after a quarter of it); default
            :data:`TIME_BUDGET_S`, None: exactly ``warmup`` and ``repeats`` calls. The stats'
            ``repeats`` is the number of calls timed.
        example_inputs: example batch ``(N, *input_shape)`` used for export / the input shape
            when the target and the ONNX file don't fix it.

    Returns:
        :class:`LatencyStats` (milliseconds per call of one batch).

    Raises:
        ProfilingError: unknown engine, provider not available (the message lists the installed
            ones), input shape unknown (set ``Target.input_shape``) or inconsistent with the
            model, export failure, onnxruntime load/run failure, bad ``warmup``/``repeats``.
        TypeError: ``target`` is not a :class:`Target`.
    """
    if not isinstance(target, Target):
        raise TypeError(f"target must be a compress.profiling.Target, got {type(target).__name__}")
    if engine not in ENGINES:
        raise ProfilingError(f"unknown engine {engine!r}; use one of {list(ENGINES)}")
    _check_counts(warmup, repeats)
    if example_inputs is not None and (not isinstance(example_inputs, Tensor) or example_inputs.dim() < 1):
        raise ProfilingError("example_inputs must be a Tensor shaped (N, *input_shape)")

    if engine == "torch":
        if not isinstance(model_or_path, nn.Module):
            raise ProfilingError(
                f"engine='torch' needs an nn.Module, got {type(model_or_path).__name__}; use engine='onnxruntime' for ONNX files"
            )
        stats = _profile_torch(model_or_path, target, warmup, repeats, example_inputs, time_budget_s)
    else:
        _check_provider(target)
        if isinstance(model_or_path, nn.Module):
            with tempfile.TemporaryDirectory(prefix="compress-profile-") as tmp:
                onnx_path = _export_for_profiling(model_or_path, target, example_inputs, Path(tmp) / "model.onnx")
                stats = _profile_ort(onnx_path, target, warmup, repeats, example_inputs, time_budget_s)
        elif isinstance(model_or_path, (str, Path)):
            path = Path(model_or_path)
            if not path.is_file():
                raise ProfilingError(f"ONNX file not found: {path}")
            stats = _profile_ort(path, target, warmup, repeats, example_inputs, time_budget_s)
        else:
            raise TypeError(f"model_or_path must be an nn.Module or a path, got {type(model_or_path).__name__}")
    logger.info(
        "%s on %s (batch %d): median %.3f ms, p90 %.3f ms over %d runs",
        engine,
        target.name,
        target.batch_size,
        stats.median_ms,
        stats.p90_ms,
        stats.repeats,
    )
    return stats


# --------------------------------------------------------------------------------------------
# onnxruntime
# --------------------------------------------------------------------------------------------
def _check_provider(target: Target) -> None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if target.provider not in available:
        raise ProfilingError(
            f"execution provider {target.provider!r} (target {target.name!r}) is not available in this onnxruntime "
            f"build; available: {available}. Set Target.provider to one of them."
        )


def _export_for_profiling(model: nn.Module, target: Target, example_inputs: Tensor | None, out: Path) -> Path:
    if target.input_shape is not None:
        dtype = example_inputs.dtype if example_inputs is not None else torch.float32
        example = torch.randn(
            target.batch_size, *target.input_shape, generator=torch.Generator().manual_seed(SEED), dtype=dtype
        )
    elif example_inputs is not None:
        example = example_inputs
    else:
        raise ProfilingError(
            f"cannot export {type(model).__name__} for profiling without an input shape; set Target.input_shape "
            "(e.g. target.with_input_shape((3, 32, 32))) or pass example_inputs"
        )
    try:
        return export_onnx(model, example, out, dynamic_batch=True)
    except ExportError as exc:
        raise ProfilingError(f"could not export {type(model).__name__} to ONNX for profiling:\n{exc}") from exc


def _resolve_ort_shape(
    onnx_shape: list[Any], input_name: str, target: Target, example_inputs: Tensor | None
) -> tuple[int, ...]:
    batch_dim, rest = onnx_shape[0] if onnx_shape else None, list(onnx_shape[1:])
    if not onnx_shape:
        raise ProfilingError(f"ONNX input {input_name!r} is a scalar; profile_latency needs a batched input")
    if isinstance(batch_dim, int) and batch_dim != target.batch_size:
        raise ProfilingError(
            f"ONNX input {input_name!r} has a static batch of {batch_dim} but Target.batch_size is {target.batch_size}; "
            f"set batch_size={batch_dim} or re-export with dynamic_batch=True"
        )

    def fits(shape: tuple[int, ...]) -> bool:
        return len(shape) == len(rest) and all(not isinstance(d, int) or d == s for d, s in zip(rest, shape))

    shown = tuple(d if isinstance(d, int) else "?" for d in rest)
    if target.input_shape is not None:
        if not fits(target.input_shape):
            raise ProfilingError(
                f"Target.input_shape {target.input_shape} does not fit ONNX input {input_name!r} (per-sample {shown})"
            )
        return target.input_shape
    if all(isinstance(d, int) for d in rest):
        return tuple(rest)
    if example_inputs is not None:
        shape = tuple(example_inputs.shape[1:])
        if not fits(shape):
            raise ProfilingError(
                f"example_inputs per-sample shape {shape} does not fit ONNX input {input_name!r} (per-sample {shown})"
            )
        return shape
    dynamic = [i + 1 for i, d in enumerate(rest) if not isinstance(d, int)]
    raise ProfilingError(
        f"ONNX input {input_name!r} has dynamic non-batch dim(s) {dynamic} (per-sample {shown}); "
        "set Target.input_shape (e.g. target.with_input_shape((3, 224, 224))) or pass example_inputs"
    )


def _profile_ort(path: Path, target: Target, warmup: int, repeats: int, example_inputs: Tensor | None,
                 time_budget_s: float | None = TIME_BUDGET_S) -> LatencyStats:
    import onnxruntime as ort

    if target.model_format == "ort" and path.suffix != ".ort":
        with tempfile.TemporaryDirectory(prefix="compress-ort-") as tmp:
            try:
                ort_path = convert_to_ort(path, Path(tmp) / "model.ort")
            except Exception as exc:
                raise ProfilingError(f"target {target.name!r} times the ORT format, but conversion failed: {exc}") from exc
            return _profile_ort(ort_path, target, warmup, repeats, example_inputs, time_budget_s)
    try:
        sess = ort.InferenceSession(str(path), sess_options=target.session_options(), providers=[target.provider])
    except Exception as exc:
        raise ProfilingError(f"onnxruntime could not load {path}: {str(exc).strip().splitlines()[0]}") from exc
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ProfilingError(f"{path} has {len(inputs)} inputs {[i.name for i in inputs]}; only single-input models are supported")
    inp = inputs[0]
    dtype = _ORT_DTYPES.get(inp.type)
    if dtype is None:
        raise ProfilingError(f"ONNX input {inp.name!r} has type {inp.type}; only float inputs are supported")
    shape = _resolve_ort_shape(list(inp.shape), inp.name, target, example_inputs)
    data = np.random.default_rng(SEED).standard_normal((target.batch_size, *shape)).astype(dtype)
    feed = {inp.name: data}
    try:
        sess.run(None, feed)
    except Exception as exc:
        raise ProfilingError(
            f"onnxruntime failed to run {path.name} on input {data.shape}: {str(exc).strip().splitlines()[0]}"
        ) from exc
    times = _time_calls(lambda: sess.run(None, feed), max(warmup - 1, 0), repeats, time_budget_s)
    return _summarise(times, "onnxruntime", target, warmup)


# --------------------------------------------------------------------------------------------
# torch eager
# --------------------------------------------------------------------------------------------
def _profile_torch(
    model: nn.Module, target: Target, warmup: int, repeats: int, example_inputs: Tensor | None,
    time_budget_s: float | None = TIME_BUDGET_S,
) -> LatencyStats:
    if target.input_shape is not None:
        shape = target.input_shape
    elif example_inputs is not None:
        shape = tuple(example_inputs.shape[1:])
    else:
        raise ProfilingError(
            f"engine='torch' needs an input shape for {type(model).__name__}; set Target.input_shape or pass example_inputs"
        )
    if target.provider != "CPUExecutionProvider":
        logger.info("engine='torch' runs on CPU; Target.provider %r is ignored", target.provider)
    dtype = example_inputs.dtype if example_inputs is not None and example_inputs.is_floating_point() else torch.float32
    x = torch.randn(target.batch_size, *shape, generator=torch.Generator().manual_seed(SEED), dtype=dtype)

    prev_threads = torch.get_num_threads()
    flags = [(m, m.training) for m in model.modules()]
    try:
        torch.set_num_threads(target.intra_op_threads)
        model.eval()
        with torch.no_grad():
            try:
                model(x)
            except Exception as exc:
                raise ProfilingError(
                    f"{type(model).__name__} failed on input {tuple(x.shape)}: {type(exc).__name__}: {exc}"
                ) from exc
            times = _time_calls(lambda: model(x), max(warmup - 1, 0), repeats, time_budget_s)
    finally:
        for m, flag in flags:
            m.training = flag
        torch.set_num_threads(prev_threads)
    return _summarise(times, "torch", target, warmup)
