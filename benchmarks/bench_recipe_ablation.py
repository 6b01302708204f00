"""Short runs (issue 14): which of the recipe's additions matters, one at a time, on a validation split.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/bench_recipe_ablation.py [--data ../shared/data] \
        [--train-limit 5000] [--budget macs=0.5x] [--variants NAME=JSON ...] [--work DIR] [--out DIR]

The pretrained ResNet-56 is pruned to ``--budget`` by gp-prune with bench_frontier's recipe
(:data:`bench_frontier.ITERATIVE_RECIPE`, the session-13 recipe this ablation was run on: ξ*, global
allocation with a 0.8 cap, 3 iterative steps with one KD recovery epoch each, KD with label smoothing.
Its ``one-shot`` row won, so bench_frontier's default is one-shot now. The 1-epoch LR warm-up is off here by default,
``--warmup-epochs``: in a 1-epoch fine-tune it would end at the peak LR, measured at -14 points in
``recipe_ablation_short_warmup1.md``) and with each variant, which
changes the recipe's fields (the flat gp-prune keys bench_frontier uses). Every row trains the same
number of epochs (3 by default: the recipe's 2 recovery epochs + 1 fine-tune epoch; the defaults
re-balance a variant that drops or adds a phase so that the total stays), on the first
``--train-limit`` CIFAR-10 training images, 20% of them held out (stratified) as the validation
split. The test images are never read: this chooses a recipe.

Default variants, one addition removed (or, for sparse learning, added) at a time:

* ``uniform``: the paper's uniform allocation instead of global;
* ``one-shot``: one pruning step and 3 fine-tune epochs instead of 3 steps with recovery;
* ``sparse``: 1 epoch of sparse learning (DepGraph's group-norm regulariser) before 2 iterative
  steps (the recipe has none);
* ``no-smoothing``: no label smoothing;
* ``no-kd``: cross-entropy only (``kd_alpha=0``).

Per row: validation accuracy, McNemar's exact p and a bootstrap 95% CI of the difference against
the recipe on the same validation images, MACs, params, and the ORT ``cpu-1t`` latency of every
student and of the stock ResNet-20/32/44/56, timed side by side in one interleaved run at the end.
1,000 validation images give about +-3 points at 95% for one accuracy: a short run finds the
additions that matter a lot, never the ones that matter a little. Writes
``recipe_ablation_short.{json,md}`` (``--stem``); ``--resume`` keeps the rows already in the JSON (same settings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bootstrap_diff, machine, mcnemar, predictions, publish  # noqa: E402
from bench_frontier import ITERATIVE_RECIPE, total_epochs  # noqa: E402
from bench_latency_pruning import cpu_model, git_commit  # noqa: E402

from compress.api import compress  # noqa: E402
from compress.data import IMAGENET_MEAN, IMAGENET_STD, collect, load_npz_task  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.profiling import Target  # noqa: E402
from compress.profiling.latency_model import measure_interleaved  # noqa: E402

HERE = Path(__file__).resolve().parent
#: the recipe every variant changes one field of (its published rows were run on it)
BASE_RECIPE: dict[str, Any] = ITERATIVE_RECIPE
STEM = "recipe_ablation_short"
#: the recipe's fine-tune epochs in these short runs (its 2 recovery epochs come on top)
EPOCHS = 1
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "uniform": {"allocation": "uniform"},
    "one-shot": {"schedule": "one-shot", "epochs": 3},
    "sparse": {"sparse_epochs": 1, "iterative_steps": 2},
    "no-smoothing": {"label_smoothing": 0.0},
    "no-kd": {"kd_alpha": 0.0},
}


def parse_variants(items: list[str] | None) -> dict[str, dict[str, Any]]:
    if not items:
        return dict(DEFAULT_VARIANTS)
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            over = json.loads(text) if sep else None
        except json.JSONDecodeError:
            over = None
        if not name or not isinstance(over, dict):
            raise SystemExit(f"--variants takes NAME=JSON (a JSON object of gp-prune fields), got {item!r}")
        out[name] = over
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data")
    ap.add_argument("--train-limit", type=int, default=5000)
    ap.add_argument("--budget", default="macs=0.5x")
    ap.add_argument("--variants", nargs="*", default=None, metavar="NAME=JSON")
    ap.add_argument("--work", type=Path, default=Path("/tmp/slimforge_recipe_ablation"))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--note", default="")
    ap.add_argument("--warmup-epochs", type=int, default=0,
                    help="the recipe's LR warm-up here (default 0: a 1-epoch warm-up in a 1-epoch fine-tune ends at "
                         "the peak LR and never decays; the full runs warm up for 1 of 6 epochs)")
    ap.add_argument("--stem", default=STEM, help="output file stem in --out")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in the JSON (same settings)")
    args = ap.parse_args(argv)
    train = args.data / "cifar10_train50k_lossless.npz"
    if not train.is_file():
        ap.error(f"missing {train}; pass the shared data folder with --data")
    recipe = {**BASE_RECIPE, "epochs": EPOCHS, "warmup_epochs": args.warmup_epochs}
    rows_cfg = {"recipe": recipe, **{n: {**recipe, **o} for n, o in parse_variants(args.variants).items()}}
    from compress.registry import get_strategy

    for cfg in rows_cfg.values():
        get_strategy("gp-prune")(cfg)  # every row's config checked before any training (ConfigError)
    settings = {"train_limit": args.train_limit, "budget": args.budget, "recipe": recipe}
    done: dict[str, Any] = {}
    old = args.out / f"{args.stem}.json"
    if args.resume and old.is_file():
        prev = json.loads(old.read_text())
        if prev.get("settings") != settings:
            ap.error(f"{old} was run with other settings; run without --resume or choose another --out")
        done = {r["name"]: r for r in prev["rows"] if rows_cfg.get(r["name"]) == r["config"]}
    torch.set_num_threads(1)
    task = load_npz_task(train, test_path=args.data / "cifar10_test1k_lossless.npz", seed=0, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD, batch_size=128, val_fraction=0.2, limit=args.train_limit)
    x_val, y_val = collect(task.val)
    teacher = load_model("cifar:resnet56", num_classes=10, weights=args.data / "resnet56_cifar10.pt").eval()
    target = Target.preset("cpu-1t", input_shape=(3, 32, 32))
    rows, models = [], {}
    for name, cfg in rows_cfg.items():
        out_dir = args.work / name
        t0 = time.perf_counter()
        res = compress(teacher, args.budget, data=task, strategy="gp-prune", seed=0, target=target, config=cfg,
                       out_dir=out_dir, model_spec="cifar:resnet56", mobile=False, memory=False, progress=False,
                       allow_slower=True, latency_repeats=5, latency_warmup=1)
        models[name] = res.student.eval()
        if name in done:
            rows.append(done[name])
            continue
        correct = predictions(res.student, x_val) == y_val.numpy()
        rows.append({"name": name, "config": cfg, "total_epochs": total_epochs(cfg), "val_acc": float(correct.mean()),
                     "correct": correct.tolist(), "macs": int(res.student_report.cost.macs),
                     "params": int(res.student_report.cost.params), "wall_s": time.perf_counter() - t0,
                     "commit": git_commit()})
        print(name, {k: rows[-1][k] for k in ("val_acc", "macs", "total_epochs", "wall_s")}, flush=True)
    stock = {f"resnet{d}": load_model(f"cifar:resnet{d}", num_classes=10, weights=args.data / f"resnet{d}_cifar10.pt")
             .eval() for d in (20, 32, 44, 56)}
    timed = measure_interleaved([models[r["name"]] for r in rows] + list(stock.values()), target, x_val[:1],
                                rounds=10, repeats=30)
    for r, t in zip(rows, timed):
        r["latency_ms"] = t["median_ms"]
    stock_ms = {n: t["median_ms"] for n, t in zip(stock, timed[len(rows):])}
    base = np.asarray(rows[0]["correct"], dtype=bool)
    for r in rows[1:]:
        other = np.asarray(r["correct"], dtype=bool)
        r["vs_recipe"] = {**mcnemar(base, other), **bootstrap_diff(base, other)}
    n_val = len(x_val)
    md = [f"# gp-prune recipe ablation on short runs (ResNet-56, `{args.budget}`, CIFAR-10 validation)", "",
          f"Machine: {cpu_model()}; commit {git_commit()}. {len(task.train.dataset):,} training images, validation "
          f"{n_val:,} (stratified, from the training images; about ±{98 / n_val ** 0.5:.1f} points at 95% for one "
          "accuracy; never the test images). Every row trains the same total epochs. Latency: ORT `cpu-1t`, "
          "batch 1, every model side by side in one interleaved run (10 rounds x 30 calls, median)."
          + (f" {args.note}" if args.note else ""), "",
          f"Recipe: `{json.dumps(recipe)}`", "",
          "| row | changes | epochs | val acc | recipe − row (pts) | 95% CI | McNemar p | MACs | params | ORT ms | wall s |",
          "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        change = {k: v for k, v in r["config"].items() if recipe.get(k) != v}
        v = r.get("vs_recipe")
        cmp = (f"{v['diff_pts']:+.1f} | [{v['ci95_low']:+.1f}, {v['ci95_high']:+.1f}] | {v['p_value']:.3f}" if v
               else "- | - | -")
        md.append(f"| {r['name']} | `{json.dumps(change)}` | {r['total_epochs']} | {100 * r['val_acc']:.1f}% | {cmp} | "
                  f"{r['macs']:,} | {r['params']:,} | {r['latency_ms']:.3f} | {r['wall_s']:.0f} |")
    md += [f"| {n} (stock) | - | - | - | - | - | - | - | - | {ms:.3f} | - |" for n, ms in stock_ms.items()]
    payload = {"benchmark": "recipe_ablation_short", "settings": settings, "rows": rows, "stock_latency_ms": stock_ms,
               "val_images": n_val, "commit": git_commit(),
               "machine": {**machine(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads()}}
    return publish(args.out, args.stem, payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
