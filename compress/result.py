"""``CompressionResult``: what ``compress()`` returns, and the report it writes.

``to_dict()`` is the JSON contract read by CI pipelines. Keys named in the main-job issue are
never renamed (dots = nesting): ``strategy``, ``seed``, ``target``, ``config``, ``versions``,
``budget.{spec,ok,violations}``, ``{teacher,student}.{macs,params}``,
``{teacher,student}.accuracy.{val,test}``, ``{teacher,student}.latency_ms.{median,p90}``,
``onnx.{path}``, ``onnx.parity.{ok,max_abs_diff,top1_agreement}``, ``wall_s.total`` and
``wall_s.<phase>``, ``runtime.{device,precision,world_size,torch,cuda}``, ``pareto`` (None unless
``compress(reference_points=...)``; see :attr:`CompressionResult.pareto`), ``search`` (the NAS
strategies' ``info["search"]``: ``alpha_entropy`` per epoch in nats, ``genotype_stability``; None
for the others). Accuracies are fractions in [0, 1]; latencies are milliseconds; MACs are
fvcore's count per sample (one fused multiply-add = 1).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from compress.budgets import Budget, BudgetCheck, Cost
from compress.exporters import ValidationReport
from compress.exporters.atomic import write_bytes_atomic, write_text_atomic
from compress.strategies.config_tree import flat_value
from compress.exporters.mobile import write_manifest
from compress.pareto import pareto_plot
from compress.profiling import LatencyStats, Target
from compress.profiling.memory import MemoryStats
from compress.serialization import save_student

__all__ = ["ModelReport", "CompressionResult"]


@dataclass
class ModelReport:
    """Cost, accuracy and latency of one model (teacher or student)."""

    cost: Cost
    accuracy_val: float | None
    accuracy_test: float | None
    latency: LatencyStats | None
    latency_torch: LatencyStats | None = None
    peak_memory: MemoryStats | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "macs": int(self.cost.macs),
            "params": int(self.cost.params),
            "uncounted_ops": dict(self.cost.uncounted_ops),
            "accuracy": {"val": self.accuracy_val, "test": self.accuracy_test},
            "latency_ms": None,
        }
        if self.latency is not None:
            d["latency_ms"] = {
                "median": self.latency.median_ms,
                "p90": self.latency.p90_ms,
                "iqr": self.latency.iqr_ms,
                "mean": self.latency.mean_ms,
                "engine": self.latency.engine,
                "target": self.latency.target,
            }
        if self.latency_torch is not None:
            d["latency_ms_torch"] = {"median": self.latency_torch.median_ms, "p90": self.latency_torch.p90_ms}
        d["peak_memory_bytes"] = None if self.peak_memory is None else {
            "session": self.peak_memory.session_peak_bytes, "process": self.peak_memory.peak_rss_bytes,
            "target": self.peak_memory.target}
        return d


@dataclass
class CompressionResult:
    """The outcome of one ``compress()`` call.

    Attributes:
        student: the compressed ``nn.Module`` (eval mode).
        strategy, seed, config: what ran (``config`` is the strategy's dataclass as a dict).
        budget: the resolved absolute budget; ``budget_check`` its check on the final student
            with the *measured* latency, including the side-by-side comparison with the teacher
            (``latency_not_reduced`` unless ``allow_slower``).
        teacher, student_report: :class:`ModelReport` of each.
        onnx_path, validation: the student's ONNX file and its parity report.
        teacher_onnx_path: the teacher's ONNX export (for side-by-side latency).
        target: the runtime profile the latencies were measured on.
        history: per-step records of the strategy (JSON-ready dicts).
        wall_s: seconds per phase plus ``total``.
        pareto: with ``compress(reference_points=...)``: where the student sits on the references'
            frontier (:func:`compress.pareto.place_student`: ``frontier_accuracy``, ``margin_pts``,
            ``beats_frontier``, ``sentence`` ...) plus ``student``, ``teacher`` and ``references``
            (the points of ``pareto.png``), or ``{"skipped": reason}`` when the run has no test
            accuracy; None without reference points.
    """

    student: nn.Module
    strategy: str
    seed: int
    config: dict[str, Any]
    budget: Budget
    budget_check: BudgetCheck
    teacher: ModelReport
    student_report: ModelReport
    onnx_path: Path
    teacher_onnx_path: Path | None
    validation: ValidationReport
    target: Target
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    model_spec: str | None = None
    surgery: list[str] = field(default_factory=list)
    mobile: dict[str, Any] = field(default_factory=dict)
    student_arch: dict[str, Any] | None = None
    report_sections: list[tuple[str, str]] = field(default_factory=list)
    runtime: dict[str, Any] = field(default_factory=dict)
    pareto: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (see the module docstring for the key contract)."""
        v = self.validation
        return {
            "strategy": self.strategy,
            "seed": self.seed,
            "target": self.target.to_dict(),
            "config": self.config,
            "versions": dict(self.versions),
            "runtime": dict(self.runtime),
            "model_spec": self.model_spec,
            "data": self.data,
            "budget": {
                "spec": self.budget.describe(),
                "ok": self.budget_check.ok,
                "violations": [x.to_dict() for x in self.budget_check.violations],
                "headroom": dict(self.budget_check.headroom),
                "allow_slower": self.budget_check.allow_slower,
                "latency_vs_teacher": (None if self.budget_check.latency_vs_teacher is None
                                       else dict(self.budget_check.latency_vs_teacher)),
                "limits": {
                    "max_macs": self.budget.max_macs,
                    "max_params": self.budget.max_params,
                    "max_latency_ms": self.budget.max_latency_ms,
                    "max_memory_bytes": self.budget.max_memory_bytes,
                },
            },
            "teacher": self.teacher.to_dict(),
            "student": self.student_report.to_dict(),
            "onnx": {
                "path": str(self.onnx_path),
                "teacher_path": str(self.teacher_onnx_path) if self.teacher_onnx_path else None,
                "parity": {
                    "ok": v.ok,
                    "max_abs_diff": v.max_abs_diff,
                    "top1_agreement": v.top1_agreement,
                    "atol": v.atol,
                    "rtol": v.rtol,
                    "n_samples": v.n_samples,
                    "per_batch": {str(k): val for k, val in v.per_batch.items()},
                    "mismatches": list(v.mismatches),
                },
            },
            "mobile": {
                "ort_path": self.mobile.get("ort_path"),
                "usability": self.mobile.get("usability"),
                "int8": self.mobile.get("int8"),
            },
            "speedup": self.speedup_summary(),
            "wall_s": {k: round(float(s), 3) for k, s in self.wall_s.items()},
            "info": self.info,
            "search": self.info.get("search") if isinstance(self.info.get("search"), dict) else None,
            "history": self.history,
            "pareto": self.pareto,
        }

    # ------------------------------------------------------------------ rendering
    def summary_rows(self) -> list[tuple[str, str, str]]:
        t, s = self.teacher, self.student_report

        def pct(x: float | None) -> str:
            return "-" if x is None else f"{100 * x:.2f}%"

        def mib(x: MemoryStats | None) -> str:
            return "-" if x is None else f"{x.session_peak_bytes / 2**20:.1f} (process {x.peak_rss_bytes / 2**20:.1f})"

        def ms(x: LatencyStats | None) -> str:
            return "-" if x is None else f"{x.median_ms:.3f} (p90 {x.p90_ms:.3f})"

        return [
            ("MACs (fvcore, per sample)", f"{t.cost.macs:,}", f"{s.cost.macs:,} ({s.cost.macs / max(t.cost.macs, 1):.2f}x)"),
            ("params", f"{t.cost.params:,}", f"{s.cost.params:,} ({s.cost.params / max(t.cost.params, 1):.2f}x)"),
            ("accuracy val", pct(t.accuracy_val), pct(s.accuracy_val)),
            ("accuracy test", pct(t.accuracy_test), pct(s.accuracy_test)),
            (f"latency ms ORT [{self.target.name}]", ms(t.latency), ms(s.latency)),
            ("latency ms torch eager", ms(t.latency_torch), ms(s.latency_torch)),
            (f"peak memory MiB ORT session [{self.target.name}]", mib(t.peak_memory), mib(s.peak_memory)),
        ]

    def speedup_summary(self) -> dict[str, Any]:
        """MACs cut vs measured latency cut (fractions), and a warning when they diverge: a
        latency cut below 80% of the MACs cut means the student's widths do not suit the target."""
        t, s = self.teacher, self.student_report
        macs_cut = 1 - s.cost.macs / max(t.cost.macs, 1)
        out: dict[str, Any] = {"macs_cut": macs_cut, "latency_cut": None, "efficiency": None, "warning": None}
        if t.latency is not None and s.latency is not None and t.latency.median_ms > 0:
            lat_cut = 1 - s.latency.median_ms / t.latency.median_ms
            out["latency_cut"] = lat_cut
            if macs_cut > 0:
                out["efficiency"] = lat_cut / macs_cut
                if lat_cut < 0.8 * macs_cut:
                    rounding = ("channel_rounding='measured' or " if self.strategy == "gp-prune"
                                and flat_value(self.config or {}, "channel_rounding") != "measured" else "")
                    out["warning"] = (
                        f"MACs fell by {100 * macs_cut:.0f}% but measured latency on {self.target.name} by only "
                        f"{100 * lat_cut:.0f}%: try {rounding}a latency budget (e.g. --budget "
                        "macs=0.5x,latency=0.5x)."
                    )
        return out

    def plot_pareto(self, path: str | Path) -> Path:
        """Accuracy vs latency and vs MACs for teacher and student, as a PNG (matplotlib, Agg)."""
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pts = [("teacher", self.teacher), ("student", self.student_report)]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for ax, xlab, getx in (
            (axes[0], f"ORT latency, ms ({self.target.name}, median)", lambda r: r.latency.median_ms if r.latency else None),
            (axes[1], "MACs per sample (fvcore)", lambda r: r.cost.macs),
        ):
            for name, rep in pts:
                acc = rep.accuracy_test if rep.accuracy_test is not None else rep.accuracy_val
                x = getx(rep)
                if acc is None or x is None:
                    continue
                ax.scatter([x], [100 * acc], s=60, label=name, marker="o" if name == "teacher" else "*")
                ax.annotate(name, (x, 100 * acc), textcoords="offset points", xytext=(5, 5), fontsize=8)
            ax.set_xlabel(xlab)
            ax.set_ylabel("top-1 accuracy, % (test, else val)")
            ax.grid(alpha=0.3)
        fig.suptitle(f"{self.strategy}: budget {self.budget.describe()}")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return write_bytes_atomic(path, buf.getvalue())

    def to_markdown(self) -> str:
        v = self.validation
        lines = [
            f"# slimforge report: `{self.strategy}`",
            "",
            f"- budget: `{self.budget.describe()}` -> **{'met' if self.budget_check.ok else 'NOT met'}**",
        ]
        for viol in self.budget_check.violations:
            lines.append(f"  - violation: {viol}")
        vt = self.budget_check.latency_vs_teacher
        if vt is not None:
            lines.append(f"- latency vs teacher, side by side: student {vt['student_ms']:.3f} ms, teacher "
                         f"{vt['teacher_ms']:.3f} ms ({'faster' if vt['reduced'] else 'NOT faster'}"
                         f"{'; a slower student is allowed' if self.budget_check.allow_slower else ''})")
        lines += [
            f"- target: `{self.target.name}` ({self.target.provider}, {self.target.intra_op_threads} intra-op threads, "
            f"batch {self.target.batch_size})",
            f"- seed: {self.seed}",
            f"- data: {self.data.get('spec', {}).get('name', '?')}",
            "",
            "| | teacher | student |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in self.summary_rows()]
        sp = self.speedup_summary()
        if sp["latency_cut"] is not None:
            lines += ["", f"MACs cut {100 * sp['macs_cut']:.1f}%, measured latency cut {100 * sp['latency_cut']:.1f}% "
                          f"on `{self.target.name}` (latency cut / MACs cut = {sp['efficiency']:.2f})."
                          if sp["efficiency"] is not None else ""]
            if sp["warning"]:
                lines.append(f"**Warning:** {sp['warning']}")
        placed = self.pareto is not None and "frontier_accuracy" in self.pareto
        if not placed:
            lines += ["", "![accuracy vs latency and MACs](pareto.png)"]
        agree = "-" if v.top1_agreement is None else f"{100 * v.top1_agreement:.2f}%"
        lines += [
            "",
            f"ONNX `{Path(self.onnx_path).name}`: parity **{'ok' if v.ok else 'FAILED'}**, max |diff| "
            f"{v.max_abs_diff:.2e} (atol {v.atol:g}), top-1 agreement {agree} on {v.n_samples} samples.",
            "",
            "## Wall time (s)",
            "",
            "| phase | s |",
            "| --- | --- |",
        ]
        lines += [f"| {k} | {s:.2f} |" for k, s in self.wall_s.items()]
        if placed:
            lines += ["", "## Where the student sits", "", "![accuracy vs MACs and vs latency, with the reference models]"
                      "(pareto.png)", "", f"Frontier of the reference models at the student's MACs: "
                      f"**{100 * self.pareto['frontier_accuracy']:.2f}%** (linear between neighbours on the frontier; "
                      f"clamped outside it). {self.pareto['sentence']}", "",
                      f"Latencies: teacher and student measured here on `{self.target.name}`; the references' as given "
                      f"({self.pareto.get('references_source', 'by the caller')})."]
        elif self.pareto is not None:
            lines += ["", "## Where the student sits", "", f"Not placed: {self.pareto.get('skipped')}"]
        for title, body in self.report_sections:
            lines += ["", f"## {title}", "", body.rstrip()]
        lines += ["", "## Strategy", "", "```json", json.dumps(self.info, indent=2, default=str)[:4000], "```", ""]
        lines += ["## Config", "", "```json", json.dumps(self.config, indent=2, default=str), "```", ""]
        return "\n".join(lines)

    def __str__(self) -> str:
        rows = self.summary_rows()
        w = max(len(r[0]) for r in rows)
        out = [f"{'':<{w}}  {'teacher':>24}  {'student':>28}"]
        out += [f"{a:<{w}}  {b:>24}  {c:>28}" for a, b, c in rows]
        out.append(f"budget {self.budget.describe()}: {'met' if self.budget_check.ok else 'NOT met'}; "
                   f"ONNX parity {'ok' if self.validation.ok else 'FAILED'}")
        return "\n".join(out)

    # ------------------------------------------------------------------ saving
    def save(self, directory: str | Path) -> Path:
        """Write ``report.json``, ``report.md``, ``student.onnx``, ``teacher.onnx`` and the
        reloadable student (``student.safetensors`` + ``student.arch.json``), each atomically.
        Returns the directory."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for src, name, attr in ((self.onnx_path, "student.onnx", "onnx_path"), (self.teacher_onnx_path, "teacher.onnx", "teacher_onnx_path")):
            if src is not None:
                setattr(self, attr, _copy_atomic(Path(src), d / name))
        for key, name in (("ort_path", "student.ort"),):
            if self.mobile.get(key):
                self.mobile[key] = str(_copy_atomic(Path(self.mobile[key]), d / name))
        if self.mobile.get("int8"):
            self.mobile["int8"]["path"] = str(_copy_atomic(Path(self.mobile["int8"]["path"]), d / "student.int8.onnx"))
        builder = {"strategy": self.strategy, "args": self.student_arch} if self.student_arch is not None else None
        save_student(self.student, d, base_spec=self.model_spec if builder is None else None, surgery=self.surgery,
                     builder=builder)
        if self.pareto is not None and "frontier_accuracy" in self.pareto:
            pareto_plot([self.pareto["teacher"], self.pareto["student"]], self.pareto["references"], d / "pareto.png",
                        title=f"{self.strategy}: budget {self.budget.describe()}; reference models as given")
        else:
            self.plot_pareto(d / "pareto.png")
        write_text_atomic(d / "report.md", self.to_markdown())
        write_text_atomic(d / "report.json", json.dumps(self.to_dict(), indent=2, default=_json_default))
        self._write_manifest(d)
        return d

    def _write_manifest(self, d: Path) -> None:
        v = self.validation
        lat = self.student_report.latency
        arts: list[dict[str, Any]] = [{
            "file": "student.onnx", "kind": "onnx", "role": "student",
            "validation": {"ok": v.ok, "max_abs_diff": v.max_abs_diff, "top1_agreement": v.top1_agreement,
                           "batch_sizes": sorted(v.per_batch)},
            "latency_ms": {"median": lat.median_ms, "p90": lat.p90_ms, "target": lat.target} if lat else None,
            "accuracy": {"val": self.student_report.accuracy_val, "test": self.student_report.accuracy_test},
        }]
        if self.teacher_onnx_path is not None:
            tl = self.teacher.latency
            arts.append({"file": "teacher.onnx", "kind": "onnx", "role": "teacher",
                         "latency_ms": {"median": tl.median_ms, "p90": tl.p90_ms, "target": tl.target} if tl else None,
                         "accuracy": {"val": self.teacher.accuracy_val, "test": self.teacher.accuracy_test}})
        if self.mobile.get("ort_path"):
            arts.append({"file": "student.ort", "kind": "ort", "role": "student",
                         "mobile_usability": self.mobile.get("usability")})
        if self.mobile.get("int8"):
            q = self.mobile["int8"]
            art = {"file": "student.int8.onnx", "kind": "onnx-int8", "role": "student",
                   "validation": {"accuracy": q["accuracy"], "fp32_accuracy": q["fp32_accuracy"],
                                  "drop_pts": q["drop_pts"], "split": q["split"]},
                   "latency_ms": {"median": q["latency_ms"], "p90": q["latency_p90_ms"], "target": self.target.name}}
            art.update(int8_manifest_fields(q))
            arts.append(art)
        spec = self.data.get("spec") or {}  # in-memory data (digits, .npz): inputs at their stored size
        pre = spec.get("preprocess") or ({"input_size": spec["input_shape"], "mean": spec.get("mean"),
                                          "std": spec.get("std"), "source": spec.get("source")}
                                         if spec.get("input_shape") else None)
        write_manifest(d, arts, strategy=self.strategy, target=self.target.to_dict(), preprocess=pre)


def int8_manifest_fields(q: dict[str, Any]) -> dict[str, Any]:
    """The keys the manifest adds to the ``student.int8.onnx`` artifact from ``mobile["int8"]``:
    ``recommended`` (True / False; absent for a report made before the rule existed), the
    ``reason`` when False, and the side-by-side fp32 latency and speedup on the target."""
    if "recommended" not in q:
        return {}
    out: dict[str, Any] = {"recommended": bool(q["recommended"]), "speedup_vs_fp32": q.get("speedup"),
                           "fp32_latency_ms": q.get("fp32_latency_ms"), "settings": q.get("settings")}
    if not q["recommended"]:
        out["reason"] = q.get("reason") or "not recommended"
    return out


def _copy_atomic(src: Path, dst: Path) -> Path:
    if src.resolve() == dst.resolve():
        return dst
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    except BaseException:  # e.g. a full disk: no half-written copy left behind
        tmp.unlink(missing_ok=True)
        raise
    return dst


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
