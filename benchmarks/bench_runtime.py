"""KD fine-tune throughput of the training runtime vs the loop it replaced, side by side in one run.

The student is gp-prune's CIFAR ResNet-56 at ``macs=0.5x`` (pruned, no fine-tune), the teacher the
pretrained ResNet-56; batches of 128 CIFAR-10 training images with flip-crop, KD alpha 0.5, T 4.

Rows (images/s, median over interleaved rounds; each call trains 2 epochs of ``--steps`` steps and
only the second is timed, so warm-up and compilation are not counted):
* ``old loop``: ``finetune`` of commit ``--old-commit`` (the last commit before the runtime), loaded
  from a git worktree of that commit: augmentation as a per-sample Python loop inside the step;
* ``bare loop``: the same work as the runtime's fp32 row written as the shortest possible loop
  (loader with the collate augmentation, teacher forward, KD loss, backward, SGD step, the cosine
  schedule, the loss read back for logging), for the runtime's own overhead per step;
* ``runtime fp32`` (the default layout), ``runtime fp32 channels_last``, ``runtime fp32 1 worker``,
  ``runtime fp32 compiled`` (``torch.compile``; its compilation happens in the warm-up round);
  ``runtime bf16`` and ``runtime bf16 channels_last``;
* ``DDP 2 processes (gloo)``: the runtime fp32 channels_last on 2 spawned processes (1 thread each;
  ``--ddp-compile`` adds ``torch.compile``), timed differentially (3 epochs minus 1 epoch of
  ``--steps`` steps each), so that process start-up is not counted.

Every timing is written to ``OUT/runtime.partial.json`` as soon as it is taken; a stopped run started
again with the same settings skips what it already has (``--no-resume`` starts over). ``--rows``
picks rows (the old, bare and fp32 reference rows always run).

Usage::

    python benchmarks/bench_runtime.py --data ../shared/data --out benchmarks/results
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import frontier, machine, write_outputs  # noqa: E402

from compress.exporters.atomic import write_text_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _old_finetune(commit: str, worktree: Path) -> Callable:
    if not worktree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), commit], check=True,
                       capture_output=True)
    path = worktree / "compress/strategies/_parts/training.py"
    spec = importlib.util.spec_from_file_location("slimforge_old_training", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)  # imports compress.errors and the checkpoint alias of today's package
    return mod.finetune, mod.FinetuneSettings


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _student(teacher: torch.nn.Module, task: Any) -> torch.nn.Module:
    from compress.api import compress

    res = compress(teacher, "macs=0.5x", data=task, strategy="gp-prune", progress=False, mobile=False, memory=False,
                   latency_repeats=5, device="cpu",
                   config={"epochs": 0, "bisection_steps": 8, "calib_samples": 128, "channel_rounding": "off"})
    return res.student, res.to_dict()


def _bare_loop(student, teacher, loader, steps: int) -> None:
    from compress.training import kd_loss

    from compress.training import cosine_factor

    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_factor(s, steps))
    student.train()
    teacher.eval()
    running = 0.0
    for i, (x, y) in enumerate(loader):
        if i >= steps:
            break
        with torch.no_grad():
            t = teacher(x)
        loss = kd_loss(student(x), y, t, alpha=0.5, temperature=4.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())  # what any loop logs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--old-commit", default="7830fd2")
    ap.add_argument("--skip-ddp", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads of every 1-process row (default: torch's); DDP ranks use 1 each")
    ap.add_argument("--rows", default="all",
                    help="comma list of rows to run: old,bare,fp32,channels_last,worker,compiled,bf16,ddp (default all)")
    ap.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                    help="reuse the timings in OUT/runtime.partial.json written by an earlier, stopped run with the "
                         "same --steps/--batch-size/--threads (every timing is written there as soon as it is taken)")
    ap.add_argument("--ddp-channels-last", choices=("auto", "on", "off"), default="auto",
                    help="layout of the DDP row (auto: the runtime's default for the device)")
    ap.add_argument("--ddp-compile", action=argparse.BooleanOptionalAction, default=False,
                    help="torch.compile in the DDP row (a first untimed run fills the compilation cache; the timed 1- and "
                         "3-epoch runs then both load it, so their difference is training alone)")
    args = ap.parse_args(argv)

    from compress.data import IMAGENET_MEAN, IMAGENET_STD, load_npz_task
    from compress.models import load_model
    from compress.training import FinetuneSettings, Runtime, RuntimeOptions, finetune, training_loader

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task = load_npz_task(str(args.data / "cifar10_train10k_lossless.npz"),
                         test_path=str(args.data / "cifar10_test1k_lossless.npz"), mean=IMAGENET_MEAN,
                         std=IMAGENET_STD, batch_size=args.batch_size, seed=0)
    teacher = load_model("cifar:resnet56", num_classes=10, weights=args.data / "resnet56_cifar10.pt").eval()
    t0 = time.perf_counter()
    student0, rep = _student(teacher, task)
    prune_s = time.perf_counter() - t0
    print(f"student: {rep['student']['macs']:,} MACs ({rep['student']['macs'] / rep['teacher']['macs']:.2f}x), "
          f"pruned in {prune_s:.0f} s", flush=True)
    old_ft, OldSettings = _old_finetune(args.old_commit, Path(tempfile.gettempdir()) / f"slimforge-old-{args.old_commit}")
    steps, bs = args.steps, args.batch_size
    import copy

    def settings(cls, n=steps):
        return cls(epochs=2, lr=0.01, max_steps_per_epoch=n, augment="flip-crop", keep_best=False)

    def timed_epochs(call) -> float:
        """Seconds of the second epoch (the first one warms up: allocator, compilation, workers)."""
        marks: list[float] = []
        call(lambda epoch, rec: marks.append(time.perf_counter()))
        return marks[1] - marks[0]

    def runtime_row(**opts):
        def go(s, n=steps):
            return timed_epochs(lambda cb: finetune(s, task.train, None, settings(FinetuneSettings, n), teacher=teacher,
                                                    on_epoch=cb, runtime=Runtime(RuntimeOptions(device="cpu", **opts))))
        return go

    def old_row(s):
        return timed_epochs(lambda cb: old_ft(s, task.train, None, settings(OldSettings), teacher=teacher, on_epoch=cb))

    def bare(s):
        loader, _ = training_loader(task.train, augment="flip-crop", seed=0)
        _bare_loop(s, teacher, loader, steps)  # warm-up epoch
        t = time.perf_counter()
        _bare_loop(s, teacher, loader, steps)
        return time.perf_counter() - t

    wanted = {"old", "bare", "fp32", "channels_last", "worker", "compiled", "bf16", "ddp"}
    chosen = wanted if args.rows == "all" else {r.strip() for r in args.rows.split(",")}
    if chosen - wanted or not {"old", "bare", "fp32"} <= chosen:
        ap.error(f"--rows takes names from {sorted(wanted)} and needs old,bare,fp32 (the reference rows); got {args.rows!r}")
    all_rows: dict[str, tuple[str, Callable]] = {
        "old loop (7830fd2)": ("old", old_row),
        "bare loop (fp32)": ("bare", bare),
        "runtime fp32": ("fp32", runtime_row(channels_last="off")),
        "runtime fp32 channels_last": ("channels_last", runtime_row(channels_last="on")),
        "runtime fp32 1 worker": ("worker", runtime_row(num_workers=1, channels_last="off")),
        "runtime fp32 compiled": ("compiled", runtime_row(compile=True, channels_last="off")),
        "runtime bf16": ("bf16", runtime_row(precision="bf16", channels_last="off")),
        "runtime bf16 channels_last": ("bf16", runtime_row(precision="bf16", channels_last="on")),
    }
    rows = {k: fn for k, (key, fn) in all_rows.items() if key in chosen}
    partial_path = args.out / "runtime.partial.json"
    identity = {"steps": steps, "batch_size": bs, "threads": torch.get_num_threads(), "old_commit": args.old_commit}
    ddp_identity = {"compile": args.ddp_compile, "channels_last": args.ddp_channels_last}
    times: dict[str, list[float]] = {k: [] for k in rows}
    walls: dict[int, float] = {}
    if args.resume and partial_path.is_file():
        old_state = json.loads(partial_path.read_text())
        if old_state.get("identity") == identity:
            for k, v in old_state.get("times", {}).items():
                if k in times:
                    times[k] = [float(t) for t in v][: args.rounds]
            if old_state.get("ddp_identity") == ddp_identity:
                walls = {int(k): float(v) for k, v in old_state.get("walls", {}).items()}
            print(f"resuming from {partial_path}: {sum(map(len, times.values()))} timings, {len(walls)} DDP runs",
                  flush=True)

    def save_partial() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(partial_path, json.dumps({"identity": identity, "ddp_identity": ddp_identity, "times": times,
                                                         "walls": walls}, indent=1))

    for r in range(args.rounds):  # every call times its second epoch; rows interleaved round by round
        for name, fn in rows.items():
            if len(times[name]) > r:
                continue
            dt = fn(copy.deepcopy(student0))
            times[name].append(dt)
            save_partial()
            print(f"round {r} {name}: {steps * bs / dt:.1f} img/s", flush=True)
    table = {k: {"images_per_s": steps * bs / statistics.median(v), "rounds_s": v} for k, v in times.items()}

    if "ddp" in chosen and not args.skip_ddp:
        os.environ["OMP_NUM_THREADS"] = "1"  # each of the 2 ranks gets one of the 2 cores
        for epochs in (0, 1, 3):  # "0": a 1-epoch warm-up run (fills the compilation cache when compiling), not used
            if epochs in walls:
                continue
            s = copy.deepcopy(student0)
            st = FinetuneSettings(epochs=max(epochs, 1), lr=0.01, max_steps_per_epoch=steps, augment="flip-crop",
                                  keep_best=False)
            t = time.perf_counter()
            finetune(s, task.train, None, st, teacher=teacher,
                     runtime=Runtime(RuntimeOptions(device="cpu", devices=2, compile=args.ddp_compile,
                                                    channels_last=args.ddp_channels_last)))
            walls[epochs] = time.perf_counter() - t
            save_partial()
            print(f"DDP {epochs} epoch(s): {walls[epochs]:.1f} s", flush=True)
        # each rank takes bs/2 images a step, so an epoch of `steps` steps is steps * bs images in all
        table["DDP 2 processes (gloo)" + ("" if args.ddp_channels_last == "auto" else f" channels_last {args.ddp_channels_last}")
              + (" compiled" if args.ddp_compile else "")] = {
            "images_per_s": 2 * steps * bs / (walls[3] - walls[1]), "walls_s": walls}

    old = table["old loop (7830fd2)"]["images_per_s"]
    bare_ips = table["bare loop (fp32)"]["images_per_s"]
    overhead = 100 * (bare_ips / table["runtime fp32"]["images_per_s"] - 1)
    best_name = max((k for k in table if not k.startswith(("old", "bare"))), key=lambda k: table[k]["images_per_s"])
    best = table[best_name]["images_per_s"]
    x_test = torch.cat([x for x, _ in task.test])
    y_test = torch.cat([y for _, y in task.test])
    from compress.profiling import Target

    front = frontier(args.data, x_test, y_test, Target.preset("cpu-1t"), repeats=20)
    lines = [
        "# KD fine-tune throughput: the training runtime vs the loop it replaced",
        "",
        f"CIFAR ResNet-56 teacher -> gp-prune student at {rep['student']['macs'] / rep['teacher']['macs']:.2f}x MACs "
        f"({rep['student']['macs']:,} MACs, {rep['student']['params']:,} params), batch {bs}, flip-crop, KD. "
        f"Median of {args.rounds} interleaved rounds (bf16 rows included); each timed on the second of two {steps}-step epochs, in one process on this "
        f"machine ({_cpu_model()}, {machine()['cpu_count']} cores, torch threads {torch.get_num_threads()}). "
        "`python benchmarks/bench_runtime.py --data ../shared/data`.",
        "",
        "| loop | images/s | vs old loop |",
        "| --- | ---: | ---: |",
    ]
    for k, v in table.items():
        lines.append(f"| {k} | {v['images_per_s']:.1f} | {v['images_per_s'] / old:.2f}x |")
    lines += [
        "",
        f"- Runtime overhead per step vs the bare loop (same layout and loader): **{overhead:+.1f}%** "
        "(positive: the runtime is slower).",
        f"- Best row: **{best_name}**, **{best / old:.2f}x** the old loop's images/s.",
        "- The DDP row is timed as (3 epochs - 1 epoch) so that spawning the processes is not counted; on 2 cores "
        "its two ranks share the cores the 1-process rows use with 2 threads.",
        "",
        "Throughput only: no accuracy is claimed here. For scale, the stock frontier a user could pick off the "
        "shelf (test 1k, about +/-1.6 points at 95%):",
        "",
        "| model | test acc | MACs | params | ORT ms (cpu-1t) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for f in front:
        lines.append(f"| {f['model']} | {100 * f['test_acc']:.1f}% | {f['macs']:,} | {f['params']:,} | "
                     f"{f['ort_latency_ms']:.3f} |")
    payload = {"table": table, "overhead_pct": overhead, "best": best_name, "best_vs_old": best / old,
               "student": {k: rep["student"][k] for k in ("macs", "params")}, "machine": machine(),
               "args": {k: str(v) for k, v in vars(args).items()},
               "frontier": [{k: v for k, v in f.items() if k != "correct"} for f in front]}
    j, m = write_outputs(args.out, "runtime", payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
