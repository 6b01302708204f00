"""Every phase bounded, every phase visible (issue #19): compress(..., time_limits=...), the phase
list of compress.phases, nesting with trace_time_limit_s, the watchdog backstop, and the CLI's
--time-limit."""

from __future__ import annotations

import ast
import logging
import math
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from compress import compress
from compress.errors import ConfigError, TimeLimitError
from compress.phases import DEFAULT_TIME_LIMITS, PHASES, phase, resolve_time_limits
from compress.strategies._parts import time_limit as tl
from compress.strategies._parts.time_limit import time_limit
from compress.strategies.base import StrategyContext
from compress.testing import TinyConvNet
from test_time_limit import _timer_handed_back  # noqa: F401  (autouse: SIGALRM and ITIMER_REAL handed back)

ROOT = Path(__file__).resolve().parents[2]
FAST = {"epochs": 0, "bisection_steps": 2, "calib_samples": 32}
QUICK = {"progress": False, "latency_repeats": 3, "latency_warmup": 1, "memory": False, "mobile": False,
         "allow_slower": True}


# ------------------------------------------------------------------ the required case


def test_a_pruning_step_that_sleeps_past_its_limit_raises_time_limit_error_naming_the_phase(digits_task, monkeypatch):
    import torch_pruning

    entered = []

    def hanging_step(self, *args, **kwargs):
        entered.append(time.monotonic())
        time.sleep(60)

    monkeypatch.setattr(torch_pruning.pruner.MetaPruner, "step", hanging_step)
    started = {}

    def progress(name, done, total, info):
        if done == 0 and total is None:
            started.setdefault(name, time.monotonic())

    limit = 2
    t0 = time.monotonic()
    with pytest.raises(TimeLimitError) as exc:
        compress(TinyConvNet(), "macs=0.5x", data=digits_task, strategy="gp-prune", config=FAST,
                 time_limits={"prune": limit}, **{**QUICK, "progress": progress})
    raised = time.monotonic()
    assert entered, "the pruning step was never reached"
    assert raised - started["prune"] < limit + 10, f"raised {raised - started['prune']:.1f} s after the phase began"
    assert raised - t0 < 120  # the whole call (teacher measured first) is nowhere near the step's 60 s sleep
    err = exc.value
    assert (err.phase, err.limit_s) == ("prune", limit)
    msg = str(err)
    assert "phase 'prune'" in msg and "2 s" in msg
    assert 'time_limits={"prune": SECONDS}' in msg and "--time-limit prune=SECONDS" in msg


# ------------------------------------------------------------------ configuration


def test_defaults_are_documented_generous_and_merged():
    assert resolve_time_limits(None) == dict(DEFAULT_TIME_LIMITS)
    assert set(DEFAULT_TIME_LIMITS) == set(PHASES)
    for name, p in PHASES.items():
        assert p.what and p.who
        assert p.default_s is None or p.default_s >= 3600, f"{name}: defaults only stop hangs (hours or none)"
    for training in ("finetune", "baseline", "gal", "retrain", "final_retrain", "strategy"):
        assert DEFAULT_TIME_LIMITS[training] is None
    for bounded in ("check_inputs", "measure_teacher", "prepare", "prune", "search", "sizing", "evaluate", "export",
                    "validate", "profile", "mobile", "latency_vs_teacher"):
        assert DEFAULT_TIME_LIMITS[bounded] is not None
    merged = resolve_time_limits({"prune": 5, "export": None, "finetune": 7200.5})
    assert merged["prune"] == 5.0 and merged["export"] is None and merged["finetune"] == 7200.5
    assert merged["validate"] == DEFAULT_TIME_LIMITS["validate"]


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, True, "60", [60]])
def test_a_limit_that_is_not_a_positive_number_of_seconds_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"prune=.*positive number of seconds, or None"):
        resolve_time_limits({"prune": value})


def test_unknown_phases_are_listed_with_the_known_ones_and_what_they_are_part_of():
    with pytest.raises(ConfigError) as exc:
        resolve_time_limits({"bisection": 5, "prnue": 5, "finetune": -1})
    msg = str(exc.value)
    assert "'bisection' (it is part of phase 'prune')" in msg and "did you mean 'prune'" in msg
    assert "finetune=-1" in msg and "Known phases: check_inputs, measure_teacher" in msg
    with pytest.raises(ConfigError, match="must be a dict"):
        resolve_time_limits([("prune", 5)])


def test_compress_refuses_bad_time_limits_before_any_work(digits_task):
    model = TinyConvNet()
    model.forward = lambda x: pytest.fail("the model ran before the time limits were checked")  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match="unknown phase 'rounding'"):
        compress(model, "macs=0.5x", data=digits_task, time_limits={"rounding": 10}, **QUICK)


def _phase_names_in(path: Path) -> set[str]:
    """String literals passed to ``<x>.phase(...)``, ``phase(...)`` or ``run_phase(...)``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            called = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
            if called in ("phase", "run_phase"):
                names.add(node.args[0].value)
    return names


def test_every_phase_the_code_runs_is_in_the_one_documented_list():
    """A phase name used without an entry in compress.phases.PHASES would run without a limit and
    could not be configured: add it there (default and what it covers)."""
    used: dict[str, list[str]] = {}
    for f in sorted((ROOT / "compress").rglob("*.py")):
        for name in _phase_names_in(f):
            used.setdefault(name, []).append(str(f.relative_to(ROOT)))
    unknown = {n: files for n, files in used.items() if n not in PHASES}
    assert not unknown, f"phases missing from compress.phases.PHASES: {unknown}"
    assert {"check_inputs", "measure_teacher", "strategy", "prepare", "prune", "finetune", "evaluate", "export",
            "validate", "profile", "mobile", "latency_vs_teacher"} <= set(used)
    assert not set(PHASES) - set(used), f"PHASES lists phases nothing runs: {set(PHASES) - set(used)}"


# ------------------------------------------------------------------ the mechanism


def test_ctx_phase_enforces_its_limit_and_is_shown_and_timed():
    events = []
    ctx = StrategyContext(model=None, teacher=None, data=None, budget=None, teacher_cost=None,  # type: ignore[arg-type]
                          example_inputs=None, target=None, time_limits={"prune": 0.2, "finetune": None},
                          progress=lambda *a: events.append(a))
    with ctx.phase("finetune"):
        time.sleep(0.3)  # no limit
    t0 = time.monotonic()
    with pytest.raises(TimeLimitError) as exc:
        with ctx.phase("prune"):
            time.sleep(10)
    assert time.monotonic() - t0 < 5
    assert exc.value.phase == "prune" and exc.value.step == "phase 'prune'"
    assert events[0] == ("finetune", 0, None, {"limit": "none"})
    assert events[1][:3] == ("finetune", 1, 1) and events[1][3]["wall_s"] >= 0.3
    assert events[2] == ("prune", 0, None, {"limit": "0.2 s"}) and len(events) == 3  # no end event: it failed
    assert ctx.wall_s["finetune"] >= 0.3 and 0.2 <= ctx.wall_s["prune"] < 5
    with ctx.phase("prune"):  # each entry of a phase has the whole limit
        time.sleep(0.05)


def test_a_phase_limit_interrupts_a_trace_inside_it_and_names_the_phase():
    t0 = time.monotonic()
    with pytest.raises(TimeLimitError) as exc:
        with phase("prune", limits={"prune": 0.3}):
            with time_limit(300, "building Torch-Pruning's dependency graph"):
                time.sleep(10)
    assert time.monotonic() - t0 < 5
    assert exc.value.phase == "prune" and "time_limits=" in str(exc.value)


def test_a_trace_limit_inside_a_phase_fires_first_and_the_phase_limit_still_holds():
    with phase("prune", limits={"prune": 1.0}):
        with pytest.raises(TimeLimitError) as exc:
            with time_limit(0.1, "tracing the frobnicator"):
                time.sleep(10)
        assert exc.value.phase is None and "trace_time_limit_s" in str(exc.value)
        time.sleep(0.1)  # the phase's timer runs on after the trace's
    t0 = time.monotonic()
    with pytest.raises(TimeLimitError, match="phase 'prune'"):
        with phase("prune", limits={"prune": 0.5}):
            with time_limit(0.1, "a quick trace"):
                pass
            time.sleep(10)
    assert time.monotonic() - t0 < 5


class _SlowTrace(TinyConvNet):
    """forward() sleeps while fvcore traces it (its MAC count); runs normally otherwise."""

    def forward(self, x):
        if torch.jit.is_tracing():
            time.sleep(30)
        return super().forward(x)


def test_compress_nests_phase_limits_around_trace_time_limit_s(digits_task):
    t0 = time.monotonic()
    with pytest.raises(TimeLimitError) as exc:
        compress(_SlowTrace(), "macs=0.5x", data=digits_task, config=FAST, trace_time_limit_s=300,
                 time_limits={"measure_teacher": 1}, **QUICK)
    assert exc.value.phase == "measure_teacher" and time.monotonic() - t0 < 20
    with pytest.raises(TimeLimitError) as exc:
        compress(_SlowTrace(), "macs=0.5x", data=digits_task, config=FAST, trace_time_limit_s=0.5, **QUICK)
    assert exc.value.phase is None and "counting the teacher's MACs" in str(exc.value)
    assert "trace_time_limit_s" in str(exc.value) and time.monotonic() - t0 < 40


def test_every_phase_of_a_run_is_shown_as_it_starts_and_ends(digits_task):
    events = []
    res = compress(TinyConvNet(), "macs=0.5x", data=digits_task, config={**FAST, "epochs": 1, "max_steps_per_epoch": 2},
                   **{**QUICK, "progress": lambda *a: events.append(a)})
    started = [e[0] for e in events if e[1:3] == (0, None) and "limit" in e[3]]
    ended = [e[0] for e in events if e[1:3] == (1, 1) and "wall_s" in e[3]]
    expected = ["check_inputs", "measure_teacher", "strategy", "prepare", "prune", "finetune", "evaluate", "export",
                "validate", "profile", "mobile", "latency_vs_teacher"]
    assert [n for n in dict.fromkeys(started)] == expected
    assert set(ended) >= set(expected)
    assert set(expected) <= set(res.wall_s)


# ------------------------------------------------------------------ the watchdog (native hangs)


def test_the_watchdog_reports_a_main_thread_stuck_outside_python(monkeypatch, caplog):
    """SIGALRM blocked on the main thread stands for a native call that never returns to Python: the
    watchdog logs it after the grace period and re-sends the signal; a library caller's process is
    left alone, and the error comes when the call returns."""
    monkeypatch.setattr(tl, "WATCHDOG_GRACE_S", 0.3)
    lock = threading.Lock()
    lock.acquire()
    with caplog.at_level(logging.ERROR, logger=tl.__name__):
        with pytest.raises(TimeLimitError) as exc:
            with phase("export", limits={"export": 0.3}):
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
                try:
                    lock.acquire(timeout=2.5)  # "native": not interrupted, the signal cannot reach this thread
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    assert exc.value.phase == "export"
    logged = [r.getMessage() for r in caplog.records]
    assert any("stuck in a native call" in m and "interrupting the main thread again" in m for m in logged), logged
    assert any("cannot be stopped from Python" in m for m in logged), logged


def test_under_exit_on_hang_a_stuck_process_is_ended_with_124_after_cleanup(tmp_path):
    marker = tmp_path / "cleaned"
    script = textwrap.dedent(f"""
        import signal, threading
        from pathlib import Path
        from compress.phases import phase
        from compress.strategies._parts import time_limit as tl

        tl.WATCHDOG_GRACE_S = 0.3
        lock = threading.Lock()
        lock.acquire()
        with tl.exit_on_hang(), tl.on_hang_exit(lambda: Path({str(marker)!r}).write_text("yes")):
            with phase("validate", limits={{"validate": 0.3}}):
                signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}})
                lock.acquire()  # never returns
        print("not reached")
    """)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == tl.HANG_EXIT_CODE == 124, out.stderr
    assert "not reached" not in out.stdout and marker.read_text() == "yes"
    assert "TimeLimitError: phase 'validate'" in out.stderr and "--time-limit validate=SECONDS" in out.stderr
    assert time.monotonic() - t0 < 60


# ------------------------------------------------------------------ CLI --time-limit


def test_cli_time_limit_values_are_parsed():
    from compress.cli import _time_limits

    assert _time_limits(None) is None and _time_limits([]) is None
    assert _time_limits(["prune=7200", "finetune=none", "export=1.5", "search=2h", "sizing=30m", "evaluate=90s"]) == {
        "prune": 7200.0, "finetune": None, "export": 1.5, "search": 7200.0, "sizing": 1800.0, "evaluate": 90.0}


@pytest.mark.parametrize("items, expected", [
    (["prune"], "'prune' is not PHASE=SECONDS"),
    (["prune="], "'prune=' is not PHASE=SECONDS"),
    (["=60"], "'=60' is not PHASE=SECONDS"),
    (["prune=abc"], "'abc' is not a positive number of seconds"),
    (["prune=0"], "'0' is not a positive number of seconds"),
    (["prune=-5m"], "'-5m' is not a positive number of seconds"),
    (["prune=nan"], "'nan' is not a positive number of seconds"),
    (["prune=1", "prune=2"], "phase 'prune' is given twice"),
    (["bisection=60"], "unknown phase 'bisection' (it is part of phase 'prune')"),
])
def test_cli_bad_time_limits_are_config_errors(items, expected):
    from compress.cli import _time_limits

    with pytest.raises(ConfigError) as exc:
        _time_limits(items)
    assert expected in str(exc.value)
    assert "--time-limit" in str(exc.value)
