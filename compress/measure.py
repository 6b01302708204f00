"""Measuring a model the way ``compress()`` reports it: the teacher and the student go through the
same functions (issue 15: one measurement, not two copies).

* :func:`profile_model`: median ONNX and torch-eager latency and the session's peak memory on a target;
* :func:`side_by_side`: several ONNX files timed in interleaved rounds, so that load drift hits all
  alike; :func:`drift_corrected` turns a candidate's rounds into its latency for a budget relative
  to the teacher, with the standard error of that estimate;
* :func:`latency_vs_teacher`, :func:`int8_vs_fp32`: the two side-by-side comparisons of a run;
* :func:`mobile_artifacts`: the ORT-format file, the NNAPI / CoreML report and the int8 student,
  re-validated and timed against the fp32 one.

Costs (fvcore MACs and params) are :func:`compress.budgets.measure_cost`; accuracy is
:func:`compress.training.evaluate`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.data import TaskData, collect, iter_batches
from compress.exporters.mobile import (DEFAULT_INT8_SETTINGS, INT8_MAX_DROP_PTS, INT8_MIN_SPEEDUP, convert_to_ort,
                                       int8_recommendation, mobile_usability, onnx_accuracy_batches, quantize_int8)
from compress.profiling import LatencyEstimate, LatencyStats, MemoryStats, Target, profile_latency, profile_peak_memory
from compress.profiling.latency_model import measure_interleaved

__all__ = ["VS_TEACHER_ROUNDS", "MIN_ROUND_MS", "profile_model", "side_by_side", "drift_corrected",
           "latency_vs_teacher", "int8_vs_fp32", "onnx_accuracy_on", "mobile_artifacts"]

log = logging.getLogger(__name__)


def profile_model(model: nn.Module, onnx_path: Path, target: Target, example_inputs: torch.Tensor, *,
                  warmup: int, repeats: int, memory: bool) -> tuple[LatencyStats, LatencyStats, MemoryStats | None]:
    """The latency figures of one model (teacher or student) in the report: the median of ``repeats``
    timed calls after ``warmup`` of its ONNX file on ``target`` (onnxruntime) and of the module in
    torch eager (batch ``example_inputs[:1]``, ``(1, C, H, W)``), and, when ``memory``, the peak
    resident memory an onnxruntime session of it adds (bytes, measured in a child process).

    Raises:
        ProfilingError: the ONNX file or the module cannot be run on ``target``.
    """
    lat = profile_latency(onnx_path, target, warmup=warmup, repeats=repeats)
    lat_torch = profile_latency(model, target, engine="torch", warmup=warmup, repeats=repeats,
                                example_inputs=example_inputs[:1])
    mem = profile_peak_memory(onnx_path, target) if memory else None
    return lat, lat_torch, mem


VS_TEACHER_ROUNDS = 5
MIN_ROUND_MS = 25.0
"""Each side-by-side round times every model for at least this long (ms), however fast it is."""


def side_by_side(paths: dict[str, Path], target: Target, latency_repeats: int) -> dict:
    """The median latency (ms) on ``target`` of each ONNX file in ``paths`` (``{name: path}``),
    timed side by side: :data:`VS_TEACHER_ROUNDS` interleaved rounds of ``latency_repeats / rounds``
    calls each (at least 5, and enough to fill :data:`MIN_ROUND_MS`), so that load drift during the
    run hits all alike. Returns ``{name}_ms`` and ``{name}_rounds_ms`` (the per-round medians) for
    each name, the method, and the timed calls per round of each."""
    repeats = max(5, latency_repeats // VS_TEACHER_ROUNDS)
    measured = measure_interleaved(list(paths.values()), target, rounds=VS_TEACHER_ROUNDS, repeats=repeats, warmup=2,
                                   min_round_ms=MIN_ROUND_MS)
    out: dict = {f"{name}_ms": m["median_ms"] for name, m in zip(paths, measured)}
    out.update({f"{name}_rounds_ms": m["rounds_ms"] for name, m in zip(paths, measured)})
    calls = {name: m["calls"] for name, m in zip(paths, measured) if "calls" in m}
    return {**out, "method": "interleaved", "rounds": VS_TEACHER_ROUNDS, "repeats": repeats,
            **({"calls_per_round": calls} if calls else {})}


def drift_corrected(candidate_rounds_ms: list[float], teacher_rounds_ms: list[float],
                     teacher_ms: float) -> LatencyEstimate:
    """A candidate's latency for a budget relative to the teacher (``latency=0.5x``): the median of its
    per-round ratios to the teacher, timed side by side, times ``teacher_ms`` (the teacher latency the
    budget was resolved against). A machine that got busier or quieter since the teacher was measured
    then moves both alike, so the decision does not drift with the load (measured: under 2-3 competing
    processes the teacher's own latency moved by up to 2x between phases). The estimate carries the
    relative standard error of that median over the rounds (:class:`LatencyEstimate`)."""
    ratios = [c / t for c, t in zip(candidate_rounds_ms, teacher_rounds_ms) if t > 0]
    if not ratios:
        return LatencyEstimate.from_samples(candidate_rounds_ms)
    return LatencyEstimate.from_samples(ratios, scale=teacher_ms)


def latency_vs_teacher(teacher_onnx: Path, student_onnx: Path, target: Target, latency_repeats: int) -> dict:
    """Teacher and student timed side by side (:func:`side_by_side`): ``teacher_ms``, ``student_ms``."""
    return side_by_side({"teacher": teacher_onnx, "student": student_onnx}, target, latency_repeats)


def int8_vs_fp32(fp32_onnx: Path, int8_onnx: Path, target: Target, latency_repeats: int) -> dict:
    """The fp32 and int8 students timed side by side (:func:`side_by_side`): ``fp32_ms``,
    ``int8_ms``, and the rule :func:`compress.exporters.mobile.int8_recommendation` applies to them."""
    return {**side_by_side({"fp32": fp32_onnx, "int8": int8_onnx}, target, latency_repeats),
            "rule": f"recommended = speedup >= {INT8_MIN_SPEEDUP:g} and drop_pts <= {INT8_MAX_DROP_PTS:g}"}


def onnx_accuracy_on(path: Path, loader) -> float:
    """Top-1 accuracy in [0, 1] of the ONNX model at ``path`` over ``loader``, batch by batch."""
    return onnx_accuracy_batches(path, ((x.numpy(), y.numpy()) for x, y in iter_batches(loader, "evaluation")))


def mobile_artifacts(student_onnx: Path, art_dir: Path, task: TaskData, x_val: torch.Tensor, y_val: torch.Tensor,
            target: Target, latency_warmup: int, latency_repeats: int, *, mobile: bool, int8: bool) -> dict[str, Any]:
    """``result.mobile``: the ORT-format file and NNAPI/CoreML report (``mobile``), the int8 student
    re-validated and timed against the fp32 one (``int8``); see :func:`compress`."""
    mobile_info: dict[str, Any] = {}
    if mobile:
        mobile_info["ort_path"] = str(convert_to_ort(student_onnx, art_dir / "student.ort"))
        mobile_info["usability"] = mobile_usability(student_onnx)
    if int8:
        x_cal = collect(task.train, max_samples=256)[0].numpy()
        q_path = quantize_int8(student_onnx, art_dir / "student.int8.onnx", x_cal, settings=DEFAULT_INT8_SETTINGS)
        eval_loader = task.test if task.test is not None else task.val  # streamed: a split may not fit in memory
        acc_fp32 = onnx_accuracy_on(student_onnx, eval_loader)
        acc_int8 = onnx_accuracy_on(q_path, eval_loader)
        q_lat = profile_latency(q_path, target, warmup=latency_warmup, repeats=latency_repeats)
        side = int8_vs_fp32(student_onnx, q_path, target, latency_repeats)
        drop = 100 * (acc_fp32 - acc_int8)
        rec = int8_recommendation(side["fp32_ms"], side["int8_ms"], drop)
        if not rec["recommended"]:
            log.warning("int8 student not recommended on %s: %s", target.name, rec["reason"])
        mobile_info["int8"] = {
            "path": str(q_path), "accuracy": acc_int8, "fp32_accuracy": acc_fp32,
            "drop_pts": drop, "latency_ms": side["int8_ms"], "latency_p90_ms": q_lat.p90_ms,
            "split": "test" if task.test is not None else "val",
            "fp32_latency_ms": side["fp32_ms"], "speedup": rec["speedup"], "recommended": rec["recommended"],
            "reason": rec["reason"], "rule": side["rule"],
            "settings": {**DEFAULT_INT8_SETTINGS.to_dict(), "calibration_samples": int(len(x_cal)),
                         "calibrate_method": "minmax"},
            "latency_method": {k: side[k] for k in ("method", "rounds", "repeats", "fp32_rounds_ms", "int8_rounds_ms")},
        }
    return mobile_info


