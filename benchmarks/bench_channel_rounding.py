"""Benchmark: does a 50%-MACs student actually run faster? Channel rounding off / fixed / measured.

    python benchmarks/bench_channel_rounding.py [--model timm:resnet18] [--target cpu-1t] [--out benchmarks/results]

Prunes the model to ``macs=0.5x`` with gp-prune (L1 metric, no fine-tune: this is about speed,
not accuracy) three times: ``channel_rounding="off"`` (exact floor(C * (1 - r)) widths),
``"fixed"`` (multiples of 8) and ``"measured"`` (widths chosen from per-layer latencies measured
on the target). Teacher and students are timed with onnxruntime in the same run, side by side,
with many repeats, and the table reports

    efficiency = (1 - latency_student / latency_teacher) / (1 - macs_student / macs_teacher)

i.e. how much of the MACs reduction shows up as measured latency reduction (1.0 = all of it).
Input is 3x32x32 digits (the data only feeds the calibration pass).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_outputs  # noqa: E402

from compress.api import compress, library_versions  # noqa: E402
from compress.data import load_digits_task  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.profiling import Target, profile_latency  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="timm:resnet18")
    ap.add_argument("--target", default="cpu-1t")
    ap.add_argument("--budget", default="macs=0.5x")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)

    task = load_digits_task(seed=0)
    target = Target.resolve(args.target, input_shape=task.spec.input_shape)
    teacher = load_model(args.model, num_classes=10).eval()
    rows = []
    students = {}
    for mode, extra in (("off", {}), ("fixed", {"round_to": 8}), ("measured", {})):
        t0 = time.perf_counter()
        res = compress(teacher, args.budget, data=task, target=target, progress=False, mobile=False,
                       config={"metric": "l1", "epochs": 0, "channel_rounding": mode, **extra})
        students[mode] = res
        rows.append({"mode": mode, "macs": res.student_report.cost.macs, "params": res.student_report.cost.params,
                     "pruning_ratio": res.info["pruning_ratio"], "wall_s": time.perf_counter() - t0,
                     "groups": res.info["channel_rounding"]["groups"]})
    # time everything again, interleaved, in one run
    t_lat = profile_latency(students["off"].teacher_onnx_path, target, repeats=args.repeats)
    t_macs = students["off"].teacher.cost.macs
    for r in rows:
        lat = profile_latency(students[r["mode"]].onnx_path, target, repeats=args.repeats)
        r["latency_ms"], r["latency_p90_ms"] = lat.median_ms, lat.p90_ms
        r["macs_ratio"] = r["macs"] / t_macs
        r["latency_ratio"] = lat.median_ms / t_lat.median_ms
        r["efficiency"] = (1 - r["latency_ratio"]) / (1 - r["macs_ratio"])
    payload = {"benchmark": "channel_rounding", "model": args.model, "budget": args.budget, "target": target.to_dict(),
               "teacher": {"macs": t_macs, "latency_ms": t_lat.median_ms, "latency_p90_ms": t_lat.p90_ms},
               "rows": rows, "versions": library_versions(), "machine": machine()}
    md = [f"# Channel rounding on `{args.target}`: {args.model} pruned to `{args.budget}`", "",
          f"Teacher: {t_macs:,} MACs, ORT {t_lat.median_ms:.3f} ms (p90 {t_lat.p90_ms:.3f}).", "",
          "| rounding | MACs ratio | latency ms (p90) | latency ratio | latency cut / MACs cut |",
          "| --- | --- | --- | --- | --- |"]
    for r in rows:
        md.append(f"| {r['mode']} | {r['macs_ratio']:.3f} | {r['latency_ms']:.3f} ({r['latency_p90_ms']:.3f}) | "
                  f"{r['latency_ratio']:.3f} | {r['efficiency']:.2f} |")
    stem = f"channel_rounding_{args.model.replace(':', '_')}_{target.name}"
    j, m = write_outputs(args.out, stem, payload, "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
