"""``compress()``: the one verb of slimforge.

Pipeline: validate inputs -> copy the model -> measure the teacher (fvcore MACs, params,
accuracy, ONNX latency) -> resolve the budget -> run the strategy -> export the student to
ONNX -> validate parity on real data -> measure its latency -> check the budget with the
*measured* latency -> :class:`CompressionResult`.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import torch
from torch import nn

from compress import inputs, measure
from compress.budgets import Budget, CostError, measure_cost
from compress.data import TaskData, as_task_data, collect
from compress.errors import CompressError, UnsupportedModelError, disk_full
from compress.executors import Executor, make_executor
from compress.exporters import export_onnx, validate_onnx
from compress.exporters.validate import DEFAULT_MAX_SAMPLES as PARITY_MAX_SAMPLES
from compress.inputs import check_seed
from compress.options import RUNTIME_KEYWORDS, CompressKeywords, CompressOptions
from compress.pareto import pareto_record
from compress.phases import phase as run_phase
from compress.phases import resolve_time_limits
from compress.profiling import LatencyEstimate, Target, profile_latency, profile_peak_memory
from compress.result import CompressionResult, ModelReport
from compress.signals import cleanup_on_signals, raise_if_terminated
from compress.strategies import get_strategy  # the package registers the built-in strategies
from compress.strategies._parts.checkpoint import config_key_omit, loader_generators, open_run_dir, run_identity
from compress.time_limit import on_hang_exit, time_limit
from compress.strategies._parts.training import evaluate
from compress.strategies.base import ProgressFn, StrategyContext, config_to_dict
from compress.training.runtime import Runtime, RuntimeOptions

__all__ = ["compress", "check_seed", "seed_everything", "library_versions"]

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random`` (DEAP draws from it), NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("slimforge", "torch", "torchvision", "timm", "fvcore", "onnx", "onnxruntime", "onnxscript",
                "torch-pruning", "deap", "cma"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class _TqdmProgress:
    """Default progress: one tqdm bar per phase, on stderr."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int | None, info: dict) -> None:
        from tqdm.auto import tqdm

        bar = self.bars.get(phase)
        if bar is None:
            bar = self.bars[phase] = tqdm(total=total, desc=phase, leave=False, dynamic_ncols=True)
        elif bar.total != total:  # a phase's own start event has no total; its work may give one
            bar.total = total
        bar.n = done
        if info:
            bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items() if not isinstance(v, dict)}, refresh=False)
        bar.refresh()
        if total is not None and done >= total:
            bar.close()
            self.bars.pop(phase, None)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _progress_fn(progress: bool | ProgressFn) -> tuple[ProgressFn, Callable[[], None]]:
    """The progress callback of a run and what closes it. Every progress event is also a safe point
    for a SIGTERM whose raise was swallowed (:func:`compress.signals.raise_if_terminated`)."""
    if callable(progress):
        fn, close = progress, (lambda: None)
    elif progress:
        p = _TqdmProgress()
        fn, close = p, p.close
    else:
        fn, close = (lambda *a, **k: None), (lambda: None)

    def checked(phase: str, done: int, total: int | None, info: dict) -> None:
        raise_if_terminated()
        fn(phase, done, total, info)

    return checked, close


@cleanup_on_signals()  # SIGTERM unwinds through the cleanup below (temp folder, unused manifest)
def compress(
    model: nn.Module,
    budget: Budget | str | dict,
    *,
    data: TaskData | dict | tuple,
    strategy: str = "gp-prune",
    config: Any = None,
    target: Target | str | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    options: CompressOptions | dict | None = None,
    runtime: RuntimeOptions | dict | None = None,
    **keywords: Unpack[CompressKeywords],
) -> CompressionResult:
    """Compress ``model`` to fit ``budget`` with one strategy and return a validated student.

    Args:
        model: the trained network to compress, ``(B, C, H, W) -> (B, K)`` logits. Never modified.
        budget: a :class:`Budget`, a spec string (``"macs=0.5x"``, ``"params=1M,latency=2ms"``)
            or a dict of Budget fields. Relative limits are resolved against ``model``'s cost.
        data: :class:`TaskData` or ``{"train": loader, "val": loader, "test": loader}``; loaders
            yield ``(x, y)``. Without ``val`` a seeded split of ``train`` is made.
        strategy: a registered strategy name (see :func:`list_strategies`).
        target: runtime profile for latency (a :class:`Target` or preset name); default ``cpu-1t``.
        out_dir: when given, the report and artifacts are saved there (``result.save``).
        seed: seeds ``random``, NumPy and torch, and restarts the shuffling ``torch.Generator`` of
            every loader in ``data`` from it (each is handed back in the state it came in). The
            rule: the student is a function of the model's weights and buffers, the data's
            contents, ``seed``, the config, the library versions and the thread count, never of
            what drew from the loaders or RNGs before the call (a teacher trained on the same
            loaders in the same process gives the student a teacher loaded from disk gives).
        config: the strategy's config dataclass, or a dict of its fields.
        options: a :class:`compress.CompressOptions` (or dict of its fields): everything below
            ``runtime``. Each of its fields is also accepted as a keyword argument
            (``compress(..., mobile=False)``), which overrides the same field of ``options``.
        runtime: a :class:`compress.training.RuntimeOptions` (or dict of its fields): device,
            precision, DDP processes and loaders (``num_workers``, ``pin_memory``,
            ``channels_last``); the keywords ``device``, ``precision`` and ``devices`` (below)
            override its fields.

    Options (fields of :class:`~compress.options.CompressOptions`, or keyword arguments):
        teacher: distillation teacher; defaults to a frozen copy of ``model``.
        progress: True for tqdm bars on stderr, False for silence, or a callback
            ``progress(phase, done, total, info)``.
        model_spec: the spec string ``model`` was built from, recorded so the student can be
            reloaded by name.
        mobile: also write the ORT-format model (``student.ort``) and the NNAPI/CoreML usability
            report (onnxruntime's tools).
        int8: also quantise the student to int8 (static, calibrated on 256 training images, with
            :data:`compress.exporters.mobile.DEFAULT_INT8_SETTINGS`), re-validate its top-1 accuracy
            against the fp32 ONNX on the test (or val) split, and time int8 and fp32 side by side on
            ``target``. ``result.mobile["int8"]`` then holds ``accuracy``, ``fp32_accuracy``,
            ``drop_pts``, ``latency_ms`` (int8) and ``fp32_latency_ms`` (medians of the side-by-side
            rounds), ``latency_p90_ms`` (a separate ``profile_latency`` run of the int8 file),
            ``speedup`` (fp32 / int8), ``recommended`` (speedup >= 1 and drop <= 1 point, see
            :func:`compress.exporters.mobile.int8_recommendation`), ``reason`` (why not, else None)
            and ``settings``; the manifest marks ``student.int8.onnx`` ``recommended: false`` with
            the reason when int8 does not pay.
        memory: measure the peak resident memory (bytes) an onnxruntime session of the teacher and
            of the student adds on ``target``, each in a child process (about a second each;
            :func:`compress.profiling.profile_peak_memory`). Always on when the budget limits
            ``memory``.
        resume: with ``out_dir``, continue from the checkpoints a killed run with the same settings
            left in ``out_dir/checkpoints`` (every strategy checkpoints at each iteration, epoch or
            phase boundary); the student, history and report are those of an uninterrupted run.
            Checkpoints of another run (strategy, config, seed, budget, target, model, teacher,
            data or slimforge/torch version) raise :class:`CheckpointError`. ``False`` deletes
            ``out_dir/checkpoints`` first and starts over.
        executor: where the strategy evaluates its population: ``"serial"`` (default),
            ``"process"`` (local pool), ``"ray"`` (Ray tasks), or an
            :class:`~compress.executors.Executor` (the caller closes it). Used by eg-nas (CMA-ES
            candidates); grow, darts-gal and gp-prune accept it and run in-process. Results do
            not depend on it.
        ray_address: with ``executor="ray"``: a running cluster (``"ray://HEAD:10001"``,
            ``"auto"``); None starts a local Ray instance for the run and stops it afterwards.
        trace_time_limit_s: wall-clock limit (seconds) for each trace of the model: fvcore's MAC
            count of the teacher and gp-prune's Torch-Pruning dependency-graph builds. A step
            that takes longer raises :class:`TimeLimitError` instead of hanging. None: no limit.
            Enforced with ``SIGALRM``, so only when ``compress()`` runs on the main thread of a
            POSIX process; elsewhere the steps run unbounded and a warning is logged once.
        time_limits: wall-clock limit (seconds) of each phase of the run, ``{phase: seconds}``,
            None for no limit; merged over the defaults of :data:`compress.phases.PHASES`, which
            lists every phase and what it covers. Defaults: ``check_inputs`` 1 h (the model run on
            one batch), ``measure_teacher`` 4 h, ``strategy`` none (the whole strategy run);
            gp-prune's ``prepare`` 2 h (calibration), ``prune`` 12 h (graph builds, pruning,
            rounding, bisection), ``finetune`` none; the searches' ``search`` 24 h, ``partition``
            1 h, ``sizing`` 2 h, and their training phases (``baseline``, ``gal``, ``retrain``,
            ``final_retrain``) none; then ``evaluate`` 4 h, ``export``, ``validate``, ``profile``
            1 h each, ``mobile`` (with int8) 2 h, ``latency_vs_teacher`` 1 h. A phase past its
            limit raises :class:`TimeLimitError` naming the phase (``err.phase``) and how to raise
            it; each entry of a phase has the whole limit, and ``trace_time_limit_s`` still bounds
            each trace inside a phase. Every phase is shown through ``progress`` as it starts
            (``progress(phase, 0, None, {"limit": ...})``) and ends (``progress(phase, 1, 1,
            {"wall_s": ...})``). Enforced like ``trace_time_limit_s`` (main thread, POSIX): Python
            code is interrupted at the deadline, a native call that never returns is not (a
            watchdog thread logs it and re-sends the signal; see
            :mod:`compress.strategies._parts.time_limit`).
        device: where every training phase runs: ``"auto"`` (default: CUDA when available, else
            the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Export, ONNX validation, counting and
            latency always use a float32 CPU copy of the student.
        precision: ``"fp32"`` (default), ``"bf16"`` (bf16 autocast) or ``"fp16"`` (CUDA only).
        devices: processes for data-parallel (DDP) fine-tunes on this machine (default 1); under
            ``torchrun``/SLURM the job's world size applies instead. (``device``, ``precision`` and
            ``devices`` are keywords only: they set fields of ``runtime``.)
        allow_slower: accept a student that is not faster than the teacher on ``target``. By
            default the final check times the teacher's and the student's ONNX side by side
            (interleaved rounds, so load drift hits both alike) and a student whose median is not
            lower fails the budget: ``budget_check.ok`` is False with a violation named
            ``latency_not_reduced`` (the CLI exits 3). The comparison is in
            ``budget_check.latency_vs_teacher`` (report ``budget.latency_vs_teacher``) either way.
        reference_points: models to place the student against (e.g. the shelf models a user would
            otherwise deploy): a JSON file or a list of ``{"name", "accuracy", "macs", "latency_ms"}``
            dicts (:mod:`compress.pareto`; accuracy a fraction, MACs per sample, latency in ms or
            None). With a test split, ``result.pareto`` (report ``pareto``) holds the references'
            frontier accuracy at the student's MACs and whether the student beats it, and
            ``out_dir`` gets ``pareto.png`` (accuracy vs MACs and vs latency) and a "Where the
            student sits" section in ``report.md``. Validated before any work.

    Returns:
        :class:`CompressionResult` (check ``result.budget_check.ok``).

    Raises:
        BudgetError: invalid budget. StrategyError: unknown strategy (with close matches).
        UnsupportedModelError: the model does not produce ``(B, K)`` logits (in eval mode, and in
            train mode as its main logits: a ``(logits, aux...)`` tuple such as GoogLeNet's counts by
            its first element), cannot be counted, or cannot be compressed (names the layer).
        ModelSpecError: the model's or teacher's weights are NaN or infinite.
        BudgetUnreachableError: the strategy cannot meet the budget.
        ExportError: the student does not export. An ONNX that disagrees with torch is not
            raised: it is recorded in ``result.validation`` (``report.json`` ``onnx.parity``,
            ``ok: false`` with every mismatch), and the CLI exits 3.
        DataError: unusable data.
        ConfigError: an unknown option or keyword (with close matches), bad config or seed (an int in [0, 2**32 - 1]), or ``time_limits`` with an unknown
            phase or a value that is not a positive number of seconds or None.
        CheckpointError: ``out_dir`` holds checkpoints of another run, or a corrupt one.
        BudgetAlreadyMetError: ``model`` already meets the budget and the strategy only shrinks it
            (gp-prune); strategies that build a new network (grow, eg-nas, darts-gal) run and log it.
        TimeLimitError: counting or dependency-graph tracing exceeded ``trace_time_limit_s``, or a
            phase its ``time_limits`` entry (``err.phase`` names it).
        TrainingDivergedError: a training loss became NaN or inf (the committed checkpoints stay).
        DiskFullError: the disk filled up while writing (names the path; nothing half-written).
    """
    t_start = time.perf_counter()
    wall: dict[str, float] = {}
    runtime_keywords = {k: keywords.pop(k) for k in RUNTIME_KEYWORDS if k in keywords}
    opts = CompressOptions.coerce(options, **keywords)
    teacher, progress, resume, executor = opts.teacher, opts.progress, opts.resume, opts.executor
    seed = check_seed(seed)
    inputs.check_options(mobile=opts.mobile, int8=opts.int8, memory=opts.memory, resume=resume,
                         allow_slower=opts.allow_slower, latency_warmup=opts.latency_warmup,
                         latency_repeats=opts.latency_repeats)
    inputs.check_time_limit(opts.trace_time_limit_s)
    references = inputs.reference_points(opts.reference_points)
    limits = resolve_time_limits(opts.time_limits)
    rt = Runtime(RuntimeOptions.coerce(runtime, **runtime_keywords))
    budget_obj = Budget.coerce(budget)
    strategy_cls = get_strategy(strategy)
    strat = strategy_cls(config)
    task = as_task_data(data, seed=seed)
    if isinstance(target, (str, Path)):
        target = Target.resolve(target)
    target = target or budget_obj.target
    if target.input_shape is None:
        target = target.with_input_shape(task.spec.input_shape)
    budget_obj = Budget.coerce(budget_obj, target=target)
    seed_everything(seed)

    if out_dir is not None:
        inputs.check_writable(Path(out_dir))
    progress_fn, close_progress = _progress_fn(progress)
    try:
        with run_phase("check_inputs", limits=limits, progress=progress_fn, wall=wall):
            x_val, y_val, val_identity = inputs.scan_val(task.val, task.spec.num_classes)
            example = x_val[:2].clone()
            inputs.check_model(model, example, task.spec.num_classes, "model")
            if teacher is not None:
                inputs.check_model(teacher, example, task.spec.num_classes, "teacher")
    except BaseException:
        close_progress()
        raise

    run_dir = None
    if out_dir is not None and rt.is_global_zero:  # checkpoints of another run are refused before any work
        # (under torchrun / SLURM only rank 0 writes: the manifest, the checkpoints and the report)
        run_dir = open_run_dir(out_dir, run_identity(
            strategy=strategy_cls.name, config=strat.config, seed=seed, budget=budget_obj.to_dict(),
            target=target.to_dict(), data=task.to_dict(), val=val_identity, model=model, teacher=teacher,
            train_dataset=getattr(task.train, "dataset", None)), resume=resume,
            key_omit=config_key_omit(strat.config))

    # artifacts are staged in a private temp dir; out_dir only ever receives complete files
    # (result.save writes each atomically) and the strategies' atomic checkpoints.
    try:  # made after every input check, so that a refused call leaves no Ray or process workers behind
        runner = make_executor(executor, ray_address=opts.ray_address)
    except BaseException:
        if run_dir is not None:
            run_dir.discard_if_unused()
        raise
    art_dir = Path(tempfile.mkdtemp(prefix="slimforge-"))
    work_dir = Path(out_dir) if out_dir is not None else art_dir
    # the run draws from the loaders' own shuffling generators: start them from the seed (whatever
    # drew from them before, e.g. the demo's teacher training, does not reach the student) and hand
    # them back as found
    loader_gens = loader_generators(train=task.train, val=task.val, test=task.test, calib=task.calib)
    loader_states = {k: g.get_state() for k, g in loader_gens.items()}
    for g in loader_gens.values():
        g.manual_seed(seed)

    def remove_temp_files() -> None:  # also from the time-limit watchdog, if a phase hangs in native code
        shutil.rmtree(art_dir, ignore_errors=True)
        if run_dir is not None:
            run_dir.discard_if_unused()

    try:
        with on_hang_exit(remove_temp_files):
            return _compress(model, task, strat, budget_obj, target, opts, _RunState(
                example=example, x_val=x_val, y_val=y_val, work_dir=work_dir, art_dir=art_dir, out_dir=out_dir,
                seed=seed, progress=progress_fn, close_progress=close_progress, t_start=t_start, wall=wall,
                executor=runner, runtime=rt, limits=limits, references=references))
    except BaseException as exc:
        shutil.rmtree(art_dir, ignore_errors=True)
        if run_dir is not None:
            run_dir.discard_if_unused()
        if isinstance(exc, OSError) and not isinstance(exc, CompressError) and exc.errno == errno.ENOSPC:
            raise disk_full(exc, out_dir) from exc
        raise
    finally:
        close_progress()
        if runner is not executor:  # created here: stop its workers (a caller's executor stays open)
            runner.close()
        for k, g in loader_gens.items():
            g.set_state(loader_states[k])


@dataclasses.dataclass
class _RunState:
    """What :func:`compress` resolved before the run proper, handed to :func:`_compress`: the kept
    validation prefix and the example input ``(2, C, H, W)``, where files go, the seed, the progress
    callback and its closer, the clock and the ``wall`` dict, the executor, runtime, phase limits and
    the reference points."""

    example: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    work_dir: Path
    art_dir: Path
    out_dir: str | Path | None
    seed: int
    progress: ProgressFn
    close_progress: Callable[[], None]
    t_start: float
    wall: dict[str, float]
    executor: Executor
    runtime: Runtime
    limits: Mapping[str, float | None]
    references: tuple[list[dict], str] | None


def _compress(model: nn.Module, task: TaskData, strat, budget_obj: Budget, target: Target, opts: CompressOptions,
              run: _RunState) -> CompressionResult:
    """The run proper, after every input check (:func:`compress` cleans up around it)."""
    strategy_cls = type(strat)
    teacher, model_spec, memory, int8, mobile = opts.teacher, opts.model_spec, opts.memory, opts.int8, opts.mobile
    latency_warmup, latency_repeats, allow_slower = opts.latency_warmup, opts.latency_repeats, opts.allow_slower
    trace_time_limit_s, references = opts.trace_time_limit_s, run.references
    example, x_val, y_val, work_dir, art_dir, out_dir = run.example, run.x_val, run.y_val, run.work_dir, run.art_dir, \
        run.out_dir
    seed, progress_fn, close_progress, t_start, wall = run.seed, run.progress, run.close_progress, run.t_start, run.wall
    executor, runtime, limits = run.executor, run.runtime, run.limits

    def phase(name: str):
        """One of the API's phases (:mod:`compress.phases`): shown, timed into ``wall``, bounded."""
        return run_phase(name, limits=limits, progress=progress_fn, wall=wall)

    # ---------------------------------------------------------------- teacher
    with phase("measure_teacher"):
        working = copy.deepcopy(model).eval()
        kd_teacher = copy.deepcopy(teacher if teacher is not None else model).eval()
        for p in kd_teacher.parameters():
            p.requires_grad_(False)
        try:
            with time_limit(trace_time_limit_s, "counting the teacher's MACs (fvcore traces its forward)"):
                teacher_cost = measure_cost(working, example)
        except CostError as exc:
            raise UnsupportedModelError(str(exc), layer=type(model).__name__) from exc
        if not (budget_obj.needs_latency or budget_obj.needs_memory):  # decided by the counts: before any export
            inputs.check_budget_not_met(strategy_cls, budget_obj.resolve(teacher_cost), teacher_cost)
        teacher_acc_val = evaluate(working, task.val)
        teacher_acc_test = evaluate(working, task.test)
        progress_fn("measure_teacher", 1, 3, {"val_acc": teacher_acc_val})
        teacher_onnx = export_onnx(working, example, art_dir / "teacher.onnx")
        progress_fn("measure_teacher", 2, 3, {})
        teacher_lat, teacher_lat_torch, teacher_mem = measure.profile_model(
            working, teacher_onnx, target, example, warmup=latency_warmup, repeats=latency_repeats,
            memory=memory or budget_obj.needs_memory)
        progress_fn("measure_teacher", 3, 3, {"latency_ms": teacher_lat.median_ms})
        resolved = budget_obj.resolve(teacher_cost, teacher_lat.median_ms,
                                      teacher_mem.session_peak_bytes if teacher_mem is not None else None)
        if budget_obj.needs_latency or budget_obj.needs_memory:
            inputs.check_budget_not_met(strategy_cls, resolved, teacher_cost, teacher_lat.median_ms,
                                  teacher_mem.session_peak_bytes if teacher_mem is not None else None)

    # ---------------------------------------------------------------- strategy
    relative_latency = budget_obj.rel_latency is not None

    def latency_probe(m: nn.Module) -> float:
        with tempfile.TemporaryDirectory(dir=art_dir) as tmp:
            path = export_onnx(m, example, Path(tmp) / "candidate.onnx")
            if relative_latency:  # timed side by side with the teacher: immune to load drift since measure_teacher
                sbs = measure.side_by_side({"teacher": teacher_onnx, "candidate": path}, target, max(10, latency_repeats // 3))
                return measure.drift_corrected(sbs["candidate_rounds_ms"], sbs["teacher_rounds_ms"], teacher_lat.median_ms)
            stats = profile_latency(path, target, warmup=3, repeats=max(10, latency_repeats // 3))
            return LatencyEstimate(stats.median_ms, 1.2533 * stats.std_ms / np.sqrt(stats.repeats)
                                   / stats.median_ms if stats.median_ms > 0 else 0.0)

    def latency_ratio_probe(a: nn.Module, b: nn.Module) -> LatencyEstimate:
        with tempfile.TemporaryDirectory(dir=art_dir) as tmp:
            paths = {"a": export_onnx(a, example, Path(tmp) / "a.onnx"), "b": export_onnx(b, example, Path(tmp) / "b.onnx")}
            sbs = measure.side_by_side(paths, target, max(10, latency_repeats // 3))
            return LatencyEstimate.from_samples([x / y for x, y in zip(sbs["a_rounds_ms"], sbs["b_rounds_ms"]) if y > 0])

    def memory_probe(m: nn.Module) -> float:
        with tempfile.TemporaryDirectory(dir=art_dir) as tmp:
            path = export_onnx(m, example, Path(tmp) / "candidate.onnx")
            return float(profile_peak_memory(path, target).session_peak_bytes)

    ctx = StrategyContext(
        model=working,
        teacher=kd_teacher,
        data=task,
        budget=resolved,
        teacher_cost=teacher_cost,
        example_inputs=example,
        target=target,
        seed=seed,
        out_dir=work_dir,
        progress=progress_fn,
        latency_fn=latency_probe,
        latency_ratio_fn=latency_ratio_probe,
        memory_fn=memory_probe,
        executor=executor,
        trace_time_limit_s=trace_time_limit_s,
        runtime=runtime,
        time_limits=limits,
    )
    try:
        with phase("strategy"):
            output = strat.run(ctx)
    finally:
        close_progress()  # the strategy's own bars end with it
    wall.update(ctx.wall_s)
    student = output.student.cpu().float().eval()  # export, counting and profiling use a float32 CPU copy
    if any(p.dim() == 4 for p in student.parameters()):
        student = student.to(memory_format=torch.contiguous_format)

    # ---------------------------------------------------------------- student
    with phase("evaluate"):
        student_cost = measure_cost(student, example)
        student_acc_val = evaluate(student, task.val)
        student_acc_test = evaluate(student, task.test)
    with phase("export"):
        student_onnx = export_onnx(student, example, art_dir / "student.onnx")
    with phase("validate"):
        # the test split (or the kept validation prefix), only as much as validate_onnx reads of it
        parity_x = (collect(task.test, max_samples=PARITY_MAX_SAMPLES)[0] if task.test is not None else x_val)
        validation = validate_onnx(student, student_onnx, parity_x, atol=1e-4, rtol=1e-3, batch_sizes=(1, 8),
                                   raise_on_failure=False)
    with phase("profile"):
        student_lat, student_lat_torch, student_mem = measure.profile_model(
            student, student_onnx, target, example, warmup=latency_warmup, repeats=latency_repeats,
            memory=memory or resolved.needs_memory)
    with phase("mobile"):
        mobile_info = measure.mobile_artifacts(student_onnx, art_dir, task, x_val, y_val, target, latency_warmup, latency_repeats,
                              mobile=mobile, int8=int8)
    with phase("latency_vs_teacher"):
        vs_teacher = measure.latency_vs_teacher(teacher_onnx, student_onnx, target, latency_repeats)
    budget_latency_ms = student_lat.median_ms
    if relative_latency:  # the budget is a share of the teacher's latency: judge it on the side-by-side ratio
        budget_latency_ms = measure.drift_corrected(vs_teacher["student_rounds_ms"], vs_teacher["teacher_rounds_ms"],
                                             teacher_lat.median_ms)
        vs_teacher["budget_latency_ms"] = budget_latency_ms
        vs_teacher["budget_latency_rule"] = ("relative latency budget: the student's latency is its side-by-side median "
                                             "per-round ratio to the teacher times the teacher's measured latency")
    check = resolved.check(student_cost, latency_ms=budget_latency_ms if resolved.needs_latency else None,
                           memory_bytes=student_mem.session_peak_bytes if student_mem is not None else None,
                           teacher_latency_ms=vs_teacher["teacher_ms"], student_latency_ms=vs_teacher["student_ms"],
                           allow_slower=allow_slower)
    check = dataclasses.replace(check, latency_vs_teacher={**check.latency_vs_teacher, **vs_teacher})
    if not check.ok:
        log.warning("student does not meet the budget: %s", "; ".join(map(str, check.violations)))
    surgery = ["pad_shortcuts_to_conv"] if output.info.get("shortcuts_converted") else []
    wall["total"] = time.perf_counter() - t_start
    result = CompressionResult(
        student=student,
        strategy=strategy_cls.name,
        seed=seed,
        config=config_to_dict(strat.config),
        budget=resolved,
        budget_check=check,
        teacher=ModelReport(teacher_cost, teacher_acc_val, teacher_acc_test, teacher_lat, teacher_lat_torch, teacher_mem),
        student_report=ModelReport(student_cost, student_acc_val, student_acc_test, student_lat, student_lat_torch,
                                   student_mem),
        onnx_path=student_onnx,
        teacher_onnx_path=teacher_onnx,
        validation=validation,
        target=target,
        history=ctx.history,
        wall_s=wall,
        info={**output.info, "paper": strategy_cls.paper},
        data=task.to_dict(),
        versions=library_versions(),
        runtime=runtime.describe(),
        model_spec=model_spec,
        surgery=surgery,
        mobile=mobile_info,
        student_arch=output.arch,
        report_sections=list(output.report_sections),
    )
    if references is not None:
        result.pareto = pareto_record(result, references[0], source=references[1])
    if out_dir is not None:
        if runtime.is_global_zero:
            result.save(work_dir)
        shutil.rmtree(art_dir, ignore_errors=True)
    return result


