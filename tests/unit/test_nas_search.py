"""Issue 18 for the DARTS search and eg-nas: alpha moves at a search's own step count (the step
size expressed per search), the random-genotype sampler covers the search space, the expected
latency of a mixed op is the softmax-weighted table latency, genotype stability."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from compress.errors import ConfigError
from compress.profiling.latency_model import ConvConfig
from compress.strategies.darts import Architect, NetworkCIFAR, SearchSchedule, SupernetSearch
from compress.strategies.darts.genotype import alpha_entropy, genotype_stability, random_genotypes
from compress.strategies.darts.latency import (LatencyTerm, ParamsTerm, expected_latency, op_latency_matrix,
                                               op_params_matrix, sum_terms)
from compress.strategies.darts.ops import EGNAS_PRIMITIVES, PRIMITIVES
from compress.strategies.darts.search import SearchNetwork
from compress.strategies.config_tree import ConfigDeprecationWarning, config_from_dict, key_config, replace_config
from compress.strategies.eg_nas import EGNASConfig, EGNASSearch, final_key

UNIFORM = math.log(len(EGNAS_PRIMITIVES))  # 1.9459 nats
#: DARTS: how far below uniform the entropy must fall after 4 Adam steps of lr 3e-4 * 19,550 / 4
DARTS_MARGIN = 0.25


def _data(n: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = ((x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()).clamp_max(2)
    return TensorDataset(x, y), DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16)


def _supernet(seed: int = 0) -> SearchNetwork:
    """3 cells: a normal cell (C = 4) then two reduction cells."""
    torch.manual_seed(seed)
    return SearchNetwork(4, 3, 3, primitives="eg-nas", partial_channels=1, pool_bn=False,
                         generator=torch.Generator().manual_seed(seed))


class DictTable:
    """A hand-built latency table: ms of a conv = kernel area x output channels / 100 (/ stride^2)."""

    def __init__(self) -> None:
        self.calls = 0

    def latency(self, cfg) -> float:
        self.calls += 1
        assert isinstance(cfg, ConvConfig)
        return cfg.k * cfg.k * cfg.cout / 100.0 / cfg.stride ** 2


# --------------------------------------------------------------------------- alpha moves: DARTS architect


def _darts_search(reference_steps: int | None) -> float:
    ds, val = _data()
    model = _supernet()
    arch = Architect(model, lr=3e-4, reference_steps=reference_steps)
    schedule = SearchSchedule(epochs=2, warmup_epochs=0, batch_size=16, lr=0.05, lr_min=0.0, momentum=0.9,
                              weight_decay=3e-4, grad_clip=5.0, max_steps_per_epoch=None, val_batches=1)
    search = SupernetSearch(schedule, model, TensorDataset(*ds[:32]), TensorDataset(*ds[32:]), val, 0, arch)
    out = search.run()
    assert out.plan["arch_updates"] == 4 == search.planned_updates()  # 2 epochs x 32 / 16 batches
    return alpha_entropy(torch.cat([out.alphas_normal, out.alphas_reduce]))


def test_darts_alpha_stays_uniform_at_the_literal_lr_and_moves_with_the_lr_matched_to_the_steps():
    # 4 Adam steps of lr 3e-4 move a logit by at most ~0.0012: the diagnosis of issue 18
    assert _darts_search(None) > UNIFORM - 1e-3
    # lr * 19,550 / 4 (DARTS' CIFAR-10 step count, §3.1.1): the paper's total travel in 4 steps
    assert _darts_search(19_550) < UNIFORM - DARTS_MARGIN


def test_architect_plan_scales_the_adam_step():
    model = _supernet()
    arch = Architect(model, lr=3e-4, reference_steps=1000)
    plan = arch.plan(10)
    assert plan["arch_lr_effective"] == pytest.approx(0.03) == arch.optimizer.param_groups[0]["lr"]
    same = Architect(_supernet(), lr=3e-4)
    assert same.plan(10)["arch_lr_effective"] == 3e-4 == same.optimizer.param_groups[0]["lr"]
    with pytest.raises(ConfigError, match="reference_steps"):
        Architect(_supernet(), reference_steps=0)


# --------------------------------------------------------------------------- alpha moves: eg-nas CMA-ES

TINY = {"search": dict(C=4, layers=2, partial_channels=1, epochs=3, warmup_epochs=1, batch_size=16, max_steps_per_epoch=1,
                       val_batches=1),
        "es": dict(batch_size=16, restarts=2, popsize=4)}


def _eg_search(over: dict | None = None, **kw) -> EGNASSearch:
    ds, val = _data()
    return EGNASSearch(replace_config(EGNASConfig(**TINY), **(over or {})), ds, val, 3, (3, 8, 8), 0, **kw)


@pytest.fixture(scope="module")
def eg_runs():
    """The tiny eg-nas search (2 CMA-ES updates): xi per update (the literal), xi per search
    (xi_reference_updates=35), and the latter with a heavy latency term."""
    per_search = {"es": {"xi_reference_updates": 35}}
    return {"literal": _eg_search().run(), "per_search": _eg_search(per_search).run(),
            "latency": _eg_search({**per_search, "latency_weight": 20.0}, latency_table=DictTable()).run()}


#: eg-nas: the entropy drop after 2 updates with xi_effective = 10.5 (measured 0.115 nats at seed 0)
EG_MARGIN = 0.08


def test_egnas_alpha_stays_uniform_per_update_and_moves_with_the_paper_total_step(eg_runs):
    literal, moved = eg_runs["literal"], eg_runs["per_search"]
    assert literal.plan == {"arch_updates": 2, "xi": 0.6, "xi_effective": 0.6, "xi_reference_updates": None}
    assert literal.history[-1]["alpha_entropy"] > UNIFORM - 0.02
    # the paper's T - W = 35 updates of xi = 0.6 spread over this search's 2: xi_effective = 10.5
    assert moved.plan["xi_effective"] == pytest.approx(0.6 * 35 / 2)
    assert moved.history[-1]["xi_effective"] == pytest.approx(10.5)
    assert moved.history[-1]["alpha_entropy"] < UNIFORM - EG_MARGIN
    assert moved.history[0]["alpha_entropy"] > UNIFORM - 1e-3  # warm-up: untouched


def test_egnas_config_validates_the_new_fields():
    for bad, field in [({"es": {"xi_reference_updates": 0}}, "es.xi_reference_updates"),
                       ({"search": {"arch_reference_steps": -1}}, "search.arch_reference_steps"),
                       ({"objective": "speed"}, "objective"), ({"latency_weight": -0.1}, "latency_weight"),
                       ({"stability_seeds": 1}, "stability_seeds")]:
        with pytest.raises(ConfigError, match=field):
            EGNASConfig(**bad)
    assert EGNASConfig().objective == "auto" and EGNASConfig().es.xi_reference_updates is None


# --------------------------------------------------------------------------- random-genotype sampler


@pytest.mark.parametrize("primitives", ["eg-nas", "darts"])
def test_random_genotypes_cover_the_space_and_are_valid(primitives):
    k = 300
    gs = random_genotypes(k, seed=3, primitives=primitives)
    usable = [p for p in (EGNAS_PRIMITIVES if primitives == "eg-nas" else PRIMITIVES) if p != "none"]
    assert len(gs) == k
    for kind in ("normal", "reduce"):
        ops_seen: set[str] = set()
        pairs_seen: dict[int, set[tuple[int, int]]] = {i: set() for i in range(4)}
        for g in gs:
            assert getattr(g, f"{kind}_concat") == (2, 3, 4, 5)
            for i, node in enumerate(g.nodes(kind)):
                ins = tuple(idx for _, idx in node)
                assert len(node) == 2 and ins[0] < ins[1] <= i + 1  # 2 distinct earlier states
                pairs_seen[i].add(ins)
                ops_seen.update(op for op, _ in node)
        assert ops_seen == set(usable)  # 'none' never, every real op
        for i in range(4):
            assert pairs_seen[i] == set(combinations(range(i + 2), 2))
    # deterministic given the seed; another seed gives other genotypes
    assert random_genotypes(5, seed=3, primitives=primitives) == gs[:5]
    assert random_genotypes(5, seed=4, primitives=primitives) != gs[:5]
    # a sample builds and runs as an evaluation network
    net = NetworkCIFAR(4, 3, 2, gs[0], in_channels=3).eval()
    assert net(torch.zeros(1, 3, 8, 8)).shape == (1, 3)


def test_random_genotypes_reject_bad_arguments():
    with pytest.raises(ConfigError, match="k must"):
        random_genotypes(0, seed=0)
    with pytest.raises(ConfigError):
        random_genotypes(2, seed=0, primitives=("none", "none"))


def test_genotype_stability():
    a = torch.zeros(14, 7)
    a[:, 3] = 1.0
    b = a.clone()
    b[:7, 3], b[:7, 5] = 0.0, 1.0  # 7 of the 14 normal edges change their argmax
    assert genotype_stability([(a, a), (a, a), (a, a)]) == 1.0
    assert genotype_stability([(a, a), (b, a), (a, a)]) == pytest.approx(21 / 28)
    assert genotype_stability([(a, a)]) is None
    with pytest.raises(ConfigError):
        genotype_stability([(a, a), (torch.zeros(14, 8), a)])


# --------------------------------------------------------------------------- expected latency


def test_expected_latency_of_a_mixed_op_is_the_softmax_weighted_table_latency():
    model = _supernet()
    table = DictTable()
    lat_n, lat_r = op_latency_matrix(model, torch.zeros(2, 3, 8, 8), table)
    assert lat_n.shape == lat_r.shape == (14, 7)
    col = {p: i for i, p in enumerate(EGNAS_PRIMITIVES)}
    # ops without a conv cost 0 ms; a 5x5 sep conv costs more than a 3x3 one on this table
    for name in ("avg_pool_3x3", "max_pool_3x3"):
        assert (lat_n[:, col[name]] == 0).all()
    assert (lat_n[:, col["sep_conv_5x5"]] > lat_n[:, col["sep_conv_3x3"]]).all()
    # edge 2 (node 3's input from state 0) of the normal cell, at C = 4, stride 1: by hand
    c = 4
    sep3 = 2 * (9 * c + c) / 100  # two (3x3 depthwise + 1x1 pointwise) blocks
    assert lat_n[2, col["sep_conv_3x3"]].item() == pytest.approx(sep3)
    # the expectation under softmax(alpha), for one edge and for the whole supernet
    g = torch.Generator().manual_seed(1)
    a_n, a_r = torch.randn(14, 7, generator=g, dtype=torch.float64), torch.randn(14, 7, generator=g, dtype=torch.float64)
    p = torch.softmax(a_n[2], -1)
    by_hand = sum(float(p[o]) * float(lat_n[2, o]) for o in range(7))
    one_edge = torch.zeros(14, 7, dtype=torch.float64)
    one_edge[2] = lat_n[2]
    assert expected_latency(a_n, a_r, one_edge, torch.zeros(14, 7, dtype=torch.float64)).item() == pytest.approx(by_hand)
    total = expected_latency(a_n, a_r, lat_n, lat_r).item()
    assert total == pytest.approx(float((torch.softmax(a_n, -1) * lat_n).sum() + (torch.softmax(a_r, -1) * lat_r).sum()))
    # the term: weight at uniform alpha, and its gradient lowers the logits of slow ops
    term = LatencyTerm(lat_n, lat_r, weight=0.5)
    assert term(torch.zeros(14, 7), torch.zeros(14, 7)).item() == pytest.approx(0.5)
    z = torch.zeros(14, 7, requires_grad=True)
    term(z, torch.zeros(14, 7)).backward()
    assert z.grad[2, col["sep_conv_5x5"]] > 0 > z.grad[2, col["skip_connect"]]
    with pytest.raises(ConfigError):
        expected_latency(a_n, a_r, lat_n[:, :3], lat_r)


def test_params_term_is_the_softmax_expectation_of_each_candidate_ops_parameter_count():
    model = _supernet()
    par_n, par_r = op_params_matrix(model)
    assert par_n.shape == par_r.shape == (14, 7)
    col = {p: i for i, p in enumerate(EGNAS_PRIMITIVES)}
    # each entry is the op's own parameter count, summed over the cells of its type
    for e, o in ((2, col["sep_conv_3x3"]), (5, col["dil_conv_5x5"]), (0, col["max_pool_3x3"])):
        by_hand = sum(sum(q.numel() for q in cell.edges[e].ops[o].parameters())
                      for cell in model.cells if not cell.reduction)
        assert par_n[e, o].item() == by_hand
    assert (par_n[:, col["sep_conv_5x5"]] > par_n[:, col["sep_conv_3x3"]]).all()
    assert (par_n[:, col["skip_connect"]] == 0).all()  # identity at stride 1
    term = ParamsTerm(par_n, par_r, weight=0.3)
    assert term(torch.zeros(14, 7), torch.zeros(14, 7)).item() == pytest.approx(0.3)  # weight at uniform alpha
    g = torch.Generator().manual_seed(2)
    a_n, a_r = torch.randn(14, 7, generator=g, dtype=torch.float64), torch.randn(14, 7, generator=g, dtype=torch.float64)
    want = float((torch.softmax(a_n, -1) * par_n).sum() + (torch.softmax(a_r, -1) * par_r).sum())
    assert term.expected_params(a_n, a_r).item() == pytest.approx(want)
    z = torch.zeros(14, 7, requires_grad=True)
    term(z, torch.zeros(14, 7)).backward()
    assert z.grad[2, col["sep_conv_5x5"]] > 0 > z.grad[2, col["skip_connect"]]  # lowers the heavy op's logit
    # several terms add up; None terms drop out
    lat = LatencyTerm(*op_latency_matrix(model, torch.zeros(1, 3, 8, 8), DictTable()), weight=0.5)
    both = sum_terms(lat, None, term)
    assert both(a_n, a_r).item() == pytest.approx(lat(a_n, a_r).item() + term(a_n, a_r).item())
    assert sum_terms(None, term) is term and sum_terms(None, None) is None
    with pytest.raises(ConfigError, match="ParamsTerm: the weight must be >= 0"):
        ParamsTerm(par_n, par_r, weight=-1.0)


def test_latency_term_pushes_both_searches_toward_fast_ops(eg_runs):
    col = {p: i for i, p in enumerate(EGNAS_PRIMITIVES)}
    slow = [col[p] for p in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")]

    def slow_mass(out) -> float:
        return float(torch.softmax(out.alphas_reduce, -1)[:, slow].sum(-1).mean())  # TINY: 2 reduction cells

    assert slow_mass(eg_runs["latency"]) < slow_mass(eg_runs["per_search"])
    over = {"search": {"alpha_update": "gradient", "arch_reference_steps": 19_550}, "latency_weight": 5.0}
    fast = _eg_search(over, latency_table=DictTable()).run()
    plain = _eg_search({**over, "latency_weight": 0.0}, latency_table=DictTable()).run()
    assert slow_mass(fast) < slow_mass(plain) and slow_mass(fast) < 4 / 7


# --------------------------------------------------------------------------- checkpoints of earlier runs


def test_egnas_checkpoint_keys_of_earlier_runs_survive_the_new_fields():
    """The fields added by issue 18 (es.xi_reference_updates, search.arch_reference_steps, objective,
    latency_weight, stability_seeds) and the nested config leave the keys of earlier runs as they were."""
    ds = TensorDataset(torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                       torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(0)))
    cfg = EGNASConfig(search=dict(C=4, layers=2, partial_channels=1, epochs=2, warmup_epochs=1, batch_size=8),
                      es=dict(batch_size=8, restarts=1, popsize=4))

    def key(c: EGNASConfig) -> str:
        return EGNASSearch(c, ds, None, 3, (3, 8, 8), seed=0).hash

    old_search = "62e83ab047b34d7df492"  # computed by the code before issue 18 (commit d19a5b6^)
    assert key(cfg) == old_search
    fin_extra = {"seed": 0, "genotype": {"a": 1}, "budget": {"b": 2}, "num_classes": 3, "input_shape": [3, 8, 8]}
    assert final_key(cfg, fin_extra) == "2b34e95dc119bd8aa3bc"  # likewise
    for changed in ({"es": {"xi_reference_updates": 35}}, {"search": {"arch_reference_steps": 19_550}},
                    {"objective": "size"}, {"latency_weight": 0.5}):
        assert key(replace_config(cfg, **changed)) != old_search, changed
    # the extra searches of stability_seeds leave the run's own search and retrain as they are: same keys
    assert key(replace_config(cfg, stability_seeds=2)) == old_search
    assert final_key(replace_config(cfg, stability_seeds=2), fin_extra) == final_key(cfg, fin_extra)
    # a latency term keys the search by its reference latency
    assert EGNASSearch(cfg, ds, None, 3, (3, 8, 8), seed=0, latency_table=DictTable()).hash != old_search
    # an earlier report.json's config (flat, without the new fields) loads with their defaults
    old_cfg = key_config(cfg, "search", "es", "sizing", "final", top_level=True, skip=frozenset({"stability_seeds"}))
    assert "search_C" in old_cfg and "xi_reference_updates" not in old_cfg and "objective" not in old_cfg
    with pytest.warns(ConfigDeprecationWarning):
        assert config_from_dict(EGNASConfig, old_cfg) == cfg
