"""The two pruning tasks of an evolved metric's fitness: task profiles and their data.

The networks and their pruning engine are in :mod:`compress.evolution.engine`, the training and
the fitness callables in :mod:`compress.evolution.fitness`.

Source: Liu et al., "Evolving Transferable Neural Pruning Functions", GECCO'22 (paper 001),
Sec. 3.2 (function effectiveness evaluation), Sec. 4 and supplementary Sec. 10.2 / 10.4
(task settings), and ``docs/algorithms/gp-prune.md`` (the algorithm, choice 5 and the CPU profile).

One evaluation of a metric xi on one task (docs/algorithms/gp-prune.md, the algorithm):

    net <- the pretrained baseline (trained once per (task, seed), cached as safetensors)
    for step in 1..S:                        # multi-step schedule of the reference code
        for prunable layer l in order:       # earlier layers already pruned in this step
            F <- outputs of layer l (after its BN, before ReLU) on the scoring images
            score every alive channel of l with xi (uni-tree summed over classes, Sec. 3.1)
            physically remove the r[l][step] lowest-scored channels (ties: lowest index first)
        retrain E epochs; keep the epoch with the best *validation* accuracy
    acc <- accuracy of the kept net on the held-out fitness split

Every individual gets exactly the same settings (layers, removal counts, optimiser, epochs);
only the metric differs (Sec. 3.2). Scoring images are a fixed seeded subset of the training
split (paper: all training images, supp. 10.4).

Profiles (:data:`PROFILES`, each a pair ``(task A, task B)``):

* ``"cpu-small"`` (docs/algorithms/gp-prune.md, CPU profile) -- Task A, MNIST stand-in: LeNet-5 (20-50-500, 5x5 convs with
  padding 2) on scikit-learn's digits upsampled to 1x16x16, so the flattened conv output is
  the paper's 800; pruned to 5-11-40 with the reference code's per-step removals (conv1
  10/5/0, conv2 30/8/1, fc1 400/55/5; the paper text says 5-12-40), 94 % of the MACs removed;
  3 steps x 2 epochs of Adam 5e-4 (constant lr, wd 7e-5). Task B, CIFAR stand-in: a 4-conv
  VGG-like net (16-16-M-32-32-M, BN, fc 64 with BN) on a seeded synthetic 10-class "shapes
  and textures" set of 3x16x16 colour images (:func:`make_shapes`), 40 % of the channels of
  every layer removed in 2 steps (61 % of the MACs), SGD Nesterov 0.9, lr 0.02 x 0.28 at 40 %
  and 80 % of each step's iterations, wd 1e-3, 2 epochs per step. Both score channels on 256
  training images.
* ``"tiny"`` -- the same two tasks with smaller data, 1 retrain epoch per step and 128 scoring
  images; for tests and smoke runs (seconds).
* ``"full"`` (supp. 10.2) -- LeNet-5 on MNIST (28x28, no padding: 20-50-800-500 -> 5-11-40)
  and the Li et al. VGG-16 on CIFAR-10 with the reference removal counts (40 % per layer in 2
  steps), paper optimisers and 100 epochs per step. Needs ``data_dir`` with
  ``mnist_train60k.npz``, ``mnist_test10k.npz``, ``cifar10_train10k_lossless.npz``,
  ``cifar10_test1k_lossless.npz`` (the shared folder holds 10k CIFAR training images, not 50k).
  GPU-scale; never run in tests.

Documented deviations: the epoch is selected on a validation split carved from the training
images and the fitness is measured on a separate held-out split (the reference selects and
reports on the test set, gp-prune.md choice 5); scoring uses ``calib_samples`` images (full: 10,000) with
maps average-pooled to at most ``max_map_hw`` squared (as ``features.py``); learning-rate
milestones restart at every pruning step; the CPU profiles use smaller data, nets and epochs.

Determinism: all randomness of one evaluation (batch order, dropout, augmentation) comes from
the ``seed`` argument inside ``torch.random.fork_rng`` (the caller's torch RNG is untouched),
so the same (tree, seed) gives the same accuracies in any process and in any order.
"""


from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from compress.data import collect, load_npz_task
from compress.errors import ConfigError, DataError

__all__ = [
    "PROFILES",
    "PruneTaskSpec",
    "Splits",
    "load_splits",
    "make_shapes",
    "uniform_schedule",
]


# ============================================================================ task settings


def uniform_schedule(widths: tuple[int, ...], ratio: float, steps: int) -> tuple[tuple[int, ...], ...]:
    """Per-layer removal counts for removing ``ratio`` of every layer's channels in ``steps`` steps.

    Layer ``i`` loses ``floor(ratio * w_i + 0.5)`` channels, split as evenly as possible over
    the steps (earlier steps take the remainder), e.g. ``(16,), 0.4, 2 -> ((3, 3),)``.
    """
    out = []
    for w in widths:
        total = int(math.floor(ratio * w + 0.5))
        base, rem = divmod(total, steps)
        out.append(tuple(base + (1 if s < rem else 0) for s in range(steps)))
    return tuple(out)


@dataclass(frozen=True)
class PruneTaskSpec:
    """One pruning task (Sec. 3.2): data, network, removal schedule, retraining recipe.

    Attributes:
        name: short label used in records and cache file names.
        dataset: ``"digits"`` (sklearn, grayscale ``1 x image_size^2``), ``"shapes"``
            (:func:`make_shapes`), ``"mnist-npz"`` or ``"cifar10-npz"`` (files in ``data_dir``).
        image_size: side of the digits / shapes images (pixels).
        n_samples: number of generated shapes images (``"shapes"`` only).
        train_limit: keep a stratified subset of this many training images (npz only; None: all).
        split: ``(train, val, fitness)`` fractions for digits/shapes; npz sets use their test
            file as the fitness split and ``split[1]`` of the training file as validation.
        convs: VGG-style conv widths, ``"M"`` = 2x2 max-pool after the previous conv.
        kernel, padding: conv kernel size and padding (all convs).
        fcs: hidden fully connected widths before the classifier (pruned as well).
        bn: BatchNorm after every conv and hidden fc.
        dropout: dropout after every hidden fc (0: none).
        schedule: per prunable layer (convs then fcs), the channels removed at each step.
        pretrain_*: training of the baseline from scratch (``optimizer`` "adam" | "sgd",
            cosine lr for sgd, constant for adam), best validation epoch kept.
        retrain_optimizer, retrain_lr, retrain_wd, momentum: retraining after every step
            ("adam": constant lr; "sgd": Nesterov, lr x ``lr_gamma`` at ``lr_milestones``
            fractions of the step's iterations).
        epochs_per_step, batch_size: retraining length.
        augment: "none" or "flip-crop" (pad 4, random crop, horizontal flip) during retraining.
        calib_samples: scoring images (seeded subset of the training split).
        max_map_hw: feature maps are average-pooled to at most this side before scoring.
        max_elements, max_flops: evaluation limits of the tree engine during scoring
            (deterministic replacement of the reference's 10 s wall-clock limit, gp-prune.md choice 2).
        score_chunk: channels scored per tree call (:func:`score_channels`; same scores).
    """

    name: str
    dataset: str
    image_size: int = 16
    n_samples: int = 2400
    train_limit: int | None = None
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    convs: tuple = (20, "M", 50, "M")
    kernel: int = 5
    padding: int = 2
    fcs: tuple[int, ...] = (500,)
    bn: bool = False
    dropout: float = 0.0
    schedule: tuple[tuple[int, ...], ...] = ((10, 5, 0), (30, 8, 1), (400, 55, 5))
    pretrain_optimizer: str = "adam"
    pretrain_lr: float = 1e-3
    pretrain_epochs: int = 15
    pretrain_wd: float = 0.0
    retrain_optimizer: str = "adam"
    retrain_lr: float = 5e-4
    retrain_wd: float = 7e-5
    momentum: float = 0.9
    lr_milestones: tuple[float, ...] = (0.4, 0.8)
    lr_gamma: float = 0.28
    epochs_per_step: int = 2
    batch_size: int = 64
    augment: str = "none"
    calib_samples: int = 256
    max_map_hw: int | None = 8
    max_elements: int = 2**24
    max_flops: int = 2**31
    score_chunk: int = 64

    def __post_init__(self) -> None:
        if self.dataset not in ("digits", "shapes", "mnist-npz", "cifar10-npz"):
            raise ConfigError(f"dataset must be digits, shapes, mnist-npz or cifar10-npz, got {self.dataset!r}.")
        widths = self.widths
        if len(self.schedule) != len(widths):
            raise ConfigError(
                f"task {self.name!r}: schedule has {len(self.schedule)} entries but the net has "
                f"{len(widths)} prunable layers {widths}; give one tuple of per-step removals per layer."
            )
        steps = {len(s) for s in self.schedule}
        if len(steps) != 1 or min(steps) < 1:
            raise ConfigError(f"task {self.name!r}: every schedule entry needs the same number (>= 1) of steps.")
        for w, s in zip(widths, self.schedule):
            if min(s) < 0 or sum(s) >= w:
                raise ConfigError(
                    f"task {self.name!r}: removals {s} for a layer of {w} channels must be >= 0 and leave >= 1 channel."
                )
        if self.pretrain_optimizer not in ("adam", "sgd") or self.retrain_optimizer not in ("adam", "sgd"):
            raise ConfigError("optimizers must be 'adam' or 'sgd'.")
        if self.augment not in ("none", "flip-crop"):
            raise ConfigError(f"augment must be 'none' or 'flip-crop', got {self.augment!r}.")
        if self.calib_samples < 2 or self.epochs_per_step < 0 or self.batch_size < 1:
            raise ConfigError("calib_samples >= 2, epochs_per_step >= 0 and batch_size >= 1 are required.")
        if len(self.split) != 3 or min(self.split) <= 0 or abs(sum(self.split) - 1.0) > 1e-6:
            raise ConfigError(f"split must be three positive fractions summing to 1, got {self.split}.")

    @property
    def widths(self) -> tuple[int, ...]:
        """Widths of the prunable layers (convs, then hidden fcs), before pruning."""
        return tuple(int(c) for c in self.convs if c != "M") + tuple(int(f) for f in self.fcs)

    @property
    def steps(self) -> int:
        return len(self.schedule[0])

    @property
    def pruned_widths(self) -> tuple[int, ...]:
        """Widths after all steps (the same for every metric)."""
        return tuple(w - sum(s) for w, s in zip(self.widths, self.schedule))

    def baseline_key(self, seed: int) -> str:
        """Hash of everything that changes the pretrained baseline (data, net, pretraining, seed)."""
        keep = (
            "dataset", "image_size", "n_samples", "train_limit", "split", "convs", "kernel", "padding",
            "fcs", "bn", "dropout", "pretrain_optimizer", "pretrain_lr", "pretrain_epochs", "pretrain_wd",
            "batch_size",
        )
        d = {k: getattr(self, k) for k in keep}
        d["seed"] = int(seed)
        d["torch"] = torch.__version__.split("+")[0]
        blob = json.dumps(d, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_LENET_SCHEDULE = ((10, 5, 0), (30, 8, 1), (400, 55, 5))  # reference removals: 20-50-500 -> 5-11-40 (paper text: 5-12-40)

_A_SMALL = PruneTaskSpec(name="A-lenet5-digits16", dataset="digits")
_B_SMALL = PruneTaskSpec(
    name="B-vgg4-shapes16",
    dataset="shapes",
    image_size=16,
    n_samples=2400,
    convs=(16, 16, "M", 32, 32, "M"),
    kernel=3,
    padding=1,
    fcs=(64,),
    bn=True,
    schedule=uniform_schedule((16, 16, 32, 32, 64), 0.4, 2),
    pretrain_optimizer="sgd",
    pretrain_lr=0.05,
    pretrain_epochs=20,
    pretrain_wd=5e-4,
    retrain_optimizer="sgd",
    retrain_lr=0.02,
    retrain_wd=1e-3,
)
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_VGG16_SCHEDULE = tuple((r, r) for r in (12, 12, 25, 25, 51, 51, 51) + (102,) * 7)  # reference, 14 entries

PROFILES: dict[str, tuple[PruneTaskSpec, PruneTaskSpec]] = {
    "cpu-small": (_A_SMALL, _B_SMALL),
    "tiny": (
        PruneTaskSpec(
            name="A-lenet5-digits16-tiny", dataset="digits", split=(0.4, 0.3, 0.3), pretrain_epochs=6,
            epochs_per_step=1, calib_samples=128,
        ),
        replace(_B_SMALL, name="B-vgg4-shapes16-tiny", n_samples=600, pretrain_epochs=6, epochs_per_step=1,
                calib_samples=128),
    ),
    "full": (
        PruneTaskSpec(
            name="A-lenet5-mnist", dataset="mnist-npz", split=(0.8, 0.1, 0.1),
            padding=0, schedule=_LENET_SCHEDULE, pretrain_epochs=30, epochs_per_step=100, batch_size=200,
            calib_samples=10000,
        ),
        PruneTaskSpec(
            name="B-vgg16-cifar10", dataset="cifar10-npz", split=(0.8, 0.1, 0.1), convs=_VGG16, kernel=3, padding=1,
            fcs=(512,), bn=True, dropout=0.3, schedule=_VGG16_SCHEDULE, pretrain_optimizer="sgd", pretrain_lr=0.05,
            pretrain_epochs=160, pretrain_wd=5e-4, retrain_optimizer="sgd", retrain_lr=0.006, retrain_wd=1e-3,
            epochs_per_step=100, batch_size=128, augment="flip-crop", calib_samples=10000,
        ),
    ),
}
"""Task profiles: name -> (task A, task B). See the module docstring."""


# ============================================================================ data


@dataclass
class Splits:
    """In-memory task data: ``x_*`` float32 ``(N, C, H, W)`` normalised, ``y_*`` int64 ``(N,)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_fit: torch.Tensor
    y_fit: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _split3(y: np.ndarray, fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    rest, fit = train_test_split(idx, test_size=fractions[2], stratify=y, random_state=seed)
    rel = fractions[1] / (fractions[0] + fractions[1])
    tr, va = train_test_split(rest, test_size=rel, stratify=y[rest], random_state=seed)
    return np.sort(tr), np.sort(va), np.sort(fit)


def _from_arrays(x: torch.Tensor, y: np.ndarray, fractions, seed: int) -> Splits:
    tr, va, fi = _split3(y, fractions, seed)
    mean = x[tr].mean(dim=(0, 2, 3), keepdim=True)
    std = x[tr].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x = (x - mean) / std
    yt = torch.from_numpy(y.astype(np.int64))
    t = torch.from_numpy
    return Splits(x[t(tr)].contiguous(), yt[t(tr)], x[t(va)].contiguous(), yt[t(va)], x[t(fi)].contiguous(),
                  yt[t(fi)], int(y.max()) + 1)


def make_shapes(n: int, image_size: int = 16, seed: int = 0, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """A seeded synthetic 10-class colour image set (the CIFAR stand-in of the CPU profile).

    Classes: 0 disk, 1 ring, 2 filled square, 3 square outline, 4 triangle, 5 plus, 6 diagonal
    cross, 7 horizontal stripes, 8 vertical stripes, 9 checkerboard. Each image has a random
    background and foreground colour (contrast >= 0.35 mean absolute difference), random
    position and size (shapes) or period and phase (textures), and Gaussian pixel noise.

    Returns:
        ``x`` float32 ``(n, 3, S, S)`` in about [0, 1] and ``y`` int64 ``(n,)`` (balanced).
    """
    rng = np.random.default_rng(seed)
    s = image_size
    yy, xx = np.meshgrid(np.arange(s) + 0.5, np.arange(s) + 0.5, indexing="ij")
    y = np.arange(n) % 10
    rng.shuffle(y)
    out = np.empty((n, 3, s, s), dtype=np.float32)
    for i, k in enumerate(y):
        for _ in range(100):  # bounded: contrast is met with probability > 0.5 per draw
            fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
            if np.abs(fg - bg).mean() >= 0.35:
                break
        cx, cy = rng.uniform(0.35 * s, 0.65 * s, 2)
        r = rng.uniform(0.18 * s, 0.33 * s)
        dx, dy = xx - cx, yy - cy
        width = max(1.0, 0.07 * s)
        period = rng.uniform(0.18 * s, 0.32 * s)
        phase = rng.uniform(0, 2 * np.pi)
        if k == 0:
            m = np.hypot(dx, dy) < r
        elif k == 1:
            m = np.abs(np.hypot(dx, dy) - r) < width
        elif k == 2:
            m = np.maximum(np.abs(dx), np.abs(dy)) < r
        elif k == 3:
            m = np.abs(np.maximum(np.abs(dx), np.abs(dy)) - r) < width
        elif k == 4:
            m = (dy < r) & (np.abs(dx) < (dy + r) / 2)
        elif k == 5:
            m = ((np.abs(dx) < width) & (np.abs(dy) < r)) | ((np.abs(dy) < width) & (np.abs(dx) < r))
        elif k == 6:
            m = ((np.abs(dx - dy) < 1.4 * width) | (np.abs(dx + dy) < 1.4 * width)) & (
                np.maximum(np.abs(dx), np.abs(dy)) < r)
        elif k == 7:
            m = np.sin(2 * np.pi * yy / period + phase) > 0
        elif k == 8:
            m = np.sin(2 * np.pi * xx / period + phase) > 0
        else:
            m = (np.sin(2 * np.pi * xx / period + phase) > 0) ^ (np.sin(2 * np.pi * yy / period + phase) > 0)
        m = m.astype(np.float32)[None]
        img = bg[:, None, None] * (1 - m) + fg[:, None, None] * m + rng.normal(0, noise, (3, s, s))
        out[i] = img.astype(np.float32)
    return out, y.astype(np.int64)


def _npz_splits(spec: PruneTaskSpec, data_dir: str | None, seed: int) -> Splits:
    if data_dir is None:
        raise DataError(f"task {spec.name!r} reads real data: pass data_dir (the shared data folder).")
    names = {
        "mnist-npz": ("mnist_train60k.npz", "mnist_test10k.npz"),
        "cifar10-npz": ("cifar10_train10k_lossless.npz", "cifar10_test1k_lossless.npz"),
    }[spec.dataset]
    train, test = (Path(data_dir).expanduser() / n for n in names)
    for p in (train, test):
        if not p.is_file():
            raise DataError(f"task {spec.name!r} needs {p}; pass the folder holding {names[0]} and {names[1]}.")
    task = load_npz_task(train, test_path=test, seed=seed, batch_size=1000, val_fraction=spec.split[1],
                         limit=spec.train_limit)
    xtr, ytr = collect(task.train)
    xva, yva = collect(task.val)
    xfi, yfi = collect(task.test)
    return Splits(xtr, ytr, xva, yva, xfi, yfi, task.spec.num_classes)


def load_splits(spec: PruneTaskSpec, seed: int, data_dir: str | None = None) -> Splits:
    """The train / val / fitness splits of ``spec`` (seeded, stratified, normalised on train).

    Raises:
        DataError: an npz task without ``data_dir`` or with missing files.
    """
    if spec.dataset == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
        if spec.image_size != 8:
            x = F.interpolate(x, size=(spec.image_size,) * 2, mode="bilinear", align_corners=False).clamp_(0, 1)
        return _from_arrays(x, bunch.target.astype(np.int64), spec.split, seed)
    if spec.dataset == "shapes":
        x, y = make_shapes(spec.n_samples, spec.image_size, seed=seed)
        return _from_arrays(torch.from_numpy(x), y, spec.split, seed)
    return _npz_splits(spec, data_dir, seed)
