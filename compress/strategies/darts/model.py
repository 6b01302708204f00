"""The DARTS evaluation network built from a genotype (quark0/darts ``NetworkCIFAR``;
Liu et al. 2019 §3.2; docs/algorithms/darts-space.md), without the auxiliary head.

``NetworkCIFAR(C, num_classes, layers, genotype)``: stem conv3x3 ``in -> 3C`` + BN, ``layers`` cells
(reduction cells at ``layers//3`` and ``2*layers//3`` double the width and halve the resolution),
global average pool, linear. Each node is the sum of its genotype ops; the cell output is the
channel concat of its ``concat`` states. Drop-path (on non-identity ops, train mode only) is
optional and off by default. The forward pass has no Python control flow on tensor values, so the
network traces with ``torch.export`` / the dynamo ONNX exporter and with fvcore.

Per-cell structure is held in :class:`CellSpec` so that a pruned network (e.g. DARTS-GAL's removed
intermediate nodes) is the same class built from edited specs. Every :class:`EvalCell` also has a
``node_mask`` buffer ``(steps,)`` of ones, applied only when ``apply_node_mask`` is True, with the
placement of docs/algorithms/darts-gal.md, choice 8 that makes removal exact: ``m_i`` multiplies node i's slice
of the concat **and** every edge output that reads node i (contribution ``m_i * op(x_i)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.errors import ConfigError
from compress.strategies.darts.genotype import Genotype
from compress.strategies.darts.ops import FactorizedReduce, Identity, ReLUConvBN, make_op
from compress.strategies.darts.search import reduction_positions

__all__ = ["CellSpec", "EvalCell", "NetworkCIFAR", "cell_specs_from_genotype", "drop_path", "build_from_arch"]

Pair = tuple[str, int]


@dataclass(frozen=True)
class CellSpec:
    """The structure of one evaluation cell.

    Attributes:
        nodes: per intermediate node (state ``2 + i``), its incoming ``(op, input_state)`` pairs; a
            node may be ``None`` (removed: not computed, must not be read nor concatenated).
        concat: states concatenated into the cell output (channels ``len(concat) * C``).
        reduction: whether edges from the cell inputs (states 0, 1) use stride 2.
    """

    nodes: tuple[tuple[Pair, ...] | None, ...]
    concat: tuple[int, ...]
    reduction: bool

    def __post_init__(self) -> None:
        nodes = tuple(None if n is None else tuple((str(op), int(i)) for op, i in n) for n in self.nodes)
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "concat", tuple(int(c) for c in self.concat))
        alive = {0, 1} | {2 + i for i, n in enumerate(nodes) if n is not None}
        for i, n in enumerate(nodes):
            if n is None:
                continue
            if not n:
                raise ConfigError(f"CellSpec node {2 + i} has no inputs; remove it (None) instead.")
            for op, idx in n:
                if idx >= 2 + i or idx not in alive:
                    raise ConfigError(f"CellSpec node {2 + i} reads state {idx}, which is not an earlier live state.")
        if not self.concat:
            raise ConfigError("CellSpec.concat is empty: a cell must output at least one state.")
        bad = [c for c in self.concat if c not in alive]
        if bad:
            raise ConfigError(f"CellSpec.concat {self.concat} lists removed or unknown states {bad}.")

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": [None if n is None else [[op, i] for op, i in n] for n in self.nodes],
                "concat": list(self.concat), "reduction": self.reduction}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CellSpec":
        return cls(tuple(None if n is None else tuple((op, i) for op, i in n) for n in d["nodes"]),
                   tuple(d["concat"]), bool(d["reduction"]))


def cell_specs_from_genotype(genotype: Genotype, layers: int,
                             reduction_indices: Sequence[int] | None = None) -> tuple[CellSpec, ...]:
    """One :class:`CellSpec` per cell: the genotype's reduce cell at ``reduction_indices``
    (default ``layers//3, 2*layers//3``), its normal cell elsewhere."""
    red = set(reduction_positions(layers) if reduction_indices is None else reduction_indices)
    normal = CellSpec(genotype.nodes("normal"), genotype.normal_concat, False)
    reduce = CellSpec(genotype.nodes("reduce"), genotype.reduce_concat, True)
    return tuple(reduce if i in red else normal for i in range(layers))


def drop_path(x: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest by ``1/(1-p)`` (train only).
    The keep mask is drawn on the CPU from ``generator`` (a CPU generator, checkpointed) and moved
    to ``x``'s device."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.bernoulli(torch.full((x.shape[0], 1, 1, 1), keep, dtype=x.dtype), generator=generator)
    return x * mask.to(x.device) / keep


class EvalCell(nn.Module):
    """One evaluation cell built from a :class:`CellSpec`.

    Inputs ``s0`` ``(B, C_pp, H0, W0)`` and ``s1`` ``(B, C_p, H, W)``; output
    ``(B, len(concat) * C, H', W')`` with ``H' = ceil(H/2)`` in a reduction cell.
    Edge modules live in ``self.edges[f"n{node}_{k}"]`` (node = state index, k = position of the
    input in that node's list), so names are stable when other nodes are removed.

    Node-mask hook (for GAL-style pruning): ``node_mask`` is a buffer ``(steps,)`` of ones;
    set ``apply_node_mask = True`` (or call :meth:`set_node_mask`) to multiply node outputs as
    described in the module docstring. With the flag off the mask costs nothing.
    """

    def __init__(self, spec: CellSpec, C_pp: int, C_p: int, C: int, reduction_prev: bool) -> None:
        super().__init__()
        self.spec = spec
        self.reduction = spec.reduction
        self.C = C
        self.steps = len(spec.nodes)
        self.concat = spec.concat
        self.multiplier = len(spec.concat)
        self.preprocess0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0)
        self.edges = nn.ModuleDict()
        for i, node in enumerate(spec.nodes):
            if node is None:
                continue
            for k, (op, idx) in enumerate(node):
                stride = 2 if spec.reduction and idx < 2 else 1
                self.edges[f"n{2 + i}_{k}"] = make_op(op, C, stride, affine=True)
        self.register_buffer("node_mask", torch.ones(self.steps))
        self.apply_node_mask = False
        self.drop_path_prob = 0.0
        self.generator: torch.Generator | None = None

    def set_node_mask(self, mask: torch.Tensor) -> None:
        """Replace the node mask (a tensor or an ``nn.Parameter`` of shape ``(steps,)``) and turn it on."""
        if tuple(mask.shape) != (self.steps,):
            raise ConfigError(f"node mask must have shape ({self.steps},), got {tuple(mask.shape)}.")
        if "node_mask" in self._buffers:
            del self._buffers["node_mask"]
        elif "node_mask" in self._parameters:
            del self._parameters["node_mask"]
        if isinstance(mask, nn.Parameter):
            self.register_parameter("node_mask", mask)
        else:
            self.register_buffer("node_mask", mask)
        self.apply_node_mask = True

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states: dict[int, torch.Tensor] = {0: self.preprocess0(s0), 1: self.preprocess1(s1)}
        masked = self.apply_node_mask
        for i, node in enumerate(self.spec.nodes):
            if node is None:
                continue
            acc = None
            for k, (_op, idx) in enumerate(node):
                edge = self.edges[f"n{2 + i}_{k}"]
                h = edge(states[idx])
                if self.training and self.drop_path_prob > 0.0 and not isinstance(edge, Identity):
                    h = drop_path(h, self.drop_path_prob, self.generator)
                if masked and idx >= 2:
                    h = h * self.node_mask[idx - 2]
                acc = h if acc is None else acc + h
            states[2 + i] = acc
        outs = [states[j] * self.node_mask[j - 2] if (masked and j >= 2) else states[j] for j in self.concat]
        return torch.cat(outs, dim=1)


class NetworkCIFAR(nn.Module):
    """DARTS evaluation network (no auxiliary head).

    Args:
        C: initial channels (36 for DARTS CIFAR, 16 in DARTS-GAL).
        num_classes: classifier outputs.
        layers: number of cells.
        genotype: the cells; ignored when ``cell_specs`` is given.
        in_channels: input image channels.
        stem_multiplier: stem width ``stem_multiplier * C`` (3).
        stem_stride: 1 (DARTS) or 2 (halves the resolution before the first cell; DARTS-GAL's extra
            stride for large images).
        reduction_indices: reduction cells (default ``layers//3, 2*layers//3``).
        drop_path_prob: drop-path probability (train mode only; 0 = off).
        cell_specs: explicit per-cell structure (``layers`` entries), e.g. after node pruning.

    ``forward(x (B, in_channels, H, W)) -> (B, num_classes)`` logits.

    Raises:
        ConfigError: invalid sizes or specs.
    """

    def __init__(self, C: int, num_classes: int, layers: int, genotype: Genotype | None = None, *,
                 in_channels: int = 3, stem_multiplier: int = 3, stem_stride: int = 1,
                 reduction_indices: Sequence[int] | None = None, drop_path_prob: float = 0.0,
                 cell_specs: Sequence[CellSpec] | None = None) -> None:
        super().__init__()
        if C < 1 or layers < 1:
            raise ConfigError(f"NetworkCIFAR needs C >= 1 and layers >= 1, got C={C}, layers={layers}.")
        if stem_stride not in (1, 2):
            raise ConfigError(f"stem_stride must be 1 or 2, got {stem_stride}.")
        if cell_specs is None:
            if genotype is None:
                raise ConfigError("NetworkCIFAR needs a genotype or cell_specs.")
            cell_specs = cell_specs_from_genotype(genotype, layers, reduction_indices)
        cell_specs = tuple(cell_specs)
        if len(cell_specs) != layers:
            raise ConfigError(f"cell_specs has {len(cell_specs)} entries for {layers} layers.")
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.in_channels, self.stem_multiplier, self.stem_stride = in_channels, stem_multiplier, stem_stride
        self.genotype = genotype
        self.cell_specs = cell_specs
        c_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_curr, 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(c_curr),
        )
        c_pp, c_p, c_curr = c_curr, c_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for spec in cell_specs:
            if spec.reduction:
                c_curr *= 2
            cell = EvalCell(spec, c_pp, c_p, c_curr, reduction_prev)
            reduction_prev = spec.reduction
            self.cells.append(cell)
            c_pp, c_p = c_p, cell.multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)
        self.drop_path_prob = drop_path_prob

    @property
    def drop_path_prob(self) -> float:
        return self._drop_path_prob

    @drop_path_prob.setter
    def drop_path_prob(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"drop_path_prob must be in [0, 1), got {p}.")
        self._drop_path_prob = float(p)
        for cell in getattr(self, "cells", []):
            cell.drop_path_prob = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def arch_dict(self) -> dict[str, Any]:
        """JSON-ready description that :func:`build_from_arch` turns back into this architecture
        (weights not included: load them with ``load_state_dict``)."""
        return {
            "format": "slimforge-darts-network/1",
            "C": self.C, "num_classes": self.num_classes, "layers": self.layers,
            "in_channels": self.in_channels, "stem_multiplier": self.stem_multiplier,
            "stem_stride": self.stem_stride,
            "genotype": None if self.genotype is None else self.genotype.to_dict(),
            "cell_specs": [s.to_dict() for s in self.cell_specs],
        }


def build_from_arch(arch: dict[str, Any]) -> NetworkCIFAR:
    """Rebuild a :class:`NetworkCIFAR` (fresh weights) from :meth:`NetworkCIFAR.arch_dict` output.

    Raises:
        ConfigError: unknown format or invalid content.
    """
    if arch.get("format") != "slimforge-darts-network/1":
        raise ConfigError(f"Not a DARTS network description (format {arch.get('format')!r}).")
    genotype = Genotype.from_dict(arch["genotype"]) if arch.get("genotype") else None
    return NetworkCIFAR(
        arch["C"], arch["num_classes"], arch["layers"], genotype,
        in_channels=arch["in_channels"], stem_multiplier=arch["stem_multiplier"], stem_stride=arch["stem_stride"],
        cell_specs=[CellSpec.from_dict(s) for s in arch["cell_specs"]],
    )
