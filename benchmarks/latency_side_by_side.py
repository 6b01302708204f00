"""Re-measure the latency of several ONNX models side by side, interleaved, on one target.

    python benchmarks/latency_side_by_side.py --data ../shared/data --target cpu-1t \
        --onnx xi_star=benchmarks/results/gp_prune_resnet56_xi_star/student.onnx [name=path ...] \
        [--rounds 7] [--repeats 50] [--out benchmarks/results --stem latency_side_by_side]

Why: the benchmark scripts time each student when its run ends and the stock frontier at the end
of the script, minutes apart; on a shared machine the load changes in between. This script puts
every given model and the stock frontier (pretrained CIFAR ResNet-20/32/44/56 from ``--data``,
exported here) in one list and times them round-robin: each round measures every model once
(``--repeats`` calls after warm-up, median), in a shuffled order per round; the figure reported is
the median over rounds of the per-round medians, with the spread over rounds, and every model's
ratio to the first one given (``--reference`` to pick another). Writes ``<stem>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_outputs  # noqa: E402

from compress.api import library_versions  # noqa: E402
from compress.budgets import onnx_cost  # noqa: E402
from compress.exporters import export_onnx  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.profiling import Target, profile_latency  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the shared data folder (the pretrained CIFAR ResNets)")
    ap.add_argument("--onnx", nargs="+", default=[], metavar="NAME=PATH", help="models to time besides the frontier")
    ap.add_argument("--target", default="cpu-1t")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--reference", default=None, help="name whose latency is 1.0 (default: the first --onnx)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--stem", default="latency_side_by_side")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    target = Target.resolve(args.target, input_shape=(3, 32, 32))
    models: dict[str, Path] = {}
    for item in args.onnx:
        name, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            ap.error(f"--onnx wants NAME=PATH of an existing file, got {item!r}")
        models[name] = Path(path)
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp:
        for d in (20, 32, 44, 56):
            w = args.data / f"resnet{d}_cifar10.pt"
            if w.is_file():
                m = load_model(f"cifar:resnet{d}", num_classes=10, weights=w).eval()
                models[f"resnet{d} (pretrained)"] = export_onnx(m, torch.randn(2, 3, 32, 32), Path(tmp) / f"r{d}.onnx")
        rng = random.Random(args.seed)
        per_round: dict[str, list[float]] = {k: [] for k in models}
        names = list(models)
        for r in range(args.rounds):
            rng.shuffle(names)
            for name in names:
                per_round[name].append(profile_latency(models[name], target, warmup=10, repeats=args.repeats).median_ms)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        macs = {k: onnx_cost(p).macs for k, p in models.items()}
    ref = args.reference or (next(iter(args.onnx)).partition("=")[0] if args.onnx else "resnet56 (pretrained)")
    rows = []
    for name, vals in per_round.items():
        med = statistics.median(vals)
        rows.append({"model": name, "median_ms": med, "min_round_ms": min(vals), "max_round_ms": max(vals),
                     "rounds_ms": vals, "macs_onnx": macs[name]})
    ref_ms = next(r["median_ms"] for r in rows if r["model"] == ref)
    for r in rows:
        r["ratio_to_reference"] = r["median_ms"] / ref_ms
    payload = {"benchmark": "latency_side_by_side", "target": target.to_dict(), "rounds": args.rounds,
               "repeats": args.repeats, "reference": ref, "rows": rows, "versions": library_versions(),
               "machine": machine()}
    md = [f"# Latency side by side on `{target.name}` ({args.rounds} interleaved rounds x {args.repeats} calls)", "",
          "| model | median of round medians ms | range over rounds ms | ratio to " + ref + " | MACs (ONNX graph) |",
          "| --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: r["median_ms"]):
        md.append(f"| {r['model']} | {r['median_ms']:.3f} | {r['min_round_ms']:.3f} - {r['max_round_ms']:.3f} | "
                  f"{r['ratio_to_reference']:.2f} | {r['macs_onnx']:,} |")
    j, m = write_outputs(args.out, args.stem, payload, "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
