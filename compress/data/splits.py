"""Seeded, stratified splits and the small checks and tensor helpers every data source shares.

Splits are stratified by label when every class can be (sklearn's ``train_test_split``) and
seeded: same seed -> the same indices. Loaders built here shuffle the train split with a seeded
``torch.Generator``; val/test loaders do not shuffle.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from compress.errors import DataError

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
