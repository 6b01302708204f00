"""The ``slimforge`` command line (typer). ``python -m compress`` runs the same app.

Commands: ``demo``, ``run``, ``resume``, ``measure``, ``gate``, ``evolve-metric``, ``strategies``.
Exit codes: 0 success, 2 any failure (bad input, a ``SlimforgeError``, a full disk, an internal error:
one paragraph on stderr that says what to do, no traceback unless ``slimforge --debug COMMAND``),
3 the student was produced but misses its budget, is not faster than its teacher on the target
(``latency_not_reduced``; ``--allow-slower`` accepts it) or fails ONNX parity (so CI pipelines can
gate on it), 1 ``gate`` found a regression, 130 interrupted (Ctrl-C / SIGINT), 143 terminated
(SIGTERM), 124 a phase ran past its time limit and stayed stuck in native code where the
``TimeLimitError`` could not be raised (the message is printed, temp files removed, no unwinding;
:mod:`compress.strategies._parts.time_limit`). A phase past its limit otherwise fails like any
error (exit 2); ``--time-limit PHASE=SECONDS`` raises a limit. An interrupted or failed
``run``/``demo`` removes its temp folder, and its ``run_args.json`` when no checkpoint was
committed yet.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from compress._error_root import SlimforgeError  # a leaf: imports nothing

app = typer.Typer(add_completion=False, no_args_is_help=True, help="slimforge: compress a teacher to a budget, export validated ONNX.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error (by default: a one-paragraph message and exit 2).")) -> None:
    """slimforge: compress a teacher to a budget, export validated ONNX."""
    _DEBUG["on"] = debug


def _console():
    from rich.console import Console

    return Console(stderr=False)


_DEBUG = {"on": False}  # set by the root callback on every invocation


def _debug() -> bool:
    """``slimforge --debug ...``: let exceptions through with their traceback."""
    return _DEBUG["on"]


def _error_message(exc: BaseException) -> str:
    """One paragraph for any exception: ours (any :class:`SlimforgeError`, whatever its layer) as
    they are, since they say what to do; a full disk, other OS errors, bad values and anything else
    with what to do about them."""
    if isinstance(exc, OSError) and not isinstance(exc, SlimforgeError) and exc.errno == errno.ENOSPC:
        from compress.errors import disk_full

        exc = disk_full(exc, cleaned=False)  # the message compress() gives, without its cleanup claim
    if isinstance(exc, SlimforgeError):
        msg = f"{type(exc).__name__}: {exc}"
    elif isinstance(exc, OSError):
        msg = f"{type(exc).__name__}: {exc}; check the paths given and that they can be read and written."
    elif isinstance(exc, (ValueError, TypeError)):
        msg = f"{type(exc).__name__}: {exc}; check the files and options given (slimforge COMMAND --help)."
    else:
        msg = (f"internal error ({type(exc).__name__}: {exc}); this is a slimforge bug, please report it with "
               "the command line (run it again with `slimforge --debug ...` for the traceback).")
    return " ".join(msg.split())


def _fail(exc: BaseException) -> None:
    from rich.console import Console
    from rich.markup import escape

    if _debug():
        raise exc

    Console(stderr=True).print(f"[bold red]error[/]: {escape(_error_message(exc))}")
    raise typer.Exit(code=2)


def _clean_errors(fn):
    """Every exception a command raises becomes one paragraph on stderr and exit 2 (Ctrl-C and
    SIGINT: exit 130, SIGTERM: exit 143), without a traceback unless ``slimforge --debug``. The
    command's own exits (``typer.Exit``: 0, 1 gate regression, 3 budget not met) pass through."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from compress.signals import Terminated, cleanup_on_signals
        from compress.strategies._parts.time_limit import exit_on_hang

        try:
            with cleanup_on_signals(), exit_on_hang():  # a phase stuck in native code past its limit: exit 124
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):  # the command's own exit codes, usage errors
            raise
        except (KeyboardInterrupt, Terminated) as exc:
            if _debug():
                raise
            from rich.console import Console

            code = getattr(exc, "exit_code", 130)
            Console(stderr=True).print(f"[bold red]interrupted[/] ({'SIGTERM' if code == 143 else 'SIGINT / Ctrl-C'}); "
                                       "temporary files removed. `slimforge resume OUT` continues a run from its "
                                       "last checkpoint.")
            raise typer.Exit(code=code) from None
        except Exception as exc:
            _fail(exc)  # re-raises under --debug

    return wrapper


def _print_result(result, out_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"slimforge {result.strategy}: budget {result.budget.describe()}")
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    from rich.markup import escape

    for a, b, c in result.summary_rows():
        table.add_row(escape(a), b, c)
    con = _console()
    con.print(table)
    v = result.validation
    agree = "-" if v.top1_agreement is None else f"{100 * v.top1_agreement:.2f}%"
    con.print(
        f"budget: {'[green]met[/]' if result.budget_check.ok else '[red]NOT met[/]'}"
        + "".join(f"\n  {x}" for x in result.budget_check.violations)
    )
    con.print(
        f"ONNX parity: {'[green]ok[/]' if v.ok else '[red]FAILED[/]'} (max |diff| {v.max_abs_diff:.2e}, "
        f"top-1 agreement {agree} on {v.n_samples} test samples)"
    )
    sp = result.speedup_summary()
    if sp["latency_cut"] is not None:
        con.print(f"MACs cut {100 * sp['macs_cut']:.1f}%, measured latency cut {100 * sp['latency_cut']:.1f}%")
        if sp["warning"]:
            con.print(f"[yellow]warning[/]: {sp['warning']}")
    mob = result.mobile
    if mob.get("usability"):
        cov = ", ".join(f"{ep} {100 * u['coverage_fixed_shapes']:.0f}% ({u['suitability_fixed_shapes']})"
                        for ep, u in mob["usability"].items())
        con.print(f"mobile: {Path(mob['ort_path']).name}; partition coverage with fixed shapes: {cov}")
    if mob.get("int8"):
        q = mob["int8"]
        con.print(f"int8: {Path(q['path']).name} top-1 {100 * q['accuracy']:.2f}% vs fp32 {100 * q['fp32_accuracy']:.2f}% "
                  f"({q['split']}), latency {q['latency_ms']:.3f} ms"
                  + ("" if q.get("recommended", True) else f" [yellow](not recommended: {q.get('reason')})[/]"))
    con.print(f"wall time: {result.wall_s.get('total', 0):.1f} s; report: {out_dir / 'report.json'}, {out_dir / 'report.md'}")


def _check_seed(seed: int, option: str = "--seed") -> None:
    from compress.api import check_seed

    check_seed(seed, name=option)


def _floats(option: str, text: Optional[str], *, positive: bool = False) -> Optional[tuple[float, ...]]:
    """``'0.485,0.456,0.406'`` -> floats (one per channel, or one for all), or a ConfigError saying the format."""
    import math

    from compress.errors import ConfigError

    if text is None:
        return None
    example = "0.229,0.224,0.225" if positive else "0.485,0.456,0.406"
    fmt = (f"{option} takes comma-separated numbers, one per image channel or one for all channels "
           f"(e.g. {option} {example} for RGB, {option} 0.5 for all)")
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{fmt}; got {text!r}.") from None
    if not all(math.isfinite(v) for v in vals):
        raise ConfigError(f"{fmt}, finite; got {text!r}.")
    if positive and min(vals) <= 0:
        raise ConfigError(f"{fmt}, each > 0 (a std of 0 divides by zero); got {text!r}.")
    return vals


def _data_options(data: str, *, seed: int, test_data: Optional[str], mean: Optional[str], std: Optional[str],
                  image_size: Optional[int], in_chans: Optional[int], num_classes: Optional[int],
                  crop_pct: Optional[float] = None, interpolation: Optional[str] = None,
                  model: Optional[str] = None, num_workers: Optional[int] = None) -> dict:
    """``slimforge run``'s data options as ``load_task`` keyword arguments, each checked against the
    kind of ``--data`` (digits, .npz or an image folder) with a ConfigError naming the flag.

    An image folder is read with the data config of a ``timm:`` / ``torchvision:`` ``model``
    (issue 17; :mod:`compress.data.transforms`), which ``--image-size``, ``--crop-pct``,
    ``--interpolation``, ``--mean`` and ``--std`` override; other specs keep the legacy resize."""
    import math

    from compress.data.transforms import INTERPOLATIONS
    from compress.errors import ConfigError

    _check_seed(seed)
    kw: dict = {"seed": seed}
    m, s = _floats("--mean", mean), _floats("--std", std, positive=True)
    digits = data.strip().lower() == "digits"
    folder = Path(data).expanduser().is_dir()
    bad = []
    if digits and (m is not None or s is not None):
        bad.append("--mean/--std apply to .npz and image-folder data (digits is normalised by slimforge); drop them")
    if digits and test_data:
        bad.append("--test-data applies to .npz and image-folder data (digits has its own test split); drop it")
    if image_size is not None and not folder:
        bad.append("--image-size applies to image-folder data only (an .npz is used at its stored size); drop it")
    if image_size is not None and image_size < 1:
        bad.append(f"--image-size must be a positive number of pixels, got {image_size}")
    if in_chans is not None and in_chans < 1:
        bad.append(f"--in-chans must be a positive number of channels, got {in_chans}")
    if in_chans is not None and folder and in_chans not in (1, 3):
        bad.append(f"--in-chans must be 1 (grayscale) or 3 (RGB) for an image folder, got {in_chans}")
    if num_classes is not None and num_classes < 1:
        bad.append(f"--num-classes must be >= 1, got {num_classes}")
    if crop_pct is not None and not folder:
        bad.append("--crop-pct applies to image-folder data only (an .npz is used at its stored size); drop it")
    elif crop_pct is not None and not (math.isfinite(crop_pct) and 0 < crop_pct <= 1):
        bad.append(f"--crop-pct must be in (0, 1], the fraction of the resized image the center crop keeps "
                   f"(e.g. --crop-pct 0.875: resize to 256, crop 224), got {crop_pct}")
    if interpolation is not None and not folder:
        bad.append("--interpolation applies to image-folder data only (an .npz is used at its stored size); drop it")
    elif interpolation is not None and interpolation.strip().lower() not in INTERPOLATIONS:
        bad.append(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if num_workers is not None and num_workers < 0:
        bad.append(f"--num-workers must be >= 0 (0: decode in the main process), got {num_workers}")
    if bad:
        raise ConfigError("; ".join(bad) + ".")
    if test_data:
        kw["test_path"] = test_data
    if m is not None:
        kw["mean"] = m
    if s is not None:
        kw["std"] = s
    if folder:
        if image_size is not None:
            kw["image_size"] = image_size
        if in_chans is not None:
            kw["channels"] = in_chans
        if crop_pct is not None:
            kw["crop_pct"] = crop_pct
        if interpolation is not None:
            kw["interpolation"] = interpolation.strip().lower()
        if num_workers is not None:
            kw["num_workers"] = num_workers
        if model is not None and model.split(":", 1)[0].strip().lower() in ("timm", "torchvision"):
            kw["model"] = model.strip()  # the teacher's data config (a spec: resolved without building it)
    return kw


_TIME_LIMIT_FORMAT = ("--time-limit takes PHASE=SECONDS, repeated per phase (e.g. --time-limit prune=7200 "
                      "--time-limit finetune=none); SECONDS may end in s, m or h (90s, 30m, 2h); none: no limit")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _time_limits(items: Optional[List[str]]) -> Optional[dict]:
    """``["prune=2h", "finetune=none"]`` -> ``{"prune": 7200.0, "finetune": None}`` (the phase names
    checked against :data:`compress.phases.PHASES`), or None when no ``--time-limit`` was given.

    Raises:
        ConfigError: a malformed item, a phase given twice, an unknown phase (with the known ones) or a
            limit that is not a positive number of seconds; every problem at once.
    """
    import math

    from compress.errors import ConfigError
    from compress.phases import known_phases, unknown_phase

    if not items:
        return None
    out: dict = {}
    bad, names_bad = [], False
    for item in items:
        name, sep, value = (part.strip() for part in item.partition("="))
        text = value.lower()
        if not sep or not name or not text:
            bad.append(f"{item!r} is not PHASE=SECONDS")
            continue
        if name in out:
            bad.append(f"phase {name!r} is given twice")
            continue
        if unknown_phase(name):
            bad.append(unknown_phase(name))
            names_bad = True
            out[name] = None
            continue
        if text in ("none", "inf", "unlimited"):
            out[name] = None
            continue
        unit = _UNITS.get(text[-1], None)
        try:
            seconds = float(text[:-1] if unit else text) * (unit or 1.0)
        except ValueError:
            seconds = None
        if seconds is None or not math.isfinite(seconds) or seconds <= 0:
            bad.append(f"{item!r}: {value!r} is not a positive number of seconds (or none)")
            continue
        out[name] = seconds
    if bad:
        raise ConfigError(f"--time-limit: {'; '.join(bad)}. {_TIME_LIMIT_FORMAT}."
                          + (f" {known_phases()}" if names_bad else ""))
    return out


def _exit_code(result) -> int:
    return 0 if (result.budget_check.ok and result.validation.ok) else 3


def _load_config(config: Optional[str]) -> Optional[dict]:
    if config is None:
        return None
    p = Path(config)
    text = p.read_text() if p.is_file() else config
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        from compress.errors import ConfigError

        raise ConfigError(f"--config must be a JSON object or a path to a JSON file: {exc}") from exc
    if not isinstance(data, dict):
        from compress.errors import ConfigError

        raise ConfigError("--config must be a JSON object of the strategy's config fields.")
    return data


RUN_ARGS = "run_args.json"
RUN_ARGS_FORMAT = "slimforge-run-args/1"
_NOT_RECORDED = ("out", "resume")  # the run directory is where the record lives; resume is how it is used
_NOT_COMPARED = ("executor", "ray_address", "time_limit",  # how the work runs, not what it computes
                 "reference_points")  # (reference points only place the student in the report)


_RUN_ARGS_FIX = "start the run again with `slimforge demo/run ... --no-resume` (or choose another --out)"


def _args_schema(fn):
    """A strict pydantic model of ``fn``'s recorded parameters (from its signature: ``Path`` is
    stored as ``str``; options without a default are required, the others default to the CLI's)."""
    import inspect
    import typing

    from pydantic import create_model

    from compress._strict_json import STRICT

    hints = typing.get_type_hints(fn)
    fields = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in _NOT_RECORDED:
            continue
        hint = hints.get(name, typing.Any)
        hint = {Path: str, Optional[Path]: Optional[str]}.get(hint, hint)
        default = getattr(p.default, "default", p.default)
        fields[name] = (hint, ... if default is ... else default)
    return create_model(f"{fn.__name__.capitalize()}Args", __config__=STRICT, **fields)


def _read_run_args(path: Path) -> tuple[str, dict]:
    """``(command, args)`` of a ``run_args.json``, validated: the record's envelope and the
    arguments against the command's signature (:func:`_args_schema`); NaN / infinities refused.
    ``args`` holds every recorded option, absent ones (added to the CLI later) at their defaults.

    Raises:
        CheckpointError: unreadable, not JSON, or not valid (every problem listed, and what to do).
    """
    from typing import Literal

    from pydantic import BaseModel

    from compress._strict_json import STRICT, read_json_file, validate
    from compress.errors import CheckpointError

    class RunArgsRecord(BaseModel):
        model_config = STRICT
        format: Literal["slimforge-run-args/1"]
        command: Literal["demo", "run"]
        args: dict

    raw = read_json_file(path, CheckpointError, what="run record", fix=_RUN_ARGS_FIX)
    rec = validate(RunArgsRecord, raw, CheckpointError, what="run record", path=path, fix=_RUN_ARGS_FIX)
    fn = {"demo": demo, "run": run}[rec.command]
    args = validate(_args_schema(fn), rec.args, CheckpointError, what=f"run record ({rec.command} arguments)",
                    path=path, fix=_RUN_ARGS_FIX)
    return rec.command, args.model_dump()  # options added after the run was started: their defaults


def _recorded_args(args: dict) -> dict:
    """An invocation's arguments as JSON, with paths that exist made absolute (so ``slimforge
    resume`` works from any working directory)."""
    out = {}
    for k, v in args.items():
        if k in _NOT_RECORDED or callable(v):  # parameters only (not the caller's helpers)
            continue
        if isinstance(v, Path) or (isinstance(v, str) and k in ("data", "test_data", "config", "target")
                                   and len(v) < 4096 and Path(v).exists()):
            v = str(Path(v).resolve())
        out[k] = v
    return out


def _record_run(out: Path, command: str, args: dict, resume: bool):
    """Write ``out/run_args.json`` atomically before any work, so ``slimforge resume OUT`` can repeat
    this invocation after a crash. With ``resume``, an existing record must describe the same
    invocation. Returns a cleanup callable for a run that fails with a clean error (it removes the
    record unless a checkpoint was committed after it, and ``out`` if this call created it and it is
    empty), so that the corrected command is not refused.

    Raises:
        CheckpointError: ``out`` was started by another invocation (lists what differs), or its
            record is corrupt. ConfigError: ``out`` cannot be written.
    """
    from compress.errors import CheckpointError, ConfigError
    from compress.exporters.atomic import write_text_atomic

    rec = {"format": RUN_ARGS_FORMAT, "command": command, "args": _recorded_args(args)}
    path = Path(out) / RUN_ARGS
    if resume and path.is_file():
        old_command, old_args = _read_run_args(path)
        old = {"command": old_command, "args": old_args}
        same = lambda d: {k: v for k, v in d.items() if k not in _NOT_COMPARED}  # noqa: E731
        if old.get("command") != command or same(old.get("args") or {}) != same(rec["args"]):
            a, b = old.get("args") or {}, rec["args"]
            diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                    if k not in _NOT_COMPARED and a.get(k) != b.get(k)]
            raise CheckpointError(
                f"{out} holds a `slimforge {old.get('command')}` run with other arguments ("
                + ("; ".join(diff[:6]) or f"command {old.get('command')} -> {command}")
                + f"). Continue it with `slimforge resume {out}`, start over with --no-resume, or choose another --out."
            )
        return lambda: None
    created = not Path(out).exists()
    try:
        write_text_atomic(path, json.dumps(rec, indent=2, sort_keys=True))
    except OSError as exc:
        if created and Path(out).is_dir() and not any(Path(out).iterdir()):
            Path(out).rmdir()
        if exc.errno == errno.ENOSPC:
            from compress.errors import disk_full

            raise disk_full(exc, path) from exc
        raise ConfigError(f"output directory {out} cannot be written ({exc}); choose another --out.") from exc

    def cleanup() -> None:  # only while no checkpoint was committed: after one, `slimforge resume` needs the record
        ck = Path(out) / "checkpoints"
        if ck.is_dir() and any(p.is_file() and p.name != "run.json" for p in ck.rglob("*")):
            return
        path.unlink(missing_ok=True)
        if created and Path(out).is_dir() and not any(Path(out).iterdir()):
            Path(out).rmdir()

    return cleanup


@app.command()
@_clean_errors
def demo(
    strategy: str = typer.Option("gp-prune", help="Strategy to run."),
    seed: int = typer.Option(0, help="Run seed."),
    out: Path = typer.Option(Path("slimforge-out/demo"), help="Output directory."),
    budget: str = typer.Option("macs=0.5x", help="Budget spec."),
    teacher_model: str = typer.Option("timm:resnet18", help="Teacher architecture trained on digits."),
    teacher_epochs: int = typer.Option(12, help="Teacher training epochs (first run only; cached)."),
    epochs: int = typer.Option(6, help="Student fine-tune epochs."),
    config: Optional[str] = typer.Option(None, help="Strategy config as JSON (string or file)."),
    int8: bool = typer.Option(True, help="Also write an int8 (static QDQ) student and re-validate its accuracy."),
    resume: bool = typer.Option(True, help="Continue from --out's checkpoints when they belong to this run (--no-resume: start over)."),
    device: str = typer.Option("auto", help="Training device: auto (CUDA if available, else CPU), cpu, cuda or cuda:N."),
    precision: str = typer.Option("fp32", help="Training precision: fp32, bf16 (autocast) or fp16 (CUDA only)."),
    devices: int = typer.Option(1, help="Processes for data-parallel (DDP) fine-tunes on this machine."),
    num_workers: Optional[int] = typer.Option(None, help="DataLoader worker processes that decode and augment batches (default: image folders of 512+ images min(4, CPUs), else 0)."),
    allow_slower: bool = typer.Option(False, "--allow-slower", help="Accept a student that is not faster than the teacher on the target (by default that fails the budget check: exit 3)."),
    time_limit: Optional[List[str]] = typer.Option(None, "--time-limit", metavar="PHASE=SECONDS", help="Time limit of one phase, repeatable: e.g. --time-limit prune=2h --time-limit finetune=none (SECONDS may end in s, m, h; none: no limit). Phases and defaults: compress.phases.PHASES (prune 12 h, finetune none, ...)."),
) -> None:
    """Train (or load the cached) digits teacher, compress it to the budget, export, validate, profile."""
    cleanup = lambda: None  # noqa: E731
    args = dict(locals())
    try:
        _check_seed(seed)
        from compress.strategies import get_strategy  # torch, timm, torch-pruning: not loaded for `slimforge --help`

        cfg = {**get_strategy(strategy).demo_config(epochs), **(_load_config(config) or {})}
        get_strategy(strategy)(cfg or None)  # strategy name and every config field checked before the teacher trains
        limits = _time_limits(time_limit)
        cleanup = _record_run(out, "demo", args, resume)
        from compress.api import compress
        from compress.data import load_digits_task
        from compress.teachers import TeacherRecipe, get_or_train_teacher

        con = _console()
        from compress.training import Runtime, RuntimeOptions

        rt_opts = RuntimeOptions(device=device, precision=precision, devices=devices,
                                 num_workers=0 if num_workers is None else num_workers)  # digits: in memory
        task = load_digits_task(seed=seed)
        recipe = TeacherRecipe(model_spec=teacher_model, epochs=teacher_epochs, seed=seed)
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.epochs, desc="train teacher", leave=False)

        def on_epoch(epoch: int, rec: dict) -> None:
            bar.n = epoch
            bar.set_postfix(val_acc=f"{rec['val_acc']:.3f}")
            bar.refresh()

        teacher, meta = get_or_train_teacher(recipe, task, on_epoch=on_epoch,
                                             runtime=Runtime(dataclasses.replace(rt_opts, devices=1)))
        bar.close()
        con.print(
            f"teacher {teacher_model} on digits ({task.spec.input_shape}, {task.spec.num_classes} classes): "
            f"{'loaded from cache' if meta['cached'] else 'trained'} {meta['path']}"
        )
        from compress.strategies._parts.time_limit import on_hang_exit

        with on_hang_exit(cleanup):
            result = compress(teacher, budget, data=task, strategy=strategy, seed=seed, out_dir=out,
                              config=cfg or None, model_spec=teacher_model, int8=int8, resume=resume, runtime=rt_opts,
                              allow_slower=allow_slower, time_limits=limits)
    except BaseException:  # any failure, Ctrl-C or SIGTERM before the first checkpoint: leave no record behind
        cleanup()
        raise
    _print_result(result, out)
    raise typer.Exit(code=_exit_code(result))


@app.command()
@_clean_errors
def run(
    model: str = typer.Option(..., help="Model spec: timm:NAME, torchvision:NAME, cifar:resnet56, or package.module:factory."),
    data: str = typer.Option(..., help="Data: 'digits', an .npz with x (uint8 NHWC) and y, or an ImageFolder directory."),
    budget: str = typer.Option(..., help="Budget spec, e.g. 'macs=0.5x' or 'params=1M,latency=2ms'."),
    out: Path = typer.Option(..., help="Output directory."),
    strategy: str = typer.Option("gp-prune", help="Strategy name (see `slimforge strategies`)."),
    weights: Optional[Path] = typer.Option(None, help="Local weights file (state_dict) for the model."),
    test_data: Optional[str] = typer.Option(None, help="Optional .npz used as the test split."),
    num_classes: Optional[int] = typer.Option(None, help="Classes (default: from the data)."),
    mean: Optional[str] = typer.Option(None, help="Normalisation mean, e.g. '0.485,0.456,0.406'."),
    std: Optional[str] = typer.Option(None, help="Normalisation std, e.g. '0.229,0.224,0.225'."),
    image_size: Optional[int] = typer.Option(None, help="Image folders: the input size N x N. timm:/torchvision: models: default their data config's (resize by --crop-pct, center crop); other models: every image resized to N x N (default: keep the files' size, which must then be the same for all)."),
    in_chans: Optional[int] = typer.Option(None, help="Input channels of the model (default: the data's). Image folders are read as grayscale with 1, RGB with 3."),
    crop_pct: Optional[float] = typer.Option(None, "--crop-pct", help="Image folders: the fraction of the resized image the center crop keeps, in (0, 1] (default: the timm:/torchvision: model's data config, else timm's 0.875 when --interpolation is given)."),
    interpolation: Optional[str] = typer.Option(None, "--interpolation", help="Image folders: resize filter: nearest, bilinear, bicubic, box, hamming or lanczos (default: the model's data config)."),
    seed: int = typer.Option(0, help="Run seed."),
    target: str = typer.Option("cpu-1t", help="Latency target: a preset (cpu-1t, cpu-2t, ort-mobile) or a .toml/.yaml target file."),
    config: Optional[str] = typer.Option(None, help="Strategy config as JSON (string or file)."),
    int8: bool = typer.Option(False, help="Also write an int8 (static QDQ) student and re-validate its accuracy."),
    executor: str = typer.Option("serial", help="Population evaluation: serial, process (local pool) or ray (used by eg-nas)."),
    ray_address: Optional[str] = typer.Option(None, help="With --executor ray: cluster address (ray://HOST:10001 or auto); default: a local Ray instance."),
    resume: bool = typer.Option(True, help="Continue from --out's checkpoints when they belong to this run (--no-resume: start over)."),
    device: str = typer.Option("auto", help="Training device: auto (CUDA if available, else CPU), cpu, cuda or cuda:N."),
    precision: str = typer.Option("fp32", help="Training precision: fp32, bf16 (autocast) or fp16 (CUDA only)."),
    devices: int = typer.Option(1, help="Processes for data-parallel (DDP) fine-tunes on this machine."),
    num_workers: Optional[int] = typer.Option(None, help="DataLoader worker processes that decode and augment batches (default: image folders of 512+ images min(4, CPUs), else 0)."),
    allow_slower: bool = typer.Option(False, "--allow-slower", help="Accept a student that is not faster than the teacher on the target (by default that fails the budget check: exit 3)."),
    time_limit: Optional[List[str]] = typer.Option(None, "--time-limit", metavar="PHASE=SECONDS", help="Time limit of one phase, repeatable: e.g. --time-limit prune=2h --time-limit finetune=none (SECONDS may end in s, m, h; none: no limit). Phases and defaults: compress.phases.PHASES (prune 12 h, finetune none, ...)."),
    reference_points: Optional[Path] = typer.Option(None, "--reference-points", help="JSON list of models to place the student against ([{\"name\", \"accuracy\" (fraction), \"macs\", \"latency_ms\"}], e.g. the shelf models): writes pareto.png and a \"Where the student sits\" section in report.md (needs a test split)."),
) -> None:
    """Compress a model on your data to a budget and write the report and artifacts to --out."""
    cleanup = lambda: None  # noqa: E731
    args = dict(locals())
    try:
        kw = _data_options(data, seed=seed, test_data=test_data, mean=mean, std=std, image_size=image_size,
                           in_chans=in_chans, num_classes=num_classes, crop_pct=crop_pct, interpolation=interpolation,
                           model=model, num_workers=num_workers)  # every option checked before anything is written
        from compress.strategies import get_strategy  # torch, timm, torch-pruning: not loaded for `slimforge --help`

        get_strategy(strategy)(_load_config(config))  # strategy name and every config field checked first
        if reference_points is not None:
            from compress.pareto import reference_points_from_file

            reference_points_from_file(reference_points)
        limits = _time_limits(time_limit)
        cleanup = _record_run(out, "run", args, resume)
        from compress.api import compress
        from compress.data import load_task
        from compress.errors import ConfigError
        from compress.models import load_model
        from compress.profiling import Target

        task = load_task(data, **kw)
        chans = task.spec.input_shape[0]
        if in_chans is not None and in_chans != chans:
            raise ConfigError(f"--in-chans {in_chans} but the data {data!r} has {chans}-channel images; omit --in-chans "
                              "(the model then takes the data's channels) or convert the data.")
        from compress.api import seed_everything

        seed_everything(seed)  # a model without --weights is initialised the same way in every run (and resume)
        net = load_model(model, num_classes=num_classes or task.spec.num_classes, weights=weights, in_chans=chans)
        from compress.strategies._parts.time_limit import on_hang_exit

        with on_hang_exit(cleanup):
            result = compress(net, budget, data=task, strategy=strategy, seed=seed, out_dir=out,
                              target=Target.resolve(target), config=_load_config(config), model_spec=model, int8=int8,
                              executor=executor, ray_address=ray_address, resume=resume,
                              runtime=dict(device=device, precision=precision, devices=devices,
                                           num_workers=num_workers if num_workers is not None
                                           else int(getattr(task.train, "num_workers", 0))),
                              allow_slower=allow_slower, time_limits=limits, reference_points=reference_points)
    except BaseException:  # any failure, Ctrl-C or SIGTERM before the first checkpoint: leave no record behind
        cleanup()
        raise
    _print_result(result, out)
    raise typer.Exit(code=_exit_code(result))


@app.command("resume")
@_clean_errors
def resume_cmd(
    run_dir: Path = typer.Argument(..., help="Output directory of a `slimforge demo` or `slimforge run` (holds run_args.json)."),
    model: Optional[str] = typer.Option(None, help="The run's model spec, passed again: needed (or --trust-remote-code) "
                                        "when run_args.json names a package.module:factory rather than a registry spec."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Resolve the model spec and Ray address "
                                           "that run_args.json names, whatever they are (only for run directories you trust)."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address for a run started with --executor ray "
                                              "--ray-address: pass it again (a file never chooses the cluster)."),
) -> None:
    """Continue a killed `slimforge demo` / `slimforge run` from its last checkpoint; writes the
    report the uninterrupted run would have written (same student, history and numbers).

    run_args.json is validated against the command's options. A model spec it names is resolved
    only when it is a registry spec (timm:, torchvision:, cifar:, a compress.testing model), or
    when passed again with --model, or with --trust-remote-code; nothing is imported from the run
    directory or the current directory."""
    import inspect

    from compress.errors import CheckpointError, UntrustedCodeError
    from compress.models import no_imports_from, require_registry_spec

    path = run_dir / RUN_ARGS
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {RUN_ARGS}; point to the --out directory of a `slimforge demo` "
                              "or `slimforge run`.")
    command, args = _read_run_args(path)
    fn = {"demo": demo, "run": run}[command]
    spec_key = "model" if command == "run" else "teacher_model"
    recorded = args.get(spec_key, getattr(inspect.signature(fn).parameters[spec_key].default, "default", None))
    if model is not None and model.strip() != str(recorded).strip():
        raise CheckpointError(f"--model {model!r} differs from the model this run was started with ({recorded!r} "
                              f"in {path}); resume repeats the recorded run. Start a new run for another model.")
    require_registry_spec(recorded, source=path, explicit=model, trust_remote_code=trust_remote_code,
                          how_to_pass=f"slimforge resume {run_dir} --model SPEC")
    if args.get("ray_address") and not trust_remote_code and ray_address != args["ray_address"]:
        raise UntrustedCodeError(
            f"{path} names the Ray cluster {args['ray_address']!r}; results from a cluster are unpickled, so an "
            f"address from a file could run code here. If you trust it, pass it again (slimforge resume {run_dir} "
            f"--ray-address {args['ray_address']}), or pass --trust-remote-code."
        )
    if ray_address is not None:
        args["ray_address"] = ray_address  # where the work runs, not what it computes
    kwargs = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in args:
            v = args[name]
            kwargs[name] = Path(v) if v is not None and "Path" in str(p.annotation) else v
        else:  # an option added after the run was started: its default
            kwargs[name] = getattr(p.default, "default", p.default)
    kwargs.update(out=run_dir, resume=True)
    with no_imports_from(run_dir):
        fn(**kwargs)


@app.command()
@_clean_errors
def measure(
    model: str = typer.Option(..., help="Model spec."),
    weights: Optional[Path] = typer.Option(None, help="Local weights file."),
    input_shape: str = typer.Option("3,32,32", help="Per-sample input shape C,H,W."),
    num_classes: int = typer.Option(10, help="Classifier outputs."),
    target: str = typer.Option("cpu-1t", help="Latency target: a preset (cpu-1t, cpu-2t, ort-mobile) or a .toml/.yaml target file."),
    top: int = typer.Option(15, help="Rows of the per-module table."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Print a model's cost (fvcore MACs, params) and ONNX/torch latency on a target."""
    import torch

    from compress.budgets import measure_cost
    from compress.models import load_model
    from compress.profiling import Target, profile_latency

    from compress.errors import ConfigError

    try:
        shape = tuple(int(v) for v in input_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input-shape takes C,H,W as three positive integers (e.g. 3,32,32), got {input_shape!r}.")
    net = load_model(model, num_classes=num_classes, weights=weights).eval()
    x = torch.randn(2, *shape)
    cost = measure_cost(net, x)
    tgt = Target.resolve(target, input_shape=shape)
    ort = profile_latency(net, tgt, example_inputs=x)
    eager = profile_latency(net, tgt, engine="torch", example_inputs=x[:1])
    if as_json:
        print(json.dumps({"model": model, "cost": cost.to_dict(with_table=True), "latency_ms": {
            "onnxruntime": ort.to_dict(), "torch": eager.to_dict()}}, indent=2))
        return
    from rich.table import Table

    con = _console()
    t = Table(title=f"{model} @ {shape}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("MACs (fvcore, per sample)", f"{cost.macs:,}")
    t.add_row("params", f"{cost.params:,}")
    t.add_row(f"latency ms ORT [{tgt.name}] median / p90", f"{ort.median_ms:.3f} / {ort.p90_ms:.3f}")
    t.add_row("latency ms torch eager median / p90", f"{eager.median_ms:.3f} / {eager.p90_ms:.3f}")
    t.add_row("uncounted ops", ", ".join(f"{k} x{v}" for k, v in cost.uncounted_ops.items()) or "-")
    con.print(t)
    mt = Table(title=f"top {top} modules by MACs")
    mt.add_column("module")
    mt.add_column("MACs", justify="right")
    mt.add_column("params", justify="right")
    for name, macs, params in cost.table(top):
        mt.add_row(name, f"{macs:,}", f"{params:,}")
    con.print(mt)


@app.command()
@_clean_errors
def gate(
    model: Path = typer.Option(..., help="The exported model (.onnx) to gate."),
    baseline: Path = typer.Option(..., help="Baseline JSON (written by --update-baseline)."),
    target: str = typer.Option("cpu-1t", help="Latency target: a preset or a .toml/.yaml target file."),
    tolerance: str = typer.Option("5%", help="Allowed relative growth of latency, MACs and params: '5%' or 0.05 (a bare number >= 1 is refused)."),
    max_latency_ms: Optional[float] = typer.Option(None, help="Absolute latency limit (median, ms)."),
    max_accuracy_drop: float = typer.Option(1.0, help="Allowed top-1 drop in points (when --data is given)."),
    data: Optional[Path] = typer.Option(None, help="Labelled .npz (x uint8 NHWC, y) for accuracy; normalised with --mean/--std."),
    mean: Optional[str] = typer.Option(None, help="Normalisation mean for --data, e.g. '0.485,0.456,0.406'."),
    std: Optional[str] = typer.Option(None, help="Normalisation std for --data."),
    repeats: int = typer.Option(50, help="Timed runs (after warm-up)."),
    update_baseline: bool = typer.Option(False, "--update-baseline", help="Measure and write the baseline, then exit 0."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    reference: Optional[Path] = typer.Option(
        None, help="The baseline's .onnx: time it side by side with --model in this run (interleaved rounds) "
                   "and gate on their ratio. Without it latency is reported but not judged (a stored latency is not comparable across runs)."),
    rounds: int = typer.Option(10, help="Interleaved rounds for --reference (each: warm-up + repeats/rounds calls)."),
) -> None:
    """Gate CI on a model's MACs, params, accuracy and (with --reference) latency against a baseline.

    Exit codes: 0 pass, 1 regression, 2 bad input or usage (missing, corrupt or foreign baseline, bad
    --tolerance, missing file, target mismatch ...): a message says what to do, never a traceback.
    Without --reference the latency row is reported but not judged (a stored latency is not
    comparable across runs; see compress.gate).
    """
    from rich.console import Console
    from rich.markup import escape

    def work():
        import math

        from compress.errors import ConfigError
        from compress.gate import (check_target, compare, load_baseline, measure_artifact, parse_tolerance,
                                   side_by_side_latency, write_baseline)
        from compress.profiling import Target

        tol = parse_tolerance(tolerance)  # validate every option and file before measuring anything
        bad = []
        if repeats < 1:
            bad.append(f"--repeats must be >= 1, got {repeats}")
        if reference is not None and rounds < 2:
            bad.append(f"--rounds must be >= 2 for a side-by-side comparison, got {rounds}")
        if max_latency_ms is not None and not (math.isfinite(max_latency_ms) and max_latency_ms > 0):
            bad.append(f"--max-latency-ms must be a finite number of milliseconds > 0, got {max_latency_ms}")
        if not (math.isfinite(max_accuracy_drop) and max_accuracy_drop >= 0):
            bad.append(f"--max-accuracy-drop must be a finite number of points >= 0, got {max_accuracy_drop}")
        if not model.is_file():
            bad.append(f"model {model} does not exist; pass the exported .onnx file")
        if reference is not None and not update_baseline and not reference.is_file():
            bad.append(f"reference {reference} does not exist; pass the baseline model's .onnx file")
        if bad:
            raise ConfigError("; ".join(bad) + ".")
        tgt = Target.resolve(target)
        base = None
        if not update_baseline:
            base = load_baseline(baseline)
            check_target(base, tgt)
        labelled = _npz_for_gate(data, mean, std) if data is not None else None
        current = measure_artifact(model, tgt, repeats=repeats, data=labelled)
        if base is None:
            write_baseline(baseline, current)
            return current
        lat_row = None
        if reference is not None:
            lat_row = side_by_side_latency(reference, model, tgt.with_input_shape(
                tuple(current["target"]["input_shape"])), tolerance=tol, rounds=rounds,
                repeats=max(1, repeats // rounds))
        return compare(base, current, tolerance=tol, max_latency_ms=max_latency_ms,
                       max_accuracy_drop_pts=max_accuracy_drop, latency_row=lat_row)

    try:
        result = work()
    except Exception as exc:  # exit 1 means "regression" to CI, so every failure here exits 2
        if _debug():
            raise
        if isinstance(exc, SlimforgeError):
            msg = f"{type(exc).__name__}: {exc}"
        elif isinstance(exc, (OSError, ValueError)):  # e.g. an unreadable --data file, '--mean abc'
            msg = f"{type(exc).__name__}: {exc}; check the files and options given."
        else:
            msg = (f"internal error ({type(exc).__name__}: {exc}); this is a slimforge bug, please report it with "
                   f"the command line. The gate did not judge the model.")
        Console(stderr=True).print(f"[bold red]error[/]: {escape(msg)}")
        raise typer.Exit(code=2)
    if update_baseline:
        _console().print(escape(f"baseline written: {baseline} (latency median {result['latency_ms']['median']:.3f} ms, "
                                f"MACs {result['macs']:,}, params {result['params']:,})"))
        raise typer.Exit(code=0)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        from rich.table import Table

        t = Table(title=escape(f"slimforge gate: {model.name} vs {baseline.name} [{result.current['target']['name']}]"))
        for col in ("metric", "baseline", "current", "change", "limit", "status", "detail"):
            t.add_column(col)
        for r in result.rows:
            fmt = (lambda v: "-" if v is None else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"))
            ch = "-" if r.change_pct is None else f"{r.change_pct:+.1f}%"
            style = {"REGRESSED": "bold red", "improved": "green"}.get(r.status, "")
            t.add_row(escape(r.metric), fmt(r.baseline), fmt(r.current), ch, escape(r.limit),
                      f"[{style}]{r.status}[/]" if style else r.status, escape(r.detail))
        con = _console()
        con.print(t)
        for n in result.notes:
            con.print(f"note: {escape(n)}")
        con.print("[green]gate passed[/]" if result.ok else
                  "[bold red]gate FAILED[/]: " + escape(", ".join(r.metric for r in result.regressions())))
    raise typer.Exit(code=0 if result.ok else 1)


def _npz_for_gate(path: Path, mean: Optional[str], std: Optional[str]):
    import numpy as np

    from compress.errors import DataError

    try:
        with np.load(path) as z:
            x, y = z["x"], z["y"]
    except Exception as exc:
        raise DataError(f"--data {path}: cannot read x and y arrays ({exc}).") from exc
    x = x.astype("float32") / (255.0 if x.dtype == np.uint8 else 1.0)
    if x.ndim == 3:
        x = x[..., None]
    x = x.transpose(0, 3, 1, 2)
    if mean and std:
        m = np.array([float(v) for v in mean.split(",")], dtype="float32")[None, :, None, None]
        s = np.array([float(v) for v in std.split(",")], dtype="float32")[None, :, None, None]
        x = (x - m) / s
    return np.ascontiguousarray(x), y.astype("int64")


@app.command("evolve-metric")
@_clean_errors
def evolve_metric_cmd(
    preset: str = typer.Option("cpu-small", help="Evolution preset: 'cpu-small' (digits tasks, minutes) or 'full' (paper)."),
    out: Path = typer.Option(Path("slimforge-out/evolve"), help="Run directory (checkpoint, best_metric.json, fitness.png)."),
    seed: int = typer.Option(0, help="Run seed."),
    workers: int = typer.Option(0, help="Evaluate individuals in a local process pool of this size (0: serial); with --executor ray, the CPUs of the local Ray instance."),
    resume: bool = typer.Option(True, help="Continue from the run directory's checkpoint when present."),
    generations: Optional[int] = typer.Option(None, help="Override the preset's number of generations."),
    data: Optional[Path] = typer.Option(None, help="Folder with the real task data (the 'full' preset: MNIST and CIFAR-10 npz)."),
    executor: Optional[str] = typer.Option(None, help="Where individuals are evaluated: serial, process or ray (default: process when --workers > 0, else serial)."),
    ray_address: Optional[str] = typer.Option(None, help="With --executor ray: cluster address (ray://HOST:10001 or auto); default: a local Ray instance."),
) -> None:
    """Evolve a channel-pruning metric with genetic programming (GECCO'22), then use it with
    `--config '{"metric": "OUT/best_metric.json"}'` in gp-prune."""
    from tqdm.auto import tqdm

    from compress.executors import make_executor
    from compress.evolution.config import EvolveConfig
    from compress.evolution.evolve import evolve_metric

    _check_seed(seed)

    overrides: dict = {"generations": generations} if generations else {}
    if data is not None:
        overrides["data_dir"] = str(data)
    cfg = EvolveConfig.preset(preset, **overrides)
    bars: dict = {}

    def progress(phase: str, done: int, total, info: dict) -> None:
        bar = bars.get(phase)
        if bar is None or (total is not None and bar.total != total):
            if bar is not None:
                bar.close()
            bar = bars[phase] = tqdm(total=total, desc=phase, leave=phase == "generation", dynamic_ncols=True)
        bar.n = done
        bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()
                         if isinstance(v, (int, float, str))}, refresh=False)
        bar.refresh()

    kind = executor or ("process" if workers > 0 else "serial")
    pool = make_executor(kind, workers=workers or None, ray_address=ray_address)
    try:
        result = evolve_metric(cfg, out_dir=out, seed=seed, executor=pool, progress=progress, resume=resume)
    finally:
        pool.close()
        for bar in bars.values():
            bar.close()
    con = _console()
    con.print(f"best metric (fitness {result.best_fitness:.4f}, task accuracies {list(result.best_acc)}):")
    con.print(f"  {result.best_formula}")
    if result.soap_best_gen0 is not None:
        con.print(f"best SOAP fitness in generation 0: {result.soap_best_gen0:.4f}")
    con.print(f"{result.generations_done} generations, {result.evaluations} evaluations, {result.wall_s:.0f} s; "
              f"outputs in {out} (best_metric.json, fitness.json, fitness.png)")


@app.command()
@_clean_errors
def strategies() -> None:
    """List the registered strategies."""
    from compress.strategies import get_strategy, list_strategies  # torch, timm, torch-pruning: not for --help

    for name in list_strategies():
        cls = get_strategy(name)
        print(f"{name}\t{cls.paper}")


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
