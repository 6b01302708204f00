"""The teacher's data config: input size, resize and crop, interpolation and normalisation.

A student is evaluated exactly as its teacher was, so an image folder is read with the teacher's
own preprocessing, from the library that knows it (issue 17):

* ``timm:NAME`` specs and timm models (they carry ``pretrained_cfg``): ``timm.data.resolve_data_config``;
  eval = ``timm.data.create_transform(**config)`` (resize by ``crop_pct``, center crop), train =
  the same with ``is_training=True`` (``RandomResizedCrop``, horizontal flip, timm's colour jitter);
* ``torchvision:NAME`` specs and torchvision weights enums: the weights' ``transforms()`` for eval
  (the architecture's ``DEFAULT`` weights for a spec: ``weights=`` is a local file, so the
  published weights it holds are assumed to be those), and timm's ``RandomResizedCrop`` + flip at the
  same size, mean and std for training;
* anything else (``cifar:``, the caller's modules): no teacher config; the caller's values, timm's
  defaults for the rest, and statistics sampled from the data when ``mean``/``std`` are not given.

Every field can be overridden (``image_size``, ``interpolation``, ``crop_pct``, ``mean``, ``std``);
an override rebuilds both transforms with ``timm.data.create_transform`` and is recorded in
:class:`~compress.data.spec.Preprocess` ``field_sources``. Nothing here downloads anything:
``transforms()`` of a torchvision weights enum and timm's ``pretrained_cfg`` are metadata.

Choices written down (neither library says): with ``channels=1`` the teacher's 3-channel
``mean``/``std`` become their averages (one value), and timm's colour jitter is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from compress.data.spec import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from compress.errors import DataError

__all__ = ["INTERPOLATIONS", "DataConfig", "check_crop_pct", "check_interpolation", "resolve_data_config",
           "build_transforms"]

#: Resize filters accepted for ``interpolation`` (the CLI's ``--interpolation``): PIL's, by name.
INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")

TIMM = "timm data config"
TORCHVISION = "torchvision weights"
USER = "user"
SAMPLED = "sampled from data"
TIMM_DEFAULT = "timm default"
_FIELDS = ("input_size", "interpolation", "crop_pct", "mean", "std")


def check_crop_pct(value: Any, *, option: str = "crop_pct") -> float | None:
    """``value`` as a float in (0, 1] (None passes).

    Raises:
        DataError: not a number, or outside (0, 1].
    """
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not (0.0 < v <= 1.0):
        raise DataError(f"{option} must be a number in (0, 1], the fraction of the resized image the center crop "
                        f"keeps (e.g. 0.875: resize to 256, crop 224), got {value!r}")
    return v


def check_interpolation(value: Any, *, option: str = "interpolation") -> str | None:
    """``value`` lower-cased when it names one of :data:`INTERPOLATIONS` (None passes).

    Raises:
        DataError: anything else, listing the names.
    """
    if value is None:
        return None
    name = str(getattr(value, "value", value)).strip().lower()  # also a torchvision InterpolationMode
    if name not in INTERPOLATIONS:
        raise DataError(f"{option} must be one of {', '.join(INTERPOLATIONS)}, got {value!r}")
    return name


@dataclass
class DataConfig:
    """A resolved config: timm's data-config keys, where each came from, and (torchvision) the weights'
    own eval transform, used as it is when nothing was overridden."""

    values: dict[str, Any]
    source: str
    field_sources: dict[str, str] = field(default_factory=dict)
    native_eval: Callable | None = None


def _timm_defaults() -> dict[str, Any]:
    """timm's defaults for a model without a config: 224 x 224, bilinear, ``DEFAULT_CROP_PCT``, center crop."""
    from timm.data import DEFAULT_CROP_PCT  # optional heavy dependency

    return {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": DEFAULT_CROP_PCT,
            "crop_mode": "center"}


def _timm_config(model: Any) -> dict[str, Any] | None:
    """timm's data config of a ``timm:NAME`` spec or a timm model, else None."""
    import timm  # optional heavy dependency, only for timm teachers
    from timm.data import resolve_data_config as timm_resolve

    if isinstance(model, str):
        name = model.split(":", 1)[1].strip()
        if not timm.is_model(name):
            return None  # load_model reports unknown names, with suggestions
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:  # a model registered without a config: timm's defaults
            return {**_timm_defaults(), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        return dict(timm_resolve(pretrained_cfg=cfg.to_dict()))
    return dict(timm_resolve(model=model))


def _torchvision_weights(model: Any) -> Any:
    """The torchvision weights enum member of a ``torchvision:NAME`` spec (its ``DEFAULT``) or the member
    itself, else None."""
    from torchvision.models import WeightsEnum, get_model_weights  # optional heavy dependency

    if isinstance(model, WeightsEnum):
        return model
    if isinstance(model, str):
        try:
            return get_model_weights(model.split(":", 1)[1].strip()).DEFAULT
        except (ValueError, KeyError, AttributeError):
            return None  # no weights enum for this name: load_model reports unknown names
    return None


def _from_torchvision(weights: Any) -> tuple[dict[str, Any], Callable]:
    tf = weights.transforms()
    crop = int(tf.crop_size[0])
    resize = int(tf.resize_size[0])
    values = {"input_size": (3, crop, crop), "interpolation": str(tf.interpolation.value).lower(),
              "crop_pct": crop / resize, "crop_mode": "center", "mean": tuple(tf.mean), "std": tuple(tf.std)}
    return values, tf


def _teacher_config(model: Any) -> DataConfig | None:
    if model is None:
        return None
    if isinstance(model, str):
        scheme = model.split(":", 1)[0].strip().lower() if ":" in model else ""
        if scheme == "timm":
            values = _timm_config(model)
            return None if values is None else DataConfig(values, TIMM)
        if scheme == "torchvision":
            weights = _torchvision_weights(model)
            if weights is None:
                return None
            values, tf = _from_torchvision(weights)
            return DataConfig(values, TORCHVISION, native_eval=tf)
        return None  # cifar:, package.module:factory: no data config
    if getattr(model, "pretrained_cfg", None) is not None:  # a timm model
        return DataConfig(_timm_config(model), TIMM)
    weights = _torchvision_weights(model)  # a weights enum (a torchvision module does not say its weights)
    if weights is not None:
        values, tf = _from_torchvision(weights)
        return DataConfig(values, TORCHVISION, native_eval=tf)
    return None


def _size(image_size: Any) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size: Any = (image_size, image_size)
    else:
        size = image_size
    try:
        size = tuple(int(v) for v in size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1 or isinstance(image_size, bool):
        raise DataError(f"image_size must be a positive int or (H, W), got {image_size!r} (CLI: --image-size N)")
    return size  # type: ignore[return-value]


def resolve_data_config(model: Any = None, *, channels: int = 3, image_size: Any = None,
                        interpolation: str | None = None, crop_pct: float | None = None,
                        mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                        ) -> DataConfig | None:
    """The data config an image folder is read with, or None for the legacy path (no teacher config and
    neither ``interpolation`` nor ``crop_pct`` given: images resized straight to ``image_size``).

    Args:
        model: a ``timm:NAME`` / ``torchvision:NAME`` spec, a timm model, a torchvision model or
            weights enum; anything else (None, ``cifar:``, the caller's module) has no config.
        channels: 1 or 3; with 1 the teacher's mean/std are averaged to one value.
        image_size, interpolation, crop_pct, mean, std: overrides (None: the teacher's; without a
            teacher: timm's defaults for size, interpolation and crop_pct, and ``mean``/``std``
            left to be sampled from the data, ``values["mean"] is None``).

    Raises:
        DataError: a bad override value.
    """
    interpolation = check_interpolation(interpolation)
    crop_pct = check_crop_pct(crop_pct)
    size = None if image_size is None else _size(image_size)
    cfg = _teacher_config(model)
    if cfg is None and interpolation is None and crop_pct is None:
        return None
    if cfg is None:
        cfg = DataConfig({**_timm_defaults(), "mean": None, "std": None}, SAMPLED)
        cfg.field_sources = {k: TIMM_DEFAULT for k in ("input_size", "interpolation", "crop_pct")}
        cfg.field_sources.update(mean=SAMPLED, std=SAMPLED)
    else:
        cfg.field_sources = {k: cfg.source for k in _FIELDS}
    v = cfg.values
    overrides = {"input_size": None if size is None else (channels, *size), "interpolation": interpolation,
                 "crop_pct": crop_pct,
                 "mean": None if mean is None else tuple(float(x) for x in mean),
                 "std": None if std is None else tuple(float(x) for x in std)}
    for key, value in overrides.items():
        if value is not None:
            v[key] = value
            cfg.field_sources[key] = USER
    if any(value is not None for value in overrides.values()) or channels != 3:
        cfg.native_eval = None  # the weights' own transform no longer matches: rebuilt with timm
    v["input_size"] = (channels, *tuple(v["input_size"])[-2:])
    for key in ("mean", "std"):
        if v[key] is not None and channels == 1 and len(v[key]) == 3 and cfg.field_sources[key] != USER:
            v[key] = (sum(v[key]) / 3.0,)
    if all(cfg.field_sources[k] == USER for k in _FIELDS):
        cfg.source = USER
    return cfg


def build_transforms(cfg: DataConfig) -> tuple[Callable, Callable]:
    """``(train, eval)`` transforms of a resolved config whose ``mean``/``std`` are known: PIL image ->
    float32 ``(C, H, W)`` normalised tensor. Eval: the torchvision weights' own transform when
    nothing was overridden, else ``timm.data.create_transform(**config)``; train:
    ``create_transform(**config, is_training=True)`` (no colour jitter for 1 channel)."""
    from timm.data import create_transform  # optional heavy dependency

    v = cfg.values
    kw = {"input_size": tuple(v["input_size"]), "interpolation": v["interpolation"], "mean": tuple(v["mean"]),
          "std": tuple(v["std"]), "crop_pct": v["crop_pct"], "crop_mode": v.get("crop_mode")}
    eval_tf = cfg.native_eval if cfg.native_eval is not None else create_transform(**kw)
    train_kw: dict[str, Any] = {"is_training": True}
    if cfg.source == TORCHVISION or int(v["input_size"][0]) == 1:
        train_kw["color_jitter"] = None  # torchvision's recipe: crop and flip only; grayscale: no colour
    return create_transform(**kw, **train_kw), eval_tf


def stats_transform(cfg: DataConfig) -> Callable:
    """The eval geometry (resize, crop) without normalisation: pixels in [0, 1], to sample statistics."""
    from timm.data import create_transform  # optional heavy dependency

    v = cfg.values
    c = int(v["input_size"][0])
    return create_transform(input_size=tuple(v["input_size"]), interpolation=v["interpolation"],
                            mean=(0.0,) * c, std=(1.0,) * c, crop_pct=v["crop_pct"], crop_mode=v.get("crop_mode"))


def _geometry(eval_tf: Any) -> tuple[tuple[int, ...] | None, tuple[int, int] | None]:
    """``(resize_size, crop_size)`` read off an eval transform (a Compose of Resize/CenterCrop, or a
    torchvision ``ImageClassification``)."""
    if hasattr(eval_tf, "crop_size") and hasattr(eval_tf, "resize_size"):
        c = [int(x) for x in eval_tf.crop_size]
        return tuple(int(x) for x in eval_tf.resize_size), (c[0], c[-1])
    resize, crop = None, None
    for t in getattr(eval_tf, "transforms", ()):
        name = type(t).__name__
        size = getattr(t, "size", None)
        if size is None:
            continue
        size = (size,) if isinstance(size, int) else tuple(int(x) for x in size)
        if "Resize" in name and resize is None:
            resize = size
        elif "CenterCrop" in name and crop is None:
            crop = (size[0], size[-1])
    return resize, crop


def _one_line(obj: Any) -> str:
    return " ".join(repr(obj).split())


def describe(cfg: DataConfig, train_tf: Callable, eval_tf: Callable) -> Preprocess:
    """The :class:`~compress.data.spec.Preprocess` record of a built config."""
    v = cfg.values
    resize, crop = _geometry(eval_tf)
    return Preprocess(
        input_size=tuple(v["input_size"]), interpolation=str(v["interpolation"]),
        crop_pct=None if v["crop_pct"] is None else float(v["crop_pct"]), crop_mode=v.get("crop_mode"),
        resize_size=resize, crop_size=crop, mean=tuple(v["mean"]), std=tuple(v["std"]), source=cfg.source,
        field_sources=dict(cfg.field_sources), eval_transform=_one_line(eval_tf), train_transform=_one_line(train_tf),
    )


def legacy_preprocess(input_shape: Sequence[int], image_size: Any, mean: Sequence[float], std: Sequence[float],
                      *, user_norm: bool, eval_tf: Any) -> Preprocess:
    """The record of the legacy path (no teacher config): every image resized straight to
    ``image_size`` (bilinear, aspect ratio not kept) or used at its stored size, no crop."""
    norm = USER if user_norm else SAMPLED
    size_src = USER if image_size is not None else SAMPLED
    return Preprocess(
        input_size=tuple(input_shape), interpolation="bilinear", crop_pct=None, crop_mode=None,
        resize_size=None if image_size is None else tuple(input_shape)[-2:], crop_size=None, mean=mean, std=std,
        source=USER if (user_norm and image_size is not None) else SAMPLED,
        field_sources={"input_size": size_src, "interpolation": size_src, "crop_pct": size_src, "mean": norm,
                       "std": norm},
        eval_transform=_one_line(eval_tf), train_transform="(the eval transform)",
    )


def user_preprocess(input_shape: Sequence[int], mean: Sequence[float] | None, std: Sequence[float] | None,
                    train_tf: Callable, eval_tf: Callable) -> Preprocess:
    """The record of the caller's own transforms (geometry read off them where it can be)."""
    resize, crop = _geometry(eval_tf)
    interp = next((str(getattr(getattr(t, "interpolation", None), "value", "")) for t in getattr(eval_tf, "transforms", ())
                   if getattr(t, "interpolation", None) is not None), "")
    return Preprocess(
        input_size=tuple(input_shape), interpolation=interp or "unknown", crop_pct=None, crop_mode=None,
        resize_size=resize, crop_size=crop, mean=tuple(mean or ()), std=tuple(std or ()), source=USER,
        field_sources={k: USER for k in _FIELDS}, eval_transform=_one_line(eval_tf),
        train_transform=_one_line(train_tf),
    )
