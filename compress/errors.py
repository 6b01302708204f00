"""Error taxonomy of slimforge's top layer, and the root of every layer's errors.

Every error slimforge raises on purpose, in any layer, derives from :class:`SlimforgeError`
(defined in the leaf module :mod:`compress._error_root`, re-exported here and as
``compress.SlimforgeError``), so a caller (CLI, service) can catch one base class and show the
message as is. Under it:

* :class:`CompressError`: the top layer (API, models, data, strategies; this module, and
  ``MetricError`` of gp-prune's metric trees);
* ``compress.budgets.BudgetError`` and ``CostError``; ``compress.profiling.ProfilingError`` (and
  ``TargetError``); ``compress.exporters.ExportError`` (and ``InputShapeError``,
  ``OnnxValidationError``): the lower layers' own roots, which cannot import this module;
* ``NonFiniteError`` of :mod:`compress._strict_json`.

Each class also derives from the closest built-in exception, so code that catches
``ValueError`` / ``TypeError`` / ``LookupError`` / ``RuntimeError`` / ``TimeoutError`` keeps
working. :class:`BudgetAlreadyMetError` is both a :class:`CompressError` and a ``BudgetError``.
Outside the tree on purpose: :class:`compress.signals.Terminated`, a ``SystemExit`` for SIGTERM
(a signal, not an error).

Convention: a message says what went wrong *and* what to do about it, e.g.
``"unknown timm model 'resnet181'; did you mean: resnet18, resnet101? ..."``.

Light to import: it loads no third-party library (``compress.budgets`` loads its public names on
first use, so importing :mod:`compress.budgets.errors` loads neither torch nor fvcore), which lets
the CLI import it at module level without slowing ``slimforge --help``.
"""

from __future__ import annotations

from compress._error_root import SlimforgeError
from compress.budgets.errors import BudgetError

__all__ = [
    "SlimforgeError",
    "CompressError",
    "ModelSpecError",
    "UnsupportedModelError",
    "DataError",
    "StrategyError",
    "StrategyPluginError",
    "ConfigError",
    "BudgetUnreachableError",
    "CheckpointError",
    "ExecutorError",
    "TimeLimitError",
    "BudgetAlreadyMetError",
    "TrainingDivergedError",
    "UntrustedCodeError",
    "DiskFullError",
    "disk_full",
]


class CompressError(SlimforgeError):
    """Base of slimforge's top-layer errors (a :class:`SlimforgeError`)."""


class ModelSpecError(CompressError, ValueError):
    """A model spec string, model factory or weights file cannot be used.

    Raised by :func:`compress.models.load_model` for an unknown scheme or model
    name (the message lists close matches), a factory that cannot be imported
    or called, and a weights file that is missing, unreadable or does not match
    the architecture (the message lists the first missing/unexpected keys). Also raised by
    :func:`compress.compress` for a model or teacher whose weights are NaN or infinite.
    """


class UnsupportedModelError(CompressError, TypeError):
    """A model contains a layer or operation a compression step cannot handle.

    Attributes:
        layer: qualified module name (e.g. ``"layer2.0.shortcut"``) or the name
            of the operation that is not supported; ``None`` when unknown.
    """

    def __init__(self, message: str, *, layer: str | None = None) -> None:
        super().__init__(message)
        self.layer = layer

    def __reduce__(self):  # keep ``layer`` when pickled (e.g. across processes)
        return (_rebuild_unsupported, (str(self), self.layer))


def _rebuild_unsupported(message: str, layer: str | None) -> UnsupportedModelError:
    return UnsupportedModelError(message, layer=layer)


class DataError(CompressError, ValueError):
    """A data source or loader cannot be used (missing file, wrong keys, dtype,
    shapes, labels, or an object that is not a loader/dataset)."""


class StrategyError(CompressError, LookupError):
    """An unknown compression strategy was requested."""


class StrategyPluginError(StrategyError):
    """An out-of-tree strategy (entry-point group ``slimforge.strategies``) failed to load or to
    register; the message names the entry point and its distribution (:mod:`compress.registry`)."""


class ConfigError(CompressError, ValueError):
    """A configuration value is invalid (out of range, wrong type, inconsistent)."""


class UntrustedCodeError(CompressError, PermissionError):
    """A file slimforge reads (``run_args.json``, ``student.arch.json``) names code to run: a
    ``package.module:factory`` model spec or a Ray cluster address. Only registry specs
    (``timm:``, ``torchvision:``, ``cifar:``, ``compress.testing:``) are resolved from files; the
    message says how to allow the rest: pass the same value again explicitly, or
    ``trust_remote_code=True`` (CLI ``--trust-remote-code``)."""


class BudgetUnreachableError(CompressError, ValueError):
    """The strategy cannot produce a student within the budget (e.g. pruning at the maximum
    ratio still exceeds it). The message gives the smallest cost reached and what to loosen."""


class CheckpointError(CompressError, RuntimeError):
    """A run directory's checkpoints cannot be used to resume: they were written by another run
    (strategy, config, seed, budget, model, data or slimforge/torch version; the message lists
    what differs) or a checkpoint file is corrupt or truncated. The message says to delete the
    folder, pass ``resume=False`` (CLI: ``--no-resume``) or choose another output directory."""


class ExecutorError(CompressError, RuntimeError):
    """Population evaluation failed in the executor itself, not in the evaluated function:
    worker processes kept dying after every retry, or a Ray cluster cannot be started or
    reached. The message says which, and what to change (workers, retries, address)."""


class TimeLimitError(CompressError, TimeoutError):
    """A step ran past its wall-clock limit: a phase of the run (limit from
    ``compress(..., time_limits={PHASE: SECONDS})``, CLI ``--time-limit PHASE=SECONDS``; phases and
    defaults in :mod:`compress.phases`) or a tracing step inside one (fvcore counting,
    Torch-Pruning's dependency-graph build; ``compress(..., trace_time_limit_s=...)``). The message
    names the phase or step and the limit and says exactly how to raise it.

    Limits are enforced with ``SIGALRM`` on the main thread of a POSIX process only, and interrupt
    Python code: a native call that never returns to Python (a C++ kernel, a deadlock in a C
    library) is not interrupted by it; a watchdog thread then re-sends the signal and, under
    ``slimforge``, ends the process with exit code 124 (see
    :mod:`compress.strategies._parts.time_limit`).

    Attributes:
        step: what was running (e.g. ``"counting the teacher's MACs (fvcore trace)"``, or
            ``"phase 'prune'"``).
        limit_s: the limit in seconds.
        phase: the phase whose limit ran out (``"prune"``), or None for a tracing limit.
        layer: the module being traced, when known (else None).

    A ``TimeoutError`` (hence an ``OSError`` with ``errno`` None), not an
    :class:`UnsupportedModelError` or ``TypeError``: the model may be fine, only slow. Code that
    turns an ``UnsupportedModelError`` into a fallback re-raises this one first.
    """

    def __init__(self, message: str, *, step: str, limit_s: float, layer: str | None = None,
                 phase: str | None = None) -> None:
        super().__init__(message)
        self.layer = layer
        self.step = step
        self.limit_s = limit_s
        self.phase = phase

    def __reduce__(self):
        return (_rebuild_time_limit, (str(self), self.step, self.limit_s, self.layer, self.phase))


def _rebuild_time_limit(message: str, step: str, limit_s: float, layer: str | None,
                        phase: str | None = None) -> TimeLimitError:
    return TimeLimitError(message, step=step, limit_s=limit_s, layer=layer, phase=phase)


class BudgetAlreadyMetError(CompressError, BudgetError):
    """The model to compress already meets the budget, and the strategy can only shrink that
    model (``Strategy.shrinks_teacher``, e.g. gp-prune): there is nothing to compress. Raised by
    :func:`compress.compress` before the strategy runs; the message gives the model's figures and
    says to tighten the budget or ship the model as it is. Also a :class:`BudgetError`."""


class TrainingDivergedError(CompressError, RuntimeError):
    """A training loop met a non-finite (NaN or inf) loss. The loop stopped, the model holds the
    weights of the last completed epoch (or those it started with), and the epoch checkpoints
    already committed stay on disk. The message names the phase, epoch and step and says what to
    do (lower the learning rate, check the data for NaN / inf values).

    Attributes:
        phase: the training loop (``"finetune"``, ``"grow stage"`` ...).
        epoch: 1-based epoch in which the loss became non-finite.
        step: 0-based step within that epoch.
        loss: the offending loss value (``nan``, ``inf`` or ``-inf``).
    """

    def __init__(self, message: str, *, phase: str, epoch: int, step: int, loss: float) -> None:
        super().__init__(message)
        self.phase, self.epoch, self.step, self.loss = phase, epoch, step, loss

    def __reduce__(self):
        return (_rebuild_diverged, (str(self), self.phase, self.epoch, self.step, self.loss))


def _rebuild_diverged(message: str, phase: str, epoch: int, step: int, loss: float) -> TrainingDivergedError:
    return TrainingDivergedError(message, phase=phase, epoch=epoch, step=step, loss=loss)


class DiskFullError(CompressError, OSError):
    """Writing an artifact, checkpoint or temp file failed because the disk is full (``ENOSPC``).
    Files are written atomically, so nothing half-written is left; the message names the path and
    says to free space or write elsewhere (``out_dir`` / CLI ``--out``, or ``TMPDIR`` for temp files).

    Attributes: ``errno`` (``errno.ENOSPC``) and ``filename`` (the path being written), as on the
    ``OSError`` it replaces."""

    def __str__(self) -> str:  # the message, not OSError's "[Errno 28] ..." form
        return str(self.args[0]) if self.args else ""


def disk_full(exc: OSError, fallback_path: object = None, *, cleaned: bool = True) -> DiskFullError:
    """A :class:`DiskFullError` for an ``OSError`` with ``errno.ENOSPC`` (``exc.filename`` or
    ``fallback_path`` named as the file being written). ``cleaned``: the caller removed what the
    failed write left, and the message says so."""
    path = exc.filename or fallback_path
    where = f" while writing {path}" if path else ""
    left = " nothing half-written was left." if cleaned else ""
    err = DiskFullError(f"the disk is full{where} ({exc.strerror or exc});{left} Free some "
                        "space, or write elsewhere (out_dir / --out; TMPDIR for slimforge's temporary files), and run "
                        "again.")
    err.errno, err.filename = exc.errno, path
    return err
