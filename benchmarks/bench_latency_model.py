"""Benchmark: is the per-layer latency model good enough to steer a search?

    python benchmarks/bench_latency_model.py [--model timm:resnet18] [--target cpu-1t]

Builds pruned variants of the model at uniform channel ratios (Torch-Pruning L1, exact widths,
so many odd channel counts), calibrates :class:`compress.profiling.latency_model.LatencyModel`
(``a * sum(layer table) + b``) on three of them, and compares its prediction with an end-to-end
onnxruntime measurement on the held-out rest. Reports every variant and the distribution of the
absolute relative error (target: within 15%).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_outputs  # noqa: E402

from compress.api import library_versions  # noqa: E402
from compress.models import load_model, pad_shortcuts_to_conv  # noqa: E402
from compress.profiling import Target  # noqa: E402
from compress.profiling.latency_model import LatencyModel, LayerLatencyTable  # noqa: E402
from compress.strategies.gp_prune.strategy import MagnitudeBaseline, find_classifier, prune_uniform  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="timm:resnet18")
    ap.add_argument("--target", default="cpu-1t")
    ap.add_argument("--calibrate", default="0.0,0.25,0.5,0.6,0.7")
    ap.add_argument("--heldout", default="0.1,0.2,0.3,0.35,0.4,0.45,0.55,0.65,0.75")
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model = load_model(args.model, num_classes=10).eval()
    model = pad_shortcuts_to_conv(model) if args.model.startswith("cifar:") else model
    x = torch.randn(2, 3, 32, 32)
    cls = find_classifier(model, 10)
    cls_name = next(n for n, m in model.named_modules() if m is cls)
    target = Target.resolve(args.target, input_shape=(3, 32, 32))

    def variant(r: float) -> torch.nn.Module:
        return prune_uniform(model, r, MagnitudeBaseline(), x, cls_name)

    lm = LatencyModel(LayerLatencyTable(target))
    cal = [float(v) for v in args.calibrate.split(",")]
    held = [float(v) for v in args.heldout.split(",")]
    lm.calibrate([variant(r) for r in cal], x, repeats=args.repeats)
    ev = lm.evaluate([variant(r) for r in held], x, repeats=args.repeats)
    for r, row in zip(held, ev["rows"]):
        row["ratio"] = r
    payload = {"benchmark": "latency_model", "model": args.model, "target": target.to_dict(), "calibrated_on": cal,
               **lm.to_dict(), "heldout": ev["rows"], "abs_rel_error": ev["abs_rel_error"],
               "table_entries": len(lm.table.entries), "versions": library_versions(), "machine": machine()}
    md = [f"# Latency model on `{args.target}`: {args.model}, calibrated on ratios {cal}", "",
          f"Fit: predicted = {lm.a_blocked:.3f} x sum(blocked convs, block {lm.block}) + {lm.a_plain:.3f} x "
          f"sum(other layers) + {lm.b:.3f} ms.", "",
          "| held-out ratio | predicted ms | measured ms | error |", "| --- | --- | --- | --- |"]
    for row in ev["rows"]:
        md.append(f"| {row['ratio']:.2f} | {row['predicted_ms']:.3f} | {row['measured_ms']:.3f} | {100 * row['rel_error']:+.1f}% |")
    e = ev["abs_rel_error"]
    md += ["", f"|error|: median {100 * e['median']:.1f}%, p90 {100 * e['p90']:.1f}%, max {100 * e['max']:.1f}% "
               f"over {len(held)} held-out variants."]
    j, m = write_outputs(args.out, f"latency_model_{args.model.replace(':', '_')}_{target.name}", payload, "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
