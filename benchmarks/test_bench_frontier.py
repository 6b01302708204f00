"""``bench_frontier.py --smoke`` end to end (issue 14's benchmark on a tiny configuration): every row,
both budgets, the side-by-side timing, the goals, the paired tests and the PNGs; then ``--resume`` of
the finished run (nothing retrained) and ``--report-only``.

Never part of ``make test`` (``bench`` marker; ``testpaths`` is ``tests``). Needs ``../shared/data``
(skipped without it). About 16 minutes on a shared core (most of it ONNX exports and side-by-side timing)::

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/pytest benchmarks/test_bench_frontier.py -m bench -p no:xdist -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from compress.pareto import frontier_accuracy

pytestmark = pytest.mark.bench

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bench():
    sys.path.insert(0, str(HERE))
    import bench_frontier

    return bench_frontier


def _recipe(bench) -> dict:
    """The default recipe, less the fields gp-prune does not have at this commit (they land with issue 14)."""
    from compress.strategies.config_tree import legacy_names
    from compress.strategies.gp_prune.strategy import GPPruneConfig

    fields = set(legacy_names(GPPruneConfig))
    return {k: v for k, v in bench.DEFAULT_RECIPE.items() if k in fields}


@pytest.mark.timeout(3600)
@pytest.mark.skipif(not (DATA / "cifar10_train50k_lossless.npz").is_file(), reason="needs ../shared/data")
def test_bench_frontier_smoke_end_to_end(tmp_path, capsys):
    bench = _bench()
    out, work = tmp_path / "results", tmp_path / "work"
    argv = ["--smoke", "--data", str(DATA), "--out", str(out), "--work", str(work),
            "--recipe", json.dumps(_recipe(bench))]
    assert bench.main(argv) == 0
    first = capsys.readouterr().out
    stem = "frontier_resnet56_smoke"
    payload = json.loads((out / f"{stem}.json").read_text())
    budgets = payload["settings"]["budgets"]
    assert len(budgets) == 2 and budgets[1] == "macs=40931968"  # macs=resnet20: the stock model's exact count
    assert payload["val_per_class"] == [10] * 10 and payload["train_images"] == 512 and payload["test_images"] == 200
    assert payload["scratch_depth"] == {budgets[0]: 26, budgets[1]: 20}
    rows = payload["rows"]
    expected_rows = {f"{bench.slug(b)}/{r}" for b in budgets for r in "abcd"
                     if r != "c" or payload["configs"]["c"] is not None}
    assert set(rows) == expected_rows
    assert payload["timing"]["names"] == [*rows, *(f"stock/resnet{d}" for d in (20, 32, 44, 56))]
    for key, r in rows.items():
        assert 0 <= r["test_acc"] <= 1 and r["macs"] > 0 and r["latency_ms"] > 0 and r["wall_s"] > 0, key
        assert len(r["correct"]) == 200 and r["commits"] and not r["resumed"]
    for b in budgets:
        a = rows[f"{bench.slug(b)}/a"]
        assert a["history"] and all(h["phase"] in ("sparse", "recover", "finetune") for h in a["history"])
        assert a["pareto_in_report"]["frontier_accuracy"] > 0.8  # compress() placed it on the stock frontier
        assert (out / f"{stem}_pareto_{bench.slug(b)}.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / f"{stem}_curve.png").read_bytes()[:8] == PNG_MAGIC
    goals = {g["budget"]: g for g in payload["goals"]}
    shelf = [{"name": s["name"], "accuracy": s["test_acc"], "macs": s["macs"], "latency_ms": s["latency_ms"]}
             for s in payload["stock"].values()]
    half = payload["stock"]["resnet56"]["macs"] / 2
    assert goals[budgets[0]]["budget_macs"] == pytest.approx(half)
    assert goals[budgets[0]]["goal_acc"] == pytest.approx(frontier_accuracy(shelf, half))  # computed, not typed in
    assert goals[budgets[1]]["goal_acc"] == pytest.approx(payload["stock"]["resnet20"]["test_acc"])
    assert {p["b"] for p in payload["paired"] if p["budget"] == budgets[0]} >= {f"resnet{d} (stock)" for d in (20, 56)}
    md = (out / f"{stem}.md").read_text()
    assert "## Goals" in md and ("**met**" in md or "**missed** by" in md) and "McNemar" in md
    assert not (out / f"{stem}.partial.json").exists()
    assert "| (a) gp-prune, recipe |" in first

    # a second session on the finished run: nothing retrained, the same timing reused
    with pytest.raises(SystemExit):  # refused without --resume
        bench.main(argv)
    assert bench.main([*argv, "--resume"]) == 0
    again = json.loads((out / f"{stem}.json").read_text())
    assert again["rows"].keys() == rows.keys() and again["timing"] == payload["timing"]
    assert bench.main([*argv, "--report-only"]) == 0


def test_two_processes_share_one_work_folder(tmp_path):
    """State.save merges: each process writes the rows it ran over what the other wrote, and the
    stored budgets and rows become the union (no data needed)."""
    bench = _bench()
    a, b = bench.State(tmp_path), bench.State(tmp_path)
    a.data = {"settings": {"budgets": ["macs=0.5x"], "rows": ["a"]}}
    b.data = {"settings": {"budgets": ["macs=1"], "rows": ["b"]}}
    a.owned.add("x/a")
    b.owned.add("y/b")
    a.data.setdefault("running", {})["x/a"] = {"sessions": [1]}
    a.save()
    b.data.setdefault("running", {})["y/b"] = {"sessions": [2]}
    b.data.setdefault("failed", {})["y/b"] = "boom"
    b.save()  # b never saw x/a: it must not erase it
    a.data.setdefault("rows", {})["x/a"] = {"test_acc": 0.9}
    a.save()
    b.data["rows"] = {"y/b": {"test_acc": 0.8}}
    b.data["failed"].pop("y/b")
    b.save()
    disk = bench.State(tmp_path).data
    assert disk["rows"] == {"x/a": {"test_acc": 0.9}, "y/b": {"test_acc": 0.8}}
    assert set(disk["running"]) == {"x/a", "y/b"} and disk["failed"] == {}
    assert disk["settings"]["budgets"] == ["macs=0.5x", "macs=1"] and disk["settings"]["rows"] == ["a", "b"]


def test_adopt_report_takes_rows_with_their_own_timing(tmp_path):
    """--adopt: an earlier report's rows enter a fresh work folder with the latency and the stock
    times of the run that timed them; other settings and files that are not reports are refused."""
    bench = _bench()
    settings = {"budgets": ["macs=40931968"], "rows": ["c"], "epochs": 6, "recipe": {"metric": "xi_star"},
                "smoke": False, "seed": 0, "scratch_lr": 0.1, "data": "/d", "variants": {}}
    row = {"budget": "macs=0.5x", "test_acc": 0.9, "macs": 10, "params": 5, "correct": [True, False],
           "sessions": [{"commit": "abc", "seconds": 3.0}], "wall_s": 3.0, "student_dir": "/gone/a"}
    doc = {"benchmark": "frontier", "settings": {**settings, "budgets": ["macs=0.5x"], "rows": ["a"]},
           "rows": {"macs_0.5x/a": {**row, "row": "a", "config": {"metric": "xi_star", "epochs": 6}},
                    "macs_0.5x/a+drop0.5": {**row, "row": "a+drop0.5",
                                            "config": {"metric": "xi_star", "epochs": 6, "drop_blocks": 0.5}}},
           "timing": {"names": ["macs_0.5x/a", "macs_0.5x/a+drop0.5", "stock/resnet20"],
                      "median_ms": [2.0, 1.5, 0.9], "commit": "def", "rounds": 10, "repeats": 30}}
    report = tmp_path / "report.json"
    report.write_text(json.dumps(doc))
    state = bench.State(tmp_path / "work")
    state.data["settings"] = json.loads(json.dumps(settings))
    assert bench.adopt_report(state, report, settings) == ["macs_0.5x/a", "macs_0.5x/a+drop0.5"]
    disk = bench.State(tmp_path / "work").data
    a = disk["rows"]["macs_0.5x/a"]
    assert a["adopted"] and a["latency_ms"] == 2.0 and a["correct"] == [True, False]
    assert a["timing_ref"]["stock_ms"] == {"resnet20": 0.9} and a["timing_ref"]["commit"] == "def"
    assert disk["settings"]["variants"] == {"drop0.5": {"drop_blocks": 0.5}}
    assert disk["settings"]["budgets"] == ["macs=40931968", "macs=0.5x"] and "a" in disk["settings"]["rows"]
    assert not bench.student_exists(a, tmp_path / "work")  # the report then keeps its stored latency
    assert bench.adopt_report(state, report, settings) == []  # rows the state has are kept
    with pytest.raises(ValueError, match="other settings"):
        bench.adopt_report(bench.State(tmp_path / "w2"), report, {**settings, "seed": 1})
    # a report of reports: a row timed in run "def" and adopted again keeps run "def", beside a row of run "ghi"
    later = {**doc, "rows": {"macs_0.5x/a": {**a, "timed_apart": True},
                             "macs_0.5x/c": {**row, "row": "c", "config": {}}},
             "timing": {"names": ["macs_0.5x/c", "stock/resnet20"], "median_ms": [1.7, 0.8], "commit": "ghi"}}
    report.write_text(json.dumps(later))
    again = bench.State(tmp_path / "w3")
    again.data["settings"] = json.loads(json.dumps(settings))
    assert bench.adopt_report(again, report, settings) == ["macs_0.5x/a", "macs_0.5x/c"]
    rows = bench.State(tmp_path / "w3").data["rows"]
    assert rows["macs_0.5x/a"]["latency_ms"] == 2.0 and rows["macs_0.5x/a"]["timing_ref"]["commit"] == "def"
    assert rows["macs_0.5x/c"]["latency_ms"] == 1.7 and rows["macs_0.5x/c"]["timing_ref"]["stock_ms"] == {"resnet20": 0.8}
    for r in rows.values():
        r["timed_apart"] = True
    assert [t["commit"] for t in bench.adopted_timings(rows)] == ["def", "ghi"]
    untimed = {**later, "rows": {"macs_0.5x/b": {**row, "row": "b", "config": {}}}}
    report.write_text(json.dumps(untimed))
    with pytest.raises(ValueError, match="no latency"):
        bench.adopt_report(bench.State(tmp_path / "w4"), report, settings)
    report.write_text(json.dumps({"benchmark": "frontier", "rows": {}}))
    with pytest.raises(ValueError, match="not a report"):
        bench.adopt_report(state, report, settings)
    report.write_text("{")
    with pytest.raises(ValueError, match="cannot read"):
        bench.adopt_report(state, report, settings)


def test_row_c_splits_a_total_of_at_least_two_epochs_and_is_skipped_below():
    bench = _bench()
    recipe = _recipe(bench)
    configs, _ = bench.row_configs(recipe, 8, smoke=False)
    c = configs["c"]
    assert c["sparse_epochs"] + c["epochs"] == bench.total_epochs(configs["a"]) == 8
    configs, notes = bench.row_configs(recipe, 1, smoke=False)
    assert configs["c"] is None and any("too few" in n for n in notes)
    it = bench.ITERATIVE_RECIPE
    iterative = bench.row_configs(it, 6, smoke=False)[0]  # the published row (a): recovery + 6 fine-tune epochs
    assert bench.total_epochs(iterative["a"]) == (it["iterative_steps"] - 1) * it["recovery_epochs"] + 6
