"""Short runs that choose gp-prune's ``prune.drop_blocks`` share for bench_frontier's recipe (issue 14).

    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/bench_drop_blocks.py [--data ../shared/data] \
        [--shares 0,0.3,0.5:uniform] [--train-limit 5000] [--epochs 1] [--budget macs=0.5x] [--work DIR] [--out DIR]

The pretrained ResNet-56 is pruned to ``--budget`` by gp-prune (ξ*, global allocation, max group
ratio 0.8, measured channel rounding, one-shot; ``SHARE:uniform`` in ``--shares`` allocates uniformly
instead, which keeps the widths regular) after removing the ``drop_blocks`` share of its
identity-shortcut blocks, then fine-tuned with KD for ``--epochs`` on the first ``--train-limit``
CIFAR-10 training images (20% of them held out, stratified, as the validation split). Reported per
share: the validation accuracy (never the test images: this chooses a recipe), MACs, convolutions,
and the ORT ``cpu-1t`` latency of every student and of the stock ResNet-20/32, timed side by side in
one interleaved run at the end. Writes ``<--stem>.{json,md}`` (default ``drop_blocks_short``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, publish  # noqa: E402
from bench_latency_pruning import cpu_model, git_commit  # noqa: E402

from compress.api import compress  # noqa: E402
from compress.data import IMAGENET_MEAN, IMAGENET_STD, collect, load_npz_task  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.profiling import Target  # noqa: E402
from compress.profiling.latency_model import measure_interleaved  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data")
    ap.add_argument("--shares", default="0,0.3,0.5")
    ap.add_argument("--train-limit", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--budget", default="macs=0.5x")
    ap.add_argument("--work", type=Path, default=Path("/tmp/slimforge_drop_blocks"))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--note", default="")
    ap.add_argument("--stem", default="drop_blocks_short", help="output file stem in --out")
    args = ap.parse_args(argv)
    shares = []
    for item in (s.strip() for s in args.shares.split(",") if s.strip()):
        share, _, alloc = item.partition(":")
        try:
            shares.append((float(share), alloc or "global"))
        except ValueError:
            ap.error(f"--shares takes SHARE[:global|uniform] items, got {item!r}")
        if shares[-1][1] not in ("global", "uniform"):
            ap.error(f"--shares: the allocation is global or uniform, got {item!r}")
    train = args.data / "cifar10_train50k_lossless.npz"
    if not train.is_file():
        ap.error(f"missing {train}; pass the shared data folder with --data")
    torch.set_num_threads(1)
    task = load_npz_task(train, test_path=args.data / "cifar10_test1k_lossless.npz", seed=0, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD, batch_size=128, val_fraction=0.2, limit=args.train_limit)
    teacher = load_model("cifar:resnet56", num_classes=10, weights=args.data / "resnet56_cifar10.pt").eval()
    target = Target.preset("cpu-1t", input_shape=(3, 32, 32))
    rows, models = [], []
    for s, alloc in shares:
        t0 = time.perf_counter()
        prune = {"allocation": alloc, "drop_blocks": s, **({"max_group_ratio": 0.8} if alloc == "global" else {})}
        cfg = {"importance": {"metric": "xi_star", "calib_samples": 512}, "prune": prune,
               "finetune": {"epochs": args.epochs, "lr": 0.02, "kd_alpha": 0.5, "kd_temperature": 4.0,
                            "label_smoothing": 0.1, "augment": "flip-crop"}}
        res = compress(teacher, args.budget, data=task, strategy="gp-prune", seed=0, target=target, config=cfg,
                       out_dir=args.work / f"share_{s}_{alloc}", model_spec="cifar:resnet56", mobile=False, memory=False,
                       progress=False, allow_slower=True, latency_repeats=5, latency_warmup=1)
        depth = res.info["recipe"].get("depth") or {}
        rows.append({"share": s, "allocation": alloc, "val_acc": res.student_report.accuracy_val, "macs": int(res.student_report.cost.macs),
                     "params": int(res.student_report.cost.params), "blocks_removed": len(depth.get("removed", [])),
                     "convs": sum(isinstance(m, torch.nn.Conv2d) for m in res.student.modules()),
                     "wall_s": time.perf_counter() - t0})
        models.append(res.student.eval())
        print(rows[-1], flush=True)
    stock = {d: load_model(f"cifar:resnet{d}", num_classes=10, weights=args.data / f"resnet{d}_cifar10.pt").eval()
             for d in (20, 32)}
    x = collect(task.test)[0][:1]
    timed = measure_interleaved(models + list(stock.values()), target, x, rounds=10, repeats=30)
    for r, t in zip(rows, timed):
        r["latency_ms"], r["latency_min_ms"] = t["median_ms"], t["min_ms"]
    stock_rows = [{"name": f"resnet{d} (stock)", "latency_ms": t["median_ms"], "latency_min_ms": t["min_ms"]}
                  for d, t in zip(stock, timed[len(rows):])]
    n_val = len(task.val.dataset)
    md = [f"# gp-prune `drop_blocks` on short runs (ResNet-56, `{args.budget}`, CIFAR-10 validation)", "",
          f"Machine: {cpu_model()}; commit {git_commit()}. {len(task.train.dataset):,} training images, validation "
          f"{n_val:,} (stratified, from the training images; at most ±{98 / n_val ** 0.5:.1f} points at 95% for one "
          f"accuracy), {args.epochs} KD fine-tune epoch(s). Latency: ORT `cpu-1t`, batch 1, every model side by side "
          "in one interleaved run (10 rounds x 30 calls): median of the per-round medians and the fastest round."
          + (f" {args.note}" if args.note else ""), "",
          "| drop_blocks | allocation | blocks removed | convs | MACs | params | val acc | ORT ms median | fastest round | wall s |",
          "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['share']} | {r['allocation']} | {r['blocks_removed']} | {r['convs']} | {r['macs']:,} | {r['params']:,} | "
           f"{100 * r['val_acc']:.1f}% | {r['latency_ms']:.3f} | {r['latency_min_ms']:.3f} | {r['wall_s']:.0f} |"
           for r in rows]
    md += [f"| {s['name']} | - | - | - | - | - | - | {s['latency_ms']:.3f} | {s['latency_min_ms']:.3f} | - |" for s in stock_rows]
    payload = {"benchmark": "drop_blocks_short", "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
               "stock": stock_rows, "commit": git_commit(),
               "machine": {**machine(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads()}}
    return publish(args.out, args.stem, payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
