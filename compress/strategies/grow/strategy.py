"""Strategy ``grow``: SEArch, a student that grows under the teacher's guidance until the budget.

Source: "SEArch: a self-evolving framework for network architecture optimization" (ICLR 2024
submission; later Liang, Xiang, Li, Neurocomputing 651, 2025), and docs/algorithms/grow.md. One run:

1. **Partition** the teacher along its longest input -> final-map path into ``v̂_1 .. v̂_m``
   (§3.1; :mod:`.partition`).
2. **Start** from ``G_1 = v1 -> v2`` (image -> final feature map, ``q = (1, m)``) plus a
   classifier head (:mod:`.student`). If ``G_1`` already exceeds the budget:
   :class:`BudgetUnreachableError`.
3. **Loop** (§3.2-3.4), iteration ``z``:

   * training stage on ``D_train`` (the first ``1 - score_fraction`` of a seeded split of the
     train loader's dataset), ``stage_epochs`` epochs of SGD on
     ``L = L_cls + inner_weight * L_inner`` (Eq. 4), ``L_inner = mean_v R_inner(v)`` over the
     supervised nodes (Eq. 3; the input node is not a learned map and is left out),
     ``R_inner`` through ``f_a`` (Eq. 1-2, :mod:`.attention`). ``L_cls`` also distils the
     teacher's logits: ``L_cls = (1 - kd_alpha) CE + kd_alpha T^2 KL(teacher || student)``
     (Hinton KD, :func:`kd_loss`; default ``kd_alpha = 0.5``, ``T = 4``; ``kd_alpha = 0`` is the
     paper's plain CE). Learning rate constant within a stage (the paper's "step scheduler" has
     no published steps and the stages are short);
   * bottleneck identification on ``D_val`` (the other part of the split): ``Rbar`` per node,
     ``S`` (Eq. 5), closest precursor (:mod:`.selection`);
   * edge splitting on a copy: deepen (1 -> 4 -> 7 units) until ``B_op``, then widen (Eq. 6);
     weights are inherited and the new parts are function-preserving;
   * the copy is measured by the budget oracle ``ctx.check`` (params, MACs, measured latency);
     over budget -> it is discarded and growth stops (docs/algorithms/grow.md, choice 11). Growth also stops
     after ``max_iterations`` (a safety cap the paper does not have; it saw 24-47 iterations).

4. **Final retrain** on the whole train split: re-initialised (``final_reinit``, NAS
   convention, docs/algorithms/grow.md, choice 9) and trained ``final_epochs`` with ``final_loss``:
   ``"kd"`` (default: Hinton KD from ``ctx.teacher`` through the shared ``finetune`` loop, best
   epoch on the validation split), ``"kd+inner"`` (keep the teacher-guided loss ``L``,
   the algorithm notes' recommendation, docs/algorithms/grow.md) or ``"ce"``.

Every growth iteration is logged (``ctx.log``: node, edge, op, S and Rbar per node, params,
MACs, latency, validation accuracy, the DOT drawing of the new graph) and checkpointed under
``ctx.out_dir/checkpoints/grow`` (structure JSON + tensors, RNG states and the run history),
as is every epoch of the final retrain (every ``final_loss``); a killed run resumes from the
last boundary when the config, seed, teacher partition and data sizes match, bit-identically.

Every training phase (the stages and the final retrain) runs on the training runtime
(:func:`compress.training.fit`, ``ctx.runtime``'s device and precision); so do the scoring and
validation passes. Between them the student, the attention bank and the teacher live on the CPU
in float32: graph surgery, the budget oracle and export run there.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from compress.budgets import measure_cost
from compress.errors import BudgetUnreachableError, ConfigError, DataError, TrainingDivergedError
from compress.profiling.latency_model import LayerLatencyTable, default_cache_dir, layer_configs
from compress.strategies._parts.config_fields import check_fields
from compress.registry import register_strategy
from compress.strategies.base import Strategy, StrategyContext, StrategyOutput, config_to_dict
from compress.strategies.grow.attention import ATTENTIONS, R_NORMS, NodeAttention, r_inner
from compress.strategies.grow.partition import GRANULARITIES, FeatureExtractor, TeacherPartition, halve, partition_teacher
from compress.strategies.grow.selection import (
    ADJACENT_POLICIES,
    Decision,
    PricedSplit,
    choose_split,
    modification_scores,
    random_split,
    rank_by_cost,
    split_candidates,
)
from compress.strategies.grow.student import (
    STRIDE_RULES,
    WIDEN_INITS,
    GrowStudent,
    NodeSpec,
    Structure,
    edge_units,
    initial_structure,
)
from compress.training import (AUGMENTATIONS, CheckpointStore, EpochCheckpoint, FinetuneSettings, FitPlan, Runtime,
                               cosine_factor, diverged_error, evaluate, finetune, fit, kd_loss, make_optimizer,
                               training_loader)
from compress.training.checkpoint import loader_generators

__all__ = ["GrowConfig", "Grow", "AttentionBank", "split_indices", "train_stage", "score_nodes", "apply_decision",
           "FINAL_LOSSES", "SPLIT_POLICIES"]

FINAL_LOSSES = ("kd", "kd+inner", "ce")
OBJECTIVES = ("auto", "latency", "macs", "score")
#: timing of the per-layer latency table behind the latency ranking (rounds, repeats, warmup)
LATENCY_TIMING = {"rounds": 3, "repeats": 5, "warmup": 2}
SPLIT_POLICIES = ("score", "random")
CHECKPOINT_FORMAT = "slimforge-grow-checkpoint/1"

_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # docs/algorithms/grow.md, CPU profile: every mechanism kept, sizes shrunk (minutes on 2 CPU cores)
    "cpu-small": {"stage_epochs": 1, "max_iterations": 8, "final_epochs": 15},
    # invariants only (CI smoke)
    "smoke": {"stage_epochs": 1, "max_iterations": 2, "final_epochs": 1, "max_steps_per_epoch": 2,
              "final_max_steps_per_epoch": 2, "score_max_batches": 1},
}


@dataclass(frozen=True)
class GrowConfig:
    """Settings of ``grow``; paper defaults (App. B, docs/algorithms/grow.md, defaults) unless noted.

    Teacher partition (§3.1, docs/algorithms/grow.md, choice 12):
        teacher_granularity: ``"blocks"`` (image, stem, each block output; m = 29 for ResNet-56)
            or ``"path"`` (every node of the longest path).
        teacher_nodes: explicit graph node names to supervise with (overrides the granularity).
    Student (§3.4, App. B; docs/algorithms/grow.md, choice 2, .6, .9, .10):
        width_mult: student node width = round(width_mult * teacher node width) (paper: unstated).
        b_op: max units per edge before widening (7). initial_ops: units of a new edge (1).
        deepen_step: units appended per deepen (3, so 1 -> 4 -> 7).
        stride_rule: ``"per_halving"`` (k stride-2 units for a 2^k resolution ratio, counted in
            B_op) or ``"single"`` (one unit of stride 2^k).
        c: Eq. 6 interpolation (0.5; ablation 0.25 / 0.75; Eq. 6 implemented literally, docs/algorithms/grow.md, choice 7).
        adjacent_widen: ``"next_node"`` (default: skip a widen whose Eq. 6 gives q_k = q_i, i.e.
            q_j - q_i <= 1, and split the next-best node) or ``"allow"`` (the algorithm notes'
            recommendation, docs/algorithms/grow.md; it degenerates into image-supervised nodes, see :mod:`.selection`).
        widen_init: ``"gate"`` (zero-initialised per-channel gate on the new summand) or
            ``"zero_bn"`` (literal docs/algorithms/grow.md, choice 9; exact but the branch gets no gradient).
    Loss (Eq. 1-4; docs/algorithms/grow.md, choice 1, .3):
        attention: ``"dot"`` (parameter-free channel attention) or ``"proj"`` (learnable 1x1 Q/K).
        r_norm: ``"mean"`` (per-element MSE) or ``"sum"`` (literal squared L2).
        inner_weight: weight of L_inner in Eq. 4 (1).
        kd_alpha, kd_temperature: logit distillation inside L_cls (0.5, 4; 0 = plain CE).
    Selection (Eq. 5; docs/algorithms/grow.md, choice 4, .5; ablations A and C):
        split_policy: ``"score"`` (Eq. 5) or ``"random"`` (ablation C).
        deg_factor: multiply Rbar by deg+/deg- (False = ablation A).
        sink_head_counts: the classifier head counts as a successor of the sink.
        score_fraction: share of the train set held out as D_val for scoring (0.5).
        score_max_batches: cap on scoring batches (None: all of D_val).
    Training stage (App. B): stage_epochs (10), lr (0.025), momentum (0.9), weight_decay (3e-4),
        max_steps_per_epoch (None), augment (``"none"`` | ``"flip-crop"``), max_iterations (safety
        cap, 100; None = until the budget).
    Final retrain (App. B: 400 epochs CIFAR, lr 0.025): final_epochs, final_lr, final_reinit,
        final_loss (``"kd"`` | ``"kd+inner"`` | ``"ce"``), final_max_steps_per_epoch.
    Hardware-aware ranking (issue 18, part 4; not in the paper):
        objective: ``"auto"`` (default: rank by ``S`` per predicted ms when the budget names latency,
            Eq. 5 alone otherwise), ``"latency"`` (always per predicted ms), ``"macs"`` (always ``S``
            per MAC), ``"score"`` (Eq. 5 alone, the paper).
        rank_candidates: how many of the highest-``S`` splits are priced and ranked (3, >= 1).
    grad_clip: global gradient-norm clip for every SGD step, growth stages and final retrain (5;
        None = off). Not in the paper; App. B's recipe (SGD lr 0.025, sep-conv units, cosine) is
        DARTS' evaluation training, whose reference code clips at 5. Without it, a re-initialised
        deep DAG can blow up in its first retrain epoch and never recover (seen on CIFAR: a
        random-split student, epoch-1 loss 48.7, then stuck at 15% val).
    checkpoint: write/resume per-iteration checkpoints when ``ctx.out_dir`` is set.
    """

    teacher_granularity: str = "blocks"
    teacher_nodes: tuple[str, ...] | None = None
    width_mult: float = 1.0
    b_op: int = 7
    initial_ops: int = 1
    deepen_step: int = 3
    stride_rule: str = "per_halving"
    c: float = 0.5
    adjacent_widen: str = "next_node"
    widen_init: str = "gate"
    attention: str = "dot"
    r_norm: str = "mean"
    inner_weight: float = 1.0
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    split_policy: str = "score"
    deg_factor: bool = True
    sink_head_counts: bool = True
    score_fraction: float = 0.5
    score_max_batches: int | None = None
    stage_epochs: int = 10
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    max_steps_per_epoch: int | None = None
    augment: str = "none"
    max_iterations: int | None = 100
    final_epochs: int = 400
    final_lr: float = 0.025
    final_reinit: bool = True
    final_loss: str = "kd"
    final_max_steps_per_epoch: int | None = None
    grad_clip: float | None = 5.0
    checkpoint: bool = True
    objective: str = "auto"
    rank_candidates: int = 3

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and, by its name, its range
        choices = {
            "teacher_granularity": GRANULARITIES, "stride_rule": STRIDE_RULES, "adjacent_widen": ADJACENT_POLICIES,
            "widen_init": WIDEN_INITS, "attention": ATTENTIONS, "r_norm": R_NORMS, "split_policy": SPLIT_POLICIES,
            "augment": AUGMENTATIONS, "final_loss": FINAL_LOSSES, "objective": OBJECTIVES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"GrowConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.teacher_nodes is not None:
            if not isinstance(self.teacher_nodes, tuple) or not all(isinstance(s, str) for s in self.teacher_nodes):
                raise ConfigError("GrowConfig.teacher_nodes must be a tuple of graph node names or None.")
        ints = {"b_op": 1, "initial_ops": 1, "deepen_step": 1, "stage_epochs": 0, "final_epochs": 0,
                "rank_candidates": 1}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"GrowConfig.{name} must be an int >= {lo}, got {v!r}.")
        if self.initial_ops > self.b_op:
            raise ConfigError(f"GrowConfig.initial_ops ({self.initial_ops}) must be <= b_op ({self.b_op}).")
        for name in ("score_max_batches", "max_steps_per_epoch", "max_iterations", "final_max_steps_per_epoch"):
            v = getattr(self, name)
            lo = 0 if name == "max_iterations" else 1
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
                raise ConfigError(f"GrowConfig.{name} must be None or a positive int, got {v!r}.")
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, (int, float))
                                           or not math.isfinite(self.grad_clip) or self.grad_clip <= 0):
            raise ConfigError(f"GrowConfig.grad_clip must be None (off) or a positive number, got {self.grad_clip!r}.")
        if not 0.0 <= self.c <= 1.0:
            raise ConfigError(f"GrowConfig.c must be in [0, 1] (Eq. 6), got {self.c}.")
        if not 0.0 < self.score_fraction < 1.0:
            raise ConfigError(f"GrowConfig.score_fraction must be in (0, 1), got {self.score_fraction}.")
        if not self.width_mult > 0:
            raise ConfigError(f"GrowConfig.width_mult must be > 0, got {self.width_mult}.")
        if not 0.0 <= self.kd_alpha <= 1.0 or self.kd_temperature <= 0:
            raise ConfigError("GrowConfig.kd_alpha must be in [0, 1] and kd_temperature > 0.")
        if (self.inner_weight < 0 or self.lr <= 0 or self.final_lr <= 0 or self.weight_decay < 0
                or not 0 <= self.momentum < 1):
            raise ConfigError(
                "GrowConfig needs inner_weight >= 0, lr > 0, final_lr > 0, weight_decay >= 0, 0 <= momentum < 1."
            )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GrowConfig":
        """``"paper"`` (defaults), ``"cpu-small"`` (docs/algorithms/grow.md, CPU profile: 1 epoch per stage,
        <= 8 iterations, 15 final epochs) or ``"smoke"``; ``overrides`` replace fields.

        Raises:
            ConfigError: unknown preset name.
        """
        if name not in _PRESETS:
            raise ConfigError(f"unknown GrowConfig preset {name!r}; use one of {sorted(_PRESETS)}.")
        return cls(**{**_PRESETS[name], **overrides})


# ------------------------------------------------------------------------------------ helpers


def _derive(seed: int, *parts: Any) -> int:
    blob = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little") & 0x7FFFFFFF


def split_indices(n: int, score_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(n)`` into ``(D_train, D_val)`` index lists (§3.1: "we split the
    training dataset into two subsets").

    Raises:
        DataError: one part would be empty.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_derive(seed, "split"))).tolist()
    n_score = int(round(n * score_fraction))
    if n_score < 1 or n - n_score < 1:
        raise DataError(f"grow needs >= 1 sample in each part of the train split ({n} samples, "
                        f"score_fraction {score_fraction}); give more training data.")
    return sorted(perm[n_score:]), sorted(perm[:n_score])


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
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """``L = L_cls + inner_weight * L_inner`` (Eq. 2-4) on one batch.

    Returns ``(loss, {node_id: per-sample R_inner (B,)})``.
    """
    logits, feats = student.forward_features(x)
    l_cls = kd_loss(logits, y, t_logits if use_kd else None, alpha=cfg.kd_alpha, temperature=cfg.kd_temperature)
    rs = {}
    for n in _supervised(student.structure):
        t = t_feats[n.q - 1]
        rs[n.id] = r_inner(feats[n.id], t, norm=cfg.r_norm, projected=attn(n.id, feats[n.id], t))
    l_inner = torch.stack([r.mean() for r in rs.values()]).mean()
    return l_cls + cfg.inner_weight * l_inner, rs


class _GrowObjective(nn.Module):
    """Eq. 4 on one batch as a module (the student and the attention bank as its children), so
    that a data-parallel runtime wraps both in one DDP module and all-reduces every gradient."""

    def __init__(self, student: GrowStudent, attn: AttentionBank, cfg: GrowConfig, use_kd: bool) -> None:
        super().__init__()
        self.student, self.attn = student, attn
        self.cfg, self.use_kd = cfg, use_kd

    def forward(self, x: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor,
                t_feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return grow_loss(self.student, self.attn, x, y, t_logits, t_feats, self.cfg, use_kd=self.use_kd)[0]


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
    student: GrowStudent, attn: AttentionBank, extractor: nn.Module, loader: DataLoader, cfg: GrowConfig, *,
    epochs: int, lr: float, seed: int, max_steps: int | None, cosine: bool, use_kd: bool, runtime: Runtime,
    phase: str, validate: Callable[[], float | None] | None = None, keep_best: bool = False,
    checkpoint: EpochCheckpoint | None = None, checkpoint_key: dict[str, Any] | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Eq. 4 training of ``student`` and ``attn`` on :func:`compress.training.fit` (SGD with
    momentum and weight decay, cosine or constant LR per step, ``cfg.grad_clip``, ``cfg.augment``
    in the loader seeded from ``seed``); the frozen extractor runs under ``no_grad``. The three
    modules are on ``runtime.device`` during training and on the CPU afterwards. Returns fit's
    per-epoch history."""
    params = [p for p in list(student.parameters()) + list(attn.parameters()) if p.requires_grad]
    with _placed(runtime, student, attn, extractor):
        extractor.eval()
        train_loader, collate = training_loader(
            loader, augment=cfg.augment, seed=seed, num_workers=runtime.options.num_workers,
            pin_memory=runtime.pin_memory, persistent_workers=runtime.options.persistent_workers,
            world_size=runtime.world_size, rank=runtime.global_rank)
        opt = make_optimizer(params, "sgd", lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                             nesterov=False)
        steps = len(train_loader) if max_steps is None else min(len(train_loader), max_steps)
        total = max(1, epochs * steps)
        objective = runtime.wrap(_GrowObjective(student, attn, cfg, use_kd))

        def step(batch: Any) -> tuple[torch.Tensor, int]:
            x, y = batch[0], batch[1]
            with torch.no_grad():
                t_logits, t_feats = extractor(x)
            return objective(x, y, t_logits, t_feats), int(y.numel())

        plan = FitPlan(modules=[student, attn], optimizer=opt, step=step, epochs=epochs, steps_per_epoch=steps,
                       lr_factor=(lambda s: cosine_factor(s, total)) if cosine else None, grad_clip=cfg.grad_clip,
                       clip_params=params, validate=validate, keep_best=keep_best,
                       extra_generators={"augment": collate.generator} if collate is not None else {})
        return fit(plan, train_loader, runtime=runtime, phase=phase, lr=lr, checkpoint=checkpoint,
                   checkpoint_key=checkpoint_key, on_epoch=on_epoch, augment_collate=collate)


def train_stage(
    student: GrowStudent, attn: AttentionBank, extractor: nn.Module, loader: DataLoader, cfg: GrowConfig, *,
    epochs: int, lr: float, seed: int, max_steps: int | None, cosine: bool = False, use_kd: bool = True,
    on_epoch=None, phase: str = "grow stage", checkpoint_dir: Path | None = None, runtime: Runtime | None = None,
) -> list[float]:
    """Training stage (§3.2): SGD (momentum, weight decay) on Eq. 4 through the training runtime
    (:func:`compress.training.fit`); teacher frozen in eval mode under ``no_grad``. The student,
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
        hist = _fit_grow(student, attn, extractor, loader, cfg, epochs=epochs, lr=lr, seed=seed, max_steps=max_steps,
                         cosine=cosine, use_kd=use_kd, runtime=runtime, phase=phase,
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


def apply_decision(student: GrowStudent, d: Decision, partition: TeacherPartition, cfg: GrowConfig, *,
                   seed: int | None = None) -> int | None:
    """Apply a :class:`Decision` in place; returns the new node id for a widen (else None)."""
    if d.op == "deepen":
        student.deepen(d.src, d.dst, d.n_new, seed=seed)
        return None
    s = student.structure
    ni, nj = s.node(d.src), s.node(d.dst)
    q_k = int(d.q_k)
    pt = partition.points[q_k - 1]
    in_hw = s.node(s.input_id).hw
    level = min(max(pt.level, ni.level), nj.level)  # keep the new node between its neighbours
    channels = _width(pt.shape[0], cfg)
    node = NodeSpec(s.next_id(), q_k, channels, level, (halve(in_hw[0], level), halve(in_hw[1], level)))

    def wal(lv: int) -> int:
        return _width(partition.width_at_level(lv), cfg)

    u_in = edge_units(ni.channels, ni.level, node.channels, node.level, width_at_level=wal,
                      initial_ops=cfg.initial_ops, stride_rule=cfg.stride_rule)
    u_out = edge_units(node.channels, node.level, nj.channels, nj.level, width_at_level=wal,
                       initial_ops=cfg.initial_ops, stride_rule=cfg.stride_rule)
    return student.widen(d.src, d.dst, node, u_in, u_out, init=cfg.widen_init, seed=seed)


def _width(c_teacher: int, cfg: GrowConfig) -> int:
    return max(1, int(round(cfg.width_mult * c_teacher)))


def build_initial(partition: TeacherPartition, num_classes: int, cfg: GrowConfig, *, seed: int) -> GrowStudent:
    """``G_1`` for this teacher (module init seeded, global RNG restored)."""
    first, last = partition.points[0], partition.points[-1]
    in_hw = (first.shape[1], first.shape[2])
    s = initial_structure(
        in_channels=first.shape[0], in_hw=in_hw, q_sink=partition.m, c_sink=_width(last.shape[0], cfg),
        level_sink=last.level, sink_hw=(halve(in_hw[0], last.level), halve(in_hw[1], last.level)),
        num_classes=num_classes, width_at_level=lambda lv: _width(partition.width_at_level(lv), cfg),
        initial_ops=cfg.initial_ops, stride_rule=cfg.stride_rule,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GrowStudent(s).eval()


# ------------------------------------------------------------------------------------ ranking


def _ranking(cfg: GrowConfig, ctx: StrategyContext) -> str | None:
    """``"ms"``, ``"macs"`` or None (Eq. 5 alone) for this config and budget."""
    if cfg.split_policy != "score" or cfg.objective == "score":
        return None
    if cfg.objective == "latency" or (cfg.objective == "auto" and ctx.budget.needs_latency):
        return "ms"
    if cfg.objective == "macs":
        return "macs"
    return None


class _Pricer:
    """Prices candidate splits: predicted ms from the target's per-layer latency table (the sum of
    every conv / linear layer's table latency, cached on disk), MACs from fvcore; both as the
    difference between the split copy and the current student."""

    def __init__(self, ctx: StrategyContext, table: Any = None) -> None:
        self.x = ctx.example_inputs
        self.table = table if table is not None else LayerLatencyTable(
            ctx.target, cache_dir=Path(default_cache_dir()) / "grow", **LATENCY_TIMING)

    def predicted_ms(self, net: nn.Module) -> float:
        """Sum of the table latencies of ``net``'s conv and linear layers (ms per batch)."""
        return float(sum(self.table.latency(cfg) for _name, cfg in layer_configs(net, self.x)))

    def macs(self, net: nn.Module) -> float:
        return float(measure_cost(net, self.x).macs)

    def choose(self, student: GrowStudent, scores: dict[int, float], partition: TeacherPartition, cfg: GrowConfig,
               per: str, *, seed: int) -> tuple[Decision | None, list[PricedSplit]]:
        """The best of the ``cfg.rank_candidates`` highest-``S`` splits by :func:`rank_by_cost`
        (None when no node can be split) and every priced candidate, best first."""
        cands = split_candidates(student.structure, scores, limit=cfg.rank_candidates, b_op=cfg.b_op,
                                 deepen_step=cfg.deepen_step, c=cfg.c, adjacent=cfg.adjacent_widen)
        if not cands:
            return None, []
        ms0, macs0 = self.predicted_ms(student), self.macs(student)
        priced = []
        for d in cands:
            cand = copy.deepcopy(student)
            apply_decision(cand, d, partition, cfg, seed=seed)
            cand.eval()
            priced.append(PricedSplit(d, float(scores[d.dst]), self.predicted_ms(cand) - ms0, self.macs(cand) - macs0))
        if hasattr(self.table, "save"):
            self.table.save()
        ranked = rank_by_cost(priced, per)
        return ranked[0].decision, ranked


# ------------------------------------------------------------------------------------ checkpoints


class _Checkpoints:
    """``<out_dir>/checkpoints/grow/state.json`` + ``state.<iteration>-<phase>.pt`` (tensors only)
    through the shared :class:`CheckpointStore` (atomic pair, RNG states); ``final.*`` holds the
    per-epoch checkpoints of the final retrain."""

    def __init__(self, root: Path | None, key: str) -> None:
        self.store = CheckpointStore.for_strategy(root, "grow")
        self.dir = self.store.dir
        self.key = key

    def load(self):
        """The last committed boundary (``Restored``) or None; raises CheckpointError when corrupt."""
        return self.store.load("state", key=f"{CHECKPOINT_FORMAT}:{self.key}")

    def save(self, state: dict, tensors: dict) -> None:
        self.store.commit("state", state, tensors, key=f"{CHECKPOINT_FORMAT}:{self.key}",
                          tag=f"{state['iteration']:04d}-{state['phase']}")


# ------------------------------------------------------------------------------------ strategy


@register_strategy("grow")
class Grow(Strategy):
    """SEArch (ICLR'24 submission): grow a sep-conv student from two nodes under teacher guidance.

    Input: ``ctx.teacher`` (a CNN ``(B, C, H, W) -> (B, K)``; ``ctx.model`` is not used, the
    student is built from scratch). Output: a :class:`GrowStudent` meeting ``ctx.budget``.

    Raises:
        UnsupportedModelError: the teacher cannot be partitioned (names the failing node/module).
        BudgetUnreachableError: the two-node start already exceeds the budget.
        DataError: the train loader's dataset cannot be split (not map-style, too small).
    """

    config_cls = GrowConfig
    paper = "SEArch: A Self-Evolving Framework for Network Architecture Optimization (ICLR 2024 submission)"

    @classmethod
    def demo_config(cls, epochs: int) -> dict:
        """The CPU-scale preset (docs/algorithms/grow.md, CPU profile) with ``epochs`` final-retrain epochs."""
        return config_to_dict(GrowConfig.preset("cpu-small", final_epochs=epochs))

    @classmethod
    def build_student(cls, arch: dict) -> GrowStudent:
        """Rebuild the grown student's architecture from ``{"structure": Structure.to_dict()}``."""
        return GrowStudent.from_dict(arch["structure"])

    def run(self, ctx: StrategyContext) -> StrategyOutput:
        cfg: GrowConfig = self.config
        seed = int(ctx.seed)
        num_classes = ctx.data.spec.num_classes
        with ctx.phase("partition"):
            partition = partition_teacher(ctx.teacher, ctx.example_inputs, granularity=cfg.teacher_granularity,
                                          nodes=cfg.teacher_nodes)
            extractor = FeatureExtractor(partition).eval()
            d_train, d_score = self._split_loaders(ctx, cfg, seed)

        key_blob = json.dumps({"config": {k: v for k, v in config_to_dict(cfg).items() if k != "checkpoint"},
                               "seed": seed, "teacher": partition.signature(), "budget": ctx.budget.describe(),
                               "sizes": [len(d_train.dataset), len(d_score.dataset)], "classes": num_classes},
                              sort_keys=True, default=str)
        ckpt = _Checkpoints(ctx.out_dir if cfg.checkpoint else None, hashlib.sha256(key_blob.encode()).hexdigest()[:20])

        student = build_initial(partition, num_classes, cfg, seed=_derive(seed, "init"))
        attn = AttentionBank(cfg.attention)
        attn.sync(student.structure, partition)
        start, stop_reason, phase, records, resumed = 0, None, "grow", [], None
        restored = ckpt.load()
        if restored is not None:
            state, tensors = restored.state, restored.tensors
            student = GrowStudent(Structure.from_dict(state["structure"])).eval()
            student.load_state_dict(tensors["student"])
            attn = AttentionBank(cfg.attention)
            attn.sync(student.structure, partition)
            attn.load_state_dict(tensors["attn"])
            start, stop_reason, phase, records = state["iteration"], state["stop_reason"], state["phase"], state["records"]
            resumed = {"iteration": start, "phase": phase}
            ctx.history[:] = state["history"]  # the run history up to the boundary, as the killed run logged it
            restored.restore_rng()
        else:
            cost0, check0, lat0 = ctx.check(student)
            if not check0.ok:
                raise BudgetUnreachableError(
                    f"grow cannot meet budget {ctx.budget.describe()!r}: its two-node start network already has "
                    f"{cost0.params:,} params and {cost0.macs:,} MACs ("
                    + "; ".join(str(v) for v in check0.violations)
                    + "). Lower config width_mult (e.g. 0.5) or loosen the budget."
                )
            rec0 = {"phase": "grow", "iteration": 0, "op": "init", "params": cost0.params, "macs": cost0.macs,
                    "latency_ms": lat0, "nodes": 2, "edges": 1, "dot": student.structure.to_dot("iteration 0")}
            records.append(rec0)
            ctx.log(**rec0)

        def tensors_of() -> dict:
            return {"student": {k: v.detach().clone() for k, v in student.state_dict().items()},
                    "attn": {k: v.detach().clone() for k, v in attn.state_dict().items()}}

        with ctx.phase("search"):
            z = start
            pricer: _Pricer | None = None
            while phase == "grow":
                ranking: dict[str, Any] | None = None
                if cfg.max_iterations is not None and z >= cfg.max_iterations:
                    stop_reason, phase = "max_iterations", "grown"
                    break
                stage_seed = _derive(seed, "stage", z)
                d_train.generator.manual_seed(stage_seed)  # data order depends on (seed, iteration) only
                losses = train_stage(student, attn, extractor, d_train, cfg, epochs=cfg.stage_epochs, lr=cfg.lr,
                                     seed=stage_seed, max_steps=cfg.max_steps_per_epoch,
                                     phase=f"grow stage (iteration {z + 1})", checkpoint_dir=ckpt.dir,
                                     runtime=ctx.runtime)
                with _placed(ctx.runtime, student):
                    val_acc = evaluate(student, ctx.data.val, runtime=ctx.runtime)
                if cfg.split_policy == "score":
                    rbar = score_nodes(student, attn, extractor, d_score, cfg, max_batches=cfg.score_max_batches,
                                       runtime=ctx.runtime)
                    scores = modification_scores(student.structure, rbar, deg_factor=cfg.deg_factor,
                                                 head_counts=cfg.sink_head_counts)
                    per = _ranking(cfg, ctx)
                    if per is None:
                        decision = choose_split(student.structure, scores, b_op=cfg.b_op,
                                                deepen_step=cfg.deepen_step, c=cfg.c, adjacent=cfg.adjacent_widen)
                    else:
                        if pricer is None:
                            pricer = _Pricer(ctx)
                        decision, priced = pricer.choose(student, scores, partition, cfg, per,
                                                         seed=_derive(seed, "units", z))
                        ranking = {"per": per, "candidates": [p.to_dict() for p in priced]}
                else:
                    rbar, scores = {}, {}
                    decision = random_split(student.structure, random.Random(_derive(seed, "random", z)),
                                            b_op=cfg.b_op, deepen_step=cfg.deepen_step, c=cfg.c)
                rec: dict[str, Any] = {
                    "phase": "grow", "iteration": z + 1, "stage_loss": losses[-1] if losses else None,
                    "val_acc": val_acc, "rbar": {str(k): v for k, v in rbar.items()},
                    "scores": {str(k): v for k, v in scores.items()},
                }
                if ranking is not None:
                    rec["ranking"] = ranking
                if decision is None:
                    stop_reason, phase = "no_candidate", "grown"
                    rec.update(op="stop", reason=stop_reason)
                else:
                    cand = copy.deepcopy(student)
                    new_node = apply_decision(cand, decision, partition, cfg, seed=_derive(seed, "units", z))
                    cand.eval()
                    cost, check, lat = ctx.check(cand)
                    rec.update(**decision.to_dict(), new_node=new_node, params=cost.params, macs=cost.macs,
                               latency_ms=lat, accepted=bool(check.ok))
                    if check.ok:
                        student = cand
                        attn.sync(student.structure, partition)
                        rec.update(nodes=len(student.structure.nodes), edges=len(student.structure.edges),
                                   ops_per_edge=student.structure.summary()["ops_per_edge"],
                                   dot=student.structure.to_dot(f"iteration {z + 1}"))
                    else:
                        stop_reason, phase = "budget", "grown"
                        rec.update(violations=[str(v) for v in check.violations], reverted=True)
                records.append(rec)
                ctx.log(**rec)
                z += 1
                ckpt.save({"iteration": z, "phase": phase, "stop_reason": stop_reason, "records": records,
                           "structure": student.structure.to_dict(), "history": ctx.history}, tensors_of())
                ctx.progress("grow", z, cfg.max_iterations, {
                    "op": rec.get("op"), "node": rec.get("node"), "params": rec.get("params"), "val_acc": val_acc})
            iterations = z

        final_hist: list[dict] = []
        with ctx.phase("final_retrain"):
            if phase == "grown":
                final_hist = self._final_retrain(ctx, cfg, student, attn, extractor, partition, seed,
                                                 EpochCheckpoint(ckpt.store, "final", ckpt.key))
                phase = "done"
                ckpt.save({"iteration": iterations, "phase": phase, "stop_reason": stop_reason, "records": records,
                           "structure": student.structure.to_dict(), "final": final_hist, "history": ctx.history},
                          tensors_of())
            elif restored is not None:
                final_hist = restored.state.get("final", [])
        student.eval()
        s = student.structure
        return StrategyOutput(student=student, arch={"structure": s.to_dict()},
                              report_sections=_report_sections(records, s, stop_reason), info={
            "iterations": iterations,
            "accepted_splits": sum(1 for r in records if r.get("accepted")),
            "stop_reason": stop_reason,
            "structure": s.to_dict(),
            "dot": s.to_dot("final student"),
            "nodes": len(s.nodes),
            "edges": len(s.edges),
            "ops": sum(e.n_ops for e in s.edges),
            "teacher_partition": partition.to_dict(),
            "split_sizes": {"train": len(d_train.dataset), "score": len(d_score.dataset)},
            "final_retrain": {"loss": cfg.final_loss, "reinit": cfg.final_reinit, "epochs": cfg.final_epochs,
                              "history": final_hist},
            "resumed": resumed,
            "ranking": {"per": _ranking(cfg, ctx), "objective": cfg.objective,
                        "candidates_priced": cfg.rank_candidates},
        })

    # ---------------------------------------------------------------- parts
    @staticmethod
    def _split_loaders(ctx: StrategyContext, cfg: GrowConfig, seed: int) -> tuple[DataLoader, DataLoader]:
        ds = getattr(ctx.data.train, "dataset", None)
        try:
            n = len(ds)  # type: ignore[arg-type]
            ds[0]  # type: ignore[index]
        except Exception as exc:  # noqa: BLE001
            raise DataError(
                "grow splits the training set into a training and a scoring part (SEArch §3.1) and needs a "
                "map-style dataset (len() and indexing) behind data.train; wrap your data in a Dataset."
            ) from exc
        tr, sc = split_indices(n, cfg.score_fraction, seed)
        bs = getattr(ctx.data.train, "batch_size", None) or 64
        gen = torch.Generator().manual_seed(_derive(seed, "loader"))
        d_train = DataLoader(Subset(ds, tr), batch_size=bs, shuffle=True, generator=gen, num_workers=0)
        d_score = DataLoader(Subset(ds, sc), batch_size=bs, shuffle=False, num_workers=0)
        return d_train, d_score

    @staticmethod
    def _full_train_loader(ctx: StrategyContext, seed: int) -> DataLoader:
        """The whole train split with a seeded order (a resumed run sees the same batches)."""
        ds = ctx.data.train.dataset
        bs = getattr(ctx.data.train, "batch_size", None) or 64
        gen = torch.Generator().manual_seed(_derive(seed, "final-loader"))
        return DataLoader(ds, batch_size=bs, shuffle=True, generator=gen, num_workers=0)

    @staticmethod
    def _final_retrain(ctx: StrategyContext, cfg: GrowConfig, student: GrowStudent, attn: AttentionBank,
                       extractor: nn.Module, partition: TeacherPartition, seed: int,
                       checkpoint: EpochCheckpoint | None = None) -> list[dict]:
        """Final retrain on the whole train split (``cfg.final_loss``) on ``ctx.runtime``, best
        epoch on the validation split, one ``checkpoint`` per epoch (a killed run resumes after
        the last committed epoch, bit-identically, ``"kd+inner"`` included). Returns the per-epoch
        history (restored epochs included)."""
        if cfg.final_reinit:
            student.reset_parameters(seed=_derive(seed, "final-init"))
            attn = AttentionBank(cfg.attention)
            attn.sync(student.structure, partition)
        if cfg.final_epochs == 0:
            return []
        hist: list[dict] = []

        def on_epoch(epoch: int, rec: dict) -> None:
            rec = {"phase": "final_retrain", **rec}
            hist.append(rec)
            ctx.log(**rec)
            ctx.progress("final retrain", epoch, cfg.final_epochs, {"val_acc": rec.get("val_acc")})

        runtime = ctx.runtime
        if cfg.final_loss in ("kd", "ce"):
            settings = FinetuneSettings(
                epochs=cfg.final_epochs, lr=cfg.final_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                kd_alpha=cfg.kd_alpha if cfg.final_loss == "kd" else 0.0, kd_temperature=cfg.kd_temperature,
                max_steps_per_epoch=cfg.final_max_steps_per_epoch, augment=cfg.augment,
                seed=_derive(seed, "final"), grad_clip=cfg.grad_clip,
            )
            finetune(student, Grow._full_train_loader(ctx, seed), ctx.data.val, settings,
                     teacher=ctx.teacher if cfg.final_loss == "kd" else None, on_epoch=on_epoch,
                     checkpoint=checkpoint, runtime=runtime)
            return hist
        # "kd+inner": keep Eq. 4 (with the logit KD term) for the retrain, cosine LR, best epoch on val,
        # a checkpoint per epoch (the validation loader's generator, if any, is part of it)
        val = ctx.data.val
        if checkpoint is not None and val is not None:
            checkpoint = dataclasses.replace(checkpoint, generators={**loader_generators(val=val),
                                                                     **checkpoint.generators})
        _fit_grow(student, attn, extractor, Grow._full_train_loader(ctx, seed), cfg, epochs=cfg.final_epochs,
                  lr=cfg.final_lr, seed=_derive(seed, "final"), max_steps=cfg.final_max_steps_per_epoch, cosine=True,
                  use_kd=True, runtime=runtime, phase="grow final retrain (kd+inner)",
                  validate=(lambda: evaluate(student, val, runtime=runtime)) if val is not None else None,
                  keep_best=True, checkpoint=checkpoint, checkpoint_key={"final_loss": "kd+inner", "format": "fit/1"},
                  on_epoch=on_epoch)
        return hist


def _report_sections(records: list[dict[str, Any]], s: Any, stop_reason: str) -> list[tuple[str, str]]:
    """report.md sections: every growth decision (Eq. 5 bottleneck node, deepen or widen with the
    Eq. 6 q_k, the candidate's params/MACs, accepted or reverted at the budget) and the final DAG
    (nodes with their teacher node q and feature-map shape, edges with their sep-conv unit count)."""
    def num(v: Any) -> str:
        return "-" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.3f}")

    rows = ["| iteration | op | edge | q_k | params | MACs | val acc before | accepted |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        if r.get("phase") != "grow" or r.get("op") in (None, "init"):
            continue
        edge = "->".join(f"v{i}" for i in r["edge"]) if r.get("edge") else "-"
        acc = {True: "yes", False: "reverted (over budget)"}.get(r.get("accepted"), "-")
        rows.append(f"| {r.get('iteration')} | {r.get('op')} | {edge} | {num(r.get('q_k'))} | {num(r.get('params'))} | "
                    f"{num(r.get('macs'))} | {num(r.get('val_acc'))} | {acc} |")
    rows += ["", f"Stopped: {stop_reason}."]
    nodes = ["| node | teacher node q | channels x H x W | in-degree | out-degree |", "| --- | --- | --- | --- | --- |"]
    for n in s.nodes:
        nodes.append(f"| v{n.id} | {n.q} | {n.channels}x{n.hw[0]}x{n.hw[1]} | {s.deg_in(n.id)} | "
                     f"{len(s.out_edges(n.id))} |")
    edges = ", ".join(f"v{e.src}->v{e.dst} ({e.n_ops} sep_conv_3x3)" for e in s.edges)
    final = "\n".join(nodes) + f"\n\nEdges: {edges}.\n\nGraphviz:\n\n```dot\n{s.to_dot('final student')}\n```"
    return [("Growth decisions (SEArch Eq. 5 bottleneck, deepen 1->4->7 then widen with Eq. 6)", "\n".join(rows)),
            ("Final student structure", final)]
