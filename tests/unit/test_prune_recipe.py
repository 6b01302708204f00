"""gp-prune's recipe beyond the paper (issue 14): the iterative schedule, sparse learning before
pruning, and the fine-tune's label smoothing, warm-up and wall-time budget."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from compress import compress
from compress.budgets import Budget
from compress.errors import ConfigError
from compress.strategies._parts import partial_pruning as partial
from compress.strategies.gp_prune.schedule import group_norm_regulariser, interpolated_budget
from compress.strategies.config_tree import ConfigDeprecationWarning, FinetuneConfig, config_from_dict, replace_config
from compress.strategies.gp_prune.config import ImportanceConfig, key_config, phase_settings
from compress.strategies.gp_prune.strategy import GPPrune, GPPruneConfig
from compress.testing import TinyResidualNet
from compress.training import FinetuneSettings, finetune
from compress.training.loop import FitPlan, fit, kd_loss, warmup_cosine_factor


@pytest.mark.parametrize("sub,field,value", [
    ("prune", "schedule", "gradual"), ("prune", "iterative_steps", 0), ("prune", "iterative_steps", 100),
    ("prune", "recovery_epochs", -1), ("prune", "sparse_epochs", -1), ("prune", "sparse_reg", 0.0),
    ("prune", "sparse_reg", 2.0), ("finetune", "label_smoothing", 1.0), ("finetune", "label_smoothing", -0.1),
    ("finetune", "warmup_epochs", 9), ("finetune", "time_s", 0.0), ("finetune", "grad_clip", 0.0),
    ("prune", "iterative_steps", 2.5), ("prune", "schedule", 3),
])
def test_recipe_fields_are_validated(sub, field, value):
    given = {sub: {field: value}}
    given["finetune"] = {"epochs": 5, **given.get("finetune", {})}
    with pytest.raises(ConfigError, match=rf"GPPruneConfig\.{sub}: .*{field}"):
        GPPruneConfig(**given)


def test_a_flat_config_still_loads_with_a_deprecation_warning():
    """The flat spelling used before the nested configs (``--config`` JSON, a ``report.json`` ``config`` block)."""
    flat = {"epochs": 3, "lr": 0.05, "metric": "l1", "schedule": "iterative", "sparse_epochs": 2,
            "finetune_time_s": 60.0, "grad_clip": 1.0}
    with pytest.warns(ConfigDeprecationWarning, match="finetune_time_s -> finetune.time_s"):
        cfg = config_from_dict(GPPruneConfig, flat)
    assert cfg == GPPruneConfig(importance={"metric": "l1"}, prune={"schedule": "iterative", "sparse_epochs": 2},
                                finetune={"epochs": 3, "lr": 0.05, "time_s": 60.0, "grad_clip": 1.0})
    with pytest.warns(ConfigDeprecationWarning):
        assert GPPrune(flat).config == cfg


def test_each_sub_config_keys_only_the_phases_that_read_it():
    """The pruning checkpoint's key holds ``importance`` and ``prune``, and the fine-tune block only
    when the pruning phase fine-tunes (sparse learning, iterative recoveries), less the leaves those
    phases replace (``phase_settings``); the final fine-tune is keyed by its settings (``fit``)."""
    macs = Budget(max_macs=1e6)

    @dataclasses.dataclass(frozen=True)
    class ImportanceWithNewLeaf(ImportanceConfig):
        new_leaf: int = 1

    @dataclasses.dataclass(frozen=True)
    class FinetuneWithNewLeaf(FinetuneConfig):
        new_leaf: int = 1

    one_shot, iterative = GPPruneConfig(), GPPruneConfig(prune={"schedule": "iterative"})
    for cfg in (one_shot, iterative):
        new = dataclasses.replace(cfg, importance=ImportanceWithNewLeaf(new_leaf=2))
        assert key_config(new, macs) == {**key_config(cfg, macs), "new_leaf": 2}
        assert key_config(replace_config(cfg, prune={"max_ratio": 0.9}), macs) != key_config(cfg, macs)
    # the one-shot prune reads no fine-tune leaf: a new one, or a changed lr, keeps its key
    assert key_config(dataclasses.replace(one_shot, finetune=FinetuneWithNewLeaf(new_leaf=2)), macs) == \
        key_config(one_shot, macs)
    assert key_config(replace_config(one_shot, finetune={"lr": 0.1, "grad_clip": 1.0}), macs) == \
        key_config(one_shot, macs)
    # the recoveries of the iterative schedule (and sparse learning) read it: a new leaf and the lr enter its key
    for cfg in (iterative, GPPruneConfig(prune={"sparse_epochs": 2})):
        assert key_config(dataclasses.replace(cfg, finetune=FinetuneWithNewLeaf(new_leaf=2)), macs)["new_leaf"] == 2
        assert key_config(replace_config(cfg, finetune={"lr": 0.1}), macs)["lr"] == 0.1
        # ... but not what phase_settings replaces: a longer final fine-tune resumes from the same pruned network
        longer = replace_config(cfg, finetune={"epochs": 20, "warmup_epochs": 2, "time_s": 60.0})
        assert key_config(longer, macs) == key_config(cfg, macs)
        settings = phase_settings(longer.finetune, 3)
        assert (settings.epochs, settings.warmup_epochs, settings.time_budget_s, settings.keep_best) == (3, 0, None,
                                                                                                         False)


def test_the_interpolated_budget_is_geometric_and_ends_at_the_budget():
    b = Budget(max_macs=25e6, max_params=1e6, max_latency_ms=2.0)
    half = interpolated_budget(b, 0.5, teacher_macs=100e6, teacher_params=4e6, teacher_latency_ms=8.0)
    assert half.max_macs == pytest.approx(50e6) and half.max_params == pytest.approx(2e6)
    assert half.max_latency_ms == pytest.approx(4.0)
    assert interpolated_budget(b, 1.0, teacher_macs=100e6, teacher_params=4e6) is b
    # a limit the teacher already meets, and a latency whose teacher figure is unknown, stay as they are
    loose = interpolated_budget(Budget(max_macs=200e6, max_latency_ms=2.0), 0.5, teacher_macs=100e6,
                                teacher_params=4e6)
    assert loose.max_macs == 200e6 and loose.max_latency_ms == 2.0


def test_the_iterative_schedule_reaches_the_same_budget_as_one_shot(digits_task):
    results = {}
    for schedule in ("one-shot", "iterative"):
        torch.manual_seed(0)
        results[schedule] = compress(
            TinyResidualNet(), "macs=0.5x", data=digits_task, progress=False, mobile=False, memory=False,
            allow_slower=True, config={"finetune": {"epochs": 0, "max_steps_per_epoch": 3},
                                       "importance": {"metric": "l1"},
                                       "prune": {"bisection_steps": 4, "schedule": schedule, "iterative_steps": 3,
                                                 "recovery_epochs": 1}})
    limit = results["one-shot"].budget.max_macs
    for res in results.values():
        assert res.budget_check.ok and res.student_report.cost.macs <= limit
    steps = results["iterative"].info["recipe"]["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    budgets = [s["budget"]["max_macs"] for s in steps]
    assert budgets[0] > budgets[1] > budgets[2] == pytest.approx(limit)  # toward the budget, ending on it
    assert all(s["macs"] <= b for s, b in zip(steps, budgets))
    assert len(steps[0]["val_acc"]) == 1 and "val_acc" not in steps[-1]  # a recovery after every step but the last
    assert results["one-shot"].info["recipe"] == {"schedule": "one-shot", "sparse_epochs": 0}


def _group_norm_share_removed(model: torch.nn.Module, example: torch.Tensor, ratio: float = 0.5) -> float:
    """Share of the summed L2 group norms carried by the ``ratio`` lowest-norm channels of every
    prunable group (the channels a norm-based prune would remove)."""
    dg = partial.dependency_graph(model, example)
    imp = __import__("torch_pruning").importance.GroupMagnitudeImportance(p=2)
    removed = total = 0.0
    for group in dg.get_all_groups(ignored_layers=[model.head], root_module_types=[torch.nn.Conv2d]):
        norms = imp(group).detach()
        k = int(len(norms) * ratio)
        removed += float(norms.sort().values[:k].sum())
        total += float(norms.sum())
    return removed / total


def test_sparse_learning_lowers_the_group_norms_of_the_channels_removed_later(digits_task):
    torch.manual_seed(0)
    base = TinyResidualNet()
    settings = FinetuneSettings(epochs=2, lr=0.05, kd_alpha=0.0, keep_best=False, max_steps_per_epoch=10)
    finetune(base, digits_task.train, None, settings)  # a model that has learned something first
    example = next(iter(digits_task.train))[0][:2]
    shares = {}
    for sparse in (False, True):
        model = __import__("copy").deepcopy(base)
        after = None
        if sparse:
            pruner = group_norm_regulariser(model, example, [model.head], reg=0.05, plan=None)
            after = lambda pruner=pruner, model=model: pruner.regularize(model)  # noqa: E731
        torch.manual_seed(1)
        finetune(model, digits_task.train, None, settings, after_backward=after)
        shares[sparse] = _group_norm_share_removed(model, example)
    assert shares[True] < 0.8 * shares[False], shares


def test_sparse_learning_runs_through_compress_and_is_reported(digits_task):
    torch.manual_seed(0)
    res = compress(TinyResidualNet(), "macs=0.6x", data=digits_task, progress=False, mobile=False, memory=False,
                   allow_slower=True, config={"finetune": {"epochs": 0, "max_steps_per_epoch": 3},
                                              "importance": {"metric": "l1"},
                                              "prune": {"bisection_steps": 3, "sparse_epochs": 2}})
    assert res.budget_check.ok
    sparse = res.info["recipe"]["sparse"]
    assert [e["epoch"] for e in sparse] == [1, 2] and all(math.isfinite(e["loss"]) for e in sparse)
    assert [h["epoch"] for h in res.history if h.get("phase") == "sparse"] == [1, 2]


def test_label_smoothing_applies_to_the_cross_entropy_term():
    torch.manual_seed(0)
    z, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert kd_loss(z, y, None, label_smoothing=0.1) == pytest.approx(float(F.cross_entropy(z, y, label_smoothing=0.1)))
    assert kd_loss(z, y, None, label_smoothing=0.1) != pytest.approx(float(F.cross_entropy(z, y)))


def test_warmup_then_cosine():
    f = [warmup_cosine_factor(s, 10, 2) for s in range(11)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0) and f[10] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(f[1:], f[2:]))  # non-increasing after the warm-up


def test_a_time_budget_plans_the_epochs_from_the_first_one(monkeypatch):
    # a fake clock: every reading advances 1 s, so the first epoch "takes" 1 s; 3.5 s fit 3 epochs
    clock = itertools.count()
    monkeypatch.setattr("compress.training.loop.time.perf_counter", lambda: float(next(clock)))
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(4, 4), torch.randint(0, 2, (4,))) for _ in range(3)]
    planned = []
    plan = FitPlan(modules=[model], optimizer=opt, epochs=10, time_budget_s=3.5, on_planned=planned.append,
                   step=lambda b: F.cross_entropy(model(b[0]), b[1]))
    history = fit(plan, data)
    assert planned == [3] and len(history) == 3 and history[0]["planned_epochs"] == 3
