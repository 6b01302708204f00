"""Where a student sits on the stock frontier: accuracy vs MACs and vs measured latency.

A *point* is a dict ``{"name", "accuracy", "macs", "latency_ms"}`` and optionally ``"params"``:
``accuracy`` a top-1 fraction in [0, 1] (as in ``report.json``), ``macs`` fvcore's count per
sample (one fused multiply-add = 1), ``latency_ms`` a median in milliseconds or None (unknown),
``params`` parameter elements. *References* are points for the models a user could take off the
shelf (the pretrained CIFAR ResNet-20/32/44/56 in ``benchmarks/bench_frontier.py``); their
*frontier* is their upper envelope: sorted by cost, each keeps only if it is more accurate than
every cheaper one, and the accuracy in between is linearly interpolated (:func:`frontier_accuracy`).

``compress(..., reference_points=...)`` (CLI ``--reference-points``) uses :func:`place_student`
to write ``pareto.png`` and the "Where the student sits" section of ``report.md``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from compress._strict_json import read_json_file, schema_problems
from compress.errors import ConfigError
from compress.exporters.atomic import write_bytes_atomic

__all__ = ["ReferencePoint", "validate_reference_points", "reference_points_from_file", "frontier",
           "frontier_accuracy", "place_student", "pareto_record", "pareto_plot"]

_FIX = ("write a JSON list of objects such as [{\"name\": \"resnet20\", \"accuracy\": 0.915, \"macs\": 40931968, "
        "\"latency_ms\": 0.8}] (accuracy a fraction in [0, 1], macs per sample as fvcore counts them, latency_ms "
        "in milliseconds or null, optional params)")


class ReferencePoint(BaseModel):
    """One model on the accuracy / cost plane (strict: no coercion, no NaN, unknown keys refused)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
    name: str = Field(min_length=1)
    accuracy: Annotated[float, Field(ge=0, le=1)]
    macs: Annotated[float, Field(gt=0)]
    latency_ms: Optional[Annotated[float, Field(gt=0)]]
    params: Optional[Annotated[int, Field(ge=0)]] = None


def validate_reference_points(data: Any, *, where: str = "reference_points") -> list[dict[str, Any]]:
    """``data`` checked as a non-empty list of :class:`ReferencePoint` with distinct names; returns
    plain dicts (``params`` None when absent). ``where`` names the data in the message.

    Raises:
        ConfigError: not a list, empty, or any entry invalid; every problem is listed with its
            position (``[2].macs: should be greater than 0``), and how to write the file.
    """
    if not isinstance(data, list):
        kind = {dict: "an object", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(data), "null" if data is None else type(data).__name__)
        raise ConfigError(f"{where} holds {kind}, not a list of points; {_FIX}.")
    if not data:
        raise ConfigError(f"{where} is an empty list; give at least one point: {_FIX}.")
    problems = []
    for i, item in enumerate(data):
        for p in schema_problems(ReferencePoint, item):
            p = p.replace("`(top level)`", f"`[{i}]`", 1) if p.startswith("`(top level)`") else f"`[{i}].{p[1:]}"
            acc = item.get("accuracy") if isinstance(item, dict) else None
            if ".accuracy`" in p and isinstance(acc, (int, float)) and not isinstance(acc, bool) and acc > 1:
                p += f" (accuracies are fractions: write {acc / 100:g} for {acc:g}%)"
            problems.append(p)
    names = [item.get("name") for item in data if isinstance(item, dict)]
    problems += [f"`name` {n!r} appears {names.count(n)} times (names label the plot: make them distinct)"
                 for n in dict.fromkeys(names) if isinstance(n, str) and names.count(n) > 1]
    if problems:
        n = len(problems)
        shown = "; ".join(problems[:8]) + (f"; ... ({n - 8} more)" if n > 8 else "")
        raise ConfigError(f"{where} is not valid ({n} problem{'s' if n > 1 else ''}: {shown}); {_FIX}.")
    return [ReferencePoint.model_validate(item).model_dump() for item in data]


def _as_list(x: Any) -> Any:
    return list(x) if isinstance(x, tuple) else x


def reference_points_from_file(path: str | Path) -> list[dict[str, Any]]:
    """The reference points of a JSON file (see the module docstring), validated.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8 JSON, holds NaN / infinities, or
            fails :func:`validate_reference_points`; the message says what to write.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"reference points file {p} does not exist or is not a file; {_FIX}.")
    raw = read_json_file(p, ConfigError, what="reference points file", fix=_FIX + ".")
    return validate_reference_points(raw, where=f"reference points file {p}")


def frontier(references: Sequence[dict[str, Any]], key: str = "macs") -> list[dict[str, Any]]:
    """The references on the upper envelope along ``key`` (``"macs"`` or ``"latency_ms"``), cheapest
    first: a reference stays only if it is more accurate than every cheaper one. References
    without a value for ``key`` are left out."""
    pts = sorted((r for r in references if r.get(key) is not None), key=lambda r: (r[key], -r["accuracy"]))
    out: list[dict[str, Any]] = []
    for r in pts:
        if not out or r["accuracy"] > out[-1]["accuracy"]:
            out.append(r)
    return out


def frontier_accuracy(references: Sequence[dict[str, Any]], macs: float, *, key: str = "macs") -> float:
    """The accuracy (fraction) of the references' frontier at cost ``macs`` (of ``key``), linearly
    interpolated between its two neighbours. Outside the frontier's range it is clamped: below the
    cheapest reference, that reference's accuracy (a bar at least as high as any shelf model that
    fits); above the dearest, the best accuracy (the best shelf model fits).

    Raises:
        ConfigError: invalid references (:func:`validate_reference_points`), or none with ``key``.
    """
    env = frontier(validate_reference_points(_as_list(references)), key)
    if not env:
        raise ConfigError(f"no reference point has a {key}; give {key} for at least one of them.")
    if macs <= env[0][key]:
        return float(env[0]["accuracy"])
    for lo, hi in zip(env, env[1:]):
        if macs <= hi[key]:
            t = (macs - lo[key]) / (hi[key] - lo[key])
            return float(lo["accuracy"] + t * (hi["accuracy"] - lo["accuracy"]))
    return float(env[-1]["accuracy"])


def place_student(student: dict[str, Any], references: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Compare a student point with the references' frontier at the student's MACs.

    Returns ``frontier_accuracy`` (fraction), ``margin_pts`` (student minus frontier, in points),
    ``beats_frontier``, ``within_range`` (False: the frontier was clamped, the student's MACs lie
    outside the references'), ``neighbours`` (the frontier references around the student's MACs),
    ``nearest_accuracy`` (the reference of the closest accuracy, with its latency) and
    ``sentence``, a plain statement of the result."""
    refs = validate_reference_points(_as_list(references))
    env = frontier(refs)
    macs, acc = float(student["macs"]), float(student["accuracy"])
    f = frontier_accuracy(refs, macs)
    margin = 100 * (acc - f)
    within = env[0]["macs"] <= macs <= env[-1]["macs"]
    below = [r["name"] for r in env if r["macs"] <= macs][-1:]
    above = [r["name"] for r in env if r["macs"] >= macs][:1]
    near = min(refs, key=lambda r: (abs(r["accuracy"] - acc), r["macs"]))
    verdict = (f"beats the shelf frontier at equal MACs by {margin:.1f} points" if margin > 0 else
               f"does not beat the shelf frontier at equal MACs: it is {-margin:.1f} points below it")
    where = (f"interpolated between {' and '.join(dict.fromkeys(below + above))}" if within else
             f"clamped to {(below or above)[0]}, the frontier ends there")
    return {"frontier_accuracy": f, "student_accuracy": acc, "student_macs": macs, "margin_pts": margin,
            "beats_frontier": margin > 0, "within_range": within, "neighbours": list(dict.fromkeys(below + above)),
            "nearest_accuracy": {k: near[k] for k in ("name", "accuracy", "macs", "latency_ms")},
            "sentence": (f"{student['name']} ({100 * acc:.2f}% at {macs / 1e6:.1f} M MACs) {verdict} (frontier "
                         f"{100 * f:.2f}% at {macs / 1e6:.1f} M MACs, {where}).")}


def pareto_record(result: Any, references: Sequence[dict[str, Any]], *, source: str) -> dict[str, Any]:
    """``CompressionResult.pareto`` for a run and its reference points: :func:`place_student` of the
    student on its test accuracy, with the teacher's, the student's and the references' points; or
    ``{"skipped": why}`` when the run has no test accuracy (no test split)."""
    def point(name: str, rep: Any) -> dict[str, Any]:
        return {"name": name, "accuracy": rep.accuracy_test, "macs": float(rep.cost.macs), "params": int(rep.cost.params),
                "latency_ms": rep.latency.median_ms if rep.latency is not None else None}

    s, t = result.student_report, result.teacher
    if s.accuracy_test is None:
        return {"skipped": "the run has no test accuracy (no test split in the data), and reference models are "
                           "compared on test accuracy; give the data a test split (slimforge run: --test-data).",
                "references_source": source}
    student, teacher = point("student", s), point("teacher", t)
    return {**place_student(student, references), "student": student, "teacher": teacher,
            "references": list(references), "references_source": source}


def pareto_plot(points: Sequence[dict[str, Any]], references: Sequence[dict[str, Any]], path: str | Path, *,
                title: str) -> Path:
    """Write ONE PNG (1100 x 420 pixels) with two panels: top-1 accuracy (%) vs MACs (M), and vs
    measured latency (ms). ``references`` are drawn as markers labelled with their names and their
    frontier as a line (references off the frontier hollow); each of ``points`` as its own marker
    annotated with its name. Points or references without ``latency_ms`` are left out of the
    latency panel. Written atomically; returns the path.

    Raises:
        ConfigError: invalid points or references (:func:`validate_reference_points`).
        ImportError: matplotlib is not installed (``pip install matplotlib``).
    """
    refs = validate_reference_points(_as_list(references), where="pareto_plot's references")
    pts = validate_reference_points(_as_list(points), where="pareto_plot's points") if points else []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # a dependency of slimforge, but an environment may lack it
        raise ImportError("compress.pareto.pareto_plot needs matplotlib (`pip install matplotlib`).") from exc

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    markers = "s^Dv*PXo<>"
    for ax, key, scale, xlabel in ((axes[0], "macs", 1e-6, "MACs per sample, M (fvcore)"),
                                   (axes[1], "latency_ms", 1.0, "measured latency, ms (median)")):
        env = frontier(refs, key)
        on = {id(r) for r in env}
        if env:
            ax.plot([r[key] * scale for r in env], [100 * r["accuracy"] for r in env], "-", color="grey", lw=1.5,
                    label="shelf frontier", zorder=1)
        for i, r in enumerate(sorted((r for r in refs if r[key] is not None), key=lambda r: r[key])):
            ax.scatter([r[key] * scale], [100 * r["accuracy"]], s=36, color="grey", zorder=2,
                       facecolors="grey" if id(r) in on else "none")
            ax.annotate(r["name"], (r[key] * scale, 100 * r["accuracy"]), textcoords="offset points", fontsize=7,
                        xytext=(4, -10 if i % 2 == 0 else 5), color="dimgrey")  # alternate: neighbours do not collide
        for i, p in enumerate(pts):
            if p[key] is None:
                continue
            ax.scatter([p[key] * scale], [100 * p["accuracy"]], s=60, marker=markers[i % len(markers)], zorder=3,
                       label=p["name"])
            ax.annotate(p["name"], (p[key] * scale, 100 * p["accuracy"]), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
        if not any(r[key] is not None for r in [*refs, *pts]):
            ax.text(0.5, 0.5, f"no {key}", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 accuracy, %")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())
