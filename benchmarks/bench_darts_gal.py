"""Benchmark: darts-gal vs the unpruned DARTS stack vs CIFAR ResNet-20, all trained with KD, CIFAR-10.

    python benchmarks/bench_darts_gal.py --data ../shared/data [--out benchmarks/results] [--smoke]

1. Loads the shared CIFAR-10 subsets (10k train, 1k test; ImageNet mean/std as the teachers expect)
   and the pretrained KD teacher (default ResNet-56), and measures its test accuracy first.
2. Budget (one): the parameter count of a CIFAR ResNet-20 (0.27 M) unless ``--budget`` is given.
3. Runs, with the same train/val split, seed, KD (alpha 0.5, T 4), augmentation and **the same total
   training epochs** E = darts-gal's baseline epochs + its GAL passes over the data (generator steps x
   batch / images, rounded up) + its retrain epochs (the search is reported as wall time, not epochs):
   * ``darts-gal``   -- ``compress(..., strategy="darts-gal")``: DARTS search (first order) -> the
     stack sized to the budget -> KD baseline -> GAL node pruning -> KD retrain from scratch;
   * ``darts-stack`` -- the same sized stack (darts-gal's genotype, C and cells) without pruning,
     trained from scratch for E epochs (what the paper calls "DARTS");
   * ``kd-resnet20`` -- a freshly initialised CIFAR ResNet-20 trained for E epochs.
4. Stock frontier (pretrained ResNet-20/32/44/56 off the shelf), ORT latency at 1 thread, paired
   tests (McNemar exact, bootstrap 95% CI) on the same 1,000 test images (about +-1.6 points at 95%
   for a single accuracy).
5. Writes ``darts_gal_cifar.json`` and ``.md``: val/test accuracy, params, MACs, ORT latency, search
   wall time, the nodes-kept table (paper Table 3 format), the genotype drawing, and whether the
   paper's direction (fewer parameters at equal accuracy than the unpruned stack) holds here.

``--smoke`` runs the same code path on 512 training images with a tiny supernet and a few steps, to
check that everything starts (a few minutes; the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bootstrap_diff, frontier, machine, mcnemar, predictions, write_outputs  # noqa: E402

import compress.strategies.darts_gal  # noqa: E402,F401  (registers "darts-gal")
from compress.api import compress, library_versions  # noqa: E402
from compress.budgets import measure_cost  # noqa: E402
from compress.data import IMAGENET_MEAN, IMAGENET_STD, collect, load_npz_task  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.profiling import Target, profile_latency  # noqa: E402
from compress.strategies._parts.training import finetune  # noqa: E402
from compress.strategies.config_tree import config_from_dict  # noqa: E402
from compress.strategies.darts import Genotype, NetworkCIFAR  # noqa: E402
from compress.strategies.darts_gal import DartsGalConfig  # noqa: E402

# CPU-scale CIFAR setting (ALGORITHMS.md §3(c) scaled to 10k CIFAR images): first-order search of a
# C=8, 5-cell supernet at 16x16 (stride-2 stem), batches 32 (search) and 100 (GAL, paper), 5 critic
# steps per generator step; the evaluation networks run at full resolution. Measured here: the
# DARTS_V2 stack sized to ResNet-20's params is C=16 x 8 cells (246k params, 45M MACs), ~2.5 s per
# batch-128 SGD step at 1 thread, i.e. ~3 min per epoch on 9k images: about 3 h for all three runs
# (E = 25 epochs each). Override with --set key=value.
FULL = dict(
    search_C=8, search_layers=5, search_stem_stride=2, search_epochs=6, search_batch_size=32,
    search_lr=0.025, search_val_batches=4,
    candidates_C=(8, 10, 12, 14, 16, 20, 24), candidates_layers=(5, 8, 11), stem_strides=(1,),
    baseline_epochs=8, baseline_lr=0.01,
    gal_epochs=3, gal_batch_size=100, gal_max_g_steps_per_epoch=20, mask_step=2, mask_lr=0.05, sparse_lambda=0.1,
    final_epochs=15, final_lr=0.025, augment="flip-crop",
)
SMOKE = dict(
    search_C=4, search_layers=3, search_stem_stride=2, search_epochs=1, search_batch_size=32,
    search_max_steps_per_epoch=2, search_val_batches=1,
    candidates_C=(4, 8, 16), candidates_layers=(3, 5), stem_strides=(1, 2),
    baseline_epochs=1, baseline_max_steps_per_epoch=2,
    gal_epochs=1, gal_batch_size=32, gal_max_g_steps_per_epoch=2, mask_step=1, mask_lr=0.05, sparse_lambda=0.5,
    final_epochs=1, final_max_steps_per_epoch=2,
)


def _scalar(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            continue
    return {"true": True, "false": False, "none": None}.get(v.lower(), v)


def _parse_set(items: list[str]) -> dict:
    """``key=value`` overrides; ``a,b,c`` gives a tuple (ints or floats, e.g. lambda_sweep=0.1,0.3)."""
    out: dict = {}
    for item in items:
        k, _, v = item.partition("=")
        out[k] = tuple(_scalar(x) for x in v.split(",")) if "," in v else _scalar(v)
    return out


def _kd_train(name: str, student: torch.nn.Module, teacher, task, cfg: dict, epochs: int, args, target,
              x_test, y_test) -> dict:
    """KD training of a fresh network with darts-gal's retrain settings; cost, latency, predictions."""
    t0 = time.perf_counter()
    c = config_from_dict(DartsGalConfig, cfg)  # every field, defaults included (cfg may use the flat spelling)
    settings = c.final.settings(seed=args.seed, epochs=epochs)
    hist = finetune(student, task.train, task.val, settings, teacher=teacher)
    train_s = time.perf_counter() - t0
    student.eval()
    correct = predictions(student, x_test) == y_test.numpy()
    cost = measure_cost(student, x_test[:2])
    lat = profile_latency(student, target, example_inputs=x_test[:2], repeats=args.latency_repeats)
    row = {"run": name, "test_acc": float(correct.mean()), "val_acc": max((h["val_acc"] for h in hist), default=None),
           "macs": cost.macs, "params": cost.params, "ort_latency_ms": lat.median_ms, "ort_latency_p90_ms": lat.p90_ms,
           "epochs": epochs, "search_wall_s": None, "wall_s": {"train": train_s, "total": train_s},
           "correct": correct, "history": hist}
    print(f"{name}: test {100 * row['test_acc']:.2f}%  params {row['params']:,}  MACs {row['macs']:,}  "
          f"train {train_s:.0f} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the shared data folder (../shared/data)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--teacher", default="resnet56", help="KD teacher (a pretrained CIFAR ResNet in --data)")
    ap.add_argument("--budget", default=None, help="budget spec (default: params of cifar:resnet20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=None, help="stratified subset of the 10k train images")
    ap.add_argument("--set", nargs="*", default=[], help="darts-gal config overrides, e.g. final_epochs=30")
    ap.add_argument("--latency-repeats", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="tiny settings: check that everything starts")
    args = ap.parse_args(argv)
    if args.smoke:
        args.train_limit = args.train_limit or 512
        args.latency_repeats = 5
        args.out = args.out / "smoke"

    train = args.data / "cifar10_train10k_lossless.npz"
    test = args.data / "cifar10_test1k_lossless.npz"
    weights = args.data / f"{args.teacher}_cifar10.pt"
    for p in (train, test, weights):
        if not p.is_file():
            ap.error(f"missing {p}; pass the shared data folder with --data")
    task = load_npz_task(train, test_path=test, seed=args.seed, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         batch_size=64 if args.smoke else 128, val_fraction=0.1, limit=args.train_limit)
    x_test, y_test = collect(task.test)
    if args.smoke:
        x_test, y_test = x_test[:200], y_test[:200]
    target = Target.preset("cpu-1t", input_shape=task.spec.input_shape)
    teacher = load_model(f"cifar:{args.teacher}", num_classes=10, weights=weights).eval()
    t_correct = predictions(teacher, x_test) == y_test.numpy()
    print(f"teacher {args.teacher}: test accuracy {100 * t_correct.mean():.2f}% on {len(y_test)} images", flush=True)
    if args.budget is None:
        ref_params = measure_cost(load_model("cifar:resnet20", num_classes=10), x_test[:2]).params
        args.budget = f"params={ref_params}"
    print(f"budget {args.budget}", flush=True)

    cfg = {**(SMOKE if args.smoke else FULL), **_parse_set(args.set)}
    n_train = len(task.train.dataset)

    # ---- darts-gal
    t0 = time.perf_counter()
    res = compress(teacher, args.budget, data=task, strategy="darts-gal", seed=args.seed, target=target, config=cfg,
                   out_dir=args.out / "darts_gal_run", progress=not args.smoke,
                   latency_repeats=args.latency_repeats, latency_warmup=min(10, args.latency_repeats))
    info = res.info
    g_steps = info["gal"]["g_steps"]
    full = config_from_dict(DartsGalConfig, cfg)
    gal_passes = math.ceil(g_steps * full.gal.batch_size / max(n_train, 1))
    E = full.baseline.epochs + gal_passes + full.final.epochs
    correct = predictions(res.student, x_test) == y_test.numpy()
    dg = {
        "run": "darts-gal", "test_acc": float(correct.mean()), "val_acc": res.student_report.accuracy_val,
        "macs": res.student_report.cost.macs, "params": res.student_report.cost.params,
        "ort_latency_ms": res.student_report.latency.median_ms, "ort_latency_p90_ms": res.student_report.latency.p90_ms,
        "budget_ok": res.budget_check.ok, "onnx_parity_ok": res.validation.ok, "epochs": E,
        "search_wall_s": res.wall_s.get("search"), "wall_s": res.wall_s, "baseline": info["baseline"],
        "pruned": info["pruned"], "nodes_kept": info["nodes_kept"], "nodes_removed": info["nodes_removed"],
        "nodes_total": info["nodes_total"], "gal": info["gal"], "genotype": info["genotype"],
        "search_history": info["search_history"], "retrain_history": info["retrain_history"],
        "correct": correct, "elapsed_s": time.perf_counter() - t0,
    }
    print(f"darts-gal: test {100 * dg['test_acc']:.2f}%  params {dg['params']:,}  MACs {dg['macs']:,}  "
          f"nodes kept {dg['nodes_total'] - dg['nodes_removed']}/{dg['nodes_total']}  "
          f"(baseline {info['baseline']['params']:,} params)  search {dg['search_wall_s']:.0f} s  total E = {E}",
          flush=True)

    # ---- the unpruned stack (same genotype, C, cells) and ResNet-20, E epochs each
    b = info["baseline"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        stack = NetworkCIFAR(b["C"], 10, b["layers"], Genotype.from_dict(info["genotype"]),
                             stem_stride=b["stem_stride"]).train()
    runs = [dg]
    runs.append(_kd_train("darts-stack", stack, teacher, task, cfg, E, args, target, x_test, y_test))
    runs[-1]["search_wall_s"] = dg["search_wall_s"]  # same searched genotype
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        r20 = load_model("cifar:resnet20", num_classes=10).train()
    runs.append(_kd_train("kd-resnet20", r20, teacher, task, cfg, E, args, target, x_test, y_test))

    stock = frontier(args.data, x_test, y_test, target, depths=(20,) if args.smoke else (20, 32, 44, 56),
                     repeats=args.latency_repeats)
    paired = []
    for i, a in enumerate(runs):
        for o in runs[i + 1:]:
            paired.append({"a": a["run"], "b": o["run"], **mcnemar(a["correct"], o["correct"]),
                           **bootstrap_diff(a["correct"], o["correct"])})
        paired.append({"a": a["run"], "b": f"teacher {args.teacher}", **mcnemar(a["correct"], t_correct),
                       **bootstrap_diff(a["correct"], t_correct)})
        for s in stock:
            paired.append({"a": a["run"], "b": s["model"], **mcnemar(a["correct"], s["correct"]),
                           **bootstrap_diff(a["correct"], s["correct"])})

    vs = next(p for p in paired if p["a"] == "darts-gal" and p["b"] == "darts-stack")
    fewer = dg["params"] < runs[1]["params"]
    if not fewer:
        outcome = "does NOT hold (GAL removed nothing that lowers the parameter count)"
    elif vs["ci95_low"] > 0.0:
        outcome = "holds, and the pruned network is even significantly more accurate"
    elif vs["ci95_high"] < 0.0:
        outcome = "does NOT hold: the pruned network is significantly less accurate"
    else:
        outcome = "holds within what the test images resolve (the accuracy difference is not significant)"
    verdict = (f"darts-gal has {100 * (1 - dg['params'] / runs[1]['params']):.1f}% fewer params than the unpruned "
               f"stack ({dg['params']:,} vs {runs[1]['params']:,}) and {vs['diff_pts']:+.1f} points test accuracy "
               f"(95% CI [{vs['ci95_low']:+.1f}, {vs['ci95_high']:+.1f}], McNemar p {vs['p_value']:.3f}): the paper's "
               f"direction (fewer params at equal accuracy) {outcome}.")

    payload = {
        "benchmark": "darts_gal_cifar", "budget": args.budget, "teacher": args.teacher, "seed": args.seed,
        "smoke": args.smoke, "config": {k: v for k, v in cfg.items()}, "total_epochs": E, "gal_passes": gal_passes,
        "train_images": n_train, "test_images": int(len(y_test)), "teacher_test_acc": float(t_correct.mean()),
        "runs": runs, "frontier": stock, "paired": paired, "verdict": verdict,
        "versions": library_versions(), "machine": machine(),
    }
    md = [f"# darts-gal on CIFAR-10, KD teacher {args.teacher}, budget `{args.budget}`"
          + (" -- SMOKE RUN, numbers meaningless" if args.smoke else ""), "",
          f"Teacher test accuracy (measured first): **{100 * t_correct.mean():.2f}%** on {len(y_test)} images "
          "(+-1.6 points at 95% for a single accuracy on 1,000 images). "
          f"Train images {n_train}. Every run trains for E = {E} epochs in total (darts-gal: "
          f"{full.baseline.epochs} baseline + {gal_passes} GAL passes ({g_steps} generator steps) + "
          f"{full.final.epochs} retrain); the search is extra, reported as wall time.", "",
          "| model | val acc | test acc | params | MACs | ORT ms (median / p90) | search s | total s |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        va = "-" if r["val_acc"] is None else f"{100 * r['val_acc']:.2f}%"
        ss = "-" if r["search_wall_s"] is None else f"{r['search_wall_s']:.0f}"
        md.append(f"| {r['run']} | {va} | {100 * r['test_acc']:.2f}% | {r['params']:,} | {r['macs']:,} | "
                  f"{r['ort_latency_ms']:.3f} / {r['ort_latency_p90_ms']:.3f} | {ss} | "
                  f"{r['wall_s'].get('total', r.get('elapsed_s', 0.0)):.0f} |")
    for s in stock:
        md.append(f"| {s['model']} | - | {100 * s['test_acc']:.2f}% | {s['params']:,} | {s['macs']:,} | "
                  f"{s['ort_latency_ms']:.3f} / {s['ort_latency_p90_ms']:.3f} | - | - |")
    md += ["", f"**{verdict}**", "",
           f"Stack: C={b['C']}, {b['layers']} cells, stem stride {b['stem_stride']}; GAL lambda {info['gal']['lambda']}, "
           f"{info['gal']['g_steps']} generator / {info['gal']['d_steps']} discriminator steps; "
           f"generator accuracy after pruning, before the retrain: {info['pruned'].get('val_acc_before_retrain')}.", "",
           "Nodes kept per cell (paper Table 3 format):", "", info["nodes_kept_markdown"], "",
           "Searched genotype:", "", "```", info["genotype_drawing"], "```", "",
           "Paired comparisons on the same test images (McNemar exact p; bootstrap 95% CI of the difference in points):",
           "", "| a | b | a right only | b right only | McNemar p | diff (pts) | 95% CI |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in paired:
        md.append(f"| {p['a']} | {p['b']} | {p['a_only']} | {p['b_only']} | {p['p_value']:.3f} | {p['diff_pts']:+.1f} | "
                  f"[{p['ci95_low']:+.1f}, {p['ci95_high']:+.1f}] |")
    stem = "darts_gal_cifar_smoke" if args.smoke else "darts_gal_cifar"
    j, m = write_outputs(args.out, stem, payload, "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
