"""Mobile artifacts: ORT format, usability report, int8, manifest."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compress.exporters import export_onnx
from compress.exporters.errors import ExportError
from compress.exporters.mobile import (
    convert_to_ort,
    mobile_usability,
    onnx_accuracy,
    quantize_int8,
    sha256_file,
    write_manifest,
)
from compress.testing import TinyResidualNet


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    torch.manual_seed(0)
    m = TinyResidualNet().eval()
    d = tmp_path_factory.mktemp("mob")
    return m, export_onnx(m, m.example_inputs(), d / "student.onnx")


def test_ort_format_runs_and_matches(onnx_file):
    model, path = onnx_file
    ort_path = convert_to_ort(path, path.with_suffix(".ort"))
    sess = ort.InferenceSession(str(ort_path), providers=["CPUExecutionProvider"])
    x = model.example_inputs(4)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), atol=1e-4)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_mobile_usability_is_structured(onnx_file):
    _, path = onnx_file
    rep = mobile_usability(path)
    assert set(rep) == {"nnapi", "coreml_neuralnetwork", "coreml_mlprogram"}
    for ep in rep.values():
        assert 0 <= ep["supported_nodes"] <= ep["nodes"] and ep["nodes"] > 0
        assert 0.0 <= ep["coverage"] <= 1.0
        assert ep["suitability"] in {"YES", "MAYBE", "NO"}
    # conv/relu/add/pool/gemm are all NNAPI ops: with fixed shapes everything is covered
    assert rep["nnapi"]["coverage_fixed_shapes"] == 1.0


def test_int8_quantisation_keeps_predictions(onnx_file, tmp_path):
    model, path = onnx_file
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 32, 32, generator=g)
    q = quantize_int8(path, tmp_path / "q.onnx", x.numpy())
    labels = model(x).argmax(1).numpy()  # agreement with the fp32 model's own predictions
    assert onnx_accuracy(path, x.numpy(), labels) == 1.0
    assert onnx_accuracy(q, x.numpy(), labels) >= 0.8
    assert q.stat().st_size < path.stat().st_size


def test_manifest_lists_hashes_and_specs(onnx_file):
    _, path = onnx_file
    d = path.parent
    m = write_manifest(d, [{"file": "student.onnx", "kind": "onnx", "latency_ms": {"median": 1.0}}], strategy="x")
    data = json.loads(m.read_text())
    art = data["artifacts"][0]
    assert art["sha256"] == sha256_file(path) and art["bytes"] == path.stat().st_size
    assert art["inputs"][0]["shape"][0] == "batch" and art["outputs"][0]["shape"] == ["batch", 10]
    assert art["opset"] >= 17 and art["latency_ms"]["median"] == 1.0
    with pytest.raises(ExportError, match="missing"):
        write_manifest(d, [{"file": "nope.onnx", "kind": "onnx"}])


def test_conversion_failure_is_an_export_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ExportError):
        convert_to_ort(bad, tmp_path / "bad.ort")
    assert not (tmp_path / "bad.ort").exists()
