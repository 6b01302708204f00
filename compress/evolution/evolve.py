"""Evolving pruning metrics with genetic programming (DEAP), GECCO'22 Sec. 3.2-3.4 and Sec. 4.

Source: Liu et al., "Evolving Transferable Neural Pruning Functions", GECCO'22 (paper 001),
and ``docs/algorithms/gp-prune.md``. The individuals are expression trees over the untyped
``deap.gp`` set :data:`~compress.evolution.primitives.PSET`; their fitness is the
weighted geometric mean (Eq. 2, alpha = 0.5) of the retrained accuracies on two pruning tasks
(:mod:`~compress.evolution.fitness`).

Loop (docs/algorithms/gp-prune.md, the algorithm; every number is an :class:`EvolveConfig` field)::

    pop <- init_soap SOAP clones + (population - init_soap) random valid trees; evaluate all
    for g in 1..generations:
        parents  <- n_select winners of tournaments of size tournament_size
                    ("disjoint": the reference's my_TourSel, every individual in at most one
                     tournament; "deap": tools.selTournament, sampling with replacement)
        children <- n_reproduce copies of random parents, fitness cleared
        one-point crossover on adjacent pairs (p = cx_prob), uniform subtree mutation with
        genFull(mut_min_height, mut_max_height) (p = mut_prob); after every variation the
        result must pass the static height limit and trees.is_valid, else the operator is
        re-applied to the saved copy (at most max_repair_tries times, then the child becomes
        a SOAP clone: bounded, never ``while True``)
        fresh    <- n_fresh SOAP clones (probability fresh_soap_prob) or random valid trees
        pop <- parents (with their cached fitness: elitism) + children + fresh
        evaluate only trees whose string has never been evaluated (fitness cache)

Fitness: ``acc_A ** alpha * acc_B ** (1 - alpha)`` (Eq. 2) or ``alpha acc_A + (1 - alpha) acc_B``
(Eq. 1, ``combination="arithmetic"``); a failed evaluation has fitness 0 (gp-prune.md, choice 4).

Evaluation of each generation's new trees goes through an :class:`~compress.executors.Executor`
(``executor="serial"`` default, ``"process"`` a local pool, ``"ray"`` Ray tasks on a local or
multi-node cluster) or any ``map_fn(fn, items) -> iterable of results in item order``. Items are
``(tree string, seed)`` with the seed derived from (run seed, tree string) by
:func:`individual_seed` -- never from execution order -- so serial and distributed runs are
identical. DEAP draws from Python's global ``random``: the run seeds it, saves its
state in every checkpoint, restores it on resume, and gives the caller's state back at the end.

Outputs in ``out_dir``: ``checkpoint.json`` (atomic, every generation: population, fitness,
hall of fame, fitness cache, generation, ``random`` state, config hash), ``fitness.json`` and
``fitness.png`` (best-so-far and 25th percentile per generation), ``best_metric.json``
(``PruningMetric.to_dict()`` plus ``formula`` and ``fitness``; reload with
``PruningMetric.from_dict``), ``result.json`` (:meth:`EvolutionResult.to_dict`).
"""


from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from compress.errors import ConfigError
from compress.evolution.breeding import Breeder, Individual
from compress.evolution.config import EvolveConfig, combine_fitness, config_hash, individual_seed
from compress.evolution.fitness import SyntheticFitness, TaskFitness
from compress.evolution.metrics import PruningMetric
from compress.evolution.plot import write_fitness_plot
from compress.evolution.trees import parse_tree, readable_formula
from compress.executors import Executor, ProcessExecutor, make_executor
from compress.exporters.atomic import write_text_atomic
from compress.teachers import cache_dir as default_cache_dir

__all__ = [
    "CHECKPOINT_FORMAT",
    "EvolutionResult",
    "ProcessMap",
    "evolve_metric",
    "process_map",
]

CHECKPOINT_FORMAT = 1
ProgressFn = Callable[[str, int, int, dict], None]



#: the local process pool moved to :mod:`compress.executors`; kept here for existing callers
ProcessMap = ProcessExecutor


def process_map(workers: int, context: str = "spawn") -> ProcessExecutor:
    """A :class:`~compress.executors.ProcessExecutor` with ``workers`` processes (``"spawn"`` or
    ``"forkserver"``); usable as ``map_fn`` or ``executor``."""
    return ProcessExecutor(workers, context)



# ============================================================================ result


@dataclass(frozen=True)
class EvolutionResult:
    """What :func:`evolve_metric` returns (also written as ``result.json``).

    Attributes:
        best_expr, best_formula, best_fitness, best_acc: the best tree ever evaluated
            (hall of fame #1), its infix formula, fitness and the two task accuracies.
        hall_of_fame: best distinct trees, ``{"expr", "formula", "fitness", "acc", "generation"}``.
        history: one record per generation: ``generation, best, best_so_far, p25, mean,
            median, evaluations, cache_hits, failed, repairs, fallbacks, best_expr, and per
            individual ``fitnesses``, ``origins``, ``exprs``; ``wall_s``.
        soap_best_gen0: best fitness among the SOAP clones of generation 0.
        evaluations: fitness-function calls of the whole run (= size of the fitness cache).
        resumed_from: generation of the checkpoint this call resumed from (None: fresh start).
        baselines: the tasks' baseline info (accuracies, MACs before/after pruning).
        wall_s: wall time of all calls of this run (seconds, summed over resumes).
    """

    best_expr: str
    best_formula: str
    best_fitness: float
    best_acc: tuple[float, ...]
    hall_of_fame: tuple[dict, ...]
    history: tuple[dict, ...]
    soap_best_gen0: float | None
    evaluations: int
    generations_done: int
    resumed_from: int | None
    config: dict
    seed: int
    out_dir: str
    baselines: tuple[dict, ...] = ()
    wall_s: float = 0.0
    paths: dict = field(default_factory=dict)

    def metric(self, name: str = "evolved") -> PruningMetric:
        """The best tree as a :class:`PruningMetric` (usable by ``gp-prune``)."""
        return PruningMetric.from_string(self.best_expr, name=name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["best_acc"] = list(self.best_acc)
        d["hall_of_fame"] = list(self.hall_of_fame)
        d["history"] = list(self.history)
        d["baselines"] = list(self.baselines)
        return d


# ============================================================================ loop


def _random_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _random_state_from_json(data: list) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


def _default_fitness(config: EvolveConfig, seed: int, cache_dir: str | Path | None):
    if config.tasks == "synthetic":
        return SyntheticFitness(config.class_reduction)
    if cache_dir is None:
        cache_dir = default_cache_dir() / "gp_evolve"
    return TaskFitness(config.tasks, int(seed), str(cache_dir), config.data_dir, config.class_reduction)


def _update_hof(hof: list[dict], pop: list[Individual], cache: dict, generation: int, size: int) -> list[dict]:
    known = {h["expr"] for h in hof}
    for ind in pop:
        if ind.expr in known:
            continue
        known.add(ind.expr)
        rec = cache.get(ind.expr, {})
        hof.append({"expr": ind.expr, "fitness": float(ind.fitness or 0.0), "acc": list(rec.get("acc", [])),
                    "generation": generation})
    hof.sort(key=lambda h: (-h["fitness"], h["generation"], h["expr"]))
    return hof[:size]


def _plot(history: list[dict], path: Path) -> None:
    write_fitness_plot(history, path)


def evolve_metric(
    config: EvolveConfig,
    *,
    out_dir: str | Path,
    seed: int = 0,
    map_fn: Callable[[Callable, list], Iterable] | None = None,
    progress: ProgressFn | None = None,
    resume: bool = True,
    fitness_fn: Callable[[tuple[str, int]], dict] | None = None,
    cache_dir: str | Path | None = None,
    executor: Executor | str | None = None,
    ray_address: str | None = None,
) -> EvolutionResult:
    """Evolve a pruning metric (GECCO'22 Sec. 3.2-3.4, Sec. 4); see the module docstring.

    Args:
        config: :class:`EvolveConfig` (e.g. ``EvolveConfig.preset("cpu-small")``).
        out_dir: run directory (checkpoint and outputs); created if missing.
        seed: run seed (Python ``random`` for DEAP, data splits, baselines, evaluation seeds).
        map_fn: ``map_fn(fn, items) -> iterable`` of results in item order (any callable with
            the :meth:`~compress.executors.Executor.map` contract); exclusive with ``executor``.
        executor: where the fitness evaluations run: an :class:`~compress.executors.Executor`
            (the caller closes it), or ``"serial"`` (default), ``"process"``, ``"ray"`` (created
            here and closed at the end, see :func:`~compress.executors.make_executor`).
        ray_address: cluster address for ``executor="ray"`` (None: a local Ray instance).
        progress: ``progress(phase, done, total, info)`` with phases ``"baseline"``,
            ``"evaluate"`` (per individual) and ``"generation"``.
        resume: continue from ``out_dir/checkpoint.json`` when present (False: start over).
        fitness_fn: override of the fitness callable ``fn((expr, seed)) -> {"acc": [a, b],
            "error": str | None, ...}`` (default: the config's task profile).
        cache_dir: where task baselines are cached (default ``<slimforge cache>/gp_evolve``).

    Returns:
        :class:`EvolutionResult`.

    Raises:
        ConfigError: ``out_dir`` holds a checkpoint of a different config or seed (and
            ``resume`` is True), or the checkpoint is unreadable.
        DataError: ``tasks="full"`` with missing data files.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.json"
    chash = config_hash(config)
    fn = fitness_fn if fitness_fn is not None else _default_fitness(config, seed, cache_dir)
    if map_fn is not None and (executor is not None or ray_address is not None):
        raise ConfigError("pass either map_fn or executor / ray_address, not both.")
    own_executor = map_fn is None and not isinstance(executor, Executor)
    mapper = map_fn if map_fn is not None else make_executor(executor, ray_address=ray_address)
    breeder = Breeder(config)
    caller_state = random.getstate()

    def report(phase: str, done: int, total: int, info: dict) -> None:
        if progress is not None:
            progress(phase, done, total, info)

    state: dict | None = None
    if resume and ckpt_path.is_file():
        try:
            state = json.loads(ckpt_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read checkpoint {ckpt_path}: {exc}; delete it or pass resume=False.") from exc
        if state.get("config_hash") != chash or int(state.get("seed", -1)) != int(seed):
            old = state.get("config", {})
            diff = sorted(k for k in set(old) | set(config.to_dict()) if old.get(k) != config.to_dict().get(k))
            what = f"config fields {diff}" if diff else f"seed {state.get('seed')} (now {seed})"
            raise ConfigError(
                f"{out} holds a run with a different configuration ({what}); pass another out_dir, or "
                "resume=False (CLI --no-resume) to start over there."
            )
    baselines = fn.prepare(progress) if hasattr(fn, "prepare") else []

    try:
        if state is not None:
            cache: dict = state["cache"]
            pop = [Individual(parse_tree(p["expr"]), p["fitness"], p.get("origin", "?")) for p in state["population"]]
            hof: list[dict] = state["hall_of_fame"]
            history: list[dict] = state["history"]
            generation = int(state["generation"])
            soap_best0 = state.get("soap_best_gen0")
            wall_before = float(state.get("wall_s", 0.0))
            resumed_from: int | None = generation
            random.setstate(_random_state_from_json(state["random_state"]))
        else:
            cache, hof, history = {}, [], []
            generation, soap_best0, wall_before, resumed_from = -1, None, 0.0, None
            random.seed(seed)
            pop = []

        def evaluate(population: list[Individual], gen: int) -> dict:
            todo: list[str] = []
            for ind in population:
                if ind.expr not in cache and ind.expr not in todo:
                    todo.append(ind.expr)
            items = [(e, individual_seed(seed, e) if config.seed_scope == "tree" else int(seed)) for e in todo]
            failed = 0
            for i, (item, rec) in enumerate(zip(items, mapper(fn, items))):
                acc = [float(a) for a in rec.get("acc", [0.0, 0.0])]
                err = rec.get("error")
                fit = 0.0 if err else combine_fitness(acc[0], acc[1], config.alpha, config.combination)
                failed += bool(err)
                entry = {"fitness": fit, "acc": acc, "error": err, "seed": item[1],
                         "wall_s": float(rec.get("wall_s", 0.0)), "generation": gen}
                if rec.get("tasks"):
                    entry["tasks"] = rec["tasks"]
                cache[item[0]] = entry
                report("evaluate", i + 1, len(items), {"generation": gen, "expr": item[0], "fitness": fit,
                                                        "acc": acc, "error": err})
            cached = 0
            for ind in population:
                if ind.fitness is None:
                    ind.fitness = cache[ind.expr]["fitness"]
                    cached += ind.expr not in todo
            return {"evaluations": len(items), "cache_hits": cached, "failed": failed}

        def close_generation(gen: int, stats: dict, t0: float) -> None:
            nonlocal hof, soap_best0
            fits = np.array([ind.fitness for ind in pop], dtype=np.float64)
            hof = _update_hof(hof, pop, cache, gen, config.hall_of_fame)
            if gen == 0:
                soap_fits = [ind.fitness for ind in pop if ind.origin == "soap"]
                soap_best0 = max(soap_fits) if soap_fits else None
            best_i = int(np.argmax(fits))
            rec = {
                "generation": gen,
                "best": float(fits.max()),
                "best_so_far": float(hof[0]["fitness"]),
                "p25": float(np.percentile(fits, 25)),
                "mean": float(fits.mean()),
                "median": float(np.median(fits)),
                **stats,
                "repairs": breeder.repairs,
                "fallbacks": breeder.fallbacks,
                "best_expr": pop[best_i].expr,
                "fitnesses": [float(f) for f in fits],
                "origins": [ind.origin for ind in pop],
                "exprs": [ind.expr for ind in pop],
                "wall_s": time.perf_counter() - t0,
            }
            breeder.repairs = breeder.fallbacks = 0
            history.append(rec)
            ckpt = {
                "format": CHECKPOINT_FORMAT,
                "config_hash": chash,
                "config": config.to_dict(),
                "seed": int(seed),
                "generation": gen,
                "population": [{"expr": i.expr, "fitness": i.fitness, "origin": i.origin} for i in pop],
                "hall_of_fame": hof,
                "cache": cache,
                "history": history,
                "soap_best_gen0": soap_best0,
                "random_state": _random_state_to_json(random.getstate()),
                "wall_s": wall_before + (time.perf_counter() - t_start),
            }
            write_text_atomic(ckpt_path, json.dumps(ckpt))
            _write_curves(out, history)
            report("generation", gen, config.generations,
                   {"best": rec["best"], "best_so_far": rec["best_so_far"], "p25": rec["p25"],
                    "evaluations": rec["evaluations"], "best_expr": hof[0]["expr"]})

        if generation < 0:
            t0 = time.perf_counter()
            pop = breeder.init_population()
            stats = evaluate(pop, 0)
            generation = 0
            close_generation(0, stats, t0)
        for generation in range(generation + 1, config.generations + 1):
            t0 = time.perf_counter()
            pop = breeder.next_generation(pop)
            stats = evaluate(pop, generation)
            close_generation(generation, stats, t0)
        generation = max(generation, config.generations)
    finally:
        random.setstate(caller_state)
        if own_executor:
            mapper.close()

    best = hof[0]
    wall = wall_before + (time.perf_counter() - t_start)
    metric = PruningMetric.from_string(best["expr"], name=f"evolved-seed{seed}")
    paths = {
        "checkpoint": str(ckpt_path),
        "fitness_json": str(out / "fitness.json"),
        "fitness_png": str(out / "fitness.png"),
        "best_metric": str(out / "best_metric.json"),
        "result": str(out / "result.json"),
    }
    best_doc = {**metric.to_dict(), "formula": readable_formula(best["expr"]), "fitness": best["fitness"],
                "acc": best["acc"], "config_hash": chash, "seed": int(seed)}
    write_text_atomic(out / "best_metric.json", json.dumps(best_doc, indent=2))
    result = EvolutionResult(
        best_expr=best["expr"],
        best_formula=readable_formula(best["expr"]),
        best_fitness=float(best["fitness"]),
        best_acc=tuple(best["acc"]),
        hall_of_fame=tuple({**h, "formula": readable_formula(h["expr"])} for h in hof),
        history=tuple(history),
        soap_best_gen0=soap_best0,
        evaluations=len(cache),
        generations_done=generation,
        resumed_from=resumed_from,
        config=config.to_dict(),
        seed=int(seed),
        out_dir=str(out),
        baselines=tuple(baselines),
        wall_s=wall,
        paths=paths,
    )
    write_text_atomic(out / "result.json", json.dumps(result.to_dict(), indent=2))
    return result


def _write_curves(out: Path, history: list[dict]) -> None:
    curves = {
        "generation": [h["generation"] for h in history],
        "best": [h["best"] for h in history],
        "best_so_far": [h["best_so_far"] for h in history],
        "p25": [h["p25"] for h in history],
        "mean": [h["mean"] for h in history],
        "evaluations": [h["evaluations"] for h in history],
        "fitnesses": [h["fitnesses"] for h in history],
    }
    write_text_atomic(out / "fitness.json", json.dumps(curves, indent=2))
    _plot(history, out / "fitness.png")
