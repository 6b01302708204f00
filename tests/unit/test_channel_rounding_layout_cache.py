"""Channel rounding's layout cache (issue 17): ``plan_widths(..., cache=d)`` reads each conv's input size
and each group's layers once for deep copies of one unpruned model (gp-prune's ratio search). The plans
and records must be the same as without it, and a later call must not trace the model again."""

from __future__ import annotations

import copy

import pytest
import torch

from compress.profiling import Target
from compress.profiling.latency_model import LayerLatencyTable
from compress.strategies._parts import channel_rounding
from compress.strategies._parts.channel_rounding import plan_widths
from compress.testing import TinyConvNet, TinyResidualNet


def _named(model, plan):
    names = {m: n for n, m in model.named_modules()}
    return {names[m]: k for m, k in plan.items()}


def _strip_timing(records):
    return [{k: v for k, v in r.items() if k != "timing_s"} for r in records]


@pytest.mark.parametrize("net", ["tiny_conv", "tiny_residual"])
def test_plans_with_the_layout_cache_equal_those_without(net, tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = (TinyConvNet(num_classes=3, width=12) if net == "tiny_conv"
                 else TinyResidualNet(num_classes=3, width=12)).eval()
    head = "fc" if net == "tiny_conv" else "head"
    x = torch.randn(1, 3, 16, 16)
    table = LayerLatencyTable(Target.preset("cpu-1t", input_shape=(3, 16, 16)), cache_dir=tmp_path, repeats=2,
                              warmup=0, rounds=2)
    ratios = [0.3, 0.55, 0.42]
    without = []
    for r in ratios:  # times every layer the plans need: the table then holds them all
        cand = copy.deepcopy(reference)
        plan, rec = plan_widths(cand, x, r, [dict(cand.named_modules())[head]], table)
        without.append((_named(cand, plan), _strip_timing(rec)))
    measured = table.measured
    layout: dict = {}
    builds = []
    real = channel_rounding._group_layers
    monkeypatch.setattr(channel_rounding, "_group_layers", lambda *a, **k: builds.append(1) or real(*a, **k))
    for r, (plan0, rec0) in zip(ratios, without):
        cand = copy.deepcopy(reference)
        plan, rec = plan_widths(cand, x, r, [dict(cand.named_modules())[head]], table, cache=layout)
        assert all(any(m is c for c in cand.modules()) for m in plan)  # keys are this copy's modules
        assert _named(cand, plan) == plan0 and _strip_timing(rec) == rec0
    layouts = [k for k in layout if k != channel_rounding._CHARGED]  # the cache also lists the layers timed
    assert builds == [1] and len(layouts) == 1  # one dependency graph for the three copies
    assert table.measured == measured  # nothing new timed: the same figures decided both
    # a different set of ignored layers is another entry, not a stale one
    cand = copy.deepcopy(reference)
    plan_widths(cand, x, 0.3, [], table, cache=layout)
    assert len([k for k in layout if k != channel_rounding._CHARGED]) == 2
