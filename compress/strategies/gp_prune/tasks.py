"""The two pruning tasks whose retrained accuracies are the fitness of an evolved metric.

Source: Liu et al., "Evolving Transferable Neural Pruning Functions", GECCO'22 (paper 001),
Sec. 3.2 (function effectiveness evaluation), Sec. 4 and supplementary Sec. 10.2 / 10.4
(task settings), and ALGORITHMS.md section 2(a) (pseudo-code), 2(b).5 and 2(c) (CPU profile).

One evaluation of a metric xi on one task (2(a)):

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

* ``"cpu-small"`` (2(c)) -- Task A, MNIST stand-in: LeNet-5 (20-50-500, 5x5 convs with
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
reports on the test set, 2(b).5); scoring uses ``calib_samples`` images (full: 10,000) with
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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import ConfigError, DataError
from compress.strategies.gp_prune.metrics import ChannelOperands, MetricError, PruningMetric, reference_score
from compress.strategies.gp_prune.trees import EvalLimits, evaluation_limits
from compress.training.data import flip_crop
from compress.training.loop import FitPlan, cosine_factor, evaluate, fit, main_logits, make_optimizer
from compress.training.runtime import Runtime

__all__ = [
    "EVAL_FAILURES",
    "PROFILES",
    "PreparedTask",
    "PrunableNet",
    "PruneTaskSpec",
    "SyntheticFitness",
    "TaskFitness",
    "Unit",
    "build_net",
    "channel_operands",
    "score_channels",
    "evaluate_task",
    "make_shapes",
    "mask_channels",
    "prepare_task",
    "prune_unit",
    "removal_order",
    "uniform_schedule",
]

EVAL_FAILURES = (MetricError, RuntimeError, ValueError, ArithmeticError, MemoryError, IndexError)
"""Exceptions that mark one evaluation as failed (fitness 0, 2(b).4) instead of stopping the run."""


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
            (deterministic replacement of the reference's 10 s wall-clock limit, 2(b).2).
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
    from compress.data import collect, load_npz_task

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


# ============================================================================ network


class Unit(nn.Module):
    """One prunable layer: ``conv|linear -> BN? -> [F recorded here] -> ReLU -> mask? -> maxpool? -> dropout?``.

    ``mask`` (optional ``(C,)`` 0/1 buffer) zeroes channels after the ReLU: a masked net
    computes exactly what the physically sliced net computes (see :func:`mask_channels`).
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear, bn: nn.Module | None, pool: bool, dropout: float) -> None:
        super().__init__()
        self.layer = layer
        self.bn = bn if bn is not None else nn.Identity()
        self.pool = pool
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.register_buffer("mask", None)
        self.record: list[torch.Tensor] | None = None

    @property
    def width(self) -> int:
        return self.layer.out_channels if isinstance(self.layer, nn.Conv2d) else self.layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear) and x.dim() > 2:
            x = x.flatten(1)
        z = self.bn(self.layer(x))
        if self.record is not None:
            self.record.append(z.detach())
        a = F.relu(z)
        if self.mask is not None:
            a = a * (self.mask.view(1, -1, 1, 1) if a.dim() == 4 else self.mask.view(1, -1))
        if self.pool:
            a = F.max_pool2d(a, 2)
        return self.drop(a)


class PrunableNet(nn.Module):
    """A plain feed-forward net of :class:`Unit` s and a linear classifier, ``(B, C, H, W) -> (B, K)``."""

    def __init__(self, units: list[Unit], classifier: nn.Linear) -> None:
        super().__init__()
        self.units = nn.ModuleList(units)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for u in self.units:
            x = u(x)
        return self.classifier(x.flatten(1))

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(u.width for u in self.units)


def build_net(spec: PruneTaskSpec, input_shape: tuple[int, ...], num_classes: int) -> PrunableNet:
    """The task's network (LeNet-5 or VGG-style) from ``spec.convs`` / ``spec.fcs``."""
    units: list[Unit] = []
    c_in = input_shape[0]
    convs = list(spec.convs)
    for i, c in enumerate(convs):
        if c == "M":
            continue
        pool = i + 1 < len(convs) and convs[i + 1] == "M"
        conv = nn.Conv2d(c_in, int(c), spec.kernel, padding=spec.padding, bias=not spec.bn)
        units.append(Unit(conv, nn.BatchNorm2d(int(c)) if spec.bn else None, pool, 0.0))
        c_in = int(c)
    with torch.no_grad():
        probe = torch.zeros(1, *input_shape)
        for u in units:
            probe = u(probe)
    feat = int(probe.numel())
    for f in spec.fcs:
        units.append(Unit(nn.Linear(feat, int(f), bias=not spec.bn),
                          nn.BatchNorm1d(int(f)) if spec.bn else None, False, spec.dropout))
        feat = int(f)
    return PrunableNet(units, nn.Linear(feat, num_classes))


def _slice_bn(bn: nn.Module, keep: torch.Tensor) -> nn.Module:
    if isinstance(bn, nn.Identity):
        return bn
    new = type(bn)(len(keep), eps=bn.eps, momentum=bn.momentum, device=bn.weight.device, dtype=bn.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(bn.weight[keep])
        new.bias.copy_(bn.bias[keep])
        new.running_mean.copy_(bn.running_mean[keep])
        new.running_var.copy_(bn.running_var[keep])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def _with_weight(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    like = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(layer, nn.Conv2d):
        new = nn.Conv2d(weight.shape[1], weight.shape[0], layer.kernel_size, stride=layer.stride,
                        padding=layer.padding, bias=bias is not None, **like)
    else:
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, **like)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new.train(layer.training)


@torch.no_grad()
def prune_unit(net: PrunableNet, index: int, keep: torch.Tensor) -> None:
    """Physically keep only output channels ``keep`` (sorted int64 indices) of unit ``index``, in place.

    Slices the layer's weight/bias, its BN, its mask, and the input channels of the next layer
    (for a conv feeding a linear layer, the ``H x W`` block of flattened features per channel).
    """
    u = net.units[index]
    old = u.width
    lay = u.layer
    keep = keep.to(device=lay.weight.device, dtype=torch.long)
    u.layer = _with_weight(lay, lay.weight[keep], lay.bias[keep] if lay.bias is not None else None)
    u.bn = _slice_bn(u.bn, keep)
    if u.mask is not None:
        u.mask = u.mask[keep].clone()
    nxt = net.units[index + 1].layer if index + 1 < len(net.units) else net.classifier
    w = nxt.weight
    if isinstance(nxt, nn.Conv2d):
        cols = keep
        new_w = w[:, cols]
    elif isinstance(lay, nn.Conv2d):  # conv -> flatten -> linear: channel-major blocks of H*W features
        hw = w.shape[1] // old
        cols = (keep[:, None] * hw + torch.arange(hw, device=keep.device)[None, :]).reshape(-1)
        new_w = w[:, cols]
    else:
        new_w = w[:, keep]
    new_next = _with_weight(nxt, new_w, nxt.bias)
    if index + 1 < len(net.units):
        net.units[index + 1].layer = new_next
    else:
        net.classifier = new_next


def mask_channels(net: PrunableNet, index: int, keep: torch.Tensor) -> None:
    """Mask-based pruning (no surgery): zero every channel of unit ``index`` not in ``keep`` after its ReLU."""
    u = net.units[index]
    m = u.layer.weight.new_zeros(u.width)
    m[keep.to(device=m.device, dtype=torch.long)] = 1.0
    if u.mask is not None:
        m = m * u.mask
    u.mask = m


def removal_order(scores: torch.Tensor) -> torch.Tensor:
    """Channel indices from least to most important (stable: ties keep the lower index first)."""
    return torch.argsort(scores.double(), stable=True)


# ============================================================================ scoring


@torch.no_grad()
def _unit_maps(net: PrunableNet, index: int, x: torch.Tensor, max_map_hw: int | None, batch: int = 500) -> torch.Tensor:
    """``(C, N, D)`` float32 pre-ReLU maps of unit ``index`` on ``x`` (eval mode), on the net's device."""
    u = net.units[index]
    device = u.layer.weight.device
    was = net.training
    net.eval()
    outs = []
    try:
        for i in range(0, len(x), batch):
            u.record = []
            h = x[i: i + batch].to(device)
            for j in range(index + 1):
                h = net.units[j](h)
            z = u.record[0]
            if z.dim() == 4:
                if max_map_hw is not None and (z.shape[2] > max_map_hw or z.shape[3] > max_map_hw):
                    z = F.adaptive_avg_pool2d(z, (min(z.shape[2], max_map_hw), min(z.shape[3], max_map_hw)))
                z = z.flatten(2)
            else:
                z = z.unsqueeze(-1)
            outs.append(z.float())
    finally:
        u.record = None
        net.train(was)
    return torch.cat(outs).transpose(0, 1).contiguous()


def channel_operands(
    net: PrunableNet, index: int, x: torch.Tensor | None, y: torch.Tensor | None, max_map_hw: int | None
) -> ChannelOperands:
    """Table 1 operands of every channel of unit ``index``: W, W_I (linear weights as ``(C, c_in, 1, 1)``),
    B (``[gamma, beta, mean, var]``, ``[1, 0, 0, 1]`` without BN) and, when ``x`` is given, F ``(C, N, D)``
    with labels ``y``."""
    u = net.units[index]
    w = u.layer.weight.detach().float()
    if w.dim() == 2:
        w = w[:, :, None, None]
    c = w.shape[0]
    if isinstance(u.bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
        b = torch.stack([u.bn.weight, u.bn.bias, u.bn.running_mean, u.bn.running_var], dim=1).detach().float()
    else:
        ones, zeros = w.new_ones(c), w.new_zeros(c)
        b = torch.stack([ones, zeros, zeros, ones], dim=1)
    feats = _unit_maps(net, index, x, max_map_hw) if x is not None else None
    return ChannelOperands(W=w.unsqueeze(0), WI=w, B=b, F=feats, y=y if feats is not None else None)


def score_channels(
    metric: PruningMetric, ops: ChannelOperands, class_reduction: str = "sum", chunk: int = 64
) -> torch.Tensor:
    """``metric.score(ops)`` computed on balanced chunks of at most ``chunk`` channels.

    Every tree value carries the channel axis and channels never interact (``W`` is shared
    with channel axis 1), so chunking gives the same ``(C,)`` scores while bounding the size
    of per-channel intermediates such as the ``N x N`` kernel matrices of MMD.
    """
    c = ops.num_channels
    if c <= chunk:
        return metric.score(ops, class_reduction=class_reduction)
    parts = []
    k = math.ceil(c / chunk)
    base, rem = divmod(c, k)  # the chunk sizes of torch.tensor_split(range(c), k)
    start = 0
    for i in range(k):
        sl = slice(start, start + base + (1 if i < rem else 0))
        start = sl.stop
        sub = ChannelOperands(W=ops.W, WI=ops.WI[sl], B=ops.B[sl], F=None if ops.F is None else ops.F[sl], y=ops.y)
        parts.append(metric.score(sub, class_reduction=class_reduction))
    return torch.cat(parts)


# ============================================================================ training


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000,
             runtime: Runtime | None = None) -> float:
    """Top-1 accuracy in [0, 1] (eval mode, state restored); batches of ``batch`` go to the
    net's device (the ``runtime``'s, under its autocast, when given). 0.0 without samples."""
    batches = [(x[i: i + batch], y[i: i + batch]) for i in range(0, len(x), batch)]
    return evaluate(net, batches, runtime=runtime) or 0.0


class _SeededBatches:
    """The training batches of :func:`train_epochs`: each pass draws a permutation of the
    ``N`` samples from ``generator``, then yields ``ceil(N / batch_size)`` batches in that order
    (the last one smaller), flip-crop augmented from the same generator when asked. Iterated
    once per epoch, it draws the same stream for the same seed (and the same stream as the loop
    it replaced)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator,
                 augment: str) -> None:
        self.x, self.y, self.batch_size, self.generator, self.augment = x, y, batch_size, generator, augment

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(self.y), generator=self.generator)
        for s in range(len(self)):
            idx = perm[s * self.batch_size: (s + 1) * self.batch_size]
            xb, yb = self.x[idx], self.y[idx]
            if self.augment == "flip-crop":
                xb = flip_crop(xb, self.generator)
            yield xb, yb


def _lr_factor(schedule: str, total: int, milestones: tuple[float, ...], gamma: float) -> Callable[[int], float] | None:
    """The per-iteration lr factor of a :func:`train_epochs` schedule (None: constant)."""
    if schedule == "step":
        marks = [int(m * total) for m in milestones]
        return lambda it: gamma ** sum(it >= m for m in marks)
    if schedule == "cosine":
        return lambda it: cosine_factor(it, total)
    return None


def train_epochs(
    net: nn.Module,
    data: Splits,
    *,
    optimizer: str,
    lr: float,
    weight_decay: float,
    epochs: int,
    batch_size: int,
    seed: int,
    momentum: float = 0.9,
    schedule: str = "constant",
    milestones: tuple[float, ...] = (),
    gamma: float = 1.0,
    augment: str = "none",
    runtime: Runtime | None = None,
) -> float:
    """Train in place on :func:`compress.training.fit`, keep the weights of the best validation
    epoch; returns that accuracy.

    ``schedule``: "constant", "step" (lr x ``gamma`` at each ``milestones`` fraction of all
    iterations) or "cosine" (:func:`~compress.training.cosine_factor`). Batches come from a
    ``torch.Generator`` seeded with ``seed`` (:class:`_SeededBatches`), so the same seed gives the
    same weights. The net trains on ``runtime`` (default ``Runtime()``: CPU, fp32) and comes back
    to the device it was on, in the default memory format.

    Raises:
        TrainingDivergedError: the loss or the weights became non-finite (the net holds the
            weights of the last finished epoch).
    """
    runtime = runtime or Runtime()
    first = next(iter(net.parameters()), None)
    home = first.device if first is not None else torch.device("cpu")
    runtime.prepare(net)
    try:
        if epochs <= 0:
            return accuracy(net, data.x_val, data.y_val, runtime=runtime)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = make_optimizer(params, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
        batches = _SeededBatches(data.x_train, data.y_train, batch_size, torch.Generator().manual_seed(int(seed)),
                                 augment)
        total = max(1, epochs * len(batches))

        def step(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
            x, y = batch
            return F.cross_entropy(main_logits(net(x)).float(), y), int(y.numel())

        plan = FitPlan(modules=[net], optimizer=opt, step=step, epochs=epochs,
                       lr_factor=_lr_factor(schedule, total, milestones, gamma),
                       validate=lambda: accuracy(net, data.x_val, data.y_val, runtime=runtime), keep_best=True)
        history = fit(plan, batches, runtime=runtime, phase="gp-task-train", lr=lr)
        return max(float(rec["val_acc"]) for rec in history)
    finally:
        net.to(home)
        if any(p.dim() == 4 for p in net.parameters()):
            net.to(memory_format=torch.contiguous_format)


# ============================================================================ prepared task


@dataclass
class PreparedTask:
    """A task ready for evaluations: data, the pretrained baseline weights and its accuracies."""

    spec: PruneTaskSpec
    data: Splits
    baseline_state: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)
    calib_idx: torch.Tensor | None = None

    def baseline(self) -> PrunableNet:
        net = build_net(self.spec, self.data.input_shape, self.data.num_classes)
        net.load_state_dict(self.baseline_state)
        return net.eval()


def _macs(net: PrunableNet, input_shape) -> int:
    from compress.budgets import measure_cost

    first = next(iter(net.parameters()))
    return int(measure_cost(net, first.new_zeros(1, *input_shape)).macs)


def prepare_task(
    spec: PruneTaskSpec,
    seed: int,
    cache_dir: str | Path,
    data_dir: str | None = None,
    progress: Callable[[str, int, int, dict], None] | None = None,
) -> PreparedTask:
    """Load the task data and its pretrained baseline (train it once and cache it).

    The baseline is stored as ``<cache_dir>/<spec.name>-<spec.baseline_key(seed)>.safetensors``
    (+ ``.json`` with its accuracies), written atomically; a changed setting never loads stale
    weights. ``info`` holds the baseline's val / fitness-split accuracy and the MACs before and
    after the (metric-independent) pruning schedule.

    Raises:
        DataError: missing real-data files.
    """
    from safetensors.torch import load_file
    from safetensors.torch import save as st_save

    from compress.exporters.atomic import write_bytes_atomic, write_text_atomic

    data = load_splits(spec, seed, data_dir)
    path = Path(cache_dir) / f"{spec.name}-{spec.baseline_key(seed)}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        state = load_file(str(path))
        info = json.loads(meta_path.read_text())
        info["cached"] = True
    else:
        if progress:
            progress("baseline", 0, 1, {"task": spec.name})
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_net(spec, data.input_shape, data.num_classes)
            val = train_epochs(
                net, data, optimizer=spec.pretrain_optimizer, lr=spec.pretrain_lr, weight_decay=spec.pretrain_wd,
                epochs=spec.pretrain_epochs, batch_size=spec.batch_size, seed=seed, momentum=spec.momentum,
                schedule="cosine" if spec.pretrain_optimizer == "sgd" else "constant",
                augment=spec.augment,
            )
        state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
        pruned = build_net(spec, data.input_shape, data.num_classes).eval()
        for i, s in enumerate(spec.schedule):
            prune_unit(pruned, i, torch.arange(spec.widths[i] - sum(s)))
        info = {
            "task": spec.name,
            "seed": int(seed),
            "baseline_val_acc": val,
            "baseline_fit_acc": accuracy(net, data.x_fit, data.y_fit),
            "macs_before": _macs(net, data.input_shape),
            "macs_after": _macs(pruned, data.input_shape),
            "widths_before": list(spec.widths),
            "widths_after": list(spec.pruned_widths),
            "pretrain_s": time.perf_counter() - t0,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, st_save(state))
        write_text_atomic(meta_path, json.dumps(info, indent=2))
        info["cached"] = False
        if progress:
            progress("baseline", 1, 1, {"task": spec.name, "val_acc": val})
    g = torch.Generator().manual_seed(int(seed) + 7919)
    n = len(data.y_train)
    calib_idx = torch.sort(torch.randperm(n, generator=g)[: min(spec.calib_samples, n)]).values
    return PreparedTask(spec, data, state, info, calib_idx)


def evaluate_task(
    task: PreparedTask, metric: PruningMetric, seed: int, class_reduction: str = "sum"
) -> dict:
    """Prune the task's baseline with ``metric`` by its schedule and retrain (module docstring).

    Returns:
        ``{"acc": fitness-split accuracy, "val_acc": best validation accuracy, "widths": [...]}``.

    Raises:
        MetricError: the metric fails or gives non-finite scores on a layer (also other
            :data:`EVAL_FAILURES` from the tree engine); callers give such trees fitness 0.
    """
    spec, data = task.spec, task.data
    xs, ys = data.x_train[task.calib_idx], data.y_train[task.calib_idx]
    limits = EvalLimits(max_elements=spec.max_elements, max_flops=spec.max_flops)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = task.baseline()
        val = None
        for step in range(spec.steps):
            for li, sched in enumerate(spec.schedule):
                r = sched[step]
                if r == 0:
                    continue
                ops = channel_operands(net, li, xs if metric.needs_feature_maps else None, ys, spec.max_map_hw)
                with evaluation_limits(limits):
                    scores = score_channels(metric, ops, class_reduction, spec.score_chunk)
                order = removal_order(scores)
                keep = torch.sort(order[r:]).values
                prune_unit(net, li, keep)
            val = train_epochs(
                net, data, optimizer=spec.retrain_optimizer, lr=spec.retrain_lr, weight_decay=spec.retrain_wd,
                epochs=spec.epochs_per_step, batch_size=spec.batch_size, seed=seed + 1000 * step,
                momentum=spec.momentum, schedule="step" if spec.retrain_optimizer == "sgd" else "constant",
                milestones=spec.lr_milestones, gamma=spec.lr_gamma, augment=spec.augment,
            )
        acc = accuracy(net, data.x_fit, data.y_fit)
    if list(net.widths) != list(spec.pruned_widths):
        raise RuntimeError(f"internal: widths {net.widths} != schedule {spec.pruned_widths}")
    return {"acc": acc, "val_acc": val, "widths": list(net.widths)}


# ============================================================================ fitness callables

_PREPARED: dict[tuple, tuple[PreparedTask, PreparedTask]] = {}
"""Per-process memo of prepared task pairs (each worker process loads them once)."""


@dataclass(frozen=True)
class TaskFitness:
    """Picklable fitness callable for ``map_fn``: ``fn((expr, seed)) -> record`` on a task profile.

    The record is ``{"acc": [acc_A, acc_B], "error": None | str, "tasks": [...], "wall_s": float}``;
    the evolution loop combines the two accuracies (Eq. 1 / 2). A tree that fails on a real
    layer (:data:`EVAL_FAILURES`) gets ``acc = [0, 0]`` and its error message (2(b).4).

    Attributes:
        profile: a key of :data:`PROFILES`.
        run_seed: seeds the data splits and the baselines (one baseline per (task, seed)).
        cache_dir: where pretrained baselines are cached.
        data_dir: the real-data folder (``"full"`` only).
        class_reduction: "sum" (reference) or "mean" of per-class uni-tree scores.
    """

    profile: str
    run_seed: int
    cache_dir: str
    data_dir: str | None = None
    class_reduction: str = "sum"

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"unknown task profile {self.profile!r}; choose one of {', '.join(PROFILES)}.")

    def prepare(self, progress: Callable[[str, int, int, dict], None] | None = None) -> list[dict]:
        """Load (or pretrain and cache) both baselines in this process; returns their info dicts."""
        key = (self.profile, self.run_seed, self.cache_dir, self.data_dir)
        if key not in _PREPARED:
            _PREPARED[key] = tuple(
                prepare_task(spec, self.run_seed, self.cache_dir, self.data_dir, progress)
                for spec in PROFILES[self.profile]
            )
        return [dict(t.info) for t in _PREPARED[key]]

    def __call__(self, item: tuple[str, int]) -> dict:
        expr, seed = item
        self.prepare()
        tasks = _PREPARED[(self.profile, self.run_seed, self.cache_dir, self.data_dir)]
        t0 = time.perf_counter()
        try:
            metric = PruningMetric.from_string(expr, name="candidate")
            results = [evaluate_task(t, metric, int(seed), self.class_reduction) for t in tasks]
        except EVAL_FAILURES as exc:
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            return {"acc": [0.0, 0.0], "error": f"{type(exc).__name__}: {msg}", "tasks": [],
                    "wall_s": time.perf_counter() - t0}
        return {"acc": [r["acc"] for r in results], "error": None, "tasks": results,
                "wall_s": time.perf_counter() - t0}


def _synthetic_operands(seed: int) -> ChannelOperands:
    g = torch.Generator().manual_seed(seed)  # a CPU generator: these operands live on the CPU
    cpu, f64 = torch.device("cpu"), torch.float64
    c, n_cls, per, d = 12, 3, 6, 9
    w = (torch.randn(c + 2, 3, 3, 3, generator=g, dtype=f64, device=cpu)
         * torch.rand(c + 2, 1, 1, 1, generator=g, device=cpu))
    bn = torch.cat([torch.rand(c, 1, generator=g, device=cpu) + 0.2, torch.randn(c, 1, generator=g, device=cpu) * 0.1,
                    torch.randn(c, 1, generator=g, device=cpu) * 0.1, torch.rand(c, 1, generator=g, device=cpu) + 0.5],
                   dim=1).double()
    y = torch.arange(n_cls * per, device=cpu) % n_cls
    sep = torch.rand(c, 1, 1, generator=g, dtype=f64, device=cpu) * 2
    means = torch.randn(c, n_cls, d, generator=g, dtype=f64, device=cpu)[:, y] * sep
    f = torch.relu(torch.randn(c, len(y), d, generator=g, dtype=f64, device=cpu) + means) + 0.01
    return ChannelOperands(W=w.unsqueeze(0), WI=w[:c], B=bn, F=f, y=y)


def _rank_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a.double(), stable=True)).double()
    rb = torch.argsort(torch.argsort(b.double(), stable=True)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else 0.0


@dataclass(frozen=True)
class SyntheticFitness:
    """A deterministic stand-in fitness (about a millisecond per tree) for tests and dry runs.

    "Task A" is the agreement of the tree's channel ranking with the l1-norm ranking on one
    fixed random layer, "task B" the agreement with the Fisher-ratio ranking on another,
    each mapped to [0, 1] as ``(1 + Spearman rho) / 2``. Same record format as
    :class:`TaskFitness`; the seed of the item is ignored (the value depends on the tree only).
    """

    class_reduction: str = "sum"

    def prepare(self, progress=None) -> list[dict]:
        return [{"task": "synthetic-l1"}, {"task": "synthetic-fisher"}]

    def __call__(self, item: tuple[str, int]) -> dict:
        expr, _seed = item
        t0 = time.perf_counter()
        accs = []
        try:
            metric = PruningMetric.from_string(expr, name="candidate")
            for s, target in ((101, "l1"), (202, "fisher")):
                ops = _synthetic_operands(s)
                with evaluation_limits(EvalLimits(max_elements=2**20, max_flops=2**26)):
                    score = metric.score(ops, class_reduction=self.class_reduction)
                accs.append(0.5 * (1.0 + _rank_corr(score, reference_score(target, ops))))
        except EVAL_FAILURES as exc:
            return {"acc": [0.0, 0.0], "error": f"{type(exc).__name__}: {str(exc)[:200]}", "tasks": [],
                    "wall_s": time.perf_counter() - t0}
        return {"acc": accs, "error": None, "tasks": [], "wall_s": time.perf_counter() - t0}
