"""The data model: :class:`DataSpec` (what inputs and labels look like, for reports),
:class:`Preprocess` (how an image file becomes an input) and :class:`TaskData` (the loaders).

Conventions of every task: batches are ``(x, y)``: ``x`` float32 ``(B, C, H, W)`` already
normalised with ``spec.mean`` / ``spec.std`` (per channel, applied to values scaled to [0, 1]);
``y`` int64 ``(B,)`` class indices in ``[0, spec.num_classes)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch.utils.data import DataLoader

from compress.errors import DataError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DataSpec", "Preprocess", "TaskData"]

#: ImageNet channel statistics (RGB, for values in [0, 1]); pass them as
#: ``mean``/``std`` for teachers trained with them (e.g. the CIFAR ResNets).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes one input tensor, recorded so that the gate and a mobile app can
    reproduce it (``report.json`` ``data.spec.preprocess``, ``manifest.json`` ``preprocess``).

    Eval pipeline, in order: decode to RGB (or grayscale for 1 channel); resize with
    ``interpolation`` to ``resize_size`` (one int: the shorter side, aspect ratio kept; two ints:
    ``(H, W)`` exactly); center-crop to ``crop_size`` ``(H, W)`` when it is not None; scale pixels
    to [0, 1]; subtract ``mean`` and divide by ``std`` per channel.

    Attributes:
        input_size: ``(C, H, W)`` of one model input.
        interpolation: resize filter (``"bilinear"``, ``"bicubic"``, ...).
        crop_pct: the fraction of the resized image the center crop keeps (timm's ``crop_pct``:
            ``resize = floor(H / crop_pct)``); None when no crop is taken (the image is resized
            straight to ``input_size``, distorting its aspect ratio).
        crop_mode: timm's ``crop_mode`` (``"center"``, ``"squash"``, ``"border"``) or None.
        resize_size: see above; None when the files are used at their stored size.
        crop_size: ``(H, W)`` of the center crop, or None.
        mean, std: per-channel normalisation of [0, 1] pixels; empty when unknown (the caller's
            own transforms).
        source: where the configuration came from as a whole: ``"timm data config"``,
            ``"torchvision weights"``, ``"user"`` (every field given, or the caller's own
            transforms) or ``"sampled from data"`` (no teacher config: the files' size, statistics
            of a seeded sample).
        field_sources: per field (``input_size``, ``interpolation``, ``crop_pct``, ``mean``,
            ``std``) the origin of its value: the ``source`` names above, or ``"timm default"``.
        eval_transform, train_transform: ``repr`` of the transforms applied (for the record; the
            fields above are what a runtime needs).
    """

    input_size: tuple[int, int, int]
    interpolation: str
    crop_pct: float | None
    crop_mode: str | None
    resize_size: tuple[int, ...] | None
    crop_size: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    field_sources: tuple[tuple[str, str], ...] = ()
    eval_transform: str = ""
    train_transform: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        for name in ("resize_size", "crop_size"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))
        if isinstance(self.field_sources, Mapping):
            object.__setattr__(self, "field_sources", tuple(self.field_sources.items()))

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists, ``field_sources`` a dict)."""
        return {
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
            "resize_size": None if self.resize_size is None else list(self.resize_size),
            "crop_size": None if self.crop_size is None else list(self.crop_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "source": self.source,
            "field_sources": dict(self.field_sources),
            "eval_transform": self.eval_transform,
            "train_transform": self.train_transform,
        }


@dataclass(frozen=True)
class DataSpec:
    """What a task's inputs and labels look like; goes into the report.

    Attributes:
        name: short dataset name (``"digits"``, the npz file stem, ...).
        num_classes: number of classes; labels are ``0 .. num_classes-1``.
        input_shape: ``(C, H, W)`` of one input image.
        mean, std: per-channel normalisation the loaders apply to [0, 1]
            pixel values (``x = (pixel / 255 - mean) / std``); empty tuples
            mean "unknown" (loaders supplied by the caller).
        class_names: optional names, index = label.
        source: where the data came from (path or loader function).
        preprocess: how image files became inputs (image folders: :class:`Preprocess`); None for
            in-memory data (digits, .npz, the caller's loaders), whose ``mean``/``std`` above say
            it all. ``to_dict`` writes the ``"preprocess"`` key only when it is set, so that the
            spec of digits/.npz data (and the run identity of their checkpoints) is unchanged.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None
    source: str = ""
    preprocess: Preprocess | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise DataError(f"DataSpec.input_shape must be (C, H, W) with positive sizes, got {self.input_shape}")
        if int(self.num_classes) < 1:
            raise DataError(f"DataSpec.num_classes must be >= 1, got {self.num_classes}")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        if isinstance(self.preprocess, Mapping):  # e.g. read back from a report.json
            object.__setattr__(self, "preprocess", Preprocess(**self.preprocess))
        if len(self.mean) != len(self.std):
            raise DataError(
                f"DataSpec.mean ({len(self.mean)} values) and std ({len(self.std)} values) must have "
                "the same length: one value per input channel (or both empty when unknown)"
            )

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": None if self.class_names is None else list(self.class_names),
            "source": self.source,
            **({} if self.preprocess is None else {"preprocess": self.preprocess.to_dict()}),
        }


def _loader_size(loader: DataLoader | None) -> int | None:
    if loader is None:
        return None
    try:
        return len(loader.dataset)  # type: ignore[arg-type]
    except (TypeError, AttributeError):
        return None


@dataclass
class TaskData:
    """Loaders of one classification task and its :class:`DataSpec`.

    ``calib`` is an optional small loader for calibration (quantisation,
    BN re-estimation); consumers fall back to ``train`` when it is None.
    """

    train: DataLoader
    val: DataLoader
    test: DataLoader | None
    spec: DataSpec
    calib: DataLoader | None = None

    def to_dict(self) -> dict:
        """``{"spec": ..., "sizes": {"train": n, "val": n, "test": n|None, "calib": n|None}, "batch_size": b}``."""
        return {
            "spec": self.spec.to_dict(),
            "sizes": {
                "train": _loader_size(self.train),
                "val": _loader_size(self.val),
                "test": _loader_size(self.test),
                "calib": _loader_size(self.calib),
            },
            "batch_size": getattr(self.train, "batch_size", None),
        }
