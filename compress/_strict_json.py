"""Strict reading of the JSON files slimforge loads back (``run_args.json``, ``checkpoints/run.json``,
checkpoint state files, ``student.arch.json``): UTF-8 only, NaN and infinities refused (``json.loads``
accepts ``NaN``, ``Infinity`` and ``1e999``), then a pydantic schema. Every problem is collected
into one message of the caller's error type that names the file and says what to do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from compress._error_root import SlimforgeError

__all__ = ["STRICT", "NonFiniteError", "loads_strict", "read_json_file", "schema_problems", "validate"]

#: pydantic config of every schema here: no coercion (``"3"`` is not an int, ``true`` not a number),
#: no NaN / infinities, unknown keys refused.
STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

_MAX_BYTES = 64 * 2**20  # far above any file we write (a run manifest is about 2 KB)
_M = TypeVar("_M", bound=BaseModel)


class NonFiniteError(SlimforgeError, ValueError):
    """A JSON number is NaN or infinite."""


def _refuse_constant(name: str) -> Any:
    raise NonFiniteError(f"{name} is not a finite number (NaN and infinities are refused)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteError(f"{text} overflows to {value} (NaN and infinities are refused)")
    return value


def loads_strict(text: str, *, allow_non_finite: bool = False) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity``, ``-Infinity`` and overflowing numbers.

    Raises:
        json.JSONDecodeError: not JSON. NonFiniteError: a non-finite number.
        RecursionError: nested too deeply.
    """
    if allow_non_finite:
        return json.loads(text)
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def read_json_file(path: str | Path, error: type[Exception], *, what: str, fix: str,
                   allow_non_finite: bool = False) -> Any:
    """Parse ``path`` strictly (see :func:`loads_strict`).

    Raises:
        error: ``f"{what} {path} <problem>; {fix}"`` when the file cannot be read, is not UTF-8,
            not JSON, holds a non-finite number or is nested too deeply.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > _MAX_BYTES:
            raise error(f"{what} {p} is {size:,} bytes, far more than slimforge writes; {fix}")
        raw = p.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {p} ({exc.strerror or exc}); {fix}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {p} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                    f"{fix}") from None
    try:
        return loads_strict(text, allow_non_finite=allow_non_finite)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {p} is corrupt or truncated (not valid JSON: line {exc.lineno}, column "
                    f"{exc.colno}: {exc.msg}); {fix}") from None
    except NonFiniteError as exc:
        raise error(f"{what} {p} is not valid: {exc}; {fix}") from None
    except RecursionError:
        raise error(f"{what} {p} is nested too deeply to be a slimforge file; {fix}") from None


def _loc(parts: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def schema_problems(schema: type[BaseModel], data: Any) -> list[str]:
    """Every way ``data`` fails ``schema``, as ``"`loc`: what"`` strings (empty: valid)."""
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(data), "null")
        return [f"`(top level)`: {kind}, not a JSON object"]
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        out = []
        for err in exc.errors(include_url=False):
            loc = _loc([p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)])
            if err["type"] == "missing":
                out.append(f"`{loc}`: missing")
            elif err["type"] == "extra_forbidden":
                out.append(f"`{loc}`: unknown key")
            else:
                msg = err["msg"].replace("Input should", "should")
                msg = msg[:1].lower() + msg[1:]  # "String should match ..." -> "string should match ..."
                out.append(f"`{loc}`: {msg} (got {_short(err.get('input'))})")
        return list(dict.fromkeys(out))
    return []


#: pydantic error locations name the union member tried (``"int"``, ``"str"``...); not the user's keys.
_UNION_TAGS = frozenset({"int", "str", "float", "bool", "none", "list[int]", "dict[str,any]"})


def validate(schema: type[_M], data: Any, error: type[Exception], *, what: str, path: str | Path,
             fix: str) -> _M:
    """``schema.model_validate(data)``, or ``error`` listing every problem, the file and ``fix``."""
    problems = schema_problems(schema, data)
    if problems:
        n = len(problems)
        shown = "; ".join(problems[:8]) + (f"; ... ({n - 8} more)" if n > 8 else "")
        raise error(f"{what} {path} is not valid ({n} problem{'s' if n > 1 else ''}: {shown}); {fix}")
    return schema.model_validate(data)
