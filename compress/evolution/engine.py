"""The task networks (LeNet-5, VGG-like) of the evolution's fitness and their pruning engine.

Source: Liu et al., "Evolving Transferable Neural Pruning Functions", GECCO'22 (paper 001),
Sec. 3.2 and supplementary Sec. 10.2; ``docs/algorithms/gp-prune.md`` (the pruning step of one
fitness evaluation).

Why this module does its own channel surgery instead of Torch-Pruning (which ``gp-prune``
uses on user models, :mod:`compress.strategies._parts.partial_pruning`): the paper's fitness is
defined on two fixed plain chains (``conv|linear -> BN -> ReLU -> pool``, no residuals, no
grouped convs, no concatenations), pruned layer by layer with the reference code's exact
per-layer, per-step removal counts, where every layer is scored *after* the layers before it
were pruned in the same step. On such a chain a channel's dependency group is always the same
two tensors (its own layer with its BN, and the next layer's input columns, a block of
``H x W`` columns when a conv feeds the flattening linear layer), so the dependency analysis
Torch-Pruning exists for has nothing to find, and :func:`prune_unit` does the slicing
directly. The engine also offers mask-based pruning (:func:`mask_channels`, the ``mask``
buffer of :class:`Unit`), which the paper's test of the pruning step needs: the masked
network and the physically sliced network must give identical outputs
(``docs/algorithms/gp-prune.md``, tests). The scoring helpers record the pre-ReLU output of
one unit with the unit's own ``record`` list rather than forward hooks, so that a fitness
evaluation never leaves hooks behind on an error. A rewrite onto Torch-Pruning would need a
``DependencyGraph`` rebuilt after every layer of every step of every tree; its cost against
this direct slicing has not been measured.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from compress.evolution.metrics import ChannelOperands, PruningMetric
from compress.evolution.tasks import PruneTaskSpec

__all__ = [
    "PrunableNet",
    "Unit",
    "build_net",
    "channel_operands",
    "mask_channels",
    "prune_unit",
    "removal_order",
    "score_channels",
]


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
