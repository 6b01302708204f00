"""The fitness of an evolved pruning metric: prune the two tasks with it, retrain, measure.

Source: Liu et al., "Evolving Transferable Neural Pruning Functions", GECCO'22 (paper 001),
Sec. 3.2 (function effectiveness evaluation) and supplementary Sec. 10.2 / 10.4 (task
settings); ``docs/algorithms/gp-prune.md`` (the evaluation loop and the CPU profile). The task
profiles are in :mod:`compress.evolution.tasks`, the networks and the pruning engine in
:mod:`compress.evolution.engine`; the evaluation loop itself is described in the docstring of
:mod:`compress.evolution.tasks`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from compress.budgets import measure_cost
from compress.errors import ConfigError
from compress.evolution.engine import (
    PrunableNet,
    build_net,
    channel_operands,
    prune_unit,
    removal_order,
    score_channels,
)
from compress.evolution.metrics import ChannelOperands, MetricError, PruningMetric, reference_score
from compress.evolution.primitives import EvalLimits, evaluation_limits
from compress.evolution.tasks import PROFILES, PruneTaskSpec, Splits, load_splits
from compress.exporters.atomic import write_bytes_atomic, write_text_atomic
from compress.training.data import flip_crop
from compress.training.loop import FitPlan, cosine_factor, evaluate, fit, main_logits, make_optimizer
from compress.training.runtime import Runtime

__all__ = [
    "EVAL_FAILURES",
    "PreparedTask",
    "SyntheticFitness",
    "TaskFitness",
    "accuracy",
    "evaluate_task",
    "prepare_task",
    "train_epochs",
]

EVAL_FAILURES = (MetricError, RuntimeError, ValueError, ArithmeticError, MemoryError, IndexError)
"""Exceptions that mark one evaluation as failed (fitness 0, gp-prune.md choice 4) instead of stopping the run."""


# ============================================================================ training


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000,
             runtime: Runtime | None = None) -> float:
    """Top-1 accuracy in [0, 1] (eval mode, state restored); batches of ``batch`` go to the
    net's device (the ``runtime``'s, under its autocast, when given). 0.0 without samples."""
    batches = [(x[i: i + batch], y[i: i + batch]) for i in range(0, len(x), batch)]
    return evaluate(net, batches, runtime=runtime) or 0.0


class _SeededBatches:
    """The training batches of :func:`train_epochs`: each pass draws a permutation of the
    ``N`` samples from ``generator``, then yields ``ceil(N / batch_size)`` batches in that order
    (the last one smaller), flip-crop augmented from the same generator when asked. Iterated
    once per epoch, it draws the same stream for the same seed (and the same stream as the loop
    it replaced)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator,
                 augment: str) -> None:
        self.x, self.y, self.batch_size, self.generator, self.augment = x, y, batch_size, generator, augment

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(self.y), generator=self.generator)
        for s in range(len(self)):
            idx = perm[s * self.batch_size: (s + 1) * self.batch_size]
            xb, yb = self.x[idx], self.y[idx]
            if self.augment == "flip-crop":
                xb = flip_crop(xb, self.generator)
            yield xb, yb


def _lr_factor(schedule: str, total: int, milestones: tuple[float, ...], gamma: float) -> Callable[[int], float] | None:
    """The per-iteration lr factor of a :func:`train_epochs` schedule (None: constant)."""
    if schedule == "step":
        marks = [int(m * total) for m in milestones]
        return lambda it: gamma ** sum(it >= m for m in marks)
    if schedule == "cosine":
        return lambda it: cosine_factor(it, total)
    return None


def train_epochs(
    net: nn.Module,
    data: Splits,
    *,
    optimizer: str,
    lr: float,
    weight_decay: float,
    epochs: int,
    batch_size: int,
    seed: int,
    momentum: float = 0.9,
    schedule: str = "constant",
    milestones: tuple[float, ...] = (),
    gamma: float = 1.0,
    augment: str = "none",
    runtime: Runtime | None = None,
) -> float:
    """Train in place on :func:`compress.training.fit`, keep the weights of the best validation
    epoch; returns that accuracy.

    ``schedule``: "constant", "step" (lr x ``gamma`` at each ``milestones`` fraction of all
    iterations) or "cosine" (:func:`~compress.training.cosine_factor`). Batches come from a
    ``torch.Generator`` seeded with ``seed`` (:class:`_SeededBatches`), so the same seed gives the
    same weights. The net trains on ``runtime`` (default ``Runtime()``: CPU, fp32) and comes back
    to the device it was on, in the default memory format.

    Raises:
        TrainingDivergedError: the loss or the weights became non-finite (the net holds the
            weights of the last finished epoch).
    """
    runtime = runtime or Runtime()
    first = next(iter(net.parameters()), None)
    home = first.device if first is not None else torch.device("cpu")
    runtime.prepare(net)
    try:
        if epochs <= 0:
            return accuracy(net, data.x_val, data.y_val, runtime=runtime)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = make_optimizer(params, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
        batches = _SeededBatches(data.x_train, data.y_train, batch_size, torch.Generator().manual_seed(int(seed)),
                                 augment)
        total = max(1, epochs * len(batches))

        def step(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
            x, y = batch
            return F.cross_entropy(main_logits(net(x)).float(), y), int(y.numel())

        plan = FitPlan(modules=[net], optimizer=opt, step=step, epochs=epochs,
                       lr_factor=_lr_factor(schedule, total, milestones, gamma),
                       validate=lambda: accuracy(net, data.x_val, data.y_val, runtime=runtime), keep_best=True)
        history = fit(plan, batches, runtime=runtime, phase="gp-task-train", lr=lr)
        return max(float(rec["val_acc"]) for rec in history)
    finally:
        net.to(home)
        if any(p.dim() == 4 for p in net.parameters()):
            net.to(memory_format=torch.contiguous_format)


# ============================================================================ prepared task


@dataclass
class PreparedTask:
    """A task ready for evaluations: data, the pretrained baseline weights and its accuracies."""

    spec: PruneTaskSpec
    data: Splits
    baseline_state: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)
    calib_idx: torch.Tensor | None = None

    def baseline(self) -> PrunableNet:
        net = build_net(self.spec, self.data.input_shape, self.data.num_classes)
        net.load_state_dict(self.baseline_state)
        return net.eval()


def _macs(net: PrunableNet, input_shape) -> int:
    first = next(iter(net.parameters()))
    return int(measure_cost(net, first.new_zeros(1, *input_shape)).macs)


def prepare_task(
    spec: PruneTaskSpec,
    seed: int,
    cache_dir: str | Path,
    data_dir: str | None = None,
    progress: Callable[[str, int, int, dict], None] | None = None,
) -> PreparedTask:
    """Load the task data and its pretrained baseline (train it once and cache it).

    The baseline is stored as ``<cache_dir>/<spec.name>-<spec.baseline_key(seed)>.safetensors``
    (+ ``.json`` with its accuracies), written atomically; a changed setting never loads stale
    weights. ``info`` holds the baseline's val / fitness-split accuracy and the MACs before and
    after the (metric-independent) pruning schedule.

    Raises:
        DataError: missing real-data files.
    """
    from safetensors.torch import load_file
    from safetensors.torch import save as st_save

    data = load_splits(spec, seed, data_dir)
    path = Path(cache_dir) / f"{spec.name}-{spec.baseline_key(seed)}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        state = load_file(str(path))
        info = json.loads(meta_path.read_text())
        info["cached"] = True
    else:
        if progress:
            progress("baseline", 0, 1, {"task": spec.name})
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_net(spec, data.input_shape, data.num_classes)
            val = train_epochs(
                net, data, optimizer=spec.pretrain_optimizer, lr=spec.pretrain_lr, weight_decay=spec.pretrain_wd,
                epochs=spec.pretrain_epochs, batch_size=spec.batch_size, seed=seed, momentum=spec.momentum,
                schedule="cosine" if spec.pretrain_optimizer == "sgd" else "constant",
                augment=spec.augment,
            )
        state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
        pruned = build_net(spec, data.input_shape, data.num_classes).eval()
        for i, s in enumerate(spec.schedule):
            prune_unit(pruned, i, torch.arange(spec.widths[i] - sum(s)))
        info = {
            "task": spec.name,
            "seed": int(seed),
            "baseline_val_acc": val,
            "baseline_fit_acc": accuracy(net, data.x_fit, data.y_fit),
            "macs_before": _macs(net, data.input_shape),
            "macs_after": _macs(pruned, data.input_shape),
            "widths_before": list(spec.widths),
            "widths_after": list(spec.pruned_widths),
            "pretrain_s": time.perf_counter() - t0,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, st_save(state))
        write_text_atomic(meta_path, json.dumps(info, indent=2))
        info["cached"] = False
        if progress:
            progress("baseline", 1, 1, {"task": spec.name, "val_acc": val})
    g = torch.Generator().manual_seed(int(seed) + 7919)
    n = len(data.y_train)
    calib_idx = torch.sort(torch.randperm(n, generator=g)[: min(spec.calib_samples, n)]).values
    return PreparedTask(spec, data, state, info, calib_idx)


def evaluate_task(
    task: PreparedTask, metric: PruningMetric, seed: int, class_reduction: str = "sum"
) -> dict:
    """Prune the task's baseline with ``metric`` by its schedule and retrain (module docstring).

    Returns:
        ``{"acc": fitness-split accuracy, "val_acc": best validation accuracy, "widths": [...]}``.

    Raises:
        MetricError: the metric fails or gives non-finite scores on a layer (also other
            :data:`EVAL_FAILURES` from the tree engine); callers give such trees fitness 0.
    """
    spec, data = task.spec, task.data
    xs, ys = data.x_train[task.calib_idx], data.y_train[task.calib_idx]
    limits = EvalLimits(max_elements=spec.max_elements, max_flops=spec.max_flops)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = task.baseline()
        val = None
        for step in range(spec.steps):
            for li, sched in enumerate(spec.schedule):
                r = sched[step]
                if r == 0:
                    continue
                ops = channel_operands(net, li, xs if metric.needs_feature_maps else None, ys, spec.max_map_hw)
                with evaluation_limits(limits):
                    scores = score_channels(metric, ops, class_reduction, spec.score_chunk)
                order = removal_order(scores)
                keep = torch.sort(order[r:]).values
                prune_unit(net, li, keep)
            val = train_epochs(
                net, data, optimizer=spec.retrain_optimizer, lr=spec.retrain_lr, weight_decay=spec.retrain_wd,
                epochs=spec.epochs_per_step, batch_size=spec.batch_size, seed=seed + 1000 * step,
                momentum=spec.momentum, schedule="step" if spec.retrain_optimizer == "sgd" else "constant",
                milestones=spec.lr_milestones, gamma=spec.lr_gamma, augment=spec.augment,
            )
        acc = accuracy(net, data.x_fit, data.y_fit)
    if list(net.widths) != list(spec.pruned_widths):
        raise RuntimeError(f"internal: widths {net.widths} != schedule {spec.pruned_widths}")
    return {"acc": acc, "val_acc": val, "widths": list(net.widths)}


# ============================================================================ fitness callables

_PREPARED: dict[tuple, tuple[PreparedTask, PreparedTask]] = {}
"""Per-process memo of prepared task pairs (each worker process loads them once)."""


@dataclass(frozen=True)
class TaskFitness:
    """Picklable fitness callable for ``map_fn``: ``fn((expr, seed)) -> record`` on a task profile.

    The record is ``{"acc": [acc_A, acc_B], "error": None | str, "tasks": [...], "wall_s": float}``;
    the evolution loop combines the two accuracies (Eq. 1 / 2). A tree that fails on a real
    layer (:data:`EVAL_FAILURES`) gets ``acc = [0, 0]`` and its error message (gp-prune.md, choice 4).

    Attributes:
        profile: a key of :data:`PROFILES`.
        run_seed: seeds the data splits and the baselines (one baseline per (task, seed)).
        cache_dir: where pretrained baselines are cached.
        data_dir: the real-data folder (``"full"`` only).
        class_reduction: "sum" (reference) or "mean" of per-class uni-tree scores.
    """

    profile: str
    run_seed: int
    cache_dir: str
    data_dir: str | None = None
    class_reduction: str = "sum"

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"unknown task profile {self.profile!r}; choose one of {', '.join(PROFILES)}.")

    def prepare(self, progress: Callable[[str, int, int, dict], None] | None = None) -> list[dict]:
        """Load (or pretrain and cache) both baselines in this process; returns their info dicts."""
        key = (self.profile, self.run_seed, self.cache_dir, self.data_dir)
        if key not in _PREPARED:
            _PREPARED[key] = tuple(
                prepare_task(spec, self.run_seed, self.cache_dir, self.data_dir, progress)
                for spec in PROFILES[self.profile]
            )
        return [dict(t.info) for t in _PREPARED[key]]

    def __call__(self, item: tuple[str, int]) -> dict:
        expr, seed = item
        self.prepare()
        tasks = _PREPARED[(self.profile, self.run_seed, self.cache_dir, self.data_dir)]
        t0 = time.perf_counter()
        try:
            metric = PruningMetric.from_string(expr, name="candidate")
            results = [evaluate_task(t, metric, int(seed), self.class_reduction) for t in tasks]
        except EVAL_FAILURES as exc:
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            return {"acc": [0.0, 0.0], "error": f"{type(exc).__name__}: {msg}", "tasks": [],
                    "wall_s": time.perf_counter() - t0}
        return {"acc": [r["acc"] for r in results], "error": None, "tasks": results,
                "wall_s": time.perf_counter() - t0}


def _synthetic_operands(seed: int) -> ChannelOperands:
    g = torch.Generator().manual_seed(seed)  # a CPU generator: these operands live on the CPU
    cpu, f64 = torch.device("cpu"), torch.float64
    c, n_cls, per, d = 12, 3, 6, 9
    w = (torch.randn(c + 2, 3, 3, 3, generator=g, dtype=f64, device=cpu)
         * torch.rand(c + 2, 1, 1, 1, generator=g, device=cpu))
    bn = torch.cat([torch.rand(c, 1, generator=g, device=cpu) + 0.2, torch.randn(c, 1, generator=g, device=cpu) * 0.1,
                    torch.randn(c, 1, generator=g, device=cpu) * 0.1, torch.rand(c, 1, generator=g, device=cpu) + 0.5],
                   dim=1).double()
    y = torch.arange(n_cls * per, device=cpu) % n_cls
    sep = torch.rand(c, 1, 1, generator=g, dtype=f64, device=cpu) * 2
    means = torch.randn(c, n_cls, d, generator=g, dtype=f64, device=cpu)[:, y] * sep
    f = torch.relu(torch.randn(c, len(y), d, generator=g, dtype=f64, device=cpu) + means) + 0.01
    return ChannelOperands(W=w.unsqueeze(0), WI=w[:c], B=bn, F=f, y=y)


def _rank_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a.double(), stable=True)).double()
    rb = torch.argsort(torch.argsort(b.double(), stable=True)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else 0.0


@dataclass(frozen=True)
class SyntheticFitness:
    """A deterministic stand-in fitness (about a millisecond per tree) for tests and dry runs.

    "Task A" is the agreement of the tree's channel ranking with the l1-norm ranking on one
    fixed random layer, "task B" the agreement with the Fisher-ratio ranking on another,
    each mapped to [0, 1] as ``(1 + Spearman rho) / 2``. Same record format as
    :class:`TaskFitness`; the seed of the item is ignored (the value depends on the tree only).
    """

    class_reduction: str = "sum"

    def prepare(self, progress=None) -> list[dict]:
        return [{"task": "synthetic-l1"}, {"task": "synthetic-fisher"}]

    def __call__(self, item: tuple[str, int]) -> dict:
        expr, _seed = item
        t0 = time.perf_counter()
        accs = []
        try:
            metric = PruningMetric.from_string(expr, name="candidate")
            for s, target in ((101, "l1"), (202, "fisher")):
                ops = _synthetic_operands(s)
                with evaluation_limits(EvalLimits(max_elements=2**20, max_flops=2**26)):
                    score = metric.score(ops, class_reduction=self.class_reduction)
                accs.append(0.5 * (1.0 + _rank_corr(score, reference_score(target, ops))))
        except EVAL_FAILURES as exc:
            return {"acc": [0.0, 0.0], "error": f"{type(exc).__name__}: {str(exc)[:200]}", "tasks": [],
                    "wall_s": time.perf_counter() - t0}
        return {"acc": accs, "error": None, "tasks": [], "wall_s": time.perf_counter() - t0}
