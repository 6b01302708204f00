"""Benchmark: gp-prune on the pretrained CIFAR ResNet-56, ξ* vs plain L1, against the stock frontier.

    python benchmarks/bench_gp_prune_cifar.py --data ../shared/data [--epochs 8] [--out benchmarks/results]

1. Loads the shared CIFAR-10 subsets (10k train, 1k test; ImageNet mean/std as the teachers expect)
   and the pretrained ResNet-56, and measures its test accuracy first.
2. Prunes it to ``--budget`` (default ``macs=0.5x``) twice with the same fine-tune budget: with the
   evolved ξ* (GECCO'22 Eq. 3) and with plain L1 (Torch-Pruning's ``MagnitudeImportance(p=1)``).
3. Measures the stock frontier (pretrained ResNet-20/32/44/56): accuracy, MACs, ORT latency.
4. Writes ``gp_prune_cifar.json`` and ``.md``: test accuracy, MACs, params, ORT latency at 1 thread,
   wall time per phase, and paired tests (McNemar, bootstrap) on the same 1,000 test images.

Tuning uses the validation split carved from the training images; the test split is read once per
model at the end. 1,000 test images give about ±1.6 points at 95% confidence.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bootstrap_diff, frontier, machine, mcnemar, predictions, write_outputs  # noqa: E402

from compress.api import compress, library_versions  # noqa: E402
from compress.data import IMAGENET_MEAN, IMAGENET_STD, collect, load_npz_task  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.profiling import Target  # noqa: E402


def metric_label(metric: str) -> str:
    """A short name for a metric given by name or as an evolved ``best_metric.json`` path."""
    path = Path(metric)
    if path.suffix == ".json" and path.is_file():
        import json

        return str(json.loads(path.read_text()).get("name") or f"evolved-{path.parent.name}")
    return metric


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the shared data folder (../shared/data)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--budget", default="macs=0.5x")
    ap.add_argument("--epochs", type=int, default=8, help="fine-tune epochs per run (same for every metric)")
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--metrics", nargs="+", default=["xi_star", "tp-l1"])
    ap.add_argument("--calib-samples", type=int, default=512)
    ap.add_argument("--train-limit", type=int, default=None, help="use a stratified subset of the 10k train images")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    train = args.data / "cifar10_train10k_lossless.npz"
    test = args.data / "cifar10_test1k_lossless.npz"
    weights = args.data / f"{args.teacher}_cifar10.pt"
    for p in (train, test, weights):
        if not p.is_file():
            ap.error(f"missing {p}; pass the shared data folder with --data")
    task = load_npz_task(train, test_path=test, seed=args.seed, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         batch_size=128, val_fraction=0.1, limit=args.train_limit)
    x_test, y_test = collect(task.test)
    target = Target.preset("cpu-1t", input_shape=task.spec.input_shape)

    teacher = load_model(f"cifar:{args.teacher}", num_classes=10, weights=weights).eval()
    t_pred = predictions(teacher, x_test)
    t_correct = t_pred == y_test.numpy()
    print(f"teacher {args.teacher}: test accuracy {100 * t_correct.mean():.2f}% on {len(y_test)} images", flush=True)

    runs = []
    for metric in args.metrics:
        label = metric_label(metric)
        t0 = time.perf_counter()
        res = compress(
            teacher, args.budget, data=task, strategy="gp-prune", seed=args.seed, target=target,
            config={"metric": metric, "epochs": args.epochs, "lr": args.lr, "augment": "flip-crop",
                    "calib_samples": args.calib_samples},
            out_dir=args.out / f"gp_prune_{args.teacher}_{label}", model_spec=f"cifar:{args.teacher}",
        )
        pred = predictions(res.student, x_test)
        correct = pred == y_test.numpy()
        runs.append({
            "metric": label, "metric_source": metric, "test_acc": float(correct.mean()), "val_acc": res.student_report.accuracy_val,
            "macs": res.student_report.cost.macs, "params": res.student_report.cost.params,
            "ort_latency_ms": res.student_report.latency.median_ms, "ort_latency_p90_ms": res.student_report.latency.p90_ms,
            "teacher_ort_latency_ms": res.teacher.latency.median_ms,
            "pruning_ratio": res.info["pruning_ratio"], "budget_ok": res.budget_check.ok,
            "onnx_parity_ok": res.validation.ok, "wall_s": res.wall_s, "correct": correct,
            "finetune_history": [h for h in res.history if h.get("phase") == "finetune"],
            "elapsed_s": time.perf_counter() - t0,
        })
        print(f"{label}: test {100 * correct.mean():.2f}%  MACs {res.student_report.cost.macs:,}  "
              f"ORT {res.student_report.latency.median_ms:.3f} ms  wall {time.perf_counter() - t0:.0f} s", flush=True)

    stock = frontier(args.data, x_test, y_test, target)
    paired = []
    for i, a in enumerate(runs):
        paired.append({"a": a["metric"], "b": "teacher", **mcnemar(a["correct"], t_correct), **bootstrap_diff(a["correct"], t_correct)})
        for b in runs[i + 1:]:
            paired.append({"a": a["metric"], "b": b["metric"], **mcnemar(a["correct"], b["correct"]),
                           **bootstrap_diff(a["correct"], b["correct"])})
        for s in stock:
            paired.append({"a": a["metric"], "b": s["model"], **mcnemar(a["correct"], s["correct"]),
                           **bootstrap_diff(a["correct"], s["correct"])})

    payload = {
        "benchmark": "gp_prune_cifar", "teacher": args.teacher, "budget": args.budget, "epochs": args.epochs,
        "lr": args.lr, "seed": args.seed, "train_images": len(task.train.dataset), "test_images": int(len(y_test)),
        "teacher_test_acc": float(t_correct.mean()), "runs": runs, "frontier": stock, "paired": paired,
        "versions": library_versions(), "machine": machine(),
    }
    md = [f"# gp-prune on CIFAR-10 {args.teacher}, budget `{args.budget}`, {args.epochs} fine-tune epochs", "",
          f"Teacher test accuracy (measured first): **{100 * t_correct.mean():.2f}%** on {len(y_test)} images "
          "(±1.6 points at 95% for a single accuracy on 1,000 images).", "",
          "| model | test acc | MACs | params | ORT latency ms (1 thread, median / p90) | wall s |",
          "| --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        md.append(f"| {args.teacher} pruned, {r['metric']} | {100 * r['test_acc']:.2f}% | {r['macs']:,} | {r['params']:,} | "
                  f"{r['ort_latency_ms']:.3f} / {r['ort_latency_p90_ms']:.3f} | {r['wall_s']['total']:.0f} |")
    for s in stock:
        md.append(f"| {s['model']} | {100 * s['test_acc']:.2f}% | {s['macs']:,} | {s['params']:,} | "
                  f"{s['ort_latency_ms']:.3f} / {s['ort_latency_p90_ms']:.3f} | - |")
    md += ["", "Wall time per phase (s):", "", "| run | " + " | ".join(runs[0]["wall_s"]) + " |",
           "| --- | " + " | ".join("---" for _ in runs[0]["wall_s"]) + " |"]
    for r in runs:
        md.append(f"| {r['metric']} | " + " | ".join(f"{v:.0f}" for v in r["wall_s"].values()) + " |")
    md += ["", "Paired comparisons on the same test images (McNemar exact p; bootstrap 95% CI of the difference in points):", "",
           "| a | b | a right only | b right only | McNemar p | diff (pts) | 95% CI |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in paired:
        md.append(f"| {p['a']} | {p['b']} | {p['a_only']} | {p['b_only']} | {p['p_value']:.3f} | {p['diff_pts']:+.1f} | "
                  f"[{p['ci95_low']:+.1f}, {p['ci95_high']:+.1f}] |")
    j, m = write_outputs(args.out, f"gp_prune_cifar_{args.teacher}", payload, "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
