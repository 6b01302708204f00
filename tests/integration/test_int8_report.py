"""compress(int8=True) records whether int8 pays, in the report and the manifest (issue 16, part 5).

The side-by-side timings are fixed by replacing ``measure_interleaved``: no test depends on timing.
"""

from __future__ import annotations

import json

import pytest

from compress.api import compress
from compress.exporters.mobile import DEFAULT_INT8_SETTINGS
from compress.testing import TinyConvNet

FAST = {"epochs": 0, "bisection_steps": 3, "calib_samples": 64}


def _fixed(int8_ms: float, fp32_ms: float = 1.0):
    """teacher 1.0 ms vs student 0.6 ms; fp32 student ``fp32_ms`` vs int8 ``int8_ms``."""
    def fake(models, target, example_inputs=None, *, rounds=10, repeats=20, warmup=3, min_round_ms=0.0):
        names = [str(m) for m in models]
        if names[1].endswith("student.int8.onnx"):
            assert names[0].endswith("student.onnx")
            pair = (fp32_ms, int8_ms)
        else:
            pair = (1.0, 0.6)
        return [{"median_ms": ms, "min_ms": ms, "rounds_ms": [ms] * rounds} for ms in pair]
    return fake


def test_report_and_manifest_say_when_int8_does_not_pay(digits_task, tmp_path, monkeypatch):
    """Issue 16's gp-prune demo figures (fp32 0.25 ms, int8 0.95 ms), scaled: int8 3.8x slower.
    The paying case is tested on the same code path without a compress run (tests/unit/test_int8.py)."""
    int8_ms = 3.8
    monkeypatch.setattr("compress.measure.measure_interleaved", _fixed(int8_ms))
    out = tmp_path / "run"
    res = compress(TinyConvNet(num_classes=10).eval(), "macs=0.5x", data=digits_task, config=FAST, progress=False,
                   latency_repeats=3, latency_warmup=1, mobile=False, memory=False, int8=True, out_dir=out)
    q = json.loads((out / "report.json").read_text())["mobile"]["int8"]
    assert q == json.loads(json.dumps(res.mobile["int8"]))
    # the keys that were there before stay, with their names
    assert {"path", "accuracy", "fp32_accuracy", "drop_pts", "latency_ms", "latency_p90_ms", "split"} <= set(q)
    assert q["latency_ms"] == int8_ms and q["fp32_latency_ms"] == 1.0
    assert q["speedup"] == pytest.approx(q["fp32_latency_ms"] / q["latency_ms"])
    assert q["recommended"] is False and q["reason"].startswith("slower than fp32 (0.26x")
    assert q["settings"]["quant_format"] == DEFAULT_INT8_SETTINGS.quant_format
    assert q["settings"]["activation_type"] == DEFAULT_INT8_SETTINGS.activation_type
    assert q["latency_method"]["method"] == "interleaved"
    art = next(a for a in json.loads((out / "manifest.json").read_text())["artifacts"] if a["file"] == "student.int8.onnx")
    assert art["recommended"] is False and art["reason"] == q["reason"]
    assert art["latency_ms"]["median"] == int8_ms and art["fp32_latency_ms"] == 1.0
