"""Expression-tree pruning metrics of strategy ``gp-prune`` (GECCO'22, Sec. 3.1, Eq. 3, supp. 9.2).

Trees are checked against independent closed forms (``metrics.REFERENCES``: explicit loops,
no tree engine), a hand-computed xi* example, and the uni-tree invariants of Sec. 3.1.
"""

from __future__ import annotations

import random

import pytest
import torch
from deap import gp

from compress.evolution import metrics, primitives, trees
from compress.evolution.metrics import (
    SOAP,
    XI_STAR,
    ChannelOperands,
    MetricError,
    PruningMetric,
    get_metric,
    list_metrics,
    reference_score,
)
from compress.evolution.primitives import PSET
from compress.evolution.trees import compile_tree, is_valid

LABEL_AWARE = ["di", "mmd", "abs_snr", "t_test", "fisher", "sym_div", "xi_star", "xi_star_ref", "xi_1", "xi_2"]


def make_ops(seed: int = 0, c: int = 5, n_classes: int = 3, n_per_class: int = 6, hw: int = 3) -> ChannelOperands:
    """Random operands of one conv layer: c scored channels of a (c + 2)-filter layer, ReLU-like maps."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c + 2, 3, 3, 3, generator=g, dtype=torch.float64)
    bn = torch.randn(c, 4, generator=g, dtype=torch.float64)
    n = n_classes * n_per_class
    y = torch.arange(n) % n_classes
    means = torch.randn(c, n_classes, hw * hw, generator=g, dtype=torch.float64)[:, y]
    f = torch.relu(torch.randn(c, n, hw * hw, generator=g, dtype=torch.float64) + means)
    return ChannelOperands(W=w.unsqueeze(0), WI=w[:c], B=bn, F=f, y=y)


def ranks(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x)).double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / torch.sqrt((ra * ra).sum() * (rb * rb).sum()))


# 1. SOAP (and every registered metric) == independent closed form -----------------------


@pytest.mark.parametrize("name", list(metrics.METRICS))
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_registered_tree_matches_closed_form(name, reduction):
    ops = make_ops(seed=1)
    got = get_metric(name).score(ops, class_reduction=reduction)
    want = reference_score(name, ops, class_reduction=reduction)
    assert got.shape == (ops.num_channels,)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), (name, got, want)
    assert got.std() > 0, f"{name} gives the same score to every channel on random data"


def test_soap_has_the_ten_functions_of_sec_9_2():
    assert list(SOAP) == ["l1", "l2", "bn_scale", "fpgm", "di", "mmd", "abs_snr", "t_test", "fisher", "sym_div"]
    assert set(list_metrics()) == set(SOAP) | {"xi_star", "xi_star_ref", "xi_1", "xi_2", "xi_3"}
    assert XI_STAR == "xi_star"


def test_filter_norms_equal_torch_norms():
    ops = make_ops(seed=2)
    wi = ops.WI.reshape(ops.num_channels, -1)
    assert torch.allclose(get_metric("l1").score(ops), torch.linalg.vector_norm(wi, ord=1, dim=1))
    assert torch.allclose(get_metric("l2").score(ops), torch.linalg.vector_norm(wi, ord=2, dim=1))
    assert torch.equal(get_metric("bn_scale").score(ops), ops.B[:, 0].abs())
    assert torch.allclose(get_metric("xi_3").score(ops), wi.var(dim=1, correction=0))


def test_labelless_metrics_do_not_need_maps():
    full = make_ops(seed=3)
    bare = ChannelOperands(W=full.W, WI=full.WI, B=full.B)
    for name in ("l1", "l2", "bn_scale", "fpgm", "xi_3"):
        m = get_metric(name)
        assert not m.label_aware and not m.needs_feature_maps
        assert torch.equal(m.score(bare), m.score(full))
    for name in LABEL_AWARE:
        m = get_metric(name)
        assert m.label_aware and m.needs_feature_maps
        with pytest.raises(MetricError, match="feature maps"):
            m.score(bare)


# 2. xi* (Eq. 3) on a hand-sized example ---------------------------------------------------


def test_xi_star_hand_example():
    # 2 channels, 3 samples of 2x2 maps (D = 4), classes y = [0, 0, 1].
    # channel 0: f1 = [0,2,2,0] (y=0), f2 = [2,4,4,2] (y=0), f3 = [1,0,0,1] (y=1); channel 1: all zero.
    maps0 = torch.tensor([[0.0, 2, 2, 0], [2, 4, 4, 2], [1, 0, 0, 1]], dtype=torch.float64)
    f = torch.stack([maps0, torch.zeros_like(maps0)])
    y = torch.tensor([0, 0, 1])
    w = torch.ones(1, 2, 1, 1, 1, dtype=torch.float64)
    ops = ChannelOperands(W=w, WI=w[0], B=torch.tensor([[1.0, 0, 0, 1]] * 2), F=f, y=y)

    # f-bar = (f1 + f2 + f3) / 3 = [3,6,6,3] / 3 = [1,2,2,1]; mean 1.5, every entry 0.5 away -> std_g(f-bar) = 0.5
    # class 0: F+ = {f1,f2}: entries 0,2,2,0,2,4,4,2 -> mean 2, squared deviations 4,0,0,4,0,4,4,0 -> var 16/8 = 2
    #          F- = {f3}:    entries 1,0,0,1 -> mean 0.5, var 0.25
    #   t1 = var-/(var+ +.05) = 0.25/2.05 ; t2 = var+/(var- +.05) = 2/0.3
    #   v  = 0.5 * 0.25 * [1,2,2,1] + (2 - 0.5) = [1.625, 1.75, 1.75, 1.625]
    #   ||v||^2 = 2 * 1.625^2 + 2 * 1.75^2 = 5.28125 + 6.125 = 11.40625 ; / (2 + 0.25 + 0.05) = / 2.3
    # class 1: F+ = {f3}: mean 0.5, var 0.25 ; F- = {f1,f2}: mean 2, var 2
    #   t1 = 2/0.3 ; t2 = 0.25/2.05
    #   v  = 0.5 * 2 * [1,2,2,1] + (0.25 - 2) = [-0.75, 0.25, 0.25, -0.75]
    #   ||v||^2 = 2 * 0.5625 + 2 * 0.0625 = 1.25 ; / 2.3
    first_terms = (0.25 / 2.05 + 2 / 0.3) + (2 / 0.3 + 0.25 / 2.05)  # 13.577235...
    third_terms = 11.40625 / 2.3 + 1.25 / 2.3  # 5.502717...
    xi_ch0 = first_terms + third_terms  # 19.079953...
    # channel 1: every variance and mean is 0 -> t1 = t2 = 0/0.05 = 0, v = 0 -> score 0 (the ridges keep it finite)
    expected = torch.tensor([xi_ch0, 0.0], dtype=torch.float64)
    assert abs(xi_ch0 - 19.0799531637) < 1e-9

    got = get_metric("xi_star").score(ops)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12), got
    assert torch.allclose(got, reference_score("xi_star", ops), rtol=1e-12)

    # reference variant: the two scalar terms are added to each of the D = 4 entries before the sum
    ref = get_metric("xi_star_ref").score(ops)
    assert torch.allclose(ref, torch.tensor([4 * first_terms + third_terms, 0.0], dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(ref - got, torch.tensor([3 * first_terms, 0.0], dtype=torch.float64), rtol=1e-12)
    # "mean" over the 2 classes halves it
    assert torch.allclose(get_metric("xi_star").score(ops, class_reduction="mean"), expected / 2, rtol=1e-12)


def test_xi_star_ref_differs_by_d_scaling_on_random_data():
    ops = make_ops(seed=4, hw=4)  # D = 16
    d = ops.F.shape[2]
    first = PruningMetric.from_string(
        "add(div(var_g(Fm), ridge5(var_g(Fp))), div(var_g(Fp), ridge5(var_g(Fm))))", name="first_two_terms"
    ).score(ops)
    star, ref = get_metric("xi_star").score(ops), get_metric("xi_star_ref").score(ops)
    assert torch.allclose(ref - star, (d - 1) * first, rtol=1e-10)


# 3. geo / FPGM -----------------------------------------------------------------------------


def test_geo_returns_filter_with_minimal_summed_distance_and_fpgm_zero_there():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    w[4] = 0.1 * w[:4].mean(0)  # near the centre, but not the mean of all filters
    sums = []
    for i in range(6):  # explicit summed L2 distances
        total = 0.0
        for j in range(6):
            total += float(torch.sqrt(((w[i] - w[j]) ** 2).sum()))
        sums.append(total)
    best = min(range(6), key=sums.__getitem__)
    geo = compile_tree("geo(W)")(W=w.unsqueeze(0))
    assert geo.shape == (1, 2, 3, 3)
    assert torch.equal(geo[0], w[best])
    assert not torch.allclose(geo[0], w.mean(0))

    ops = ChannelOperands(W=w.unsqueeze(0), WI=w, B=torch.tensor([[1.0, 0, 0, 1]] * 6))
    fpgm = get_metric("fpgm").score(ops)
    assert fpgm[best] == 0
    assert (fpgm[[i for i in range(6) if i != best]] > 0).all()
    assert int(torch.argmin(fpgm)) == best


# 4. uni-tree invariants ------------------------------------------------------------------------


@pytest.mark.parametrize("name", LABEL_AWARE)
def test_permuting_class_labels_leaves_scores_unchanged(name):
    ops = make_ops(seed=6, n_classes=4, n_per_class=5)
    perm = torch.tensor([2, 0, 3, 1])
    relabelled = ChannelOperands(W=ops.W, WI=ops.WI, B=ops.B, F=ops.F, y=perm[ops.y] + 10)
    m = get_metric(name)
    assert torch.allclose(m.score(ops), m.score(relabelled), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", LABEL_AWARE)
def test_same_tree_runs_on_3_and_10_classes(name):
    m = get_metric(name)
    for n_classes in (3, 10):
        ops = make_ops(seed=7, n_classes=n_classes, n_per_class=3)
        s = m.score(ops)
        assert s.shape == (5,) and torch.isfinite(s).all()
        assert torch.allclose(s, reference_score(name, ops), rtol=1e-9, atol=1e-12)


def test_uni_tree_equals_explicit_per_class_evaluation():
    ops = make_ops(seed=8, n_classes=3)
    fn = compile_tree(get_metric("fisher").expr)
    total = torch.zeros(ops.num_channels, dtype=torch.float64)
    for k in range(3):
        total += fn(F=ops.F, Fp=ops.F[:, ops.y == k], Fm=ops.F[:, ops.y != k])
    assert torch.allclose(get_metric("fisher").score(ops), total, rtol=1e-12)


# 5. mean vs sum over classes --------------------------------------------------------------------


@pytest.mark.parametrize("name", LABEL_AWARE)
def test_mean_and_sum_over_classes_rank_identically(name):
    ops = make_ops(seed=9, c=8, n_classes=4)
    m = get_metric(name)
    s, a = m.score(ops, class_reduction="sum"), m.score(ops, class_reduction="mean")
    assert torch.allclose(a, s / 4, rtol=1e-12)
    assert torch.equal(torch.argsort(s), torch.argsort(a))
    assert spearman(s, a) == pytest.approx(1.0)


# 6. validity ------------------------------------------------------------------------------------


def test_is_valid_on_every_registered_tree():
    for name, expr in metrics.METRICS.items():
        assert is_valid(expr), name
        assert is_valid(gp.PrimitiveTree.from_string(expr, PSET)), name


def test_is_valid_rejects_non_scalar_and_non_finite_trees():
    assert not is_valid("mean_s(F)")  # the average map, one vector per channel
    assert not is_valid("WI")
    assert not is_valid("div(sum_g(WI), sub(sum_g(WI), sum_g(WI)))")  # x / 0 -> inf
    assert not is_valid("div(sub(var_g(Fp), var_g(Fp)), sub(var_g(Fm), var_g(Fm)))")  # 0 / 0 -> NaN
    assert not is_valid("inv(matmul(tran(F), F))")  # a D x D matrix per channel
    assert not is_valid("sum_g(outer(F, outer(F, F)))")  # exceeds the evaluation limits
    with pytest.raises(MetricError, match="not one scalar per channel"):
        PruningMetric.from_string("mean_s(F)").score(make_ops())


def test_random_trees_are_mostly_valid():
    state = random.getstate()
    try:
        random.seed(0)
        sample = [gp.PrimitiveTree(gp.genHalfAndHalf(PSET, 1, 4)) for _ in range(50)]
        random.seed(1)
        large = [gp.PrimitiveTree(gp.genHalfAndHalf(PSET, 1, 4)) for _ in range(400)]
    finally:
        random.setstate(state)
    frac50 = sum(map(is_valid, sample)) / 50
    frac400 = sum(map(is_valid, large)) / 400
    msg = f"valid random trees: {frac50:.2f} of 50 (seed 0), {frac400:.3f} of 400 (seed 1)"
    assert frac50 >= 0.5, msg
    assert frac400 >= 0.5, msg
    # every valid tree scores a real layer-shaped input into finite per-channel scalars
    ops = make_ops(seed=10)
    for t in sample:
        if is_valid(t):
            try:
                s = trees.score_tree(t, ops)
            except MetricError as exc:  # only resource limits may differ between operands
                assert "LIMITS" in str(exc) or "non-finite" in str(exc), exc
                continue
            assert s.shape == (ops.num_channels,)


# 7. registry errors ------------------------------------------------------------------------------


def test_unknown_metric_name_suggests_close_match():
    with pytest.raises(MetricError, match="fisher") as exc:
        get_metric("fishr")
    assert "did you mean" in str(exc.value)
    with pytest.raises(MetricError, match="'xi_star'"):
        get_metric("xi_str")
    with pytest.raises(MetricError, match="known metrics"):
        reference_score("nonsense", make_ops())


# operator semantics and API details ----------------------------------------------------------


def test_parse_errors_are_metric_errors():
    with pytest.raises(MetricError, match="did you mean .*sum_g"):
        PruningMetric.from_string("sum_q(abs(WI))")
    with pytest.raises(MetricError, match="arities"):
        PruningMetric.from_string("add(sum_g(WI, WI))")
    with pytest.raises(MetricError):
        PruningMetric.from_string("add(WI)")
    with pytest.raises(MetricError):
        PruningMetric.from_string("")
    with pytest.raises(MetricError, match="unknown token"):
        PruningMetric.from_string("sum_g(__import__)")


def test_label_aware_scoring_needs_labels_and_two_classes():
    ops = make_ops()
    no_y = ChannelOperands(W=ops.W, WI=ops.WI, B=ops.B, F=ops.F)
    with pytest.raises(MetricError, match="y"):
        get_metric("fisher").score(no_y)
    one = ChannelOperands(W=ops.W, WI=ops.WI, B=ops.B, F=ops.F, y=torch.zeros_like(ops.y))
    with pytest.raises(MetricError, match="at least 2 classes"):
        get_metric("fisher").score(one)
    with pytest.raises(MetricError, match="class_reduction"):
        get_metric("fisher").score(ops, class_reduction="max")
    with pytest.raises(MetricError, match="B must be"):
        ChannelOperands(W=ops.W, WI=ops.WI, B=ops.B[:, :3])


def test_metric_api_round_trip():
    m = get_metric("xi_star")
    d = m.to_dict()
    assert d == {"name": "xi_star", "expr": metrics.METRICS["xi_star"], "label_aware": True, "needs_feature_maps": True}
    assert PruningMetric.from_dict(d) == m
    assert PruningMetric.from_string("sum_g(abs( WI ))").name == "l1"
    assert PruningMetric.from_string("sum_g(sq(WI))").name == "custom"
    assert str(m.tree) == m.expr


def test_compiled_tree_agrees_with_deap_compile():
    ops = make_ops(seed=11)
    fp, fm = ops.F[:, ops.y == 1], ops.F[:, ops.y != 1]
    args = (ops.W, ops.WI, ops.B, ops.F, fp, fm)
    for expr in metrics.METRICS.values():
        ours = compile_tree(expr)(*args)
        theirs = gp.compile(gp.PrimitiveTree.from_string(expr, PSET), PSET)(*args)
        assert torch.allclose(ours, theirs, rtol=1e-12), expr


def test_operator_semantics():
    run = lambda expr, **kw: compile_tree(expr)(**kw)  # noqa: E731
    a = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)  # one channel, vector of 3
    b = torch.tensor([[10.0, 20.0]], dtype=torch.float64)  # vector of 2
    # padding rule: 0 for +/-, 1 for x/÷
    assert torch.equal(run("add(F, Fp)", F=a, Fp=b), torch.tensor([[11.0, 22.0, 3.0]], dtype=torch.float64))
    assert torch.equal(run("mul(F, Fp)", F=a, Fp=b), torch.tensor([[10.0, 40.0, 3.0]], dtype=torch.float64))
    # scalar broadcast; vector broadcast over samples of a matrix
    m = torch.arange(6.0, dtype=torch.float64).reshape(1, 2, 3)
    assert torch.equal(run("sub(F, mean_s(F))", F=m), m - m.mean(1, keepdim=True))
    # matmul: vector . vector -> scalar; vector x matrix -> vector
    assert torch.equal(run("matmul(F, F)", F=a), torch.tensor([14.0], dtype=torch.float64))
    assert run("matmul(mean_s(F), matmul(tran(F), F))", F=m).shape == (1, 3)
    # ridge adds rho I to a square matrix, protected sqrt, slice(B) = gamma, count_s = samples
    s = run("ridge(matmul(tran(F), F))", F=m)
    assert torch.allclose(s - m[0].T @ m[0], primitives.RIDGE * torch.eye(3, dtype=torch.float64))
    assert torch.equal(run("sqrt(F)", F=-a), a.sqrt())
    bn = torch.tensor([[0.5, 1.0, 2.0, 3.0], [-2.0, 0, 0, 1]], dtype=torch.float64)
    assert torch.equal(run("slice(B)", B=bn), bn[:, 0])
    assert torch.equal(run("count_s(F)", F=m), torch.tensor([2.0], dtype=torch.float64))
    # rbf bandwidth: exp(-||a - b||^2 / D)
    k = run("rbf(F, F)", F=m)
    d2 = ((m[0, 0] - m[0, 1]) ** 2).sum()
    assert torch.allclose(k[0, 0, 1], torch.exp(-d2 / 3))
    assert k[0, 0, 0] == 1.0
    # population statistics (ddof = 0)
    assert torch.allclose(run("var_g(F)", F=a), torch.tensor([2.0 / 3.0], dtype=torch.float64))
