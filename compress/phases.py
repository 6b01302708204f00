"""The phases of a ``compress()`` run: what each covers, its default time limit, and how a phase runs.

Every phase runs under :func:`phase`: it is shown as it starts and ends (a progress event, so the
tqdm bars of ``compress(progress=True)`` and ``slimforge`` show every phase), its wall time lands
in the report (``wall_s.<phase>``, summed over its entries), and it runs under its time limit:
past it, :class:`~compress.errors.TimeLimitError` names the phase and says how to raise the limit
(``compress(..., time_limits={"prune": SECONDS})``, CLI ``--time-limit prune=SECONDS``). A limit
bounds one entry of the phase (gp-prune enters ``prepare`` more than once; each entry has the
whole limit). Limits nest: ``strategy`` encloses the strategy's phases, and the tracing limit
``trace_time_limit_s`` bounds each trace inside a phase.

:data:`PHASES` is the one list of phase names, with their defaults: generous bounds (hours) for
measuring, pruning, searching and exporting, so that only a hang reaches them; no limit for the
phases that train for a number of epochs the user chose (their length is the configuration's
doing, and they checkpoint every epoch). Enforcement is ``SIGALRM`` on the main thread of a POSIX
process; what that does and does not interrupt is in :mod:`compress.time_limit`.

The stages the issue tracker names map to phases as follows: measure -> ``measure_teacher``;
calibrate -> ``prepare``; graph build, pruning, bisection, rounding -> ``prune`` (each graph build
also under ``trace_time_limit_s``); fine-tune -> ``finetune``; int8 -> ``mobile``.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from compress.errors import ConfigError
from compress.signals import raise_if_terminated
from compress.time_limit import time_limit

__all__ = ["Phase", "PHASES", "DEFAULT_TIME_LIMITS", "resolve_time_limits", "unknown_phase", "known_phases",
           "phase", "phase_message", "format_seconds"]

_H = 3600.0


@dataclass(frozen=True)
class Phase:
    """One phase: ``default_s`` its default time limit in seconds (None: no limit), ``what`` what
    it covers, ``who`` who runs it (``"compress()"`` or the strategies)."""

    default_s: float | None
    what: str
    who: str


#: every phase name (the keys of ``compress(..., time_limits=...)``), in run order
PHASES: Mapping[str, Phase] = MappingProxyType({
    "check_inputs": Phase(1 * _H, "collect the validation split, run the model (and teacher) on one batch",
                          "compress()"),
    "measure_teacher": Phase(4 * _H, "count, evaluate, export and time the teacher", "compress()"),
    "strategy": Phase(None, "the whole strategy run, all of its phases below", "compress()"),
    "prepare": Phase(2 * _H, "model checks, calibration feature maps, importance and group analysis, latency "
                     "tables", "gp-prune"),
    "sparse": Phase(None, "gp-prune's sparse learning before pruning: group-norm regularised training of the teacher "
                    "copy (config sparse_epochs)", "gp-prune"),
    "prune": Phase(12 * _H, "dependency-graph builds, pruning, channel rounding and the ratio bisection, every "
                   "candidate measured against the budget", "gp-prune"),
    "recover": Phase(None, "the short KD recovery after each iterative pruning step but the last (config "
                     "recovery_epochs)", "gp-prune"),
    "finetune": Phase(None, "knowledge-distillation fine-tune of the pruned student (config epochs)", "gp-prune"),
    "partition": Phase(1 * _H, "split the teacher into nodes and the data into train / score sets", "grow"),
    "search": Phase(24 * _H, "the architecture search (trains candidate networks for the configured epochs)",
                    "grow, eg-nas, darts-gal"),
    "sizing": Phase(2 * _H, "fit the searched network's width and depth to the budget", "eg-nas, darts-gal"),
    "baseline": Phase(None, "train the sized baseline network (config epochs)", "darts-gal"),
    "gal": Phase(None, "GAL pruning of the baseline (trains for the configured epochs)", "darts-gal"),
    "retrain": Phase(None, "train the final student (config epochs)", "eg-nas, darts-gal"),
    "final_retrain": Phase(None, "train the grown student (config epochs)", "grow"),
    "evaluate": Phase(4 * _H, "count the student and measure its accuracy on val and test", "compress()"),
    "export": Phase(1 * _H, "ONNX export of the student", "compress()"),
    "validate": Phase(1 * _H, "ONNX parity of the student on real data", "compress()"),
    "profile": Phase(1 * _H, "the student's latency and memory on the target", "compress()"),
    "mobile": Phase(2 * _H, "ORT-format file, NNAPI/CoreML report, int8 quantisation and its re-validation",
                    "compress()"),
    "latency_vs_teacher": Phase(1 * _H, "teacher and student timed side by side", "compress()"),
})

#: ``{phase: default limit in seconds or None}``
DEFAULT_TIME_LIMITS: Mapping[str, float | None] = MappingProxyType({k: p.default_s for k, p in PHASES.items()})

# names a user may reach for that are parts of a phase
_PART_OF = {"measure": "measure_teacher", "calibrate": "prepare", "calibration": "prepare", "graph_build": "prune",
            "pruning": "prune", "bisection": "prune", "rounding": "prune", "fine-tune": "finetune",
            "fine_tune": "finetune", "int8": "mobile", "final retrain": "final_retrain"}


def format_seconds(seconds: float | None) -> str:
    """``7200.0`` -> ``"7200 s (2 h)"``; None -> ``"none"``."""
    if seconds is None:
        return "none"
    if seconds >= _H:
        return f"{seconds:g} s ({seconds / _H:.3g} h)"
    if seconds >= 60:
        return f"{seconds:g} s ({seconds / 60:.3g} min)"
    return f"{seconds:g} s"


def unknown_phase(name: Any) -> str | None:
    """None for a name in :data:`PHASES`, else the problem: ``"unknown phase 'bisection' (it is
    part of phase 'prune')"``, ``"unknown phase 'prnue' (did you mean 'prune'?)"``."""
    if name in PHASES:
        return None
    close = difflib.get_close_matches(str(name), list(PHASES), n=2)
    hint = (f" (it is part of phase {_PART_OF[name]!r})" if isinstance(name, str) and name in _PART_OF else
            f" (did you mean {' or '.join(map(repr, close))}?)" if close else "")
    return f"unknown phase {name!r}{hint}"


def known_phases() -> str:
    """The sentence that lists the phase names, for error messages."""
    return f"Known phases: {', '.join(PHASES)} (compress.phases.PHASES says what each covers)."


def resolve_time_limits(time_limits: Mapping[str, Any] | None) -> dict[str, float | None]:
    """:data:`DEFAULT_TIME_LIMITS` with ``time_limits`` (``{phase: seconds or None}``) over them.

    Raises:
        ConfigError: not a mapping, unknown phase names (with the known ones, and the phase a
            name is part of, e.g. ``bisection`` -> ``prune``), or values that are not a positive
            finite number of seconds or None; every problem at once.
    """
    out = dict(DEFAULT_TIME_LIMITS)
    if time_limits is None:
        return out
    if not isinstance(time_limits, Mapping):
        raise ConfigError(f"time_limits must be a dict of phase name -> seconds (or None: no limit), e.g. "
                          f'{{"prune": 7200}}; got {type(time_limits).__name__}.')
    bad = []
    for name, seconds in time_limits.items():
        problem = unknown_phase(name)
        if problem:
            bad.append(problem)
        elif seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                      or not math.isfinite(seconds) or seconds <= 0):
            bad.append(f"{name}={seconds!r} (a positive number of seconds, or None for no limit)")
        else:
            out[name] = None if seconds is None else float(seconds)
    if bad:
        raise ConfigError(f"time_limits: {'; '.join(bad)}. {known_phases()}")
    return out


def phase_message(name: str, seconds: float) -> str:
    """The :class:`TimeLimitError` message of phase ``name`` past its limit of ``seconds``."""
    what = PHASES[name].what if name in PHASES else "a strategy phase"
    return (f"phase {name!r} ({what}) did not finish within its time limit of {format_seconds(seconds)}. If it is "
            f'only slow (a large model or data set, a busy machine), give it more time: compress(..., time_limits='
            f'{{"{name}": SECONDS}}), on the command line --time-limit {name}=SECONDS (None / {name}=none: '
            "no limit); with out_dir / --out the rerun resumes from the checkpoints already written. If it should "
            "have finished long before, it hangs: run again with `slimforge --debug ...` to see where it stopped.")


def _no_progress(phase: str, done: int, total: int | None, info: dict) -> None:
    return None


@contextlib.contextmanager
def phase(name: str, *, limits: Mapping[str, float | None],
          progress: Callable[[str, int, "int | None", dict], None] | None = None,
          wall: dict[str, float] | None = None) -> Iterator[None]:
    """Run the ``with`` body as phase ``name``.

    ``progress(name, 0, None, {"limit": ...})`` when it starts and ``progress(name, 1, 1, {"wall_s": ...})``
    when it ends without error; its wall time (seconds) is added to ``wall[name]`` in any case;
    ``limits[name]`` (seconds; absent or None: no limit) bounds it.

    Raises:
        TimeLimitError: the body ran past ``limits[name]`` (``.phase == name``; the message says
            how to raise the limit).
        Terminated: as the phase starts or ends, a SIGTERM whose raise was swallowed
            (:func:`compress.signals.raise_if_terminated`).
    """
    raise_if_terminated()  # a safe point: a SIGTERM whose raise was swallowed stops the run here
    seconds = limits.get(name)
    progress = progress or _no_progress
    progress(name, 0, None, {"limit": format_seconds(seconds)})
    t0 = time.perf_counter()
    try:
        with time_limit(seconds, f"phase {name!r}", message=None if seconds is None else phase_message(name, seconds),
                        phase=name):
            yield
    finally:
        elapsed = time.perf_counter() - t0
        if wall is not None:
            wall[name] = wall.get(name, 0.0) + elapsed
    raise_if_terminated()  # a safe point (after a body that ended without error)
    progress(name, 1, 1, {"wall_s": round(elapsed, 3)})
