"""Nested strategy configs: one sub-config per phase, checkpoint keys from them, and the old flat keys.

A strategy config is a frozen dataclass whose fields are either *leaves* (numbers, strings, tuples)
or *sub-configs* (frozen dataclasses of leaves, declared with :func:`subconfig`), one per phase of
the strategy (``search``, ``baseline``, ``gal``, ``final`` ...). The fine-tune block of every
strategy is one shared dataclass, :class:`FinetuneConfig`.

* **Checkpoint keys** (:func:`key_config`): a phase's key is the hash of the sub-configs it reads,
  so a field added to a sub-config enters that phase's key by construction, with no hand-kept list
  of field names. Each leaf enters the key under its *legacy* (flat) name, and a field added after
  checkpoints existed (``KEY_OMIT`` of its class) is left out at the value that reproduces the
  earlier behaviour, so checkpoints written with the flat configs keep their keys where the phase
  reads the same settings.
* **Old flat keys** (:func:`config_from_dict`): before the nested configs every config was flat
  (``search_epochs``, ``final_lr``, ``kd_alpha`` ...). Each sub-config field of the parent says how
  its leaves were spelled then (``legacy_prefix`` + the leaf's name, or an exception in
  ``legacy``), so ``--config`` JSON and ``report.json`` ``config`` blocks written before still load,
  with a :class:`ConfigDeprecationWarning` that gives the nested spelling. A flat name that fed
  several phases (darts-gal's ``kd_alpha`` fed the baseline and the retrain) sets every leaf it
  maps to.

Both spellings may be mixed in one dict, but a leaf given twice is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from compress.errors import ConfigError
from compress.strategies._parts.config_fields import SUBCONFIG_METADATA, check_fields, raise_problems
from compress.training.data import AUGMENTATIONS
from compress.training.loop import FinetuneSettings

__all__ = [
    "ConfigDeprecationWarning",
    "FinetuneConfig",
    "subconfig",
    "subconfig_names",
    "coerce_subconfigs",
    "legacy_names",
    "key_config",
    "config_to_dict",
    "config_from_dict",
    "replace_config",
    "flat_value",
]

_LEGACY_PREFIX = SUBCONFIG_METADATA
_LEGACY = "slimforge.legacy"


class ConfigDeprecationWarning(FutureWarning):
    """A config used a spelling that still works but will go (a flat key of a nested config).
    A :class:`FutureWarning`, so Python shows it to end users by default."""


def subconfig(factory: Callable[[], Any], *, legacy_prefix: str = "", legacy: Mapping[str, str] | None = None) -> Any:
    """Declare a sub-config field of a strategy config.

    Args:
        factory: builds the default sub-config (e.g. ``lambda: FinetuneConfig(epochs=50)``).
        legacy_prefix: how the flat config spelled this sub-config's leaves: ``prefix + name``
            (``"final_"``: ``final.lr`` was ``final_lr``).
        legacy: exceptions to the prefix rule, ``{leaf name: flat name}`` (``{"grad_clip": "grad_clip"}``).
    """
    return dataclasses.field(default_factory=factory,
                             metadata={_LEGACY_PREFIX: legacy_prefix, _LEGACY: dict(legacy or {})})


def subconfig_names(cls: type) -> tuple[str, ...]:
    """The names of ``cls``'s sub-config fields (declared with :func:`subconfig`), in order."""
    return tuple(f.name for f in dataclasses.fields(cls) if _LEGACY_PREFIX in f.metadata)


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _sub_type(cls: type, name: str) -> type:
    """The dataclass type a sub-config field holds (from its default)."""
    return type(_field(cls, name).default_factory())  # type: ignore[misc]


def _build_sub(cls: type, name: str, leaves: Mapping[str, Any]) -> Any:
    """Sub-config ``name`` of ``cls`` from ``leaves`` over that field's default (its phase's values,
    not the sub-config class's).

    Raises:
        ConfigError: unknown or invalid leaves.
    """
    default = _field(cls, name).default_factory()  # type: ignore[misc]
    return config_from_dict(type(default), {**config_to_dict(default), **leaves}, _warn=False)


def coerce_subconfigs(config: Any) -> None:
    """In a config's ``__post_init__``: turn a dict given for a sub-config field into that sub-config
    (so ``DartsGalConfig(search={"epochs": 2})`` works) and check every sub-config's type.

    Raises:
        ConfigError: a sub-config of the wrong type, or a dict with unknown or invalid fields
            (the message names the path, e.g. ``DartsGalConfig.final``).
    """
    cls = type(config)
    for name in subconfig_names(cls):
        value = getattr(config, name)
        sub_cls = _sub_type(cls, name)
        if isinstance(value, Mapping):
            try:
                value = _build_sub(cls, name, value)
            except ConfigError as exc:
                raise ConfigError(f"{cls.__name__}.{name}: {exc}") from exc
            object.__setattr__(config, name, value)
        if not isinstance(value, sub_cls):
            raise ConfigError(f"{cls.__name__}.{name} must be a {sub_cls.__name__} (or a dict of its fields), "
                              f"got {type(value).__name__}.")


def legacy_names(cls: type) -> dict[str, list[tuple[str | None, str]]]:
    """``{flat name: [(sub-config or None for a top-level leaf, leaf name), ...]}`` of a config class."""
    out: dict[str, list[tuple[str | None, str]]] = {}
    subs = set(subconfig_names(cls))
    for f in dataclasses.fields(cls):
        if f.name in subs:
            for leaf in dataclasses.fields(_sub_type(cls, f.name)):
                out.setdefault(_legacy_name(cls, f.name, leaf.name), []).append((f.name, leaf.name))
        else:
            out.setdefault(f.name, []).append((None, f.name))
    return out


def _legacy_name(cls: type, sub: str, leaf: str) -> str:
    """The flat name leaf ``leaf`` of sub-config ``sub`` had: its exception, else prefix + name."""
    f = _field(cls, sub)
    return f.metadata[_LEGACY].get(leaf, f.metadata[_LEGACY_PREFIX] + leaf)


def _omitted(sub_cfg: Any, leaf: str, value: Any) -> bool:
    omit: Mapping[str, Any] = getattr(type(sub_cfg), "KEY_OMIT", {})
    return leaf in omit and _plain(value) == _plain(omit[leaf])


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def key_config(config: Any, *subs: str, top_level: bool = False, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The entries a phase's checkpoint key hashes: every leaf of the sub-configs ``subs`` (and,
    with ``top_level``, the config's own leaves), under its flat (legacy) name, less the leaves that
    their class's ``KEY_OMIT`` leaves out at their current value and the flat names in ``skip``.

    Two leaves that share a flat name (darts-gal's ``kd_alpha`` fed two phases) enter once while
    their values agree, as the flat config had them; once they differ, the second enters under its
    path (``final.kd_alpha``).
    """
    cls = type(config)
    out: dict[str, Any] = {}

    def put(name: str, value: Any, path: str) -> None:
        if name in skip:
            return
        value = _plain(value)
        if name in out and out[name] != value:
            name = path  # one flat name, two leaves that now differ: the second keys under its path
        out[name] = value

    if top_level:
        for f in dataclasses.fields(cls):
            if f.name not in subconfig_names(cls) and not _omitted(config, f.name, getattr(config, f.name)):
                put(f.name, getattr(config, f.name), f.name)
    for sub in subs:
        sub_cfg = getattr(config, sub)
        for leaf in dataclasses.fields(sub_cfg):
            value = getattr(sub_cfg, leaf.name)
            if not _omitted(sub_cfg, leaf.name, value):
                put(_legacy_name(cls, sub, leaf.name), value, f"{sub}.{leaf.name}")
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON-ready data, nested as the config is (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _tupled(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def config_from_dict(cls: type, data: Mapping[str, Any], *, _warn: bool = True) -> Any:
    """Rebuild a config dataclass from :func:`config_to_dict` output, or from the flat spelling
    used before the nested configs (each flat key routed to its leaves, with one :class:`ConfigDeprecationWarning`
    that lists the nested spelling); a sub-config given as a dict is rebuilt recursively. Lists
    become tuples.

    Raises:
        ConfigError: unknown field names (with the known ones), a leaf given twice (flat and
            nested), a sub-config that is not a dict, or any value its class refuses.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cls.__name__}: the config must be a JSON object, got {type(data).__name__}.")
    subs = subconfig_names(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {s: {} for s in subs}
    given: dict[tuple[str | None, str], str] = {}
    flat_used: dict[str, list[str]] = {}
    legacy = legacy_names(cls)

    def set_leaf(sub: str | None, leaf: str, value: Any, spelled: str) -> None:
        where = (sub, leaf)
        if where in given:
            raise ConfigError(f"{cls.__name__}: {'.'.join(filter(None, where))} is given twice "
                              f"(as {given[where]!r} and as {spelled!r}); keep one.")
        given[where] = spelled
        if sub is None:
            top[leaf] = _tupled(value)
        else:
            nested[sub][leaf] = _tupled(value)

    unknown = []
    for key, value in data.items():
        if key in subs:
            if dataclasses.is_dataclass(value):
                value = config_to_dict(value)
            if not isinstance(value, Mapping):
                raise ConfigError(f"{cls.__name__}.{key} must be an object of {_sub_type(cls, key).__name__} "
                                  f"fields, got {type(value).__name__}.")
            sub_fields = {f.name for f in dataclasses.fields(_sub_type(cls, key))}
            bad = sorted(set(value) - sub_fields)
            if bad:
                raise ConfigError(f"{cls.__name__}.{key} has no field(s) {bad}; known fields: {sorted(sub_fields)}.")
            for leaf, v in value.items():
                set_leaf(key, leaf, v, f"{key}.{leaf}")
        elif key in fields:
            set_leaf(None, key, value, key)
        elif key in legacy:
            for sub, leaf in legacy[key]:
                set_leaf(sub, leaf, value, key)
            flat_used[key] = [".".join(filter(None, p)) for p in legacy[key]]
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(_unknown_message(cls, sorted(unknown)))
    if flat_used and _warn:
        moved = "; ".join(f"{k} -> {', '.join(v)}" for k, v in flat_used.items())
        warnings.warn(f"{cls.__name__}: flat config keys are deprecated; nest them: {moved}.",
                      ConfigDeprecationWarning, stacklevel=3)
    kwargs: dict[str, Any] = dict(top)
    problems: list[str] = []  # every sub-config's and the parent's, reported together
    for sub in subs:
        if nested[sub]:
            try:
                kwargs[sub] = _build_sub(cls, sub, nested[sub])
            except ConfigError as exc:
                problems.append(f"{cls.__name__}.{sub}: {exc}")
    try:
        config = cls(**{k: v for k, v in kwargs.items() if k not in subs or not problems})
    except (TypeError, ConfigError) as exc:
        problems.append(f"{cls.__name__}: {exc}" if isinstance(exc, TypeError) else str(exc))
    if problems:
        raise ConfigError(" | ".join(problems))
    return config


def _unknown_message(cls: type, unknown: list[str]) -> str:
    """Unknown keys, each with its closest nested spelling(s), and the config's layout."""
    subs = subconfig_names(cls)
    paths = {name: [".".join(filter(None, p)) for p in where] for name, where in legacy_names(cls).items()}
    spellings = {*paths, *(p for ps in paths.values() for p in ps)}
    leaf_paths: dict[str, list[str]] = {}
    for p in sorted({p for ps in paths.values() for p in ps}):
        leaf_paths.setdefault(p.rsplit(".", 1)[-1], []).append(p)
    hints = []
    for key in unknown:
        by_leaf = [p for leaf in difflib.get_close_matches(key, sorted(leaf_paths), n=2, cutoff=0.75)
                   for p in leaf_paths[leaf]]
        close = difflib.get_close_matches(key, sorted(spellings), n=3, cutoff=0.75)
        nested = list(dict.fromkeys([*by_leaf, *(p for c in close for p in paths.get(c, [c]))]))[:5]
        if nested:
            hints.append(f"{key!r}: did you mean {' or '.join(repr(n) for n in nested)}?")
    leaves = [f.name for f in dataclasses.fields(cls) if f.name not in subs]
    layout = (f"its fields are the sub-configs {list(subs)} (each a JSON object of its fields)"
              + (f" and {leaves}" if leaves else "")) if subs else f"known fields: {sorted(leaves)}"
    return f"{cls.__name__} has no field(s) {unknown}; " + " ".join(hints) + (" " if hints else "") + layout + "."


def replace_config(config: Any, **changes: Any) -> Any:
    """``config`` with ``changes`` applied: nested (``final={"lr": 0.1}``, merged into the current
    sub-config) or flat (``final_lr=0.1``, with a :class:`ConfigDeprecationWarning`).

    Raises:
        ConfigError: as :func:`config_from_dict`.
    """
    cls = type(config)
    current = config_to_dict(config)
    subs = set(subconfig_names(cls))
    legacy = legacy_names(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        if key in subs:
            current[key] = {**current[key], **(config_to_dict(value) if dataclasses.is_dataclass(value) else dict(value))}
        elif key in fields:
            current[key] = value
        elif key in legacy:
            flat[key] = value
            for sub, leaf in legacy[key]:
                if sub is None:
                    current.pop(leaf, None)
                else:
                    current[sub].pop(leaf, None)
        else:
            current[key] = value  # refused below with the known names
    return config_from_dict(cls, {**current, **flat})


def flat_value(config: Mapping[str, Any], flat_name: str, default: Any = None) -> Any:
    """A setting from a ``report.json`` ``config`` block of either spelling: the flat key, or the
    first nested leaf whose name (or ``<sub>_<leaf>``) is ``flat_name``."""
    if flat_name in config:
        return config[flat_name]
    for sub, value in config.items():
        if isinstance(value, Mapping):
            for leaf, v in value.items():
                if flat_name in (leaf, f"{sub}_{leaf}"):
                    return v
    return default


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tune block every strategy shares (its retrain, recovery or final fine-tune): SGD
    with Nesterov momentum (or Adam) and a cosine learning rate, knowledge distillation from the
    teacher (Hinton et al. 2015), keep-best on the validation split
    (:class:`compress.training.FinetuneSettings`, which :meth:`settings` builds).

    Attributes:
        epochs: passes over the training split (with ``time_s``: the cap).
        lr, momentum, weight_decay, optimizer: the optimiser (``"sgd"`` or ``"adam"``).
        max_steps_per_epoch: cap on the optimiser steps of one epoch (None: the whole split).
        kd_alpha, kd_temperature: weight of the KD term (in [0, 1]; the rest is cross-entropy) and
            its temperature.
        augment: ``"none"`` or ``"flip-crop"``.
        label_smoothing: on the cross-entropy term (Szegedy et al. 2016, §7).
        warmup_epochs: linear learning-rate warm-up (Goyal et al. 2017, §2.2), then the cosine.
            Keep it well under ``epochs``: a warm-up as long as the fine-tune ends at the peak
            rate and never decays (``benchmarks/results/recipe_ablation_short_warmup1.md``: a
            1-epoch warm-up in a 1-epoch fine-tune cost 14 points of validation accuracy).
        time_s: wall-time budget of the fine-tune in seconds (None: ``epochs`` only).
        grad_clip: max global gradient norm per step (None: no clipping).

    Raises:
        ConfigError: a wrong type or a value out of range (the message names the field).
    """

    #: fields added after checkpoints existed: left out of checkpoint keys at these values
    KEY_OMIT: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "label_smoothing": 0.0, "warmup_epochs": 0,
                                          "time_s": None, "grad_clip": None}

    epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    max_steps_per_epoch: int | None = None
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    augment: str = "none"
    label_smoothing: float = 0.0
    warmup_epochs: int = 0
    time_s: float | None = None
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        problems = []
        if self.optimizer not in ("sgd", "adam"):
            problems.append(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.augment not in AUGMENTATIONS:
            problems.append(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            problems.append(f"warmup_epochs ({self.warmup_epochs}) must be in [0, epochs={self.epochs}]")
        if self.time_s is not None and not self.time_s > 0:
            problems.append(f"time_s must be > 0 seconds or null, got {self.time_s}")
        raise_problems("FinetuneConfig", problems)

    def settings(self, *, seed: int = 0, **overrides: Any) -> FinetuneSettings:
        """The :class:`compress.training.FinetuneSettings` of this block (``overrides`` replace
        fields of the settings, e.g. ``keep_best=False``)."""
        s = FinetuneSettings(epochs=self.epochs, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                             kd_alpha=self.kd_alpha, kd_temperature=self.kd_temperature, optimizer=self.optimizer,
                             max_steps_per_epoch=self.max_steps_per_epoch, augment=self.augment, seed=seed,
                             grad_clip=self.grad_clip, label_smoothing=self.label_smoothing,
                             warmup_epochs=self.warmup_epochs, time_budget_s=self.time_s)
        return dataclasses.replace(s, **overrides) if overrides else s
