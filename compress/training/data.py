"""Training batches: vectorised augmentation in the DataLoader (workers), seeded and resumable.

``"flip-crop"`` is the standard CIFAR recipe (He et al. 2016, §4.2): pad 4 pixels with zeros,
take a random ``H x W`` crop, flip horizontally with probability 0.5. It runs on the whole batch
at once (one gather, no per-sample Python loop) inside the loader's ``collate_fn``, so with
``num_workers > 0`` it runs in the worker processes, off the training step.

Randomness: in the training process the augmentation draws from a generator that the loop
reseeds at every epoch from ``(seed, epoch)`` (:meth:`AugmentCollate.reseed`); in a worker it
draws from a generator seeded once from the worker's own seed (which the loader derives from its
shuffling generator, stored in every checkpoint). Either way a resumed run sees the batches of the
uninterrupted one. The results depend on ``num_workers`` (as any worker-seeded pipeline's do).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.dataloader import default_collate
from torch.utils.data.distributed import DistributedSampler

from compress.errors import ConfigError, DataError

__all__ = ["AUGMENTATIONS", "flip_crop", "augment_batch", "AugmentCollate", "derive_seed", "Cycle", "split_dataset",
           "training_loader"]

AUGMENTATIONS = ("none", "flip-crop")


def derive_seed(seed: int, *keys: Any) -> int:
    """A stable 31-bit seed from the run seed and keys (e.g. ``("w-loader", epoch)``): SHA-256 of
    their ``repr``, so it depends on nothing but its arguments."""
    h = hashlib.sha256(repr((int(seed),) + tuple(keys)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def flip_crop(x: torch.Tensor, generator: torch.Generator | None, pad: int = 4) -> torch.Tensor:
    """Random pad-``pad`` crop and horizontal flip of a batch ``(B, C, H, W)`` (vectorised).

    The offsets ``dy, dx ~ U{0..2 pad}`` and the flips ``~ Bernoulli(0.5)`` are drawn from
    ``generator`` (on the CPU) in that order; the output has ``x``'s shape, dtype and device.
    """
    b, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    padded = F.pad(x, (pad, pad, pad, pad))
    dev = x.device
    rows = (dy.to(dev)[:, None] + torch.arange(h, device=dev)[None, :])  # (B, H)
    cols = torch.arange(w, device=dev)[None, :].expand(b, w)
    cols = torch.where(flip.to(dev)[:, None], cols.flip(-1), cols) + dx.to(dev)[:, None]  # (B, W)
    bi = torch.arange(b, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    """Train-time augmentation of a normalised batch ``(B, C, H, W)``: ``"none"`` returns ``x``,
    ``"flip-crop"`` is :func:`flip_crop`.

    Raises:
        ConfigError: an unknown ``kind``.
    """
    if kind == "none":
        return x
    if kind == "flip-crop":
        return flip_crop(x, generator)
    raise ConfigError(f"unknown augmentation {kind!r}; choose one of {AUGMENTATIONS}.")


class AugmentCollate:
    """``collate_fn`` that collates with ``base`` and augments the images of the batch.

    Picklable (so it runs in worker processes). See the module docstring for its randomness.
    """

    def __init__(self, kind: str, seed: int, base: Callable[[list], Any] | None = None) -> None:
        if kind not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {kind!r}; choose one of {AUGMENTATIONS}.")
        self.kind, self.seed = kind, int(seed)
        self.base = base or default_collate
        self.generator = torch.Generator().manual_seed(derive_seed(self.seed, "augment", 0))
        self._worker_seeded = False

    def reseed(self, epoch: int) -> None:
        """Restart the in-process stream for ``epoch`` (0-based)."""
        self.generator.manual_seed(derive_seed(self.seed, "augment", int(epoch)))

    def __call__(self, samples: list) -> Any:
        batch = self.base(samples)
        if self.kind == "none":
            return batch
        info = torch.utils.data.get_worker_info()
        if info is not None and not self._worker_seeded:
            self.generator.manual_seed(derive_seed(self.seed, "augment-worker", int(info.seed)))
            self._worker_seeded = True
        x, *rest = batch
        return (augment_batch(x, self.kind, self.generator), *rest)


class Cycle:
    """A persistent iterator over a seeded shuffling loader, reseeded per epoch and restarted when
    exhausted (the weight / architecture halves of a supernet search draw from two of these)."""

    def __init__(self, ds: Dataset, batch_size: int) -> None:
        self.gen = torch.Generator()
        self.loader = DataLoader(ds, batch_size=batch_size, shuffle=True, generator=self.gen, num_workers=0)
        self.it: Iterator | None = None

    def reseed(self, seed: int) -> None:
        self.gen.manual_seed(seed)
        self.it = iter(self.loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.it is None:
            self.it = iter(self.loader)
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            batch = next(self.it)
        return batch[0], batch[1]


def split_dataset(ds: Dataset, portion: float, seed: int, *, who: str, min_samples: int = 4) -> tuple[Subset, Subset]:
    """Seeded split of ``ds`` into (first part with ``portion`` of the samples, the rest).

    Raises:
        DataError: fewer than ``min_samples`` samples.
    """
    n = len(ds)  # type: ignore[arg-type]
    if n < min_samples:
        raise DataError(f"{who} needs at least {min_samples} training samples to split, got {n}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "split"))).tolist()
    k = min(max(1, int(round(portion * n))), n - 1)
    return Subset(ds, perm[:k]), Subset(ds, perm[k:])


def training_loader(loader: DataLoader, *, augment: str = "none", seed: int = 0, num_workers: int = 0,
                    pin_memory: bool = False, persistent_workers: bool = False, world_size: int = 1,
                    rank: int = 0) -> tuple[DataLoader, AugmentCollate | None]:
    """The loader a training phase iterates: ``loader``'s dataset, order and batch size, with the
    augmentation in its ``collate_fn`` and the runtime's worker settings.

    With ``world_size > 1`` the samples are sharded with a :class:`DistributedSampler` (shuffled
    with a seed drawn from ``loader``'s own generator, ``set_epoch`` per epoch) and each rank gets
    ``batch_size // world_size`` samples a step, so the global batch stays ``loader.batch_size``.
    A last batch of one sample is dropped (BatchNorm cannot train on it).

    Returns ``(loader, collate)``; ``collate`` is None when ``loader`` is used as it is (a loader
    that is not a plain map-style ``DataLoader``, or nothing to change).

    Raises:
        ConfigError: a global batch size that the world size does not divide.
    """
    ds = getattr(loader, "dataset", None)
    bs = getattr(loader, "batch_size", None)
    plain = isinstance(loader, DataLoader) and ds is not None and bs is not None and hasattr(ds, "__len__")
    if not plain:
        if augment != "none" or world_size > 1:
            raise ConfigError("augmentation and data-parallel training need a map-style torch DataLoader with a "
                              f"batch_size (got {type(loader).__name__}); pass one, or augment='none' and devices=1.")
        return loader, None
    n = len(ds)
    drop_last = bool(loader.drop_last) or (n % bs == 1 and n > 1)
    changed = augment != "none" or num_workers != loader.num_workers or world_size > 1 or drop_last != loader.drop_last
    if not changed:
        return loader, None
    collate = AugmentCollate(augment, seed, base=loader.collate_fn)
    gen = getattr(loader, "generator", None)
    kwargs: dict[str, Any] = dict(num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate,
                                  persistent_workers=persistent_workers and num_workers > 0)
    if world_size > 1:
        if bs % world_size:
            raise ConfigError(f"the global batch size {bs} is not divisible by devices={world_size}; "
                              "choose a batch size that is a multiple of the number of processes.")
        shuffle = not isinstance(loader.sampler, torch.utils.data.SequentialSampler)
        sampler_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) if (shuffle and gen is not None) else int(seed)
        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=sampler_seed,
                                     drop_last=True)
        return DataLoader(ds, batch_size=bs // world_size, sampler=sampler, drop_last=True, **kwargs), collate
    return DataLoader(ds, batch_size=bs, sampler=loader.sampler, drop_last=drop_last, generator=gen, **kwargs), collate
