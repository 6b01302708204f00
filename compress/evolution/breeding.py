"""GP breeding (Sec. 3.4): individuals, tournament selection and variation with validity repair.

Source: Liu et al., "Evolving Transferable Neural Pruning Functions", GECCO'22 (paper 001),
Sec. 3.4 and Sec. 4; ``docs/algorithms/gp-prune.md`` (the reference code's selection
``my_TourSel`` and the repair of invalid children). Every draw comes from Python's global
``random``, which :func:`~compress.evolution.evolve.evolve_metric` seeds, checkpoints and restores.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import partial

from deap import gp, tools

from compress.errors import ConfigError
from compress.evolution.config import EvolveConfig
from compress.evolution.metrics import METRICS
from compress.evolution.primitives import PSET
from compress.evolution.trees import is_valid, parse_tree

__all__ = ["Breeder", "Individual", "disjoint_tournaments", "select_parents"]


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


class Breeder:
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
