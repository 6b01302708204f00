"""Budgets: absolute and relative limits on MACs, parameters, measured latency and peak memory.

A :class:`Budget` holds limits of two kinds:

* absolute: ``max_macs`` (MACs per sample, fvcore's count), ``max_params`` (elements),
  ``max_latency_ms`` (median latency in ms on ``target``, measured with onnxruntime),
  ``max_memory_bytes`` (peak resident memory in bytes that an onnxruntime session on ``target``
  adds, measured in a child process: :func:`compress.profiling.memory.profile_peak_memory`);
* relative: a fraction of the teacher's figure (``Budget.parse("macs=0.5x")``), turned into
  absolute limits by :meth:`Budget.resolve` once the teacher has been measured.

``Budget.check(cost, latency_ms=..., memory_bytes=...)`` compares a student against every limit and returns a
:class:`BudgetCheck` that lists every violation with its margin, never only the first.

Spec grammar (``Budget.parse``): comma-separated ``key=value`` items, keys ``macs``,
``params``, ``latency``, ``memory``; values ``0.5x`` (relative to the teacher), ``12.5M`` / ``300k`` /
``1.2G`` / ``41000`` (absolute counts), ``3.5ms`` / ``0.01s`` / ``800us`` (latency) or
``64MB`` / ``48MiB`` / ``2GB`` / ``500000`` (memory in bytes; kB/MB/GB are powers of 1000,
KiB/MiB/GiB powers of 1024).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from compress.budgets.cost import Cost
from compress.budgets.errors import BudgetError
from compress.profiling.target import Target

__all__ = ["Budget", "BudgetCheck", "Violation", "METRICS", "LATENCY_NOT_REDUCED"]

METRICS = ("macs", "params", "latency", "memory")
LATENCY_NOT_REDUCED = "latency_not_reduced"
"""The violation of a student that is not faster than its teacher (see :meth:`Budget.check`)."""
# the absolute field behind each metric
_ABS_FIELD = {"macs": "max_macs", "params": "max_params", "latency": "max_latency_ms", "memory": "max_memory_bytes"}
_MEM_SUFFIX = {"": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30}
_COUNT_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}
_TIME_SUFFIX = {"ms": 1.0, "s": 1e3, "us": 1e-3}
_ITEM = re.compile(r"^\s*([a-z_]+)\s*=\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Violation:
    """One limit a student exceeds. ``margin = actual - limit`` (> 0: over by that much),
    in the metric's unit (MACs, params, ms); ``ratio = actual / limit``."""

    metric: str
    limit: float
    actual: float
    unit: str

    @property
    def margin(self) -> float:
        return self.actual - self.limit

    @property
    def ratio(self) -> float:
        return self.actual / self.limit if self.limit else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "limit": self.limit,
            "actual": self.actual,
            "unit": self.unit,
            "margin": self.margin,
            "ratio": self.ratio,
        }

    def __str__(self) -> str:
        if self.metric == LATENCY_NOT_REDUCED:
            return (
                f"{self.metric}: the student takes {_fmt(self.actual, self.unit)}, the teacher {_fmt(self.limit, self.unit)} "
                f"measured side by side ({100 * (self.ratio - 1):+.1f}%): not faster than the model it replaces. "
                "Tighten the budget (e.g. a latency limit), try another strategy, or accept a slower student "
                "with allow_slower=True (CLI: --allow-slower)"
            )
        return (
            f"{self.metric}: {_fmt(self.actual, self.unit)} > limit {_fmt(self.limit, self.unit)} "
            f"(over by {_fmt(self.margin, self.unit)}, {100 * (self.ratio - 1):.1f}%)"
        )


@dataclass(frozen=True)
class BudgetCheck:
    """Result of :meth:`Budget.check`. ``headroom`` maps every checked metric to
    ``limit - actual`` (negative = over budget). ``latency_vs_teacher`` is the side-by-side
    comparison with the teacher when one was made (``teacher_ms``, ``student_ms``, ``reduced``),
    ``allow_slower`` whether a student that is not faster was accepted."""

    ok: bool
    violations: tuple[Violation, ...]
    headroom: dict[str, float]
    latency_vs_teacher: dict[str, Any] | None = None
    allow_slower: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violations": [v.to_dict() for v in self.violations],
            "headroom": dict(self.headroom),
            "latency_vs_teacher": None if self.latency_vs_teacher is None else dict(self.latency_vs_teacher),
            "allow_slower": self.allow_slower,
        }

    def __bool__(self) -> bool:  # `if budget.check(cost):`
        return self.ok


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    a = abs(value)
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{value / div:.3f}{suf} {unit}"
    return f"{value:.0f} {unit}"


@dataclass(frozen=True)
class Budget:
    """Limits a student must meet.

    Attributes:
        max_macs: MACs per sample (fvcore count; one fused multiply-add = 1).
        max_params: parameter elements.
        max_latency_ms: median latency in milliseconds on ``target`` (onnxruntime).
        max_memory_bytes: peak resident memory in bytes that an onnxruntime session of the
            student adds on ``target`` (see :mod:`compress.profiling.memory`).
        rel_macs, rel_params, rel_latency, rel_memory: fractions of the teacher's figure; resolved into the
            absolute fields by :meth:`resolve`.
        target: the runtime profile latency is measured on (default: 1-thread CPU).
        spec: the string the budget was parsed from, kept for reports.

    Raises:
        BudgetError: a limit is not a positive finite number, or no limit is given.
    """

    max_macs: float | None = None
    max_params: float | None = None
    max_latency_ms: float | None = None
    rel_macs: float | None = None
    rel_params: float | None = None
    rel_latency: float | None = None
    max_memory_bytes: float | None = None
    rel_memory: float | None = None
    target: Target = field(default_factory=Target)
    spec: str = ""

    def __post_init__(self) -> None:
        values = {
            "max_macs": self.max_macs,
            "max_params": self.max_params,
            "max_latency_ms": self.max_latency_ms,
            "rel_macs": self.rel_macs,
            "rel_params": self.rel_params,
            "rel_latency": self.rel_latency,
            "max_memory_bytes": self.max_memory_bytes,
            "rel_memory": self.rel_memory,
        }
        for name, v in values.items():
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise BudgetError(f"Budget.{name} must be a positive finite number, got {v!r}.")
        if all(v is None for v in values.values()):
            raise BudgetError(
                "A budget needs at least one limit: e.g. Budget(max_macs=20e6) or "
                'Budget.parse("macs=0.5x,latency=2ms").'
            )
        for metric in METRICS:
            absolute = values[_ABS_FIELD[metric]]
            if absolute is not None and values[f"rel_{metric}"] is not None:
                raise BudgetError(
                    f"{metric} has both an absolute and a relative limit; give one of them."
                )
        if not isinstance(self.target, Target):
            raise BudgetError(f"Budget.target must be a compress.profiling.Target, got {type(self.target).__name__}.")

    # ------------------------------------------------------------------ construction
    @classmethod
    def parse(cls, spec: str, target: Target | None = None) -> "Budget":
        """Parse ``"macs=0.5x,params=1.2M,latency=3ms"``.

        Raises:
            BudgetError: unknown key (with the closest known key), bad number or unit.
        """
        if not isinstance(spec, str) or not spec.strip():
            raise BudgetError('A budget spec is a non-empty string such as "macs=0.5x".')
        kwargs: dict[str, float] = {}
        seen: set[str] = set()
        for raw in spec.split(","):
            if not raw.strip():
                continue
            m = _ITEM.match(raw)
            if not m:
                raise BudgetError(
                    f"Cannot parse budget item {raw.strip()!r}: write key=value, e.g. 'macs=0.5x', "
                    "'params=1.2M' or 'latency=3ms'."
                )
            key, number, unit = m.group(1).lower(), float(m.group(2)), m.group(3).lower()
            if key == "flops":
                raise BudgetError(
                    "Budgets count MACs (fvcore counts one fused multiply-add as one); write 'macs=...' "
                    "(a FLOPs figure from torch.utils.flop_counter is 2x the MACs)."
                )
            if key not in METRICS:
                close = difflib.get_close_matches(key, METRICS, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise BudgetError(f"Unknown budget metric {key!r}; known: {', '.join(METRICS)}.{hint}")
            if key in seen:
                raise BudgetError(f"Budget metric {key!r} is given twice in {spec!r}.")
            seen.add(key)
            if unit == "x":
                kwargs[f"rel_{key}"] = number
            elif key == "latency":
                if unit not in _TIME_SUFFIX:
                    raise BudgetError(
                        f"Latency {raw.strip()!r} needs a unit: 'ms', 's', 'us', or 'x' relative to the teacher."
                    )
                kwargs["max_latency_ms"] = number * _TIME_SUFFIX[unit]
            elif key == "memory":
                if unit not in _MEM_SUFFIX:
                    raise BudgetError(
                        f"Memory {raw.strip()!r}: unit must be one of B, kB, MB, GB, KiB, MiB, GiB (or none = bytes), "
                        "or 'x' relative to the teacher."
                    )
                kwargs["max_memory_bytes"] = number * _MEM_SUFFIX[unit]
            else:
                if unit not in _COUNT_SUFFIX:
                    raise BudgetError(
                        f"{key} {raw.strip()!r}: unit must be one of k, M, G (or none), or 'x' relative to the teacher."
                    )
                kwargs[f"max_{key}"] = number * _COUNT_SUFFIX[unit]
        if not kwargs:
            raise BudgetError(f"Budget spec {spec!r} has no limits.")
        return cls(**kwargs, target=target or Target(), spec=spec.strip())

    @classmethod
    def coerce(cls, budget: "Budget | str | dict", target: Target | None = None) -> "Budget":
        """Accept a Budget, a spec string, or a dict of Budget fields."""
        if isinstance(budget, Budget):
            return budget if target is None else replace(budget, target=target)
        if isinstance(budget, str):
            return cls.parse(budget, target=target)
        if isinstance(budget, dict):
            try:
                return cls(**budget, **({"target": target} if target else {}))
            except TypeError as exc:
                raise BudgetError(f"Bad budget fields {sorted(budget)}: {exc}") from exc
        raise BudgetError(
            f"budget must be a Budget, a spec string like 'macs=0.5x', or a dict; got {type(budget).__name__}."
        )

    # ------------------------------------------------------------------ queries
    @property
    def is_relative(self) -> bool:
        return any(v is not None for v in (self.rel_macs, self.rel_params, self.rel_latency, self.rel_memory))

    @property
    def needs_latency(self) -> bool:
        return self.max_latency_ms is not None or self.rel_latency is not None

    @property
    def needs_memory(self) -> bool:
        return self.max_memory_bytes is not None or self.rel_memory is not None

    def describe(self) -> str:
        if self.spec:
            return self.spec
        parts = []
        for metric, unit in (("macs", ""), ("params", ""), ("latency", "ms"), ("memory", "B")):
            rel = getattr(self, f"rel_{metric}")
            ab = getattr(self, _ABS_FIELD[metric])
            if rel is not None:
                parts.append(f"{metric}={rel:g}x")
            elif ab is not None:
                parts.append(f"{metric}={ab:g}{unit}")
        return ",".join(parts)

    def resolve(self, teacher: Cost, teacher_latency_ms: float | None = None,
                teacher_memory_bytes: float | None = None) -> "Budget":
        """Turn relative limits into absolute ones using the teacher's cost, latency (ms) and
        session peak memory (bytes).

        Raises:
            BudgetError: a relative latency or memory limit without the teacher's measurement.
        """
        upd: dict[str, Any] = {"rel_macs": None, "rel_params": None, "rel_latency": None, "rel_memory": None}
        if self.rel_macs is not None:
            upd["max_macs"] = self.rel_macs * teacher.macs
        if self.rel_params is not None:
            upd["max_params"] = self.rel_params * teacher.params
        if self.rel_latency is not None:
            if teacher_latency_ms is None:
                raise BudgetError(
                    "latency is relative (e.g. 'latency=0.5x'): measure the teacher's latency first and pass "
                    "teacher_latency_ms to Budget.resolve()."
                )
            upd["max_latency_ms"] = self.rel_latency * teacher_latency_ms
        if self.rel_memory is not None:
            if teacher_memory_bytes is None:
                raise BudgetError(
                    "memory is relative (e.g. 'memory=0.5x'): measure the teacher's session peak memory first "
                    "(compress.profiling.memory.profile_peak_memory) and pass teacher_memory_bytes to Budget.resolve()."
                )
            upd["max_memory_bytes"] = self.rel_memory * teacher_memory_bytes
        return replace(self, **upd)

    def check(self, cost: Cost, latency_ms: float | None = None, memory_bytes: float | None = None, *,
              teacher_latency_ms: float | None = None, student_latency_ms: float | None = None,
              allow_slower: bool = False) -> BudgetCheck:
        """Check a student's cost (and measured median latency in ms, session peak memory in
        bytes) against every limit.

        With ``teacher_latency_ms`` (the teacher's latency measured side by side with the
        student's ``student_latency_ms``, which defaults to ``latency_ms``), a student that is
        not faster (``student >= teacher``) is a violation named ``latency_not_reduced`` (limit:
        the teacher's ms), unless ``allow_slower``: "compressed" has to mean faster on the target.

        Returns:
            :class:`BudgetCheck` listing every violation with its margin.

        Raises:
            BudgetError: the budget is still relative (call :meth:`resolve` first), or it limits
                latency (memory) and ``latency_ms`` (``memory_bytes``) was not given, or
                ``teacher_latency_ms`` came without a student latency, or a latency compared with
                the teacher's is not a positive finite number.
        """
        if self.is_relative:
            raise BudgetError(
                f"Budget {self.describe()!r} is relative to the teacher; call budget.resolve(teacher_cost) first."
            )
        violations: list[Violation] = []
        headroom: dict[str, float] = {}
        pairs: list[tuple[str, float | None, float | None, str]] = [
            ("macs", self.max_macs, float(cost.macs), "MACs"),
            ("params", self.max_params, float(cost.params), "params"),
        ]
        if self.max_latency_ms is not None:
            if latency_ms is None:
                raise BudgetError(
                    "This budget limits latency: pass the student's measured median latency (ms) as latency_ms."
                )
            pairs.append(("latency_ms", self.max_latency_ms, float(latency_ms), "ms"))
        if self.max_memory_bytes is not None:
            if memory_bytes is None:
                raise BudgetError(
                    "This budget limits peak memory: pass the student's measured session peak (bytes) as memory_bytes."
                )
            pairs.append(("memory_bytes", self.max_memory_bytes, float(memory_bytes), "bytes"))
        for metric, limit, actual, unit in pairs:
            if limit is None or actual is None:
                continue
            headroom[metric] = limit - actual
            if actual > limit:
                violations.append(Violation(metric, float(limit), actual, unit))
        vs_teacher = None
        if teacher_latency_ms is not None:
            student_ms = latency_ms if student_latency_ms is None else student_latency_ms
            if student_ms is None:
                raise BudgetError("Comparing with the teacher's latency needs the student's: pass student_latency_ms.")
            t_ms, s_ms = float(teacher_latency_ms), float(student_ms)
            if not (math.isfinite(t_ms) and math.isfinite(s_ms) and t_ms > 0 and s_ms > 0):
                raise BudgetError(f"latencies must be positive finite ms, got teacher {t_ms!r}, student {s_ms!r}.")
            vs_teacher = {"teacher_ms": t_ms, "student_ms": s_ms, "reduced": s_ms < t_ms}
            if s_ms >= t_ms and not allow_slower:
                violations.append(Violation(LATENCY_NOT_REDUCED, t_ms, s_ms, "ms"))
        return BudgetCheck(ok=not violations, violations=tuple(violations), headroom=headroom,
                           latency_vs_teacher=vs_teacher, allow_slower=bool(allow_slower))

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.describe(),
            "max_macs": self.max_macs,
            "max_params": self.max_params,
            "max_latency_ms": self.max_latency_ms,
            "rel_macs": self.rel_macs,
            "rel_params": self.rel_params,
            "rel_latency": self.rel_latency,
            "max_memory_bytes": self.max_memory_bytes,
            "rel_memory": self.rel_memory,
            "target": self.target.to_dict(),
        }
