"""Data sources for compression tasks: loaders plus a :class:`DataSpec` for reports.

Every loader function returns a :class:`TaskData` (train / val / optional test
``DataLoader`` objects and the spec). Conventions:

* batches are ``(x, y)``: ``x`` float32 ``(B, C, H, W)`` already normalised with
  ``spec.mean`` / ``spec.std`` (per channel, applied to values scaled to
  [0, 1]); ``y`` int64 ``(B,)`` class indices in ``[0, spec.num_classes)``;
* splits are stratified and seeded; the train loader shuffles with a seeded
  ``torch.Generator`` and ``num_workers=0``; val/test loaders do not shuffle.
  Same seed -> identical tensors and batch order.

Sources: :func:`load_digits_task` (sklearn's bundled 8x8 digits, no download),
:func:`load_npz_task` (``x``/``y`` arrays), :func:`load_image_folder_task`
(torchvision ``ImageFolder`` layout), :func:`load_task` (dispatch on a
string/path), :func:`make_task` / :func:`as_task_data` (wrap the caller's own
datasets or loaders). Errors are :class:`compress.errors.DataError`.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from compress.errors import DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataSpec",
    "TaskData",
    "load_digits_task",
    "load_npz_task",
    "load_image_folder_task",
    "load_task",
    "make_task",
    "as_task_data",
    "collect",
]

#: ImageNet channel statistics (RGB, for values in [0, 1]); pass them as
#: ``mean``/``std`` for teachers trained with them (e.g. the CIFAR ResNets).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_IMAGE_SPLIT_DIRS = {"train", "val", "valid", "validation", "test"}
_EXPECTED_TASK_INPUT = (
    "expected a TaskData, a dict {'train': loader, 'val': loader (optional), 'test': loader (optional)}, "
    "a (train, val[, test]) tuple, or a single DataLoader/Dataset yielding (x, y) batches"
)


# =========================================================================== spec / task


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
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None
    source: str = ""

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


# =========================================================================== helpers


def _check_fraction(name: str, value: float, *, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a number in (0, 1), got {value!r}") from None
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        rng = "[0, 1)" if allow_zero else "(0, 1)"
        raise DataError(f"{name} must be in {rng}, got {value}; e.g. 0.1 keeps 10% of the images for it")
    return value


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def _split_indices(
    labels: np.ndarray, fraction: float, seed: int, *, what: str = "split"
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``arange(len(labels))`` into (rest, part); part has ``fraction`` of the items.

    Stratified by ``labels`` when every class has at least 2 members and the
    part can hold one item per class; otherwise a plain seeded random split
    (with a warning). Both index arrays are sorted.
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    n_part = int(math.ceil(fraction * n))
    if n < 2 or n_part < 1 or n_part >= n:
        raise DataError(
            f"cannot carve a {what} of {fraction:.0%} from {n} sample(s); "
            "provide more data or change the fraction"
        )
    idx = np.arange(n)
    counts = np.bincount(labels.astype(np.int64)) if n else np.zeros(0)
    present = counts[counts > 0]
    stratify = labels if (present.min() >= 2 and len(present) <= n_part <= n - len(present)) else None
    if stratify is None:
        warnings.warn(
            f"{what}: too few samples per class for a stratified split; using a random split",
            stacklevel=3,
        )
    rest, part = train_test_split(idx, test_size=n_part, random_state=seed, shuffle=True, stratify=stratify)
    return np.sort(rest), np.sort(part)


def _stratified_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, stratified subset of ``limit`` items (all when limit >= n)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DataError(f"limit must be a positive int or None, got {limit!r}")
    n = len(labels)
    if limit >= n:
        return np.arange(n)
    _, keep = _split_indices(labels, limit / n, seed, what=f"subset of {limit}")
    return keep[:limit]


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population) of ``x`` ``(N, C, H, W)``, computed in float64."""
    x64 = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    mean = x64.mean(dim=1)
    std = x64.std(dim=1, unbiased=False).clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def _resolve_norm(
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    channels: int,
    computed: tuple[tuple[float, ...], tuple[float, ...]] | None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """User mean/std (broadcast from 1 value) or the computed ones; validated against ``channels``."""
    out = []
    for name, value, fallback in (("mean", mean, computed and computed[0]), ("std", std, computed and computed[1])):
        if value is None:
            if fallback is None:  # pragma: no cover - callers always pass computed when needed
                raise DataError(f"{name} is required")
            out.append(tuple(float(v) for v in fallback))
            continue
        try:
            vals = tuple(float(v) for v in (value if isinstance(value, Iterable) else [value]))
        except (TypeError, ValueError):
            raise DataError(f"{name} must be a sequence of floats (one per channel), got {value!r}") from None
        if len(vals) == 1 and channels > 1:
            vals = vals * channels
        if len(vals) != channels:
            raise DataError(
                f"{name} has {len(vals)} values but the images have {channels} channel(s); "
                f"pass one value per channel (or a single value for all)"
            )
        if name == "std" and min(vals) <= 0:
            raise DataError(f"std values must be > 0, got {vals}")
        out.append(vals)
    return out[0], out[1]


def _normalize_(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, **kw) -> DataLoader:
    gen = torch.Generator().manual_seed(int(seed)) if shuffle else None
    kw.setdefault("num_workers", 0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, **kw)


def _labels_of(dataset) -> np.ndarray | None:
    """Labels of a map-style dataset without loading images, when cheaply available."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return np.asarray(dataset.tensors[1].cpu().numpy()).reshape(-1)
    if isinstance(dataset, Subset):
        parent = _labels_of(dataset.dataset)
        return None if parent is None else parent[np.asarray(dataset.indices, dtype=np.int64)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        arr = np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets)
        if arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer):
            return arr
    return None


def _check_labels(y: np.ndarray, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be 1-D class indices (N,), got shape {tuple(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and y.size and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise DataError(
                f"{where}: labels must be integer class indices, got dtype {y.dtype}; "
                "convert one-hot/soft labels with argmax and store them as integers"
            )
    if y.size and y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {int(y.min())}; relabel classes as 0..K-1")
    return y.astype(np.int64)


# =========================================================================== digits


def load_digits_task(
    *,
    seed: int = 0,
    image_size: int = 32,
    batch_size: int = 64,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> TaskData:
    """sklearn's bundled 8x8 handwritten digits (1797 images, 10 classes) as an RGB-like task.

    Pixels (0..16) are scaled to [0, 1], bilinearly resized to
    ``image_size x image_size`` and replicated to 3 channels, so batches are
    ``x`` float32 ``(B, 3, image_size, image_size)``, ``y`` int64 ``(B,)``.
    Stratified seeded split: ``test_fraction`` of all images for test (0 ->
    ``test`` is None), ``val_fraction`` of all images for val, the rest train.
    Normalised with per-channel mean/std of the train split (stored in the spec).
    Everything is in memory; nothing is downloaded.

    Raises:
        DataError: fractions out of range, bad ``image_size`` or ``batch_size``.
    """
    from sklearn.datasets import load_digits

    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction, allow_zero=True)
    if val_fraction + test_fraction >= 1:
        raise DataError(
            f"val_fraction + test_fraction must be < 1 (got {val_fraction} + {test_fraction}); "
            "leave some images for training"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive int (pixels), got {image_size!r}")
    batch_size = _check_batch_size(batch_size)

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    if image_size != images.shape[-1]:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        images = images.clamp_(0.0, 1.0)
    x = images.expand(-1, 3, -1, -1).contiguous()
    y_np = bunch.target.astype(np.int64)

    all_idx = np.arange(len(y_np))
    if test_fraction > 0:
        trainval_idx, test_idx = _split_indices(y_np, test_fraction, seed, what="test split")
    else:
        trainval_idx, test_idx = all_idx, None
    rel_val = val_fraction / (1.0 - test_fraction)
    tr, va = _split_indices(y_np[trainval_idx], rel_val, seed, what="val split")
    train_idx, val_idx = trainval_idx[tr], trainval_idx[va]

    mean, std = _channel_stats(x[train_idx])
    x = _normalize_(x, mean, std)
    y = torch.from_numpy(y_np)

    def subset(idx: np.ndarray) -> TensorDataset:
        t = torch.from_numpy(idx)
        return TensorDataset(x[t].clone(), y[t].clone())

    spec = DataSpec(
        name="digits",
        num_classes=10,
        input_shape=(3, image_size, image_size),
        mean=mean,
        std=std,
        class_names=tuple(str(i) for i in range(10)),
        source="sklearn.datasets.load_digits",
    )
    return TaskData(
        train=_make_loader(subset(train_idx), batch_size, shuffle=True, seed=seed),
        val=_make_loader(subset(val_idx), batch_size, shuffle=False, seed=seed),
        test=None if test_idx is None else _make_loader(subset(test_idx), batch_size, shuffle=False, seed=seed),
        spec=spec,
    )


# =========================================================================== npz


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """``(x NHWC uint8|float, y int64 (N,), class names or None)`` from an npz file."""
    if not path.is_file():
        raise DataError(f"npz file '{path}' does not exist; pass the path of an .npz with arrays 'x' and 'y'")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(
            f"cannot read '{path}' as .npz ({type(exc).__name__}: {exc}); "
            "write it with np.savez(path, x=images, y=labels)"
        ) from exc
    with archive:
        keys = list(archive.files)
        for key, expected in (("x", "images uint8 (N, H, W, C) or (N, H, W)"), ("y", "integer labels (N,)")):
            if key not in keys:
                raise DataError(
                    f"npz file '{path}' has no array '{key}' (it has: {', '.join(keys) or 'nothing'}); "
                    f"expected '{key}' = {expected}"
                )
        try:
            x = archive["x"]
            y = archive["y"]
            classes = archive["classes"] if "classes" in keys else None
        except ValueError as exc:  # object arrays need pickle
            raise DataError(
                f"npz file '{path}' holds object arrays ({exc}); store plain numeric arrays "
                "x (uint8 NHWC) and y (integers)"
            ) from exc
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"npz array 'x' in '{path}' has dtype {x.dtype}; expected uint8 pixels 0..255 "
            "(or float already scaled to [0, 1])"
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(
            f"npz array 'x' in '{path}' has shape {x.shape}; expected (N, H, W, C) or (N, H, W) for grayscale"
        )
    if x.shape[-1] > 4:
        hint = (
            " -- it looks channels-first (N, C, H, W); store x.transpose(0, 2, 3, 1)"
            if x.shape[1] <= 4
            else ""
        )
        raise DataError(
            f"npz array 'x' in '{path}' has shape {x.shape} with {x.shape[-1]} channels last; "
            f"expected channels-last (N, H, W, C) with C <= 4{hint}"
        )
    y = _check_labels(np.asarray(y), f"npz array 'y' in '{path}'")
    if len(y) != len(x):
        raise DataError(
            f"npz file '{path}': 'x' has {len(x)} images but 'y' has {len(y)} labels; they must match"
        )
    if len(x) == 0:
        raise DataError(f"npz file '{path}' holds no images")
    names = None
    if classes is not None and classes.ndim == 1 and classes.dtype.kind in "US":
        names = tuple(str(c) for c in classes.tolist())
    return x, y, names


def _npz_to_tensor(x: np.ndarray) -> Tensor:
    """NHWC uint8/float numpy -> float32 NCHW tensor in [0, 1] (uint8 divided by 255)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    if x.dtype == np.uint8:
        return t.to(torch.float32).div_(255.0).contiguous()
    return t.to(torch.float32).contiguous()


def _check_finite(x: Tensor, path: Path) -> Tensor:
    """``x`` unchanged, or a :class:`DataError` when it holds NaN or infinite values (float npz)."""
    if x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            imgs = torch.nonzero(bad.flatten(1).any(dim=1)).flatten().tolist()
            raise DataError(
                f"npz array 'x' in '{path}' holds {int(bad.sum())} NaN or infinite value(s) in {len(imgs)} image(s) "
                f"(first: {imgs[:5]}); replace or drop them (e.g. np.nan_to_num, or x[np.isfinite(x).all(axis=(1, 2, 3))])"
            )
    return x


def load_npz_task(
    path: str | Path,
    *,
    seed: int = 0,
    batch_size: int = 64,
    val_fraction: float = 0.1,
    test_path: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    limit: int | None = None,
) -> TaskData:
    """Task from an ``.npz`` with ``x`` (uint8 ``(N, H, W, C)`` or ``(N, H, W)``) and ``y`` (``(N,)`` ints).

    Images are divided by 255 (float ``x`` is taken as already in [0, 1]) and
    normalised per channel with ``mean``/``std`` -- by default the statistics
    of the train split; pass e.g. :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD`
    for teachers trained with them. Channels are kept as stored
    (``(N, H, W)`` -> 1 channel). ``limit`` keeps a seeded stratified subset of
    ``limit`` images of ``path`` (``test_path`` is never subsampled) before the
    stratified seeded val split (``val_fraction``). An optional ``classes``
    string array becomes ``spec.class_names``.

    Classes: one output per distinct label. Labels that are not ``0..K-1``
    (e.g. ``0, 100000, ..., 900000``) are remapped to ``0..K-1`` in sorted
    order with a ``UserWarning`` (``spec.class_names`` then holds the original
    labels), rather than building a head with ``max + 1`` outputs. Float ``x``
    with NaN or infinite values is refused.

    Batches: ``x`` float32 ``(B, C, H, W)``, ``y`` int64 ``(B,)``.

    Raises:
        DataError: missing file, missing ``x``/``y`` key, wrong dtype or shape,
            NaN / infinite pixels, label problems, test images of another shape,
            bad mean/std.
    """
    path = Path(path).expanduser().resolve()  # absolute: the run identity must not depend on the cwd
    val_fraction = _check_fraction("val_fraction", val_fraction)
    batch_size = _check_batch_size(batch_size)
    x_np, y_np, names = _read_npz(path)
    if limit is not None:
        keep = _stratified_subset(y_np, limit, seed)
        x_np, y_np = x_np[keep], y_np[keep]
    train_idx, val_idx = _split_indices(y_np, val_fraction, seed, what="val split")

    x = _check_finite(_npz_to_tensor(x_np), path)
    del x_np
    channels = x.shape[1]
    computed = _channel_stats(x[torch.from_numpy(train_idx)]) if (mean is None or std is None) else None
    mean_t, std_t = _resolve_norm(mean, std, channels, computed)
    x = _normalize_(x, mean_t, std_t)
    y = torch.from_numpy(y_np)

    test_ds = None
    yt_np = None
    if test_path is not None:
        test_path = Path(test_path).expanduser().resolve()
        xt_np, yt_np, _ = _read_npz(test_path)
        if xt_np.shape[1:] != tuple(x.shape[2:]) + (channels,):
            raise DataError(
                f"test npz '{test_path}' images are {xt_np.shape[1:]} (H, W, C) but '{path}' images are "
                f"{tuple(x.shape[2:]) + (channels,)}; use test images of the same size and channels"
            )
        xt = _normalize_(_check_finite(_npz_to_tensor(xt_np), test_path), mean_t, std_t)
    num_classes = int(max(y_np.max(), -1 if yt_np is None else yt_np.max())) + 1
    if names is not None and len(names) >= num_classes:
        num_classes = len(names)
    else:
        names = None
        uniq = np.unique(y_np if yt_np is None else np.concatenate([y_np, yt_np]))
        if len(uniq) < num_classes:  # sparse labels (0, 100000, ...): one output per distinct label
            warnings.warn(
                f"labels in '{path}' take {len(uniq)} distinct values between {int(uniq[0])} and {int(uniq[-1])}, "
                f"not 0..{len(uniq) - 1}; remapped to 0..{len(uniq) - 1} in sorted order (spec.class_names holds the "
                f"original labels), so the head has {len(uniq)} outputs instead of {num_classes}. Store labels as "
                "0..K-1 to silence this warning.",
                UserWarning,
                stacklevel=2,
            )
            y = torch.from_numpy(np.searchsorted(uniq, y_np).astype(np.int64))
            if yt_np is not None:
                yt_np = np.searchsorted(uniq, yt_np).astype(np.int64)
            num_classes, names = len(uniq), tuple(str(int(v)) for v in uniq)
    if test_path is not None:
        test_ds = TensorDataset(xt, torch.from_numpy(yt_np))

    tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    spec = DataSpec(
        name=path.stem,
        num_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
        mean=mean_t,
        std=std_t,
        class_names=names,
        source=str(path) + (f" (test: {test_path})" if test_path is not None else ""),
    )
    return TaskData(
        train=_make_loader(TensorDataset(x[tr], y[tr]), batch_size, shuffle=True, seed=seed),
        val=_make_loader(TensorDataset(x[va], y[va]), batch_size, shuffle=False, seed=seed),
        test=None if test_ds is None else _make_loader(test_ds, batch_size, shuffle=False, seed=seed),
        spec=spec,
    )


# =========================================================================== image folder


_PIL_MODE = {1: "L", 3: "RGB"}


def _open_image(path: str, mode: str):
    """The image at ``path`` decoded and converted to ``mode``; a file that fails to decode (found
    after the header scan, e.g. corrupt in the middle) is a :class:`DataError` naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert(mode)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: UnidentifiedImageError, "image file is truncated"
        raise DataError(f"image '{path}' cannot be decoded ({type(exc).__name__}: {exc}); remove or replace it "
                        "and run again") from exc


def _truncated(path: str, fmt: str | None) -> bool:
    """Cheap truncation check from the file's last KiB: a JPEG ends with its EOI marker, a PNG with
    its IEND chunk (other formats: header only)."""
    marker = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(fmt or "")
    if marker is None:
        return False
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 1024))
        return marker not in f.read()


def _scan_images(datasets: Mapping[str, object], root: Path, check_sizes: bool) -> tuple[int, int] | None:
    """Read the header of every image (PIL ``Image.open`` decodes nothing) of every split.

    Returns the common ``(width, height)`` when ``check_sizes`` (else None).

    Raises:
        DataError: files that are not readable images (a text file named ``.png``, an empty or
            truncated JPEG/PNG), all listed; or, with ``check_sizes``, images of different sizes
            (the odd ones listed, with the CLI's ``--image-size`` / the API's ``image_size``).
    """
    from PIL import Image

    bad: list[str] = []
    sizes: dict[tuple[int, int], list[str]] = {}
    for ds in datasets.values():
        for path, _ in ds.samples:  # type: ignore[attr-defined]
            try:
                with Image.open(path) as im:
                    size, fmt = im.size, im.format
                if _truncated(path, fmt):
                    raise OSError(f"{fmt} file is truncated")
            except (OSError, SyntaxError, ValueError) as exc:
                bad.append(f"{path} ({type(exc).__name__}: {exc})")
                continue
            sizes.setdefault(size, []).append(path)
    if bad:
        shown = "; ".join(bad[:10]) + (f"; ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(f"{len(bad)} file(s) in '{root}' are not readable images: {shown}. Remove or replace them "
                        "(slimforge refuses rather than silently training on fewer images) and run again.")
    if not check_sizes or len(sizes) <= 1:
        return next(iter(sizes), None)
    common = max(sizes, key=lambda k: len(sizes[k]))
    odd = [f"{p} ({w}x{h})" for (w, h), ps in sizes.items() if (w, h) != common for p in ps]
    shown = ", ".join(odd[:10]) + (f", ... and {len(odd) - 10} more" if len(odd) > 10 else "")
    raise DataError(
        f"images in '{root}' have {len(sizes)} different sizes: most are {common[0]}x{common[1]} (W x H), but {shown}. "
        f"Resize them all: slimforge run --image-size {common[1]} (API: image_size={common[1]} or (H, W)), "
        "or make the files the same size."
    )


def _image_folder(root: Path, transform, what: str, channels: int = 3):
    import functools

    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(root), transform=transform, loader=functools.partial(_open_image, mode=_PIL_MODE[channels]))
    except (FileNotFoundError, OSError) as exc:
        raise DataError(
            f"{what} '{root}' is not a usable image folder ({exc}); expected one sub-folder per class "
            "holding image files (root/cat/001.png, root/dog/002.jpg, ...)"
        ) from exc


def _find_split_dirs(root: Path) -> dict[str, Path] | None:
    """``{"train": ..., "val": ..., "test": ...}`` when ``root`` uses a split layout, else None."""
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if "train" not in subdirs or not set(subdirs) <= _IMAGE_SPLIT_DIRS:
        return None
    out = {"train": subdirs["train"]}
    for alias in ("val", "valid", "validation"):
        if alias in subdirs:
            out["val"] = subdirs[alias]
            break
    if "test" in subdirs:
        out["test"] = subdirs["test"]
    return out


def load_image_folder_task(
    path: str | Path,
    *,
    seed: int = 0,
    batch_size: int = 64,
    val_fraction: float = 0.1,
    image_size: int | tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    limit: int | None = None,
    test_path: str | Path | None = None,
    stats_samples: int = 256,
    num_workers: int = 0,
    channels: int = 3,
) -> TaskData:
    """Task from a torchvision ``ImageFolder`` tree (one sub-folder per class).

    Layouts: ``path/<class>/*.png`` (val is a stratified seeded split of
    ``val_fraction``; no test), or ``path/train/<class>/...`` with optional
    ``path/val|valid|validation/...`` and ``path/test/...`` (the same class
    folders; without a val folder, val is split from train). ``test_path``
    (another class-folder tree with the same classes) is used as the test
    split and takes precedence over a ``test`` sub-folder.

    Every file's header is read first (PIL, nothing decoded): files that are
    not readable images (a text file named ``.png``, an empty or truncated
    JPEG/PNG) are **refused** with a :class:`DataError` that lists them all,
    rather than skipped, so that a run never trains on fewer images than the
    folder holds without saying so; remove or replace them. A file that still
    fails to decode later raises a :class:`DataError` naming it.

    Images are loaded as RGB (``channels=3``) or grayscale (``channels=1``; CLI
    ``--in-chans``), resized to ``image_size`` (int -> square; None keeps the
    file size, which must then be the same for all images: checked on every
    image's header, the odd ones listed), converted with ``ToTensor`` ([0, 1]) and normalised with
    ``mean``/``std``: by default the per-channel statistics of up to
    ``stats_samples`` seeded train images (pass :data:`IMAGENET_MEAN` /
    :data:`IMAGENET_STD` for ImageNet-pretrained teachers). ``limit`` keeps a
    stratified subset of the training images. Images are decoded lazily.

    Batches: ``x`` float32 ``(B, 3, H, W)``, ``y`` int64 ``(B,)``.

    Raises:
        DataError: not a directory, no class folders/images, files that are not
            readable images, mismatching class folders between splits, images of
            different sizes without ``image_size``, bad mean/std or ``channels``.
    """
    from torchvision import transforms as T

    root = Path(path).expanduser().resolve()  # absolute: the run identity must not depend on the cwd
    if not root.is_dir():
        raise DataError(f"image folder '{root}' is not a directory; pass a folder with one sub-folder per class")
    val_fraction = _check_fraction("val_fraction", val_fraction)
    batch_size = _check_batch_size(batch_size)
    if isinstance(channels, bool) or channels not in _PIL_MODE:
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB) for an image folder, got {channels!r} "
                        "(CLI: --in-chans 1 or 3)")

    base: list = []
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) and not isinstance(image_size, bool) else image_size
        try:
            size = tuple(int(v) for v in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            size = ()
        if len(size) != 2 or min(size) < 1:
            raise DataError(f"image_size must be a positive int or (H, W), got {image_size!r} (CLI: --image-size N)")
        base.append(T.Resize(size, antialias=True))
    base.append(T.ToTensor())
    base_tf = T.Compose(base)

    splits = _find_split_dirs(root)
    if test_path is not None:
        test_root = Path(test_path).expanduser().resolve()
        if not test_root.is_dir():
            raise DataError(
                f"test folder '{test_root}' is not a directory; pass a folder with the same class "
                "sub-folders as the training images"
            )
        splits = dict(splits or {"train": root})
        splits["test"] = test_root
    train_root = splits["train"] if splits else root
    train_full = _image_folder(train_root, base_tf, "image folder", channels)
    labels = np.asarray(train_full.targets, dtype=np.int64)
    pool = np.arange(len(labels))
    if limit is not None:
        pool = _stratified_subset(labels, limit, seed)

    extra: dict[str, object] = {}
    for key in ("val", "test"):
        if splits and key in splits:
            ds = _image_folder(splits[key], base_tf, f"{key} folder", channels)
            if ds.classes != train_full.classes:
                raise DataError(
                    f"{key} folder '{splits[key]}' has classes {ds.classes} but train has "
                    f"{train_full.classes}; give every split the same class sub-folders"
                )
            extra[key] = ds
    _scan_images({"train": train_full, **extra}, root, check_sizes=image_size is None)
    if "val" in extra:
        train_idx, val_idx = pool, None
    else:
        tr, va = _split_indices(labels[pool], val_fraction, seed, what="val split")
        train_idx, val_idx = pool[tr], pool[va]

    # statistics and a shape check on a seeded sample of training images
    rng = np.random.default_rng(seed)
    n_stat = min(len(train_idx), max(1, int(stats_samples)))
    sample_idx = rng.choice(train_idx, size=n_stat, replace=False)
    shapes = set()
    sample = []
    for i in sample_idx:
        img, _ = train_full[int(i)]
        shapes.add(tuple(img.shape))
        sample.append(img)
    if len(shapes) > 1:  # pragma: no cover - _scan_images checked every image's size
        raise DataError(
            f"images in '{root}' have different sizes {sorted(shapes)[:3]}...; resize them with --image-size N "
            "(API: image_size=N)"
        )
    input_shape = shapes.pop()
    computed = _channel_stats(torch.stack(sample)) if (mean is None or std is None) else None
    del sample
    mean_t, std_t = _resolve_norm(mean, std, input_shape[0], computed)

    full_tf = T.Compose([*base, T.Normalize(mean_t, std_t)])
    train_full.transform = full_tf
    for ds in extra.values():
        ds.transform = full_tf  # type: ignore[attr-defined]

    val_ds = extra["val"] if "val" in extra else Subset(train_full, val_idx.tolist())
    test_ds = extra.get("test")
    spec = DataSpec(
        name=root.name,
        num_classes=len(train_full.classes),
        input_shape=input_shape,
        mean=mean_t,
        std=std_t,
        class_names=tuple(train_full.classes),
        source=str(root),
    )
    kw = {"num_workers": int(num_workers)}
    return TaskData(
        train=_make_loader(Subset(train_full, train_idx.tolist()), batch_size, shuffle=True, seed=seed, **kw),
        val=_make_loader(val_ds, batch_size, shuffle=False, seed=seed, **kw),
        test=None if test_ds is None else _make_loader(test_ds, batch_size, shuffle=False, seed=seed, **kw),
        spec=spec,
    )


# =========================================================================== dispatch


def _call_with(fn, kw: dict) -> TaskData:
    params = inspect.signature(fn).parameters
    unknown = sorted(k for k in kw if k not in params)
    if unknown:
        allowed = ", ".join(n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
        raise DataError(f"{fn.__name__} does not take {', '.join(unknown)}; its options are: {allowed}")
    return fn(**kw)


def load_task(source: str | Path | None = None, **kw) -> TaskData:
    """Load a task from ``source``, passing ``kw`` to the matching loader.

    * ``None`` or ``"digits"`` -> :func:`load_digits_task`;
    * a ``*.npz`` file -> :func:`load_npz_task`;
    * a directory -> :func:`load_image_folder_task`;
    * a TaskData / dict / tuple / loader -> :func:`as_task_data`.

    Raises:
        DataError: unknown source, missing path, unsupported file type, or
            options the selected loader does not take.
    """
    if source is None or (isinstance(source, str) and source.strip().lower() == "digits"):
        return _call_with(load_digits_task, kw)
    if not isinstance(source, (str, Path)):
        return _call_with(as_task_data, {"data": source, **kw})
    path = Path(source).expanduser()
    if path.is_dir():
        return _call_with(load_image_folder_task, {"path": path, **kw})
    if path.suffix.lower() == ".npz":
        if not path.exists():
            raise DataError(f"npz file '{path}' does not exist; check the path")
        return _call_with(load_npz_task, {"path": path, **kw})
    if not path.exists():
        raise DataError(
            f"data source '{source}' does not exist; pass 'digits', an .npz file (x, y arrays) "
            "or an image folder with one sub-folder per class"
        )
    raise DataError(
        f"unsupported data file '{path}' (suffix '{path.suffix}'); pass 'digits', an .npz file "
        "with arrays x (N,H,W[,C] uint8) and y (N,), or an image folder with one sub-folder per class"
    )


# =========================================================================== wrapping


def _is_loaderish(obj) -> bool:
    return isinstance(obj, (DataLoader, Dataset))


def _loader_kwargs(loader: DataLoader) -> dict:
    return {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
    }


def _as_loader(obj, role: str, batch_size: int, seed: int) -> DataLoader | None:
    if obj is None:
        return None
    if isinstance(obj, DataLoader):
        return obj
    if isinstance(obj, Dataset):
        return _make_loader(obj, batch_size, shuffle=(role == "train"), seed=seed)
    raise DataError(f"'{role}' is a {type(obj).__name__}, not a DataLoader or Dataset; {_EXPECTED_TASK_INPUT}")


def make_task(
    train: Dataset | DataLoader,
    val: Dataset | DataLoader | None = None,
    test: Dataset | DataLoader | None = None,
    *,
    spec: DataSpec,
    seed: int = 0,
    val_fraction: float = 0.15,
    batch_size: int = 64,
    calib: Dataset | DataLoader | None = None,
) -> TaskData:
    """Wrap the caller's datasets/loaders as a :class:`TaskData`.

    Datasets are wrapped in loaders (``batch_size``; train shuffled with a
    seeded generator); loaders are used as given. When ``val`` is None,
    ``val_fraction`` of ``train``'s dataset is split off (seeded, stratified
    when labels are cheaply available: ``TensorDataset``, ``.targets``,
    ``Subset`` of those), and new loaders with the original loader's batch size,
    collate_fn and workers are built.

    Raises:
        DataError: ``spec`` is not a DataSpec, an argument is not a
            Dataset/DataLoader, or val is missing and train cannot be split
            (iterable dataset).
    """
    if not isinstance(spec, DataSpec):
        raise DataError(f"spec must be a DataSpec, got {type(spec).__name__}; build one with DataSpec(...)")
    batch_size = _check_batch_size(batch_size)
    if val is None:
        val_fraction = _check_fraction("val_fraction", val_fraction)
        if not _is_loaderish(train):
            raise DataError(f"'train' is a {type(train).__name__}; {_EXPECTED_TASK_INPUT}")
        dataset = train.dataset if isinstance(train, DataLoader) else train
        if isinstance(dataset, IterableDataset):
            raise DataError(
                "cannot split a validation set off an IterableDataset; pass val= explicitly "
                "(a DataLoader or map-style Dataset)"
            )
        kw: dict = {}
        if isinstance(train, DataLoader):
            kw = _loader_kwargs(train)
            batch_size = train.batch_size or batch_size
        labels = _labels_of(dataset)
        n = len(dataset)
        if labels is not None and len(labels) == n:
            tr, va = _split_indices(labels, val_fraction, seed, what="val split")
        else:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
            n_val = int(math.ceil(val_fraction * n))
            if n_val < 1 or n_val >= n:
                raise DataError(f"cannot split {n} sample(s) into train/val with val_fraction={val_fraction}")
            tr, va = np.sort(perm[n_val:]), np.sort(perm[:n_val])
        train_loader = _make_loader(Subset(dataset, tr.tolist()), batch_size, shuffle=True, seed=seed, **kw)
        val_loader = _make_loader(Subset(dataset, va.tolist()), batch_size, shuffle=False, seed=seed, **kw)
    else:
        train_loader = _as_loader(train, "train", batch_size, seed)
        val_loader = _as_loader(val, "val", batch_size, seed)
    return TaskData(
        train=train_loader,  # type: ignore[arg-type]
        val=val_loader,  # type: ignore[arg-type]
        test=_as_loader(test, "test", batch_size, seed),
        spec=spec,
        calib=_as_loader(calib, "calib", batch_size, seed),
    )


def _first_batch(loader: DataLoader, role: str) -> tuple[Tensor, Tensor]:
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise DataError(f"the '{role}' loader yields no batches; give it at least one sample") from None
    return _unpack_batch(batch, role)


def _unpack_batch(batch, role: str) -> tuple[Tensor, Tensor]:
    if isinstance(batch, Mapping):
        raise DataError(
            f"the '{role}' loader yields dict batches (keys {list(batch)[:4]}); "
            "slimforge expects (x, y) tuples: images (B, C, H, W) and integer labels (B,)"
        )
    if not isinstance(batch, Sequence) or len(batch) < 2:
        raise DataError(
            f"the '{role}' loader yields {type(batch).__name__} batches; expected (x, y) tuples: "
            "images (B, C, H, W) and integer labels (B,)"
        )
    x, y = batch[0], batch[1]
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise DataError(
            f"the '{role}' loader yields ({type(x).__name__}, {type(y).__name__}); "
            "expected tensors: images (B, C, H, W) and integer labels (B,)"
        )
    return x, y


def _all_labels(loader: DataLoader, role: str) -> np.ndarray:
    labels = _labels_of(loader.dataset) if not isinstance(loader.dataset, IterableDataset) else None
    if labels is None:
        labels = np.concatenate([_unpack_batch(b, role)[1].cpu().numpy().reshape(-1) for b in loader])
    return _check_labels(labels, f"'{role}' labels")


def as_task_data(
    data,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    batch_size: int = 64,
) -> TaskData:
    """Coerce ``data`` into a :class:`TaskData`.

    Accepts a TaskData (returned unchanged); a dict with ``"train"`` and
    optional ``"val"`` (or ``"valid"``/``"validation"``), ``"test"``,
    ``"calib"``, ``"spec"`` (a DataSpec); a ``(train[, val[, test]])``
    tuple/list; or a single DataLoader/Dataset used as train. Values may be
    DataLoaders or map-style Datasets yielding ``(x, y)``. A missing val is
    split off train (see :func:`make_task`).

    Without a given spec it is inferred: ``input_shape`` from the first train
    batch (``x`` must be ``(B, C, H, W)``), ``num_classes`` = max label + 1 over
    train/val/test (labels read from the dataset when cheap, else by iterating
    the loaders once); ``mean``/``std`` are empty (unknown: the loaders
    normalise); ``name`` is ``"custom"``. Labels that skip values (some of
    ``0..max`` never occur) warn; sparse labels (fewer than half of ``0..max``
    occur, e.g. ``0, 100000, ...``) are a :class:`DataError`, since labels
    inside the caller's loaders cannot be remapped here.

    Raises:
        DataError: anything else (message says what is expected), bad batches
            or labels.
    """
    if isinstance(data, TaskData):
        return data
    spec = None
    calib = None
    if isinstance(data, Mapping):
        allowed = {"train", "val", "valid", "validation", "test", "calib", "spec"}
        unknown = sorted(map(str, set(data) - allowed))
        if unknown or "train" not in data:
            problem = f"unknown key(s) {unknown}" if unknown else "no 'train' entry"
            raise DataError(f"data dict has {problem}; {_EXPECTED_TASK_INPUT} (optional 'calib', 'spec')")
        train = data["train"]
        val = next((data[k] for k in ("val", "valid", "validation") if data.get(k) is not None), None)
        test = data.get("test")
        calib = data.get("calib")
        spec = data.get("spec")
        if spec is not None and not isinstance(spec, DataSpec):
            raise DataError(f"data['spec'] must be a DataSpec, got {type(spec).__name__}")
    elif isinstance(data, (tuple, list)) and 1 <= len(data) <= 3 and _is_loaderish(data[0]):
        train, val, test = (list(data) + [None, None])[:3]
    elif _is_loaderish(data):
        train, val, test = data, None, None
    else:
        raise DataError(f"cannot use {type(data).__name__} as task data; {_EXPECTED_TASK_INPUT}")

    for role, obj in (("train", train), ("val", val), ("test", test), ("calib", calib)):
        if obj is not None and not _is_loaderish(obj):
            raise DataError(f"'{role}' is a {type(obj).__name__}; {_EXPECTED_TASK_INPUT}")

    if spec is None:
        probe = _as_loader(train, "train", batch_size, seed)
        x, _ = _first_batch(probe, "train")  # type: ignore[arg-type]
        if x.ndim != 4:
            raise DataError(
                f"train batches hold x of shape {tuple(x.shape)}; expected images (B, C, H, W) -- "
                "add the channel dimension (x.unsqueeze(1) for grayscale)"
            )
        max_label = -1
        distinct: set[int] = set()
        for role, obj in (("train", train), ("val", val), ("test", test)):
            loader = _as_loader(obj, role, batch_size, seed)
            if loader is not None:
                labels = _all_labels(loader, role)
                if labels.size:
                    max_label = max(max_label, int(labels.max()))
                    distinct.update(np.unique(labels).tolist())
        if max_label < 0:
            raise DataError("no labels found in the train/val/test data; loaders must yield (x, y) with y (B,)")
        if len(distinct) < max_label + 1:  # labels inside the caller's loaders cannot be remapped here
            msg = (f"the labels take {len(distinct)} distinct values between {min(distinct)} and {max_label}, so a head "
                   f"of {max_label + 1} outputs would be built; relabel them 0..{len(distinct) - 1} "
                   "(np.unique(y, return_inverse=True)) or pass spec=DataSpec(num_classes=...)")
            if max_label + 1 > 2 * len(distinct):
                raise DataError(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
        spec = DataSpec(
            name="custom",
            num_classes=max_label + 1,
            input_shape=tuple(x.shape[1:]),
            mean=(),
            std=(),
            source="in-memory loaders",
        )
    return make_task(
        train, val, test, spec=spec, seed=seed, val_fraction=val_fraction, batch_size=batch_size, calib=calib
    )


def collect(loader, max_samples: int | None = None) -> tuple[Tensor, Tensor]:
    """Concatenate ``(x, y)`` batches of ``loader`` (a DataLoader, Dataset or iterable of batches).

    Returns:
        ``x`` ``(N, ...)`` and ``y`` ``(N,)`` tensors, N = all samples or at
        most ``max_samples`` (the first ones in loader order).

    Raises:
        DataError: batches are not ``(x, y)`` tensors, or the loader is empty.
    """
    if max_samples is not None and (isinstance(max_samples, bool) or int(max_samples) < 1):
        raise DataError(f"max_samples must be a positive int or None, got {max_samples!r}")
    if isinstance(loader, Dataset):  # map-style or iterable dataset of (x, y) samples
        loader = DataLoader(loader, batch_size=256, shuffle=False)
    if not isinstance(loader, Iterable):
        raise DataError(f"collect() needs a DataLoader or iterable of (x, y) batches, got {type(loader).__name__}")
    xs, ys, n = [], [], 0
    for batch in loader:
        x, y = _unpack_batch(batch, "collect")
        xs.append(x)
        ys.append(y)
        n += len(x)
        if max_samples is not None and n >= max_samples:
            break
    if not xs:
        raise DataError("collect(): the loader yielded no batches; check that its dataset is not empty")
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    if max_samples is not None:
        x_all, y_all = x_all[: int(max_samples)], y_all[: int(max_samples)]
    return x_all, y_all
