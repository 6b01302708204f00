"""Benchmark (issue 17): the fixed costs of ``compress()`` on real-size teachers at 224x224.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/bench_real_size.py \
        [--data ../shared/data] [--work /tmp/slimforge-real-size] [--out benchmarks/results] \
        [--models resnet50,mobilenetv3_large_100,torchvision:resnet18] [--resume] [--report-only] [--smoke]
        [--note TEXT]

Teachers: timm ``resnet50`` and ``mobilenetv3_large_100`` and torchvision ``resnet18``, random weights
(only times, memory and bytes are measured), 10 classes, at 224x224. Data: an ImageFolder written once
under ``--work`` from the shared CIFAR-10 images (``cifar10_train10k_lossless.npz``), upscaled to
224x224 (bicubic) PNGs: 1,000 train (the first 100 of each class) and 200 val (20 per class, from
images 5,000 on). Each model runs gp-prune through the public :func:`compress.compress` with
``macs=0.5x``, 1 fine-tune epoch and every other setting at its default (the phases a user gets:
ONNX export, parity, latency, peak memory, the ORT-format file), in a child process of its own, so
that its peak RSS is its own.

Reported per model: the wall time of every phase (``result.wall_s``), the training phases
(``finetune``, ``sparse``, ``recover``) apart from the rest, the non-training share of the total,
the peak RSS of the child, and the bytes under
the run's ``out_dir`` when it ends (``checkpoints/``, which gp-prune empties after a run that
finished, and the artefacts) and the bytes the child wrote during ``compress()`` (``/proc/self/io``
``wchar``: checkpoints, ONNX and temporary files). The goals (issue 17, on 2
cores): the non-training phases take at most ``max(10% of the run, 60 s)``, and no non-training
phase grows faster than linearly with the model's MACs: the exponent of a least-squares fit of
``log(phase seconds)`` on ``log(MACs)`` over the models (three points: a rough figure, stated as such).
The report says how far each model is from each goal, whatever the outcome.

Resumable: every finished model is written to ``real_size.partial.json`` (``--resume`` skips those;
a model that did not finish is run again from the start, so that its times are whole).
``--report-only`` writes the JSON / Markdown from the partial file. ``--smoke`` runs one small model
(timm ``mobilenetv3_small_050``) on 40 train / 20 val images in a couple of minutes, to
``real_size_smoke.*``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_latency_pruning import cpu_model, git_commit  # noqa: E402

from compress.exporters.atomic import write_text_atomic  # noqa: E402

MODELS = ("resnet50", "mobilenetv3_large_100", "torchvision:resnet18")
SMOKE_MODELS = ("mobilenetv3_small_050",)
TRAINING_PHASES = ("sparse", "recover", "finetune")
# phases that enclose others (their time is already in the phases they hold)
ENCLOSING = ("strategy", "total")
SIZE = 224
BUDGET = "macs=0.5x"
STEM = "real_size"
CLASSES_FILE = "cifar10_train10k_lossless.npz"


# ------------------------------------------------------------------------------------------- data
def build_image_folder(data_dir: Path, root: Path, n_train: int, n_val: int, size: int = SIZE) -> Path:
    """The ImageFolder ``root/{train,val}/<class>/<index>.png``: CIFAR-10 training images upscaled to
    ``size`` x ``size`` (PIL bicubic), ``n_train // 10`` per class from image 0 on and ``n_val // 10``
    per class from image 5,000 on (no image in both). Written once: a ``done.json`` marks a complete
    folder (a killed build is redone)."""
    import numpy as np
    from PIL import Image

    marker = root / "done.json"
    want = {"source": CLASSES_FILE, "n_train": n_train, "n_val": n_val, "size": size}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return root
    shutil.rmtree(root, ignore_errors=True)
    npz = np.load(data_dir / CLASSES_FILE)
    x, y, classes = npz["x"], npz["y"], [str(c) for c in npz["classes"]]
    for split, n, start in (("train", n_train, 0), ("val", n_val, 5000)):
        for c, name in enumerate(classes):
            idx = np.flatnonzero(y[start:] == c)[: n // len(classes)] + start
            out = root / split / name
            out.mkdir(parents=True, exist_ok=True)
            for i in idx:
                Image.fromarray(x[i]).resize((size, size), Image.BICUBIC).save(out / f"{int(i):05d}.png")
    write_text_atomic(marker, json.dumps(want))
    return root


def make_teacher(spec: str):
    """``resnet50`` (timm) or ``torchvision:resnet18``, random weights, 10 classes, eval mode."""
    import torch

    torch.manual_seed(0)
    if spec.startswith("torchvision:"):
        import torchvision

        return getattr(torchvision.models, spec.split(":", 1)[1])(weights=None, num_classes=10).eval()
    import timm

    return timm.create_model(spec.removeprefix("timm:"), pretrained=False, num_classes=10).eval()


def load_task(folder: Path, teacher):
    """The image-folder task through the public loader: ImageNet mean/std at 224x224 (and the
    teacher's own data config where the loader takes the model)."""
    from compress.data import IMAGENET_MEAN, IMAGENET_STD, load_image_folder_task

    kw: dict[str, Any] = {"image_size": SIZE, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "seed": 0}
    if "model" in inspect.signature(load_image_folder_task).parameters:
        kw["model"] = teacher
    return load_image_folder_task(folder, **kw)


def bytes_written() -> int | None:
    """Bytes this process has passed to ``write()`` so far (Linux ``/proc/self/io`` ``wchar``: every
    file it wrote, checkpoints, ONNX files and temporary files alike); None elsewhere."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def dir_bytes(path: Path) -> dict[str, int]:
    """Bytes of the files under ``path``: all of them and those under ``checkpoints/``."""
    total = ckpt = 0
    for p in path.rglob("*"):
        if p.is_file():
            n = p.stat().st_size
            total += n
            if "checkpoints" in p.relative_to(path).parts:
                ckpt += n
    return {"out_dir_bytes": total, "checkpoint_bytes": ckpt}


# ------------------------------------------------------------------------------------------- one model
def run_case(spec: str, folder: Path, run_dir: Path, epochs: int, config: dict[str, Any]) -> dict[str, Any]:
    """One model through ``compress()`` (in this process: the caller runs it in a child)."""
    import warnings

    import torch

    from compress import compress

    t0 = time.perf_counter()
    teacher = make_teacher(spec)
    task = load_task(folder, teacher)
    setup_s = time.perf_counter() - t0
    shutil.rmtree(run_dir, ignore_errors=True)  # a resumed model runs again from the start: whole times
    row: dict[str, Any] = {"model": spec, "setup_s": setup_s, "torch_threads": torch.get_num_threads()}
    w0 = bytes_written()
    t1 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = compress(teacher, BUDGET, data=task, config={"epochs": epochs, **config}, out_dir=run_dir,
                           progress=False, seed=0)
    except Exception as exc:  # noqa: BLE001 - a failure is a result of the benchmark
        traceback.print_exc()
        row.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}", wall_s=time.perf_counter() - t1)
        return row
    wall = dict(res.wall_s)
    total = wall.get("total", time.perf_counter() - t1)
    training = sum(wall.get(k, 0.0) for k in TRAINING_PHASES)
    probes = [h for h in res.history if h.get("phase") == "bisection"]
    row.update(
        wall_s=wall, total_s=total, training_s=training, non_training_s=total - training,
        non_training_share=(total - training) / total if total > 0 else None,
        teacher_macs=res.teacher.cost.macs, teacher_params=res.teacher.cost.params,
        student_macs=res.student_report.cost.macs, budget_met=bool(res.budget_check.ok),
        parity_ok=bool(res.validation.ok), search_probes=len(probes),
        train_images=len(task.train.dataset) if hasattr(task.train, "dataset") else None,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        bytes_written=None if w0 is None else bytes_written() - w0,
        **dir_bytes(run_dir),
    )
    return row


def run_child(spec: str, args: argparse.Namespace, folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """``run_case`` in a child interpreter (its own peak RSS); the row comes back through a file."""
    safe = spec.replace(":", "_")
    row_file = args.work / "rows" / f"{safe}.json"
    row_file.parent.mkdir(parents=True, exist_ok=True)
    row_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_case", spec, "--_folder", str(folder),
           "--_row", str(row_file), "--work", str(args.work), "--epochs", str(args.epochs),
           "--config", json.dumps(config)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0 or not row_file.is_file():
        return {"model": spec, "error": f"child exited {proc.returncode}", "wall_s": time.perf_counter() - t0}
    return json.loads(row_file.read_text())


# ------------------------------------------------------------------------------------------- report
def phase_names(rows: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        for k in r.get("wall_s", {}):
            if k not in seen and k not in ENCLOSING:
                seen.append(k)
    return seen


def fit_exponent(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``log(seconds)`` on ``log(MACs)``; None with under 2 distinct MACs."""
    pts = [(math.log(m), math.log(s)) for m, s in points if m > 0 and s > 0]
    if len({round(x, 9) for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    goals = {}
    for r in ok:
        allowed = max(0.10 * r["total_s"], 60.0)
        goals[r["model"]] = {"non_training_s": r["non_training_s"], "allowed_s": allowed,
                             "over_by_s": r["non_training_s"] - allowed, "met": r["non_training_s"] <= allowed,
                             "share": r["non_training_share"]}
    exponents = {}
    for ph in phase_names(ok):
        if ph in TRAINING_PHASES:
            continue
        e = fit_exponent([(r["teacher_macs"], r["wall_s"].get(ph, 0.0)) for r in ok])
        exponents[ph] = {"exponent": e, "met": None if e is None else e <= 1.0}
    e = fit_exponent([(r["teacher_macs"], r["non_training_s"]) for r in ok])
    exponents["non-training total"] = {"exponent": e, "met": None if e is None else e <= 1.0}
    return {"time_goal": goals, "exponents": exponents}


def markdown(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    ok = [r for r in rows if "error" not in r]
    m = payload["machine"]
    s = payload["settings"]
    lines = [
        "# Real-size fixed costs: gp-prune at 224x224 (issue 17)",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores visible, affinity {m.get('affinity')}), OMP_NUM_THREADS="
        f"{m.get('omp_num_threads')}, torch {m['torch']}, onnxruntime {m['onnxruntime']}. Data: "
        f"{s['train_images']} train / {s['val_images']} val CIFAR-10 images upscaled to {SIZE}x{SIZE} PNGs "
        f"(ImageFolder). `compress()` with `{BUDGET}`, gp-prune defaults, {s['epochs']} fine-tune epoch(s)"
        + (f", config {s['config']}" if s.get("config") else "") + ". Random-weight teachers (times, memory and "
        "bytes only). Each model in its own process.",
        *[line for ses in payload.get("sessions", []) if ses.get("note")
          for line in ("", f"Session {ses['started']} (commit {ses.get('commit')}): {ses['note']}")],
        "",
        "## Per model",
        "",
        "| model | teacher MACs | total s | training s | non-training s | non-training share | goal max(10%, 60 s) | "
        "over the goal by | search probes | peak RSS | bytes written | checkpoints left | out_dir | budget met | parity | "
        "commit |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    goals = payload.get("summary", {}).get("time_goal", {})
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error']} |" + " |" * 14)
            continue
        g = goals.get(r["model"], {})
        written = "-" if r.get("bytes_written") is None else f"{r['bytes_written'] / 2**20:.0f} MiB"
        lines.append(
            f"| {r['model']} | {r['teacher_macs'] / 1e9:.3f} G | {r['total_s']:.1f} | {r['training_s']:.1f} | "
            f"{r['non_training_s']:.1f} | {100 * r['non_training_share']:.0f}% | {g.get('allowed_s', 0):.0f} s | "
            f"{g.get('over_by_s', 0):+.0f} s ({'met' if g.get('met') else 'not met'}) | {r['search_probes']} | "
            f"{r['peak_rss_bytes'] / 2**30:.2f} GiB | "
            f"{written} | "
            f"{r['checkpoint_bytes'] / 2**20:.1f} MiB | "
            f"{r['out_dir_bytes'] / 2**20:.1f} MiB | {'yes' if r['budget_met'] else 'no'} | "
            f"{'ok' if r['parity_ok'] else 'FAILED'} | {r.get('commit', '?')} |")
    phases = phase_names(ok)
    if ok:
        lines += ["", "## Wall time per phase (s; share of the total)", "",
                  "| phase | training | " + " | ".join(r["model"] for r in ok) + " |",
                  "| --- | --- | " + " | ".join("---:" for _ in ok) + " |"]
        for ph in phases + ["total"]:
            cells = []
            for r in ok:
                v = r["wall_s"].get(ph)
                cells.append("-" if v is None else f"{v:.1f} ({100 * v / r['total_s']:.0f}%)")
            lines.append(f"| {ph} | {'yes' if ph in TRAINING_PHASES else ''} | " + " | ".join(cells) + " |")
        lines += ["", "`strategy` holds `prepare`, `prune` and the training phases; `prune` is the ratio search "
                  "(dependency graphs, pruning, measured channel rounding, MAC counts of every probe)."]
    ex = payload.get("summary", {}).get("exponents", {})
    if ex:
        lines += ["", "## Growth with the model's MACs", "",
                  f"Least-squares exponent of log(seconds) on log(teacher MACs) over {len(ok)} model(s) "
                  "(goal: at most 1, linear; with three points a rough figure).", "",
                  "| phase | exponent | goal <= 1 |", "| --- | ---: | --- |"]
        for ph, v in ex.items():
            e = v["exponent"]
            lines.append(f"| {ph} | {'-' if e is None else f'{e:.2f}'} | "
                         f"{'-' if v['met'] is None else ('met' if v['met'] else f'not met (+{e - 1:.2f})')} |")
    if payload.get("not_run"):
        lines += ["", f"Not run (the benchmark was stopped; `--resume` continues): {', '.join(payload['not_run'])}."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data")
    ap.add_argument("--work", type=Path, default=Path("/tmp/slimforge-real-size"))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--models", default=None, help=f"comma-separated (default {','.join(MODELS)})")
    ap.add_argument("--train", type=int, default=None, help="train images (default 1000; smoke 40)")
    ap.add_argument("--val", type=int, default=None, help="val images (default 200; smoke 20)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--config", default="{}", help="extra gp-prune config as JSON")
    ap.add_argument("--resume", action="store_true", help="keep the models already in the partial file")
    ap.add_argument("--report-only", action="store_true", help="write JSON / Markdown from the partial file")
    ap.add_argument("--smoke", action="store_true", help="one small model on 40 / 20 images (a couple of minutes)")
    ap.add_argument("--note", default=None, help="provenance (the machine's load, pauses), kept with this session "
                                                 "and printed in the Markdown")
    ap.add_argument("--_case", help=argparse.SUPPRESS)
    ap.add_argument("--_folder", help=argparse.SUPPRESS)
    ap.add_argument("--_row", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    config = json.loads(args.config)
    if args._case:  # the child: one model
        row = run_case(args._case, Path(args._folder), args.work / "runs" / args._case.replace(":", "_"),
                       args.epochs, config)
        write_text_atomic(Path(args._row), json.dumps(row, default=float))
        return 0 if "error" not in row else 1

    import onnxruntime as ort
    import torch

    models = (args.models.split(",") if args.models else list(SMOKE_MODELS if args.smoke else MODELS))
    n_train = args.train or (40 if args.smoke else 1000)
    n_val = args.val or (20 if args.smoke else 200)
    stem = STEM + ("_smoke" if args.smoke else "")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    partial = args.out / f"{stem}.partial.json"
    settings = {"models": models, "train_images": n_train, "val_images": n_val, "epochs": args.epochs,
                "budget": BUDGET, "size": SIZE, "config": config}
    machine = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
               "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "onnxruntime": ort.__version__}
    rows: list[dict[str, Any]] = []
    sessions: list[dict[str, Any]] = []
    if (args.resume or args.report_only) and partial.is_file():
        old = json.loads(partial.read_text())
        rows, sessions = old["rows"], old.get("sessions", [])
        if old.get("settings", settings) != settings and not args.report_only:
            print(f"refusing --resume: {partial} holds a run with settings {old.get('settings')}, not {settings}; "
                  "drop --resume or pass the same options", file=sys.stderr)
            return 2
    payload: dict[str, Any] = {"settings": settings, "machine": machine, "rows": rows, "sessions": sessions}
    if args.report_only:
        if not partial.is_file():
            print(f"no partial file {partial}; run the benchmark first", file=sys.stderr)
            return 2
        payload = json.loads(partial.read_text())
        rows = payload["rows"]
        payload["not_run"] = [m for m in models if m not in {r["model"] for r in rows}]
    else:
        sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": git_commit(),
                         "machine": machine, **({"note": args.note} if args.note else {})})
        t0 = time.perf_counter()
        folder = build_image_folder(args.data, args.work / f"images_{SIZE}_{n_train}_{n_val}", n_train, n_val)
        sessions[-1]["image_folder_s"] = time.perf_counter() - t0
        done = {r["model"] for r in rows if "error" not in r}
        rows[:] = [r for r in rows if "error" not in r]  # a failed model is tried again
        for spec in models:
            if spec in done:
                continue
            print(f"== {spec}", flush=True)
            row = {**run_child(spec, args, folder, config), "commit": git_commit()}
            rows.append(row)
            payload["summary"] = summarise(rows)
            write_text_atomic(partial, json.dumps(payload, indent=1, default=float))
            print(json.dumps({k: v for k, v in row.items() if k != "wall_s"}, default=float), flush=True)
    payload["summary"] = summarise(rows)
    write_text_atomic(args.out / f"{stem}.json", json.dumps(payload, indent=1, default=float))
    write_text_atomic(args.out / f"{stem}.md", markdown(payload))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
