"""Benchmark: does int8 pay on the target, and with which onnxruntime quantisation settings?

    OMP_NUM_THREADS=1 python benchmarks/bench_int8.py --data ../shared/data \
        [--out benchmarks/results/int8.md] [--threads 1] [--models demo,cifar,timm] [--quick]

For every model, the float32 ONNX export and its int8 copy (``compress.exporters.mobile.quantize_int8``,
i.e. ``onnxruntime.quantization.quantize_static`` after ``quant_pre_process``, MinMax calibration)
are timed side by side on the ``cpu-1t`` target (``intra_op_threads = --threads``): several
interleaved rounds in one process (:func:`compress.profiling.latency_model.measure_interleaved`),
fp32 and int8 alternating, so that load drift on a shared machine hits both alike. Reported: the
median of the per-round medians, and the spread of the per-round fp32/int8 ratios.

Models:

* demo-sized students: the tiny ``compress.testing`` nets, trained for a few seconds on the
  digits task (the CLI demo's data), accuracy on its test split; and (group ``gp-prune-demo``)
  the student ``slimforge demo`` builds, a gp-prune'd timm resnet18 at 32x32;
* the pretrained CIFAR-10 ResNet-20 and ResNet-56 from ``--data`` (calibration: 256 training
  images; accuracy: ``cifar10_test1k_lossless.npz``, +-1.6 points at 95% on 1,000 images);
* timm ``resnet18`` and ``mobilenetv3_large_100`` at 224x224, randomly initialised (no ImageNet
  data or weights exist here). BatchNorm statistics and affine parameters are drawn like a trained
  network's, because timm zero-initialises the last BN of every residual block, which folds into
  an all-zero conv. For these the table gives the top-1 AGREEMENT of int8 with fp32 and the
  output SQNR on CIFAR test images upsampled to 224 (calibration on other, training images):
  agreement of an untrained net, not accuracy.

Settings sweep, one axis at a time from the base (QDQ, S8S8, per-channel, every op ORT can
quantise, no layer kept in fp32, pre-processing on, graph optimisation "all"): QOperator (S8S8 and
U8S8), per-tensor weights, ``reduce_range``, U8S8 activations, Conv/MatMul/Gemm only, first conv
and last Gemm kept in fp32, graph optimisation level "extended" (a session setting, applied to fp32
and int8 alike). Then the axes that were faster than the base on the realistic models (geometric
mean over the CIFAR and timm nets, at least 5%) without costing accuracy (every CIFAR drop <= 1
point; the digits test split is 360 images, one image = 0.28 points, so its drops are reported,
not used to decide) are combined, and that combination is measured on every model (the "chosen" rows and the main
table). Partial results are written after every row, so a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compress.exporters import export_onnx  # noqa: E402
from compress.exporters.atomic import write_text_atomic  # noqa: E402
from compress.exporters.mobile import DEFAULT_INT8_SETTINGS, Int8Settings, quantize_int8  # noqa: E402
from compress.profiling import Target  # noqa: E402
from compress.profiling.latency_model import measure_interleaved  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
BASE = Int8Settings(quant_format="qdq", per_channel=True, reduce_range=False, activation_type="int8",
                    weight_type="int8", ops="all", exclude_first_last=False, preprocess=True)
STAGE1: list[tuple[str, dict[str, Any], str]] = [
    ("base: QDQ S8S8", {}, "all"),
    ("QDQ U8S8", {"activation_type": "uint8"}, "all"),
    ("QOperator U8S8", {"quant_format": "qoperator", "activation_type": "uint8"}, "all"),
    ("QOperator S8S8", {"quant_format": "qoperator"}, "all"),
]
"""Stage 1: format and types, from ORT's recommended first choice (QDQ S8S8). Listed in order of
preference: among settings within :data:`WIN_MARGIN` of the fastest, the first one listed wins."""
STAGE2: list[tuple[str, dict[str, Any], str]] = [
    ("per-tensor", {"per_channel": False}, "all"),
    ("reduce_range", {"reduce_range": True}, "all"),
    ("Conv/MatMul/Gemm only", {"ops": "conv-matmul"}, "all"),
    ("first/last fp32", {"exclude_first_last": True}, "all"),
    ("ORT level extended", {}, "extended"),
]
"""Stage 2: one axis at a time from the stage-1 winner."""
WIN_MARGIN = 1.05
"""An axis wins when its geometric-mean speedup beats the base's by at least this factor (the
per-round ranges on a shared 2-core machine are often 5% wide)."""


# ------------------------------------------------------------------------------------------ data
def _cifar(data: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    z = np.load(data / name)
    x = z["x"].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return ((x - MEAN) / STD).astype(np.float32), z["y"].astype(np.int64)


def _upsample(x: np.ndarray, size: int) -> np.ndarray:
    t = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False)
    return t.numpy().astype(np.float32)


def _train_tiny(model: torch.nn.Module, task, epochs: int, seed: int = 0) -> torch.nn.Module:
    from compress.data import collect

    torch.manual_seed(seed)
    x, y = collect(task.train)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i: i + 64]
            if len(idx) < 2:
                continue
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _bn_like_trained(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            c = bn.num_features
            bn.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
            if bn.affine:
                bn.weight.copy_(0.5 + torch.rand(c, generator=g))
                bn.bias.copy_(0.1 * torch.randn(c, generator=g))
    return model.eval()


def _gp_prune_demo_student(quick: bool):
    """The student ``slimforge demo`` makes: a timm resnet18 teacher trained on digits (the demo's
    recipe, in a private cache) pruned by gp-prune to ``macs=0.5x`` (a shorter fine-tune than the
    demo's 6 epochs; the widths, which set the latency, come from the same bisection and rounding)."""
    from compress.api import compress
    from compress.data import collect, load_digits_task
    from compress.teachers import TeacherRecipe, get_or_train_teacher

    task = load_digits_task(seed=0)
    with tempfile.TemporaryDirectory(prefix="bench-int8-cache-") as cache:
        old = os.environ.get("SLIMFORGE_CACHE")
        os.environ["SLIMFORGE_CACHE"] = cache
        try:
            teacher, _ = get_or_train_teacher(TeacherRecipe(epochs=3 if quick else 12, seed=0), task)
        finally:
            if old is None:
                os.environ.pop("SLIMFORGE_CACHE")
            else:
                os.environ["SLIMFORGE_CACHE"] = old
    res = compress(teacher, "macs=0.5x", data=task, strategy="gp-prune", seed=0, progress=False, int8=False,
                   mobile=False, allow_slower=True,
                   config={"epochs": 1 if quick else 2, "bisection_steps": 4, "calib_samples": 64})
    x_cal = collect(task.train, max_samples=256)[0].numpy()
    x_te, y_te = (t.numpy() for t in collect(task.test))
    return "demo gp-prune student of timm resnet18 (digits)", res.student.eval(), (3, 32, 32), x_cal, x_te, y_te


def build_models(groups: set[str], data: Path, quick: bool):
    """Yield ``(name, module, input_chw, x_calib, x_eval, y_eval or None)``."""
    if "demo" in groups:
        from compress.data import collect, load_digits_task
        from compress.testing import TinyConvNet, TinyResidualNet

        task = load_digits_task(seed=0, batch_size=64)
        x_cal = collect(task.train, max_samples=256)[0].numpy()
        x_te, y_te = (t.numpy() for t in collect(task.test))
        nets = [("demo TinyConvNet w16 (digits)", TinyConvNet(width=16)),
                ("demo TinyResidualNet w16 (digits)", TinyResidualNet(width=16)),
                ("demo TinyConvNet w8 (digits)", TinyConvNet(width=8))]
        for name, net in nets[:1] if quick else nets:
            yield name, _train_tiny(net, task, epochs=4 if quick else 12), (3, 32, 32), x_cal, x_te, y_te
    if "gp-prune-demo" in groups:
        yield _gp_prune_demo_student(quick)
    if "cifar" in groups:
        from compress.models import load_model

        x_tr, _ = _cifar(data, "cifar10_train10k_lossless.npz")
        x_te, y_te = _cifar(data, "cifar10_test1k_lossless.npz")
        x_cal = x_tr[np.random.default_rng(0).choice(len(x_tr), 256, replace=False)]
        if quick:
            x_te, y_te = x_te[:200], y_te[:200]
        for depth in (20,) if quick else (56, 20):
            m = load_model(f"cifar:resnet{depth}", num_classes=10, weights=data / f"resnet{depth}_cifar10.pt").eval()
            yield f"CIFAR ResNet-{depth} (pretrained)", m, (3, 32, 32), x_cal, x_te, y_te
    if "timm" in groups:
        import timm

        x_tr, _ = _cifar(data, "cifar10_train10k_lossless.npz")
        x_te, _ = _cifar(data, "cifar10_test1k_lossless.npz")
        n_cal, n_eval = (16, 32) if quick else (64, 256)
        x_cal = _upsample(x_tr[np.random.default_rng(1).choice(len(x_tr), n_cal, replace=False)], 224)
        x_ev = _upsample(x_te[:n_eval], 224)
        for arch in ("resnet18",) if quick else ("resnet18", "mobilenetv3_large_100"):
            torch.manual_seed(0)
            m = _bn_like_trained(timm.create_model(arch, pretrained=False))
            yield f"timm {arch} (random init)", m, (3, 224, 224), x_cal, x_ev, None


# ------------------------------------------------------------------------------------ measuring
def _session(path: Path, threads: int, level: str = "all"):
    import onnxruntime as ort

    t = dataclasses.replace(Target.preset("cpu-1t"), intra_op_threads=threads, graph_optimization_level=level)
    return ort.InferenceSession(str(path), t.session_options(), providers=[t.provider])


def logits(path: Path, x: np.ndarray, threads: int, batch: int = 32) -> np.ndarray:
    s = _session(path, threads)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i: i + batch]})[0] for i in range(0, len(x), batch)])


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - test) ** 2))
    return float("inf") if noise == 0 else 10 * math.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


def time_pair(fp32: Path, int8: Path, target: Target, rounds: int) -> dict[str, Any]:
    s = _session(fp32, target.intra_op_threads, target.graph_optimization_level)
    name = s.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, *target.input_shape)).astype(np.float32)
    s.run(None, {name: x})
    t0 = time.perf_counter()
    for _ in range(3):
        s.run(None, {name: x})
    est_ms = (time.perf_counter() - t0) / 3 * 1e3
    repeats = int(min(300, max(5, 250 / max(est_ms, 1e-3))))  # ~0.25 s per model per round
    f, q = measure_interleaved([fp32, int8], target, rounds=rounds, repeats=repeats, warmup=2)
    ratios = [a / b for a, b in zip(f["rounds_ms"], q["rounds_ms"])]
    return {"fp32_ms": f["median_ms"], "int8_ms": q["median_ms"], "speedup": f["median_ms"] / q["median_ms"],
            "speedup_min": min(ratios), "speedup_max": max(ratios), "rounds": rounds, "repeats": repeats,
            "fp32_rounds_ms": f["rounds_ms"], "int8_rounds_ms": q["rounds_ms"]}


def graph_summary(path: Path) -> dict[str, int]:
    import onnx

    ops: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    keep = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "Conv", "Gemm", "MatMul")
    return {k: v for k, v in ops.items() if k in keep}


# -------------------------------------------------------------------------------------- report
def machine_info(threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except Exception:
        lscpu = ""
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "unknown")
    flags = set()
    try:
        flags = set(next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split())
    except Exception:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16") if f in flags]
    return {"cpu": model, "isa": isa, "vnni": bool({"avx512_vnni", "avx_vnni"} & flags), "cpu_count": os.cpu_count(),
            "onnxruntime": ort.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "threads": threads, "target": "cpu-1t", "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def _quality(r: dict[str, Any]) -> str:
    if r["acc_fp32"] is not None:
        return f"{100 * r['acc_fp32']:.2f} / {100 * r['acc_int8']:.2f}"
    return f"agreement {100 * r['agreement']:.1f}%"


def _drop(r: dict[str, Any]) -> str:
    if r["acc_fp32"] is not None:
        return f"{r['drop_pts']:+.2f}"
    return f"n/a (SQNR {r['sqnr_db']:.1f} dB)"


def _row(r: dict[str, Any], settings_col: str) -> str:
    return (f"| {r['model']} | {r['input']} | {settings_col} | {r['fp32_ms']:.3f} | {r['int8_ms']:.3f} | "
            f"{r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) | {_quality(r)} | {_drop(r)} |")


HEADER = ("| model | input | settings | fp32 ms | int8 ms | speedup (round range) | top-1 fp32 / int8 % (or agreement) "
          "| drop, points |\n| --- | --- | --- | --- | --- | --- | --- | --- |")


def render(state: dict[str, Any]) -> str:
    m = state["machine"]
    lines = ["# int8 vs fp32 on the target (onnxruntime static quantisation)", "",
             f"Written by `benchmarks/bench_int8.py` ({state['status']}). Machine: {m['cpu']}, {m['cpu_count']} cores, "
             f"ISA {', '.join(m['isa'])} (VNNI {'present' if m['vnni'] else 'absent'}); onnxruntime {m['onnxruntime']}, "
             f"torch {m['torch']}; target `cpu-1t` at {m['threads']} thread(s); {m['date_utc']} UTC.", "",
             "Latency: fp32 and int8 timed side by side, interleaved rounds in one process; the median of the per-round "
             "medians, and in brackets the lowest and highest per-round fp32/int8 ratio. Accuracy: CIFAR test 1k "
             "(+-1.6 points at 95%) or the digits test split. The timm nets are randomly initialised: their column is "
             "the top-1 agreement of int8 with fp32 on CIFAR test images upsampled to 224, not an accuracy.", ""]
    chosen = [r for r in state["rows"] if r["phase"] == "chosen"]
    if chosen:
        lines += ["## Chosen settings on every model", "", f"Chosen default: **{state['chosen_label']}**.", "", HEADER]
        lines += [_row(r, r["label"]) for r in chosen]
        lines.append("")
    if state.get("verdict"):
        lines += ["## The goal (int8 >= 1.3x faster than fp32 at <= 1 point drop, timm resnet18 224x224, cpu-1t)", "",
                  state["verdict"], ""]
    if state.get("decision"):
        lines += ["## How the default was chosen", "", state["decision"], ""]
    lines += ["## Settings sweep", "",
              f"Stage 1 from {BASE.label()} (graph optimisation level all): format and types. Stage 2: one axis at a "
              "time from the stage-1 pick.", "", HEADER]
    lines += [_row(r, f"{r['axis']}: {r['label']}" + ("" if r["level"] == "all" else f", level {r['level']}"))
              for r in state["rows"] if r["phase"] == "sweep"]
    lines += ["", "## Quantised graphs (node counts of the chosen settings)", ""]
    lines += [f"- {r['model']}: {r['graph']}" for r in chosen]
    return "\n".join(lines) + "\n"


def save(state: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, render(state))
    write_text_atomic(out.with_suffix(".json"), json.dumps(state, indent=2, default=str))


# ---------------------------------------------------------------------------------------- main
def measure(name: str, chw, fp32: Path, work: Path, x_cal, x_ev, y_ev, ref_logits, settings: Int8Settings, level: str,
            threads: int, rounds: int) -> dict[str, Any]:
    q = work / f"q-{abs(hash((settings, level)))}.onnx"
    t0 = time.perf_counter()
    quantize_int8(fp32, q, x_cal, settings=settings)
    t_quant = time.perf_counter() - t0
    out = logits(q, x_ev, threads)
    agree = float((out.argmax(1) == ref_logits.argmax(1)).mean())
    acc_f = acc_q = drop = None
    if y_ev is not None:
        acc_f = float((ref_logits.argmax(1) == y_ev).mean())
        acc_q = float((out.argmax(1) == y_ev).mean())
        drop = 100 * (acc_f - acc_q)
    target = dataclasses.replace(Target.preset("cpu-1t", input_shape=chw), intra_op_threads=threads,
                                 graph_optimization_level=level)
    timing = time_pair(fp32, q, target, rounds)
    return {"model": name, "input": "x".join(map(str, chw[1:])), "settings": settings.to_dict(), "label": settings.label(),
            "level": level, "acc_fp32": acc_f, "acc_int8": acc_q, "drop_pts": drop, "agreement": agree,
            "sqnr_db": sqnr_db(ref_logits, out), "quantize_s": t_quant, "graph": graph_summary(q),
            "n_eval": len(x_ev), "n_calib": len(x_cal), **timing}


def _gmean(rows: list[dict[str, Any]], axis: str, models: set[str]) -> float:
    s = [r["speedup"] for r in rows if r["axis"] == axis and r["model"] in models]
    return math.exp(sum(map(math.log, s)) / len(s)) if s else float("nan")


def _worst_drop(rows: list[dict[str, Any]], axis: str, models: set[str]) -> float | None:
    """The largest accuracy drop of ``axis`` over ``models`` (those with labelled data)."""
    d = [r["drop_pts"] for r in rows if r["axis"] == axis and r["model"] in models and r["drop_pts"] is not None]
    return max(d) if d else None


def _realistic(rows: list[dict[str, Any]]) -> set[str]:
    return {r["model"] for r in rows if not r["model"].startswith("demo")} or {r["model"] for r in rows}


def choose_stage1(rows: list[dict[str, Any]]) -> tuple[str, Int8Settings, list[str]]:
    """The stage-1 setting to build on: the first listed (most conventional) of those within
    WIN_MARGIN of the fastest geometric-mean speedup on the realistic models, every drop <= 1 point."""
    models = _realistic(rows)
    g = {axis: _gmean(rows, axis, models) for axis, _, _ in STAGE1}
    ok = {axis for axis, _, _ in STAGE1 if (_worst_drop(rows, axis, models) or 0.0) <= 1.0}
    best = max((g[a] for a in ok), default=float("nan"))
    pick = next((a for a, _, _ in STAGE1 if a in ok and g[a] * WIN_MARGIN >= best), STAGE1[0][0])
    notes = [f"Stage 1 (format and types), geometric-mean speedup on {', '.join(sorted(models))}:"]
    for axis, _, _ in STAGE1:
        wd = _worst_drop(rows, axis, models)
        notes.append(f"- {axis}: {g[axis]:.2f}x, worst drop {'n/a' if wd is None else f'{wd:+.2f}'} points"
                     + (" -> picked" if axis == pick else ""))
    change = next(c for a, c, _ in STAGE1 if a == pick)
    return pick, BASE.replace(**change), notes


def choose_stage2(rows: list[dict[str, Any]], base_axis: str, base: Int8Settings) -> tuple[Int8Settings, list[str]]:
    """Combine the stage-2 axes that beat the stage-1 pick by WIN_MARGIN without a drop above 1 point."""
    models = _realistic(rows)
    ref = _gmean(rows, base_axis, models)
    notes = [f"Stage 2 (one axis at a time from {base.label()}, {ref:.2f}x):"]
    changes: dict[str, Any] = {}
    for axis, change, level in STAGE2:
        g = _gmean(rows, axis, models)
        wd = _worst_drop(rows, axis, models)
        win = g >= ref * WIN_MARGIN and (wd or 0.0) <= 1.0
        notes.append(f"- {axis}: {g:.2f}x, worst drop {'n/a' if wd is None else f'{wd:+.2f}'} points -> "
                     f"{'faster' if win else 'not faster'}{'' if level == 'all' else ' (a session setting, reported only: its ratio also reflects a slower fp32)'}")
        if win and level == "all":
            changes.update(change)
    return base.replace(**changes), notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/int8.md"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="demo,cifar,timm",
                    help="comma list of groups: demo (tiny nets), gp-prune-demo (the CLI demo's student), cifar, timm")
    ap.add_argument("--settings-from", type=Path, default=None,
                    help="a previous run's .json: measure its chosen settings instead of choosing (the sweep still runs)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="one model per group, fewer images (development)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    groups = set(args.models.split(","))
    state: dict[str, Any] = {"status": "running, partial", "machine": machine_info(args.threads), "rows": [],
                             "base": BASE.to_dict(), "library_default": DEFAULT_INT8_SETTINGS.to_dict()}
    t_start = time.perf_counter()
    models = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(tmp)

        def run(model, settings: Int8Settings, level: str, phase: str, axis: str) -> None:
            name, chw, fp32, x_cal, x_ev, y_ev, ref = model
            r = measure(name, chw, fp32, work, x_cal, x_ev, y_ev, ref, settings, level, args.threads, args.rounds)
            r.update(phase=phase, axis=axis)
            state["rows"].append(r)
            save(state, args.out)
            print(f"[{time.perf_counter() - t_start:6.0f}s] {name} | {axis}: fp32 {r['fp32_ms']:.3f} ms, int8 "
                  f"{r['int8_ms']:.3f} ms, {r['speedup']:.2f}x, agreement {100 * r['agreement']:.1f}%, "
                  f"drop {r['drop_pts'] if r['drop_pts'] is None else round(r['drop_pts'], 2)}", flush=True)

        for i, (name, module, chw, x_cal, x_ev, y_ev) in enumerate(build_models(groups, args.data, args.quick)):
            fp32 = export_onnx(module, torch.from_numpy(x_cal[:2]), work / f"m{i}.onnx")
            models.append((name, chw, fp32, x_cal, x_ev, y_ev, logits(fp32, x_ev, args.threads)))
            del module
            for axis, change, level in STAGE1:
                run(models[-1], BASE.replace(**change), level, "sweep", axis)
        sweep = lambda: [r for r in state["rows"] if r["phase"] == "sweep"]  # noqa: E731
        base_axis, base2, notes1 = choose_stage1(sweep())
        if args.settings_from is not None:  # stage 2 from the given settings, when stage 1 measured them
            given = Int8Settings(**json.loads(args.settings_from.read_text())["chosen"])
            match = next((a for a, c, _ in STAGE1 if BASE.replace(**c) == given), None)
            if match is not None:
                base_axis, base2 = match, given
        state["decision"] = "\n".join(notes1)
        for model in models:
            for axis, change, level in STAGE2:
                run(model, base2.replace(**change), level, "sweep", axis)
        chosen, notes2 = choose_stage2(sweep(), base_axis, base2)
        decided = notes1 + [""] + notes2 + ["", f"Chosen: {chosen.label()}."]
        if args.settings_from is not None:
            chosen = Int8Settings(**json.loads(args.settings_from.read_text())["chosen"])
            decided = [f"The measured settings are those chosen in `{args.settings_from.name}`: {chosen.label()}. "
                       "What these models alone would have chosen, for information:", ""] + decided
        state["chosen"], state["chosen_label"] = chosen.to_dict(), chosen.label()
        state["decision"] = "\n".join(decided)
        for model in models:
            run(model, chosen, "all", "chosen", "chosen")
    r18 = [r for r in state["rows"] if r["phase"] == "chosen" and r["model"].startswith("timm resnet18")]
    if r18:
        r = r18[0]
        met = r["speedup"] >= 1.3
        best_cifar = [x["drop_pts"] for x in state["rows"] if x["phase"] == "chosen" and x["model"].startswith("CIFAR")]
        state["verdict"] = (
            f"Speed: {r['speedup']:.2f}x (per-round range {r['speedup_min']:.2f}-{r['speedup_max']:.2f}) -> the 1.3x part is "
            f"{'MET' if met else 'NOT met'}. Accuracy: not measurable here (no ImageNet data or weights); int8 agrees with "
            f"fp32 on {100 * r['agreement']:.1f}% of top-1 predictions of the untrained net (SQNR {r['sqnr_db']:.1f} dB). "
            + (f"With the same settings the pretrained CIFAR ResNets drop {', '.join(f'{d:+.2f}' for d in best_cifar)} points."
               if best_cifar else ""))
    state["status"] = f"complete, {time.perf_counter() - t_start:.0f} s"
    save(state, args.out)
    print(render(state))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
