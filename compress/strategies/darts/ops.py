"""The DARTS operation set (Liu et al., DARTS, ICLR 2019, §3.1 and appendix A.1; docs/algorithms/darts-space.md).

Every op maps ``(B, C, H, W) -> (B, C, H', W')`` with ``H' = ceil(H / stride)``; the channel
count is unchanged. Convolutions have no bias. ``affine`` is the BatchNorm flag: ``False`` in the
search supernet (DARTS), ``True`` in the evaluation network.

Two orderings of the op names exist and the order fixes the columns of the architecture
parameters:

* :data:`PRIMITIVES` -- DARTS, 8 ops, ``'none'`` first;
* :data:`EGNAS_PRIMITIVES` -- EG-NAS' released code, 7 ops, no ``'none'`` and the two pools
  swapped.

Odd spatial sizes are handled: :class:`FactorizedReduce` pads its shifted path so both halves
have ``ceil(H / 2)`` rows (identical to the reference for even sizes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import ConfigError

__all__ = [
    "PRIMITIVES",
    "EGNAS_PRIMITIVES",
    "PRIMITIVE_SETS",
    "OPS",
    "make_op",
    "resolve_primitives",
    "Zero",
    "Identity",
    "FactorizedReduce",
    "ReLUConvBN",
    "SepConv",
    "DilConv",
    "PoolBN",
]

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

EGNAS_PRIMITIVES: tuple[str, ...] = (
    "avg_pool_3x3",
    "max_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

PRIMITIVE_SETS: dict[str, tuple[str, ...]] = {"darts": PRIMITIVES, "eg-nas": EGNAS_PRIMITIVES}


def resolve_primitives(primitives: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A named op set (``"darts"``, ``"eg-nas"``) or an explicit tuple of op names, validated.

    Raises:
        ConfigError: unknown set name, unknown op name, duplicates, or fewer than 2 ops.
    """
    if isinstance(primitives, str):
        if primitives not in PRIMITIVE_SETS:
            raise ConfigError(f"Unknown primitive set {primitives!r}; use one of {sorted(PRIMITIVE_SETS)} or a tuple of op names.")
        return PRIMITIVE_SETS[primitives]
    ops = tuple(primitives)
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise ConfigError(f"Unknown op(s) {bad}; known ops: {sorted(OPS)}.")
    if len(set(ops)) != len(ops) or len(ops) < 2:
        raise ConfigError(f"Primitives must be at least 2 distinct op names, got {ops}.")
    return ops


class Zero(nn.Module):
    """The ``'none'`` op: zeros of the output shape (stride 2 subsamples first)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Module):
    """``skip_connect`` with stride 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ReLUConvBN(nn.Module):
    """ReLU -> kxk conv (no bias) -> BN. Used as the cells' 1x1 preprocessing."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing a pixel parity: ReLU, two 1x1 stride-2 convs
    ``C_in -> C_out/2`` (the second on the input shifted by one pixel), concat, BN.

    ``(B, C_in, H, W) -> (B, C_out, ceil(H/2), ceil(W/2))``.

    Raises:
        ConfigError: ``C_out`` is odd.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        if C_out % 2:
            raise ConfigError(f"FactorizedReduce needs an even output width, got {C_out}; use an even C.")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class SepConv(nn.Module):
    """Separable conv applied twice: [ReLU, depthwise kxk (stride on the first repetition only),
    1x1 conv, BN] x 2 (DARTS ``sep_conv_kxk``)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU, depthwise kxk conv with dilation, 1x1 conv, BN (DARTS ``dil_conv_kxk``, dilation 2)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class PoolBN(nn.Module):
    """A pooling op followed by ``BN(affine=False)``: how DARTS/PC-DARTS wrap pools inside the
    search MixedOp (EG-NAS does not; docs/algorithms/darts-space.md)."""

    def __init__(self, pool: nn.Module, C: int) -> None:
        super().__init__()
        self.pool = pool
        self.bn = nn.BatchNorm2d(C, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pool(x))


OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
}


def make_op(name: str, C: int, stride: int, affine: bool) -> nn.Module:
    """Build the op ``name`` on ``C`` channels with ``stride`` (1 or 2).

    Raises:
        ConfigError: unknown op name or stride not in (1, 2).
    """
    if name not in OPS:
        raise ConfigError(f"Unknown DARTS op {name!r}; known ops: {sorted(OPS)}.")
    if stride not in (1, 2):
        raise ConfigError(f"DARTS ops take stride 1 or 2, got {stride}.")
    return OPS[name](C, stride, affine)
