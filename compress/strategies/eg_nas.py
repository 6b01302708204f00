"""Strategy ``eg-nas``: a DARTS supernet whose architecture is moved by CMA-ES directions.

Source: Cai et al., "EG-NAS: Neural Architecture Search with Fast Evolutionary Exploration",
AAAI 2024 (``shared/papers/004_…``); implementation notes in ALGORITHMS.md §4.

Pipeline: search (below) -> DARTS genotype -> size ``(C, cells)`` of the evaluation network to the
budget by measuring a small grid through ``ctx.check`` -> retrain it from scratch with KD from the
teacher -> student.

Search (Alg. 1, Eq. 3-9). The supernet weights ``w`` are trained by SGD on the *weight half* of the
training split; the architecture logits ``alpha`` (2 x 14 x |O|) never receive gradients. At every
epoch ``t >= warmup_epochs``, on one minibatch of the *direction half*:

1. ``acc0 = Acc(w, alpha_t)``;
2. for each of N restarts: ``x_n = alpha_t + sigma_n * N(0, I)`` (own seed per restart), a CMA-ES
   (pycma, population lambda, step ``sigma_t = max(1/(t+1), sigma_min)``) runs G generations on the
   compound fitness (Eq. 7, minimised) ``f(z) = zeta * CE(z) - eta * L2`` if ``acc0 > Acc(z)`` else
   ``zeta * CE(z) + eta * L2``, with ``L2 = mean_edges (cos(alpha_t, z) + 1) / 2`` (Eq. 6);
   the restart's winner ``x_n*`` is the best fitness in P = {x_n, best of each generation, final mean};
3. Eq. 9: ``s = argmax_n Acc(w, x_n*)``; Eq. 8: ``alpha_{t+1} = alpha_t + xi * dir(s)``.

The loop (weight steps on the training runtime's device and precision, checkpoints, resume) is the
shared :class:`~compress.strategies.darts.supernet_search.SupernetSearch` that ``darts-gal`` uses
too; steps 1-3 are its architecture updater, :class:`CMAESUpdater`.

Documented choices (ALGORITHMS.md §4(b)), each a config field:

* CMA-ES searches logit space (paper), candidate op weights are ``softmax(z)`` per edge;
* ``dir(s) = softmax(s)`` per edge (official semantics; ``direction="raw"`` is the paper literal);
* restarts get distinct seeds derived from the run seed, epoch and restart index (the released code
  reuses seed 1, so its restarts coincide);
* sigma_t uses the real epoch index (the released CIFAR code passes a variable stuck at 0);
* Eq. 9 accuracies are those measured on the ES minibatch during the fitness evaluation (the
  same numbers a re-evaluation would give: fitness forwards use batch statistics and leave BN
  running statistics untouched, ``es_bn="batch"``);
* pycma's ``seed`` option reseeds NumPy's global RNG; here CMA-ES samples from a private
  ``numpy.random.Generator`` (option ``randn``) and every pycma call runs with NumPy's global
  state swapped for a private one, so runs are reproducible and the caller's RNG is untouched;
* ES evaluations per epoch: ``1 + N * (lambda * G + 2)`` supernet forwards (``+1`` per restart
  for x_n, ``+1`` for the final mean; ``keep_mean=False`` drops the latter);
* ``alpha_update="gradient"`` replaces steps 1-3 by first-order DARTS (Adam on
  ``grad_alpha L_val``) on the same supernet, splits and warm-up: the baseline.

Not copied from the released code: the 6-of-7-argument ``CFF`` call, ``--mon`` as ``int``, the
undefined ImageNet arguments, the identical restarts, the stuck sigma.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from compress.errors import ConfigError
from compress.strategies._parts.config_fields import check_fields
from compress.executors import Executor, SerialExecutor
from compress.registry import register_strategy
from compress.strategies.base import Strategy, StrategyContext, StrategyOutput, config_to_dict
from compress.strategies.darts.architect import Architect
from compress.strategies.darts.drawing import draw_genotype
from compress.strategies.darts.genotype import Genotype, alpha_entropy
from compress.strategies.darts.model import NetworkCIFAR
from compress.strategies.darts.ops import PRIMITIVE_SETS
from compress.strategies.darts.search import SearchNetwork
from compress.strategies.darts.sizing import DEFAULT_C, DEFAULT_LAYERS, size_to_budget
from compress.strategies.darts.supernet_search import (ArchUpdater, SearchOutcome, SearchSchedule, SupernetSearch,
                                                       build_supernet, dataset_of)
from compress.training import AUGMENTATIONS, CheckpointStore, EpochCheckpoint, FinetuneSettings, finetune
from compress.training.checkpoint import stable_hash
from compress.training.data import derive_seed, split_dataset
from compress.training.runtime import Runtime

__all__ = [
    "EGNASConfig",
    "EGNAS",
    "sigma_schedule",
    "l2_similarity",
    "compound_fitness",
    "select_direction",
    "apply_direction",
    "run_restart",
    "es_epoch",
    "RestartResult",
    "ESEpochResult",
    "SupernetEvaluator",
    "CMAESUpdater",
    "EGNASSearch",
    "SearchOutcome",
    "derive_seed",
]

STRATEGY = "eg-nas"


# =========================================================================== config


@dataclass(frozen=True)
class EGNASConfig:
    """Settings of ``eg-nas``; every field lands in ``report.json`` under ``config``.

    Defaults are the paper's CIFAR-10 setting (§"Datasets and Implementation Details") and the
    released code where the paper is silent (ALGORITHMS.md §4(a)); they are GPU-scale. Use
    ``EGNASConfig.preset("cpu-small")`` on a CPU.

    Attributes:
        search_C, search_layers: supernet width and cells (16, 8).
        primitives: ``"eg-nas"`` (7 ops, no ``'none'``; released code) or ``"darts"`` (8 ops).
        partial_channels: PC-DARTS K (4; 1 = off). Must divide ``search_C``.
        edge_norm: PC-DARTS edge normalisation (EG-NAS: off).
        pool_bn: BN after pools in MixedOps (EG-NAS: off; DARTS: on).
        search_stem_stride: 1, or 2 to search at half resolution (CPU).
        search_epochs, warmup_epochs: T = 50, W = 15 (no alpha update for t < W).
        batch_size: weight-training minibatch (256).
        es_batch_size: the direction minibatch used by every fitness call of an epoch (128).
        train_portion: fraction of the train split that trains the weights; the rest is the
            direction half (0.5).
        w_lr, w_lr_min, w_momentum, w_weight_decay, grad_clip: SGD on the weights, cosine per
            epoch from ``w_lr`` to ``w_lr_min`` (0.1 -> 0, 0.9, 3e-4, clip 5).
        max_steps_per_epoch: cap on weight steps per search epoch (None: the whole weight half).
        search_val_batches: batches of the task's val split for the per-epoch supernet accuracy
            (None: all).
        alpha_update: ``"cmaes"`` (EG-NAS) or ``"gradient"`` (first-order DARTS baseline).
        restarts: N sampled starting points (5).
        popsize: CMA-ES population lambda (25).
        generations: G, CMA-ES generations per restart (1).
        zeta, eta: weights of CE and L2 in Eq. 7 (1.0, 0.4).
        xi: alpha step size of Eq. 8 (0.6).
        restart_noise: sigma_n of Alg. 1 line 5 (0.01).
        sigma_min: floor of sigma_t = max(1/(t+1), sigma_min) (0.02).
        direction: ``"softmax"`` (dir(s) = per-edge softmax of s) or ``"raw"`` (s itself).
        keep_mean: add the CMA mean after the last generation to P.
        es_bn: ``"batch"`` (fitness forwards use batch statistics, running stats untouched) or
            ``"running"`` (eval mode).
        arch_lr, arch_weight_decay: Adam on alpha for ``alpha_update="gradient"`` (DARTS 3e-4, 1e-3).
        candidates_C, candidates_layers, stem_strides, capacity: the sizing grid (see
            :func:`~compress.strategies.darts.sizing.size_to_budget`).
        final_epochs, final_lr, final_momentum, final_weight_decay: retrain schedule (DARTS
            protocol: 600 epochs, lr 0.025 cosine, momentum 0.9, wd 3e-4; SGD Nesterov here).
        final_drop_path: drop-path probability, ramped linearly over the retrain (0 = off).
        final_max_steps_per_epoch: cap on retrain steps per epoch.
        kd_alpha, kd_temperature: KD from the teacher during the retrain.
        augment: retrain augmentation (``"none"``, ``"flip-crop"``).

    Raises:
        ConfigError: any value out of range (the message names the field).
    """

    search_C: int = 16
    search_layers: int = 8
    primitives: str = "eg-nas"
    partial_channels: int = 4
    edge_norm: bool = False
    pool_bn: bool = False
    search_stem_stride: int = 1
    search_epochs: int = 50
    warmup_epochs: int = 15
    batch_size: int = 256
    es_batch_size: int = 128
    train_portion: float = 0.5
    w_lr: float = 0.1
    w_lr_min: float = 0.0
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    max_steps_per_epoch: int | None = None
    search_val_batches: int | None = None
    alpha_update: str = "cmaes"
    restarts: int = 5
    popsize: int = 25
    generations: int = 1
    zeta: float = 1.0
    eta: float = 0.4
    xi: float = 0.6
    restart_noise: float = 0.01
    sigma_min: float = 0.02
    direction: str = "softmax"
    keep_mean: bool = True
    es_bn: str = "batch"
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    candidates_C: tuple[int, ...] = DEFAULT_C
    candidates_layers: tuple[int, ...] = DEFAULT_LAYERS
    stem_strides: tuple[int, ...] = (1, 2)
    capacity: str = "params"
    final_epochs: int = 600
    final_lr: float = 0.025
    final_momentum: float = 0.9
    final_weight_decay: float = 3e-4
    final_drop_path: float = 0.0
    final_max_steps_per_epoch: int | None = None
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    augment: str = "none"

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and, by its name, its range
        for name in ("candidates_C", "candidates_layers", "stem_strides"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"EGNASConfig: {msg}")

        need(self.alpha_update in ("cmaes", "gradient"), f"alpha_update must be 'cmaes' or 'gradient', got {self.alpha_update!r}.")
        need(self.primitives in PRIMITIVE_SETS, f"primitives must be one of {sorted(PRIMITIVE_SETS)}, got {self.primitives!r}.")
        need(self.direction in ("softmax", "raw"), f"direction must be 'softmax' or 'raw', got {self.direction!r}.")
        need(self.es_bn in ("batch", "running"), f"es_bn must be 'batch' or 'running', got {self.es_bn!r}.")
        need(self.capacity in ("params", "macs"), f"capacity must be 'params' or 'macs', got {self.capacity!r}.")
        need(self.augment in AUGMENTATIONS, f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}.")
        for name in ("search_C", "search_layers", "search_epochs", "batch_size", "es_batch_size", "restarts",
                     "generations", "partial_channels"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"{name} must be an int >= 1.")
        need(self.popsize >= 2, f"popsize (lambda) must be >= 2, got {self.popsize}.")
        need(0 <= self.warmup_epochs <= self.search_epochs,
             f"warmup_epochs must be in [0, search_epochs={self.search_epochs}], got {self.warmup_epochs}.")
        need(self.search_C % self.partial_channels == 0,
             f"partial_channels={self.partial_channels} must divide search_C={self.search_C}.")
        need(self.search_C % 2 == 0, f"search_C must be even (FactorizedReduce halves it), got {self.search_C}.")
        need(self.search_stem_stride in (1, 2), f"search_stem_stride must be 1 or 2, got {self.search_stem_stride}.")
        need(0.0 < self.train_portion < 1.0, f"train_portion must be in (0, 1), got {self.train_portion}.")
        need(self.w_lr > 0 and 0 <= self.w_lr_min <= self.w_lr, "need w_lr > 0 and 0 <= w_lr_min <= w_lr.")
        need(0 <= self.w_momentum < 1 and self.w_weight_decay >= 0 and self.grad_clip > 0,
             "need 0 <= w_momentum < 1, w_weight_decay >= 0, grad_clip > 0.")
        need(self.zeta >= 0 and self.eta >= 0 and self.xi > 0, "need zeta >= 0, eta >= 0, xi > 0.")
        need(self.restart_noise >= 0 and self.sigma_min > 0, "need restart_noise >= 0 and sigma_min > 0.")
        need(self.arch_lr > 0 and self.arch_weight_decay >= 0, "need arch_lr > 0 and arch_weight_decay >= 0.")
        for name in ("max_steps_per_epoch", "search_val_batches", "final_max_steps_per_epoch"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and v >= 1), f"{name} must be None or an int >= 1.")
        need(bool(self.candidates_C) and all(c >= 2 and c % 2 == 0 for c in self.candidates_C),
             f"candidates_C must be even ints >= 2, got {self.candidates_C}.")
        need(bool(self.candidates_layers) and all(v >= 1 for v in self.candidates_layers),
             f"candidates_layers must be ints >= 1, got {self.candidates_layers}.")
        need(bool(self.stem_strides) and all(s in (1, 2) for s in self.stem_strides),
             f"stem_strides must be 1 and/or 2, got {self.stem_strides}.")
        need(self.final_epochs >= 0 and self.final_lr > 0 and 0 <= self.final_momentum < 1
             and self.final_weight_decay >= 0, "need final_epochs >= 0, final_lr > 0, 0 <= final_momentum < 1.")
        need(0.0 <= self.final_drop_path < 1.0, f"final_drop_path must be in [0, 1), got {self.final_drop_path}.")
        need(0.0 <= self.kd_alpha <= 1.0 and self.kd_temperature > 0, "kd_alpha must be in [0, 1] and kd_temperature > 0.")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "EGNASConfig":
        """A named setting plus overrides.

        * ``"paper"``: the defaults (GPU scale).
        * ``"cpu-small"``: ALGORITHMS.md §4(c) -- supernet C 8, 5 cells, K 2, searched at half
          resolution; T 8, W 3; N 2, lambda 8, G 1, ES batch 64; a small sizing grid and a
          10-epoch retrain. Minutes on 2 CPU cores for the digits demo.

        Raises:
            ConfigError: unknown preset name.
        """
        presets = _PRESETS
        if name not in presets:
            raise ConfigError(f"Unknown EGNASConfig preset {name!r}; known: {sorted(presets)}.")
        return cls(**{**presets[name], **overrides})


_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu-small": dict(
        search_C=8, search_layers=5, partial_channels=2, search_stem_stride=2,
        search_epochs=8, warmup_epochs=3, batch_size=64, es_batch_size=64, w_lr=0.05,
        restarts=2, popsize=8, generations=1, search_val_batches=4,
        candidates_C=(4, 6, 8, 12, 16, 20, 24), candidates_layers=(3, 5, 8),
        final_epochs=10, final_lr=0.025,
    ),
}


def _search_fields() -> set[str]:
    """Config fields that change the search (their hash guards the search checkpoints)."""
    final = {"candidates_C", "candidates_layers", "stem_strides", "capacity", "final_epochs", "final_lr",
             "final_momentum", "final_weight_decay", "final_drop_path", "final_max_steps_per_epoch",
             "kd_alpha", "kd_temperature", "augment"}
    return {f.name for f in dataclasses.fields(EGNASConfig)} - final


# =========================================================================== ES building blocks


def sigma_schedule(t: int, sigma_min: float = 0.02) -> float:
    """CMA-ES step size at epoch ``t`` (0-based): ``max(1/(t+1), sigma_min)`` (ALGORITHMS.md §4(b).5)."""
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
             executor: Executor | None = None) -> ESEpochResult:
    """Alg. 1 lines 4-15 on a fixed minibatch: N CMA-ES restarts around ``alpha`` and Eq. 9.

    Args:
        alpha: current architecture logits, flat ``(D,)`` with ``D = 2 * E * num_ops``.
        evaluate_z: ``z (D,) -> (CE, accuracy)`` of the supernet with architecture z on the ES batch.
        num_ops: ops per edge (rows of ``num_ops`` entries for the per-edge cosine).
        t: epoch index (sets sigma_t and the restart seeds); seed: the run seed.
        restarts, popsize, generations, zeta, eta, restart_noise, sigma_min, keep_mean: see
            :class:`EGNASConfig`.
        cma_factory: ``(x0, sigma0, opts) -> CMA-ES object`` (default pycma), for tests.
        on_restart: called after each restart with ``(n, result)``.
        executor: evaluates the lambda candidates of each ``tell`` (``executor.map(evaluate_z, Z)``;
            default serial). ``evaluate_z`` must then be picklable (:class:`SupernetEvaluator` is).
            A candidate's value depends only on z and the fixed minibatch (the forward draws no
            random numbers), so every executor gives the serial run's numbers.

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

    def fitness(z: np.ndarray) -> tuple[float, float, float]:
        ce, acc = ev(z)
        return compound_fitness(ce, acc, acc0, l2_similarity(alpha, z, num_ops), zeta, eta), acc, ce

    runner = executor if executor is not None else SerialExecutor()

    def fitness_many(zs: list[np.ndarray]) -> list[tuple[float, float, float]]:
        nonlocal count
        count += len(zs)
        out = []
        for z, (ce, acc) in zip(zs, runner.map(evaluate_z, zs)):
            ce, acc = float(ce), float(acc)
            out.append((compound_fitness(ce, acc, acc0, l2_similarity(alpha, z, num_ops), zeta, eta), acc, ce))
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


@contextlib.contextmanager
def _bn_batch_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm (batch statistics) whose running statistics stay untouched."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    was = model.training
    model.train()
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (mom, nbt) in zip(bns, saved):
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)
        model.train(was)


#: autocast dtype of the fitness forwards per runtime precision (None: float32)
_AUTOCAST: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class SupernetEvaluator:
    """``z -> (CE, accuracy)`` of the supernet with architecture logits z on a fixed minibatch.

    No gradients; ``bn="batch"`` uses batch statistics without updating running statistics,
    ``"running"`` evaluates in eval mode. The minibatch ``x (B, C, H, W)``, ``y (B,)`` must be on
    the model's device; z becomes a tensor on that device. ``autocast_dtype`` (bfloat16 / float16)
    runs the forward under autocast, as the runtime's weight steps do (None: float32). ``calls``
    counts the forwards run in this process (an executor's workers run on copies). Picklable
    (model and minibatch), and draws no random numbers, so executors return the same values as a
    local call.
    """

    def __init__(self, model: SearchNetwork, x: torch.Tensor, y: torch.Tensor, bn: str = "batch",
                 autocast_dtype: torch.dtype | None = None) -> None:
        self.model, self.x, self.y, self.bn = model, x, y, bn
        self.autocast_dtype = autocast_dtype
        self.calls = 0

    @torch.no_grad()
    def __call__(self, z: np.ndarray) -> tuple[float, float]:
        self.calls += 1
        zt = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=self.x.device)
        a_n, a_r = self.model.split_arch_vector(zt)
        amp = (torch.autocast(self.x.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else contextlib.nullcontext())
        with amp:
            if self.bn == "batch":
                with _bn_batch_stats_frozen(self.model):
                    logits = self.model(self.x, alphas=(a_n, a_r))
            else:
                was = self.model.training
                self.model.eval()
                logits = self.model(self.x, alphas=(a_n, a_r))
                self.model.train(was)
        logits = logits.float()
        ce = float(F.cross_entropy(logits, self.y))
        acc = float((logits.argmax(1) == self.y).float().mean())
        return ce, acc


# =========================================================================== the search


def _config_hash(cfg: EGNASConfig, fields: set[str] | None, extra: dict[str, Any]) -> str:
    d = config_to_dict(cfg)
    if fields is not None:
        d = {k: v for k, v in d.items() if k in fields}
    return stable_hash({"config": d, **extra})


class CMAESUpdater(ArchUpdater):
    """EG-NAS's architecture update (Alg. 1 lines 4-16), once per epoch after the warm-up: CMA-ES
    directions on one minibatch of the direction half (:func:`es_epoch`), Eq. 9, Eq. 8. Alpha never
    receives gradients.

    Args:
        cfg: the config (ES fields).
        model: the supernet, on ``runtime.device``.
        direction: the direction half of the training split.
        seed: run seed.
        runtime: device and precision of the fitness forwards.
        cma_factory: pycma replacement for tests.
        executor: evaluates the lambda candidates of each ``tell`` (default serial).
        progress: ``progress(phase, done, total, info)`` after each restart.
    """

    per_step = False
    alpha_requires_grad = False

    def __init__(self, cfg: EGNASConfig, model: SearchNetwork, direction: Dataset, seed: int, *, runtime: Runtime,
                 cma_factory: Callable[..., Any] | None = None, executor: Executor | None = None,
                 progress: Callable[[str, int, int | None, dict], None] | None = None) -> None:
        self.cfg, self.model, self.direction, self.seed = cfg, model, direction, int(seed)
        self.runtime = runtime
        self.cma_factory = cma_factory
        self.executor = executor if executor is not None else SerialExecutor()
        self.progress = progress or (lambda *a, **k: None)
        self.num_ops = len(model.primitives)
        self.last_es: list[dict[str, Any]] = []
        self.es_evaluations = 0

    def es_batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's direction minibatch (seeded by run seed and epoch), on the CPU."""
        ds = self.direction
        n = len(ds)  # type: ignore[arg-type]
        g = torch.Generator().manual_seed(derive_seed(self.seed, "es-batch", t))
        idx = torch.randperm(n, generator=g)[: min(self.cfg.es_batch_size, n)].tolist()
        x, y = default_collate([ds[i] for i in idx])[:2]
        return x, y

    def update(self, t: int) -> ESEpochResult:
        """Alg. 1 lines 4-16 at epoch ``t``: ES directions, Eq. 9, Eq. 8 (alpha changed in place)."""
        cfg = self.cfg
        x, y = self.runtime.to_device(self.es_batch(t))
        evaluator = SupernetEvaluator(self.model, x, y, bn=cfg.es_bn, autocast_dtype=_AUTOCAST[self.runtime.precision])
        alpha_t = self.model.arch_vector()

        def on_restart(n: int, r: RestartResult) -> None:
            self.progress("es restarts", n + 1, cfg.restarts, {"epoch": t, "best_f": r.best_f, "best_acc": r.best_acc})

        res = es_epoch(alpha_t.cpu().double().numpy(), evaluator, num_ops=self.num_ops, t=t, seed=self.seed,
                       restarts=cfg.restarts, popsize=cfg.popsize, generations=cfg.generations, zeta=cfg.zeta,
                       eta=cfg.eta, restart_noise=cfg.restart_noise, sigma_min=cfg.sigma_min,
                       keep_mean=cfg.keep_mean, cma_factory=self.cma_factory, on_restart=on_restart,
                       executor=self.executor)
        new = apply_direction(alpha_t, res.direction, cfg.xi, self.num_ops, cfg.direction)
        with torch.no_grad():
            a_n, a_r = self.model.split_arch_vector(new)
            self.model.alphas_normal.copy_(a_n)
            self.model.alphas_reduce.copy_(a_r)
        self.es_evaluations = res.evaluations
        self.last_es = [dict(r.summary(), restart=i) for i, r in enumerate(res.restarts)]
        return res

    def epoch_update(self, t: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        res = self.update(t)
        return {"sigma": res.sigma, "es_acc_alpha": res.acc_alpha, "es_ce_alpha": res.ce_alpha,
                "best_fitness": res.best_fitness, "es_winner": res.winner,
                "es_winner_acc": res.restarts[res.winner].best_acc, "es_evaluations": res.evaluations,
                "wall_es_s": time.perf_counter() - t0}

    def state_json(self) -> dict[str, Any]:
        return {"cma_last_epoch": self.last_es}

    def load_state_json(self, state: Mapping[str, Any]) -> None:
        self.last_es = list(state.get("cma_last_epoch", []))


class EGNASSearch(SupernetSearch):
    """The EG-NAS search (one object per run): the shared supernet loop with the CMA-ES updater
    (``alpha_update="cmaes"``) or first-order DARTS (``"gradient"``), per-epoch checkpoints and resume.

    Args:
        cfg: the config; ctx-like inputs are passed explicitly so tests can drive it directly:
        train_ds: the training dataset (split into weight / direction halves inside).
        val_loader: loader for the per-epoch supernet accuracy (may be None).
        num_classes, input_shape: task sizes.
        seed: run seed.
        ckpt_dir: where per-epoch checkpoints go (None: none).
        progress: ``progress(phase, done, total, info)``; log: ``log(**record)``.
        cma_factory: pycma replacement for tests.
        executor: evaluates the lambda CMA-ES candidates of each ``tell``
            (:class:`~compress.executors.Executor`; default serial; the caller closes it).
        runtime: device and precision (default: CPU fp32).

    Raises:
        DataError: fewer than 4 training samples.
    """

    def __init__(self, cfg: EGNASConfig, train_ds: Dataset, val_loader: DataLoader | None, num_classes: int,
                 input_shape: tuple[int, int, int], seed: int, *, ckpt_dir: Path | None = None,
                 progress: Callable[[str, int, int | None, dict], None] | None = None,
                 log: Callable[..., None] | None = None, cma_factory: Callable[..., Any] | None = None,
                 executor: Executor | None = None, runtime: Runtime | None = None) -> None:
        self.cfg = cfg
        runtime = runtime or Runtime()
        weights, direction = split_dataset(train_ds, cfg.train_portion, seed, who="eg-nas")
        model = build_supernet(seed, cfg.search_C, num_classes, cfg.search_layers, primitives=cfg.primitives,
                               in_channels=input_shape[0], partial_channels=cfg.partial_channels,
                               edge_norm=cfg.edge_norm, pool_bn=cfg.pool_bn, stem_stride=cfg.search_stem_stride)
        runtime.prepare(model)
        model.set_arch_requires_grad(False)
        self.num_ops = len(model.primitives)
        self.architect: Architect | None = None
        self.es: CMAESUpdater | None = None
        updater: ArchUpdater
        if cfg.alpha_update == "gradient":
            updater = self.architect = Architect(model, lr=cfg.arch_lr, weight_decay=cfg.arch_weight_decay,
                                                 second_order=False, runtime=runtime)
        else:
            updater = self.es = CMAESUpdater(cfg, model, direction, seed, runtime=runtime, cma_factory=cma_factory,
                                             executor=executor, progress=progress)
        schedule = SearchSchedule(
            epochs=cfg.search_epochs, warmup_epochs=cfg.warmup_epochs, batch_size=cfg.batch_size, lr=cfg.w_lr,
            lr_min=cfg.w_lr_min, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay, grad_clip=cfg.grad_clip,
            max_steps_per_epoch=cfg.max_steps_per_epoch, val_batches=cfg.search_val_batches)
        key = _config_hash(cfg, _search_fields(), {
            "seed": int(seed), "n_train": len(train_ds), "num_classes": num_classes,  # type: ignore[arg-type]
            "input_shape": list(input_shape)})
        super().__init__(schedule, model, weights, direction, val_loader, seed, updater, runtime=runtime,
                         ckpt_dir=ckpt_dir, key=key, progress=progress, log=log,
                         record={"alpha_update": cfg.alpha_update})
        self.hash = key

    def es_batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's direction minibatch (seeded by run seed and epoch), on the CPU."""
        if self.es is None:
            raise ConfigError("es_batch needs alpha_update='cmaes'.")
        return self.es.es_batch(t)

    def es_update(self, t: int) -> ESEpochResult:
        """Alg. 1 lines 4-16 at epoch ``t``: ES directions, Eq. 9, Eq. 8 (alpha changed in place).

        Raises:
            ConfigError: the search moves alpha by gradient (``alpha_update="gradient"``).
        """
        if self.es is None:
            raise ConfigError("es_update needs alpha_update='cmaes'.")
        return self.es.update(t)


# =========================================================================== strategy


@register_strategy(STRATEGY)
class EGNAS(Strategy):
    """EG-NAS search -> DARTS genotype -> budget sizing -> KD retrain (AAAI'24, Alg. 1, Eq. 6-9).

    Input: the teacher (``ctx.teacher``, used only for KD) and the task; the user's architecture is
    not reused. Output: a :class:`~compress.strategies.darts.model.NetworkCIFAR`
    ``(B, C, H, W) -> (B, K)`` that meets ``ctx.budget``.

    Raises:
        BudgetUnreachableError: no (C, cells) candidate of the sizing grid fits the budget.
        DataError: the training split is too small to split.
        ConfigError: invalid config.
    """

    config_cls = EGNASConfig
    #: settings for the digits demo / quick CPU runs (the defaults are the paper's GPU-scale ones)
    @classmethod
    def demo_config(cls, epochs: int) -> dict[str, Any]:
        """The CPU-scale preset (ALGORITHMS.md §4(c)); the demo's ``epochs`` raises the final retrain (never below the preset)."""
        return {**_PRESETS["cpu-small"], "final_epochs": max(int(epochs), _PRESETS["cpu-small"].get("final_epochs", 0))}
    paper = "Cai et al., EG-NAS: Neural Architecture Search with Fast Evolutionary Exploration, AAAI 2024"

    @classmethod
    def build_student(cls, arch: dict) -> nn.Module:
        """Rebuild the sized evaluation network from ``NetworkCIFAR.arch_dict()``."""
        from compress.strategies.darts.model import build_from_arch

        return build_from_arch(arch)

    def run(self, ctx: StrategyContext) -> StrategyOutput:
        cfg: EGNASConfig = self.config
        if not ctx.executor.can_run_on(ctx.runtime.device):
            raise ConfigError(
                f"eg-nas evaluates its CMA-ES population on {ctx.runtime.device}, but the {ctx.executor.name!r} "
                "executor's workers cannot use that device (a worker gets a pickled copy of the supernet, and Ray "
                "hides the GPUs from tasks that reserve none). Use executor='serial' (the population is then "
                "evaluated on the GPU in this process), executor=RayExecutor(num_gpus_per_task=0.25) to give each "
                "Ray task a GPU share, or device='cpu'.")
        spec = ctx.data.spec
        num_classes, input_shape = spec.num_classes, tuple(spec.input_shape)
        store = CheckpointStore.for_strategy(ctx.out_dir, STRATEGY)
        ckpt_dir = store.dir
        train_ds = dataset_of(ctx.data.train, STRATEGY)

        with ctx.phase("search"):
            search = EGNASSearch(cfg, train_ds, ctx.data.val, num_classes, input_shape, ctx.seed, ckpt_dir=ckpt_dir,
                                 progress=ctx.progress, log=ctx.log, executor=ctx.executor, runtime=ctx.runtime)
            outcome = search.run()
        ctx.wall_s["search_arch_update"] = outcome.wall_arch_s
        ctx.wall_s["search_weights"] = outcome.wall_weights_s
        genotype = outcome.genotype

        final_hash = _config_hash(cfg, None, {"seed": ctx.seed, "genotype": genotype.to_dict(),
                                               "budget": ctx.budget.to_dict(), "num_classes": num_classes,
                                               "input_shape": list(input_shape)})
        resumed_final = False
        net: NetworkCIFAR | None = None
        retrain_history: list[dict[str, Any]] = []
        sizing_info: dict[str, Any] = {}
        final = store.load("final", key=final_hash)
        if final is not None:
            st = final.state
            net = NetworkCIFAR(st["C"], num_classes, st["layers"], genotype, in_channels=input_shape[0],
                               stem_stride=st["stem_stride"])
            net.load_state_dict(final.tensors["weights"])
            retrain_history, sizing_info, resumed_final = st["retrain_history"], st["sizing"], True
            ctx.history[:] = st["history"]
            final.restore_rng()
        if net is None:
            with ctx.phase("sizing"):
                done = [0]

                def on_trial(rec: dict[str, Any]) -> None:
                    done[0] += 1
                    ctx.log(phase="sizing", **rec)
                    ctx.progress("sizing", done[0], None, {"C": rec["C"], "layers": rec["layers"], "ok": rec["ok"]})

                sized = size_to_budget(genotype, ctx, num_classes, input_shape, cfg.candidates_C,
                                       cfg.candidates_layers, stem_strides=cfg.stem_strides, capacity=cfg.capacity,
                                       on_trial=on_trial)
            sizing_info = {"C": sized.C, "layers": sized.layers, "stem_stride": sized.stem_stride,
                           "macs": int(sized.cost.macs), "params": int(sized.cost.params),
                           "latency_ms": sized.latency_ms, "trials": sized.trials}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(ctx.seed, "final"))
                net = NetworkCIFAR(sized.C, num_classes, sized.layers, genotype, in_channels=input_shape[0],
                                   stem_stride=sized.stem_stride)
            with ctx.phase("retrain"):
                retrain_history = self._retrain(net, ctx, store, final_hash)
            store.commit("final", {"C": sized.C, "layers": sized.layers, "stem_stride": sized.stem_stride,
                                   "genotype": genotype.to_dict(), "retrain_history": retrain_history,
                                   "sizing": sizing_info, "history": ctx.history},
                         {"weights": net.state_dict()}, key=final_hash)
        net.eval()
        entropies = [h["alpha_entropy"] for h in outcome.history]
        info = {
            "genotype": genotype.to_dict(),
            "genotype_json": genotype.to_json(),
            "alpha_update": cfg.alpha_update,
            "alpha_entropy_history": entropies,
            "final_alpha_entropy": alpha_entropy(torch.cat([outcome.alphas_normal, outcome.alphas_reduce])),
            "best_fitness_history": [h.get("best_fitness") for h in outcome.history],
            "search_val_acc_history": [h.get("val_acc") for h in outcome.history],
            "wall_s_arch_update": outcome.wall_arch_s,
            "wall_s_weights": outcome.wall_weights_s,
            "final_alphas": {"normal": outcome.alphas_normal.tolist(), "reduce": outcome.alphas_reduce.tolist()},
            "cma_last_epoch": [{k: v for k, v in r.items() if k != "final_mean"} for r in outcome.last_es],
            "chosen": {k: sizing_info.get(k) for k in ("C", "layers", "stem_stride", "macs", "params", "latency_ms")},
            "sizing_trials": sizing_info.get("trials", []),
            "retrain_history": retrain_history,
            "resumed_search_from_epoch": outcome.resumed_from_epoch,
            "resumed_final": resumed_final,
            "student_arch": net.arch_dict(),
            "executor": ctx.executor.describe(),
        }
        return StrategyOutput(student=net, info=info, arch=net.arch_dict(),
                              report_sections=_report_sections(outcome.history, genotype, info))

    def _retrain(self, net: NetworkCIFAR, ctx: StrategyContext, store: CheckpointStore | None = None,
                 key: str = "") -> list[dict[str, Any]]:
        cfg: EGNASConfig = self.config
        if cfg.final_epochs == 0:
            return []
        settings = FinetuneSettings(
            epochs=cfg.final_epochs, lr=cfg.final_lr, momentum=cfg.final_momentum,
            weight_decay=cfg.final_weight_decay, kd_alpha=cfg.kd_alpha, kd_temperature=cfg.kd_temperature,
            optimizer="sgd", keep_best=True, max_steps_per_epoch=cfg.final_max_steps_per_epoch,
            augment=cfg.augment, seed=derive_seed(ctx.seed, "retrain"),
        )
        gen = None
        if cfg.final_drop_path > 0:
            gen = torch.Generator().manual_seed(derive_seed(ctx.seed, "drop-path"))
            for cell in net.cells:
                cell.generator = gen
        net.drop_path_prob = 0.0

        def on_epoch(epoch: int, rec: dict) -> None:
            net.drop_path_prob = cfg.final_drop_path * epoch / cfg.final_epochs if epoch < cfg.final_epochs else 0.0
            ctx.log(phase="retrain", **rec)
            ctx.progress("retrain", epoch, cfg.final_epochs, rec)

        ckpt = None if store is None else EpochCheckpoint(store, "retrain", key, generators={"drop-path": gen})
        history = finetune(net, ctx.data.train, ctx.data.val, settings, teacher=ctx.teacher, on_epoch=on_epoch,
                           checkpoint=ckpt, runtime=ctx.runtime)
        net.drop_path_prob = 0.0
        for cell in net.cells:
            cell.generator = None
        return history


def _report_sections(history: list[dict[str, Any]], genotype: Genotype, info: dict[str, Any]) -> list[tuple[str, str]]:
    """report.md sections: the search history per epoch (alpha entropy in nats, the best compound
    fitness of Eq. 7, supernet val accuracy, seconds in the alpha update vs the weights) and the
    derived genotype drawn as cells."""
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    rows = ["| epoch | alpha entropy | best fitness | val acc | alpha update s | weights s |",
            "| --- | --- | --- | --- | --- | --- |"]
    for h in history:
        rows.append(f"| {h['epoch']} | {num(h.get('alpha_entropy'), '.4f')} | {num(h.get('best_fitness'), '.4f')} | "
                    f"{num(h.get('val_acc'), '.3f')} | {num(h.get('wall_arch_s'), '.1f')} | "
                    f"{num(h.get('wall_weights_s'), '.1f')} |")
    c = info["chosen"]
    n_ops = len(info["final_alphas"]["normal"][0])
    rows += ["", f"Final alpha entropy {info['final_alpha_entropy']:.4f} nats (uniform over the {n_ops} ops: "
                 f"{math.log(n_ops):.4f}); derived network C={c.get('C')}, {c.get('layers')} cells."]
    return [(f"Search ({info['alpha_update']}; alpha entropy = mean per-edge entropy in nats)", "\n".join(rows)),
            ("Genotype", "```text\n" + draw_genotype(genotype).rstrip() + "\n```")]
