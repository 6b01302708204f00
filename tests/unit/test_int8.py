"""int8 that pays, or says it does not (issue 16, part 5).

The settings reach onnxruntime (checked on the quantised graph), the recommendation rule is a
pure function tested on fixed timings, and the manifest marks an int8 file that does not pay.
Nothing here times anything.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from compress.exporters import export_onnx
from compress.exporters.errors import ExportError
from compress.exporters.mobile import (
    DEFAULT_INT8_SETTINGS,
    INT8_MAX_DROP_PTS,
    INT8_MIN_SPEEDUP,
    Int8Settings,
    int8_recommendation,
    quantize_int8,
)
from compress.result import int8_manifest_fields
from compress.testing import TinyConvNet


# ----------------------------------------------------------------------------- the decision rule
@pytest.mark.parametrize("fp32_ms, int8_ms, drop, recommended, reason", [
    (0.25, 0.95, 0.0, False, "slower than fp32 (0.26x"),  # issue 16's gp-prune demo figures
    (2.0, 1.0, 0.5, True, None),
    (1.0, 1.0, 1.0, True, None),  # both limits are inclusive
    (2.0, 1.0, 1.5, False, "accuracy drop 1.50 points > 1"),
    (1.0, 2.0, 3.0, False, "slower than fp32 (0.50x on the target); accuracy drop 3.00 points > 1"),
    (2.0, 1.0, -0.4, True, None),  # int8 more accurate than fp32 on the split
])
def test_recommendation_rule_on_fixed_timings(fp32_ms, int8_ms, drop, recommended, reason):
    rec = int8_recommendation(fp32_ms, int8_ms, drop)
    assert rec["recommended"] is recommended
    assert rec["speedup"] == pytest.approx(fp32_ms / int8_ms)
    if reason is None:
        assert rec["reason"] is None
    else:
        assert rec["reason"].startswith(reason)
    assert (INT8_MIN_SPEEDUP, INT8_MAX_DROP_PTS) == (1.0, 1.0)


def test_recommendation_rule_thresholds_and_bad_figures():
    assert not int8_recommendation(1.2, 1.0, 0.0, min_speedup=1.3)["recommended"]
    assert int8_recommendation(1.2, 1.0, 0.0, min_speedup=1.3)["reason"] == "speedup 1.20x < 1.3x"
    assert int8_recommendation(1.0, 1.0, 1.8, max_drop_pts=2.0)["recommended"]
    for bad in [(0.0, 1.0, 0.0), (1.0, float("nan"), 0.0), (1.0, -1.0, 0.0), (1.0, 1.0, float("inf"))]:
        with pytest.raises(ValueError, match="finite"):
            int8_recommendation(*bad)


# ----------------------------------------------------------------------------- the manifest flag
_Q = {"accuracy": 0.9, "fp32_accuracy": 0.9, "drop_pts": 0.0, "split": "test", "latency_ms": 0.95,
      "latency_p90_ms": 1.0, "fp32_latency_ms": 0.25, "speedup": 0.25 / 0.95, "settings": DEFAULT_INT8_SETTINGS.to_dict()}


def test_manifest_marks_int8_that_does_not_pay():
    fields = int8_manifest_fields({**_Q, "recommended": False, "reason": "slower than fp32 (0.26x on the target)"})
    assert fields["recommended"] is False and fields["reason"].startswith("slower than fp32")
    assert fields["speedup_vs_fp32"] == pytest.approx(0.25 / 0.95) and fields["fp32_latency_ms"] == 0.25
    paying = int8_manifest_fields({**_Q, "recommended": True, "reason": None, "speedup": 2.0})
    assert paying["recommended"] is True and "reason" not in paying
    assert int8_manifest_fields({k: v for k, v in _Q.items() if k not in ("fp32_latency_ms", "speedup", "settings")}) == {}


def test_the_defaults_are_the_benchmarks_choice():
    """DEFAULT_INT8_SETTINGS cites benchmarks/results/int8.md: they must be what it chose."""
    import json
    from pathlib import Path

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "int8.json"
    if not results.is_file():
        pytest.skip("benchmarks/results/int8.json not present (run benchmarks/bench_int8.py)")
    assert json.loads(results.read_text())["chosen"] == DEFAULT_INT8_SETTINGS.to_dict()


# ------------------------------------------------------------------ settings reach onnxruntime
@pytest.fixture(scope="module")
def conv_net(tmp_path_factory):
    torch.manual_seed(0)
    m = TinyConvNet(width=8).eval()
    d = tmp_path_factory.mktemp("int8")
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()
    return export_onnx(m, m.example_inputs(), d / "fp32.onnx"), x, d


def _graph(path):
    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    return g, inits


def _quantise(conv_net, name, **kw):
    src, x, d = conv_net
    return quantize_int8(src, d / f"{name}.onnx", x, **kw)


def _weight_scales(g, inits):
    """Scale arrays of the DequantizeLinear nodes whose input is a quantised Conv weight."""
    out = []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4:
            out.append(inits[n.input[1]])
    return out


def test_default_is_qdq_u8s8_per_channel(conv_net):
    g, inits = _graph(_quantise(conv_net, "default"))
    ops = {n.op_type for n in g.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "QLinearConv" not in ops
    act_zp = [inits[n.input[2]] for n in g.node if n.op_type == "QuantizeLinear"]
    assert act_zp and all(z.dtype == np.uint8 for z in act_zp)  # U8 activations
    w = [inits[n.input[0]] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
         and inits[n.input[0]].ndim == 4]
    assert w and all(a.dtype == np.int8 for a in w)  # S8 weights
    scales = _weight_scales(g, inits)
    assert [s.shape for s in scales] == [(8,), (16,), (32,)]  # one scale per output channel
    assert DEFAULT_INT8_SETTINGS == Int8Settings() and DEFAULT_INT8_SETTINGS.activation_type == "uint8"


def test_per_tensor_and_qoperator_and_types(conv_net):
    g, inits = _graph(_quantise(conv_net, "per_tensor", per_channel=False))
    assert all(s.shape == () for s in _weight_scales(g, inits))
    g, inits = _graph(_quantise(conv_net, "qop", quant_format="qoperator"))
    ops = [n.op_type for n in g.node]
    assert ops.count("QLinearConv") == 3 and "Conv" not in ops
    g, inits = _graph(_quantise(conv_net, "s8s8", activation_type="int8"))
    assert all(inits[n.input[2]].dtype == np.int8 for n in g.node if n.op_type == "QuantizeLinear")


def test_reduce_range_uses_seven_bit_weights(conv_net):
    g, inits = _graph(_quantise(conv_net, "rr", reduce_range=True))
    w = [inits[n.input[0]] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
         and inits[n.input[0]].ndim == 4]
    assert w and max(int(np.abs(a.astype(np.int32)).max()) for a in w) <= 64


def test_first_conv_and_last_gemm_stay_fp32(conv_net):
    q = _quantise(conv_net, "edges", exclude_first_last=True)
    g, inits = _graph(q)
    produced_by_dq = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in g.node if n.op_type == "Conv"]
    gemm = next(n for n in g.node if n.op_type == "Gemm")
    assert convs[0].input[0] == g.input[0].name and convs[0].input[1] in inits  # float input, float weight
    assert gemm.input[1] in inits and inits[gemm.input[1]].dtype == np.float32
    assert convs[1].input[1] in produced_by_dq  # the middle convs are still quantised
    src, x, _ = conv_net
    s = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    assert s.run(None, {s.get_inputs()[0].name: x[:2]})[0].shape == (2, 10)


def test_conv_matmul_only_leaves_other_ops_float(conv_net):
    def dq_consumers(path):
        g, _ = _graph(path)
        dq_out = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
        return {n.op_type for n in g.node if any(i in dq_out for i in n.input)}

    pooling = {"ReduceMean", "GlobalAveragePool"}  # how the exporter writes the global average pool
    assert dq_consumers(_quantise(conv_net, "all_ops")) & pooling  # "all" quantises the pooling too
    assert not dq_consumers(_quantise(conv_net, "conv_only", ops="conv-matmul")) & pooling


def test_bad_settings_are_value_errors(conv_net):
    with pytest.raises(ValueError, match=r"quant_format must be one of \['qdq', 'qoperator'\]"):
        Int8Settings(quant_format="QDQ")
    with pytest.raises(ValueError, match="per_channel must be True or False"):
        Int8Settings(per_channel=1)
    with pytest.raises(ValueError, match="ops must be one of"):
        _quantise(conv_net, "bad", ops="everything")
    assert Int8Settings().to_dict()["quant_format"] == "qdq"
    assert "per-tensor" in Int8Settings(per_channel=False).label()


def test_quantisation_failure_is_an_export_error(conv_net, tmp_path):
    src = conv_net[0]
    with pytest.raises(ExportError, match="int8 quantisation of fp32.onnx failed"):
        quantize_int8(src, tmp_path / "q.onnx", np.zeros((2, 5, 8, 8), np.float32))  # wrong channel count
    assert not (tmp_path / "q.onnx").exists()


def test_saved_manifest_and_report_carry_the_flag(conv_net, tmp_path):
    """The real writer: CompressionResult._write_manifest on a result whose int8 block says 'not
    recommended' (the figures are fixed, not timed), next to the existing keys, unrenamed."""
    import json
    from types import SimpleNamespace

    from compress.result import CompressionResult

    import shutil

    shutil.copyfile(conv_net[0], tmp_path / "student.onnx")
    shutil.copyfile(conv_net[0], tmp_path / "student.int8.onnx")  # the manifest only hashes and reads its spec
    rec = int8_recommendation(0.25, 0.95, 0.0)
    q = {**_Q, "path": str(tmp_path / "student.int8.onnx"), **rec, "rule": "recommended = speedup >= 1 and drop_pts <= 1"}
    fake = SimpleNamespace(
        validation=SimpleNamespace(ok=True, max_abs_diff=0.0, top1_agreement=1.0, per_batch={1: {}}),
        student_report=SimpleNamespace(latency=None, accuracy_val=0.9, accuracy_test=0.9),
        teacher_onnx_path=None, mobile={"int8": q}, strategy="gp-prune",
        data={"spec": {"input_shape": [3, 8, 8], "mean": [0.5] * 3, "std": [0.25] * 3, "source": "npz"}},
        target=SimpleNamespace(name="cpu-1t", to_dict=lambda: {"name": "cpu-1t"}))
    CompressionResult._write_manifest(fake, tmp_path)
    art = next(a for a in json.loads((tmp_path / "manifest.json").read_text())["artifacts"]
               if a["file"] == "student.int8.onnx")
    assert art["recommended"] is False and "slower than fp32" in art["reason"]
    assert {"kind", "validation", "latency_ms", "sha256", "bytes"} <= set(art)  # the old contract stays
    assert art["latency_ms"]["median"] == 0.95 and art["fp32_latency_ms"] == 0.25
    assert art["settings"]["activation_type"] == DEFAULT_INT8_SETTINGS.activation_type
