"""A wall-clock limit for steps that may not finish: tracing a model (fvcore's MAC count) and
building Torch-Pruning's dependency graph. Both run the model's own ``forward`` under a tracer, so a
forward that hangs (a lock, a ``while`` on data, a huge graph) would hang ``compress()``; with a
limit the step ends in a typed :class:`~compress.errors.TimeLimitError` instead.

Mechanism: ``signal.setitimer(ITIMER_REAL, seconds)`` and a ``SIGALRM`` handler that raises in the
interrupted Python code. Python runs signal handlers on the main thread only, between bytecodes,
so the limit is enforced

* on POSIX (``signal.setitimer`` exists) and only when called from the main thread;
* at the next Python bytecode after the deadline: a single C++ call (one huge convolution) is not
  cut short, but ``time.sleep``, Python loops and the tracers' Python code are.

Elsewhere (a worker thread, Windows) the step runs without a limit and a warning is logged once
per process. The previous ``SIGALRM`` handler and any running ``ITIMER_REAL`` timer are restored
afterwards (the outer timer keeps its deadline; if it falls inside the step, the outer handler is
called when it is due). A step that catches the interruption itself (e.g. a tracer that wraps
every exception) still ends in :class:`TimeLimitError`, chained to what it raised.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator

from compress.errors import TimeLimitError

__all__ = ["time_limit", "enforceable", "HOW_TO_RAISE"]

log = logging.getLogger(__name__)

HOW_TO_RAISE = ("raise the limit with compress(..., trace_time_limit_s=SECONDS), or pass trace_time_limit_s=None "
                "to disable it")

_warned = False


def enforceable() -> bool:
    """True when a limit can be enforced here (POSIX, main thread)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _error(step: str, seconds: float, how_to_raise: str) -> TimeLimitError:
    return TimeLimitError(
        f"{step} did not finish within the time limit of {seconds:g} s. The model's forward is too slow to trace "
        f"(or never returns): check that forward() finishes on one batch; if the model is just large, {how_to_raise}.",
        step=step, limit_s=seconds,
    )


@contextlib.contextmanager
def time_limit(seconds: float | None, step: str, *, how_to_raise: str = HOW_TO_RAISE) -> Iterator[None]:
    """Run the ``with`` body under a wall-clock limit of ``seconds`` (None: no limit).

    Args:
        seconds: the limit in seconds (> 0), or None.
        step: what the body does, for the message (``"building the dependency graph"``).
        how_to_raise: the end of the message, saying how to give the step more time.

    Raises:
        TimeLimitError: the body was still running after ``seconds``.
    """
    global _warned
    if seconds is None:
        yield
        return
    if not enforceable():
        if not _warned:
            _warned = True
            log.warning("time limits (trace_time_limit_s) are enforced only on the main thread of a POSIX process; "
                        "%s runs without a limit here.", step)
        yield
        return
    t0 = time.monotonic()
    state = {"fired": False, "armed": True, "outer_fired": False}
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    outer_due = t0 + outer_delay if outer_delay > 0 else None
    ours_due = t0 + seconds

    def handler(signum, frame):
        now = time.monotonic()
        if outer_due is not None and not state["outer_fired"] and outer_due <= now and outer_due < ours_due:
            state["outer_fired"] = True  # the outer timer is due first: its handler decides
            if state["armed"] and now < ours_due:
                signal.setitimer(signal.ITIMER_REAL, ours_due - now)
            if callable(previous):
                previous(signum, frame)
            return
        if state["armed"]:
            state["fired"] = True
            raise _error(step, seconds, how_to_raise)

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, min(seconds, outer_delay) if outer_due is not None else seconds)
        try:
            yield
        finally:
            state["armed"] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except TimeLimitError:
        raise
    except BaseException as exc:
        if state["fired"]:  # the step caught the interruption and raised something else
            raise _error(step, seconds, how_to_raise) from exc
        raise
    else:
        if state["fired"]:  # the step swallowed the interruption and went on
            raise _error(step, seconds, how_to_raise)
    finally:
        state["armed"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_due is not None:  # hand the outer timer back with its own deadline (and period)
            if not state["outer_fired"]:
                signal.setitimer(signal.ITIMER_REAL, max(outer_due - time.monotonic(), 1e-6), outer_interval)
            elif outer_interval > 0:
                signal.setitimer(signal.ITIMER_REAL, outer_interval, outer_interval)
