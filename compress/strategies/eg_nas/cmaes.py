"""The CMA-ES architecture update of EG-NAS, as pure algorithm: step size, compound fitness, one
CMA-ES restart, one epoch's N restarts and the direction step (Cai et al., AAAI 2024, Alg. 1,
Eq. 3-9). Nothing here touches a network: the supernet enters only as ``evaluate_z``.

At every epoch ``t >= warmup_epochs``, on one minibatch of the *direction half*:

1. ``acc0 = Acc(w, alpha_t)``;
2. for each of N restarts: ``x_n = alpha_t + sigma_n * N(0, I)`` (own seed per restart), a CMA-ES
   (pycma, population lambda, step ``sigma_t = max(1/(t+1), sigma_min)``) runs G generations on the
   compound fitness (Eq. 7, minimised) ``f(z) = zeta * CE(z) - eta * L2`` if ``acc0 > Acc(z)`` else
   ``zeta * CE(z) + eta * L2``, with ``L2 = mean_edges (cos(alpha_t, z) + 1) / 2`` (Eq. 6);
   the restart's winner ``x_n*`` is the best fitness in P = {x_n, best of each generation, final mean};
3. Eq. 9: ``s = argmax_n Acc(w, x_n*)``; Eq. 8: ``alpha_{t+1} = alpha_t + xi * dir(s)``.

Documented choices (docs/algorithms/eg-nas.md, choices), each a config field:

* CMA-ES searches logit space (paper), candidate op weights are ``softmax(z)`` per edge;
* ``dir(s) = softmax(s)`` per edge (official semantics; ``direction="raw"`` is the paper literal);
* restarts get distinct seeds derived from the run seed, epoch and restart index (the released code
  reuses seed 1, so its restarts coincide);
* sigma_t uses the real epoch index (the released CIFAR code passes a variable stuck at 0);
* pycma's ``seed`` option reseeds NumPy's global RNG; here CMA-ES samples from a private
  ``numpy.random.Generator`` (option ``randn``) and every pycma call runs with NumPy's global
  state swapped for a private one, so runs are reproducible and the caller's RNG is untouched;
* ES evaluations per epoch: ``1 + N * (lambda * G + 2)`` supernet forwards (``+1`` per restart
  for x_n, ``+1`` for the final mean; ``keep_mean=False`` drops the latter).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from compress.executors import Executor, SerialExecutor
from compress.training.data import derive_seed

__all__ = [
    "sigma_schedule",
    "l2_similarity",
    "compound_fitness",
    "select_direction",
    "apply_direction",
    "run_restart",
    "es_epoch",
    "RestartResult",
    "ESEpochResult",
]


def sigma_schedule(t: int, sigma_min: float = 0.02) -> float:
    """CMA-ES step size at epoch ``t`` (0-based): ``max(1/(t+1), sigma_min)`` (docs/algorithms/eg-nas.md, choice 5)."""
    return max(1.0 / (t + 1), sigma_min)


def l2_similarity(alpha: np.ndarray | torch.Tensor, z: np.ndarray | torch.Tensor, num_ops: int) -> float:
    """Eq. 6's L2: the per-edge cosine similarity mapped to [0, 1], ``(cos + 1) / 2``, averaged over
    every edge of both cells. ``alpha``, ``z``: any shape with ``num_ops`` as the last / row size.
    1 for ``z = c * alpha`` (c > 0), 0 for ``z = -alpha``; a zero row counts as cos = 0."""
    a = np.asarray(alpha.detach().cpu() if isinstance(alpha, torch.Tensor) else alpha, dtype=np.float64).reshape(-1, num_ops)
    b = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z, dtype=np.float64).reshape(-1, num_ops)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 0.0)
    return float(np.mean((np.clip(cos, -1.0, 1.0) + 1.0) / 2.0))


def compound_fitness(ce: float, acc_z: float, acc_alpha: float, l2: float, zeta: float = 1.0, eta: float = 0.4) -> float:
    """Eq. 7 (minimised): ``zeta*CE - eta*L2`` if ``Acc(alpha_t) > Acc(z)``, else ``zeta*CE + eta*L2``
    (a tie takes ``+``, as the released code's ``acc(alpha_t) <= acc(z)`` test)."""
    if acc_alpha > acc_z:
        return zeta * ce - eta * l2
    return zeta * ce + eta * l2


def select_direction(accuracies: list[float]) -> int:
    """Eq. 9: index of the restart winner with the highest validation accuracy (first on ties)."""
    return int(np.argmax(np.asarray(accuracies, dtype=np.float64)))


def apply_direction(alpha: torch.Tensor, s: np.ndarray | torch.Tensor, xi: float, num_ops: int,
                    mode: str = "softmax") -> torch.Tensor:
    """Eq. 8: ``alpha + xi * dir(s)`` with ``dir(s)`` the per-edge softmax of ``s`` (``"softmax"``)
    or ``s`` itself (``"raw"``). ``alpha``: float tensor of any shape with ``num_ops`` columns; the
    result has ``alpha``'s shape, dtype and device and no autograd history."""
    st = torch.as_tensor(s, dtype=alpha.dtype, device=alpha.device).reshape(-1, num_ops)
    d = torch.softmax(st, dim=-1) if mode == "softmax" else st
    return (alpha.detach().reshape(-1, num_ops) + xi * d).reshape(alpha.shape)


class _PrivateNumpy:
    """NumPy's *global* RNG swapped for a private, seeded state while pycma runs, then restored.

    pycma draws from ``np.random`` in places even with a custom ``randn`` (and its ``seed`` option
    reseeds the global state), so every pycma call runs inside :meth:`active`.
    """

    def __init__(self, seed: int) -> None:
        self._state = np.random.RandomState(seed % (2**32)).get_state()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = np.random.get_state()
        np.random.set_state(self._state)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                yield
        finally:
            self._state = np.random.get_state()
            np.random.set_state(saved)


def _default_cma_factory(x0: np.ndarray, sigma0: float, opts: dict[str, Any]):
    import cma

    return cma.CMAEvolutionStrategy(x0, sigma0, opts)


@dataclass
class RestartResult:
    """One CMA-ES restart.

    Attributes:
        seed: the restart's seed; x0: its start (= the CMA mean at construction).
        best_x, best_f, best_acc, best_ce: the winner x_n* (lowest fitness in P) and its numbers.
        pool: P as ``(f, acc)`` pairs (x_n, the best of each generation, the final mean).
        evaluated_f: every fitness value computed in this restart.
        tell_sizes: number of (z, f) pairs passed to each ``tell``.
        first_population: the first generation's candidates ``(lambda, D)``.
        final_mean, final_sigma, countevals: CMA state after the last ``tell``.
    """

    seed: int
    x0: np.ndarray
    best_x: np.ndarray
    best_f: float
    best_acc: float
    best_ce: float
    pool: list[tuple[float, float]]
    evaluated_f: list[float]
    tell_sizes: list[int]
    first_population: np.ndarray
    final_mean: np.ndarray
    final_sigma: float
    countevals: int

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (what checkpoints and the history store)."""
        return {"seed": self.seed, "best_f": self.best_f, "best_acc": self.best_acc, "best_ce": self.best_ce,
                "final_sigma": self.final_sigma, "countevals": self.countevals,
                "final_mean": [float(v) for v in self.final_mean], "tell_sizes": list(self.tell_sizes)}


FitnessFn = Callable[[np.ndarray], "tuple[float, float, float]"]  # z -> (f, acc, ce)


def run_restart(x0: np.ndarray, sigma0: float, fitness: FitnessFn, *, popsize: int, generations: int, seed: int,
                keep_mean: bool = True, cma_factory: Callable[..., Any] | None = None,
                fitness_many: Callable[[list[np.ndarray]], list[tuple[float, float, float]]] | None = None,
                ) -> RestartResult:
    """One CMA-ES run started at mean ``x0`` with step ``sigma0`` (pycma), minimising ``fitness``.

    ``fitness(z) -> (f, acc, ce)``; ``fitness_many(Z) -> [fitness(z) for z in Z]`` (in order)
    evaluates the lambda candidates of one ``tell`` at once, e.g. on an executor (default: one
    ``fitness`` call per candidate). P = {x0} + {argmin of each generation} (+ {final mean});
    the returned winner is argmin_P f (first on ties), so ``best_f <= min(evaluated_f)``.
    Forwards: ``1 + popsize * generations (+ 1)``. pycma samples from a private generator
    seeded with ``seed``; NumPy's global RNG is left as it was.
    """
    factory = cma_factory or _default_cma_factory
    gen = np.random.default_rng(seed)
    iso = _PrivateNumpy(seed)

    def randn(*shape: int) -> np.ndarray:
        return gen.standard_normal(shape if shape else None)

    opts = {"popsize": int(popsize), "seed": float("nan"), "randn": randn, "verbose": -9, "verb_disp": 0,
            "verb_log": 0}
    x0 = np.asarray(x0, dtype=np.float64).copy()
    with iso.active():
        es = factory(x0.copy(), float(sigma0), opts)
    f0, a0, c0 = fitness(x0)
    pool: list[tuple[float, float, float, np.ndarray]] = [(f0, a0, c0, x0)]
    evaluated = [f0]
    tells: list[int] = []
    first_pop = None
    for _ in range(generations):
        with iso.active():
            Z = [np.asarray(z, dtype=np.float64) for z in es.ask()]
        if first_pop is None:
            first_pop = np.stack(Z)
        results = fitness_many(Z) if fitness_many is not None else [fitness(z) for z in Z]
        fs = [r[0] for r in results]
        evaluated += fs
        with iso.active():
            es.tell(Z, fs)
        tells.append(len(Z))
        k = int(np.argmin(fs))
        pool.append((results[k][0], results[k][1], results[k][2], Z[k]))
    mean = np.asarray(es.mean, dtype=np.float64).copy()
    if keep_mean:
        fm, am, cm = fitness(mean)
        evaluated.append(fm)
        pool.append((fm, am, cm, mean))
    best = min(range(len(pool)), key=lambda i: (pool[i][0], i))
    bf, ba, bc, bx = pool[best]
    return RestartResult(
        seed=seed, x0=x0, best_x=bx.copy(), best_f=float(bf), best_acc=float(ba), best_ce=float(bc),
        pool=[(float(p[0]), float(p[1])) for p in pool], evaluated_f=[float(v) for v in evaluated],
        tell_sizes=tells, first_population=first_pop if first_pop is not None else np.empty((0, x0.size)),
        final_mean=mean, final_sigma=float(es.sigma), countevals=int(getattr(es, "countevals", 0)),
    )


@dataclass
class ESEpochResult:
    """One ES update (Alg. 1 lines 4-15).

    Attributes:
        t, sigma: epoch and CMA step size.
        acc_alpha, ce_alpha: Acc / CE of alpha_t on the ES minibatch.
        restarts: one :class:`RestartResult` per restart.
        winner: Eq. 9 index; direction: the winner's x_n* (the raw s).
        evaluations: supernet forwards used.
    """

    t: int
    sigma: float
    acc_alpha: float
    ce_alpha: float
    restarts: list[RestartResult]
    winner: int
    direction: np.ndarray
    evaluations: int

    @property
    def best_fitness(self) -> float:
        return min(r.best_f for r in self.restarts)


def es_epoch(alpha: np.ndarray, evaluate_z: Callable[[np.ndarray], tuple[float, float]], *, num_ops: int, t: int,
             seed: int, restarts: int, popsize: int, generations: int = 1, zeta: float = 1.0, eta: float = 0.4,
             restart_noise: float = 0.01, sigma_min: float = 0.02, keep_mean: bool = True,
             cma_factory: Callable[..., Any] | None = None,
             on_restart: Callable[[int, RestartResult], None] | None = None,
             executor: Executor | None = None,
             penalty: Callable[[np.ndarray], float] | None = None) -> ESEpochResult:
    """Alg. 1 lines 4-15 on a fixed minibatch: N CMA-ES restarts around ``alpha`` and Eq. 9.

    Args:
        alpha: current architecture logits, flat ``(D,)`` with ``D = 2 * E * num_ops``.
        evaluate_z: ``z (D,) -> (CE, accuracy)`` of the supernet with architecture z on the ES batch.
        num_ops: ops per edge (rows of ``num_ops`` entries for the per-edge cosine).
        t: epoch index (sets sigma_t and the restart seeds); seed: the run seed.
        restarts, popsize, generations, zeta, eta, restart_noise, sigma_min, keep_mean: see
            :class:`~compress.strategies.eg_nas.config.CMAESConfig`.
        cma_factory: ``(x0, sigma0, opts) -> CMA-ES object`` (default pycma), for tests.
        on_restart: called after each restart with ``(n, result)``.
        executor: evaluates the lambda candidates of each ``tell`` (``executor.map(evaluate_z, Z)``;
            default serial). ``evaluate_z`` must then be picklable (:class:`SupernetEvaluator` is).
            A candidate's value depends only on z and the fixed minibatch (the forward draws no
            random numbers), so every executor gives the serial run's numbers.
        penalty: ``z -> float`` added to the CE of Eq. 7's L1 (the expected-latency term of issue 18,
            :class:`~compress.strategies.darts.latency.LatencyTerm`; computed here, not on the
            executor: it is a small tensor product). None: Eq. 7 as published. Eq. 9 still selects
            by accuracy alone.

    Returns:
        :class:`ESEpochResult`; the update itself is :func:`apply_direction` of ``result.direction``.
    """
    alpha = np.asarray(alpha, dtype=np.float64).reshape(-1)
    sigma = sigma_schedule(t, sigma_min)
    count = 0

    def ev(z: np.ndarray) -> tuple[float, float]:
        nonlocal count
        count += 1
        ce, acc = evaluate_z(z)
        return float(ce), float(acc)

    ce0, acc0 = ev(alpha)

    def l1(ce: float, z: np.ndarray) -> float:
        return ce if penalty is None else ce + float(penalty(z))

    def fitness(z: np.ndarray) -> tuple[float, float, float]:
        ce, acc = ev(z)
        return compound_fitness(l1(ce, z), acc, acc0, l2_similarity(alpha, z, num_ops), zeta, eta), acc, ce

    runner = executor if executor is not None else SerialExecutor()

    def fitness_many(zs: list[np.ndarray]) -> list[tuple[float, float, float]]:
        nonlocal count
        count += len(zs)
        out = []
        for z, (ce, acc) in zip(zs, runner.map(evaluate_z, zs)):
            ce, acc = float(ce), float(acc)
            out.append((compound_fitness(l1(ce, z), acc, acc0, l2_similarity(alpha, z, num_ops), zeta, eta), acc, ce))
        return out

    results = []
    for n in range(restarts):
        seed_n = derive_seed(seed, "es", t, n)
        noise = np.random.default_rng(derive_seed(seed, "start", t, n)).standard_normal(alpha.size)
        x0 = alpha + restart_noise * noise
        res = run_restart(x0, sigma, fitness, popsize=popsize, generations=generations, seed=seed_n,
                          keep_mean=keep_mean, cma_factory=cma_factory, fitness_many=fitness_many)
        results.append(res)
        if on_restart is not None:
            on_restart(n, res)
    winner = select_direction([r.best_acc for r in results])
    return ESEpochResult(t=t, sigma=sigma, acc_alpha=acc0, ce_alpha=ce0, restarts=results, winner=winner,
                         direction=results[winner].best_x.copy(), evaluations=count)
