"""Benchmark: serial vs Ray (local instance, 2 CPUs) population evaluation, same seed, same answer.

    OMP_NUM_THREADS=1 python benchmarks/bench_executors.py [--out benchmarks/results] [--seed 0]
        [--generations 3] [--ray-cpus 2] [--smoke]

Two workloads, each run once with ``executor="serial"`` and once on a :class:`RayExecutor` (one Ray
task per candidate, 1 CPU each):

1. GP-metric evolution (GECCO'22), ``EvolveConfig.preset("cpu-small")``: population 8, a few
   generations; every new tree is retrained on the digits and synthetic-shapes pruning tasks
   (about a second each). The task baselines are pretrained and cached on disk before either
   timed run; each timed run loads them from that cache (serial: once; Ray: once per worker).
2. The eg-nas search (AAAI'24 Alg. 1), ``EGNASConfig.preset("cpu-small")`` search fields, on the
   bundled digits task: only the lambda = 8 CMA-ES candidates of each ``tell`` go to the executor;
   the weight training stays in the driver. Only the search phase runs (no sizing or retrain).

Wall times are measured around each run; the Ray instance is started and its workers warmed (a
trivial map) before, and that start-up time is reported separately. Writes ``executors.json`` and
``executors.md``: wall times, the ray/serial ratio, and whether the best individual / genotype
(and the whole fitness history / final alphas) are identical. The machine's load average is
recorded: other jobs share these cores.

``--smoke``: 1 generation and a 2-epoch search (checks that the script runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_outputs  # noqa: E402

import torch  # noqa: E402

from compress.data import load_digits_task  # noqa: E402
from compress.executors import Executor, RayExecutor, SerialExecutor  # noqa: E402
from compress.strategies.config_tree import config_from_dict  # noqa: E402
from compress.strategies.eg_nas import _PRESETS, EGNASConfig, EGNASSearch  # noqa: E402
from compress.evolution import fitness  # noqa: E402
from compress.evolution.config import EvolveConfig  # noqa: E402
from compress.evolution.evolve import evolve_metric  # noqa: E402
from compress.evolution.fitness import TaskFitness  # noqa: E402
from compress.testing.workers import slow_square  # noqa: E402


def _stable(history) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "wall_s"} for h in history]


def run_gp(ex: Executor, cfg: EvolveConfig, seed: int, cache: Path, out: Path) -> tuple[dict, object]:
    t0 = time.perf_counter()
    res = evolve_metric(cfg, out_dir=out, seed=seed, cache_dir=cache, executor=ex, resume=False)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "evaluations": res.evaluations, "best_expr": res.best_expr,
            "best_formula": res.best_formula, "best_fitness": res.best_fitness, "best_acc": list(res.best_acc),
            "generation_wall_s": [h["wall_s"] for h in res.history]}, res


def run_eg_nas(ex: Executor, cfg: EGNASConfig, seed: int) -> tuple[dict, object]:
    task = load_digits_task(seed=seed)
    t0 = time.perf_counter()
    search = EGNASSearch(cfg, task.train.dataset, task.val, task.spec.num_classes, tuple(task.spec.input_shape),
                         seed, executor=ex)
    out = search.run(resume=False)
    wall = time.perf_counter() - t0
    es = sum(h.get("wall_es_s", 0.0) for h in out.history)
    return {"wall_s": wall, "wall_es_s": es, "wall_weights_s": out.wall_weights_s,
            "es_evaluations": sum(h.get("es_evaluations", 0) for h in out.history),
            "genotype": out.genotype.to_dict(), "final_val_acc": out.history[-1].get("val_acc")}, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.generations = 1

    gp_cfg = EvolveConfig.preset("cpu-small", generations=args.generations)
    search_only = {k: _PRESETS["cpu-small"][k] for k in ("search", "es")}  # the preset's search; sizing/final unused
    if args.smoke:
        search_only["search"] = {**search_only["search"], "epochs": 2, "warmup_epochs": 1, "max_steps_per_epoch": 2}
    eg_cfg = config_from_dict(EGNASConfig, search_only)
    load_start = os.getloadavg()

    work = Path(tempfile.mkdtemp(prefix="bench-executors-"))
    cache = work / "cache"
    t0 = time.perf_counter()
    TaskFitness(gp_cfg.tasks, args.seed, str(cache), None, gp_cfg.class_reduction).prepare()
    baseline_s = time.perf_counter() - t0
    print(f"GP task baselines cached in {baseline_s:.1f} s", flush=True)
    # every timed run loads the cached baselines from disk itself: the serial run once, each Ray worker once
    fitness._PREPARED.clear()

    serial = SerialExecutor()
    gp_s, gp_s_res = run_gp(serial, gp_cfg, args.seed, cache, work / "gp_serial")
    print(f"GP serial: {gp_s['wall_s']:.1f} s", flush=True)
    eg_s, eg_s_res = run_eg_nas(serial, eg_cfg, args.seed)
    print(f"eg-nas serial: {eg_s['wall_s']:.1f} s", flush=True)

    ray_ex = RayExecutor(num_cpus=args.ray_cpus)
    t0 = time.perf_counter()
    ray_ex.map(slow_square, list(range(args.ray_cpus * 2)))  # start the instance and its workers
    ray_start_s = time.perf_counter() - t0
    try:
        gp_r, gp_r_res = run_gp(ray_ex, gp_cfg, args.seed, cache, work / "gp_ray")
        print(f"GP ray: {gp_r['wall_s']:.1f} s", flush=True)
        eg_r, eg_r_res = run_eg_nas(ray_ex, eg_cfg, args.seed)
        print(f"eg-nas ray: {eg_r['wall_s']:.1f} s", flush=True)
    finally:
        ray_ex.close()
    load_end = os.getloadavg()

    gp_same = {
        "best_individual": gp_r_res.best_expr == gp_s_res.best_expr and gp_r_res.best_fitness == gp_s_res.best_fitness,
        "fitness_history": _stable(gp_r_res.history) == _stable(gp_s_res.history),
        "hall_of_fame": gp_r_res.hall_of_fame == gp_s_res.hall_of_fame,
    }
    eg_same = {
        "genotype": eg_r_res.genotype == eg_s_res.genotype,
        "alphas": bool(torch.equal(eg_r_res.alphas_normal, eg_s_res.alphas_normal)
                       and torch.equal(eg_r_res.alphas_reduce, eg_s_res.alphas_reduce)),
        "best_fitness_history": [h.get("best_fitness") for h in eg_r_res.history]
        == [h.get("best_fitness") for h in eg_s_res.history],
    }
    payload = {
        "benchmark": "executors: serial vs ray",
        "command": "OMP_NUM_THREADS=1 python benchmarks/bench_executors.py" + (" --smoke" if args.smoke else ""),
        "seed": args.seed,
        "ray_cpus": args.ray_cpus,
        "ray_start_s": ray_start_s,
        "gp_baselines_s": baseline_s,
        "load_average_start": list(load_start),
        "load_average_end": list(load_end),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": machine(),
        "versions": _versions(),
        "gp": {"config": gp_cfg.to_dict(), "serial": gp_s, "ray": gp_r, "ratio_ray_over_serial":
               gp_r["wall_s"] / gp_s["wall_s"], "identical": gp_same},
        "eg_nas": {"config": search_only, "serial": eg_s, "ray": eg_r,
                   "ratio_ray_over_serial": eg_r["wall_s"] / eg_s["wall_s"],
                   "ratio_es_ray_over_serial": eg_r["wall_es_s"] / max(eg_s["wall_es_s"], 1e-9),
                   "identical": eg_same},
    }
    md = _markdown(payload)
    j, m = write_outputs(args.out, "executors" + ("_smoke" if args.smoke else ""), payload, md)
    print(md)
    print(f"wrote {j} and {m}")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    return {pkg: md.version(pkg) for pkg in ("slimforge", "torch", "numpy", "deap", "cma", "ray")}


def _markdown(p: dict) -> str:
    gp, eg = p["gp"], p["eg_nas"]
    yes = {True: "yes", False: "**no**"}
    lines = [
        "# Executors: serial vs Ray (local instance)",
        "",
        f"Command: `{p['command']}` (seed {p['seed']}). Ray: local instance with {p['ray_cpus']} CPUs, one task "
        f"per candidate (1 CPU each); start-up and worker warm-up {p['ray_start_s']:.1f} s, not included below. "
        f"Machine: {p['machine']['cpu_count']} cores shared with other jobs (load average "
        f"{p['load_average_start'][0]:.1f} at start, {p['load_average_end'][0]:.1f} at end).",
        "",
        "| workload | evaluations | serial wall (s) | ray wall (s) | ray / serial | same best | same history |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
        f"| GP metric evolution, cpu-small, {gp['config']['generations']} generations | {gp['serial']['evaluations']} "
        f"| {gp['serial']['wall_s']:.1f} | {gp['ray']['wall_s']:.1f} | {gp['ratio_ray_over_serial']:.2f} "
        f"| {yes[gp['identical']['best_individual']]} | {yes[gp['identical']['fitness_history']]} |",
        f"| eg-nas search, cpu-small ({eg['config']['search_epochs']} epochs) | {eg['serial']['es_evaluations']} "
        f"| {eg['serial']['wall_s']:.1f} | {eg['ray']['wall_s']:.1f} | {eg['ratio_ray_over_serial']:.2f} "
        f"| {yes[eg['identical']['genotype']]} (genotype) | {yes[eg['identical']['alphas']]} (final alphas) |",
        "",
        f"eg-nas ES part only (the part the executor runs): serial {eg['serial']['wall_es_s']:.1f} s, ray "
        f"{eg['ray']['wall_es_s']:.1f} s (ratio {eg['ratio_es_ray_over_serial']:.2f}); weight training (driver): "
        f"serial {eg['serial']['wall_weights_s']:.1f} s, ray {eg['ray']['wall_weights_s']:.1f} s.",
        "",
        f"GP best metric: `{gp['serial']['best_formula']}` (fitness {gp['serial']['best_fitness']:.4f}); "
        f"task baselines cached beforehand in {p['gp_baselines_s']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
