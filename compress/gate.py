"""The CI gate: measure an exported model on a target and compare it with a baseline.

``slimforge gate --model student.onnx --baseline baseline.json --target cpu-1t`` measures
latency (median and IQR over ``repeats`` runs after warm-up), MACs and parameters (counted from
the ONNX graph, :func:`compress.budgets.onnx_cost`) and, when labelled data is given, top-1
accuracy; then compares each with the baseline file.

What is judged, and how:

- MACs and params regress when they grow by more than ``tolerance`` (relative, default 5%);
  accuracy when it drops by more than ``max_accuracy_drop_pts`` points; an absolute
  ``max_latency_ms`` fails when the median exceeds it. These do not depend on machine load.
- Latency relative to the baseline is judged **only side by side** (``reference``, CLI
  ``--reference``): the baseline's own model file is timed in the same run, interleaved
  round-robin with the model (:func:`compress.profiling.latency_model.measure_interleaved`), so
  machine load hits both alike. A regression needs the median per-round ratio model/reference
  above ``1 + tolerance`` **and** its 95% notch (``1.58 * IQR / sqrt(rounds)``, McGill, Tukey &
  Larsen 1978) clear of 1; "improved" is the mirror image.
- Without ``reference`` the latency row is reported with status ``"skipped"``, and a note says
  why: a latency stored on another day (another runner, another load, another CPU clock) is not
  comparable with one measured now. More repeats do not help, because the error is a shift
  between the two runs, not the spread within one: an earlier rule that required both the
  tolerance and the two medians' notches flagged the baseline's own file as 18.7% slower at 20
  repeats and called it 33-36% faster at 50. The stored latency stays in the baseline, for
  information and for the ``max_latency_ms`` ceiling.

Baseline files (schema version 2, :data:`BASELINE_SCHEMA`) are JSON objects written by
:func:`write_baseline`: ``format`` (the file kind, always ``"slimforge-baseline/1"``, kept so
that older slimforge versions still read new files), ``schema`` (the schema version),
``slimforge_version``, ``model``, ``sha256``, ``target`` (a :class:`~compress.profiling.Target`
dict), ``macs``, ``params``, ``latency_ms`` (``median``, ``p90``, ``iqr``, ``repeats``),
``accuracy`` (fraction in [0, 1] or ``null``), ``accuracy_samples`` (optional) and
``measured_at``. Extra keys are allowed and ignored. Every baseline is validated
(:func:`validate_baseline`, a pydantic schema) before it is used or written: a missing key, a
wrong type (``true`` is not a number, ``"100"`` is not an int), a NaN or an infinity anywhere
(``NaN``, ``Infinity``, ``1e999``), a list at the top level, text that is not UTF-8 (UTF-16 from
PowerShell's ``>``), an empty file or invalid JSON raises :class:`~compress.errors.ConfigError`,
listing every problem and saying how to regenerate the file.

Files without a ``schema`` key were written before schema 2. They are read as schema 1 when
they pass the same validation (the fields are the same), and the result carries a note asking
to refresh them; a ``schema`` this version does not know (a newer slimforge's) is refused.

Exit codes (CLI): 0 pass, 1 regression, 2 bad input or usage (missing, corrupt or foreign
baseline, bad ``--tolerance``, target mismatch, missing files ...), with a message and no
traceback.
"""

from __future__ import annotations

import codecs
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compress import __version__
from compress.budgets import onnx_cost
from compress.errors import ConfigError
from compress.exporters.atomic import write_text_atomic
from compress.exporters.mobile import onnx_accuracy, sha256_file
from compress.profiling import Target, latency_model, profile_latency
from compress.profiling.target import GRAPH_OPTIMIZATION_LEVELS, MODEL_FORMATS

__all__ = ["GateRow", "GateResult", "measure_artifact", "compare", "side_by_side_latency", "parse_tolerance",
           "BASELINE_FORMAT", "BASELINE_SCHEMA", "BaselineSchema", "validate_baseline", "load_baseline",
           "write_baseline", "check_target"]

BASELINE_FORMAT = "slimforge-baseline/1"
"""The file kind, stored as ``format``; frozen (older slimforge versions check it)."""

BASELINE_SCHEMA = "slimforge-gate-baseline/2"
"""The schema version written into every new baseline, stored as ``schema``."""

_SCHEMA_RE = re.compile(r"^slimforge-gate-baseline/(\d+)$")
_MAX_BASELINE_BYTES = 16 * 2**20  # a baseline is about 1 KB
_TARGET_KEYS = ("provider", "intra_op_threads", "inter_op_threads", "batch_size", "model_format",
                "graph_optimization_level")


def _regenerate_hint(path: str | Path | None) -> str:
    where = str(path) if path is not None else "BASELINE.json"
    return (f"regenerate it from the model it should describe: `slimforge gate --model MODEL.onnx --baseline {where} "
            f"--update-baseline` (with the same --target and --data as the gate uses).")


# ---------------------------------------------------------------------------------------- schema

_STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
_NonNeg = Annotated[float, Field(ge=0)]


class _TargetRecord(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    intra_op_threads: int = Field(ge=1)
    inter_op_threads: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    input_shape: Optional[list[Annotated[int, Field(ge=1)]]] = Field(min_length=1)
    graph_optimization_level: Literal[GRAPH_OPTIMIZATION_LEVELS]  # type: ignore[valid-type]
    model_format: Literal[MODEL_FORMATS]  # type: ignore[valid-type]


class _LatencyRecord(BaseModel):
    model_config = _STRICT
    median: _NonNeg
    p90: _NonNeg
    iqr: _NonNeg
    repeats: int = Field(ge=1)


class BaselineSchema(BaseModel):
    """The gate baseline, schema 2 (schema-1 files have the same fields, without ``schema`` and
    ``slimforge_version``). Strict: no coercion of strings or bools into numbers; NaN and
    infinities are refused; extra keys are allowed."""

    model_config = _STRICT
    format: Literal["slimforge-baseline/1"]
    schema_: Optional[Literal["slimforge-gate-baseline/2"]] = Field(default=None, alias="schema")
    slimforge_version: Optional[str] = None
    model: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    target: _TargetRecord
    macs: _NonNeg
    params: _NonNeg
    latency_ms: _LatencyRecord
    accuracy: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    accuracy_samples: Optional[Annotated[int, Field(ge=1)]] = None
    measured_at: str


def _loc(parts: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _non_finite(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], float]]:
    """Every NaN / +-inf float in a parsed JSON value, with its path."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [(path, obj)]
    if isinstance(obj, dict):
        return [hit for k, v in obj.items() for hit in _non_finite(v, (*path, k))]
    if isinstance(obj, list):
        return [hit for i, v in enumerate(obj) for hit in _non_finite(v, (*path, i))]
    return []


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def _schema_problems(data: dict[str, Any]) -> list[str]:
    """Every way ``data`` fails :class:`BaselineSchema`, NaN and infinities anywhere included."""
    problems: dict[str, str] = {}
    for path, value in _non_finite(data):
        problems[_loc(path)] = f"{value!r}"
    try:
        BaselineSchema.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = _loc(["schema" if p == "schema_" else p for p in err["loc"]])
            if loc in problems:
                continue
            if err["type"] == "missing":
                problems[loc] = "missing"
            else:
                problems[loc] = f"{err['msg'].replace('Input should', 'should')} (got {_short(err.get('input'))})"
    return [f"`{k}`: {v}" for k, v in problems.items()]


def _listed(problems: list[str]) -> str:
    n = len(problems)
    why = (" (NaN and infinities are refused: they compare false with every limit, so they would pass anything)"
           if any(p.endswith(("`: nan", "`: inf", "`: -inf")) for p in problems) else "")
    return f"{n} problem{'s' if n > 1 else ''}: " + "; ".join(problems) + why


def validate_baseline(data: Any, *, source: str | Path | None = None) -> dict[str, Any]:
    """Check a parsed baseline against :class:`BaselineSchema`; return it unchanged.

    Args:
        data: the parsed JSON (normally a dict).
        source: the file it came from, for the message.

    Raises:
        ConfigError: not a JSON object, a ``schema`` newer than this version reads, or any field
            missing, of the wrong type, out of range, NaN or infinite. The message lists every
            problem and says how to regenerate the file.
    """
    what = f"baseline {source}" if source is not None else "the baseline"
    if not isinstance(data, dict):
        kind = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(data), "null")
        raise ConfigError(f"{what} holds a JSON {kind} at the top level, not the object that "
                          f"`slimforge gate --update-baseline` writes; {_regenerate_hint(source)}")
    schema = data.get("schema")
    m = _SCHEMA_RE.match(schema) if isinstance(schema, str) else None
    if m and int(m.group(1)) > 2:
        raise ConfigError(f"{what} has schema {schema!r}, newer than this slimforge reads ({BASELINE_SCHEMA!r}); "
                          f"upgrade slimforge, or {_regenerate_hint(source)}")
    problems = _schema_problems(data)
    if problems:
        raise ConfigError(f"{what} is not a valid slimforge gate baseline ({_listed(problems)}); "
                          f"{_regenerate_hint(source)}")
    return data


def _check_measurement(measurement: Any) -> None:
    """A fresh measurement must pass the baseline schema too (e.g. no NaN accuracy from empty data)."""
    problems = _schema_problems(measurement) if isinstance(measurement, dict) else ["`(top level)`: not a dict"]
    if problems:
        raise ConfigError(f"the measurement of the model is not usable ({_listed(problems)}); check the model "
                          f"file and --data (at least one labelled sample) and measure again.")


def _decode(raw: bytes, p: Path) -> str:
    enc = None
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        enc = "UTF-32"
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        enc = "UTF-16"
    elif b"\x00" in raw:
        half = max(len(raw) // 2, 1)
        enc = "UTF-16" if max(raw[0::2].count(0), raw[1::2].count(0)) > 0.4 * half else None
        if enc is None:
            raise ConfigError(f"baseline {p} is binary data, not JSON text (is it the .onnx model? that goes to "
                              f"--model or --reference); {_regenerate_hint(p)}")
    if enc is not None:
        raise ConfigError(f"baseline {p} is {enc} text; the gate reads UTF-8 JSON (PowerShell 5's `>` writes UTF-16). "
                          f"Convert it (`iconv -f {enc} -t UTF-8`) or {_regenerate_hint(p)}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"baseline {p} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          f"{_regenerate_hint(p)}") from None


def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read and validate a baseline file (see the module docstring for the schema and versions).

    Raises:
        ConfigError: the file is missing, unreadable, empty, not UTF-8, not JSON, or fails
            :func:`validate_baseline`; the message says how to regenerate it.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"baseline {p} does not exist; create it with "
                          f"`slimforge gate --model MODEL.onnx --baseline {p} --update-baseline`.")
    if not p.is_file():
        raise ConfigError(f"baseline {p} is not a file; pass the baseline JSON written by --update-baseline.")
    try:
        size = p.stat().st_size
        if size > _MAX_BASELINE_BYTES:
            raise ConfigError(f"baseline {p} is {size:,} bytes, far more than a gate baseline (about 1 KB); "
                              f"check the path, or {_regenerate_hint(p)}")
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read baseline {p} ({exc.strerror or exc}); check its permissions.") from None
    if not raw.strip():
        raise ConfigError(f"baseline {p} is empty; {_regenerate_hint(p)}")
    text = _decode(raw, p)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"baseline {p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                          f"{_regenerate_hint(p)}") from None
    except RecursionError:
        raise ConfigError(f"baseline {p} is nested too deeply to be a gate baseline; {_regenerate_hint(p)}") from None
    return validate_baseline(data, source=p)


def write_baseline(path: str | Path, measurement: dict[str, Any]) -> Path:
    """Validate ``measurement`` (from :func:`measure_artifact`) and write it atomically as JSON.

    Raises:
        ConfigError: the measurement does not pass the baseline schema (nothing is written).
        OSError: the file cannot be written (the destination is unchanged).
    """
    _check_measurement(measurement)
    return write_text_atomic(path, json.dumps(measurement, indent=2, allow_nan=False))


# --------------------------------------------------------------------------------------- options

def parse_tolerance(text: str | float) -> float:
    """``"5%"`` -> 0.05, ``"0.05"`` -> 0.05, ``0.05`` -> 0.05.

    A number without ``%`` is a fraction and must be below 1: ``"5"`` is refused rather than read
    as 500% (write ``"5%"``). The result must lie in [0, 10] (0% to 1000%).

    Raises:
        ConfigError: not a finite number, a bare number >= 1, or out of range.
    """
    s = str(text).strip()
    pct = s.endswith("%")
    try:
        if isinstance(text, bool):
            raise ValueError
        v = float(s[:-1].strip() if pct else s)
    except ValueError:
        raise ConfigError(f"tolerance must look like '5%' or 0.05 (a fraction), got {text!r}") from None
    if not math.isfinite(v):
        raise ConfigError(f"tolerance must be a finite number like '5%' or 0.05, got {text!r}")
    if not pct and v >= 1:
        raise ConfigError(f"tolerance {text!r} is ambiguous: a number without '%' is a fraction, so it would allow "
                          f"{100 * v:g}% growth. Write '{v:g}%' for {v:g} percent (or '{100 * v:g}%' if you mean it).")
    v = v / 100 if pct else v
    if not 0 <= v <= 10:
        raise ConfigError(f"tolerance must be between 0% and 1000%, got {text!r}")
    return v


def check_target(baseline: dict[str, Any], target: Target | dict[str, Any]) -> None:
    """Refuse to compare with a baseline measured on another target (provider, threads, batch size,
    model format, graph optimisation level; the input shape may differ, it comes from the model).

    Raises:
        ConfigError: the targets differ (the message lists the fields).
    """
    bt = baseline.get("target") if isinstance(baseline.get("target"), dict) else {}
    ct = target.to_dict() if isinstance(target, Target) else target
    diff = [k for k in _TARGET_KEYS if bt.get(k) != ct.get(k)]
    if diff:
        raise ConfigError(
            f"baseline was measured on target {bt.get('name')!r} and this run on {ct.get('name')!r} "
            f"(they differ in {diff}); compare like with like or refresh the baseline with --update-baseline."
        )


def _check_limits(tolerance: float, max_latency_ms: float | None, max_accuracy_drop_pts: float) -> None:
    problems = []
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= 10:
        problems.append(f"tolerance must be a fraction in [0, 10] (0.05 = 5%), got {tolerance!r}")
    if max_latency_ms is not None and (isinstance(max_latency_ms, bool) or not isinstance(max_latency_ms, (int, float))
                                       or not math.isfinite(max_latency_ms) or max_latency_ms <= 0):
        problems.append(f"max_latency_ms must be a finite number of milliseconds > 0, got {max_latency_ms!r}")
    if (isinstance(max_accuracy_drop_pts, bool) or not isinstance(max_accuracy_drop_pts, (int, float))
            or not math.isfinite(max_accuracy_drop_pts) or max_accuracy_drop_pts < 0):
        problems.append(f"max_accuracy_drop_pts must be a finite number of points >= 0, got {max_accuracy_drop_pts!r}")
    if problems:
        raise ConfigError("; ".join(problems))


# ------------------------------------------------------------------------------------ measuring

def measure_artifact(
    onnx_path: str | Path,
    target: Target,
    *,
    repeats: int = 50,
    warmup: int = 10,
    data: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Measure an ONNX file: latency (ms) on ``target``, MACs/params from the graph, accuracy.

    Returns a baseline dict (schema :data:`BASELINE_SCHEMA`) that :func:`write_baseline` accepts.

    Args:
        data: optional ``(x (N, C, H, W) float32, y (N,) int)`` for top-1 accuracy.
    """
    path = Path(onnx_path)
    cost = onnx_cost(path)
    t = target if target.input_shape else target.with_input_shape(cost.input_shape)
    lat = profile_latency(path, t, warmup=warmup, repeats=repeats)
    out: dict[str, Any] = {
        "format": BASELINE_FORMAT,
        "schema": BASELINE_SCHEMA,
        "slimforge_version": __version__,
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


def _ratio_row(ratios: np.ndarray, ref_median_ms: float, cur_median_ms: float, tolerance: float,
               reference_name: str) -> GateRow:
    """The side-by-side latency row from per-round ratios model/reference (see
    :func:`side_by_side_latency`)."""
    med = float(np.median(ratios))
    q75, q25 = np.percentile(ratios, [75, 25])
    notch = 1.58 * float(q75 - q25) / max(len(ratios), 1) ** 0.5
    if med > 1 + tolerance and med - notch > 1:
        status = "REGRESSED"
    elif med < 1 - tolerance and med + notch < 1:
        status = "improved"
    else:
        status = "ok"
    return GateRow("latency_ms.median", ref_median_ms, cur_median_ms,
                   f"ratio <= {1 + tolerance:.3g} or notch covers 1", status,
                   f"side by side with {reference_name}: ratio {med:.3f} +- {notch:.3f} over {len(ratios)} rounds")


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
    ref, cur = latency_model.measure_interleaved([Path(reference), Path(model)], target, rounds=rounds,
                                                 repeats=repeats, warmup=warmup)
    ratios = np.asarray(cur["rounds_ms"]) / np.maximum(np.asarray(ref["rounds_ms"]), 1e-9)
    return _ratio_row(ratios, ref["median_ms"], cur["median_ms"], tolerance, Path(reference).name)


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
        latency_row: a row from :func:`side_by_side_latency`. Without it the latency row is
            ``"skipped"``: a stored latency is not judged (see the module docstring).

    Raises:
        ConfigError: the baseline fails :func:`validate_baseline`, the measurement the same schema, they were
            measured on different targets, or a limit is not a finite number in range.
    """
    _check_limits(tolerance, max_latency_ms, max_accuracy_drop_pts)
    validate_baseline(baseline)
    _check_measurement(current)
    check_target(baseline, current["target"])
    rows: list[GateRow] = []
    notes: list[str] = []
    bl, cl = baseline["latency_ms"], current["latency_ms"]
    if latency_row is not None:
        rows.append(latency_row)
    else:
        rows.append(GateRow("latency_ms.median", bl["median"], cl["median"], "needs --reference", "skipped",
                            "not judged: a latency stored on another day is not comparable with one measured now; "
                            "pass --reference BASELINE.onnx to time both side by side"))
        notes.append("latency was not judged: without --reference (the .onnx the baseline was written from, timed "
                     "side by side in this run) load and clock differences between runs are larger than the "
                     "regressions the gate must catch; use --max-latency-ms for an absolute ceiling")
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
    if baseline.get("sha256") == current.get("sha256"):
        notes.append("same model file as the baseline (sha256 match)")
    if "schema" not in baseline:
        notes.append(f"the baseline has no schema version (written before {BASELINE_SCHEMA}); it was read as schema 1. "
                     "Refresh it with --update-baseline to record the version.")
    return GateResult(ok=ok, rows=rows, current=current, baseline=baseline, notes=notes)
