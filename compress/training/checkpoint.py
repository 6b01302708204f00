"""Checkpoints shared by every strategy: atomic (JSON state + tensors) pairs, RNG states, and the
run manifest that ties an output directory to one run.

Layout of a run directory (``compress(..., out_dir=D)``)::

    D/checkpoints/run.json                      which run wrote the checkpoints: strategy, config,
                                                seed, budget, target, fingerprints of the model,
                                                teacher and data, slimforge / torch versions
    D/checkpoints/<strategy>/<name>.json        one boundary's state (JSON); names its tensor file
    D/checkpoints/<strategy>/<name>.<tag>.pt    that boundary's tensors (``torch.save`` of tensors and
                                                plain containers only, read with ``weights_only=True``)

A boundary is committed tensors first, then the JSON that names them (each written atomically:
temp file + ``os.replace``), then older tensor files of the same name are removed. A kill at any
instant therefore leaves either the previous or the new (JSON, tensors) pair on disk, both
complete. Every commit also stores the global RNG states (torch, NumPy, Python ``random``) and
the states of the generators the caller names (data loaders, drop-path), so a resumed run draws
the same random numbers as the uninterrupted one from the boundary on.

Stale phase checkpoints (another phase key, e.g. a changed retrain setting when a strategy is
driven directly) are ignored and overwritten; corrupt or truncated files raise
:class:`~compress.errors.CheckpointError`, and so do files that fail their schema: the manifest
(:class:`RunManifest`; NaN and infinities refused anywhere) and the envelope of every state JSON
(:class:`StateEnvelope`: format, name, key, a tensor file name inside the folder, RNG states). Through :func:`compress.compress`, the run manifest
refuses an output directory whose checkpoints belong to another run (:func:`open_run_dir`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
import torch
from pydantic import BaseModel, Field, Strict
from torch import nn

from compress._strict_json import STRICT, read_json_file, schema_problems
from compress.errors import CheckpointError
from compress.exporters.atomic import write_bytes_atomic, write_text_atomic

__all__ = [
    "CHECKPOINTS",
    "CheckpointStore",
    "Restored",
    "EpochCheckpoint",
    "capture_rng",
    "restore_rng",
    "loader_generators",
    "json_ready",
    "stable_hash",
    "state_fingerprint",
    "run_identity",
    "SplitFingerprint",
    "open_run_dir",
    "config_key_omit",
    "RunDir",
    "RunManifest",
    "StateEnvelope",
]

CHECKPOINTS = "checkpoints"  #: folder under the output directory
MANIFEST = "run.json"
MANIFEST_FORMAT = "slimforge-run/1"
STATE_FORMAT = "slimforge-checkpoint/1"

_HOW_TO_FIX = "delete the folder {d} (or pass resume=False, CLI --no-resume) to start the run over"


# ----------------------------------------------------------------------------------- small helpers


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-ready")


def json_ready(obj: Any) -> Any:
    """``obj`` after a JSON round trip (tuples become lists, NumPy scalars numbers): what a
    checkpoint restores, so a resumed run and an uninterrupted one hold the same values."""
    return json.loads(json.dumps(obj, default=_json_default))


def stable_hash(obj: Any, n: int = 20) -> str:
    """First ``n`` hex digits of the SHA-256 of ``obj`` as sorted JSON."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 (20 hex digits) of a module's class, state_dict names, dtypes, shapes and bytes."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


def _tensor_fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


class SplitFingerprint:
    """The fingerprint of a data split read batch by batch, without holding it in memory.

    ``update(x, y)`` per batch, in loader order; :meth:`hexdigest` is independent of how the split
    is batched (the bytes are hashed as one stream, the header holds the total shape). It never
    equals the in-memory fingerprint of the same tensors (a ``streamed`` prefix), so a run that
    switched from one to the other is told it is another run rather than silently matched.
    """

    def __init__(self) -> None:
        self._x, self._y = hashlib.sha256(), hashlib.sha256()
        self._x_meta: tuple | None = None
        self._y_meta: tuple | None = None
        self.samples = 0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch: ``x`` ``(B, ...)``, ``y`` ``(B,)``."""
        for t, h, attr in ((x, self._x, "_x_meta"), (y, self._y, "_y_meta")):
            t = t.detach().cpu().contiguous()
            meta = (str(t.dtype), tuple(t.shape[1:]))
            if getattr(self, attr) is None:
                setattr(self, attr, meta)
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        self.samples += int(x.shape[0])

    def hexdigest(self) -> str:
        """20 hex characters, like the in-memory fingerprint."""
        h = hashlib.sha256(b"streamed|")
        for meta, part in ((self._x_meta, self._x), (self._y_meta, self._y)):
            h.update(f"{meta}|{self.samples}|".encode() + part.digest())
        return h.hexdigest()[:20]


def _corrupt(path: Path, exc: BaseException | str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is corrupt or truncated ({exc}); " + _HOW_TO_FIX.format(d=path.parent) + "."
    )


def _save_tensors(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def _load_tensors(path: Path) -> Any:
    if not path.is_file():
        raise _corrupt(path, "the file named by its state JSON is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise _corrupt(path, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


_U32 = Annotated[int, Strict(), Field(ge=0, le=2**32 - 1)]
_Float = Annotated[float, Strict()]


class _RngJson(BaseModel):
    """JSON part of :func:`capture_rng`: Python ``random`` (version 3, 625 words) and NumPy MT19937."""

    model_config = STRICT
    python: Annotated[tuple[Literal[3], Annotated[list[_U32], Field(min_length=625, max_length=625)],
                            Optional[_Float]], Field(strict=False)]
    numpy: Annotated[tuple[Literal["MT19937"], Annotated[list[_U32], Field(min_length=624, max_length=624)],
                           Annotated[int, Strict(), Field(ge=0, le=624)], Annotated[int, Strict(), Field(ge=0, le=1)],
                           _Float], Field(strict=False)]


class StateEnvelope(BaseModel):
    """Schema of a checkpoint state JSON around its strategy-specific ``state`` (not checked here)."""

    model_config = STRICT
    format: Literal["slimforge-checkpoint/1"]
    name: str = Field(min_length=1)
    key: str
    tensors: str = Field(pattern=r"^[A-Za-z0-9_.+-]+\.pt$")  # a file in the same folder, no path
    rng: _RngJson
    state: dict[str, Any]


class RunManifest(BaseModel):
    """Schema of ``checkpoints/run.json``. The identity is whatever :func:`run_identity` (or the
    caller of :func:`open_run_dir`) wrote; it is only compared, key by key, with the current one."""

    model_config = STRICT
    format: Literal["slimforge-run/1"]
    identity: dict[str, Any]


def _read_json(path: Path, schema: type[BaseModel], *, allow_non_finite: bool = False) -> dict[str, Any]:
    """Parse ``path`` (NaN / infinities refused unless ``allow_non_finite``) and check ``schema``.

    Raises:
        CheckpointError: unreadable, not JSON, or not valid against ``schema`` (every problem listed).
    """
    fix = _HOW_TO_FIX.format(d=path.parent) + "."
    data = read_json_file(path, CheckpointError, what="checkpoint", fix=fix, allow_non_finite=allow_non_finite)
    problems = schema_problems(schema, data)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems) - 8} more)" if len(problems) > 8 else "")
        raise _corrupt(path, f"not a valid {schema.__name__}: {shown}")
    return data


# ----------------------------------------------------------------------------------- RNG states


def loader_generators(**loaders: Any) -> dict[str, torch.Generator]:
    """The ``torch.Generator`` of each loader that has one (a seeded shuffling ``DataLoader``);
    loaders without one draw from the global torch RNG, which every checkpoint stores anyway."""
    out = {}
    for name, loader in loaders.items():
        gen = getattr(loader, "generator", None)
        if isinstance(gen, torch.Generator):
            out[f"loader.{name}"] = gen
    return out


def capture_rng(generators: Mapping[str, torch.Generator | None] | None = None) -> tuple[dict, dict]:
    """``(json_part, tensor_part)`` of the global torch / NumPy / Python RNGs and ``generators``."""
    py = random.getstate()
    npst = np.random.get_state()
    js = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], [int(v) for v in npst[1]], int(npst[2]), int(npst[3]), float(npst[4])],
    }
    tensors = {"torch": torch.get_rng_state()}
    for name, gen in (generators or {}).items():
        if gen is not None:
            tensors[f"gen:{name}"] = gen.get_state()
    return js, tensors


def restore_rng(js: Mapping[str, Any], tensors: Mapping[str, Any],
                generators: Mapping[str, torch.Generator | None] | None = None) -> None:
    """Set the RNGs saved by :func:`capture_rng` (generators missing from the checkpoint are left alone)."""
    v, state, gauss = js["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(tensors["torch"])
    for gname, gen in (generators or {}).items():
        if gen is not None and f"gen:{gname}" in tensors:
            gen.set_state(tensors[f"gen:{gname}"])


# ----------------------------------------------------------------------------------- store


def _is_rank_zero() -> bool:
    """False on the ranks > 0 of an initialised process group: only rank 0 writes checkpoints."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


class CheckpointStore:
    """One strategy's checkpoint folder (``<out_dir>/checkpoints/<strategy>``; None: disabled).

    Each checkpoint has a ``name`` (``"search"``, ``"finetune"`` ...) and a ``key`` (hash of what
    produced it): :meth:`load` returns None for a missing checkpoint or one with another key, and
    raises :class:`CheckpointError` for a corrupt one.
    """

    def __init__(self, directory: str | Path | None) -> None:
        self.dir = None if directory is None else Path(directory)

    @classmethod
    def for_strategy(cls, out_dir: str | Path | None, strategy: str) -> "CheckpointStore":
        return cls(None if out_dir is None else Path(out_dir) / CHECKPOINTS / strategy)

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def commit(self, name: str, state: Mapping[str, Any], tensors: Mapping[str, Any] | None = None, *, key: str,
               tag: str | int = 0, generators: Mapping[str, torch.Generator | None] | None = None) -> None:
        """Write one boundary: ``<name>.<tag>.pt`` (``tensors`` + RNG states), then ``<name>.json``
        (``state`` + key + RNG JSON), then remove older ``<name>.*.pt`` files. ``state`` must be
        JSON-ready; ``tensors`` tensors / plain containers only."""
        if self.dir is None or not _is_rank_zero():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        rng_js, rng_t = capture_rng(generators)
        tname = f"{name}.{tag}.pt"
        _save_tensors(self.dir / tname, {"tensors": dict(tensors or {}), "rng": rng_t})
        doc = {"format": STATE_FORMAT, "name": name, "key": key, "tensors": tname, "rng": rng_js,
               "state": dict(state)}
        write_text_atomic(self.dir / f"{name}.json", json.dumps(doc, default=_json_default))
        for old in self.dir.glob(f"{name}.*.pt"):
            if old.name != tname:
                old.unlink(missing_ok=True)

    def load(self, name: str, *, key: str) -> "Restored | None":
        """The checkpoint ``name`` written with ``key``, or None (absent / another key).

        Raises:
            CheckpointError: the JSON or its tensor file is corrupt, truncated or missing.
        """
        if self.dir is None:
            return None
        path = self.dir / f"{name}.json"
        if not path.is_file():
            return None
        doc = _read_json(path, StateEnvelope, allow_non_finite=True)  # a strategy's state is its own business
        if doc["name"] != name or not doc["tensors"].startswith(f"{name}."):
            raise _corrupt(path, f"it names checkpoint {doc['name']!r} / tensor file {doc['tensors']!r}, not {name!r}")
        if doc.get("key") != key:
            return None
        blob = _load_tensors(self.dir / str(doc["tensors"]))
        if not isinstance(blob, dict) or "tensors" not in blob or "rng" not in blob:
            raise _corrupt(self.dir / str(doc["tensors"]), "unexpected contents")
        return Restored(doc["state"], blob["tensors"], doc["rng"], blob["rng"])

    def peek(self, name: str) -> dict[str, Any] | None:
        """The JSON ``state`` of checkpoint ``name`` whatever its key (None if absent), e.g. to
        refuse a checkpoint of another world size before comparing keys.

        Raises:
            CheckpointError: the JSON is corrupt or truncated.
        """
        if self.dir is None or not (self.dir / f"{name}.json").is_file():
            return None
        doc = _read_json(self.dir / f"{name}.json", StateEnvelope, allow_non_finite=True)
        return doc["state"]

    def discard(self, name: str) -> None:
        """Remove checkpoint ``name`` (JSON first, so a kill in between leaves no half pair)."""
        if self.dir is None:
            return
        (self.dir / f"{name}.json").unlink(missing_ok=True)
        for old in self.dir.glob(f"{name}.*.pt"):
            old.unlink(missing_ok=True)


@dataclass
class Restored:
    """A loaded checkpoint: its JSON ``state``, its ``tensors``, and the RNG states of the boundary
    (call :meth:`restore_rng` at the program point that matches the commit)."""

    state: dict[str, Any]
    tensors: dict[str, Any]
    rng_json: dict[str, Any]
    rng_tensors: dict[str, Any]

    def restore_rng(self, generators: Mapping[str, torch.Generator | None] | None = None) -> None:
        restore_rng(self.rng_json, self.rng_tensors, generators)


@dataclass
class EpochCheckpoint:
    """Per-epoch checkpoints of a training loop (:func:`compress.strategies._parts.training.finetune`).

    Attributes:
        store: the strategy's store (a disabled store disables the checkpoints).
        name: checkpoint name, unique within the strategy (``"finetune"``, ``"retrain"``).
        key: identity of the training run (hash of what produced the initial weights); the loop
            adds its settings and the parameter shapes.
        generators: extra generators that advance during training (drop-path ...), by name.
    """

    store: CheckpointStore
    name: str
    key: str
    generators: dict[str, torch.Generator | None] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- run manifest


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("slimforge", "torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run_identity(*, strategy: str, config: Any, seed: int, budget: Mapping[str, Any], target: Mapping[str, Any],
                 data: Mapping[str, Any], val: tuple[torch.Tensor, torch.Tensor] | str, model: nn.Module,
                 teacher: nn.Module | None, train_dataset: Any = None) -> dict[str, Any]:
    """What must match for an output directory's checkpoints to be resumed (JSON-ready).

    ``config`` is the strategy's config dataclass or dict; ``val`` the collected validation
    split (hashed), or its fingerprint already computed (:class:`SplitFingerprint` of a split too
    large to hold in memory); ``train_dataset`` is hashed when it is a ``TensorDataset``, otherwise only
    its size (in ``data``) is compared.
    """
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})
    train_fp = None
    tensors = getattr(train_dataset, "tensors", None)
    if isinstance(tensors, tuple) and all(isinstance(t, torch.Tensor) for t in tensors):
        train_fp = _tensor_fingerprint(*tensors)
    return json_ready({
        "format": MANIFEST_FORMAT,
        "versions": _versions(),
        "strategy": strategy,
        "config": cfg,
        "seed": int(seed),
        "budget": dict(budget),
        "target": dict(target),
        "data": {**dict(data), "val_fingerprint": val if isinstance(val, str) else _tensor_fingerprint(*val), "train_fingerprint": train_fp},
        "model_fingerprint": state_fingerprint(model),
        "teacher_fingerprint": None if teacher is None else state_fingerprint(teacher),
    })


def config_key_omit(config: Any) -> dict[str, Any]:
    """The config leaves added after checkpoints existed, by manifest path -> the value at which
    their absence from a saved manifest means the same run.

    Read from each config dataclass's ``KEY_OMIT`` (the same table the phases' checkpoint keys use),
    through nested sub-configs: ``{"config.prune.drop_blocks": 0.0, ...}``. A manifest written before
    such a field existed lacks it; one written after has it at its default; both are the same run.
    """
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            return
        for leaf, value in getattr(type(obj), "KEY_OMIT", {}).items():
            out[f"{prefix}.{leaf}"] = json_ready(value)
        for f in dataclasses.fields(obj):
            walk(getattr(obj, f.name), f"{prefix}.{f.name}")

    walk(config, "config")
    return out


def _diff(a: Any, b: Any, prefix: str = "", omit: Mapping[str, Any] | None = None) -> list[str]:
    omit = omit or {}
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            p = f"{prefix}.{k}" if prefix else str(k)
            if k not in a:
                if not (p in omit and b[k] == omit[p]):
                    out.append(f"{p}: (absent) -> {_short(b[k])}")
            elif k not in b:
                if not (p in omit and a[k] == omit[p]):
                    out.append(f"{p}: {_short(a[k])} -> (absent)")
            else:
                out += _diff(a[k], b[k], p, omit)
        return out
    return [] if a == b else [f"{prefix}: {_short(a)} -> {_short(b)}"]


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


@dataclass
class RunDir:
    """An output directory opened for checkpoints by :func:`open_run_dir`."""

    out_dir: Path
    created_manifest: bool
    resumed: bool

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / CHECKPOINTS

    def discard_if_unused(self) -> None:
        """Remove the manifest this run wrote when no checkpoint followed it (a run that failed
        before its first boundary leaves the output directory as it found it)."""
        if not self.created_manifest:
            return
        ck = self.checkpoints
        others = [p for p in ck.rglob("*") if p.is_file() and p.name != MANIFEST] if ck.is_dir() else []
        if others:
            return
        (ck / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(ck, ignore_errors=True)


def open_run_dir(out_dir: str | Path, identity: Mapping[str, Any], *, resume: bool = True,
                 key_omit: Mapping[str, Any] | None = None) -> RunDir:
    """Tie ``out_dir``'s checkpoints to the run described by ``identity`` (:func:`run_identity`).

    ``resume=True``: existing checkpoints of the same run are kept (the strategy continues from
    them); checkpoints of another run are refused. ``resume=False``: ``out_dir/checkpoints`` is
    deleted first, so the run starts over. The manifest ``checkpoints/run.json`` is written
    atomically when missing. ``key_omit`` (:func:`config_key_omit`) names the config leaves a saved
    manifest may lack: absent there and at that value here (or the reverse) is the same run.

    Raises:
        CheckpointError: the checkpoints belong to another run (lists what differs), were written
            without a manifest (an older slimforge), or the manifest is corrupt.
    """
    out = Path(out_dir)
    ck = out / CHECKPOINTS
    path = ck / MANIFEST
    if not resume and ck.exists():
        shutil.rmtree(ck)
    ident = json_ready(dict(identity))
    if path.is_file():
        old = _read_json(path, RunManifest)["identity"]
        diffs = _diff(old, ident, omit=json_ready(dict(key_omit or {})))
        if diffs:
            shown = "; ".join(diffs[:6]) + (f"; ... ({len(diffs) - 6} more)" if len(diffs) > 6 else "")
            raise CheckpointError(
                f"{out} holds checkpoints of another run, so it cannot be resumed with these settings "
                f"(saved -> now: {shown}). Use the same settings to resume, choose another output directory, "
                f"or " + _HOW_TO_FIX.format(d=ck) + "."
            )
        return RunDir(out, created_manifest=False, resumed=True)
    if ck.is_dir() and any(p.is_file() for p in ck.rglob("*")):
        raise CheckpointError(
            f"{ck} holds checkpoints without a {MANIFEST} (written by an older slimforge or another tool), "
            "so it is unknown which run they belong to; " + _HOW_TO_FIX.format(d=ck) + "."
        )
    write_text_atomic(path, json.dumps({"format": MANIFEST_FORMAT, "identity": ident}, indent=1, sort_keys=True))
    return RunDir(out, created_manifest=True, resumed=False)
