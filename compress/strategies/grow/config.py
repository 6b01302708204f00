"""grow's settings: :class:`GrowConfig`, its presets and its checks. The class says what each
field chooses; :mod:`.strategy` describes the method, docs/algorithms/grow.md the paper's defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from compress.errors import ConfigError
from compress.strategies._parts.config_fields import check_fields
from compress.strategies.grow.attention import ATTENTIONS, R_NORMS
from compress.strategies.grow.partition import GRANULARITIES
from compress.strategies.grow.selection import ADJACENT_POLICIES
from compress.strategies.grow.student import STRIDE_RULES, WIDEN_INITS
from compress.training import AUGMENTATIONS

__all__ = ["GrowConfig", "FINAL_LOSSES", "OBJECTIVES", "SPLIT_POLICIES"]

FINAL_LOSSES = ("kd", "kd+inner", "ce")
OBJECTIVES = ("auto", "latency", "macs", "score")
SPLIT_POLICIES = ("score", "random")

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
