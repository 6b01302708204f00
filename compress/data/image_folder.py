"""Image folders (torchvision ``ImageFolder`` layout) read lazily, with the teacher's data config.

The datasets hold file paths, never decoded images: every image is decoded, resized, cropped and
normalised when a batch asks for it, in the ``DataLoader``'s worker processes when it has any
(:func:`auto_num_workers`). Only bounded, seeded samples are decoded up front: ``stats_samples``
images for the statistics and the shape check, and the calibration subset is a view of at most
``calib_samples`` training files.

Two pipelines (see :mod:`compress.data.transforms`):

* the teacher's data config (a ``timm:`` / ``torchvision:`` teacher, or ``interpolation`` /
  ``crop_pct`` given): eval = resize by ``crop_pct`` and center crop, train = ``RandomResizedCrop``
  and flip; the aspect ratio is kept;
* the legacy path (``cifar:`` teachers, the caller's modules): every image resized straight to
  ``image_size`` (or used at its stored size), ``ToTensor``, normalised; train = eval. This is the
  behaviour before issue 17, unchanged.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from compress.data.spec import DataSpec, TaskData
from compress.data.splits import (
    _channel_stats,
    _check_batch_size,
    _check_fraction,
    _make_loader,
    _resolve_norm,
    _split_indices,
    _stratified_subset,
)
from compress.data.transforms import (
    SAMPLED,
    build_transforms,
    describe,
    legacy_preprocess,
    resolve_data_config,
    stats_transform,
    user_preprocess,
)
from compress.errors import DataError

__all__ = ["load_image_folder_task", "auto_num_workers", "AUTO_WORKERS_MIN_IMAGES"]

_IMAGE_SPLIT_DIRS = {"train", "val", "valid", "validation", "test"}

#: Folders with fewer images than this are decoded in the main process by default: starting worker
#: processes costs more than decoding a few hundred files.
AUTO_WORKERS_MIN_IMAGES = 512


def auto_num_workers(num_images: int) -> int:
    """The default ``num_workers`` of an image folder's loaders: ``min(4, os.cpu_count())`` worker
    processes decode the images (CPUs: those this process may run on), or 0 (in-process) for fewer than :data:`AUTO_WORKERS_MIN_IMAGES`
    images. In-memory sources (digits, .npz) always use 0."""
    if num_images < AUTO_WORKERS_MIN_IMAGES:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))  # the CPUs this process may run on (taskset, cgroups)
    except AttributeError:  # pragma: no cover - macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


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
    from torchvision.datasets import ImageFolder  # optional heavy dependency, only for image folders

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


def _sample_stats(dataset, indices: np.ndarray, transform) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``transform``-ed images of ``dataset`` at ``indices``,
    accumulated in float64 one image at a time (memory: one image)."""
    ds = copy.copy(dataset)
    ds.transform = transform
    total = sq = None
    count = 0
    for i in indices:
        img, _ = ds[int(i)]
        x = img.double().flatten(1)
        total = x.sum(1) if total is None else total + x.sum(1)
        sq = (x * x).sum(1) if sq is None else sq + (x * x).sum(1)
        count += x.shape[1]
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def _checked_workers(num_workers: int | None, n: int) -> int:
    if num_workers is None:
        return auto_num_workers(n)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DataError(f"num_workers must be an int >= 0 or None (automatic), got {num_workers!r}")
    return num_workers


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
    num_workers: int | None = None,
    channels: int = 3,
    model: Any = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    calib_samples: int = 256,
) -> TaskData:
    """Task from a torchvision ``ImageFolder`` tree (one sub-folder per class), read lazily.

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

    Preprocessing (issue 17; :mod:`compress.data.transforms`), recorded in ``spec.preprocess``:

    * ``model`` with a data config (``"timm:NAME"``, ``"torchvision:NAME"``, a timm model, a
      torchvision weights enum), or ``interpolation`` / ``crop_pct`` given: the teacher's
      config, each field overridable by ``image_size`` (int -> square, or ``(H, W)``),
      ``interpolation``, ``crop_pct``, ``mean``, ``std``. Eval (val, test, calib): resize by
      ``crop_pct`` and center crop, aspect ratio kept; train: ``RandomResizedCrop`` + flip.
      Without a teacher config, timm's defaults fill what is not given (224, bilinear, 0.875)
      and ``mean``/``std`` are sampled from the data.
    * ``train_transform`` / ``eval_transform``: the caller's own (PIL image -> float tensor
      ``(C, H, W)``, normalised); ``eval_transform`` alone serves both. ``mean``/``std`` are then
      only recorded. Exclusive with ``model``/``image_size``/``interpolation``/``crop_pct``.
    * otherwise (``model`` None, ``cifar:``, the caller's module) the legacy path, unchanged:
      every image resized straight to ``image_size`` (None keeps the file size, which must then
      be the same for all images: checked on every header, the odd ones listed), ``ToTensor``,
      normalised with ``mean``/``std``; train images are not augmented here.

    ``mean``/``std`` not given and not in the teacher's config: the per-channel statistics of up
    to ``stats_samples`` seeded training images. Images are RGB (``channels=3``) or grayscale
    (``channels=1``; CLI ``--in-chans``). ``limit`` keeps a stratified subset of the training
    images. ``calib`` (teacher-config and own-transform pipelines): at most ``calib_samples``
    training images (a seeded stratified pick, in seeded random order) with the eval transform.

    Loaders: ``num_workers`` worker processes decode the images (None: :func:`auto_num_workers`
    of the folder's image count: 0 below 512 images, else ``min(4, os.cpu_count())``).

    Batches: ``x`` float32 ``(B, C, H, W)``, ``y`` int64 ``(B,)``.

    Raises:
        DataError: not a directory, no class folders/images, files that are not
            readable images, mismatching class folders between splits, images of
            different sizes without ``image_size`` (legacy path), bad mean/std, ``channels``,
            ``interpolation``, ``crop_pct``, ``num_workers`` or conflicting options.
    """
    from torchvision import transforms as T  # optional heavy dependency, only for image folders

    root = Path(path).expanduser().resolve()  # absolute: the run identity must not depend on the cwd
    if not root.is_dir():
        raise DataError(f"image folder '{root}' is not a directory; pass a folder with one sub-folder per class")
    val_fraction = _check_fraction("val_fraction", val_fraction)
    batch_size = _check_batch_size(batch_size)
    if isinstance(channels, bool) or channels not in _PIL_MODE:
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB) for an image folder, got {channels!r} "
                        "(CLI: --in-chans 1 or 3)")
    _checked_workers(num_workers, 0)
    if isinstance(calib_samples, bool) or not isinstance(calib_samples, int) or calib_samples < 1:
        raise DataError(f"calib_samples must be a positive int, got {calib_samples!r}")
    own = train_transform is not None or eval_transform is not None
    if own:
        given = [n for n, v in (("model", model), ("image_size", image_size), ("interpolation", interpolation),
                                ("crop_pct", crop_pct)) if v is not None]
        if given:
            raise DataError(f"pass either your own train_transform/eval_transform or {', '.join(given)}, not both: "
                            "your transforms decide the size, crop and interpolation")
        for name, tf in (("train_transform", train_transform), ("eval_transform", eval_transform)):
            if tf is not None and not callable(tf):
                raise DataError(f"{name} must be callable (PIL image -> tensor (C, H, W)), got {type(tf).__name__}")
        cfg = None
    else:
        cfg = resolve_data_config(model, channels=channels, image_size=image_size, interpolation=interpolation,
                                  crop_pct=crop_pct, mean=mean, std=std)
    legacy = cfg is None and not own

    base: list = []
    if legacy and image_size is not None:
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
    _scan_images({"train": train_full, **extra}, root, check_sizes=legacy and image_size is None)
    if "val" in extra:
        train_idx, val_idx = pool, None
    else:
        tr, va = _split_indices(labels[pool], val_fraction, seed, what="val split")
        train_idx, val_idx = pool[tr], pool[va]

    # statistics and a shape check on a seeded sample of training images
    rng = np.random.default_rng(seed)
    n_stat = min(len(train_idx), max(1, int(stats_samples)))
    sample_idx = rng.choice(train_idx, size=n_stat, replace=False)
    if legacy:
        input_shape, mean_t, std_t, eval_tf = _legacy_norm(train_full, sample_idx, base, mean, std, root)
        train_tf = eval_tf
        preprocess = legacy_preprocess(input_shape, image_size, mean_t, std_t, user_norm=mean is not None and std is not None,
                                       eval_tf=eval_tf)
    elif cfg is not None:
        if cfg.values["mean"] is None or cfg.values["std"] is None:
            sampled = _sample_stats(train_full, sample_idx, stats_transform(cfg))
            for k, v in zip(("mean", "std"), sampled):
                if cfg.values[k] is None:
                    cfg.values[k] = v
                    cfg.field_sources[k] = SAMPLED
        c = int(cfg.values["input_size"][0])
        mean_t, std_t = _resolve_norm(cfg.values["mean"], cfg.values["std"], c, None)
        cfg.values["mean"], cfg.values["std"] = mean_t, std_t
        train_tf, eval_tf = build_transforms(cfg)
        input_shape = _shape_of(train_full, sample_idx[:1], eval_tf, root)
        preprocess = describe(cfg, train_tf, eval_tf)
    else:
        eval_tf = eval_transform if eval_transform is not None else train_transform
        train_tf = train_transform if train_transform is not None else eval_transform
        input_shape = _shape_of(train_full, sample_idx, eval_tf, root)
        mean_t = std_t = ()
        if mean is not None and std is not None:
            mean_t, std_t = _resolve_norm(mean, std, input_shape[0], None)
        preprocess = user_preprocess(input_shape, mean_t, std_t, train_tf, eval_tf)

    train_full.transform = train_tf
    eval_full = copy.copy(train_full)  # the same file list, read with the eval transform
    eval_full.transform = eval_tf
    for ds in extra.values():
        ds.transform = eval_tf  # type: ignore[attr-defined]

    val_ds = extra["val"] if "val" in extra else Subset(eval_full, val_idx.tolist())
    test_ds = extra.get("test")
    calib_ds = None
    if not legacy:
        # a stratified seeded pick in seeded random order: consumers take the first k samples of this
        # unshuffled loader (gp-prune's calibration), which must not all be of the first class
        pick = train_idx[_stratified_subset(labels[train_idx], min(len(train_idx), calib_samples), seed)]
        calib_ds = Subset(eval_full, np.random.default_rng([seed, 1]).permutation(pick).tolist())
    spec = DataSpec(
        name=root.name,
        num_classes=len(train_full.classes),
        input_shape=input_shape,
        mean=mean_t,
        std=std_t,
        class_names=tuple(train_full.classes),
        source=str(root),
        preprocess=preprocess,
    )
    n_images = len(train_full) + sum(len(d) for d in extra.values())  # type: ignore[arg-type]
    kw = {"num_workers": _checked_workers(num_workers, n_images)}
    return TaskData(
        train=_make_loader(Subset(train_full, train_idx.tolist()), batch_size, shuffle=True, seed=seed, **kw),
        val=_make_loader(val_ds, batch_size, shuffle=False, seed=seed, **kw),
        test=None if test_ds is None else _make_loader(test_ds, batch_size, shuffle=False, seed=seed, **kw),
        spec=spec,
        calib=None if calib_ds is None else _make_loader(calib_ds, batch_size, shuffle=False, seed=seed, **kw),
    )


def _legacy_norm(train_full, sample_idx: np.ndarray, base: list, mean, std, root: Path):
    """Legacy path: shape check and (unless given) statistics on the decoded sample; returns
    ``(input_shape, mean, std, eval transform)``."""
    from torchvision import transforms as T  # optional heavy dependency, only for image folders

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
    return input_shape, mean_t, std_t, T.Compose([*base, T.Normalize(mean_t, std_t)])


def _shape_of(dataset, indices: np.ndarray, transform, root: Path) -> tuple[int, int, int]:
    """The ``(C, H, W)`` that ``transform`` makes of the images at ``indices`` (all the same, or a DataError)."""
    ds = copy.copy(dataset)
    ds.transform = transform
    shapes = set()
    for i in indices:
        img, _ = ds[int(i)]
        if not isinstance(img, torch.Tensor) or img.ndim != 3:
            raise DataError(f"the transform makes {type(img).__name__} of shape {tuple(getattr(img, 'shape', ()))} "
                            "from an image; it must return a float tensor (C, H, W)")
        shapes.add(tuple(int(v) for v in img.shape))
    if len(shapes) != 1:
        raise DataError(f"the transform makes images of {len(shapes)} different shapes from '{root}' "
                        f"({sorted(shapes)[:3]}); resize and crop to one size")
    return shapes.pop()  # type: ignore[return-value]
