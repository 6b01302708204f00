"""Benchmark (issue 14, the latency goal): how far can channel pruning bring a ResNet-56's ORT latency down?

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/bench_depth_floor.py [--student DIR ...] \
        [--ratios 0,0.25,0.5,0.7,0.85] [--rounds 10] [--out benchmarks/results]

Channel pruning keeps every layer: a ResNet-56 pruned to ResNet-32's MACs still runs 55 convolutions
where ResNet-32 runs 31. At batch 1 on ``cpu-1t`` a small convolution costs a fixed overhead
(kernel dispatch, memory traffic) besides its MACs, so the depth sets a latency floor that no
channel count removes. This script measures that floor side by side in ONE interleaved run
(:func:`~compress.profiling.latency_model.measure_interleaved`):

* ResNet-56 with ``--ratios`` of the inner channels of every residual block removed (the channels a
  pruner frees without touching the shortcuts), random weights (latency does not depend on them);
* the stock depths ResNet-20/32/44/56 at full width;
* any saved student (``--student DIR``, a :func:`compress.serialization.save_student` folder such as
  a ``bench_frontier`` row).

Then a least-squares fit ``latency_ms = c0 + c_conv * convs + c_mac * MMACs`` over the pruned and
stock networks: ``c_conv`` is the per-convolution overhead, and ``c0 + c_conv * convs`` the latency
of a network of that depth with no MACs at all, the floor. Writes ``depth_floor.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_outputs  # noqa: E402
from bench_latency_pruning import cpu_model, git_commit  # noqa: E402

from compress.budgets import measure_cost  # noqa: E402
from compress.profiling import Target  # noqa: E402
from compress.profiling.latency_model import measure_interleaved  # noqa: E402


def convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def pruned_resnet56(ratio: float) -> nn.Module:
    """ResNet-56 (random weights) with ``ratio`` of the inner channels of every residual block
    removed (``conv1``'s outputs, ``bn1``, ``conv2``'s inputs: the channels a pruner frees
    without touching the shortcuts), rebuilt at those widths by
    :func:`compress.models.widths.apply_widths`."""
    from compress.models.cifar_resnet import cifar_resnet
    from compress.models.widths import apply_widths, describe_widths

    torch.manual_seed(0)
    model = cifar_resnet(56).eval()
    if ratio <= 0:
        return model
    widths = describe_widths(model)
    change: dict[str, dict[str, Any]] = {}
    for name, spec in widths.items():
        if name.startswith("layer") and name.endswith(".conv1"):
            block = name[: -len(".conv1")]
            keep = max(1, round(spec["out_channels"] * (1.0 - ratio)))
            change[name] = {**spec, "out_channels": keep}
            change[f"{block}.bn1"] = {**widths[f"{block}.bn1"], "num_features": keep}
            change[f"{block}.conv2"] = {**widths[f"{block}.conv2"], "in_channels": keep}
    apply_widths(model, change)
    model._init_weights()  # apply_widths leaves uninitialised tensors: the model's own (Kaiming) init,
    for m in model.modules():  # so that activations stay O(1) (no denormals) as in the stock rows
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    return model.eval()


def fit(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Least squares ``latency = c0 + c_conv * convs + c_mac * MMACs`` (ms)."""
    a = np.array([[1.0, r["convs"], r["macs"] / 1e6] for r in rows])
    y = np.array([r["latency_ms"] for r in rows])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    pred = a @ coef
    return {"c0_ms": float(coef[0]), "c_conv_ms": float(coef[1]), "c_mmac_ms": float(coef[2]),
            "max_abs_err_ms": float(np.max(np.abs(pred - y))), "points": len(rows)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", default="0,0.25,0.5,0.7,0.85")
    ap.add_argument("--student", type=Path, action="append", default=[], help="a saved student folder (repeatable)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--note", default="", help="load and provenance notes for the report")
    args = ap.parse_args(argv)
    from compress.models.cifar_resnet import cifar_resnet
    from compress.serialization import load_student

    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    if any(not 0 <= r < 1 for r in ratios):
        ap.error(f"--ratios must lie in [0, 1), got {args.ratios!r}")
    for s in args.student:
        if not (s / "student.arch.json").is_file():
            ap.error(f"{s} is not a saved student folder (no student.arch.json)")
    x = torch.zeros(1, 3, 32, 32)
    nets: list[tuple[str, str, nn.Module]] = [(f"resnet56 pruned {r:.2f}", "pruned", pruned_resnet56(r)) for r in ratios]
    nets += [(f"resnet{d} (stock depth)", "stock", cifar_resnet(d).eval()) for d in (20, 32, 44, 56)]
    nets += [(f"student {s.name} ({s.parent.name})", "student", load_student(s).eval()) for s in args.student]
    target = Target.preset("cpu-1t", input_shape=(3, 32, 32))
    t0 = time.perf_counter()
    timed = measure_interleaved([m for _, _, m in nets], target, x, rounds=args.rounds, repeats=args.repeats)
    seconds = time.perf_counter() - t0
    rows = []
    for (name, kind, m), t in zip(nets, timed):
        cost = measure_cost(m, torch.zeros(2, 3, 32, 32))
        rows.append({"name": name, "kind": kind, "convs": convs(m), "macs": int(cost.macs), "params": int(cost.params),
                     "latency_ms": t["median_ms"], "min_ms": t["min_ms"], "rounds_ms": t["rounds_ms"]})
    model = fit([r for r in rows if r["kind"] != "student"])
    for r in rows:
        r["floor_ms"] = model["c0_ms"] + model["c_conv_ms"] * r["convs"]
        r["predicted_ms"] = r["floor_ms"] + model["c_mmac_ms"] * r["macs"] / 1e6
    payload = {"benchmark": "depth_floor", "rows": rows, "fit": model, "rounds": args.rounds, "repeats": args.repeats,
               "timing_s": seconds, "commit": git_commit(), "note": args.note,
               "machine": {**machine(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads()}}
    md = ["# The depth floor of a channel-pruned ResNet-56 (ORT `cpu-1t`, batch 1)", "",
          f"Machine: {cpu_model()}; torch threads {torch.get_num_threads()}; commit {git_commit()}. Every network "
          f"timed side by side in one interleaved run ({args.rounds} rounds x {args.repeats} calls, {seconds:.0f} s): "
          "median of the per-round medians, and the fastest round. Pruned rows: the ratio of every residual "
          "block's inner channels removed (conv1 out, conv2 in), random weights." + (f" {args.note}" if args.note else ""), "",
          "| network | convs | MACs | params | ORT ms median | fastest round | fit: floor ms (no MACs) | fit ms |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['name']} | {r['convs']} | {r['macs']:,} | {r['params']:,} | {r['latency_ms']:.3f} | {r['min_ms']:.3f} | "
           f"{r['floor_ms']:.3f} | {r['predicted_ms']:.3f} |" for r in rows]
    md += ["", f"Fit over the {model['points']} pruned and stock networks: latency = {model['c0_ms']:.3f} ms + "
           f"{1000 * model['c_conv_ms']:.1f} us x convs + {1000 * model['c_mmac_ms']:.2f} us x MMACs "
           f"(largest error {model['max_abs_err_ms']:.3f} ms)."]
    j, m = write_outputs(args.out, "depth_floor", payload, "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
