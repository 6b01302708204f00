"""Benchmark: accuracy at equal measured latency, gp-prune ``allocation="latency"`` vs ``"uniform"``.

    OMP_NUM_THREADS=1 python benchmarks/bench_latency_accuracy.py --data ../shared/data \
        [--epochs 3] [--max-steps 0] [--out benchmarks/results]

1. Loads all 50,000 CIFAR-10 training images (``cifar10_train50k_lossless.npz``) with a stratified,
   seeded 1,000-image validation split, and the 1,000 shared test images; the pretrained ResNet-56
   is the teacher.
2. Times the teacher and the stock ResNet-20 side by side on ``cpu-1t``
   (:func:`~compress.profiling.latency_model.measure_interleaved`) and sets the budget to
   ``latency=<ratio>x``: the stock ResNet-20's latency as a share of the teacher's, so that the
   budget follows the teacher's latency as measured inside each run.
3. Runs gp-prune twice with the same metric (ξ*), the same fine-tune (KD, flip-crop, ``--epochs``,
   keep-best on validation) and seed: ``allocation="uniform"`` and ``allocation="latency"``. Each run
   has its own ``out_dir`` with checkpoints, so a killed benchmark resumes inside the fine-tune.
4. Measures every student and the stock frontier (ResNet-20/32/44/56) side by side, and compares the
   test predictions pairwise (McNemar exact test, bootstrap 95% CI of the difference).

Writes ``latency_accuracy_resnet56.{json,md}`` and a PNG of accuracy vs latency to ``--out``.
1,000 test images give about ±1.6 points at 95% for a single accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bootstrap_diff, machine, mcnemar, predictions, write_outputs  # noqa: E402
from bench_latency_pruning import cpu_model  # noqa: E402

from compress.api import compress, library_versions  # noqa: E402
from compress.budgets import measure_cost  # noqa: E402
from compress.data import IMAGENET_MEAN, IMAGENET_STD, collect, load_npz_task  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.profiling import Target  # noqa: E402
from compress.profiling.latency_model import measure_interleaved  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the shared data folder (../shared/data)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=0, help="cap on fine-tune steps per epoch (0: whole split)")
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--metric", default="xi_star")
    ap.add_argument("--max-group-ratio", type=float, default=0.9,
                    help="allocation='latency': largest share of a group's channels removed (ResNet-20's latency "
                         "is out of reach of ResNet-56 at the default 0.8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ratio", type=float, default=None,
                    help="the budget as a share of the teacher's latency (default: time ResNet-20 against ResNet-56 "
                         "side by side now); e.g. the ratio an earlier run's final table measured")
    ap.add_argument("--stem", default="latency_accuracy_resnet56", help="output file stem")
    ap.add_argument("--work", type=Path, default=Path("/tmp/slimforge_bench_latency_accuracy"),
                    help="run folders with checkpoints (resume)")
    args = ap.parse_args(argv)

    train = args.data / "cifar10_train50k_lossless.npz"
    test = args.data / "cifar10_test1k_lossless.npz"
    for p in (train, test, args.data / "resnet56_cifar10.pt", args.data / "resnet20_cifar10.pt"):
        if not p.is_file():
            ap.error(f"missing {p}; pass the shared data folder with --data")
    task = load_npz_task(train, test_path=test, seed=args.seed, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         batch_size=128, val_fraction=0.02)
    x_test, y_test = collect(task.test)
    target = Target.preset("cpu-1t", input_shape=task.spec.input_shape)
    stock = {d: load_model(f"cifar:resnet{d}", num_classes=10, weights=args.data / f"resnet{d}_cifar10.pt").eval()
             for d in (20, 32, 44, 56)}
    teacher = stock[56]
    saved = args.work / "budget.json"  # a resumed benchmark keeps the budget its runs were started with
    if args.ratio is not None and not saved.is_file():
        args.work.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"r20_over_r56": args.ratio, "source": "--ratio"}))
    if saved.is_file():
        ratio = float(json.loads(saved.read_text())["r20_over_r56"])
        print(f"resuming: the budget measured when the runs started, ratio {ratio:.4f}", flush=True)
    else:
        timed = measure_interleaved([teacher, stock[20]], target, x_test[:1], rounds=10, repeats=30)
        ratio = statistics.median(s / t for s, t in zip(timed[1]["rounds_ms"], timed[0]["rounds_ms"]))
        args.work.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"r20_over_r56": ratio}))
    budget = f"latency={ratio:.4f}x"
    print(f"stock ResNet-20 / ResNet-56 latency on cpu-1t: {ratio:.4f} -> budget {budget}", flush=True)

    runs = []
    students = {}
    for alloc in ("uniform", "latency"):
        t0 = time.perf_counter()
        res = compress(
            teacher, budget, data=task, strategy="gp-prune", seed=args.seed, target=target,
            config={"metric": args.metric, "allocation": alloc, "epochs": args.epochs, "lr": args.lr,
                    **({"max_group_ratio": args.max_group_ratio} if alloc == "latency" else {}),
                    "augment": "flip-crop", "max_steps_per_epoch": args.max_steps or None},
            out_dir=args.work / alloc, model_spec="cifar:resnet56", mobile=False, memory=False,
        )
        students[alloc] = res.student
        correct = predictions(res.student, x_test) == y_test.numpy()
        runs.append({
            "allocation": alloc, "test_acc": float(correct.mean()), "val_acc": res.student_report.accuracy_val,
            "macs": res.student_report.cost.macs, "params": res.student_report.cost.params,
            "compress_latency_ms": res.student_report.latency.median_ms, "budget_ok": res.budget_check.ok,
            "violations": [str(v) for v in res.budget_check.violations], "wall_s": res.wall_s,
            "elapsed_s": time.perf_counter() - t0, "correct": correct, "layer_widths": res.info["layer_widths"],
            "allocation_record": {k: v for k, v in res.info.get("allocation", {}).items() if k != "groups"},
            "finetune_history": [h for h in res.history if h.get("phase") == "finetune"],
        })
        print(f"{alloc}: test {100 * correct.mean():.2f}%  MACs {runs[-1]['macs']:,}  budget ok {res.budget_check.ok}  "
              f"wall {time.perf_counter() - t0:.0f} s", flush=True)

    names = [f"resnet{d} (pretrained)" for d in stock] + [f"ResNet-56 gp-prune {a}" for a in students]
    models = list(stock.values()) + list(students.values())
    timed = measure_interleaved(models, target, x_test[:1], rounds=10, repeats=30)
    rows = []
    for name, m, t in zip(names, models, timed):
        correct = predictions(m, x_test) == y_test.numpy()
        cost = measure_cost(m, x_test[:2])
        rows.append({"model": name, "test_acc": float(correct.mean()), "macs": cost.macs, "params": cost.params,
                     "ort_latency_ms": t["median_ms"], "rounds_ms": t["rounds_ms"], "correct": correct})
    by = {r["model"]: r for r in rows}
    a, b = by["ResNet-56 gp-prune latency"], by["ResNet-56 gp-prune uniform"]
    paired = [{"a": a["model"], "b": r["model"], **mcnemar(a["correct"], r["correct"]),
               **bootstrap_diff(a["correct"], r["correct"])} for r in rows if r is not a]
    payload = {"benchmark": "latency_accuracy", "teacher": "resnet56", "budget": budget, "r20_over_r56": ratio,
               "epochs": args.epochs, "max_steps_per_epoch": args.max_steps or None, "lr": args.lr, "metric": args.metric,
               "seed": args.seed, "train_images": len(task.train.dataset), "val_images": len(task.val.dataset),
               "test_images": int(len(y_test)), "runs": runs, "side_by_side": rows, "paired": paired,
               "versions": library_versions(), "machine": {**machine(), "cpu": cpu_model()}}
    md = [f"# Accuracy at equal latency: CIFAR-10 ResNet-56 pruned to the stock ResNet-20's latency (`{budget}`)", "",
          f"Machine: {cpu_model()}; target `cpu-1t`. Train: {len(task.train.dataset):,} images "
          f"(50k minus a stratified {len(task.val.dataset):,}-image validation split); test: {len(y_test):,} images "
          f"(±1.6 points at 95%). Both runs: metric `{args.metric}`, KD fine-tune {args.epochs} epochs"
          + (f" x {args.max_steps} steps" if args.max_steps else "") + f", lr {args.lr}, flip-crop, keep-best on "
          "validation, seed 0; only `allocation` differs (and `max_group_ratio` "
          f"{args.max_group_ratio} for `latency`; uniform's ratio goes up to `max_ratio` 0.95). Latency: all models timed side by side (10 interleaved "
          "rounds x 30 calls, batch 1).", "",
          "| model | test acc | MACs | params | ORT latency ms (side by side) | budget met in its run | wall s |",
          "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    run_by = {f"ResNet-56 gp-prune {r['allocation']}": r for r in runs}
    for r in rows:
        run = run_by.get(r["model"])
        met = "-" if run is None else ("yes" if run["budget_ok"] else "no")
        wall = "-" if run is None else f"{run['elapsed_s']:.0f}"
        md.append(f"| {r['model']} | {100 * r['test_acc']:.1f}% | {r['macs']:,} | {r['params']:,} | "
                  f"{r['ort_latency_ms']:.3f} | {met} | {wall} |")
    md += ["", "Paired tests of the `latency` student against every other row (same 1,000 test images):", "",
           "| a | b | a right only | b right only | McNemar p | diff (pts) | 95% CI |",
           "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for p in paired:
        md.append(f"| {p['a']} | {p['b']} | {p['a_only']} | {p['b_only']} | {p['p_value']:.3f} | {p['diff_pts']:+.1f} | "
                  f"[{p['ci95_low']:+.1f}, {p['ci95_high']:+.1f}] |")
    md += ["", "Fine-tune curves (validation accuracy per epoch):", ""]
    for r in runs:
        md.append(f"- {r['allocation']}: " + ", ".join(f"{100 * h.get('val_acc', float('nan')):.1f}%"
                                                       for h in r["finetune_history"] if "val_acc" in h))
    args.out.mkdir(parents=True, exist_ok=True)
    _plot(rows, args.out / f"{args.stem}.png", budget)
    md += ["", f"![accuracy vs latency]({args.stem}.png)"]
    j, m = write_outputs(args.out, args.stem, payload, "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return 0


def _plot(rows, path: Path, budget: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    stock = [r for r in rows if "pretrained" in r["model"]]
    ax.plot([r["ort_latency_ms"] for r in stock], [100 * r["test_acc"] for r in stock], "o-", color="grey",
            label="stock frontier (pretrained ResNet-20/32/44/56)")
    for r in stock:
        ax.annotate(r["model"].split()[0], (r["ort_latency_ms"], 100 * r["test_acc"]), fontsize=8)
    for r, marker in zip([r for r in rows if "gp-prune" in r["model"]], ("s", "D")):
        ax.plot(r["ort_latency_ms"], 100 * r["test_acc"], marker, label=r["model"])
    ax.set_xlabel("ORT latency, ms (cpu-1t, side by side)")
    ax.set_ylabel("test accuracy, % (1,000 images)")
    ax.set_title(f"ResNet-56 pruned to {budget}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
