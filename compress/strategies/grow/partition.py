"""Teacher partition for SEArch (paper §3.1): the longest input -> final-feature-map path.

The paper partitions the teacher along "the longest path originating from the input and
terminating at the final feature map"; the feature maps on that path are the teacher nodes
``v̂_1 .. v̂_m`` (``v̂_1`` = image, ``v̂_m`` = final feature map) that supervise student nodes.
We find that path on the teacher's computation graph, never on per-architecture lists:

1. **Graph.** ``torch.fx.symbolic_trace`` (leaf modules: ``torch.nn`` layers); if it fails,
   ``torch.export.export(strict=False)`` (aten-level graph with ``nn_module_stack`` metadata).
   If both fail: :class:`UnsupportedModelError` whose ``layer`` is the module being traced
   when symbolic tracing broke.
2. **Shapes.** The graph is run once on the example batch (``ShapeProp``), so every node has
   a measured output shape; only tensor-valued nodes that depend on the input take part.
3. **Final feature map.** The input of the first *global pooling* node that feeds the output
   (``AdaptiveAvg/MaxPool2d``, ``adaptive_*_pool2d``, ``mean``/``amax`` over ``(2, 3)``); if
   there is none, the last 4-D node whose consumer is not 4-D (flatten/view). No 4-D map:
   :class:`UnsupportedModelError` naming the output node.
4. **Longest path** by dynamic programming over the (topologically ordered) graph, every
   tensor node counting 1; the residual branch, not the shortcut, is therefore on the path.
5. **Supervision points** (docs/algorithms/grow.md, choice 12; ``granularity``):

   * ``"blocks"`` (default): every path node is mapped to its *unit*, the outermost module
     in its ``nn_module_stack`` that is not a container (``Sequential``/``ModuleList``/
     ``ModuleDict`` and subclasses). A unit that contains a convolution below itself is a
     *block* (``BasicBlock``, ``InvertedResidual``, ``DepthwiseSeparableConv`` ...); each
     block is one segment. Consecutive path nodes outside blocks (stem/head layers, root
     functions) form segments that start at each ``Conv2d``, so a stem ``conv-bn-relu-pool``
     is one point and a plain conv stack gives one point per conv layer. The points are the
     image plus each segment's last node. CIFAR ResNet-56 gives image, stem, 27 blocks
     (``m = 29``, the paper's Fig. 3); ResNet-18 gives image, stem, 8 blocks.
   * ``"path"``: every node on the path is a point (finest partition).
   * ``nodes``: an explicit list of graph node names (as in :attr:`TeacherPartition.path`);
     the final feature map is always appended.

Spatial *levels* (docs/algorithms/grow.md, choice 2): a point with spatial size ``H`` has level
``round(log2(H_in / H))`` made non-decreasing along the path; a student node at level ``L``
has the size reached from the input by ``L`` stride-2 convolutions (``ceil`` halving).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from compress.errors import UnsupportedModelError

__all__ = ["TeacherPoint", "TeacherPartition", "partition_teacher", "FeatureExtractor", "halve", "GRANULARITIES"]

GRANULARITIES = ("blocks", "path")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL_FN_NAMES = {"adaptive_avg_pool2d", "adaptive_max_pool2d"}
_REDUCE_NAMES = {"mean", "amax", "sum", "max"}


def halve(size: int, times: int) -> int:
    """Spatial size after ``times`` 3x3 stride-2 convolutions with padding 1 (``ceil(size / 2)`` each)."""
    for _ in range(times):
        size = (size + 1) // 2
    return size


@dataclass(frozen=True)
class TeacherPoint:
    """One teacher node ``v̂_index`` (1-based, as in the paper).

    Attributes:
        index: position on the path, 1 = image, m = final feature map.
        name: graph node name (``"input"`` for the image).
        module: qualified module that produced it ("" for root-level functions).
        shape: ``(C, H, W)`` measured on the example batch.
        level: number of stride-2 halvings from the input (non-decreasing along the path).
    """

    index: int
    name: str
    module: str
    shape: tuple[int, int, int]
    level: int

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "module": self.module, "shape": list(self.shape),
                "level": self.level}


@dataclass
class TeacherPartition:
    """The teacher path and its supervision points ``v̂_1 .. v̂_m`` (``points[q - 1]`` is ``v̂_q``).

    Attributes:
        points: the m teacher nodes, image first, final feature map last.
        path: names of every tensor node on the longest input -> final map path.
        method: ``"fx"`` (symbolic trace) or ``"export"`` (torch.export fallback).
        granularity: how the points were picked (``"blocks"``, ``"path"`` or ``"nodes"``).
        graph_module: the traced graph (used by :class:`FeatureExtractor`).
        output_node: name of the graph's output value (the logits).
    """

    points: list[TeacherPoint]
    path: list[str]
    method: str
    granularity: str
    graph_module: fx.GraphModule = field(repr=False)
    output_node: str = ""

    @property
    def m(self) -> int:
        return len(self.points)

    def width_at_level(self, level: int) -> int:
        """Channels of the teacher at a spatial level: the last point at exactly that level, else
        the first point deeper than it (used for the intermediate units of strided edges)."""
        exact = [p for p in self.points if p.level == level and p.index > 1]
        if exact:
            return exact[-1].shape[0]
        deeper = [p for p in self.points if p.level > level]
        return (deeper[0] if deeper else self.points[-1]).shape[0]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "granularity": self.granularity, "m": self.m, "path_length": len(self.path),
                "points": [p.to_dict() for p in self.points]}

    def signature(self) -> list[Any]:
        """JSON-ready identity of the partition (for checkpoint compatibility)."""
        return [[p.name, list(p.shape)] for p in self.points]


# ---------------------------------------------------------------------------------------- tracing


class _StackTracer(fx.Tracer):
    """``symbolic_trace`` that remembers which module was being traced when it failed."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        self.stack.append(name)
        out = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return out


def _trace(model: nn.Module, example: torch.Tensor) -> tuple[fx.GraphModule, str]:
    tracer = _StackTracer()
    try:
        graph = tracer.trace(model)
        return fx.GraphModule(model, graph, type(model).__name__), "fx"
    except Exception as fx_exc:  # noqa: BLE001 - any tracing failure leads to the fallback
        failing = tracer.stack[-1] if tracer.stack else type(model).__name__
        fx_msg = (str(fx_exc).strip().splitlines() or [type(fx_exc).__name__])[0]
    quiet = [logging.getLogger(n) for n in ("torch.fx.experimental.symbolic_shapes", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:  # torch logs the failing graph at WARNING; the error below says it all
            lg.setLevel(logging.CRITICAL)
        with contextlib.redirect_stderr(io.StringIO()):  # torch.export prints the graph on failure
            ep = torch.export.export(model, (example,), strict=False)
        return ep.module(), "export"
    except Exception as exp_exc:  # noqa: BLE001
        exp_msg = (str(exp_exc).strip().splitlines() or [type(exp_exc).__name__])[0]
        raise UnsupportedModelError(
            f"grow cannot read the teacher's graph: torch.fx failed in module {failing!r} ({fx_msg}) and "
            f"torch.export failed too ({exp_msg[:200]}). Remove data-dependent Python control flow from that "
            "module's forward (or give a teacher that traces), or pass config teacher_nodes.",
            layer=failing,
        ) from exp_exc
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)


def _op_name(node: fx.Node) -> str:
    """Bare operator name of a call_function / call_method node (``"adaptive_avg_pool2d"``, ``"mean"``);
    aten overloads lose their namespace and overload (``aten.mean.dim`` -> ``"mean"``)."""
    t = node.target
    if isinstance(t, str):
        return t
    name = getattr(t, "__name__", None) or str(t)
    if str(t).startswith("aten."):
        return str(t).split(".")[1]
    return str(name).split(".")[0]


def _fqn_stack(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for key, val in stack.items():
        fqn = val[0] if isinstance(val, tuple) else key
        fqn = str(fqn).split("@")[0]
        if fqn:
            out.append(fqn)
    return out


def _module_of(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = _fqn_stack(node)
    return stack[-1] if stack else ""


def _is_tensor_node(node: fx.Node) -> bool:
    tm = node.meta.get("tensor_meta")
    return tm is not None and hasattr(tm, "shape")


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(int(s) for s in node.meta["tensor_meta"].shape)


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if _is_tensor_node(a)]


def _is_global_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if not _is_tensor_node(node):
        return False
    ins = _tensor_inputs(node)
    if not ins or len(_shape(ins[0])) != 4:
        return False
    out = _shape(node)
    if node.op == "call_module":
        mod = modules.get(str(node.target))
        if isinstance(mod, _POOL_MODULES):
            return len(out) == 2 or (len(out) == 4 and out[2] * out[3] == 1)
        return type(mod).__name__ == "SelectAdaptivePool2d"
    base = _op_name(node)
    if base in _POOL_FN_NAMES:
        return len(out) == 2 or (len(out) == 4 and out[2] * out[3] == 1)
    if base in _REDUCE_NAMES and node.op in ("call_method", "call_function"):
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if isinstance(dims, (list, tuple)):
            norm = {int(d) % 4 for d in dims if isinstance(d, int)}
            return norm == {2, 3}
    return False


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def _reaches_without(inp: fx.Node, target: fx.Node, blocked: fx.Node) -> bool:
    """True if ``target`` depends on ``inp`` through some path that avoids ``blocked``."""
    seen = {blocked}
    todo = [inp]
    while todo:
        n = todo.pop()
        if n is target:
            return True
        for u in n.users:
            if u not in seen:
                seen.add(u)
                todo.append(u)
    return False


def _find_final(nodes: list[fx.Node], output: fx.Node, inp: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    anc = _ancestors(output)
    for n in nodes:
        # the classifier's global pool dominates the output; squeeze-excite pools are bypassed
        if n in anc and _is_global_pool(n, modules) and not _reaches_without(inp, output, n):
            src = _tensor_inputs(n)[0]
            if inp in _ancestors(src) or src is inp:
                return src
    # no recognised pooling: the last 4-D map whose consumer leaves 4-D
    best = None
    for n in nodes:
        if n in anc and _is_tensor_node(n) and len(_shape(n)) == 4 and n is not inp:
            users = [u for u in n.users if _is_tensor_node(u)]
            if any(len(_shape(u)) != 4 for u in users):
                best = n
    if best is None:
        raise UnsupportedModelError(
            "grow needs a convolutional teacher: no 4-D feature map (B, C, H, W) feeds the classifier "
            f"(output node {output.name!r}). Give a CNN teacher or pass config teacher_nodes.",
            layer=_module_of(output, modules) or output.name,
        )
    return best


def _longest_path(nodes: list[fx.Node], inp: fx.Node, final: fx.Node) -> list[fx.Node]:
    region = _ancestors(final) | {final}
    dist: dict[fx.Node, int] = {inp: 0}
    prev: dict[fx.Node, fx.Node | None] = {inp: None}
    for n in nodes:
        if n is inp or n not in region or not _is_tensor_node(n):
            continue
        best, best_p = -1, None
        for p in _tensor_inputs(n):
            if p in dist and dist[p] > best:
                best, best_p = dist[p], p
        if best_p is not None:
            dist[n], prev[n] = best + 1, best_p
    if final not in dist:
        raise UnsupportedModelError(
            f"grow found no path from the input to the final feature map {final.name!r}.", layer=final.name
        )
    path, cur = [], final
    while cur is not None:
        path.append(cur)
        cur = prev[cur]
    return path[::-1]


def _unit_of(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    stack = _fqn_stack(node)
    if node.op == "call_module" and (not stack or stack[-1] != str(node.target)):
        stack = stack + [str(node.target)]
    for fqn in stack:
        mod = modules.get(fqn)
        if mod is not None and not isinstance(mod, _CONTAINERS):
            return fqn
    return ""


def _is_block(unit: str, modules: dict[str, nn.Module]) -> bool:
    mod = modules.get(unit)
    if mod is None or not unit:
        return False
    return any(isinstance(m, nn.Conv2d) for name, m in mod.named_modules() if name)


def _is_conv_node(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), nn.Conv2d)
    return node.op == "call_function" and _op_name(node) in ("conv2d", "convolution", "_convolution")


def _block_points(path: list[fx.Node], modules: dict[str, nn.Module]) -> list[fx.Node]:
    segments: list[list[fx.Node]] = []
    key_prev: str | None = None
    for n in path[1:]:
        unit = _unit_of(n, modules)
        key = unit if _is_block(unit, modules) else "<loose>"
        new = key != key_prev or (key == "<loose>" and _is_conv_node(n, modules) and segments
                                  and any(_is_conv_node(x, modules) for x in segments[-1]))
        if new:
            segments.append([n])
        else:
            segments[-1].append(n)
        key_prev = key
    return [seg[-1] for seg in segments]


def _levels(shapes: list[tuple[int, int, int]], in_hw: tuple[int, int]) -> list[int]:
    levels, top = [], 0
    for c, h, w in shapes:
        ratio = max(in_hw[0] / max(h, 1), in_hw[1] / max(w, 1))
        lv = max(0, int(round(math.log2(ratio)))) if ratio > 0 else 0
        top = max(top, lv)
        levels.append(top)
    return levels


def partition_teacher(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    granularity: str = "blocks",
    nodes: tuple[str, ...] | list[str] | None = None,
) -> TeacherPartition:
    """Partition ``model`` into ``v̂_1 .. v̂_m`` along its longest input -> final-map path.

    Args:
        model: the teacher, ``(B, C, H, W) -> (B, K)``; used in eval mode, never modified.
        example_inputs: ``(B, C, H, W)`` batch used to measure feature shapes.
        granularity: ``"blocks"`` or ``"path"`` (see the module docstring).
        nodes: explicit graph node names to use as points (overrides ``granularity``).

    Returns:
        :class:`TeacherPartition` with measured ``(C, H, W)`` per point.

    Raises:
        UnsupportedModelError: the graph cannot be traced, has no 4-D final feature map, no
            path from the input to it, or a requested node is not on the path (``layer`` names
            the failing module or node).
    """
    from torch.fx.passes.shape_prop import ShapeProp

    was = model.training
    model.eval()
    try:
        gm, method = _trace(model, example_inputs)
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(example_inputs)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(
                f"grow could not run the traced teacher graph ({type(exc).__name__}: {str(exc)[:200]}).",
                layer=type(model).__name__,
            ) from exc
    finally:
        model.train(was)
    modules = dict(model.named_modules())
    if method == "export":
        modules.update({k: v for k, v in gm.named_modules() if k not in modules})
    graph_nodes = list(gm.graph.nodes)
    placeholders = [n for n in graph_nodes if n.op == "placeholder" and _is_tensor_node(n)]
    if not placeholders:
        raise UnsupportedModelError("grow found no tensor input in the teacher graph.", layer=type(model).__name__)
    inp = placeholders[0]
    output = next(n for n in graph_nodes if n.op == "output")
    out_arg = output.args[0]
    while isinstance(out_arg, (tuple, list)) and len(out_arg) == 1:  # torch.export returns a 1-tuple
        out_arg = out_arg[0]
    if not isinstance(out_arg, fx.Node) or not _is_tensor_node(out_arg):
        raise UnsupportedModelError(
            "grow needs a teacher whose forward returns one logits tensor (B, K).", layer=type(model).__name__
        )
    final = _find_final(graph_nodes, out_arg, inp, modules)
    path = _longest_path(graph_nodes, inp, final)
    if nodes:
        by_name = {n.name: n for n in path}
        missing = [s for s in nodes if s not in by_name]
        if missing:
            raise UnsupportedModelError(
                f"teacher_nodes {missing} are not on the longest path; pick names from {[n.name for n in path]}.",
                layer=missing[0],
            )
        chosen = [by_name[s] for s in nodes if by_name[s] is not final and by_name[s] is not inp]
        chosen.sort(key=path.index)
        chosen.append(final)
        how = "nodes"
    elif granularity == "path":
        chosen, how = path[1:], "path"
    elif granularity == "blocks":
        chosen, how = _block_points(path, modules), "blocks"
    else:
        raise UnsupportedModelError(f"unknown granularity {granularity!r}; use one of {GRANULARITIES}.")
    # keep maps at least as large as everything after them (drops e.g. squeeze-excite 1x1 maps)
    pos = {n: i for i, n in enumerate(path)}
    suffix_h, suffix_w = [0] * (len(path) + 1), [0] * (len(path) + 1)
    for i in range(len(path) - 1, -1, -1):
        s4 = _shape(path[i])
        h, w = (s4[2], s4[3]) if len(s4) == 4 else (0, 0)
        suffix_h[i], suffix_w[i] = max(h, suffix_h[i + 1]), max(w, suffix_w[i + 1])
    chosen = [n for n in chosen if n is final or (len(_shape(n)) == 4 and _shape(n)[2] >= suffix_h[pos[n] + 1]
                                                 and _shape(n)[3] >= suffix_w[pos[n] + 1])]
    pts_nodes = [inp] + chosen
    shapes = []
    for n in pts_nodes:
        s = _shape(n)
        if len(s) != 4:
            raise UnsupportedModelError(
                f"teacher node {n.name!r} on the path is not a feature map (shape {s}); grow supervises 4-D maps only.",
                layer=_module_of(n, modules) or n.name,
            )
        shapes.append((s[1], s[2], s[3]))
    levels = _levels(shapes, (shapes[0][1], shapes[0][2]))
    points = [
        TeacherPoint(index=i + 1, name="input" if n is inp else n.name, module=_module_of(n, modules),
                     shape=shapes[i], level=levels[i])
        for i, n in enumerate(pts_nodes)
    ]
    return TeacherPartition(points=points, path=[n.name for n in path], method=method, granularity=how,
                            graph_module=gm, output_node=out_arg.name)


class FeatureExtractor(nn.Module):
    """The teacher returning ``(logits, [h^_1, ..., h^_m])`` in one forward pass.

    Built from the partition's traced graph, whose output is rewired to also return a *clone*
    of every point (taken right after the point is computed, so later in-place ops in the
    teacher cannot change it). Parameters are shared with the traced teacher; call it under
    ``torch.no_grad()`` with the teacher in eval mode.

    Shapes: ``x (B, C, H, W) -> (logits (B, K), [ (B, C_q, H_q, W_q) for q = 1..m ])``.
    """

    def __init__(self, partition: TeacherPartition) -> None:
        super().__init__()
        gm = partition.graph_module
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        names = {p.name for p in partition.points}
        inp_name = None
        clones: dict[str, fx.Node] = {}
        out_node = None
        for n in gm.graph.nodes:
            if n.op == "output":
                out_node = n
                continue
            new = graph.node_copy(n, lambda a: env[a])
            env[n] = new
            if n.op == "placeholder" and inp_name is None and _is_tensor_node(n):
                inp_name = n.name
                clones["input"] = new
            elif n.name in names:
                clones[n.name] = graph.call_method("clone", (new,))
        if out_node is None or inp_name is None:
            raise UnsupportedModelError("the teacher graph has no input or output node.", layer="output")
        feats = tuple(clones[p.name] for p in partition.points)
        logits = env[next(n for n in gm.graph.nodes if n.name == partition.output_node)]
        graph.output((logits, feats))
        self.gm = fx.GraphModule(gm, graph)
        self.gm.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        return self.gm(x)

