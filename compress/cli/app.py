"""The ``slimforge`` typer app, its ``--debug`` switch and what every command shares: an exception
becomes one paragraph on stderr and an exit code (the codes: :mod:`compress.cli`).

Imports only typer and light modules of the project at the top: the error root, the signals, the
errors and the time limits, which load the standard library only (``slimforge --help`` loads neither
torch nor the strategies); the commands are registered on :data:`app` by :mod:`compress.cli`.
"""

from __future__ import annotations

import errno
import functools
import sys
import warnings

import typer

from compress._error_root import SlimforgeError  # a leaf: imports nothing
from compress.errors import disk_full
from compress.signals import Terminated, cleanup_on_signals  # the standard library only
from compress.time_limit import exit_on_hang

app = typer.Typer(add_completion=False, no_args_is_help=True, help="slimforge: compress a teacher to a budget, export validated ONNX.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error (by default: a one-paragraph message and exit 2).")) -> None:
    """slimforge: compress a teacher to a budget, export validated ONNX."""
    _DEBUG["on"] = debug
    if not debug:
        warnings.showwarning = _show_warning


#: warning categories the CLI prints as one ``slimforge: warning:`` line (by name: their module loads torch)
_OWN_WARNINGS = ("ConfigDeprecationWarning",)
_PYTHON_SHOWWARNING = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings (a flat ``--config`` key) as one line on stderr, without the source line that
    Python's default adds; every other warning as Python shows it."""
    if category.__name__ in _OWN_WARNINGS:
        print(f"slimforge: warning: {message}", file=sys.stderr)
        return
    _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


def _console():
    from rich.console import Console

    return Console(stderr=False)


_DEBUG = {"on": False}  # set by the root callback on every invocation


def _debug() -> bool:
    """``slimforge --debug ...``: let exceptions through with their traceback."""
    return _DEBUG["on"]


def _error_message(exc: BaseException) -> str:
    """One paragraph for any exception: ours (any :class:`SlimforgeError`, whatever its layer) as
    they are, since they say what to do; a full disk, other OS errors, bad values and anything else
    with what to do about them."""
    if isinstance(exc, OSError) and not isinstance(exc, SlimforgeError) and exc.errno == errno.ENOSPC:
        exc = disk_full(exc, cleaned=False)  # the message compress() gives, without its cleanup claim
    if isinstance(exc, SlimforgeError):
        msg = f"{type(exc).__name__}: {exc}"
    elif isinstance(exc, OSError):
        msg = f"{type(exc).__name__}: {exc}; check the paths given and that they can be read and written."
    elif isinstance(exc, (ValueError, TypeError)):
        msg = f"{type(exc).__name__}: {exc}; check the files and options given (slimforge COMMAND --help)."
    else:
        msg = (f"internal error ({type(exc).__name__}: {exc}); this is a slimforge bug, please report it with "
               "the command line (run it again with `slimforge --debug ...` for the traceback).")
    return " ".join(msg.split())


def _fail(exc: BaseException) -> None:
    from rich.console import Console
    from rich.markup import escape

    if _debug():
        raise exc

    Console(stderr=True).print(f"[bold red]error[/]: {escape(_error_message(exc))}")
    raise typer.Exit(code=2)


def _clean_errors(fn):
    """Every exception a command raises becomes one paragraph on stderr and exit 2 (Ctrl-C and
    SIGINT: exit 130, SIGTERM: exit 143), without a traceback unless ``slimforge --debug``. The
    command's own exits (``typer.Exit``: 0, 1 gate regression, 3 budget not met) pass through."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with cleanup_on_signals(), exit_on_hang():  # a phase stuck in native code past its limit: exit 124
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):  # the command's own exit codes, usage errors
            raise
        except (KeyboardInterrupt, Terminated) as exc:
            if _debug():
                raise
            from rich.console import Console

            code = getattr(exc, "exit_code", 130)
            Console(stderr=True).print(f"[bold red]interrupted[/] ({'SIGTERM' if code == 143 else 'SIGINT / Ctrl-C'}); "
                                       "temporary files removed. `slimforge resume OUT` continues a run from its "
                                       "last checkpoint.")
            raise typer.Exit(code=code) from None
        except Exception as exc:
            _fail(exc)  # re-raises under --debug

    return wrapper


def main() -> None:  # console-script entry point
    app()
