"""Same command, same seed -> same student (issue 16, part 4).

* cache independence (``test_demo.py``): ``slimforge demo`` gives the same student, bit for bit,
  whether its teacher was trained in this process or loaded from the cache;
* rounding stability (here): the "measured" channel rounding picks the same widths on a loaded machine
  (two CPU burners) as on an idle one.

No test here asserts a timing; the second one asserts that decisions made *from* timings do not
move with the machine's load, which is what the noise rule in
``compress/strategies/_parts/channel_rounding.py`` is for.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


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
