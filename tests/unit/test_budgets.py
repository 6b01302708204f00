"""compress.budgets: closed-form MAC counts, parsing, checks and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.budgets import Budget, BudgetError, Cost, measure_cost
from compress.profiling import Target


def test_conv_macs_closed_form():
    # conv MACs = C_out * C_in * k^2 * H_out * W_out / groups  (fvcore: one fused multiply-add = 1)
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
    cost = measure_cost(conv, torch.randn(4, 16, 32, 32))
    assert cost.macs == 32 * 16 * 3 * 3 * 16 * 16
    assert cost.params == 32 * 16 * 9
    assert cost.input_shape == (16, 32, 32)


def test_grouped_and_depthwise_conv_macs():
    g = nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False)
    assert measure_cost(g, torch.randn(1, 16, 8, 8)).macs == 32 * 16 * 9 * 8 * 8 // 4
    dw = nn.Conv2d(24, 24, 5, padding=2, groups=24, bias=False)
    assert measure_cost(dw, torch.randn(1, 24, 10, 10)).macs == 24 * 25 * 10 * 10


def test_linear_and_bn_macs():
    lin = nn.Linear(64, 10)
    cost = measure_cost(lin, torch.randn(3, 64))
    assert cost.macs == 64 * 10
    assert cost.params == 64 * 10 + 10
    bn = nn.BatchNorm2d(8).eval()
    # fvcore counts eval-mode affine BN as 2 ops per element
    assert measure_cost(bn, torch.randn(2, 8, 5, 5)).macs == 2 * 8 * 5 * 5


def test_per_module_table_and_uncounted_ops():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    cost = measure_cost(model, torch.randn(2, 3, 8, 8))
    assert cost.per_module["0"]["macs"] == 8 * 3 * 9 * 64
    assert cost.per_module["4"]["macs"] == 128 * 5
    assert sum(v["macs"] for v in cost.per_module.values()) == cost.macs
    assert "aten::max_pool2d" in cost.uncounted_ops
    assert cost.table()[0][0] == "0"


def test_measure_cost_restores_training_mode():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    measure_cost(m, torch.randn(1, 3, 8, 8))
    assert m.training


@pytest.mark.parametrize(
    "spec,field,value",
    [
        ("macs=0.5x", "rel_macs", 0.5),
        ("params=1.5M", "max_params", 1.5e6),
        ("macs=300k", "max_macs", 3e5),
        ("latency=2.5ms", "max_latency_ms", 2.5),
        ("latency=800us", "max_latency_ms", 0.8),
        ("latency=0.5x", "rel_latency", 0.5),
        ("MACS=2G", "max_macs", 2e9),
        ("memory=64MB", "max_memory_bytes", 64e6),
        ("memory=48MiB", "max_memory_bytes", 48 * 2**20),
        ("memory=500000", "max_memory_bytes", 5e5),
        ("memory=0.5x", "rel_memory", 0.5),
    ],
)
def test_parse(spec, field, value):
    b = Budget.parse(spec)
    assert getattr(b, field) == pytest.approx(value)
    assert b.describe() == spec


def test_parse_many_and_resolve():
    b = Budget.parse("macs=0.5x, params=0.25x")
    teacher = Cost(macs=1000, params=400)
    r = b.resolve(teacher)
    assert r.max_macs == 500 and r.max_params == 100 and not r.is_relative


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("mac=0.5x", "Did you mean 'macs'"),
        ("flops=0.5x", "fused multiply-add"),
        ("macs=-1", "Cannot parse"),
        ("macs=0x", "positive"),
        ("latency=3", "needs a unit"),
        ("macs=3q", "unit must be"),
        ("macs=0.5x,macs=0.4x", "twice"),
        ("latency=2ms,latency=0.5x", "twice"),
        ("memory=1MB,memory=0.5x", "twice"),
        ("memory=3q", "KiB, MiB"),
        ("", "non-empty"),
        ("macs", "key=value"),
    ],
)
def test_parse_errors(spec, needle):
    with pytest.raises(BudgetError, match=needle):
        Budget.parse(spec)


def test_constructor_errors():
    with pytest.raises(BudgetError, match="at least one limit"):
        Budget()
    with pytest.raises(BudgetError, match="positive"):
        Budget(max_macs=float("nan"))
    with pytest.raises(BudgetError, match="both an absolute and a relative"):
        Budget(max_macs=10, rel_macs=0.5)


def test_check_reports_every_violation_with_margin():
    b = Budget(max_macs=100, max_params=10, max_latency_ms=1.0)
    chk = b.check(Cost(macs=150, params=12), latency_ms=0.5)
    assert not chk.ok
    by = {v.metric: v for v in chk.violations}
    assert set(by) == {"macs", "params"}
    assert by["macs"].margin == 50 and by["params"].margin == 2
    assert by["macs"].ratio == pytest.approx(1.5)
    assert chk.headroom["latency_ms"] == pytest.approx(0.5)
    ok = b.check(Cost(macs=100, params=10), latency_ms=1.0)
    assert ok.ok and ok.violations == ()


def test_check_needs_resolution_and_latency():
    with pytest.raises(BudgetError, match="resolve"):
        Budget.parse("macs=0.5x").check(Cost(macs=1, params=1))
    with pytest.raises(BudgetError, match="latency_ms"):
        Budget(max_latency_ms=1.0).check(Cost(macs=1, params=1))
    with pytest.raises(BudgetError, match="teacher_latency_ms"):
        Budget.parse("latency=0.5x").resolve(Cost(macs=1, params=1))


def test_memory_limit_resolve_and_check():
    b = Budget.parse("macs=0.5x,memory=0.5x")
    assert b.needs_memory and not b.needs_latency
    with pytest.raises(BudgetError, match="teacher_memory_bytes"):
        b.resolve(Cost(macs=100, params=10))
    r = b.resolve(Cost(macs=100, params=10), teacher_memory_bytes=40 * 2**20)
    assert r.max_memory_bytes == 20 * 2**20 and not r.is_relative
    with pytest.raises(BudgetError, match="memory_bytes"):
        r.check(Cost(macs=10, params=1))
    chk = r.check(Cost(macs=10, params=1), memory_bytes=25 * 2**20)
    (v,) = chk.violations
    assert v.metric == "memory_bytes" and v.margin == 5 * 2**20
    assert "25.0 MiB > limit 20.0 MiB" in str(v)
    assert r.check(Cost(macs=10, params=1), memory_bytes=20 * 2**20).ok
    assert r.to_dict()["max_memory_bytes"] == 20 * 2**20


def test_coerce_and_target():
    t = Target.preset("cpu-2t")
    b = Budget.coerce("macs=0.5x", target=t)
    assert b.target.intra_op_threads == 2
    assert Budget.coerce({"max_macs": 10}).max_macs == 10
    with pytest.raises(BudgetError):
        Budget.coerce(3.0)
    assert b.to_dict()["target"]["name"] == "cpu-2t"


def test_a_student_not_faster_than_its_teacher_violates_latency_not_reduced():
    b = Budget(max_macs=200)
    cost = Cost(macs=150, params=12)
    slower = b.check(cost, teacher_latency_ms=1.0, student_latency_ms=1.2)
    assert not slower.ok and [v.metric for v in slower.violations] == ["latency_not_reduced"]
    (v,) = slower.violations
    assert (v.limit, v.actual, v.unit) == (1.0, 1.2, "ms") and v.margin == pytest.approx(0.2)
    assert "not faster" in str(v) and "allow_slower=True" in str(v) and "--allow-slower" in str(v)
    assert slower.latency_vs_teacher == {"teacher_ms": 1.0, "student_ms": 1.2, "reduced": False}
    assert "latency_not_reduced" not in slower.headroom  # a rule, not a limit with headroom
    assert not b.check(cost, teacher_latency_ms=1.0, student_latency_ms=1.0).ok  # as fast is not faster
    faster = b.check(cost, teacher_latency_ms=1.0, student_latency_ms=0.8)
    assert faster.ok and faster.latency_vs_teacher["reduced"] is True
    allowed = b.check(cost, teacher_latency_ms=1.0, student_latency_ms=1.2, allow_slower=True)
    assert allowed.ok and allowed.allow_slower and allowed.latency_vs_teacher["reduced"] is False
    assert allowed.to_dict()["allow_slower"] is True and allowed.to_dict()["violations"] == []
    # every violation is listed: over the MACs limit and slower
    both = b.check(Cost(macs=300, params=12), teacher_latency_ms=1.0, student_latency_ms=1.5)
    assert [v.metric for v in both.violations] == ["macs", "latency_not_reduced"]
    # the student's side-by-side figure defaults to latency_ms; without a teacher figure nothing is compared
    assert not b.check(cost, latency_ms=2.0, teacher_latency_ms=1.0).ok
    assert b.check(cost, latency_ms=2.0).ok and b.check(cost).latency_vs_teacher is None


def test_latency_vs_teacher_needs_positive_finite_figures():
    b = Budget(max_macs=200)
    cost = Cost(macs=150, params=12)
    with pytest.raises(BudgetError, match="student_latency_ms"):
        b.check(cost, teacher_latency_ms=1.0)
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(BudgetError, match="positive finite"):
            b.check(cost, teacher_latency_ms=1.0, student_latency_ms=bad)
        with pytest.raises(BudgetError, match="positive finite"):
            b.check(cost, teacher_latency_ms=bad, student_latency_ms=1.0)
