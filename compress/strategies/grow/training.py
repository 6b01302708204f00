"""grow's training and scoring passes: the attention bank (``f_a`` per supervised node), the loss
``L = L_cls + inner_weight * L_inner`` (Eq. 2-4; its shape from ``cfg.growth``, ``L_cls``'s
distillation from the training block), the training stage (§3.2, ``cfg.stage``) on the training
runtime (also the ``"kd+inner"`` final retrain, ``cfg.final``) and ``Rbar`` per node on the
scoring split (the input of Eq. 5). The modules train and score on ``runtime.device`` and end on
the CPU in float32."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from compress.errors import TrainingDivergedError
from compress.strategies.grow.attention import NodeAttention, r_inner
from compress.strategies.grow.config import GrowConfig
from compress.strategies.grow.partition import TeacherPartition
from compress.strategies.grow.student import GrowStudent, NodeSpec, Structure
from compress.training import (EpochCheckpoint, FinetuneSettings, FitPlan, Runtime, diverged_error, fit, kd_loss,
                               make_optimizer, training_loader)
from compress.training.loop import warmup_cosine_factor

__all__ = ["AttentionBank", "grow_loss", "train_stage", "score_nodes"]


class AttentionBank(nn.Module):
    """``f_a`` per supervised student node (``ModuleDict`` keyed by node id)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.nodes = nn.ModuleDict()

    def sync(self, structure: Structure, partition: TeacherPartition) -> None:
        """Add an ``f_a`` for every supervised node that has none yet (existing ones keep their weights)."""
        for n in structure.nodes:
            if n.id != structure.input_id and str(n.id) not in self.nodes:
                self.nodes[str(n.id)] = NodeAttention(n.channels, partition.points[n.q - 1].shape[0], self.kind)

    def forward(self, nid: int, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return self.nodes[str(nid)](student, teacher)


def _supervised(structure: Structure) -> list[NodeSpec]:
    return [n for n in structure.nodes if n.id != structure.input_id]


def grow_loss(
    student: GrowStudent, attn: AttentionBank, x: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor,
    t_feats: tuple[torch.Tensor, ...], cfg: GrowConfig, *, use_kd: bool = True,
    settings: FinetuneSettings | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """``L = L_cls + inner_weight * L_inner`` (Eq. 2-4) on one batch: ``r_norm`` and
    ``inner_weight`` from ``cfg.growth``; ``L_cls``'s ``kd_alpha``, ``kd_temperature`` and
    ``label_smoothing`` from ``settings`` (default: ``cfg.stage``'s).

    Returns ``(loss, {node_id: per-sample R_inner (B,)})``.
    """
    s = settings if settings is not None else cfg.stage.settings()
    logits, feats = student.forward_features(x)
    l_cls = kd_loss(logits, y, t_logits if use_kd else None, alpha=s.kd_alpha, temperature=s.kd_temperature,
                    label_smoothing=s.label_smoothing)
    rs = {}
    for n in _supervised(student.structure):
        t = t_feats[n.q - 1]
        rs[n.id] = r_inner(feats[n.id], t, norm=cfg.growth.r_norm, projected=attn(n.id, feats[n.id], t))
    l_inner = torch.stack([r.mean() for r in rs.values()]).mean()
    return l_cls + cfg.growth.inner_weight * l_inner, rs


class _GrowObjective(nn.Module):
    """Eq. 4 on one batch as a module (the student and the attention bank as its children), so
    that a data-parallel runtime wraps both in one DDP module and all-reduces every gradient."""

    def __init__(self, student: GrowStudent, attn: AttentionBank, cfg: GrowConfig, use_kd: bool,
                 settings: FinetuneSettings | None = None) -> None:
        super().__init__()
        self.student, self.attn = student, attn
        self.cfg, self.use_kd, self.settings = cfg, use_kd, settings

    def forward(self, x: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor,
                t_feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return grow_loss(self.student, self.attn, x, y, t_logits, t_feats, self.cfg, use_kd=self.use_kd,
                         settings=self.settings)[0]


@contextlib.contextmanager
def _placed(runtime: Runtime, *modules: nn.Module) -> Iterator[None]:
    """``modules`` on ``runtime.device`` inside the block (:meth:`Runtime.prepare`), and back on
    the CPU in float32 and the default memory format after it, also when it raises: cost counting,
    graph surgery, the budget oracle and export run on the CPU."""
    runtime.prepare(*modules)
    try:
        yield
    finally:
        for m in modules:
            m.to(torch.device("cpu"), torch.float32, memory_format=torch.contiguous_format)


def _fit_grow(
    student: GrowStudent, attn: AttentionBank, extractor: nn.Module, loader: DataLoader, cfg: GrowConfig,
    settings: FinetuneSettings, *, cosine: bool, use_kd: bool, runtime: Runtime, phase: str,
    validate: Callable[[], float | None] | None = None, keep_best: bool = False,
    checkpoint: EpochCheckpoint | None = None, checkpoint_key: dict[str, Any] | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Eq. 4 training of ``student`` and ``attn`` on :func:`compress.training.fit` with the
    training block ``settings`` (a stage's or the ``"kd+inner"`` retrain's): its optimizer (SGD
    with momentum, no Nesterov, or Adam) and weight decay, constant LR or (``cosine``) a cosine
    per step, after ``warmup_epochs`` of linear warm-up, its ``grad_clip``, ``augment`` in the
    loader seeded from ``settings.seed``, ``max_steps_per_epoch``, ``time_budget_s`` (the epoch
    count chosen after the first epoch, the cosine re-planned to end there) and ``L_cls``'s
    distillation and label smoothing; the frozen extractor runs under ``no_grad``. The three
    modules are on ``runtime.device`` during training and on the CPU afterwards. Returns fit's
    per-epoch history."""
    params = [p for p in list(student.parameters()) + list(attn.parameters()) if p.requires_grad]
    epochs, lr, max_steps = settings.epochs, settings.lr, settings.max_steps_per_epoch
    with _placed(runtime, student, attn, extractor):
        extractor.eval()
        train_loader, collate = training_loader(
            loader, augment=settings.augment, seed=settings.seed, num_workers=runtime.options.num_workers,
            pin_memory=runtime.pin_memory, persistent_workers=runtime.options.persistent_workers,
            world_size=runtime.world_size, rank=runtime.global_rank)
        opt = make_optimizer(params, settings.optimizer, lr=lr, momentum=settings.momentum,
                             weight_decay=settings.weight_decay, nesterov=False)
        steps = len(train_loader) if max_steps is None else min(len(train_loader), max_steps)
        total = [max(1, epochs * steps)]  # re-planned by a time budget (on_planned)
        warmup = settings.warmup_epochs * steps

        def lr_factor(s: int) -> float:
            return warmup_cosine_factor(s, total[0], warmup) if cosine else min(1.0, (s + 1) / warmup)

        objective = runtime.wrap(_GrowObjective(student, attn, cfg, use_kd, settings))

        def step(batch: Any) -> tuple[torch.Tensor, int]:
            x, y = batch[0], batch[1]
            with torch.no_grad():
                t_logits, t_feats = extractor(x)
            return objective(x, y, t_logits, t_feats), int(y.numel())

        plan = FitPlan(modules=[student, attn], optimizer=opt, step=step, epochs=epochs, steps_per_epoch=steps,
                       lr_factor=lr_factor if cosine or warmup else None, grad_clip=settings.grad_clip,
                       clip_params=params, validate=validate, keep_best=keep_best, time_budget_s=settings.time_budget_s,
                       on_planned=lambda n: total.__setitem__(0, max(1, n * steps)),
                       extra_generators={"augment": collate.generator} if collate is not None else {})
        return fit(plan, train_loader, runtime=runtime, phase=phase, lr=lr, checkpoint=checkpoint,
                   checkpoint_key=checkpoint_key, on_epoch=on_epoch, augment_collate=collate)


def train_stage(
    student: GrowStudent, attn: AttentionBank, extractor: nn.Module, loader: DataLoader, cfg: GrowConfig, *,
    epochs: int, lr: float, seed: int, max_steps: int | None, cosine: bool = False, use_kd: bool = True,
    on_epoch=None, phase: str = "grow stage", checkpoint_dir: Path | None = None, runtime: Runtime | None = None,
) -> list[float]:
    """Training stage (§3.2): SGD (``cfg.stage``'s momentum, weight decay, clip, augmentation and
    distillation; ``epochs``, ``lr``, ``max_steps`` and ``seed`` as given) on Eq. 4 through the
    training runtime (:func:`compress.training.fit`); teacher frozen in eval mode under
    ``no_grad``. The student,
    the attention bank and the extractor train on ``runtime.device`` (default: ``Runtime()``, the
    CPU in fp32) and end on the CPU in float32. ``on_epoch(epoch, mean_loss)`` after each epoch.
    Returns the mean loss per epoch.

    Raises:
        TrainingDivergedError: the loss became NaN or inf (or the weights non-finite); the student
            and the attention bank get the weights of the last completed epoch back (those they
            started with in the first epoch). The message names ``phase``, the epoch and the step,
            and ``checkpoint_dir`` (where the boundaries committed so far stay) when given.
    """
    runtime = runtime or Runtime()
    try:
        settings = cfg.stage.settings(seed=seed, epochs=epochs, lr=lr, max_steps_per_epoch=max_steps)
        hist = _fit_grow(student, attn, extractor, loader, cfg, settings, cosine=cosine, use_kd=use_kd,
                         runtime=runtime, phase=phase,
                         on_epoch=(lambda e, rec: on_epoch(e, rec["loss"])) if on_epoch is not None else None)
    except TrainingDivergedError as err:  # fit has no checkpoint here: name the stage's own folder and start
        restored = (f"the weights after epoch {err.epoch - 1}" if err.epoch > 1
                    else "the weights it started the stage with")
        raise diverged_error(err.phase, epoch=err.epoch, epochs=epochs, step=err.step, loss=err.loss, lr=lr,
                             restored=restored, checkpoint_dir=checkpoint_dir,
                             weights="weights became non-finite" in str(err)) from None
    return [float(rec["loss"]) for rec in hist]


@torch.no_grad()
def score_nodes(student: GrowStudent, attn: AttentionBank, extractor: nn.Module, loader: DataLoader, cfg: GrowConfig,
                *, max_batches: int | None = None, runtime: Runtime | None = None) -> dict[int, float]:
    """``Rbar(v)``: mean ``R_inner`` per supervised node over ``loader`` (the scoring split), eval
    mode, on ``runtime.device`` under its autocast (default: the CPU in fp32); the modules end on
    the CPU."""
    runtime = runtime or Runtime()
    student.eval()
    attn.eval()
    sums: dict[int, float] = {}
    count = 0
    with _placed(runtime, student, attn, extractor):
        for b, batch in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            x, y = runtime.to_device((batch[0], batch[1]))
            with runtime.autocast():
                t_logits, t_feats = extractor(x)
                _, rs = grow_loss(student, attn, x, y, t_logits, t_feats, cfg)
            for nid, r in rs.items():
                sums[nid] = sums.get(nid, 0.0) + float(r.float().sum())
            count += int(y.numel())
    return {nid: s / max(count, 1) for nid, s in sums.items()}
