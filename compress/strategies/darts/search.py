"""The DARTS search supernet (Liu et al., DARTS, ICLR 2019, §2.1-2.2; docs/algorithms/darts-space.md) with the
optional PC-DARTS partial channels and edge normalisation (Xu et al., ICLR 2020, §3.2-3.3; §0.4).

* :class:`MixedOp` -- ``sum_o w_o * o(x)`` over the primitives with op weights ``w`` (Eq. 1 of
  DARTS / EG-NAS). With ``partial_channels=K > 1`` only the first ``C/K`` channels go through the
  ops, the rest bypass (2x2 max-pooled on stride-2 edges), then a channel shuffle with K groups.
* :class:`SearchCell` -- 2 inputs, ``steps`` intermediate nodes, each the sum of MixedOps over all
  earlier states (14 edges for 4 nodes); output = concat of the last ``multiplier`` states.
* :class:`SearchNetwork` -- stem, ``layers`` cells (reduction cells double the width and halve the
  resolution at ``layers//3`` and ``2*layers//3``), global average pool, linear.

The architecture parameters (``alphas_normal`` / ``alphas_reduce``, logits ``(14, |O|)``, init
``1e-3 N(0, 1)``; plus ``betas_*`` ``(14,)`` with edge normalisation) are plain tensors **held
outside** :meth:`nn.Module.parameters`: :meth:`SearchNetwork.weights` are the network weights,
:meth:`SearchNetwork.arch_parameters` the architecture; module conversions (``.to(device)``)
move them too, in place. ``forward(x, alphas=...)`` evaluates any other architecture (e.g. a CMA-ES
candidate) without touching the stored one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import ConfigError
from compress.strategies.darts.genotype import Genotype, derive_genotype, num_edges
from compress.strategies.darts.ops import PRIMITIVES, FactorizedReduce, PoolBN, ReLUConvBN, make_op, resolve_primitives

__all__ = ["MixedOp", "SearchCell", "SearchNetwork", "channel_shuffle", "reduction_positions"]


def reduction_positions(layers: int) -> tuple[int, ...]:
    """DARTS' reduction-cell indices ``(layers // 3, 2 * layers // 3)`` (deduplicated)."""
    return tuple(sorted({layers // 3, 2 * layers // 3}))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: ``(B, g*c, H, W) -> (B, c*g, H, W)`` interleaving the g groups."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MixedOp(nn.Module):
    """The continuous relaxation of one edge: ``sum_o w_o * o(x)``.

    Args:
        C: channels in = out.
        stride: 1, or 2 on edges leaving a reduction cell's inputs.
        primitives: op names, one per weight.
        partial_channels: PC-DARTS K (1 = all channels, DARTS).
        pool_bn: wrap pools in ``BN(affine=False)`` (DARTS/PC-DARTS; EG-NAS: False).

    ``forward(x (B, C, H, W), weights (|O|,)) -> (B, C, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str] = PRIMITIVES, *, partial_channels: int = 1,
                 pool_bn: bool = True) -> None:
        super().__init__()
        if partial_channels < 1 or C % partial_channels:
            raise ConfigError(f"partial_channels={partial_channels} must divide C={C}.")
        self.k = partial_channels
        self.stride = stride
        c_op = C // partial_channels
        self.ops = nn.ModuleList()
        for name in primitives:
            op = make_op(name, c_op, stride, affine=False)
            if pool_bn and "pool" in name:
                op = PoolBN(op, c_op)
            self.ops.append(op)
        self.bypass = nn.MaxPool2d(2, 2, ceil_mode=True) if (partial_channels > 1 and stride == 2) else None

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.k == 1:
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        c = x.shape[1] // self.k
        xa, xb = x[:, :c], x[:, c:]
        out = sum(w * op(xa) for w, op in zip(weights, self.ops))
        if self.bypass is not None:
            xb = self.bypass(xb)
        return channel_shuffle(torch.cat([out, xb], dim=1), self.k)


class SearchCell(nn.Module):
    """A DARTS search cell: ``steps`` nodes, each summing MixedOps over all earlier states.

    Inputs ``s0`` (cell k-2, ``C_pp`` channels), ``s1`` (cell k-1, ``C_p`` channels); output
    ``(B, multiplier * C, H', W')``. ``weights`` is ``(num_edges(steps), |O|)`` op weights (already
    soft-maxed); ``edge_weights`` is ``(num_edges,)`` PC-DARTS edge weights or None.
    """

    def __init__(self, steps: int, multiplier: int, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, primitives: Sequence[str] = PRIMITIVES, *, partial_channels: int = 1,
                 pool_bn: bool = True) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        self.preprocess0 = FactorizedReduce(C_pp, C, affine=False) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(MixedOp(C, stride, primitives, partial_channels=partial_channels, pool_bn=pool_bn))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            terms = []
            for j, h in enumerate(states):
                out = self.edges[offset + j](h, weights[offset + j])
                if edge_weights is not None:
                    out = edge_weights[offset + j] * out
                terms.append(out)
            offset += len(states)
            states.append(sum(terms))
        return torch.cat(states[-self.multiplier:], dim=1)


class SearchNetwork(nn.Module):
    """The DARTS supernet.

    Args:
        C: initial channels (16 in DARTS / EG-NAS search).
        num_classes: classifier outputs.
        layers: number of cells (8 in DARTS search).
        steps, multiplier, stem_multiplier: DARTS defaults 4, 4, 3.
        primitives: op set name (``"darts"`` 8 ops, ``"eg-nas"`` 7 ops) or tuple of op names.
        in_channels: input image channels.
        partial_channels: PC-DARTS K (1 = off).
        edge_norm: PC-DARTS edge normalisation (adds ``betas_normal`` / ``betas_reduce``).
        pool_bn: BN after pools inside MixedOps (DARTS True, EG-NAS False).
        stem_stride: stride of the stem conv (1 as in DARTS; 2 searches at half resolution).
        reduction_indices: cells that reduce; default ``(layers//3, 2*layers//3)``.
        generator: torch generator for the ``1e-3 N(0,1)`` architecture init (None: global RNG).

    ``forward(x (B, in_channels, H, W), alphas=None) -> (B, num_classes)`` logits. ``alphas`` may be a
    pair ``(alphas_normal, alphas_reduce)`` of logits to evaluate instead of the stored ones.

    Raises:
        ConfigError: invalid sizes (e.g. ``partial_channels`` not dividing C).
    """

    def __init__(self, C: int, num_classes: int, layers: int, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, *, primitives: str | Sequence[str] = PRIMITIVES, in_channels: int = 3,
                 partial_channels: int = 1, edge_norm: bool = False, pool_bn: bool = True, stem_stride: int = 1,
                 reduction_indices: Sequence[int] | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if C < 1 or layers < 1 or steps < 1 or not 1 <= multiplier <= steps + 2:
            raise ConfigError(f"Invalid supernet sizes C={C}, layers={layers}, steps={steps}, multiplier={multiplier}.")
        if stem_stride not in (1, 2):
            raise ConfigError(f"stem_stride must be 1 or 2, got {stem_stride}.")
        self.primitives = resolve_primitives(primitives)
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.steps, self.multiplier = steps, multiplier
        self.partial_channels = partial_channels
        self.edge_norm = edge_norm
        self.reduction_indices = tuple(reduction_indices) if reduction_indices is not None else reduction_positions(layers)
        c_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_curr, 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(c_curr),
        )
        c_pp, c_p, c_curr = c_curr, c_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in self.reduction_indices
            if reduction:
                c_curr *= 2
            k = partial_channels if c_curr % partial_channels == 0 else 1
            cell = SearchCell(steps, multiplier, c_pp, c_p, c_curr, reduction, reduction_prev, self.primitives,
                              partial_channels=k, pool_bn=pool_bn)
            reduction_prev = reduction
            self.cells.append(cell)
            c_pp, c_p = c_p, multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)
        E, O = num_edges(steps), len(self.primitives)
        self.alphas_normal = 1e-3 * torch.randn(E, O, generator=generator)
        self.alphas_reduce = 1e-3 * torch.randn(E, O, generator=generator)
        self.betas_normal = 1e-3 * torch.randn(E, generator=generator) if edge_norm else None
        self.betas_reduce = 1e-3 * torch.randn(E, generator=generator) if edge_norm else None

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 (torch's signature)
        """Module conversions (``.to(device)``, ``.double()`` ...) convert the architecture tensors
        too: in place (``t.data = fn(t.data)``) where the tensor types allow it (CPU <-> CUDA, dtypes),
        so the optimisers that hold them stay valid; otherwise (e.g. to ``meta``) they are
        replaced, as ``nn.Module`` does with its parameters."""
        super()._apply(fn, recurse)
        for name in self._arch_names():
            t = getattr(self, name)
            new = fn(t.data)
            try:
                t.data = new
            except RuntimeError:  # incompatible tensor types
                setattr(self, name, new.requires_grad_(t.requires_grad))
        return self

    def _arch_names(self) -> list[str]:
        return ["alphas_normal", "alphas_reduce"] + (["betas_normal", "betas_reduce"] if self.edge_norm else [])

    # ------------------------------------------------------------------ parameters
    def weights(self) -> Iterator[nn.Parameter]:
        """The network weights (what the SGD optimiser trains). Same as ``parameters()``: the
        architecture tensors are not registered."""
        return self.parameters()

    def arch_parameters(self) -> list[torch.Tensor]:
        """``[alphas_normal, alphas_reduce]`` (+ ``[betas_normal, betas_reduce]`` with edge_norm)."""
        out = [self.alphas_normal, self.alphas_reduce]
        if self.edge_norm:
            out += [self.betas_normal, self.betas_reduce]
        return out

    def set_arch_requires_grad(self, flag: bool) -> None:
        """Let gradients flow into the architecture tensors (DARTS) or not (EG-NAS: never)."""
        for t in self.arch_parameters():
            t.requires_grad_(flag)

    def arch_state(self) -> dict[str, torch.Tensor]:
        """Detached copies of the architecture tensors by name (for checkpoints)."""
        return {n: getattr(self, n).detach().clone() for n in self._arch_names()}

    @torch.no_grad()
    def load_arch_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy tensors from :meth:`arch_state` output into the stored architecture (in place)."""
        for n, v in state.items():
            getattr(self, n).copy_(v)

    def arch_vector(self) -> torch.Tensor:
        """``cat(alphas_normal.flatten(), alphas_reduce.flatten())`` detached, ``(2 * E * |O|,)``."""
        return torch.cat([self.alphas_normal.detach().flatten(), self.alphas_reduce.detach().flatten()])

    def split_arch_vector(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`arch_vector`: ``(alphas_normal, alphas_reduce)`` views of ``v``."""
        E, O = self.alphas_normal.shape
        return v[: E * O].view(E, O), v[E * O:].view(E, O)

    def genotype(self) -> Genotype:
        """DARTS discretisation of the stored architecture (see :func:`derive_genotype`)."""
        return derive_genotype(
            self.alphas_normal, self.alphas_reduce, self.primitives, steps=self.steps, multiplier=self.multiplier,
            betas_normal=self.betas_normal, betas_reduce=self.betas_reduce,
        )

    # ------------------------------------------------------------------ forward
    def _edge_weights(self, betas: torch.Tensor | None) -> torch.Tensor | None:
        if betas is None:
            return None
        parts, start, n = [], 0, 2
        for _ in range(self.steps):
            parts.append(F.softmax(betas[start: start + n], dim=-1))
            start += n
            n += 1
        return torch.cat(parts)

    def forward(self, x: torch.Tensor, alphas: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        a_n, a_r = (self.alphas_normal, self.alphas_reduce) if alphas is None else alphas
        w_n, w_r = F.softmax(a_n, dim=-1), F.softmax(a_r, dim=-1)
        e_n, e_r = self._edge_weights(self.betas_normal), self._edge_weights(self.betas_reduce)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            w, e = (w_r, e_r) if cell.reduction else (w_n, e_n)
            s0, s1 = s1, cell(s0, s1, w, e)
        return self.classifier(self.global_pooling(s1).flatten(1))
