"""Issue 18, parts 2 and 4: GAL that prunes selectively (per-cell mask scale), lambda searched toward
the budget, the latency-weighted GAL penalty, and grow's latency ranking."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from compress.budgets import Budget, measure_cost
from compress.errors import ConfigError
from compress.strategies.base import StrategyContext
from compress.strategies.config_tree import replace_config
from compress.strategies.darts import DARTS_V2, NetworkCIFAR
from compress.strategies.darts_gal import (
    DartsGal,
    DartsGalConfig,
    GALSettings,
    GALTrainer,
    MaskFISTA,
    budget_ratio,
    kept_nodes,
    mask_penalty,
    node_latency_weights,
    prune_network,
)
from compress.strategies.grow import Decision, PricedSplit, rank_by_cost
from compress.testing import randomise_batchnorm


def _toy(n: int = 64, size: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = ((x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()).clamp_max(classes - 1)
    return TensorDataset(x, y)


def _tiny_baseline() -> NetworkCIFAR:
    torch.manual_seed(0)
    base = NetworkCIFAR(4, 3, 3, DARTS_V2, stem_stride=2)  # 3 cells x 4 nodes, 2,403 params
    randomise_batchnorm(base)
    return base.eval()


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in net.named_parameters() if not n.endswith("node_mask"))


# --------------------------------------------------------------------------- selective GAL


def test_sparsity_is_monotone_and_selective_in_lambda():
    base, ds = _tiny_baseline(), _toy(64)
    zeros = []
    for lam in (0.5, 3.0, 6.0):
        s = GALSettings(epochs=2, batch_size=16, n_critic=1, mask_step=1, mask_lr=0.05, lam=lam, grad_clip=5.0, seed=0)
        assert s.mask_scale == "cell"
        res = GALTrainer(base, ds, 3, s).run()
        flat = [v for row in res.masks for v in row]
        assert min(flat) >= 0.0
        assert all(max(row) == pytest.approx(1.0) for row in res.masks)  # each cell's unit is its strongest node
        zeros.append(sum(v == 0.0 for v in flat))
    # measured: 0, 4 and 9 of 12 (with mask_scale="free" every mask of a cell falls to 0 together)
    assert zeros == sorted(zeros) and zeros[0] < zeros[1] < zeros[2]
    assert 0 < zeros[1] < 12 and zeros[2] < 12  # some but not all nodes removed: selective


def test_cell_scale_keeps_the_function_of_a_bn_fed_cell():
    """Dividing a (non-last) cell's masks by a common factor leaves the train-mode output almost
    unchanged (the next cells' preprocess BatchNorms cancel it; the skip edges inside the cell do not)."""
    base, ds = _tiny_baseline(), _toy(32)
    tr = GALTrainer(base, ds, 3, GALSettings(epochs=1, batch_size=16, n_critic=1, mask_step=1, lam=0.5))
    x = ds.tensors[0][:16]
    tr.G.train()
    with torch.no_grad():
        tr.masks[0].copy_(torch.tensor([0.5, 0.4, 0.3, 0.2]))
        ref = tr.G(x)
        tr.fix_mask_scale()
        out = tr.G(x)
        assert torch.allclose(tr.masks[0].detach(), torch.tensor([1.0, 0.8, 0.6, 0.4]))
        tr.masks[0].copy_(torch.tensor([1.0, 0.4, 0.3, 0.2]))  # the same change to one node only
        other = tr.G(x)
    uniform, single = (out - ref).abs().max(), (other - ref).abs().max()
    assert uniform < 0.1 * ref.abs().max() and uniform < 0.5 * single


# --------------------------------------------------------------------------- lambda search


def _ctx(max_params: int, seed: int = 0) -> StrategyContext:
    from compress.data import as_task_data
    from compress.profiling import Target

    train = DataLoader(_toy(64), batch_size=16, shuffle=False)
    val = DataLoader(_toy(16, seed=9), batch_size=16)
    task = as_task_data({"train": train, "val": val})
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
    x = next(iter(val))[0][:2]
    return StrategyContext(model=teacher, teacher=teacher, data=task, budget=Budget(max_params=max_params),
                           teacher_cost=measure_cost(teacher, x), example_inputs=x, target=Target(), seed=seed,
                           out_dir=None, progress=lambda *a: None)


SEARCH = dict(search=dict(genotype="DARTS_V2"),
              gal=dict(epochs=2, batch_size=16, n_critic=1, mask_step=1, mask_lr=0.05, grad_clip=5.0,
                       lambda_search_probes=6, lambda_search_start=0.3, lambda_search_tolerance=0.1))


def test_lambda_search_lands_within_tolerance_of_a_params_target():
    base, ds = _tiny_baseline(), _toy(64)
    # the unpruned tiny stack has 2,403 params; measured probes: lambda 0.3 -> 2,403, 1.2 -> 2,355 (1 node
    # removed), 4.8 -> 1,167 (9), then the bracket's geometric mean 2.4 -> 1,567 (5), inside [1,485, 1,650]
    target = 1_650
    cfg = DartsGalConfig(**SEARCH)
    ctx = _ctx(target)
    out = DartsGal(cfg)._lambda_search(ctx, cfg, base, ds, 3, None, None, "")
    probes = out["probes"]
    assert 1 <= len(probes) <= cfg.gal.lambda_search_probes
    assert out["within_tolerance"] is True
    chosen = probes[out["chosen_probe"]]
    assert 0.9 * target <= chosen["params"] <= target and chosen["lambda"] == out["lambda"]
    assert chosen["nodes_removed"] > 0 and chosen["ratio"] == pytest.approx(chosen["params"] / target)
    # every probe's record is what the report shows; the first is lambda_search_start
    assert probes[0]["lambda"] == cfg.gal.lambda_search_start
    assert {"lambda", "params", "macs", "nodes_removed", "masks_removed", "ratio", "ok"} <= set(probes[0])
    # the kept trainer's generator is the probe: pruning it gives the recorded params
    G = out["_trainer"].G
    assert _params(prune_network(G, kept_nodes(G), keep_masks=False).net) == chosen["params"]
    assert [p["lambda"] for p in probes] == pytest.approx([0.3, 1.2, 4.8, 2.4])  # grow x4, then bisect


def test_budget_ratio_and_search_config_validation():
    from compress.budgets import Cost

    cost = Cost(macs=300, params=50)
    assert budget_ratio(Budget(max_params=100, max_macs=200), cost, None) == pytest.approx(1.5)
    assert budget_ratio(Budget(max_latency_ms=2.0), cost, 1.0) == pytest.approx(0.5)
    for bad, field in (({"gal": {"lambda_search_probes": 0}}, "gal.lambda_search_probes"),
                       ({"gal": {"lambda_search_tolerance": 1.0}}, "gal.lambda_search_tolerance"),
                       ({"gal": {"lambda_search_start": 0.0}}, "gal.lambda_search_start"),
                       ({"objective": "speed"}, "objective"), ({"gal": {"mask_scale": "global"}}, "gal.mask_scale")):
        with pytest.raises(ConfigError, match=field):
            DartsGalConfig(**bad)
    assert DartsGalConfig().gal.sparse_lambda is None
    assert DartsGalConfig(gal={"sparse_lambda": 0.2}).gal.sparse_lambda == 0.2


# --------------------------------------------------------------------------- latency-weighted penalty


def test_latency_weighted_penalty_is_the_weighted_l1():
    masks = [torch.tensor([1.0, -0.5, 0.25, 0.0]), torch.tensor([0.5, 0.5, 2.0, 1.0])]
    w = [torch.tensor([2.0, 1.0, 0.0, 3.0]), torch.tensor([0.5, 1.5, 1.0, 1.0])]
    hand = (2 * 1 + 1 * 0.5 + 0 + 0) + (0.25 + 0.75 + 2.0 + 1.0)
    assert float(mask_penalty(masks, w)) == pytest.approx(hand)
    assert float(mask_penalty(masks)) == pytest.approx(1.75 + 4.0)
    with pytest.raises(ConfigError):
        mask_penalty(masks, w[:1])

    # the trainer's L1 term and its proximal step use the weights
    base, ds = _tiny_baseline(), _toy(32)
    weights = ((2.0, 1.0, 0.0, 1.0), (1.0, 1.0, 1.0, 1.0), (0.5, 0.5, 1.5, 1.5))
    s = GALSettings(epochs=1, batch_size=16, n_critic=1, mask_step=1, mask_lr=0.1, lam=0.5, mask_weights=weights,
                    mask_scale="free")
    tr = GALTrainer(base, ds, 3, s)
    vals = [torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0.2, 0.4, 0.6, 0.8])]
    with torch.no_grad():
        for m, v in zip(tr.masks, vals):
            m.copy_(v)
    x, idx = tr.data.next()
    rec = tr.g_step(x, idx)
    assert rec["l1"] == pytest.approx(sum(float((torch.tensor(w) * v).sum()) for w, v in zip(weights, vals)), rel=1e-6)
    # soft-threshold lr * lambda * w per mask
    f = MaskFISTA([torch.nn.Parameter(torch.tensor([0.04, 0.04]))], lr=0.1, lam=0.5,
                  weights=[torch.tensor([1.0, 0.5])])  # thresholds 0.05 and 0.025
    f.step()
    assert f.masks[0].detach().tolist() == pytest.approx([0.0, 0.015])
    with pytest.raises(ConfigError, match="mask_weights"):
        GALTrainer(base, ds, 3, GALSettings(epochs=1, mask_weights=((1.0,),)))


class _ConvTable:
    """A hand-built per-layer table: a conv's 'latency' is its MACs per output pixel / 1000 ms."""

    def latency(self, cfg):
        return cfg.cin * cfg.cout * cfg.k * cfg.k / max(cfg.groups, 1) / 1000.0


def test_node_latency_weights_follow_the_table_and_keep_lambda_scale():
    base = _tiny_baseline()
    x = torch.randn(2, 3, 8, 8)
    w = node_latency_weights(base, x, _ConvTable(), floor=0.0)
    flat = [v for row in w for v in row]
    assert len(w) == 3 and all(len(r) == 4 for r in w)
    assert sum(flat) / len(flat) == pytest.approx(1.0)  # mean 1: lambda keeps its scale
    # by hand: node j's weight is proportional to the table latencies of its in-edge convs
    from compress.profiling.latency_model import layer_configs

    cfgs = layer_configs(base, x)
    raw = [[sum(_ConvTable().latency(c) for n, c in cfgs if n.startswith(f"cells.{ci}.edges.n{j + 2}_"))
            for j in range(4)] for ci in range(3)]
    mean = sum(v for r in raw for v in r) / 12
    assert [list(r) for r in w] == [pytest.approx([v / mean for v in r]) for r in raw]
    assert any(v == 0.0 for v in flat)  # DARTS_V2's reduce cell has nodes made of pools/skips only
    floored = node_latency_weights(base, x, _ConvTable(), floor=0.2)
    assert min(v for r in floored for v in r) > 0.0
    assert sum(v for r in floored for v in r) / 12 == pytest.approx(1.0)


# --------------------------------------------------------------------------- grow: gain per predicted ms


def test_grow_ranks_candidates_by_gain_per_ms_and_per_mac():
    # A: smaller gain (S = 2) but cheap in time (1 ms); B: larger gain (S = 3) and MAC-cheap but slow (3 ms)
    a = PricedSplit(Decision("deepen", 1, 2, n_new=3), gain=2.0, delta_ms=1.0, delta_macs=100.0)
    b = PricedSplit(Decision("widen", 1, 3, q_k=2), gain=3.0, delta_ms=3.0, delta_macs=50.0)
    assert a.gain_per_ms == pytest.approx(2.0) and b.gain_per_ms == pytest.approx(1.0)
    assert [p.decision.dst for p in rank_by_cost([b, a], per="ms")] == [2, 3]  # per ms: A first
    assert [p.decision.dst for p in rank_by_cost([a, b], per="macs")] == [3, 2]  # per MAC: B first
    assert max([a, b], key=lambda p: p.gain) is b  # Eq. 5 alone would split B
    tie = PricedSplit(Decision("deepen", 1, 4, n_new=3), gain=4.0, delta_ms=2.0, delta_macs=100.0)
    assert [p.decision.dst for p in rank_by_cost([a, tie], per="ms")] == [4, 2]  # equal per ms: per MAC decides
    with pytest.raises(ConfigError):
        rank_by_cost([a], per="joules")


# --------------------------------------------------------------------------- through run(): report keys, checkpoints


def _run_ctx(tmp_path, progress=None, max_params: int = 5_000) -> StrategyContext:
    from compress.data import as_task_data
    from compress.profiling import Target

    train = DataLoader(_toy(48), batch_size=16, shuffle=False)
    val = DataLoader(_toy(16, seed=9), batch_size=16)
    task = as_task_data({"train": train, "val": val})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
    x = next(iter(val))[0][:2]
    return StrategyContext(model=teacher, teacher=teacher, data=task, budget=Budget(max_params=max_params),
                           teacher_cost=measure_cost(teacher, x), example_inputs=x, target=Target(), seed=0,
                           out_dir=tmp_path, progress=progress or (lambda *a: None))


# DARTS_V2, 3 cells on 4x4 maps: C=8 has 7,331 params, sized to 2 x the 5,000 budget
RUN = dict(search=dict(genotype="DARTS_V2"),
           sizing=dict(candidates_C=(4, 6, 8), candidates_layers=(3,), stem_strides=(2,), size_margin=2.0),
           baseline=dict(epochs=1),
           gal=dict(epochs=2, batch_size=16, n_critic=1, mask_step=1, mask_lr=0.1, lambda_search_probes=3,
                    lambda_search_start=1.0),
           final=dict(epochs=1))


def test_lambda_search_through_run_is_reported_and_resumes_from_probe_checkpoints(tmp_path):
    ref = DartsGal(RUN).run(_run_ctx(tmp_path / "ref"))
    gal = ref.info["gal"]
    ls = gal["lambda_search"]
    assert 1 <= len(ls["probes"]) <= 3 and gal["lambda"] >= ls["lambda"]  # the closing loop may raise lambda
    assert gal["penalty"]["objective"] == "size" and ref.info["pruned"]["params"] <= 5_000
    assert ls["final_ratio"] == pytest.approx(ref.info["pruned"]["params"] / 5_000)
    assert ls["final_within_tolerance"] == (0.9 <= ls["final_ratio"] <= 1.0) and isinstance(ls["choice"], str)
    assert all(not p["resumed"] for p in ls["probes"])
    ck = tmp_path / "ref" / "checkpoints" / "darts-gal"
    assert {f"gal-probe-{n}.json" for n in range(len(ls["probes"]))} <= {p.name for p in ck.iterdir()}

    class Killed(Exception):
        pass

    def killer(phase, done, total, info):
        if phase == "lambda-search" and done == 1:  # after the first probe was committed
            raise Killed

    with pytest.raises(Killed):
        DartsGal(RUN).run(_run_ctx(tmp_path / "run", killer))
    out = DartsGal(RUN).run(_run_ctx(tmp_path / "run"))
    probes = out.info["gal"]["lambda_search"]["probes"]
    assert probes[0]["resumed"] is True
    strip = [{k: v for k, v in p.items() if k != "resumed"} for p in probes]
    assert strip == [{k: v for k, v in p.items() if k != "resumed"} for p in ls["probes"]]
    assert out.info["nodes_kept"] == ref.info["nodes_kept"]


def test_latency_objective_weights_the_masks_through_run(tmp_path, monkeypatch):
    import compress.profiling.latency_model as lm

    class Table(_ConvTable):
        def __init__(self, *a, **k):
            pass

        def save(self):
            return None

    monkeypatch.setattr(lm, "LayerLatencyTable", Table)  # no onnxruntime timing in a unit test
    cfg = replace_config(DartsGalConfig(**RUN), objective="latency", gal={"sparse_lambda": 2.0}, final={"epochs": 0})
    out = DartsGal(cfg).run(_run_ctx(tmp_path))
    pen = out.info["gal"]["penalty"]
    flat = [v for row in pen["weights"] for v in row]
    assert pen["objective"] == "latency" and len(pen["weights"]) == 3
    assert sum(flat) / len(flat) == pytest.approx(1.0) and min(flat) > 0.0  # floored at 5% of the mean
    assert "lambda_search" not in out.info["gal"]  # a given lambda: no search
    plain = DartsGal(cfg, objective="auto").run(_run_ctx(tmp_path / "plain"))
    assert plain.info["gal"]["penalty"] == {"objective": "size", "weights": None}
