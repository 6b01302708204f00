"""Strategy ``gp-prune``: one-shot uniform channel pruning ranked by an expression-tree metric.

Source: Liu et al., "Evolving Transferable Neural Pruning Functions", GECCO'22
(docs/algorithms/gp-prune.md), §5 "Transfer pruning": a ready-made metric (default: the evolved
ξ* of Eq. 3) scores every channel, the same ratio of channels is removed from every prunable
layer in one shot (uniform pruning), and the pruned network is retrained. Our choices where the
paper is silent or we differ on purpose, each a config field:

* ratio: the paper fixes a ratio per experiment; we find the *smallest* uniform channel ratio
  that meets the budget by bisection on ``[0, max_ratio]`` (``bisection_steps`` halvings),
  each candidate measured through the budget oracle (fvcore MACs, params, and measured latency
  when the budget limits it);
* allocation (issue 19; not in the paper, config ``allocation``): besides the paper's uniform
  ratio, ``"global"`` (one ranking across groups, DepGraph) and ``"latency"`` (HALP's knapsack on
  a per-layer latency table measured on the target), each bisected toward the budget the same
  way (``allocation.py``); ``"auto"`` picks ``"latency"`` for a budget in milliseconds;
* partial pruning (issue 19): groups Torch-Pruning cannot follow (channel shuffles, layers with
  channel-sized state it cannot see) are kept whole and reported, the rest is pruned
  (``partial.py``);
* channel surgery: Torch-Pruning's dependency graph removes channels physically across
  residual adds, depthwise convs and concats; the classifier's outputs are never pruned;
* CIFAR ResNets' parameter-free zero-padding shortcuts are first replaced by an equivalent
  fixed 1x1 convolution (checked numerically), which dependency graphs understand;
* retraining: KD from the teacher (CE + T^2-scaled KL), SGD Nesterov 0.9, wd 1e-4 (§5), cosine
  learning rate, best epoch chosen on the validation split (the released code picks it on the
  test set: docs/algorithms/gp-prune.md, choice 5);
* label-aware metrics see ``calib_samples`` calibration images (paper: all training images)
  with feature maps pooled to at most ``max_map_hw``² (see ``features.py``).

Checkpoints (when ``ctx.out_dir`` is set) under ``<out_dir>/checkpoints/gp-prune/``: ``pruned``
after the bisection (the pruned widths as JSON, the weights as tensors, the run history and RNG
states) and ``finetune`` at every fine-tune epoch boundary (model, optimizer, scheduler, best
weights, RNG states, history). A rerun with the same settings continues from the last complete
boundary and gives a bit-identical student and history; a changed fine-tune setting keeps the
pruned network and redoes only the fine-tune.
"""

from __future__ import annotations

import contextvars
import copy
import difflib
from collections.abc import Callable, Sequence
import dataclasses
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from compress.errors import BudgetUnreachableError, ConfigError, TimeLimitError, UnsupportedModelError
from compress.strategies._parts.config_fields import check_fields
from compress.models import PadShortcut, apply_widths, describe_widths, freeze_fixed_shortcuts, pad_shortcuts_to_conv
from compress.registry import register_strategy
from compress.profiling.latency_model import LayerLatencyTable
from compress.strategies._parts import channel_rounding
from compress.strategies._parts.channel_rounding import plan_fixed_widths, plan_widths
from compress.strategies._parts.checkpoint import (
    CheckpointStore,
    EpochCheckpoint,
    loader_generators,
    stable_hash,
    state_fingerprint,
)
from compress.strategies._parts.time_limit import time_limit
from compress.strategies._parts.training import AUGMENTATIONS, FinetuneSettings, finetune
from compress.strategies.base import Strategy, StrategyContext, StrategyOutput, config_to_dict
from compress.strategies.gp_prune.allocation import (
    ALLOCATIONS,
    analyse_groups,
    global_widths,
    latency_charges,
    latency_table,
    solve_knapsack,
)
from compress.strategies.gp_prune import partial
from compress.strategies.gp_prune.features import collect_feature_maps
from compress.strategies.gp_prune.schedule import group_norm_regulariser, interpolated_budget
from compress.strategies.gp_prune.importance import TreeImportance
from compress.evolution.metrics import MetricError, PruningMetric, get_metric

__all__ = ["GPPruneConfig", "GPPrune", "find_classifier", "prune_uniform", "forward_or_explain", "resolve_allocation"]


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


class MagnitudeBaseline(tp.importance.MagnitudeImportance):
    """Baseline ``metric="tp-l1"``: Torch-Pruning's own group L1 magnitude
    (``MagnitudeImportance(p=1)``, mean group reduction and normaliser), i.e. plain L1 pruning
    as users of Torch-Pruning get it, for side-by-side comparisons with the tree metrics."""

    def __init__(self) -> None:
        super().__init__(p=1, group_reduction="mean", normalizer="mean")

    def bind(self, candidate: nn.Module) -> "MagnitudeBaseline":
        return self


def _head_outputs(m: nn.Module) -> int | None:
    """Outputs of a would-be class head (``nn.Linear`` or 1x1 ``Conv2d``), else None."""
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
        return m.out_channels
    return None


#: Names of the modules that run only in train mode (aux heads) while gp-prune traces in train mode.
_TRAIN_ONLY: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("slimforge_train_only",
                                                                              default=frozenset())


def train_only_modules(model: nn.Module, x: torch.Tensor) -> frozenset[str]:
    """The modules that run only in train mode, when ``model`` returns a tuple / list in train mode but a
    tensor in eval mode (torchvision GoogLeNet and Inception v3 add aux logits in training); else an
    empty set. Buffers and the RNG are left as found."""
    ran: dict[str, set[str]] = {"eval": set(), "train": set()}
    mode = ["eval"]
    hooks = [m.register_forward_hook(lambda _m, _i, _o, n=n: ran[mode[0]].add(n))
             for n, m in model.named_modules() if n]
    was = model.training
    try:
        with torch.no_grad():
            eval_out = model.eval()(x)
            mode[0] = "train"
            train_out = channel_rounding.train_mode_forward(model, x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    if not (isinstance(eval_out, torch.Tensor) and isinstance(train_out, (tuple, list))):
        return frozenset()
    return frozenset(ran["train"] - ran["eval"]) or frozenset({"<none>"})


def find_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """The last ``Linear`` (or 1x1 ``Conv2d``) producing ``num_classes`` outputs.

    Raises:
        UnsupportedModelError: no such layer (the pruner would otherwise remove class outputs).
    """
    found = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            found = m
        elif isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.kernel_size == (1, 1):
            found = m
    if found is None:
        raise UnsupportedModelError(
            f"No classifier layer with {num_classes} outputs (nn.Linear or 1x1 Conv2d) found in "
            f"{type(model).__name__}; gp-prune keeps the classifier's outputs intact and needs to find it. "
            "Make the model end in such a layer.",
        )
    return found


def forward_or_explain(model: nn.Module, x: torch.Tensor, expected: tuple[int, ...], what: str) -> torch.Tensor:
    """Run ``model(x)``; on failure raise :class:`UnsupportedModelError` naming the innermost
    module that was executing (found with forward pre/post hooks)."""
    stack: list[str] = []
    deepest: list[str] = []
    last_layer: list[str] = []  # the last Conv2d / Linear that finished: what feeds the failing module
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def pre(_m, _i, name=name):
            stack.append(name)
            deepest[:] = list(stack)

        def post(m, _i, _o, name=name):
            if stack and stack[-1] == name:
                stack.pop()
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                last_layer[:] = [name]

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        where = stack[-1] if stack else (deepest[-1] if deepest else type(model).__name__)
        mod = dict(model.named_modules()).get(where)
        kind = type(mod).__name__ if mod is not None else "op"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsupportedModelError(
            f"{what}: layer {where!r} ({kind}) failed after channel removal: {first}. "
            "It holds channel-dependent state the dependency graph cannot see (e.g. a plain tensor attribute "
            "or a hard-coded channel count). Register such tensors as parameters/buffers"
            + (f", or keep the layer that feeds it whole: config ignored_layers, e.g. --config "
               f"'{{\"ignored_layers\": [\"{last_layer[0]}\"]}}'" if last_layer and last_layer[0] != where else "")
            + ".",
            layer=where,
        ) from exc
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(expected):
        raise UnsupportedModelError(
            f"{what}: the pruned model returns {getattr(out, 'shape', type(out).__name__)}, expected {expected}. "
            "A layer mixes channels in a way the dependency graph cannot follow.",
            layer=type(model).__name__,
        )
    return out


def prune_uniform(
    reference: nn.Module,
    ratio: float,
    importance: "TreeImportance | MagnitudeBaseline",
    example_inputs: torch.Tensor,
    classifier_name: str,
    round_to: int | None = None,
    width_planner: "Callable[[nn.Module, float, list[nn.Module]], dict[nn.Module, int]] | None" = None,
    *,
    time_limit_s: float | None = None,
    keep_whole: Sequence[str] = (),
) -> nn.Module:
    """A deep copy of ``reference`` with ``ratio`` of the channels of every prunable group
    removed (Torch-Pruning ``MetaPruner``, ``global_pruning=False``). ``width_planner(candidate,
    ratio, ignored)`` may return the exact kept width of each group (by root module) instead.
    ``time_limit_s`` bounds the dependency-graph build (``MetaPruner``'s constructor).
    ``keep_whole`` names further modules (``named_modules()`` names) whose output channels stay.

    Raises:
        UnsupportedModelError: Torch-Pruning cannot build the dependency graph or prune.
        TimeLimitError: the dependency-graph build took longer than ``time_limit_s``.
    """
    cand = copy.deepcopy(reference).eval()
    if ratio <= 0.0 and width_planner is None:
        return cand
    modules = dict(cand.named_modules())
    partial_plan = partial.CURRENT_PLAN.get()
    # the classifier, keep_whole and, under train-mode tracing, the class heads and train-only layers
    ignored: list[nn.Module] = []
    for n in _ignored_names(cand, classifier_name, keep_whole):
        if not any(modules[n] is m for m in ignored):
            ignored.append(modules[n])
    if partial_plan is not None:  # groups Torch-Pruning cannot follow (channel shuffles, failing groups): kept whole
        ignored += [modules[n] for n in partial_plan.keep_whole
                    if n in modules and not any(modules[n] is m for m in ignored)]
    forward_fn = channel_rounding.TRACE_FORWARD.get()
    importance.bind(cand)
    try:
        ratio_dict = None
        if width_planner is not None:
            plan = width_planner(cand, ratio, ignored)
            ratio_dict = {}
            for root, keep in plan.items():
                c = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
                ratio_dict[root] = 1.0 - (keep + 0.5) / c  # Torch-Pruning keeps int(C * (1 - r)) = keep
        with time_limit(time_limit_s, "building Torch-Pruning's dependency graph (gp-prune)"):
            pruner = partial.meta_pruner(
                cand,
                example_inputs,
                plan=partial_plan,
                importance=importance,
                pruning_ratio=ratio,
                pruning_ratio_dict=ratio_dict or None,
                global_pruning=False,
                ignored_layers=ignored,
                round_to=round_to,
                forward_fn=forward_fn,
            )
        pruner.step()
    except (MetricError, TimeLimitError, UnsupportedModelError):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsupportedModelError(
            f"Torch-Pruning could not prune {type(reference).__name__}: {type(exc).__name__}: {first}. "
            "Check that forward() uses standard torch ops on channel dimensions.",
            layer=type(reference).__name__,
        ) from exc
    return cand.eval()


def _layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels (conv) / features (linear) of every layer, by module name."""
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _widths_markdown(before: dict[str, int], after: dict[str, int]) -> str:
    rows = ["| layer | teacher | student | kept |", "| --- | --- | --- | --- |"]
    for name, w in after.items():
        b = before.get(name)
        kept = "-" if not b else f"{100 * w / b:.0f}%"
        rows.append(f"| `{name}` | {b if b is not None else '-'} | {w} | {kept} |")
    return "\n".join(rows)


@register_strategy("gp-prune")
class GPPrune(Strategy):
    """One-shot channel pruning with an expression-tree importance (GECCO'22 §5, Eq. 3): uniform as
    in the paper, or allocated globally or by latency (config ``allocation``).

    Input: ``ctx.model`` ``(B, C, H, W) -> (B, K)``; output: a physically smaller ``nn.Module``
    with the same input/output shapes that meets ``ctx.budget``.

    A model that returns ``(logits, aux_logits...)`` in train mode only (torchvision GoogLeNet and
    Inception v3 with ``aux_logits=True``) is traced in train mode: the aux heads' inputs are pruned
    with the features that feed them, the layers that run only in training keep their widths, every
    class head keeps its ``K`` outputs, and the fine-tune trains on the main logits
    (:func:`compress.training.main_logits`; the aux outputs are ignored). The student keeps its aux
    heads, so it behaves like the teacher in both modes.

    Raises:
        UnsupportedModelError: the model cannot be pruned (names the layer or op).
        BudgetUnreachableError: even ``max_ratio`` does not meet the budget.
        MetricError: the metric is unknown or returns non-finite scores.
    """

    config_cls = GPPruneConfig
    paper = "Liu et al., Evolving Transferable Neural Pruning Functions, GECCO 2022"
    shrinks_teacher = True

    @classmethod
    def demo_config(cls, epochs: int) -> dict:
        return {"epochs": epochs}

    def run(self, ctx: StrategyContext) -> StrategyOutput:
        cfg: GPPruneConfig = self.config
        metric = None if cfg.metric == TP_L1 else resolve_metric(cfg.metric)
        model = ctx.model.eval()
        num_classes = ctx.data.spec.num_classes
        store = CheckpointStore.for_strategy(ctx.out_dir, "gp-prune")
        gens = loader_generators(train=ctx.data.train, val=ctx.data.val, calib=ctx.data.calib)
        prune_key = stable_hash({
            "config": {k: v for k, v in config_to_dict(cfg).items()
                       if k not in _FINETUNE_FIELDS and not (k in _RECIPE_DEFAULTS and v == _RECIPE_DEFAULTS[k])},
            "seed": ctx.seed, "model": state_fingerprint(ctx.model), "budget": ctx.budget.describe(),
            "target": ctx.target.to_dict(),
            "data": ctx.data.to_dict()})
        with ctx.phase("prepare"):
            if any(isinstance(m, PadShortcut) for m in model.modules()):
                model = pad_shortcuts_to_conv(model)
            classifier = find_classifier(model, num_classes)
            classifier_name = next(n for n, m in model.named_modules() if m is classifier)
            names = [n for n, _ in model.named_modules() if n]
            unknown = [n for n in cfg.ignored_layers if n not in names]
            if unknown:
                hints = {n: difflib.get_close_matches(n, names, n=3) for n in unknown}
                raise ConfigError(
                    "gp-prune config ignored_layers names modules the model does not have: "
                    + "; ".join(f"{n!r}" + (f" (did you mean {', '.join(map(repr, h))}?)" if h else "")
                                for n, h in hints.items())
                    + ". Use the names of model.named_modules(), e.g. 'layer1.0.conv1'.")
            before = _layer_widths(model)
        restored = store.load("pruned", key=prune_key)
        if restored is not None:
            best = _rebuild_pruned(model, restored.state, restored.tensors["weights"])
            best_ratio, best_rounding = float(restored.state["ratio"]), restored.state["rounding"]
            alloc_record = restored.state.get("allocation")
            untouched = list(restored.state.get("untouched_groups", []))
            recipe = restored.state.get("recipe") or {"schedule": "one-shot", "sparse_epochs": 0}
            ctx.history[:] = restored.state["history"]
            restored.restore_rng(gens)
        else:
            # a model whose train mode returns (logits, aux ...) (GoogLeNet, Inception v3): the aux heads
            # run only in training, so the dependency graph is traced in train mode and every class head
            # keeps its outputs; training uses the main logits (compress.training.main_logits)
            aux = train_only_modules(model, ctx.example_inputs)
            token = channel_rounding.TRACE_FORWARD.set(channel_rounding.train_mode_forward if aux else None)
            token2 = _TRAIN_ONLY.set(aux)
            try:
                best, best_ratio, best_rounding, alloc_record, untouched, recipe = self._prune_recipe(
                    ctx, cfg, metric, model, classifier_name, store, prune_key)
            finally:
                channel_rounding.TRACE_FORWARD.reset(token)
                _TRAIN_ONLY.reset(token2)
            if store.enabled and _rebuildable(model, best):
                store.commit("pruned", {"ratio": best_ratio, "rounding": best_rounding, "allocation": alloc_record,
                                        "untouched_groups": untouched, "recipe": recipe,
                                        "widths": describe_widths(best),
                                        "trainable": {n: p.requires_grad for n, p in best.named_parameters()},
                                        "history": ctx.history},
                             {"weights": best.state_dict()}, key=prune_key, generators=gens)
            else:
                store = CheckpointStore(None)  # cannot rebuild this network from widths: no resume point

        with ctx.phase("finetune"):
            settings = cfg.finetune_settings
            if settings.epochs > 0:
                ctx.progress("finetune", 0, settings.epochs, {})
                def on_epoch(epoch: int, rec: dict) -> None:
                    ctx.log(phase="finetune", **rec)
                    ctx.progress("finetune", epoch, settings.epochs, rec)

                finetune(best, ctx.data.train, ctx.data.val, settings, teacher=ctx.teacher, on_epoch=on_epoch,
                         checkpoint=EpochCheckpoint(store, "finetune", prune_key), runtime=ctx.runtime)
        best.eval()
        widths = _layer_widths(best)
        formula = metric.expr if metric is not None else "torch_pruning.importance.MagnitudeImportance(p=1)"
        return StrategyOutput(
            student=best,
            report_sections=[("Channels kept per layer (GECCO'22 uniform one-shot pruning)",
                              f"Importance: `{formula}`; " + _allocation_line(alloc_record, best_ratio, cfg)
                              + "\n\n" + _widths_markdown(before, widths))],
            info={
                "metric": metric.name if metric is not None else TP_L1,
                "metric_expr": metric.expr if metric is not None else "torch_pruning.importance.MagnitudeImportance(p=1)",
                "pruning_ratio": best_ratio,
                "layer_widths": widths,
                "channel_rounding": {"mode": cfg.channel_rounding, "groups": best_rounding,
                                     **({"rule": _ROUNDING_RULE} if cfg.channel_rounding == "measured" else {})},
                "allocation": alloc_record or {"mode": "uniform"},
                "untouched_groups": untouched,
                "recipe": recipe,
                "shortcuts_converted": any(isinstance(m, PadShortcut) for m in ctx.model.modules()),
                "resumed": None if restored is None else "pruned",
            },
        )

    def _prune_recipe(self, ctx: StrategyContext, cfg: GPPruneConfig, metric, model: nn.Module,
                      classifier_name: str, store: CheckpointStore, key: str
                      ) -> tuple[nn.Module, float, list[dict], dict | None, list[dict], dict]:
        """Sparse learning (``sparse_epochs``), then the one-shot prune or the iterative schedule
        (``schedule.py``). Returns what :meth:`_prune` returns for the last step, with the pruning
        ratio as the share of the original prunable channels removed for an iterative run, and the
        recipe record (``info.recipe``: per phase its epochs and validation accuracies, per step its
        budget, ratio and cost). A killed run re-prunes its steps (deterministic for MACs and params
        budgets) and resumes each training phase from its epoch checkpoints."""
        recipe: dict = {"schedule": cfg.schedule, "sparse_epochs": cfg.sparse_epochs}
        if cfg.sparse_epochs > 0:
            model = copy.deepcopy(model)
            with ctx.phase("sparse"):
                recipe["sparse"] = self._sparse_learning(ctx, cfg, model, classifier_name, store, key)
        if cfg.schedule == "one-shot":
            return (*self._prune(ctx, cfg, metric, model, classifier_name), recipe)
        k = cfg.iterative_steps
        teacher_ms = teacher_mem = None
        with ctx.phase("prepare"):
            if ctx.budget.max_latency_ms is not None and ctx.latency_fn is not None:
                teacher_ms = ctx.latency_fn(model)
            if ctx.budget.max_memory_bytes is not None and ctx.memory_fn is not None:
                teacher_mem = ctx.memory_fn(model)
        before = {n: w for n, w in _layer_widths(model).items() if n != classifier_name}
        current, steps = model, []
        for i in range(1, k + 1):
            budget_i = interpolated_budget(ctx.budget, i / k, teacher_macs=ctx.teacher_cost.macs,
                                           teacher_params=ctx.teacher_cost.params, teacher_latency_ms=teacher_ms,
                                           teacher_memory_bytes=teacher_mem)
            ctx.progress("iterative", i - 1, k, {"budget": budget_i.describe()})
            out = self._prune(dataclasses.replace(ctx, budget=budget_i), cfg, metric, current, classifier_name)
            current = out[0]
            cost = ctx.cost(current)
            step = {"step": i, "of": k, "budget": {f: getattr(budget_i, f) for f in _LIMITS if getattr(budget_i, f)},
                    "ratio": out[1], "macs": cost.macs, "params": cost.params}
            if i < k and cfg.recovery_epochs > 0:
                with ctx.phase("recover"):
                    def on_epoch(epoch: int, rec: dict, i: int = i) -> None:
                        ctx.log(phase="recover", step=i, **rec)
                    hist = finetune(current, ctx.data.train, ctx.data.val, cfg.phase_settings(cfg.recovery_epochs),
                                    teacher=ctx.teacher, on_epoch=on_epoch, runtime=ctx.runtime, phase=f"recover-{i}",
                                    checkpoint=EpochCheckpoint(store, f"recover-{i}", key))
                step["val_acc"] = [h.get("val_acc") for h in hist]
            ctx.log(phase="iterative", **{k_: v for k_, v in step.items() if k_ != "budget"})
            steps.append(step)
            ctx.progress("iterative", i, k, {"macs": cost.macs})
        recipe["steps"] = steps
        after = _layer_widths(current)
        ratio = 1.0 - sum(min(after.get(n, w), w) for n, w in before.items()) / max(1, sum(before.values()))
        return current, ratio, *out[2:], recipe

    def _sparse_learning(self, ctx: StrategyContext, cfg: GPPruneConfig, model: nn.Module, classifier_name: str,
                         store: CheckpointStore, key: str) -> list[dict]:
        """Train ``model`` in place for ``sparse_epochs`` with group-norm regularisation
        (``schedule.py``); returns the per-epoch history."""
        forward_fn = channel_rounding.TRACE_FORWARD.get()
        ignored_names = _ignored_names(model, classifier_name, cfg.ignored_layers)
        modules = dict(model.named_modules())
        with ctx.phase("prepare"):
            plan = partial.scan_channel_ops(model, ctx.example_inputs, ignored_names, forward_fn=forward_fn,
                                            time_limit_s=ctx.trace_time_limit_s)
            try:
                with time_limit(ctx.trace_time_limit_s, "building Torch-Pruning's dependency graph (sparse learning)"):
                    pruner = group_norm_regulariser(model, ctx.example_inputs, [modules[n] for n in ignored_names],
                                                    reg=cfg.sparse_reg, plan=plan, forward_fn=forward_fn)
            except (TimeLimitError, UnsupportedModelError):
                raise
            except Exception as exc:
                raise UnsupportedModelError(
                    f"Torch-Pruning could not build the group-norm regulariser of {type(model).__name__} for "
                    f"sparse learning: {type(exc).__name__}: {exc}. Set sparse_epochs=0.",
                    layer=type(model).__name__) from exc
        ctx.progress("sparse", 0, cfg.sparse_epochs, {"reg": cfg.sparse_reg})

        def on_epoch(epoch: int, rec: dict) -> None:
            ctx.log(phase="sparse", **rec)
            ctx.progress("sparse", epoch, cfg.sparse_epochs, rec)

        hist = finetune(model, ctx.data.train, ctx.data.val, cfg.phase_settings(cfg.sparse_epochs), teacher=ctx.teacher,
                        on_epoch=on_epoch, runtime=ctx.runtime, phase="sparse",
                        checkpoint=EpochCheckpoint(store, "sparse", key), after_backward=lambda: pruner.regularize(model))
        return [{"epoch": h["epoch"], "loss": h["loss"], "val_acc": h.get("val_acc")} for h in hist]

    def _prune(self, ctx: StrategyContext, cfg: GPPruneConfig, metric, model: nn.Module,
               classifier_name: str) -> tuple[nn.Module, float, list[dict], dict | None, list[dict]]:
        """Calibrate, allocate and bisect toward the budget; returns (pruned network, pruning ratio,
        rounding log, allocation record or None for uniform, the groups kept whole: ``partial.py``).
        Groups Torch-Pruning cannot follow (channel shuffles) are kept whole from the start; when the
        prune still fails, the failing groups are found by group testing, kept whole, and the rest
        pruned. Only a budget that cannot be met without them is an :class:`UnsupportedModelError`."""
        with ctx.phase("prepare"):
            maps, labels = None, None
            if metric is not None and metric.needs_feature_maps:
                ctx.progress("calibrate", 0, 1, {"samples": cfg.calib_samples})
                calib = ctx.data.calib or ctx.data.train
                maps, labels = collect_feature_maps(
                    model, calib, max_samples=cfg.calib_samples, max_map_hw=cfg.max_map_hw
                )
                ctx.progress("calibrate", 1, 1, {"samples": int(labels.numel())})
            importance = (
                TreeImportance(metric, model, maps, labels, cfg.class_reduction)
                if metric is not None
                else MagnitudeBaseline()
            )
        allocation = resolve_allocation(cfg.allocation, ctx.budget)
        ignored_names = _ignored_names(model, classifier_name, cfg.ignored_layers)
        forward_fn = channel_rounding.TRACE_FORWARD.get()
        expected = (ctx.example_inputs.shape[0], ctx.data.spec.num_classes)
        with ctx.phase("prepare"):  # channel shuffles and reshapes Torch-Pruning cannot follow (partial.py)
            plan = partial.scan_channel_ops(model, ctx.example_inputs, ignored_names, forward_fn=forward_fn,
                                            time_limit_s=ctx.trace_time_limit_s)

        def attempt() -> tuple[nn.Module, float, list[dict], dict | None]:
            if allocation == "uniform":
                return (*self._prune_uniform(ctx, cfg, importance, model, classifier_name), None)
            return self._prune_with_fallback(ctx, cfg, importance, model, classifier_name, allocation)

        token = partial.CURRENT_PLAN.set(plan)
        try:
            try:
                out = attempt()
            except (TimeLimitError, BudgetUnreachableError, MetricError):
                raise
            except UnsupportedModelError:
                # some groups break the prune: find them by group testing, keep them whole, prune the rest
                with ctx.phase("prune"):
                    found = partial.find_unprunable_groups(
                        model, ctx.example_inputs, ignored_names, plan=plan, ratio=0.5, forward_fn=forward_fn,
                        expected_shape=expected, time_limit_s=ctx.trace_time_limit_s)
                if len(found.untouched) == len(plan.untouched):
                    raise  # nothing isolated: the prune's own error stands
                plan = found
                partial.CURRENT_PLAN.set(plan)
                ctx.log(phase="partial", probes=plan.probes, untouched=[u["group"] for u in plan.untouched])
                out = attempt()
        except BudgetUnreachableError as exc:
            if not plan.partial:
                raise
            names = ", ".join(repr(u["group"]) for u in plan.untouched[:8]) + (" ..." if len(plan.untouched) > 8 else "")
            raise UnsupportedModelError(
                f"{exc} Torch-Pruning cannot prune {len(plan.untouched)} channel group(s) of {type(model).__name__}, "
                f"kept whole ({names}: {plan.untouched[0]['reason']}), and the budget cannot be met without them. "
                "Loosen the budget, or make those layers prunable (a registered op instead of a reshape-based "
                "channel shuffle).", layer=plan.untouched[0]["group"]) from exc
        finally:
            partial.CURRENT_PLAN.reset(token)
        return (*out, list(plan.untouched))

    def _prune_with_fallback(self, ctx: StrategyContext, cfg: GPPruneConfig, importance, model: nn.Module,
                             classifier_name: str, allocation: str) -> tuple[nn.Module, float, list[dict], dict]:
        """``allocation="global"`` / ``"latency"``, falling back when it cannot meet the budget.

        The per-group cap ``max_group_ratio`` keeps every layer alive, but it also bounds how far the
        allocation can go: measured (issue 19 benchmark, 64x64 inputs), per-op overhead is about half
        of mobilenetv3's latency, so at ``latency=0.5x`` the knapsack's narrowest allocation (every
        group at the cap) sat at the limit and missed it on re-timing, while uniform pruning (up to
        ``max_ratio`` of every layer) met it. So, in this order, until the budget is met:

        1. the allocation with ``max_group_ratio``;
        2. the same allocation with the cap raised to ``max_ratio`` (what uniform pruning may remove);
        3. uniform pruning (the paper's mode).

        ``record["fallback"]`` says which step met it and why the earlier ones did not. A budget that
        none meets raises the first step's :class:`BudgetUnreachableError`.
        """
        try:
            return self._prune_allocated(ctx, cfg, importance, model, classifier_name, allocation)
        except BudgetUnreachableError as exc:
            first = exc
        tried = [{"allocation": allocation, "max_group_ratio": cfg.max_group_ratio, "why": str(first)}]
        if cfg.max_group_ratio < cfg.max_ratio:
            relaxed = dataclasses.replace(cfg, max_group_ratio=cfg.max_ratio)
            ctx.log(phase="allocation", fallback="max_group_ratio", max_group_ratio=cfg.max_ratio, why=str(first))
            try:
                best, ratio, rounding, record = self._prune_allocated(ctx, relaxed, importance, model,
                                                                      classifier_name, allocation)
                record["fallback"] = {"used": "max_group_ratio raised to max_ratio", "tried": tried}
                return best, ratio, rounding, record
            except BudgetUnreachableError as exc:
                tried.append({"allocation": allocation, "max_group_ratio": cfg.max_ratio, "why": str(exc)})
        ctx.log(phase="allocation", fallback="uniform", why=tried[-1]["why"])
        try:
            best, ratio, rounding = self._prune_uniform(ctx, cfg, importance, model, classifier_name)
        except BudgetUnreachableError:
            raise first from None
        return best, ratio, rounding, {"mode": "uniform", "requested": allocation,
                                       "fallback": {"used": "uniform allocation", "tried": tried}}

    def _planner(self, ctx: StrategyContext, cfg: GPPruneConfig, rounding_log: list[dict]):
        """The width planner of ``channel_rounding`` (None for "off"), for :func:`prune_uniform`;
        ``planner(candidate, ratio, ignored, nominal=None)``, ``nominal`` a kept width per root."""
        if cfg.channel_rounding == "fixed":
            def planner(cand: nn.Module, ratio: float, ignored: list[nn.Module], nominal=None) -> dict[nn.Module, int]:
                return plan_fixed_widths(cand, ctx.example_inputs, ratio, ignored, cfg.round_to,
                                         time_limit_s=ctx.trace_time_limit_s, nominal=nominal)
            return planner
        if cfg.channel_rounding == "measured":
            table = LayerLatencyTable(ctx.target, **channel_rounding.TIMING)

            def planner(cand: nn.Module, ratio: float, ignored: list[nn.Module], nominal=None) -> dict[nn.Module, int]:
                plan, records = plan_widths(cand, ctx.example_inputs, ratio, ignored, table, window=cfg.rounding_window,
                                            time_limit_s=ctx.trace_time_limit_s, nominal=nominal,
                                            time_budget_s=channel_rounding.TIME_BUDGET_S)
                rounding_log[:] = records
                return plan
            return planner
        return None

    def _bisect(self, ctx: StrategyContext, cfg: GPPruneConfig, model: nn.Module, hi: float,
                build: "Callable[[float], nn.Module]", what: str, describe: "Callable[[float], dict]",
                rounding_log: list[dict], strict: bool = False) -> tuple[nn.Module, float, list[dict]]:
        """Bisect the pruning amount ``t`` in ``[0, hi]`` (larger ``t``: smaller network) to the
        smallest that meets the budget, each candidate ``build(t)`` checked by the budget oracle.
        Returns (best network, its ``t``, the rounding log of its build).

        Raises:
            BudgetUnreachableError: ``build(hi)`` does not meet the budget (``what`` says why not), or,
                with ``strict``, a latency budget's chosen network misses it on re-timing
                (:meth:`_verify_latency`), so that the caller can fall back to another allocation.
        """
        expected = (ctx.example_inputs.shape[0], ctx.data.spec.num_classes)
        cost0, check0, lat0 = ctx.check(model)
        ctx.log(phase="bisection", step=0, **describe(0.0), macs=cost0.macs, params=cost0.params,
                latency_ms=lat0, ok=check0.ok)
        if check0.ok:
            return copy.deepcopy(model), 0.0, []
        hi_model = build(hi)
        forward_or_explain(hi_model, ctx.example_inputs, expected, "gp-prune")
        cost_hi, check_hi, lat_hi = ctx.check(hi_model)
        ctx.log(phase="bisection", step=1, **describe(hi), macs=cost_hi.macs, params=cost_hi.params,
                latency_ms=lat_hi, ok=check_hi.ok)
        if not check_hi.ok:
            raise BudgetUnreachableError(
                f"gp-prune cannot meet budget {ctx.budget.describe()!r}: "
                + "; ".join(str(v) for v in check_hi.violations) + f" even after {what}.")
        lo, best, best_t, best_rounding, top = 0.0, hi_model, hi, list(rounding_log), hi
        tol = cfg.budget_tolerance
        # the tightest limit's usage (actual / limit) at both ends, for the interpolation (Illinois)
        f_lo, f_hi, kept_side = _usage(ctx.budget, check0), _usage(ctx.budget, check_hi), None
        used_best, target = f_hi, 1.0 - 0.5 * tol
        # the usage's mean slope over [0, hi]: a bracket narrower than tol / (2 * slope) cannot hold a
        # candidate much closer to the limit, unless the cost jumps there (widths snapped by channel
        # rounding), and then no probe inside it gets closer either
        slope = (f_lo - f_hi) / hi if f_lo is not None and f_hi is not None and hi > 0 else 0.0
        ctx.progress("bisection", 0, cfg.bisection_steps, {})
        for step in range(cfg.bisection_steps):
            if tol > 0 and used_best is not None and used_best >= 1.0 - tol:
                break  # the best candidate is within the tolerance of its limit
            if tol > 0 and slope > 0 and (hi - lo) * slope <= 0.5 * tol:
                break  # the bracket is narrower than the tolerance
            mid = 0.5 * (lo + hi)
            if tol > 0 and f_lo is not None and f_hi is not None and f_lo > f_hi:
                frac = min(max((f_lo - target) / (f_lo - f_hi), 0.02), 0.98)
                mid = lo + frac * (hi - lo)
            cand = build(mid)
            cost, check, lat = ctx.check(cand)
            ctx.log(phase="bisection", step=step + 2, **describe(mid), macs=cost.macs, params=cost.params,
                    latency_ms=lat, ok=check.ok)
            ctx.progress("bisection", step + 1, cfg.bisection_steps, {**describe(mid), "ok": check.ok})
            f_mid = _usage(ctx.budget, check)
            if check.ok:
                hi, best, best_t, best_rounding = mid, cand, mid, list(rounding_log)
                if kept_side == "lo" and f_lo is not None:  # lo kept twice: Illinois halves its distance
                    f_lo = target + 0.5 * (f_lo - target)
                f_hi, used_best, kept_side = f_mid, f_mid, "lo"
            else:
                lo = mid
                if kept_side == "hi" and f_hi is not None:
                    f_hi = target + 0.5 * (f_hi - target)
                f_lo, kept_side = f_mid, "hi"
        if ctx.budget.needs_latency:
            best, best_t, best_rounding, ok = self._verify_latency(ctx, best, best_t, top, build, describe,
                                                                   rounding_log, best_rounding)
            if not ok and strict:
                raise BudgetUnreachableError(
                    f"gp-prune cannot meet budget {ctx.budget.describe()!r} with a {100 * LATENCY_MARGIN:.0f}% margin "
                    f"on re-timing, even after {what}.")
        return best, best_t, best_rounding

    def _verify_latency(self, ctx: StrategyContext, best: nn.Module, t: float, top: float,
                        build: "Callable[[float], nn.Module]", describe: "Callable[[float], dict]",
                        rounding_log: list[dict], rounding: list[dict]) -> tuple[nn.Module, float, list[dict]]:
        """The bisection stops where a candidate *just* met a latency limit, so a second measurement
        misses it about half the time (measured: 1.4-6% over in 3 of 6 runs at ``latency=0.5x``). Re-time
        the chosen network; while it is not :data:`LATENCY_MARGIN` under the limit, move a quarter of the
        way toward ``top`` (which met the budget once) and re-time, at most :data:`VERIFY_STEPS` times,
        then ``top`` itself. Returns (network, ``t``, its rounding log, whether it passed)."""
        limit = ctx.budget.max_latency_ms
        steps = [t + (1.0 - 0.75 ** k) * (top - t) for k in range(VERIFY_STEPS + 1)] + [top]
        for step, t_step in enumerate(steps):
            if step > 0:
                if t_step <= t:
                    continue
                t, best, rounding = t_step, build(t_step), list(rounding_log)
            cost, check, lat = ctx.check(best)
            ok = check.ok and (lat is None or limit is None or lat <= (1.0 - LATENCY_MARGIN) * limit)
            ctx.log(phase="bisection", step=f"verify-{step}", **describe(t), macs=cost.macs, params=cost.params,
                    latency_ms=lat, ok=ok)
            if ok:
                return best, t, rounding, True
        return best, t, rounding, False

    def _prune_uniform(self, ctx: StrategyContext, cfg: GPPruneConfig, importance, model: nn.Module,
                       classifier_name: str) -> tuple[nn.Module, float, list[dict]]:
        """The paper's uniform one-shot pruning: bisect the ratio of every group."""
        rounding_log: list[dict] = []
        planner = self._planner(ctx, cfg, rounding_log)
        expected = (ctx.example_inputs.shape[0], ctx.data.spec.num_classes)
        with ctx.phase("prune"):
            # Torch-Pruning keeps floor(C * (1 - r)) channels of a C-channel group and skips a group
            # that would keep none, so the uniform ratio is capped where the narrowest layer keeps one.
            narrowest = min(
                (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
                for n, m in model.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear)) and n != classifier_name
            )
            max_ratio = min(cfg.max_ratio, 1.0 - 1.0 / narrowest - 1e-6)

            def build(ratio: float) -> nn.Module:
                return prune_uniform(model, ratio, importance, ctx.example_inputs, classifier_name, None, planner,
                                     time_limit_s=ctx.trace_time_limit_s, keep_whole=cfg.ignored_layers)

            best, best_ratio, best_rounding = self._bisect(
                ctx, cfg, model, max_ratio, build,
                f"removing {100 * max_ratio:.1f}% of the channels of every layer (loosen the budget or raise config "
                "max_ratio)", lambda r: {"ratio": r}, rounding_log)
            forward_or_explain(best, ctx.example_inputs, expected, "gp-prune")
            freeze_fixed_shortcuts(best)  # Torch-Pruning re-creates parameters; the 0/1 shortcut stays fixed
        return best, best_ratio, best_rounding

    def _prune_allocated(self, ctx: StrategyContext, cfg: GPPruneConfig, importance, model: nn.Module,
                         classifier_name: str, allocation: str) -> tuple[nn.Module, float, list[dict], dict]:
        """``allocation="global"`` or ``"latency"`` (``allocation.py``): per-group widths from one
        ranking or from the latency knapsack, bisected toward the budget (the knapsack's latency
        limit, in predicted ms, or the global ratio), every candidate checked by real measurement."""
        expected = (ctx.example_inputs.shape[0], ctx.data.spec.num_classes)
        ignored_names = _ignored_names(model, classifier_name, cfg.ignored_layers)
        with ctx.phase("prepare"):
            groups = analyse_groups(model, ctx.example_inputs, importance, ignored_names,
                                    max_group_ratio=cfg.max_group_ratio, forward_fn=channel_rounding.TRACE_FORWARD.get(),
                                    time_limit_s=ctx.trace_time_limit_s)
        if not groups:
            raise UnsupportedModelError(
                f"gp-prune allocation={allocation!r} found no prunable channel group in {type(model).__name__} "
                "(every conv/linear is ignored or cannot be pruned); try allocation='uniform'.",
                layer=type(model).__name__)
        total = sum(g.channels for g in groups)
        rounding_log: list[dict] = []
        record: dict = {"mode": allocation, "max_group_ratio": cfg.max_group_ratio}

        def apply(widths: dict[str, int], planner=None, ratio: float = 0.0) -> nn.Module:
            def plan(cand: nn.Module, r: float, ignored: list[nn.Module]) -> dict[nn.Module, int]:
                mods = dict(cand.named_modules())
                nominal = {mods[n]: k for n, k in widths.items() if n in mods}
                return planner(cand, ratio, ignored, nominal=nominal) if planner is not None else nominal
            return prune_uniform(model, 0.0, importance, ctx.example_inputs, classifier_name, None, plan,
                                 time_limit_s=ctx.trace_time_limit_s, keep_whole=cfg.ignored_layers)

        if allocation == "global":
            planner = self._planner(ctx, cfg, rounding_log)
            hi = cfg.max_ratio
            with ctx.phase("prune"):
                best, t, best_rounding = self._bisect(
                    ctx, cfg, model, hi, lambda r: apply(global_widths(groups, r), planner, r),
                    f"removing the {100 * hi:.1f}% least important channels across layers, no layer losing over "
                    f"{100 * cfg.max_group_ratio:.0f}% (loosen the budget, or raise config max_ratio / max_group_ratio)",
                    lambda r: {"ratio": r}, rounding_log, strict=True)
            record["ratio"] = t
        else:
            with ctx.phase("prepare"):
                table = latency_table(ctx.target)
                ctx.progress("latency table", 0, 2, {"groups": len(groups)})
                charges = latency_charges(model, ctx.example_inputs, groups, table)
                values = [[g.value(w) for w in ws] for g, ws in zip(groups, charges.widths)]
                lo_ms = float(sum(ms.min() for ms in charges.ms))
                hi_ms = float(sum(ms.max() for ms in charges.ms))
                full_ms = ctx.latency_fn(model) if ctx.budget.max_latency_ms is not None and ctx.latency_fn else None
                guess = _budget_fraction(ctx, full_ms) * hi_ms
                pick = solve_knapsack(values, charges.ms, max(guess, lo_ms))
                reference = {g.name: charges.widths[i][pick[i]] for i, g in enumerate(groups)}
                ctx.progress("latency table", 1, 2, {"groups": len(groups)})
                charges = latency_charges(model, ctx.example_inputs, groups, table, reference)  # HALP: inputs as pruned
                ctx.progress("latency table", 2, 2, {"layers_timed": table.measured})
                lo_ms = float(sum(ms.min() for ms in charges.ms))
                hi_ms = float(sum(ms.max() for ms in charges.ms))

            def widths_at(t: float) -> tuple[dict[str, int], float]:
                limit = hi_ms - t * (hi_ms - lo_ms)
                choice = solve_knapsack(values, charges.ms, limit)
                return ({g.name: charges.widths[i][choice[i]] for i, g in enumerate(groups)},
                        charges.predict(choice))

            def describe(t: float) -> dict:
                return {"limit_ms": charges.fixed_ms + hi_ms - t * (hi_ms - lo_ms), "predicted_ms": widths_at(t)[1]}

            with ctx.phase("prune"):
                best, t, best_rounding = self._bisect(
                    ctx, cfg, model, 1.0, lambda t: apply(widths_at(t)[0]),
                    f"the knapsack's narrowest allocation, every group losing {100 * cfg.max_group_ratio:.0f}% of its "
                    "channels (loosen the budget or raise config max_group_ratio, e.g. --config "
                    "'{\"max_group_ratio\": 0.9}')", describe, rounding_log, strict=True)
            chosen, predicted = widths_at(t)
            record.update({
                "solver": "multiple-choice knapsack, exact dynamic programming on a discretised latency axis "
                          "(HALP, Shen et al. NeurIPS 2022)",
                "limit_ms": charges.fixed_ms + hi_ms - t * (hi_ms - lo_ms), "predicted_ms": predicted,
                "predicted_full_ms": charges.fixed_ms + hi_ms, "fixed_ms": charges.fixed_ms,
                "table": str(table.path), "reference_widths": reference,
                "groups": [{"group": g.name, "channels": g.channels, "kept": chosen[g.name],
                            "ms_full": float(charges.ms[i][-1]),
                            "ms_kept": float(charges.ms[i][charges.widths[i].index(chosen[g.name])]),
                            "charged_layers": charges.charged[i]} for i, g in enumerate(groups)],
            })
        forward_or_explain(best, ctx.example_inputs, expected, "gp-prune")
        freeze_fixed_shortcuts(best)
        kept = _layer_widths(best)
        ratio = 1.0 - sum(min(kept.get(g.name, g.channels), g.channels) for g in groups) / total
        record["pruned_channel_share"] = ratio
        return best, ratio, best_rounding, record


def resolve_allocation(allocation: str, budget) -> str:
    """``allocation`` with ``"auto"`` resolved: ``"latency"`` when ``budget`` limits latency (issue 19:
    a budget in milliseconds is met by cutting where the milliseconds are), else ``"uniform"`` (the paper)."""
    if allocation == "auto":
        return "latency" if budget.needs_latency else "uniform"
    return allocation


def _allocation_line(record: dict | None, ratio: float, cfg: GPPruneConfig) -> str:
    """One sentence on how the widths were allocated, for ``report.md``."""
    fallback = (record or {}).get("fallback")
    note = (f" The requested allocation could not meet the budget ({len(fallback['tried'])} attempt(s) in "
            f"`report.json` info.allocation.fallback): {fallback['used']}." if fallback else "")
    if record is None or record["mode"] == "uniform":
        return f"uniform ratio {ratio:.4f}; channel rounding `{cfg.channel_rounding}`." + note
    cap = record.get("max_group_ratio", cfg.max_group_ratio)
    if record["mode"] == "global":
        return (f"global ranking, {100 * ratio:.1f}% of the prunable channels removed (no group over "
                f"{100 * cap:.0f}%); channel rounding `{cfg.channel_rounding}`." + note)
    return (f"latency knapsack (HALP): predicted {record['predicted_ms']:.3f} ms of {record['predicted_full_ms']:.3f} ms "
            f"for the full network (conv/linear layers only, from the table `{record['table']}`); "
            f"{100 * ratio:.1f}% of the prunable channels removed, no group over {100 * cap:.0f}%." + note)


def _usage(budget, check) -> float | None:
    """The tightest limit's usage, ``max(actual / limit)`` over the limits ``check`` measured
    (1.0: exactly at the limit; above 1: over it); None when no limit was checked."""
    limits = {"macs": budget.max_macs, "params": budget.max_params, "latency_ms": budget.max_latency_ms,
              "memory_bytes": budget.max_memory_bytes}
    used = [1.0 - room / limits[m] for m, room in check.headroom.items() if limits.get(m)]
    return max(used) if used else None


def _budget_fraction(ctx: StrategyContext, model_ms: float | None) -> float:
    """The tightest limit of the budget relative to the model (0.5 for ``macs=0.5x``), in [0.05, 1]:
    the first guess of the knapsack's limit (a share of the full network's predicted latency).
    A latency limit is compared with ``model_ms``, the model's measured latency."""
    b, c = ctx.budget, ctx.teacher_cost
    fractions = [1.0]
    if b.max_macs is not None and c.macs:
        fractions.append(b.max_macs / c.macs)
    if b.max_params is not None and c.params:
        fractions.append(b.max_params / c.params)
    if b.max_latency_ms is not None and model_ms:
        fractions.append(b.max_latency_ms / model_ms)
    return float(min(1.0, max(0.05, min(fractions))))


def _ignored_names(model: nn.Module, classifier_name: str, keep_whole: Sequence[str]) -> list[str]:
    """Names of the modules whose output channels gp-prune never prunes: the classifier, the user's
    ``ignored_layers`` and, when the model is traced in train mode (aux heads), every class head and
    the layers that run only in training (used by :func:`prune_uniform` and the allocations)."""
    modules = dict(model.named_modules())
    names = [classifier_name] + [n for n in keep_whole if n != classifier_name]
    if channel_rounding.TRACE_FORWARD.get() is not None:
        k = _head_outputs(modules[classifier_name])
        train_only = _TRAIN_ONLY.get()
        names += [n for n, m in modules.items() if n and n != classifier_name
                  and (_head_outputs(m) == k or (n in train_only and isinstance(m, (nn.Conv2d, nn.Linear))))]
    return names


LATENCY_MARGIN = 0.02
"""A latency budget's chosen network must re-time this share under the limit (see ``_verify_latency``)."""
VERIFY_STEPS = 3
"""Steps toward more pruning ``_verify_latency`` may take."""

_ROUNDING_RULE = {
    "min_gain": channel_rounding.MIN_GAIN, "noise_z": channel_rounding.NOISE_Z, **channel_rounding.TIMING,
    "criterion": "ms per kept channel vs the nominal width, round by round; the group leaves the nominal width when "
                 "the candidates' median cut exceeds max(min_gain, noise_z x median standard error); then, among "
                 "the widths cutting over min_gain / 2: most aligned (up to 16), then nearest",
}
"""How "measured" rounding decided, written beside its per-group records in the report."""

_FINETUNE_FIELDS = frozenset({"epochs", "lr", "momentum", "weight_decay", "optimizer", "kd_alpha", "kd_temperature",
                              "max_steps_per_epoch", "augment", "label_smoothing", "warmup_epochs", "finetune_time_s"})
"""Fields of the final fine-tune only: left out of the pruning checkpoint's key (a new fine-tune
resumes from the same pruned network). ``grad_clip`` is not among them: the recovery and sparse
phases before the pruned checkpoint use it too."""

_RECIPE_DEFAULTS = {"schedule": "one-shot", "iterative_steps": 4, "recovery_epochs": 1, "sparse_epochs": 0,
                    "sparse_reg": 5e-4, "grad_clip": None}
"""Recipe fields added after pruning checkpoints existed: at these values they are left out of the
key, so a run started before them still resumes."""

SCHEDULES = ("one-shot", "iterative")
_LIMITS = ("max_macs", "max_params", "max_latency_ms", "max_memory_bytes")


def _shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _rebuildable(base: nn.Module, pruned: nn.Module) -> bool:
    """True when resizing a copy of ``base`` to ``pruned``'s Conv/Linear/BN widths gives its
    state_dict shapes (Torch-Pruning may also resize layers the width record does not cover)."""
    try:
        return _shapes(apply_widths(copy.deepcopy(base), describe_widths(pruned))) == _shapes(pruned)
    except Exception:  # noqa: BLE001 - any failure only means "no pruned checkpoint"
        return False


def _rebuild_pruned(base: nn.Module, state: dict, weights: dict) -> nn.Module:
    """The pruned network of a ``pruned`` checkpoint: ``base`` resized to the saved widths,
    weights loaded, ``requires_grad`` as saved.

    Raises:
        CheckpointError: the saved widths or tensors do not fit ``base``.
    """
    from compress.errors import CheckpointError

    net = copy.deepcopy(base).eval()
    try:
        apply_widths(net, state["widths"])
        net.load_state_dict(weights, strict=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"the gp-prune 'pruned' checkpoint does not fit this model ({str(exc).splitlines()[0]}); delete the "
            "checkpoints folder (or pass resume=False, CLI --no-resume) to start the run over."
        ) from exc
    trainable = state["trainable"]
    for n, p in net.named_parameters():
        p.requires_grad_(bool(trainable.get(n, p.requires_grad)))
    return net


def _metric_from_string(expr: str):
    return PruningMetric.from_string(expr, name="custom")


def resolve_metric(spec: str):
    """A metric from a registered name (``xi_star``, ``l1`` ...), a tree string
    (``"sum_g(abs(WI))"``), or the path of a JSON file written by ``slimforge evolve-metric``
    (``PruningMetric.to_dict()``; JSON only, never pickle).

    Raises:
        MetricError: unknown name, unparsable tree, or unreadable file.
    """
    import json
    from pathlib import Path

    if spec.endswith(".json"):
        p = Path(spec)
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MetricError(f"cannot read metric file {p}: {exc}; pass a best_metric.json from evolve-metric.") from exc
        return PruningMetric.from_dict(data)
    if "(" in spec:
        return _metric_from_string(spec)
    return get_metric(spec)


