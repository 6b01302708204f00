"""Evolution of pruning metrics (GECCO'22 Sec. 3.2-3.4, Sec. 4; ALGORITHMS.md 2(a)-(e)).

Loop tests use the millisecond ``SyntheticFitness`` (a deterministic function of the tree);
one test runs the real (tiny) pruning tasks end to end.
"""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch

from compress.errors import ConfigError
from compress.evolution import breeding, engine, fitness, tasks
from compress.evolution.breeding import Breeder, Individual, disjoint_tournaments, select_parents
from compress.evolution.config import EvolveConfig, combine_fitness
from compress.evolution.evolve import evolve_metric, process_map
from compress.evolution.metrics import METRICS, SOAP, PruningMetric
from compress.evolution.trees import is_valid, parse_tree, readable_formula
from compress.training import Runtime, RuntimeOptions
from compress.training.data import flip_crop


def _pop(n: int, seed: int = 0) -> list[Individual]:
    rng = random.Random(seed)
    names = list(SOAP)
    return [Individual(parse_tree(SOAP[names[i % len(names)]]), rng.random(), "soap") for i in range(n)]


def _stable(history) -> list[dict]:
    """History without wall-clock fields (the only non-deterministic entries)."""
    return [{k: v for k, v in h.items() if k != "wall_s"} for h in history]


class CountingFitness:
    """SyntheticFitness that records every tree it is asked to evaluate."""

    def __init__(self) -> None:
        self.inner = fitness.SyntheticFitness()
        self.calls: list[str] = []

    def __call__(self, item):
        self.calls.append(item[0])
        return self.inner(item)


# ----------------------------------------------------------------------------- config


def test_presets_and_validation():
    full = EvolveConfig.preset("full", data_dir="/data")
    assert (full.population, full.generations, full.init_soap, full.n_select, full.tournament_size,
            full.n_reproduce, full.n_fresh, full.cx_prob, full.mut_prob, full.alpha) == (
        40, 25, 20, 10, 4, 24, 6, 0.75, 0.75, 0.5)
    small = EvolveConfig.preset("cpu-small")
    assert (small.population, small.init_soap, small.n_select, small.n_reproduce, small.n_fresh) == (8, 4, 2, 5, 1)
    assert 3 <= small.generations <= 4 and small.tasks == "cpu-small"
    with pytest.raises(ConfigError, match="data_dir"):
        EvolveConfig.preset("full")
    with pytest.raises(ConfigError, match="must equal"):
        EvolveConfig(tasks="synthetic", n_reproduce=23)
    with pytest.raises(ConfigError, match="disjoint"):
        EvolveConfig(tasks="synthetic", tournament_size=5)
    with pytest.raises(ConfigError, match="unknown evolve preset"):
        EvolveConfig.preset("cpu-big")
    with pytest.raises(ConfigError, match="unknown SOAP"):
        EvolveConfig(tasks="synthetic", soap=("l1", "l7"))
    json.dumps(small.to_dict())  # JSON-serialisable


def test_fitness_combination_eq1_eq2():
    a, b = 0.98, 0.81
    assert combine_fitness(a, b, 0.5) == pytest.approx(math.sqrt(a * b), rel=1e-12)
    assert combine_fitness(a, b, 1.0) == pytest.approx(a, rel=1e-12)
    assert combine_fitness(a, b, 0.0) == pytest.approx(b, rel=1e-12)
    assert combine_fitness(a, b, 0.3, "arithmetic") == pytest.approx(0.3 * a + 0.7 * b)
    assert combine_fitness(0.0, b, 0.5) == 0.0 and combine_fitness(float("nan"), b, 0.5) == 0.0


def test_readable_formula():
    assert readable_formula(SOAP["fisher"]) == "(mean_g(F+) - mean_g(F-))^2 / ((var_g(F+) + var_g(F-)) + 1e-4)"
    assert readable_formula(SOAP["l1"]) == "sum_g(|W_I|)"


# ----------------------------------------------------------------------------- selection / variation


def test_disjoint_tournaments_cover_everyone_once():
    pop = _pop(40)
    random.seed(3)
    groups = disjoint_tournaments(pop, 10, 4)
    ids = [id(ind) for g in groups for ind in g]
    assert len(groups) == 10 and all(len(g) == 4 for g in groups)
    assert sorted(ids) == sorted(id(i) for i in pop)  # every individual in exactly one tournament
    random.seed(3)
    winners = select_parents(pop, EvolveConfig(tasks="synthetic"))
    assert [w.fitness for w in winners] == [max(i.fitness for i in g) for g in groups]
    # deap's selTournament variant samples with replacement but returns k tournament winners
    winners = select_parents(pop, EvolveConfig(tasks="synthetic", selection="deap"))
    assert len(winners) == 10 and all(any(w is p for p in pop) for w in winners)


def test_variation_with_repair_keeps_population_valid_and_full():
    cfg = EvolveConfig(tasks="synthetic")  # paper sizes: 40 = 10 + 24 + 6
    breeder = Breeder(cfg)
    random.seed(0)
    pop = breeder.init_population()
    assert len(pop) == 40 and sum(i.origin == "soap" for i in pop) == 20
    for gen in range(3):
        for ind in pop:
            if ind.fitness is None:
                ind.fitness = random.random()
        parents_before = sorted((i.expr, i.fitness) for i in pop)
        pop = breeder.next_generation(pop)
        assert len(pop) == 40
        assert all(is_valid(i.tree) and i.tree.height <= cfg.max_height for i in pop)
        # parents re-enter with their cached fitness, everything else is new
        assert all(p.origin == "parent" and (p.expr, p.fitness) in parents_before for p in pop[:10])
        assert all(i.fitness is None for i in pop[10:])
    assert breeder.repairs > 0  # invalid variations happened and were repaired


def test_repair_is_bounded_and_falls_back_to_soap(monkeypatch):
    soap = set(SOAP.values())
    monkeypatch.setattr(breeding, "is_valid", lambda tree: str(tree) in soap)  # every varied tree is "invalid"
    cfg = EvolveConfig.preset("synthetic", max_repair_tries=3, cx_prob=1.0, mut_prob=1.0, fresh_soap_prob=0.0)
    breeder = Breeder(cfg)
    random.seed(1)
    pop = breeder.init_population()
    for ind in pop:
        ind.fitness = 0.5
    nxt = breeder.next_generation(pop)
    assert len(nxt) == cfg.population
    assert all(i.expr in soap for i in nxt)
    assert breeder.fallbacks >= cfg.n_reproduce + cfg.n_fresh


# ----------------------------------------------------------------------------- the loop


def test_elitism_cache_and_evaluation_counter(tmp_path):
    cfg = EvolveConfig.preset("synthetic", generations=3)
    fit = CountingFitness()
    res = evolve_metric(cfg, out_dir=tmp_path, seed=0, fitness_fn=fit)
    assert len(fit.calls) == len(set(fit.calls)) == res.evaluations  # each tree evaluated once
    seen: set[str] = set()
    for h in res.history:
        new = set(h["exprs"]) - seen
        assert h["evaluations"] == len(new)  # counter == individuals never evaluated before
        seen |= set(h["exprs"])
        assert len(h["exprs"]) == cfg.population
    for prev, cur in zip(res.history, res.history[1:]):
        before = dict(zip(prev["exprs"], prev["fitnesses"]))
        for expr, f, origin in zip(cur["exprs"][: cfg.n_select], cur["fitnesses"], cur["origins"]):
            assert origin == "parent" and before[expr] == f  # elitism with cached fitness
        assert cur["best"] >= prev["best"]  # disjoint tournaments covering everyone keep the best
    so_far = [h["best_so_far"] for h in res.history]
    assert so_far == sorted(so_far) and res.best_fitness == so_far[-1]
    assert res.history[-1]["best"] >= res.soap_best_gen0


def test_same_seed_same_result_and_outputs(tmp_path):
    cfg = EvolveConfig.preset("synthetic", generations=2)
    state = random.getstate()
    r1 = evolve_metric(cfg, out_dir=tmp_path / "a", seed=5)
    assert random.getstate() == state  # the caller's random state is given back
    r2 = evolve_metric(cfg, out_dir=tmp_path / "b", seed=5)
    assert [h["expr"] for h in r1.hall_of_fame] == [h["expr"] for h in r2.hall_of_fame]
    assert _stable(r1.history) == _stable(r2.history)
    # outputs: best metric reloads, curves written
    d = json.loads((tmp_path / "a" / "best_metric.json").read_text())
    m = PruningMetric.from_dict(d)
    assert m.expr == r1.best_expr and d["formula"] == r1.best_formula
    curves = json.loads((tmp_path / "a" / "fitness.json").read_text())
    assert curves["best_so_far"] == [h["best_so_far"] for h in r1.history] and len(curves["p25"]) == 3
    assert (tmp_path / "a" / "fitness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kill_at", [("generation", 2), ("evaluate", 3)])
def test_resume_after_kill_equals_uninterrupted(tmp_path, kill_at):
    cfg = EvolveConfig.preset("synthetic", generations=4)
    full = evolve_metric(cfg, out_dir=tmp_path / "full", seed=1)

    class Killed(Exception):
        pass

    def killer(phase, done, total, info):
        if phase == kill_at[0] and (done if phase == "generation" else info["generation"]) == kill_at[1] and (
                phase == "generation" or done == 2):
            raise Killed

    with pytest.raises(Killed):
        evolve_metric(cfg, out_dir=tmp_path / "run", seed=1, progress=killer)
    ck = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert ck["generation"] == 2
    res = evolve_metric(cfg, out_dir=tmp_path / "run", seed=1)
    assert res.resumed_from == 2
    assert _stable(res.history) == _stable(full.history)
    assert [h["expr"] for h in res.hall_of_fame] == [h["expr"] for h in full.hall_of_fame]
    assert res.best_fitness == full.best_fitness and res.evaluations == full.evaluations


def test_resume_refuses_a_different_config(tmp_path):
    cfg = EvolveConfig.preset("synthetic", generations=1)
    evolve_metric(cfg, out_dir=tmp_path, seed=0)
    with pytest.raises(ConfigError, match="generations"):
        evolve_metric(EvolveConfig.preset("synthetic", generations=2), out_dir=tmp_path, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        evolve_metric(cfg, out_dir=tmp_path, seed=1)
    again = evolve_metric(cfg, out_dir=tmp_path, seed=0)  # same config: resumes a finished run
    assert again.resumed_from == 1 and len(again.history) == 2
    fresh = evolve_metric(EvolveConfig.preset("synthetic", generations=2), out_dir=tmp_path, seed=0, resume=False)
    assert fresh.resumed_from is None and len(fresh.history) == 3


def test_serial_and_process_map_identical(tmp_path):
    cfg = EvolveConfig.preset("synthetic", generations=1)
    serial = evolve_metric(cfg, out_dir=tmp_path / "s", seed=2)
    with process_map(2) as pm:
        par = evolve_metric(cfg, out_dir=tmp_path / "p", seed=2, map_fn=pm)
    assert _stable(par.history) == _stable(serial.history)
    assert par.hall_of_fame == serial.hall_of_fame


# ----------------------------------------------------------------------------- pruning tasks


def _tiny_net(spec_name: str):
    spec = {"A": tasks.PROFILES["tiny"][0], "B": tasks.PROFILES["tiny"][1]}[spec_name]
    shape = (1, 16, 16) if spec.dataset == "digits" else (3, 16, 16)
    torch.manual_seed(0)
    net = engine.build_net(spec, shape, 10).eval()
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return spec, net, torch.randn(7, *shape)


@pytest.mark.parametrize("which", ["A", "B"])
def test_masked_and_sliced_nets_agree(which):
    spec, net, x = _tiny_net(which)
    masked = copy.deepcopy(net)
    g = torch.Generator().manual_seed(1)
    for i, w in enumerate(net.widths):
        keep = torch.sort(torch.randperm(w, generator=g)[: max(1, w // 2)]).values
        engine.prune_unit(net, i, keep)
        engine.mask_channels(masked, i, keep)
    assert net.widths == tuple(max(1, w // 2) for w in spec.widths)
    with torch.no_grad():
        torch.testing.assert_close(net(x), masked(x), rtol=1e-5, atol=1e-6)


def test_lowest_scored_channels_are_removed_and_chunking_is_exact():
    spec, net, x = _tiny_net("B")
    y = torch.arange(len(x)) % 3
    ops = engine.channel_operands(net, 3, x, y, spec.max_map_hw)
    metric = PruningMetric.from_string(METRICS["fisher"])
    scores = metric.score(ops)
    torch.testing.assert_close(engine.score_channels(metric, ops, chunk=5), scores, rtol=0, atol=0)
    r = spec.schedule[3][0]
    order = engine.removal_order(scores)
    keep = torch.sort(order[r:]).values
    before = net.units[3].layer.weight.detach().clone()
    engine.prune_unit(net, 3, keep)
    removed = set(range(spec.widths[3])) - set(keep.tolist())
    assert max(scores[list(removed)]) <= min(scores[keep])  # exactly the r lowest
    torch.testing.assert_close(net.units[3].layer.weight, before[keep])
    assert engine.removal_order(torch.tensor([1.0, 0.0, 1.0, 0.0])).tolist() == [1, 3, 0, 2]  # stable ties


def _reference_train(net, data, *, lr, epochs, batch_size, seed, milestones, gamma):
    """The task training written out by hand (SGD Nesterov, step schedule, flip-crop, keep-best):
    what train_epochs must compute on the runtime."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3, nesterov=True)
    n = len(data.y_train)
    steps = math.ceil(n / batch_size)
    marks = [int(m * epochs * steps) for m in milestones]
    gen = torch.Generator().manual_seed(seed)
    best, best_state, it = -1.0, None, 0
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=gen)
        for s in range(steps):
            idx = perm[s * batch_size: (s + 1) * batch_size]
            xb = flip_crop(data.x_train[idx], gen)
            for g in opt.param_groups:
                g["lr"] = lr * gamma ** sum(it >= m for m in marks)
            loss = torch.nn.functional.cross_entropy(net(xb), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
        acc = fitness.accuracy(net, data.x_val, data.y_val)
        if acc > best:
            best, best_state = acc, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    return best


def test_task_training_runs_on_fit_and_matches_the_hand_written_loop(monkeypatch):
    spec = tasks.PROFILES["tiny"][1]  # VGG-4 with BN, SGD with the step schedule
    full = tasks.load_splits(spec, 0)
    data = tasks.Splits(full.x_train[:200], full.y_train[:200], full.x_val, full.y_val, full.x_fit, full.y_fit,
                     full.num_classes)
    plans = []
    real_fit = fitness.fit
    monkeypatch.setattr(fitness, "fit", lambda plan, loader, **kw: plans.append(plan) or real_fit(plan, loader, **kw))
    kw = dict(lr=0.05, epochs=3, batch_size=32, seed=5, milestones=(0.4, 0.8), gamma=0.28)

    def trained(runtime):
        torch.manual_seed(0)
        net = engine.build_net(spec, data.input_shape, data.num_classes)
        acc = fitness.train_epochs(net, data, optimizer="sgd", weight_decay=1e-3, schedule="step", augment="flip-crop",
                              runtime=runtime, **kw)
        return net, acc

    plain = Runtime(RuntimeOptions(device="cpu", channels_last="off"))
    net, acc = trained(plain)
    assert len(plans) == 1 and plans[0].keep_best and plans[0].epochs == 3
    total = 3 * math.ceil(200 / 32)
    assert [plans[0].lr_factor(i) for i in (0, int(0.4 * total), total - 1)] == [1.0, 0.28, 0.28**2]
    torch.manual_seed(0)
    ref = engine.build_net(spec, data.input_shape, data.num_classes)
    assert acc == _reference_train(ref, data, **kw)  # same batches, schedule and kept epoch, bit for bit
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    assert not net.training and {p.device.type for p in net.parameters()} == {"cpu"}
    assert all(p.is_contiguous() for p in net.parameters())
    net2, acc2 = trained(None)  # the default runtime: deterministic for the seed
    net3, acc3 = trained(None)
    assert acc2 == acc3
    assert all(torch.equal(a, b) for a, b in zip(net2.state_dict().values(), net3.state_dict().values()))
    assert all(p.is_contiguous() for p in net2.parameters())


def test_tiny_real_task_evaluation(tmp_path):
    fit = fitness.TaskFitness("tiny", run_seed=0, cache_dir=str(tmp_path))
    info = fit.prepare()
    assert [i["widths_after"] for i in info] == [list(s.pruned_widths) for s in tasks.PROFILES["tiny"]]
    assert all(i["macs_after"] < 0.7 * i["macs_before"] for i in info)
    r1 = fit((SOAP["l1"], 7))
    r2 = fit((SOAP["l1"], 7))
    assert r1["error"] is None and r1["acc"] == r2["acc"]  # deterministic for the same (tree, seed)
    assert all(0.0 < a <= 1.0 for a in r1["acc"])
    assert [t["widths"] for t in r1["tasks"]] == [list(s.pruned_widths) for s in tasks.PROFILES["tiny"]]
    bad = fit(("sum_g(F", 7))
    assert bad["acc"] == [0.0, 0.0] and "MetricError" in bad["error"]
    again = fitness.prepare_task(tasks.PROFILES["tiny"][0], 0, tmp_path)  # the baseline comes from the cache
    assert again.info["cached"] is True
