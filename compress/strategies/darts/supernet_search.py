"""The one supernet search loop of the DARTS family (``darts-gal`` and ``eg-nas``), with a
pluggable architecture updater (DARTS §2.3 alternating optimisation; EG-NAS Alg. 1).

The training split is divided (seeded) into a *weight* part and an *architecture* part. Epoch
``t`` (0-based) of ``epochs``:

1. with ``t >= warmup_epochs`` and an epoch-level updater (EG-NAS's CMA-ES directions):
   :meth:`ArchUpdater.epoch_update` moves alpha once, before the weight steps;
2. ``steps`` weight steps (the whole weight part, capped by ``max_steps_per_epoch``): with
   ``t >= warmup_epochs`` and a per-step updater (DARTS :class:`~.architect.Architect`), first
   :meth:`ArchUpdater.step` on a batch of each part; then SGD on the weights with the
   cross-entropy of a weight-part batch, through the runtime (device, autocast, backward,
   gradient clipping at ``grad_clip``, step). The learning rate follows the per-epoch cosine
   ``lr_min + (lr - lr_min) * cosine_factor(t, epochs)``;
3. the supernet's accuracy on the task's validation loader, the alpha entropies and the derived
   genotype go into the epoch record; a checkpoint is committed.

Everything runs on ``runtime.device`` under its precision; the loaders are reseeded per epoch from
``(run seed, epoch)``, so a killed search resumes bit-identically from its last epoch checkpoint
(weights, alpha, optimiser and updater states, RNG states). After :meth:`SupernetSearch.run` the
supernet is back on the CPU in float32 and the default memory format.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from compress.data import collect
from compress.errors import DataError
from compress.strategies.darts.genotype import Genotype, alpha_entropy
from compress.strategies.darts.search import SearchNetwork
from compress.training.checkpoint import CheckpointStore, stable_hash
from compress.training.data import Cycle, derive_seed
from compress.training.loop import cosine_factor, evaluate
from compress.training.runtime import Runtime

__all__ = ["ArchUpdater", "SearchSchedule", "SearchOutcome", "SupernetSearch", "build_supernet", "dataset_of"]

ProgressFn = Callable[[str, int, "int | None", dict], None]


class ArchUpdater:
    """What moves the architecture of a :class:`SupernetSearch`. This base class moves nothing.

    Two kinds, chosen by ``per_step``:

    * per step (``True``, the DARTS :class:`~compress.strategies.darts.architect.Architect`):
      :meth:`step` runs before every weight step of an updating epoch, on a batch of each part;
    * per epoch (``False``, EG-NAS's CMA-ES directions): :meth:`epoch_update` runs once before the
      weight steps of an updating epoch and returns fields for the epoch record.

    ``alpha_requires_grad``: whether alpha takes gradients between weight steps (the loop turns
    them off for each weight step). :meth:`state_tensors` / :meth:`state_json` are written into
    the search checkpoint and given back by the ``load_*`` methods on resume.
    """

    per_step: bool = False
    alpha_requires_grad: bool = False

    def epoch_update(self, t: int) -> dict[str, Any]:
        """Update alpha once at epoch ``t``; returns fields for the epoch record."""
        return {}

    def plan(self, updates: int) -> dict[str, Any]:
        """Told, before the first epoch, how many alpha updates the whole search makes (per-step
        updaters: steps x updating epochs; per-epoch updaters: updating epochs), so a step size
        can be expressed per search (issue 18). Returns fields for :attr:`SearchOutcome.plan`."""
        return {"arch_updates": int(updates)}

    def step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
             eta: float, w_optimizer: torch.optim.Optimizer | None = None) -> float:
        """One per-step update; returns the architecture-part loss before it."""
        raise NotImplementedError(f"{type(self).__name__} updates per epoch, not per step")

    def state_tensors(self) -> dict[str, Any]:
        return {}

    def load_state_tensors(self, tensors: Mapping[str, Any]) -> None:
        return None

    def state_json(self) -> dict[str, Any]:
        return {}

    def load_state_json(self, state: Mapping[str, Any]) -> None:
        return None


@dataclass(frozen=True)
class SearchSchedule:
    """The weight side of a search (each strategy maps its config fields onto it).

    Attributes:
        epochs: search epochs T; warmup_epochs: epochs ``t < warmup_epochs`` leave alpha alone.
        batch_size: minibatch of both parts.
        lr, lr_min, momentum, weight_decay: SGD on the weights, cosine per epoch from lr to lr_min.
        grad_clip: max global norm of the weight gradient (None: no clipping).
        max_steps_per_epoch: cap on the weight steps per epoch (None: the whole weight part).
        val_batches: batches of the validation loader for the per-epoch accuracy (None: all).
        arch_batch_size: minibatch of the architecture part per alpha step (None: ``batch_size``).
    """

    epochs: int
    warmup_epochs: int
    batch_size: int
    lr: float
    lr_min: float
    momentum: float
    weight_decay: float
    grad_clip: float | None
    max_steps_per_epoch: int | None = None
    val_batches: int | None = None
    arch_batch_size: int | None = None

    def lr_at(self, t: int) -> float:
        return self.lr_min + (self.lr - self.lr_min) * cosine_factor(t, self.epochs)


@dataclass
class SearchOutcome:
    """What a search returns: the genotype, the final alpha (CPU), the per-epoch records, and
    seconds spent in the architecture updates, the weight steps and in all (``wall_s``).
    ``updater_state``: the updater's :meth:`ArchUpdater.state_json` at the end. ``plan``: what
    :meth:`ArchUpdater.plan` returned (the number of alpha updates, the effective step size)."""

    genotype: Genotype
    alphas_normal: torch.Tensor
    alphas_reduce: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    wall_arch_s: float = 0.0
    wall_weights_s: float = 0.0
    resumed_from_epoch: int = 0
    updater_state: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def last_es(self) -> list[dict[str, Any]]:
        """EG-NAS: the CMA-ES restarts of the last update (empty for gradient updaters)."""
        return list(self.updater_state.get("cma_last_epoch", []))


def build_supernet(seed: int, C: int, num_classes: int, layers: int, *, primitives: str, in_channels: int,
                   partial_channels: int, edge_norm: bool, pool_bn: bool, stem_stride: int) -> SearchNetwork:
    """The search supernet of a run: weights drawn from ``derive_seed(seed, "supernet")`` (the
    global RNG is left as it was), alpha from ``derive_seed(seed, "alpha")``; on the CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "supernet"))
        return SearchNetwork(C, num_classes, layers, primitives=primitives, in_channels=in_channels,
                             partial_channels=partial_channels, edge_norm=edge_norm, pool_bn=pool_bn,
                             stem_stride=stem_stride,
                             generator=torch.Generator().manual_seed(derive_seed(seed, "alpha")))


def dataset_of(loader: DataLoader, who: str) -> Dataset:
    """The map-style dataset behind ``loader``, or its batches collected into a
    :class:`TensorDataset` (a loader without an indexable dataset).

    Raises:
        DataError: the loader yields no sample.
    """
    ds = getattr(loader, "dataset", None)
    try:
        if ds is not None and len(ds) > 0 and hasattr(ds, "__getitem__"):  # type: ignore[arg-type]
            return ds
    except TypeError:
        pass
    x, y = collect(loader)
    if len(y) == 0:
        raise DataError(f"{who} needs a non-empty training split.")
    return TensorDataset(x, y)


class SupernetSearch:
    """The search loop (one object per run) with per-epoch checkpoints and resume.

    Args:
        schedule: the weight side (:class:`SearchSchedule`).
        model: the supernet (:func:`build_supernet`); moved to ``runtime.device`` here.
        weight_part, arch_part: the two parts of the training split.
        val_loader: loader for the per-epoch supernet accuracy (may be None).
        seed: run seed (the loaders are reseeded per epoch from it).
        updater: what moves alpha (None: nothing does).
        runtime: device and precision (default: CPU fp32).
        ckpt_dir: checkpoint folder (None: no checkpoints); key: identity of the search (a hash
            of what shapes it); a checkpoint with another key is ignored.
        progress: ``progress(phase, done, total, info)``; log: ``log(**record)`` per epoch.
        record: constant fields of every epoch record.
    """

    def __init__(self, schedule: SearchSchedule, model: SearchNetwork, weight_part: Dataset, arch_part: Dataset,
                 val_loader: DataLoader | None, seed: int, updater: ArchUpdater | None = None, *,
                 runtime: Runtime | None = None, ckpt_dir: Path | None = None, key: str = "",
                 progress: ProgressFn | None = None, log: Callable[..., None] | None = None,
                 record: Mapping[str, Any] | None = None) -> None:
        self.schedule, self.seed = schedule, int(seed)
        self.runtime = runtime or Runtime()
        self.model = model
        self.runtime.prepare(model)
        self.updater = updater or ArchUpdater()
        self.w_opt = torch.optim.SGD(model.weights(), lr=schedule.lr, momentum=schedule.momentum,
                                     weight_decay=schedule.weight_decay)
        self.w_iter = Cycle(weight_part, schedule.batch_size)
        self.a_iter = Cycle(arch_part, schedule.arch_batch_size or schedule.batch_size)
        self.val_loader = val_loader
        self.progress = progress or (lambda *a, **k: None)
        self.log = log or (lambda **k: None)
        self.record = dict(record or {})
        self.ckpt_dir = ckpt_dir
        self.store = CheckpointStore(ckpt_dir)
        rt = self.runtime
        # keys of CPU fp32 single-process searches are those written before the runtime existed
        self.key = key if rt.is_default else stable_hash(
            {"key": key, "runtime": {"precision": rt.precision, "device_type": rt.device.type}})
        self.history: list[dict[str, Any]] = []
        self.wall = self.wall_arch = self.wall_weights = 0.0
        self.start_epoch = 0

    # ------------------------------------------------------------------ checkpoints
    def save(self, epoch_done: int) -> None:
        """Commit the state after ``epoch_done`` epochs: ``search.<epoch>.pt`` (weights, alpha,
        optimiser and updater tensors, RNG states), then ``search.json`` (history, updater state),
        each atomically, on rank 0 only."""
        if not self.runtime.is_global_zero:
            return
        state = {"epoch_done": epoch_done, "history": self.history, "wall_s": self.wall,
                 "wall_arch_s": self.wall_arch, "wall_weights_s": self.wall_weights, **self.updater.state_json(),
                 "seeds": {"run": self.seed, "note": "loader and update seeds derive from (run seed, epoch, ...)"}}
        tensors = {"weights": self.model.state_dict(), "arch": self.model.arch_state(),
                   "w_opt": self.w_opt.state_dict(), **self.updater.state_tensors()}
        self.store.commit("search", state, tensors, key=self.key, tag=epoch_done)

    def try_resume(self) -> int:
        """Load the checkpoint written with this search's key; returns the epochs already done (0
        if there is none or it belongs to another search).

        Raises:
            CheckpointError: the checkpoint is corrupt or truncated.
        """
        restored = self.store.load("search", key=self.key)
        if restored is None:
            return 0
        state, blob = restored.state, restored.tensors
        self.model.load_state_dict(blob["weights"])
        self.model.load_arch_state(blob["arch"])
        self.w_opt.load_state_dict(blob["w_opt"])
        self.updater.load_state_tensors(blob)
        self.updater.load_state_json(state)
        restored.restore_rng()
        self.history = list(state["history"])
        self.wall = float(state.get("wall_s", 0.0))
        self.wall_arch = float(state.get("wall_arch_s", 0.0))
        self.wall_weights = float(state.get("wall_weights_s", 0.0))
        self.start_epoch = int(state["epoch_done"])
        return self.start_epoch

    # ------------------------------------------------------------------ one epoch
    def steps_per_epoch(self) -> int:
        """Weight steps of one epoch: the weight part's batches, capped by ``max_steps_per_epoch``."""
        steps = len(self.w_iter.loader)
        if self.schedule.max_steps_per_epoch is not None:
            steps = min(steps, self.schedule.max_steps_per_epoch)
        return steps

    def planned_updates(self) -> int:
        """Alpha updates of the whole search: ``steps_per_epoch x updating epochs`` for a per-step
        updater, the updating epochs for a per-epoch one."""
        epochs = sum(1 for t in range(self.schedule.epochs) if self.updating(t))
        return epochs * (self.steps_per_epoch() if self.updater.per_step else 1)

    def updating(self, t: int) -> bool:
        """True when epoch ``t`` (0-based) moves alpha (after the warm-up)."""
        return t >= self.schedule.warmup_epochs

    def train_epoch(self, t: int) -> dict[str, Any]:
        """The weight steps of epoch ``t`` (with the per-step architecture updates of a per-step
        updater after the warm-up); returns ``lr``, ``steps``, ``train_loss``, ``train_acc``,
        ``arch_val_loss`` (None without per-step updates) and the seconds in both kinds of step."""
        s, rt, model = self.schedule, self.runtime, self.model
        lr = s.lr_at(t)
        for group in self.w_opt.param_groups:
            group["lr"] = lr
        self.w_iter.reseed(derive_seed(self.seed, "w-loader", t))
        self.a_iter.reseed(derive_seed(self.seed, "a-loader", t))
        steps = self.steps_per_epoch()
        per_step = self.updater.per_step and self.updating(t)
        weights = list(model.weights())
        model.train()
        loss_sum = correct = seen = val_loss = arch_s = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            x, y = rt.to_device(self.w_iter.next())
            if per_step:
                ta = time.perf_counter()
                xv, yv = rt.to_device(self.a_iter.next())
                val_loss += self.updater.step(x, y, xv, yv, eta=lr, w_optimizer=self.w_opt)
                arch_s += time.perf_counter() - ta
            model.set_arch_requires_grad(False)  # the weight step builds no alpha gradient
            with rt.autocast():
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            rt.optimize(loss, self.w_opt, grad_clip=s.grad_clip, clip_params=weights)
            model.set_arch_requires_grad(self.updater.alpha_requires_grad)
            loss_sum += float(loss.detach()) * len(y)
            correct += float((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        total = time.perf_counter() - t0
        return {"lr": lr, "steps": steps, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                "arch_val_loss": (val_loss / steps) if per_step and steps else None,
                "wall_arch_s": arch_s, "wall_weights_s": total - arch_s}

    # ------------------------------------------------------------------ loop
    def run(self, resume: bool = True) -> SearchOutcome:
        """Run the remaining epochs (after those of a checkpoint with ``resume``); the supernet
        ends on the CPU in float32."""
        T = self.schedule.epochs
        plan = self.updater.plan(self.planned_updates())  # before resuming: a restored optimiser keeps its lr
        done = self.try_resume() if resume else 0
        for rec in self.history:  # restored epochs belong in the run history as they were logged
            self.log(**rec)
        self.progress("search", done, T, {"resumed": done} if done else {})
        model = self.model
        for t in range(done, T):
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"phase": "search", "epoch": t + 1, **self.record,
                                   "alpha_updated": self.updating(t)}
            alpha_before = model.arch_vector().clone()
            arch_s = 0.0
            if self.updating(t) and not self.updater.per_step:
                ta = time.perf_counter()
                rec.update(self.updater.epoch_update(t))
                arch_s = time.perf_counter() - ta
            stats = self.train_epoch(t)
            rec.update(stats)
            rec["wall_arch_s"] = arch_s + stats["wall_arch_s"]
            rec["alpha_changed"] = bool(not torch.equal(alpha_before, model.arch_vector()))
            rec["val_acc"] = evaluate(model, self.val_loader, self.schedule.val_batches, runtime=self.runtime)
            rec["alpha_entropy_normal"] = alpha_entropy(model.alphas_normal)
            rec["alpha_entropy_reduce"] = alpha_entropy(model.alphas_reduce)
            rec["alpha_entropy"] = 0.5 * (rec["alpha_entropy_normal"] + rec["alpha_entropy_reduce"])
            rec["genotype"] = model.genotype().to_dict()
            rec["wall_s"] = time.perf_counter() - t0
            self.wall += rec["wall_s"]
            self.wall_arch += rec["wall_arch_s"]
            self.wall_weights += rec["wall_weights_s"]
            self.history.append(rec)
            self.log(**rec)
            self.save(t + 1)
            self.progress("search", t + 1, T, {k: rec[k] for k in ("train_acc", "val_acc", "alpha_entropy")
                                               if rec.get(k) is not None})
        model.to("cpu")  # counting, sizing and export work on CPU float32 copies
        model.to(memory_format=torch.contiguous_format)
        return SearchOutcome(genotype=model.genotype(), alphas_normal=model.alphas_normal.detach().clone(),
                             alphas_reduce=model.alphas_reduce.detach().clone(), history=self.history,
                             wall_s=self.wall, wall_arch_s=self.wall_arch, wall_weights_s=self.wall_weights,
                             resumed_from_epoch=done, updater_state=self.updater.state_json(), plan=plan)
