"""Training parts shared by every strategy: accuracy, the KD loss, a fine-tune loop.

Knowledge distillation (Hinton et al. 2015) as used for every final retrain:

    L = (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

with ``z_s`` / ``z_t`` the student / teacher logits ``(B, K)``. ``T^2`` keeps the soft term's
gradient scale independent of the temperature. ``alpha = 0`` is plain cross-entropy.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from compress.errors import TrainingDivergedError
from compress.strategies._parts.checkpoint import EpochCheckpoint, loader_generators, stable_hash

__all__ = ["kd_loss", "evaluate", "FinetuneSettings", "finetune", "augment_batch", "AUGMENTATIONS",
           "all_finite", "diverged_error"]

AUGMENTATIONS = ("none", "flip-crop")


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Train-time augmentation on a normalised batch ``(B, C, H, W)``.

    ``"flip-crop"`` is the standard CIFAR recipe (He et al. 2016): pad 4 pixels with zeros, take a
    random ``H x W`` crop, flip horizontally with probability 0.5. ``"none"`` returns ``x``.
    """
    if kind == "none":
        return x
    b, _, h, w = x.shape
    pad = 4
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(b):
        crop = padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def kd_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    *,
    alpha: float = 0.5,
    temperature: float = 4.0,
) -> torch.Tensor:
    """CE + temperature-scaled KL, see the module docstring.

    Args:
        student_logits: ``(B, K)``.
        targets: ``(B,)`` int64 class indices.
        teacher_logits: ``(B, K)`` or None (then plain CE).
    Returns:
        scalar loss tensor.
    """
    ce = F.cross_entropy(student_logits, targets)
    if teacher_logits is None or alpha == 0.0:
        return ce
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - alpha) * ce + alpha * (t * t) * kl


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader | None, max_batches: int | None = None) -> float | None:
    """Top-1 accuracy in [0, 1] of ``model`` on ``loader`` (batches ``x (B, C, H, W)``, ``y (B,)``),
    over at most ``max_batches`` batches. None if there is no loader or no sample. Restores the
    model's train/eval state."""
    if loader is None:
        return None
    was = model.training
    model.eval()
    correct = total = 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += int(y.numel())
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


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tune schedule: SGD with Nesterov momentum and a cosine learning rate (the GECCO'22
    paper's transfer-pruning recipe, §5: SGD Nesterov 0.9, wd 1e-4), keeping the weights with the
    best validation accuracy (not test: ALGORITHMS.md 2(b).5)."""

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
) -> list[dict]:
    """Train ``model`` in place with KD from ``teacher`` (or plain CE); returns per-epoch history.

    ``on_epoch(epoch, record)`` is called after each epoch with
    ``{"epoch", "loss", "val_acc", "lr"}``. The model is left in eval mode with the best
    validation weights when ``settings.keep_best``.

    With ``checkpoint``, every epoch boundary is committed (model, optimizer, scheduler, best
    weights, history, the augmentation / loader / ``checkpoint.generators`` states and the global
    RNGs; see :mod:`._parts.checkpoint`). A later call with the same key, settings and parameter
    shapes continues after the last committed epoch: ``on_epoch`` is replayed for the epochs
    already done (so callers rebuild their logs and per-epoch state), and the result is
    bit-identical to an uninterrupted run. A finished checkpoint returns at once.

    A non-finite loss (NaN / inf), or weights that became non-finite by the end of an epoch, stop
    the loop: the model gets the weights of the last completed epoch back (those it started with
    in the first epoch), the epochs already committed stay in the checkpoint, and
    :class:`TrainingDivergedError` is raised, naming ``phase`` (default: the checkpoint's name, or
    ``"finetune"``), the epoch and the step.

    Raises:
        CheckpointError: the epoch checkpoint is corrupt or truncated.
        TrainingDivergedError: the loss became NaN or inf.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    else:
        opt = torch.optim.SGD(
            params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay, nesterov=True
        )
    steps_per_epoch = len(data_train)
    if settings.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, settings.max_steps_per_epoch)
    total = max(1, settings.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    if teacher is not None:
        teacher.eval()
    history: list[dict] = []
    best_acc, best_state = -1.0, None
    gen = torch.Generator().manual_seed(settings.seed)
    start = 0
    gens: dict[str, torch.Generator | None] = {}
    key = ""
    if checkpoint is not None and checkpoint.store.enabled:
        gens = {"augment": gen, **loader_generators(train=data_train, val=data_val), **checkpoint.generators}
        # grad_clip=None is left out, so checkpoints written before the field existed still resume
        settings_key = {k: v for k, v in dataclasses.asdict(settings).items() if not (k == "grad_clip" and v is None)}
        key = stable_hash({"key": checkpoint.key, "settings": settings_key,
                           "steps_per_epoch": steps_per_epoch, "kd": teacher is not None,
                           "params": [[n, list(p.shape)] for n, p in model.named_parameters()]})
        restored = checkpoint.store.load(checkpoint.name, key=key)
        if restored is not None:
            t = restored.tensors
            model.load_state_dict(t["model"])
            opt.load_state_dict(t["optimizer"])
            sched.load_state_dict(t["scheduler"])
            best_acc, best_state = float(restored.state["best_acc"]), t.get("best")
            for rec in restored.state["history"]:
                history.append(rec)
                if on_epoch:
                    on_epoch(int(rec["epoch"]), rec)
            start = int(restored.state["epoch"])
            restored.restore_rng(gens)
    phase = phase or (checkpoint.name if checkpoint is not None else "finetune")
    ckpt_dir = checkpoint.store.dir if key else None
    for epoch in range(start, settings.epochs):
        good = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the last good weights
        restored = f"the weights after epoch {epoch}" if epoch else "the weights it started with"

        def diverged(step: int, loss_value: float, weights: bool = False) -> TrainingDivergedError:
            model.load_state_dict(good)
            model.eval()
            return diverged_error(phase, epoch=epoch + 1, epochs=settings.epochs, step=step, loss=loss_value,
                                  lr=settings.lr, restored=restored, checkpoint_dir=ckpt_dir, weights=weights)

        model.train()
        running, seen, done = 0.0, 0, 0
        for step, (x, y) in enumerate(data_train):
            if step >= steps_per_epoch:
                break
            x = augment_batch(x, settings.augment, gen)
            with torch.no_grad():
                t_logits = teacher(x) if teacher is not None else None
            loss = kd_loss(model(x), y, t_logits, alpha=settings.kd_alpha, temperature=settings.kd_temperature)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise diverged(step, loss_value)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            sched.step()
            running += loss_value * int(y.numel())
            seen += int(y.numel())
            done += 1
        if not all_finite(model):
            raise diverged(max(done - 1, 0), float("nan"), weights=True)
        val_acc = evaluate(model, data_val)
        rec = {"epoch": epoch + 1, "loss": running / max(seen, 1), "val_acc": val_acc, "lr": sched.get_last_lr()[0]}
        history.append(rec)
        if on_epoch:
            on_epoch(epoch + 1, rec)
        if settings.keep_best and val_acc is not None and val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
        if key:
            tensors = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
            if best_state is not None:
                tensors["best"] = best_state
            checkpoint.store.commit(checkpoint.name, {"epoch": epoch + 1, "epochs": settings.epochs,
                                                      "best_acc": best_acc, "history": history},
                                    tensors, key=key, tag=epoch + 1, generators=gens)
    if settings.keep_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
