"""SIGTERM as an exception, so that a cancelled run cleans up like a failed one.

SIGTERM (what CI cancellation, ``docker stop`` and ``kill`` send) ends a Python process at once by
default: no ``finally`` block runs, and the private temp folder ``compress()`` stages its artifacts
in (``slimforge-*`` in the system temp dir, holding e.g. a ``teacher.onnx`` copy) stays behind.
:func:`cleanup_on_signals` turns SIGTERM into :class:`Terminated` (a ``SystemExit`` with code 143,
the shell's 128 + 15) for the duration of a block; SIGINT already raises ``KeyboardInterrupt``
(exit 130 in the CLI). Both unwind through the cleanup paths of :func:`compress.compress` and of
``slimforge run`` (temp folders, a ``run_args.json`` with no checkpoint after it).

Only a handler still at its default (``SIG_DFL``) is replaced, and only on the main thread: an
application that installed its own SIGTERM handler keeps it.

A raise can be lost. Python runs the handler in whatever Python code the main thread is executing
when the signal arrives, and some of that code swallows exceptions: a weakref callback (e.g.
``WeakValueDictionary``'s ``remove``), a ``__del__``, a ``gc`` callback. CPython prints
"Exception ignored in: ..." and carries on. A benchmark log showed exactly that
("Exception ignored in: <function WeakValueDictionary...remove>" ... "compress.signals.Terminated:
143"): the raise was discarded and the run went on as if no signal had come. So the handler
also records the signal, and the raise is repeated until it gets through:

* :func:`raise_if_terminated` raises :class:`Terminated` again when a SIGTERM was recorded and is
  not already unwinding the stack. ``compress()`` calls it at safe points: the start and end of
  every phase (:func:`compress.phases.phase`), every progress event, every training step
  (:func:`compress.training.fit`) and evaluation batch (:func:`compress.training.evaluate`). A
  check that is itself swallowed is repeated by the next one.
* At the end of the :func:`cleanup_on_signals` block, a recorded SIGTERM that never got through
  raises :class:`Terminated` there (also in place of another exception escaping the block), so
  the process still exits with 143.

The record is cleared when the block that installed the handler ends (the handler goes back to
``SIG_DFL`` at the same time), so a later ``compress()`` in the same process starts clean.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "cleanup_on_signals", "raise_if_terminated"]


class Terminated(SystemExit):
    """The process received SIGTERM inside :func:`cleanup_on_signals`. Unwinds like an exception
    (``finally`` and ``except BaseException`` blocks run), then exits with ``exit_code`` 143.

    Not a :class:`~compress.errors.SlimforgeError`, on purpose: it is a signal, not an error, so
    ``except SlimforgeError`` / ``except Exception`` do not stop it."""

    exit_code = 143

    def __init__(self) -> None:
        super().__init__(143)


#: set by the handler before it raises, cleared when the installing :func:`cleanup_on_signals`
#: block ends: a SIGTERM whose :class:`Terminated` may have been swallowed (a weakref callback, a
#: ``__del__``: "Exception ignored in ...") is still known, and :func:`raise_if_terminated`
#: raises it again at the next safe point
_received = threading.Event()


def _raise_terminated(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    _received.set()  # first: the raise below may be swallowed where the signal lands
    raise Terminated()


def _unwinding() -> bool:
    """True while a :class:`Terminated` is being handled on this thread (a ``finally`` or
    ``except`` block it runs, in this frame or a caller's): it is getting through."""
    exc, seen = sys.exc_info()[1], set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Terminated):
            return True
        seen.add(id(exc))
        exc = exc.__context__
    return False


def raise_if_terminated() -> None:
    """A safe point: raise :class:`Terminated` if SIGTERM arrived inside :func:`cleanup_on_signals`
    and its raise has not got through (it was swallowed where it landed, e.g. in a weakref callback
    or a ``__del__``). No-op otherwise, and while a :class:`Terminated` is already unwinding the
    stack (cleanup code that reaches a safe point is not cut short). The record stays until the
    block ends, so a check whose raise is swallowed in turn is repeated by the next one.

    Call it only where an exception is as safe as anywhere else in the run (between steps, at
    phase boundaries), not inside code that must finish once started.

    Raises:
        Terminated: a SIGTERM was received and its raise has not reached this point.
    """
    if _received.is_set() and not _unwinding():
        raise Terminated()


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (when its handler is the default and
    this is the main thread; otherwise nothing changes). The previous handler is restored after.

    A SIGTERM whose raise was swallowed and never repeated by :func:`raise_if_terminated` raises
    :class:`Terminated` when the block ends: in place of its normal end, or chained to another
    exception that escapes it. The record of the signal is cleared as the block ends.

    Raises:
        Terminated: SIGTERM arrived within the block.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    _received.clear()
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except Terminated:
        raise
    except BaseException as exc:
        if _received.is_set() and not isinstance(exc, GeneratorExit):  # swallowed, then something else failed
            raise Terminated() from exc
        raise
    else:
        if _received.is_set():  # swallowed and no safe point came after it: honour it now
            raise Terminated()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _received.clear()
