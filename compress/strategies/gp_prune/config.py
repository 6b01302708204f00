"""gp-prune's settings: :class:`GPPruneConfig` (see :mod:`.strategy` for the method and the
choices each field makes; docs/algorithms/gp-prune.md for the paper's defaults)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from compress.errors import ConfigError
from compress.strategies._parts.config_fields import check_fields
from compress.strategies._parts.training import AUGMENTATIONS, FinetuneSettings
from compress.strategies.base import config_to_dict
from compress.strategies.gp_prune.allocation import ALLOCATIONS, resolve_allocation

@dataclass(frozen=True)
class GPPruneConfig:
    """Settings of ``gp-prune``; every field lands in ``report.json`` under ``config``.

    Attributes:
        metric: a registered metric name (``xi_star``, the SOAP names ``l1``, ``fpgm`` ...),
            a tree string such as ``"sum_g(abs(WI))"``, the path of an evolved metric's JSON
            (``slimforge evolve-metric`` writes ``best_metric.json``), or ``"tp-l1"`` for
            Torch-Pruning's own L1 magnitude importance (a baseline, not a tree).
        class_reduction: "sum" (reference code) or "mean" of per-class uni-tree scores.
        calib_samples: labelled calibration images used for feature maps.
        max_map_hw: feature maps are average-pooled to at most this side (None: full size).
        max_ratio: largest uniform channel ratio tried (0 < max_ratio < 1).
        bisection_steps: the most probes of the ratio search after its two ends (each probe prunes a
            copy and measures it against the budget).
        budget_tolerance: the search stops at the first candidate that meets the budget using at
            least ``1 - budget_tolerance`` of its tightest limit (0.01: within 1% of the limit), or
            once the bracket is so narrow that the usage, at its mean slope over the range, changes
            by under half the tolerance across it (channel rounding makes the cost jump between
            snapped widths: no probe inside such a bracket gets closer), and it picks its probes
            by safeguarded interpolation (Illinois regula falsi on the tightest limit's usage)
            instead of halving; 0 gives the plain bisection of all ``bisection_steps`` (issue 17:
            12 probes of about 30 s each for a resnet50 at 224x224).
        channel_rounding: "measured" (default): each group's kept width is snapped to the most
            efficient nearby width measured on the target (``_parts/channel_rounding.py``);
            "fixed": kept widths rounded up to a multiple of ``round_to``; "off": exact
            ``floor(C * (1 - ratio))`` as Torch-Pruning computes it.
        rounding_window: relative window around the nominal width searched by "measured".
        round_to: the multiple for ``channel_rounding="fixed"``.
        epochs, lr, momentum, weight_decay, optimizer: fine-tune schedule.
        augment: train-time augmentation, "none" or "flip-crop" (CIFAR recipe).
        kd_alpha, kd_temperature: KD weight and temperature (alpha=0: plain CE).
        max_steps_per_epoch: cap on fine-tune steps per epoch (None: whole train split).
        allocation: how many channels each group keeps (``allocation.py``): "uniform" (the
            paper: one ratio for every group), "global" (one importance ranking across groups,
            DepGraph's global pruning), "latency" (HALP: the widths of all groups chosen together
            by a knapsack on a per-layer latency table measured on the target, to keep the most
            importance per millisecond), or "auto" (default): "latency" when the budget limits
            latency, else "uniform".
        latency_guard: with ``allocation="latency"`` and a budget that does not limit latency
            (``macs=0.5x``): also prune uniformly to the same budget and time both students side by
            side on the target; keep the uniform one when it is faster by more than its measurement's
            margin (max(2%, 2 standard errors)). The knapsack minimises *predicted* latency, a sum of
            per-layer timings that misses fusion and per-op overhead; measured (issue 19 benchmark,
            64x64): it gave a smaller latency cut than uniform pruning on 4 of 9 models. The choice is
            in ``report.json`` ``info.allocation.guard``. Costs one uniform ratio search and one
            side-by-side timing. False: the knapsack's answer, unchecked.
        max_group_ratio: with "global" and "latency", the largest share of a group's channels that
            may be removed (0 < max_group_ratio < 1), so that no layer collapses.
        schedule: "one-shot" (the paper) or "iterative": ``iterative_steps`` pruning steps toward
            budgets interpolated geometrically from the teacher to the budget, each but the last
            followed by ``recovery_epochs`` of KD (``schedule.py``); the final fine-tune follows both.
        sparse_epochs: epochs of sparse learning before pruning (0: off): the teacher copy trains
            with Torch-Pruning's ``GroupNormPruner`` regularisation of strength ``sparse_reg``
            (DepGraph, CVPR 2023, §3.3), so that the channels cut later carry little.
        label_smoothing, warmup_epochs: the fine-tune's label smoothing on the CE term and linear
            learning-rate warm-up epochs before the cosine.
        finetune_time_s: a wall-time budget for the final fine-tune in seconds (None: ``epochs``
            decides): the epoch count becomes what fits at the first epoch's speed, at most
            ``epochs``; the report's history gives the count, and ``epochs`` set to it reproduces the run.
        grad_clip: max global gradient norm of every training step (None: off).
        ignored_layers: qualified module names (``"layer2.0.conv1"``, as in ``model.named_modules()``)
            whose output channels are never pruned, for layers with channel-dependent state that
            the dependency graph cannot see. The classifier is always kept whole. An unknown name is
            a ``ConfigError`` listing close matches.
    """

    metric: str = "xi_star"
    class_reduction: str = "sum"
    calib_samples: int = 512
    max_map_hw: int | None = 8
    max_ratio: float = 0.95
    bisection_steps: int = 12
    budget_tolerance: float = 0.01
    channel_rounding: str = "measured"
    rounding_window: float = 0.2
    round_to: int | None = None
    epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    max_steps_per_epoch: int | None = None
    augment: str = "none"
    ignored_layers: tuple[str, ...] = ()
    allocation: str = "auto"
    max_group_ratio: float = 0.8
    latency_guard: bool = True
    schedule: str = "one-shot"
    iterative_steps: int = 4
    recovery_epochs: int = 1
    sparse_epochs: int = 0
    sparse_reg: float = 5e-4
    label_smoothing: float = 0.0
    warmup_epochs: int = 0
    finetune_time_s: float | None = None
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and, by its name, its range
        if self.class_reduction not in ("sum", "mean"):
            raise ConfigError(f"class_reduction must be 'sum' or 'mean', got {self.class_reduction!r}.")
        if not 0.0 < self.max_ratio < 1.0:
            raise ConfigError(f"max_ratio must be in (0, 1), got {self.max_ratio}.")
        if self.bisection_steps < 1 or self.calib_samples < 2 or self.epochs < 0:
            raise ConfigError("bisection_steps >= 1, calib_samples >= 2 and epochs >= 0 are required.")
        if not 0.0 <= self.budget_tolerance < 0.5:
            raise ConfigError(f"budget_tolerance must be in [0, 0.5), got {self.budget_tolerance} (0.01: stop within 1% "
                              "of the budget's limit; 0: plain bisection of all bisection_steps).")
        if self.max_map_hw is not None and self.max_map_hw < 1:
            raise ConfigError("max_map_hw must be >= 1 or None.")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError("round_to must be >= 1 or None.")
        if self.channel_rounding not in ("measured", "fixed", "off"):
            raise ConfigError(f"channel_rounding must be 'measured', 'fixed' or 'off', got {self.channel_rounding!r}.")
        if self.channel_rounding == "fixed" and self.round_to is None:
            raise ConfigError("channel_rounding='fixed' needs round_to (e.g. 8).")
        if not 0.0 <= self.rounding_window < 1.0:
            raise ConfigError("rounding_window must be in [0, 1).")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}.")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}.")
        if not 0.0 <= self.kd_alpha <= 1.0 or self.kd_temperature <= 0:
            raise ConfigError("kd_alpha must be in [0, 1] and kd_temperature > 0.")
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"allocation must be one of {', '.join(map(repr, ALLOCATIONS))}, got {self.allocation!r}.")
        if not 0.0 < self.max_group_ratio < 1.0:
            raise ConfigError(f"max_group_ratio must be in (0, 1), got {self.max_group_ratio}.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {self.schedule!r}.")
        if not 1 <= self.iterative_steps <= 64:
            raise ConfigError(f"iterative_steps must be in [1, 64], got {self.iterative_steps}.")
        if not 0.0 < self.sparse_reg <= 1.0:
            raise ConfigError(f"sparse_reg must be in (0, 1], got {self.sparse_reg} (DepGraph's CIFAR runs use 5e-4).")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs}).")
        if self.finetune_time_s is not None and not self.finetune_time_s > 0:
            raise ConfigError(f"finetune_time_s must be > 0 seconds or null, got {self.finetune_time_s}.")

    @property
    def finetune_settings(self) -> FinetuneSettings:
        return FinetuneSettings(
            epochs=self.epochs,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            kd_alpha=self.kd_alpha,
            kd_temperature=self.kd_temperature,
            optimizer=self.optimizer,
            max_steps_per_epoch=self.max_steps_per_epoch,
            augment=self.augment,
            grad_clip=self.grad_clip,
            label_smoothing=self.label_smoothing,
            warmup_epochs=self.warmup_epochs,
            time_budget_s=self.finetune_time_s,
        )

    def phase_settings(self, epochs: int) -> FinetuneSettings:
        """The fine-tune settings of a sparse-learning or recovery phase of ``epochs`` epochs: the
        final fine-tune's optimiser and KD, no warm-up, no time budget, and the last epoch's weights
        (keep-best would undo the regularisation; a recovery feeds the next pruning step)."""
        return dataclasses.replace(self.finetune_settings, epochs=epochs, warmup_epochs=0, time_budget_s=None,
                                   keep_best=False)


TP_L1 = "tp-l1"


_FINETUNE_FIELDS = frozenset({"epochs", "lr", "momentum", "weight_decay", "optimizer", "kd_alpha", "kd_temperature",
                              "max_steps_per_epoch", "augment", "label_smoothing", "warmup_epochs", "finetune_time_s"})
"""Fields of the final fine-tune only: left out of the pruning checkpoint's key (a new fine-tune
resumes from the same pruned network). ``grad_clip`` is not among them: the recovery and sparse
phases before the pruned checkpoint use it too."""

_RECIPE_DEFAULTS = {"schedule": "one-shot", "iterative_steps": 4, "recovery_epochs": 1, "sparse_epochs": 0,
                    "sparse_reg": 5e-4, "grad_clip": None}
"""Recipe fields added after pruning checkpoints existed: at these values they are left out of the
key, so a run started before them still resumes."""


def key_config(cfg: "GPPruneConfig", budget) -> dict:
    """The config entries that key gp-prune's pruning checkpoint: every field but the final
    fine-tune's (:data:`_FINETUNE_FIELDS`) and the recipe fields at their old-behaviour values
    (:data:`_RECIPE_DEFAULTS`); ``latency_guard`` only where it acts (``allocation`` resolves to
    ``"latency"`` and ``budget`` does not limit latency), so that every other run keeps its key."""
    guarded = resolve_allocation(cfg.allocation, budget) == "latency" and not budget.needs_latency
    return {k: v for k, v in config_to_dict(cfg).items()
            if k not in _FINETUNE_FIELDS and not (k in _RECIPE_DEFAULTS and v == _RECIPE_DEFAULTS[k])
            and (k != "latency_guard" or guarded)}

SCHEDULES = ("one-shot", "iterative")
_LIMITS = ("max_macs", "max_params", "max_latency_ms", "max_memory_bytes")
