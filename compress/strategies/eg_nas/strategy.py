"""The registered strategy ``eg-nas``: search -> DARTS genotype -> size ``(C, cells)`` of the
evaluation network to the budget by measuring a small grid through ``ctx.check`` -> retrain it from
scratch with KD from the teacher -> student (Cai et al., AAAI 2024). Importing this module
registers the strategy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import ConfigError
from compress.profiling.latency_model import LayerLatencyTable, default_cache_dir
from compress.registry import register_strategy
from compress.strategies.base import Strategy, StrategyContext, StrategyOutput
from compress.strategies.darts.drawing import draw_genotype
from compress.strategies.darts.genotype import Genotype, alpha_entropy, genotype_stability
from compress.strategies.darts.model import NetworkCIFAR, build_from_arch
from compress.strategies.darts.sizing import size_to_budget
from compress.strategies.darts.supernet_search import dataset_of
from compress.strategies.eg_nas.config import _PRESETS, EGNASConfig, final_key
from compress.strategies.eg_nas.search import EGNASSearch
from compress.training import CheckpointStore, EpochCheckpoint, finetune
from compress.training.data import derive_seed

__all__ = ["EGNAS", "STRATEGY"]

STRATEGY = "eg-nas"

#: timing of the per-layer latency table of the latency objective (cached on disk per target)
LATENCY_TIMING = {"rounds": 3, "repeats": 5, "warmup": 2}


@register_strategy(STRATEGY)
class EGNAS(Strategy):
    """EG-NAS search -> DARTS genotype -> budget sizing -> KD retrain (AAAI'24, Alg. 1, Eq. 6-9).

    Input: the teacher (``ctx.teacher``, used only for KD) and the task; the user's architecture is
    not reused. Output: a :class:`~compress.strategies.darts.model.NetworkCIFAR`
    ``(B, C, H, W) -> (B, K)`` that meets ``ctx.budget``.

    Raises:
        BudgetUnreachableError: no (C, cells) candidate of the sizing grid fits the budget.
        DataError: the training split is too small to split.
        ConfigError: invalid config.
    """

    config_cls = EGNASConfig
    #: settings for the digits demo / quick CPU runs (the defaults are the paper's GPU-scale ones)
    @classmethod
    def demo_config(cls, epochs: int) -> dict[str, Any]:
        """The CPU-scale preset (docs/algorithms/eg-nas.md, CPU profile), nested; the demo's ``epochs``
        raises the final retrain (``final.epochs``, never below the preset)."""
        small = {sub: dict(v) for sub, v in _PRESETS["cpu-small"].items()}
        small["final"]["epochs"] = max(int(epochs), small["final"].get("epochs", 0))
        return small
    paper = "Cai et al., EG-NAS: Neural Architecture Search with Fast Evolutionary Exploration, AAAI 2024"

    @classmethod
    def build_student(cls, arch: dict) -> nn.Module:
        """Rebuild the sized evaluation network from ``NetworkCIFAR.arch_dict()``."""
        return build_from_arch(arch)

    def run(self, ctx: StrategyContext) -> StrategyOutput:
        cfg: EGNASConfig = self.config
        if not ctx.executor.can_run_on(ctx.runtime.device):
            raise ConfigError(
                f"eg-nas evaluates its CMA-ES population on {ctx.runtime.device}, but the {ctx.executor.name!r} "
                "executor's workers cannot use that device (a worker gets a pickled copy of the supernet, and Ray "
                "hides the GPUs from tasks that reserve none). Use executor='serial' (the population is then "
                "evaluated on the GPU in this process), executor=RayExecutor(num_gpus_per_task=0.25) to give each "
                "Ray task a GPU share, or device='cpu'.")
        spec = ctx.data.spec
        num_classes, input_shape = spec.num_classes, tuple(spec.input_shape)
        store = CheckpointStore.for_strategy(ctx.out_dir, STRATEGY)
        ckpt_dir = store.dir
        train_ds = dataset_of(ctx.data.train, STRATEGY)

        use_latency = cfg.objective == "latency" or (cfg.objective == "auto" and ctx.budget.needs_latency)
        table = None
        if use_latency:
            table = LayerLatencyTable(ctx.target, cache_dir=Path(default_cache_dir()) / STRATEGY, **LATENCY_TIMING)
        with ctx.phase("search"):
            search = EGNASSearch(cfg, train_ds, ctx.data.val, num_classes, input_shape, ctx.seed, ckpt_dir=ckpt_dir,
                                 progress=ctx.progress, log=ctx.log, executor=ctx.executor, runtime=ctx.runtime,
                                 latency_table=table)
            if table is not None:
                table.save()
            outcome = search.run()
            # genotype_stability (issue 18): the same search from other seeds, only when asked (it costs
            # stability_seeds - 1 more searches; no checkpoints, so a resumed run repeats them)
            stability_alphas = [(outcome.alphas_normal, outcome.alphas_reduce)]
            stability_seeds = [ctx.seed]
            for i in range(1, cfg.stability_seeds):
                seed_i = derive_seed(ctx.seed, "stability", i)
                extra = EGNASSearch(cfg, train_ds, ctx.data.val, num_classes, input_shape, seed_i,
                                    executor=ctx.executor, runtime=ctx.runtime, latency_table=table).run(resume=False)
                stability_alphas.append((extra.alphas_normal, extra.alphas_reduce))
                stability_seeds.append(seed_i)
        ctx.wall_s["search_arch_update"] = outcome.wall_arch_s
        ctx.wall_s["search_weights"] = outcome.wall_weights_s
        genotype = outcome.genotype

        final_hash = final_key(cfg, {"seed": ctx.seed, "genotype": genotype.to_dict(),
                                     "budget": ctx.budget.to_dict(), "num_classes": num_classes,
                                     "input_shape": list(input_shape)})
        resumed_final = False
        net: NetworkCIFAR | None = None
        retrain_history: list[dict[str, Any]] = []
        sizing_info: dict[str, Any] = {}
        final = store.load("final", key=final_hash)
        if final is not None:
            st = final.state
            net = NetworkCIFAR(st["C"], num_classes, st["layers"], genotype, in_channels=input_shape[0],
                               stem_stride=st["stem_stride"])
            net.load_state_dict(final.tensors["weights"])
            retrain_history, sizing_info, resumed_final = st["retrain_history"], st["sizing"], True
            ctx.history[:] = st["history"]
            final.restore_rng()
        if net is None:
            with ctx.phase("sizing"):
                done = [0]

                def on_trial(rec: dict[str, Any]) -> None:
                    done[0] += 1
                    ctx.log(phase="sizing", **rec)
                    ctx.progress("sizing", done[0], None, {"C": rec["C"], "layers": rec["layers"], "ok": rec["ok"]})

                sz = cfg.sizing
                sized = size_to_budget(genotype, ctx, num_classes, input_shape, sz.candidates_C,
                                       sz.candidates_layers, stem_strides=sz.stem_strides, capacity=sz.capacity,
                                       on_trial=on_trial)
            sizing_info = {"C": sized.C, "layers": sized.layers, "stem_stride": sized.stem_stride,
                           "macs": int(sized.cost.macs), "params": int(sized.cost.params),
                           "latency_ms": sized.latency_ms, "trials": sized.trials}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(ctx.seed, "final"))
                net = NetworkCIFAR(sized.C, num_classes, sized.layers, genotype, in_channels=input_shape[0],
                                   stem_stride=sized.stem_stride)
            with ctx.phase("retrain"):
                retrain_history = self._retrain(net, ctx, store, final_hash)
            store.commit("final", {"C": sized.C, "layers": sized.layers, "stem_stride": sized.stem_stride,
                                   "genotype": genotype.to_dict(), "retrain_history": retrain_history,
                                   "sizing": sizing_info, "history": ctx.history},
                         {"weights": net.state_dict()}, key=final_hash)
        net.eval()
        entropies = [h["alpha_entropy"] for h in outcome.history]
        term = search.latency_term
        search_info = {
            "alpha_entropy": entropies,
            "alpha_entropy_uniform": math.log(search.num_ops),
            "genotype_stability": genotype_stability(stability_alphas),
            "stability_seeds": stability_seeds if len(stability_seeds) > 1 else [],
            "plan": dict(outcome.plan),
            "objective": "latency" if term is not None else "size",
            "latency_weight": cfg.latency_weight if term is not None else None,
            "expected_latency_ms": None if term is None else {
                "uniform": term.reference_ms,
                "final": float(term.expected_ms(outcome.alphas_normal.double(), outcome.alphas_reduce.double()))},
        }
        info = {
            "search": search_info,
            "genotype": genotype.to_dict(),
            "genotype_json": genotype.to_json(),
            "alpha_update": cfg.search.alpha_update,
            "alpha_entropy_history": entropies,
            "final_alpha_entropy": alpha_entropy(torch.cat([outcome.alphas_normal, outcome.alphas_reduce])),
            "best_fitness_history": [h.get("best_fitness") for h in outcome.history],
            "search_val_acc_history": [h.get("val_acc") for h in outcome.history],
            "wall_s_arch_update": outcome.wall_arch_s,
            "wall_s_weights": outcome.wall_weights_s,
            "final_alphas": {"normal": outcome.alphas_normal.tolist(), "reduce": outcome.alphas_reduce.tolist()},
            "cma_last_epoch": [{k: v for k, v in r.items() if k != "final_mean"} for r in outcome.last_es],
            "chosen": {k: sizing_info.get(k) for k in ("C", "layers", "stem_stride", "macs", "params", "latency_ms")},
            "sizing_trials": sizing_info.get("trials", []),
            "retrain_history": retrain_history,
            "resumed_search_from_epoch": outcome.resumed_from_epoch,
            "resumed_final": resumed_final,
            "student_arch": net.arch_dict(),
            "executor": ctx.executor.describe(),
        }
        return StrategyOutput(student=net, info=info, arch=net.arch_dict(),
                              report_sections=_report_sections(outcome.history, genotype, info))

    def _retrain(self, net: NetworkCIFAR, ctx: StrategyContext, store: CheckpointStore | None = None,
                 key: str = "") -> list[dict[str, Any]]:
        fc = self.config.final
        if fc.epochs == 0:
            return []
        settings = fc.settings(seed=derive_seed(ctx.seed, "retrain"), keep_best=True)
        gen = None
        if fc.drop_path > 0:
            gen = torch.Generator().manual_seed(derive_seed(ctx.seed, "drop-path"))
            for cell in net.cells:
                cell.generator = gen
        net.drop_path_prob = 0.0

        def on_epoch(epoch: int, rec: dict) -> None:
            net.drop_path_prob = fc.drop_path * epoch / fc.epochs if epoch < fc.epochs else 0.0
            ctx.log(phase="retrain", **rec)
            ctx.progress("retrain", epoch, fc.epochs, rec)

        ckpt = None if store is None else EpochCheckpoint(store, "retrain", key, generators={"drop-path": gen})
        history = finetune(net, ctx.data.train, ctx.data.val, settings, teacher=ctx.teacher, on_epoch=on_epoch,
                           checkpoint=ckpt, runtime=ctx.runtime)
        net.drop_path_prob = 0.0
        for cell in net.cells:
            cell.generator = None
        return history


def _report_sections(history: list[dict[str, Any]], genotype: Genotype, info: dict[str, Any]) -> list[tuple[str, str]]:
    """report.md sections: the search history per epoch (alpha entropy in nats, the best compound
    fitness of Eq. 7, supernet val accuracy, seconds in the alpha update vs the weights) and the
    derived genotype drawn as cells."""
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    rows = ["| epoch | alpha entropy | best fitness | val acc | alpha update s | weights s |",
            "| --- | --- | --- | --- | --- | --- |"]
    for h in history:
        rows.append(f"| {h['epoch']} | {num(h.get('alpha_entropy'), '.4f')} | {num(h.get('best_fitness'), '.4f')} | "
                    f"{num(h.get('val_acc'), '.3f')} | {num(h.get('wall_arch_s'), '.1f')} | "
                    f"{num(h.get('wall_weights_s'), '.1f')} |")
    c = info["chosen"]
    n_ops = len(info["final_alphas"]["normal"][0])
    rows += ["", f"Final alpha entropy {info['final_alpha_entropy']:.4f} nats (uniform over the {n_ops} ops: "
                 f"{math.log(n_ops):.4f}); derived network C={c.get('C')}, {c.get('layers')} cells."]
    search = info.get("search") or {}
    plan = search.get("plan") or {}
    step = (f"xi per update {plan['xi_effective']:.4g}" if "xi_effective" in plan
            else f"Adam lr {plan['arch_lr_effective']:.4g}" if "arch_lr_effective" in plan else None)
    if step is not None:
        rows.append(f"Alpha updates: {plan.get('arch_updates')}, {step}; objective: {search.get('objective')}.")
    if search.get("genotype_stability") is not None:
        rows.append(f"Genotype stability over seeds {search['stability_seeds']}: {search['genotype_stability']:.3f} "
                    "(share of edges whose argmax op agrees in every search).")
    return [(f"Search ({info['alpha_update']}; alpha entropy = mean per-edge entropy in nats)", "\n".join(rows)),
            ("Genotype", "```text\n" + draw_genotype(genotype).rstrip() + "\n```")]
