"""DARTS-GAL faithfulness (ALGORITHMS.md §3(e)), pruning surgery, checkpoints and resume, end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from compress.budgets import Budget, measure_cost
from compress.errors import BudgetUnreachableError, ConfigError
from compress.strategies.base import StrategyContext, config_from_dict, config_to_dict
from compress.strategies.config_tree import ConfigDeprecationWarning, key_config, replace_config
from compress.strategies.darts import DARTS_V2, CellSpec, Genotype, NetworkCIFAR, build_from_arch
from compress.strategies.darts_gal import (
    DartsGal,
    DartsGalConfig,
    DartsSearch,
    Discriminator,
    GALSettings,
    GALTrainer,
    MaskFISTA,
    attach_masks,
    data_loss,
    discriminator_loss,
    draw_genotype,
    generator_adv_loss,
    kept_nodes,
    nodes_kept_markdown,
    nodes_kept_rows,
    prune_network,
    soft_threshold,
)
from compress.strategies.darts_gal.checkpoints import phase_key
from compress.strategies.darts_gal.config import DartsSearchConfig, GALConfig
from compress.testing import randomise_batchnorm

# the fast setting for compress() on 3x32x32 digits (also the registry contract config)
FAST = dict(
    search=dict(C=4, layers=3, stem_stride=2, epochs=1, batch_size=32, max_steps_per_epoch=2, val_batches=1),
    sizing=dict(candidates_C=(4, 6, 8), candidates_layers=(3,), stem_strides=(1, 2)),
    baseline=dict(epochs=1, max_steps_per_epoch=3),
    gal=dict(epochs=1, batch_size=32, max_g_steps_per_epoch=2, n_critic=5, mask_step=1, mask_lr=0.05,
             sparse_lambda=0.5),
    final=dict(epochs=1, max_steps_per_epoch=3),
)


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in net.named_parameters() if not n.endswith("node_mask"))


def _toy(n: int = 64, size: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = ((x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()).clamp_max(classes - 1)
    return TensorDataset(x, y)


# --------------------------------------------------------------------------- 5. masked == physically pruned


def test_masked_network_equals_its_physically_pruned_network():
    torch.manual_seed(0)
    net = NetworkCIFAR(4, 10, 5, DARTS_V2)  # reductions at cells 1 and 3 (0-based)
    randomise_batchnorm(net)
    net.eval()
    vals = [torch.rand(4, generator=torch.Generator().manual_seed(c)) * 0.8 + 0.2 for c in range(5)]
    vals[0][0] = 0.0  # (i) normal-cell node 0 (state 2) feeds the dil_conv of node 3
    vals[1][0] = 0.0  # (ii) reduce-cell nodes: node 0 is read by skip edges of nodes 1-3
    vals[1][2] = 0.0
    vals[2][:] = 0.0  # (iii) a whole cell emptied -> its strongest node is kept with mask 0
    vals[4][1] = 0.0  # last cell: the classifier loses columns
    vals[4][3] = 0.0
    attach_masks(net, values=vals)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
    keep = kept_nodes(net)
    assert [k.kept for k in keep] == [(1, 2, 3), (1, 3), (0,), (0, 1, 2, 3), (0, 2)]
    assert keep[2].forced == (0,) and not any(k.forced for i, k in enumerate(keep) if i != 2)
    res = prune_network(net, keep)
    assert res.exact and res.removed == 8
    with torch.no_grad():
        out = res.net(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # structure: removed nodes are None, their edges gone, consumers lose the matching input columns
    assert res.net.cells[0].spec.nodes[0] is None and res.net.cells[0].spec.nodes[3] == (("skip_connect", 0),)
    assert "n2_0" not in res.net.cells[0].edges and "n5_1" not in res.net.cells[0].edges
    C = [cell.C for cell in res.net.cells]
    for c in range(1, 5):
        assert res.net.cells[c].preprocess1.op[1].in_channels == len(keep[c - 1].kept) * C[c - 1]
    assert res.net.cells[3].preprocess0.op[1].in_channels == len(keep[1].kept) * C[1]  # after a normal cell
    assert res.net.cells[4].preprocess0.conv_1.in_channels == len(keep[2].kept) * C[2]  # FactorizedReduce
    assert res.net.classifier.in_features == 2 * C[4]
    assert _params(res.net) < _params(net)
    # the student form: same structure, masks off and ones
    plain = prune_network(net, keep, keep_masks=False).net
    assert not any(cell.apply_node_mask for cell in plain.cells)
    assert all(torch.equal(cell.node_mask, torch.ones(4)) for cell in plain.cells)
    assert build_from_arch(json.loads(json.dumps(plain.arch_dict()))).cell_specs == plain.cell_specs


def test_dead_cascade_is_removed_and_flagged_when_inexact():
    # node 3 reads only node 2 (and node 4 reads node 3 through a conv): zeroing node 2 kills both
    g = Genotype(
        (("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("skip_connect", 2),
         ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 0), ("max_pool_3x3", 1)),
        (2, 3, 4, 5),
        DARTS_V2.reduce, DARTS_V2.reduce_concat,
    )
    torch.manual_seed(0)
    net = NetworkCIFAR(4, 10, 3, g)
    randomise_batchnorm(net)
    net.eval()
    vals = [torch.ones(4) for _ in range(3)]
    vals[0][0] = 0.0
    attach_masks(net, values=vals)
    keep = kept_nodes(net)
    assert keep[0].kept == (2, 3) and keep[0].cascaded == (1,) and keep[0].inexact == (1,)
    res = prune_network(net, keep)
    assert not res.exact  # node 4 = sep_conv(node 3) + ...: op(0) is a BN shift, not zero
    assert res.net.cells[0].spec.nodes[2] == (("sep_conv_3x3", 1),)
    x = torch.randn(2, 3, 8, 8)
    res.net(x)  # well formed


# --------------------------------------------------------------------------- 2. + 7. G == B at step 0; B frozen


def test_generator_equals_baseline_at_step_0_and_baseline_is_untouched():
    torch.manual_seed(0)
    base = NetworkCIFAR(4, 3, 3, DARTS_V2, stem_stride=2)
    randomise_batchnorm(base)
    base.eval()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tr = GALTrainer(base, _toy(32), 3, GALSettings(epochs=1, batch_size=16, n_critic=2, mask_step=1, lam=0.5))
    x = _toy(8, seed=3).tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(tr.G.eval()(x), base(x), rtol=0, atol=0)
        assert float(data_loss(base(x), tr.G(x))) == 0.0
    assert all(cell.apply_node_mask for cell in tr.G.cells)
    tr.run()
    assert tr.g_steps == 2 and tr.fista.steps == 2
    after = base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the baseline changed during GAL"
    assert not base.training and not any(p.requires_grad for p in base.parameters())
    for net in (tr.G, tr.D, base):  # back on the CPU in float32 and the default layout after the run
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous() for p in net.parameters())
    assert not torch.equal(tr.G.cells[0].preprocess1.op[1].weight, base.cells[0].preprocess1.op[1].weight)


# --------------------------------------------------------------------------- 3. proximal step


def test_soft_threshold_and_fista_proximal_step():
    v = torch.tensor([-0.3, 0.05, -0.05, 0.5])
    torch.testing.assert_close(soft_threshold(v, 0.1), torch.tensor([-0.2, 0.0, 0.0, 0.4]))
    m = torch.nn.Parameter(torch.tensor([1.0, 0.2, 0.5, 0.03]))
    opt = MaskFISTA([m], lr=0.1, lam=0.5)  # threshold lr * lambda = 0.05
    m.grad = torch.tensor([0.0, 10.0, -1.0, 0.0])
    opt.step()  # first call: no momentum (GAL fista.py initialises its state)
    torch.testing.assert_close(m.detach(), torch.tensor([0.95, 0.0, 0.55, 0.0]))
    assert float(m.detach()[3]) == 0.0 and not torch.signbit(m.detach()).any()  # |0.03| <= 0.05 -> exactly 0, no -0.0
    m.grad = torch.zeros(4)
    opt.step()  # t: 1 -> 1.618, momentum (t - 1) / t' = 0
    torch.testing.assert_close(m.detach(), torch.tensor([0.90, 0.0, 0.50, 0.0]))
    prev, cur = torch.tensor([0.95, 0.0, 0.55, 0.0]), m.detach().clone()
    t1 = (1 + math.sqrt(5)) / 2
    t2 = (1 + math.sqrt(1 + 4 * t1 * t1)) / 2
    opt.step()  # t: 1.618 -> 2.194, momentum 0.282
    y = cur + (t1 - 1) / t2 * (cur - prev)
    torch.testing.assert_close(m.detach(), soft_threshold(y, 0.05).clamp_min(0))
    assert float(m.detach()[0]) == pytest.approx(0.9 + 0.2818 * (0.9 - 0.95) - 0.05, abs=1e-4)
    assert float(m.detach().min()) >= 0.0


def test_l1_drives_masks_down_and_sparsity_grows_with_lambda():
    torch.manual_seed(0)
    base = NetworkCIFAR(4, 3, 3, DARTS_V2, stem_stride=2)
    randomise_batchnorm(base)
    base.eval()
    ds = _toy(64)
    zeros, l1 = [], []
    for lam in (1e-2, 0.5, 1.0):
        # the paper's absolute ||m||_1 (mask_scale="free"); the per-cell scale is tested in test_gal_lambda.py
        s = GALSettings(epochs=2, batch_size=16, n_critic=1, mask_step=1, mask_lr=0.05, lam=lam, grad_clip=5.0, seed=0,
                        mask_scale="free")
        res = GALTrainer(base, ds, 3, s).run()
        flat = [v for row in res.masks for v in row]
        assert min(flat) >= 0.0
        zeros.append(sum(v == 0.0 for v in flat))
        l1.append(sum(flat))
    assert zeros[0] == 0 and zeros[0] <= zeros[1] <= zeros[2] == 12
    assert l1[0] > l1[1] > l1[2] and l1[0] < 12.0  # every run moved the masks down from 12 x 1.0


# --------------------------------------------------------------------------- 6. discriminator, losses, 5:1


def test_discriminator_shape_and_loss_signs():
    d = Discriminator(10, generator=torch.Generator().manual_seed(0))
    lins = [m for m in d.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lins] == [(10, 128), (128, 256), (256, 128), (128, 1)]
    assert len(d.net) == 4  # no activations between the layers (GAL code)
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in lins)
    assert 0.005 < float(lins[1].weight.detach().std()) < 0.015
    assert d(torch.randn(5, 10)).shape == (5,)
    assert sum(isinstance(m, torch.nn.ReLU) for m in Discriminator(10, activation="relu").net) == 3
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    bce = F.binary_cross_entropy_with_logits
    expect = bce(real, torch.ones(2)) + bce(fake, torch.zeros(2)) + bce(fake, torch.ones(2))
    torch.testing.assert_close(discriminator_loss(real, fake), expect)
    torch.testing.assert_close(generator_adv_loss(fake), bce(fake, torch.ones(2)))
    # signs: D is rewarded for calling real real; G is rewarded when D calls its output real
    assert discriminator_loss(real + 1, fake) < discriminator_loss(real, fake)
    assert generator_adv_loss(fake + 1) < generator_adv_loss(fake)
    torch.testing.assert_close(discriminator_loss(real, fake, "wgan"), fake.mean() - real.mean())
    torch.testing.assert_close(generator_adv_loss(fake, "wgan"), -fake.mean())
    f_b, f_g = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    assert float(data_loss(f_b, f_g)) == pytest.approx(0.5 * (1.0 + 4.0) / 2)  # Eq. 6
    with pytest.raises(ConfigError):
        discriminator_loss(real, fake, "hinge")


@pytest.mark.parametrize("gan", ["log", "wgan"])
def test_five_discriminator_steps_per_generator_step(gan):
    torch.manual_seed(0)
    base = NetworkCIFAR(4, 3, 2, DARTS_V2, stem_stride=2).eval()
    tr = GALTrainer(base, _toy(48), 3, GALSettings(epochs=1, batch_size=16, n_critic=5, mask_step=1, gan=gan))
    events: list[str] = []
    d_step, g_step = tr.d_opt.step, tr.g_opt.step
    tr.d_opt.step = lambda *a, **k: (events.append("D"), d_step(*a, **k))[1]
    tr.g_opt.step = lambda *a, **k: (events.append("G"), g_step(*a, **k))[1]
    tr.run()
    assert tr.g_steps_per_epoch == 3  # one generator pass over 48 samples in batches of 16
    assert "".join(events) == "DDDDDG" * 3
    assert tr.d_steps == 15 and tr.g_steps == 3
    if gan == "wgan":
        assert max(float(p.detach().abs().max()) for p in tr.D.parameters()) <= 0.01 + 1e-9


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_genotype_and_same_kept_nodes():
    cfg = DartsGalConfig(search=dict(C=4, layers=2, epochs=1, batch_size=16, max_steps_per_epoch=2, val_batches=1,
                                     arch_lr=0.05))
    ds = _toy(48)
    val = DataLoader(_toy(16, seed=5), batch_size=16)
    a = DartsSearch(cfg, ds, val, 3, (3, 8, 8), seed=3).run()
    b = DartsSearch(cfg, ds, val, 3, (3, 8, 8), seed=3).run()
    assert a.genotype == b.genotype and torch.equal(a.alphas_normal, b.alphas_normal)
    assert all(op != "none" for op, _ in a.genotype.normal + a.genotype.reduce)
    one = replace_config(cfg, search={"epochs": 1, "max_steps_per_epoch": 1})
    init3 = DartsSearch(cfg, ds, val, 3, (3, 8, 8), seed=3).model.alphas_normal
    assert not torch.equal(init3, DartsSearch(cfg, ds, val, 3, (3, 8, 8), seed=4).model.alphas_normal)
    so = DartsSearch(replace_config(one, search={"second_order": True}), ds, val, 3, (3, 8, 8), seed=3).run()
    assert so.history[0]["alpha_updated"] and so.history[0]["arch_val_loss"] is not None
    pc = DartsSearch(replace_config(one, search={"partial_channels": 2, "edge_norm": True}), ds, val, 3, (3, 8, 8),
                     seed=3)
    assert pc.model.betas_normal is not None and pc.run().genotype.steps == 4
    # GAL: same seed, same masks and kept nodes
    torch.manual_seed(0)
    base = NetworkCIFAR(4, 3, 3, a.genotype, stem_stride=2).eval()
    s = GALSettings(epochs=1, batch_size=16, n_critic=2, mask_step=1, mask_lr=0.1, lam=2.0, grad_clip=5.0, seed=7)
    g1, g2 = GALTrainer(base, ds, 3, s), GALTrainer(base, ds, 3, s)
    m1, m2 = g1.run().masks, g2.run().masks
    assert m1 == m2
    assert [k.kept for k in kept_nodes(g1.G)] == [k.kept for k in kept_nodes(g2.G)]


# --------------------------------------------------------------------------- ONNX, table, drawing


def test_pruned_network_exports_to_onnx(tmp_path):
    from compress.exporters import export_onnx, validate_onnx

    torch.manual_seed(0)
    net = NetworkCIFAR(4, 10, 3, DARTS_V2)
    vals = [torch.tensor([0.0, 1.0, 0.5, 0.0]), torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4)]
    attach_masks(net, values=vals)
    student = prune_network(net.eval(), kept_nodes(net), keep_masks=False).net
    x = torch.randn(8, 3, 16, 16)
    path = export_onnx(student, x[:2], tmp_path / "pruned.onnx")
    rep = validate_onnx(student, path, x, batch_sizes=(1, 8), raise_on_failure=False)
    assert rep.ok, rep


def test_nodes_kept_table_and_drawing():
    torch.manual_seed(0)
    net = NetworkCIFAR(4, 10, 3, DARTS_V2)
    attach_masks(net, values=[torch.tensor([0.0, 1.0, 0.5, 0.0]), torch.tensor([0.2, 0.0, 0.0, 0.7]), torch.zeros(4)])
    keep = kept_nodes(net)
    rows = nodes_kept_rows(net, keep)
    assert [(r["cell"], r["type"], r["kept"], r["forced"]) for r in rows] == [
        (1, "Normal", [1, 2], []), (2, "Reduction", [0, 3], []), (3, "Reduction", [0], [0])]
    assert rows[1]["masks"] == pytest.approx([0.2, 0.0, 0.0, 0.7])
    md = nodes_kept_markdown(rows)
    assert md.splitlines()[0] == "| Cell | Type | Reserved intermediate nodes | masks (nodes 0-3) |"
    assert "| 1 | Normal | 1, 2 |" in md and "| 2 | Reduction | 0, 3 |" in md and "| 3 | Reduction | 0* |" in md
    assert "5 of 12 intermediate nodes kept (7 pruned)" in md
    drawing = draw_genotype(DARTS_V2)
    assert "normal cell" in drawing and "reduction cell" in drawing
    assert "n3 =    skip       .    dil3" in drawing  # node 3 = skip(c_{k-2}) + dil_conv_3x3(n0)
    assert drawing.count("concat[n0, n1, n2, n3]") == 2


# --------------------------------------------------------------------------- config


def test_config_validation_presets_and_json():
    for bad, match in [({"gal": {"gan": "hinge"}}, "gal.gan"), ({"gal": {"n_critic": 0}}, "gal.n_critic"),
                       ({"search": {"C": 6, "partial_channels": 4}}, "search.partial_channels"),
                       ({"sizing": {"size_margin": 0.5}}, "sizing.size_margin"),
                       ({"search": {"genotype": "DARTS_V9"}}, "search.genotype"), ({"retrain": "warm"}, "retrain"),
                       ({"gal": {"sparse_lambda": -1.0}}, "gal.sparse_lambda"),
                       ({"gal": {"lambda_sweep": (0.1, -0.1)}}, "gal.lambda_sweep"),
                       ({"gal": {"mask_step": 0}}, "gal.mask_step"),
                       ({"sizing": {"candidates_C": (5,)}}, "candidates_C"),
                       ({"gal": {"bn": "frozen"}}, "gal.bn"), ({"final": {"drop_path": 1.0}}, "drop_path"),
                       ({"baseline": {"optimizer": "lbfgs"}}, "optimizer"), ({"search": 3}, "DartsSearchConfig")]:
        with pytest.raises(ConfigError, match=match):
            DartsGalConfig(**bad)
    with pytest.raises(ConfigError, match="search.epochs"):
        DartsSearchConfig(epochs=0)
    with pytest.raises(ConfigError, match="gal.lr_gamma"):
        GALConfig(lr_gamma=2.0)
    with pytest.raises(ConfigError, match="preset"):
        DartsGalConfig.preset("gpu-huge")
    paper = DartsGalConfig()
    assert paper == DartsGalConfig.preset("paper")
    assert (paper.search.lr, paper.baseline.lr, paper.gal.lr, paper.final.lr) == (0.01, 0.01, 0.01, 0.01)
    assert (paper.search.batch_size, paper.gal.batch_size, paper.gal.n_critic, paper.gal.d_hidden) == \
        (32, 100, 5, (128, 256, 128))
    assert (paper.baseline.epochs, paper.final.epochs, paper.baseline.weight_decay) == (50, 50, 3e-4)
    assert paper.search.genotype == "search" and not paper.search.second_order and paper.retrain == "scratch"
    small = DartsGalConfig.preset("cpu-small", gal={"epochs": 2})
    assert small.gal.epochs == 2 and small.gal.batch_size == 32 and small.search.C == 8  # merged into the preset's
    d = config_to_dict(small)
    assert set(d) == {"search", "sizing", "baseline", "gal", "final", "objective", "retrain"}
    assert d["search"]["C"] == 8 and d["final"]["lr"] == 0.025
    assert config_from_dict(DartsGalConfig, json.loads(json.dumps(d))) == small
    assert DartsGalConfig(search={"genotype": DARTS_V2.to_json()}).search.genotype.startswith("{")
    demo = DartsGal.demo_config(20)
    assert demo["final"]["epochs"] == 20 and DartsGal.demo_config(1)["final"]["epochs"] == small.final.epochs
    assert config_from_dict(DartsGalConfig, demo).final.lr == 0.025


def test_flat_config_still_loads_with_a_deprecation_warning():
    """Configs were flat before the nested configs; a flat dict (--config JSON, a report.json config block) still
    loads, each key routed to its leaf (the shared KD / augment / drop-path keys to both training blocks)."""
    flat = {"search_C": 4, "search_epochs": 1, "grad_clip": 3.0, "arch_lr": 0.05, "candidates_C": [4, 6],
            "size_margin": 1.5, "baseline_epochs": 2, "gal_epochs": 1, "gal_bn": "eval", "n_critic": 2,
            "sparse_lambda": 0.5, "final_lr": 0.02, "kd_alpha": 0.3, "drop_path": 0.1, "augment": "flip-crop",
            "objective": "size", "retrain": "finetune"}
    with pytest.warns(ConfigDeprecationWarning, match=r"kd_alpha -> baseline\.kd_alpha, final\.kd_alpha"):
        cfg = config_from_dict(DartsGalConfig, flat)
    assert cfg == DartsGalConfig(
        search={"C": 4, "epochs": 1, "grad_clip": 3.0, "arch_lr": 0.05},
        sizing={"candidates_C": (4, 6), "size_margin": 1.5},
        baseline={"epochs": 2, "kd_alpha": 0.3, "drop_path": 0.1, "augment": "flip-crop"},
        gal={"epochs": 1, "bn": "eval", "n_critic": 2, "sparse_lambda": 0.5},
        final={"lr": 0.02, "kd_alpha": 0.3, "drop_path": 0.1, "augment": "flip-crop"}, objective="size",
        retrain="finetune")
    with pytest.warns(ConfigDeprecationWarning):
        assert DartsGal(**flat).config == cfg  # Strategy(**overrides) too


def test_phase_keys_follow_the_sub_configs_each_phase_reads():
    """A phase's key hashes the sub-configs it reads: a change to one leaf re-keys only the phases that
    read it (the later phases' keys chain on the earlier ones in run(), via ``prev``)."""
    cfg = DartsGalConfig.preset("cpu-small")
    phases = ("search", "baseline", "gal", "retrain")

    def keys(c: DartsGalConfig) -> dict[str, str]:
        return {p: phase_key(c, p, {"prev": "x"}) for p in phases}

    base = keys(cfg)
    for change, changed in [({"search": {"momentum": 0.8}}, {"search"}),
                            ({"sizing": {"capacity": "macs"}}, {"baseline"}),
                            ({"baseline": {"label_smoothing": 0.1}}, {"baseline"}), ({"gal": {"mu": 2.0}}, {"gal"}),
                            ({"objective": "size"}, {"gal"}), ({"final": {"warmup_epochs": 1}}, {"retrain"}),
                            ({"final": {"kd_alpha": 0.2}}, {"retrain"}), ({"retrain": "finetune"}, {"retrain"})]:
        new = keys(replace_config(cfg, **change))
        assert {p for p in phases if new[p] != base[p]} == changed, change
    # each leaf of a phase's sub-configs enters its key under its flat name (checkpoints of the flat configs resume)
    assert key_config(cfg, "search")["search_C"] == 8 and "arch_reference_steps" in key_config(cfg, "search")
    assert "arch_reference_steps" not in key_config(DartsGalConfig(), "search")  # KEY_OMIT: the pre-issue-18 value
    both = key_config(replace_config(cfg, final={"kd_alpha": 0.2}), "baseline", "final")
    assert both["kd_alpha"] == 0.5 and both["final.kd_alpha"] == 0.2  # one flat name, two leaves that now differ


def test_arch_batch_size_sets_the_alpha_minibatch_and_keys_only_when_set():
    """``search.arch_batch_size`` (None: ``batch_size``) is the minibatch of each alpha step; at None it
    leaves the search key as it was (KEY_OMIT), another value is another search; 0 is a ConfigError."""
    ds = TensorDataset(torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                       torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(0)))
    cfg = DartsGalConfig(search=dict(C=4, layers=2, epochs=1, batch_size=4, max_steps_per_epoch=1))

    def batches(c: DartsGalConfig) -> tuple[int, int]:
        s = DartsSearch(c, ds, None, 3, (3, 8, 8), seed=0)
        return len(s.w_iter.next()[1]), len(s.a_iter.next()[1])

    assert batches(cfg) == (4, 4)
    wide = replace_config(cfg, search={"arch_batch_size": 16})
    assert batches(wide) == (4, 16)
    assert phase_key(wide, "search", {}) != phase_key(cfg, "search", {})
    assert "arch_batch_size" not in key_config(cfg, "search")
    with pytest.raises(ConfigError, match="arch_batch_size"):
        DartsGalConfig(search={"arch_batch_size": 0})


def test_phase_keys_of_the_presets_match_the_flat_configs():
    """Search, baseline and GAL keys of the paper and cpu-small presets are those the flat configs wrote
    (tests/fixtures/legacy_configs_6649a19.json), so their checkpoints still resume. The retrain key
    changed on purpose: it now holds the final block's kd_alpha, kd_temperature, augment and drop_path,
    which the retrain reads (the flat retrain key left them out)."""
    from pathlib import Path

    fixture = Path(__file__).parent.parent / "fixtures" / "legacy_configs_6649a19.json"
    recorded = json.loads(fixture.read_text())["darts-gal"]
    #: 2026-12-04 changed cpu-small's alpha steps on purpose (issue 18's entropy goal): a new search key
    moved = {"max_steps_per_epoch", "arch_reference_steps", "arch_batch_size", "arch_weight_decay"}
    for name in ("paper", "cpu-small"):
        preset = DartsGalConfig.preset(name)
        with pytest.warns(ConfigDeprecationWarning):
            cfg = config_from_dict(DartsGalConfig, recorded[name]["config"])
        differ = {f.name for f in dataclasses.fields(cfg.search)
                  if getattr(cfg.search, f.name) != getattr(preset.search, f.name)}
        assert differ == (moved if name == "cpu-small" else set())
        assert cfg == replace_config(preset, search={f: getattr(cfg.search, f) for f in differ})
        assert (phase_key(preset, "search", {"prev": "x"}) == phase_key(cfg, "search", {"prev": "x"})) == (not differ)
        for key, value in recorded[name]["keys"].items():
            phase, latency = key.split("/latency=")
            new = phase_key(cfg, phase, {"prev": "x"}, latency_search=latency == "True")
            assert (new == value) == (phase != "retrain"), (name, key)


# --------------------------------------------------------------------------- checkpoints / resume / retrain


def _ctx(tmp_path, progress=None, seed=0, max_params=60_000) -> StrategyContext:
    from compress.data import as_task_data
    from compress.profiling import Target

    train = DataLoader(_toy(48), batch_size=16, shuffle=False)
    val = DataLoader(_toy(16, seed=9), batch_size=16)
    task = as_task_data({"train": train, "val": val})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
    x = next(iter(val))[0][:2]
    return StrategyContext(model=teacher, teacher=teacher, data=task, budget=Budget(max_params=max_params),
                           teacher_cost=measure_cost(teacher, x), example_inputs=x, target=Target(), seed=seed,
                           out_dir=tmp_path, progress=progress or (lambda *a: None))


TINY = dict(search=dict(C=4, layers=2, epochs=1, batch_size=16, max_steps_per_epoch=2, val_batches=1),
            sizing=dict(candidates_C=(4, 6), candidates_layers=(3,), stem_strides=(2,)),
            baseline=dict(epochs=1), gal=dict(epochs=1, batch_size=16, n_critic=2, mask_step=1, mask_lr=0.1,
                                             sparse_lambda=2.0),
            final=dict(epochs=1))


def _tiny(**changes) -> DartsGalConfig:
    """TINY with nested ``changes`` merged into its sub-configs."""
    return replace_config(DartsGalConfig(**TINY), **changes)


def test_resume_after_a_simulated_kill_gives_the_same_student(tmp_path):
    ref = DartsGal(TINY).run(_ctx(tmp_path / "ref"))

    class Killed(Exception):
        pass

    def killer(phase, done, total, info):
        if phase == "gal" and done == 0:
            raise Killed

    with pytest.raises(Killed):
        DartsGal(TINY).run(_ctx(tmp_path / "run", killer))
    ck = tmp_path / "run" / "checkpoints" / "darts-gal"
    assert {"search.json", "baseline.json", "baseline.0.pt"} <= {p.name for p in ck.iterdir()}
    assert not (ck / "gal.json").exists()
    out = DartsGal(TINY).run(_ctx(tmp_path / "run"))
    assert out.info["resumed_phases"] == ["search", "baseline"]
    assert out.info["nodes_kept"] == ref.info["nodes_kept"] and out.info["genotype"] == ref.info["genotype"]
    for (k, v), (k2, v2) in zip(ref.student.state_dict().items(), out.student.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    again = DartsGal(TINY).run(_ctx(tmp_path / "run"))  # everything restored, nothing recomputed
    assert again.info["resumed_phases"] == ["search", "baseline", "gal", "retrain"]
    changed = DartsGal(TINY, final={"epochs": 2}).run(_ctx(tmp_path / "run"))  # only the retrain is redone
    assert changed.info["resumed_phases"] == ["search", "baseline", "gal"]


def test_every_field_of_the_training_blocks_reaches_the_fine_tune(tmp_path, monkeypatch):
    """The baseline and the retrain build their FinetuneSettings from their block (``.settings``), so
    optimizer, label smoothing, warm-up, time budget and gradient clip act as well as lr and KD."""
    import compress.strategies.darts_gal.strategy as mod

    seen = {}

    def fake_finetune(net, loader, val, settings, **kw):
        seen["settings"] = settings
        kw["on_epoch"](1, {"epoch": 1})
        seen["drop_path"] = net.drop_path_prob
        return []

    monkeypatch.setattr(mod, "finetune", fake_finetune)
    cfg = _tiny(final={"epochs": 4, "lr": 0.05, "optimizer": "adam", "label_smoothing": 0.1, "warmup_epochs": 1,
                       "time_s": 30.0, "grad_clip": 2.0, "kd_alpha": 0.2, "augment": "flip-crop", "drop_path": 0.2},
                baseline={"kd_alpha": 0.9})
    net = NetworkCIFAR(4, 3, 3, DARTS_V2, stem_stride=2)
    DartsGal(cfg)._train(_ctx(tmp_path), net, _toy(32), 16, "retrain", cfg.final)
    s = seen["settings"]
    assert (s.epochs, s.lr, s.optimizer, s.label_smoothing, s.warmup_epochs, s.time_budget_s, s.grad_clip) == \
        (4, 0.05, "adam", 0.1, 1, 30.0, 2.0)
    assert (s.kd_alpha, s.augment, s.keep_best) == (0.2, "flip-crop", True)  # the final block's, not the baseline's
    assert seen["drop_path"] == pytest.approx(0.2 / 4)  # the ramp of final.drop_path over final.epochs
    DartsGal(cfg)._train(_ctx(tmp_path), net, _toy(32), 16, "baseline", cfg.baseline)
    assert seen["settings"].kd_alpha == 0.9 and seen["settings"].optimizer == "sgd"


def test_retrain_from_scratch_reinitialises_but_keeps_the_structure(tmp_path):
    over = _tiny(search={"genotype": "DARTS_V2"}, final={"epochs": 0}, gal={"sparse_lambda": 5.0})
    scratch = DartsGal(over).run(_ctx(tmp_path / "a"))
    tuned = DartsGal(over, retrain="finetune").run(_ctx(tmp_path / "b"))
    pruned = torch.load(tmp_path / "a" / "checkpoints" / "darts-gal" / "gal.0.pt", weights_only=True)["tensors"]["weights"]
    assert scratch.info["student_arch"] == tuned.info["student_arch"]
    assert scratch.info["nodes_removed"] > 0
    arch = scratch.info["student_arch"]
    assert any(n is None for s in arch["cell_specs"] for n in s["nodes"])
    w = "classifier.weight"
    assert torch.equal(tuned.student.state_dict()[w], pruned[w])
    assert not torch.equal(scratch.student.state_dict()[w], pruned[w])
    assert scratch.info["pruned"]["params"] < scratch.info["baseline"]["params"]


def test_closing_loop_prunes_an_oversized_baseline_into_the_budget(tmp_path):
    # DARTS_V2, 3 cells on 4x4 maps: C=8 has 7,331 params (3,291 with one node per cell), C=12 14,787 (6,375)
    over = _tiny(search={"genotype": "DARTS_V2"}, sizing={"size_margin": 2.0, "candidates_C": (4, 6, 8, 10, 12)},
                 gal={"sparse_lambda": 0.0, "max_prune_rounds": 1, "prune_round_epochs": 1})
    out = DartsGal(over).run(_ctx(tmp_path / "a", max_params=5_000))
    info = out.info
    assert info["baseline"]["C"] == 8 and info["baseline"]["params"] > 5_000  # sized to 2x the budget
    assert info["pruned"]["params"] <= 5_000
    assert measure_cost(out.student, torch.randn(2, 3, 8, 8)).params <= 5_000
    loop = info["gal"]["closing_loop"]
    assert loop["ok"] and loop["rounds"] == 1 and loop["thresholded_nodes"]  # lambda 0 prunes nothing
    assert info["genotype_source"] == "DARTS_V2" and info["search_history"] == []
    with pytest.raises(BudgetUnreachableError, match="size_margin"):  # C=12 cannot get under 6,375 params
        DartsGal(over, sizing={"size_margin": 3.0, "candidates_C": (12,)},
                 gal={"epochs": 0, "max_prune_rounds": 0}).run(_ctx(tmp_path / "b", max_params=5_000))


# --------------------------------------------------------------------------- end to end


def test_compress_end_to_end_meets_budget(digits_task, tmp_path):
    import compress.strategies.darts_gal  # noqa: F401  (registers "darts-gal")
    from compress.api import compress
    from compress.serialization import load_student
    from compress.testing import TinyConvNet

    torch.manual_seed(0)
    # allow_slower: this tiny DARTS student runs several times slower than the 3-layer teacher on
    # onnxruntime (more, smaller ops), which compress() refuses by default; the MACs budget is tested here
    res = compress(TinyConvNet().eval(), "macs=0.5x", data=digits_task, strategy="darts-gal", config=FAST,
                   progress=False, out_dir=tmp_path, latency_repeats=3, latency_warmup=1, allow_slower=True)
    assert res.budget_check.ok and res.student_report.cost.macs <= 0.5 * res.teacher.cost.macs
    assert res.validation.ok
    info = res.info
    assert info["genotype_source"] == "search" and len(info["search_history"]) == 1
    assert [h["epoch"] for h in res.history if h.get("phase") == "search"] == [1]
    assert {"search", "sizing", "baseline", "gal", "retrain"} <= set(res.wall_s)
    assert len(info["nodes_kept"]) == info["baseline"]["layers"] == 3
    assert info["nodes_kept_markdown"].startswith("| Cell | Type |")
    assert info["gal"]["d_steps"] == 5 * info["gal"]["g_steps"]
    assert Genotype.from_json(info["genotype_json"]).to_dict() == info["genotype"]
    assert "normal cell" in info["genotype_drawing"]
    search = res.to_dict()["search"]  # issue 18: report.json's search key, as eg-nas'
    assert search["alpha_entropy"] == [h["alpha_entropy"] for h in info["search_history"]]
    assert 0.0 < search["alpha_entropy"][0] <= search["alpha_entropy_uniform"] == pytest.approx(math.log(8))
    assert search["plan"]["arch_updates"] == 2 and search["objective"] == "size"
    assert search["genotype_stability"] is None
    assert (tmp_path / "checkpoints" / "darts-gal" / "retrain.json").is_file()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["info"]["student_arch"] == info["student_arch"]
    assert report["search"]["alpha_entropy"] == search["alpha_entropy"]
    reloaded = load_student(tmp_path, base=build_from_arch(report["info"]["student_arch"]))
    x = next(iter(digits_task.val))[0][:4]
    torch.testing.assert_close(reloaded(x), res.student(x))


def test_cell_spec_none_nodes_round_trip():
    spec = CellSpec(((("sep_conv_3x3", 0), ("sep_conv_3x3", 1)), None, (("skip_connect", 2),), None), (2, 4), False)
    assert CellSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


# --------------------------------------------------------------------------- issue 18: search fixes, checkpoint keys


class _OpTable:
    """A hand-built per-layer table: ms = kernel area x output channels / 100."""

    def latency(self, cfg) -> float:
        return cfg.k * cfg.k * cfg.cout / 100.0


def test_reference_steps_and_latency_term_reach_the_architect():
    cfg = DartsGalConfig(search=dict(C=4, layers=2, epochs=1, batch_size=16, max_steps_per_epoch=2, val_batches=1,
                                     arch_reference_steps=100, arch_latency_weight=0.7))
    ds, val = _toy(48), DataLoader(_toy(16, seed=5), batch_size=16)
    plain = DartsSearch(cfg, ds, val, 3, (3, 8, 8), seed=3)
    assert plain.architect.reference_steps == 100 and plain.latency_term is None
    out = plain.run()
    # 2 alpha steps: Adam's lr becomes 3e-4 * 100 / 2
    assert out.plan["arch_updates"] == 2 and out.plan["arch_lr_effective"] == pytest.approx(3e-4 * 100 / 2)
    assert plain.architect.optimizer.param_groups[0]["lr"] == pytest.approx(0.015)
    lat = DartsSearch(cfg, ds, val, 3, (3, 8, 8), seed=3, latency_table=_OpTable())
    assert lat.architect.latency_term is lat.latency_term and lat.latency_term.weight == 0.7
    assert lat.latency_term.reference_ms > 0 and lat.num_ops == 8
    with pytest.raises(ConfigError, match="search.arch_reference_steps"):
        DartsGalConfig(search={"arch_reference_steps": 0})
    with pytest.raises(ConfigError, match="search.arch_latency_weight"):
        DartsGalConfig(search={"arch_latency_weight": -1.0})
    small = DartsGalConfig.preset("cpu-small").search  # 2026-12-04: DARTS' 19,550 x 2 (Adam's sqrt batch scaling)
    assert (small.arch_reference_steps, small.arch_batch_size, small.arch_weight_decay) == (39_100, 256, 0.0)
    assert DartsGalConfig().search.arch_reference_steps is None


def test_params_term_moves_the_darts_search_toward_light_ops(tmp_path):
    """``search.arch_params_weight`` > 0 adds the expected-parameter term: with a large weight, the
    derived alphas put less mass on the parametric ops than the same search without it; report.json's
    ``search`` gives the expectation at uniform and final alphas; 0 (the default) keeps the key of
    earlier searches."""
    from compress.strategies.darts_gal.strategy import _hash

    base = dict(C=4, layers=2, epochs=2, batch_size=16, max_steps_per_epoch=2, val_batches=1,
                arch_reference_steps=400)
    ds, val = _toy(48), DataLoader(_toy(16, seed=5), batch_size=16)
    plain = DartsSearch(DartsGalConfig(search=base), ds, val, 3, (3, 8, 8), seed=3)
    heavy = DartsSearch(DartsGalConfig(search={**base, "arch_params_weight": 20.0}), ds, val, 3, (3, 8, 8), seed=3)
    assert plain.params_term is None and heavy.params_term.weight == 20.0
    a, b = plain.run(), heavy.run()
    term = heavy.params_term
    light = term.expected_params(b.alphas_normal.double(), b.alphas_reduce.double())
    assert light < term.expected_params(a.alphas_normal.double(), a.alphas_reduce.double())
    assert light < 0.95 * term.reference_ms  # below uniform by a stated margin
    cfg = _tiny(search={"arch_params_weight": 5.0}, final={"epochs": 0}, baseline={"epochs": 0})
    search = DartsGal(cfg).run(_ctx(tmp_path)).info["search"]
    assert search["params_weight"] == 5.0
    assert search["expected_params"]["final"] < search["expected_params"]["uniform"]
    extra = {"seed": 0, "n_train": 48, "num_classes": 3, "input_shape": [3, 8, 8]}
    assert _hash(_tiny(search={"arch_params_weight": 0.0}), "search", extra) == _hash(_tiny(), "search", extra)
    assert _hash(cfg, "search", extra) != _hash(_tiny(), "search", extra)
    with pytest.raises(ConfigError, match="search.arch_params_weight"):
        DartsGalConfig(search={"arch_params_weight": -0.1})


#: darts-gal's search fields before issue 18 (what keyed the search checkpoints of earlier runs)
OLD_SEARCH_FIELDS = {"genotype", "search_C", "search_layers", "search_epochs", "search_batch_size", "search_lr",
                     "search_lr_min", "search_momentum", "search_weight_decay", "grad_clip", "train_portion",
                     "second_order", "arch_lr", "arch_weight_decay", "arch_warmup_epochs", "partial_channels",
                     "edge_norm", "search_stem_stride", "search_max_steps_per_epoch", "search_val_batches"}


#: darts-gal's baseline fields of the flat config (what keyed the baseline checkpoints of earlier runs)
OLD_BASELINE_FIELDS = {"candidates_C", "candidates_layers", "stem_strides", "capacity", "size_margin",
                       "baseline_epochs", "baseline_lr", "baseline_momentum", "baseline_weight_decay",
                       "baseline_max_steps_per_epoch", "drop_path", "kd_alpha", "kd_temperature", "augment"}


def _flat(cfg: DartsGalConfig) -> dict:
    """``cfg`` in the flat spelling used before the nested configs (as its config_to_dict wrote it)."""
    from compress.strategies.config_tree import legacy_names

    out = {}
    for name, [(sub, leaf), *_] in legacy_names(DartsGalConfig).items():
        out[name] = getattr(cfg if sub is None else getattr(cfg, sub), leaf)
    return json.loads(json.dumps(out))


def test_checkpoint_keys_of_earlier_runs_survive_the_new_search_fields():
    from compress.strategies.darts_gal.strategy import _hash
    from compress.training.checkpoint import stable_hash

    extra = {"seed": 0, "n_train": 48, "num_classes": 3, "input_shape": [3, 8, 8]}
    cfg = DartsGalConfig(**TINY)
    old = stable_hash({"phase": "search", "config": {k: v for k, v in _flat(cfg).items() if k in OLD_SEARCH_FIELDS},
                       **extra})
    assert _hash(cfg, "search", extra) == old  # new fields at their defaults: the key of earlier runs
    # a key computed by the code before issue 18 (this config, these extras): a search saved then resumes
    assert _hash(DartsGalConfig(search={"C": 4, "layers": 2}), "search",
                 {"seed": 0, "n_train": 32, "num_classes": 3, "input_shape": [3, 8, 8]}) == "4429c0cab2a560aeec4a"
    assert _hash(_tiny(search={"arch_reference_steps": 19_550}), "search", extra) != old
    assert _hash(_tiny(search={"arch_latency_weight": 0.5}), "search", extra) == old  # no latency term
    with_lat = {**extra, "latency_target": {"name": "cpu-1t"}}
    assert _hash(cfg, "search", with_lat, latency_search=True) != old
    assert _hash(_tiny(search={"arch_latency_weight": 0.5}), "search", with_lat, latency_search=True) != \
        _hash(cfg, "search", with_lat, latency_search=True)
    # the baseline fields did not change (nor their key); GAL's did (mask_scale="cell", searched lambda): new key
    assert _hash(cfg, "baseline", {"prev": old}) == stable_hash(
        {"phase": "baseline", "config": {k: v for k, v in _flat(cfg).items() if k in OLD_BASELINE_FIELDS},
         "prev": old})
    # an earlier report.json's config (flat, none of issue 18's fields) still loads, with their defaults
    added = {"arch_reference_steps", "arch_latency_weight", "mask_scale", "lambda_search_probes",
             "lambda_search_start", "lambda_search_tolerance", "lambda_probe_epochs", "objective",
             "latency_weight_floor", "baseline_optimizer", "baseline_label_smoothing", "baseline_warmup_epochs",
             "baseline_time_s", "baseline_grad_clip", "final_optimizer", "final_label_smoothing",
             "final_warmup_epochs", "final_time_s", "final_grad_clip"}
    old_dict = {k: v for k, v in _flat(cfg).items() if k not in added}
    with pytest.warns(ConfigDeprecationWarning):
        loaded = config_from_dict(DartsGalConfig, old_dict)
    assert loaded == cfg and loaded.search.arch_reference_steps is None


def test_latency_objective_adds_the_expected_latency_term_to_the_search(tmp_path, monkeypatch):
    import compress.profiling.latency_model as lm

    class Table(_OpTable):
        def __init__(self, *a, **k):
            pass

        def save(self):
            return None

    monkeypatch.setattr(lm, "LayerLatencyTable", Table)  # no onnxruntime timing in a unit test
    cfg = _tiny(objective="latency", final={"epochs": 0}, baseline={"epochs": 0})
    out = DartsGal(cfg).run(_ctx(tmp_path))
    search = out.info["search"]
    assert search["objective"] == "latency" and search["latency_weight"] == 0.2
    assert search["expected_latency_ms"]["uniform"] > 0 and len(search["alpha_entropy"]) == 1
    assert out.info["gal"]["penalty"]["objective"] == "latency"
    fixed = DartsGal(cfg, search={"genotype": "DARTS_V2"}).run(_ctx(tmp_path / "fixed"))
    assert fixed.info["search"]["alpha_entropy"] == [] and fixed.info["search"]["source"] == "DARTS_V2"
