"""Benchmark: grow (SEArch) vs random splitting vs plain KD into ResNet-20, CIFAR-10, ResNet-56 teacher.

    python benchmarks/bench_grow.py --data ../shared/data [--final-epochs 30] [--out benchmarks/results]
    python benchmarks/bench_grow.py --data ../shared/data --smoke      # starts, tiny sizes, ~1-2 min

1. Loads the shared CIFAR-10 subsets (10k train, 1k test; ImageNet mean/std as the teachers expect)
   and the pretrained ResNet-56 teacher, and measures its test accuracy first.
2. Budget: the parameter count of a CIFAR ResNet-20 (0.27 M; the paper's KD table, Table 5).
3. Runs, all with the same train/val split, the same final-training epochs, learning rate and
   augmentation:
   * ``grow``          -- SEArch: Eq. 5 bottleneck score, deepen-then-widen, budget stop, final KD retrain;
   * ``grow-random``   -- ablation (C): random edge and random deepen/widen, same everything else;
     ``--random-k K`` (issue 18: "grow: random splitting ... the mean and best of K") runs it K times,
     ``grow-random-1`` .. ``grow-random-K`` with seeds ``--seed`` + 0 .. K-1 (the random choices and
     the initialisation differ; data, split and settings do not), and adds the "random mean" and
     "random best" rows, McNemar and bootstrap of grow vs the best, and the paired bootstrap of grow
     vs the mean of the K (``_common.mean_random_test``);
   * ``kd-resnet20``   -- Hinton KD (CE + T^2 KL, alpha 0.5, T 4) from the same teacher into a
     freshly initialised ResNet-20, ``--final-epochs`` epochs (the grown students' retrain length).
     ``--kd-matched`` adds a ``kd-resnet20-matched`` row whose epochs also cover the grow search
     (iterations x stage epochs x the share of data each stage trains on).
4. Stock frontier (pretrained ResNet-20/32/44/56 off the shelf), ORT latency at 1 thread, wall
   time, and paired tests (McNemar exact, bootstrap 95% CI) on the same 1,000 test images.

Writes ``grow_cifar_<teacher>.json`` and ``.md``. The test split is read once per model at the end;
model selection uses the validation split carved from the training images.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (bootstrap_diff, cut_facts, frontier, machine, mcnemar, mean_random_test, predictions,  # noqa: E402
                     write_outputs)

import compress.strategies.grow  # noqa: E402,F401  (registers "grow")
from compress.api import compress, library_versions  # noqa: E402
from compress.budgets import Budget, measure_cost  # noqa: E402
from compress.data import IMAGENET_MEAN, IMAGENET_STD, collect, load_npz_task  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.profiling import Target, profile_latency  # noqa: E402
from compress.strategies._parts.training import FinetuneSettings, finetune  # noqa: E402


def _kd_baseline(name: str, teacher, task, args, epochs: int, target: Target, x_test, y_test) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    student = load_model(f"cifar:{args.student_ref}", num_classes=10).train()
    settings = FinetuneSettings(epochs=epochs, lr=args.final_lr, momentum=0.9, weight_decay=args.weight_decay,
                                kd_alpha=0.5, kd_temperature=4.0, augment=args.augment, seed=args.seed,
                                max_steps_per_epoch=args.max_steps)
    hist = finetune(student, task.train, task.val, settings, teacher=teacher)
    train_s = time.perf_counter() - t0
    student.eval()
    correct = predictions(student, x_test) == y_test.numpy()
    cost = measure_cost(student, x_test[:2])
    lat = profile_latency(student, target, example_inputs=x_test[:2], repeats=args.latency_repeats)
    return {"run": name, "test_acc": float(correct.mean()), "val_acc": max(h["val_acc"] for h in hist),
            "macs": cost.macs, "params": cost.params, "ort_latency_ms": lat.median_ms, "ort_latency_p90_ms": lat.p90_ms,
            "epochs": epochs, "budget_ok": None, "onnx_parity_ok": None, "wall_s": {"train": train_s},
            "elapsed_s": time.perf_counter() - t0, "correct": correct, "history": hist}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the shared data folder (../shared/data)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--student-ref", default="resnet20", help="budget = params of this CIFAR ResNet; KD baseline")
    ap.add_argument("--stage-epochs", type=int, default=1, help="epochs per growth training stage (paper 10)")
    ap.add_argument("--max-iterations", type=int, default=40, help="growth safety cap (paper saw 24-47)")
    ap.add_argument("--final-epochs", type=int, default=30, help="final retrain epochs, same for every run (paper 400)")
    ap.add_argument("--lr", type=float, default=0.025, help="growth-stage lr (paper 0.025)")
    ap.add_argument("--final-lr", type=float, default=0.025)
    ap.add_argument("--weight-decay", type=float, default=3e-4)
    ap.add_argument("--augment", default="flip-crop")
    ap.add_argument("--train-limit", type=int, default=None, help="stratified subset of the 10k train images")
    ap.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch (all phases)")
    ap.add_argument("--kd-matched", action="store_true", help="add a KD row with the grow search epochs on top")
    ap.add_argument("--latency-repeats", type=int, default=50)
    ap.add_argument("--budget", default=None,
                    help="budget spec (default: params of --student-ref); e.g. latency=0.31x for issue 18's goal 3 "
                         "(ResNet-20's ORT latency as a share of the teacher's); the output then ends in _<budget>")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-k", type=int, default=1,
                    help="random-splitting runs (seeds --seed .. --seed+K-1); K > 1 adds the random mean and best "
                         "rows and the paired tests against them, and _k<K> to the output name")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script end to end in minutes")
    args = ap.parse_args(argv)
    if args.random_k < 1:
        ap.error(f"--random-k must be at least 1, got {args.random_k}")
    if args.smoke:
        args.train_limit, args.stage_epochs, args.max_iterations = 512, 1, 2
        args.final_epochs, args.max_steps, args.latency_repeats = 1, 2, 5
        args.out = args.out / "smoke"

    train = args.data / "cifar10_train10k_lossless.npz"
    test = args.data / "cifar10_test1k_lossless.npz"
    weights = args.data / f"{args.teacher}_cifar10.pt"
    for p in (train, test, weights):
        if not p.is_file():
            ap.error(f"missing {p}; pass the shared data folder with --data")
    task = load_npz_task(train, test_path=test, seed=args.seed, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         batch_size=128, val_fraction=0.1, limit=args.train_limit)
    x_test, y_test = collect(task.test)
    if args.smoke:
        x_test, y_test = x_test[:200], y_test[:200]
    target = Target.preset("cpu-1t", input_shape=task.spec.input_shape)

    teacher = load_model(f"cifar:{args.teacher}", num_classes=10, weights=weights).eval()
    t_correct = predictions(teacher, x_test) == y_test.numpy()
    print(f"teacher {args.teacher}: test accuracy {100 * t_correct.mean():.2f}% on {len(y_test)} images", flush=True)
    ref_params = measure_cost(load_model(f"cifar:{args.student_ref}", num_classes=10), x_test[:2]).params
    budget = args.budget or f"params={ref_params}"
    Budget.parse(budget)  # BudgetError before any training
    print(f"budget {budget}" + ("" if args.budget else f" (params of cifar:{args.student_ref})"), flush=True)
    t_macs = measure_cost(teacher, x_test[:2]).macs

    base_cfg = {"stage_epochs": args.stage_epochs, "max_iterations": args.max_iterations,
                "final_epochs": args.final_epochs, "lr": args.lr, "final_lr": args.final_lr,
                "weight_decay": args.weight_decay, "augment": args.augment, "max_steps_per_epoch": args.max_steps,
                "final_max_steps_per_epoch": args.max_steps}
    if args.smoke:
        base_cfg["score_max_batches"] = 1
    runs = []
    k = args.random_k
    plan = [("grow", {}, args.seed)] + [(f"grow-random-{i + 1}" if k > 1 else "grow-random", {"split_policy": "random"},
                                         args.seed + i) for i in range(k)]
    for name, extra, seed in plan:
        t0 = time.perf_counter()
        res = compress(teacher, budget, data=task, strategy="grow", seed=seed, target=target,
                       config={**base_cfg, **extra}, out_dir=args.out / f"grow_{args.teacher}_{name}",
                       progress=not args.smoke, latency_repeats=args.latency_repeats,
                       latency_warmup=min(10, args.latency_repeats))
        correct = predictions(res.student, x_test) == y_test.numpy()
        grow_hist = [h for h in res.history if h.get("phase") == "grow"]
        runs.append({
            "run": name, "seed": seed, "test_acc": float(correct.mean()), "val_acc": res.student_report.accuracy_val,
            "macs": res.student_report.cost.macs, "params": res.student_report.cost.params,
            "ort_latency_ms": res.student_report.latency.median_ms, "ort_latency_p90_ms": res.student_report.latency.p90_ms,
            "budget_ok": res.budget_check.ok, "onnx_parity_ok": res.validation.ok, "wall_s": res.wall_s,
            "iterations": res.info["iterations"], "stop_reason": res.info["stop_reason"],
            "nodes": res.info["nodes"], "edges": res.info["edges"], "ops": res.info["ops"],
            "structure_dot": res.info["dot"], "epochs": args.final_epochs,
            "search_epoch_equivalents": res.info["iterations"] * args.stage_epochs * (1 - 0.5),
            "decisions": [{k: h.get(k) for k in ("iteration", "op", "edge", "q_k", "params", "macs", "val_acc", "accepted")}
                          for h in grow_hist],
            "correct": correct, "elapsed_s": time.perf_counter() - t0,
            **cut_facts(t_macs, res.student_report.cost.macs, res.budget_check.latency_vs_teacher),
        })
        print(f"{name}: test {100 * correct.mean():.2f}%  params {res.student_report.cost.params:,}  "
              f"MACs {res.student_report.cost.macs:,}  iterations {res.info['iterations']} ({res.info['stop_reason']})  "
              f"wall {time.perf_counter() - t0:.0f} s", flush=True)

    runs.append(_kd_baseline(f"kd-{args.student_ref}", teacher, task, args, args.final_epochs, target, x_test, y_test))
    if args.kd_matched:
        extra = math.ceil(max(r.get("search_epoch_equivalents", 0) for r in runs))
        runs.append(_kd_baseline(f"kd-{args.student_ref}-matched", teacher, task, args, args.final_epochs + extra,
                                 target, x_test, y_test))
    for r in runs[1 + k:]:
        print(f"{r['run']}: test {100 * r['test_acc']:.2f}%  params {r['params']:,}  wall {r['elapsed_s']:.0f} s", flush=True)

    stock = frontier(args.data, x_test, y_test, target, depths=(20,) if args.smoke else (20, 32, 44, 56),
                     repeats=args.latency_repeats)
    randoms = [r for r in runs if r["run"].startswith("grow-random")]
    summary: dict = {}
    skip: set[str] = set()  # with K > 1, only the best random row is paired with the others
    if k > 1:
        best = max(randoms, key=lambda r: r["test_acc"])
        skip = {r["run"] for r in randoms if r is not best}
        summary = {
            "random_mean": {"run": f"random mean (of {k})", "test_acc": float(np.mean([r["test_acc"] for r in randoms])),
                            **{f: float(np.mean([r[f] for r in randoms]))
                               for f in ("params", "macs", "ort_latency_ms", "ort_latency_p90_ms")}},
            "random_best": best["run"],
            "vs_best": {"a": "grow", "b": best["run"], **mcnemar(runs[0]["correct"], best["correct"]),
                        **bootstrap_diff(runs[0]["correct"], best["correct"])},
            "vs_mean": {"a": "grow", "b": f"random mean (of {k})",
                        **mean_random_test(runs[0]["correct"], [r["correct"] for r in randoms])},
        }
    paired = []
    for i, a in enumerate(runs):
        if a["run"] in skip:  # K random rows: compared through the mean and the best (summary)
            continue
        paired.append({"a": a["run"], "b": "teacher", **mcnemar(a["correct"], t_correct),
                       **bootstrap_diff(a["correct"], t_correct)})
        for b in runs[i + 1:]:
            if b["run"] in skip:
                continue
            paired.append({"a": a["run"], "b": b["run"], **mcnemar(a["correct"], b["correct"]),
                           **bootstrap_diff(a["correct"], b["correct"])})
        for s in stock:
            paired.append({"a": a["run"], "b": s["model"], **mcnemar(a["correct"], s["correct"]),
                           **bootstrap_diff(a["correct"], s["correct"])})

    payload = {
        "benchmark": "grow_cifar", "teacher": args.teacher, "budget": budget, "args": {k: str(v) for k, v in vars(args).items()},
        "train_images": len(task.train.dataset), "test_images": int(len(y_test)),
        "teacher_test_acc": float(t_correct.mean()), "teacher_macs": t_macs, "runs": runs, "frontier": stock, "paired": paired,
        "random_summary": summary,
        "versions": library_versions(), "machine": machine(),
    }
    what = f"(= cifar:{args.student_ref})" if not args.budget else ""
    md = [f"# grow (SEArch) on CIFAR-10, teacher {args.teacher}, budget `{budget}` {what}".rstrip(), "",
          f"Teacher test accuracy (measured first): **{100 * t_correct.mean():.2f}%** on {len(y_test)} images. "
          f"Every run: {args.final_epochs} final-training epochs, lr {args.final_lr}, augment {args.augment}; "
          f"growth stages {args.stage_epochs} epoch(s) each, at most {args.max_iterations} iterations.", "",
          "| model | test acc | params | MACs | ORT latency ms (1 thread, median / p90) | iterations | wall s |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        total = r["wall_s"].get("total", r["elapsed_s"])
        md.append(f"| {r['run']} | {100 * r['test_acc']:.2f}% | {r['params']:,} | {r['macs']:,} | "
                  f"{r['ort_latency_ms']:.3f} / {r['ort_latency_p90_ms']:.3f} | {r.get('iterations', '-')} | {total:.0f} |")
    if summary:
        m = summary["random_mean"]
        md.append(f"| **{m['run']}** | {100 * m['test_acc']:.2f}% | {m['params']:,.0f} | {m['macs']:,.0f} | "
                  f"{m['ort_latency_ms']:.3f} / {m['ort_latency_p90_ms']:.3f} | - | - |")
        rb = next(r for r in randoms if r["run"] == summary["random_best"])
        md.append(f"| **random best** ({rb['run']}) | {100 * rb['test_acc']:.2f}% | {rb['params']:,} | {rb['macs']:,} | "
                  f"{rb['ort_latency_ms']:.3f} / {rb['ort_latency_p90_ms']:.3f} | {rb.get('iterations', '-')} | - |")
    for s in stock:
        md.append(f"| {s['model']} | {100 * s['test_acc']:.2f}% | {s['params']:,} | {s['macs']:,} | "
                  f"{s['ort_latency_ms']:.3f} / {s['ort_latency_p90_ms']:.3f} | - | - |")
    cuts = [r for r in runs if r.get("cut_ratio") is not None]
    if cuts:
        md += ["", "Latency cut / MACs cut against the teacher (issue 18, goal 3: >= 0.6 under a latency budget; the "
               "latency cut from compress()'s side-by-side timing of teacher and student ONNX, "
               "`budget.latency_vs_teacher`):", ""]
        md += [f"- {r['run']}: {r['cut_ratio']:.2f} (latency cut {100 * r['latency_cut']:.1f}%, MACs cut "
               f"{100 * r['macs_cut']:.1f}%){'; goal met' if r['cut_ratio'] >= 0.6 else '; goal missed'}"
               for r in cuts]
    if summary:
        vm, vb = summary["vs_mean"], summary["vs_best"]
        beats = vm["p_value"] < 0.05 and vm["diff_pts"] > 0
        md += ["", f"**Beats the mean of random search: {'yes' if beats else 'no'}** -- {vm['diff_pts']:+.1f} points "
               f"(grow {100 * vm['acc_strategy']:.2f}% vs the mean of {k} random splittings "
               f"{100 * vm['acc_random_mean']:.2f}%; paired bootstrap over the test images, 95% CI "
               f"[{vm['ci95_low']:+.1f}, {vm['ci95_high']:+.1f}], p {vm['p_value']:.3f}). Against the best random "
               f"({vb['b']}): {vb['diff_pts']:+.1f} points, McNemar p {vb['p_value']:.3f}."]
    md += ["", "Paired comparisons on the same test images (McNemar exact p; bootstrap 95% CI of the difference in points):", "",
           "| a | b | a right only | b right only | McNemar p | diff (pts) | 95% CI |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in paired:
        md.append(f"| {p['a']} | {p['b']} | {p['a_only']} | {p['b_only']} | {p['p_value']:.3f} | {p['diff_pts']:+.1f} | "
                  f"[{p['ci95_low']:+.1f}, {p['ci95_high']:+.1f}] |")
    md += ["", "Final grown architecture (graphviz DOT, paper Fig. 2 style):", "", "```dot", runs[0]["structure_dot"], "```"]
    stem = (f"grow_cifar_{args.teacher}" + (f"_{re.sub(r'[^A-Za-z0-9.]+', '_', args.budget)}" if args.budget else "")
            + (f"_k{k}" if k > 1 else ""))
    j, m = write_outputs(args.out, stem, payload, "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
