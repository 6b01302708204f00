"""The one training loop of slimforge: :func:`fit`, and the KD fine-tune built on it.

Every training phase of every strategy runs here (the KD fine-tunes, grow's stage training and
retrains, the weight steps of the DARTS / EG-NAS supernets, GAL's generator and discriminator
steps, the GP-evolution tasks, the demo teacher). What the loop owns:

* device placement, autocast and ``backward`` through the :class:`~compress.training.Runtime`
  (Lightning Fabric), with gradient clipping (Fabric unscales fp16 gradients first);
* a per-step learning-rate schedule (:func:`cosine_factor`);
* the divergence guard: a non-finite loss, or weights that became non-finite by the end of an
  epoch, restore the last good weights and raise :class:`TrainingDivergedError`;
* keep-best on the validation split (never the test split: docs/algorithms/gp-prune.md, choice 5);
* progress callbacks (``on_epoch``), replayed for restored epochs;
* per-epoch checkpoints through :class:`~compress.training.checkpoint.EpochCheckpoint` with
  bit-identical resume (model, optimizer, scheduler, best weights, history, loader and
  augmentation generators, global RNGs); a different world size is refused.

Knowledge distillation (Hinton et al. 2015) as used for every final retrain::

    L = (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

with ``z_s`` / ``z_t`` the student / teacher logits ``(B, K)``. ``T^2`` keeps the soft term's
gradient scale independent of the temperature. ``alpha = 0`` is plain cross-entropy.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from compress.errors import CheckpointError, ConfigError, TrainingDivergedError
from compress.signals import raise_if_terminated
from compress.training.checkpoint import EpochCheckpoint, loader_generators, stable_hash
from compress.training.data import AUGMENTATIONS, training_loader
from compress.training.parallel import spawn
from compress.training.runtime import Runtime

__all__ = ["kd_loss", "evaluate", "main_logits", "all_finite", "diverged_error", "cosine_factor", "make_optimizer",
           "fit", "FitPlan", "FinetuneSettings", "finetune", "finetune_parallel", "AUGMENTATIONS",
           "warmup_cosine_factor"]


def main_logits(out: Any) -> torch.Tensor:
    """The class logits of a model output: the tensor itself, or the first element of a tuple /
    list (torchvision GoogLeNet and Inception v3 return ``(logits, aux...)`` in train mode; the
    auxiliary heads are not distilled), or ``out.logits`` of a named tuple / dataclass."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__}; slimforge needs class logits (B, K) "
                    "(a tensor, or a tuple whose first element is the logits)")


def kd_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    *,
    alpha: float = 0.5,
    temperature: float = 4.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """CE + temperature-scaled KL, see the module docstring. Computed in float32 whatever the
    autocast dtype of the logits. ``label_smoothing`` applies to the CE term only (the teacher's
    soft targets are already smooth).

    Args:
        student_logits: ``(B, K)``.
        targets: ``(B,)`` int64 class indices.
        teacher_logits: ``(B, K)`` or None (then plain CE).
    Returns:
        scalar loss tensor.
    """
    student_logits = student_logits.float()
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha == 0.0:
        return ce
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - alpha) * ce + alpha * (t * t) * kl


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable | None, max_batches: int | None = None,
             runtime: Runtime | None = None) -> float | None:
    """Top-1 accuracy in [0, 1] of ``model`` on ``loader`` (batches ``x (B, C, H, W)``, ``y (B,)``),
    over at most ``max_batches`` batches. Batches go to the model's device (the ``runtime``'s,
    else that of the model's first parameter), under the runtime's autocast. None if there is no
    loader or no sample. Restores the model's train/eval state."""
    if loader is None:
        return None
    was = model.training
    model.eval()
    first = next(iter(model.parameters()), None)
    device = runtime.device if runtime is not None else (first.device if first is not None else torch.device("cpu"))
    correct = total = 0
    try:
        for i, (x, y) in enumerate(loader):
            raise_if_terminated()  # a safe point per batch (compress.signals)
            if max_batches is not None and i >= max_batches:
                break
            if runtime is not None:
                x, y = runtime.to_device((x, y))
                with runtime.autocast():
                    out = main_logits(model(x))
            else:
                x, y = x.to(device), y.to(device)
                out = main_logits(model(x))
            correct += int((out.argmax(dim=1) == y).sum())
            total += int(y.numel())
    finally:
        model.train(was)
    return correct / total if total else None


def all_finite(*modules: nn.Module) -> bool:
    """True when every parameter and floating-point buffer of ``modules`` is finite."""
    for m in modules:
        for t in list(m.parameters()) + [b for b in m.buffers() if b.is_floating_point()]:
            if not bool(torch.isfinite(t).all()):
                return False
    return True


def diverged_error(phase: str, *, epoch: int, epochs: int, step: int, loss: float, lr: float, restored: str,
                   checkpoint_dir: object | None = None, weights: bool = False) -> TrainingDivergedError:
    """The :class:`TrainingDivergedError` of a loop that met a non-finite loss at ``step``
    (0-based) of ``epoch`` (1-based) and restored ``restored`` (e.g. "the weights after epoch 2").
    ``weights=True``: the loss was finite but the weights became non-finite at the end of the epoch."""
    what = (f"the weights became non-finite during epoch {epoch}/{epochs} (after step {step + 1})" if weights
            else f"the loss became {loss} at epoch {epoch}/{epochs}, step {step + 1}")
    msg = (f"training diverged in phase {phase!r}: {what}. Training stopped and the model holds {restored}. "
           f"Lower the learning rate (it was {lr:g}; try 10x lower) and check the training data for NaN or inf "
           "values (and for inputs far outside the normalised range).")
    if checkpoint_dir is not None:
        msg += (f" The checkpoints of the boundaries completed before the divergence stay in {checkpoint_dir}. "
                "compress() resumes from them only with the same settings and data, which would diverge again; "
                "after changing the learning rate or the data, rerun with resume=False (CLI --no-resume), "
                "or choose another out_dir.")
    return TrainingDivergedError(msg, phase=phase, epoch=epoch, step=step, loss=loss)


def warmup_cosine_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over the first ``warmup`` steps (factor ``(step + 1) / warmup``; Goyal et al.
    2017, §2.2), then :func:`cosine_factor` over the remaining ``total - warmup`` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return cosine_factor(step - warmup, max(1, total - warmup))


def cosine_factor(step: int, total: int) -> float:
    """Cosine annealing factor ``0.5 (1 + cos(pi min(step, total) / total))`` (SGDR without
    restarts, Loshchilov & Hutter 2017), from 1 at step 0 to 0 at ``total``."""
    total = max(1, int(total))
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def make_optimizer(params: Iterable[nn.Parameter], name: str, *, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0, nesterov: bool = True) -> torch.optim.Optimizer:
    """``"sgd"`` (momentum, Nesterov by default) or ``"adam"`` over ``params``.

    Raises:
        ConfigError: an unknown optimizer name.
    """
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov and momentum > 0)
    raise ConfigError(f"unknown optimizer {name!r}; use 'sgd' or 'adam'.")


StepFn = Callable[[Any], "torch.Tensor | tuple[torch.Tensor, int]"]


@dataclass
class FitPlan:
    """One training phase for :func:`fit`.

    Attributes:
        modules: the modules whose weights train (their state is checkpointed and restored on
            divergence); the first one is the "model" of keep-best and evaluation.
        optimizer: over their parameters.
        step: ``step(batch) -> loss`` or ``(loss, n_samples)``: the forward and loss of one batch
            (already on the device, under autocast). The loop does ``backward``, clipping,
            ``optimizer.step()`` and the schedule.
        epochs: number of epochs.
        steps_per_epoch: cap on the batches per epoch (None: the whole loader).
        lr_factor: per-step learning-rate factor ``f(global_step)`` times each group's base lr
            (a ``LambdaLR``); None: constant.
        grad_clip: max global gradient norm (None: off); ``clip_params``: the parameters it covers
            (default: the optimizer's).
        validate: ``validate() -> accuracy or None`` after each epoch (keep-best, logs).
        keep_best: load the weights of the best ``validate`` epoch at the end.
        extra_generators: generators that advance during training (drop-path ...), checkpointed.
        before_step: called with ``(epoch, step)`` before each step (e.g. a drop-path schedule).
        before_epoch: called with ``epoch`` (0-based) before each epoch.
        after_backward: called after each ``backward`` (gradients unscaled), before clipping and the
            optimizer step: a gradient regulariser (gp-prune's sparse learning).
        time_budget_s: a wall-time budget in seconds for the whole phase: after the first epoch,
            the number of epochs becomes ``clamp(floor(time_budget_s / first_epoch_s), 1, epochs)``
            and ``on_planned(n)`` is called with it (so that a schedule can re-plan its length);
            the planned count is checkpointed, so a resumed run keeps it. A wall-time budget makes
            the epoch count depend on the machine's speed; the history records it, and the same
            ``epochs`` without a time budget reproduces the run.
    """

    modules: Sequence[nn.Module]
    optimizer: torch.optim.Optimizer
    step: StepFn
    epochs: int
    steps_per_epoch: int | None = None
    lr_factor: Callable[[int], float] | None = None
    grad_clip: float | None = None
    clip_params: Sequence[torch.Tensor] | None = None
    validate: Callable[[], float | None] | None = None
    keep_best: bool = False
    extra_generators: Mapping[str, torch.Generator | None] = field(default_factory=dict)
    before_step: Callable[[int, int], None] | None = None
    before_epoch: Callable[[int], None] | None = None
    after_backward: Callable[[], None] | None = None
    time_budget_s: float | None = None
    on_planned: Callable[[int], None] | None = None


def _world_size_guard(state: Mapping[str, Any], runtime: Runtime, name: str) -> None:
    saved = int(state.get("world_size", 1))
    if saved != runtime.world_size:
        raise CheckpointError(
            f"checkpoint {name!r} was written by a data-parallel run of world size {saved}, and this run has world "
            f"size {runtime.world_size}: the shards and the batches per process would differ, so it cannot resume "
            f"bit-identically. Resume with devices={saved}, or rerun with resume=False (CLI --no-resume).")


def fit(
    plan: FitPlan,
    train_loader: Iterable,
    *,
    runtime: Runtime | None = None,
    phase: str = "train",
    lr: float | None = None,
    checkpoint: EpochCheckpoint | None = None,
    checkpoint_key: Mapping[str, Any] | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    augment_collate: Any = None,
    sampler_epochs: bool = True,
) -> list[dict]:
    """Run ``plan`` over ``train_loader``; returns one record per epoch
    ``{"epoch", "loss", "val_acc", "lr"}`` (``val_acc`` None without ``plan.validate``).

    The modules must already be on ``runtime.device`` (:meth:`Runtime.prepare`). Batches are moved
    there by the loop. With ``checkpoint`` (and an enabled store) every epoch boundary is committed
    on rank 0 under a key hashed from ``checkpoint.key``, ``checkpoint_key``, the steps per epoch
    and the parameter shapes; a later call with the same key continues after the last committed
    epoch (``on_epoch`` is replayed for the restored epochs) and ends bit-identical to an
    uninterrupted run. A finished checkpoint returns at once.

    Raises:
        TrainingDivergedError: a non-finite loss or non-finite weights (last good weights restored).
        CheckpointError: a corrupt checkpoint, or one written with another world size.
    """
    runtime = runtime or Runtime()
    modules = list(plan.modules)
    model = modules[0]
    opt = plan.optimizer
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = plan.steps_per_epoch or 0
    if plan.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, plan.steps_per_epoch) if steps_per_epoch else plan.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, plan.lr_factor) if plan.lr_factor is not None else None
    base_lr = float(lr if lr is not None else opt.param_groups[0]["lr"])
    clip_params = list(plan.clip_params) if plan.clip_params is not None else [
        p for g in opt.param_groups for p in g["params"]]
    history: list[dict] = []
    best_acc, best_state = -1.0, None
    start = 0
    planned: int | None = None  # the epoch count a time budget chose (FitPlan.time_budget_s)
    gens: dict[str, torch.Generator | None] = {}
    key = ""
    sampler = getattr(train_loader, "sampler", None)
    if checkpoint is not None and checkpoint.store.enabled:
        gens = {**loader_generators(train=train_loader), **dict(plan.extra_generators), **checkpoint.generators}
        ident: dict[str, Any] = {"key": checkpoint.key, **dict(checkpoint_key or {}), "steps_per_epoch": steps_per_epoch,
                                 "params": [[f"{i}.{n}", list(p.shape)] for i, m in enumerate(modules)
                                            for n, p in m.named_parameters()]}
        if not runtime.is_default:  # keys of CPU fp32 single-process runs are those written before the runtime
            ident["runtime"] = {"precision": runtime.precision, "device_type": runtime.device.type}
        key = stable_hash(ident)
        peeked = checkpoint.store.peek(checkpoint.name)
        if peeked is not None:  # before the key: the steps per epoch (in the key) differ with the world size
            _world_size_guard(peeked, runtime, checkpoint.name)
        restored = checkpoint.store.load(checkpoint.name, key=key)
        if restored is not None:
            t = restored.tensors
            mods = t["modules"] if "modules" in t else [t["model"]]
            for m, sd in zip(modules, mods):
                m.load_state_dict(sd)
            opt.load_state_dict(t["optimizer"])
            if sched is not None:
                sched.load_state_dict(t["scheduler"])
            best_acc, best_state = float(restored.state["best_acc"]), t.get("best")
            for rec in restored.state["history"]:
                history.append(rec)
                if on_epoch:
                    on_epoch(int(rec["epoch"]), rec)
            start = int(restored.state["epoch"])
            planned = restored.state.get("planned_epochs")
            restored.restore_rng(gens)
    if planned is not None and plan.on_planned is not None:
        plan.on_planned(int(planned))
    ckpt_dir = checkpoint.store.dir if key else None
    epoch = start - 1
    while True:
        epoch += 1
        if epoch >= (planned if planned is not None else plan.epochs):
            break
        epoch_t0 = time.perf_counter()
        good = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]  # last good weights
        restored_what = f"the weights after epoch {epoch}" if epoch else "the weights it started with"

        def diverged(step: int, loss_value: float, weights: bool = False) -> TrainingDivergedError:
            for m, sd in zip(modules, good):
                m.load_state_dict(sd)
                m.eval()
            return diverged_error(phase, epoch=epoch + 1, epochs=plan.epochs, step=step, loss=loss_value,
                                  lr=base_lr, restored=restored_what, checkpoint_dir=ckpt_dir, weights=weights)

        if augment_collate is not None:
            augment_collate.reseed(epoch)
        if sampler_epochs and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if plan.before_epoch is not None:
            plan.before_epoch(epoch)
        for m in modules:
            m.train()
        running, seen, done = 0.0, 0, 0
        for step, batch in enumerate(train_loader):
            raise_if_terminated()  # a safe point per step: a swallowed SIGTERM (compress.signals) stops here
            if steps_per_epoch and step >= steps_per_epoch:
                break
            if plan.before_step is not None:
                plan.before_step(epoch, step)
            batch = runtime.to_device(batch)
            with runtime.autocast():
                out = plan.step(batch)
            loss, n = out if isinstance(out, tuple) else (out, _batch_size(batch))
            loss_value = float(loss.detach())
            finite = math.isfinite(loss_value)
            if runtime.distributed:  # every rank stops at the same step, or the others would wait forever
                finite = runtime.all_reduce_sum(0.0 if finite else 1.0) == 0.0
            if not finite:
                raise diverged(step, loss_value if not math.isfinite(loss_value) else float("nan"))
            runtime.optimize(loss, opt, grad_clip=plan.grad_clip, clip_params=clip_params,
                             after_backward=plan.after_backward)
            if sched is not None:
                sched.step()
            running += loss_value * n
            seen += n
            done += 1
        if not all_finite(*modules):
            raise diverged(max(done - 1, 0), float("nan"), weights=True)
        extra: dict[str, Any] = {}
        if runtime.distributed:
            running, seen = runtime.all_reduce_sum(running), runtime.all_reduce_sum(seen)
            runtime.sync_buffers(*modules)
            extra["ranks_agree"] = runtime.ranks_agree(weights_checksum(*modules))
        val_acc = plan.validate() if plan.validate is not None else None
        cur_lr = sched.get_last_lr()[0] if sched is not None else opt.param_groups[0]["lr"]
        if plan.time_budget_s is not None and planned is None:
            first_s = time.perf_counter() - epoch_t0
            planned = int(min(plan.epochs, max(1, math.floor(plan.time_budget_s / max(first_s, 1e-9)))))
            extra["planned_epochs"] = planned  # what the time budget allows at this epoch's speed
            if plan.on_planned is not None:
                plan.on_planned(planned)
        rec = {"epoch": epoch + 1, "loss": running / max(seen, 1), "val_acc": val_acc, "lr": cur_lr, **extra}
        history.append(rec)
        if on_epoch:
            on_epoch(epoch + 1, rec)
        if plan.keep_best and val_acc is not None and val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
        if key and runtime.is_global_zero:
            tensors: dict[str, Any] = {"optimizer": opt.state_dict()}
            if len(modules) == 1:
                tensors["model"] = model.state_dict()
            else:
                tensors["modules"] = [m.state_dict() for m in modules]
            if sched is not None:
                tensors["scheduler"] = sched.state_dict()
            if best_state is not None:
                tensors["best"] = best_state
            state = {"epoch": epoch + 1, "epochs": plan.epochs, "best_acc": best_acc, "history": history}
            if planned is not None:
                state["planned_epochs"] = planned
            if runtime.world_size > 1:
                state["world_size"] = runtime.world_size
            checkpoint.store.commit(checkpoint.name, state, tensors, key=key, tag=epoch + 1, generators=gens)
        runtime.barrier()
    if plan.keep_best and best_state is not None:
        model.load_state_dict(best_state)
    for m in modules:
        m.eval()
    return history


def weights_checksum(*modules: nn.Module) -> float:
    """A float64 checksum of every parameter and floating buffer (sum of ``x * (i + 1)`` over
    flattened entries, so that permutations differ): equal on ranks that hold the same weights."""
    total = 0.0
    for m in modules:
        for t in list(m.parameters()) + [b for b in m.buffers() if b.is_floating_point()]:
            flat = t.detach().double().reshape(-1)
            total += float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)).sum())
    return total


def _batch_size(batch: Any) -> int:
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[-1], torch.Tensor):
        return int(batch[-1].shape[0]) if batch[-1].dim() else 1
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return 1


# ============================================================================ the KD fine-tune


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tune schedule: SGD with Nesterov momentum and a cosine learning rate (the GECCO'22
    paper's transfer-pruning recipe, §5: SGD Nesterov 0.9, wd 1e-4), keeping the weights with the
    best validation accuracy (not test: docs/algorithms/gp-prune.md, choice 5)."""

    epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    optimizer: str = "sgd"  # "sgd" | "adam"
    keep_best: bool = True
    max_steps_per_epoch: int | None = None
    augment: str = "none"
    seed: int = 0
    grad_clip: float | None = None  # max global gradient norm per step (None: no clipping)
    label_smoothing: float = 0.0  # on the cross-entropy term (Szegedy et al. 2016, §7)
    warmup_epochs: int = 0  # linear learning-rate warm-up (Goyal et al. 2017, §2.2), then the cosine
    time_budget_s: float | None = None  # wall-time budget (FitPlan.time_budget_s); epochs is then the cap


_OFF = {"grad_clip": None, "label_smoothing": 0.0, "warmup_epochs": 0, "time_budget_s": None}
"""FinetuneSettings fields added after checkpoints existed, with the value that leaves them out of the key."""


def finetune(
    model: nn.Module,
    data_train: DataLoader,
    data_val: DataLoader | None,
    settings: FinetuneSettings,
    *,
    teacher: nn.Module | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    checkpoint: EpochCheckpoint | None = None,
    phase: str | None = None,
    runtime: Runtime | None = None,
    after_backward: Callable[[], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place with KD from ``teacher`` (or plain CE) on :func:`fit`; returns the
    per-epoch history ``{"epoch", "loss", "val_acc", "lr"}``.

    The learning rate warms up linearly over ``settings.warmup_epochs`` and then follows a cosine
    to 0 over the rest; with ``settings.time_budget_s`` the number of epochs is chosen after the
    first one (:class:`FitPlan`) and the cosine is re-planned to end there. ``after_backward`` is a
    gradient regulariser run after each backward (:class:`FitPlan`); it needs a single process.

    The model (and teacher) are moved to ``runtime.device`` for training and come back to the
    device they were on, in the default memory format. ``settings.augment`` runs in the loader's
    ``collate_fn`` (:mod:`compress.training.data`). The model is left in eval mode with the best
    validation weights when ``settings.keep_best``. With ``runtime.options.devices > 1`` in a
    single process, the fine-tune runs data-parallel in that many spawned processes
    (:func:`finetune_parallel`) and the result is rank 0's.

    Raises:
        CheckpointError: the epoch checkpoint is corrupt, truncated or of another world size.
        TrainingDivergedError: the loss became NaN or inf.
    """
    runtime = runtime or Runtime()
    if runtime.options.devices > 1 and not runtime.distributed:
        if after_backward is not None:
            raise ConfigError("a gradient regulariser (gp-prune sparse_epochs) runs in a single process; use "
                              "devices=1 for this phase.")
        return finetune_parallel(model, data_train, data_val, settings, teacher=teacher, on_epoch=on_epoch,
                                 checkpoint=checkpoint, phase=phase, runtime=runtime)
    home = _device_of(model)
    teacher_home = _device_of(teacher) if teacher is not None else None
    runtime.prepare(model, teacher)
    loader, collate = training_loader(data_train, augment=settings.augment, seed=settings.seed,
                                      num_workers=runtime.options.num_workers, pin_memory=runtime.pin_memory,
                                      persistent_workers=runtime.options.persistent_workers,
                                      world_size=runtime.world_size, rank=runtime.global_rank)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, settings.optimizer, lr=settings.lr, momentum=settings.momentum,
                         weight_decay=settings.weight_decay)
    steps = len(loader)
    if settings.max_steps_per_epoch:
        steps = min(steps, settings.max_steps_per_epoch)
    total = [max(1, settings.epochs * steps)]  # re-planned by a time budget (on_planned)
    warmup = settings.warmup_epochs * steps
    if teacher is not None:
        teacher.eval()
    ddp_model = runtime.compiled(runtime.wrap(model))
    teacher_fwd = runtime.compiled(teacher) if teacher is not None else None

    def step(batch: Any) -> tuple[torch.Tensor, int]:
        x, y = batch[0], batch[1]
        with torch.no_grad():
            t_logits = main_logits(teacher_fwd(x)) if teacher_fwd is not None else None
        loss = kd_loss(main_logits(ddp_model(x)), y, t_logits, alpha=settings.kd_alpha,
                       temperature=settings.kd_temperature, label_smoothing=settings.label_smoothing)
        return loss, int(y.numel())

    plan = FitPlan(modules=[model], optimizer=opt, step=step, epochs=settings.epochs, steps_per_epoch=steps,
                   lr_factor=lambda s: warmup_cosine_factor(s, total[0], warmup), grad_clip=settings.grad_clip,
                   after_backward=after_backward, time_budget_s=settings.time_budget_s,
                   on_planned=lambda n: total.__setitem__(0, max(1, n * steps)),
                   clip_params=list(model.parameters()),
                   validate=(lambda: evaluate(model, data_val, runtime=runtime)) if data_val is not None else None,
                   keep_best=settings.keep_best, extra_generators={"augment": collate.generator} if collate else {})
    # fields at their "off" value are left out, so checkpoints written before the field existed still resume
    settings_key = {k: v for k, v in dataclasses.asdict(settings).items() if not (k in _OFF and v == _OFF[k])}
    if checkpoint is not None and data_val is not None:
        checkpoint = dataclasses.replace(checkpoint, generators={
            **loader_generators(val=data_val), **checkpoint.generators})
    try:
        return fit(plan, loader, runtime=runtime, phase=phase or (checkpoint.name if checkpoint is not None else "finetune"),
                   lr=settings.lr, checkpoint=checkpoint, augment_collate=collate,
                   checkpoint_key={"settings": settings_key, "kd": teacher is not None, "format": "fit/1"},
                   on_epoch=on_epoch)
    finally:
        _go_home(model, home)
        if teacher is not None:
            _go_home(teacher, teacher_home)


def finetune_parallel(model: nn.Module, data_train: Any, data_val: Any, settings: FinetuneSettings, *,
                      teacher: nn.Module | None = None, on_epoch: Callable[[int, dict], None] | None = None,
                      checkpoint: EpochCheckpoint | None = None, phase: str | None = None,
                      runtime: Runtime) -> list[dict]:
    """:func:`finetune` on ``runtime.options.devices`` processes spawned by
    :func:`compress.training.parallel.spawn`; ``model`` gets rank 0's final weights. Same arguments
    and errors as ``finetune``."""
    home = _device_of(model)
    try:
        state, history = spawn(runtime, _finetune_rank, model.cpu(), data_train, data_val, settings, teacher,
                               checkpoint, phase)
    finally:
        model.to(home)
    model.load_state_dict(state)
    model.to(home).eval()
    if on_epoch is not None:
        for rec in history:
            on_epoch(int(rec["epoch"]), rec)
    return history


def _finetune_rank(rt: Runtime, model: nn.Module, data_train: Any, data_val: Any, settings: FinetuneSettings,
                   teacher: nn.Module | None, checkpoint: EpochCheckpoint | None, phase: str | None) -> Any:
    """One rank of :func:`finetune_parallel`: rank 0 returns its weights and history, the others None."""
    history = finetune(model, data_train, data_val, settings, teacher=teacher, checkpoint=checkpoint, phase=phase,
                       runtime=rt)
    if not rt.is_global_zero:
        return None
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, history


def _device_of(m: nn.Module | None) -> torch.device:
    p = next(iter(m.parameters()), None) if m is not None else None
    return p.device if p is not None else torch.device("cpu")


def _go_home(m: nn.Module, device: torch.device) -> None:
    m.to(device)
    if any(p.dim() == 4 for p in m.parameters()):
        m.to(memory_format=torch.contiguous_format)
