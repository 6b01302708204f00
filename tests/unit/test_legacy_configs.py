"""Configs and checkpoints written before the nested configs still load and resume (issue 15, part 5).

``tests/fixtures/legacy_configs_6649a19.json`` was written by the flat configs (commit 6649a19, the
last before the change): every strategy's config as ``report.json`` held it (``config_to_dict`` of
its presets and of one variant with non-default values in every phase) and the checkpoint keys the
flat code computed for it. The nested code must read each flat config back (with a
:class:`ConfigDeprecationWarning`) into the config the new spelling gives, and compute the same
checkpoint keys, so that a run started before the change resumes after it -- except for the keys
listed in :data:`CHANGED`, each with its reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.budgets import Budget
from compress.strategies.config_tree import ConfigDeprecationWarning, config_from_dict, config_to_dict, replace_config
from compress.strategies.darts_gal.checkpoints import phase_key
from compress.strategies.darts_gal.config import DartsGalConfig
from compress.strategies.eg_nas.config import EGNASConfig, final_key, search_key
from compress.strategies.gp_prune.config import GPPruneConfig, key_config
from compress.strategies.grow.checkpoints import run_key
from compress.strategies.grow.config import GrowConfig

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = json.loads((ROOT / "tests/fixtures/legacy_configs_6649a19.json").read_text())
CLASSES = {"darts-gal": DartsGalConfig, "eg-nas": EGNASConfig, "gp-prune": GPPruneConfig, "grow": GrowConfig}

#: keys that change on purpose: (strategy, case or "*", key name or prefix) -> why
CHANGED = {
    ("darts-gal", "*", "retrain/"): "the retrain now keys the fine-tune block it reads (its own kd_alpha, "
                                    "kd_temperature, augment, drop_path); before, those keyed the baseline only",
    ("gp-prune", "variant", "prune/"): "an iterative schedule's recovery fine-tunes read the fine-tune block, which "
                                       "now enters the pruning key (a changed lr left a stale pruning checkpoint)",
}


#: presets whose values changed on purpose since the fixture: (strategy, preset) -> (the fields as they were, why)
PRESET_CHANGES = {
    ("darts-gal", "cpu-small"): (
        {"search": {"max_steps_per_epoch": 8, "arch_reference_steps": 19_550, "arch_batch_size": None,
                    "arch_weight_decay": 1e-3}},
        "issue 18, 2026-12-04: alpha steps on 256 images without weight decay, twice DARTS' travel, 16 steps per "
        "epoch (the search's entropy goal; compress/strategies/darts_gal/search.py)"),
}


def _changed(strategy: str, case: str, key: str) -> bool:
    return any(s == strategy and c in (case, "*") and key.startswith(k) for s, c, k in CHANGED)


def _load(strategy: str, case: str):
    with pytest.warns(ConfigDeprecationWarning, match="flat config keys are deprecated"):
        return config_from_dict(CLASSES[strategy], FIXTURE[strategy][case]["config"])


def _keys(strategy: str, cfg) -> dict[str, object]:
    if strategy == "darts-gal":
        return {f"{p}/latency={ls}": phase_key(cfg, p, {"prev": "x"}, latency_search=ls)
                for p in ("search", "baseline", "gal", "retrain") for ls in (False, True)}
    if strategy == "eg-nas":
        return {"search": search_key(cfg, {"x": 1, "latency_ms": None}),
                "search/latency": search_key(cfg, {"x": 1, "latency_ms": 2.5}),
                "final": final_key(cfg, {"seed": 0, "latency_ms": None})}
    if strategy == "gp-prune":
        return {"prune/macs": key_config(cfg, Budget(max_macs=1e6)),
                "prune/latency": key_config(cfg, Budget(max_latency_ms=2.0))}
    return {"run": run_key(cfg, seed=0, teacher="t", budget="b", sizes=[1, 2], classes=10)}


CASES = [(s, c) for s in FIXTURE for c in FIXTURE[s]]


@pytest.mark.parametrize("strategy,case", CASES, ids=[f"{s}-{c}" for s, c in CASES])
def test_a_flat_config_written_before_loads_into_the_nested_one(strategy, case):
    cfg = _load(strategy, case)
    cls = CLASSES[strategy]
    if case != "variant":
        expected = cls() if case == "paper" else cls.preset(case)
        if (strategy, case) in PRESET_CHANGES:
            assert cfg != expected, f"{strategy} {case}: listed in PRESET_CHANGES but unchanged; drop it from there"
            expected = replace_config(expected, **PRESET_CHANGES[strategy, case][0])
        assert cfg == expected
    assert config_from_dict(cls, config_to_dict(cfg)) == cfg  # the nested spelling round-trips, silently


@pytest.mark.parametrize("strategy,case", CASES, ids=[f"{s}-{c}" for s, c in CASES])
def test_checkpoint_keys_written_before_still_match(strategy, case):
    old = FIXTURE[strategy][case]["keys"]
    new = _keys(strategy, _load(strategy, case))
    assert set(new) == set(old)
    same = {k for k in old if not _changed(strategy, case, k)}
    assert {k: new[k] for k in same} == {k: old[k] for k in same}
    for k in set(old) - same:
        assert new[k] != old[k], f"{strategy} {case} {k}: listed in CHANGED but unchanged; drop it from CHANGED"


def test_an_old_report_json_config_block_loads():
    """A report.json from an early gp-prune run (before most of today's fields existed)."""
    report = json.loads((ROOT / "benchmarks/results/gp_prune_resnet56_xi_star/report.json").read_text())
    with pytest.warns(ConfigDeprecationWarning):
        cfg = config_from_dict(GPPruneConfig, report["config"])
    assert (cfg.finetune.epochs, cfg.finetune.lr, cfg.finetune.augment, cfg.importance.metric) == (12, 0.02, "flip-crop",
                                                                                                   "xi_star")
