"""CIFAR ResNet of He et al. (2016), "Deep Residual Learning", section 4.2.

Layout for depth ``6n + 2`` (20, 32, 44, 56, 110, ...):

* ``conv1`` 3x3 (in_chans -> 16, stride 1) + ``bn1`` + ReLU;
* ``layer1``/``layer2``/``layer3``: ``n`` :class:`BasicBlock` each, widths
  16/32/64; the first block of ``layer2`` and ``layer3`` has stride 2;
* option-A shortcut: identity, or, where width or resolution changes, the
  parameter-free :class:`PadShortcut` (spatial subsampling by the stride plus
  zero channels on both sides);
* global average pooling, then ``linear`` (64 -> num_classes).

The state-dict keys are ``conv1.*``, ``bn1.*``,
``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}.*`` and ``linear.*`` -- the layout of
the widely used reference CIFAR-10 checkpoints, which therefore load with
``strict=True``. Input: float tensor ``(N, in_chans, H, W)`` (32x32 for CIFAR,
any size >= 8x8 works); output: logits ``(N, num_classes)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PadShortcut",
    "BasicBlock",
    "CifarResNet",
    "cifar_resnet",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet110",
    "CIFAR_RESNET_DEPTHS",
]

#: Depths with a named factory (any ``6n + 2`` works with :func:`cifar_resnet`).
CIFAR_RESNET_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110)


class PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut.

    ``y = zero_pad_channels(x[:, :, ::stride, ::stride])``: the input is
    subsampled spatially by ``stride`` and ``planes_out - planes_in`` zero
    channels are added, ``(planes_out - planes_in) // 2`` before the input
    channels and the rest after (``planes_out // 4`` on each side in the
    standard network, where ``planes_out == 2 * planes_in``).

    Shapes: ``(N, planes_in, H, W) -> (N, planes_out, ceil(H/stride), ceil(W/stride))``.
    Has no parameters or buffers, so it adds no state-dict keys.
    :func:`compress.models.surgery.pad_shortcuts_to_conv` replaces it with an
    equivalent fixed 1x1 convolution for dependency-graph pruners.
    """

    def __init__(self, planes_in: int, planes_out: int, stride: int = 1) -> None:
        super().__init__()
        if planes_in <= 0 or planes_out < planes_in:
            raise ValueError(
                f"PadShortcut needs 0 < planes_in <= planes_out, got {planes_in} -> {planes_out}; "
                "it can only add channels (use a 1x1 convolution to reduce them)"
            )
        if stride < 1:
            raise ValueError(f"PadShortcut stride must be >= 1, got {stride}")
        self.planes_in = int(planes_in)
        self.planes_out = int(planes_out)
        self.stride = int(stride)
        extra = self.planes_out - self.planes_in
        self.pad_front = extra // 2
        self.pad_back = extra - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_front or self.pad_back:
            # F.pad pads from the last dim backwards: (W_l, W_r, H_t, H_b, C_front, C_back)
            x = F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))
        return x

    def extra_repr(self) -> str:
        return f"{self.planes_in}, {self.planes_out}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with a residual connection and ReLUs.

    ``shortcut`` is ``nn.Identity`` when shape is preserved, else a
    :class:`PadShortcut`. Shapes: ``(N, in_planes, H, W) -> (N, planes, H/stride, W/stride)``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with ``blocks_per_stage`` BasicBlocks per stage (depth ``6n + 2``).

    Args:
        blocks_per_stage: ``n``; depth is ``6n + 2``.
        num_classes: size of the ``linear`` output.
        in_chans: input channels of ``conv1`` (3 for RGB).

    Input ``(N, in_chans, H, W)`` float; output logits ``(N, num_classes)``.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        if num_classes < 1 or in_chans < 1:
            raise ValueError(
                f"num_classes and in_chans must be >= 1, got num_classes={num_classes}, in_chans={in_chans}"
            )
        self.depth = 6 * blocks_per_stage + 2
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(32, 64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, H, W) -> (N, 64, H/4, W/4)`` feature map before pooling."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        return self.layer3(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_features(x)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(depth: int, num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    """CIFAR ResNet of the given depth (``6n + 2``: 20, 32, 44, 56, 110, ...).

    Raises:
        ValueError: ``depth`` is not of the form ``6n + 2`` with ``n >= 1``.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 (e.g. {', '.join(map(str, CIFAR_RESNET_DEPTHS))}), got {depth!r}"
        )
    return CifarResNet((depth - 2) // 6, num_classes=num_classes, in_chans=in_chans)


def cifar_resnet20(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    """ResNet-20 for 32x32 inputs (0.27 M parameters at 10 classes)."""
    return cifar_resnet(20, num_classes, in_chans)


def cifar_resnet32(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    """ResNet-32 for 32x32 inputs (0.46 M parameters at 10 classes)."""
    return cifar_resnet(32, num_classes, in_chans)


def cifar_resnet44(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    """ResNet-44 for 32x32 inputs (0.66 M parameters at 10 classes)."""
    return cifar_resnet(44, num_classes, in_chans)


def cifar_resnet56(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    """ResNet-56 for 32x32 inputs (0.85 M parameters at 10 classes)."""
    return cifar_resnet(56, num_classes, in_chans)


def cifar_resnet110(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    """ResNet-110 for 32x32 inputs (1.7 M parameters at 10 classes)."""
    return cifar_resnet(110, num_classes, in_chans)
