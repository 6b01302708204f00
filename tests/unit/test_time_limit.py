"""The SIGALRM time limit for tracing steps (compress.time_limit)."""

from __future__ import annotations

import logging
import signal
import threading
import time

import pytest
import torch
from torch import nn

from compress.budgets import measure_cost
from compress.errors import CompressError, TimeLimitError, UnsupportedModelError
from compress import time_limit as tl
from compress.time_limit import time_limit
from compress.strategies.gp_prune.strategy import MagnitudeBaseline, prune_uniform
from compress.testing import TinyConvNet


@pytest.fixture(autouse=True)
def _timer_handed_back():
    """Each test leaves SIGALRM's handler and ITIMER_REAL as it found them (pytest-timeout may
    run its own timer around the test)."""
    handler, (delay, interval), t0 = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL), time.monotonic()
    yield
    now_delay, now_interval = signal.getitimer(signal.ITIMER_REAL)
    assert signal.getsignal(signal.SIGALRM) is handler, "the SIGALRM handler was not restored"
    if delay == 0:
        assert (now_delay, now_interval) == (0.0, 0.0), "a timer was left running"
    else:
        assert now_interval == interval and abs(now_delay - (delay - (time.monotonic() - t0))) < 0.5


def test_a_slow_step_raises_a_typed_error_naming_step_and_limit():
    t0 = time.monotonic()
    with pytest.raises(TimeLimitError) as exc:
        with time_limit(0.1, "tracing the frobnicator"):
            time.sleep(2)
    assert time.monotonic() - t0 < 1.0
    err = exc.value
    assert isinstance(err, CompressError) and isinstance(err, TimeoutError)  # the model may be fine, only slow
    assert not isinstance(err, (UnsupportedModelError, TypeError))
    assert (err.step, err.limit_s) == ("tracing the frobnicator", 0.1)
    assert "tracing the frobnicator" in str(err) and "0.1 s" in str(err) and "trace_time_limit_s" in str(err)


def test_a_fast_step_and_no_limit_pass_through():
    with time_limit(1.0, "quick"):
        x = sum(range(10))
    with time_limit(None, "unbounded"):
        time.sleep(0.01)
    assert x == 45


def test_errors_of_the_step_itself_are_not_rewritten():
    with pytest.raises(KeyError):
        with time_limit(1.0, "step"):
            raise KeyError("own")


def test_a_step_that_wraps_or_swallows_the_interruption_still_ends_in_time_limit_error():
    with pytest.raises(TimeLimitError) as exc:
        with time_limit(0.1, "wrapping step"):
            try:
                time.sleep(2)
            except Exception as inner:  # noqa: BLE001 - what tracers do
                raise RuntimeError("tracer failed") from inner
    assert isinstance(exc.value.__cause__, RuntimeError)
    with pytest.raises(TimeLimitError):
        with time_limit(0.1, "swallowing step"):
            try:
                time.sleep(2)
            except Exception:  # noqa: BLE001
                pass


def test_an_outer_handler_and_timer_are_restored_with_their_deadline():
    calls = []

    def outer(signum, frame):
        calls.append(time.monotonic())

    prev = signal.signal(signal.SIGALRM, outer)
    prev_timer, t0 = signal.setitimer(signal.ITIMER_REAL, 0), time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        with time_limit(1.0, "inner"):
            time.sleep(0.05)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert signal.getsignal(signal.SIGALRM) is outer and 4.0 < remaining <= 5.0
        # an outer deadline inside the step: the outer handler runs when due, the step goes on
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with time_limit(1.0, "inner"):
            time.sleep(0.3)
        assert len(calls) == 1 and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGALRM, prev)
        if prev_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, max(prev_timer[0] - (time.monotonic() - t0), 1e-3), prev_timer[1])


def test_off_the_main_thread_the_limit_is_not_enforced_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(tl, "_warned", False)
    done = []

    def work():
        for _ in range(2):
            with time_limit(0.01, "threaded step"):
                time.sleep(0.05)
        done.append(True)

    with caplog.at_level(logging.WARNING, logger=tl.__name__):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    assert done == [True]
    warnings = [r for r in caplog.records if "main thread" in r.getMessage()]
    assert len(warnings) == 1


class _SlowForward(TinyConvNet):
    """forward() sleeps when ``when()`` says so."""

    def __init__(self, when) -> None:
        super().__init__(width=8)
        self.when = when

    def forward(self, x):
        if self.when():
            time.sleep(0.5)
        return super().forward(x)


def test_fvcore_counting_is_bounded_and_tracing_works_afterwards():
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(TimeLimitError, match="counting"):
        with time_limit(0.1, "counting MACs"):
            measure_cost(_SlowForward(lambda: True), x)
    assert measure_cost(TinyConvNet(width=8), x).macs > 0  # the tracer is usable again


def test_the_dependency_graph_build_is_bounded():
    # Torch-Pruning traces with autograd on; fvcore and the checks run under no_grad
    m = _SlowForward(lambda: torch.is_grad_enabled()).eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(TimeLimitError, match="dependency graph") as exc:
        prune_uniform(m, 0.5, MagnitudeBaseline(), x, "fc", time_limit_s=0.2)
    assert exc.value.limit_s == 0.2
    assert not any(mod._forward_hooks for mod in m.modules()), "the given model got hooks"
    small = prune_uniform(m, 0.5, MagnitudeBaseline(), x, "fc", time_limit_s=None)
    assert small.fc.in_features < m.fc.in_features


def test_compress_validates_the_limit(digits_task):
    from compress.api import compress
    from compress.errors import ConfigError

    with pytest.raises(ConfigError, match="trace_time_limit_s"):
        compress(TinyConvNet(), "macs=0.5x", data=digits_task, progress=False, trace_time_limit_s=0)


def test_the_old_module_name_is_the_same_module():
    """``compress.strategies._parts.time_limit`` (where plug-ins and the kit import it from) is the
    module itself, not a copy: a setting changed through either name is the one the limits read."""
    import compress.strategies._parts.time_limit as old
    from compress.strategies._parts.time_limit import exit_on_hang

    assert old is tl and exit_on_hang is tl.exit_on_hang
