"""``bench_darts_entropy.py`` on a 200-image subset: a run writes its entropies, ``--resume`` reruns
nothing, and the same seed in a fresh folder gives the same entropies (the search is deterministic).

Never part of ``make test`` (``bench`` marker). Needs ``../shared/data`` (skipped without it). About a
minute on one core::

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:xdist -m bench \
        benchmarks/test_bench_darts_entropy.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"


def _bench():
    sys.path.insert(0, str(HERE))
    import bench_darts_entropy

    return bench_darts_entropy


def test_parse_variant_rejects_what_is_not_a_json_object():
    bench = _bench()
    assert bench.parse_variant('wd0={"arch_weight_decay": 0}') == ("wd0", {"arch_weight_decay": 0})
    for bad in ("wd0", "wd0=[1]", '={"a": 1}', "wd0={bad"):
        with pytest.raises(SystemExit):
            bench.parse_variant(bad)


@pytest.mark.skipif(not (DATA / "cifar10_train10k_lossless.npz").is_file(), reason="needs ../shared/data")
def test_bench_darts_entropy_runs_resumes_and_repeats(tmp_path, capsys):
    bench = _bench()
    args = ["--data", str(DATA), "--train-limit", "200", "--variants", 'wd0={"arch_weight_decay": 0.0}']
    assert bench.main([*args, "--out", str(tmp_path / "a")]) == 0
    payload = json.loads((tmp_path / "a" / "darts_alpha_entropy.json").read_text())
    (run,) = payload["runs"]["wd0"]
    assert len(run["epochs"]) == 3 and run["plan"]["arch_reference_steps"] == bench.bench_nas_random.FULL["darts-gal"]["arch_reference_steps"]
    assert all(0.0 < e["alpha_entropy"] <= math.log(8) + 1e-6 for e in run["epochs"])
    assert run["final_entropy"] < math.log(8) - 1e-3  # alpha moved
    md = (tmp_path / "a" / "darts_alpha_entropy.md").read_text()
    assert "| wd0 |" in md and f"{run['final_entropy']:.4f}" in md
    capsys.readouterr()
    assert bench.main([*args, "--out", str(tmp_path / "a"), "--resume"]) == 0
    assert "wd0 seed 0" not in capsys.readouterr().out  # nothing rerun
    assert bench.main([*args, "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "darts_alpha_entropy.json").read_text())["runs"]["wd0"][0]
    assert [e["alpha_entropy"] for e in again["epochs"]] == [e["alpha_entropy"] for e in run["epochs"]]
