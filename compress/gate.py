"""The CI gate: measure an exported model on a target and compare it with a baseline.

``slimforge gate --model student.onnx --baseline baseline.json --target cpu-1t`` measures
latency (median and IQR over ``repeats`` runs after warm-up), MACs and parameters (counted from
the ONNX graph, :func:`compress.budgets.onnx_cost`) and, when labelled data is given, top-1
accuracy; then compares each with the baseline file.

Noise-aware latency rule: a latency *regression* is declared only when the median grew by more
than ``tolerance`` (relative, default 5%) **and** by more than the measurement spread of the two
medians: the sum of their 95% notch half-widths ``1.58 * IQR / sqrt(n)`` (McGill, Tukey & Larsen
1978, the notches of a notched box plot; non-overlapping notches = medians differ at ~95%). Both
conditions are needed, so jitter on a noisy machine does not raise false alarms while a real
slowdown beyond the tolerance is caught.
Side-by-side mode (``reference``, recommended on shared CI runners): the baseline model file is
timed in the same run, interleaved round-robin with the model
(:func:`compress.profiling.latency_model.measure_interleaved`), so load drift between the day the
baseline was written and today hits both alike. The latency row then compares the two medians of
this run: a regression needs the median per-round ratio model/reference above ``1 + tolerance``
**and** its 95% notch (``1.58 * IQR / sqrt(rounds)``) clear of 1.
MACs and params regress when they grow by more than ``tolerance``; accuracy when it drops by more
than ``max_accuracy_drop_pts`` points; an absolute ``max_latency_ms`` fails when exceeded.

Exit codes (CLI): 0 pass, 1 regression, 2 bad input (missing baseline, target mismatch ...).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.budgets import onnx_cost
from compress.errors import ConfigError
from compress.exporters.atomic import write_text_atomic
from compress.exporters.mobile import onnx_accuracy, sha256_file
from compress.profiling import Target, profile_latency

__all__ = ["GateRow", "GateResult", "measure_artifact", "compare", "side_by_side_latency", "parse_tolerance",
           "BASELINE_FORMAT"]

BASELINE_FORMAT = "slimforge-baseline/1"


def parse_tolerance(text: str | float) -> float:
    """``"5%"`` -> 0.05, ``"0.05"`` -> 0.05.

    Raises:
        ConfigError: not a number in [0, 10].
    """
    try:
        s = str(text).strip()
        v = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise ConfigError(f"tolerance must look like '5%' or 0.05, got {text!r}") from None
    if not 0 <= v <= 10:
        raise ConfigError(f"tolerance must be between 0% and 1000%, got {text!r}")
    return v


def measure_artifact(
    onnx_path: str | Path,
    target: Target,
    *,
    repeats: int = 50,
    warmup: int = 10,
    data: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Measure an ONNX file: latency (ms) on ``target``, MACs/params from the graph, accuracy.

    Args:
        data: optional ``(x (N, C, H, W) float32, y (N,) int)`` for top-1 accuracy.
    """
    path = Path(onnx_path)
    cost = onnx_cost(path)
    t = target if target.input_shape else target.with_input_shape(cost.input_shape)
    lat = profile_latency(path, t, warmup=warmup, repeats=repeats)
    out: dict[str, Any] = {
        "format": BASELINE_FORMAT,
        "model": path.name,
        "sha256": sha256_file(path),
        "target": t.to_dict(),
        "macs": cost.macs,
        "params": cost.params,
        "latency_ms": {"median": lat.median_ms, "p90": lat.p90_ms, "iqr": lat.iqr_ms, "repeats": lat.repeats},
        "accuracy": None,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if data is not None:
        out["accuracy"] = onnx_accuracy(path, data[0], data[1])
        out["accuracy_samples"] = int(len(data[1]))
    return out


@dataclass(frozen=True)
class GateRow:
    metric: str
    baseline: float | None
    current: float | None
    limit: str
    status: str  # "ok" | "REGRESSED" | "improved" | "skipped"
    detail: str = ""

    @property
    def change_pct(self) -> float | None:
        if self.baseline in (None, 0) or self.current is None:
            return None
        return 100.0 * (self.current - self.baseline) / self.baseline

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "baseline": self.baseline, "current": self.current, "limit": self.limit,
                "status": self.status, "change_pct": self.change_pct, "detail": self.detail}


@dataclass
class GateResult:
    ok: bool
    rows: list[GateRow]
    current: dict[str, Any]
    baseline: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": [r.to_dict() for r in self.rows], "current": self.current,
                "baseline": self.baseline, "notes": self.notes}

    def regressions(self) -> list[GateRow]:
        return [r for r in self.rows if r.status == "REGRESSED"]


def side_by_side_latency(
    reference: str | Path,
    model: str | Path,
    target: Target,
    *,
    tolerance: float = 0.05,
    rounds: int = 10,
    repeats: int = 5,
    warmup: int = 3,
) -> GateRow:
    """Latency row of the gate measured side by side: ``reference`` and ``model`` (ONNX files) are
    timed round-robin on ``target``, ``rounds`` rounds of ``warmup`` + ``repeats`` calls each.

    The per-round ratio r_i = median_i(model) / median_i(reference) removes the load both saw in
    round i. Status: ``REGRESSED`` when median(r) > 1 + tolerance and median(r) - notch > 1,
    ``improved`` when median(r) < 1 - tolerance and median(r) + notch < 1 (notch = 1.58 IQR(r) /
    sqrt(rounds)), else ``ok``. Baseline/current columns are the two medians of this run (ms).

    Raises:
        ProfilingError: a file does not load in onnxruntime, or rounds/repeats < 1.
    """
    from compress.profiling.latency_model import measure_interleaved

    ref, cur = measure_interleaved([Path(reference), Path(model)], target, rounds=rounds, repeats=repeats,
                                   warmup=warmup)
    ratios = np.asarray(cur["rounds_ms"]) / np.maximum(np.asarray(ref["rounds_ms"]), 1e-9)
    med = float(np.median(ratios))
    q75, q25 = np.percentile(ratios, [75, 25])
    notch = 1.58 * float(q75 - q25) / max(len(ratios), 1) ** 0.5
    if med > 1 + tolerance and med - notch > 1:
        status = "REGRESSED"
    elif med < 1 - tolerance and med + notch < 1:
        status = "improved"
    else:
        status = "ok"
    return GateRow("latency_ms.median", ref["median_ms"], cur["median_ms"],
                   f"ratio <= {1 + tolerance:.3g} or notch covers 1", status,
                   f"side by side with {Path(reference).name}: ratio {med:.3f} +- {notch:.3f} over {len(ratios)} rounds")


def compare(
    baseline: dict[str, Any],
    current: dict[str, Any],
    *,
    tolerance: float = 0.05,
    max_latency_ms: float | None = None,
    max_accuracy_drop_pts: float = 1.0,
    latency_row: GateRow | None = None,
) -> GateResult:
    """Compare a measurement with a baseline (both from :func:`measure_artifact`).

    Args:
        latency_row: a row from :func:`side_by_side_latency`; it replaces the comparison of the
            current latency with the stored one.

    Raises:
        ConfigError: the baseline is not a slimforge baseline, or was measured on another target.
    """
    if baseline.get("format") != BASELINE_FORMAT:
        raise ConfigError("the baseline file is not a slimforge baseline; create one with `slimforge gate --update-baseline`.")
    bt, ct = baseline.get("target", {}), current.get("target", {})
    keys = ("provider", "intra_op_threads", "inter_op_threads", "batch_size", "model_format", "graph_optimization_level")
    diff = [k for k in keys if bt.get(k) != ct.get(k)]
    if diff:
        raise ConfigError(
            f"baseline was measured on target {bt.get('name')!r} and this run on {ct.get('name')!r} "
            f"(they differ in {diff}); compare like with like or refresh the baseline with --update-baseline."
        )
    rows: list[GateRow] = []
    bl, cl = baseline["latency_ms"], current["latency_ms"]
    if latency_row is not None:
        rows.append(latency_row)
    else:
        delta = cl["median"] - bl["median"]
        noise = _notch(bl) + _notch(cl)
        regressed = delta > tolerance * bl["median"] and delta > noise
        status = "REGRESSED" if regressed else ("improved" if -delta > max(tolerance * bl["median"], noise) else "ok")
        rows.append(GateRow("latency_ms.median", bl["median"], cl["median"], f"+{100 * tolerance:.1f}% and > spread",
                            status, f"delta {delta:+.3f} ms, spread (notches) {noise:.3f} ms"))
    if max_latency_ms is not None:
        rows.append(GateRow("latency_ms.median (absolute)", None, cl["median"], f"<= {max_latency_ms:g} ms",
                            "REGRESSED" if cl["median"] > max_latency_ms else "ok"))
    for m in ("macs", "params"):
        b, c = float(baseline[m]), float(current[m])
        st = "REGRESSED" if c > b * (1 + tolerance) else ("improved" if c < b else "ok")
        rows.append(GateRow(m, b, c, f"+{100 * tolerance:.1f}%", st))
    ba, ca = baseline.get("accuracy"), current.get("accuracy")
    if ba is not None and ca is not None:
        drop = 100 * (ba - ca)
        rows.append(GateRow("accuracy", ba, ca, f"drop <= {max_accuracy_drop_pts:g} pts",
                            "REGRESSED" if drop > max_accuracy_drop_pts else ("improved" if drop < 0 else "ok"),
                            f"{-drop:+.2f} pts"))
    else:
        rows.append(GateRow("accuracy", ba, ca, f"drop <= {max_accuracy_drop_pts:g} pts", "skipped",
                            "no labelled data given" if ca is None else "baseline has no accuracy"))
    ok = not any(r.status == "REGRESSED" for r in rows)
    notes = []
    if baseline.get("sha256") == current.get("sha256"):
        notes.append("same model file as the baseline (sha256 match)")
    return GateResult(ok=ok, rows=rows, current=current, baseline=baseline, notes=notes)


def _notch(lat: dict[str, Any]) -> float:
    """95% notch half-width of a median: 1.58 * IQR / sqrt(n)."""
    n = max(int(lat.get("repeats", 1)), 1)
    return 1.58 * float(lat.get("iqr", 0.0)) / n ** 0.5


def load_baseline(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"baseline {p} does not exist; create it with `slimforge gate --model M --baseline {p} --update-baseline`.")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"baseline {p} is not valid JSON ({exc}); regenerate it with --update-baseline.") from exc


def write_baseline(path: str | Path, measurement: dict[str, Any]) -> Path:
    return write_text_atomic(path, json.dumps(measurement, indent=2))
