"""The SEArch student: a static DAG of feature-map nodes joined by stacks of sep_conv_3x3 units.

Paper §3.1 / App. B. A node is a feature map; an edge ``e_ij`` is a stack of ``n_ij`` residual
separable 3x3 convolution units (Fig. 6); a node with several in-edges is the **sum** of their
outputs. Every node ``v`` is mapped to a teacher node ``q_v`` (1-based, ``v̂_1`` = image) and
copies its spatial *level* (number of stride-2 halvings from the input) and, scaled by a width
multiplier, its channel count (docs/algorithms/grow.md, choice 2). The student starts as ``v1 -> v2``
(image -> final feature map, ``q = (1, m)``) plus a classifier head (global average pool +
linear); it grows by two edge-splitting operations (§3.4):

* **deepen** ``e_ij``: append units (stride 1, ``C_j -> C_j``) whose residual branch ends in a
  BatchNorm with ``gamma = beta = 0``; since every unit ends in a ReLU, its input is
  non-negative and the new unit is exactly the identity (eval *and* train mode);
* **widen** ``e_ij``: add a node ``v_k`` with ``e_ik`` and ``e_kj``; ``v_j`` gains one summand.
  ``widen_init="gate"`` (default) multiplies the new summand by a learnable per-channel gate
  initialised to 0 (function preserved exactly; the gate receives gradient at once).
  ``widen_init="zero_bn"`` is docs/algorithms/grow.md, choice 9 literally: ``e_kj``'s last unit gets a
  projection shortcut and both its BatchNorms ``gamma = beta = 0``; exact too, but its output
  is ``ReLU(0)`` and PyTorch's ReLU has zero gradient at 0, so that branch never trains
  (kept as an ablation switch, documented trap).

Unit (Fig. 6, docs/algorithms/grow.md, choice 10)::

    DW3x3(stride s) -> PW1x1(C_in -> C_out) -> BN -> ReLU -> DW3x3 -> PW1x1 -> BN  (+ shortcut) -> ReLU
    shortcut = identity if s == 1 and C_in == C_out, else 1x1 conv (stride s) + BN

An edge from level ``L_a`` to ``L_b`` carries ``k = L_b - L_a`` strides: ``stride_rule=
"per_halving"`` (default) uses ``max(initial_ops, k)`` units, the first ``k`` of stride 2 (their
outputs take the teacher's width at the intermediate level); ``"single"`` uses one unit of
stride ``2**k``. The module's ``forward`` is a fixed Python loop over the stored structure, so
it traces (fx, torch.export) and exports to ONNX; no control flow depends on tensor values.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from compress.errors import ConfigError

__all__ = [
    "UnitSpec", "EdgeSpec", "NodeSpec", "Structure", "SepConvUnit", "Edge", "GrowStudent",
    "widen_index", "edge_units", "initial_structure", "WIDEN_INITS", "STRIDE_RULES",
]

WIDEN_INITS = ("gate", "zero_bn")
STRIDE_RULES = ("per_halving", "single")


def widen_index(q_i: int, q_j: int, c: float) -> int:
    """Eq. 6: ``q_k = floor(c * q_i + (1 - c) * q_j)`` (a tiny epsilon absorbs float round-off,
    e.g. ``0.1 * 10 + 0.9 * 20``). Equal for 0- or 1-based indices. ``(1, 28, 0.5) -> 14``,
    ``(3, 4, 0.5) -> 3`` (adjacent teacher nodes: ``q_k = q_i``, docs/algorithms/grow.md, choice 6)."""
    return int(math.floor(c * q_i + (1.0 - c) * q_j + 1e-9))


# ---------------------------------------------------------------------------------------- specs


@dataclass
class UnitSpec:
    """One sep_conv_3x3 unit: channels in/out, stride, and whether the shortcut is forced to be a
    1x1 projection even when shapes match (``widen_init="zero_bn"``)."""

    cin: int
    cout: int
    stride: int = 1
    projection: bool = False


@dataclass
class EdgeSpec:
    """Edge ``src -> dst``: its unit stack and whether its output passes a learnable gate."""

    src: int
    dst: int
    units: list[UnitSpec]
    gated: bool = False

    @property
    def key(self) -> str:
        return f"e{self.src}_{self.dst}"

    @property
    def n_ops(self) -> int:
        return len(self.units)


@dataclass
class NodeSpec:
    """Node ``v_id``: teacher index ``q`` (1-based), channels, spatial level and size ``(H, W)``."""

    id: int
    q: int
    channels: int
    level: int
    hw: tuple[int, int]


@dataclass
class Structure:
    """The student DAG (JSON round-trip with :meth:`to_dict` / :meth:`from_dict`).

    ``input_id`` is ``v1`` (the image), ``sink_id`` is ``v2`` (final feature map, fed to the head).
    """

    nodes: list[NodeSpec]
    edges: list[EdgeSpec]
    num_classes: int
    input_id: int = 1
    sink_id: int = 2
    meta: dict[str, Any] = field(default_factory=dict)

    # -- queries
    def node(self, nid: int) -> NodeSpec:
        for n in self.nodes:
            if n.id == nid:
                return n
        raise KeyError(nid)

    def edge(self, src: int, dst: int) -> EdgeSpec:
        for e in self.edges:
            if e.src == src and e.dst == dst:
                return e
        raise KeyError((src, dst))

    def in_edges(self, nid: int) -> list[EdgeSpec]:
        return [e for e in self.edges if e.dst == nid]

    def out_edges(self, nid: int) -> list[EdgeSpec]:
        return [e for e in self.edges if e.src == nid]

    def deg_in(self, nid: int) -> int:
        return len(self.in_edges(nid))

    def deg_out(self, nid: int, *, head_counts: bool = True) -> int:
        """Out-degree; the classifier head counts as a successor of the sink when ``head_counts``
        (docs/algorithms/grow.md, choice 4), so ``S(sink)`` is not always 0."""
        return len(self.out_edges(nid)) + (1 if head_counts and nid == self.sink_id else 0)

    def topo_order(self) -> list[int]:
        """Node ids in a topological order (Kahn; ties by lowest id)."""
        indeg = {n.id: 0 for n in self.nodes}
        for e in self.edges:
            indeg[e.dst] += 1
        ready = sorted(i for i, d in indeg.items() if d == 0)
        order = []
        while ready:
            nid = ready.pop(0)
            order.append(nid)
            for e in self.out_edges(nid):
                indeg[e.dst] -= 1
                if indeg[e.dst] == 0:
                    ready.append(e.dst)
                    ready.sort()
        if len(order) != len(self.nodes):
            raise ValueError("student graph has a cycle")
        return order

    def is_dag(self) -> bool:
        try:
            self.topo_order()
            return True
        except ValueError:
            return False

    def next_id(self) -> int:
        return max(n.id for n in self.nodes) + 1

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "slimforge-grow-structure/1",
            "num_classes": self.num_classes,
            "input_id": self.input_id,
            "sink_id": self.sink_id,
            "nodes": [{**asdict(n), "hw": list(n.hw)} for n in self.nodes],
            "edges": [{"src": e.src, "dst": e.dst, "gated": e.gated, "units": [asdict(u) for u in e.units]}
                      for e in self.edges],
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Structure":
        nodes = [NodeSpec(id=int(n["id"]), q=int(n["q"]), channels=int(n["channels"]), level=int(n["level"]),
                          hw=(int(n["hw"][0]), int(n["hw"][1]))) for n in d["nodes"]]
        edges = [EdgeSpec(src=int(e["src"]), dst=int(e["dst"]), gated=bool(e.get("gated", False)),
                          units=[UnitSpec(**u) for u in e["units"]]) for e in d["edges"]]
        return cls(nodes=nodes, edges=edges, num_classes=int(d["num_classes"]), input_id=int(d["input_id"]),
                   sink_id=int(d["sink_id"]), meta=dict(d.get("meta", {})))

    def copy(self) -> "Structure":
        return Structure.from_dict(json.loads(json.dumps(self.to_dict())))

    def summary(self) -> dict[str, Any]:
        return {"nodes": len(self.nodes), "edges": len(self.edges), "ops": sum(e.n_ops for e in self.edges),
                "q": {n.id: n.q for n in self.nodes}, "ops_per_edge": {e.key: e.n_ops for e in self.edges}}

    def to_dot(self, title: str = "") -> str:
        """Graphviz DOT of the DAG in the style of the paper's Fig. 2 (``conv xN`` on edges)."""
        lines = ["digraph student {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fillcolor=white];']
        if title:
            lines.append(f'  label="{title}"; labelloc=t;')
        for n in self.nodes:
            color = "palegreen" if n.id in (self.input_id, self.sink_id) else "white"
            lines.append(f'  v{n.id} [label="v{n.id} (q={n.q})\\n{n.channels}x{n.hw[0]}x{n.hw[1]}", '
                         f'fillcolor={color}];')
        for e in self.edges:
            strides = [u.stride for u in e.units if u.stride > 1]
            s = f", s{'x'.join(map(str, strides))}" if strides else ""
            lines.append(f'  v{e.src} -> v{e.dst} [label="conv x{e.n_ops}{s}"];')
        lines.append('  head [shape=plaintext, label="pool+fc"];')
        lines.append(f"  v{self.sink_id} -> head;")
        lines.append("}")
        return "\n".join(lines)


def edge_units(
    c_src: int, level_src: int, c_dst: int, level_dst: int, *, width_at_level: Callable[[int], int],
    initial_ops: int = 1, stride_rule: str = "per_halving",
) -> list[UnitSpec]:
    """Units of a new edge between two nodes (docs/algorithms/grow.md, choice 2, see the module docstring).

    Raises:
        ConfigError: the destination is at a higher resolution than the source (``level_dst <
            level_src``), which a stack of stride-1/2 convolutions cannot reach.
    """
    k = level_dst - level_src
    if k < 0:
        raise ConfigError(f"an edge cannot upsample (level {level_src} -> {level_dst}).")
    if stride_rule == "single":
        units = [UnitSpec(c_src, c_dst, 2 ** k)]
        return units + [UnitSpec(c_dst, c_dst, 1) for _ in range(initial_ops - 1)]
    n = max(initial_ops, k)
    units: list[UnitSpec] = []
    cin = c_src
    for t in range(n):
        if t < k:
            cout = c_dst if t == k - 1 else max(1, int(width_at_level(level_src + t + 1)))
            units.append(UnitSpec(cin, cout, 2))
        else:
            cout = c_dst
            units.append(UnitSpec(cin, cout, 1))
        cin = cout
    return units


def initial_structure(
    *, in_channels: int, in_hw: tuple[int, int], q_sink: int, c_sink: int, level_sink: int, sink_hw: tuple[int, int],
    num_classes: int, width_at_level: Callable[[int], int], initial_ops: int = 1, stride_rule: str = "per_halving",
) -> Structure:
    """``G_1``: ``v1`` (image, ``q = 1``) -> ``v2`` (final feature map, ``q = m``) (§3.1)."""
    nodes = [NodeSpec(1, 1, in_channels, 0, in_hw), NodeSpec(2, q_sink, c_sink, level_sink, sink_hw)]
    units = edge_units(in_channels, 0, c_sink, level_sink, width_at_level=width_at_level,
                       initial_ops=initial_ops, stride_rule=stride_rule)
    return Structure(nodes=nodes, edges=[EdgeSpec(1, 2, units)], num_classes=num_classes)


# ---------------------------------------------------------------------------------------- modules


class SepConvUnit(nn.Module):
    """Residual sep_conv_3x3 (Fig. 6). ``(B, C_in, H, W) -> (B, C_out, ceil(H/s), ceil(W/s))``."""

    def __init__(self, spec: UnitSpec) -> None:
        super().__init__()
        cin, cout, s = spec.cin, spec.cout, spec.stride
        self.dw1 = nn.Conv2d(cin, cin, 3, stride=s, padding=1, groups=cin, bias=False)
        self.pw1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()
        self.dw2 = nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False)
        self.pw2 = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if spec.projection or s != 1 or cin != cout:
            self.sc_conv: nn.Module | None = nn.Conv2d(cin, cout, 1, stride=s, bias=False)
            self.sc_bn: nn.Module | None = nn.BatchNorm2d(cout)
        else:
            self.sc_conv = self.sc_bn = None

    def zero_residual(self) -> None:
        """Residual branch outputs exactly 0 (last BN ``gamma = beta = 0``)."""
        with torch.no_grad():
            self.bn2.weight.zero_()
            self.bn2.bias.zero_()

    def zero_all(self) -> None:
        """Residual and (projection) shortcut both output exactly 0."""
        self.zero_residual()
        if self.sc_bn is None:
            raise ValueError("zero_all needs a projection shortcut")
        with torch.no_grad():
            self.sc_bn.weight.zero_()
            self.sc_bn.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.act(self.bn1(self.pw1(self.dw1(x))))
        r = self.bn2(self.pw2(self.dw2(r)))
        s = x if self.sc_conv is None else self.sc_bn(self.sc_conv(x))
        return torch.relu(r + s)


class Edge(nn.Module):
    """A stack of units; a gated edge multiplies its output by a per-channel gate ``(1, C, 1, 1)``."""

    def __init__(self, spec: EdgeSpec) -> None:
        super().__init__()
        self.units = nn.Sequential(*[SepConvUnit(u) for u in spec.units])
        self.gate = nn.Parameter(torch.ones(1, spec.units[-1].cout, 1, 1)) if spec.gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.units(x)
        return y * self.gate if self.gate is not None else y


class GrowStudent(nn.Module):
    """An ordinary ``nn.Module`` built from a :class:`Structure`.

    ``forward``: ``(B, C_in, H, W) -> (B, num_classes)`` logits. ``forward_features`` also
    returns every node's map ``{node_id: (B, C_v, H_v, W_v)}``.
    """

    def __init__(self, structure: Structure) -> None:
        super().__init__()
        self.structure = structure.copy()
        self.edges = nn.ModuleDict({e.key: Edge(e) for e in self.structure.edges})
        sink = self.structure.node(self.structure.sink_id)
        self.head = nn.Linear(sink.channels, self.structure.num_classes)
        self._refresh()

    def _refresh(self) -> None:
        s = self.structure
        self._order = [n for n in s.topo_order() if n != s.input_id]
        self._inputs = {n: [(e.key, e.src) for e in s.in_edges(n)] for n in self._order}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GrowStudent":
        return cls(Structure.from_dict(d))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        feats: dict[int, torch.Tensor] = {self.structure.input_id: x}
        for nid in self._order:
            total = None
            for key, src in self._inputs[nid]:
                y = self.edges[key](feats[src])
                total = y if total is None else total + y
            feats[nid] = total
        pooled = feats[self.structure.sink_id].mean(dim=(2, 3))
        return self.head(pooled), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    # -- growth (in place; the strategy applies them to a deep copy)
    def deepen(self, src: int, dst: int, n_new: int, *, seed: int | None = None) -> None:
        """Append ``n_new`` identity-initialised units to ``e_src,dst`` (function preserved exactly)."""
        e = self.structure.edge(src, dst)
        c = e.units[-1].cout
        new_specs = [UnitSpec(c, c, 1) for _ in range(n_new)]
        with _seeded(seed):
            mods = [SepConvUnit(u) for u in new_specs]
        for m in mods:
            m.zero_residual()
            self.edges[e.key].units.append(m)
        e.units.extend(new_specs)

    def widen(self, src: int, dst: int, node: NodeSpec, units_in: list[UnitSpec], units_out: list[UnitSpec], *,
              init: str = "gate", seed: int | None = None) -> int:
        """Add node ``v_k`` with edges ``src -> k`` and ``k -> dst``; the new summand into ``dst`` is
        exactly zero at insertion (``init``: ``"gate"`` or ``"zero_bn"``). Returns ``k``."""
        if init not in WIDEN_INITS:
            raise ConfigError(f"widen init must be one of {WIDEN_INITS}, got {init!r}")
        s = self.structure
        k = node.id
        if any(n.id == k for n in s.nodes):
            raise ValueError(f"node id {k} exists")
        units_out = [copy.copy(u) for u in units_out]
        if init == "zero_bn":
            units_out[-1].projection = True
        e_in = EdgeSpec(src, k, [copy.copy(u) for u in units_in])
        e_out = EdgeSpec(k, dst, units_out, gated=(init == "gate"))
        with _seeded(seed):
            m_in, m_out = Edge(e_in), Edge(e_out)
        if init == "gate":
            with torch.no_grad():
                m_out.gate.zero_()
        else:
            m_out.units[-1].zero_all()
        s.nodes.append(node)
        s.edges.extend([e_in, e_out])
        self.edges[e_in.key] = m_in
        self.edges[e_out.key] = m_out
        self._refresh()
        return k

    def reset_parameters(self, seed: int | None = None) -> None:
        """Fresh initialisation of every layer (final retrain from scratch); gates become 1."""
        with _seeded(seed):
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                    m.reset_parameters()
            for e in self.edges.values():
                if e.gate is not None:
                    with torch.no_grad():
                        e.gate.fill_(1.0)


class _seeded:
    """Context manager: seed torch's global RNG for module init, then restore its state."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._ctx = None

    def __enter__(self):
        if self.seed is not None:
            self._ctx = torch.random.fork_rng(devices=[])
            self._ctx.__enter__()
            torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            return self._ctx.__exit__(*exc)
        return False
