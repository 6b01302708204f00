"""EG-NAS faithfulness (ALGORITHMS.md §4(e), tests 1-10), checkpoints, the baseline switch, end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from compress.errors import ConfigError
from compress.strategies.base import config_from_dict, config_to_dict
from compress.strategies.config_tree import ConfigDeprecationWarning, key_config, replace_config
from compress.strategies.darts import EGNAS_PRIMITIVES, build_from_arch
from compress.strategies.eg_nas import (
    EGNAS,
    EGNASConfig,
    EGNASSearch,
    SupernetEvaluator,
    apply_direction,
    compound_fitness,
    derive_seed,
    es_epoch,
    final_key,
    l2_similarity,
    run_restart,
    search_key,
    select_direction,
    sigma_schedule,
)

TINY = {"search": dict(C=4, layers=2, partial_channels=1, epochs=2, warmup_epochs=1, batch_size=16,
                       max_steps_per_epoch=2, val_batches=1),
        "es": dict(batch_size=16, restarts=2, popsize=4)}

# the fast setting for compress() on 3x32x32 digits (also the registry contract config)
FAST = {"search": dict(C=4, layers=3, partial_channels=1, stem_stride=2, epochs=2, warmup_epochs=1, batch_size=32,
                       max_steps_per_epoch=2, val_batches=1),
        "es": dict(batch_size=32, restarts=2, popsize=4),
        "sizing": dict(candidates_C=(4, 6, 8), candidates_layers=(3,), stem_strides=(1, 2)),
        "final": dict(epochs=1, max_steps_per_epoch=3)}


def _data(n: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = ((x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()).clamp_max(2)
    return TensorDataset(x, y), DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16)


def _search(over: dict | None = None, seed: int = 0, **kw) -> EGNASSearch:
    cfg = replace_config(EGNASConfig(**TINY), **(over or {}))  # over: nested, merged into TINY's sub-configs
    ds, val = _data()
    return EGNASSearch(cfg, ds, val, 3, (3, 8, 8), seed, **kw)


def _stub_alpha(d: int = 14) -> np.ndarray:
    return np.linspace(-1.0, 1.0, d)


# --------------------------------------------------------------------------- 1. Eq. 7 sign switch


def test_eq7_sign_switch():
    assert compound_fitness(2.0, acc_z=0.3, acc_alpha=0.5, l2=0.8) == pytest.approx(2.0 - 0.4 * 0.8)
    assert compound_fitness(2.0, acc_z=0.6, acc_alpha=0.5, l2=0.8) == pytest.approx(2.0 + 0.4 * 0.8)
    assert compound_fitness(2.0, acc_z=0.5, acc_alpha=0.5, l2=0.8) == pytest.approx(2.0 + 0.4 * 0.8)  # tie: +
    assert compound_fitness(2.0, 0.3, 0.5, 0.8, zeta=0.5, eta=1.0) == pytest.approx(1.0 - 0.8)
    # through the ES loop with a stub evaluator: Acc(alpha) = 0.5; Acc(z) = 1 if z[0] > alpha[0] else 0
    alpha = _stub_alpha()

    def stub(z):
        if np.array_equal(z, alpha):
            return 1.0, 0.5
        return float(np.sum(z ** 2)), (1.0 if z[0] > alpha[0] else 0.0)

    r = es_epoch(alpha, stub, num_ops=7, t=0, seed=0, restarts=1, popsize=8).restarts[0]
    signs = set()
    for z, f in zip(r.first_population, r.evaluated_f[1:9]):
        better = z[0] > alpha[0]
        signs.add(better)
        l2 = l2_similarity(alpha, z, 7)
        assert f == pytest.approx(np.sum(z ** 2) + (0.4 * l2 if better else -0.4 * l2))
    assert signs == {True, False}  # both branches were exercised


# --------------------------------------------------------------------------- 2. L2 properties


def test_l2_properties():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(2 * 14 * 7)
    assert l2_similarity(a, a, 7) == pytest.approx(1.0)
    assert l2_similarity(a, -a, 7) == pytest.approx(0.0, abs=1e-12)
    for _ in range(20):
        z = rng.standard_normal(a.size) * rng.uniform(0.01, 10)
        v = l2_similarity(a, z, 7)
        assert 0.0 <= v <= 1.0
        assert l2_similarity(a, 3.7 * z, 7) == pytest.approx(v)
    # per edge, then averaged: one edge flipped out of two -> (1 + 0) / 2
    e = np.array([1.0, 2.0, 3.0, -1.0, 0.5, 2.0])
    assert l2_similarity(e, np.concatenate([e[:3], -e[3:]]), 3) == pytest.approx(0.5)
    assert l2_similarity(torch.tensor(a), torch.tensor(a), 7) == pytest.approx(1.0)


# --------------------------------------------------------------------------- 3. CMA wiring


class _Spy:
    made: list["_Spy"] = []

    def __init__(self, x0, sigma0, opts):
        import cma

        self.es = cma.CMAEvolutionStrategy(x0, sigma0, opts)
        self.init_mean = np.array(self.es.mean, dtype=float)
        self.sigma0, self.popsize = sigma0, opts["popsize"]
        self.tells: list[tuple[int, int]] = []
        _Spy.made.append(self)

    def ask(self):
        return self.es.ask()

    def tell(self, X, F):
        self.tells.append((len(X), len(F)))
        self.es.tell(X, F)

    @property
    def mean(self):
        return self.es.mean

    @property
    def sigma(self):
        return self.es.sigma

    @property
    def countevals(self):
        return self.es.countevals


def test_cma_wiring_mean_tell_and_minimisation():
    _Spy.made = []
    alpha = _stub_alpha(28)
    rng = np.random.default_rng(1)
    w = rng.standard_normal(28)
    res = es_epoch(alpha, lambda z: (float(np.dot(w, z)), 0.5), num_ops=7, t=3, seed=11, restarts=3, popsize=5,
                   generations=2, restart_noise=0.01, cma_factory=_Spy)
    assert len(_Spy.made) == 3
    for n, (spy, r) in enumerate(zip(_Spy.made, res.restarts)):
        noise = np.random.default_rng(derive_seed(11, "start", 3, n)).standard_normal(28)
        np.testing.assert_array_equal(spy.init_mean, alpha + 0.01 * noise)  # mean of restart n = x_n
        np.testing.assert_array_equal(r.x0, spy.init_mean)
        assert spy.sigma0 == pytest.approx(0.25) and spy.popsize == 5  # sigma_t at t = 3
        assert spy.tells == [(5, 5), (5, 5)] == [(n_, n_) for n_ in r.tell_sizes]
    # lower f is preferred: a quadratic toy decreases over generations
    x0 = np.full(10, 3.0)
    q = run_restart(x0, 1.0, lambda z: (float(np.sum(z ** 2)), 0.0, 0.0), popsize=10, generations=60, seed=0)
    assert q.best_f < 0.01 * float(np.sum(x0 ** 2))
    assert np.linalg.norm(q.final_mean) < 0.2 * np.linalg.norm(x0)


# --------------------------------------------------------------------------- 4. best-of-P


def test_best_of_p():
    alpha = _stub_alpha(28)
    rng = np.random.default_rng(2)
    w = rng.standard_normal(28)
    res = es_epoch(alpha, lambda z: (float(np.sin(z @ w) + 0.1 * z @ z), float(z[0] > 0)), num_ops=7, t=0, seed=3,
                   restarts=3, popsize=6, generations=3)
    for r in res.restarts:
        assert r.best_f <= min(r.evaluated_f)
        assert len(r.evaluated_f) == 1 + 6 * 3 + 1 and len(r.pool) == 1 + 3 + 1  # x_n, G winners, mean
        assert r.best_f in [f for f, _ in r.pool]
    assert res.best_fitness == min(r.best_f for r in res.restarts)


# --------------------------------------------------------------------------- 5. Eq. 9


def test_eq9_selects_the_most_accurate_winner():
    assert select_direction([0.1, 0.5, 0.5, 0.2]) == 1
    alpha = _stub_alpha(28)
    res = es_epoch(alpha, lambda z: (float(np.sum(z ** 2)), float(1 / (1 + np.exp(-z.sum())))), num_ops=7, t=0,
                   seed=4, restarts=4, popsize=4)
    accs = [r.best_acc for r in res.restarts]
    assert len(set(accs)) == 4
    assert res.winner == int(np.argmax(accs))
    np.testing.assert_array_equal(res.direction, res.restarts[res.winner].best_x)


# --------------------------------------------------------------------------- 6. exact update, no .grad


def test_exact_alpha_update_and_alpha_never_has_grad():
    s = _search()
    a0 = s.model.arch_vector().clone()
    res = s.es_update(t=1)
    d = torch.softmax(torch.tensor(res.direction, dtype=torch.float32).view(-1, 7), dim=-1)
    assert torch.equal(s.model.arch_vector(), (a0.view(-1, 7) + 0.6 * d).view(-1))
    raw = apply_direction(a0, res.direction, 0.6, 7, "raw")
    assert torch.equal(raw, a0 + 0.6 * torch.tensor(res.direction, dtype=torch.float32))
    s.train_epoch(1)
    assert all(a.grad is None and not a.requires_grad for a in s.model.arch_parameters())
    in_opt = {id(p) for g in s.w_opt.param_groups for p in g["params"]}
    assert not any(id(a) in in_opt for a in s.model.arch_parameters())
    assert any(p.grad is not None for p in s.model.weights())


def test_alpha_update_and_fitness_forward_stay_on_the_model_device():
    s = _search()
    model = s.model.to("meta")  # a tensor created on the CPU would meet meta ones and raise
    alpha = model.arch_vector()
    moved = apply_direction(alpha, np.zeros(alpha.numel()), 0.6, 7)
    assert moved.device.type == "meta" and moved.shape == alpha.shape
    x, y = s.es_batch(0)
    seen = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["alphas"][0].device.type), with_kwargs=True)
    ev = SupernetEvaluator(model, x.to("meta"), y.to("meta"))
    with pytest.raises((RuntimeError, NotImplementedError)):  # only reading the loss as a float fails on meta
        ev(np.zeros(alpha.numel()))
    assert seen == ["meta"]


# --------------------------------------------------------------------------- 7. warm-up, sigma schedule


def test_no_update_during_warmup_and_sigma_schedule():
    out = _search({"search": {"epochs": 3, "warmup_epochs": 2}}).run()
    assert [h["alpha_changed"] for h in out.history] == [False, False, True]
    assert "sigma" not in out.history[0] and out.history[2]["sigma"] == pytest.approx(1 / 3)
    assert "best_fitness" not in out.history[1] and isinstance(out.history[2]["best_fitness"], float)
    assert sigma_schedule(0) == 1.0 and sigma_schedule(15) == pytest.approx(0.0625)
    assert sigma_schedule(48) == pytest.approx(1 / 49) and sigma_schedule(49) == 0.02 == sigma_schedule(200)
    assert sigma_schedule(3, sigma_min=0.5) == 0.5


# --------------------------------------------------------------------------- 8. seeds, reproducibility


def test_restart_seeds_differ_and_numpy_global_rng_is_isolated():
    alpha = _stub_alpha(28)
    res = es_epoch(alpha, lambda z: (float(np.sum(z ** 2)), 0.5), num_ops=7, t=2, seed=0, restarts=3, popsize=4)
    assert len({r.seed for r in res.restarts}) == 3
    pops = [r.first_population for r in res.restarts]
    assert not np.allclose(pops[0], pops[1]) and not np.allclose(pops[1], pops[2])
    # pycma runs with a private RNG: the caller's global NumPy state is untouched, and global draws
    # interleaved with the fitness calls do not change the samples
    np.random.seed(123)
    before = np.random.get_state()
    a = run_restart(alpha, 0.5, lambda z: (float(np.sum(z ** 2)), 0.0, 0.0), popsize=6, generations=3, seed=9)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]

    def noisy_global(z):
        np.random.rand(3)
        return float(np.sum(z ** 2)), 0.0, 0.0

    b = run_restart(alpha, 0.5, noisy_global, popsize=6, generations=3, seed=9)
    np.testing.assert_array_equal(a.first_population, b.first_population)
    np.testing.assert_array_equal(a.final_mean, b.final_mean)


def test_search_is_bit_reproducible():
    runs = []
    for k in range(2):
        np.random.seed(1000 + k)  # different global NumPy / torch states must not matter
        torch.manual_seed(1000 + k)
        runs.append(_search(seed=5).run())
    a, b = runs
    assert torch.equal(a.alphas_normal, b.alphas_normal) and torch.equal(a.alphas_reduce, b.alphas_reduce)
    assert a.genotype == b.genotype
    assert [h["alpha_entropy"] for h in a.history] == [h["alpha_entropy"] for h in b.history]
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    c = _search(seed=6).run()
    assert not torch.equal(a.alphas_normal, c.alphas_normal)


# --------------------------------------------------------------------------- 9. forward count


@pytest.mark.parametrize("keep_mean", [True, False])
def test_forward_passes_per_es_epoch(keep_mean):
    s = _search({"es": {"restarts": 3, "popsize": 5, "generations": 2, "keep_mean": keep_mean}})
    calls = []
    handle = s.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    res = s.es_update(t=1)
    handle.remove()
    N, lam, G = 3, 5, 2
    expected = 1 + N * (lam * G + 1) + (N if keep_mean else 0)  # ALGORITHMS.md §4(e).9 with the mean in P
    assert len(calls) == expected == res.evaluations


# --------------------------------------------------------------------------- 10. genotype validity


def test_genotype_validity_after_search():
    g = _search({"search": {"epochs": 2, "warmup_epochs": 0}}).run().genotype
    for kind in ("normal", "reduce"):
        pairs = getattr(g, kind)
        assert len(pairs) == 8
        assert {op for op, _ in pairs} <= set(EGNAS_PRIMITIVES) and "none" not in {op for op, _ in pairs}
        for i, node in enumerate(g.nodes(kind)):
            ins = [idx for _, idx in node]
            assert len(set(ins)) == 2 and max(ins) <= i + 1


# --------------------------------------------------------------------------- baseline, checkpoints, config


def test_gradient_baseline_moves_alpha_after_warmup_only():
    s = _search({"search": {"alpha_update": "gradient", "arch_lr": 0.05}})
    out = s.run()
    assert [h["alpha_changed"] for h in out.history] == [False, True]
    assert out.wall_arch_s > 0 and "sigma" not in out.history[1]


def test_resume_after_kill_is_bit_identical(tmp_path):
    over = {"search": {"epochs": 3, "warmup_epochs": 1}}
    ref = _search(over, ckpt_dir=tmp_path / "ref")
    full = ref.run()

    class Killed(Exception):
        pass

    def killer(phase, done, total, info):
        if phase == "search" and done == 2:
            raise Killed

    with pytest.raises(Killed):
        _search(over, ckpt_dir=tmp_path / "run", progress=killer).run()
    doc = json.loads((tmp_path / "run" / "search.json").read_text())
    state = doc["state"]
    assert state["epoch_done"] == 2 and len(state["cma_last_epoch"]) == 2
    assert sorted(p.name for p in (tmp_path / "run").glob("search.*.pt")) == [doc["tensors"]] == ["search.2.pt"]
    resumed = _search(over, ckpt_dir=tmp_path / "run")
    out = resumed.run()
    assert out.resumed_from_epoch == 2 and [h["epoch"] for h in out.history] == [1, 2, 3]
    assert torch.equal(out.alphas_normal, full.alphas_normal) and torch.equal(out.alphas_reduce, full.alphas_reduce)
    for (k, v), (k2, v2) in zip(ref.model.state_dict().items(), resumed.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert _search({**over, "es": {"xi": 0.5}}, ckpt_dir=tmp_path / "run").try_resume() == 0  # other config: fresh


def test_config_validation_presets_and_json():
    with pytest.raises(ConfigError, match="search.alpha_update"):
        EGNASConfig(search={"alpha_update": "adam"})
    with pytest.raises(ConfigError, match="search.warmup_epochs"):
        EGNASConfig(search={"epochs": 5, "warmup_epochs": 6})
    with pytest.raises(ConfigError, match="search.partial_channels"):
        EGNASConfig(search={"C": 6, "partial_channels": 4})
    with pytest.raises(ConfigError, match="es.popsize"):
        EGNASConfig(es={"popsize": 1})
    with pytest.raises(ConfigError, match="es.bn"):
        EGNASConfig(es={"bn": "frozen"})
    with pytest.raises(ConfigError, match="drop_path"):
        EGNASConfig(final={"drop_path": 1.0})
    with pytest.raises(ConfigError, match="preset"):
        EGNASConfig.preset("gpu-huge")
    paper = EGNASConfig()
    es = paper.es
    assert (es.zeta, es.eta, es.xi, es.restarts, es.popsize, es.generations) == (1.0, 0.4, 0.6, 5, 25, 1)
    f = paper.final
    assert (f.epochs, f.lr, f.momentum, f.weight_decay, f.drop_path, f.optimizer) == (600, 0.025, 0.9, 3e-4, 0.0, "sgd")
    small = EGNASConfig.preset("cpu-small", search={"epochs": 4})
    assert small.search.epochs == 4 and small.search.warmup_epochs == 3 and small.es.restarts == 2
    assert small.es.popsize == 8 and small.es.xi_reference_updates == 35 and small.final.epochs == 10
    d = config_to_dict(small)
    assert set(d) == {"search", "es", "sizing", "final", "objective", "latency_weight", "stability_seeds"}
    assert config_from_dict(EGNASConfig, json.loads(json.dumps(d))) == small
    assert pickle.loads(pickle.dumps(small)) == small  # executors pickle it
    demo = EGNAS.demo_config(15)
    assert demo["final"]["epochs"] == 15 and EGNAS.demo_config(1)["final"]["epochs"] == 10
    assert EGNAS(demo).config == EGNASConfig.preset("cpu-small", final={"epochs": 15})


def test_flat_config_still_loads_with_a_deprecation_warning():
    """report.json / --config files written before the nested config (the flat layout)."""
    flat = {"search_C": 8, "search_epochs": 4, "warmup_epochs": 2, "w_lr": 0.05, "es_batch_size": 64, "es_bn": "running",
            "xi": 0.3, "restarts": 2, "candidates_layers": [3, 5], "final_epochs": 3, "final_drop_path": 0.1,
            "kd_alpha": 0.3, "augment": "flip-crop", "grad_clip": 2.0, "stability_seeds": 2}
    with pytest.warns(ConfigDeprecationWarning, match="search_epochs -> search.epochs"):
        cfg = config_from_dict(EGNASConfig, flat)
    assert cfg == config_from_dict(EGNASConfig, {
        "search": {"C": 8, "epochs": 4, "warmup_epochs": 2, "lr": 0.05, "grad_clip": 2.0},
        "es": {"batch_size": 64, "bn": "running", "xi": 0.3, "restarts": 2}, "sizing": {"candidates_layers": (3, 5)},
        "final": {"epochs": 3, "drop_path": 0.1, "kd_alpha": 0.3, "augment": "flip-crop"}, "stability_seeds": 2})
    assert (cfg.final.lr, cfg.final.weight_decay) == (0.025, 3e-4)  # eg-nas' retrain defaults, not FinetuneConfig's
    assert cfg.final.grad_clip is None and cfg.final.warmup_epochs == 0  # the search's grad_clip / warmup_epochs
    with pytest.warns(ConfigDeprecationWarning):
        assert EGNASConfig.preset("cpu-small", search_epochs=4) == EGNASConfig.preset("cpu-small", search={"epochs": 4})


def test_a_new_leaf_keys_only_the_phases_that_read_it():
    """search_key hashes search + es (+ top level); final_key every sub-config; stability_seeds none."""
    base = EGNASConfig.preset("cpu-small")
    extra = {"seed": 0, "latency_ms": None}

    def keys(cfg: EGNASConfig) -> tuple[str, str]:
        return search_key(cfg, extra), final_key(cfg, extra)

    s0, f0 = keys(base)
    for change in ({"search": {"lr": 0.06}}, {"es": {"xi": 0.5}}, {"objective": "size"}):
        s1, f1 = keys(replace_config(base, **change))
        assert s1 != s0 and f1 != f0, change
    for change in ({"sizing": {"capacity": "macs"}}, {"final": {"lr": 0.05}}, {"final": {"label_smoothing": 0.1}}):
        s1, f1 = keys(replace_config(base, **change))
        assert s1 == s0 and f1 != f0, change
    assert keys(replace_config(base, stability_seeds=2)) == (s0, f0)
    # the new FinetuneConfig fields are left out of the key at their old values, under their flat names
    fin = key_config(base, "final")
    assert "final_epochs" in fin and "kd_alpha" in fin and "final_optimizer" not in fin
    assert key_config(replace_config(base, final={"optimizer": "adam"}), "final")["final_optimizer"] == "adam"


def test_every_final_field_reaches_the_retrain_settings(monkeypatch):
    from types import SimpleNamespace

    import compress.strategies.eg_nas.strategy as strategy_mod

    seen = {}

    def fake_finetune(net, train, val, settings, **kw):
        seen["settings"] = settings
        kw["on_epoch"](1, {"epoch": 1})
        seen["drop_path_prob"] = net.drop_path_prob
        return [{"epoch": 1}]

    monkeypatch.setattr(strategy_mod, "finetune", fake_finetune)
    final = {"epochs": 4, "lr": 0.05, "momentum": 0.8, "weight_decay": 1e-4, "optimizer": "adam",
             "max_steps_per_epoch": 2, "kd_alpha": 0.3, "kd_temperature": 2.0, "augment": "flip-crop",
             "label_smoothing": 0.1, "warmup_epochs": 1, "time_s": 30.0, "grad_clip": 1.0, "drop_path": 0.2}
    assert set(final) == {f.name for f in dataclasses.fields(EGNASConfig().final)}  # every field, tested below
    net = SimpleNamespace(cells=[SimpleNamespace()], drop_path_prob=0.0)
    ctx = SimpleNamespace(seed=3, data=SimpleNamespace(train=None, val=None), teacher=None, runtime=None,
                          log=lambda **k: None, progress=lambda *a: None)
    assert EGNAS(EGNASConfig(final=final))._retrain(net, ctx) == [{"epoch": 1}]
    s = seen["settings"]
    assert (s.epochs, s.lr, s.momentum, s.weight_decay, s.optimizer, s.max_steps_per_epoch) == (4, 0.05, 0.8, 1e-4,
                                                                                             "adam", 2)
    assert (s.kd_alpha, s.kd_temperature, s.augment, s.label_smoothing, s.warmup_epochs) == (0.3, 2.0, "flip-crop",
                                                                                          0.1, 1)
    assert (s.time_budget_s, s.grad_clip, s.keep_best, s.seed) == (30.0, 1.0, True, derive_seed(3, "retrain"))
    assert seen["drop_path_prob"] == pytest.approx(0.2 * 1 / 4)  # ramped over final.epochs


# --------------------------------------------------------------------------- end to end


def test_compress_end_to_end_meets_budget(digits_task, tmp_path):
    import compress.strategies.eg_nas  # noqa: F401  (registers "eg-nas")
    from compress.api import compress
    from compress.serialization import load_student
    from compress.testing import TinyConvNet

    torch.manual_seed(0)
    # allow_slower: this tiny DARTS student runs several times slower than the 3-layer teacher on
    # onnxruntime (more, smaller ops), which compress() refuses by default; the MACs budget is tested here
    res = compress(TinyConvNet().eval(), "macs=0.5x", data=digits_task, strategy="eg-nas",
                   config={**FAST, "stability_seeds": 2},
                   progress=False, out_dir=tmp_path, latency_repeats=3, latency_warmup=1, allow_slower=True)
    assert res.budget_check.ok and res.student_report.cost.macs <= 0.5 * res.teacher.cost.macs
    assert res.validation.ok
    info = res.info
    assert len(info["alpha_entropy_history"]) == 2 and info["best_fitness_history"][0] is None
    assert isinstance(info["best_fitness_history"][1], float)
    assert info["chosen"]["C"] in FAST["sizing"]["candidates_C"] and info["chosen"]["layers"] == 3
    assert info["wall_s_arch_update"] > 0 and info["wall_s_weights"] > 0
    assert {"search", "sizing", "retrain"} <= set(res.wall_s)
    assert [h["epoch"] for h in res.history if h.get("phase") == "search"] == [1, 2]
    assert (tmp_path / "checkpoints" / "eg-nas" / "search.json").is_file()
    report = json.loads((tmp_path / "report.json").read_text())
    # issue 18: what the search did (per-epoch entropy in nats; stability over 2 seeds when asked)
    search = report["search"]
    assert search == report["info"]["search"] and search["alpha_entropy"] == info["alpha_entropy_history"]
    assert len(search["alpha_entropy"]) == 2 and all(0 < h <= math.log(7) + 1e-9 for h in search["alpha_entropy"])
    assert 0.0 <= search["genotype_stability"] <= 1.0 and len(search["stability_seeds"]) == 2
    assert search["objective"] == "size" and search["plan"]["arch_updates"] == 1
    reloaded = load_student(tmp_path, base=build_from_arch(report["info"]["student_arch"]))
    x = next(iter(digits_task.val))[0][:4]
    torch.testing.assert_close(reloaded(x), res.student(x))
