"""grow's settings: :class:`GrowConfig` (one sub-config per phase), its presets and its checks.
Each class says what its fields choose; :mod:`.strategy` describes the method,
docs/algorithms/grow.md the paper's defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from compress.errors import ConfigError
from compress.strategies._parts.config_fields import check_fields, raise_problems
from compress.strategies.config_tree import (FinetuneConfig, coerce_subconfigs, config_from_dict, replace_config,
                                             subconfig)
from compress.strategies.grow.attention import ATTENTIONS, R_NORMS
from compress.strategies.grow.partition import GRANULARITIES
from compress.strategies.grow.selection import ADJACENT_POLICIES
from compress.strategies.grow.student import STRIDE_RULES, WIDEN_INITS
from compress.training import AUGMENTATIONS, FinetuneSettings

__all__ = ["GrowConfig", "PartitionConfig", "GrowthConfig", "StageConfig", "GrowFinalConfig", "FINAL_LOSSES",
           "OBJECTIVES", "SPLIT_POLICIES"]

FINAL_LOSSES = ("kd", "kd+inner", "ce")
OBJECTIVES = ("auto", "latency", "macs", "score")
SPLIT_POLICIES = ("score", "random")

_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # docs/algorithms/grow.md, CPU profile: every mechanism kept, sizes shrunk (minutes on 2 CPU cores)
    "cpu-small": {"growth": {"max_iterations": 8}, "stage": {"epochs": 1}, "final": {"epochs": 15}},
    # invariants only (CI smoke)
    "smoke": {"growth": {"max_iterations": 2, "score_max_batches": 1}, "stage": {"epochs": 1, "max_steps_per_epoch": 2},
              "final": {"epochs": 1, "max_steps_per_epoch": 2}},
}


def _choice(problems: list[str], name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"{name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class PartitionConfig:
    """The teacher partition (§3.1; docs/algorithms/grow.md, choice 12; ``GrowConfig.partition``,
    read by the partition phase).

    Attributes:
        teacher_granularity: ``"blocks"`` (image, stem, each block output; m = 29 for ResNet-56)
            or ``"path"`` (every node of the longest path).
        teacher_nodes: explicit graph node names to supervise with (overrides the granularity).

    Raises:
        ConfigError: a value out of range (the message names the field).
    """

    teacher_granularity: str = "blocks"
    teacher_nodes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        problems: list[str] = []
        _choice(problems, "teacher_granularity", self.teacher_granularity, GRANULARITIES)  # teacher_nodes: by type
        raise_problems("GrowConfig.partition", problems)


@dataclass(frozen=True)
class GrowthConfig:
    """The growth loop (§3.2-3.4): the student's parts, the teacher-guided loss of Eq. 1-4 that
    the stages train and the scoring measures, Eq. 5 scoring and the split, and the hardware-aware
    ranking of candidate splits (``GrowConfig.growth``, read by every growth iteration; the
    ``"kd+inner"`` final retrain reads the loss fields). Paper defaults (App. B) unless noted.

    Attributes:
        width_mult: student node width = round(width_mult * teacher node width) (paper: unstated;
            docs/algorithms/grow.md, choice 2).
        b_op: max units per edge before widening (7). initial_ops: units of a new edge (1).
        deepen_step: units appended per deepen (3, so 1 -> 4 -> 7; choice 8).
        stride_rule: ``"per_halving"`` (k stride-2 units for a 2^k resolution ratio, counted in
            B_op) or ``"single"`` (one unit of stride 2^k).
        c: Eq. 6 interpolation (0.5; ablation 0.25 / 0.75; Eq. 6 implemented literally,
            docs/algorithms/grow.md, choice 7).
        adjacent_widen: ``"next_node"`` (default: skip a widen whose Eq. 6 gives q_k = q_i, i.e.
            q_j - q_i <= 1, and split the next-best node) or ``"allow"`` (the algorithm notes'
            recommendation, docs/algorithms/grow.md, choice 6; it degenerates into image-supervised
            nodes, see :mod:`.selection`).
        widen_init: ``"gate"`` (zero-initialised per-channel gate on the new summand) or
            ``"zero_bn"`` (literal docs/algorithms/grow.md, choice 9; exact but the branch gets no gradient).
        attention: ``f_a`` of Eq. 1: ``"dot"`` (parameter-free channel attention) or ``"proj"``
            (learnable 1x1 Q/K) (choice 1).
        r_norm: ``R_inner`` of Eq. 2: ``"mean"`` (per-element MSE) or ``"sum"`` (literal squared
            L2) (choice 3).
        inner_weight: weight of L_inner in Eq. 4 (1), in the stages and the ``"kd+inner"`` retrain.
        split_policy: ``"score"`` (Eq. 5) or ``"random"`` (ablation C; choice 4, 5).
        deg_factor: multiply Rbar by deg+/deg- (False = ablation A).
        sink_head_counts: the classifier head counts as a successor of the sink (choice 4).
        score_fraction: share of the train set held out as D_val for scoring (0.5).
        score_max_batches: cap on scoring batches (None: all of D_val).
        max_iterations: safety cap on the growth iterations (100; None = until the budget; the
            paper has none and saw 24-47 iterations).
        objective: hardware-aware ranking (issue 18, part 4; not in the paper): ``"auto"``
            (default: rank by ``S`` per predicted ms when the budget names latency, Eq. 5 alone
            otherwise), ``"latency"`` (always per predicted ms), ``"macs"`` (always ``S`` per
            MAC), ``"score"`` (Eq. 5 alone, the paper).
        rank_candidates: how many of the highest-``S`` splits are priced and ranked (3, >= 1).

    Raises:
        ConfigError: a value out of range (the message names the field).
    """

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
    split_policy: str = "score"
    deg_factor: bool = True
    sink_head_counts: bool = True
    score_fraction: float = 0.5
    score_max_batches: int | None = None
    max_iterations: int | None = 100
    objective: str = "auto"
    rank_candidates: int = 3

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and, by its name, its range
        problems: list[str] = []
        for name, allowed in {"stride_rule": STRIDE_RULES, "adjacent_widen": ADJACENT_POLICIES,
                              "widen_init": WIDEN_INITS, "attention": ATTENTIONS, "r_norm": R_NORMS,
                              "split_policy": SPLIT_POLICIES, "objective": OBJECTIVES}.items():
            _choice(problems, name, getattr(self, name), allowed)
        for name in ("b_op", "initial_ops", "deepen_step", "rank_candidates"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.initial_ops > self.b_op:
            problems.append(f"initial_ops ({self.initial_ops}) must be <= b_op ({self.b_op})")
        if self.max_iterations is not None and self.max_iterations < 0:
            problems.append(f"max_iterations must be None or an int >= 0, got {self.max_iterations!r}")
        if not 0.0 <= self.c <= 1.0:
            problems.append(f"c must be in [0, 1] (Eq. 6), got {self.c}")
        if not 0.0 < self.score_fraction < 1.0:
            problems.append(f"score_fraction must be in (0, 1), got {self.score_fraction}")
        if not self.width_mult > 0:
            problems.append(f"width_mult must be > 0, got {self.width_mult}")
        if self.inner_weight < 0:
            problems.append(f"inner_weight must be >= 0, got {self.inner_weight}")
        raise_problems("GrowConfig.growth", problems)


@dataclass(frozen=True)
class StageConfig:
    """The training stage of every growth iteration (App. B): SGD with momentum and weight decay
    on Eq. 4 (``L = L_cls + inner_weight * L_inner``, the loss of :class:`GrowthConfig`) at a
    constant learning rate through :func:`compress.training.fit` (``GrowConfig.stage``, read by
    the growth loop).

    Attributes:
        epochs: epochs per stage (10).
        lr, momentum, weight_decay: SGD (0.025, 0.9, 3e-4).
        max_steps_per_epoch: cap on the optimiser steps of one epoch (None: all of D_train).
        augment: ``"none"`` or ``"flip-crop"``.
        grad_clip: global gradient-norm clip per step (5; None = off). Not in the paper; App. B's
            recipe (SGD lr 0.025, sep-conv units, cosine) is DARTS' evaluation training, whose
            reference code clips at 5. Without it, a re-initialised deep DAG can blow up in its
            first retrain epoch and never recover (seen on CIFAR: a random-split student, epoch-1
            loss 48.7, then stuck at 15% val).
        kd_alpha, kd_temperature: logit distillation inside L_cls (Eq. 4; Hinton KD, ours: 0.5,
            4; 0 = the paper's plain CE).

    Raises:
        ConfigError: a value out of range (the message names the field).
    """

    epochs: int = 10
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    max_steps_per_epoch: int | None = None
    augment: str = "none"
    grad_clip: float | None = 5.0
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0

    def __post_init__(self) -> None:
        check_fields(self)  # types; epochs >= 0, lr > 0, 0 <= momentum < 1, kd_alpha in [0, 1] ... by name
        problems: list[str] = []
        _choice(problems, "augment", self.augment, AUGMENTATIONS)
        raise_problems("GrowConfig.stage", problems)

    def settings(self, *, seed: int = 0, **overrides: Any) -> FinetuneSettings:
        """This stage as :class:`compress.training.FinetuneSettings` (what the Eq. 4 training reads;
        ``overrides`` replace fields, e.g. ``epochs``)."""
        s = FinetuneSettings(epochs=self.epochs, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                             kd_alpha=self.kd_alpha, kd_temperature=self.kd_temperature, keep_best=False,
                             max_steps_per_epoch=self.max_steps_per_epoch, augment=self.augment, seed=seed,
                             grad_clip=self.grad_clip)
        return dataclasses.replace(s, **overrides) if overrides else s


@dataclass(frozen=True)
class GrowFinalConfig(FinetuneConfig):
    """The final retrain of the grown student on the whole train split (App. B: 400 epochs on
    CIFAR, lr 0.025, the stage's SGD and gradient clip), cosine learning rate, best epoch on the
    validation split: the shared fine-tune block (:class:`~compress.strategies.config_tree.FinetuneConfig`,
    every field of which acts with every ``loss``) plus

    Attributes:
        reinit: re-initialise the weights first (NAS convention; docs/algorithms/grow.md, choice 9).
        loss: ``"kd"`` (Hinton KD from the teacher through the shared ``finetune`` loop), ``"kd+inner"``
            (keep the teacher-guided Eq. 4 loss, with :class:`GrowthConfig`'s ``attention``,
            ``r_norm`` and ``inner_weight``, through ``fit``; the algorithm notes' recommendation)
            or ``"ce"`` (plain cross-entropy; ``kd_alpha`` is then 0).

    Raises:
        ConfigError: a value out of range (the message names the field).
    """

    #: ``grad_clip`` was a grow setting before checkpoints existed (it always entered the key)
    KEY_OMIT: ClassVar[dict[str, Any]] = {k: v for k, v in FinetuneConfig.KEY_OMIT.items() if k != "grad_clip"}

    # grow's defaults (App. B), in the class so that a dict given for ``final`` starts from them
    epochs: int = 400
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float | None = 5.0
    reinit: bool = True
    loss: str = "kd"

    def __post_init__(self) -> None:
        super().__post_init__()
        problems: list[str] = []
        _choice(problems, "loss", self.loss, FINAL_LOSSES)
        raise_problems("GrowConfig.final", problems)


#: the flat names the final retrain shared with the stages (one flat key set both)
_SHARED = ("momentum", "weight_decay", "kd_alpha", "kd_temperature", "augment", "grad_clip")


@dataclass(frozen=True)
class GrowConfig:
    """Settings of ``grow``; paper defaults (App. B, docs/algorithms/grow.md, defaults) unless noted.

    The partition phase reads ``partition`` (:class:`PartitionConfig`), every growth iteration
    ``growth`` (:class:`GrowthConfig`) and ``stage`` (:class:`StageConfig`), the final retrain
    ``final`` (:class:`GrowFinalConfig`, and ``growth``'s loss fields for ``"kd+inner"``); the run's
    checkpoint key hashes all of them (:func:`.checkpoints.run_key`). Flat keys (the layout before the nested configs)
    still load: ``stage_epochs`` -> ``stage.epochs``, ``final_<x>`` -> ``final.<x>``,
    ``momentum``/``weight_decay``/``kd_alpha``/``kd_temperature``/``augment``/``grad_clip`` -> both
    ``stage`` and ``final``, every other name -> the sub-config holding it.

    Attributes:
        partition, growth, stage, final: the sub-configs above.
        checkpoint: write/resume per-iteration checkpoints when ``ctx.out_dir`` is set.

    Raises:
        ConfigError: a wrong type or a value out of range (the message names the field).
    """

    partition: PartitionConfig = subconfig(PartitionConfig)
    growth: GrowthConfig = subconfig(GrowthConfig)
    stage: StageConfig = subconfig(StageConfig, legacy={"epochs": "stage_epochs"})
    final: GrowFinalConfig = subconfig(GrowFinalConfig, legacy_prefix="final_", legacy={name: name for name in _SHARED})
    checkpoint: bool = True

    def __post_init__(self) -> None:
        check_fields(self)  # every leaf's type
        coerce_subconfigs(self)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GrowConfig":
        """``"paper"`` (defaults), ``"cpu-small"`` (docs/algorithms/grow.md, CPU profile: 1 epoch per stage,
        <= 8 iterations, 15 final epochs) or ``"smoke"``; ``overrides`` replace fields, nested
        (``final={"epochs": 3}``) or flat (``final_epochs=3``, deprecated).

        Raises:
            ConfigError: unknown preset name.
        """
        if name not in _PRESETS:
            raise ConfigError(f"unknown GrowConfig preset {name!r}; use one of {sorted(_PRESETS)}.")
        return replace_config(config_from_dict(cls, _PRESETS[name]), **overrides)
