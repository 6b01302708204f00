"""The commands that measure a model on a latency target: ``slimforge measure`` (its cost and
latency) and ``slimforge gate`` (the CI gate: an exported model against a baseline,
:mod:`compress.gate`).

torch, onnxruntime and the gate are imported inside the commands, so that ``slimforge --help``
starts without them. :mod:`compress.cli` registers the commands on the app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from compress._error_root import SlimforgeError  # a leaf: imports nothing
from compress.cli.app import _clean_errors, _console, _debug
from compress.errors import ConfigError, DataError
from compress.profiling import Target  # compress.profiling.target only: no torch


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

    from compress.budgets import measure_cost  # deferred: torch, kept out of `slimforge --help`
    from compress.models import load_model  # deferred: torch, kept out of `slimforge --help`
    from compress.profiling import profile_latency  # deferred: torch, kept out of `slimforge --help`

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

        from compress.gate import (  # deferred: torch, pydantic, kept out of `slimforge --help`
            check_target, compare, load_baseline, measure_artifact, parse_tolerance, side_by_side_latency, write_baseline)

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

