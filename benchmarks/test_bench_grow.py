"""``bench_grow.py --smoke --random-k 2`` end to end (issue 18's random-splitting baseline for grow):
K random rows with their own seeds, the random mean and best, and the paired tests against them.
``bench`` marker, outside ``make test`` (about a minute on one core)::

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/pytest benchmarks/test_bench_grow.py -m bench -p no:xdist -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.timeout(1800)
@pytest.mark.skipif(not (DATA / "cifar10_train10k_lossless.npz").is_file(), reason="needs ../shared/data")
def test_random_k_adds_k_seeded_random_rows_and_the_tests_against_their_mean_and_best(tmp_path):
    import bench_grow

    assert bench_grow.main(["--data", str(DATA), "--smoke", "--random-k", "2", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "smoke" / "grow_cifar_resnet56_k2.json").read_text())
    runs = {r["run"]: r for r in doc["runs"]}
    assert set(runs) == {"grow", "grow-random-1", "grow-random-2", "kd-resnet20"}
    assert [runs["grow-random-1"]["seed"], runs["grow-random-2"]["seed"]] == [0, 1]
    s = doc["random_summary"]
    accs = [runs["grow-random-1"]["test_acc"], runs["grow-random-2"]["test_acc"]]
    assert s["random_mean"]["test_acc"] == pytest.approx(np.mean(accs))
    assert runs[s["random_best"]]["test_acc"] == max(accs)
    assert s["vs_mean"]["diff_pts"] == pytest.approx(100 * (runs["grow"]["test_acc"] - np.mean(accs)))
    assert s["vs_best"]["b"] == s["random_best"] and 0 <= s["vs_best"]["p_value"] <= 1
    md = (tmp_path / "smoke" / "grow_cifar_resnet56_k2.md").read_text()
    assert "Beats the mean of random search" in md and "random mean (of 2)" in md
    with pytest.raises(SystemExit):
        bench_grow.main(["--data", str(DATA), "--smoke", "--random-k", "0", "--out", str(tmp_path)])
