"""gp-prune's settings: :class:`GPPruneConfig` and its sub-configs :class:`ImportanceConfig`,
:class:`PruneConfig` and the shared :class:`~compress.strategies.config_tree.FinetuneConfig` (see
:mod:`.strategy` for the method and the choices each field makes; docs/algorithms/gp-prune.md for
the paper's defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from compress.errors import ConfigError
from compress.strategies import config_tree
from compress.strategies._parts.config_fields import check_fields
from compress.strategies._parts.training import FinetuneSettings
from compress.strategies.config_tree import FinetuneConfig, coerce_subconfigs, subconfig
from compress.strategies.gp_prune.allocation import ALLOCATIONS, resolve_allocation

SCHEDULES = ("one-shot", "iterative")


@dataclass(frozen=True)
class ImportanceConfig:
    """The channel importance: the metric (GECCO'22 §5, Eq. 3) and the calibration data it sees.

    Attributes:
        metric: a registered metric name (``xi_star``, the SOAP names ``l1``, ``fpgm`` ...),
            a tree string such as ``"sum_g(abs(WI))"``, the path of an evolved metric's JSON
            (``slimforge evolve-metric`` writes ``best_metric.json``), or ``"tp-l1"`` for
            Torch-Pruning's own L1 magnitude importance (a baseline, not a tree).
        class_reduction: "sum" (reference code) or "mean" of per-class uni-tree scores.
        calib_samples: labelled calibration images used for feature maps (paper: all training
            images).
        max_map_hw: feature maps are average-pooled to at most this side (None: full size).
    """

    metric: str = "xi_star"
    class_reduction: str = "sum"
    calib_samples: int = 512
    max_map_hw: int | None = 8

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and, by its name, its range
        if self.class_reduction not in ("sum", "mean"):
            raise ConfigError(f"importance.class_reduction must be 'sum' or 'mean', got {self.class_reduction!r}.")
        if self.calib_samples < 2:
            raise ConfigError(f"importance.calib_samples must be >= 2, got {self.calib_samples}.")
        if self.max_map_hw is not None and self.max_map_hw < 1:
            raise ConfigError("importance.max_map_hw must be >= 1 or None.")


@dataclass(frozen=True)
class PruneConfig:
    """The pruning phase: the ratio search toward the budget, the channel rounding, the allocation
    across groups and the recipe (sparse learning, iterative schedule) before the final fine-tune.

    Attributes:
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
        ignored_layers: qualified module names (``"layer2.0.conv1"``, as in ``model.named_modules()``)
            whose output channels are never pruned, for layers with channel-dependent state that
            the dependency graph cannot see. The classifier is always kept whole. An unknown name is
            a ``ConfigError`` listing close matches.
        allocation: how many channels each group keeps (``allocation.py``): "uniform" (the
            paper: one ratio for every group), "global" (one importance ranking across groups,
            DepGraph's global pruning), "latency" (HALP: the widths of all groups chosen together
            by a knapsack on a per-layer latency table measured on the target, to keep the most
            importance per millisecond), or "auto" (default): "latency" when the budget limits
            latency, else "uniform".
        max_group_ratio: with "global" and "latency", the largest share of a group's channels that
            may be removed (0 < max_group_ratio < 1), so that no layer collapses.
        latency_guard: with ``allocation="latency"`` and a budget that does not limit latency
            (``macs=0.5x``): also prune uniformly to the same budget and time both students side by
            side on the target; keep the uniform one when it is faster by more than its measurement's
            margin (max(2%, 2 standard errors)). The knapsack minimises *predicted* latency, a sum of
            per-layer timings that misses fusion and per-op overhead; measured (issue 19 benchmark,
            64x64): it gave a smaller latency cut than uniform pruning on 4 of 9 models. The choice is
            in ``report.json`` ``info.allocation.guard``. Costs one uniform ratio search and one
            side-by-side timing. False: the knapsack's answer, unchecked.
        schedule: "one-shot" (the paper) or "iterative": ``iterative_steps`` pruning steps toward
            budgets interpolated geometrically from the teacher to the budget, each but the last
            followed by ``recovery_epochs`` of KD (``schedule.py``); the final fine-tune follows both.
        iterative_steps, recovery_epochs: see ``schedule``.
        sparse_epochs: epochs of sparse learning before pruning (0: off): the teacher copy trains
            with Torch-Pruning's ``GroupNormPruner`` regularisation of strength ``sparse_reg``
            (DepGraph, CVPR 2023, §3.3), so that the channels cut later carry little.
        sparse_reg: see ``sparse_epochs``.
        drop_blocks: depth pruning before the channel pruning (0: off, the paper): the share of the
            residual blocks with an identity shortcut that are removed whole, the ones that change
            their input least on the calibration images (:mod:`compress.models.blocks`; each stage
            keeps a block). Not in the paper: channel pruning keeps every layer, and each convolution
            costs a fixed time on a CPU at batch 1 (``benchmarks/results/depth_floor.md``: about
            17 us per conv on ``cpu-1t``), so a channel-pruned ResNet-56 stays slower than a stock
            ResNet-32 of the same MACs. The channel pruning then meets the rest of the budget.

    The recovery and sparse-learning fine-tunes take the ``finetune`` block's optimiser, KD,
    augmentation, label smoothing and gradient clip (:func:`phase_settings`).
    """

    #: recipe fields added after pruning checkpoints existed: left out of the key at these values,
    #: so a run started before them still resumes
    KEY_OMIT: ClassVar[dict[str, Any]] = {"schedule": "one-shot", "iterative_steps": 4, "recovery_epochs": 1,
                                          "sparse_epochs": 0, "sparse_reg": 5e-4, "drop_blocks": 0.0}

    max_ratio: float = 0.95
    bisection_steps: int = 12
    budget_tolerance: float = 0.01
    channel_rounding: str = "measured"
    rounding_window: float = 0.2
    round_to: int | None = None
    ignored_layers: tuple[str, ...] = ()
    allocation: str = "auto"
    max_group_ratio: float = 0.8
    latency_guard: bool = True
    schedule: str = "one-shot"
    iterative_steps: int = 4
    recovery_epochs: int = 1
    sparse_epochs: int = 0
    sparse_reg: float = 5e-4
    drop_blocks: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and, by its name, its range
        if not 0.0 < self.max_ratio < 1.0:
            raise ConfigError(f"prune.max_ratio must be in (0, 1), got {self.max_ratio}.")
        if self.bisection_steps < 1:
            raise ConfigError(f"prune.bisection_steps must be >= 1, got {self.bisection_steps}.")
        if not 0.0 <= self.budget_tolerance < 0.5:
            raise ConfigError(f"prune.budget_tolerance must be in [0, 0.5), got {self.budget_tolerance} (0.01: stop "
                              "within 1% of the budget's limit; 0: plain bisection of all bisection_steps).")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError("prune.round_to must be >= 1 or None.")
        if self.channel_rounding not in ("measured", "fixed", "off"):
            raise ConfigError("prune.channel_rounding must be 'measured', 'fixed' or 'off', "
                              f"got {self.channel_rounding!r}.")
        if self.channel_rounding == "fixed" and self.round_to is None:
            raise ConfigError("prune.channel_rounding='fixed' needs prune.round_to (e.g. 8).")
        if not 0.0 <= self.rounding_window < 1.0:
            raise ConfigError(f"prune.rounding_window must be in [0, 1), got {self.rounding_window}.")
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"prune.allocation must be one of {', '.join(map(repr, ALLOCATIONS))}, "
                              f"got {self.allocation!r}.")
        if not 0.0 < self.max_group_ratio < 1.0:
            raise ConfigError(f"prune.max_group_ratio must be in (0, 1), got {self.max_group_ratio}.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"prune.schedule must be one of {', '.join(map(repr, SCHEDULES))}, "
                              f"got {self.schedule!r}.")
        if not 1 <= self.iterative_steps <= 64:
            raise ConfigError(f"prune.iterative_steps must be in [1, 64], got {self.iterative_steps}.")
        if not 0.0 <= self.drop_blocks < 1.0:
            raise ConfigError(f"prune.drop_blocks must be in [0, 1), got {self.drop_blocks} (the share of the "
                              "identity-shortcut residual blocks removed before channel pruning; 0: off).")
        if not 0.0 < self.sparse_reg <= 1.0:
            raise ConfigError(f"prune.sparse_reg must be in (0, 1], got {self.sparse_reg} "
                              "(DepGraph's CIFAR runs use 5e-4).")

    @property
    def trains(self) -> bool:
        """Whether the pruning phase fine-tunes (sparse learning, or recoveries between iterative steps)."""
        return self.sparse_epochs > 0 or (self.schedule == "iterative" and self.iterative_steps > 1
                                          and self.recovery_epochs > 0)


@dataclass(frozen=True)
class GPPruneConfig:
    """Settings of ``gp-prune``; every field lands in ``report.json`` under ``config``.

    The prepare and prune phases read ``importance`` (:class:`ImportanceConfig`: the metric and its
    calibration) and ``prune`` (:class:`PruneConfig`: the ratio search, rounding, allocation, recipe);
    the final fine-tune reads ``finetune`` (:class:`~compress.strategies.config_tree.FinetuneConfig`:
    epochs 5, SGD lr 0.01, momentum 0.9, wd 1e-4, KD alpha 0.5, T 4), as do the recovery and
    sparse-learning fine-tunes of the prune phase (:func:`phase_settings`). The flat keys of
    the flat layout before the nested configs are the leaves' names (``epochs``, ``max_ratio`` ...), but ``finetune_time_s``
    for ``finetune.time_s``.
    """

    importance: ImportanceConfig = subconfig(ImportanceConfig)
    prune: PruneConfig = subconfig(PruneConfig)
    finetune: FinetuneConfig = subconfig(lambda: FinetuneConfig(epochs=5, lr=0.01, momentum=0.9, weight_decay=1e-4,
                                                                grad_clip=None),
                                         legacy={"time_s": "finetune_time_s"})

    def __post_init__(self) -> None:
        check_fields(self)
        coerce_subconfigs(self)


def phase_settings(finetune: FinetuneConfig, epochs: int) -> FinetuneSettings:
    """The fine-tune settings of a sparse-learning or recovery phase of ``epochs`` epochs: the
    final fine-tune's optimiser and KD, no warm-up, no time budget, and the last epoch's weights
    (keep-best would undo the regularisation; a recovery feeds the next pruning step)."""
    return finetune.settings(epochs=epochs, warmup_epochs=0, time_budget_s=None, keep_best=False)


_PHASE_REPLACED = frozenset({"epochs", "warmup_epochs", "finetune_time_s"})
"""The ``finetune`` leaves (flat names) that :func:`phase_settings` replaces: the recovery and
sparse phases do not read them, so they stay out of the pruning key (a new final fine-tune resumes
from the same pruned network)."""


TP_L1 = "tp-l1"


def key_config(cfg: GPPruneConfig, budget) -> dict:
    """The config entries that key gp-prune's pruning checkpoint: ``importance`` and ``prune``
    (the recipe fields at their old-behaviour values left out: ``PruneConfig.KEY_OMIT``), with
    ``latency_guard`` only where it acts (``allocation`` resolves to ``"latency"`` and ``budget``
    does not limit latency), and the ``finetune`` block (less what :func:`phase_settings` replaces)
    only where the pruning phase trains (:attr:`PruneConfig.trains`), so that every other run keeps
    its key."""
    guarded = resolve_allocation(cfg.prune.allocation, budget) == "latency" and not budget.needs_latency
    subs = ("importance", "prune", "finetune") if cfg.prune.trains else ("importance", "prune")
    skip = (_PHASE_REPLACED if cfg.prune.trains else frozenset()) | (frozenset() if guarded else {"latency_guard"})
    return config_tree.key_config(cfg, *subs, skip=frozenset(skip))


_LIMITS = ("max_macs", "max_params", "max_latency_ms", "max_memory_bytes")
