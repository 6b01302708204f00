"""``bench_nas_random.py --smoke`` end to end for eg-nas (issue 18's random-search benchmark on a tiny
configuration): the strategy row alone (``--rows``: no report yet), then ``--resume``: K = 2 random
genotypes through eg-nas' own final phase, KD ResNet-20, the stock ResNet-20, the side-by-side
timing, the paired tests; then ``--resume`` of the finished run (nothing retrained) and
``--report-only``.

Never part of ``make test`` (``bench`` marker; ``testpaths`` is ``tests``). Needs ``../shared/data``
(skipped without it). About 3 minutes on one shared core::

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:xdist -m bench \
        benchmarks/test_bench_nas_random.py
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.bench

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
K = 2


def _bench():
    sys.path.insert(0, str(HERE))
    import bench_nas_random

    return bench_nas_random


def test_mean_random_test_is_the_paired_mean_difference():
    bench = _bench()
    rng = np.random.default_rng(0)
    s = rng.random(400) < 0.6
    rs = [rng.random(400) < 0.5 for _ in range(3)]
    out = bench.mean_random_test(s, rs, n=2000)
    assert out["acc_strategy"] == pytest.approx(s.mean())
    assert out["acc_random_mean"] == pytest.approx(np.mean([r.mean() for r in rs]))
    assert out["diff_pts"] == pytest.approx(100 * (s.mean() - np.mean([r.mean() for r in rs])))
    assert out["ci95_low"] <= out["diff_pts"] <= out["ci95_high"] and 0 < out["p_value"] <= 1
    same = bench.mean_random_test(rs[0], [rs[0], rs[0]], n=500)  # identical rows: no difference, p = 1
    assert same["diff_pts"] == 0 and same["p_value"] == 1.0


def test_gal_goal_lines_are_computed_from_the_row():
    """Issue 18 goal 2: params within 10% of the budget, a node removed in at least half the cells."""
    bench = _bench()
    probes = [{"probe": 0, "lambda": 1.0, "params": 300, "ratio": 1.2, "nodes_removed": 0, "ok": False}]
    row = {"gal": {"lambda": 2.0}, "nodes_removed": 3, "nodes_total": 16, "params": 95,
           "nodes_removed_per_cell": [2, 0, 1, 0], "lambda_search": {"probes": probes}}
    md = "\n".join(bench._gal_markdown({"strategy": row}, ["strategy"], "params=100"))
    assert "2 of 4 cells lose at least one node (goal >= half: met)" in md
    assert "params 95 = 95.0% of the budget (goal within 10%: met)" in md and "| 0 | 1 | 300 | 1.200 | 0 | no |" in md
    row.update(params=85, nodes_removed_per_cell=[1, 0, 0, 0])
    md = "\n".join(bench._gal_markdown({"strategy": row}, ["strategy"], "params=100"))
    assert "(goal >= half: not met)" in md and "(goal within 10%: not met)" in md
    assert bench._gal_facts({"gal": {"lambda_search": {"probes": probes}},
                             "nodes_kept": [{"masks": [0, 1, 1, 0], "kept": [1, 2]}]}) == {
        "lambda_search": {"probes": probes}, "nodes_removed_per_cell": [2]}


@pytest.mark.timeout(1800)
@pytest.mark.skipif(not (DATA / "cifar10_train10k_lossless.npz").is_file(), reason="needs ../shared/data")
def test_bench_nas_random_smoke_end_to_end(tmp_path, capsys):
    from compress.registry import list_strategies

    bench = _bench()
    out, work = tmp_path / "results", tmp_path / "work"
    argv = ["--strategy", "eg-nas", "--smoke", "--k", str(K), "--data", str(DATA), "--out", str(out),
            "--work", str(work)]
    # one process's share (--rows): its rows are saved, the report waits for the others
    assert bench.main([*argv, "--rows", "strategy"]) == 0
    assert not (out / "nas_random_eg_nas_smoke.json").exists()
    assert "are not done yet" in capsys.readouterr().out
    assert list(json.loads((out / "nas_random_eg_nas_smoke.partial.json").read_text())["rows"]) == ["strategy"]
    assert bench.main([*argv, "--resume"]) == 0  # the rest, then the report
    assert "strategy: done before, skipped" in capsys.readouterr().out
    assert bench.FIXED_NAME not in list_strategies()  # the benchmark-only strategy is registered only while it runs
    stem = "nas_random_eg_nas_smoke"
    payload = json.loads((out / f"{stem}.json").read_text())
    assert payload["complete"] and payload["strategy"] == "eg-nas"
    rows = payload["rows"]
    randoms = [f"random-{k}" for k in range(1, K + 1)]
    assert list(rows) == ["strategy", *randoms, "kd-resnet20"]
    n_test = payload["settings"]["test_images"]
    for name, r in rows.items():
        assert 0 <= r["test_acc"] <= 1 and r["params"] > 0 and r["macs"] > 0, name
        assert len(r["correct"]) == n_test and r["test_acc"] == pytest.approx(np.mean(r["correct"])), name
    budget = int(payload["settings"]["budget"].split("=")[1])
    for name in ["strategy", *randoms]:
        assert rows[name]["params"] <= budget and rows[name]["budget_ok"], name
    # each random row is its own genotype, and the genotype is the only difference: same seed and config
    genos = [json.dumps(rows[n]["genotype"], sort_keys=True) for n in ["strategy", *randoms]]
    assert len(set(genos)) == len(genos)
    assert rows["kd-resnet20"]["params"] == payload["frontier"][0]["params"]  # the ResNet-20 architecture
    assert rows["kd-resnet20"]["train_epochs"] == payload["settings"]["config"]["final_epochs"]

    # the table: every row, the random mean equal to the mean of the random rows, the best the argmax
    table = {t["model"]: t for t in payload["table"]}
    assert set(table) == set(rows)
    s = payload["summary"]
    mean = s["random_mean"]
    assert mean["n"] == K
    for key in ("test_acc", "params", "macs", "ort_latency_ms"):
        assert mean[key] == pytest.approx(np.mean([table[n][key] for n in randoms])), key
    best = max(randoms, key=lambda n: rows[n]["test_acc"])
    assert s["random_best"]["test_acc"] == rows[best]["test_acc"]
    timing = payload["timing"]
    assert timing["names"] == [*rows, *(f["model"] for f in payload["frontier"])]
    assert all(v > 0 for v in timing["median_ms"])

    # the paired tests agree with the rows
    cs = np.asarray(rows["strategy"]["correct"], dtype=bool)
    cb = np.asarray(rows[s["random_best"]["of"]]["correct"], dtype=bool)
    vb = s["vs_best"]
    assert vb["a_only"] == int(np.sum(cs & ~cb)) and vb["b_only"] == int(np.sum(~cs & cb))
    assert vb["diff_pts"] == pytest.approx(100 * (cs.mean() - cb.mean()))
    vm = s["vs_mean"]
    assert vm["acc_strategy"] == pytest.approx(rows["strategy"]["test_acc"])
    assert vm["acc_random_mean"] == pytest.approx(mean["test_acc"])
    assert vm["diff_pts"] == pytest.approx(100 * (rows["strategy"]["test_acc"] - mean["test_acc"]))
    assert vm["ci95_low"] <= vm["diff_pts"] <= vm["ci95_high"] and 0 < vm["p_value"] <= 1
    ent = s["alpha_entropy"]
    assert ent["uniform"] == pytest.approx(math.log(7)) and ent["final"] == ent["per_epoch"][-1]
    assert 0 < ent["final"] <= ent["uniform"] + 1e-9

    md = (out / f"{stem}.md").read_text()
    assert "**Beats the mean of random search: " in md and "**Beats the best random: " in md
    assert "random mean" in md and "resnet20 (pretrained)" in md and "kd-resnet20" in md and "Provenance" in md
    assert f"{100 * mean['test_acc']:.2f}%" in md

    # a second session on the finished run: refused without --resume; nothing retrained; report only
    capsys.readouterr()
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert bench.main([*argv, "--resume"]) == 0
    again = json.loads((out / f"{stem}.json").read_text())
    assert again["rows"] == rows and again["timing"] == timing
    printed = capsys.readouterr().out
    assert all(f"{n}: done before, skipped" in printed for n in rows)
    assert bench.main([*argv, "--report-only"]) == 0
    assert json.loads((out / f"{stem}.json").read_text())["summary"] == s
    final = json.loads((out / f"{stem}.partial.json").read_text())
    assert len(final["invocations"]) == 4  # --rows, resume, resume, report-only (the refused call records nothing)
    assert final["running"] == {}


def test_reuse_random_from_accepts_only_a_run_that_differs_in_search_fields(tmp_path):
    """``--reuse-random-from``: darts-gal's random rows skip the search, so a run whose config differs
    only in search fields may lend them; any other difference refuses, as eg-nas always does."""
    bench = _bench()
    cfg = {"search": {"epochs": 3, "arch_batch_size": 256}, "baseline": {"epochs": 3}}
    settings = {"strategy": "darts-gal", "budget": "params=100", "k": 2, "config": cfg}
    other = {**settings, "config": {"search": {"epochs": 3}, "baseline": {"epochs": 3}}}
    rows = {"random-1": {"test_acc": 0.4, "commit": "abc"}, "random-2": {"test_acc": 0.3, "commit": "abc"},
            "strategy": {"test_acc": 0.5}}
    path = tmp_path / "p.partial.json"
    path.write_text(json.dumps({"settings": other, "rows": rows}))
    got = bench.reusable_random_rows(path, settings, 2)
    assert sorted(got) == ["random-1", "random-2"]
    assert got["random-1"]["test_acc"] == 0.4 and got["random-1"]["reused_from"] == {"path": str(path), "commit": "abc"}
    for changed, why in ((dict(other, config={"search": {"epochs": 3}, "baseline": {"epochs": 4}}), "outside the search"),
                         (dict(other, budget="params=200"), "other settings (budget)")):
        path.write_text(json.dumps({"settings": changed, "rows": rows}))
        with pytest.raises(SystemExit, match=re.escape(why)):
            bench.reusable_random_rows(path, settings, 2)
    path.write_text(json.dumps({"settings": other, "rows": rows}))
    with pytest.raises(SystemExit, match="no rows random-3"):
        bench.reusable_random_rows(path, settings, 3)
    with pytest.raises(SystemExit, match="only darts-gal"):
        bench.reusable_random_rows(path, {**settings, "strategy": "eg-nas"}, 2)
    path.write_text("{")
    with pytest.raises(SystemExit, match="not a bench_nas_random partial file"):
        bench.reusable_random_rows(path, settings, 2)


def test_two_processes_sharing_one_partial_file_keep_each_others_rows(tmp_path):
    """``--rows`` on two cores share one ``--out``: each save merges under a lock, so neither process
    erases the other's rows or claims; a finished row drops its claim; a dead process's claim does
    not block the row."""
    bench = _bench()
    path = tmp_path / "nas_random_darts_gal.partial.json"
    a = bench.Partial(path, {"settings": {"k": 2}, "rows": {}, "invocations": [{"command": "a"}]})
    a.save()
    b = bench.Partial(path, json.loads(path.read_text()))
    b.data["invocations"].append({"command": "b"})
    assert a.claim("strategy") and b.claim("random-1")
    assert not b.claim("strategy")  # a holds it, and a is alive
    a.refresh()
    assert set(a.data["running"]) == {"strategy", "random-1"}
    assert a.claimed_by_other("random-1")["pid"] == b.data["running"]["random-1"]["pid"]  # same pid here: this test
    assert a.claimed_by_other("strategy") is None  # its own claim
    b.finish("random-1", {"test_acc": 0.4})
    a.finish("strategy", {"test_acc": 0.5})
    disk = json.loads(path.read_text())
    assert disk["rows"] == {"strategy": {"test_acc": 0.5}, "random-1": {"test_acc": 0.4}}
    assert disk["running"] == {}
    assert not a.claim("random-1")  # done
    assert [i["command"] for i in disk["invocations"]] == ["a", "b"]
    # a claim left by a killed process (no such pid) does not count
    c = bench.Partial(path, json.loads(path.read_text()))
    c.data["running"]["random-2"] = {"pid": 2 ** 22 + 12345, "host": bench._host(), "since": "x"}
    assert c.claimed_by_other("random-2") is None
    on_disk = json.loads(path.read_text())
    on_disk["running"] = {"random-2": {"pid": 2 ** 22 + 12345, "host": bench._host(), "since": "x"},
                          "kd-resnet20": {"pid": 1, "host": "another-host", "since": "x"}}
    path.write_text(json.dumps(on_disk))
    c.refresh()
    # a dead process's claim is dropped; one from another host is kept (unknown) but does not block
    assert json.loads(path.read_text())["running"] == {"kd-resnet20": on_disk["running"]["kd-resnet20"]}
    assert c.claimed_by_other("kd-resnet20") is None
    path.write_text("{")
    with pytest.raises(SystemExit, match="not valid JSON"):
        c.save()
