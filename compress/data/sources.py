"""In-memory data sources and the dispatch on a data argument.

* :func:`load_digits_task`: sklearn's bundled 8x8 digits (no download);
* :func:`load_npz_task`: an ``.npz`` with ``x``/``y`` arrays;
* :func:`load_task`: ``"digits"``, an ``.npz`` path, an image folder
  (:func:`compress.data.image_folder.load_image_folder_task`) or the caller's loaders
  (:func:`compress.data.adapters.as_task_data`).

Both in-memory sources hold their (small) arrays as tensors, normalised once; their loaders use
``num_workers=0`` (there is nothing to decode). Errors are :class:`compress.errors.DataError`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from compress.data.adapters import as_task_data
from compress.data.image_folder import load_image_folder_task
from compress.data.spec import DataSpec, TaskData
from compress.data.splits import (
    _channel_stats,
    _check_batch_size,
    _check_fraction,
    _check_labels,
    _make_loader,
    _normalize_,
    _resolve_norm,
    _split_indices,
    _stratified_subset,
)
from compress.errors import DataError

__all__ = ["load_digits_task", "load_npz_task", "load_task"]

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
    * a directory -> :func:`load_image_folder_task` (``model=`` a teacher spec or model reads it
      with the teacher's data config; ``image_size``, ``crop_pct``, ``interpolation``, ``mean``,
      ``std`` override it);
    * a TaskData / dict / tuple / loader -> :func:`as_task_data`.

    Only image folders take ``model``: digits and ``.npz`` arrays are used at their stored size.

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
