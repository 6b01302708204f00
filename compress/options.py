"""``compress()``'s options: what a call takes besides the model, budget, data, strategy, config,
target, out_dir and seed (issue 15, part 5). The runtime (device, precision, DDP processes,
loader workers) is the other object, :class:`compress.training.RuntimeOptions`.

Each field is also accepted as a keyword of ``compress()`` (``compress(..., mobile=False)``), the
way every earlier version took it; a keyword overrides the same field of ``options``::

    opts = CompressOptions(mobile=False, memory=False, latency_repeats=20)
    compress(model, "macs=0.5x", data=task, options=opts)
    compress(model, "macs=0.5x", data=task, options=opts, int8=True)  # one field changed
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from torch import nn

from compress.errors import ConfigError
from compress.executors import Executor

__all__ = ["CompressOptions", "CompressKeywords", "RUNTIME_KEYWORDS"]


@dataclass(frozen=True)
class CompressOptions:
    """The options of one ``compress()`` call; each is described in :func:`compress.compress`.

    Attributes:
        teacher: distillation teacher (None: a frozen copy of the model).
        progress: True (tqdm bars on stderr), False, or a callback ``progress(phase, done, total, info)``.
        model_spec: the spec string the model was built from (recorded for reloading by name).
        latency_warmup, latency_repeats: untimed and timed calls of each latency measurement.
        mobile: also write the ORT-format model and the NNAPI / CoreML usability report.
        int8: also quantise, re-validate and time the int8 student.
        memory: measure the peak memory of an onnxruntime session of teacher and student (bytes).
        resume: continue from the checkpoints a killed run left in ``out_dir``.
        executor, ray_address: where a search evaluates its population.
        trace_time_limit_s: seconds allowed for each trace of the model (None: no limit).
        time_limits: ``{phase: seconds or None}`` over :data:`compress.phases.PHASES`' defaults.
        allow_slower: accept a student that is not faster than the teacher on the target.
        reference_points: a JSON file or list of shelf models to place the student against.
    """

    teacher: nn.Module | None = None
    progress: Any = True
    model_spec: str | None = None
    latency_warmup: int = 10
    latency_repeats: int = 50
    mobile: bool = True
    int8: bool = False
    memory: bool = True
    resume: bool = True
    executor: Executor | str | None = None
    ray_address: str | None = None
    trace_time_limit_s: float | None = 300.0
    time_limits: Mapping[str, float | None] | None = None
    allow_slower: bool = False
    reference_points: str | Path | list[dict] | None = None

    @classmethod
    def coerce(cls, value: "CompressOptions | dict | None", **keywords: Any) -> "CompressOptions":
        """Options from an instance, a dict of its fields or None (defaults), with ``keywords``
        (``compress()``'s keyword arguments of the same names) applied over them.

        Raises:
            ConfigError: a name that is neither an option nor a runtime keyword (with close
                matches), or ``value`` of another type.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        if value is None:
            base: dict[str, Any] = {}
        elif isinstance(value, CompressOptions):
            base = {n: getattr(value, n) for n in names}
        elif isinstance(value, Mapping):
            base = dict(value)
        else:
            raise ConfigError(f"options must be a CompressOptions, a dict of its fields or None, got "
                              f"{type(value).__name__}.")
        merged = {**base, **keywords}
        unknown = sorted(set(merged) - set(names))
        if unknown:
            hints = {u: difflib.get_close_matches(u, names + list(RUNTIME_KEYWORDS), n=1) for u in unknown}
            said = ", ".join(f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items())
            raise ConfigError(f"compress() got unknown option(s) {said}; the options are {names} and the runtime "
                              f"keywords {list(RUNTIME_KEYWORDS)} (see compress.CompressOptions).")
        return cls(**merged)


RUNTIME_KEYWORDS = ("device", "precision", "devices")
"""``compress()`` keywords that override fields of its ``runtime`` (:class:`~compress.training.RuntimeOptions`)."""


class CompressKeywords(TypedDict, total=False):
    """The keyword arguments ``compress()`` accepts besides its named parameters (for type checkers:
    ``**kwargs: Unpack[CompressKeywords]``): every :class:`CompressOptions` field, and the runtime
    shorthands :data:`RUNTIME_KEYWORDS`."""

    teacher: nn.Module | None
    progress: Any
    model_spec: str | None
    latency_warmup: int
    latency_repeats: int
    mobile: bool
    int8: bool
    memory: bool
    resume: bool
    executor: Executor | str | None
    ray_address: str | None
    trace_time_limit_s: float | None
    time_limits: Mapping[str, float | None] | None
    allow_slower: bool
    reference_points: str | Path | list[dict] | None
    device: str | None
    precision: str | None
    devices: int | None
