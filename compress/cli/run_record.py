"""``OUT/run_args.json``: the record of a ``slimforge demo`` / ``slimforge run`` invocation, written
before any work so that ``slimforge resume OUT`` can repeat it after a crash, and read back
validated against the recorded command's options (a strict pydantic model of its signature).
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from compress.errors import CheckpointError, ConfigError, disk_full
from compress.exporters import atomic  # the module: a patched atomic.write_text_atomic (tests) applies

RUN_ARGS = "run_args.json"
RUN_ARGS_FORMAT = "slimforge-run-args/1"
_NOT_RECORDED = ("out", "resume")  # the run directory is where the record lives; resume is how it is used
_NOT_COMPARED = ("executor", "ray_address", "time_limit",  # how the work runs, not what it computes
                 "reference_points")  # (reference points only place the student in the report)


_RUN_ARGS_FIX = "start the run again with `slimforge demo/run ... --no-resume` (or choose another --out)"

#: the commands that record their runs, by name: ``demo`` and ``run``, added by
#: :mod:`compress.cli.compress_commands`. A record's arguments are validated against the
#: command's signature, and ``slimforge resume`` calls the command again with them.
COMMANDS: dict[str, Callable[..., None]] = {}


def _args_schema(fn):
    """A strict pydantic model of ``fn``'s recorded parameters (from its signature: ``Path`` is
    stored as ``str``; options without a default are required, the others default to the CLI's)."""
    import inspect
    import typing

    from pydantic import create_model

    from compress._strict_json import STRICT  # deferred: pydantic, kept out of `slimforge --help`

    hints = typing.get_type_hints(fn)
    fields = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in _NOT_RECORDED:
            continue
        hint = hints.get(name, typing.Any)
        hint = {Path: str, Optional[Path]: Optional[str]}.get(hint, hint)
        default = getattr(p.default, "default", p.default)
        fields[name] = (hint, ... if default is ... else default)
    return create_model(f"{fn.__name__.capitalize()}Args", __config__=STRICT, **fields)


def _read_run_args(path: Path) -> tuple[str, dict]:
    """``(command, args)`` of a ``run_args.json``, validated: the record's envelope and the
    arguments against the command's signature (:func:`_args_schema`); NaN / infinities refused.
    ``args`` holds every recorded option, absent ones (added to the CLI later) at their defaults.

    Raises:
        CheckpointError: unreadable, not JSON, or not valid (every problem listed, and what to do).
    """
    from typing import Literal

    from pydantic import BaseModel

    from compress._strict_json import STRICT, read_json_file, validate  # deferred: pydantic, kept out of `slimforge --help`

    class RunArgsRecord(BaseModel):
        model_config = STRICT
        format: Literal["slimforge-run-args/1"]
        command: Literal["demo", "run"]
        args: dict

    raw = read_json_file(path, CheckpointError, what="run record", fix=_RUN_ARGS_FIX)
    rec = validate(RunArgsRecord, raw, CheckpointError, what="run record", path=path, fix=_RUN_ARGS_FIX)
    fn = COMMANDS[rec.command]
    args = validate(_args_schema(fn), rec.args, CheckpointError, what=f"run record ({rec.command} arguments)",
                    path=path, fix=_RUN_ARGS_FIX)
    return rec.command, args.model_dump()  # options added after the run was started: their defaults


def _recorded_args(args: dict) -> dict:
    """An invocation's arguments as JSON, with paths that exist made absolute (so ``slimforge
    resume`` works from any working directory)."""
    out = {}
    for k, v in args.items():
        if k in _NOT_RECORDED or callable(v):  # parameters only (not the caller's helpers)
            continue
        if isinstance(v, Path) or (isinstance(v, str) and k in ("data", "test_data", "config", "target")
                                   and len(v) < 4096 and Path(v).exists()):
            v = str(Path(v).resolve())
        out[k] = v
    return out


def _record_run(out: Path, command: str, args: dict, resume: bool):
    """Write ``out/run_args.json`` atomically before any work, so ``slimforge resume OUT`` can repeat
    this invocation after a crash. With ``resume``, an existing record must describe the same
    invocation. Returns a cleanup callable for a run that fails with a clean error (it removes the
    record unless a checkpoint was committed after it, and ``out`` if this call created it and it is
    empty), so that the corrected command is not refused.

    Raises:
        CheckpointError: ``out`` was started by another invocation (lists what differs), or its
            record is corrupt. ConfigError: ``out`` cannot be written.
    """
    rec = {"format": RUN_ARGS_FORMAT, "command": command, "args": _recorded_args(args)}
    path = Path(out) / RUN_ARGS
    if resume and path.is_file():
        old_command, old_args = _read_run_args(path)
        old = {"command": old_command, "args": old_args}
        same = lambda d: {k: v for k, v in d.items() if k not in _NOT_COMPARED}  # noqa: E731
        if old.get("command") != command or same(old.get("args") or {}) != same(rec["args"]):
            a, b = old.get("args") or {}, rec["args"]
            diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                    if k not in _NOT_COMPARED and a.get(k) != b.get(k)]
            raise CheckpointError(
                f"{out} holds a `slimforge {old.get('command')}` run with other arguments ("
                + ("; ".join(diff[:6]) or f"command {old.get('command')} -> {command}")
                + f"). Continue it with `slimforge resume {out}`, start over with --no-resume, or choose another --out."
            )
        return lambda: None
    created = not Path(out).exists()
    try:
        atomic.write_text_atomic(path, json.dumps(rec, indent=2, sort_keys=True))
    except OSError as exc:
        if created and Path(out).is_dir() and not any(Path(out).iterdir()):
            Path(out).rmdir()
        if exc.errno == errno.ENOSPC:
            raise disk_full(exc, path) from exc
        raise ConfigError(f"output directory {out} cannot be written ({exc}); choose another --out.") from exc

    def cleanup() -> None:  # only while no checkpoint was committed: after one, `slimforge resume` needs the record
        ck = Path(out) / "checkpoints"
        if ck.is_dir() and any(p.is_file() and p.name != "run.json" for p in ck.rglob("*")):
            return
        path.unlink(missing_ok=True)
        if created and Path(out).is_dir() and not any(Path(out).iterdir()):
            Path(out).rmdir()

    return cleanup
