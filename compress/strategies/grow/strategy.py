"""Strategy ``grow``: SEArch, a student that grows under the teacher's guidance until the budget.

Source: "SEArch: a self-evolving framework for network architecture optimization" (ICLR 2024
submission; later Liang, Xiang, Li, Neurocomputing 651, 2025), and docs/algorithms/grow.md. One run:

1. **Partition** the teacher along its longest input -> final-map path into ``v̂_1 .. v̂_m``
   (§3.1; :mod:`.partition`).
2. **Start** from ``G_1 = v1 -> v2`` (image -> final feature map, ``q = (1, m)``) plus a
   classifier head (:mod:`.student`). If ``G_1`` already exceeds the budget:
   :class:`BudgetUnreachableError`.
3. **Loop** (§3.2-3.4), iteration ``z``:

   * training stage on ``D_train`` (the first ``1 - growth.score_fraction`` of a seeded split of
     the train loader's dataset), ``stage.epochs`` epochs of SGD on
     ``L = L_cls + growth.inner_weight * L_inner`` (Eq. 4), ``L_inner = mean_v R_inner(v)`` over the
     supervised nodes (Eq. 3; the input node is not a learned map and is left out),
     ``R_inner`` through ``f_a`` (Eq. 1-2, :mod:`.attention`). ``L_cls`` also distils the
     teacher's logits: ``L_cls = (1 - kd_alpha) CE + kd_alpha T^2 KL(teacher || student)``
     (Hinton KD, :func:`kd_loss`; default ``stage.kd_alpha = 0.5``, ``T = 4``; ``kd_alpha = 0`` is the
     paper's plain CE). Learning rate constant within a stage (the paper's "step scheduler" has
     no published steps and the stages are short);
   * bottleneck identification on ``D_val`` (the other part of the split): ``Rbar`` per node,
     ``S`` (Eq. 5), closest precursor (:mod:`.selection`);
   * edge splitting on a copy: deepen (1 -> 4 -> 7 units) until ``B_op``, then widen (Eq. 6);
     weights are inherited and the new parts are function-preserving;
   * the copy is measured by the budget oracle ``ctx.check`` (params, MACs, measured latency);
     over budget -> it is discarded and growth stops (docs/algorithms/grow.md, choice 11). Growth also stops
     after ``growth.max_iterations`` (a safety cap the paper does not have; it saw 24-47 iterations).

4. **Final retrain** on the whole train split: re-initialised (``final.reinit``, NAS
   convention, docs/algorithms/grow.md, choice 9) and trained ``final.epochs`` with ``final.loss``:
   ``"kd"`` (default: Hinton KD from ``ctx.teacher`` through the shared ``finetune`` loop, best
   epoch on the validation split), ``"kd+inner"`` (keep the teacher-guided loss ``L``,
   the algorithm notes' recommendation, docs/algorithms/grow.md) or ``"ce"``.

Every growth iteration is logged (``ctx.log``: node, edge, op, S and Rbar per node, params,
MACs, latency, validation accuracy, the DOT drawing of the new graph) and checkpointed under
``ctx.out_dir/checkpoints/grow`` (structure JSON + tensors, RNG states and the run history),
as is every epoch of the final retrain (every ``final.loss``); a killed run resumes from the
last boundary when the config, seed, teacher partition and data sizes match, bit-identically.

Every training phase (the stages and the final retrain) runs on the training runtime
(:func:`compress.training.fit`, ``ctx.runtime``'s device and precision); so do the scoring and
validation passes. Between them the student, the attention bank and the teacher live on the CPU
in float32: graph surgery, the budget oracle and export run there.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import random
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from compress.errors import BudgetUnreachableError, DataError
from compress.registry import register_strategy
from compress.strategies.base import Strategy, StrategyContext, StrategyOutput, config_to_dict
from compress.strategies.grow.checkpoints import _Checkpoints, run_key
from compress.strategies.grow.config import FINAL_LOSSES, SPLIT_POLICIES, GrowConfig
from compress.strategies.grow.growth import _Pricer, _ranking, apply_decision, build_initial
from compress.strategies.grow.partition import FeatureExtractor, TeacherPartition, partition_teacher
from compress.strategies.grow.report import _report_sections
from compress.strategies.grow.selection import choose_split, modification_scores, random_split
from compress.strategies.grow.student import GrowStudent, Structure
from compress.strategies.grow.training import AttentionBank, _fit_grow, _placed, score_nodes, train_stage
from compress.training import EpochCheckpoint, evaluate, finetune
from compress.training.checkpoint import loader_generators

# moved to the package's other modules; importable from here as before (tests import and patch them)
from compress.strategies.grow.checkpoints import CHECKPOINT_FORMAT  # noqa: F401
from compress.strategies.grow.config import _PRESETS, OBJECTIVES  # noqa: F401
from compress.strategies.grow.growth import LATENCY_TIMING, _width  # noqa: F401
from compress.strategies.grow.training import _GrowObjective, _supervised, grow_loss  # noqa: F401

__all__ = ["GrowConfig", "Grow", "AttentionBank", "split_indices", "train_stage", "score_nodes", "apply_decision",
           "FINAL_LOSSES", "SPLIT_POLICIES"]


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
        return config_to_dict(GrowConfig.preset("cpu-small", final={"epochs": epochs}))

    @classmethod
    def build_student(cls, arch: dict) -> GrowStudent:
        """Rebuild the grown student's architecture from ``{"structure": Structure.to_dict()}``."""
        return GrowStudent.from_dict(arch["structure"])

    def run(self, ctx: StrategyContext) -> StrategyOutput:
        cfg: GrowConfig = self.config
        growth = cfg.growth
        seed = int(ctx.seed)
        num_classes = ctx.data.spec.num_classes
        with ctx.phase("partition"):
            partition = partition_teacher(ctx.teacher, ctx.example_inputs,
                                          granularity=cfg.partition.teacher_granularity,
                                          nodes=cfg.partition.teacher_nodes)
            extractor = FeatureExtractor(partition).eval()
            d_train, d_score = self._split_loaders(ctx, cfg, seed)

        ckpt = _Checkpoints(ctx.out_dir if cfg.checkpoint else None,
                            run_key(cfg, seed=seed, teacher=partition.signature(), budget=ctx.budget.describe(),
                                    sizes=[len(d_train.dataset), len(d_score.dataset)], classes=num_classes))

        student = build_initial(partition, num_classes, cfg, seed=_derive(seed, "init"))
        attn = AttentionBank(growth.attention)
        attn.sync(student.structure, partition)
        start, stop_reason, phase, records, resumed = 0, None, "grow", [], None
        restored = ckpt.load()
        if restored is not None:
            state, tensors = restored.state, restored.tensors
            student = GrowStudent(Structure.from_dict(state["structure"])).eval()
            student.load_state_dict(tensors["student"])
            attn = AttentionBank(growth.attention)
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
                if growth.max_iterations is not None and z >= growth.max_iterations:
                    stop_reason, phase = "max_iterations", "grown"
                    break
                stage_seed = _derive(seed, "stage", z)
                d_train.generator.manual_seed(stage_seed)  # data order depends on (seed, iteration) only
                losses = train_stage(student, attn, extractor, d_train, cfg, epochs=cfg.stage.epochs, lr=cfg.stage.lr,
                                     seed=stage_seed, max_steps=cfg.stage.max_steps_per_epoch,
                                     phase=f"grow stage (iteration {z + 1})", checkpoint_dir=ckpt.dir,
                                     runtime=ctx.runtime)
                with _placed(ctx.runtime, student):
                    val_acc = evaluate(student, ctx.data.val, runtime=ctx.runtime)
                if growth.split_policy == "score":
                    rbar = score_nodes(student, attn, extractor, d_score, cfg, max_batches=growth.score_max_batches,
                                       runtime=ctx.runtime)
                    scores = modification_scores(student.structure, rbar, deg_factor=growth.deg_factor,
                                                 head_counts=growth.sink_head_counts)
                    per = _ranking(cfg, ctx)
                    if per is None:
                        decision = choose_split(student.structure, scores, b_op=growth.b_op, deepen_step=growth.deepen_step,
                                                c=growth.c, adjacent=growth.adjacent_widen)
                    else:
                        if pricer is None:
                            pricer = _Pricer(ctx)
                        decision, priced = pricer.choose(student, scores, partition, cfg, per,
                                                         seed=_derive(seed, "units", z))
                        ranking = {"per": per, "candidates": [p.to_dict() for p in priced]}
                else:
                    rbar, scores = {}, {}
                    decision = random_split(student.structure, random.Random(_derive(seed, "random", z)),
                                            b_op=growth.b_op, deepen_step=growth.deepen_step, c=growth.c)
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
                ctx.progress("grow", z, growth.max_iterations, {
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
            "final_retrain": {"loss": cfg.final.loss, "reinit": cfg.final.reinit, "epochs": cfg.final.epochs,
                              "history": final_hist},
            "resumed": resumed,
            "ranking": {"per": _ranking(cfg, ctx), "objective": growth.objective,
                        "candidates_priced": growth.rank_candidates},
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
        tr, sc = split_indices(n, cfg.growth.score_fraction, seed)
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
        """Final retrain on the whole train split (``cfg.final``: every field of the fine-tune block
        acts with every ``loss``) on ``ctx.runtime``, best
        epoch on the validation split, one ``checkpoint`` per epoch (a killed run resumes after
        the last committed epoch, bit-identically, ``"kd+inner"`` included). Returns the per-epoch
        history (restored epochs included)."""
        if cfg.final.reinit:
            student.reset_parameters(seed=_derive(seed, "final-init"))
            attn = AttentionBank(cfg.growth.attention)
            attn.sync(student.structure, partition)
        if cfg.final.epochs == 0:
            return []
        hist: list[dict] = []

        def on_epoch(epoch: int, rec: dict) -> None:
            rec = {"phase": "final_retrain", **rec}
            hist.append(rec)
            ctx.log(**rec)
            ctx.progress("final retrain", epoch, cfg.final.epochs, {"val_acc": rec.get("val_acc")})

        runtime = ctx.runtime
        final = cfg.final
        if final.loss in ("kd", "ce"):
            no_kd = {"kd_alpha": 0.0} if final.loss == "ce" else {}
            settings = final.settings(seed=_derive(seed, "final"), **no_kd)
            finetune(student, Grow._full_train_loader(ctx, seed), ctx.data.val, settings,
                     teacher=ctx.teacher if final.loss == "kd" else None, on_epoch=on_epoch,
                     checkpoint=checkpoint, runtime=runtime)
            return hist
        # "kd+inner": keep Eq. 4 (with the logit KD term) for the retrain, cosine LR, best epoch on val,
        # a checkpoint per epoch (the validation loader's generator, if any, is part of it)
        val = ctx.data.val
        if checkpoint is not None and val is not None:
            checkpoint = dataclasses.replace(checkpoint, generators={**loader_generators(val=val),
                                                                     **checkpoint.generators})
        _fit_grow(student, attn, extractor, Grow._full_train_loader(ctx, seed), cfg,
                  final.settings(seed=_derive(seed, "final")), cosine=True,
                  use_kd=True, runtime=runtime, phase="grow final retrain (kd+inner)",
                  validate=(lambda: evaluate(student, val, runtime=runtime)) if val is not None else None,
                  keep_best=True, checkpoint=checkpoint, checkpoint_key={"final_loss": "kd+inner", "format": "fit/1"},
                  on_epoch=on_epoch)
        return hist
