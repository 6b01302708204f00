"""Adapters for the caller's own data: :func:`make_task` and :func:`as_task_data` wrap datasets or
``DataLoader`` objects as a :class:`~compress.data.spec.TaskData` (a given ``DataLoader`` is used as
it is: its batch size, workers, sampler and collate function); :func:`collect` concatenates
(a bounded number of) batches.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from compress.data.spec import DataSpec, TaskData
from compress.data.splits import _check_batch_size, _check_fraction, _check_labels, _labels_of, _make_loader, _split_indices
from compress.errors import DataError

__all__ = ["make_task", "as_task_data", "collect", "iter_batches"]

_EXPECTED_TASK_INPUT = (
    "expected a TaskData, a dict {'train': loader, 'val': loader (optional), 'test': loader (optional)}, "
    "a (train, val[, test]) tuple, or a single DataLoader/Dataset yielding (x, y) batches"
)


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


def iter_batches(loader, role: str = "data") -> Iterator[tuple[Tensor, Tensor]]:
    """Yield the ``(x, y)`` batches of ``loader`` (a DataLoader, Dataset or iterable of batches),
    checked as :func:`collect` checks them, one at a time (nothing is accumulated): ``x`` a
    ``(B, ...)`` tensor (images ``(B, C, H, W)``), ``y`` a ``(B,)`` tensor of labels.

    Raises:
        DataError: batches are not ``(x, y)`` tensors (``role`` names the loader in the message).
    """
    if isinstance(loader, Dataset):  # map-style or iterable dataset of (x, y) samples
        loader = DataLoader(loader, batch_size=256, shuffle=False)
    if not isinstance(loader, Iterable):
        raise DataError(f"the '{role}' data must be a DataLoader or an iterable of (x, y) batches, got "
                        f"{type(loader).__name__}")
    for batch in loader:
        yield _unpack_batch(batch, role)


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
    xs, ys, n = [], [], 0
    for x, y in iter_batches(loader, "collect"):
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
