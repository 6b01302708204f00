"""One generic check of every field of a strategy config dataclass, from its type and its name.

Each config's ``__post_init__`` calls :func:`check_fields` first, then checks what only it knows
(choices, relations between fields). :func:`check_fields` validates

* the **type** of every field against its annotation with pydantic in strict mode: ``"yes"`` is not
  a number, ``1`` and ``"true"`` are not booleans, ``True`` is not an int, ``1.5`` is not an int,
  NaN and infinities are refused (an int is accepted for a float; lists for tuples);
* the **range** of the fields whose name says what they are (a learning rate, a weight decay, a
  momentum, a number of epochs ...): see :data:`RANGES`.

Every problem is collected into one :class:`ConfigError` naming the field, the value given and what
is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any

from compress.errors import ConfigError

__all__ = ["RANGES", "SUBCONFIG_METADATA", "check_fields", "raise_problems"]

#: the ``dataclasses.field`` metadata key that marks a sub-config field
#: (:func:`compress.strategies.config_tree.subconfig`): :func:`check_fields` leaves those to their own class
SUBCONFIG_METADATA = "slimforge.legacy_prefix"

#: (field-name pattern, lower bound, lower inclusive, upper bound, upper inclusive, what it is)
RANGES: tuple[tuple[str, float | None, bool, float | None, bool, str], ...] = (
    (r"lr_min$", 0.0, True, None, False, "a minimum learning rate"),
    (r"(^|_)lr$", 0.0, False, None, False, "a learning rate"),
    (r"weight_decay$", 0.0, True, None, False, "a weight decay"),
    (r"momentum$", 0.0, True, 1.0, False, "a momentum"),
    (r"grad_clip$", 0.0, False, None, False, "a gradient-norm clip (None: off)"),
    (r"epochs$", 0.0, True, None, False, "a number of epochs"),
    (r"(max_steps_per_epoch|_batches|batch_size|calib_samples)$", 1.0, True, None, False, "a count"),
    (r"kd_alpha$", 0.0, True, 1.0, True, "a distillation weight"),
    (r"(kd_)?temperature$", 0.0, False, None, False, "a temperature"),
    (r"_prob$", 0.0, True, 1.0, True, "a probability"),
    (r"(fraction|portion)$", 0.0, True, 1.0, True, "a fraction"),
    (r"drop_path$", 0.0, True, 1.0, False, "a drop-path rate"),
)

_SCHEMAS: dict[type, Any] = {}


def _schema(cls: type):
    """A strict pydantic model of ``cls``'s fields (cached)."""
    if cls not in _SCHEMAS:
        from pydantic import ConfigDict, create_model

        hints = typing.get_type_hints(cls)
        fields = {f.name: (hints[f.name], ...) for f in dataclasses.fields(cls)
                  if f.init and SUBCONFIG_METADATA not in f.metadata}
        _SCHEMAS[cls] = create_model(f"{cls.__name__}Fields", __config__=ConfigDict(strict=True, allow_inf_nan=False),
                                     **fields)
    return _SCHEMAS[cls]


def _allowed(lo, lo_inc, hi, hi_inc) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>=' if lo_inc else '>'} {lo:g}")
    if hi is not None:
        parts.append(f"{'<=' if hi_inc else '<'} {hi:g}")
    return " and ".join(parts)


def _range_problem(name: str, value: Any, optional: bool) -> str | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    for pattern, lo, lo_inc, hi, hi_inc, what in RANGES:
        if re.search(pattern, name):
            ok = (lo is None or (value >= lo if lo_inc else value > lo)) and (
                hi is None or (value <= hi if hi_inc else value < hi))
            if not ok:
                return (f"`{name}` = {value!r}: {what}, must be {_allowed(lo, lo_inc, hi, hi_inc)}"
                        + (" (or null)" if optional else ""))
            return None
    return None


def check_fields(config: Any) -> None:
    """Check every field of the dataclass instance ``config`` (see the module docstring). Lists
    given for tuple fields become tuples.

    Raises:
        ConfigError: every wrong type and every value out of its range, naming the field, the value
            and what is allowed.
    """
    from pydantic import ValidationError

    cls = type(config)
    hints = typing.get_type_hints(cls)
    values = {}
    leaves = [f for f in dataclasses.fields(cls) if SUBCONFIG_METADATA not in f.metadata]
    for f in leaves:
        v = getattr(config, f.name)
        if isinstance(v, list) and "tuple" in str(hints[f.name]):
            v = tuple(v)
            object.__setattr__(config, f.name, v)
        values[f.name] = v
    problems: list[str] = []
    try:
        _schema(cls).model_validate(values)
    except ValidationError as exc:
        by_field: dict[str, list[str]] = {}
        for err in exc.errors(include_url=False):
            top = next((str(p) for p in err["loc"] if p in values), "?")
            msg = err["msg"].replace("Input should", "should")
            by_field.setdefault(top, []).append(msg[:1].lower() + msg[1:])
        for top, msgs in by_field.items():
            kind = str(hints.get(top, "?")).replace("typing.", "").replace("<class '", "").replace("'>", "")
            problems.append(f"`{top}` = {values.get(top)!r}: {' or '.join(dict.fromkeys(msgs))} (the field is {kind})")
    for f in leaves:
        v = values[f.name]
        if isinstance(v, float) and not math.isfinite(v):
            continue  # reported above
        p = _range_problem(f.name, v, optional="None" in str(hints[f.name]))
        if p:
            problems.append(p)
    if problems:
        problems = list(dict.fromkeys(problems))
        raise ConfigError(f"{cls.__name__}: {'; '.join(problems)}. Fix these fields in the config "
                          "(CLI: --config JSON).")


def raise_problems(where: str, problems: list[str]) -> None:
    """The cross-field checks a config's ``__post_init__`` collected, as one error (nothing when
    ``problems`` is empty).

    Raises:
        ConfigError: ``"<where>: <problem>; <problem>."``.
    """
    if problems:
        raise ConfigError(f"{where}: {'; '.join(problems)}.")
