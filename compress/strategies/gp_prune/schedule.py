"""gp-prune's recipe beyond the paper's one-shot pruning (issue 14): sparse learning before pruning,
and an iterative schedule of intermediate budgets.

**Sparse learning** (DepGraph, Fang et al. CVPR 2023, §3.3 "Group-level pruning" with sparse
training): before any channel is cut, the teacher copy trains for ``sparse_epochs`` with
Torch-Pruning's ``GroupNormPruner.regularize`` added to the gradients after every backward. The
regulariser pushes whole coupled groups (a conv's output channels with its BatchNorm and every
consumer's input channels) toward zero, harder for the groups of low group norm (``alpha`` ** the
normalised distance to the largest norm), so that the channels the importance will later remove
carry little of the function when they are cut. Torch-Pruning's own ``GroupNormPruner`` does the
group bookkeeping; we build it through :func:`partial.meta_pruner` so that groups Torch-Pruning
cannot follow (channel shuffles) stay whole here as in the prune.

**Iterative schedule** (Torch-Pruning's ``iterative_steps``; HRank and DepGraph prune in steps too):
``k`` steps, step ``i`` pruning the current network to the budget interpolated geometrically from
the teacher's figure ``V`` to the final limit ``L``: ``L_i = V * (L / V) ** (i / k)`` for every
limit the budget names (MACs, params, latency, memory), each step followed by ``recovery_epochs``
of KD from the teacher except the last (the final fine-tune follows it). A geometric path removes
the same share of the remaining cost at each step. The last step's budget is the budget itself,
so an iterative run meets the same budget as a one-shot run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch_pruning as tp
from torch import nn

from compress.budgets import Budget
from compress.errors import TimeLimitError, UnsupportedModelError
from compress.strategies._parts import channel_rounding
from compress.strategies._parts import partial_pruning as partial
from compress.strategies._parts.checkpoint import CheckpointStore, EpochCheckpoint
from compress.strategies._parts.time_limit import time_limit
from compress.strategies._parts.training import finetune
from compress.strategies.base import StrategyContext
from compress.strategies.gp_prune.config import GPPruneConfig, phase_settings
from compress.strategies.gp_prune.pruning import _ignored_names

__all__ = ["interpolated_budget", "group_norm_regulariser", "sparse_learning"]


def interpolated_budget(budget: Budget, fraction: float, *, teacher_macs: float, teacher_params: float,
                        teacher_latency_ms: float | None = None, teacher_memory_bytes: float | None = None) -> Budget:
    """The budget at ``fraction`` (in (0, 1]) of the way from the teacher to ``budget``, each
    absolute limit ``L`` becoming ``V * (L / V) ** fraction`` with ``V`` the teacher's figure (MACs
    per sample, parameter elements, ms, bytes). A limit the teacher already meets stays as it is,
    and so does a latency or memory limit whose teacher figure is unknown. ``fraction=1`` returns
    ``budget`` unchanged."""
    if fraction >= 1.0:
        return budget
    teacher = {"max_macs": teacher_macs, "max_params": teacher_params, "max_latency_ms": teacher_latency_ms,
               "max_memory_bytes": teacher_memory_bytes}
    upd = {}
    for name, v in teacher.items():
        limit = getattr(budget, name)
        if limit is None or v is None or v <= 0 or limit >= v:
            continue
        upd[name] = float(v * (limit / v) ** fraction)
    return dataclasses.replace(budget, **upd, spec=f"{budget.describe()} at {fraction:.2f} of the way")


def group_norm_regulariser(model: nn.Module, example_inputs, ignored: Sequence[nn.Module], *, reg: float,
                           plan: partial.PartialPlan | None, forward_fn=None) -> tp.pruner.GroupNormPruner:
    """Torch-Pruning's ``GroupNormPruner`` over ``model`` (L2 group norms, ``reg`` the
    regularisation strength; DepGraph §3.3), traced on ``example_inputs`` ``(B, C, H, W)`` and
    following ``plan``; call ``pruner.regularize(model)`` after each backward. ``ignored`` modules
    keep their output channels (the classifier), as in the prune.

    Raises:
        UnsupportedModelError: ``plan`` names a module ``model`` does not have.
    """
    return partial.meta_pruner(model, example_inputs, plan=plan, ignored_layers=list(ignored), forward_fn=forward_fn,
                               pruner_cls=tp.pruner.GroupNormPruner,
                               importance=tp.importance.GroupMagnitudeImportance(p=2), reg=reg)


def sparse_learning(ctx: StrategyContext, cfg: GPPruneConfig, model: nn.Module, classifier_name: str,
                    store: CheckpointStore, key: str) -> list[dict]:
    """Train ``model`` in place for ``sparse_epochs`` with group-norm regularisation
    (:func:`group_norm_regulariser`), resuming from the ``sparse`` epoch checkpoints under ``key``;
    returns the per-epoch history."""
    forward_fn = channel_rounding.TRACE_FORWARD.get()
    ignored_names = _ignored_names(model, classifier_name, cfg.prune.ignored_layers)
    modules = dict(model.named_modules())
    with ctx.phase("prepare"):
        plan = partial.scan_channel_ops(model, ctx.example_inputs, ignored_names, forward_fn=forward_fn,
                                        time_limit_s=ctx.trace_time_limit_s)
        try:
            with time_limit(ctx.trace_time_limit_s, "building Torch-Pruning's dependency graph (sparse learning)"):
                pruner = group_norm_regulariser(model, ctx.example_inputs, [modules[n] for n in ignored_names],
                                                reg=cfg.prune.sparse_reg, plan=plan, forward_fn=forward_fn)
        except (TimeLimitError, UnsupportedModelError):
            raise
        except Exception as exc:
            raise UnsupportedModelError(
                f"Torch-Pruning could not build the group-norm regulariser of {type(model).__name__} for "
                f"sparse learning: {type(exc).__name__}: {exc}. Set prune.sparse_epochs=0.",
                layer=type(model).__name__) from exc
    ctx.progress("sparse", 0, cfg.prune.sparse_epochs, {"reg": cfg.prune.sparse_reg})

    def on_epoch(epoch: int, rec: dict) -> None:
        ctx.log(phase="sparse", **rec)
        ctx.progress("sparse", epoch, cfg.prune.sparse_epochs, rec)

    hist = finetune(model, ctx.data.train, ctx.data.val, phase_settings(cfg.finetune, cfg.prune.sparse_epochs),
                    teacher=ctx.teacher, on_epoch=on_epoch, runtime=ctx.runtime, phase="sparse",
                    checkpoint=EpochCheckpoint(store, "sparse", key), after_backward=lambda: pruner.regularize(model))
    return [{"epoch": h["epoch"], "loss": h["loss"], "val_acc": h.get("val_acc")} for h in hist]
