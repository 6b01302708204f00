"""Tiny, seeded, offline fixtures shipped with the package (tests, benchmarks, examples).

Every model here takes ``(B, 3, H, W)`` and returns ``(B, num_classes)`` logits and has an
``example_inputs()`` method returning a seeded ``(2, 3, 32, 32)`` batch.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyConvNet", "TinyResidualNet", "HiddenStateNet", "TinyShuffleNet", "NoClassifierNet", "tiny_models",
           "randomise_batchnorm"]


class _Example:
    def example_inputs(self, batch: int = 2, size: int = 32) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.randn(batch, 3, size, size, generator=g)


class TinyConvNet(nn.Module, _Example):
    """conv-bn-relu x3 (stride 2 twice) -> global pool -> linear. ~25k params."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class TinyResidualNet(nn.Module, _Example):
    """A stem, two residual blocks (one with a depthwise conv) and a linear head."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w))
        self.b2 = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, groups=w, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w))
        self.head = nn.Linear(w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b1(x))
        x = torch.relu(x + self.b2(x))
        return self.head(x.mean(dim=(2, 3)))


class _HiddenScale(nn.Module):
    """Multiplies by a per-channel scale kept as a *plain tensor attribute* (not a parameter or
    buffer): a dependency graph cannot see it, so removing channels breaks this layer."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = torch.linspace(0.5, 1.5, channels).view(1, channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class HiddenStateNet(TinyConvNet):
    """TinyConvNet with a :class:`_HiddenScale` after the first block: built to be unprunable."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__(num_classes, width)
        self.hidden = _HiddenScale(2 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features
        x = f[2](f[1](f[0](x)))
        x = self.hidden(f[5](f[4](f[3](x))))
        x = f[8](f[7](f[6](x)))
        return self.fc(self.pool(x).flatten(1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's ShuffleNetV2 channel shuffle: ``view -> transpose -> reshape``."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class _ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit (torchvision's ``InvertedResidual``): stride 1 splits the channels in
    two halves and transforms one; stride 2 transforms both copies of the input; the two halves
    are concatenated and shuffled (2 groups)."""

    def __init__(self, cin: int, cout: int, stride: int, shuffle_module: bool) -> None:
        super().__init__()
        half = cout // 2
        self.branch1 = None
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin if stride > 1 else half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.shuffle = nn.ChannelShuffle(2) if shuffle_module else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out) if self.shuffle is not None else channel_shuffle(out, 2)


class TinyShuffleNet(nn.Module, _Example):
    """ShuffleNetV2 in small: stem conv (stride 2), a stride-2 and a stride-1 shuffle unit, a 1x1
    conv, global pool, linear. ``shuffle="functional"`` shuffles as torchvision does (reshapes in
    ``forward``), ``"module"`` with ``nn.ChannelShuffle``. The channels that cross a shuffle cannot be
    pruned; the branches' inner channels, the stem and the last conv can."""

    def __init__(self, num_classes: int = 10, width: int = 16, shuffle: str = "functional") -> None:
        super().__init__()
        if shuffle not in ("functional", "module"):
            raise ValueError(f"shuffle must be 'functional' or 'module', not {shuffle!r}")
        w, mod = width, shuffle == "module"
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.units = nn.Sequential(_ShuffleUnit(w, 2 * w, 2, mod), _ShuffleUnit(2 * w, 2 * w, 1, mod))
        self.conv5 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU())
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv5(self.units(self.stem(x))).mean(dim=(2, 3)))


class NoClassifierNet(nn.Module, _Example):
    """Returns a feature map, not logits: compress() must refuse it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def tiny_models(num_classes: int = 10) -> dict[str, nn.Module]:
    """Seeded instances of the prunable tiny models, by name."""
    torch.manual_seed(0)
    return {"tiny_conv": TinyConvNet(num_classes), "tiny_residual": TinyResidualNet(num_classes)}


def randomise_batchnorm(net: torch.nn.Module, seed: int = 0) -> None:
    """Give every ``BatchNorm2d`` of ``net`` seeded non-trivial statistics and affine parameters
    (running mean in [-1, 1), variance in [0.5, 2), weight in [0.5, 1.5), bias in [-0.5, 0.5)), in
    place, so that an eval-mode test network is not the identity through its norms."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
