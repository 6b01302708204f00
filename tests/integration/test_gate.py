"""The CI gate: catches a real latency regression, no false alarm on an unchanged model, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from compress.cli import app
from compress.exporters import export_onnx
from compress.models import load_model
from compress.profiling import Target, profile_latency

runner = CliRunner()


class _Slower(nn.Module):
    """The same network plus a side tower of 3x3 convs at full resolution: a deliberate slowdown."""

    def __init__(self, base: nn.Module, convs: int = 10) -> None:
        super().__init__()
        self.base = base
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1)]
        for _ in range(convs):
            layers += [nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)]
        self.tower = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + 1e-6 * self.tower(x).mean(dim=(1, 2, 3)).unsqueeze(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("gate")
    base = load_model("cifar:resnet20", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    fast = export_onnx(base, x, d / "student.onnx")
    slow = export_onnx(_Slower(base).eval(), x, d / "slower.onnx")
    return d, fast, slow


def _gate(*args: str):
    return runner.invoke(app, ["gate", *args])


def test_gate_passes_unchanged_and_catches_a_30pct_regression(models):
    d, fast, slow = models
    base = d / "baseline.json"
    res = _gate("--model", str(fast), "--baseline", str(base), "--update-baseline")
    assert res.exit_code == 0, res.output
    stored = json.loads(base.read_text())
    assert stored["macs"] > 0 and stored["latency_ms"]["median"] > 0

    # no false alarm: the unchanged model passes five times in a row, timed side by side with the
    # baseline's own file (the recommended CI mode: load drift since the baseline hits both alike)
    for _ in range(5):
        res = _gate("--model", str(fast), "--baseline", str(base), "--reference", str(fast), "--json")
        assert res.exit_code == 0, res.output
        rows = {r["metric"]: r for r in json.loads(res.output)["rows"]}
        assert rows["latency_ms.median"]["status"] in ("ok", "improved")
        assert "side by side" in rows["latency_ms.median"]["detail"]

    # the deliberate regression is real (>= 30% slower, measured side by side) and is caught
    t = Target.preset("cpu-1t", input_shape=(3, 32, 32))
    ratio = profile_latency(slow, t, repeats=30).median_ms / profile_latency(fast, t, repeats=30).median_ms
    assert ratio >= 1.3, f"the test's slowdown is only {ratio:.2f}x"
    for side_by_side in ((), ("--reference", str(fast))):  # caught against the stored and the re-timed baseline
        res = _gate("--model", str(slow), "--baseline", str(base), "--json", *side_by_side)
        assert res.exit_code == 1, res.output
        rows = {r["metric"]: r for r in json.loads(res.output)["rows"]}
        assert rows["latency_ms.median"]["status"] == "REGRESSED"
        assert rows["macs"]["status"] == "REGRESSED"


def test_gate_exit_codes(models, tmp_path):
    d, fast, _ = models
    base = tmp_path / "b.json"
    assert _gate("--model", str(fast), "--baseline", str(base)).exit_code == 2  # no baseline yet
    assert _gate("--model", str(fast), "--baseline", str(base), "--update-baseline", "--repeats", "10").exit_code == 0
    res = _gate("--model", str(fast), "--baseline", str(base), "--target", "cpu-2t", "--repeats", "10")
    assert res.exit_code == 2 and "update-baseline" in res.output  # different target: refuse to compare
    assert _gate("--model", str(fast), "--baseline", str(base), "--tolerance", "five").exit_code == 2
    res = _gate("--model", str(fast), "--baseline", str(base), "--max-latency-ms", "0.0001", "--repeats", "10")
    assert res.exit_code == 1 and "absolute" in res.output
    assert _gate("--model", str(tmp_path / "none.onnx"), "--baseline", str(base)).exit_code == 2
    res = _gate("--model", str(fast), "--baseline", str(base), "--reference", str(tmp_path / "gone.onnx"), "--repeats", "10")
    assert res.exit_code == 2 and "reference" in res.output  # a missing reference file is bad input
    res = _gate("--model", str(fast), "--baseline", str(base), "--reference", str(fast), "--rounds", "1", "--repeats", "10")
    assert res.exit_code == 2 and "rounds" in res.output


def test_gate_accuracy_from_labelled_npz(models, tmp_path):
    d, fast, _ = models
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(40, dtype=np.uint8))
    base = tmp_path / "acc.json"
    args = ["--model", str(fast), "--baseline", str(base), "--data", str(tmp_path / "d.npz"), "--repeats", "10"]
    assert _gate(*args, "--update-baseline").exit_code == 0
    acc = json.loads(base.read_text())["accuracy"]
    assert 0.0 <= acc <= 1.0
    stored = json.loads(base.read_text())
    stored["accuracy"] = min(1.0, acc + 0.05)  # pretend the baseline was 5 points better
    base.write_text(json.dumps(stored))
    res = _gate(*args, "--json")
    assert res.exit_code == 1
    rows = {r["metric"]: r for r in json.loads(res.output)["rows"]}
    assert rows["accuracy"]["status"] == "REGRESSED"


def test_pytest_fixture_asserts_budgets(request, models):
    _, fast, _ = models
    check = request.getfixturevalue("slimforge_budget")
    chk = check(fast, "params=1M")
    assert chk.ok
    with pytest.raises(pytest.fail.Exception, match="params"):
        check(fast, "params=1000")
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    m(torch.randn(1, 3, 8, 8))
    assert check(m, "macs=1M", example_inputs=torch.randn(1, 3, 8, 8)).ok
