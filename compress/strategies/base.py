"""What a strategy is given and what it returns.

A strategy sees the world through a :class:`StrategyContext`: a private working copy of the
user's model, the frozen teacher, the task data, the budget already resolved to absolute
limits, and a budget *oracle* (``ctx.check(model)``) that measures candidates through
``compress.budgets`` (and ``compress.profiling`` when the budget limits latency). It never
touches the user's model, and it never prints: progress goes through ``ctx.progress``. Its work is
split into named phases (``with ctx.phase("prune"):``, names from :data:`compress.phases.PHASES`),
each shown in the progress output, timed into the report and bounded by its time limit.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from compress.budgets import Budget, BudgetCheck, Cost, measure_cost
from compress.data import TaskData
from compress.errors import ConfigError
from compress.executors import Executor, SerialExecutor
from compress.phases import phase as _run_phase
from compress.profiling import Target
from compress.strategies.config_tree import config_from_dict, config_to_dict, replace_config
from compress.training.runtime import Runtime

__all__ = ["Strategy", "StrategyContext", "StrategyOutput", "ProgressFn", "config_to_dict", "config_from_dict"]

# progress(phase, done, total, info) -- total may be None for open-ended work
ProgressFn = Callable[[str, int, "int | None", dict], None]


def _no_progress(phase: str, done: int, total: int | None, info: dict) -> None:
    return None


@dataclass
class StrategyContext:
    """Everything a strategy run may use.

    Attributes:
        model: the strategy's own copy of the user's model (eval mode); free to modify.
        teacher: frozen copy of the teacher used for distillation (eval mode, no grad).
        data: train / val (/ test) loaders yielding ``(x, y)``, x ``(B, C, H, W)`` float32.
        budget: the budget with every limit absolute (already resolved against the teacher).
        teacher_cost: the teacher's :class:`Cost` (MACs per sample, params).
        example_inputs: ``(2, C, H, W)`` tensor for tracing.
        target: runtime profile that latency limits refer to.
        seed: run seed.
        out_dir: where the strategy may write checkpoints (None: no checkpoints).
        progress: callback ``progress(phase, done, total, info)``.
        executor: where population evaluations run (:class:`~compress.executors.Executor`;
            serial by default). Used by eg-nas (the CMA-ES candidates of each ``tell``); the
            other strategies accept it and run in-process. The caller owns and closes it.
        latency_fn: a candidate's latency on ``target`` in ms (a
            :class:`~compress.profiling.LatencyEstimate`: a float with its relative standard error);
            what :meth:`check` calls when the budget limits latency.
        latency_ratio_fn: ``latency_ratio_fn(a, b)``: the latency of network ``a`` over that of ``b``
            on ``target``, both timed side by side in interleaved rounds (the median per-round
            ratio, a :class:`~compress.profiling.LatencyEstimate`), for choosing between two
            candidates; None where the caller gives no such probe.
        trace_time_limit_s: wall-clock limit (seconds) for tracing steps that may hang, e.g.
            building a Torch-Pruning dependency graph (use
            :func:`compress.strategies._parts.time_limit.time_limit`); None: no limit.
        time_limits: ``{phase: seconds or None}``, the limit of each :meth:`phase` (``compress()``
            passes :func:`compress.phases.resolve_time_limits` of its ``time_limits``); a phase not
            in it has no limit (the default: an empty dict, no limits).
        runtime: device, precision and data parallelism of every training phase
            (:class:`compress.training.Runtime`); pass it to :func:`compress.training.fit` /
            :func:`~compress.training.finetune`. The models in the context live on the CPU in
            float32 between phases (export, counting and profiling need that).
    """

    model: nn.Module
    teacher: nn.Module
    data: TaskData
    budget: Budget
    teacher_cost: Cost
    example_inputs: torch.Tensor
    target: Target
    seed: int = 0
    out_dir: Path | None = None
    progress: ProgressFn = _no_progress
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)
    latency_fn: Callable[[nn.Module], float] | None = None
    latency_ratio_fn: Callable[[nn.Module, nn.Module], float] | None = None
    memory_fn: Callable[[nn.Module], float] | None = None
    executor: Executor = field(default_factory=SerialExecutor)
    trace_time_limit_s: float | None = None
    runtime: Runtime = field(default_factory=Runtime)
    time_limits: Mapping[str, float | None] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Run a phase (``name`` from :data:`compress.phases.PHASES`): shown through ``progress``
        when it starts and ends, its wall time in the report as ``wall_s.<name>``, bounded by
        ``time_limits[name]`` seconds (:func:`compress.phases.phase`).

        Raises:
            TimeLimitError: the phase ran past its limit (the message names it and how to raise it).
        """
        with _run_phase(name, limits=self.time_limits, progress=self.progress, wall=self.wall_s):
            yield

    def log(self, **record: Any) -> None:
        """Append one step to the run history (JSON-ready values only)."""
        self.history.append(record)

    def cost(self, model: nn.Module) -> Cost:
        return measure_cost(model, self.example_inputs)

    def check(self, model: nn.Module) -> tuple[Cost, BudgetCheck, float | None]:
        """The budget oracle: measure ``model`` and check it against the budget.

        Latency (ms, median on ``target``) and peak session memory (bytes, measured in a child
        process) are measured only when the budget limits them.
        """
        cost = self.cost(model)
        latency = memory = None
        if self.budget.needs_latency:
            if self.latency_fn is None:  # pragma: no cover - set by the API
                raise ConfigError("This budget limits latency but no latency probe was configured.")
            latency = self.latency_fn(model)
        if self.budget.needs_memory:
            if self.memory_fn is None:  # pragma: no cover - set by the API
                raise ConfigError("This budget limits peak memory but no memory probe was configured.")
            memory = self.memory_fn(model)
        return cost, self.budget.check(cost, latency_ms=latency, memory_bytes=memory), latency


@dataclass
class StrategyOutput:
    """What a strategy returns: the student (an ordinary ``nn.Module``) and facts about it.

    ``arch``: JSON-ready arguments of the strategy's :meth:`Strategy.build_student` for students
    that are *not* a resized copy of the user's model (grown or searched networks); saved in
    ``student.arch.json`` so :func:`compress.load_student` rebuilds them without a base model.

    ``report_sections``: ``(title, markdown)`` pairs the strategy wants a reader to see in
    ``report.md`` (e.g. darts-gal's nodes-kept table and genotype drawing), rendered in order
    after the summary; the same facts stay machine-readable in ``info``.
    """

    student: nn.Module
    info: dict[str, Any] = field(default_factory=dict)
    arch: dict[str, Any] | None = None
    report_sections: list[tuple[str, str]] = field(default_factory=list)


class Strategy(abc.ABC):
    """Base class of every compression strategy. Subclasses set ``config_cls`` (a frozen
    dataclass) and implement :meth:`run`; ``name`` is set by ``@register_strategy``."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type]
    paper: ClassVar[str] = ""
    #: True for strategies that only remove parts of the given model (gp-prune): ``compress()``
    #: then refuses a budget the model already meets (:class:`~compress.errors.BudgetAlreadyMetError`).
    #: False for strategies that build a new network, which such a budget still bounds.
    shrinks_teacher: ClassVar[bool] = False

    def __init__(self, config: Any | None = None, **overrides: Any) -> None:
        if config is None:
            config = config_from_dict(self.config_cls, overrides)
        elif isinstance(config, dict):
            config = config_from_dict(self.config_cls, config)
        if overrides and config is not None and not isinstance(config, dict):
            config = replace_config(config, **overrides)
        if not isinstance(config, self.config_cls):
            raise ConfigError(
                f"Strategy {self.name!r} takes a {self.config_cls.__name__}, got {type(config).__name__}."
            )
        self.config = config

    @classmethod
    def demo_config(cls, epochs: int) -> dict[str, Any]:
        """Config overrides for ``slimforge demo`` (CPU scale, minutes): ``epochs`` is the
        final-training budget the user asked for."""
        return {}

    @classmethod
    def build_student(cls, arch: dict[str, Any]) -> nn.Module:
        """Rebuild an untrained student from ``StrategyOutput.arch`` (strategies whose students
        are new architectures override this)."""
        raise NotImplementedError(f"strategy {cls.name!r} students are resized copies of the base model")

    @abc.abstractmethod
    def run(self, ctx: StrategyContext) -> StrategyOutput:
        """Compress ``ctx.model`` until it meets ``ctx.budget``; return the student."""
