"""Evolving pruning metrics with genetic programming (DEAP), GECCO'22 Sec. 3.2-3.4 and Sec. 4.

Source: Liu et al., "Evolving Transferable Neural Pruning Functions", GECCO'22 (paper 001),
and ALGORITHMS.md section 2(a)-(c). The individuals are expression trees over the untyped
``deap.gp`` set :data:`~compress.strategies.gp_prune.trees.PSET`; their fitness is the
weighted geometric mean (Eq. 2, alpha = 0.5) of the retrained accuracies on two pruning tasks
(:mod:`~compress.strategies.gp_prune.tasks`).

Loop (2(a) pseudo-code; every number is an :class:`EvolveConfig` field)::

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
(Eq. 1, ``combination="arithmetic"``); a failed evaluation has fitness 0 (2(b).4).

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
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from deap import gp, tools

from compress.errors import ConfigError
from compress.strategies._parts.config_fields import check_fields
from compress.executors import Executor, ProcessExecutor, make_executor
from compress.exporters.atomic import write_text_atomic
from compress.strategies.gp_prune.metrics import METRICS, SOAP, PruningMetric
from compress.strategies.gp_prune.trees import PSET, is_valid, parse_tree

__all__ = [
    "CHECKPOINT_FORMAT",
    "EvolutionResult",
    "EvolveConfig",
    "Individual",
    "ProcessMap",
    "combine_fitness",
    "config_hash",
    "disjoint_tournaments",
    "evolve_metric",
    "individual_seed",
    "process_map",
    "readable_formula",
    "select_parents",
]

CHECKPOINT_FORMAT = 1
ProgressFn = Callable[[str, int, int, dict], None]


# ============================================================================ config


@dataclass(frozen=True)
class EvolveConfig:
    """Settings of one evolution run (paper Sec. 4 defaults); lands in ``result.json``.

    Attributes:
        population: individuals per generation (paper 40).
        generations: variation rounds after generation 0 (paper 25; records have
            ``generations + 1`` entries).
        init_soap: SOAP clones in generation 0 (paper 20); the rest are random valid trees.
        selection: "disjoint" (reference ``my_TourSel``: ``n_select * tournament_size``
            distinct individuals split into disjoint tournaments) or "deap"
            (``tools.selTournament``, with replacement).
        tournament_size, n_select: paper 4 and 10.
        n_reproduce, n_fresh: children from the parents (paper 24) and diversity slots from
            SOAP or random trees (paper 6); ``n_select + n_reproduce + n_fresh == population``.
        fresh_soap_prob: probability that a fresh slot is a SOAP clone (else a random tree).
        cx_prob, mut_prob: one-point crossover / uniform mutation probabilities (0.75, 0.75).
        init_min_height, init_max_height: ``gp.genHalfAndHalf`` heights of random trees (1, 4).
        mut_min_height, mut_max_height: ``gp.genFull`` heights of mutation subtrees (0, 4).
        max_height: static height limit of every varied tree (Koza's 17).
        max_repair_tries: variation attempts before falling back to a SOAP clone.
        alpha: weight of task A (MNIST stand-in) in the fitness (0.5).
        combination: "geometric" (Eq. 2) or "arithmetic" (Eq. 1).
        soap: metric names (keys of ``metrics.METRICS``) used for SOAP clones (the 10 of Sec. 9.2).
        tasks: fitness source: a task profile of ``tasks.PROFILES`` ("cpu-small", "tiny",
            "full") or "synthetic" (a millisecond stand-in for tests and dry runs).
        data_dir: folder with the MNIST / CIFAR-10 npz files (``tasks="full"`` only).
        class_reduction: "sum" (reference) or "mean" of per-class uni-tree scores.
        hall_of_fame: number of best distinct trees kept.
        seed_scope: "tree" -- each evaluation is seeded from (run seed, tree string); "run" --
            every evaluation uses the same seed (common random numbers: two trees that
            prune the same channels get the same fitness).

    Raises:
        ConfigError: inconsistent sizes, probabilities outside [0, 1], unknown names.
    """

    population: int = 40
    generations: int = 25
    init_soap: int = 20
    selection: str = "disjoint"
    tournament_size: int = 4
    n_select: int = 10
    n_reproduce: int = 24
    n_fresh: int = 6
    fresh_soap_prob: float = 0.5
    cx_prob: float = 0.75
    mut_prob: float = 0.75
    init_min_height: int = 1
    init_max_height: int = 4
    mut_min_height: int = 0
    mut_max_height: int = 4
    max_height: int = 17
    max_repair_tries: int = 20
    alpha: float = 0.5
    combination: str = "geometric"
    soap: tuple[str, ...] = tuple(SOAP)
    tasks: str = "full"
    data_dir: str | None = None
    class_reduction: str = "sum"
    hall_of_fame: int = 10
    seed_scope: str = "tree"

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and, by its name, its range
        from compress.strategies.gp_prune.tasks import PROFILES

        ints = ("population", "generations", "init_soap", "tournament_size", "n_select", "n_reproduce", "n_fresh",
                "init_min_height", "init_max_height", "mut_min_height", "mut_max_height", "max_height",
                "max_repair_tries", "hall_of_fame")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be a non-negative int, got {v!r}.")
        if (self.population < 2 or self.n_select < 1 or self.tournament_size < 1 or self.max_repair_tries < 1
                or self.hall_of_fame < 1):
            raise ConfigError(
                "population >= 2, n_select >= 1, tournament_size >= 1, max_repair_tries >= 1 and hall_of_fame >= 1 "
                "are required."
            )
        if self.n_select + self.n_reproduce + self.n_fresh != self.population:
            raise ConfigError(
                f"n_select + n_reproduce + n_fresh = {self.n_select} + {self.n_reproduce} + {self.n_fresh} must equal "
                f"population = {self.population} (paper: 10 + 24 + 6 = 40)."
            )
        if self.init_soap > self.population:
            raise ConfigError(f"init_soap ({self.init_soap}) cannot exceed population ({self.population}).")
        if self.selection not in ("disjoint", "deap"):
            raise ConfigError(f"selection must be 'disjoint' or 'deap', got {self.selection!r}.")
        if self.selection == "disjoint" and self.n_select * self.tournament_size > self.population:
            raise ConfigError(
                f"disjoint tournaments need n_select * tournament_size <= population, got "
                f"{self.n_select} * {self.tournament_size} > {self.population}; lower them or use selection='deap'."
            )
        for name in ("fresh_soap_prob", "cx_prob", "mut_prob", "alpha"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {v!r}.")
        if not self.init_min_height <= self.init_max_height or not self.mut_min_height <= self.mut_max_height:
            raise ConfigError("tree height ranges need min <= max.")
        if self.init_max_height > self.max_height or self.mut_max_height > self.max_height:
            raise ConfigError(f"max_height ({self.max_height}) must be >= the init and mutation heights.")
        if self.combination not in ("geometric", "arithmetic"):
            raise ConfigError(f"combination must be 'geometric' (Eq. 2) or 'arithmetic' (Eq. 1), got {self.combination!r}.")
        if not isinstance(self.soap, tuple) or not self.soap:
            raise ConfigError("soap must be a non-empty tuple of metric names.")
        unknown = [s for s in self.soap if s not in METRICS]
        if unknown:
            raise ConfigError(f"unknown SOAP metric(s) {unknown}; known: {', '.join(METRICS)}.")
        if self.tasks != "synthetic" and self.tasks not in PROFILES:
            raise ConfigError(f"tasks must be one of {', '.join(PROFILES)} or 'synthetic', got {self.tasks!r}.")
        if self.tasks == "full" and not self.data_dir:
            raise ConfigError(
                "tasks='full' trains LeNet-5 on MNIST and VGG-16 on CIFAR-10: pass data_dir, the folder holding "
                "mnist_train60k.npz, mnist_test10k.npz, cifar10_train10k_lossless.npz and cifar10_test1k_lossless.npz."
            )
        if self.class_reduction not in ("sum", "mean"):
            raise ConfigError(f"class_reduction must be 'sum' or 'mean', got {self.class_reduction!r}.")
        if self.seed_scope not in ("tree", "run"):
            raise ConfigError(f"seed_scope must be 'tree' or 'run', got {self.seed_scope!r}.")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> EvolveConfig:
        """A named preset, optionally with field overrides.

        * ``"full"`` -- the paper (Sec. 4): population 40 = 20 SOAP + 20 random, 25 generations,
          10 parents from disjoint tournaments of 4, 24 children, 6 fresh, p = 0.75 / 0.75,
          alpha 0.5 geometric; tasks LeNet-5/MNIST and VGG-16/CIFAR-10 (pass ``data_dir``).
        * ``"cpu-small"`` -- ALGORITHMS.md 2(c): population 8 = 4 SOAP + 4 random, 3
          generations, 2 parents from disjoint tournaments of 4, 5 children, 1 fresh; the
          digits / synthetic-shapes tasks (a few minutes on 2 cores).
        * ``"tiny"`` -- population 6, 2 generations on the "tiny" tasks (smoke runs).
        * ``"synthetic"`` -- the cpu-small loop with the millisecond stand-in fitness.

        Raises:
            ConfigError: unknown preset name or invalid overrides.
        """
        small = dict(population=8, generations=3, init_soap=4, n_select=2, tournament_size=4, n_reproduce=5, n_fresh=1)
        presets: dict[str, dict[str, Any]] = {
            "full": dict(tasks="full"),
            "cpu-small": dict(small, tasks="cpu-small"),
            "tiny": dict(population=6, generations=2, init_soap=3, n_select=1, tournament_size=4, n_reproduce=4,
                         n_fresh=1, tasks="tiny"),
            "synthetic": dict(small, tasks="synthetic"),
        }
        if name not in presets:
            raise ConfigError(f"unknown evolve preset {name!r}; choose one of {', '.join(presets)}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise ConfigError(f"unknown EvolveConfig field(s) {bad}; known: {', '.join(sorted(fields))}.")
        if "soap" in overrides and isinstance(overrides["soap"], list):
            overrides["soap"] = tuple(overrides["soap"])
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["soap"] = list(self.soap)
        return d


def config_hash(config: EvolveConfig) -> str:
    """SHA-256 (16 hex digits) of the config's JSON; a run directory is tied to it."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def combine_fitness(acc_a: float, acc_b: float, alpha: float = 0.5, combination: str = "geometric") -> float:
    """Joint fitness of the two task accuracies (Sec. 3.3).

    ``"geometric"`` (Eq. 2): ``acc_a ** alpha * acc_b ** (1 - alpha)``; ``"arithmetic"`` (Eq. 1):
    ``alpha * acc_a + (1 - alpha) * acc_b``. Non-finite or negative accuracies count as 0.
    """
    a = acc_a if (acc_a is not None and math.isfinite(acc_a) and acc_a > 0) else 0.0
    b = acc_b if (acc_b is not None and math.isfinite(acc_b) and acc_b > 0) else 0.0
    if combination == "arithmetic":
        return alpha * a + (1.0 - alpha) * b
    return (a**alpha) * (b ** (1.0 - alpha))


def individual_seed(run_seed: int, expr: str) -> int:
    """Seed of one evaluation, from (run seed, tree string) only: independent of execution order."""
    return int.from_bytes(hashlib.sha256(f"{int(run_seed)}|{expr}".encode()).digest()[:4], "little")


# ============================================================================ formula

_OPERAND_NAMES = {"Fp": "F+", "Fm": "F-", "WI": "W_I", "W": "W", "B": "B", "F": "F"}
_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def readable_formula(expr: str) -> str:
    """Infix rendering of a tree string for humans, e.g.
    ``div(var_g(Fm), ridge5(var_g(Fp)))`` -> ``var_g(F-) / (var_g(F+) + 0.05)``.

    ``ridge(x)`` is shown as ``(x + 1e-4)`` and ``ridge5(x)`` as ``(x + 0.05)`` (on a square
    matrix the engine adds ``rho I``); ``sq(x)`` as ``(x)^2``, ``abs(x)`` as ``|x|``.

    Raises:
        MetricError: the string does not parse.
    """
    tree = parse_tree(expr)
    pos = 0

    def walk() -> tuple[str, bool]:  # (text, is_compound)
        nonlocal pos
        node = tree[pos]
        pos += 1
        if isinstance(node, gp.Terminal):
            return _OPERAND_NAMES.get(node.value, str(node.value)), False
        args = [walk() for _ in range(node.arity)]

        def wrap(a: tuple[str, bool]) -> str:
            return f"({a[0]})" if a[1] else a[0]

        if node.name in _INFIX:
            return f"{wrap(args[0])} {_INFIX[node.name]} {wrap(args[1])}", True
        if node.name == "ridge":
            return f"{wrap(args[0])} + 1e-4", True
        if node.name == "ridge5":
            return f"{wrap(args[0])} + 0.05", True
        if node.name == "sq":
            return f"({args[0][0]})^2" if args[0][1] else f"{args[0][0]}^2", False
        if node.name == "abs":
            return f"|{args[0][0]}|", False
        return f"{node.name}({', '.join(a[0] for a in args)})", False

    text, _ = walk()
    return text


# ============================================================================ individuals & map


@dataclass
class Individual:
    """One tree with its fitness (None = not evaluated). ``fitness`` is a plain float so
    ``tools.selTournament(..., fit_attr="fitness")`` works on it directly."""

    tree: gp.PrimitiveTree
    fitness: float | None = None
    origin: str = "?"

    @property
    def expr(self) -> str:
        return str(self.tree)

    def copy(self, *, keep_fitness: bool = True) -> Individual:
        return Individual(gp.PrimitiveTree(list(self.tree)), self.fitness if keep_fitness else None, self.origin)


#: the local process pool moved to :mod:`compress.executors`; kept here for existing callers
ProcessMap = ProcessExecutor


def process_map(workers: int, context: str = "spawn") -> ProcessExecutor:
    """A :class:`~compress.executors.ProcessExecutor` with ``workers`` processes (``"spawn"`` or
    ``"forkserver"``); usable as ``map_fn`` or ``executor``."""
    return ProcessExecutor(workers, context)


# ============================================================================ selection


def disjoint_tournaments(pop: list[Individual], k: int, size: int) -> list[list[Individual]]:
    """The reference's ``my_TourSel`` draw: ``k * size`` distinct individuals (``random.sample``)
    split into ``k`` disjoint tournaments of ``size`` (pop 40, k 10, size 4: everyone once)."""
    if k * size > len(pop):
        raise ConfigError(f"{k} disjoint tournaments of {size} need {k * size} individuals, population has {len(pop)}.")
    drawn = random.sample(pop, k * size)
    return [drawn[i * size: (i + 1) * size] for i in range(k)]


def _fit(ind: Individual) -> float:
    return ind.fitness if ind.fitness is not None else 0.0


def select_parents(pop: list[Individual], config: EvolveConfig) -> list[Individual]:
    """``config.n_select`` tournament winners (first of the best on ties), see :class:`EvolveConfig`."""
    if config.selection == "deap":
        for ind in pop:
            if ind.fitness is None:
                ind.fitness = 0.0
        return list(tools.selTournament(pop, config.n_select, config.tournament_size, fit_attr="fitness"))
    return [max(t, key=_fit) for t in disjoint_tournaments(pop, config.n_select, config.tournament_size)]


# ============================================================================ variation


class _Breeder:
    """Tree generation and variation with validity repair (Sec. 3.4); all draws from ``random``."""

    def __init__(self, config: EvolveConfig) -> None:
        self.config = config
        self.soap_exprs = [METRICS[n] for n in config.soap]
        self.repairs = 0
        self.fallbacks = 0

    def ok(self, tree: gp.PrimitiveTree) -> bool:
        return tree.height <= self.config.max_height and is_valid(tree)

    def soap_clone(self, name: str | None = None) -> Individual:
        expr = METRICS[name] if name is not None else random.choice(self.soap_exprs)
        return Individual(parse_tree(expr), None, "soap")

    def soap_clones(self, n: int) -> list[Individual]:
        """``n`` SOAP clones drawn without replacement, the SOAP list reshuffled when exhausted."""
        names: list[str] = []
        for _ in range(math.ceil(n / len(self.config.soap))):
            names += random.sample(list(self.config.soap), len(self.config.soap))
        return [self.soap_clone(nm) for nm in names[:n]]

    def random_tree(self) -> Individual:
        c = self.config
        for _ in range(c.max_repair_tries):
            tree = gp.PrimitiveTree(gp.genHalfAndHalf(PSET, min_=c.init_min_height, max_=c.init_max_height))
            if self.ok(tree):
                return Individual(tree, None, "random")
            self.repairs += 1
        self.fallbacks += 1
        return self.soap_clone()

    def crossover(self, a: Individual, b: Individual) -> tuple[Individual, Individual]:
        saved = (gp.PrimitiveTree(list(a.tree)), gp.PrimitiveTree(list(b.tree)))
        t1 = t2 = None
        for _ in range(self.config.max_repair_tries):
            t1, t2 = gp.PrimitiveTree(list(saved[0])), gp.PrimitiveTree(list(saved[1]))
            gp.cxOnePoint(t1, t2)
            if self.ok(t1) and self.ok(t2):
                return Individual(t1, None, "cx"), Individual(t2, None, "cx")
            self.repairs += 1
        out = []
        for t in (t1, t2):
            if self.ok(t):
                out.append(Individual(t, None, "cx"))
            else:
                self.fallbacks += 1
                out.append(self.soap_clone())
        return out[0], out[1]

    def mutate(self, a: Individual) -> Individual:
        c = self.config
        saved = gp.PrimitiveTree(list(a.tree))
        expr = partial(gp.genFull, min_=c.mut_min_height, max_=c.mut_max_height)
        for _ in range(c.max_repair_tries):
            t = gp.PrimitiveTree(list(saved))
            gp.mutUniform(t, expr=expr, pset=PSET)
            if self.ok(t):
                return Individual(t, None, "mut" if a.origin != "cx" else "cx+mut")
            self.repairs += 1
        self.fallbacks += 1
        return self.soap_clone()

    def init_population(self) -> list[Individual]:
        c = self.config
        return self.soap_clones(c.init_soap) + [self.random_tree() for _ in range(c.population - c.init_soap)]

    def next_generation(self, pop: list[Individual]) -> list[Individual]:
        """parents (cached fitness) + varied children + fresh slots; size ``config.population``."""
        c = self.config
        parents = [p.copy() for p in select_parents(pop, c)]
        for p in parents:
            p.origin = "parent"
        children = []
        for _ in range(c.n_reproduce):
            child = random.choice(parents).copy(keep_fitness=False)
            child.origin = "clone"
            children.append(child)
        for i in range(1, len(children), 2):
            if random.random() < c.cx_prob:
                children[i - 1], children[i] = self.crossover(children[i - 1], children[i])
        for i in range(len(children)):
            if random.random() < c.mut_prob:
                children[i] = self.mutate(children[i])
        fresh = [self.soap_clone() if random.random() < c.fresh_soap_prob else self.random_tree()
                 for _ in range(c.n_fresh)]
        return parents + children + fresh


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
    from compress.strategies.gp_prune.tasks import SyntheticFitness, TaskFitness

    if config.tasks == "synthetic":
        return SyntheticFitness(config.class_reduction)
    if cache_dir is None:
        from compress.teachers import cache_dir as _cache_dir

        cache_dir = _cache_dir() / "gp_evolve"
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
    from compress.strategies.gp_prune.plot import write_fitness_plot

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
    breeder = _Breeder(config)
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
