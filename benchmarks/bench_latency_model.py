"""Benchmark: is the latency model good enough to steer a search?

    OMP_NUM_THREADS=1 python benchmarks/bench_latency_model.py \
        [--models timm:resnet18,cifar:resnet56] [--target cpu-1t] [--rounds 20] [--repeats 30]

For every architecture (random weights: latency does not depend on their values; BatchNorm
statistics drawn like a trained network's, because an untrained BN folds into an all-zero conv
bias, which the exporter drops and which then keeps onnxruntime from fusing the residual Add into
the conv), builds a pool of pruned variants with Torch-Pruning L1 at exact widths:

* ``uniform``: one ratio for every prunable group, 0.0 to 0.8 in steps of 0.05 (odd channel
  counts at most ratios; every width a multiple of 16 at some, e.g. ResNet-18 at 0.5 and 0.75);
* ``random``: a seeded random ratio in [0.1, 0.85] per group (non-uniform, odd widths);
* ``random-a16`` / ``random-a8``: the same, widths rounded to multiples of 16 / 8 (aligned to the
  NCHWc block of AVX-512 / AVX2 CPUs).

All variants are timed end to end together, round-robin (``measure_interleaved``), so load drift
on a shared machine cannot favour calibration over held-out networks. The model
(:class:`_latency_model_fit.LatencyModel`, ``benchmarks/_latency_model_fit.py``) is calibrated on the uniform variants at
ratios 0.0, 0.1, ..., 0.8 of every architecture and evaluated on all the others (odd uniform
ratios and every random variant). Reported: each held-out variant, and the distribution of the
absolute relative error (target: within 15%), against the median of the per-round medians (the
figure ``profile_latency`` reports) and against their minimum (the least disturbed by other jobs).
Also: a cross-architecture check (calibrated on one architecture, evaluated on the other's
held-out variants) and the model's cost per prediction.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_outputs  # noqa: E402
from _latency_model_fit import LatencyModel, error_summary  # noqa: E402

from compress.api import library_versions  # noqa: E402
from compress.models import load_model, pad_shortcuts_to_conv  # noqa: E402
from compress.profiling import Target  # noqa: E402
from compress.profiling.latency_model import LayerLatencyTable, measure_interleaved  # noqa: E402
from compress.strategies._parts.channel_rounding import _prunable_groups  # noqa: E402
from compress.strategies.gp_prune.strategy import MagnitudeBaseline, find_classifier, prune_uniform  # noqa: E402

CALIBRATION_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def random_planner(seed: int, align: int | None, x: torch.Tensor):
    """Width plan: a seeded random kept fraction per prunable group, optionally rounded to ``align``."""
    def planner(cand, _ratio, ignored):
        rng = random.Random(seed)
        plan = {}
        for _, root, c, _k in _prunable_groups(cand, x, 0.5, ignored):
            keep = max(1, int(c * (1 - rng.uniform(0.1, 0.85))))
            if align:
                keep = min(c, max(align, round(keep / align) * align))
            plan[root] = keep
        return plan
    return planner


def variants(arch: str, x: torch.Tensor) -> list[tuple[dict[str, Any], torch.nn.Module]]:
    torch.manual_seed(0)
    model = load_model(arch, num_classes=10).eval()
    model = pad_shortcuts_to_conv(model) if arch.startswith("cifar:") else model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # BN statistics of a trained net: its folded conv biases are not all zero
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            c = bn.num_features
            bn.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
            bn.bias.copy_(0.1 * torch.randn(c, generator=g))
    cls = find_classifier(model, 10)
    cls_name = next(n for n, m in model.named_modules() if m is cls)
    out = []
    for r in np.round(np.arange(0.0, 0.801, 0.05), 2):
        out.append(({"arch": arch, "kind": "uniform", "ratio": float(r)},
                    prune_uniform(model, float(r), MagnitudeBaseline(), x, cls_name)))
    for kind, align, seeds in (("random", None, range(8)), ("random-a16", 16, range(6)), ("random-a8", 8, range(4))):
        for s in seeds:
            out.append(({"arch": arch, "kind": kind, "seed": s},
                        prune_uniform(model, 0.5, MagnitudeBaseline(), x, cls_name, width_planner=random_planner(s, align, x))))
    for info, m in out:
        convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
        info["conv_widths"] = [c.out_channels for c in convs]
        info["aligned16"] = all(c.out_channels % 16 == 0 for c in convs)
        info["params"] = sum(p.numel() for p in m.parameters())
    return out


def name(info: dict[str, Any]) -> str:
    tail = f"r={info['ratio']:.2f}" if info["kind"] == "uniform" else f"seed {info['seed']}"
    return f"{info['arch']} {info['kind']} {tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="timm:resnet18,cifar:resnet56")
    ap.add_argument("--target", default="cpu-1t")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--table-repeats", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)

    x = torch.randn(2, 3, 32, 32)
    target = Target.resolve(args.target, input_shape=(3, 32, 32))
    archs = args.models.split(",")
    pool: list[tuple[dict[str, Any], torch.nn.Module]] = []
    for arch in archs:
        pool += variants(arch, x)
    print(f"{len(pool)} variants; timing them interleaved ({args.rounds} rounds x {args.repeats} calls)", flush=True)
    meas = measure_interleaved([m for _, m in pool], target, x, rounds=args.rounds, repeats=args.repeats)
    table = LayerLatencyTable(target, repeats=args.table_repeats, warmup=5)
    lm = LatencyModel(table)
    t0 = time.perf_counter()
    feats = lm.features_many([m for _, m in pool], x)  # times every node new to the table, round-robin
    table.save()
    fill_s = time.perf_counter() - t0
    predict_s = []
    for _, m in pool:
        t0 = time.perf_counter()
        lm.features(m, x)  # table warm: the cost a search pays per candidate
        predict_s.append(time.perf_counter() - t0)

    cal = [i for i, (info, _) in enumerate(pool) if info["kind"] == "uniform" and info["ratio"] in CALIBRATION_RATIOS]
    held = [i for i in range(len(pool)) if i not in cal]
    results: dict[str, Any] = {}
    for stat in ("median_ms", "min_ms"):
        y = [r[stat] for r in meas]
        a, mm, b, knot = LatencyModel.fit([feats[i] for i in cal], [y[i] for i in cal])
        fitted = LatencyModel(table, a, mm, b, knot, len(cal), max(feats[i].touched_weight_mb for i in cal))
        rows = []
        for i in held:
            pred = fitted.predict_features(feats[i])
            rows.append({**pool[i][0], "predicted_ms": pred, "measured_ms": y[i], "rel_error": (pred - y[i]) / y[i],
                         "node_sum_ms": feats[i].node_sum_ms, "touched_weight_mb": feats[i].touched_weight_mb,
                         "n_nodes": feats[i].n_nodes, "per_op_ms": feats[i].per_op_ms,
                         "rounds_ms": meas[i]["rounds_ms"]})
        cal_err = [(fitted.predict_features(feats[i]) - y[i]) / y[i] for i in cal]
        per_arch = {arch: error_summary([r["rel_error"] for r in rows if r["arch"] == arch]) for arch in archs}
        per_kind = {k: error_summary([r["rel_error"] for r in rows if r["kind"] == k])
                    for k in ("uniform", "random", "random-a16", "random-a8") if any(r["kind"] == k for r in rows)}
        cross = {}
        for src in archs:
            c_idx = [i for i in cal if pool[i][0]["arch"] == src]
            ca, cm, cb, ck = LatencyModel.fit([feats[i] for i in c_idx], [y[i] for i in c_idx])
            cm_model = LatencyModel(table, ca, cm, cb, ck, len(c_idx), max(feats[i].touched_weight_mb for i in c_idx))
            for dst in archs:
                if dst != src and any(pool[i][0]["arch"] == dst for i in held):
                    errs = [(cm_model.predict_features(feats[i]) - y[i]) / y[i] for i in held if pool[i][0]["arch"] == dst]
                    cross[f"{src} -> {dst}"] = {"fit": cm_model.to_dict(), "abs_rel_error": error_summary(errs)}
        results[stat] = {"fit": fitted.to_dict(), "heldout": rows, "abs_rel_error": error_summary([r["rel_error"] for r in rows]),
                         "calibration_abs_rel_error": error_summary(cal_err), "per_arch": per_arch, "per_kind": per_kind,
                         "cross_arch": cross}

    calibration = [{**pool[i][0], "measured_median_ms": meas[i]["median_ms"], "measured_min_ms": meas[i]["min_ms"],
                    "node_sum_ms": feats[i].node_sum_ms, "touched_weight_mb": feats[i].touched_weight_mb} for i in cal]
    payload = {"benchmark": "latency_model", "models": archs, "target": target.to_dict(),
               "calibration_ratios": list(CALIBRATION_RATIOS), "calibration": calibration,
               "rounds": args.rounds, "repeats": args.repeats, "table_repeats": args.table_repeats,
               "predict_s_per_network": {"median": float(np.median(predict_s)), "max": float(np.max(predict_s))},
               "table_fill_s": fill_s,
               "results": results, "table_entries": len(table.entries), "table": str(table.path),
               "versions": library_versions(), "machine": machine()}

    def dist(e: dict[str, float]) -> str:
        return (f"median {100 * e['median']:.1f}%, p90 {100 * e['p90']:.1f}%, max {100 * e['max']:.1f}%, "
                f"{100 * e['within']:.0f}% within 15% (n={e['n']})")

    main_res = results["median_ms"]
    f = main_res["fit"]
    md = [f"# Latency model on `{args.target}`: {', '.join(archs)} at 3x32x32", "",
          f"{len(pool)} pruned variants, timed end to end together ({args.rounds} interleaved rounds x {args.repeats} calls, "
          f"median of the round medians). Calibrated on the {len(cal)} uniform variants at ratios "
          f"{', '.join(f'{r:.1f}' for r in CALIBRATION_RATIOS)} of each architecture; evaluated on the other {len(held)}.", "",
          f"Fit: predicted = {f['a']:.3f} x sum(node latencies) + {f['m']:.4f} x max(0, weight MB read - {f['cache_mb']:.0f}) "
          f"+ {f['b']:.4f} ms.", "",
          f"**Held-out |error|: {dist(main_res['abs_rel_error'])}.**", "",
          f"Calibration |error|: {dist(main_res['calibration_abs_rel_error'])}.", ""]
    md += ["| subset | distribution |", "| --- | --- |"]
    for k, e in {**main_res["per_arch"], **main_res["per_kind"]}.items():
        md.append(f"| {k} | {dist(e)} |")
    alt = results["min_ms"]
    md += ["", f"Against the minimum of the round medians (least disturbed by the other jobs on this machine; "
               f"refitted on it): {dist(alt['abs_rel_error'])}.", ""]
    for k, v in main_res["cross_arch"].items():
        md.append(f"Cross-architecture, calibrated on {k.split(' -> ')[0]} only, held-out {k.split(' -> ')[1]}: "
                  f"{dist(v['abs_rel_error'])}.")
    md += ["", f"Cost of a prediction with a warm table (export + onnxruntime graph optimisation + lookups): "
               f"median {np.median(predict_s):.2f} s per network.", "",
           "| held-out variant | aligned to 16 | nodes | weight MB read | predicted ms | measured ms | error |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(main_res["heldout"], key=lambda r: -abs(r["rel_error"])):
        md.append(f"| {name(r)} | {'yes' if r['aligned16'] else 'no'} | {r['n_nodes']} | {r['touched_weight_mb']:.1f} | "
                  f"{r['predicted_ms']:.3f} | {r['measured_ms']:.3f} | {100 * r['rel_error']:+.1f}% |")
    stem = f"latency_model_{'+'.join(a.replace(':', '_') for a in archs)}_{target.name}"
    j, m = write_outputs(args.out, stem, payload, "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
