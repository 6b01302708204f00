"""The latency model of ``benchmarks/bench_latency_model.py``: onnxruntime's optimised graph node by node.

Only that benchmark (and its test, ``tests/unit/test_latency_model.py``) uses this module; the
product keeps the per-layer table and the interleaved timing in
:mod:`compress.profiling.latency_model` (issue 15: code that only a benchmark uses lives with it).

* :func:`ort_graph_nodes` -- the nodes onnxruntime runs for a network on the target: the network
  is exported (TorchScript exporter, ~0.2 s for a ResNet-18) and optimised by onnxruntime itself,
  so fusions and the NCHWc layout decisions are onnxruntime's own, not a rule of ours.
* :func:`node_latency` -- one such node (:class:`OrtNode`) timed alone in the layout it runs in
  (a channel-blocked NCHWc conv on blocked input, a plain conv, a reorder between the two
  layouts, an element-wise op), stored in a :class:`~compress.profiling.latency_model.LayerLatencyTable`.
* :class:`LatencyModel` -- ``a * sum(node latencies) + m * max(0, weight MB read - cache MB) + b``,
  fitted once per target on end-to-end measurements of a few calibration networks
  (:func:`~compress.profiling.latency_model.measure_interleaved`). :meth:`LatencyModel.evaluate`
  reports the error against end-to-end measurement on held-out networks.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.profiling.errors import ProfilingError
from compress.profiling.latency_model import LayerLatencyTable, measure_interleaved
from compress.profiling.target import Target

__all__ = [
    "CACHE_KNOTS_MB",
    "LatencyModel",
    "NetworkFeatures",
    "OrtNode",
    "error_summary",
    "node_latency",
    "ort_graph_nodes",
]

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------------------------
# onnxruntime's optimised graph, node by node
# --------------------------------------------------------------------------------------------
_SMALL_CONST = 64
"""Non-float constants with at most this many elements (shapes, axes) are part of a node's key."""


@dataclass(frozen=True)
class OrtNode:
    """One node of the graph onnxruntime runs after its own optimisations on the target, with the
    layout it runs in: a channel-blocked conv is ``com.microsoft.nchwc:Conv``, a layout change is
    ``com.microsoft.nchwc:ReorderInput`` / ``ReorderOutput``, a conv fused with its activation on
    the plain path is ``com.microsoft:FusedConv``.

    ``inputs`` holds one spec per input: ``("x", dtype, shape)`` for an activation,
    ``("w", dtype, shape)`` for a weight (values irrelevant to speed), ``("c", dtype, shape,
    values)`` for a small non-float constant (a shape or axes, whose values matter), ``("-",)``
    for an omitted optional input. Shapes are at the target's batch size.

    ``weight_bytes`` is the size of the node's float initializers; ``touched_weight_bytes`` the
    part a kernel reads per call: all of it, except for a channel-blocked conv, which skips the
    kernel taps that only ever meet padding (MLAS's NCHWc kernels do; a 3x3/pad-1 conv on a 1x1
    input reads 1/9 of its weights -- measured on an AVX-512 EPYC: 512x512x3x3 on a 1x1 input runs
    in 17 us alone, while reading its 9.4 MB would take several times longer from L3).
    """

    domain: str
    op_type: str
    attrs: str
    inputs: tuple[tuple, ...]
    outputs: int
    weight_bytes: int
    touched_weight_bytes: int
    opsets: tuple[tuple[str, int], ...] = field(compare=False, repr=False)
    ir_version: int = field(compare=False, repr=False, default=8)
    proto: bytes = field(compare=False, repr=False, default=b"")
    consts: tuple[bytes, ...] = field(compare=False, repr=False, default=())

    @property
    def op(self) -> str:
        return f"{self.domain or 'ai.onnx'}:{self.op_type}"

    def key(self) -> str:
        ins = ";".join(",".join(map(str, spec)) for spec in self.inputs)
        return f"node:{self.op}|{ins}|{self.attrs}"


def _taps_used(n: int, k: int, stride: int, pad0: int, pad1: int, dilation: int = 1) -> int:
    """How many of a kernel's ``k`` taps along one axis ever land on the input (size ``n``)."""
    out = (n + pad0 + pad1 - dilation * (k - 1) - 1) // stride + 1
    return sum(any(0 <= o * stride - pad0 + t * dilation < n for o in range(max(out, 0))) for t in range(k))


def _touched_fraction(domain: str, op_type: str, attrs: dict[str, Any], x_shape: tuple[int, ...] | None,
                      w_shape: tuple[int, ...] | None) -> float:
    if domain != "com.microsoft.nchwc" or op_type != "Conv" or not x_shape or not w_shape:
        return 1.0
    if len(x_shape) != 4 or len(w_shape) != 4:
        return 1.0
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    strides = list(attrs.get("strides", [1, 1]))
    dil = list(attrs.get("dilations", [1, 1]))
    kh, kw = w_shape[2], w_shape[3]
    used = (_taps_used(x_shape[2], kh, strides[0], pads[0], pads[2], dil[0])
            * _taps_used(x_shape[3], kw, strides[1], pads[1], pads[3], dil[1]))
    return used / float(kh * kw)


def _export_graph(model: nn.Module, example: torch.Tensor) -> bytes:
    """ONNX bytes of ``model`` for graph analysis: the TorchScript exporter (about 0.2 s for a
    ResNet-18, no checks), else :func:`compress.exporters.export_onnx` (slower, stricter)."""
    import io
    import warnings

    was = model.training
    model.eval()
    try:
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}}, opset_version=17, do_constant_folding=True)
        return buf.getvalue()
    except Exception as exc:  # the legacy exporter cannot take every model; the main one can
        log.debug("TorchScript export failed (%s); using export_onnx", exc)
        import tempfile

        from compress.exporters import ExportError, export_onnx

        with tempfile.TemporaryDirectory(prefix="compress-lm-") as tmp:
            try:
                return export_onnx(model, example, Path(tmp) / "m.onnx", dynamic_batch=True).read_bytes()
            except ExportError as exc2:
                raise ProfilingError(f"cannot export {type(model).__name__} for the latency model: {exc2}") from exc2
    finally:
        model.train(was)


def ort_graph_nodes(model_or_path: "nn.Module | str | Path", target: Target,
                    example_inputs: torch.Tensor | None = None) -> list[OrtNode]:
    """The nodes onnxruntime runs for a model on ``target``, after its graph optimisations.

    The model is exported (a module; a path to an ``.onnx`` file is read as is), optimised by
    onnxruntime itself under the target's session options (ORT-format targets without the NCHWc
    transformer, as ORT's converter does), and run once on a seeded input of shape
    ``(target.batch_size, *input_shape)`` to read every intermediate shape. No timing happens here.

    Raises:
        ProfilingError: the input shape is unknown (set ``target.input_shape`` or pass
            ``example_inputs``), or export / optimisation failed.
    """
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    shape = target.input_shape or (tuple(example_inputs.shape[1:]) if example_inputs is not None else None)
    if shape is None:
        raise ProfilingError("the latency model needs an input shape: set Target.input_shape or pass example_inputs")
    if isinstance(model_or_path, nn.Module):
        example = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
        raw = _export_graph(model_or_path, example)
    else:
        path = Path(model_or_path)
        if not path.is_file():
            raise ProfilingError(f"ONNX file not found: {path}")
        raw = path.read_bytes()
    with tempfile.TemporaryDirectory(prefix="compress-lm-") as tmp:
        so = target.session_options()
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        disabled = ["NchwcTransformer"] if target.model_format == "ort" else None
        try:
            ort.InferenceSession(raw, so, providers=[target.provider], disabled_optimizers=disabled)
            opt = onnx.load(str(Path(tmp) / "opt.onnx"))
        except Exception as exc:
            raise ProfilingError(f"onnxruntime could not optimise the model: {str(exc).strip().splitlines()[0]}") from exc
    graph = opt.graph
    inits = {t.name: t for t in graph.initializer}
    probe = onnx.ModelProto()
    probe.CopyFrom(opt)
    names = [o for n in graph.node for o in n.output if o]
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=o) for o in names)
    plain = target.session_options()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    inp = [i for i in graph.input if i.name not in inits]
    if len(inp) != 1:
        raise ProfilingError(f"the latency model takes single-input models; this one has {[i.name for i in inp]}")
    x = np.random.default_rng(0).standard_normal((target.batch_size, *shape)).astype(np.float32)
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), plain, providers=[target.provider])
        values = dict(zip(names, sess.run(names, {inp[0].name: x})))
    except Exception as exc:
        raise ProfilingError(f"could not run the optimised graph on input {x.shape}: {str(exc).strip().splitlines()[0]}") from exc
    values[inp[0].name] = x
    opsets = tuple((o.domain, int(o.version)) for o in opt.opset_import)
    nodes: list[OrtNode] = []
    for n in graph.node:
        specs: list[tuple] = []
        consts: list[bytes] = []
        wbytes = 0
        x_shape = w_shape = None
        renamed = onnx.NodeProto()
        renamed.CopyFrom(n)
        del renamed.input[:]
        del renamed.output[:]
        for j, name in enumerate(n.input):
            renamed.input.append(f"i{j}" if name else "")
            if not name:
                specs.append(("-",))
            elif name in inits:
                t = inits[name]
                dims = tuple(int(d) for d in t.dims)
                dtype = helper.tensor_dtype_to_np_dtype(t.data_type).str
                size = int(np.prod(dims)) if dims else 1
                if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE) or size > _SMALL_CONST:
                    specs.append(("w", dtype, dims))
                    if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
                        wbytes += size * np.dtype(dtype).itemsize
                    w_shape = w_shape or (dims if len(dims) == 4 else None)
                else:
                    specs.append(("c", dtype, dims, tuple(numpy_helper.to_array(t).ravel().tolist())))
                c = onnx.TensorProto()
                c.CopyFrom(t)
                c.name = f"i{j}"
                consts.append(c.SerializeToString())
            else:
                v = values[name]
                if v.dtype.kind != "f" and v.size <= _SMALL_CONST:
                    specs.append(("c", v.dtype.str, tuple(v.shape), tuple(v.ravel().tolist())))
                    consts.append(numpy_helper.from_array(v, f"i{j}").SerializeToString())
                else:
                    specs.append(("x", v.dtype.str, tuple(int(d) for d in v.shape)))
                    x_shape = x_shape or tuple(int(d) for d in v.shape)
        n_out = 0
        for j, name in enumerate(n.output):
            renamed.output.append(f"o{j}" if name else "")
            n_out += bool(name)
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        attr_text = ";".join(f"{k}={attrs[k]!r}" for k in sorted(attrs))
        frac = _touched_fraction(n.domain, n.op_type, attrs, x_shape, w_shape)
        nodes.append(OrtNode(n.domain, n.op_type, attr_text, tuple(specs), n_out, int(wbytes), int(round(wbytes * frac)),
                             opsets=opsets, ir_version=int(opt.ir_version), proto=renamed.SerializeToString(),
                             consts=tuple(consts)))
    return nodes


def _node_model(node: OrtNode) -> tuple[bytes, dict[str, np.ndarray]]:
    """A one-node ONNX model of ``node`` and a seeded feed for its activation inputs."""
    import onnx
    from onnx import helper

    rng = np.random.default_rng(1)
    proto = onnx.NodeProto()
    proto.ParseFromString(node.proto)
    consts = []
    for raw in node.consts:
        t = onnx.TensorProto()
        t.ParseFromString(raw)
        consts.append(t)
    const_names = {t.name for t in consts}
    inputs, feed = [], {}
    for j, spec in enumerate(node.inputs):
        name = f"i{j}"
        if spec[0] == "x" and name not in const_names:
            dt = np.dtype(spec[1])
            arr = rng.standard_normal(spec[2]).astype(dt) if dt.kind == "f" else np.zeros(spec[2], dt)
            feed[name] = arr
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dt), list(spec[2])))
    outputs = [onnx.ValueInfoProto(name=o) for o in proto.output if o]
    graph = helper.make_graph([proto], "node", inputs, outputs, initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in node.opsets],
                              ir_version=node.ir_version)
    return model.SerializeToString(), feed


def _identity_model(feed: dict[str, np.ndarray], opsets: tuple[tuple[str, int], ...], ir_version: int) -> bytes:
    """Identity on every fed input: the fixed cost of a ``session.run`` call with these feeds."""
    import onnx
    from onnx import helper

    nodes = [helper.make_node("Identity", [k], [f"{k}_out"]) for k in feed]
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)) for k, v in feed.items()]
    outputs = [onnx.ValueInfoProto(name=f"{k}_out") for k in feed]
    default = [v for d, v in opsets if d in ("", "ai.onnx")] or [17]
    graph = helper.make_graph(nodes, "overhead", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", default[0])], ir_version=ir_version).SerializeToString()


NODE_ROUNDS = 5
"""Node timings are taken in this many round-robin rounds over all the nodes being measured."""


def _measure_nodes(table: "LayerLatencyTable", nodes: Sequence[OrtNode]) -> None:
    """Time every node of ``nodes`` that the table lacks: alone, in the layout it runs in, net of
    the fixed cost of a ``session.run`` call with the same feeds (an Identity graph on them).

    The new nodes (and their overhead graphs) are timed round-robin, :data:`NODE_ROUNDS` rounds of
    ``table.repeats`` calls each, and each entry is the median of its round medians, so that a
    burst of load on a shared machine spoils at most a round of every node rather than every call
    of one node. Entries are kept in ``table.entries``; call ``table.save()`` to persist them.

    Raises:
        ProfilingError: onnxruntime cannot build or run a one-node graph.
    """
    import onnxruntime as ort

    todo: dict[str, OrtNode] = {}
    for n in nodes:
        if n.key() not in table.entries:
            todo.setdefault(n.key(), n)
    if not todo:
        return
    so = table.target.session_options()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run each node exactly as given
    jobs: dict[str, tuple[Any, dict[str, np.ndarray]]] = {}
    node_ov: dict[str, str] = {}
    for key, node in todo.items():
        model, feed = _node_model(node)
        try:
            jobs[key] = (ort.InferenceSession(model, so, providers=[table.target.provider]), feed)
        except Exception as exc:
            raise ProfilingError(f"could not time node {node.op}: {str(exc).strip().splitlines()[0]}") from exc
        ov_key = "overhead:" + ";".join(f"{v.dtype.str}{list(v.shape)}" for v in feed.values())
        node_ov[key] = ov_key
        if not feed:  # no activation input: nothing to net out but the bare call
            table.entries.setdefault(ov_key, 0.0)
        if ov_key not in table.entries and ov_key not in jobs:
            ov_model = _identity_model(feed, node.opsets, node.ir_version)
            jobs[ov_key] = (ort.InferenceSession(ov_model, so, providers=[table.target.provider]), feed)
    for sess, feed in jobs.values():
        for _ in range(table.warmup):
            sess.run(None, feed)
    medians: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(NODE_ROUNDS):
        for k, (sess, feed) in jobs.items():
            times = []
            for _ in range(table.repeats):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times.append((time.perf_counter() - t0) * 1e3)
            medians[k].append(float(np.median(times)))
    for k in jobs:
        if k.startswith("overhead:"):
            table.entries[k] = float(np.median(medians[k]))
    for k in todo:
        table.entries[k] = max(float(np.median(medians[k])) - table.entries[node_ov[k]], 0.0)
        table.measured += 1
    table._dirty = True



def node_latency(table: LayerLatencyTable, node: OrtNode) -> float:
    """Median latency in ms of one node of onnxruntime's optimised graph, alone, in the layout
    it runs in, net of the fixed cost of a ``session.run`` call with the same feeds (measured
    once, then cached in ``table``; never negative).

    Raises:
        ProfilingError: onnxruntime cannot build or run the one-node graph.
    """
    _measure_nodes(table, [node])
    return table.entries[node.key()]


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkFeatures:
    """What the latency model reads off a network: the sum of its nodes' table latencies (ms), the
    weight bytes its kernels read per call (MB, 1e6 bytes), its node count, and per operator
    (``domain:op``) the summed table latency -- e.g. how much goes to layout changes."""

    node_sum_ms: float
    touched_weight_mb: float
    n_nodes: int
    per_op_ms: dict[str, float]


CACHE_KNOTS_MB = (0.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)
"""Candidate values of :attr:`LatencyModel.cache_mb`; calibration keeps the best-fitting one."""


@dataclass
class LatencyModel:
    """``predicted_ms = a * sum(node latencies) + m * max(0, touched_weight_mb - cache_mb) + b``.

    The sum runs over the nodes onnxruntime actually executes for the network on the target
    (:func:`ort_graph_nodes`: after its fusions and its NCHWc layout pass, so channel-blocked
    convs, plain convs and the reorders between the two layouts each appear as what they are),
    each timed alone in that layout (:class:`LayerLatencyTable`, measured once, cached). A network
    whose convs all fit the channel block runs a chain of blocked convs with no reorders; one with
    a single odd width pays reorders around it -- the table prices both without a special case.

    Alone, a node finds its weights in cache; inside a network, the weights of the other layers
    have evicted them once the network's weights outgrow what the cache keeps between calls. The
    second term prices those bytes: ``touched_weight_mb`` is what the kernels read per call
    (:attr:`OrtNode.touched_weight_bytes`), ``cache_mb`` the share that stays cached (chosen by
    the calibration fit from :data:`CACHE_KNOTS_MB`; a shared L3 keeps less than its size), ``m``
    the DRAM cost per MB. ``a`` absorbs what a node pays in a network but not alone (allocator,
    executor), ``b`` the per-call overhead. Three coefficients and one knot, fitted by
    non-negative least squares on relative error.
    """

    table: LayerLatencyTable
    a: float = 1.0
    m: float = 0.0
    b: float = 0.0
    cache_mb: float = 0.0
    calibrated_on: int = 0
    calibrated_max_mb: float = 0.0

    def features(self, model: "nn.Module | str | Path", example_inputs: torch.Tensor | None = None) -> NetworkFeatures:
        """Features of ``model`` (a module or an ``.onnx`` path) on the table's target; times the
        nodes the table lacks."""
        return self.features_many([model], example_inputs)[0]

    def features_many(self, models: Sequence["nn.Module | str | Path"],
                      example_inputs: torch.Tensor | None = None) -> list[NetworkFeatures]:
        """Features of several models; the nodes the table lacks are timed together, round-robin
        (see :func:`_measure_nodes`), each distinct node once."""
        graphs = []
        todo: dict[str, OrtNode] = {}
        for model in models:
            nodes = ort_graph_nodes(model, self.table.target, example_inputs)
            for n in nodes:
                if n.key() not in self.table.entries:
                    todo.setdefault(n.key(), n)
            graphs.append([(n.key(), n.op, n.touched_weight_bytes) for n in nodes])
            del nodes  # keep one copy of each new node's weights, not every network's
        _measure_nodes(self.table, list(todo.values()))
        out = []
        for g in graphs:
            per_op: dict[str, float] = {}
            for key, op, _ in g:
                per_op[op] = per_op.get(op, 0.0) + self.table.entries[key]
            out.append(NetworkFeatures(sum(self.table.entries[k] for k, _, _ in g),
                                       sum(t for _, _, t in g) / 1e6, len(g), per_op))
        return out

    def predict_features(self, f: NetworkFeatures) -> float:
        return self.a * f.node_sum_ms + self.m * max(0.0, f.touched_weight_mb - self.cache_mb) + self.b

    def predict(self, model: "nn.Module | str | Path", example_inputs: torch.Tensor | None = None) -> float:
        """Predicted median latency (ms per call of one batch) of ``model`` on the table's target.

        Costs one export (a module; about 0.2 s for a ResNet-18) and one graph optimisation, no
        end-to-end timing; nodes new to the table are timed once (a few ms each).

        Raises:
            ProfilingError: unknown input shape, export or optimisation failure.
        """
        f = self.features(model, example_inputs)
        if self.calibrated_on and self.m > 0 and f.touched_weight_mb > 1.25 * max(self.calibrated_max_mb, self.cache_mb):
            log.warning("this network reads %.1f MB of weights per call, beyond the %.1f MB of the largest calibration "
                        "network: the memory term extrapolates; calibrate on networks as large", f.touched_weight_mb,
                        self.calibrated_max_mb)
        return self.predict_features(f)

    @staticmethod
    def fit(features: Sequence[NetworkFeatures], measured_ms: Sequence[float],
            knots: Sequence[float] = CACHE_KNOTS_MB) -> tuple[float, float, float, float]:
        """``(a, m, b, cache_mb)`` minimising the squared relative error (NNLS per knot)."""
        from scipy.optimize import nnls

        y = np.asarray(measured_ms, dtype=np.float64)
        if len(y) != len(features) or np.any(~np.isfinite(y)) or np.any(y <= 0):
            raise ProfilingError("measured_ms must be one positive figure per network")
        s = np.array([f.node_sum_ms for f in features])
        t = np.array([f.touched_weight_mb for f in features])
        best = None
        for knot in knots:
            X = np.stack([s, np.maximum(0.0, t - knot), np.ones_like(s)], axis=1)
            coef, _ = nnls(X / y[:, None], np.ones_like(y))
            loss = float(np.sum((X @ coef / y - 1.0) ** 2))
            if best is None or loss < best[0] - 1e-12:
                best = (loss, coef, float(knot))
        _, (a, m, b), knot = best
        return float(a), float(m), float(b), knot

    def _measure(self, models, example_inputs, rounds: int, repeats: int) -> list[float]:
        return [r["median_ms"] for r in measure_interleaved(models, self.table.target, example_inputs,
                                                             rounds=rounds, repeats=repeats)]

    def calibrate(self, models: Sequence["nn.Module | str | Path"], example_inputs: torch.Tensor | None = None, *,
                  measured_ms: Sequence[float] | None = None, rounds: int = 10, repeats: int = 20) -> "LatencyModel":
        """Fit ``a, m, b, cache_mb`` on ``models`` (>= 4 networks of different sizes and widths;
        keep them disjoint from those you evaluate on).

        Args:
            measured_ms: their end-to-end latencies if already measured (e.g. by
                :func:`measure_interleaved` together with the held-out networks); else they are
                measured here, interleaved.

        Raises:
            ProfilingError: fewer than 4 networks, or measurement/feature failures.
        """
        if len(models) < 4:
            raise ProfilingError("calibrate the latency model on at least 4 networks of different sizes")
        ys = list(measured_ms) if measured_ms is not None else self._measure(models, example_inputs, rounds, repeats)
        feats = self.features_many(models, example_inputs)
        self.a, self.m, self.b, self.cache_mb = self.fit(feats, ys)
        self.calibrated_on = len(models)
        self.calibrated_max_mb = max(f.touched_weight_mb for f in feats)
        self.table.save()
        return self

    def evaluate(self, models: Sequence["nn.Module | str | Path"], example_inputs: torch.Tensor | None = None, *,
                 measured_ms: Sequence[float] | None = None, rounds: int = 10, repeats: int = 20,
                 tolerance: float = 0.15) -> dict[str, Any]:
        """Relative errors ``(predicted - measured) / measured`` on held-out networks and their
        distribution: ``abs_rel_error`` = ``{median, p90, max, within}`` where ``within`` is the
        fraction with ``|error| <= tolerance``."""
        ys = list(measured_ms) if measured_ms is not None else self._measure(models, example_inputs, rounds, repeats)
        rows = []
        for f, y in zip(self.features_many(models, example_inputs), ys):
            pred = self.predict_features(f)
            rows.append({"predicted_ms": pred, "measured_ms": float(y), "rel_error": (pred - y) / y,
                         "node_sum_ms": f.node_sum_ms, "touched_weight_mb": f.touched_weight_mb, "n_nodes": f.n_nodes,
                         "per_op_ms": f.per_op_ms})
        self.table.save()
        return {"rows": rows, "abs_rel_error": error_summary([r["rel_error"] for r in rows], tolerance), **self.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "m": self.m, "b": self.b, "cache_mb": self.cache_mb, "calibrated_on": self.calibrated_on,
                "calibrated_max_mb": self.calibrated_max_mb, "table": str(self.table.path),
                "target": self.table.target.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], table: LayerLatencyTable) -> "LatencyModel":
        """A calibrated model back from :meth:`to_dict` (the table is passed in: it is per target)."""
        return cls(table, a=float(d["a"]), m=float(d["m"]), b=float(d["b"]), cache_mb=float(d["cache_mb"]),
                   calibrated_on=int(d.get("calibrated_on", 0)), calibrated_max_mb=float(d.get("calibrated_max_mb", 0.0)))


def error_summary(rel_errors: Sequence[float], tolerance: float = 0.15) -> dict[str, float]:
    """``{median, p90, max, within, n}`` of ``|rel_errors|``; ``within`` = fraction <= tolerance."""
    e = np.abs(np.asarray(rel_errors, dtype=np.float64))
    if e.size == 0:
        raise ProfilingError("no errors to summarise")
    return {"median": float(np.median(e)), "p90": float(np.percentile(e, 90)), "max": float(e.max()),
            "within": float(np.mean(e <= tolerance)), "tolerance": tolerance, "n": int(e.size)}
