"""The EG-NAS search: the supernet, its weight training and its CMA-ES architecture update
(Cai et al., AAAI 2024, Alg. 1).

The supernet weights ``w`` are trained by SGD on the *weight half* of the training split; the
architecture logits ``alpha`` (2 x 14 x |O|) never receive gradients. At every epoch
``t >= warmup_epochs`` the architecture moves by CMA-ES directions found on one minibatch of the
*direction half* (:func:`~compress.strategies.eg_nas.cmaes.es_epoch`, Eq. 3-9).

The loop (weight steps on the training runtime's device and precision, checkpoints, resume) is the
shared :class:`~compress.strategies.darts.supernet_search.SupernetSearch` that ``darts-gal`` uses
too; the architecture update is its updater, :class:`CMAESUpdater`, whose fitness forwards are
:class:`SupernetEvaluator`.

Documented choices (docs/algorithms/eg-nas.md, choices), each a config field:

* Eq. 9 accuracies are those measured on the ES minibatch during the fitness evaluation (the
  same numbers a re-evaluation would give: fitness forwards use batch statistics and leave BN
  running statistics untouched, ``es.bn="batch"``);
* ``search.alpha_update="gradient"`` replaces the CMA-ES update by first-order DARTS (Adam on
  ``grad_alpha L_val``) on the same supernet, splits and warm-up: the baseline.

Why alpha stayed uniform at the shipped presets, and the fix (issue 18, part 1). Eq. 8 adds
``xi * softmax(s)`` per edge; only its within-edge differences move the op weights. With
``s = alpha_t + sigma_t * y`` (the winning CMA-ES point) and alpha near uniform,
``softmax(s) ~ 1/|O| + (s - mean s) / |O|``: one update changes the within-edge spread of alpha by
about ``(xi / |O|) * sigma_t`` and multiplies the spread it already has by ``(1 + xi / |O|)``.
The paper makes T - W = 35 such updates (§"Datasets and Implementation Details": T = 50, W = 15),
so the spread compounds by ``(1 + 0.6/7)^35 ~ 18``; the ``cpu-small`` preset (T = 8, W = 3) makes
5, a factor 1.5, and alpha barely moves. Measured on the digits demo task at ``cpu-small``
(seed 0, ``max_steps_per_epoch=3``): the mean per-edge entropy goes 1.9457, 1.9456, 1.9455,
1.9454, 1.9452 over the 5 updating epochs (uniform: ln 7 = 1.9459;
benchmarks/results/eg_nas_cifar_small.md: 1.945 / 1.946 on CIFAR).

The fix keeps the paper's total step: ``es.xi_reference_updates = 35`` makes each of the search's
``T - W`` updates ``xi * 35 / (T - W)`` (4.2 at ``cpu-small``), the step size expressed per
search rather than per update (the option "a step size schedule expressed per search step" of
issue 18). At the paper's setting it is exactly ``xi``. Chosen over ``direction="raw"`` (whose
update ``alpha + xi * s`` re-adds alpha itself and grows it geometrically, ``(1 + xi)^k``, at
any T) and over more updates per epoch (each costs ``1 + N (lambda G + 2)`` forwards and changes
Alg. 1's loop). Measured at ``cpu-small`` as above with ``es.xi_reference_updates=35`` (xi 4.2): 1.9346,
1.9145, 1.8468, 1.6598, 1.2399 nats; the preset sets it (:mod:`.config`). Seeds 1 and 2 end at
1.1431 and 1.6061, but their genotypes do not agree: no edge of 28 has the same argmax op in all
three (pairwise 7-11% of edges, chance 1/7), so at this scale (3 weight steps per epoch, a
supernet at 10-30% validation accuracy) alpha now moves, but not yet reproducibly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from compress.errors import ConfigError
from compress.executors import Executor, SerialExecutor
from compress.strategies.darts.architect import Architect
from compress.strategies.darts.latency import LatencyLookup, LatencyTerm, op_latency_matrix
from compress.strategies.darts.search import SearchNetwork
from compress.strategies.darts.supernet_search import (ArchUpdater, SearchOutcome, SearchSchedule, SupernetSearch,
                                                       build_supernet)
from compress.strategies.eg_nas.cmaes import ESEpochResult, RestartResult, apply_direction, es_epoch
from compress.strategies.eg_nas.config import EGNASConfig, search_key
from compress.training.data import derive_seed, split_dataset
from compress.training.runtime import Runtime

__all__ = ["SupernetEvaluator", "CMAESUpdater", "EGNASSearch", "SearchOutcome", "derive_seed"]


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


class CMAESUpdater(ArchUpdater):
    """EG-NAS's architecture update (Alg. 1 lines 4-16), once per epoch after the warm-up: CMA-ES
    directions on one minibatch of the direction half (:func:`es_epoch`), Eq. 9, Eq. 8. Alpha never
    receives gradients.

    Args:
        cfg: the config (its ``es`` sub-config acts here).
        model: the supernet, on ``runtime.device``.
        direction: the direction half of the training split.
        seed: run seed.
        runtime: device and precision of the fitness forwards.
        cma_factory: pycma replacement for tests.
        executor: evaluates the lambda candidates of each ``tell`` (default serial).
        progress: ``progress(phase, done, total, info)`` after each restart.
        latency_term: added to the CE of Eq. 7's L1 (issue 18; None: none).

    Attributes:
        xi_effective: Eq. 8's step in use (``cfg.es.xi`` until :meth:`plan` rescales it for
            ``cfg.es.xi_reference_updates``).
    """

    per_step = False
    alpha_requires_grad = False

    def __init__(self, cfg: EGNASConfig, model: SearchNetwork, direction: Dataset, seed: int, *, runtime: Runtime,
                 cma_factory: Callable[..., Any] | None = None, executor: Executor | None = None,
                 progress: Callable[[str, int, int | None, dict], None] | None = None,
                 latency_term: LatencyTerm | None = None) -> None:
        self.cfg, self.model, self.direction, self.seed = cfg, model, direction, int(seed)
        self.latency_term = latency_term
        self.xi_effective = float(cfg.es.xi)
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
        idx = torch.randperm(n, generator=g)[: min(self.cfg.es.batch_size, n)].tolist()
        x, y = default_collate([ds[i] for i in idx])[:2]
        return x, y

    def update(self, t: int) -> ESEpochResult:
        """Alg. 1 lines 4-16 at epoch ``t``: ES directions, Eq. 9, Eq. 8 (alpha changed in place)."""
        cfg = self.cfg.es
        x, y = self.runtime.to_device(self.es_batch(t))
        evaluator = SupernetEvaluator(self.model, x, y, bn=cfg.bn, autocast_dtype=_AUTOCAST[self.runtime.precision])
        alpha_t = self.model.arch_vector()

        def on_restart(n: int, r: RestartResult) -> None:
            self.progress("es restarts", n + 1, cfg.restarts, {"epoch": t, "best_f": r.best_f, "best_acc": r.best_acc})

        res = es_epoch(alpha_t.cpu().double().numpy(), evaluator, num_ops=self.num_ops, t=t, seed=self.seed,
                       restarts=cfg.restarts, popsize=cfg.popsize, generations=cfg.generations, zeta=cfg.zeta,
                       eta=cfg.eta, restart_noise=cfg.restart_noise, sigma_min=cfg.sigma_min,
                       keep_mean=cfg.keep_mean, cma_factory=self.cma_factory, on_restart=on_restart,
                       executor=self.executor,
                       penalty=None if self.latency_term is None else self.latency_term.of_vector)
        new = apply_direction(alpha_t, res.direction, self.xi_effective, self.num_ops, cfg.direction)
        with torch.no_grad():
            a_n, a_r = self.model.split_arch_vector(new)
            self.model.alphas_normal.copy_(a_n)
            self.model.alphas_reduce.copy_(a_r)
        self.es_evaluations = res.evaluations
        self.last_es = [dict(r.summary(), restart=i) for i, r in enumerate(res.restarts)]
        return res

    def plan(self, updates: int) -> dict[str, Any]:
        """With ``cfg.es.xi_reference_updates = R``, Eq. 8's step becomes ``xi * R / updates`` (the
        paper's total step over the search's ``updates = T - W``; see the module docstring)."""
        R = self.cfg.es.xi_reference_updates
        if R is not None and updates > 0:
            self.xi_effective = self.cfg.es.xi * R / int(updates)
        return {"arch_updates": int(updates), "xi": self.cfg.es.xi, "xi_effective": self.xi_effective,
                "xi_reference_updates": R}

    def epoch_update(self, t: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        res = self.update(t)
        return {"sigma": res.sigma, "es_acc_alpha": res.acc_alpha, "es_ce_alpha": res.ce_alpha,
                "best_fitness": res.best_fitness, "es_winner": res.winner,
                "es_winner_acc": res.restarts[res.winner].best_acc, "es_evaluations": res.evaluations,
                "xi_effective": self.xi_effective,
                "wall_es_s": time.perf_counter() - t0}

    def state_json(self) -> dict[str, Any]:
        return {"cma_last_epoch": self.last_es}

    def load_state_json(self, state: Mapping[str, Any]) -> None:
        self.last_es = list(state.get("cma_last_epoch", []))


class EGNASSearch(SupernetSearch):
    """The EG-NAS search (one object per run): the shared supernet loop with the CMA-ES updater
    (``search.alpha_update="cmaes"``) or first-order DARTS (``"gradient"``), per-epoch checkpoints and resume.

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
        latency_table: ``table.latency(layer_config) -> ms`` on the target (the strategy passes the
            target's :class:`~compress.profiling.latency_model.LayerLatencyTable` when the objective
            is latency): the architecture objective then adds
            ``cfg.latency_weight * E[lat] / E_uniform[lat]`` (:class:`LatencyTerm`, looked up once
            here). None: no latency term.

    Attributes:
        latency_term: the :class:`LatencyTerm` in use (None without a table).

    Raises:
        DataError: fewer than 4 training samples.
        ProfilingError: the latency table cannot time a layer.
    """

    def __init__(self, cfg: EGNASConfig, train_ds: Dataset, val_loader: DataLoader | None, num_classes: int,
                 input_shape: tuple[int, int, int], seed: int, *, ckpt_dir: Path | None = None,
                 progress: Callable[[str, int, int | None, dict], None] | None = None,
                 log: Callable[..., None] | None = None, cma_factory: Callable[..., Any] | None = None,
                 executor: Executor | None = None, runtime: Runtime | None = None,
                 latency_table: LatencyLookup | None = None) -> None:
        self.cfg = cfg
        runtime = runtime or Runtime()
        sc = cfg.search
        weights, direction = split_dataset(train_ds, sc.train_portion, seed, who="eg-nas")
        model = build_supernet(seed, sc.C, num_classes, sc.layers, primitives=sc.primitives,
                               in_channels=input_shape[0], partial_channels=sc.partial_channels,
                               edge_norm=sc.edge_norm, pool_bn=sc.pool_bn, stem_stride=sc.stem_stride)
        self.latency_term: LatencyTerm | None = None
        if latency_table is not None:
            lat_n, lat_r = op_latency_matrix(model, torch.zeros(1, *input_shape), latency_table)
            self.latency_term = LatencyTerm(lat_n, lat_r, cfg.latency_weight)
        runtime.prepare(model)
        model.set_arch_requires_grad(False)
        self.num_ops = len(model.primitives)
        self.architect: Architect | None = None
        self.es: CMAESUpdater | None = None
        updater: ArchUpdater
        if sc.alpha_update == "gradient":
            updater = self.architect = Architect(model, lr=sc.arch_lr, weight_decay=sc.arch_weight_decay,
                                                 second_order=False, runtime=runtime,
                                                 reference_steps=sc.arch_reference_steps,
                                                 latency_term=self.latency_term)
        else:
            updater = self.es = CMAESUpdater(cfg, model, direction, seed, runtime=runtime, cma_factory=cma_factory,
                                             executor=executor, progress=progress, latency_term=self.latency_term)
        schedule = SearchSchedule(
            epochs=sc.epochs, warmup_epochs=sc.warmup_epochs, batch_size=sc.batch_size, lr=sc.lr,
            lr_min=sc.lr_min, momentum=sc.momentum, weight_decay=sc.weight_decay, grad_clip=sc.grad_clip,
            max_steps_per_epoch=sc.max_steps_per_epoch, val_batches=sc.val_batches)
        key = search_key(cfg, {
            "seed": int(seed), "n_train": len(train_ds), "num_classes": num_classes,  # type: ignore[arg-type]
            "input_shape": list(input_shape),
            "latency_ms": None if self.latency_term is None else round(self.latency_term.reference_ms, 9)})
        super().__init__(schedule, model, weights, direction, val_loader, seed, updater, runtime=runtime,
                         ckpt_dir=ckpt_dir, key=key, progress=progress, log=log,
                         record={"alpha_update": sc.alpha_update})
        self.hash = key

    def es_batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's direction minibatch (seeded by run seed and epoch), on the CPU."""
        if self.es is None:
            raise ConfigError("es_batch needs search.alpha_update='cmaes'.")
        return self.es.es_batch(t)

    def es_update(self, t: int) -> ESEpochResult:
        """Alg. 1 lines 4-16 at epoch ``t``: ES directions, Eq. 9, Eq. 8 (alpha changed in place).

        Raises:
            ConfigError: the search moves alpha by gradient (``search.alpha_update="gradient"``).
        """
        if self.es is None:
            raise ConfigError("es_update needs search.alpha_update='cmaes'.")
        return self.es.update(t)
