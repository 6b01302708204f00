"""gp-prune channel allocation (issue 19, issue 14): the knapsack, the global ranking, the width grid,
the groups as Torch-Pruning sees them, and the config fields."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from compress import compress
from compress.errors import ConfigError
from compress.strategies.gp_prune.allocation import (
    GroupInfo,
    analyse_groups,
    global_widths,
    solve_knapsack,
    width_grid,
)
from compress.strategies.gp_prune.strategy import GPPruneConfig, MagnitudeBaseline, resolve_allocation
from compress.strategies.gp_prune.search import LATENCY_MARGIN
from compress.testing import TinyResidualNet


def _brute_force(values, costs, limit):
    best, best_pick = -np.inf, None
    for pick in itertools.product(*[range(len(v)) for v in values]):
        c = sum(costs[g][i] for g, i in enumerate(pick))
        v = sum(values[g][i] for g, i in enumerate(pick))
        if c <= limit + 1e-9 and v > best:
            best, best_pick = v, pick
    return best, best_pick


def test_knapsack_picks_the_optimum_of_a_hand_built_three_group_table():
    # group widths 1..4 channels; value = importance kept; cost = ms (integers)
    values = [[5.0, 9.0, 12.0, 14.0], [3.0, 6.0, 8.0, 9.0], [6.0, 8.0, 9.5, 10.0]]
    costs = [[2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]]
    limit = 12.0
    # the cheapest choice costs 6, so 6 ms of room in 600 bins: every cost is on a bin
    pick = solve_knapsack(values, costs, limit, resolution=600)
    best, best_pick = _brute_force(values, costs, limit)
    assert tuple(pick) == best_pick == (1, 2, 2)  # 9 + 8 + 9.5 = 26.5 at 4 + 3 + 5 = 12 ms (next best: 26)
    assert sum(values[g][i] for g, i in enumerate(pick)) == best == 26.5
    # with bins that do not divide the costs, each cost is rounded up: never over the limit
    pick = solve_knapsack(values, costs, limit, resolution=4000)
    assert sum(costs[g][i] for g, i in enumerate(pick)) <= limit


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_never_exceeds_the_limit_and_is_optimal_on_grid_costs(seed):
    rng = np.random.default_rng(seed)
    groups = [int(rng.integers(2, 5)) for _ in range(4)]
    values = [np.sort(rng.uniform(0, 10, n)) for n in groups]
    costs = [np.sort(rng.integers(0, 20, n)).astype(float) for n in groups]
    base = sum(c.min() for c in costs)
    limit = base + float(rng.integers(0, 30))
    pick = solve_knapsack(values, costs, limit, resolution=int(limit - base) or 1)
    best, _ = _brute_force(values, costs, limit)
    assert sum(costs[g][i] for g, i in enumerate(pick)) <= limit
    assert sum(values[g][i] for g, i in enumerate(pick)) == pytest.approx(best)
    # off-grid costs: still within the limit
    noisy = [c + rng.uniform(0, 0.5, len(c)) for c in costs]
    pick = solve_knapsack(values, noisy, limit)
    assert sum(noisy[g][i] for g, i in enumerate(pick)) <= limit + 1e-9


def test_knapsack_returns_none_when_even_the_cheapest_choice_is_over():
    assert solve_knapsack([[1.0, 2.0]], [[5.0, 6.0]], 4.0) is None
    assert solve_knapsack([[1.0, 2.0]], [[5.0, 6.0]], 5.0) == [0]


def test_width_grid_is_aligned_bounded_and_ends_at_the_full_width():
    g = width_grid(512, 1, 103)
    assert g[-1] == 512 and g == sorted(g) and len(g) <= 17
    assert all(w % 32 == 0 for w in g) and min(g) >= 103
    g = width_grid(64, 1, 13)
    assert g == [16, 24, 32, 40, 48, 56, 64]  # step 8 from 64 channels; 13 rounded up to 16
    g = width_grid(48, 4, 12)  # grouped conv with 4 channel groups: multiples of 4
    assert all(w % 4 == 0 for w in g) and g[-1] == 48 and min(g) >= 12


def _group(name, channels, scores, min_width=1, unit=1):
    return GroupInfo(name, channels, unit, np.sort(np.asarray(scores, float))[::-1], min_width=min_width)


def test_global_widths_removes_the_lowest_scores_across_groups_and_respects_the_cap():
    a = _group("a", 4, [4.0, 3.0, 0.1, 0.2], min_width=1)
    b = _group("b", 4, [5.0, 5.0, 5.0, 0.3], min_width=3)
    # 3 of 8 channels: the three lowest are a's 0.1, a's 0.2, b's 0.3
    assert global_widths([a, b], 3 / 8) == {"a": 2, "b": 3}
    # 5 of 8: a can lose 3, b only 1 (its cap); the 5th removal does not fit anywhere
    assert global_widths([a, b], 5 / 8) == {"a": 1, "b": 3}
    assert global_widths([a, b], 0.0) == {"a": 4, "b": 4}


def test_analyse_groups_sees_torch_pruning_groups_without_the_classifier():
    torch.manual_seed(0)
    m = TinyResidualNet().eval()
    groups = analyse_groups(m, m.example_inputs(), MagnitudeBaseline(), ["head"], max_group_ratio=0.75)
    names = {g.name for g in groups}
    assert "head" not in names and groups
    for g in groups:
        assert g.min_width == int(np.ceil(g.channels * 0.25))
        assert (g.scores >= 0).all() and len(g.scores) == g.channels // g.unit
        assert list(g.scores) == sorted(g.scores, reverse=True)
    # the residual stream (stem, b1's last conv, b2's 1x1 and the depthwise conv) is one group
    stream = next(g for g in groups if "stem.0" in g.producers)
    assert {"b1.3", "b2.3"} <= set(stream.producers) and stream.depthwise == ["b2.0"]
    assert "head" in stream.consumers


@pytest.mark.parametrize("field,value", [("allocation", "knapsack"), ("allocation", 3), ("max_group_ratio", 1.0),
                                         ("max_group_ratio", 0.0), ("max_group_ratio", "0.5")])
def test_allocation_fields_are_validated(field, value):
    with pytest.raises(ConfigError, match=rf"GPPruneConfig\.prune: .*{field}"):
        GPPruneConfig(prune={field: value})


@pytest.mark.parametrize("allocation", ["latency", "global"])
def test_allocated_pruning_meets_the_budget_within_the_cap(allocation, digits_task):
    torch.manual_seed(0)
    teacher = TinyResidualNet()
    res = compress(teacher, "macs=0.6x", data=digits_task, progress=False, mobile=False, memory=False,
                   allow_slower=True, config={"finetune": {"epochs": 0}, "importance": {"metric": "l1"},
                                              "prune": {"bisection_steps": 5, "allocation": allocation,
                                                        "max_group_ratio": 0.7}})
    assert res.budget_check.ok
    rec = res.info["allocation"]
    assert rec["mode"] == allocation
    widths = res.info["layer_widths"]
    before = {n: (m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features)
              for n, m in teacher.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    for name, w in widths.items():
        assert w >= int(np.ceil(before[name] * 0.3)), name  # no layer loses more than 70%
    if allocation == "latency":
        assert rec["predicted_ms"] <= rec["limit_ms"] + 1e-9
        assert {g["group"] for g in rec["groups"]} and all(g["kept"] <= g["channels"] for g in rec["groups"])


def test_auto_allocation_is_latency_for_a_latency_budget_and_uniform_otherwise(digits_task):
    from compress.budgets import Budget

    assert resolve_allocation("auto", Budget.parse("latency=2ms")) == "latency"
    assert resolve_allocation("auto", Budget.parse("macs=0.5x,latency=0.8x")) == "latency"
    assert resolve_allocation("auto", Budget.parse("macs=0.5x")) == "uniform"
    assert resolve_allocation("global", Budget.parse("latency=2ms")) == "global"
    torch.manual_seed(0)
    res = compress(TinyResidualNet(), "macs=0.7x", data=digits_task, progress=False, mobile=False, memory=False,
                   allow_slower=True, config={"finetune": {"epochs": 0}, "importance": {"metric": "l1"},
                                              "prune": {"bisection_steps": 2}})
    assert res.info["allocation"]["mode"] == "uniform"


def _latency_by_onnx_size(calls: list):
    """Side-by-side timings with the ONNX file size as the latency (10 kB = 1 ms): deterministic, and
    ~params, so the narrowest allocation within a tight cap cannot reach a small latency share."""
    from pathlib import Path

    def timed(models, target, example_inputs=None, *, rounds=10, repeats=20, warmup=3, min_round_ms=0.0):
        calls.append(len(models))
        sizes = [Path(m).stat().st_size / 1e4 for m in models]
        return [{"median_ms": s, "min_ms": s, "rounds_ms": [s] * rounds} for s in sizes]
    return timed


def test_a_latency_budget_out_of_the_caps_reach_falls_back_until_it_is_met(digits_task, monkeypatch):
    # every group at 80% of its width keeps ~0.64 of the conv weights (in x out): 0.5x is out of reach of
    # max_group_ratio=0.2; the cap raised to max_ratio, or else uniform pruning, meets it (issue 19: a
    # latency budget uniform pruning can meet is met)
    calls: list = []
    monkeypatch.setattr("compress.measure.measure_interleaved", _latency_by_onnx_size(calls))
    torch.manual_seed(0)
    res = compress(TinyResidualNet(), "latency=0.5x", data=digits_task, progress=False, mobile=False, memory=False,
                   config={"finetune": {"epochs": 0}, "importance": {"metric": "l1"},
                           "prune": {"bisection_steps": 4, "allocation": "latency", "max_group_ratio": 0.2}})
    assert res.budget_check.ok
    fallback = res.info["allocation"]["fallback"]
    assert fallback["tried"][0]["max_group_ratio"] == 0.2 and "cannot meet" in fallback["tried"][0]["why"]
    widths = res.info["layer_widths"]
    assert any(w < 13 for n, w in widths.items() if n != "head")  # past the first cap (16 -> 13 at the least)


def test_an_allocation_out_of_the_caps_reach_raises_the_cap_to_max_ratio(digits_task, monkeypatch):
    from compress.errors import BudgetUnreachableError
    from compress.strategies.gp_prune.strategy import GPPrune

    original = GPPrune._prune_allocated

    def capped(self, ctx, cfg, importance, model, classifier_name, allocation):
        if cfg.prune.max_group_ratio < 0.9:
            raise BudgetUnreachableError(f"stub: {allocation} cannot meet it at cap {cfg.prune.max_group_ratio}")
        return original(self, ctx, cfg, importance, model, classifier_name, allocation)

    monkeypatch.setattr(GPPrune, "_prune_allocated", capped)
    torch.manual_seed(0)
    res = compress(TinyResidualNet(), "macs=0.5x", data=digits_task, progress=False, mobile=False, memory=False,
                   allow_slower=True, config={"finetune": {"epochs": 0}, "importance": {"metric": "l1"},
                                              "prune": {"bisection_steps": 3, "allocation": "global",
                                                        "max_group_ratio": 0.6}})
    assert res.budget_check.ok
    rec = res.info["allocation"]
    assert rec["mode"] == "global" and rec["max_group_ratio"] == 0.95
    assert rec["fallback"] == {"used": "max_group_ratio raised to max_ratio",
                               "tried": [{"allocation": "global", "max_group_ratio": 0.6,
                                          "why": "stub: global cannot meet it at cap 0.6"}]}


def test_an_allocation_that_cannot_meet_the_budget_falls_back_to_uniform(digits_task, monkeypatch):
    from compress.errors import BudgetUnreachableError
    from compress.strategies.gp_prune.strategy import GPPrune

    def never(self, ctx, cfg, importance, model, classifier_name, allocation):
        raise BudgetUnreachableError(f"stub: {allocation} at cap {cfg.prune.max_group_ratio}")

    monkeypatch.setattr(GPPrune, "_prune_allocated", never)
    torch.manual_seed(0)
    res = compress(TinyResidualNet(), "macs=0.5x", data=digits_task, progress=False, mobile=False, memory=False,
                   allow_slower=True, config={"finetune": {"epochs": 0}, "importance": {"metric": "l1"},
                                              "prune": {"bisection_steps": 3, "allocation": "global",
                                                        "max_group_ratio": 0.6}})
    assert res.budget_check.ok
    rec = res.info["allocation"]
    assert rec["mode"] == "uniform" and rec["requested"] == "global"
    assert [t["max_group_ratio"] for t in rec["fallback"]["tried"]] == [0.6, 0.95]


def test_monotone_charges_make_the_narrowest_width_the_one_cheapest_option():
    from compress.strategies.gp_prune.allocation import monotone_charges, solve_knapsack
    noisy = np.array([0.30, 0.31, 0.29, 0.50, 0.45])  # flat, noisy: width 3 timed faster than 1 and 2
    ms = monotone_charges(noisy)
    assert (np.diff(ms) > 0).all()
    assert np.allclose(ms, [0.29, 0.29, 0.29, 0.45, 0.45], atol=1e-8)
    values = [[1.0, 2.0, 3.0, 4.0, 5.0]] * 2
    # at the sum of minima the raw table would keep width index 2; the monotone one keeps the narrowest
    assert solve_knapsack(values, [noisy] * 2, 2 * 0.29) == [2, 2]
    assert solve_knapsack(values, [ms] * 2, float(2 * ms[0])) == [0, 0]


@pytest.mark.parametrize("uniform_ms, choice", [(0.5, "uniform"), (1 - LATENCY_MARGIN / 2, "latency"), (1.2, "latency")])
def test_the_latency_guard_keeps_the_knapsack_unless_uniform_is_measured_faster(digits_task, monkeypatch,
                                                                                uniform_ms, choice):
    # a MACs budget with allocation="latency": the uniform student is timed side by side with the knapsack's
    # (files a.onnx = uniform, b.onnx = knapsack; fixed figures, no clock); only a clear win (past
    # LATENCY_MARGIN: half of it is inside) replaces the knapsack's answer
    from pathlib import Path

    seen = []

    def timed(models, target, example_inputs=None, *, rounds=10, repeats=20, warmup=3, min_round_ms=0.0):
        names = [Path(m).name for m in models]
        seen.append(names)
        ms = {"a.onnx": uniform_ms, "b.onnx": 1.0, "teacher.onnx": 2.0, "student.onnx": 1.0}
        return [{"median_ms": ms[n], "min_ms": ms[n], "rounds_ms": [ms[n]] * rounds} for n in names]

    monkeypatch.setattr("compress.measure.measure_interleaved", timed)
    torch.manual_seed(0)
    cfg = {"finetune": {"epochs": 0}, "importance": {"metric": "l1"},
           "prune": {"bisection_steps": 3, "allocation": "latency"}}
    res = compress(TinyResidualNet(), "macs=0.5x", data=digits_task, progress=False, mobile=False, memory=False,
                   config=cfg)
    assert ["a.onnx", "b.onnx"] in seen
    rec = res.info["allocation"]
    assert rec["guard"]["choice"] == choice and rec["guard"]["uniform_over_latency"] == pytest.approx(uniform_ms)
    assert rec["mode"] == choice and res.budget_check.ok
    if choice == "uniform":
        assert rec["requested"] == "latency" and "predicted_ms" in rec["latency_record"]
    seen.clear()
    off = compress(TinyResidualNet(), "macs=0.5x", data=digits_task, progress=False, mobile=False, memory=False,
                   config={**cfg, "prune": {**cfg["prune"], "latency_guard": False}})
    assert ["a.onnx", "b.onnx"] not in seen and off.info["allocation"]["mode"] == "latency"
    assert "guard" not in off.info["allocation"]


def test_the_latency_guard_enters_the_pruning_key_only_where_it_acts():
    from compress.budgets import Budget
    from compress.strategies.gp_prune.config import GPPruneConfig, key_config

    macs, lat = Budget.parse("macs=0.5x"), Budget.parse("latency=0.5x")
    assert "latency_guard" in key_config(GPPruneConfig(prune={"allocation": "latency"}), macs)
    for cfg, budget in [(GPPruneConfig(), macs), (GPPruneConfig(prune={"allocation": "latency"}), lat),
                        (GPPruneConfig(prune={"allocation": "global"}), macs), (GPPruneConfig(), lat)]:
        assert "latency_guard" not in key_config(cfg, budget)  # keys of runs it cannot change stay as they were
