"""compress.exporters: ONNX export (dynamo + fallback, atomic) and torch-vs-ORT validation."""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compress.exporters import (
    ExportError,
    InputShapeError,
    OnnxValidationError,
    ValidationReport,
    export_onnx,
    validate_onnx,
    write_bytes_atomic,
    write_text_atomic,
)

REPO = Path(__file__).resolve().parents[2]
SHAPE = (3, 16, 16)


class TinyConvNet(nn.Module):
    """conv-bn-relu-pool-linear; logits (N, 10) for input (N, 3, 16, 16)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return h, h.sum(dim=1, keepdim=True)


class Unexportable(nn.Module):
    """SVD has no ONNX translation in either exporter."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(self.lin(x))[0]


class DataDependentBranch(nn.Module):
    """torch.export rejects the Python branch on a tensor value; TorchScript tracing bakes it in."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if y.sum() > -1e9:
            return y * 2
        return y


def _trained_like_net(seed: int = 0) -> TinyConvNet:
    """Seeded net whose BN stats are not the defaults (so eval vs train mode matters)."""
    torch.manual_seed(seed)
    net = TinyConvNet()
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, *SHAPE))
    return net.eval()


@pytest.fixture(scope="module")
def net() -> TinyConvNet:
    return _trained_like_net()


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return torch.randn(200, *SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def exported(net: TinyConvNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # batch-1 example: the exporter must still produce a dynamic batch dim
    return export_onnx(net, torch.randn(1, *SHAPE), tmp_path_factory.mktemp("onnx") / "net.onnx")


def test_export_then_validate_matches_at_batch_1_and_8(net: TinyConvNet, exported: Path, data: torch.Tensor) -> None:
    report = validate_onnx(net, exported, data, batch_sizes=(1, 8))
    assert isinstance(report, ValidationReport)
    assert report.ok and report.mismatches == []
    assert report.max_abs_diff <= 1e-4
    assert set(report.per_batch) == {1, 8}
    assert all(v["ok"] and v["max_abs_diff"] <= 1e-4 for v in report.per_batch.values())
    assert report.top1_agreement == 1.0
    assert report.n_samples == 200
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_exported_file_is_single_file_with_symbolic_batch(exported: Path) -> None:
    import onnx

    assert sorted(p.name for p in exported.parent.iterdir()) == ["net.onnx"]  # no .data sidecar / temp files
    model = onnx.load(str(exported), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    [inp] = model.graph.input
    [out] = model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    in_dims = inp.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and not in_dims[0].HasField("dim_value")
    assert [d.dim_value for d in in_dims[1:]] == list(SHAPE)
    assert out.type.tensor_type.shape.dim[0].dim_param


def test_batch1_example_still_runs_at_other_batch_sizes(net: TinyConvNet, exported: Path) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for b in (1, 3, 17):
        x = torch.randn(b, *SHAPE)
        (got,) = sess.run(None, {"input": x.numpy()})
        with torch.no_grad():
            want = net(x).numpy()
        assert got.shape == (b, 10)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_static_batch_export(net: TinyConvNet, tmp_path: Path) -> None:
    import onnx

    path = export_onnx(net, torch.randn(4, *SHAPE), tmp_path / "static.onnx", dynamic_batch=False)
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 4 and not dim0.dim_param


def test_export_preserves_state_and_training_flags(tmp_path: Path) -> None:
    net = _trained_like_net(seed=3)
    net.train()
    net.bn.eval()  # mixed modes must come back exactly, not via net.train(True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = {name: m.training for name, m in net.named_modules()}
    export_onnx(net, torch.randn(2, *SHAPE), tmp_path / "m.onnx")
    assert {name: m.training for name, m in net.named_modules()} == flags
    after = net.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    # the graph was exported in eval mode: it matches the eval-mode model
    report = validate_onnx(net, tmp_path / "m.onnx", torch.randn(8, *SHAPE))
    assert report.ok
    assert net.training and not net.bn.training


def test_export_failure_raises_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out" / "bad.onnx"
    with pytest.raises(ExportError) as excinfo:
        export_onnx(Unexportable(), torch.randn(2, 4), target)
    msg = str(excinfo.value)
    assert "dynamo" in msg and "torchscript" in msg  # both causes summarised
    assert "svd" in msg  # names the failing op
    assert "what to do" in msg
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temp file / dir left behind


def test_export_failure_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ExportError):
        export_onnx(Unexportable(), torch.randn(2, 4), target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_forward_error_is_export_error(net: TinyConvNet, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="forward failed"):
        export_onnx(net, torch.randn(2, 5, 16, 16), tmp_path / "x.onnx")  # wrong channel count
    assert list(tmp_path.iterdir()) == []


def test_torchscript_fallback_when_dynamo_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import onnx

    torch.manual_seed(0)
    model = DataDependentBranch().eval()
    with caplog.at_level(logging.WARNING, logger="compress.exporters"):
        path = export_onnx(model, torch.randn(1, 4), tmp_path / "branch.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["compress.exporter"] == "torchscript"
    assert any("TorchScript" in r.getMessage() for r in caplog.records)
    assert validate_onnx(model, path, torch.randn(16, 4)).ok


def test_tuple_outputs_are_named(tmp_path: Path) -> None:
    import onnx

    path = export_onnx(TwoHeads(), torch.randn(3, 6), tmp_path / "two.onnx")
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["output_0", "output_1"]


def test_export_is_silent(net: TinyConvNet, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    export_onnx(net, torch.randn(2, *SHAPE), tmp_path / "quiet.onnx")
    with pytest.raises(ExportError):
        export_onnx(Unexportable(), torch.randn(2, 4), tmp_path / "bad.onnx")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_validation_collects_every_mismatch(net: TinyConvNet, exported: Path, data: torch.Tensor) -> None:
    other = _trained_like_net()
    with torch.no_grad():
        other.fc.weight.mul_(-1.0)  # negated logits: argmax becomes argmin
        other.fc.bias.mul_(-1.0)
    with pytest.raises(OnnxValidationError) as excinfo:
        validate_onnx(other, exported, data, batch_sizes=(1, 8, 32))
    report = excinfo.value.report
    assert not report.ok
    assert set(report.per_batch) == {1, 8, 32}
    assert not any(v["ok"] for v in report.per_batch.values())
    for b in (1, 8, 32):
        assert any(m.startswith(f"batch {b}:") for m in report.mismatches), b
    assert any("top-1" in m for m in report.mismatches)
    assert report.top1_agreement is not None and report.top1_agreement < 1.0
    assert report.max_abs_diff > 1e-2
    for m in report.mismatches:
        assert m in str(excinfo.value)  # the message lists every mismatch


def test_validation_without_raising_returns_report(net: TinyConvNet, exported: Path, data: torch.Tensor) -> None:
    other = _trained_like_net(seed=5)
    report = validate_onnx(other, exported, data, raise_on_failure=False, max_samples=50)
    assert not report.ok and report.mismatches
    assert report.n_samples == 50


def test_validation_cycles_small_inputs(net: TinyConvNet, exported: Path) -> None:
    report = validate_onnx(net, exported, torch.randn(3, *SHAPE), batch_sizes=(1, 8))
    assert report.ok and report.n_samples == 3 and set(report.per_batch) == {1, 8}


@pytest.mark.parametrize("bad", [torch.randn(4, 3, 8, 8), torch.randn(4, 48), torch.randn(0, *SHAPE)])
def test_validation_rejects_wrong_input_shape(net: TinyConvNet, exported: Path, bad: torch.Tensor) -> None:
    with pytest.raises(InputShapeError) as excinfo:
        validate_onnx(net, exported, bad)
    assert isinstance(excinfo.value, ValueError)
    assert "shape" in str(excinfo.value) or "sample" in str(excinfo.value)


def test_atomic_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "sub" / "report.json"
    write_text_atomic(p, '{"a": 1}')
    assert json.loads(p.read_text()) == {"a": 1}
    write_bytes_atomic(p, b"second")
    assert p.read_bytes() == b"second"

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(p, b"third")
    assert p.read_bytes() == b"second"
    assert [x.name for x in p.parent.iterdir()] == ["report.json"]
    with pytest.raises(TypeError):
        write_bytes_atomic(p, "not bytes")  # type: ignore[arg-type]


def test_import_is_light_and_layered() -> None:
    code = (
        "import sys, compress.exporters, compress.profiling\n"
        "heavy = [m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    leaves = {"compress._error_root", "compress._lazy"}  # shared leaves every layer may import (tests/test_layering.py)
    allowed = {"exporters": {"compress.exporters", *leaves},
               "profiling": {"compress.exporters", "compress.profiling", *leaves}}
    for folder, ok_prefixes in allowed.items():
        for py in (REPO / folder).glob("*.py"):
            for node in ast.walk(ast.parse(py.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for n in names:
                    if n == "compress" or n.startswith("compress."):
                        assert any(n == p or n.startswith(p + ".") for p in ok_prefixes), f"{py.name} imports {n}"
