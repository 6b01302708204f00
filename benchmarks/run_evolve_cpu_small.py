"""Benchmark: one run of the ``cpu-small`` evolution preset (GECCO'22 Sec. 3-4 at CPU scale).

    python benchmarks/run_evolve_cpu_small.py --out /tmp/evolve_run [--seed 0] [--workers 1] [--resume]

Runs ``evolve_metric(EvolveConfig.preset("cpu-small"))``: population 8 (4 SOAP + 4 random),
3 generations after generation 0, disjoint tournaments of 4 selecting 2, 5 children, 1 fresh
slot; fitness = sqrt(acc_A * acc_B) on LeNet-5 / digits (about 94 % of the MACs removed in 3
steps) and a 4-conv VGG / synthetic shapes (40 % of the channels in 2 steps). The task
baselines are pretrained once and cached (``$SLIMFORGE_CACHE/gp_evolve``).

Writes ``<out>/evolve_cpu_small.json`` and ``.md`` (wall time, baselines, per-generation
best / 25th percentile / mean, every SOAP clone's generation-0 fitness, hall of fame) next to
the run's own files (checkpoint, fitness.json/png, best_metric.json, result.json), and checks
two facts, printed and stored:

1. the best fitness of the last generation is >= the best SOAP fitness of generation 0;
2. the best-so-far curve never goes down.

Exit code 1 if either fails. Accuracies are on held-out splits of a few hundred images
(digits: 360, shapes: 480), i.e. about +-2-3 points at 95 % confidence per task.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_outputs  # noqa: E402

from compress.evolution.config import EvolveConfig  # noqa: E402
from compress.evolution.evolve import evolve_metric, process_map  # noqa: E402
from compress.evolution.metrics import METRICS  # noqa: E402


def _progress(phase: str, done: int, total: int, info: dict) -> None:
    if phase == "evaluate":
        err = f"  FAILED {info['error'][:80]}" if info.get("error") else ""
        acc = ", ".join(f"{a:.3f}" for a in info.get("acc", []))
        print(f"  gen {info['generation']} eval {done}/{total}: fitness {info['fitness']:.4f} (acc {acc}) "
              f"{info['expr'][:90]}{err}", flush=True)
    elif phase == "generation":
        print(f"generation {done}/{total}: best {info['best']:.4f}, best so far {info['best_so_far']:.4f}, "
              f"p25 {info['p25']:.4f}, new evaluations {info['evaluations']}", flush=True)
    elif phase == "baseline":
        print(f"baseline {info.get('task')}: {'pretraining' if done == 0 else 'done'} {info}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="run directory (checkpoint, curves, report)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="processes for fitness evaluation (1: serial)")
    ap.add_argument("--generations", type=int, default=None, help="override the preset's generations")
    ap.add_argument("--resume", action="store_true", help="continue a killed run in --out (default: start over)")
    args = ap.parse_args(argv)

    overrides = {} if args.generations is None else {"generations": args.generations}
    config = EvolveConfig.preset("cpu-small", **overrides)
    t0 = time.perf_counter()
    if args.workers > 1:
        with process_map(args.workers) as pm:
            res = evolve_metric(config, out_dir=args.out, seed=args.seed, map_fn=pm, progress=_progress,
                                resume=args.resume)
    else:
        res = evolve_metric(config, out_dir=args.out, seed=args.seed, progress=_progress, resume=args.resume)
    wall = time.perf_counter() - t0

    hist = res.history
    so_far = [h["best_so_far"] for h in hist]
    check_soap = hist[-1]["best"] >= (res.soap_best_gen0 or 0.0)
    check_mono = all(b >= a for a, b in zip(so_far, so_far[1:]))
    soap_names = {v: k for k, v in METRICS.items()}
    cache = json.loads((args.out / "checkpoint.json").read_text())["cache"]
    soap_gen0 = [
        {"metric": soap_names.get(e, e), "fitness": f, "acc": cache[e]["acc"]}
        for e, f, o in zip(hist[0]["exprs"], hist[0]["fitnesses"], hist[0]["origins"])
        if o == "soap"
    ]
    evals = list(cache.values())
    payload = {
        "benchmark": "evolve-metric cpu-small",
        "config": res.config,
        "seed": res.seed,
        "wall_s_this_call": wall,
        "wall_s_run": res.wall_s,
        "resumed_from": res.resumed_from,
        "baselines": list(res.baselines),
        "evaluations": res.evaluations,
        "failed_evaluations": sum(1 for c in evals if c.get("error")),
        "mean_eval_s": sum(c["wall_s"] for c in evals) / max(1, len(evals)),
        "history": [{k: h[k] for k in ("generation", "best", "best_so_far", "p25", "mean", "evaluations",
                                        "cache_hits", "failed", "repairs", "fallbacks", "best_expr", "wall_s")}
                    for h in hist],
        "soap_gen0": soap_gen0,
        "soap_best_gen0": res.soap_best_gen0,
        "best": {"expr": res.best_expr, "formula": res.best_formula, "fitness": res.best_fitness,
                 "acc": list(res.best_acc)},
        "hall_of_fame": list(res.hall_of_fame)[:5],
        "checks": {"last_gen_best_ge_soap_gen0_best": check_soap, "best_so_far_monotone": check_mono},
        "machine": machine(),
        "paths": res.paths,
    }
    md = [
        "# evolve-metric, preset cpu-small",
        "",
        f"Wall time {wall:.1f} s this call ({res.wall_s:.1f} s for the run), seed {res.seed}, "
        f"{res.evaluations} fitness evaluations ({payload['failed_evaluations']} failed, mean "
        f"{payload['mean_eval_s']:.2f} s each), workers {args.workers}.",
        "",
        "Baselines (pretrained once, cached):",
        "",
        "| task | baseline val acc | baseline held-out acc | MACs before | MACs after pruning | widths after | cached |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b in res.baselines:
        md.append(f"| {b['task']} | {b['baseline_val_acc']:.4f} | {b['baseline_fit_acc']:.4f} | {b['macs_before']:,} | "
                  f"{b['macs_after']:,} ({100 * (1 - b['macs_after'] / b['macs_before']):.1f} % removed) | "
                  f"{b['widths_after']} | {b.get('cached')} |")
    md += ["", "| generation | best | best so far | 25th pct | mean | new evaluations | failed | wall s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for h in hist:
        md.append(f"| {h['generation']} | {h['best']:.4f} | {h['best_so_far']:.4f} | {h['p25']:.4f} | {h['mean']:.4f} | "
                  f"{h['evaluations']} | {h['failed']} | {h['wall_s']:.1f} |")
    md += ["", "SOAP clones in generation 0:", "", "| metric | fitness | acc A | acc B |", "| --- | --- | --- | --- |"]
    for r in soap_gen0:
        md.append(f"| {r['metric']} | {r['fitness']:.4f} | {r['acc'][0]:.4f} | {r['acc'][1]:.4f} |")
    md += ["", f"Best: fitness {res.best_fitness:.4f} (acc {', '.join(f'{a:.4f}' for a in res.best_acc)})", "",
           f"    {res.best_formula}", "", f"tree: `{res.best_expr}`", "",
           f"- last-generation best {hist[-1]['best']:.4f} >= best SOAP of generation 0 "
           f"{(res.soap_best_gen0 or 0):.4f}: **{check_soap}**",
           f"- best-so-far never decreases {['%.4f' % s for s in so_far]}: **{check_mono}**", ""]
    j, m = write_outputs(args.out, "evolve_cpu_small", payload, "\n".join(md))
    print(f"last-generation best {hist[-1]['best']:.4f} >= best SOAP fitness of generation 0 "
          f"{(res.soap_best_gen0 or 0):.4f}: {check_soap}")
    print(f"best-so-far never decreases ({', '.join(f'{s:.4f}' for s in so_far)}): {check_mono}")
    print(f"best metric: {res.best_formula}\nwall time {wall:.1f} s; wrote {j} and {m}")
    return 0 if (check_soap and check_mono) else 1


if __name__ == "__main__":
    raise SystemExit(main())
