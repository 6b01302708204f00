"""The commands that compress a model: ``slimforge demo`` (the digits teacher), ``slimforge run``
(your model and data), ``slimforge resume`` (either one again, from its last checkpoint), and
``slimforge strategies``, which lists what their ``--strategy`` takes.

The strategies, the API, torch and the data are imported inside the commands, so that
``slimforge --help`` starts without them. :mod:`compress.cli` registers the commands on the app.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import List, Optional

import typer

from compress.cli.app import _clean_errors, _console
from compress.cli.options import _check_seed, _data_options, _load_config, _time_limits
from compress.cli.run_record import COMMANDS, RUN_ARGS, _read_run_args, _record_run
from compress.errors import CheckpointError, ConfigError, UntrustedCodeError
from compress.profiling import Target  # compress.profiling.target only: no torch
from compress.time_limit import on_hang_exit


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


def _exit_code(result) -> int:
    return 0 if (result.budget_check.ok and result.validation.ok) else 3


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
        from compress.strategies import get_strategy  # deferred: torch, timm, torch-pruning (the strategies package), kept out of `slimforge --help`

        strategy_cls = get_strategy(strategy)
        # the demo's settings, then the user's on top (nested or flat keys, merged leaf by leaf); every field is
        # checked here, before the teacher trains
        cfg = strategy_cls(strategy_cls.demo_config(epochs), **(_load_config(config) or {})).config
        limits = _time_limits(time_limit)
        cleanup = _record_run(out, "demo", args, resume)
        from compress.api import compress  # deferred: torch, timm, torch-pruning (the API and the strategies), kept out of `slimforge --help`
        from compress.data import load_digits_task  # deferred: torch, kept out of `slimforge --help`
        from compress.teachers import TeacherRecipe, get_or_train_teacher  # deferred: torch, pydantic, kept out of `slimforge --help`

        con = _console()
        from compress.training import Runtime, RuntimeOptions  # deferred: torch, pydantic, kept out of `slimforge --help`

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
        with on_hang_exit(cleanup):
            result = compress(teacher, budget, data=task, strategy=strategy, seed=seed, out_dir=out, config=cfg,
                              runtime=rt_opts,
                              options=dict(model_spec=teacher_model, int8=int8, resume=resume,
                                           allow_slower=allow_slower, time_limits=limits))
    except BaseException:  # any failure, Ctrl-C or SIGTERM before the first checkpoint: leave no record behind
        cleanup()
        raise
    _print_result(result, out)
    raise typer.Exit(code=_exit_code(result))


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
        from compress.strategies import get_strategy  # deferred: torch, timm, torch-pruning (the strategies package), kept out of `slimforge --help`

        get_strategy(strategy)(_load_config(config))  # strategy name and every config field checked first
        if reference_points is not None:
            from compress.pareto import reference_points_from_file  # deferred: torch, pydantic, kept out of `slimforge --help`

            reference_points_from_file(reference_points)
        limits = _time_limits(time_limit)
        cleanup = _record_run(out, "run", args, resume)
        from compress.api import compress, seed_everything  # deferred: torch, timm, torch-pruning (the API and the strategies), kept out of `slimforge --help`
        from compress.data import load_task  # deferred: torch, kept out of `slimforge --help`
        from compress.models import load_model  # deferred: torch, kept out of `slimforge --help`

        task = load_task(data, **kw)
        chans = task.spec.input_shape[0]
        if in_chans is not None and in_chans != chans:
            raise ConfigError(f"--in-chans {in_chans} but the data {data!r} has {chans}-channel images; omit --in-chans "
                              "(the model then takes the data's channels) or convert the data.")
        seed_everything(seed)  # a model without --weights is initialised the same way in every run (and resume)
        net = load_model(model, num_classes=num_classes or task.spec.num_classes, weights=weights, in_chans=chans)
        with on_hang_exit(cleanup):
            result = compress(net, budget, data=task, strategy=strategy, seed=seed, out_dir=out,
                              target=Target.resolve(target), config=_load_config(config),
                              runtime=dict(device=device, precision=precision, devices=devices,
                                           num_workers=num_workers if num_workers is not None
                                           else int(getattr(task.train, "num_workers", 0))),
                              options=dict(model_spec=model, int8=int8, executor=executor, ray_address=ray_address,
                                           resume=resume, allow_slower=allow_slower, time_limits=limits,
                                           reference_points=reference_points))
    except BaseException:  # any failure, Ctrl-C or SIGTERM before the first checkpoint: leave no record behind
        cleanup()
        raise
    _print_result(result, out)
    raise typer.Exit(code=_exit_code(result))


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
    from compress.models import no_imports_from, require_registry_spec  # deferred: torch, kept out of `slimforge --help`

    path = run_dir / RUN_ARGS
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {RUN_ARGS}; point to the --out directory of a `slimforge demo` "
                              "or `slimforge run`.")
    command, args = _read_run_args(path)
    fn = COMMANDS[command]
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


@_clean_errors
def strategies() -> None:
    """List the registered strategies."""
    from compress.strategies import get_strategy, list_strategies  # deferred: torch, timm, torch-pruning (the strategies package), kept out of `slimforge --help`

    for name in list_strategies():
        cls = get_strategy(name)
        print(f"{name}\t{cls.paper}")


COMMANDS.update(demo=demo, run=run)  # their runs are recorded (run_args.json) and resumed
