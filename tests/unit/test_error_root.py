"""One error root: every exception class of the project derives from ``SlimforgeError`` (and from the
nearest built-in), ``TimeLimitError`` is a ``TimeoutError`` rather than a ``TypeError``, and the CLI
turns any ``SlimforgeError`` of any layer into one line on stderr and exit 2.

The one class outside the root, on purpose: ``compress.signals.Terminated``, a ``SystemExit`` raised
for SIGTERM. It is a signal, not an error, and must get past ``except Exception`` (exit 143).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pickle
import pkgutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import compress
import compress.budgets
import compress.exporters
import compress.profiling
from compress._error_root import SlimforgeError
from compress.budgets.errors import BudgetError, CostError
from compress import cli
from compress.cli import app
from compress.errors import (
    BudgetAlreadyMetError,
    CompressError,
    DataError,
    TimeLimitError,
    UnsupportedModelError,
)
from compress.exporters.errors import ExportError, InputShapeError, OnnxValidationError
from compress.profiling.errors import ProfilingError, TargetError
from compress.signals import Terminated

#: exception classes of the project that are not SlimforgeErrors, and why
OUTSIDE_THE_ROOT = {"compress.signals.Terminated": "a SystemExit for SIGTERM: a signal, not an error"}

PACKAGES = (compress, compress.budgets, compress.profiling, compress.exporters)


def _project_modules() -> list[str]:
    names = set()
    for pkg in PACKAGES:
        names.add(pkg.__name__)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."):
            if info.name.rsplit(".", 1)[-1] == "__main__":  # runs the CLI when imported
                continue
            names.add(info.name)
    return sorted(names)


def _project_exceptions() -> dict[str, type[BaseException]]:
    found = {}
    for name in _project_modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and not issubclass(obj, Warning)
                    and obj.__module__ == name):  # a warning category (ConfigDeprecationWarning) is no error
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


@pytest.fixture(scope="module")
def project_exceptions() -> dict[str, type[BaseException]]:
    return _project_exceptions()


def test_the_walk_covers_every_layer(project_exceptions):
    names = set(project_exceptions)
    for expected in ("compress._error_root.SlimforgeError", "compress.errors.CompressError",
                     "compress.errors.TimeLimitError", "compress.budgets.errors.BudgetError",
                     "compress.budgets.errors.CostError", "compress.profiling.errors.ProfilingError",
                     "compress.exporters.errors.ExportError", "compress._strict_json.NonFiniteError",
                     "compress.evolution.primitives.MetricError", "compress.signals.Terminated"):
        assert expected in names, f"{expected} not found by the module walk: {sorted(names)}"


def test_every_project_exception_is_a_slimforge_error(project_exceptions):
    outside = {name for name, cls in project_exceptions.items() if not issubclass(cls, SlimforgeError)}
    assert outside == set(OUTSIDE_THE_ROOT), (
        f"exception classes outside SlimforgeError: {sorted(outside - set(OUTSIDE_THE_ROOT))}; derive them from "
        "SlimforgeError (compress._error_root; CompressError in the top layer) and the nearest built-in")
    assert issubclass(Terminated, SystemExit) and not issubclass(Terminated, Exception)


def test_one_root_only(project_exceptions):
    """Every project error reaches ``Exception`` only through ``SlimforgeError``'s chain or a built-in."""
    roots = {name for name, cls in project_exceptions.items()
             if not any(b.__module__.startswith("compress") for b in cls.__mro__[1:])}
    assert roots == {"compress._error_root.SlimforgeError", *OUTSIDE_THE_ROOT}


@pytest.mark.parametrize("cls, builtin", [
    (CompressError, Exception),
    (BudgetError, ValueError),
    (CostError, RuntimeError),
    (ProfilingError, RuntimeError),
    (TargetError, ValueError),
    (ExportError, RuntimeError),
    (InputShapeError, ValueError),
    (OnnxValidationError, RuntimeError),
    (DataError, ValueError),
    (UnsupportedModelError, TypeError),
    (TimeLimitError, TimeoutError),
    (BudgetAlreadyMetError, ValueError),
])
def test_each_error_keeps_its_builtin(cls, builtin):
    assert issubclass(cls, SlimforgeError) and issubclass(cls, builtin)


def test_metric_and_non_finite_errors():
    from compress._strict_json import NonFiniteError, loads_strict
    from compress.evolution.metrics import MetricError

    assert issubclass(MetricError, CompressError) and issubclass(MetricError, ValueError)
    assert issubclass(NonFiniteError, SlimforgeError) and issubclass(NonFiniteError, ValueError)
    with pytest.raises(SlimforgeError):
        loads_strict('{"x": NaN}')


def test_public_names():
    import compress.errors

    assert compress.SlimforgeError is compress.errors.SlimforgeError is SlimforgeError
    assert "SlimforgeError" in compress.__all__ and "SlimforgeError" in compress.errors.__all__


def test_time_limit_error_is_a_timeout_not_a_type_error():
    assert issubclass(TimeLimitError, TimeoutError) and issubclass(TimeLimitError, CompressError)
    assert not issubclass(TimeLimitError, TypeError) and not issubclass(TimeLimitError, UnsupportedModelError)
    err = TimeLimitError("phase 'prune' ran past 2 s", step="phase 'prune'", limit_s=2.0, phase="prune",
                         layer="conv1")
    assert str(err) == "phase 'prune' ran past 2 s" and err.errno is None
    back = pickle.loads(pickle.dumps(err))  # across processes (executors)
    assert type(back) is TimeLimitError and str(back) == str(err)
    assert (back.step, back.limit_s, back.phase, back.layer) == ("phase 'prune'", 2.0, "prune", "conv1")


def test_cli_catches_no_project_error_but_slimforge_error(project_exceptions):
    """No ``except`` in the modules of compress.cli names a project error class other than
    ``SlimforgeError`` (nor a tuple of them)."""
    ours = {cls.__name__ for cls in project_exceptions.values()} - {"SlimforgeError", "Terminated"}
    files = sorted(Path(cli.__file__).parent.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "app.py", "measure_commands.py"}, files
    named = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                for sub in ast.walk(node.type):
                    if isinstance(sub, ast.Name):
                        named[sub.id] = f.name
                    elif isinstance(sub, ast.Attribute):
                        named[sub.attr] = f.name
    bad = sorted(f"{named[n]} catches {n}" for n in set(named) & ours)
    assert not bad, f"{bad}; catch SlimforgeError"


# --------------------------------------------------------------------------- the CLI, behaviour

runner = CliRunner()


def _invoke(args: list[str]):
    return runner.invoke(app, args, env={"COLUMNS": "1000"})  # rich wraps at the terminal width (80 here)


def _metric_error():
    from compress.evolution.metrics import MetricError

    return MetricError("bad metric tree; fix it")


def _non_finite_error():
    from compress._strict_json import NonFiniteError

    return NonFiniteError("NaN is refused; fix it")


ERRORS = {
    "BudgetError": lambda: BudgetError("bad budget; fix it"),
    "CostError": lambda: CostError("cannot count; fix it"),
    "ProfilingError": lambda: ProfilingError("cannot time; fix it"),
    "ExportError": lambda: ExportError("cannot export; fix it"),
    "MetricError": _metric_error,
    "NonFiniteError": _non_finite_error,
    "DataError": lambda: DataError("bad data; fix it"),
    "TimeLimitError": lambda: TimeLimitError("phase 'prune' past 1 s; fix it", step="phase 'prune'", limit_s=1.0,
                                             phase="prune"),
}


def _one_error_line(res, name: str) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith(f"error: {name}: "), res.output
    return lines[0]


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_run_turns_any_slimforge_error_into_one_line_and_exit_2(name, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise ERRORS[name]()

    monkeypatch.setattr("compress.api.compress", boom)  # `slimforge run` calls it after loading model and data
    out = tmp_path / "run"
    res = _invoke(["run", "--model", "compress.testing:TinyConvNet", "--data", "digits", "--budget",
                   "macs=0.5x", "--out", str(out)])
    line = _one_error_line(res, name)
    assert line.endswith("fix it")  # the message as it is: no "check the files" or "internal error" wrapping
    assert not (out / "run_args.json").exists()  # a failed run leaves no record behind


def test_a_plain_value_error_is_not_shown_as_ours(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise ValueError("plain")

    monkeypatch.setattr("compress.api.compress", boom)
    res = _invoke(["run", "--model", "compress.testing:TinyConvNet", "--data", "digits", "--budget",
                   "macs=0.5x", "--out", str(tmp_path / "run")])
    assert _one_error_line(res, "ValueError").endswith("(slimforge COMMAND --help).")


def test_measure_resume_and_evolve_metric_exit_2_on_a_slimforge_error(tmp_path, monkeypatch):
    def profiling_fails(*args, **kwargs):
        raise ProfilingError("cannot time; fix it")

    monkeypatch.setattr("compress.profiling.profile_latency", profiling_fails)
    res = _invoke(["measure", "--model", "compress.testing:TinyConvNet", "--input-shape", "3,16,16"])
    _one_error_line(res, "ProfilingError")

    res = _invoke(["resume", str(tmp_path / "nothing-here")])
    assert "has no run_args.json" in _one_error_line(res, "CheckpointError")

    import compress.evolution.evolve as evolve

    def metric_fails(*args, **kwargs):
        raise _metric_error()

    monkeypatch.setattr(evolve, "evolve_metric", metric_fails)
    res = _invoke(["evolve-metric", "--out", str(tmp_path / "evolve"), "--generations", "1"])
    _one_error_line(res, "MetricError")


def test_debug_lets_the_error_through(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise ExportError("cannot export; fix it")

    monkeypatch.setattr("compress.api.compress", boom)
    res = _invoke(["--debug", "run", "--model", "compress.testing:TinyConvNet", "--data", "digits",
                   "--budget", "macs=0.5x", "--out", str(tmp_path / "run")])
    assert isinstance(res.exception, ExportError)
