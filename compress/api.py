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
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.budgets import Budget, CostError, measure_cost
from compress.data import TaskData, as_task_data, collect, iter_batches
from compress.errors import (BudgetAlreadyMetError, CompressError, ConfigError, DataError, ModelSpecError,
                             UnsupportedModelError, disk_full)
from compress.executors import Executor, make_executor
from compress.exporters import export_onnx, validate_onnx
from compress.exporters.validate import DEFAULT_MAX_SAMPLES as PARITY_MAX_SAMPLES
from compress.profiling import LatencyEstimate, Target, profile_latency, profile_peak_memory
from compress.profiling.latency_model import measure_interleaved
from compress.strategies import get_strategy  # the package registers the built-in strategies
from compress.signals import cleanup_on_signals, raise_if_terminated
from compress.result import CompressionResult, ModelReport
from compress.strategies._parts.checkpoint import SplitFingerprint, open_run_dir, run_identity
from compress.strategies._parts.checkpoint import loader_generators
from compress.phases import phase as run_phase
from compress.phases import resolve_time_limits
from compress.strategies._parts.time_limit import on_hang_exit, time_limit
from compress.strategies._parts.training import evaluate
from compress.strategies.base import ProgressFn, StrategyContext, config_to_dict
from compress.training.runtime import Runtime, RuntimeOptions

__all__ = ["compress", "check_seed", "seed_everything", "library_versions"]

log = logging.getLogger(__name__)


def check_seed(seed: Any, *, name: str = "seed") -> int:
    """``seed`` if it is an int in ``[0, 2**32 - 1]`` (what NumPy and every RNG here accept), else a
    :class:`ConfigError` saying so."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise ConfigError(f"{name} must be an integer from 0 to {2**32 - 1}, got {seed!r}; pick another seed.")
    return int(seed)


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


def _check_model(model: Any, x: torch.Tensor, num_classes: int, who: str) -> None:
    """``model`` maps the data's batches to ``(B, num_classes)`` logits in eval mode and in train mode.

    In train mode the main logits count (:func:`compress.training.main_logits`: the tensor itself,
    or the first element of a tuple such as torchvision GoogLeNet / Inception v3's
    ``(logits, aux_logits)``); auxiliary outputs are ignored by every training loop. The train-mode
    forward leaves the model as found (buffers such as BatchNorm statistics restored, torch RNG
    forked).

    Raises:
        UnsupportedModelError: not a module, fails on the batch, wrong output shape.
        ModelSpecError: weights (parameters or buffers) that are NaN or infinite.
    """
    from compress.training.loop import main_logits

    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"{who} must be a torch.nn.Module, got {type(model).__name__}.", layer=who)
    bad = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ModelSpecError(
            f"{who} has NaN or infinite weights in {len(bad)} tensor(s) ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}); load finite weights (check the checkpoint or the training that "
            "wrote it) before compressing."
        )
    was = model.training
    saved = {k: b.detach().clone() for k, b in model.named_buffers()}
    mode = "eval"
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model.eval()(x)
            mode = "train"  # (a batch of one cannot go through BatchNorm in train mode; training drops it too)
            train_out = main_logits(model.train()(x)) if x.shape[0] > 1 else out
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsupportedModelError(
            f"{who} fails on a batch of the data {tuple(x.shape)} in {mode} mode: {type(exc).__name__}: {first}. "
            "Check that the model's input channels and size match the data (slimforge run: --in-chans, "
            "--image-size) and that it returns class logits (B, K), or a tuple whose first element is the logits.",
            layer=who,
        ) from exc
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                if k in saved and b.shape == saved[k].shape:
                    b.copy_(saved[k])
        model.train(was)
    for mode, o in (("eval", out), ("train", train_out)):
        if not isinstance(o, torch.Tensor) or o.dim() != 2 or o.shape[1] != num_classes:
            got = tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
            raise UnsupportedModelError(
                f"{who} must return class logits of shape (batch, {num_classes}) for this data, got {got} in {mode} "
                f"mode. Give a classifier whose head has {num_classes} outputs, one per class of the data "
                "(slimforge run builds it with --num-classes, by default the data's class count; API: "
                "load_model(spec, num_classes=...)).",
                layer=who,
            )


@cleanup_on_signals()  # SIGTERM unwinds through the cleanup below (temp folder, unused manifest)
def compress(
    model: nn.Module,
    budget: Budget | str | dict,
    *,
    data: TaskData | dict | tuple,
    strategy: str = "gp-prune",
    teacher: nn.Module | None = None,
    target: Target | str | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    config: Any = None,
    progress: bool | ProgressFn = True,
    model_spec: str | None = None,
    latency_warmup: int = 10,
    latency_repeats: int = 50,
    mobile: bool = True,
    int8: bool = False,
    memory: bool = True,
    resume: bool = True,
    executor: Executor | str | None = None,
    ray_address: str | None = None,
    trace_time_limit_s: float | None = 300.0,
    time_limits: Mapping[str, float | None] | None = None,
    device: str | None = None,
    precision: str | None = None,
    devices: int | None = None,
    runtime: RuntimeOptions | dict | None = None,
    allow_slower: bool = False,
    reference_points: str | Path | list[dict] | None = None,
) -> CompressionResult:
    """Compress ``model`` to fit ``budget`` with one strategy and return a validated student.

    Args:
        model: the trained network to compress, ``(B, C, H, W) -> (B, K)`` logits. Never modified.
        budget: a :class:`Budget`, a spec string (``"macs=0.5x"``, ``"params=1M,latency=2ms"``)
            or a dict of Budget fields. Relative limits are resolved against ``model``'s cost.
        data: :class:`TaskData` or ``{"train": loader, "val": loader, "test": loader}``; loaders
            yield ``(x, y)``. Without ``val`` a seeded split of ``train`` is made.
        strategy: a registered strategy name (see :func:`list_strategies`).
        teacher: distillation teacher; defaults to a frozen copy of ``model``.
        target: runtime profile for latency (a :class:`Target` or preset name); default ``cpu-1t``.
        out_dir: when given, the report and artifacts are saved there (``result.save``).
        seed: seeds ``random``, NumPy and torch, and restarts the shuffling ``torch.Generator`` of
            every loader in ``data`` from it (each is handed back in the state it came in). The
            rule: the student is a function of the model's weights and buffers, the data's
            contents, ``seed``, the config, the library versions and the thread count, never of
            what drew from the loaders or RNGs before the call (a teacher trained on the same
            loaders in the same process gives the student a teacher loaded from disk gives).
        config: the strategy's config dataclass, or a dict of its fields.
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
            ``torchrun``/SLURM the job's world size applies instead.
        runtime: a :class:`compress.training.RuntimeOptions` (or dict of its fields) for the other
            runtime settings (``num_workers``, ``pin_memory``, ``channels_last``); ``device``,
            ``precision`` and ``devices`` given as arguments override its fields.
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
        ConfigError: bad config or seed (an int in [0, 2**32 - 1]), or ``time_limits`` with an unknown
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
    seed = check_seed(seed)
    _check_options(mobile=mobile, int8=int8, memory=memory, resume=resume, allow_slower=allow_slower,
                   latency_warmup=latency_warmup, latency_repeats=latency_repeats)
    _check_time_limit(trace_time_limit_s)
    references = _reference_points(reference_points)
    limits = resolve_time_limits(time_limits)
    rt = Runtime(RuntimeOptions.coerce(runtime, device=device, precision=precision, devices=devices))
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
        _check_writable(Path(out_dir))
    progress_fn, close_progress = _progress_fn(progress)
    try:
        with run_phase("check_inputs", limits=limits, progress=progress_fn, wall=wall):
            x_val, y_val, val_identity = _scan_val(task.val, task.spec.num_classes)
            example = x_val[:2].clone()
            _check_model(model, example, task.spec.num_classes, "model")
            if teacher is not None:
                _check_model(teacher, example, task.spec.num_classes, "teacher")
    except BaseException:
        close_progress()
        raise

    run_dir = None
    if out_dir is not None and rt.is_global_zero:  # checkpoints of another run are refused before any work
        # (under torchrun / SLURM only rank 0 writes: the manifest, the checkpoints and the report)
        run_dir = open_run_dir(out_dir, run_identity(
            strategy=strategy_cls.name, config=strat.config, seed=seed, budget=budget_obj.to_dict(),
            target=target.to_dict(), data=task.to_dict(), val=val_identity, model=model, teacher=teacher,
            train_dataset=getattr(task.train, "dataset", None)), resume=resume)

    # artifacts are staged in a private temp dir; out_dir only ever receives complete files
    # (result.save writes each atomically) and the strategies' atomic checkpoints.
    try:  # made after every input check, so that a refused call leaves no Ray or process workers behind
        runner = make_executor(executor, ray_address=ray_address)
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
            return _compress(model, teacher, task, strat, strategy_cls, budget_obj, target, example, x_val, y_val,
                             work_dir, art_dir, out_dir, seed, progress_fn, model_spec, latency_warmup,
                             latency_repeats, mobile, int8, t_start, wall, executor=runner, memory=memory,
                             trace_time_limit_s=trace_time_limit_s, runtime=rt, allow_slower=allow_slower,
                             time_limits=limits, close_progress=close_progress, references=references)
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


_VS_TEACHER_ROUNDS = 5
_MIN_ROUND_MS = 25.0
"""Each side-by-side round times every model for at least this long (ms), however fast it is."""


def _side_by_side(paths: dict[str, Path], target: Target, latency_repeats: int) -> dict:
    """The median latency (ms) on ``target`` of each ONNX file in ``paths`` (``{name: path}``),
    timed side by side: :data:`_VS_TEACHER_ROUNDS` interleaved rounds of ``latency_repeats / rounds``
    calls each (at least 5, and enough to fill :data:`_MIN_ROUND_MS`), so that load drift during the
    run hits all alike. Returns ``{name}_ms`` and ``{name}_rounds_ms`` (the per-round medians) for
    each name, the method, and the timed calls per round of each."""
    repeats = max(5, latency_repeats // _VS_TEACHER_ROUNDS)
    measured = measure_interleaved(list(paths.values()), target, rounds=_VS_TEACHER_ROUNDS, repeats=repeats, warmup=2,
                                   min_round_ms=_MIN_ROUND_MS)
    out: dict = {f"{name}_ms": m["median_ms"] for name, m in zip(paths, measured)}
    out.update({f"{name}_rounds_ms": m["rounds_ms"] for name, m in zip(paths, measured)})
    calls = {name: m["calls"] for name, m in zip(paths, measured) if "calls" in m}
    return {**out, "method": "interleaved", "rounds": _VS_TEACHER_ROUNDS, "repeats": repeats,
            **({"calls_per_round": calls} if calls else {})}


def _drift_corrected(candidate_rounds_ms: list[float], teacher_rounds_ms: list[float],
                     teacher_ms: float) -> LatencyEstimate:
    """A candidate's latency for a budget relative to the teacher (``latency=0.5x``): the median of its
    per-round ratios to the teacher, timed side by side, times ``teacher_ms`` (the teacher latency the
    budget was resolved against). A machine that got busier or quieter since the teacher was measured
    then moves both alike, so the decision does not drift with the load (measured: under 2-3 competing
    processes the teacher's own latency moved by up to 2x between phases). The estimate carries the
    relative standard error of that median over the rounds (:class:`LatencyEstimate`)."""
    ratios = [c / t for c, t in zip(candidate_rounds_ms, teacher_rounds_ms) if t > 0]
    if not ratios:
        return LatencyEstimate.from_samples(candidate_rounds_ms)
    return LatencyEstimate.from_samples(ratios, scale=teacher_ms)


def _latency_vs_teacher(teacher_onnx: Path, student_onnx: Path, target: Target, latency_repeats: int) -> dict:
    """Teacher and student timed side by side (:func:`_side_by_side`): ``teacher_ms``, ``student_ms``."""
    return _side_by_side({"teacher": teacher_onnx, "student": student_onnx}, target, latency_repeats)


def _int8_vs_fp32(fp32_onnx: Path, int8_onnx: Path, target: Target, latency_repeats: int) -> dict:
    """The fp32 and int8 students timed side by side (:func:`_side_by_side`): ``fp32_ms``,
    ``int8_ms``, and the rule :func:`compress.exporters.mobile.int8_recommendation` applies to them."""
    from compress.exporters.mobile import INT8_MAX_DROP_PTS, INT8_MIN_SPEEDUP

    return {**_side_by_side({"fp32": fp32_onnx, "int8": int8_onnx}, target, latency_repeats),
            "rule": f"recommended = speedup >= {INT8_MIN_SPEEDUP:g} and drop_pts <= {INT8_MAX_DROP_PTS:g}"}


def _check_options(**options: Any) -> None:
    """compress()'s switches are real bools (``"false"`` or ``0`` is not), its counts real ints.

    Raises:
        ConfigError: every option of the wrong type or range, with the value given.
    """
    bad = []
    for name, v in options.items():
        if name.startswith("latency_"):
            low = 1 if name == "latency_repeats" else 0
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                bad.append(f"{name}={v!r} (an int >= {low})")
        elif not isinstance(v, (bool, np.bool_)):
            bad.append(f"{name}={v!r} (True or False)")
    if bad:
        raise ConfigError(f"compress() options of the wrong type or range: {', '.join(bad)}; pass the values shown in "
                          "brackets.")


def _check_time_limit(seconds: Any) -> None:
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not np.isfinite(seconds) or seconds <= 0):
        raise ConfigError(f"trace_time_limit_s must be a positive number of seconds or None (no limit), got {seconds!r}.")


def _check_budget_not_met(strategy_cls, resolved: Budget, cost, latency_ms: float | None = None,
                          memory_bytes: float | None = None) -> None:
    """Refuse (strategies that only shrink the given model) or log a budget the model already meets."""
    check = resolved.check(cost, latency_ms=latency_ms if resolved.needs_latency else None,
                           memory_bytes=memory_bytes if resolved.needs_memory else None)
    if not check.ok:
        return
    figures = {"macs": (cost.macs, "MACs {:,.0f}"), "params": (cost.params, "params {:,.0f}"),
               "latency_ms": (latency_ms, "latency {:.3f} ms"), "memory_bytes": (memory_bytes, "memory {:,.0f} B")}
    met = ", ".join(f"{fmt.format(v)} <= {fmt.format(v + room).split(' ', 1)[1]}"
                    for k, room in check.headroom.items() for v, fmt in [figures[k]] if v is not None)
    if getattr(strategy_cls, "shrinks_teacher", False):
        raise BudgetAlreadyMetError(
            f"the model already meets budget {resolved.describe()!r} ({met}), and {strategy_cls.name} only removes parts "
            "of the given model, so there is nothing to compress. Tighten the budget (e.g. 'macs=0.5x'), or ship the "
            "model as it is."
        )
    log.info("the model already meets budget %r (%s); %s builds a new network, which the budget still bounds.",
             resolved.describe(), met, strategy_cls.name)


def _reference_points(points: Any) -> tuple[list[dict], str] | None:
    """compress()'s ``reference_points`` read and validated (:mod:`compress.pareto`), with where they
    came from; None when not given.

    Raises:
        ConfigError: a missing or invalid file, an invalid list, or another type.
    """
    from compress.pareto import reference_points_from_file, validate_reference_points

    if points is None:
        return None
    if isinstance(points, (str, Path)):
        return reference_points_from_file(points), str(points)
    if isinstance(points, (list, tuple)):
        return validate_reference_points(list(points)), "the reference_points list given to compress()"
    raise ConfigError(f"reference_points must be a JSON file path or a list of point dicts, got "
                      f"{type(points).__name__}; see compress.pareto for the format.")


def _check_writable(path: Path) -> None:
    """Refuse an output directory that cannot be created or written, before any work."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output path {path} exists and is not a directory; choose a directory for out_dir.")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {path} cannot be written ({probe} is not writable); choose another out_dir.")


#: The validation split is read once at the start, batch by batch: checked, fingerprinted, and
#: its first samples up to this many bytes kept in memory (the example input, the parity check's
#: fallback when there is no test split). A split that fits is kept whole and fingerprinted as
#: before, so runs from earlier versions still resume; a larger one (an ImageNet-size folder) is
#: never held in memory (issue 17).
VAL_KEEP_BYTES = 256 * 2**20


def _scan_val(loader, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | str]:
    """Check the validation split batch by batch (float finite images, int64 labels in range).

    Returns:
        ``(x_kept, y_kept, identity)``: the first samples (``VAL_KEEP_BYTES`` at most), and what
        :func:`run_identity` hashes: the whole split when it was all kept, else its streamed
        :class:`SplitFingerprint`.

    Raises:
        DataError: a batch is not float images / int64 class labels, NaN or infinite pixels (all
            of them listed), labels outside ``0..num_classes-1``, or the split is empty.
    """
    xs, ys, kept_bytes, whole = [], [], 0, True
    fp = SplitFingerprint()
    bad_rows: list[int] = []
    lo, hi, seen = None, None, 0
    for x, y in iter_batches(loader, "val"):
        if not x.is_floating_point():
            raise DataError(
                f"inputs are {x.dtype}; the model needs float images (B, C, H, W): convert with x.float() / 255 and "
                "normalise (compress.data loaders do this for you)."
            )
        if y.dtype.is_floating_point or y.dim() != 1:
            raise DataError(f"labels must be int64 class indices of shape (B,), got {y.dtype} {tuple(y.shape)}.")
        if len(x):
            finite = torch.isfinite(x.flatten(1)).all(dim=1)
            if not bool(finite.all()):
                bad_rows += (torch.nonzero(~finite).flatten() + seen).tolist()
        if len(y):
            lo = int(y.min()) if lo is None else min(lo, int(y.min()))
            hi = int(y.max()) if hi is None else max(hi, int(y.max()))
        fp.update(x, y)
        seen += len(x)
        size = x.element_size() * x.numel()
        if whole and kept_bytes + size <= VAL_KEEP_BYTES:
            xs.append(x)
            ys.append(y)
            kept_bytes += size
        elif whole:
            whole = False
            room = (VAL_KEEP_BYTES - kept_bytes) // max(1, size // max(1, len(x)))
            if room > 0:
                xs.append(x[:room])
                ys.append(y[:room])
    if not seen:
        raise DataError("the validation split is empty; give it at least one batch of (x, y)")
    if bad_rows:
        raise DataError(
            f"the validation images hold NaN or infinite values ({len(bad_rows)} image(s), first: {bad_rows[:5]}); "
            "replace or drop them (and check the train and test splits too) before compressing."
        )
    if lo < 0 or hi >= num_classes:
        raise DataError(
            f"labels range over [{lo}, {hi}] but the task has {num_classes} classes; "
            "labels must be 0..num_classes-1."
        )
    if not xs:  # a first batch larger than the keep limit: keep two samples for the example input
        x, y = next(iter_batches(loader, "val"))
        xs, ys = [x[:2]], [y[:2]]
    x_kept, y_kept = torch.cat(xs), torch.cat(ys)
    return x_kept, y_kept, ((x_kept, y_kept) if whole else fp.hexdigest())


def _onnx_accuracy_on(path: Path, loader) -> float:
    """Top-1 accuracy in [0, 1] of the ONNX model at ``path`` over ``loader``, batch by batch."""
    from compress.exporters.mobile import onnx_accuracy_batches  # deferred: onnxruntime, as the other mobile imports

    return onnx_accuracy_batches(path, ((x.numpy(), y.numpy()) for x, y in iter_batches(loader, "evaluation")))


def _mobile(student_onnx: Path, art_dir: Path, task: TaskData, x_val: torch.Tensor, y_val: torch.Tensor,
            target: Target, latency_warmup: int, latency_repeats: int, *, mobile: bool, int8: bool) -> dict[str, Any]:
    """``result.mobile``: the ORT-format file and NNAPI/CoreML report (``mobile``), the int8 student
    re-validated and timed against the fp32 one (``int8``); see :func:`compress`."""
    mobile_info: dict[str, Any] = {}
    if mobile:
        from compress.exporters.mobile import convert_to_ort, mobile_usability

        mobile_info["ort_path"] = str(convert_to_ort(student_onnx, art_dir / "student.ort"))
        mobile_info["usability"] = mobile_usability(student_onnx)
    if int8:
        from compress.exporters.mobile import DEFAULT_INT8_SETTINGS, int8_recommendation, quantize_int8

        x_cal = collect(task.train, max_samples=256)[0].numpy()
        q_path = quantize_int8(student_onnx, art_dir / "student.int8.onnx", x_cal, settings=DEFAULT_INT8_SETTINGS)
        eval_loader = task.test if task.test is not None else task.val  # streamed: a split may not fit in memory
        acc_fp32 = _onnx_accuracy_on(student_onnx, eval_loader)
        acc_int8 = _onnx_accuracy_on(q_path, eval_loader)
        q_lat = profile_latency(q_path, target, warmup=latency_warmup, repeats=latency_repeats)
        side = _int8_vs_fp32(student_onnx, q_path, target, latency_repeats)
        drop = 100 * (acc_fp32 - acc_int8)
        rec = int8_recommendation(side["fp32_ms"], side["int8_ms"], drop)
        if not rec["recommended"]:
            log.warning("int8 student not recommended on %s: %s", target.name, rec["reason"])
        mobile_info["int8"] = {
            "path": str(q_path), "accuracy": acc_int8, "fp32_accuracy": acc_fp32,
            "drop_pts": drop, "latency_ms": side["int8_ms"], "latency_p90_ms": q_lat.p90_ms,
            "split": "test" if task.test is not None else "val",
            "fp32_latency_ms": side["fp32_ms"], "speedup": rec["speedup"], "recommended": rec["recommended"],
            "reason": rec["reason"], "rule": side["rule"],
            "settings": {**DEFAULT_INT8_SETTINGS.to_dict(), "calibration_samples": int(len(x_cal)),
                         "calibrate_method": "minmax"},
            "latency_method": {k: side[k] for k in ("method", "rounds", "repeats", "fp32_rounds_ms", "int8_rounds_ms")},
        }
    return mobile_info


def _compress(model, teacher, task, strat, strategy_cls, budget_obj, target, example, x_val, y_val, work_dir,
              art_dir, out_dir, seed, progress, model_spec, latency_warmup, latency_repeats, mobile, int8,
              t_start, wall, *, executor: Executor, memory: bool = True,
              trace_time_limit_s: float | None = None, runtime: Runtime | None = None,
              allow_slower: bool = False, time_limits: Mapping[str, float | None] | None = None,
              close_progress: Callable[[], None] | None = None,
              references: tuple[list[dict], str] | None = None) -> CompressionResult:
    runtime = runtime or Runtime()
    progress_fn, own_close = _progress_fn(progress)
    close_progress = close_progress or own_close
    limits = resolve_time_limits(time_limits) if time_limits is None else time_limits

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
            _check_budget_not_met(strategy_cls, budget_obj.resolve(teacher_cost), teacher_cost)
        teacher_acc_val = evaluate(working, task.val)
        teacher_acc_test = evaluate(working, task.test)
        progress_fn("measure_teacher", 1, 3, {"val_acc": teacher_acc_val})
        teacher_onnx = export_onnx(working, example, art_dir / "teacher.onnx")
        progress_fn("measure_teacher", 2, 3, {})
        teacher_lat = profile_latency(teacher_onnx, target, warmup=latency_warmup, repeats=latency_repeats)
        teacher_lat_torch = profile_latency(working, target, engine="torch", warmup=latency_warmup,
                                            repeats=latency_repeats, example_inputs=example[:1])
        progress_fn("measure_teacher", 3, 3, {"latency_ms": teacher_lat.median_ms})
        teacher_mem = profile_peak_memory(teacher_onnx, target) if memory or budget_obj.needs_memory else None
        resolved = budget_obj.resolve(teacher_cost, teacher_lat.median_ms,
                                      teacher_mem.session_peak_bytes if teacher_mem is not None else None)
        if budget_obj.needs_latency or budget_obj.needs_memory:
            _check_budget_not_met(strategy_cls, resolved, teacher_cost, teacher_lat.median_ms,
                                  teacher_mem.session_peak_bytes if teacher_mem is not None else None)

    # ---------------------------------------------------------------- strategy
    relative_latency = budget_obj.rel_latency is not None

    def latency_probe(m: nn.Module) -> float:
        with tempfile.TemporaryDirectory(dir=art_dir) as tmp:
            path = export_onnx(m, example, Path(tmp) / "candidate.onnx")
            if relative_latency:  # timed side by side with the teacher: immune to load drift since measure_teacher
                sbs = _side_by_side({"teacher": teacher_onnx, "candidate": path}, target, max(10, latency_repeats // 3))
                return _drift_corrected(sbs["candidate_rounds_ms"], sbs["teacher_rounds_ms"], teacher_lat.median_ms)
            stats = profile_latency(path, target, warmup=3, repeats=max(10, latency_repeats // 3))
            return LatencyEstimate(stats.median_ms, 1.2533 * stats.std_ms / np.sqrt(stats.repeats)
                                   / stats.median_ms if stats.median_ms > 0 else 0.0)

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
        student_lat = profile_latency(student_onnx, target, warmup=latency_warmup, repeats=latency_repeats)
        student_lat_torch = profile_latency(student, target, engine="torch", warmup=latency_warmup,
                                            repeats=latency_repeats, example_inputs=example[:1])
        student_mem = profile_peak_memory(student_onnx, target) if memory or resolved.needs_memory else None
    with phase("mobile"):
        mobile_info = _mobile(student_onnx, art_dir, task, x_val, y_val, target, latency_warmup, latency_repeats,
                              mobile=mobile, int8=int8)
    with phase("latency_vs_teacher"):
        vs_teacher = _latency_vs_teacher(teacher_onnx, student_onnx, target, latency_repeats)
    budget_latency_ms = student_lat.median_ms
    if relative_latency:  # the budget is a share of the teacher's latency: judge it on the side-by-side ratio
        budget_latency_ms = _drift_corrected(vs_teacher["student_rounds_ms"], vs_teacher["teacher_rounds_ms"],
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
        from compress.pareto import pareto_record

        result.pareto = pareto_record(result, references[0], source=references[1])
    if out_dir is not None:
        if runtime.is_global_zero:
            result.save(work_dir)
        shutil.rmtree(art_dir, ignore_errors=True)
    return result


