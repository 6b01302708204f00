"""Strategy ``darts-gal``: DARTS cells, stacked to the budget, pruned node by node with GAL, retrained.

Source: Zhang, Waqas, Shen, Liu, Zhang, Li, Halim, Chen, "A neural network architecture optimizer
based on DARTS and generative adversarial learning", Information Sciences 581 (2021) 448-468;
implementation notes in docs/algorithms/darts-gal.md (GAL details from the GAL
reference code, Lin et al. CVPR 2019).

Pipeline (paper Fig. 1):

1. **Genotype** (§3.1): a DARTS search of the normal and reduction cells on a train/val split of
   the user's training data (:mod:`.search`; first order by default, second order and PC-DARTS
   options) -- or a published genotype (the paper reuses DARTS_V2 for MNIST/FMNIST/CIFAR-10).
   Issue 18: ``arch_reference_steps`` scales Adam's alpha step to the search's own step count
   (the ``cpu-small`` preset sets DARTS' 19,550; without it alpha stayed at ln 8 on digits), and a
   latency-aware run (``objective="latency"``, or ``"auto"`` with a latency budget) adds the
   expected latency of the mixed ops to the architecture loss (``arch_latency_weight``). What the
   search did is report key ``search`` (``alpha_entropy`` per epoch, ``plan``, ``objective``).
2. **Sizing + baseline** (§3.2): ``(C, cells)`` of the stacked ``NetworkCIFAR`` (reductions at 1/3
   and 2/3 of the depth, no auxiliary head) chosen by measuring a grid through ``ctx.check``: the
   most capacity within ``size_margin`` x the budget. The stack is trained with KD from the teacher.
3. **GAL** (§3.3, Eq. 4-7; :mod:`.gal`): a soft mask per intermediate node of every cell, an MLP
   discriminator on softmax outputs, adversarial + data (MSE to the baseline) + L1 losses, 5 D
   steps per G step, masks driven to exact zeros by the FISTA proximal step. Nodes whose mask is 0
   are physically removed with their edges and output channels (:mod:`.prune`).
   **Lambda** (issue 18): with ``sparse_lambda=None`` (default) lambda is searched toward the
   budget -- each probe a GAL run on a fresh copy of the baseline, pruned and measured, lambda
   grown or shrunk by ``lambda_growth`` until the budget is bracketed, then bisected geometrically,
   until the binding budget ratio lies in ``[1 - lambda_search_tolerance, 1]`` or
   ``lambda_search_probes`` probes ran (:meth:`DartsGal._lambda_search`; report key
   ``gal.lambda_search``). Each cell's masks are kept in units of its strongest node
   (``mask_scale="cell"``, :meth:`~compress.strategies.darts_gal.gal.GALTrainer.fix_mask_scale`), so
   the removed-node count grows gradually with lambda. With a latency budget (or
   ``objective="latency"``) node j's L1 weight is its predicted latency share
   (:func:`node_latency_weights`; report key ``gal.penalty``).
   **Closing loop**: if the pruned net is over budget (only possible with ``size_margin > 1``), GAL
   continues with a larger lambda, then the smallest masks are zeroed one at a time.
4. **Retrain** (§3.4): the pruned architecture from scratch (paper) or fine-tuned (GAL), with KD.

Checkpoints under ``<out_dir>/checkpoints/darts-gal/`` (shared ``CheckpointStore``: atomic JSON +
tensors, RNG states, the run history) after every search, baseline and retrain epoch and at the end
of the baseline, GAL and retrain phases; each is guarded by a hash of the config fields that shape
it (and of the phases before it), so a killed run resumes bit-identically from the last boundary
and a changed setting recomputes only what it affects. GAL itself resumes from its phase start.

Documented deviations / resolutions (docs/algorithms/darts-gal.md, choices):

* the discriminator outputs a logit and the sigmoid is applied once (GAL code: twice);
* log-loss GAN (Eq. 5) with 5 critic steps per generator step by default; ``gan="wgan"`` switches to
  the Wasserstein critic with weight clipping (the paper names it without details);
* masks start at 1 and the generator at the baseline's weights, so G == B at step 0;
* FISTA uses the gradient at the current masks (as GAL's code), every ``mask_step`` G steps;
* D sees softmax outputs (paper); the data loss compares logits (GAL code) and is divided by the
  baseline's mean squared logit norm (``data_scale``) so that lambda does not depend on the logit
  scale; the generator's weight gradient is clipped at norm 5 (``gal_grad_clip``; GAL: none) --
  without both, SGD at the paper's lr 0.01 diverged on DARTS stacks here;
* a GAL epoch is one generator pass over the data; the 5 critic batches per generator step come
  from a second seeded stream; G's BatchNorm statistics are re-estimated after GAL;
* the L1 term acts on masks in units of each cell's strongest node (``mask_scale="cell"``), not on
  the absolute masks of Eq. 7: the BatchNorm that follows every cell cancels a common factor of its
  masks, so the absolute term shrank a cell's masks together (all-or-nothing, measured);
* lambda is searched toward the budget unless ``sparse_lambda`` is given (the paper gives none);
* a cell whose masks all reach 0 keeps its strongest node (``keep_nonempty``): the paper's empty
  ("None") cells output a constant that ``CellSpec`` cannot express;
* reduction positions follow the standard ``layers//3, 2*layers//3`` rule for every sized depth
  (the only rule that reproduces the paper's 0.13 M / 0.37 M counts, docs/algorithms/darts-space.md);
* the baseline and the retrain use the task loaders' batch size (paper: 128) and KD from the
  user's teacher (the paper trains on labels only); the retrain is from scratch by default.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from compress.budgets import BudgetCheck, Cost
from compress.errors import BudgetUnreachableError
from compress.profiling import latency_model
from compress.registry import register_strategy
from compress.strategies.base import Strategy, StrategyContext, StrategyOutput
from compress.strategies.darts.genotype import Genotype
from compress.strategies.darts.model import NetworkCIFAR, build_from_arch
from compress.strategies.darts.sizing import size_to_budget
from compress.strategies.darts.supernet_search import dataset_of
from compress.strategies.darts_gal.config import PRESETS, DartsGalConfig, phase_config, resolve_genotype
from compress.strategies.darts_gal.gal import GALSettings, GALTrainer, attach_masks, mask_values
from compress.strategies.darts_gal.prune import (
    draw_cell,
    draw_genotype,
    kept_nodes,
    node_count,
    nodes_kept_markdown,
    nodes_kept_rows,
    prune_network,
)
from compress.strategies.darts_gal.search import DartsSearch
from compress.training import CheckpointStore, EpochCheckpoint, FinetuneSettings, evaluate, finetune
from compress.training.checkpoint import stable_hash
from compress.training.data import derive_seed

__all__ = ["DartsGal", "STRATEGY", "gal_settings", "budget_ratio", "node_latency_weights"]

STRATEGY = "darts-gal"
#: timing of the per-layer latency table behind the latency-weighted penalty (rounds, repeats, warmup)
LATENCY_TIMING = {"rounds": 3, "repeats": 5, "warmup": 2}
CheckFn = Callable[[nn.Module], "tuple[Cost, BudgetCheck, float | None]"]


# --------------------------------------------------------------------------- helpers


def _hash(cfg: DartsGalConfig, phase: str, extra: dict[str, Any], *, latency_search: bool = False) -> str:
    """A phase's checkpoint key: its config entries (:func:`phase_config`; issue 18's search fields at
    their defaults left out, so earlier checkpoints still resume) and ``extra``."""
    d = phase_config(cfg, phase, latency_search=latency_search)
    return stable_hash({"phase": phase, "config": d, **extra})


def _loader(ds: Dataset, batch_size: int, seed: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
                      num_workers=0)


class _Store:
    """Phase checkpoints ``<phase>.json`` + ``<phase>.0.pt`` in the shared :class:`CheckpointStore`
    (atomic pair, RNG states); each also keeps the run history up to its boundary."""

    def __init__(self, directory: Path | None) -> None:
        self.store = CheckpointStore(directory)
        self.dir = self.store.dir

    def load(self, phase: str, config_hash: str, ctx: StrategyContext) -> tuple[dict[str, Any], Any] | None:
        """(state, tensors) of a phase written with ``config_hash``, or None; sets ``ctx.history``
        and the RNGs to the boundary's. Raises CheckpointError when corrupt."""
        restored = self.store.load(phase, key=config_hash)
        if restored is None:
            return None
        ctx.history[:] = restored.state["run_history"]
        restored.restore_rng()
        return restored.state["data"], restored.tensors

    def save(self, phase: str, config_hash: str, state: dict[str, Any], tensors: Any, ctx: StrategyContext) -> None:
        self.store.commit(phase, {"data": state, "run_history": ctx.history}, tensors, key=config_hash)


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


def gal_settings(cfg: DartsGalConfig, lam: float, seed: int, *, epochs: int | None = None,
                 mask_weights: tuple[tuple[float, ...], ...] | None = None) -> GALSettings:
    """The :class:`GALSettings` of a config at sparsity ``lam`` (``epochs``: None = ``gal_epochs``;
    ``mask_weights``: per-node L1 weights, None = 1)."""
    return GALSettings(
        epochs=cfg.gal_epochs if epochs is None else int(epochs), mask_scale=cfg.mask_scale, mask_weights=mask_weights,
        batch_size=cfg.gal_batch_size, lr=cfg.gal_lr, momentum=cfg.gal_momentum,
        weight_decay=cfg.gal_weight_decay, lr_step_epochs=cfg.gal_lr_step_epochs, lr_gamma=cfg.gal_lr_gamma,
        max_g_steps_per_epoch=cfg.gal_max_g_steps_per_epoch, n_critic=cfg.n_critic, gan=cfg.gan,
        wgan_clip=cfg.wgan_clip, d_input=cfg.d_input, d_hidden=cfg.d_hidden, d_activation=cfg.d_activation,
        bn=cfg.gal_bn, data_input=cfg.data_input, data_scale=cfg.data_scale, grad_clip=cfg.gal_grad_clip,
        d_init_std=cfg.d_init_std,
        d_lr=cfg.d_lr, d_momentum=cfg.d_momentum, d_weight_decay=cfg.d_weight_decay, mu=cfg.mu, lam=lam,
        mask_lr=cfg.mask_lr, mask_step=cfg.mask_step, mask_init=cfg.mask_init, l1_in_gradient=cfg.l1_in_gradient,
        seed=seed,
    )


def _cost_dict(cost: Cost, lat: float | None) -> dict[str, Any]:
    return {"macs": int(cost.macs), "params": int(cost.params), "latency_ms": lat}


def budget_ratio(budget: Any, cost: Cost, latency_ms: float | None) -> float:
    """The binding ``cost / limit`` of an absolute budget: the largest of ``params / max_params``,
    ``macs / max_macs`` and ``latency_ms / max_latency_ms`` over the limits it sets (<= 1: met).
    The lambda search aims it into ``[1 - tolerance, 1]``.

    Raises:
        BudgetUnreachableError: the budget sets none of these limits (memory only), or names latency
            and no latency was measured.
    """
    ratios = []
    if budget.max_params is not None:
        ratios.append(float(cost.params) / max(float(budget.max_params), 1e-12))
    if budget.max_macs is not None:
        ratios.append(float(cost.macs) / max(float(budget.max_macs), 1e-12))
    if budget.max_latency_ms is not None:
        if latency_ms is None:
            raise BudgetUnreachableError("darts-gal's lambda search needs a measured latency for a latency budget; "
                                         "give a target that can time the network, or set sparse_lambda.")
        ratios.append(float(latency_ms) / max(float(budget.max_latency_ms), 1e-12))
    if not ratios:
        raise BudgetUnreachableError(
            f"darts-gal's lambda search needs a params, MACs or latency limit, budget {budget.describe()!r} has none; "
            "set sparse_lambda to fix lambda instead.")
    return max(ratios)


def node_latency_weights(net: NetworkCIFAR, example_inputs: torch.Tensor, table: Any,
                         floor: float = 0.05) -> tuple[tuple[float, ...], ...]:
    """Per-node L1 weights of the latency-weighted GAL penalty (issue 18, part 4).

    Node ``j`` of cell ``c`` is charged the predicted latency of the convolutions on its in-edges
    (modules ``cells.c.edges.n{j+2}_*``), each from ``table.latency(ConvConfig)`` at the input size it
    sees for ``example_inputs`` ``(B, C, H, W)`` -- what removing the node saves. Its consumers'
    1x1 preprocess columns and the pools/skips are not charged. The weights are divided by their
    mean over the live nodes, floored at ``floor`` (a node of skips and pools still costs something),
    and divided by their mean again, so that the mean weight is 1 and lambda keeps its scale.
    Removed nodes (``None``) get weight 0.

    Args:
        net: the baseline (read only). example_inputs: ``(B, C, H, W)``.
        table: anything with ``latency(cfg) -> ms`` (a
            :class:`~compress.profiling.latency_model.LayerLatencyTable` on the target).
        floor: smallest weight as a fraction of the mean, in ``[0, 1]``.

    Returns:
        one tuple of ``steps`` weights per cell.

    Raises:
        ProfilingError: the table cannot time a layer.
    """
    configs = latency_model.layer_configs(net, example_inputs)
    raw: list[list[float | None]] = []
    for c, cell in enumerate(net.cells):
        row: list[float | None] = []
        for j, node in enumerate(cell.spec.nodes):
            if node is None:
                row.append(None)
                continue
            prefix = f"cells.{c}.edges.n{j + 2}_"
            row.append(float(sum(table.latency(cfg) for name, cfg in configs if name.startswith(prefix))))
        raw.append(row)
    live = [v for row in raw for v in row if v is not None]
    mean = sum(live) / len(live) if live else 0.0
    if mean <= 0.0:
        return tuple(tuple(0.0 if v is None else 1.0 for v in row) for row in raw)
    floored = [[None if v is None else max(v / mean, floor) for v in row] for row in raw]
    live_f = [v for row in floored for v in row if v is not None]
    mean_f = sum(live_f) / len(live_f)
    return tuple(tuple(0.0 if v is None else v / mean_f for v in row) for row in floored)


# --------------------------------------------------------------------------- strategy


@register_strategy(STRATEGY)
class DartsGal(Strategy):
    """DARTS search -> budget-sized stack -> GAL node pruning -> KD retrain (Information Sciences 2021).

    Input: the teacher (``ctx.teacher``, used for KD only) and the task; the user's architecture is
    not reused. Output: a pruned :class:`~compress.strategies.darts.model.NetworkCIFAR`
    ``(B, C, H, W) -> (B, K)`` that meets ``ctx.budget`` (rebuilt by :meth:`build_student`).

    Raises:
        BudgetUnreachableError: no (C, cells) candidate fits (``size_margin`` x) the budget, or the
            closing loop cannot prune into it.
        DataError: the training split is too small.
        ConfigError: invalid config.
    """

    config_cls = DartsGalConfig
    paper = ("Zhang, Waqas, Shen, Liu, Zhang, Li, Halim, Chen, A neural network architecture optimizer based on "
             "DARTS and generative adversarial learning, Information Sciences 581 (2021)")

    @classmethod
    def demo_config(cls, epochs: int) -> dict[str, Any]:
        """The CPU preset (docs/algorithms/darts-gal.md, CPU profile); ``epochs`` raises the final retrain (never below the preset)."""
        small = PRESETS["cpu-small"]
        return {**small, "final_epochs": max(int(epochs), small["final_epochs"])}

    @classmethod
    def build_student(cls, arch: dict[str, Any]) -> nn.Module:
        """Rebuild the pruned network (fresh weights) from ``NetworkCIFAR.arch_dict()``."""
        return build_from_arch(arch)

    # ------------------------------------------------------------------ run
    def run(self, ctx: StrategyContext) -> StrategyOutput:
        cfg: DartsGalConfig = self.config
        spec = ctx.data.spec
        K, in_shape = int(spec.num_classes), tuple(int(v) for v in spec.input_shape)
        store = _Store(None if ctx.out_dir is None else Path(ctx.out_dir) / "checkpoints" / STRATEGY)
        train_ds = dataset_of(ctx.data.train, STRATEGY)
        batch = int(getattr(ctx.data.train, "batch_size", None) or 64)
        resumed: list[str] = []
        extra = {"seed": ctx.seed, "n_train": len(train_ds), "num_classes": K,  # type: ignore[arg-type]
                 "input_shape": list(in_shape)}

        # ---- stage 1: genotype
        # latency-aware (issue 18, part 4): the search's expected-latency term and GAL's weighted L1 share
        # the target's per-layer table, timed once (and cached on disk)
        table = self._latency_table(ctx) if self._latency_aware(ctx, cfg) else None
        latency_search = table is not None and resolve_genotype(cfg.genotype) is None
        if latency_search:  # the table's target keys the search: a latency-aware search is another search
            extra = {**extra, "latency_target": ctx.target.to_dict()}
        h_search = _hash(cfg, "search", extra, latency_search=latency_search)
        with ctx.phase("search"):
            genotype, search = self._genotype(ctx, cfg, train_ds, K, in_shape, h_search, store,
                                              table if latency_search else None)
        if search.get("resumed_from_epoch") and search["resumed_from_epoch"] == cfg.search_epochs:
            resumed.append("search")

        # ---- stage 2: sizing + baseline
        h_base = _hash(cfg, "baseline", {"prev": h_search, "genotype": genotype.to_dict(),
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
                base_hist = self._train(ctx, baseline, train_ds, batch, "baseline", cfg.baseline_epochs,
                                        cfg.baseline_lr, cfg.baseline_momentum, cfg.baseline_weight_decay,
                                        cfg.baseline_max_steps_per_epoch, EpochCheckpoint(store.store, "baseline-epochs", h_base))
            store.save("baseline", h_base, {"arch": baseline.arch_dict(), "sizing": sizing, "history": base_hist},
                       {"weights": baseline.state_dict()}, ctx)
        baseline.eval()
        base_cost, _chk, base_lat = ctx.check(baseline)
        base_val = evaluate(baseline, ctx.data.val)

        # ---- stage 3: GAL + closing loop
        h_gal = _hash(cfg, "gal", {"prev": h_base})
        loaded = store.load("gal", h_gal, ctx)
        if loaded is not None:
            gal, tensors = loaded
            pruned = build_from_arch(gal["arch"])
            pruned.load_state_dict(tensors["weights"])
            resumed.append("gal")
        else:
            with ctx.phase("gal"):
                gal, pruned = self._gal(ctx, cfg, baseline, train_ds, K, store, h_gal, table=table)
            store.save("gal", h_gal, gal, {"weights": pruned.state_dict()}, ctx)

        # ---- stage 4: retrain
        h_final = _hash(cfg, "retrain", {"prev": h_gal})
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
                retrain_hist = self._train(ctx, student, train_ds, batch, "retrain", cfg.final_epochs, cfg.final_lr,
                                           cfg.final_momentum, cfg.final_weight_decay, cfg.final_max_steps_per_epoch,
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
    @staticmethod
    def _latency_aware(ctx: StrategyContext, cfg: DartsGalConfig) -> bool:
        """``objective="latency"``, or ``"auto"`` with a budget that names latency."""
        return cfg.objective == "latency" or (cfg.objective == "auto" and ctx.budget.needs_latency)

    @staticmethod
    def _latency_table(ctx: StrategyContext) -> Any:
        """The target's per-layer latency table (cached on disk under the strategy's name)."""
        return latency_model.LayerLatencyTable(ctx.target, cache_dir=Path(latency_model.default_cache_dir()) / STRATEGY,
                                               **LATENCY_TIMING)

    def _genotype(self, ctx: StrategyContext, cfg: DartsGalConfig, train_ds: Dataset, K: int,
                  in_shape: tuple[int, ...], h_search: str, store: _Store,
                  table: Any = None) -> tuple[Genotype, dict[str, Any]]:
        """The genotype and the search's record; ``record["search"]`` becomes report.json's ``search``
        (issue 18, as eg-nas': ``alpha_entropy`` per epoch in nats, mean over the edges of both cell
        types; ``alpha_entropy_uniform`` = ln |O|; ``plan``: alpha steps and the Adam step in use;
        ``objective``; ``genotype_stability`` None: darts-gal runs one search). A published genotype:
        no search, empty entropies."""
        fixed = resolve_genotype(cfg.genotype)
        if fixed is not None:
            source = cfg.genotype if len(cfg.genotype) < 40 else "json"
            return fixed, {"source": source, "history": [], "wall_s": 0.0, "resumed_from_epoch": 0,
                           "search": {"source": source, "alpha_entropy": [], "alpha_entropy_uniform": None,
                                      "genotype_stability": None, "stability_seeds": [], "plan": {},
                                      "objective": None, "latency_weight": None, "expected_latency_ms": None}}
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
            "latency_weight": cfg.arch_latency_weight if term is not None else None,
            "expected_latency_ms": None if term is None else {
                "uniform": term.reference_ms,
                "final": float(term.expected_ms(out.alphas_normal.double(), out.alphas_reduce.double()))},
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

        sized = size_to_budget(genotype, _margin_check(ctx, cfg.size_margin), K, in_shape, cfg.candidates_C,
                               cfg.candidates_layers, stem_strides=cfg.stem_strides, capacity=cfg.capacity,
                               on_trial=on_trial)
        return {"C": sized.C, "layers": sized.layers, "stem_stride": sized.stem_stride, "size_margin": cfg.size_margin,
                "sized_macs": int(sized.cost.macs), "sized_params": int(sized.cost.params),
                "trials": sized.trials}

    def _train(self, ctx: StrategyContext, net: NetworkCIFAR, train_ds: Dataset, batch: int, phase: str, epochs: int,
               lr: float, momentum: float, wd: float, max_steps: int | None,
               checkpoint: EpochCheckpoint | None = None) -> list[dict[str, Any]]:
        """KD training of ``net`` (baseline or retrain) with a seeded loader and drop-path ramp;
        with ``checkpoint``, every epoch boundary is committed and a rerun continues from it."""
        cfg: DartsGalConfig = self.config
        if epochs == 0:
            net.eval()
            return []
        settings = FinetuneSettings(epochs=epochs, lr=lr, momentum=momentum, weight_decay=wd, kd_alpha=cfg.kd_alpha,
                                    kd_temperature=cfg.kd_temperature, optimizer="sgd", keep_best=True,
                                    max_steps_per_epoch=max_steps, augment=cfg.augment,
                                    seed=derive_seed(ctx.seed, phase, "augment"))
        gen = torch.Generator().manual_seed(derive_seed(ctx.seed, phase, "drop-path"))
        for cell in net.cells:
            cell.generator = gen
        net.drop_path_prob = 0.0
        ctx.progress(phase, 0, epochs, {})

        def on_epoch(epoch: int, rec: dict) -> None:
            net.drop_path_prob = cfg.drop_path * epoch / epochs if epoch < epochs else 0.0
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

    def _gal(self, ctx: StrategyContext, cfg: DartsGalConfig, baseline: NetworkCIFAR, train_ds: Dataset,
             K: int, store: "_Store | None" = None, h_gal: str = "",
             table: Any = None) -> tuple[dict[str, Any], NetworkCIFAR]:
        """GAL at the searched lambda (``sparse_lambda=None``, :meth:`_lambda_search`), at the given
        ``sparse_lambda``, or for each lambda of ``lambda_sweep`` (the candidate whose removed fraction
        is closest to ``target_prune_fraction`` wins); each followed by the closing loop. Returns the
        JSON state and the pruned network (masks off, pruned weights)."""
        total_nodes = node_count(baseline)
        weights, penalty = self._mask_weights(ctx, cfg, baseline, table)
        search: dict[str, Any] | None = None
        if cfg.lambda_sweep:
            lambdas = cfg.lambda_sweep
            candidates = [self._gal_one(ctx, cfg, baseline, train_ds, K, lam0, total_nodes,
                                        tag=f"gal[{n}]" if len(lambdas) > 1 else "gal", weights=weights)
                          for n, lam0 in enumerate(lambdas)]
        elif cfg.sparse_lambda is not None:
            candidates = [self._gal_one(ctx, cfg, baseline, train_ds, K, cfg.sparse_lambda, total_nodes, tag="gal",
                                        weights=weights)]
        else:
            search = self._lambda_search(ctx, cfg, baseline, train_ds, K, weights, store, h_gal)
            trainer = search.pop("_trainer")
            threshold_only = search.pop("_threshold_only")
            candidates = [self._gal_one(ctx, cfg, baseline, train_ds, K, search["lambda"], total_nodes, tag="gal",
                                        weights=weights, trainer=trainer, history=search.pop("_history"),
                                        lambda_rounds=not threshold_only)]
        best = min(range(len(candidates)),
                   key=lambda i: (abs(candidates[i]["removed_fraction"] - cfg.target_prune_fraction), i))
        chosen = candidates[best]
        G, keep = chosen.pop("_G"), chosen.pop("_keep")
        for c in candidates:
            c.pop("_G", None)
            c.pop("_keep", None)
        plain = prune_network(G, keep, keep_masks=False).net
        masks = mask_values(G)
        rows = nodes_kept_rows(G, keep, masks)
        drawing = "\n\n".join(draw_cell(cell.spec, f"cell {i + 1} ({'reduction' if cell.spec.reduction else 'normal'})")
                              for i, cell in enumerate(plain.cells))
        state = {
            "arch": plain.arch_dict(), "lambda": chosen["lambda"],
            "lambda_sweep": [{k: v for k, v in c.items() if k not in ("history",)} for c in candidates],
            "rounds": chosen["rounds"], "closing_loop": chosen["closing_loop"], "d_steps": chosen["d_steps"],
            "g_steps": chosen["g_steps"], "mask_updates": chosen["mask_updates"], "final_masks": masks,
            "exact": chosen["exact"], "nodes_kept": rows, "nodes_total": total_nodes,
            "nodes_removed": chosen["removed"], "pruned": chosen["pruned"], "history": chosen["history"],
            "drawing": drawing, "penalty": penalty,
        }
        if search is not None:  # where the pruned network (after any closing loop) sits against the budget
            pc = chosen["pruned"]
            final = budget_ratio(ctx.budget, Cost(macs=pc["macs"], params=pc["params"]), pc["latency_ms"])
            state["lambda_search"] = {**search, "final_ratio": final,
                                      "final_within_tolerance": bool(1.0 - search["tolerance"] <= final <= 1.0)}
        return state, plain.eval()

    def _mask_weights(self, ctx: StrategyContext, cfg: DartsGalConfig, baseline: NetworkCIFAR,
                      table: Any = None) -> tuple[tuple[tuple[float, ...], ...] | None, dict[str, Any]]:
        """Per-node L1 weights (None: plain ``||m||_1``) and their report entry: latency-weighted when
        ``objective="latency"``, or ``"auto"`` and the budget names latency (:func:`node_latency_weights`
        on the target's per-layer table ``table``, else one made here, timed once and cached)."""
        if not self._latency_aware(ctx, cfg):
            return None, {"objective": "size", "weights": None}
        if table is None:
            table = self._latency_table(ctx)
        weights = node_latency_weights(baseline, ctx.example_inputs, table, cfg.latency_weight_floor)
        table.save()
        return weights, {"objective": "latency", "weights": [list(r) for r in weights],
                         "floor": cfg.latency_weight_floor, "target": ctx.target.to_dict()}

    def _lambda_search(self, ctx: StrategyContext, cfg: DartsGalConfig, baseline: NetworkCIFAR, train_ds: Dataset,
                       K: int, weights: tuple[tuple[float, ...], ...] | None, store: "_Store | None",
                       h_gal: str) -> dict[str, Any]:
        """Search lambda toward the budget, as gp-prune bisects its ratio (issue 18, part 2).

        Each probe is a GAL run of ``lambda_probe_epochs`` on a fresh copy of the baseline, pruned and
        measured by ``ctx.check``; its binding ratio ``r`` (:func:`budget_ratio`) decides the next
        lambda: ``r > 1`` (over budget) -> larger, ``r < 1 - tol`` (pruned too much) -> smaller; x or /
        ``lambda_growth`` until both sides are seen, then the geometric mean of the bracket. It stops
        at the first ``r`` in ``[1 - tol, 1]`` or after ``lambda_search_probes`` probes. Without a probe
        in the window it keeps the probe least over the budget and zeroes its smallest masks one at a
        time until the budget is met (the closing loop without its lambda rounds; measured on digits:
        5 probes ended at ratios 1.06 and 0.68 around the window), else the probe with the largest
        ``r <= 1`` (none at all: the smallest ``r``, then the full closing loop). Every probe is committed as checkpoint ``gal-probe-<n>``, so a killed run re-uses
        the finished probes (their generator; a closing-loop round after a resume starts a fresh
        discriminator).

        Returns:
            the report entry (``probes``: lambda, params, MACs, latency, nodes and masks removed, ratio
            per probe) with ``_trainer`` (the kept probe's :class:`GALTrainer`, or None when the probes
            were shorter than ``gal_epochs``) and ``_history``.
        """
        tol = cfg.lambda_search_tolerance
        epochs = cfg.lambda_probe_epochs or cfg.gal_epochs
        seed = derive_seed(ctx.seed, "gal")
        probes: list[dict[str, Any]] = []
        kept: tuple[int, GALTrainer, list[dict[str, Any]]] | None = None
        fallback: tuple[int, GALTrainer, list[dict[str, Any]]] | None = None
        over: tuple[int, GALTrainer, list[dict[str, Any]]] | None = None  # least over the budget
        lo: float | None = None  # largest lambda seen over the budget
        hi: float | None = None  # smallest lambda seen pruning below 1 - tol
        lam = float(cfg.lambda_search_start)
        ctx.progress("lambda-search", 0, cfg.lambda_search_probes, {})
        for n in range(cfg.lambda_search_probes):
            settings = gal_settings(cfg, lam, seed, epochs=epochs, mask_weights=weights)
            key = stable_hash({"prev": h_gal, "probe": n, "lambda": lam})
            loaded = store.load(f"gal-probe-{n}", key, ctx) if store is not None else None
            if loaded is not None:
                rec, tensors = loaded
                G = copy.deepcopy(baseline)
                G.drop_path_prob = 0.0
                attach_masks(G)
                G.load_state_dict(tensors["G"])
                trainer = GALTrainer(baseline, train_ds, K, settings, generator_net=G, progress=ctx.progress,
                                     log=ctx.log, phase_name="gal", runtime=ctx.runtime)
                history = list(rec.pop("_history"))
                trainer.g_steps, trainer.d_steps, trainer.fista.steps = (int(v) for v in rec.pop("_steps"))
                rec = {**rec, "resumed": True}
            else:
                trainer = GALTrainer(baseline, train_ds, K, settings, progress=ctx.progress, log=ctx.log,
                                     phase_name=f"gal-probe[{n}]", runtime=ctx.runtime)
                history = list(trainer.run().history)
                keep = kept_nodes(trainer.G, threshold=cfg.mask_threshold, keep_nonempty=cfg.keep_nonempty)
                pr = prune_network(trainer.G, keep, keep_masks=False)
                cost, chk, lat = ctx.check(pr.net)
                zero = sum(1 for row in mask_values(trainer.G) for v in row if v <= cfg.mask_threshold)
                rec = {"probe": n, "lambda": lam, "epochs": epochs, **_cost_dict(cost, lat),
                       "nodes_removed": int(pr.removed), "masks_removed": int(zero),
                       "ratio": budget_ratio(ctx.budget, cost, lat), "ok": bool(chk.ok)}
                if store is not None:
                    store.save(f"gal-probe-{n}", key, {**rec, "_history": history,
                                                              "_steps": [trainer.g_steps, trainer.d_steps,
                                                                         trainer.fista.steps]},
                               {"G": trainer.G.state_dict()}, ctx)
                rec = {**rec, "resumed": False}
            probes.append(rec)
            ctx.log(phase="lambda-search", **rec)
            ctx.progress("lambda-search", n + 1, cfg.lambda_search_probes,
                         {"lambda": lam, "ratio": rec["ratio"], "removed": rec["nodes_removed"]})
            r = rec["ratio"]
            if r <= 1.0 and (kept is None or r > probes[kept[0]]["ratio"]):
                kept = (n, trainer, history)
            if fallback is None or r < probes[fallback[0]]["ratio"]:
                fallback = (n, trainer, history)
            if r > 1.0 and (over is None or r < probes[over[0]]["ratio"]):
                over = (n, trainer, history)
            if 1.0 - tol <= r <= 1.0:
                break
            if r > 1.0:
                lo = lam if lo is None else max(lo, lam)
            else:
                hi = lam if hi is None else min(hi, lam)
            lam = math.sqrt(lo * hi) if lo is not None and hi is not None else (
                lam * cfg.lambda_growth if hi is None else lam / cfg.lambda_growth)
        full = epochs == cfg.gal_epochs
        choice = kept if kept is not None else fallback
        assert choice is not None  # at least one probe ran (lambda_search_probes >= 1)
        within = 1.0 - tol <= probes[choice[0]]["ratio"] <= 1.0
        how = "within tolerance" if within else "best probe within the budget" if kept is not None else \
            "no probe within the budget: the closing loop prunes the smallest-ratio probe"
        threshold_only = False
        if not within and over is not None and full:
            # no probe landed: the least-over-budget probe, its smallest masks zeroed one at a time until the
            # budget is met (the closing loop without its lambda rounds) lands closer than an over-pruned probe
            choice, threshold_only = over, True
            how = "no probe within tolerance: the least-over-budget probe, smallest masks zeroed until it fits"
        idx, trainer, history = choice
        chosen = probes[idx]
        return {"lambda": chosen["lambda"], "chosen_probe": idx, "probes": probes, "tolerance": tol,
                "max_probes": cfg.lambda_search_probes, "probe_epochs": epochs,
                "within_tolerance": bool(within), "choice": how, "budget": ctx.budget.describe(),
                "_trainer": trainer if full else None, "_history": history if full else None,
                "_threshold_only": threshold_only}

    def _gal_one(self, ctx: StrategyContext, cfg: DartsGalConfig, baseline: NetworkCIFAR, train_ds: Dataset, K: int,
                 lam: float, total_nodes: int, tag: str, weights: tuple[tuple[float, ...], ...] | None = None,
                 trainer: GALTrainer | None = None, history: list[dict[str, Any]] | None = None,
                 lambda_rounds: bool = True) -> dict[str, Any]:
        """GAL at ``lam`` (or continue ``trainer``, already run for ``gal_epochs`` with ``history``),
        then the closing loop into the budget (``lambda_rounds=False``: without its GAL rounds at a
        larger lambda, only the zeroing of the smallest masks)."""
        check = ctx.check
        settings = gal_settings(cfg, lam, derive_seed(ctx.seed, "gal"), mask_weights=weights)
        t0 = time.perf_counter()
        if trainer is None:
            trainer = GALTrainer(baseline, train_ds, K, settings, progress=ctx.progress, log=ctx.log, phase_name=tag,
                                 runtime=ctx.runtime)
            history = list(trainer.run().history)
        history = list(history or [])
        epochs_done = cfg.gal_epochs

        def measure() -> tuple[Any, Any, tuple[Cost, BudgetCheck, float | None]]:
            keep = kept_nodes(trainer.G, threshold=cfg.mask_threshold, keep_nonempty=cfg.keep_nonempty)
            pr = prune_network(trainer.G, keep, keep_masks=False)
            return keep, pr, check(pr.net)

        keep, pr, (cost, chk, lat) = measure()
        rounds = [{"round": 0, "lambda": lam, "epochs": cfg.gal_epochs, "removed": pr.removed, **_cost_dict(cost, lat),
                   "ok": chk.ok}]
        ctx.log(phase="closing-loop", **rounds[-1])
        r = 0
        while lambda_rounds and not chk.ok and r < cfg.max_prune_rounds:
            r += 1
            lam *= cfg.lambda_growth
            trainer.s = dataclasses.replace(trainer.s, lam=lam)
            trainer.fista.lam = lam
            extra = cfg.prune_round_epochs or cfg.gal_epochs
            history += trainer.run(epochs=extra, start_epoch=epochs_done).history
            epochs_done += extra
            keep, pr, (cost, chk, lat) = measure()
            rounds.append({"round": r, "lambda": lam, "epochs": extra, "removed": pr.removed,
                           **_cost_dict(cost, lat), "ok": chk.ok})
            ctx.log(phase="closing-loop", **rounds[-1])
        thresholded: list[list[int]] = []
        while not chk.ok:
            # zero the smallest surviving mask (non-forced) and re-measure
            with torch.no_grad():
                cands = [(float(cell.node_mask[i]), c, i) for c, (cell, k) in enumerate(zip(trainer.G.cells, keep))
                         for i in k.kept if i not in k.forced and float(cell.node_mask[i]) > cfg.mask_threshold]
                if not cands:
                    raise BudgetUnreachableError(
                        f"darts-gal: even with every prunable node removed the network costs {cost.macs:,} MACs and "
                        f"{cost.params:,} params and violates " + "; ".join(str(v) for v in chk.violations)
                        + ". Lower size_margin (the baseline is sized to size_margin x the budget) or add smaller "
                          "candidates_C / candidates_layers.")
                _v, c, i = min(cands)
                trainer.G.cells[c].node_mask[i] = 0.0
                thresholded.append([c + 1, i])
            keep, pr, (cost, chk, lat) = measure()
            ctx.log(phase="closing-loop", thresholded=[c + 1, i], removed=pr.removed, **_cost_dict(cost, lat),
                    ok=chk.ok)
        closing = {"rounds": r, "thresholded_nodes": thresholded, "ok": bool(chk.ok)}
        removed = total_nodes - node_count(pr.net)
        masked_pruned = prune_network(trainer.G, keep, keep_masks=True)
        val_acc = evaluate(masked_pruned.net, ctx.data.val)
        return {
            "lambda": lam, "lambda_start": settings.lam, "rounds": rounds, "closing_loop": closing,
            "removed": removed, "removed_fraction": removed / max(total_nodes, 1),
            "pruned": {**_cost_dict(cost, lat), "val_acc_before_retrain": val_acc},
            "d_steps": trainer.d_steps, "g_steps": trainer.g_steps, "mask_updates": trainer.fista.steps,
            "exact": masked_pruned.exact, "wall_s": time.perf_counter() - t0, "history": history,
            "_G": trainer.G, "_keep": keep,
        }

