"""Benchmark: does a NAS strategy beat random search at equal cost? (issue 18, part 3 and "What it must show" 1)

    python benchmarks/bench_nas_random.py --strategy eg-nas --data ../shared/data \
        --out benchmarks/results/nas_random_eg_nas [--k 5] [--budget params=269722] [--set key=value ...] \
        [--resume | --report-only] [--rows strategy,kd-resnet20,random-1,...] [--smoke] [--note "..."]

One table per strategy (``eg-nas`` or ``darts-gal``) on the shared CIFAR-10 subsets (a stratified
``--train-limit`` subset of the 10k train images, 10% of it the validation split; the 1,000 test
images; ImageNet mean/std as the pretrained teachers expect), at one budget (default: the parameter
count of a CIFAR ResNet-20, measured here with fvcore, 269,722):

* **strategy** -- ``compress.compress(teacher, budget, strategy=S, config=cfg)``: the search, then the
  strategy's own final phase;
* **random-1 .. random-K** -- K genotypes from
  :func:`compress.strategies.darts.genotype.random_genotypes` (``--random-seed``; the primitives of
  the strategy's supernet -- eg-nas ``cfg.primitives``, darts-gal ``"darts"`` -- without ``'none'``;
  4 intermediate nodes, 4 concatenated, as the supernet), each put through EXACTLY the strategy's
  post-search procedure, same config, seed, teacher and data, so the genotype is the only difference:

  - darts-gal: ``compress(..., strategy="darts-gal", config={**cfg, "genotype": g.to_json()})`` (the
    public ``genotype`` field skips the search): sizing to the budget, KD baseline, GAL node
    pruning, KD retrain from scratch.
  - eg-nas has no public way to retrain a given genotype, so this benchmark calls its final phase
    directly: :class:`_FixedGenotypeEGNAS` (an ``EGNAS`` subclass registered under a benchmark-only
    name only while its ``compress()`` call runs) skips ``EGNASSearch`` and runs the strategy's own
    sizing (:func:`~compress.strategies.darts.sizing.size_to_budget` on ``cfg.candidates_*`` through
    ``ctx.check``), the same seeded initialisation (``derive_seed(seed, "final")``) and
    ``EGNAS._retrain`` (KD, ``final_*`` settings, ``derive_seed(seed, "retrain")``). Going through
    ``compress()`` gives every row the same context: loaders re-seeded, frozen teacher copy, runtime.

* **kd-resnet20** -- a freshly initialised CIFAR ResNet-20 trained with the strategy's KD recipe:
  eg-nas: ``final_epochs`` with the retrain settings (lr, momentum, weight decay, KD alpha and T,
  augmentation, seed ``derive_seed(seed, "retrain")``, keep-best on val, the task's train loader
  re-seeded as ``compress()`` does). darts-gal: its retrain settings and seeded loader for
  E = baseline epochs + GAL passes over the data + retrain epochs (darts-gal's total training, as
  ``bench_darts_gal.py``), since every darts-gal row trains that much.
* the **stock frontier**: pretrained CIFAR ResNet-20/32/44/56 off the shelf (``_common.frontier``).

Columns: test accuracy on the 1,000 test images, params and MACs (fvcore, per sample), and ORT
latency on ``cpu-1t`` (onnxruntime, 1 intra-op thread) of every row and the frontier timed side by
side in ONE interleaved run (:func:`compress.profiling.latency_model.measure_interleaved`, 10
rounds x 30 calls, batch 1; median of the per-round medians, ms, and the fastest round's median, which
pre-emption on a shared core disturbs least; ``--retime`` times them again, e.g. on a quieter machine, and
keeps the old timing under ``timing_history``). The "random mean" row is the mean
of the K random rows (accuracy, params, MACs, latency); "random best" is the random row with the
highest test accuracy.

Paired tests on the same test images: strategy vs the best random (McNemar exact, bootstrap 95% CI
of the accuracy difference), strategy vs the MEAN of the randoms (per image
``d_i = c_strategy,i - mean_k c_k,i``, ``c`` = 1 if right; bootstrap over images of ``mean(d)``:
95% percentile interval, and the two-sided p-value of the centred bootstrap,
``P(|mean(d*) - mean(d)| >= |mean(d)|)``), and strategy vs KD ResNet-20 and the stock models. The
mean per-edge entropy of softmax(alpha) at the end of the search comes from the strategy's
``report.json`` ``search`` key (``alpha_entropy[-1]`` vs ``alpha_entropy_uniform`` = ln |O|).

Resumable: every finished row goes to ``<out>/<stem>.partial.json`` at once; ``--resume`` skips the
finished rows (and a row's own ``compress()`` resumes from its checkpoints under ``--work``);
``--rows`` splits the rows between processes that share one ``--out`` and ``--work`` (one per core,
e.g. ``--rows strategy,kd-resnet20,random-5,random-4`` and ``--rows random-1,random-2,random-3``, both
with ``--resume``): each save merges under a file lock, a row is claimed before it starts, a row
another live process holds is skipped, and the process that finds every row done writes the report;
``--report-only`` writes the tables from the partial file. ``--smoke``: tiny settings (512 train
images, 200 test images, a few steps), end to end in minutes; the numbers mean nothing.
Outputs: ``<out>/nas_random_<strategy>.json`` and ``.md`` (``_smoke`` appended with ``--smoke``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import random
import re
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_darts_gal  # noqa: E402  (settings of the darts-gal benchmark)
import bench_eg_nas  # noqa: E402  (settings of the eg-nas benchmark)
from _common import (bootstrap_diff, cut_facts, frontier, json_default, locked_json_update, machine, mcnemar,  # noqa: E402
                     mean_random_test, predictions, write_outputs)
from bench_latency_pruning import git_commit  # noqa: E402  (as bench_frontier and bench_real_size)

import compress.strategies.darts_gal  # noqa: E402,F401  (registers "darts-gal")
import compress.strategies.eg_nas  # noqa: E402,F401  (registers "eg-nas")
from compress import registry  # noqa: E402
from compress.api import compress, library_versions  # noqa: E402
from compress.budgets import measure_cost  # noqa: E402
from compress.data import IMAGENET_MEAN, IMAGENET_STD, collect, load_npz_task  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.profiling import Target  # noqa: E402
from compress.profiling.latency_model import measure_interleaved  # noqa: E402
from compress.strategies._parts.checkpoint import loader_generators  # noqa: E402
from compress.strategies.base import StrategyContext, StrategyOutput  # noqa: E402
from compress.strategies.darts.genotype import Genotype, random_genotypes  # noqa: E402
from compress.strategies.darts.model import NetworkCIFAR, build_from_arch  # noqa: E402
from compress.strategies.darts.sizing import size_to_budget  # noqa: E402
from compress.strategies.darts.supernet_search import dataset_of  # noqa: E402
from compress.strategies.darts_gal.config import PRESETS as DG_PRESETS  # noqa: E402
from compress.strategies.darts_gal.config import DartsGalConfig  # noqa: E402
from compress.strategies.eg_nas.config import _PRESETS as EG_PRESETS  # noqa: E402
from compress.strategies.config_tree import config_from_dict, config_to_dict  # noqa: E402
from compress.strategies.eg_nas.config import EGNASConfig, final_key  # noqa: E402
from compress.strategies.eg_nas.strategy import EGNAS  # noqa: E402
from compress.training import CheckpointStore, finetune  # noqa: E402
from compress.training.data import derive_seed  # noqa: E402

STRATEGIES = ("eg-nas", "darts-gal")
#: the supernet's cell: intermediate nodes and concatenated states (DARTS; SearchNetwork's defaults)
CELL_STEPS, CELL_MULTIPLIER = 4, 4

# Settings per strategy: the reduced CIFAR settings of eg_nas_cifar_small.md and
# darts_gal_cifar_small_lambda0.1.md (their provenance commands over bench_eg_nas.FULL /
# bench_darts_gal.FULL), 5 retrain epochs, plus the issue-18 alpha steps of the cpu-small presets
# (xi_reference_updates, arch_reference_steps: without them alpha stays uniform; darts-gal's
# arch_batch_size and arch_weight_decay since 2026-12-04; before it, its benchmark ran the preset's
# earlier search: arch_reference_steps 19,550, alpha batch 32, alpha weight decay 1e-3, as the
# configs in the earlier nas_random_darts_gal* results show). darts-gal sizes and prunes as its
# cpu-small preset does since 2026-12-04 (DG_SIZING: candidates_C 4-24, size_margin 1.5, lambda
# searched): with the earlier grid (C 8-16, given by --set in the earlier folders) the searched
# genotype filled C 16 x 8 at 1.04x the budget, so GAL had 4% to remove and cut 3 of 8 cells.
# eg-nas' table (strategy + 5 randoms + KD ResNet-20) takes about 35-45 min on one core, darts-gal's
# about 2.5 h (two processes, one per core, with --rows: about 1.6 h).
_DG_SEARCH = DG_PRESETS["cpu-small"]["search"]
#: darts-gal's alpha-step fields of the cpu-small preset, in the benchmarks' flat spelling
DG_ARCH_STEPS = {"arch_reference_steps": _DG_SEARCH["arch_reference_steps"],
                 "search_arch_batch_size": _DG_SEARCH["arch_batch_size"],
                 "arch_weight_decay": _DG_SEARCH["arch_weight_decay"]}
#: darts-gal's sizing and lambda of the cpu-small preset, in the benchmarks' flat spelling
DG_SIZING = {"candidates_C": tuple(DG_PRESETS["cpu-small"]["sizing"]["candidates_C"]),
             "size_margin": DG_PRESETS["cpu-small"]["sizing"]["size_margin"], "sparse_lambda": None}
FULL: dict[str, dict[str, Any]] = {
    "eg-nas": {**bench_eg_nas.FULL, "search_epochs": 6, "warmup_epochs": 2, "restarts": 2, "popsize": 8,
               "candidates_C": (8, 12, 16, 20, 24), "candidates_layers": (5, 8), "final_epochs": 5,
               "xi_reference_updates": EG_PRESETS["cpu-small"]["es"]["xi_reference_updates"],
               "arch_reference_steps": EG_PRESETS["cpu-small"]["search"]["arch_reference_steps"]},
    "darts-gal": {**bench_darts_gal.FULL, "search_epochs": 3, "baseline_epochs": 3, "gal_epochs": 1,
                  "final_epochs": 5, "candidates_layers": (5, 8), **DG_ARCH_STEPS, **DG_SIZING},
}
SMOKE: dict[str, dict[str, Any]] = {
    "eg-nas": {**bench_eg_nas.SMOKE, "xi_reference_updates": EG_PRESETS["cpu-small"]["es"]["xi_reference_updates"]},
    "darts-gal": {**bench_darts_gal.SMOKE, **DG_ARCH_STEPS},
}
DEFAULT_TEACHER = {"eg-nas": "resnet20", "darts-gal": "resnet56"}  # as bench_eg_nas / bench_darts_gal
DEFAULT_TRAIN_LIMIT = 2000
TIMING = {"rounds": 10, "repeats": 30, "min_round_ms": 25.0}
SMOKE_TIMING = {"rounds": 2, "repeats": 5, "min_round_ms": 0.0}
BOOTSTRAP_N = 10000
#: slowest / fastest round of one model above which the report calls the side-by-side timing disturbed
DISTURBED_SPREAD = 1.5
FIXED_NAME = "bench-eg-nas-fixed-genotype"


# ------------------------------------------------------------------------------------ eg-nas final phase


class _FixedGenotypeEGNAS(EGNAS):
    """eg-nas without its search: ``fixed_genotype`` goes through the strategy's own final phase
    (sizing to the budget through ``ctx.check``, init seeded with ``derive_seed(seed, "final")``,
    ``EGNAS._retrain``), as :meth:`EGNAS.run` does after ``EGNASSearch``. Output: the retrained
    :class:`NetworkCIFAR` ``(B, 3, 32, 32) -> (B, 10)``. Benchmark-only: registered by
    :func:`_fixed_eg_nas` for the length of one ``compress()`` call."""

    fixed_genotype: Genotype | None = None

    def run(self, ctx: StrategyContext) -> StrategyOutput:
        cfg: EGNASConfig = self.config
        genotype = type(self).fixed_genotype
        assert genotype is not None
        spec = ctx.data.spec
        num_classes, input_shape = spec.num_classes, tuple(spec.input_shape)
        store = CheckpointStore.for_strategy(ctx.out_dir, "eg-nas")
        final_hash = final_key(cfg, {"seed": ctx.seed, "genotype": genotype.to_dict(),
                                     "budget": ctx.budget.to_dict(), "num_classes": num_classes,
                                     "input_shape": list(input_shape)})
        with ctx.phase("sizing"):
            sz = cfg.sizing
            sized = size_to_budget(genotype, ctx, num_classes, input_shape, sz.candidates_C, sz.candidates_layers,
                                   stem_strides=sz.stem_strides, capacity=sz.capacity)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(ctx.seed, "final"))
            net = NetworkCIFAR(sized.C, num_classes, sized.layers, genotype, in_channels=input_shape[0],
                               stem_stride=sized.stem_stride)
        with ctx.phase("retrain"):
            history = self._retrain(net, ctx, store, final_hash)
        net.eval()
        chosen = {"C": sized.C, "layers": sized.layers, "stem_stride": sized.stem_stride,
                  "macs": int(sized.cost.macs), "params": int(sized.cost.params), "latency_ms": sized.latency_ms}
        info = {"genotype": genotype.to_dict(), "chosen": chosen, "sizing_trials": sized.trials,
                "retrain_history": history, "student_arch": net.arch_dict()}
        return StrategyOutput(student=net, info=info, arch=net.arch_dict())


@contextlib.contextmanager
def _fixed_eg_nas(genotype: Genotype):
    """Register :class:`_FixedGenotypeEGNAS` (with ``genotype``) under :data:`FIXED_NAME` for the
    block, and remove it after, so no test that lists the strategies ever sees it."""
    cls = type("_FixedEGNAS", (_FixedGenotypeEGNAS,), {"fixed_genotype": genotype})
    registry.register_strategy(FIXED_NAME)(cls)
    try:
        yield FIXED_NAME
    finally:
        registry._REGISTRY.pop(FIXED_NAME, None)


# ------------------------------------------------------------------------------------ rows


def _network_row(name: str, kind: str, res: Any, x_test: torch.Tensor, y_test: torch.Tensor, t0: float) -> dict:
    """A finished ``compress()`` run as a table row (accuracy on the test images, fvcore cost, arch)."""
    correct = predictions(res.student, x_test) == y_test.numpy()
    info = res.info
    row = {"run": name, "kind": kind, "test_acc": float(correct.mean()), "val_acc": res.student_report.accuracy_val,
           "params": int(res.student_report.cost.params), "macs": int(res.student_report.cost.macs),
           "budget_ok": bool(res.budget_check.ok), "arch": res.student.arch_dict(), "genotype": info.get("genotype"),
           "wall_s": dict(res.wall_s), "elapsed_s": time.perf_counter() - t0, "correct": correct.tolist()}
    if "chosen" in info:  # eg-nas
        row["shape"] = {k: info["chosen"][k] for k in ("C", "layers", "stem_stride")}
        row["train_epochs"] = len(info.get("retrain_history") or [])
    if "baseline" in info:  # darts-gal
        b = info["baseline"]
        row["shape"] = {k: b[k] for k in ("C", "layers", "stem_stride")}
        row["nodes_removed"], row["nodes_total"] = info["nodes_removed"], info["nodes_total"]
        row["gal"] = {k: info["gal"].get(k) for k in ("lambda", "g_steps", "d_steps")}
        row.update(_gal_facts(info))
    row.update(_cut_facts(res.to_dict()))
    if "search" in info and kind == "strategy":
        row["search"] = info["search"]
        row["search_wall_s"] = res.wall_s.get("search")
    print(f"{name}: test {100 * row['test_acc']:.2f}%  params {row['params']:,}  MACs {row['macs']:,}  "
          f"shape {row.get('shape')}  {row['elapsed_s']:.0f} s", flush=True)
    return row


def _gal_facts(info: dict) -> dict:
    """A darts-gal run's GAL facts for issue 18's goal 2, from its ``report.json`` ``info``: the
    lambda search's probes and the nodes removed in each cell (masks - kept)."""
    return {"lambda_search": (info.get("gal") or {}).get("lambda_search"),
            "nodes_removed_per_cell": [len(c["masks"]) - len(c["kept"]) for c in info.get("nodes_kept") or []]}


def _cut_facts(report: dict) -> dict:
    """:func:`_common.cut_facts` from a run's ``report.json``."""
    return cut_facts(report["teacher"]["macs"], report["student"]["macs"],
                     (report.get("budget") or {}).get("latency_vs_teacher"))


def _backfill_gal(rows: dict, work: Path | None) -> None:
    """Rows recorded before :func:`_gal_facts` / :func:`_cut_facts` existed get them from the run's
    own ``<work>/<row>/report.json`` (what compress() wrote for that row), when it is still there."""
    for name, row in rows.items():
        path = work / name / "report.json" if work is not None else None
        if path is None or not path.is_file():
            continue
        report = json.loads(path.read_text())
        if "nodes_total" in row and "nodes_removed_per_cell" not in row:
            row.update(_gal_facts(report["info"]))
        if "cut_ratio" not in row:
            row.update(_cut_facts(report))


def _gal_markdown(rows: dict, names: list[str], budget: str) -> list[str]:
    """Issue 18's goal 2 for darts-gal: params within 10% of the budget and at least one node
    removed in at least half of the cells, with the lambda search's probes."""
    limit = re.fullmatch(r"params=(\d+)", budget)
    out = []
    for n in names:
        r = rows[n]
        if "nodes_removed_per_cell" not in r:
            continue
        per_cell = r["nodes_removed_per_cell"]
        cut = sum(1 for v in per_cell if v > 0)
        line = (f"GAL, {n}: lambda {r['gal']['lambda']:.4g}; nodes removed per cell {per_cell} "
                f"({r['nodes_removed']} of {r['nodes_total']}): {cut} of {len(per_cell)} cells lose at least one node "
                f"(goal >= half: {'met' if 2 * cut >= len(per_cell) else 'not met'})")
        if limit:
            share = r["params"] / int(limit.group(1))
            line += (f"; params {r['params']:,} = {100 * share:.1f}% of the budget (goal within 10%: "
                     f"{'met' if 0.9 <= share <= 1.0 else 'not met'})")
        out += [line + ".", ""]
        probes = (r.get("lambda_search") or {}).get("probes") or []
        if probes and n == "strategy":
            out += ["| lambda probe | lambda | params | budget ratio | nodes removed | within budget |",
                    "| ---: | ---: | ---: | ---: | ---: | --- |"]
            out += [f"| {p['probe']} | {p['lambda']:.4g} | {p['params']:,} | {p['ratio']:.3f} | {p['nodes_removed']} | "
                    f"{'yes' if p['ok'] else 'no'} |" for p in probes]
            out += [""]
    return out


def _compress_kwargs(args, target, out_dir: Path) -> dict:
    return dict(seed=args.seed, target=target, out_dir=out_dir, progress=False, mobile=False, allow_slower=True,
                latency_repeats=5 if args.smoke else 20, latency_warmup=2 if args.smoke else 5)


def run_strategy(args, cfg, teacher, task, target, x_test, y_test) -> dict:
    t0 = time.perf_counter()
    res = compress(teacher, args.budget, data=task, strategy=args.strategy, config=cfg,
                   **_compress_kwargs(args, target, args.work / "strategy"))
    return _network_row("strategy", "strategy", res, x_test, y_test, t0)


def run_random(k: int, genotype: Genotype, args, cfg, teacher, task, target, x_test, y_test) -> dict:
    t0 = time.perf_counter()
    kw = _compress_kwargs(args, target, args.work / f"random-{k}")
    if args.strategy == "darts-gal":
        res = compress(teacher, args.budget, data=task, strategy="darts-gal", config={**cfg, "genotype": genotype.to_json()},
                       **kw)
    else:
        with _fixed_eg_nas(genotype) as name:
            res = compress(teacher, args.budget, data=task, strategy=name, config=cfg, **kw)
    row = _network_row(f"random-{k}", "random", res, x_test, y_test, t0)
    row["genotype"] = genotype.to_dict()
    return row


def kd_epochs(strategy: str, cfg: dict, strategy_row: dict, n_train: int) -> int:
    """Epochs of the KD ResNet-20: eg-nas ``final_epochs``; darts-gal E = baseline epochs + GAL
    passes (generator steps x GAL batch / train images, rounded up) + retrain epochs."""
    if strategy == "eg-nas":
        return config_from_dict(EGNASConfig, cfg).final.epochs
    c = config_from_dict(DartsGalConfig, cfg)
    g_steps = int(strategy_row["gal"]["g_steps"])
    return c.baseline.epochs + math.ceil(g_steps * c.gal.batch_size / max(n_train, 1)) + c.final.epochs


def run_kd_resnet20(args, cfg, teacher, task, target, x_test, y_test, epochs: int) -> dict:
    """A fresh CIFAR ResNet-20 trained with the strategy's KD retrain recipe (see the module docstring)."""
    t0 = time.perf_counter()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    gens = loader_generators(train=task.train, val=task.val, test=task.test, calib=task.calib)
    states = {k: g.get_state() for k, g in gens.items()}
    for g in gens.values():
        g.manual_seed(args.seed)
    try:
        if args.strategy == "eg-nas":
            c = config_from_dict(EGNASConfig, cfg)
            settings = c.final.settings(epochs=epochs, keep_best=True, seed=derive_seed(args.seed, "retrain"))
            loader = task.train
            init_seed = derive_seed(args.seed, "final")
        else:
            c = config_from_dict(DartsGalConfig, cfg)
            settings = c.final.settings(epochs=epochs, keep_best=True, seed=derive_seed(args.seed, "retrain", "augment"))
            batch = int(getattr(task.train, "batch_size", None) or 64)
            loader = torch.utils.data.DataLoader(
                dataset_of(task.train, "darts-gal"), batch_size=batch, shuffle=True, num_workers=0,
                generator=torch.Generator().manual_seed(derive_seed(args.seed, "retrain", "loader")))
            init_seed = derive_seed(args.seed, "student-init")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            net = load_model("cifar:resnet20", num_classes=10).train()
        hist = finetune(net, loader, task.val, settings, teacher=teacher)
    finally:
        for k, g in gens.items():
            g.set_state(states[k])
    net.eval()
    correct = predictions(net, x_test) == y_test.numpy()
    cost = measure_cost(net, x_test[:2])
    row = {"run": "kd-resnet20", "kind": "kd-resnet20", "test_acc": float(correct.mean()),
           "val_acc": max((h["val_acc"] for h in hist), default=None), "params": int(cost.params),
           "macs": int(cost.macs), "arch": "cifar:resnet20", "train_epochs": epochs,
           "elapsed_s": time.perf_counter() - t0, "correct": correct.tolist()}
    print(f"kd-resnet20: test {100 * row['test_acc']:.2f}%  {epochs} epochs  {row['elapsed_s']:.0f} s", flush=True)
    return row


def _without_search(cfg: dict) -> dict:
    """A darts-gal config as nested data without its ``search`` sub-config (what a fixed-genotype row reads)."""
    with warnings.catch_warnings():  # the flat spelling of the benchmark's configs warns; the data are the same
        warnings.simplefilter("ignore")
        d = config_to_dict(config_from_dict(DartsGalConfig, cfg))
    d.pop("search")
    return d


def reusable_random_rows(path: Path, settings: dict, k: int) -> dict[str, dict]:
    """The ``random-1 .. random-k`` rows of another run's partial file, when that run differs from this
    one only in the searched fields: darts-gal's random rows set ``genotype`` and so skip the search
    (``DartsGalConfig.search``), and every other setting (budget, seeds, data, teacher, the
    sizing/baseline/GAL/retrain configs) must be equal. Each row gains ``reused_from`` (the file and
    the commit it was trained at).

    Raises:
        SystemExit: a missing or unreadable file, other settings, or missing random rows.
    """
    if settings["strategy"] != "darts-gal":
        raise SystemExit("--reuse-random-from: only darts-gal's random rows skip every searched field; "
                         "eg-nas' final phase reads its search config")
    try:
        other = json.loads(path.read_text())
        o_settings, o_rows = other["settings"], other["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--reuse-random-from {path}: not a bench_nas_random partial file ({exc})") from exc
    diff = sorted(key for key in settings if key != "config" and o_settings.get(key) != settings[key])
    if diff:
        raise SystemExit(f"--reuse-random-from {path}: other settings ({', '.join(diff)}); its random rows do not apply")
    if _without_search(o_settings["config"]) != _without_search(settings["config"]):
        raise SystemExit(f"--reuse-random-from {path}: its config differs outside the search fields; "
                         "its random rows do not apply")
    names = [f"random-{i}" for i in range(1, k + 1)]
    missing = [n for n in names if n not in o_rows]
    if missing:
        raise SystemExit(f"--reuse-random-from {path}: no rows {', '.join(missing)}; finish that run first")
    return {n: {**o_rows[n], "reused_from": {"path": str(path), "commit": o_rows[n].get("commit")}} for n in names}


# ------------------------------------------------------------------------------------ state


def stem_of(strategy: str, smoke: bool) -> str:
    return f"nas_random_{strategy.replace('-', '_')}" + ("_smoke" if smoke else "")


class Partial:
    """``<out>/<stem>.partial.json``: settings, finished rows, the side-by-side timing, invocations,
    and ``running`` (the rows a live process has claimed).

    Several processes may share one ``--out`` (one per core, e.g. ``--rows strategy`` in one shell and
    ``--rows random-1,random-2`` in another): every :meth:`save` holds an exclusive ``flock`` on
    ``<stem>.partial.json.lock``, re-reads the file and merges, so no process erases another's rows:
    rows and claims this process wrote (:attr:`owned`) win, every other row and claim on disk is kept,
    and invocations are the union (rows and claims of other processes: the disk's). A claim whose process is gone (killed) no longer counts
    (:meth:`claimed_by_other`)."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path, self.data = path, data
        self.owned: set[str] = set()
        self.data.setdefault("running", {})

    def save(self, claim: str | None = None) -> bool:
        """Merge with the file under the lock (:func:`_common.locked_json_update`) and write it. With
        ``claim``: take row ``claim`` for this process in the same locked step, unless it is done or
        another live process holds it (then nothing is claimed and the result is False).

        Raises:
            SystemExit: the partial file is not valid JSON.
        """
        took = False

        def merge(disk: dict) -> dict:
            nonlocal took
            for part in ("rows", "running"):  # the disk speaks for every other process, memory for this one
                mine = self.data.get(part) or {}
                merged = {k: v for k, v in (disk.get(part) or {}).items() if k not in self.owned}
                merged.update({k: v for k, v in mine.items() if k in self.owned})
                self.data[part] = merged
            self.data["running"] = {k: v for k, v in self.data["running"].items()  # drop the claims of dead processes
                                    if k in self.owned and k not in self.data["rows"] or _alive(v) is not False}
            invocations = list(disk.get("invocations") or [])
            invocations += [i for i in self.data.get("invocations") or [] if i not in invocations]
            self.data["invocations"] = invocations
            for k, v in disk.items():
                self.data.setdefault(k, v)
            took = claim is not None and claim not in self.data["rows"] and self.claimed_by_other(claim) is None
            if took:
                self.owned.add(claim)
                self.data["running"][claim] = {
                    "pid": os.getpid(), "host": _host(),
                    "since": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
            return self.data

        locked_json_update(self.path, merge, default=json_default)
        return took

    def refresh(self) -> None:
        """Take in the rows and claims other processes have written since (a save without changes)."""
        self.save()

    def claimed_by_other(self, name: str) -> dict | None:
        """The claim of another live process on row ``name`` (same host, pid alive), else None."""
        c = self.data["running"].get(name)
        if not c or name in self.owned or not _alive(c):
            return None
        return c

    def claim(self, name: str) -> bool:
        """Take row ``name`` for this process (see :meth:`save`); False when it is done or another live
        process holds it."""
        return self.save(claim=name)

    def finish(self, name: str, row: dict) -> None:
        self.owned.add(name)
        self.data["rows"][name] = row
        self.data["running"].pop(name, None)
        self.save()


def _alive(claim: dict) -> bool | None:
    """Whether the process of a ``running`` claim still runs: None when it ran on another host (unknown)."""
    if claim.get("host") != _host():
        return None
    try:
        os.kill(int(claim["pid"]), 0)
    except (ProcessLookupError, ValueError, TypeError, KeyError):
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    import socket

    return socket.gethostname()


def _norm(d: Any) -> Any:
    return json.loads(json.dumps(d, default=json_default))


# ------------------------------------------------------------------------------------ report


def report(args, settings: dict, part: Partial, stock: list[dict], target, x_test, y_test) -> tuple[Path, Path]:
    rows: dict[str, dict] = part.data["rows"]
    _backfill_gal(rows, args.work)
    order = ["strategy", *[f"random-{k}" for k in range(1, settings["k"] + 1)], "kd-resnet20"]
    names = [n for n in order if n in rows]
    timing_names = names + [s["model"] for s in stock]
    timing = part.data.get("timing")
    if timing is not None and getattr(args, "retime", False):  # report() runs once per invocation
        part.data.setdefault("timing_history", []).append(timing)
        timing = None
    if timing is None or timing["names"] != timing_names:
        tm = SMOKE_TIMING if settings["smoke"] else TIMING
        models = [load_model("cifar:resnet20", num_classes=10) if rows[n]["arch"] == "cifar:resnet20"
                  else build_from_arch(rows[n]["arch"]) for n in names]
        models += [load_model(f"cifar:{s['model'].split()[0]}", num_classes=10) for s in stock]
        t0 = time.perf_counter()
        timed = measure_interleaved([m.eval() for m in models], target, x_test[:1], rounds=tm["rounds"],
                                    repeats=tm["repeats"], min_round_ms=tm["min_round_ms"])
        timing = {"names": timing_names, "median_ms": [t["median_ms"] for t in timed],
                  "rounds_ms": [t["rounds_ms"] for t in timed], **tm, "batch": 1,
                  "seconds": time.perf_counter() - t0, "commit": git_commit()}
        part.data["timing"] = timing
        part.save()
    lat = dict(zip(timing["names"], timing["median_ms"]))
    # the least disturbed round: on a shared core a call is often pre-empted, which inflates a round's median
    lat_best = {n: float(min(r)) for n, r in zip(timing["names"], timing["rounds_ms"])}
    correct = {n: np.asarray(rows[n]["correct"], dtype=bool) for n in names}
    for s in stock:
        s["ort_latency_ms"] = lat[s["model"]]
        s["ort_latency_best_round_ms"] = lat_best[s["model"]]
    randoms = [n for n in names if rows[n]["kind"] == "random"]
    complete = "strategy" in rows and len(randoms) == settings["k"] and "kd-resnet20" in rows

    table: list[dict] = []
    for n in names:
        r = rows[n]
        table.append({"model": n, "kind": r["kind"], "test_acc": r["test_acc"], "params": r["params"],
                      "macs": r["macs"], "ort_latency_ms": lat[n],
                      "ort_latency_best_round_ms": lat_best[n], "shape": r.get("shape"),
                      "nodes_removed": r.get("nodes_removed"), "nodes_total": r.get("nodes_total"),
                      "elapsed_s": r.get("elapsed_s")})
    summary: dict[str, Any] = {}
    paired: list[dict] = []
    if randoms:
        rr = [rows[n] for n in randoms]
        mean_row = {"model": "random mean", "kind": "random-mean",
                    "test_acc": float(np.mean([r["test_acc"] for r in rr])),
                    "params": float(np.mean([r["params"] for r in rr])), "macs": float(np.mean([r["macs"] for r in rr])),
                    "ort_latency_ms": float(np.mean([lat[n] for n in randoms])),
                    "ort_latency_best_round_ms": float(np.mean([lat_best[n] for n in randoms])), "n": len(rr)}
        best = max(randoms, key=lambda n: (rows[n]["test_acc"], -int(n.split("-")[1])))
        best_row = {**next(t for t in table if t["model"] == best), "model": f"random best ({best})",
                    "kind": "random-best", "of": best}
        summary.update(random_mean=mean_row, random_best=best_row)
    if "strategy" in rows and randoms:
        cs = correct["strategy"]
        best = summary["random_best"]["of"]
        vs_best = {"a": "strategy", "b": f"random best ({best})", **mcnemar(cs, correct[best]),
                   **bootstrap_diff(cs, correct[best], n=BOOTSTRAP_N)}
        vs_mean = {"a": "strategy", "b": "random mean", **mean_random_test(cs, [correct[n] for n in randoms])}
        summary.update(vs_best=vs_best, vs_mean=vs_mean)
        paired.append(vs_best)
    if "strategy" in rows:
        cs = correct["strategy"]
        for n in names[1:]:
            if rows[n]["kind"] == "kd-resnet20":
                paired.append({"a": "strategy", "b": n, **mcnemar(cs, correct[n]), **bootstrap_diff(cs, correct[n])})
        for s in stock:
            sc = np.asarray(s["correct"], dtype=bool)
            paired.append({"a": "strategy", "b": s["model"], **mcnemar(cs, sc), **bootstrap_diff(cs, sc)})
        search = rows["strategy"].get("search") or {}
        ent = search.get("alpha_entropy") or []
        summary["alpha_entropy"] = {"final": ent[-1] if ent else None, "per_epoch": ent,
                                    "uniform": search.get("alpha_entropy_uniform"),
                                    "goal_max": 1.5, "plan": search.get("plan")}

    payload = {
        "benchmark": "nas_random", "strategy": settings["strategy"], "settings": settings, "complete": complete,
        "rows": {n: rows[n] for n in names}, "table": table, "summary": summary, "paired": paired,
        "frontier": stock, "timing": timing, "invocations": part.data.get("invocations", []),
        "report_commit": git_commit(), "versions": library_versions(), "machine": machine(),
    }
    md = _markdown(settings, part, rows, names, table, summary, paired, stock, complete, timing)
    stem = stem_of(settings["strategy"], settings["smoke"])
    return write_outputs(args.out, stem, payload, md)


def _pts(v: float) -> str:
    return f"{100 * v:.2f}%"


def _markdown(settings, part, rows, names, table, summary, paired, stock, complete, timing) -> str:
    s = settings
    inv = part.data.get("invocations") or [{}]
    first = inv[0]
    md = [f"# {s['strategy']} vs random search at equal cost, CIFAR-10, budget `{s['budget']}`"
          + (" -- SMOKE RUN, numbers meaningless" if s["smoke"] else ""), ""]
    if not complete:
        md += ["**INCOMPLETE**: rows still missing; resume with the command below and `--resume`.", ""]
    prov = (f"Provenance: `{first.get('command', '?')}`; commit {first.get('commit', '?')}; started "
            f"{first.get('date', '?')}; machine: {first.get('machine', {}).get('platform', '?')}, "
            f"{first.get('machine', {}).get('cpu_count', '?')} CPUs, affinity {first.get('affinity', '?')}, "
            f"torch threads {first.get('machine', {}).get('torch_threads', '?')}")
    if first.get("note"):
        prov += f"; {first['note']}"
    if len(inv) > 1:
        prov += f"; {len(inv) - 1} later invocation(s) (resume/report), last {inv[-1].get('date')} at {inv[-1].get('commit')}"
    md += [prov + ".", ""]
    later = [i for i in inv[1:] if i.get("note")]  # a resume's own note says where and how its rows ran
    if later:
        md += [f"- {i.get('date', '?')}, {i.get('mode', '?')} at {i.get('commit', '?')}, affinity {i.get('affinity', '?')}: "
               f"{i['note']}" for i in later] + [""]
    md += [f"Train images {s['train_images']} (of a stratified {s['train_limit']}-image subset; 10% val), test images "
           f"{s['test_images']} (about ±1.6 points at 95% for one accuracy on 1,000). KD teacher {s['teacher']} "
           f"(test {_pts(s['teacher_test_acc'])}). K = {s['k']} random genotypes (`random_genotypes(k, seed="
           f"{s['random_seed']}, primitives={s['primitives']!r})`), each through the strategy's own post-search "
           f"procedure with the same config and seed: {s['equal_cost']}. KD ResNet-20: {s['kd_note']}", ""]
    reused = [n for n in names if rows[n].get("reused_from")]
    if reused:
        srcs = sorted({(rows[n]["reused_from"]["path"], str(rows[n]["reused_from"]["commit"])) for n in reused})
        md += [f"Rows {', '.join(reused)} were copied (`--reuse-random-from`) from "
               + "; ".join(f"`{p}` (trained at commit {c})" for p, c in srcs)
               + ": a run whose settings differ only in the search fields, which a fixed-genotype row never reads.", ""]
    md += ["| model | test acc | params | MACs | ORT ms (cpu-1t, side by side): median / best round | C x cells | wall s |",
           "| --- | --- | --- | --- | --- | --- | --- |"]

    def shape(t):
        sh = t.get("shape")
        if not sh:
            return "-"
        extra = f", {t['nodes_total'] - t['nodes_removed']}/{t['nodes_total']} nodes" if t.get("nodes_total") else ""
        return f"{sh['C']} x {sh['layers']}{extra}"

    for t in table:
        md.append(f"| {t['model']} | {_pts(t['test_acc'])} | {t['params']:,} | {t['macs']:,} | "
                  f"{t['ort_latency_ms']:.3f} / {t['ort_latency_best_round_ms']:.3f} | {shape(t)} | {t['elapsed_s']:.0f} |")
    if "random_mean" in summary:
        m, b = summary["random_mean"], summary["random_best"]
        md.append(f"| **random mean** (of {m['n']}) | {_pts(m['test_acc'])} | {m['params']:,.0f} | {m['macs']:,.0f} | "
                  f"{m['ort_latency_ms']:.3f} / {m['ort_latency_best_round_ms']:.3f} | - | - |")
        md.append(f"| **{b['model']}** | {_pts(b['test_acc'])} | {b['params']:,} | {b['macs']:,} | "
                  f"{b['ort_latency_ms']:.3f} / {b['ort_latency_best_round_ms']:.3f} | {shape(b)} | - |")
    for st in stock:
        md.append(f"| {st['model']} | {_pts(st['test_acc'])} | {st['params']:,} | {st['macs']:,} | "
                  f"{st['ort_latency_ms']:.3f} / {st['ort_latency_best_round_ms']:.3f} | - | - |")
    md += ["", f"ORT latency: one interleaved run of every row and the stock models ({timing['rounds']} rounds x "
           f">= {timing['repeats']} calls, batch 1, >= {timing['min_round_ms']:.0f} ms per model per round; median "
           "of the per-round medians, and the fastest round's median, which pre-emption on a shared core disturbs least; "
           f"timed {timing.get('seconds', 0):.0f} s at commit {timing.get('commit')}). Params and MACs: fvcore, per sample.", ""]
    spread = {n: max(r) / max(min(r), 1e-9) for n, r in zip(timing["names"], timing["rounds_ms"])}
    noisy = sorted(n for n, v in spread.items() if v > DISTURBED_SPREAD)
    # the stock ResNets are one family: their fastest-round time per MAC should agree
    per_mac = {st["model"]: st["ort_latency_best_round_ms"] / st["macs"] for st in stock}
    family = max(per_mac.values()) / min(per_mac.values()) if len(per_mac) > 1 else 1.0
    if noisy or family > DISTURBED_SPREAD:
        md += [f"**The timing was disturbed**: the slowest round took more than {DISTURBED_SPREAD}x the fastest for "
               f"{len(noisy)} of {len(spread)} models ({', '.join(noisy) or '-'}), and the stock ResNets' fastest-round "
               f"time per MAC differs {family:.1f}x between depths (one family: about 1x on a quiet core). The "
               "latency column does not rank these models; `--report-only --retime` on a quiet core times them "
               "again.", ""]
    if "vs_mean" in summary:
        vm, vb = summary["vs_mean"], summary["vs_best"]
        beats_mean = vm["p_value"] < 0.05 and vm["diff_pts"] > 0
        beats_best = vb["p_value"] < 0.05 and vb["diff_pts"] > 0
        md += [f"**Beats the mean of random search: {'yes' if beats_mean else 'no'}** -- {vm['diff_pts']:+.1f} points "
               f"(strategy {_pts(vm['acc_strategy'])} vs random mean {_pts(vm['acc_random_mean'])}; paired bootstrap "
               f"over the test images, 95% CI [{vm['ci95_low']:+.1f}, {vm['ci95_high']:+.1f}], p = {vm['p_value']:.3f}).",
               "",
               f"**Beats the best random: {'yes' if beats_best else 'no'}** -- {vb['diff_pts']:+.1f} points vs "
               f"{vb['b']} (McNemar exact p = {vb['p_value']:.3f}; bootstrap 95% CI [{vb['ci95_low']:+.1f}, "
               f"{vb['ci95_high']:+.1f}]). The best of K is picked on the test images, which favours it.", ""]
    ent = summary.get("alpha_entropy")
    if ent and ent.get("final") is not None:
        md += [f"Mean per-edge entropy of softmax(alpha) at the end of the search: **{ent['final']:.4f} nats** "
               f"(uniform ln {round(math.exp(ent['uniform']))} = {ent['uniform']:.4f}; issue 18's goal <= "
               f"{ent['goal_max']}: {'met' if ent['final'] <= ent['goal_max'] else 'not met'}); per epoch: "
               + ", ".join(f"{v:.4f}" for v in ent["per_epoch"]) + f". Step plan: `{ent.get('plan')}`.", ""]
    md += _gal_markdown(rows, names, settings["budget"])
    if "latency" in settings["budget"]:
        cuts = [f"{n} {rows[n]['cut_ratio']:.2f} (latency cut {100 * rows[n]['latency_cut']:.1f}%, MACs cut "
                f"{100 * rows[n]['macs_cut']:.1f}%)" for n in names if rows[n].get("cut_ratio") is not None]
        if cuts:
            md += ["Latency cut / MACs cut against the teacher, from each run's side-by-side timing of teacher and "
                   "student in compress() (issue 18's goal 3: >= 0.6 under a latency budget): " + "; ".join(cuts) + ".",
                   ""]
    if "strategy" in rows and rows["strategy"].get("search_wall_s") is not None:
        md += [f"Search wall time {rows['strategy']['search_wall_s']:.0f} s (in the strategy row's wall time).", ""]
    md += ["Paired comparisons on the same test images (McNemar exact p; bootstrap 95% CI of the difference in "
           "points; for the random mean, the centred-bootstrap p):", "",
           "| a | b | a right only | b right only | p | diff (pts) | 95% CI |", "| --- | --- | --- | --- | --- | --- | --- |"]
    if "vs_mean" in summary:
        vm = summary["vs_mean"]
        md.append(f"| strategy | random mean | - | - | {vm['p_value']:.3f} | {vm['diff_pts']:+.1f} | "
                  f"[{vm['ci95_low']:+.1f}, {vm['ci95_high']:+.1f}] |")
    for p in paired:
        md.append(f"| {p['a']} | {p['b']} | {p['a_only']} | {p['b_only']} | {p['p_value']:.3f} | {p['diff_pts']:+.1f} | "
                  f"[{p['ci95_low']:+.1f}, {p['ci95_high']:+.1f}] |")
    md += ["", "Genotypes:", ""]
    for n in names:
        if rows[n].get("genotype"):
            md.append(f"- {n}: `{json.dumps(rows[n]['genotype'], separators=(',', ':'))}`")
    md += ["", "Config (strategy and every random row" + (", the copied ones apart from their unread search fields"
                                                          if reused else "") + "): `"
           + json.dumps(s["config"], separators=(",", ":")) + "`"]
    return "\n".join(md) + "\n"


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategy", required=True, choices=STRATEGIES)
    ap.add_argument("--data", type=Path, required=True, help="the shared data folder (../shared/data)")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/nas_random_<strategy>")
    ap.add_argument("--work", type=Path, default=None, help="compress() out dirs, one per row (checkpoints)")
    ap.add_argument("--budget", default=None, help="budget spec (default: params of cifar:resnet20)")
    ap.add_argument("--teacher", default=None, help="KD teacher (default: eg-nas resnet20, darts-gal resnet56)")
    ap.add_argument("--k", type=int, default=5, help="random genotypes")
    ap.add_argument("--random-seed", type=int, default=0, help="seed of random_genotypes")
    ap.add_argument("--seed", type=int, default=0, help="the run seed of every row")
    ap.add_argument("--train-limit", type=int, default=None, help="stratified subset of the 10k train images")
    ap.add_argument("--set", nargs="*", default=[], help="strategy config overrides key=value (a,b,c: a tuple)")
    ap.add_argument("--note", default="", help="free text for the provenance line (e.g. machine sharing)")
    ap.add_argument("--smoke", action="store_true", help="tiny settings: check that everything runs")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="skip the rows already in the partial file")
    g.add_argument("--report-only", action="store_true", help="write the tables from the partial file")
    ap.add_argument("--reuse-random-from", type=Path, default=None, metavar="PARTIAL_JSON",
                    help="darts-gal: copy the random rows of an earlier run's partial file whose settings differ only "
                         "in search fields (random rows skip the search, so they read none of them) instead of "
                         "training them again; each copied row keeps its commit and names its source")
    ap.add_argument("--rows", default=None, metavar="NAMES",
                    help="comma-separated rows this process trains, in this order (default: strategy, kd-resnet20, "
                         "random-1..K); several processes may share one --out, each with its own --rows (one per "
                         "core): a row another live process is training is skipped, and the report is written by "
                         "the process that finds every row done")
    ap.add_argument("--retime", action="store_true",
                    help="time every row side by side again (e.g. on a quieter machine); the old timing is kept")
    args = ap.parse_args(argv)
    slug = args.strategy.replace("-", "_")
    args.out = args.out or HERE / "results" / f"nas_random_{slug}"
    args.work = args.work or Path(tempfile.gettempdir()) / "slimforge_nas_random" / (slug + ("_smoke" if args.smoke else ""))
    if args.k < 1:
        ap.error("--k must be >= 1")
    all_rows = ["strategy", "kd-resnet20", *[f"random-{k}" for k in range(1, args.k + 1)]]
    todo = all_rows if args.rows is None else [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in todo if r not in all_rows]
    if unknown or not todo:
        ap.error(f"--rows: unknown rows {', '.join(unknown) or '(none given)'}; choose from {', '.join(all_rows)}")
    limit = args.train_limit if args.train_limit is not None else (512 if args.smoke else DEFAULT_TRAIN_LIMIT)
    teacher_name = args.teacher or DEFAULT_TEACHER[args.strategy]

    train = args.data / "cifar10_train10k_lossless.npz"
    test = args.data / "cifar10_test1k_lossless.npz"
    weights = args.data / f"{teacher_name}_cifar10.pt"
    for p in (train, test, weights):
        if not p.is_file():
            ap.error(f"missing {p}; pass the shared data folder with --data")
    task = load_npz_task(train, test_path=test, seed=args.seed, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         batch_size=64 if args.smoke else 128, val_fraction=0.1, limit=limit)
    x_test, y_test = collect(task.test)
    if args.smoke:
        x_test, y_test = x_test[:200], y_test[:200]
    target = Target.preset("cpu-1t", input_shape=task.spec.input_shape)
    teacher = load_model(f"cifar:{teacher_name}", num_classes=10, weights=weights).eval()
    t_correct = predictions(teacher, x_test) == y_test.numpy()
    if args.budget is None:
        args.budget = f"params={measure_cost(load_model('cifar:resnet20', num_classes=10), x_test[:2]).params}"
    cfg = {**(SMOKE if args.smoke else FULL)[args.strategy], **bench_darts_gal._parse_set(args.set)}
    primitives = config_from_dict(EGNASConfig, cfg).search.primitives if args.strategy == "eg-nas" else "darts"
    n_train = len(task.train.dataset)
    settings = _norm({
        "strategy": args.strategy, "budget": args.budget, "seed": args.seed, "k": args.k,
        "random_seed": args.random_seed, "primitives": primitives, "cell_steps": CELL_STEPS,
        "cell_multiplier": CELL_MULTIPLIER, "train_limit": limit, "train_images": n_train,
        "test_images": int(len(y_test)), "teacher": teacher_name, "teacher_test_acc": float(t_correct.mean()),
        "smoke": args.smoke, "config": cfg,
        "equal_cost": ("darts-gal's public `genotype` field skips the search: sizing to the budget, KD baseline, GAL, "
                       "KD retrain" if args.strategy == "darts-gal" else
                       "eg-nas' own final phase called directly (no public fixed-genotype entry): sizing to the "
                       "budget, seeded init, `EGNAS._retrain` (KD)"),
        "kd_note": ("darts-gal's retrain settings for E = baseline + GAL passes + retrain epochs (its total training)"
                    if args.strategy == "darts-gal" else "eg-nas' retrain settings for `final_epochs`"),
    })
    print(f"{args.strategy}: budget {args.budget}, teacher {teacher_name} {100 * t_correct.mean():.2f}%, "
          f"{n_train} train images", flush=True)

    stem = stem_of(args.strategy, args.smoke)
    ppath = args.out / f"{stem}.partial.json"
    if ppath.is_file():
        if not (args.resume or args.report_only):
            raise SystemExit(f"{ppath} exists: pass --resume to continue it or --report-only, or remove it")
        part = Partial(ppath, json.loads(ppath.read_text()))
        if part.data["settings"] != settings:
            diff = sorted(k for k in settings if part.data["settings"].get(k) != settings[k])
            raise SystemExit(f"{ppath} was written with other settings ({', '.join(diff)}); use another --out")
    else:
        if args.report_only:
            raise SystemExit(f"--report-only: no {ppath}")
        part = Partial(ppath, {"settings": settings, "rows": {}, "invocations": []})
    part.data.setdefault("invocations", []).append({
        "command": " ".join(["python", "benchmarks/bench_nas_random.py", *map(shlex.quote, sys.argv[1:] if argv is None
                                                                               else argv)]),
        "commit": git_commit(), "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "note": args.note,
        "mode": "report-only" if args.report_only else "resume" if args.resume else "run"})
    part.save()
    if args.reuse_random_from is not None and not args.report_only:
        for name, row in reusable_random_rows(args.reuse_random_from, settings, args.k).items():
            if name not in part.data["rows"]:
                part.finish(name, row)
                print(f"{name}: copied from {args.reuse_random_from}", flush=True)

    if not args.report_only:
        genotypes = random_genotypes(args.k, args.random_seed, primitives, steps=CELL_STEPS, multiplier=CELL_MULTIPLIER)
        for name in todo:
            part.refresh()
            rows = part.data["rows"]
            if name in rows:
                print(f"{name}: done before, skipped", flush=True)
                continue
            other = part.claimed_by_other(name)
            if other is not None:
                print(f"{name}: running in process {other['pid']} since {other['since']}, skipped", flush=True)
                continue
            if name == "kd-resnet20" and "strategy" not in rows:
                print("kd-resnet20: waits for the strategy row (its epochs follow the strategy's GAL steps), "
                      "skipped", flush=True)
                continue
            if not part.claim(name):
                print(f"{name}: another process took it a moment ago, skipped", flush=True)
                continue
            if name == "strategy":
                row = run_strategy(args, cfg, teacher, task, target, x_test, y_test)
            elif name.startswith("random-"):
                k = int(name.split("-")[1])
                row = run_random(k, genotypes[k - 1], args, cfg, teacher, task, target, x_test, y_test)
            else:
                ep = kd_epochs(args.strategy, cfg, rows["strategy"], n_train)
                row = run_kd_resnet20(args, cfg, teacher, task, target, x_test, y_test, ep)
            row["commit"] = git_commit()
            part.finish(name, row)
        part.refresh()
        missing = [n for n in all_rows if n not in part.data["rows"]]
        if missing:
            print(f"rows {', '.join(missing)} are not done yet (another process, or other --rows); the process "
                  "that finishes the last row writes the report, or run --report-only", flush=True)
            return 0

    stock = frontier(args.data, x_test, y_test, target, depths=(20,) if args.smoke else (20, 32, 44, 56),
                     repeats=5)
    j, m = report(args, settings, part, stock, target, x_test, y_test)
    print(m.read_text())
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
