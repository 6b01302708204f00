"""The shared DARTS substrate (ALGORITHMS.md §0 and the shared tests of §5)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from compress.budgets import Budget, measure_cost
from compress.errors import BudgetUnreachableError, ConfigError
from compress.strategies.darts import (
    DARTS_V1,
    DARTS_V2,
    EG_NAS_CIFAR10,
    EGNAS_PRIMITIVES,
    PC_DARTS_CIFAR,
    PRIMITIVES,
    Architect,
    CellSpec,
    EvalCell,
    Genotype,
    MixedOp,
    NetworkCIFAR,
    SearchCell,
    SearchNetwork,
    alpha_entropy,
    build_from_arch,
    derive_genotype,
    num_edges,
    reduction_positions,
    size_to_budget,
)
from compress.strategies.darts.ops import FactorizedReduce
from compress.strategies.darts.search import channel_shuffle


def _nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------- MixedOp


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_equals_softmax_weighted_sum(stride):
    torch.manual_seed(0)
    op = MixedOp(4, stride, PRIMITIVES).eval()
    x = torch.randn(2, 4, 8, 8)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), -1)
    expected = sum(w[k] * op.ops[k](x) for k in range(len(PRIMITIVES)))
    out = op(x, w)
    assert out.shape == (2, 4, 8 // stride, 8 // stride)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_partial_channel_mixed_op_bypasses_and_shuffles():
    torch.manual_seed(0)
    op = MixedOp(8, 1, EGNAS_PRIMITIVES, partial_channels=4, pool_bn=False).eval()
    assert op.ops[3].op[1].in_channels == 2  # sep_conv runs on C/K = 2 channels
    x = torch.randn(2, 8, 6, 6)
    w = torch.softmax(torch.randn(len(EGNAS_PRIMITIVES)), -1)
    mixed = sum(w[k] * op.ops[k](x[:, :2]) for k in range(len(EGNAS_PRIMITIVES)))
    expected = channel_shuffle(torch.cat([mixed, x[:, 2:]], 1), 4)
    torch.testing.assert_close(op(x, w), expected, rtol=0, atol=1e-6)
    # the shuffle interleaves: output channel 1 is input channel 2 (bypassed, unchanged)
    torch.testing.assert_close(op(x, w)[:, 1], x[:, 2])


@pytest.mark.parametrize("k", range(len(PRIMITIVES)))
def test_large_one_hot_alpha_reproduces_a_single_op(k):
    torch.manual_seed(0)
    op = MixedOp(4, 1, PRIMITIVES).eval()
    x = torch.randn(2, 4, 8, 8)
    alpha = torch.zeros(len(PRIMITIVES))
    alpha[k] = 1e4
    torch.testing.assert_close(op(x, torch.softmax(alpha, -1)), op.ops[k](x), rtol=0, atol=1e-6)


def test_supernet_with_one_hot_alpha_equals_that_choice_everywhere():
    torch.manual_seed(0)
    net = SearchNetwork(4, 3, 3, primitives="eg-nas", pool_bn=False).eval()
    x = torch.randn(2, 3, 8, 8)
    k = EGNAS_PRIMITIVES.index("skip_connect")
    big = torch.full((14, 7), -1e4)
    big[:, k] = 0.0
    out = net(x, alphas=(big, big))
    # hand-computed: every edge is its skip op, so each node = sum of skip(earlier states)
    s0 = s1 = net.stem(x)
    for cell in net.cells:
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        off = 0
        for _ in range(4):
            states.append(sum(cell.edges[off + j].ops[k](h) for j, h in enumerate(states)))
            off += len(states) - 1
        s0, s1 = s1, torch.cat(states[-4:], 1)
    expected = net.classifier(s1.mean((2, 3)))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- cells and network


def test_search_cell_has_14_edges_and_4C_outputs():
    assert num_edges(4) == 14
    cell = SearchCell(4, 4, 12, 12, 6, reduction=False, reduction_prev=False)
    assert len(cell.edges) == 14
    w = torch.softmax(torch.zeros(14, 8), -1)
    out = cell(torch.randn(2, 12, 8, 8), torch.randn(2, 12, 8, 8), w)
    assert out.shape == (2, 24, 8, 8)
    red = SearchCell(4, 4, 12, 24, 12, reduction=True, reduction_prev=False)
    strides = [e.stride for e in red.edges]
    # edges from the two cell inputs (j < 2) use stride 2: positions 0,1 | 2,3 | 5,6 | 9,10
    assert [i for i, s in enumerate(strides) if s == 2] == [0, 1, 2, 3, 5, 6, 9, 10]
    assert red(torch.randn(2, 12, 8, 8), torch.randn(2, 24, 8, 8), w).shape == (2, 48, 4, 4)
    ev = EvalCell(CellSpec(DARTS_V2.nodes("normal"), DARTS_V2.normal_concat, False), 12, 12, 6, False)
    assert ev(torch.randn(2, 12, 8, 8), torch.randn(2, 12, 8, 8)).shape == (2, 24, 8, 8)


@pytest.mark.parametrize("layers,expected", [(3, (1, 2)), (5, (1, 3)), (8, (2, 5)), (20, (6, 13))])
def test_reduction_cells_at_one_and_two_thirds(layers, expected):
    assert reduction_positions(layers) == expected
    net = SearchNetwork(4, 10, layers)
    assert tuple(i for i, c in enumerate(net.cells) if c.reduction) == expected
    ev = NetworkCIFAR(4, 10, layers, DARTS_V2)
    assert tuple(i for i, c in enumerate(ev.cells) if c.reduction) == expected
    assert [c.C for c in ev.cells][-1] == 16  # width doubled twice
    # a cell right after a reduction reads s0 through FactorizedReduce
    assert isinstance(ev.cells[expected[0] + 1].preprocess0, FactorizedReduce)


def test_arch_parameters_are_outside_the_weights():
    net = SearchNetwork(4, 10, 3)
    weights = list(net.weights())
    arch = net.arch_parameters()
    assert [tuple(a.shape) for a in arch] == [(14, 8), (14, 8)]
    assert not any(a is w for a in arch for w in weights)
    assert float(arch[0].abs().max()) < 0.01  # 1e-3 N(0, 1) init
    assert all(not a.requires_grad for a in arch)
    pc = SearchNetwork(8, 10, 3, partial_channels=4, edge_norm=True)
    assert [tuple(a.shape) for a in pc.arch_parameters()] == [(14, 8), (14, 8), (14,), (14,)]
    assert pc(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_module_conversions_move_the_architecture():
    net = SearchNetwork(4, 3, 3, edge_norm=True)
    arch = net.arch_parameters()
    net.double()  # in place: an optimiser over the architecture stays valid
    assert all(a is b and a.dtype == torch.float64 for a, b in zip(arch, net.arch_parameters()))
    net.set_arch_requires_grad(True)
    net.to("meta")
    assert all(a.device.type == "meta" and a.requires_grad for a in net.arch_parameters())
    assert len(net.arch_parameters()) == 4


def test_factorized_reduce_handles_odd_sizes():
    fr = FactorizedReduce(6, 8)
    assert fr(torch.randn(2, 6, 7, 7)).shape == (2, 8, 4, 4)
    net = NetworkCIFAR(4, 10, 3, DARTS_V2, stem_stride=2).eval()
    assert net(torch.randn(2, 3, 14, 14)).shape == (2, 10)  # 14 -> 7 -> 4 -> 2


# --------------------------------------------------------------------------- genotypes


def test_genotype_never_selects_none():
    torch.manual_seed(0)
    a_n = torch.randn(14, 8)
    a_r = torch.randn(14, 8)
    a_n[:, 0] = 50.0  # 'none' dominates every edge
    a_r[:, 0] = 50.0
    g = derive_genotype(a_n, a_r, PRIMITIVES)
    assert "none" not in g.ops_used()
    for kind in ("normal", "reduce"):
        for i, node in enumerate(g.nodes(kind)):
            inputs = [idx for _, idx in node]
            assert len(inputs) == 2 and len(set(inputs)) == 2 and max(inputs) < 2 + i
    assert g.normal_concat == (2, 3, 4, 5)


def test_derive_genotype_keeps_the_two_strongest_edges():
    a = torch.zeros(14, 8)
    # node 2 (edges 0,1): edge 1 strong sep_conv_5x5; node 3 (edges 2,3,4): edges 2 and 4 strong
    a[1, PRIMITIVES.index("sep_conv_5x5")] = 5.0
    a[2, PRIMITIVES.index("dil_conv_3x3")] = 4.0
    a[4, PRIMITIVES.index("max_pool_3x3")] = 3.0
    a[3, PRIMITIVES.index("none")] = 9.0  # strong 'none' must not make edge 3 win
    g = derive_genotype(a, a, PRIMITIVES)
    assert g.nodes("normal")[0][1] == ("sep_conv_5x5", 1)
    assert g.nodes("normal")[1] == (("dil_conv_3x3", 0), ("max_pool_3x3", 2))
    # PC-DARTS edge normalisation reorders edges: give edge 3 (input 1 of node 3) all the beta mass
    betas = torch.zeros(14)
    betas[3] = 20.0
    g2 = derive_genotype(a, a, PRIMITIVES, betas_normal=betas, betas_reduce=betas)
    assert 1 in [idx for _, idx in g2.nodes("normal")[1]]


def test_genotype_json_round_trip_and_validation():
    for g in (DARTS_V1, DARTS_V2, PC_DARTS_CIFAR, EG_NAS_CIFAR10):
        back = Genotype.from_json(g.to_json())
        assert back == g and hash(back) == hash(g)
        assert json.loads(g.to_json())["normal"][0] == list(g.normal[0])
    with pytest.raises(ConfigError, match="unknown op"):
        Genotype((("conv_7x7", 0), ("skip_connect", 1)), (2,), DARTS_V2.reduce, DARTS_V2.reduce_concat)
    with pytest.raises(ConfigError, match="may only read"):
        Genotype((("skip_connect", 2), ("skip_connect", 1)), (2,), DARTS_V2.reduce, DARTS_V2.reduce_concat)


def test_alpha_entropy_bounds():
    assert alpha_entropy(torch.zeros(14, 7)) == pytest.approx(torch.log(torch.tensor(7.0)).item())
    one_hot = torch.full((14, 7), -1e4)
    one_hot[:, 2] = 0
    assert alpha_entropy(one_hot) == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------- parameter counts (§0.7)


@pytest.mark.parametrize("genotype,C,layers,in_ch,red,expected", [
    (DARTS_V2, 36, 20, 3, None, 3_349_342),
    (DARTS_V1, 36, 20, 3, None, 3_169_414),
    (PC_DARTS_CIFAR, 36, 20, 3, None, 3_634_678),
    (EG_NAS_CIFAR10, 36, 20, 3, None, 3_705_742),
    (DARTS_V2, 16, 5, 1, None, 128_842),     # DARTS-GAL MNIST: 0.13 M
    (DARTS_V2, 16, 5, 1, (1, 2), 189_162),   # DARTS-GAL's Table 1 labels: does not match
    (DARTS_V2, 16, 12, 3, None, 369_114),    # DARTS-GAL CIFAR-10: 0.37 M
])
def test_parameter_counts_of_section_0_7(genotype, C, layers, in_ch, red, expected):
    net = NetworkCIFAR(C, 10, layers, genotype, in_channels=in_ch, reduction_indices=red)
    assert _nparams(net) == expected


# --------------------------------------------------------------------------- architect


def _toy(seed: int = 0, n: int = 32, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()
    return x, y.clamp_max(classes - 1)


def test_first_order_architect_step_lowers_val_loss():
    torch.manual_seed(0)
    net = SearchNetwork(4, 3, 2)
    x, y = _toy()
    arch = Architect(net, lr=0.05)
    before = [a.clone() for a in net.arch_parameters()]
    with torch.no_grad():
        loss0 = float(F.cross_entropy(net(x), y))
    for _ in range(5):
        arch.step(x, y, x, y, eta=0.01)
    with torch.no_grad():
        loss1 = float(F.cross_entropy(net(x), y))
    assert loss1 < loss0
    assert not torch.equal(before[0], net.alphas_normal)
    assert all(p.grad is None for p in net.weights())  # weights untouched by the architect


def test_second_order_equals_first_order_at_zero_eta():
    x, y = _toy(1)
    outs = []
    for second in (False, True):
        torch.manual_seed(0)
        net = SearchNetwork(4, 3, 2)
        Architect(net, lr=0.01, second_order=second).step(x, y, x, y, eta=0.0)
        outs.append(torch.cat([net.alphas_normal.flatten(), net.alphas_reduce.flatten()]).detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-7)
    torch.manual_seed(0)
    net = SearchNetwork(4, 3, 2)
    opt = torch.optim.SGD(net.weights(), lr=0.1, momentum=0.9)
    loss = Architect(net, lr=0.01, second_order=True).step(x, y, x, y, eta=0.1, w_optimizer=opt)
    assert loss > 0 and torch.isfinite(net.alphas_normal).all()


def _tiny_search(seed: int) -> SearchNetwork:
    torch.manual_seed(seed)
    net = SearchNetwork(4, 3, 2, generator=torch.Generator().manual_seed(seed))
    x, y = _toy(seed)
    arch = Architect(net, lr=0.05)
    opt = torch.optim.SGD(net.weights(), lr=0.05, momentum=0.9)
    for _ in range(3):
        arch.step(x[:16], y[:16], x[16:], y[16:], eta=0.05)
        loss = F.cross_entropy(net(x[:16]), y[:16])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def test_same_seed_same_genotype():
    a, b, c = _tiny_search(3), _tiny_search(3), _tiny_search(4)
    assert torch.equal(a.alphas_normal, b.alphas_normal) and torch.equal(a.alphas_reduce, b.alphas_reduce)
    assert a.genotype() == b.genotype()
    assert not torch.equal(a.alphas_normal, c.alphas_normal)


# --------------------------------------------------------------------------- evaluation network


def test_node_mask_placement_makes_node_removal_exact():
    torch.manual_seed(0)
    spec = CellSpec(DARTS_V2.nodes("normal"), DARTS_V2.normal_concat, False)
    cell = EvalCell(spec, 12, 12, 4, False).eval().requires_grad_(False)
    s0, s1 = torch.randn(2, 12, 6, 6), torch.randn(2, 12, 6, 6)
    ref = cell(s0, s1)
    cell.apply_node_mask = True
    torch.testing.assert_close(cell(s0, s1), ref, rtol=0, atol=0)  # ones = no-op
    # zero node 2 (state 2): its concat slice is zero, and node 5 = skip(s0) + 0 * dil_conv(node 2)
    cell.node_mask[0] = 0.0
    out = cell(s0, s1)
    assert float(out[:, :4].abs().max()) == 0.0
    torch.testing.assert_close(out[:, 4:12], ref[:, 4:12])  # nodes 3, 4 unaffected
    nodes = list(spec.nodes)
    nodes[0] = None
    nodes[3] = (("skip_connect", 0),)
    pruned = EvalCell(CellSpec(tuple(nodes), (3, 4, 5), False), 12, 12, 4, False).eval()
    state = {k: v for k, v in cell.state_dict().items() if not k.startswith("edges.n2_") and "n5_1" not in k}
    pruned.load_state_dict(state)
    torch.testing.assert_close(pruned(s0, s1), out[:, 4:], rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="removed or unknown"):
        CellSpec(tuple(nodes), (2, 3), False)


def test_node_mask_can_be_a_trainable_parameter():
    cell = EvalCell(CellSpec(DARTS_V2.nodes("normal"), DARTS_V2.normal_concat, False), 8, 8, 4, False)
    m = torch.nn.Parameter(torch.ones(4))
    cell.set_node_mask(m)
    cell(torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)).sum().backward()
    assert m.grad is not None and m.grad.shape == (4,)
    assert any(p is m for p in cell.parameters())


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    net = NetworkCIFAR(4, 10, 3, DARTS_V2, drop_path_prob=0.5)
    x = torch.randn(4, 3, 8, 8)
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    a, b = net(x), net(x)
    assert not torch.allclose(a, b)


def test_arch_dict_rebuilds_the_same_network():
    torch.manual_seed(0)
    net = NetworkCIFAR(6, 10, 3, EG_NAS_CIFAR10, stem_stride=2).eval()
    back = build_from_arch(json.loads(json.dumps(net.arch_dict())))
    back.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(back.eval()(x), net(x), rtol=0, atol=0)


def test_evaluation_network_exports_to_onnx(tmp_path):
    from compress.exporters import export_onnx, validate_onnx

    torch.manual_seed(0)
    net = NetworkCIFAR(4, 10, 3, DARTS_V2).eval()
    for cell in net.cells:  # exercise the mask path too (no data-dependent control flow)
        cell.apply_node_mask = True
    x = torch.randn(8, 3, 16, 16)
    path = export_onnx(net, x[:2], tmp_path / "darts.onnx")
    rep = validate_onnx(net, path, x, batch_sizes=(1, 8), raise_on_failure=False)
    assert rep.ok, rep


# --------------------------------------------------------------------------- sizing


def _oracle(limit_params: int):
    budget = Budget(max_params=limit_params)
    x = torch.randn(2, 3, 16, 16)

    def check(model):
        cost = measure_cost(model, x)
        return cost, budget.check(cost), None

    return check, x


def test_sizing_picks_the_largest_fitting_candidate():
    check, x = _oracle(40_000)
    Cs, Ls = (4, 6, 8, 12, 16), (3, 5)
    res = size_to_budget(DARTS_V2, check, 10, (3, 16, 16), Cs, Ls)
    every = {(c, ly): measure_cost(NetworkCIFAR(c, 10, ly, DARTS_V2), x).params for c in Cs for ly in Ls}
    fitting = {k: v for k, v in every.items() if v <= 40_000}
    best = max(fitting, key=lambda k: fitting[k])
    assert (res.C, res.layers) == best and res.cost.params == fitting[best]
    assert res.cost.params <= 40_000 < max(every.values())
    assert all(t["ok"] == (t["params"] <= 40_000) for t in res.trials)
    C, layers, cost, *_ = res  # the (C, layers, cost) triple first
    assert (C, layers) == best


def test_sizing_raises_when_nothing_fits_and_falls_back_to_stride_two():
    check, _ = _oracle(500)
    with pytest.raises(BudgetUnreachableError, match=r"smallest candidate \(C=4, 3 cells"):
        size_to_budget(DARTS_V2, check, 10, (3, 16, 16), (4, 8), (3, 5))
    macs_budget = Budget(max_macs=200_000)
    x = torch.randn(2, 3, 16, 16)

    def mac_check(model):
        cost = measure_cost(model, x)
        return cost, macs_budget.check(cost), None

    res = size_to_budget(DARTS_V2, mac_check, 10, (3, 16, 16), (4, 8), (3,), stem_strides=(1, 2))
    assert res.stem_stride == 2 and res.cost.macs <= 200_000
    assert any(t["stem_stride"] == 1 and not t["ok"] for t in res.trials)
