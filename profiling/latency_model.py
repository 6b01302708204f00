"""A latency model for searches: measured per-layer latencies on a target, cached on disk.

Exporting and timing every candidate inside a search is too slow, so searches ask this model.
It has two parts:

* :class:`LayerLatencyTable` -- a lookup table ``layer configuration -> median latency (ms)`` on
  one :class:`Target`. A configuration (:class:`ConvConfig`, :class:`LinearConfig`) is measured
  the first time it is asked for: a one-layer ONNX graph is built directly with ``onnx.helper``
  (no torch export, a few ms), timed with onnxruntime under the target's session options, and the
  result is stored in a JSON file keyed by the target and the onnxruntime version.
* :class:`LatencyModel` -- predicts a whole network from the sums of its layers' table latencies
  in onnxruntime's two conv regimes (channel-blocked and plain) plus a constant; the three
  coefficients are fitted once per target by non-negative least squares on end-to-end
  measurements of a few calibration networks (they absorb element-wise ops, pooling, layout
  changes and per-call overhead that one-layer measurements do not see). :meth:`LatencyModel.evaluate` reports the error against end-to-end
  measurement on held-out networks. Budget checks at the end of a run always use a real
  measurement, never this model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.exporters.atomic import write_text_atomic
from compress.profiling.errors import ProfilingError
from compress.profiling.target import Target

__all__ = ["ConvConfig", "LinearConfig", "LayerLatencyTable", "LatencyModel", "layer_configs", "default_cache_dir"]

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
    """One ``Linear`` layer (``fin -> fout``)."""

    fin: int
    fout: int

    def key(self) -> str:
        return f"linear:{self.fin}:{self.fout}"


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
        w = rng.standard_normal((cfg.cout, cfg.cin // cfg.groups, cfg.k, cfg.k)).astype(np.float32)
        b = np.zeros(cfg.cout, np.float32)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[cfg.k, cfg.k], strides=[cfg.stride] * 2,
                                pads=[cfg.padding] * 4, group=cfg.groups)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cfg.cin, cfg.h, cfg.w])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    else:
        w = rng.standard_normal((cfg.fin, cfg.fout)).astype(np.float32)
        b = np.zeros(cfg.fout, np.float32)
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cfg.fin])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph([node], "layer", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return model.SerializeToString()


class LayerLatencyTable:
    """Measured per-layer latencies (ms, median) on one target, persisted as JSON.

    Args:
        target: where latencies are measured (provider, threads, batch size, optimisation level).
        cache_dir: folder of the JSON tables (default ``$SLIMFORGE_CACHE/latency`` or the user cache).
        repeats, warmup: timed and untimed runs per configuration.
    """

    def __init__(self, target: Target, cache_dir: str | Path | None = None, *, repeats: int = 25, warmup: int = 5):
        import onnxruntime as ort

        self.target = target
        self.repeats = repeats
        self.warmup = warmup
        ident = {**target.to_dict(), "input_shape": None, "name": None, "ort": ort.__version__, "format": 2}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(cache_dir or default_cache_dir()) / f"layers-{digest}.json"
        self.entries: dict[str, float] = {}
        self.measured = 0
        if self.path.is_file():
            try:
                self.entries = dict(json.loads(self.path.read_text()).get("entries", {}))
            except (json.JSONDecodeError, OSError):
                log.warning("ignoring unreadable latency table %s", self.path)
        self._dirty = False

    def latency(self, cfg: LayerConfig) -> float:
        """Median latency in ms of the layer ``cfg`` on the target, net of the fixed cost of a
        ``session.run`` call on the same input (measured once, then cached; never negative)."""
        k = cfg.key()
        if k not in self.entries:
            shape = (cfg.cin, cfg.h, cfg.w) if isinstance(cfg, ConvConfig) else (cfg.fin,)
            ov = _Overhead(shape)
            if ov.key() not in self.entries:
                self.entries[ov.key()] = self._measure(ov)
            self.entries[k] = max(self._measure(cfg) - self.entries[ov.key()], 0.0)
            self.measured += 1
            self._dirty = True
        return self.entries[k]

    def _measure(self, cfg: "LayerConfig | _Overhead") -> float:
        import onnxruntime as ort

        so = self.target.session_options()
        try:
            sess = ort.InferenceSession(_onnx_for(cfg, self.target.batch_size), so, providers=[self.target.provider])
        except Exception as exc:
            raise ProfilingError(f"could not time layer {cfg}: {exc}") from exc
        if isinstance(cfg, _Overhead):
            shape = (self.target.batch_size, *cfg.shape)
        elif isinstance(cfg, ConvConfig):
            shape = (self.target.batch_size, cfg.cin, cfg.h, cfg.w)
        else:
            shape = (self.target.batch_size, cfg.fin)
        feed = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
        for _ in range(self.warmup):
            sess.run(None, feed)
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))

    def save(self) -> Path | None:
        """Write the table atomically if anything new was measured."""
        if not self._dirty:
            return None
        payload = {"format": "slimforge-latency-table/2", "target": self.target.to_dict(), "entries": self.entries}
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
            def hook_l(mod, _inp, _out, name=name):
                found.append((name, LinearConfig(mod.in_features, mod.out_features)))
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


def _blocked(cfg: LayerConfig, block: int) -> bool:
    """Does this layer run in onnxruntime's channel-blocked (NCHWc) layout? Only convs whose
    output channels, and input channels unless it is the image stem, are multiples of the block."""
    if not isinstance(cfg, ConvConfig):
        return False
    return cfg.cout % block == 0 and (cfg.cin % block == 0 or cfg.cin <= 4)


@dataclass
class LatencyModel:
    """``predicted_ms = a_blocked * sum(blocked layers) + a_plain * sum(other layers) + b``.

    Two coefficients because onnxruntime runs a network's convs in two regimes: channel-blocked
    (NCHWc) kernels that stay in the blocked layout from layer to layer, and plain im2col/GEMM
    kernels; a one-layer measurement prices the two regimes differently from how they behave
    inside a network. The block size (8 or 16, depending on the CPU's vector width) is chosen by
    the calibration fit.
    """

    table: LayerLatencyTable
    a_blocked: float = 1.0
    a_plain: float = 1.0
    b: float = 0.0
    block: int = 8
    calibrated_on: int = 0

    def features(self, model: nn.Module, example_inputs: torch.Tensor, block: int | None = None) -> tuple[float, float]:
        blk = block or self.block
        fb = fp = 0.0
        for _, cfg in layer_configs(model, example_inputs):
            t = self.table.latency(cfg)
            if _blocked(cfg, blk):
                fb += t
            else:
                fp += t
        return fb, fp

    def layer_sum(self, model: nn.Module, example_inputs: torch.Tensor) -> float:
        return float(sum(self.features(model, example_inputs)))

    def predict(self, model: nn.Module, example_inputs: torch.Tensor) -> float:
        """Predicted median latency (ms) of ``model`` on the table's target."""
        fb, fp = self.features(model, example_inputs)
        return self.a_blocked * fb + self.a_plain * fp + self.b

    def _target(self, example_inputs: torch.Tensor) -> Target:
        t = self.table.target
        return t if t.input_shape else t.with_input_shape(tuple(example_inputs.shape[1:]))

    def calibrate(self, models: Sequence[nn.Module], example_inputs: torch.Tensor, *, repeats: int = 30) -> "LatencyModel":
        """Fit the coefficients by non-negative least squares on relative error against end-to-end
        ORT measurements of ``models`` (>= 4 networks of different sizes and widths)."""
        from scipy.optimize import nnls

        from compress.profiling.latency import profile_latency

        if len(models) < 4:
            raise ProfilingError("calibrate the latency model on at least 4 networks of different sizes")
        t = self._target(example_inputs)
        ys = np.array([profile_latency(m, t, repeats=repeats, example_inputs=example_inputs).median_ms for m in models])
        best = None
        for block in (8, 16):
            X = np.array([[*self.features(m, example_inputs, block), 1.0] for m in models])
            w = 1.0 / ys  # relative-error weighting
            coef, _ = nnls(X * w[:, None], ys * w)
            err = float(np.abs(X @ coef - ys).__truediv__(ys).max())
            if best is None or err < best[0]:
                best = (err, block, coef)
        _, self.block, (self.a_blocked, self.a_plain, self.b) = best
        self.a_blocked, self.a_plain, self.b = float(self.a_blocked), float(self.a_plain), float(self.b)
        self.calibrated_on = len(models)
        self.table.save()
        return self

    def evaluate(self, models: Iterable[nn.Module], example_inputs: torch.Tensor, *, repeats: int = 30) -> dict[str, Any]:
        """Relative errors ``(predicted - measured) / measured`` on held-out networks."""
        from compress.profiling.latency import profile_latency

        t = self._target(example_inputs)
        rows = []
        for m in models:
            pred = self.predict(m, example_inputs)
            meas = profile_latency(m, t, repeats=repeats, example_inputs=example_inputs).median_ms
            rows.append({"predicted_ms": pred, "measured_ms": meas, "rel_error": (pred - meas) / meas})
        errs = np.array([abs(r["rel_error"]) for r in rows])
        self.table.save()
        return {"rows": rows, "abs_rel_error": {"median": float(np.median(errs)), "p90": float(np.percentile(errs, 90)),
                                                "max": float(errs.max())}, **self.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        return {"a_blocked": self.a_blocked, "a_plain": self.a_plain, "b": self.b, "block": self.block,
                "calibrated_on": self.calibrated_on, "table": str(self.table.path), "target": self.table.target.to_dict()}
