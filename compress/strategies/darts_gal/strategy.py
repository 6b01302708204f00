"""Strategy ``darts-gal``: DARTS cells, stacked to the budget, pruned node by node with GAL, retrained.

Source: Zhang, Waqas, Shen, Liu, Zhang, Li, Halim, Chen, "A neural network architecture optimizer
based on DARTS and generative adversarial learning", Information Sciences 581 (2021) 448-468;
implementation notes in docs/algorithms/darts-gal.md (GAL details from the GAL
reference code, Lin et al. CVPR 2019).

Pipeline (paper Fig. 1):

1. **Genotype** (§3.1): a DARTS search of the normal and reduction cells on a train/val split of
   the user's training data (:mod:`.search`; first order by default, second order and PC-DARTS
   options) -- or a published genotype (the paper reuses DARTS_V2 for MNIST/FMNIST/CIFAR-10).
   Issue 18: ``search.arch_reference_steps`` scales Adam's alpha step to the search's own step count
   (the ``cpu-small`` preset sets DARTS' 19,550; without it alpha stayed at ln 8 on digits), and a
   latency-aware run (``objective="latency"``, or ``"auto"`` with a latency budget) adds the
   expected latency of the mixed ops to the architecture loss (``search.arch_latency_weight``). What the
   search did is report key ``search`` (``alpha_entropy`` per epoch, ``plan``, ``objective``).
2. **Sizing + baseline** (§3.2): ``(C, cells)`` of the stacked ``NetworkCIFAR`` (reductions at 1/3
   and 2/3 of the depth, no auxiliary head) chosen by measuring a grid through ``ctx.check``: the
   most capacity within ``sizing.size_margin`` x the budget. The stack is trained with KD from the teacher.
3. **GAL** (§3.3, Eq. 4-7; :mod:`.gal`): a soft mask per intermediate node of every cell, an MLP
   discriminator on softmax outputs, adversarial + data (MSE to the baseline) + L1 losses, 5 D
   steps per G step, masks driven to exact zeros by the FISTA proximal step. Nodes whose mask is 0
   are physically removed with their edges and output channels (:mod:`.prune`).
   **Lambda** (issue 18): with ``gal.sparse_lambda=None`` (default) lambda is searched toward the
   budget -- each probe a GAL run on a fresh copy of the baseline, pruned and measured, lambda
   grown or shrunk by ``gal.lambda_growth`` until the budget is bracketed, then bisected geometrically,
   until the binding budget ratio lies in ``[1 - gal.lambda_search_tolerance, 1]`` or
   ``gal.lambda_search_probes`` probes ran (:func:`.gal_phase.lambda_search`; report key
   ``gal.lambda_search``). Each cell's masks are kept in units of its strongest node
   (``gal.mask_scale="cell"``, :meth:`~compress.strategies.darts_gal.gal.GALTrainer.fix_mask_scale`), so
   the removed-node count grows gradually with lambda. With a latency budget (or
   ``objective="latency"``) node j's L1 weight is its predicted latency share
   (:func:`.latency.node_latency_weights`; report key ``gal.penalty``).
   **Closing loop**: if the pruned net is over budget (only possible with ``sizing.size_margin > 1``), GAL
   continues with a larger lambda, then the smallest masks are zeroed one at a time.
4. **Retrain** (§3.4): the pruned architecture from scratch (paper) or fine-tuned (GAL), with KD.

Checkpoints under ``<out_dir>/checkpoints/darts-gal/`` (shared ``CheckpointStore``: atomic JSON +
tensors, RNG states, the run history) after every search, baseline and retrain epoch and at the end
of the baseline, GAL and retrain phases; each is guarded by a hash of the sub-configs that shape
it (and of the phases before it), so a killed run resumes bit-identically from the last boundary
and a changed setting recomputes only what it affects. GAL itself resumes from its phase start.

Documented deviations / resolutions (docs/algorithms/darts-gal.md, choices):

* the discriminator outputs a logit and the sigmoid is applied once (GAL code: twice);
* log-loss GAN (Eq. 5) with 5 critic steps per generator step by default; ``gan="wgan"`` switches to
  the Wasserstein critic with weight clipping (the paper names it without details);
* masks start at 1 and the generator at the baseline's weights, so G == B at step 0;
* FISTA uses the gradient at the current masks (as GAL's code), every ``gal.mask_step`` G steps;
* D sees softmax outputs (paper); the data loss compares logits (GAL code) and is divided by the
  baseline's mean squared logit norm (``gal.data_scale``) so that lambda does not depend on the logit
  scale; the generator's weight gradient is clipped at norm 5 (``gal.grad_clip``; GAL: none) --
  without both, SGD at the paper's lr 0.01 diverged on DARTS stacks here;
* a GAL epoch is one generator pass over the data; the 5 critic batches per generator step come
  from a second seeded stream; G's BatchNorm statistics are re-estimated after GAL;
* the L1 term acts on masks in units of each cell's strongest node (``gal.mask_scale="cell"``), not on
  the absolute masks of Eq. 7: the BatchNorm that follows every cell cancels a common factor of its
  masks, so the absolute term shrank a cell's masks together (all-or-nothing, measured);
* lambda is searched toward the budget unless ``gal.sparse_lambda`` is given (the paper gives none);
* a cell whose masks all reach 0 keeps its strongest node (``gal.keep_nonempty``): the paper's empty
  ("None") cells output a constant that ``CellSpec`` cannot express;
* reduction positions follow the standard ``layers//3, 2*layers//3`` rule for every sized depth
  (the only rule that reproduces the paper's 0.13 M / 0.37 M counts, docs/algorithms/darts-space.md);
* the baseline and the retrain use the task loaders' batch size (paper: 128) and KD from the
  user's teacher (the paper trains on labels only); the retrain is from scratch by default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from compress.budgets import BudgetCheck, Cost
from compress.registry import register_strategy
from compress.strategies.base import Strategy, StrategyContext, StrategyOutput
from compress.strategies.darts.configs import DARTSTrainConfig
from compress.strategies.darts.genotype import Genotype
from compress.strategies.darts.model import NetworkCIFAR, build_from_arch
from compress.strategies.darts.sizing import size_to_budget
from compress.strategies.darts.supernet_search import dataset_of
from compress.strategies.darts_gal.checkpoints import PhaseStore, phase_key
from compress.strategies.darts_gal.config import PRESETS, STRATEGY, DartsGalConfig, resolve_genotype
from compress.strategies.darts_gal.gal_phase import budget_ratio, gal_settings, lambda_search, run_gal
from compress.strategies.darts_gal.latency import latency_aware, latency_table, node_latency_weights
from compress.strategies.darts_gal.prune import draw_genotype, nodes_kept_markdown
from compress.strategies.darts_gal.search import DartsSearch
from compress.training import EpochCheckpoint, evaluate, finetune
from compress.training.data import derive_seed

__all__ = ["DartsGal", "STRATEGY", "gal_settings", "budget_ratio", "node_latency_weights"]

CheckFn = Callable[[nn.Module], "tuple[Cost, BudgetCheck, float | None]"]
#: a phase's checkpoint key under its earlier name here (tests import it from this module)
_hash = phase_key


# --------------------------------------------------------------------------- helpers


def _loader(ds: Dataset, batch_size: int, seed: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
                      num_workers=0)


def _margin_check(ctx: StrategyContext, margin: float) -> CheckFn:
    """``ctx.check`` against every budget limit multiplied by ``margin`` (1 = the budget itself)."""
    if margin == 1.0:
        return ctx.check
    b = ctx.budget
    scaled = dataclasses.replace(
        b, max_macs=None if b.max_macs is None else b.max_macs * margin,
        max_params=None if b.max_params is None else b.max_params * margin,
        max_latency_ms=None if b.max_latency_ms is None else b.max_latency_ms * margin)

    def check(m: nn.Module) -> tuple[Cost, BudgetCheck, float | None]:
        cost, _chk, lat = ctx.check(m)
        return cost, scaled.check(cost, latency_ms=lat), lat

    return check


# --------------------------------------------------------------------------- strategy


@register_strategy(STRATEGY)
class DartsGal(Strategy):
    """DARTS search -> budget-sized stack -> GAL node pruning -> KD retrain (Information Sciences 2021).

    Input: the teacher (``ctx.teacher``, used for KD only) and the task; the user's architecture is
    not reused. Output: a pruned :class:`~compress.strategies.darts.model.NetworkCIFAR`
    ``(B, C, H, W) -> (B, K)`` that meets ``ctx.budget`` (rebuilt by :meth:`build_student`).

    Raises:
        BudgetUnreachableError: no (C, cells) candidate fits (``sizing.size_margin`` x) the budget, or the
            closing loop cannot prune into it.
        DataError: the training split is too small.
        ConfigError: invalid config.
    """

    config_cls = DartsGalConfig
    paper = ("Zhang, Waqas, Shen, Liu, Zhang, Li, Halim, Chen, A neural network architecture optimizer based on "
             "DARTS and generative adversarial learning, Information Sciences 581 (2021)")

    @classmethod
    def demo_config(cls, epochs: int) -> dict[str, Any]:
        """The CPU preset (docs/algorithms/darts-gal.md, CPU profile), nested; ``epochs`` raises the
        retrain's ``final.epochs`` (never below the preset's)."""
        small = PRESETS["cpu-small"]
        return {**small, "final": {**small["final"], "epochs": max(int(epochs), small["final"]["epochs"])}}

    @classmethod
    def build_student(cls, arch: dict[str, Any]) -> nn.Module:
        """Rebuild the pruned network (fresh weights) from ``NetworkCIFAR.arch_dict()``."""
        return build_from_arch(arch)

    # ------------------------------------------------------------------ run
    def run(self, ctx: StrategyContext) -> StrategyOutput:
        cfg: DartsGalConfig = self.config
        spec = ctx.data.spec
        K, in_shape = int(spec.num_classes), tuple(int(v) for v in spec.input_shape)
        store = PhaseStore(None if ctx.out_dir is None else Path(ctx.out_dir) / "checkpoints" / STRATEGY)
        train_ds = dataset_of(ctx.data.train, STRATEGY)
        batch = int(getattr(ctx.data.train, "batch_size", None) or 64)
        resumed: list[str] = []
        extra = {"seed": ctx.seed, "n_train": len(train_ds), "num_classes": K,  # type: ignore[arg-type]
                 "input_shape": list(in_shape)}

        # ---- stage 1: genotype
        # latency-aware (issue 18, part 4): the search's expected-latency term and GAL's weighted L1 share
        # the target's per-layer table, timed once (and cached on disk)
        table = latency_table(ctx) if latency_aware(ctx, cfg) else None
        latency_search = table is not None and resolve_genotype(cfg.search.genotype) is None
        if latency_search:  # the table's target keys the search: a latency-aware search is another search
            extra = {**extra, "latency_target": ctx.target.to_dict()}
        h_search = phase_key(cfg, "search", extra, latency_search=latency_search)
        with ctx.phase("search"):
            genotype, search = self._genotype(ctx, cfg, train_ds, K, in_shape, h_search, store,
                                              table if latency_search else None)
        if search.get("resumed_from_epoch") and search["resumed_from_epoch"] == cfg.search.epochs:
            resumed.append("search")

        # ---- stage 2: sizing + baseline
        h_base = phase_key(cfg, "baseline", {"prev": h_search, "genotype": genotype.to_dict(),
                                         "budget": ctx.budget.to_dict(), "batch": batch})
        loaded = store.load("baseline", h_base, ctx)
        if loaded is not None:
            st, tensors = loaded
            baseline = build_from_arch(st["arch"])
            baseline.load_state_dict(tensors["weights"])
            sizing, base_hist = st["sizing"], st["history"]
            resumed.append("baseline")
        else:
            with ctx.phase("sizing"):
                sizing = self._size(ctx, cfg, genotype, K, in_shape)
            with ctx.phase("baseline"):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed(ctx.seed, "baseline-init"))
                    baseline = NetworkCIFAR(sizing["C"], K, sizing["layers"], genotype, in_channels=in_shape[0],
                                            stem_stride=sizing["stem_stride"])
                base_hist = self._train(ctx, baseline, train_ds, batch, "baseline", cfg.baseline,
                                        EpochCheckpoint(store.store, "baseline-epochs", h_base))
            store.save("baseline", h_base, {"arch": baseline.arch_dict(), "sizing": sizing, "history": base_hist},
                       {"weights": baseline.state_dict()}, ctx)
        baseline.eval()
        base_cost, _chk, base_lat = ctx.check(baseline)
        base_val = evaluate(baseline, ctx.data.val)

        # ---- stage 3: GAL + closing loop
        h_gal = phase_key(cfg, "gal", {"prev": h_base})
        loaded = store.load("gal", h_gal, ctx)
        if loaded is not None:
            gal, tensors = loaded
            pruned = build_from_arch(gal["arch"])
            pruned.load_state_dict(tensors["weights"])
            resumed.append("gal")
        else:
            with ctx.phase("gal"):
                gal, pruned = run_gal(ctx, cfg, baseline, train_ds, K, store, h_gal, table=table)
            store.save("gal", h_gal, gal, {"weights": pruned.state_dict()}, ctx)

        # ---- stage 4: retrain
        h_final = phase_key(cfg, "retrain", {"prev": h_gal})
        loaded = store.load("retrain", h_final, ctx)
        if loaded is not None:
            st, tensors = loaded
            student = build_from_arch(st["arch"])
            student.load_state_dict(tensors["weights"])
            retrain_hist = st["history"]
            resumed.append("retrain")
        else:
            with ctx.phase("retrain"):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed(ctx.seed, "student-init"))
                    student = build_from_arch(pruned.arch_dict())
                if cfg.retrain == "finetune":
                    student.load_state_dict(pruned.state_dict())
                retrain_hist = self._train(ctx, student, train_ds, batch, "retrain", cfg.final,
                                           EpochCheckpoint(store.store, "retrain-epochs", h_final))
            store.save("retrain", h_final, {"arch": student.arch_dict(), "history": retrain_hist},
                       {"weights": student.state_dict()}, ctx)
        student.eval()

        rows = gal["nodes_kept"]
        info: dict[str, Any] = {
            "nodes_kept_markdown": nodes_kept_markdown(rows),
            "nodes_kept": rows,
            "nodes_total": gal["nodes_total"],
            "nodes_removed": gal["nodes_removed"],
            "genotype_drawing": draw_genotype(genotype),
            "genotype": genotype.to_dict(),
            "genotype_json": genotype.to_json(),
            "genotype_source": search["source"],
            "baseline": {**sizing, "params": int(base_cost.params), "macs": int(base_cost.macs),
                         "latency_ms": base_lat, "val_acc": base_val},
            "pruned": gal["pruned"],
            "gal": {k: gal[k] for k in ("lambda", "lambda_sweep", "rounds", "closing_loop", "d_steps", "g_steps",
                                        "mask_updates", "final_masks", "exact", "lambda_search", "penalty")
                    if k in gal},
            "gal_history": [{k: v for k, v in r.items() if k != "masks"} for r in gal["history"]],
            "pruned_cells_drawing": gal["drawing"],
            "search": search["search"],
            "search_history": search["history"],
            "search_wall_s": search["wall_s"],
            "baseline_history": base_hist,
            "retrain_history": retrain_hist,
            "resumed_phases": resumed,
            "student_arch": student.arch_dict(),
        }
        b = info["baseline"]
        sections = [
            ("Nodes kept per cell (GAL; the paper's Table 1/3/5 format)",
             f"Stacked baseline before pruning: C={b.get('C')}, {b.get('layers')} cells, {b['params']:,} params, "
             f"{b['macs']:,} MACs.\n\n" + info["nodes_kept_markdown"]),
            (f"Genotype ({search['source']})", "```text\n" + info["genotype_drawing"].rstrip() + "\n```"),
            ("Cells after pruning", "```text\n" + str(gal["drawing"]).rstrip() + "\n```"),
        ]
        return StrategyOutput(student=student, info=info, arch=student.arch_dict(), report_sections=sections)

    # ------------------------------------------------------------------ stages
    #: stage 3's lambda search, still reachable as the method it was
    _lambda_search = staticmethod(lambda_search)

    def _genotype(self, ctx: StrategyContext, cfg: DartsGalConfig, train_ds: Dataset, K: int,
                  in_shape: tuple[int, ...], h_search: str, store: PhaseStore,
                  table: Any = None) -> tuple[Genotype, dict[str, Any]]:
        """The genotype and the search's record; ``record["search"]`` becomes report.json's ``search``
        (issue 18, as eg-nas': ``alpha_entropy`` per epoch in nats, mean over the edges of both cell
        types; ``alpha_entropy_uniform`` = ln |O|; ``plan``: alpha steps and the Adam step in use;
        ``objective``; ``genotype_stability`` None: darts-gal runs one search). A published genotype:
        no search, empty entropies."""
        fixed = resolve_genotype(cfg.search.genotype)
        if fixed is not None:
            source = cfg.search.genotype if len(cfg.search.genotype) < 40 else "json"
            return fixed, {"source": source, "history": [], "wall_s": 0.0, "resumed_from_epoch": 0,
                           "search": {"source": source, "alpha_entropy": [], "alpha_entropy_uniform": None,
                                      "genotype_stability": None, "stability_seeds": [], "plan": {},
                                      "objective": None, "latency_weight": None, "expected_latency_ms": None,
                                      "params_weight": None, "expected_params": None}}
        search = DartsSearch(cfg, train_ds, ctx.data.val, K, in_shape, ctx.seed,  # type: ignore[arg-type]
                             ckpt_dir=store.dir, config_hash=h_search, progress=ctx.progress, log=ctx.log,
                             runtime=ctx.runtime, latency_table=table)
        if table is not None:
            table.save()
        out = search.run()
        hist = [{k: v for k, v in r.items() if k != "genotype"} for r in out.history]
        term = search.latency_term
        info = {
            "source": "search",
            "alpha_entropy": [h["alpha_entropy"] for h in out.history],
            "alpha_entropy_uniform": math.log(search.num_ops),
            "genotype_stability": None,
            "stability_seeds": [],
            "plan": dict(out.plan),
            "objective": "latency" if term is not None else "size",
            "latency_weight": cfg.search.arch_latency_weight if term is not None else None,
            "expected_latency_ms": None if term is None else {
                "uniform": term.reference_ms,
                "final": float(term.expected_ms(out.alphas_normal.double(), out.alphas_reduce.double()))},
            "params_weight": cfg.search.arch_params_weight if search.params_term is not None else None,
            "expected_params": None if search.params_term is None else {
                "uniform": search.params_term.reference_ms,
                "final": float(search.params_term.expected_params(out.alphas_normal.double(),
                                                                  out.alphas_reduce.double()))},
        }
        return out.genotype, {"source": "search", "history": hist, "wall_s": out.wall_s,
                              "resumed_from_epoch": out.resumed_from_epoch, "search": info,
                              "final_alphas": {"normal": out.alphas_normal.tolist(),
                                               "reduce": out.alphas_reduce.tolist()}}

    def _size(self, ctx: StrategyContext, cfg: DartsGalConfig, genotype: Genotype, K: int,
              in_shape: tuple[int, ...]) -> dict[str, Any]:
        done = [0]

        def on_trial(rec: dict[str, Any]) -> None:
            done[0] += 1
            ctx.log(phase="sizing", **rec)
            ctx.progress("sizing", done[0], None, {"C": rec["C"], "layers": rec["layers"], "ok": rec["ok"]})

        sz = cfg.sizing
        sized = size_to_budget(genotype, _margin_check(ctx, sz.size_margin), K, in_shape, sz.candidates_C,
                               sz.candidates_layers, stem_strides=sz.stem_strides, capacity=sz.capacity,
                               on_trial=on_trial)
        return {"C": sized.C, "layers": sized.layers, "stem_stride": sized.stem_stride, "size_margin": sz.size_margin,
                "sized_macs": int(sized.cost.macs), "sized_params": int(sized.cost.params),
                "trials": sized.trials}

    def _train(self, ctx: StrategyContext, net: NetworkCIFAR, train_ds: Dataset, batch: int, phase: str,
               block: DARTSTrainConfig, checkpoint: EpochCheckpoint | None = None) -> list[dict[str, Any]]:
        """KD training of ``net`` (baseline or retrain) by its block (``cfg.baseline`` / ``cfg.final``:
        every field of it, through :meth:`~compress.strategies.config_tree.FinetuneConfig.settings`) with
        a seeded loader and the drop-path ramp (over ``block.epochs``, the cap when ``block.time_s`` is
        set); with ``checkpoint``, every epoch boundary is committed and a rerun continues from it."""
        epochs = block.epochs
        if epochs == 0:
            net.eval()
            return []
        settings = block.settings(seed=derive_seed(ctx.seed, phase, "augment"), keep_best=True)
        gen = torch.Generator().manual_seed(derive_seed(ctx.seed, phase, "drop-path"))
        for cell in net.cells:
            cell.generator = gen
        net.drop_path_prob = 0.0
        ctx.progress(phase, 0, epochs, {})

        def on_epoch(epoch: int, rec: dict) -> None:
            net.drop_path_prob = block.drop_path * epoch / epochs if epoch < epochs else 0.0
            ctx.log(phase=phase, **rec)
            ctx.progress(phase, epoch, epochs, rec)

        loader = _loader(train_ds, batch, derive_seed(ctx.seed, phase, "loader"))
        if checkpoint is not None:
            checkpoint.generators["drop-path"] = gen
        hist = finetune(net, loader, ctx.data.val, settings, teacher=ctx.teacher, on_epoch=on_epoch,
                        checkpoint=checkpoint, runtime=ctx.runtime)
        net.drop_path_prob = 0.0
        for cell in net.cells:
            cell.generator = None
        return [{"phase": phase, **h} for h in hist]
