"""Benchmark: does a MACs cut become a latency cut? gp-prune ``allocation="uniform"`` vs ``"latency"``.

    OMP_NUM_THREADS=1 python benchmarks/bench_latency_pruning.py \
        [--out benchmarks/results] [--sizes 64,224] [--models resnet18,...] [--resume]

For every timm classifier (random weights, 10 classes: only latency and MACs are measured) at every
input size, and each of the budgets ``macs=0.5x`` and ``latency=0.5x`` on the ``cpu-1t`` target,
gp-prune runs twice through the public :func:`compress.compress` -- ``allocation="uniform"`` (the
GECCO'22 paper, with the default measured channel rounding) and ``allocation="latency"`` (HALP's
knapsack) -- with the same metric (``l1``: no calibration data is needed) and no fine-tune. Then the
teacher and both students are timed **side by side** in one process, interleaved round by round
(:func:`compress.profiling.latency_model.measure_interleaved`, 10 rounds x 20 calls), so that load
drift on the machine hits all three alike. Reported per row:

* MACs cut ``1 - macs_s / macs_t`` (fvcore) and latency cut ``1 - lat_s / lat_t`` (side by side);
* their ratio (latency cut / MACs cut; 1 = every MAC removed saved its share of time);
* whether ``compress`` met the budget (its own final measurement) and whether the student is
  slower than its teacher side by side;
* wall time of the ``compress`` call.

Partial results are written after every (model, size, budget) case to ``latency_pruning.partial.json``;
``--resume`` skips the cases already there, so a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compress.exporters.atomic import write_text_atomic  # noqa: E402

MODELS = {
    "resnet18": "residual",
    "resnet50": "residual (bottleneck)",
    "mobilenetv3_large_100": "depthwise / inverted residual + squeeze-excite",
    "efficientnet_b0": "depthwise / inverted residual + squeeze-excite",
    "densenet121": "dense (concat)",
    "regnetx_002": "grouped conv",
    "resnext26ts": "grouped conv (residual)",
    "seresnet18": "squeeze-excite (residual)",
    "convnext_atto": "transformer-like (ConvNeXt: depthwise 7x7 + Linear MLP on NHWC)",
}
BUDGETS = ("macs=0.5x", "latency=0.5x")
ALLOCATIONS = ("uniform", "latency")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    """The commit the case ran at (rows of a resumed run may come from several), "unknown" outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
                               capture_output=True, text=True, timeout=10,
                               cwd=Path(__file__).resolve().parent.parent).stdout.strip()  # results/ are outputs
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def make_teacher(name: str, seed: int = 0) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=10).eval()


def run_case(name: str, size: int, budget: str, *, samples: int = 32) -> dict[str, Any]:
    """Both allocations on one (model, size, budget), then teacher and students side by side."""
    from compress import compress
    from compress.profiling import Target
    from compress.profiling.latency_model import measure_interleaved

    teacher = make_teacher(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 3, size, size, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    row: dict[str, Any] = {"model": name, "family": MODELS.get(name, "?"), "size": size, "budget": budget, "runs": {}}
    students = {}
    for alloc in ALLOCATIONS:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = compress(teacher, budget, data={"train": loader, "val": loader},
                               config={"epochs": 0, "metric": "l1", "allocation": alloc},
                               progress=False, mobile=False, memory=False, allow_slower=True, seed=0)
        except Exception as exc:  # noqa: BLE001 - a failure is a result of the benchmark
            row["runs"][alloc] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                                  "wall_s": time.perf_counter() - t0}
            traceback.print_exc()
            continue
        students[alloc] = res.student
        a = res.info.get("allocation", {})
        row["runs"][alloc] = {
            "wall_s": time.perf_counter() - t0,
            "macs": res.student_report.cost.macs, "params": res.student_report.cost.params,
            "budget_met": bool(res.budget_check.ok),
            "violations": [str(v) for v in res.budget_check.violations],
            "compress_latency_ms": res.student_report.latency.median_ms if res.student_report.latency else None,
            "predicted_ms": a.get("predicted_ms"), "predicted_full_ms": a.get("predicted_full_ms"),
            "pruned_channel_share": a.get("pruned_channel_share", res.info.get("pruning_ratio")),
            "allocation_used": a.get("mode", "uniform"),
            "fallback": (a.get("fallback") or {}).get("used"),
            "guard": a.get("guard"),
        }
        row["teacher_macs"] = res.teacher.cost.macs
        row["teacher_params"] = res.teacher.cost.params
    if not students:
        return row
    order = ["teacher", *students]
    timed = measure_interleaved([teacher, *students.values()], Target(), x[:1], rounds=10, repeats=20)
    lat = {k: t["median_ms"] for k, t in zip(order, timed)}
    rounds = {k: t["rounds_ms"] for k, t in zip(order, timed)}
    row["teacher_latency_ms"] = lat["teacher"]
    for alloc in students:
        r = row["runs"][alloc]
        per_round = [s / t for s, t in zip(rounds[alloc], rounds["teacher"])]
        r["latency_ms"] = lat[alloc]
        r["latency_ratio_rounds"] = per_round
        r["macs_cut"] = 1.0 - r["macs"] / row["teacher_macs"]
        r["latency_cut"] = 1.0 - statistics.median(per_round)
        r["cut_ratio"] = r["latency_cut"] / r["macs_cut"] if r["macs_cut"] > 0 else None
        r["slower_than_teacher"] = statistics.median(per_round) > 1.0
    return row


def markdown(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    lines = [
        "# Latency-aware pruning: gp-prune `allocation=\"uniform\"` vs `\"latency\"`",
        "",
        f"Machine: {payload['machine']['cpu']} ({payload['machine']['cpu_count']} cores), onnxruntime "
        f"{payload['machine']['onnxruntime']}, target `cpu-1t` (1 intra-op thread), torch threads "
        f"{payload['machine']['torch_threads']}. Teachers: timm models with random weights, 10 classes. "
        "gp-prune: metric `l1`, no fine-tune, default channel rounding (`measured`) for uniform. "
        "Latency: teacher and both students timed side by side (10 interleaved rounds x 20 calls, batch 1); "
        "the latency cut is 1 - the median per-round student/teacher ratio.",
        "",
        "| model | family | size | budget | uniform: MACs cut | lat cut | ratio | latency: MACs cut | lat cut | ratio "
        "| budget met (u / l) | slower than teacher (u / l) | wall s (u / l) | latency run's fallback / guard | commit |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | --- |",
    ]

    def cell(r: dict | None, key: str, pct: bool = True) -> str:
        if r is None or "error" in r or r.get(key) is None:
            return "error" if r is not None and "error" in r else "-"
        return f"{100 * r[key]:.1f}%" if pct else f"{r[key]:.2f}"

    for row in rows:
        u, lt = row["runs"].get("uniform"), row["runs"].get("latency")

        def flag(r, key):
            return "-" if r is None or "error" in r else ("yes" if r.get(key) else "no")

        lines.append(
            f"| {row['model']} | {row['family']} | {row['size']} | `{row['budget']}` | {cell(u, 'macs_cut')} | "
            f"{cell(u, 'latency_cut')} | {cell(u, 'cut_ratio', False)} | {cell(lt, 'macs_cut')} | "
            f"{cell(lt, 'latency_cut')} | {cell(lt, 'cut_ratio', False)} | {flag(u, 'budget_met')} / "
            f"{flag(lt, 'budget_met')} | {flag(u, 'slower_than_teacher')} / {flag(lt, 'slower_than_teacher')} | "
            f"{(u or {}).get('wall_s', 0):.0f} / {(lt or {}).get('wall_s', 0):.0f} | "
            f"{_fallback_cell(lt)} | {row.get('commit', 'not recorded (session 6)')} |")
    errors = [(row, a, r["error"]) for row in rows for a, r in row["runs"].items() if "error" in r]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {row['model']} {row['size']} `{row['budget']}` {a}: {e}" for row, a, e in errors]
    if payload.get("not_run"):
        lines += ["", f"Not run (the benchmark was stopped; `--resume` continues): {', '.join(payload['not_run'])}."]
    s = payload.get("summary", {})
    if s:
        lines += ["", "## Summary", ""] + [f"- {k}: {v}" for k, v in s.items()]
    return "\n".join(lines) + "\n"


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for budget in BUDGETS:
        for alloc in ALLOCATIONS:
            ratios = [row["runs"][alloc]["cut_ratio"] for row in rows if row["budget"] == budget
                      and alloc in row["runs"] and row["runs"][alloc].get("cut_ratio") is not None]
            if ratios:
                out[f"{budget} {alloc}: median latency cut / MACs cut"] = f"{statistics.median(ratios):.2f} over {len(ratios)} rows"
        met = [row["runs"]["latency"].get("budget_met") for row in rows if row["budget"] == budget
               and "latency" in row["runs"] and "error" not in row["runs"]["latency"]]
        if met:
            out[f"{budget} latency allocation: budget met"] = f"{sum(met)} of {len(met)}"
    slower = [(row["model"], row["size"], row["budget"], a) for row in rows for a, r in row["runs"].items()
              if r.get("slower_than_teacher")]
    out["students slower than their teacher"] = ", ".join(f"{m} {s} {b} {a}" for m, s, b, a in slower) or "none"
    return out


def _fallback_cell(run: dict | None) -> str:
    """The latency run's fallback, and its guard's choice (``latency_guard``, a MACs budget) with the
    measured uniform / knapsack latency ratio."""
    run = run or {}
    parts = [run["fallback"]] if run.get("fallback") else []
    guard = run.get("guard")
    if guard and "uniform_over_latency" in guard:
        parts.append(f"guard: {guard['choice']} (uniform/knapsack {guard['uniform_over_latency']:.2f})")
    return "; ".join(parts) or "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--sizes", default="64,224")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--budgets", default=",".join(BUDGETS))
    ap.add_argument("--resume", action="store_true", help="keep the cases already in the partial file")
    ap.add_argument("--report-only", action="store_true",
                    help="write the JSON / Markdown from the partial file without running anything (a stopped run)")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "latency_pruning.partial.json"
    rows: list[dict[str, Any]] = []
    if args.resume and partial.is_file():
        rows = json.loads(partial.read_text())["rows"]
    done = {(r["model"], r["size"], r["budget"]) for r in rows}
    payload: dict[str, Any] = {"machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
                                           "torch_threads": torch.get_num_threads(),
                                           "onnxruntime": ort.__version__, "torch": torch.__version__},
                               "rows": rows}
    if args.report_only:
        payload = json.loads(partial.read_text())
        rows = payload["rows"]
        planned = [(m, int(z), b) for z in args.sizes.split(",") for m in args.models.split(",")
                   for b in args.budgets.split(",")]
        done = {(r["model"], r["size"], r["budget"]) for r in payload["rows"]}
        payload["not_run"] = [f"{m} {z} {b}" for m, z, b in planned if (m, z, b) not in done]
        args.resume = False
    for size in ([] if args.report_only else [int(s) for s in args.sizes.split(",")]):
        for name in args.models.split(","):
            for budget in args.budgets.split(","):
                if (name, size, budget) in done:
                    continue
                print(f"== {name} {size} {budget}", flush=True)
                rows.append({**run_case(name, size, budget), "commit": git_commit()})
                payload["summary"] = summarise(rows)
                write_text_atomic(partial, json.dumps(payload, indent=1, default=float))
                print(json.dumps({a: {k: v for k, v in r.items() if k != "latency_ratio_rounds"}
                                  for a, r in rows[-1]["runs"].items()}, default=float), flush=True)
    payload["summary"] = summarise(rows)
    write_text_atomic(args.out / "latency_pruning.json", json.dumps(payload, indent=1, default=float))
    write_text_atomic(args.out / "latency_pruning.md", markdown(payload))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
