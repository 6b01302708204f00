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
    assert candidate_widths(45, 64, 0.2) == [36, 40, 44, 45, 48, 52]
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
