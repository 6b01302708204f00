"""Same command, same seed -> same student (issue 16, part 4).

* cache independence: ``slimforge demo`` gives the same student, bit for bit, whether its teacher
  was trained in this process or loaded from the cache;
* rounding stability: the "measured" channel rounding picks the same widths on a loaded machine
  (two CPU burners) as on an idle one.

No test here asserts a timing; the second one asserts that decisions made *from* timings do not
move with the machine's load, which is what the noise rule in
``compress/strategies/_parts/channel_rounding.py`` is for.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from compress.cli import app

pytestmark = pytest.mark.slow

# a small teacher that learns digits in 2 epochs (about 96% val), a short prune and fine-tune
DEMO_ARGS = ["demo", "--seed", "7", "--teacher-model", "timm:resnet10t", "--teacher-epochs", "2", "--epochs", "1",
             "--no-int8", "--allow-slower",
             "--config", json.dumps({"bisection_steps": 3, "calib_samples": 64, "max_steps_per_epoch": 5})]


def _demo(out) -> dict:
    res = CliRunner().invoke(app, [*DEMO_ARGS, "--out", str(out)])
    assert res.exit_code == 0, res.output[-2000:]
    return json.loads((out / "report.json").read_text())


def test_demo_student_does_not_depend_on_whether_the_teacher_came_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMFORGE_CACHE", str(tmp_path / "cache"))
    trained = _demo(tmp_path / "trained")  # trains the teacher in this process, then compresses it
    cached = list((tmp_path / "cache" / "teachers").glob("*.safetensors"))
    assert len(cached) == 1
    loaded = _demo(tmp_path / "loaded")  # the same command: the teacher now comes from the cache
    assert trained["teacher"]["accuracy"]["val"] >= 0.9  # a teacher that learned something
    assert trained["teacher"]["accuracy"] == loaded["teacher"]["accuracy"]
    a = load_file(str(tmp_path / "trained" / "student.safetensors"))
    b = load_file(str(tmp_path / "loaded" / "student.safetensors"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"students differ in {len(differ)} tensors, e.g. {differ[:3]}"
    assert trained["info"]["layer_widths"] == loaded["info"]["layer_widths"]
    assert trained["student"]["accuracy"] == loaded["student"]["accuracy"]


def _plan(model, x, ratio, ignored, cache_dir) -> dict[str, int]:
    from compress.profiling import Target
    from compress.profiling.latency_model import LayerLatencyTable
    from compress.strategies._parts import channel_rounding

    table = LayerLatencyTable(Target.preset("cpu-1t", input_shape=tuple(x.shape[1:])), cache_dir=cache_dir,
                              **channel_rounding.TIMING)
    _, records = channel_rounding.plan_widths(model, x, ratio, ignored, table)
    for rec in records:  # the report's record of every decision: widths considered, timings, gain, noise
        assert {"nominal", "chosen", "decision", "threshold", "candidates"} <= set(rec)
        assert all(len(c["ms_rounds"]) == channel_rounding.TIMING["rounds"] for c in rec["candidates"])
    return {r["group"]: r["chosen"] for r in records}


def test_measured_rounding_picks_the_same_widths_on_a_loaded_machine(tmp_path):
    from compress.models import load_model

    torch.manual_seed(0)
    model = load_model("timm:resnet18", num_classes=10).eval()  # the demo's teacher
    x = torch.randn(2, 3, 32, 32)
    ratio = 0.31  # about the uniform ratio the demo's macs=0.5x budget ends at
    idle = _plan(model, x, ratio, [model.fc], tmp_path / "idle")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        loaded = _plan(model, x, ratio, [model.fc], tmp_path / "loaded")  # a fresh table: measured again
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert loaded == idle
