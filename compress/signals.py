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
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "cleanup_on_signals"]


class Terminated(SystemExit):
    """The process received SIGTERM inside :func:`cleanup_on_signals`. Unwinds like an exception
    (``finally`` and ``except BaseException`` blocks run), then exits with ``exit_code`` 143."""

    exit_code = 143

    def __init__(self) -> None:
        super().__init__(143)


def _raise_terminated(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise Terminated()


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (when its handler is the default and
    this is the main thread; otherwise nothing changes). The previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
