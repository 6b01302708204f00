"""compress.profiling: Target validation/presets and latency measurement (onnxruntime + torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from compress.exporters import export_onnx
from compress.profiling import (
    PRESETS,
    LatencyStats,
    ProfilingError,
    Target,
    TargetError,
    profile_latency,
)

SHAPE = (3, 16, 16)
FAST = {"warmup": 2, "repeats": 12}


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)
        self.threads_seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.threads_seen.append(torch.get_num_threads())
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def net() -> TinyConvNet:
    torch.manual_seed(0)
    return TinyConvNet().eval()


@pytest.fixture(scope="module")
def onnx_path(net: TinyConvNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(net, torch.randn(2, *SHAPE), tmp_path_factory.mktemp("prof") / "net.onnx")


def _assert_sane(stats: LatencyStats, repeats: int) -> None:
    assert stats.repeats == repeats
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.max_ms
    assert stats.min_ms <= stats.mean_ms <= stats.max_ms
    assert stats.std_ms >= 0 and stats.iqr_ms >= 0
    assert stats.max_ms < 5_000  # a tiny net: milliseconds, not seconds
    json.dumps(stats.to_dict())


def test_profile_module_via_onnxruntime(net: TinyConvNet) -> None:
    target = Target.preset("cpu-1t", input_shape=SHAPE)
    stats = profile_latency(net, target, **FAST)
    _assert_sane(stats, FAST["repeats"])
    assert (stats.engine, stats.target, stats.batch_size, stats.warmup) == ("onnxruntime", "cpu-1t", 1, 2)


def test_profile_onnx_path_takes_static_shape(onnx_path: Path) -> None:
    target = Target(name="b4", batch_size=4)  # no input_shape: read (3, 16, 16) from the ONNX input
    stats = profile_latency(onnx_path, target, warmup=1, repeats=7)
    _assert_sane(stats, 7)
    assert stats.batch_size == 4 and stats.target == "b4"
    stats_str = profile_latency(str(onnx_path), target, warmup=0, repeats=3)
    assert stats_str.repeats == 3


def test_profile_module_from_example_inputs(net: TinyConvNet) -> None:
    stats = profile_latency(net, Target(), example_inputs=torch.randn(1, *SHAPE), warmup=1, repeats=5)
    _assert_sane(stats, 5)


def test_module_without_shape_is_an_error(net: TinyConvNet) -> None:
    with pytest.raises(ProfilingError, match="input_shape"):
        profile_latency(net, Target(), **FAST)


def test_dynamic_spatial_dims_need_input_shape(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "dyn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    )
    path = tmp_path / "dyn.onnx"
    # onnx 1.23 defaults to IR 14, which onnxruntime 1.31 cannot load (max IR 13)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, str(path))
    with pytest.raises(ProfilingError, match=r"Target\.input_shape"):
        profile_latency(path, Target(), **FAST)
    _assert_sane(profile_latency(path, Target(input_shape=(3, 8, 8)), **FAST), FAST["repeats"])
    with pytest.raises(ProfilingError, match="does not fit"):
        profile_latency(path, Target(input_shape=(4, 8, 8)), **FAST)


def test_torch_engine_uses_and_restores_threads(net: TinyConvNet) -> None:
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    net.threads_seen.clear()
    net.train()
    try:
        stats = profile_latency(net, Target(name="t", intra_op_threads=wanted, input_shape=SHAPE), engine="torch", **FAST)
        assert net.training  # train/eval state restored
    finally:
        net.eval()
    _assert_sane(stats, FAST["repeats"])
    assert stats.engine == "torch"
    assert torch.get_num_threads() == before
    assert net.threads_seen and set(net.threads_seen) == {wanted}


def test_torch_engine_needs_a_module(onnx_path: Path) -> None:
    with pytest.raises(ProfilingError, match="nn.Module"):
        profile_latency(onnx_path, Target(input_shape=SHAPE), engine="torch")


def test_unknown_provider_lists_available(onnx_path: Path) -> None:
    with pytest.raises(ProfilingError) as excinfo:
        profile_latency(onnx_path, Target(provider="NoSuchExecutionProvider"), **FAST)
    assert "CPUExecutionProvider" in str(excinfo.value)


def test_bad_engine_and_counts(onnx_path: Path) -> None:
    with pytest.raises(ProfilingError, match="engine"):
        profile_latency(onnx_path, Target(), engine="tvm")
    with pytest.raises(ProfilingError, match="repeats"):
        profile_latency(onnx_path, Target(), repeats=0)
    with pytest.raises(ProfilingError, match="warmup"):
        profile_latency(onnx_path, Target(), warmup=-1)


def test_static_batch_mismatch(net: TinyConvNet, tmp_path: Path) -> None:
    path = export_onnx(net, torch.randn(2, *SHAPE), tmp_path / "b2.onnx", dynamic_batch=False)
    with pytest.raises(ProfilingError, match="static batch of 2"):
        profile_latency(path, Target(batch_size=1), **FAST)
    assert profile_latency(path, Target(batch_size=2), **FAST).batch_size == 2


def test_presets() -> None:
    assert set(PRESETS) >= {"cpu-1t", "cpu-2t"}
    one, two = Target.preset("cpu-1t"), Target.preset("cpu-2t", input_shape=[3, 32, 32])
    assert (one.name, one.intra_op_threads, one.provider) == ("cpu-1t", 1, "CPUExecutionProvider")
    assert (two.name, two.intra_op_threads, two.input_shape) == ("cpu-2t", 2, (3, 32, 32))
    assert Target() == one
    with pytest.raises(TargetError) as excinfo:
        Target.preset("gpu-99")
    assert "cpu-1t" in str(excinfo.value) and "cpu-2t" in str(excinfo.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"intra_op_threads": 0},
        {"inter_op_threads": -1},
        {"batch_size": 0},
        {"intra_op_threads": 1.5},
        {"intra_op_threads": True},
        {"input_shape": (3, 0, 32)},
        {"input_shape": ()},
        {"input_shape": "3x32x32"},
        {"graph_optimization_level": "max"},
        {"name": ""},
        {"provider": ""},
    ],
)
def test_invalid_target_fields(kwargs: dict) -> None:
    with pytest.raises(TargetError) as excinfo:
        Target(**kwargs)
    assert isinstance(excinfo.value, ValueError) and isinstance(excinfo.value, ProfilingError)
    field = next(iter(kwargs))
    assert field in str(excinfo.value)


def test_target_helpers() -> None:
    import onnxruntime as ort

    t = Target.preset("cpu-2t").with_input_shape((3, 8, 8))
    assert t.input_shape == (3, 8, 8) and t.intra_op_threads == 2
    d = t.to_dict()
    assert d["input_shape"] == [3, 8, 8] and json.loads(json.dumps(d)) == d
    so = Target(intra_op_threads=2, inter_op_threads=1, graph_optimization_level="basic").session_options()
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (2, 1)
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(Exception):
        t.batch_size = 3  # type: ignore[misc]  # frozen


# --------------------------------------------------------------------------------------------
# target files and the ORT-format target (issue: deployment targets)
# --------------------------------------------------------------------------------------------
def test_target_from_toml_and_yaml(tmp_path) -> None:
    toml = tmp_path / "phone.toml"
    toml.write_text('preset = "ort-mobile"\nname = "pixel-little"\ninput_shape = [3, 32, 32]\n')
    t = Target.from_file(toml)
    assert (t.name, t.model_format, t.intra_op_threads, t.input_shape) == ("pixel-little", "ort", 1, (3, 32, 32))
    yml = tmp_path / "server.yaml"
    yml.write_text("target:\n  intra_op_threads: 2\n  batch_size: 8\n")
    y = Target.from_file(yml)
    assert (y.name, y.intra_op_threads, y.batch_size) == ("server", 2, 8)
    assert Target.resolve(str(toml)).name == "pixel-little"
    bad = tmp_path / "bad.toml"
    bad.write_text("intra_op_thread = 2\n")
    with pytest.raises(TargetError, match="did you mean 'intra_op_threads'"):
        Target.from_file(bad)
    with pytest.raises(TargetError, match="Did you mean 'cpu-1t'"):
        Target.resolve("cpu-1")


def test_ort_mobile_target_times_the_ort_format(tmp_path) -> None:
    from compress.exporters import export_onnx
    from compress.testing import TinyConvNet

    m = TinyConvNet().eval()
    path = export_onnx(m, m.example_inputs(), tmp_path / "m.onnx")
    t = Target.preset("ort-mobile", input_shape=(3, 32, 32))
    stats = profile_latency(path, t, warmup=1, repeats=3)
    assert stats.median_ms > 0 and stats.target == "ort-mobile"
    assert not list(tmp_path.glob("*.ort"))  # the conversion is temporary


# ------------------------------------------------------------------------------ peak memory
def test_peak_memory_grows_with_the_weights_the_session_holds(onnx_path: Path, tmp_path: Path) -> None:
    from compress.profiling import profile_peak_memory

    small = profile_peak_memory(onnx_path, "cpu-1t", input_shape=SHAPE)
    assert 0 < small.baseline_rss_bytes < small.peak_rss_bytes
    assert small.session_peak_bytes == small.peak_rss_bytes - small.baseline_rss_bytes
    # 8M float32 weights = 32 MiB that the session must hold resident
    big_net = nn.Sequential(nn.Flatten(), nn.Linear(SHAPE[0] * SHAPE[1] * SHAPE[2], 8 * 2**20 // 768)).eval()
    n_weights = sum(p.numel() for p in big_net.parameters())
    big = profile_peak_memory(export_onnx(big_net, torch.randn(2, *SHAPE), tmp_path / "big.onnx"), "cpu-1t",
                              input_shape=SHAPE)
    assert big.session_peak_bytes - small.session_peak_bytes >= 0.9 * 4 * n_weights
    assert big.to_dict()["target"] == "cpu-1t"


def test_peak_memory_errors(onnx_path: Path, tmp_path: Path) -> None:
    from compress.profiling import profile_peak_memory

    with pytest.raises(ProfilingError, match="export the model first"):
        profile_peak_memory(tmp_path / "missing.onnx", "cpu-1t", input_shape=SHAPE)
    with pytest.raises(ProfilingError, match="runs must be"):
        profile_peak_memory(onnx_path, "cpu-1t", input_shape=SHAPE, runs=0)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ProfilingError, match="failed"):
        profile_peak_memory(tmp_path / "junk.onnx", "cpu-1t", input_shape=SHAPE)
