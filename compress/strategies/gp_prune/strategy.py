"""Strategy ``gp-prune``: one-shot uniform channel pruning ranked by an expression-tree metric.

Source: Liu et al., "Evolving Transferable Neural Pruning Functions", GECCO'22
(docs/algorithms/gp-prune.md), §5 "Transfer pruning": a ready-made metric (default: the evolved
ξ* of Eq. 3) scores every channel, the same ratio of channels is removed from every prunable
layer in one shot (uniform pruning), and the pruned network is retrained. Our choices where the
paper is silent or we differ on purpose, each a config field:

* ratio: the paper fixes a ratio per experiment; we find the *smallest* uniform channel ratio
  that meets the budget by bisection on ``[0, prune.max_ratio]`` (``prune.bisection_steps`` halvings),
  each candidate measured through the budget oracle (fvcore MACs, params, and measured latency
  when the budget limits it);
* allocation (issue 19; not in the paper, config ``prune.allocation``): besides the paper's uniform
  ratio, ``"global"`` (one ranking across groups, DepGraph) and ``"latency"`` (HALP's knapsack on
  a per-layer latency table measured on the target), each bisected toward the budget the same
  way (``allocation.py``); ``"auto"`` picks ``"latency"`` for a budget in milliseconds;
* partial pruning (issue 19): groups Torch-Pruning cannot follow (channel shuffles, layers with
  channel-sized state it cannot see) are kept whole and reported, the rest is pruned
  (``_parts/partial_pruning.py``);
* channel surgery: Torch-Pruning's dependency graph removes channels physically across
  residual adds, depthwise convs and concats; the classifier's outputs are never pruned;
* CIFAR ResNets' parameter-free zero-padding shortcuts are first replaced by an equivalent
  fixed 1x1 convolution (checked numerically), which dependency graphs understand;
* retraining: KD from the teacher (CE + T^2-scaled KL), SGD Nesterov 0.9, wd 1e-4 (§5), cosine
  learning rate, best epoch chosen on the validation split (the released code picks it on the
  test set: docs/algorithms/gp-prune.md, choice 5);
* label-aware metrics see ``importance.calib_samples`` calibration images (paper: all training
  images) with feature maps pooled to at most ``importance.max_map_hw``² (see ``features.py``).

Checkpoints (when ``ctx.out_dir`` is set) under ``<out_dir>/checkpoints/gp-prune/``: ``pruned``
after the bisection (the pruned widths as JSON, the weights as tensors, the run history and RNG
states) and ``finetune`` at every fine-tune epoch boundary (model, optimizer, scheduler, best
weights, RNG states, history). A rerun with the same settings continues from the last complete
boundary and gives a bit-identical student and history; a changed fine-tune setting keeps the
pruned network and redoes only the fine-tune (unless the pruning phase itself fine-tunes, with
``prune.sparse_epochs`` or the iterative schedule's recoveries: then its key holds the
``finetune`` block those phases read, :func:`.config.key_config`).
"""

from __future__ import annotations

import copy
import difflib
import dataclasses

from torch import nn

from compress.errors import BudgetUnreachableError, ConfigError, TimeLimitError, UnsupportedModelError
from compress.data import collect
from compress.models import PadShortcut, describe_widths, pad_shortcuts_to_conv
from compress.models.blocks import block_scores, choose_blocks, drop_blocks, dropped_block_names, removable_blocks, stage_sizes
from compress.registry import register_strategy
from compress.strategies._parts import channel_rounding
from compress.strategies._parts.checkpoint import (
    CheckpointStore,
    EpochCheckpoint,
    loader_generators,
    stable_hash,
    state_fingerprint,
)
from compress.strategies._parts.training import finetune
from compress.strategies.base import Strategy, StrategyContext, StrategyOutput
from compress.strategies.config_tree import replace_config
from compress.strategies.gp_prune.allocation import resolve_allocation
from compress.strategies._parts import partial_pruning as partial
from compress.strategies.gp_prune.config import (
    _LIMITS,
    TP_L1,
    GPPruneConfig,
    key_config,
    phase_settings,
)
from compress.strategies.gp_prune.pruning import (
    _TRAIN_ONLY,
    MagnitudeBaseline,
    _ignored_names,
    _layer_widths,
    _rebuild_pruned,
    _rebuildable,
    _widths_markdown,
    find_classifier,
    forward_or_explain,
    prune_uniform,
    resolve_metric,
    train_only_modules,
)
from compress.strategies.gp_prune.features import collect_feature_maps
from compress.strategies.gp_prune.modes import prune_allocated_to_budget, prune_uniform_to_budget
from compress.strategies.gp_prune.report import ROUNDING_RULE, allocation_line
from compress.strategies.gp_prune.schedule import interpolated_budget, sparse_learning
from compress.strategies.gp_prune.search import LATENCY_MARGIN, VERIFY_NOISE_Z
from compress.strategies.gp_prune.importance import TreeImportance
from compress.evolution.metrics import MetricError

__all__ = ["GPPruneConfig", "GPPrune", "find_classifier", "prune_uniform", "forward_or_explain", "resolve_allocation"]


@register_strategy("gp-prune")
class GPPrune(Strategy):
    """One-shot channel pruning with an expression-tree importance (GECCO'22 §5, Eq. 3): uniform as
    in the paper, or allocated globally or by latency (config ``prune.allocation``).

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
        BudgetUnreachableError: even ``prune.max_ratio`` does not meet the budget.
        MetricError: the metric is unknown or returns non-finite scores.
    """

    config_cls = GPPruneConfig
    paper = "Liu et al., Evolving Transferable Neural Pruning Functions, GECCO 2022"
    shrinks_teacher = True

    @classmethod
    def demo_config(cls, epochs: int) -> dict:
        return {"finetune": {"epochs": epochs}}

    def run(self, ctx: StrategyContext) -> StrategyOutput:
        cfg: GPPruneConfig = self.config
        metric = None if cfg.importance.metric == TP_L1 else resolve_metric(cfg.importance.metric)
        model = ctx.model.eval()
        num_classes = ctx.data.spec.num_classes
        store = CheckpointStore.for_strategy(ctx.out_dir, "gp-prune")
        gens = loader_generators(train=ctx.data.train, val=ctx.data.val, calib=ctx.data.calib)
        prune_key = stable_hash({
            "config": key_config(cfg, ctx.budget),
            "seed": ctx.seed, "model": state_fingerprint(ctx.model), "budget": ctx.budget.describe(),
            "target": ctx.target.to_dict(),
            "data": ctx.data.to_dict()})
        with ctx.phase("prepare"):
            if any(isinstance(m, PadShortcut) for m in model.modules()):
                model = pad_shortcuts_to_conv(model)
            classifier = find_classifier(model, num_classes)
            classifier_name = next(n for n, m in model.named_modules() if m is classifier)
            names = [n for n, _ in model.named_modules() if n]
            unknown = [n for n in cfg.prune.ignored_layers if n not in names]
            if unknown:
                hints = {n: difflib.get_close_matches(n, names, n=3) for n in unknown}
                raise ConfigError(
                    "gp-prune config prune.ignored_layers names modules the model does not have: "
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
                                        "widths": describe_widths(best), "dropped_blocks": dropped_block_names(best),
                                        "trainable": {n: p.requires_grad for n, p in best.named_parameters()},
                                        "history": ctx.history},
                             {"weights": best.state_dict()}, key=prune_key, generators=gens)
            else:
                store = CheckpointStore(None)  # cannot rebuild this network from widths: no resume point

        with ctx.phase("finetune"):
            settings = cfg.finetune.settings()
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
                              f"Importance: `{formula}`; " + allocation_line(alloc_record, best_ratio, cfg)
                              + _depth_line(recipe.get("depth")) + "\n\n" + _widths_markdown(before, widths))],
            info={
                "metric": metric.name if metric is not None else TP_L1,
                "metric_expr": metric.expr if metric is not None else "torch_pruning.importance.MagnitudeImportance(p=1)",
                "pruning_ratio": best_ratio,
                "layer_widths": widths,
                "channel_rounding": {"mode": cfg.prune.channel_rounding, "groups": best_rounding,
                                     **({"rule": ROUNDING_RULE} if cfg.prune.channel_rounding == "measured" else {})},
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
        """Sparse learning (``prune.sparse_epochs``), then the one-shot prune or the iterative schedule
        (:mod:`.schedule`). Returns what :meth:`_prune` returns for the last step, with the pruning
        ratio as the share of the original prunable channels removed for an iterative run, and the
        recipe record (``info.recipe``: per phase its epochs and validation accuracies, per step its
        budget, ratio and cost). A killed run re-prunes its steps (deterministic for MACs and params
        budgets) and resumes each training phase from its epoch checkpoints."""
        recipe: dict = {"schedule": cfg.prune.schedule, "sparse_epochs": cfg.prune.sparse_epochs}
        if cfg.prune.sparse_epochs > 0:
            model = copy.deepcopy(model)
            with ctx.phase("sparse"):
                recipe["sparse"] = sparse_learning(ctx, cfg, model, classifier_name, store, key)
        if cfg.prune.drop_blocks > 0:
            with ctx.phase("prepare"):
                model, recipe["depth"] = self._drop_blocks(ctx, cfg, model)
        if cfg.prune.schedule == "one-shot":
            return (*self._prune(ctx, cfg, metric, model, classifier_name), recipe)
        k = cfg.prune.iterative_steps
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
            if i < k and cfg.prune.recovery_epochs > 0:
                with ctx.phase("recover"):
                    def on_epoch(epoch: int, rec: dict, i: int = i) -> None:
                        ctx.log(phase="recover", step=i, **rec)
                    hist = finetune(current, ctx.data.train, ctx.data.val,
                                    phase_settings(cfg.finetune, cfg.prune.recovery_epochs), teacher=ctx.teacher,
                                    on_epoch=on_epoch, runtime=ctx.runtime, phase=f"recover-{i}",
                                    checkpoint=EpochCheckpoint(store, f"recover-{i}", key))
                step["val_acc"] = [h.get("val_acc") for h in hist]
            ctx.log(phase="iterative", **{k_: v for k_, v in step.items() if k_ != "budget"})
            steps.append(step)
            ctx.progress("iterative", i, k, {"macs": cost.macs})
        recipe["steps"] = steps
        after = _layer_widths(current)
        ratio = 1.0 - sum(min(after.get(n, w), w) for n, w in before.items()) / max(1, sum(before.values()))
        return current, ratio, *out[2:], recipe

    @staticmethod
    def _drop_blocks(ctx: StrategyContext, cfg: GPPruneConfig, model: nn.Module) -> tuple[nn.Module, dict]:
        """Depth pruning (config ``prune.drop_blocks``, :mod:`compress.models.blocks`): score the
        identity-shortcut residual blocks on up to ``importance.calib_samples`` calibration images and
        remove the lowest ``drop_blocks`` share (each stage keeps one). Returns (a copy without
        them, the record for ``info.recipe.depth``)."""
        names = removable_blocks(model)
        record: dict = {"share": cfg.prune.drop_blocks, "removable": len(names), "removed": [],
                        "convs_before": sum(isinstance(m, nn.Conv2d) for m in model.modules())}
        if not names:
            record["note"] = ("no residual block with an identity shortcut of a known class (CIFAR, torchvision "
                              "or timm ResNet blocks): nothing removed")
            ctx.log(phase="depth", **record)
            return model, record
        x, _ = collect(ctx.data.calib or ctx.data.train, max_samples=cfg.importance.calib_samples)
        scores = block_scores(model, names, x)
        chosen = choose_blocks(scores, cfg.prune.drop_blocks, stage_sizes(model, names))
        small = drop_blocks(model, chosen)
        cost = ctx.cost(small)
        record.update(removed=chosen, scores={n: round(v, 6) for n, v in scores.items()},
                      convs_after=sum(isinstance(m, nn.Conv2d) for m in small.modules()),
                      macs=cost.macs, params=cost.params)
        ctx.log(phase="depth", **record)
        return small, record

    def _prune(self, ctx: StrategyContext, cfg: GPPruneConfig, metric, model: nn.Module,
               classifier_name: str) -> tuple[nn.Module, float, list[dict], dict | None, list[dict]]:
        """Calibrate, allocate and bisect toward the budget; returns (pruned network, pruning ratio,
        rounding log, allocation record or None for uniform, the groups kept whole: ``_parts/partial_pruning.py``).
        Groups Torch-Pruning cannot follow (channel shuffles) are kept whole from the start; when the
        prune still fails, the failing groups are found by group testing, kept whole, and the rest
        pruned. Only a budget that cannot be met without them is an :class:`UnsupportedModelError`."""
        with ctx.phase("prepare"):
            maps, labels = None, None
            if metric is not None and metric.needs_feature_maps:
                ctx.progress("calibrate", 0, 1, {"samples": cfg.importance.calib_samples})
                calib = ctx.data.calib or ctx.data.train
                maps, labels = collect_feature_maps(
                    model, calib, max_samples=cfg.importance.calib_samples, max_map_hw=cfg.importance.max_map_hw
                )
                ctx.progress("calibrate", 1, 1, {"samples": int(labels.numel())})
            importance = (
                TreeImportance(metric, model, maps, labels, cfg.importance.class_reduction)
                if metric is not None
                else MagnitudeBaseline()
            )
        allocation = resolve_allocation(cfg.prune.allocation, ctx.budget)
        ignored_names = _ignored_names(model, classifier_name, cfg.prune.ignored_layers)
        forward_fn = channel_rounding.TRACE_FORWARD.get()
        expected = (ctx.example_inputs.shape[0], ctx.data.spec.num_classes)
        with ctx.phase("prepare"):  # channel shuffles and reshapes Torch-Pruning cannot follow (_parts/partial_pruning.py)
            plan = partial.scan_channel_ops(model, ctx.example_inputs, ignored_names, forward_fn=forward_fn,
                                            time_limit_s=ctx.trace_time_limit_s)

        def attempt() -> tuple[nn.Module, float, list[dict], dict | None]:
            if allocation == "uniform":
                return (*prune_uniform_to_budget(ctx, cfg, importance, model, classifier_name), None)
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
            out = self._prune_allocated(ctx, cfg, importance, model, classifier_name, allocation)
        except BudgetUnreachableError as exc:
            first = exc
        else:
            return self._latency_guard(ctx, cfg, importance, model, classifier_name, allocation, out)
        tried = [{"allocation": allocation, "max_group_ratio": cfg.prune.max_group_ratio, "why": str(first)}]
        if cfg.prune.max_group_ratio < cfg.prune.max_ratio:
            relaxed = replace_config(cfg, prune={"max_group_ratio": cfg.prune.max_ratio})
            ctx.log(phase="allocation", fallback="max_group_ratio", max_group_ratio=cfg.prune.max_ratio, why=str(first))
            try:
                best, ratio, rounding, record = self._prune_allocated(ctx, relaxed, importance, model,
                                                                      classifier_name, allocation)
                record["fallback"] = {"used": "max_group_ratio raised to max_ratio", "tried": tried}
                return self._latency_guard(ctx, cfg, importance, model, classifier_name, allocation,
                                           (best, ratio, rounding, record))
            except BudgetUnreachableError as exc:
                tried.append({"allocation": allocation, "max_group_ratio": cfg.prune.max_ratio, "why": str(exc)})
        ctx.log(phase="allocation", fallback="uniform", why=tried[-1]["why"])
        try:
            best, ratio, rounding = prune_uniform_to_budget(ctx, cfg, importance, model, classifier_name)
        except BudgetUnreachableError:
            raise first from None
        return best, ratio, rounding, {"mode": "uniform", "requested": allocation,
                                       "fallback": {"used": "uniform allocation", "tried": tried}}

    def _latency_guard(self, ctx: StrategyContext, cfg: GPPruneConfig, importance, model: nn.Module,
                       classifier_name: str, allocation: str,
                       out: tuple[nn.Module, float, list[dict], dict]) -> tuple[nn.Module, float, list[dict], dict]:
        """``latency_guard``: with ``allocation="latency"`` under a budget that does not limit latency,
        prune uniformly to the same budget too, time both students side by side
        (``ctx.latency_ratio_fn``) and keep the uniform one when it is faster by more than the
        margin (max(:data:`~.search.LATENCY_MARGIN`, :data:`~.search.VERIFY_NOISE_Z` standard errors
        of the ratio)). ``record["guard"]`` holds the measured ratio, the margin and the choice. Returns ``out`` or
        the uniform student's (network, ratio, rounding log, record)."""
        if (not cfg.prune.latency_guard or allocation != "latency" or ctx.budget.needs_latency
                or ctx.latency_ratio_fn is None):
            return out
        best, ratio, rounding, record = out
        try:
            u_best, u_ratio, u_rounding = prune_uniform_to_budget(ctx, cfg, importance, model, classifier_name)
        except BudgetUnreachableError as exc:
            record["guard"] = {"choice": "latency", "why": f"uniform pruning cannot meet the budget: {exc}"}
            return out
        with ctx.phase("prune"):
            r = ctx.latency_ratio_fn(u_best, best)  # uniform / latency, side by side
        margin = max(LATENCY_MARGIN, VERIFY_NOISE_Z * getattr(r, "rel_se", 0.0))
        use_uniform = float(r) < 1.0 - margin
        guard = {"uniform_over_latency": float(r), "rel_se": getattr(r, "rel_se", 0.0), "margin": margin,
                 "choice": "uniform" if use_uniform else "latency",
                 "rule": "keep uniform when its side-by-side latency ratio to the knapsack's student is under "
                         "1 - margin"}
        ctx.log(phase="allocation", guard=guard["choice"], uniform_over_latency=float(r), margin=margin)
        if not use_uniform:
            record["guard"] = guard
            return out
        return u_best, u_ratio, u_rounding, {"mode": "uniform", "requested": allocation, "guard": guard,
                                             "latency_record": {k: v for k, v in record.items() if k != "groups"}}

    def _prune_allocated(self, ctx: StrategyContext, cfg: GPPruneConfig, importance, model: nn.Module,
                         classifier_name: str, allocation: str) -> tuple[nn.Module, float, list[dict], dict]:
        """``allocation="global"`` or ``"latency"`` pruned to the budget
        (:func:`~.modes.prune_allocated_to_budget`); a method, so that :meth:`_prune_with_fallback`
        retries through whatever the class holds."""
        return prune_allocated_to_budget(ctx, cfg, importance, model, classifier_name, allocation)


def _depth_line(depth: dict | None) -> str:
    """The report's sentence on depth pruning (config ``prune.drop_blocks``); empty when off."""
    if not depth:
        return ""
    if not depth["removed"]:
        return f" Depth pruning ({100 * depth['share']:.0f}%): {depth.get('note', 'no block removed')}."
    return (f" Depth pruning removed {len(depth['removed'])} of {depth['removable']} identity-shortcut blocks "
            f"({', '.join(f'`{n}`' for n in depth['removed'])}): {depth['convs_before']} -> {depth['convs_after']} "
            "convolutions; layers of removed blocks are absent from the table.")
