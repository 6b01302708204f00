"""Benchmark: eg-nas (CMA-ES directions) vs first-order DARTS on the same supernet, equal search wall time.

    python benchmarks/bench_eg_nas.py --data ../shared/data [--out benchmarks/results] [--smoke]

1. Loads the shared CIFAR-10 subsets (10k train, 1k test; ImageNet mean/std as the teachers expect) and
   the pretrained ResNet-20 teacher, and measures its test accuracy first.
2. Runs ``compress(..., strategy="eg-nas")`` at one budget (default ``params=1x``: the ResNet-20's own
   parameter count) with ``alpha_update="cmaes"``. Both runs share the supernet, data splits, seed,
   warm-up, sizing grid and KD retrain; only the architecture update differs.
3. Runs the baseline ``alpha_update="gradient"`` (first-order DARTS, Adam on grad_alpha L_val) with its
   search epochs chosen so that its search wall time matches eg-nas' measured one: warm-up epochs as
   in eg-nas, then DARTS epochs estimated at 1.6x eg-nas' mean weight time per epoch (the alpha step
   is one more forward/backward on a validation batch; 0.6x measured here). No wall-clock limit runs inside the algorithms (reproducibility); the measured
   search times of both are reported so the match can be checked.
4. Measures the stock frontier (pretrained ResNet-20/32/44/56) and paired tests (McNemar, bootstrap)
   on the same 1,000 test images (about ±1.6 points at 95% confidence for a single accuracy).
5. Writes ``eg_nas_cifar.json`` and ``.md``: val/test accuracy, params, MACs, ORT latency (1 thread),
   search wall time (arch update vs weights), entropy of the final alpha, the genotypes.

``--smoke`` runs the same code path on 512 training images with a tiny supernet and a few steps, to
check that everything starts (minutes, not the real benchmark).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bootstrap_diff, frontier, machine, mcnemar, predictions, write_outputs  # noqa: E402

import compress.strategies.eg_nas  # noqa: E402,F401  (registers "eg-nas")
from compress.api import compress, library_versions  # noqa: E402
from compress.data import IMAGENET_MEAN, IMAGENET_STD, collect, load_npz_task  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.profiling import Target  # noqa: E402

# CPU-scale CIFAR setting (ALGORITHMS.md §4(c) scaled to CIFAR; the supernet searches at 16x16 through a
# stride-2 stem -- measured here ~1.6 s per weight step instead of ~5.7 s at 32x32 -- while the final network
# runs at full resolution). About 2-3 h for both runs on 2 shared cores. Override with --set key=value.
FULL = dict(
    search_C=8, search_layers=5, partial_channels=2, search_stem_stride=2,
    search_epochs=10, warmup_epochs=3, batch_size=64, es_batch_size=128, w_lr=0.05,
    restarts=3, popsize=10, generations=1, search_val_batches=4,
    candidates_C=(8, 10, 12, 16, 20, 24, 28, 32), candidates_layers=(5, 8, 11, 14),
    stem_strides=(1,), final_epochs=10, final_lr=0.05, augment="flip-crop",
)
SMOKE = dict(
    search_C=4, search_layers=3, partial_channels=1, search_stem_stride=2,
    search_epochs=2, warmup_epochs=1, batch_size=32, es_batch_size=32, max_steps_per_epoch=2,
    restarts=2, popsize=4, search_val_batches=1,
    candidates_C=(4, 8, 16), candidates_layers=(3, 5), stem_strides=(1, 2),
    final_epochs=1, final_max_steps_per_epoch=2,
)


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        if "," in v:
            out[k] = tuple(int(x) for x in v.split(","))
        else:
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
    return out


def _run(label: str, teacher, task, budget, cfg: dict, args, target, x_test, y_test) -> dict:
    t0 = time.perf_counter()
    res = compress(
        teacher, budget, data=task, strategy="eg-nas", seed=args.seed, target=target, config=cfg,
        out_dir=args.out / f"eg_nas_{label}", model_spec=None,
        latency_repeats=10 if args.smoke else 50, latency_warmup=2 if args.smoke else 10,
    )
    pred = predictions(res.student, x_test)
    correct = pred == y_test.numpy()
    search_hist = [h for h in res.history if h.get("phase") == "search"]
    row = {
        "run": label, "alpha_update": cfg["alpha_update"], "search_epochs": cfg["search_epochs"],
        "test_acc": float(correct.mean()), "val_acc": res.student_report.accuracy_val,
        "macs": res.student_report.cost.macs, "params": res.student_report.cost.params,
        "ort_latency_ms": res.student_report.latency.median_ms, "ort_latency_p90_ms": res.student_report.latency.p90_ms,
        "budget_ok": res.budget_check.ok, "onnx_parity_ok": res.validation.ok,
        "search_wall_s": res.wall_s.get("search"), "search_arch_update_s": res.info["wall_s_arch_update"],
        "search_weights_s": res.info["wall_s_weights"], "final_alpha_entropy": res.info["final_alpha_entropy"],
        "alpha_entropy_history": res.info["alpha_entropy_history"],
        "supernet_val_acc_history": res.info["search_val_acc_history"],
        "best_fitness_history": res.info["best_fitness_history"],
        "genotype": res.info["genotype"], "chosen": res.info["chosen"], "wall_s": res.wall_s,
        "retrain_history": res.info["retrain_history"], "search_history": search_hist,
        "correct": correct, "elapsed_s": time.perf_counter() - t0,
    }
    print(f"{label}: test {100 * row['test_acc']:.2f}%  params {row['params']:,}  MACs {row['macs']:,}  "
          f"search {row['search_wall_s']:.0f} s  H(alpha) {row['final_alpha_entropy']:.3f}", flush=True)
    return row


# first-order DARTS: one extra forward/backward on a validation batch per weight step; measured here
# (2026-12-01, quiet machine, C=8 x 5-cell supernet) as 0.6 of a weight step (16 s vs 27 s per epoch)
DARTS_ARCH_COST = 0.6


def _matched_epochs(eg_row: dict, cfg: dict) -> int:
    """Search epochs for the gradient baseline so that its total search wall time matches eg-nas'.

    Warm-up epochs cost the same in both (weights only). eg-nas' measured total search time is
    divided into those and post-warm-up DARTS epochs estimated at (1 + DARTS_ARCH_COST) x the mean
    weight time per epoch of the eg-nas run."""
    hist = eg_row["search_history"]
    W, T = cfg["warmup_epochs"], cfg["search_epochs"]
    if not hist or len(hist) <= W:
        return T
    t_w = sum(h["wall_weights_s"] for h in hist) / len(hist)
    eg_total = sum(h["wall_weights_s"] + h.get("wall_arch_s", h.get("wall_es_s", 0.0)) for h in hist)
    t_grad = (1.0 + DARTS_ARCH_COST) * t_w
    return max(W + 1, W + int(round((eg_total - W * t_w) / t_grad)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the shared data folder (../shared/data)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--budget", default="params=1x", help="budget relative to the ResNet-20 teacher")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=None, help="stratified subset of the 10k train images")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides for both runs, e.g. search_epochs=20")
    ap.add_argument("--smoke", action="store_true", help="tiny settings: check that everything starts")
    args = ap.parse_args(argv)

    train = args.data / "cifar10_train10k_lossless.npz"
    test = args.data / "cifar10_test1k_lossless.npz"
    weights = args.data / "resnet20_cifar10.pt"
    for p in (train, test, weights):
        if not p.is_file():
            ap.error(f"missing {p}; pass the shared data folder with --data")
    limit = args.train_limit if args.train_limit is not None else (512 if args.smoke else None)
    task = load_npz_task(train, test_path=test, seed=args.seed, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         batch_size=64 if args.smoke else 128, val_fraction=0.1, limit=limit)
    x_test, y_test = collect(task.test)
    target = Target.preset("cpu-1t", input_shape=task.spec.input_shape)
    teacher = load_model("cifar:resnet20", num_classes=10, weights=weights).eval()
    t_correct = predictions(teacher, x_test) == y_test.numpy()
    print(f"teacher resnet20: test accuracy {100 * t_correct.mean():.2f}% on {len(y_test)} images", flush=True)

    base = {**(SMOKE if args.smoke else FULL), **_parse_set(args.set)}
    eg_cfg = {**base, "alpha_update": "cmaes"}
    eg = _run("cmaes", teacher, task, args.budget, eg_cfg, args, target, x_test, y_test)
    grad_cfg = {**base, "alpha_update": "gradient", "search_epochs": _matched_epochs(eg, eg_cfg)}
    gr = _run("gradient", teacher, task, args.budget, grad_cfg, args, target, x_test, y_test)
    runs = [eg, gr]

    stock = frontier(args.data, x_test, y_test, target, depths=(20,) if args.smoke else (20, 32, 44, 56),
                     repeats=10 if args.smoke else 50)
    paired = [{"a": "eg-nas", "b": "darts-1st", **mcnemar(eg["correct"], gr["correct"]),
               **bootstrap_diff(eg["correct"], gr["correct"])}]
    for r in runs:
        paired.append({"a": r["run"], "b": "teacher", **mcnemar(r["correct"], t_correct),
                       **bootstrap_diff(r["correct"], t_correct)})
        for s in stock:
            paired.append({"a": r["run"], "b": s["model"], **mcnemar(r["correct"], s["correct"]),
                           **bootstrap_diff(r["correct"], s["correct"])})

    payload = {
        "benchmark": "eg_nas_cifar", "budget": args.budget, "seed": args.seed, "smoke": args.smoke,
        "config_common": {k: v for k, v in base.items()}, "train_images": len(task.train.dataset),
        "test_images": int(len(y_test)), "teacher": "resnet20", "teacher_test_acc": float(t_correct.mean()),
        "runs": runs, "frontier": stock, "paired": paired, "versions": library_versions(), "machine": machine(),
    }
    md = [f"# eg-nas vs first-order DARTS on CIFAR-10 (same supernet), budget `{args.budget}` of ResNet-20"
          + (" -- SMOKE RUN, numbers meaningless" if args.smoke else ""), "",
          f"Teacher ResNet-20 test accuracy (measured first): **{100 * t_correct.mean():.2f}%** on {len(y_test)} images "
          "(±1.6 points at 95% for a single accuracy on 1,000 images). Train images: "
          f"{len(task.train.dataset)}; search epochs eg-nas {eg['search_epochs']}, DARTS {gr['search_epochs']} "
          "(matched search wall time).", "",
          "| model | val acc | test acc | params | MACs | ORT ms (median / p90) | search s (arch / weights) | H(final alpha) |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        name = "eg-nas (CMA-ES)" if r["run"] == "cmaes" else "DARTS 1st order"
        va = "-" if r["val_acc"] is None else f"{100 * r['val_acc']:.2f}%"
        md.append(f"| {name}, C={r['chosen']['C']} x {r['chosen']['layers']} cells | {va} | {100 * r['test_acc']:.2f}% | "
                  f"{r['params']:,} | {r['macs']:,} | {r['ort_latency_ms']:.3f} / {r['ort_latency_p90_ms']:.3f} | "
                  f"{r['search_wall_s']:.0f} ({r['search_arch_update_s']:.0f} / {r['search_weights_s']:.0f}) | "
                  f"{r['final_alpha_entropy']:.3f} |")
    for s in stock:
        md.append(f"| {s['model']} | - | {100 * s['test_acc']:.2f}% | {s['params']:,} | {s['macs']:,} | "
                  f"{s['ort_latency_ms']:.3f} / {s['ort_latency_p90_ms']:.3f} | - | - |")
    md += ["", f"Uniform alpha entropy is ln(7) = {math.log(7):.3f} nats per edge.", "", "Genotypes:", ""]
    for r in runs:
        md.append(f"- {r['run']}: `{r['genotype']}`")
    md += ["", "Paired comparisons on the same test images (McNemar exact p; bootstrap 95% CI of the difference in points):", "",
           "| a | b | a right only | b right only | McNemar p | diff (pts) | 95% CI |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in paired:
        md.append(f"| {p['a']} | {p['b']} | {p['a_only']} | {p['b_only']} | {p['p_value']:.3f} | {p['diff_pts']:+.1f} | "
                  f"[{p['ci95_low']:+.1f}, {p['ci95_high']:+.1f}] |")
    stem = "eg_nas_cifar_smoke" if args.smoke else "eg_nas_cifar"
    j, m = write_outputs(args.out, stem, payload, "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
