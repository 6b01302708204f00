"""Per-layer latencies measured on a target and cached on disk, and interleaved end-to-end timing.

Exporting and timing every candidate inside a search is too slow, so searches ask a table.

* :class:`LayerLatencyTable` -- a lookup table ``configuration -> median latency (ms)`` on one
  :class:`Target`, stored as JSON keyed by the target and the onnxruntime version. Its entries
  are one-layer graphs (:class:`ConvConfig`, :class:`LinearConfig`, built with ``onnx.helper``),
  each measured the first time it is asked for; channel rounding compares them across candidate
  widths and gp-prune's latency allocation sums them. (The benchmark-only latency *model* that
  also times single nodes of onnxruntime's optimised graph through this table lives in
  ``benchmarks/_latency_model_fit.py``.)
* :func:`layer_configs` -- the one-layer configurations of a network's convs and linear layers.
* :func:`measure_interleaved` -- end-to-end latency of several networks, timed round-robin so
  that load drift on a shared machine does not bias one against another.

Budget checks at the end of a run always use a real measurement, never a table sum.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.exporters import ExportError, export_onnx
from compress.exporters.atomic import write_text_atomic
from compress.exporters.mobile import convert_to_ort
from compress.profiling.errors import ProfilingError
from compress.profiling.target import Target

__all__ = [
    "ConvConfig",
    "LayerLatencyTable",
    "LinearConfig",
    "default_cache_dir",
    "layer_configs",
    "measure_interleaved",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvConfig:
    """One ``Conv2d`` (+ bias) at batch ``target.batch_size``: channels, kernel, stride, padding,
    groups, and the input's spatial size ``h x w``."""

    cin: int
    cout: int
    k: int
    stride: int
    padding: int
    groups: int
    h: int
    w: int

    def key(self) -> str:
        return f"conv:{self.cin}:{self.cout}:{self.k}:{self.stride}:{self.padding}:{self.groups}:{self.h}:{self.w}"


@dataclass(frozen=True)
class LinearConfig:
    """One ``Linear`` layer (``fin -> fout``) applied to ``rows`` vectors per sample (1 for a
    classifier on pooled features; tokens or pixels for a transformer / ConvNeXt MLP)."""

    fin: int
    fout: int
    rows: int = 1

    def key(self) -> str:
        return f"linear:{self.fin}:{self.fout}" + (f":{self.rows}" if self.rows != 1 else "")


LayerConfig = ConvConfig | LinearConfig


def default_cache_dir() -> Path:
    env = os.environ.get("SLIMFORGE_CACHE")
    if env:
        return Path(env) / "latency"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("slimforge")) / "latency"


@dataclass(frozen=True)
class _Overhead:
    """An Identity graph on the same input: the fixed cost of one ``session.run`` call, which a
    one-layer measurement includes but a layer inside a whole network does not pay again."""

    shape: tuple[int, ...]

    def key(self) -> str:
        return "overhead:" + ":".join(map(str, self.shape))


def _onnx_for(cfg: "LayerConfig | _Overhead", batch: int) -> bytes:
    import onnx  # noqa: F401
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if isinstance(cfg, _Overhead):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *cfg.shape])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "overhead", [x], [y])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10).SerializeToString()
    if isinstance(cfg, ConvConfig):
        w = rng.standard_normal((cfg.cout, cfg.cin // cfg.groups, cfg.k, cfg.k), dtype=np.float32)
        b = np.zeros(cfg.cout, np.float32)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[cfg.k, cfg.k], strides=[cfg.stride] * 2,
                                pads=[cfg.padding] * 4, group=cfg.groups)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cfg.cin, cfg.h, cfg.w])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    else:
        w = rng.standard_normal((cfg.fin, cfg.fout), dtype=np.float32)
        b = np.zeros(cfg.fout, np.float32)
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch * cfg.rows, cfg.fin])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph([node], "layer", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return model.SerializeToString()


LAYER_ROUNDS = 7
"""One-layer timings are taken in this many interleaved rounds (:meth:`LayerLatencyTable.measure_layers`)."""


def _time_calls(sess: Any, feed: dict[str, np.ndarray], repeats: int, warmup: int) -> float:
    """Median ms of ``sess.run(None, feed)`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


class LayerLatencyTable:
    """Measured per-layer latencies (ms, median) on one target, persisted as JSON.

    Args:
        target: where latencies are measured (provider, threads, batch size, optimisation level).
        cache_dir: folder of the JSON tables (default ``$SLIMFORGE_CACHE/latency`` or the user cache).
        repeats, warmup: timed and untimed runs per configuration (per round, for layers).
        rounds: interleaved rounds per layer (:meth:`measure_layers`).

    A layer's entry is the median of its per-round medians; the per-round figures are kept too
    (:meth:`latency_rounds`), so that a comparison between layers timed together can be made
    round by round and its noise read off the spread. Both are persisted.
    """

    def __init__(self, target: Target, cache_dir: str | Path | None = None, *, repeats: int = 25, warmup: int = 5,
                 rounds: int = LAYER_ROUNDS):
        import onnxruntime as ort

        if rounds < 1 or repeats < 1 or warmup < 0:
            raise ProfilingError(f"rounds and repeats must be >= 1 and warmup >= 0, got {rounds}, {repeats}, {warmup}")
        self.target = target
        self.repeats = repeats
        self.warmup = warmup
        self.rounds = rounds
        ident = {**target.to_dict(), "input_shape": None, "name": None, "ort": ort.__version__, "format": 2}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(cache_dir or default_cache_dir()) / f"layers-{digest}.json"
        self.entries: dict[str, float] = {}
        self.layer_rounds: dict[str, list[float]] = {}
        self.measured = 0
        if self.path.is_file():
            try:
                stored = json.loads(self.path.read_text())
                self.entries = dict(stored.get("entries", {}))
                self.layer_rounds = {k: [float(v) for v in r] for k, r in dict(stored.get("rounds", {})).items()}
            except (json.JSONDecodeError, OSError, AttributeError, TypeError, ValueError):
                log.warning("ignoring unreadable latency table %s", self.path)
                self.entries, self.layer_rounds = {}, {}
        self._dirty = False

    def latency(self, cfg: LayerConfig) -> float:
        """Median latency in ms of the layer ``cfg`` on the target, net of the fixed cost of a
        ``session.run`` call on the same input (measured once, then cached; never negative)."""
        k = cfg.key()
        if k not in self.entries:
            self.measure_layers([cfg])
        return self.entries[k]

    def latency_rounds(self, cfg: LayerConfig) -> list[float]:
        """The per-round figures (ms, net of the call overhead, never negative) behind
        :meth:`latency`; measured now if the table has none for ``cfg``."""
        if cfg.key() not in self.layer_rounds:
            self.measure_layers([cfg])
        return self.layer_rounds[cfg.key()]

    def measure_layers(self, cfgs: Sequence[LayerConfig]) -> None:
        """Time, interleaved, every layer of ``cfgs`` that has no per-round figures yet.

        The layers and the Identity graphs on their inputs (the fixed cost of a ``session.run``
        call) run round-robin: ``rounds`` rounds in which each gets a fresh onnxruntime session
        and input buffer, ``warmup`` untimed and ``repeats`` timed calls (the order reversed
        every other round). A change of machine load thus hits every layer of the sweep alike,
        round ``r`` of one layer can be compared with round ``r`` of another, and the spread over
        rounds includes what one session's memory placement adds or saves (as large as 30% for
        a one-layer graph), not only the call-to-call jitter. A layer's figure in round ``r`` is
        its median there minus its overhead graph's median in the same round (never negative);
        its entry is the median over rounds.

        Raises:
            ProfilingError: onnxruntime cannot build or run a one-layer graph.
        """
        todo: dict[str, LayerConfig] = {}
        for cfg in cfgs:
            if cfg.key() not in self.layer_rounds:
                todo.setdefault(cfg.key(), cfg)
        if not todo:
            return
        graphs: dict[str, LayerConfig | _Overhead] = {}
        overhead_of: dict[str, str] = {}
        for k, cfg in todo.items():
            ov = _Overhead((cfg.cin, cfg.h, cfg.w) if isinstance(cfg, ConvConfig)
                           else (cfg.fin,) if cfg.rows == 1 else (cfg.rows, cfg.fin))
            overhead_of[k] = ov.key()
            graphs[k] = cfg
            graphs.setdefault(ov.key(), ov)
        protos = {k: _onnx_for(g, self.target.batch_size) for k, g in graphs.items()}
        keys = list(graphs)
        per_round: dict[str, list[float]] = {k: [] for k in keys}
        for r in range(self.rounds):
            for k in (keys if r % 2 == 0 else keys[::-1]):
                sess, feed = self._session(graphs[k], protos[k], seed=r)
                per_round[k].append(_time_calls(sess, feed, self.repeats, self.warmup))
                del sess, feed
        for key in set(overhead_of.values()):
            self.entries[key] = float(np.median(per_round[key]))
        for k in todo:
            net = [max(t - o, 0.0) for t, o in zip(per_round[k], per_round[overhead_of[k]])]
            self.layer_rounds[k] = net
            self.entries[k] = float(np.median(net))
            self.measured += 1
        self._dirty = True

    def _session(self, cfg: "LayerConfig | _Overhead", proto: bytes, seed: int = 0) -> tuple[Any, dict[str, np.ndarray]]:
        import onnxruntime as ort

        so = self.target.session_options()
        try:
            sess = ort.InferenceSession(proto, so, providers=[self.target.provider])
        except Exception as exc:
            raise ProfilingError(f"could not time layer {cfg}: {exc}") from exc
        if isinstance(cfg, _Overhead):
            shape = (self.target.batch_size, *cfg.shape)
        elif isinstance(cfg, ConvConfig):
            shape = (self.target.batch_size, cfg.cin, cfg.h, cfg.w)
        else:
            shape = (self.target.batch_size * cfg.rows, cfg.fin)
        return sess, {"x": np.random.default_rng(1 + seed).standard_normal(shape, dtype=np.float32)}

    def save(self) -> Path | None:
        """Write the table atomically if anything new was measured."""
        if not self._dirty:
            return None
        payload = {"format": "slimforge-latency-table/2", "target": self.target.to_dict(), "entries": self.entries,
                   "rounds": self.layer_rounds}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(payload, sort_keys=True))
        self._dirty = False
        return self.path


@torch.no_grad()
def layer_configs(model: nn.Module, example_inputs: torch.Tensor) -> list[tuple[str, LayerConfig]]:
    """``(module name, config)`` for every Conv2d (square kernels, symmetric padding) and Linear
    of ``model``, with the spatial size each one sees for ``example_inputs`` ``(B, C, H, W)``."""
    found: list[tuple[str, LayerConfig]] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            def hook(mod, inp, _out, name=name):
                x = inp[0]
                pad = mod.padding[0] if isinstance(mod.padding, tuple) else 0
                found.append((name, ConvConfig(mod.in_channels, mod.out_channels, mod.kernel_size[0], mod.stride[0],
                                               int(pad), mod.groups, int(x.shape[2]), int(x.shape[3]))))
            hooks.append(m.register_forward_hook(hook))
        elif isinstance(m, nn.Linear):
            def hook_l(mod, inp, _out, name=name):
                rows = max(1, int(inp[0].numel()) // (int(inp[0].shape[0]) * mod.in_features))
                found.append((name, LinearConfig(mod.in_features, mod.out_features, rows)))
            hooks.append(m.register_forward_hook(hook_l))
    was = model.training
    model.eval()
    try:
        model(example_inputs[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return found



# --------------------------------------------------------------------------------------------
# end-to-end measurement, interleaved
# --------------------------------------------------------------------------------------------
def measure_interleaved(models: Sequence["nn.Module | str | Path"], target: Target, example_inputs: torch.Tensor | None = None,
                        *, rounds: int = 10, repeats: int = 20, warmup: int = 3,
                        min_round_ms: float = 0.0) -> list[dict[str, Any]]:
    """End-to-end onnxruntime latency of several models, measured round-robin so that a change in
    machine load hits all of them alike (on a shared machine, timing one model after another
    turns drift into differences between models).

    Each model is exported as :func:`~compress.profiling.profile_latency` does
    (:func:`compress.exporters.export_onnx`, ORT format for ORT-format targets); then ``rounds``
    times, every model runs ``warmup`` untimed and ``repeats`` timed calls, or more: enough calls
    to fill ``min_round_ms`` milliseconds, from its first round's warm-up timing. A per-round median
    of a sub-millisecond model over 3 calls swings by tens of percent on a VM (measured: per-round
    student / teacher ratios of 0.35-0.76 for one regnetx_002 student); a time floor keeps the
    rounds of small models as steady as those of large ones at a cost of ``min_round_ms`` per round.

    Returns:
        per model ``{"median_ms", "min_ms", "rounds_ms", "calls"}``: the median and the minimum of
        its per-round medians, those medians (ms per call of one batch), and its timed calls per round.

    Raises:
        ProfilingError: unknown input shape, export or session failure, ``rounds``/``repeats`` < 1.
    """
    import tempfile

    import onnxruntime as ort

    if rounds < 1 or repeats < 1 or warmup < 0 or not min_round_ms >= 0:
        raise ProfilingError("rounds and repeats must be >= 1, warmup and min_round_ms >= 0")
    shape = target.input_shape or (tuple(example_inputs.shape[1:]) if example_inputs is not None else None)
    if shape is None:
        raise ProfilingError("set Target.input_shape or pass example_inputs")
    sessions = []
    with tempfile.TemporaryDirectory(prefix="compress-lm-") as tmp:
        for i, m in enumerate(models):
            if isinstance(m, nn.Module):
                try:
                    path = export_onnx(m, torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)),
                                       Path(tmp) / f"m{i}.onnx", dynamic_batch=True)
                except ExportError as exc:
                    raise ProfilingError(f"could not export model {i}: {exc}") from exc
            else:
                path = Path(m)
            if target.model_format == "ort" and path.suffix != ".ort":
                path = convert_to_ort(path, Path(tmp) / f"m{i}.ort")
            try:
                sess = ort.InferenceSession(str(path), target.session_options(), providers=[target.provider])
            except Exception as exc:
                raise ProfilingError(f"onnxruntime could not load model {i}: {str(exc).strip().splitlines()[0]}") from exc
            sessions.append(sess)
    x = np.random.default_rng(0).standard_normal((target.batch_size, *shape)).astype(np.float32)
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    per_round: list[list[float]] = [[] for _ in sessions]
    calls = [repeats] * len(sessions)
    for r in range(rounds):
        for i, (s, feed) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            for _ in range(max(warmup, 1 if r == 0 and min_round_ms > 0 else 0)):
                s.run(None, feed)
            if r == 0 and min_round_ms > 0:  # size the rounds from the warm-up calls' time
                per_call_ms = (time.perf_counter() - t0) * 1e3 / max(warmup, 1)
                calls[i] = max(repeats, min(int(math.ceil(min_round_ms / max(per_call_ms, 1e-3))), 100 * repeats))
            times = []
            for _ in range(calls[i]):
                t0 = time.perf_counter()
                s.run(None, feed)
                times.append((time.perf_counter() - t0) * 1e3)
            per_round[i].append(float(np.median(times)))
    return [{"median_ms": float(np.median(r)), "min_ms": float(np.min(r)), "rounds_ms": r, "calls": c}
            for r, c in zip(per_round, calls)]
