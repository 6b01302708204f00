"""The settings of one GP evolution run (:class:`EvolveConfig`) and the joint fitness.

Source: Liu et al., "Evolving Transferable Neural Pruning Functions", GECCO'22 (paper 001),
Sec. 3.3 (Eq. 1 and 2, the joint fitness) and Sec. 4 (the run's defaults);
``docs/algorithms/gp-prune.md`` (the CPU profiles).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from compress.errors import ConfigError
from compress.evolution.metrics import METRICS, SOAP
from compress.evolution.tasks import PROFILES
from compress.strategies._parts.config_fields import check_fields

__all__ = ["EvolveConfig", "combine_fitness", "config_hash", "individual_seed"]


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
        * ``"cpu-small"`` -- docs/algorithms/gp-prune.md, CPU profile: population 8 = 4 SOAP + 4 random, 3
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
