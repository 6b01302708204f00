"""gp-prune pieces: metric resolution, channel rounding candidates and plans, TreeImportance."""

from __future__ import annotations

import json

import pytest
import torch
import torch_pruning as tp
from torch import nn

from compress.strategies._parts.channel_rounding import candidate_widths, plan_fixed_widths
from compress.strategies.gp_prune.importance import TreeImportance
from compress.evolution.metrics import MetricError, get_metric
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


def test_rounding_decision_needs_a_group_gain_above_the_bar_and_the_noise():
    from compress.strategies._parts.channel_rounding import MIN_GAIN, _decide

    assert MIN_GAIN == 0.24
    n = 15
    k = 50  # nominal: 1.0 ms for 50 channels, 0.02 ms per channel

    def flat(gain: float, w: int) -> list[list[float]]:  # one layer, the same figure every round
        return [[(1 - gain) * 0.02 * w] * n]

    # an off-layout nominal width: every neighbour is about 30% cheaper per channel
    off = {k: [[1.0] * n], 40: flat(0.10, 40), 48: flat(0.30, 48), 52: flat(0.29, 52), 56: flat(0.32, 56),
           64: flat(0.28, 64)}
    best, rec = _decide(k, off, min_gain=0.25, noise_z=3.0)
    rows = {c["width"]: c for c in rec["candidates"]}
    assert rows[48]["gain"] == pytest.approx(0.30) and rows[48]["noise"] == pytest.approx(0.0)
    assert rec["group_gain"] == pytest.approx(0.29) and rec["threshold"] == pytest.approx(0.25)
    assert [w for w, c in rows.items() if c["accepted"]] == [48, 52, 56, 64]  # 40 cuts under half the bar
    assert best == 48 and rec["chosen"] == 48  # 16-aligned like 64, and nearer to 50
    assert "48" in rec["decision"]
    # a loaded machine: every round of the sweep slowed by its own factor, all widths alike
    load = [1.0 + 0.7 * ((i * 7) % 5) for i in range(n)]
    loaded = {w: [[ms * f for ms, f in zip(layers[0], load)]] for w, layers in off.items()}
    best_loaded, rec_loaded = _decide(k, loaded, min_gain=0.25, noise_z=3.0)
    assert best_loaded == best
    assert [c["gain"] for c in rec_loaded["candidates"]] == pytest.approx([c["gain"] for c in rec["candidates"]])
    # one neighbour much cheaper is not a layout problem of the nominal width: k stays
    best, rec = _decide(k, {k: [[1.0] * n], 48: flat(0.05, 48), 52: flat(-0.02, 52), 56: flat(0.40, 56)},
                        min_gain=0.25, noise_z=3.0)
    assert best == k and rec["decision"].startswith("nominal") and rec["group_gain"] == pytest.approx(0.05)
    # a large median cut buried in noise: k stays (the bar rises to 3 standard errors)
    noisy = {k: [[1.0] * n], **{w: [[(0.1 + 1.2 * i / (n - 1)) * 0.02 * w for i in range(n)]] for w in (48, 56)}}
    best, rec = _decide(k, noisy, min_gain=0.25, noise_z=3.0)
    assert rec["group_gain"] > 0.25 and rec["threshold"] > rec["group_gain"] and best == k
    # nominal layers timed at zero (below the timer): nothing to compare against
    best, rec = _decide(k, {k: [[0.0] * n], 64: flat(0.5, 64)}, min_gain=0.25, noise_z=3.0)
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


def test_ignored_layers_keep_a_layer_whole_and_unblock_an_unprunable_model(digits_task, tmp_path):
    from compress.api import compress
    from compress.errors import ConfigError
    from compress.testing import HiddenStateNet

    cfg = {"finetune": {"epochs": 0}, "importance": {"calib_samples": 32}}
    prune = {"bisection_steps": 3, "channel_rounding": "off"}
    kw = dict(data=digits_task, strategy="gp-prune", progress=False, mobile=False, memory=False, latency_repeats=3,
              latency_warmup=1, allow_slower=True)
    # a plain tensor sized to features.3's 32 outputs: the group is found, kept whole and reported (issue 19)
    auto = compress(HiddenStateNet().eval(), "macs=0.6x", config={**cfg, "prune": prune}, out_dir=tmp_path / "a", **kw)
    assert [u["group"] for u in auto.info["untouched_groups"]] == ["features.3"]
    res = compress(HiddenStateNet().eval(), "macs=0.6x",
                   config={**cfg, "prune": {**prune, "ignored_layers": ["features.3"]}},
                   out_dir=tmp_path / "b", **kw)  # or the user names it
    assert res.budget_check.ok and res.info["untouched_groups"] == []
    assert res.student.features[3].out_channels == 32  # kept whole
    assert res.student.features[0].out_channels < 16  # the others were pruned
    assert auto.info["layer_widths"] == res.info["layer_widths"]
    with pytest.raises(ConfigError, match=r"'features\.33'.*did you mean 'features\.3'"):
        compress(TinyConvNet().eval(), "macs=0.6x",
                 config={**cfg, "prune": {**prune, "ignored_layers": ["features.33"]}}, out_dir=tmp_path / "c", **kw)
