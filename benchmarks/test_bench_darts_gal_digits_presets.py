"""``bench_darts_gal_digits_presets.py``'s bookkeeping on made-up runs (no training): the variant
merge into the demo config (``run_config``), the pooled paired test against the first variant, the table.

Never part of ``make test`` (``bench`` marker)::

    .venv/bin/python -m pytest -q -p no:xdist -m bench benchmarks/test_bench_darts_gal_digits_presets.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.bench
sys.path.insert(0, str(Path(__file__).resolve().parent))


def test_variants_merge_leaf_by_leaf_and_pair_against_the_first_variant():
    import bench_darts_gal_digits_presets as bench

    from compress.strategies.config_tree import config_from_dict, config_to_dict
    from compress.strategies.darts_gal.config import DartsGalConfig
    from compress.strategies.darts_gal.strategy import DartsGal

    demo = DartsGal.demo_config(bench.DEMO_EPOCHS)
    cfg = bench.run_config({"search": {"max_steps_per_epoch": 3}})
    assert cfg["search"]["max_steps_per_epoch"] == 3 and cfg["search"]["C"] == demo["search"]["C"]
    assert cfg["final"]["epochs"] == demo["final"]["epochs"] and demo["search"]["max_steps_per_epoch"] != 3
    assert bench.run_config({}) == config_to_dict(config_from_dict(DartsGalConfig, demo))  # no fields: the demo config

    rng = np.random.default_rng(0)
    base = [rng.random(200) < 0.9 for _ in range(2)]
    other = [b.copy() for b in base]
    other[0][:10] = ~other[0][:10]  # 10 images flipped in seed 0 only
    runs = {name: [{"seed": s, "fields": {"search": {"x": i}}, "test_acc": float(c.mean()), "correct": c.tolist(),
                    "teacher_test_acc": 1.0, "params": 10, "macs": 20, "budget_ok": True, "alpha_entropy": [1.9, 1.4],
                    "final_entropy": 1.4, "param_free": [3, 2], "nodes_removed": 1, "nodes_total": 8,
                    "search_wall_s": 1.0, "wall_s": 2.0} for s, c in enumerate(cs)]
            for i, (name, cs) in enumerate((("old", base), ("new", other)))}
    pairs = bench.paired(runs)
    assert [p["variant"] for p in pairs] == ["new"] and pairs[0]["seeds"] == [0, 1] and pairs[0]["images"] == 400
    flipped = base[0][:10]
    assert pairs[0]["a_only"] == int((~flipped).sum()) and pairs[0]["b_only"] == int(flipped.sum())
    assert pairs[0]["diff_pts"] == pytest.approx(100 * (np.concatenate(other).mean() - np.concatenate(base).mean()))
    md = bench.markdown({"settings": {"command": "c", "commit": "x", "note": "", "machine": {}}, "runs": runs,
                         "paired": pairs})
    assert "| new | [0, 1] | 400 |" in md and "goal <= 1.5 met by 2 of 2" in md
