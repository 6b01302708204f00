"""`slimforge demo`: the report contract, and the same student whether the teacher was trained in
this process or came from the cache (issue 16, part 4).

Both tests read one pair of demo runs (module fixture): the first trains its teacher and fills
the cache, the second is the same command with the teacher loaded from that cache. The pair is
the costliest thing in the suite (a teacher training and two compress runs), so it runs once.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from compress.cli import app

pytestmark = pytest.mark.slow

# a small teacher that learns digits in 2 epochs (about 96% val; 1 epoch left it near 50% and its
# student at chance, where an int8 drop says nothing), a short prune and fine-tune.
# --allow-slower: exit 0 must not hang on the wall-clock race with the teacher (the refusal is
# tested in test_pipeline.py on fixed timings).
DEMO_ARGS = ["demo", "--seed", "7", "--teacher-model", "timm:resnet10t", "--teacher-epochs", "2", "--epochs", "1",
             "--allow-slower",
             "--config", json.dumps({"bisection_steps": 3, "calib_samples": 64, "max_steps_per_epoch": 5})]


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    """``(trained, loaded)``: each a dict with the run's ``out`` dir, CLI ``output`` and ``report``."""
    root = tmp_path_factory.mktemp("demo")
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMFORGE_CACHE", str(root / "cache"))
        for name in ("trained", "loaded"):
            out = root / name
            res = CliRunner().invoke(app, [*DEMO_ARGS, "--out", str(out)])
            assert res.exit_code == 0, res.output[-3000:]
            runs.append({"out": out, "output": res.output, "report": json.loads((out / "report.json").read_text()),
                         "cached": sorted(p.name for p in (root / "cache" / "teachers").glob("*.safetensors"))})
    return runs


def test_demo_writes_the_report_contract(demo_pair):
    run = demo_pair[0]
    out, report = run["out"], run["report"]
    assert {"report.json", "report.md", "student.onnx", "teacher.onnx", "student.ort", "student.int8.onnx",
            "manifest.json"} <= {p.name for p in out.iterdir()}
    assert report["teacher"]["accuracy"]["val"] >= 0.9, report["teacher"]["accuracy"]  # quality figures below mean something
    q = report["mobile"]["int8"]
    assert 0.0 <= q["accuracy"] <= 1.0 and q["drop_pts"] == pytest.approx(100 * (q["fp32_accuracy"] - q["accuracy"]))
    assert abs(q["drop_pts"]) <= 1.0, q  # issue 7: int8 keeps top-1 within 1 point on the digits demo
    assert q["fp32_accuracy"] == pytest.approx(report["student"]["accuracy"][q["split"]])  # same images, same model
    manifest = json.loads((out / "manifest.json").read_text())
    assert {a["file"] for a in manifest["artifacts"]} == {"student.onnx", "teacher.onnx", "student.ort", "student.int8.onnx"}
    assert report["budget"]["spec"] == "macs=0.5x" and report["budget"]["ok"] is True
    assert report["onnx"]["parity"]["top1_agreement"] == 1.0
    assert "teacher" in run["output"] and "student" in run["output"]
    # the second run's teacher came from the cache, keyed by its settings
    assert len(run["cached"]) == 1 and demo_pair[1]["cached"] == run["cached"]
    assert "loaded from cache" in demo_pair[1]["output"] and "loaded from cache" not in run["output"]


def test_demo_student_does_not_depend_on_whether_the_teacher_came_from_the_cache(demo_pair):
    trained, loaded = (r["report"] for r in demo_pair)
    assert trained["teacher"]["accuracy"]["val"] >= 0.9  # a teacher that learned something
    assert trained["teacher"]["accuracy"] == loaded["teacher"]["accuracy"]
    a = load_file(str(demo_pair[0]["out"] / "student.safetensors"))
    b = load_file(str(demo_pair[1]["out"] / "student.safetensors"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"students differ in {len(differ)} tensors, e.g. {differ[:3]}"
    assert trained["info"]["layer_widths"] == loaded["info"]["layer_widths"]
    assert trained["student"]["accuracy"] == loaded["student"]["accuracy"]
