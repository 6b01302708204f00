"""gp-prune pieces: metric resolution, channel rounding candidates and plans, TreeImportance."""

from __future__ import annotations

import json

import pytest
import torch
import torch_pruning as tp
from torch import nn

from compress.strategies._parts.channel_rounding import candidate_widths, plan_fixed_widths
from compress.strategies.gp_prune.importance import TreeImportance
from compress.strategies.gp_prune.metrics import MetricError, get_metric
from compress.strategies.gp_prune.strategy import MagnitudeBaseline, prune_uniform, resolve_metric
from compress.testing import TinyConvNet, TinyResidualNet


def test_resolve_metric_by_name_tree_and_json(tmp_path):
    assert resolve_metric("xi_star").name == "xi_star"
    assert resolve_metric("sum_g(abs(WI))").expr == "sum_g(abs(WI))"
    p = tmp_path / "best_metric.json"
    p.write_text(json.dumps(get_metric("l2").to_dict()))
    assert resolve_metric(str(p)).expr == get_metric("l2").expr
    with pytest.raises(MetricError, match="cannot read"):
        resolve_metric(str(tmp_path / "missing.json"))


def test_candidate_widths():
    # k and the nearest multiples of 4/8/16/32 below and above it, inside +-20% of k
    assert candidate_widths(45, 64, 0.2) == [40, 44, 45, 48]
    assert candidate_widths(409, 512, 0.2) == [384, 400, 408, 409, 412, 416]
    assert candidate_widths(3, 16, 0.2) == [3, 4]
    assert max(candidate_widths(60, 62, 0.2)) <= 62


def test_fixed_plan_rounds_up_to_the_multiple():
    m = TinyConvNet().eval()
    x = m.example_inputs()
    plan = plan_fixed_widths(m, x, 0.3, [m.fc], 8)
    assert sorted(plan.values()) == [16, 24, 48]  # floor(16*.7)=11->16, floor(32*.7)=22->24, floor(64*.7)=44->48
    pruned = prune_uniform(m, 0.3, MagnitudeBaseline(), x, "fc",
                           width_planner=lambda c, r, ign: plan_fixed_widths(c, x, r, ign, 8))
    widths = [mod.out_channels for mod in pruned.modules() if isinstance(mod, nn.Conv2d)]
    assert widths == [16, 24, 48]
    assert pruned(x).shape == (2, 10)


def test_tree_importance_equals_metric_on_the_layer():
    torch.manual_seed(0)
    m = TinyResidualNet().eval()
    x = m.example_inputs()
    imp = TreeImportance(get_metric("l1"), m).bind(m)
    dg = tp.DependencyGraph().build_dependency(m, x)
    group = dg.get_pruning_group(m.b1[0], tp.prune_conv_out_channels, idxs=list(range(16)))
    scores = imp(group)
    l1 = m.b1[0].weight.detach().abs().sum(dim=(1, 2, 3)).double()
    torch.testing.assert_close(scores.double(), (l1 / l1.abs().mean()).double(), rtol=1e-5, atol=1e-6)


def test_lowest_scored_channels_are_removed():
    torch.manual_seed(0)
    m = TinyConvNet().eval()
    x = m.example_inputs()
    with torch.no_grad():
        m.features[0].weight[[2, 5, 7]] *= 1e-3  # make three stem filters clearly the least important
    imp = TreeImportance(get_metric("l1"), m)
    pruned = prune_uniform(m, 3 / 16 - 1e-6, imp, x, "fc")  # keeps int(16 * 0.8125) = 13
    kept = pruned.features[0].weight.detach()
    assert kept.shape[0] == 13
    orig = m.features[0].weight.detach()
    removed = [i for i in range(16) if not any(torch.equal(orig[i], k) for k in kept)]
    assert removed == [2, 5, 7]


def test_measured_plan_picks_a_candidate_width_and_caches_the_table(tmp_path):
    from compress.profiling import Target
    from compress.profiling.latency_model import LayerLatencyTable
    from compress.strategies._parts.channel_rounding import plan_widths

    m = TinyResidualNet().eval()
    x = m.example_inputs()
    table = LayerLatencyTable(Target.preset("cpu-1t", input_shape=(3, 32, 32)), cache_dir=tmp_path, repeats=5, warmup=1)
    plan, records = plan_widths(m, x, 0.3, [m.head], table)
    assert len(plan) == len(records) == 2
    for rec in records:
        assert rec["chosen"] in candidate_widths(rec["nominal"], rec["channels"], 0.2)
        assert rec["chosen_ms"] > 0 and rec["nominal_ms"] > 0
    assert table.path.is_file() and table.measured > 0
    again = LayerLatencyTable(Target.preset("cpu-1t"), cache_dir=tmp_path)
    assert set(again.entries) == set(table.entries)  # reloaded from disk, nothing re-measured
    assert again.layer_rounds == table.layer_rounds  # with the per-round figures behind each entry
    for rec in records:  # every decision is explained: widths considered, their timings, gain, noise
        assert {"decision", "threshold", "candidates"} <= set(rec)
        assert {c["width"] for c in rec["candidates"]} == set(candidate_widths(rec["nominal"], rec["channels"], 0.2))


def test_rounding_decision_needs_a_gain_above_the_bar_and_the_noise():
    from compress.strategies._parts.channel_rounding import MIN_GAIN, _decide

    n = 15
    k = 50  # nominal: 1.0 ms for 50 channels, 0.02 ms per channel
    flat = lambda ms: [[ms] * n]  # noqa: E731  (one layer, the same figure every round)
    rounds_of = {
        k: flat(1.0),
        48: flat(0.85),   # 0.0177 ms/ch: 11.5% cheaper per channel, below the 20% bar
        56: flat(0.8),    # 0.0143 ms/ch: 28.6% cheaper, 8-aligned
        64: flat(1.0),    # 0.0156 ms/ch: 21.9% cheaper, 32-aligned
        40: [[0.1 + 0.9 * i / (n - 1) for i in range(n)]],  # a 31% median cut, but a noise of 3 x 15% above it
    }
    assert MIN_GAIN == 0.2
    best, rec = _decide(k, rounds_of, min_gain=0.2, noise_z=3.0)
    rows = {c["width"]: c for c in rec["candidates"]}
    assert [w for w, c in rows.items() if c["accepted"]] == [56, 64]
    assert rows[48]["gain"] == pytest.approx(1 - (0.85 / 48) / (1.0 / 50)) and not rows[48]["accepted"]
    assert rows[40]["gain"] > 0.3 and 3 * rows[40]["noise"] > rows[40]["gain"] and not rows[40]["accepted"]
    assert best == 64 and rec["chosen"] == 64 and rec["nominal"] == k  # the most aligned of the accepted
    assert rec["threshold"] == pytest.approx(0.2) and "64" in rec["decision"]
    # a loaded machine: every round of the sweep slowed by its own factor, all widths alike
    load = [1.0 + 0.7 * ((i * 7) % 5) for i in range(n)]
    loaded = {w: [[ms * f for ms, f in zip(layers[0], load)]] for w, layers in rounds_of.items()}
    best_loaded, rec_loaded = _decide(k, loaded, min_gain=0.2, noise_z=3.0)
    assert best_loaded == best
    assert [c["gain"] for c in rec_loaded["candidates"]] == pytest.approx([c["gain"] for c in rec["candidates"]])
    # nothing clears the bar: the nominal width stays
    best, rec = _decide(k, {k: flat(1.0), 48: flat(0.85)}, min_gain=0.2, noise_z=3.0)
    assert best == k and rec["threshold"] is None and rec["decision"].startswith("nominal")
    # nominal layers timed at zero (below the timer): nothing to compare against
    best, rec = _decide(k, {k: flat(0.0), 64: flat(0.5)}, min_gain=0.2, noise_z=3.0)
    assert best == k and "below the timer" in rec["decision"]


def test_layer_rounds_are_measured_interleaved_and_persisted(tmp_path):
    from compress.profiling import Target
    from compress.profiling.latency_model import ConvConfig, LayerLatencyTable

    target = Target.preset("cpu-1t", input_shape=(3, 32, 32))
    table = LayerLatencyTable(target, cache_dir=tmp_path, repeats=3, warmup=1, rounds=4)
    cfgs = [ConvConfig(8, w, 3, 1, 1, 1, 16, 16) for w in (8, 12)]
    table.measure_layers(cfgs)
    for cfg in cfgs:
        r = table.latency_rounds(cfg)
        assert len(r) == 4 and all(v >= 0 for v in r)
        assert table.latency(cfg) == pytest.approx(float(sorted(r)[1] + sorted(r)[2]) / 2)  # median of 4
    assert table.measured == 2
    table.measure_layers(cfgs)  # already measured: nothing timed again
    assert table.measured == 2 and table.save() == table.path
    again = LayerLatencyTable(target, cache_dir=tmp_path)
    assert again.layer_rounds == table.layer_rounds and again.entries == table.entries
    with pytest.raises(Exception, match="rounds and repeats"):
        LayerLatencyTable(target, cache_dir=tmp_path, rounds=0)
