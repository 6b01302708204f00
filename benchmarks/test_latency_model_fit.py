"""benchmarks/_latency_model_fit.py (the latency model of ``bench_latency_model.py``): onnxruntime's
optimised graph node by node, the per-node table entries, the fit, and the error report. No assertion
here depends on how fast anything runs.

Never part of ``make test`` (``bench`` marker; ``testpaths`` is ``tests``): the module tested is
benchmark code. About 20 s on a shared core::

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/pytest benchmarks/test_latency_model_fit.py -m bench -p no:xdist -q
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _latency_model_fit import (  # noqa: E402
    LatencyModel,
    NetworkFeatures,
    _taps_used,
    _touched_fraction,
    error_summary,
    ort_graph_nodes,
)

from compress.profiling import ProfilingError, Target  # noqa: E402
from compress.profiling.latency_model import LayerLatencyTable  # noqa: E402
from compress.testing import TinyResidualNet  # noqa: E402

pytestmark = pytest.mark.bench

TARGET = Target.preset("cpu-1t", input_shape=(3, 32, 32))
X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture()
def table(tmp_path) -> LayerLatencyTable:
    return LayerLatencyTable(TARGET, cache_dir=tmp_path, repeats=3, warmup=1)


def test_taps_that_only_meet_padding_are_not_read():
    assert _taps_used(n=1, k=3, stride=1, pad0=1, pad1=1) == 1  # a 3x3 on 1x1: only the centre tap
    assert _taps_used(n=2, k=3, stride=1, pad0=1, pad1=1) == 3
    assert _taps_used(n=4, k=3, stride=2, pad0=1, pad1=1) == 3
    assert _taps_used(n=1, k=3, stride=2, pad0=1, pad1=1) == 1
    assert _taps_used(n=5, k=3, stride=1, pad0=0, pad1=0) == 3
    pads = {"pads": [1, 1, 1, 1], "strides": [1, 1]}
    assert _touched_fraction("com.microsoft.nchwc", "Conv", pads, (1, 512, 1, 1), (512, 512, 3, 3)) == pytest.approx(1 / 9)
    assert _touched_fraction("com.microsoft.nchwc", "Conv", pads, (1, 64, 8, 8), (64, 64, 3, 3)) == 1.0
    # im2col + GEMM reads every weight, padding or not
    assert _touched_fraction("com.microsoft", "FusedConv", pads, (1, 512, 1, 1), (512, 512, 3, 3)) == 1.0


def test_graph_nodes_are_what_onnxruntime_runs():
    net = TinyResidualNet(width=16).eval()
    nodes = ort_graph_nodes(net, Target(name="b2", batch_size=2, input_shape=(3, 32, 32)))
    ops = [n.op for n in nodes]
    assert not any("BatchNormalization" in op for op in ops)  # folded into the convs by onnxruntime
    assert ops[-1] == "ai.onnx:Gemm"
    first = nodes[0].inputs[0]
    assert first[0] == "x" and first[2] == (2, 3, 32, 32)  # activation shapes at the target's batch
    n_weights = sum(p.numel() for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
                    for p in m.parameters())
    assert sum(n.weight_bytes for n in nodes) >= 4 * n_weights  # + the folded BN biases
    assert all(0 <= n.touched_weight_bytes <= n.weight_bytes for n in nodes)
    # ORT-format targets are optimised as ORT's converter does it: without the NCHWc layout pass
    ort_nodes = ort_graph_nodes(net, Target.preset("ort-mobile", input_shape=(3, 32, 32)))
    assert not [n.op for n in ort_nodes if n.domain == "com.microsoft.nchwc"]
    if X86:  # x86 MLAS blocks channels by 8 or 16: a 16-wide net runs channel-blocked convs
        assert any(op == "com.microsoft.nchwc:Conv" for op in ops)


def test_graph_nodes_need_an_input_shape():
    with pytest.raises(ProfilingError, match="input shape"):
        ort_graph_nodes(TinyResidualNet(), Target())


def test_node_latencies_are_measured_once_then_read_from_the_table(table, tmp_path):
    net = TinyResidualNet(width=12).eval()
    lm = LatencyModel(table)
    f = lm.features(net)
    nodes = ort_graph_nodes(net, TARGET)
    keys = {n.key() for n in nodes}
    assert f.n_nodes == len(nodes) and table.measured == len(keys)
    assert f.node_sum_ms == pytest.approx(sum(table.entries[n.key()] for n in nodes))
    assert f.node_sum_ms == pytest.approx(sum(f.per_op_ms.values()))
    assert all(table.entries[k] >= 0 for k in keys)
    assert f.touched_weight_mb == pytest.approx(sum(n.touched_weight_bytes for n in nodes) / 1e6)
    again = lm.features(net)
    assert table.measured == len(keys) and again.node_sum_ms == f.node_sum_ms
    assert table.save() == table.path
    reloaded = LayerLatencyTable(TARGET, cache_dir=tmp_path)
    assert {k: reloaded.entries[k] for k in keys} == {k: table.entries[k] for k in keys}


def _synthetic(a=1.3, m=0.05, b=0.02, knot=8.0):
    feats = [NetworkFeatures(s, t, 30, {}) for s in (0.05, 0.1, 0.2, 0.4, 0.8) for t in (1.0, 6.0, 12.0, 24.0)]
    y = [a * f.node_sum_ms + m * max(0.0, f.touched_weight_mb - knot) + b for f in feats]
    return feats, y


def test_fit_recovers_the_coefficients_and_the_cache_knot():
    feats, y = _synthetic()
    a, m, b, knot = LatencyModel.fit(feats, y)
    assert (a, m, b, knot) == pytest.approx((1.3, 0.05, 0.02, 8.0), rel=1e-6)
    with pytest.raises(ProfilingError, match="positive"):
        LatencyModel.fit(feats, [0.0] * len(feats))


def test_prediction_formula_and_round_trip(table):
    lm = LatencyModel(table, a=1.5, m=0.1, b=0.03, cache_mb=4.0, calibrated_on=9)
    f = NetworkFeatures(0.2, 10.0, 25, {})
    assert lm.predict_features(f) == pytest.approx(1.5 * 0.2 + 0.1 * 6.0 + 0.03)
    assert lm.predict_features(NetworkFeatures(0.2, 3.0, 25, {})) == pytest.approx(1.5 * 0.2 + 0.03)
    back = LatencyModel.from_dict(lm.to_dict(), table)
    assert (back.a, back.m, back.b, back.cache_mb, back.calibrated_on) == (1.5, 0.1, 0.03, 4.0, 9)
    assert back.calibrated_max_mb == lm.calibrated_max_mb


def test_calibrate_then_evaluate_reports_the_error_distribution(table):
    nets = [TinyResidualNet(width=w).eval() for w in (8, 12, 16, 24)]
    lm = LatencyModel(table)
    with pytest.raises(ProfilingError, match="at least 4"):
        lm.calibrate(nets[:3], measured_ms=[1.0, 1.0, 1.0])
    sums = [lm.features(n).node_sum_ms for n in nets]
    measured = [2.0 * s + 0.05 for s in sums]  # given figures: this test times no whole network
    lm.calibrate(nets, measured_ms=measured)
    assert lm.calibrated_on == 4 and lm.a == pytest.approx(2.0, rel=1e-3) and lm.b == pytest.approx(0.05, rel=1e-2)
    held = [TinyResidualNet(width=10).eval(), TinyResidualNet(width=20).eval()]
    ev = lm.evaluate(held, measured_ms=[0.1, 0.2])
    assert [r["measured_ms"] for r in ev["rows"]] == [0.1, 0.2]
    for r in ev["rows"]:
        assert r["rel_error"] == pytest.approx((r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"])
    errs = sorted(abs(r["rel_error"]) for r in ev["rows"])
    assert ev["abs_rel_error"]["max"] == pytest.approx(errs[-1]) and ev["abs_rel_error"]["n"] == 2


def test_error_summary():
    s = error_summary([0.1, -0.2, 0.05, -0.3], tolerance=0.15)
    assert (s["median"], s["max"], s["within"], s["n"]) == (pytest.approx(0.15), pytest.approx(0.3), 0.5, 4)
    with pytest.raises(ProfilingError):
        error_summary([])
