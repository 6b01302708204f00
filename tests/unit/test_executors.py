"""Executors (serial, process, Ray): order, identical results, seeded searches, killed workers.

Ray runs on one local instance of 2 CPUs started once for the module (``ray_cluster``).
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from compress.errors import ConfigError, ExecutorError
from compress.executors import Executor, ProcessExecutor, RayExecutor, SerialExecutor, make_executor
from compress.strategies.eg_nas import EGNASConfig, EGNASSearch
from compress.evolution.config import EvolveConfig
from compress.evolution.evolve import ProcessMap, evolve_metric, process_map
from compress.testing.workers import KillOnce, fail_on_three, seeded_draw, slow_square, square_and_pid

ray = pytest.importorskip("ray")  # the test extra installs it; without it only these tests skip


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs (2 workers), shared by the module's tests."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool():
    with ProcessExecutor(2) as ex:
        yield ex


class CountingRay(RayExecutor):
    """A RayExecutor that counts the items it sends to Ray (proof that the run used it)."""

    def __init__(self) -> None:
        super().__init__()
        self.items = 0

    def map(self, fn, items):
        items = list(items)
        self.items += len(items)
        return super().map(fn, items)


# --------------------------------------------------------------------------- the interface


def test_results_come_back_in_item_order(ray_cluster, pool):
    items = list(range(6))  # slow_square sleeps longest on the first items: completion order is reversed
    expected = [x * x for x in items]
    with RayExecutor() as rex:
        for ex in (SerialExecutor(), pool, rex):
            assert ex.map(slow_square, items) == expected, ex.name
            assert ex(slow_square, []) == []


def test_serial_process_and_ray_give_identical_results(ray_cluster, pool):
    items = [(7, k) for k in range(10)]
    serial = SerialExecutor().map(seeded_draw, items)
    with RayExecutor() as rex:
        assert pool.map(seeded_draw, items) == serial
        assert rex.map(seeded_draw, items) == serial
        # the work really ran elsewhere
        pids = {pid for _, pid in rex.map(square_and_pid, range(4))}
    assert os.getpid() not in pids
    assert os.getpid() not in {pid for _, pid in pool.map(square_and_pid, range(4))}
    assert len({tuple(r) for r in serial}) == len(items)  # distinct seeds, distinct draws


def test_errors_of_the_function_propagate_unretried(ray_cluster, pool):
    with RayExecutor() as rex:
        for ex in (SerialExecutor(), pool, rex):
            with pytest.raises(ValueError, match="candidate 3 is invalid"):
                ex.map(fail_on_three, range(5))
    assert pool.map(fail_on_three, [0, 1]) == [1, 2]  # the pool is still usable


def test_make_executor_names_instances_and_errors():
    assert isinstance(make_executor(None), SerialExecutor)
    assert isinstance(make_executor("serial"), SerialExecutor)
    proc = make_executor("process", workers=3)
    assert isinstance(proc, ProcessExecutor) and proc.workers == 3
    r = make_executor("ray", ray_address="ray://head:10001")
    assert isinstance(r, RayExecutor) and r.address == "ray://head:10001" and not r._started
    assert make_executor("ray", workers=2).num_cpus == 2
    mine = SerialExecutor()
    assert make_executor(mine) is mine
    with pytest.raises(ConfigError, match="did you mean 'ray'"):
        make_executor("rya")
    with pytest.raises(ConfigError, match="did you mean 'process'"):
        make_executor("proces")
    with pytest.raises(ConfigError, match="ray_address applies to executor='ray'"):
        make_executor("serial", ray_address="auto")
    with pytest.raises(ConfigError, match="workers must be a positive int"):
        ProcessExecutor(0)
    with pytest.raises(ConfigError, match="num_gpus_per_task"):
        RayExecutor(num_gpus_per_task=-1)
    # the old GP names still work and are the same executor
    assert ProcessMap is ProcessExecutor and isinstance(process_map(2), Executor)


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'slimforge\[ray\]'"):
        RayExecutor().map(slow_square, [1])


def test_ray_executor_leaves_a_callers_instance_running(ray_cluster):
    ex = RayExecutor()
    assert ex.map(slow_square, [5, 6]) == [25, 36]
    ex.close()
    assert ray.is_initialized()  # started by the fixture, not by the executor
    assert ex.map(slow_square, [6]) == [36]  # usable again after close


# --------------------------------------------------------------------------- killed workers


def test_process_pool_retries_after_a_killed_worker(pool, tmp_path):
    marker = tmp_path / "killed"
    before = pool.restarts
    assert pool.map(KillOnce(marker, target=2), range(6)) == [x * x for x in range(6)]
    assert marker.exists() and pool.restarts == before + 1  # the worker was killed once, the pool rebuilt
    assert pool.map(slow_square, [4]) == [16]


def test_process_pool_gives_up_after_max_retries(tmp_path):
    with ProcessExecutor(1, max_retries=1) as ex:
        with pytest.raises(ExecutorError, match="died 2 times"):
            ex.map(KillOnce(tmp_path / "m", target=0, always=True), range(2))


def test_ray_retries_a_killed_worker(ray_cluster, tmp_path):
    marker = tmp_path / "killed"
    with RayExecutor(max_retries=2) as ex:
        assert ex.map(KillOnce(marker, target=2), range(6)) == [x * x for x in range(6)]
    assert marker.exists()  # the first attempt did kill its worker


# --------------------------------------------------------------------------- seeded searches


def test_gp_evolution_serial_and_ray_identical(ray_cluster, tmp_path):
    """A seeded GP-metric evolution on the "tiny" tasks (real retraining, per-tree seeds)."""
    cfg = EvolveConfig.preset("tiny", generations=1)
    cache = tmp_path / "cache"
    serial = evolve_metric(cfg, out_dir=tmp_path / "s", seed=4, cache_dir=cache)
    ex = CountingRay()
    with ex:
        dist = evolve_metric(cfg, out_dir=tmp_path / "r", seed=4, cache_dir=cache, executor=ex)
    assert ex.items == serial.evaluations > cfg.population  # every evaluation went through Ray
    assert dist.best_expr == serial.best_expr and dist.best_fitness == serial.best_fitness
    assert dist.best_acc == serial.best_acc
    assert dist.hall_of_fame == serial.hall_of_fame

    def stable(history):
        return [{k: v for k, v in h.items() if k != "wall_s"} for h in history]

    assert stable(dist.history) == stable(serial.history)
    assert [h["best_so_far"] for h in dist.history] == [h["best_so_far"] for h in serial.history]


def _tiny_search(seed: int, executor: Executor | None = None) -> EGNASSearch:
    cfg = EGNASConfig(search=dict(C=4, layers=2, partial_channels=1, epochs=2, warmup_epochs=1, batch_size=16,
                                  max_steps_per_epoch=2, val_batches=1),
                      es=dict(batch_size=16, restarts=2, popsize=4))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    y = ((x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()).clamp_max(2)
    val = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16)
    return EGNASSearch(cfg, TensorDataset(x, y), val, 3, (3, 8, 8), seed, executor=executor)


def test_eg_nas_search_serial_and_ray_identical(ray_cluster):
    serial = _tiny_search(3).run()
    ex = CountingRay()
    with ex:
        dist = _tiny_search(3, ex).run()
    assert ex.items == 2 * 4  # restarts x popsize candidates of the one ES epoch went through Ray
    assert torch.equal(dist.alphas_normal, serial.alphas_normal)
    assert torch.equal(dist.alphas_reduce, serial.alphas_reduce)
    assert dist.genotype == serial.genotype
    assert [h.get("best_fitness") for h in dist.history] == [h.get("best_fitness") for h in serial.history]
    assert [r["best_f"] for r in dist.last_es] == [r["best_f"] for r in serial.last_es]


def test_supernet_evaluation_draws_no_random_numbers():
    """Why eg-nas candidates need no seed of their own: the fitness forward uses no RNG."""
    from compress.strategies.eg_nas import SupernetEvaluator

    search = _tiny_search(0)
    x, y = search.es_batch(0)
    ev = SupernetEvaluator(search.model, x, y)
    z = search.model.arch_vector().double().numpy()
    state = torch.get_rng_state()
    first = ev(z)
    assert torch.equal(torch.get_rng_state(), state)
    assert ev(z) == first


# --------------------------------------------------------------------------- CLI


def test_cli_evolve_metric_executors(ray_cluster, tmp_path):
    from typer.testing import CliRunner

    from compress.cli import app

    cli = CliRunner()
    base = ["evolve-metric", "--preset", "synthetic", "--generations", "1", "--seed", "5"]
    best = {}
    for name, extra in {"serial": [], "ray": ["--executor", "ray"]}.items():
        res = cli.invoke(app, base + ["--out", str(tmp_path / name)] + extra)
        assert res.exit_code == 0, res.output
        best[name] = json.loads((tmp_path / name / "best_metric.json").read_text())
    assert best["ray"]["fitness"] == best["serial"]["fitness"]
    assert best["ray"]["expr"] == best["serial"]["expr"]
    assert ray.is_initialized()  # the CLI reused the running instance and left it alone
    res = cli.invoke(app, base + ["--out", str(tmp_path / "bad"), "--executor", "rya"])
    assert res.exit_code == 2 and "did you mean 'ray'" in res.output
    assert not (tmp_path / "bad" / "best_metric.json").exists()


def test_executors_say_which_devices_their_workers_can_use():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert SerialExecutor().can_run_on(cpu) and SerialExecutor().can_run_on(cuda)  # the caller's own process
    procs = ProcessExecutor(2)
    assert procs.can_run_on("cpu") and not procs.can_run_on(cuda)
    assert RayExecutor().can_run_on(cpu) and not RayExecutor().can_run_on(cuda)  # Ray hides GPUs from such tasks
    assert RayExecutor(num_gpus_per_task=0.25).can_run_on(cuda)


def test_eg_nas_refuses_a_cuda_runtime_with_workers_that_cannot_see_the_gpu():
    from types import SimpleNamespace

    from compress.strategies.eg_nas import EGNAS

    ctx = SimpleNamespace(executor=RayExecutor(), runtime=SimpleNamespace(device=torch.device("cuda")))
    with pytest.raises(ConfigError, match="num_gpus_per_task") as err:
        EGNAS(EGNASConfig()).run(ctx)
    assert "executor='serial'" in str(err.value)
