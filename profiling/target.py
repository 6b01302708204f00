"""Deployment target description: execution provider, threads, batch size, input shape."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.profiling.errors import TargetError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnxruntime

__all__ = ["GRAPH_OPTIMIZATION_LEVELS", "MODEL_FORMATS", "PRESETS", "Target"]

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
    # ORT Mobile's deployment path: the ORT-format model (.ort), 1 thread, as on a phone's little core.
    "ort-mobile": {"provider": "CPUExecutionProvider", "intra_op_threads": 1, "inter_op_threads": 1,
                   "model_format": "ort"},
}
MODEL_FORMATS = ("onnx", "ort")
"""Named targets accepted by :meth:`Target.preset`."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _target_file_problems(data: dict[str, Any]) -> list[str]:
    """Every way the Target fields of a target file fail their schema (strict types, no NaN)."""
    from typing import Annotated, Literal, Optional

    from pydantic import BaseModel, ConfigDict, Field, ValidationError  # lazy: the schema is only for files

    pos = Annotated[int, Field(ge=1)]

    class TargetFile(BaseModel):
        model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
        name: str = Field(default="x", min_length=1)
        provider: str = Field(default="x", min_length=1)
        intra_op_threads: pos = 1
        inter_op_threads: pos = 1
        batch_size: pos = 1
        input_shape: Optional[Annotated[list[pos], Field(min_length=1)]] = None
        graph_optimization_level: Literal[GRAPH_OPTIMIZATION_LEVELS] = "all"  # type: ignore[valid-type]
        model_format: Literal[MODEL_FORMATS] = "onnx"  # type: ignore[valid-type]

    try:
        TargetFile.model_validate(data)
    except ValidationError as exc:
        return [f"`{'.'.join(str(x) for x in e['loc'])}`: {e['msg'].replace('Input should', 'should')} "
                f"(got {e.get('input')!r})" for e in exc.errors(include_url=False)]
    return []


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
        model_format: ``"onnx"`` or ``"ort"`` (the ORT-format model ORT Mobile loads; an ONNX
            file is converted with onnxruntime's converter before timing).

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
    model_format: str = "onnx"

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
        if self.model_format not in MODEL_FORMATS:
            raise TargetError(f"Target.model_format must be one of {list(MODEL_FORMATS)}, got {self.model_format!r}")
        if self.graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise TargetError(
                f"Target.graph_optimization_level must be one of {list(GRAPH_OPTIMIZATION_LEVELS)}, "
                f"got {self.graph_optimization_level!r}"
            )

    @classmethod
    def from_file(cls, path: str | Path) -> "Target":
        """Load a target from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file whose keys are
        Target fields (``name``, ``provider``, ``intra_op_threads`` ...), at the top level or in
        a ``[target]`` table; a ``preset`` key starts from that preset and the other keys override
        it. The keys are checked against a pydantic schema (:func:`_target_file_problems`): no
        coercion, no NaN / infinities.

        Raises:
            TargetError: missing file, unknown suffix, unknown keys, or invalid values (every
                problem listed).
        """
        p = Path(path)
        if not p.is_file():
            raise TargetError(f"target file {p} does not exist")
        try:
            if p.suffix == ".toml":
                import tomllib

                data = tomllib.loads(p.read_text())
            elif p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(p.read_text())
            else:
                raise TargetError(f"target file {p} must end in .toml, .yaml or .yml")
        except TargetError:
            raise
        except Exception as exc:
            raise TargetError(f"cannot parse target file {p}: {exc}") from exc
        fix = (f"write Target fields (e.g. preset = \"cpu-1t\", intra_op_threads = 2) at the top level of {p} "
               "or in a [target] table")
        if not isinstance(data, dict):
            raise TargetError(f"target file {p} must hold a table/mapping of Target fields, not a "
                              f"{type(data).__name__}; {fix}")
        if "target" in data:
            inner = data["target"]
            if not isinstance(inner, dict) or len(data) > 1:
                how = (f'to start from that preset write preset = "{inner}"' if isinstance(inner, str) and inner in PRESETS
                       else "make `target` a table ([target]) of Target fields")
                raise TargetError(f"target file {p}: `target` is {type(inner).__name__} {inner!r}"
                                  + (f" next to other keys {sorted(k for k in data if k != 'target')}" if len(data) > 1 else "")
                                  + f", not a table of Target fields; {how}, or {fix}")
            data = inner
        data = dict(data)
        base: dict[str, Any] = {}
        if "preset" in data:
            name = data.pop("preset")
            if not isinstance(name, str) or name not in PRESETS:
                raise TargetError(f"unknown target preset {name!r} in {p}; choose one of {sorted(PRESETS)}")
            base = {"name": name, **PRESETS[name]}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            close = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
            hint = "; ".join(f"{u!r} (did you mean {c[0]!r}?)" if c else repr(u) for u, c in close.items())
            raise TargetError(f"unknown Target field(s) in {p}: {hint}. Known: {sorted(known)}")
        problems = _target_file_problems(data)
        if problems:
            raise TargetError(f"target file {p} is not valid ({'; '.join(problems)}); {fix}")
        merged = {**base, **data}
        if "input_shape" in merged and merged["input_shape"] is not None:
            merged["input_shape"] = tuple(merged["input_shape"])
        merged.setdefault("name", p.stem)
        return cls(**merged)

    @classmethod
    def resolve(cls, spec: "str | Path | Target", input_shape: tuple[int, ...] | None = None) -> "Target":
        """A Target from a preset name, a TOML/YAML path, or a Target (returned as is)."""
        if isinstance(spec, Target):
            return spec if input_shape is None or spec.input_shape else spec.with_input_shape(input_shape)
        s = str(spec)
        if s in PRESETS:
            return cls.preset(s, input_shape=input_shape)
        if s.endswith((".toml", ".yaml", ".yml")):
            t = cls.from_file(s)
            return t if input_shape is None or t.input_shape else t.with_input_shape(input_shape)
        close = difflib.get_close_matches(s, list(PRESETS), n=2)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise TargetError(f"unknown target {s!r}.{hint} Use a preset ({sorted(PRESETS)}) or a .toml/.yaml target file.")

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
