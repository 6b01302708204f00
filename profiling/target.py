"""Deployment target description: execution provider, threads, batch size, input shape."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compress.profiling.errors import TargetError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnxruntime

__all__ = ["GRAPH_OPTIMIZATION_LEVELS", "PRESETS", "Target"]

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
"""Accepted ``Target.graph_optimization_level`` values (onnxruntime ``ORT_DISABLE_ALL`` ... ``ORT_ENABLE_ALL``)."""

_ORT_LEVEL_NAMES = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

PRESETS: dict[str, dict[str, Any]] = {
    "cpu-1t": {"provider": "CPUExecutionProvider", "intra_op_threads": 1, "inter_op_threads": 1},
    "cpu-2t": {"provider": "CPUExecutionProvider", "intra_op_threads": 2, "inter_op_threads": 1},
}
"""Named targets accepted by :meth:`Target.preset`."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Target:
    """Where and how a model will run; latency is measured against this.

    Attributes:
        name: label used in reports.
        provider: onnxruntime execution provider, e.g. ``"CPUExecutionProvider"`` (checked
            against the installed providers when profiling, not here).
        intra_op_threads: threads inside one op (>= 1); also ``torch.set_num_threads`` for the
            torch engine.
        inter_op_threads: threads across independent ops (>= 1).
        batch_size: samples per inference call (>= 1).
        input_shape: one sample's shape without the batch dim, e.g. ``(3, 32, 32)``; ``None`` =
            take it from the model / example input.
        graph_optimization_level: ``"disable" | "basic" | "extended" | "all"``.

    Raises:
        TargetError: on construction, when a field is invalid (the message says what to use).
    """

    name: str = "cpu-1t"
    provider: str = "CPUExecutionProvider"
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    batch_size: int = 1
    input_shape: tuple[int, ...] | None = None
    graph_optimization_level: str = "all"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TargetError(f"Target.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.provider, str) or not self.provider.strip():
            raise TargetError(
                f"Target.provider must be an onnxruntime provider name such as 'CPUExecutionProvider', got {self.provider!r}"
            )
        for fld in ("intra_op_threads", "inter_op_threads", "batch_size"):
            v = getattr(self, fld)
            if not _is_int(v) or v < 1:
                raise TargetError(f"Target.{fld} must be an int >= 1, got {v!r}")
        if self.input_shape is not None:
            shape = self.input_shape
            if isinstance(shape, (list, tuple)) and all(_is_int(d) for d in shape):
                shape = tuple(int(d) for d in shape)
            else:
                raise TargetError(
                    f"Target.input_shape must be a tuple of ints without the batch dim, e.g. (3, 32, 32), got {shape!r}"
                )
            if not shape or any(d < 1 for d in shape):
                raise TargetError(
                    f"Target.input_shape must be non-empty with every dim >= 1 (no batch dim), got {shape!r}"
                )
            object.__setattr__(self, "input_shape", shape)
        if self.graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise TargetError(
                f"Target.graph_optimization_level must be one of {list(GRAPH_OPTIMIZATION_LEVELS)}, "
                f"got {self.graph_optimization_level!r}"
            )

    @classmethod
    def preset(cls, name: str, input_shape: tuple[int, ...] | None = None) -> "Target":
        """A named target (``"cpu-1t"``, ``"cpu-2t"``; see :data:`PRESETS`), batch size 1.

        Raises:
            TargetError: unknown ``name`` (the message lists the presets) or bad ``input_shape``.
        """
        try:
            fields = PRESETS[name]
        except (KeyError, TypeError):
            raise TargetError(f"unknown target preset {name!r}; choose one of {sorted(PRESETS)}") from None
        return cls(name=name, input_shape=input_shape, **fields)

    def with_input_shape(self, shape: tuple[int, ...] | None) -> "Target":
        """Copy with ``input_shape`` replaced (``(C, H, W)``-style, no batch dim)."""
        return dataclasses.replace(self, input_shape=shape)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (``input_shape`` as a list or ``None``)."""
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape) if self.input_shape is not None else None
        return d

    def session_options(self) -> "onnxruntime.SessionOptions":
        """onnxruntime ``SessionOptions`` for this target (threads, sequential execution,
        graph optimisation level, warnings-and-above logging off)."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = self.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVEL_NAMES[self.graph_optimization_level])
        so.log_severity_level = 3
        return so
