"""``bench_real_size.py --smoke`` end to end (issue 17's benchmark on a tiny configuration): the image
folder built from the shared CIFAR-10 images at 224x224, one small timm model through ``compress()``
in a child process, the per-phase table, the goals and the growth exponent; then ``--resume`` of the
finished run (nothing run again) and ``--report-only``.

Never part of ``make test`` (``bench`` marker; ``testpaths`` is ``tests``). Needs ``../shared/data``
(skipped without it). A few minutes on a shared core::

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/pytest benchmarks/test_bench_real_size.py -m bench -p no:xdist -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"


def _bench():
    sys.path.insert(0, str(HERE))
    import bench_real_size

    return bench_real_size


def test_fit_exponent_is_the_log_log_slope():
    bench = _bench()
    assert bench.fit_exponent([(1e8, 2.0), (1e9, 20.0), (4e9, 80.0)]) == pytest.approx(1.0)
    assert bench.fit_exponent([(1e8, 1.0), (1e9, 100.0)]) == pytest.approx(2.0)
    assert bench.fit_exponent([(1e9, 1.0), (1e9, 2.0)]) is None  # one distinct MAC count: no slope


@pytest.mark.timeout(1800)
@pytest.mark.skipif(not (DATA / "cifar10_train10k_lossless.npz").is_file(), reason="needs ../shared/data")
def test_bench_real_size_smoke_end_to_end(tmp_path, capsys):
    bench = _bench()
    out, work = tmp_path / "results", tmp_path / "work"
    argv = ["--smoke", "--data", str(DATA), "--out", str(out), "--work", str(work),
            "--config", json.dumps({"channel_rounding": "fixed", "round_to": 8})]
    assert bench.main(argv) == 0
    payload = json.loads((out / "real_size_smoke.json").read_text())
    assert payload["settings"]["train_images"] == 40 and payload["settings"]["val_images"] == 20
    folder = next(work.glob("images_224_40_20"))
    assert len(list((folder / "train").glob("*/*.png"))) == 40 and len(list((folder / "val").glob("*/*.png"))) == 20
    (row,) = payload["rows"]
    assert "error" not in row, row.get("error")
    assert row["model"] == "mobilenetv3_small_050" and row["budget_met"] and row["parity_ok"]
    assert row["training_s"] > 0 and row["non_training_s"] > 0
    assert row["total_s"] == pytest.approx(row["training_s"] + row["non_training_s"])
    assert 0 < row["non_training_share"] < 1
    assert row["peak_rss_bytes"] > 0 and row["out_dir_bytes"] >= row["checkpoint_bytes"] > 0
    assert row["bytes_written"] >= row["out_dir_bytes"]  # every file in out_dir was written by the run
    for phase in ("measure_teacher", "prune", "finetune", "export", "validate", "profile"):
        assert phase in row["wall_s"]
    goal = payload["summary"]["time_goal"]["mobilenetv3_small_050"]
    assert goal["allowed_s"] == max(60.0, 0.1 * row["total_s"])
    assert goal["met"] == (row["non_training_s"] <= goal["allowed_s"])
    md = (out / "real_size_smoke.md").read_text()
    assert "| mobilenetv3_small_050 |" in md and "non-training share" in md and "Growth with the model's MACs" in md
    capsys.readouterr()

    # --resume: the finished model is kept, nothing runs again
    assert bench.main([*argv, "--resume"]) == 0
    again = json.loads((out / "real_size_smoke.json").read_text())
    assert again["rows"] == payload["rows"] and len(again["sessions"]) == 2
    # --report-only: the same rows, nothing run
    assert bench.main([*argv, "--report-only"]) == 0
    assert json.loads((out / "real_size_smoke.json").read_text())["rows"] == payload["rows"]
