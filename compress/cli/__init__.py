"""The ``slimforge`` command line (typer). ``python -m compress`` and ``python -m compress.cli``
run the same app.

Commands: ``demo``, ``run``, ``resume``, ``measure``, ``gate``, ``evolve-metric``, ``strategies``.
Exit codes: 0 success, 2 any failure (bad input, a ``SlimforgeError``, a full disk, an internal error:
one paragraph on stderr that says what to do, no traceback unless ``slimforge --debug COMMAND``),
3 the student was produced but misses its budget, is not faster than its teacher on the target
(``latency_not_reduced``; ``--allow-slower`` accepts it) or fails ONNX parity (so CI pipelines can
gate on it), 1 ``gate`` found a regression, 130 interrupted (Ctrl-C / SIGINT), 143 terminated
(SIGTERM), 124 a phase ran past its time limit and stayed stuck in native code where the
``TimeLimitError`` could not be raised (the message is printed, temp files removed, no unwinding;
:mod:`compress.time_limit`). A phase past its limit otherwise fails like any
error (exit 2); ``--time-limit PHASE=SECONDS`` raises a limit. An interrupted or failed
``run``/``demo`` removes its temp folder, and its ``run_args.json`` when no checkpoint was
committed yet.

Modules: :mod:`~compress.cli.app` (the typer app, error messages and exit codes),
:mod:`~compress.cli.options` (option values parsed and checked), :mod:`~compress.cli.run_record`
(``run_args.json``), and the commands: :mod:`~compress.cli.compress_commands` (``demo``, ``run``,
``resume``, ``strategies``), :mod:`~compress.cli.measure_commands` (``measure``, ``gate``),
:mod:`~compress.cli.evolve_command` (``evolve-metric``). They import typer, the standard library
and the project's modules that load nothing heavier (the errors, the time limits, the phases,
``Target``, the atomic writes) at the top; torch, the strategies and pydantic only inside the
commands, so that ``slimforge --help`` starts without them.
"""

from __future__ import annotations

from compress.cli.app import app, main
from compress.cli.compress_commands import demo, resume_cmd, run, strategies
from compress.cli.evolve_command import evolve_metric_cmd
from compress.cli.measure_commands import gate, measure
from compress.cli.options import _data_options, _time_limits  # noqa: F401  (tests import them from here)
from compress.cli.run_record import RUN_ARGS, _record_run  # noqa: F401  (idem)

__all__ = ["app", "main", "RUN_ARGS"]

# The commands, in the order of `slimforge --help`.
app.command()(demo)
app.command()(run)
app.command("resume")(resume_cmd)
app.command()(measure)
app.command()(gate)
app.command("evolve-metric")(evolve_metric_cmd)
app.command()(strategies)
