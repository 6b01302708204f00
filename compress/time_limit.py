"""Wall-clock limits for steps that may not finish: tracing a model (fvcore's MAC count), building
Torch-Pruning's dependency graph, and every phase of ``compress()`` (:mod:`compress.phases`). A
step that runs past its limit ends in a typed :class:`~compress.errors.TimeLimitError` instead of
hanging the run.

Mechanism: ``signal.setitimer(ITIMER_REAL, seconds)`` and a ``SIGALRM`` handler that raises in the
interrupted Python code. Python runs signal handlers on the main thread only, between bytecodes,
so the limit is enforced

* on POSIX (``signal.setitimer`` exists) and only when called from the main thread;
* at the next Python bytecode after the deadline. ``time.sleep``, Python loops, the tracers' and
  Torch-Pruning's Python code, and blocking calls that return on ``EINTR`` (lock and queue waits,
  ``select``, reads from pipes) are cut short. A single native call that keeps computing (one
  huge convolution, a C++ loop, a deadlock inside a C library) is not: the error comes when it
  returns to Python.

Backstop for such a native hang: each enforced limit has a watchdog thread. If the step is still
running :data:`WATCHDOG_GRACE_S` seconds after its deadline, the watchdog logs an error and
sends ``SIGALRM`` again, to the main thread itself (``signal.pthread_kill``: a blocking system
call there returns with ``EINTR`` and the handler runs; a step that caught the first interruption
and went on is interrupted again). If the step is still running after a
second grace period, then inside :func:`exit_on_hang` (``slimforge`` turns it on) the watchdog runs
the callables registered with :func:`on_hang_exit` (temp folders, an unused run record), writes the
:class:`TimeLimitError` message to stderr and ends the process with :data:`HANG_EXIT_CODE` (124)
without unwinding; outside it (a library caller) it logs that the process must be stopped from
outside (checkpoints on disk are complete: they are written atomically) and leaves the process
alone. Not covered: a native call that holds the GIL blocks the watchdog thread too, so only an
outside ``kill`` ends it.

Elsewhere (a worker thread, Windows) the step runs without a limit and a warning is logged once
per process. The previous ``SIGALRM`` handler and any running ``ITIMER_REAL`` timer are restored
afterwards (the outer timer keeps its deadline; if it falls inside the step, the outer handler is
called when it is due, so limits nest: a phase limit outside, a tracing limit inside). A step that
catches the interruption itself (e.g. a tracer that wraps every exception) still ends in
:class:`TimeLimitError`, chained to what it raised.

Below the strategies (it imports only :mod:`compress.errors`), so that :mod:`compress.phases`
imports it at module level; ``compress.strategies._parts.time_limit`` is its old name, kept as an
alias of this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

from compress.errors import TimeLimitError

__all__ = ["time_limit", "enforceable", "exit_on_hang", "on_hang_exit", "HOW_TO_RAISE", "HANG_EXIT_CODE",
           "WATCHDOG_GRACE_S"]

log = logging.getLogger(__name__)

HOW_TO_RAISE = ("raise the limit with compress(..., trace_time_limit_s=SECONDS), or pass trace_time_limit_s=None "
                "to disable it")

#: seconds the watchdog waits after a deadline before each of its two steps (see the module docstring)
WATCHDOG_GRACE_S = 30.0
#: exit status of a process the watchdog ends inside :func:`exit_on_hang` (as coreutils ``timeout``)
HANG_EXIT_CODE = 124

_warned = False
_hang_exit = {"depth": 0}
_hang_cleanups: list[Callable[[], None]] = []


def enforceable() -> bool:
    """True when a limit can be enforced here (POSIX, main thread)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def exit_on_hang() -> Iterator[None]:
    """Within the block, a step still running two grace periods (:data:`WATCHDOG_GRACE_S` each)
    after its deadline ends the process: the :func:`on_hang_exit` callables run, the
    :class:`TimeLimitError` message goes to stderr, and the process exits with
    :data:`HANG_EXIT_CODE` without unwinding. For command-line programs (``slimforge``), not for
    libraries."""
    _hang_exit["depth"] += 1
    try:
        yield
    finally:
        _hang_exit["depth"] -= 1


@contextlib.contextmanager
def on_hang_exit(cleanup: Callable[[], None]) -> Iterator[None]:
    """Within the block, ``cleanup`` runs (on the watchdog thread, errors ignored) before an
    :func:`exit_on_hang` exit; it must be safe to call while the main thread is stuck."""
    _hang_cleanups.append(cleanup)
    try:
        yield
    finally:
        _hang_cleanups.remove(cleanup)


def _error(step: str, seconds: float, how_to_raise: str, message: str | None = None,
           phase: str | None = None) -> TimeLimitError:
    if message is None:
        message = (f"{step} did not finish within the time limit of {seconds:g} s. The model's forward is too slow to "
                   "trace (or never returns): check that forward() finishes on one batch; if the model is just large, "
                   f"{how_to_raise}.")
    return TimeLimitError(message, step=step, limit_s=seconds, phase=phase)


class _Watchdog:
    """The backstop of one enforced limit (module docstring): a daemon thread that acts only if the
    step is still running a grace period after its deadline."""

    def __init__(self, seconds: float, message: str) -> None:
        self.seconds, self.message = seconds, message
        self.main = threading.main_thread().ident
        self.lock = threading.Lock()  # the step's exit and the watchdog's re-sent SIGALRM never overlap
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="slimforge-time-limit-watchdog", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.lock:
            self.done.set()

    def _run(self) -> None:
        grace = WATCHDOG_GRACE_S
        if self.done.wait(self.seconds + grace):
            return
        with self.lock:
            if self.done.is_set():
                return
            log.error("%s The step is still running %g s after the deadline: it is stuck in a native call (a C++ "
                      "kernel, a lock or I/O wait) that SIGALRM did not interrupt, or it caught the interruption and "
                      "went on; interrupting the main thread again.", self.message, grace)
            with contextlib.suppress(OSError, ValueError, AttributeError):
                signal.pthread_kill(self.main, signal.SIGALRM)
        if self.done.wait(grace):
            return
        if _hang_exit["depth"] > 0:
            for cleanup in list(_hang_cleanups):
                with contextlib.suppress(Exception):
                    cleanup()
            with contextlib.suppress(Exception):
                sys.stderr.write(f"error: TimeLimitError: {self.message} The step was still running {2 * grace:g} s "
                                 "after the deadline (stuck in native code), so the process was ended (exit "
                                 f"{HANG_EXIT_CODE}) after removing its temporary files; checkpoints already written "
                                 "are complete.\n")
                sys.stderr.flush()
            os._exit(HANG_EXIT_CODE)
        log.error("%s The step is still running %g s after the deadline (stuck in a native call); it cannot be "
                  "stopped from Python. Stop the process from outside (kill %d); checkpoints already written are "
                  "complete (they are written atomically).", self.message, 2 * grace, os.getpid())


@contextlib.contextmanager
def time_limit(seconds: float | None, step: str, *, how_to_raise: str = HOW_TO_RAISE, message: str | None = None,
               phase: str | None = None) -> Iterator[None]:
    """Run the ``with`` body under a wall-clock limit of ``seconds`` (None: no limit).

    Python code is interrupted at the deadline; a native call only when it returns (the watchdog
    of the module docstring is the backstop for one that never does).

    Args:
        seconds: the limit in seconds (> 0), or None.
        step: what the body does, for the message (``"building the dependency graph"``).
        how_to_raise: the end of the default message, saying how to give the step more time.
        message: the whole error message instead of the default (tracing) one.
        phase: the :mod:`compress.phases` phase the limit belongs to (``TimeLimitError.phase``).

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
            log.warning("time limits (compress(..., time_limits=..., trace_time_limit_s=...)) are enforced only on "
                        "the main thread of a POSIX process; %s runs without a limit here.", step)
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
            raise _error(step, seconds, how_to_raise, message, phase)

    previous = signal.signal(signal.SIGALRM, handler)
    watchdog = None
    try:
        signal.setitimer(signal.ITIMER_REAL, min(seconds, outer_delay) if outer_due is not None else seconds)
        watchdog = _Watchdog(seconds, str(_error(step, seconds, how_to_raise, message, phase)))
        try:
            yield
        finally:
            state["armed"] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            if watchdog is not None:
                watchdog.stop()
    except TimeLimitError:
        raise
    except BaseException as exc:
        if state["fired"]:  # the step caught the interruption and raised something else
            raise _error(step, seconds, how_to_raise, message, phase) from exc
        raise
    else:
        if state["fired"]:  # the step swallowed the interruption and went on
            raise _error(step, seconds, how_to_raise, message, phase)
    finally:
        state["armed"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        if watchdog is not None:
            watchdog.stop()
        signal.signal(signal.SIGALRM, previous)
        if outer_due is not None:  # hand the outer timer back with its own deadline (and period)
            if not state["outer_fired"]:
                signal.setitimer(signal.ITIMER_REAL, max(outer_due - time.monotonic(), 1e-6), outer_interval)
            elif outer_interval > 0:
                signal.setitimer(signal.ITIMER_REAL, outer_interval, outer_interval)
