"""compress.strategies.config_tree: nested configs, phase keys from sub-configs, the old flat keys (issue 15, part 5)."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from compress.errors import ConfigError
from compress.strategies.base import Strategy
from compress.strategies.config_tree import (ConfigDeprecationWarning, FinetuneConfig, coerce_subconfigs,
                                             config_from_dict, config_to_dict, flat_value, key_config,
                                             legacy_names, replace_config, subconfig)
from compress.strategies._parts.config_fields import check_fields


@dataclass(frozen=True)
class _Search:
    KEY_OMIT: ClassVar[dict[str, Any]] = {"added": None}
    epochs: int = 3
    lr: float = 0.1
    added: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class _Toy:
    mode: str = "a"
    search: _Search = subconfig(_Search, legacy_prefix="search_", legacy={"added": "added"})
    baseline: FinetuneConfig = subconfig(lambda: FinetuneConfig(epochs=7), legacy_prefix="baseline_",
                                         legacy={"kd_alpha": "kd_alpha"})
    final: FinetuneConfig = subconfig(lambda: FinetuneConfig(epochs=9), legacy_prefix="final_",
                                      legacy={"kd_alpha": "kd_alpha"})

    def __post_init__(self) -> None:
        check_fields(self)
        coerce_subconfigs(self)


def test_nested_round_trip_and_dicts_for_subconfigs():
    cfg = _Toy(search={"epochs": 5}, final=FinetuneConfig(epochs=2, lr=0.5))
    assert cfg.search == _Search(epochs=5) and cfg.baseline.epochs == 7
    assert _Toy(final={"lr": 0.3}).final.epochs == 9  # a dict fills in over the field's own default, not the class's
    d = config_to_dict(cfg)
    assert d["search"] == {"epochs": 5, "lr": 0.1, "added": None} and d["final"]["lr"] == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the nested spelling warns of nothing
        assert config_from_dict(_Toy, d) == cfg


def test_flat_keys_route_to_their_leaves_with_a_deprecation_warning():
    with pytest.warns(ConfigDeprecationWarning, match=r"search_epochs -> search\.epochs.*kd_alpha -> baseline\.kd_alpha, final\.kd_alpha"):
        cfg = config_from_dict(_Toy, {"mode": "b", "search_epochs": 4, "kd_alpha": 0.2, "final_lr": 0.3})
    assert (cfg.mode, cfg.search.epochs, cfg.baseline.kd_alpha, cfg.final.kd_alpha, cfg.final.lr) == ("b", 4, 0.2, 0.2, 0.3)
    assert cfg.baseline.epochs == 7  # the rest of each sub-config keeps the class's default for that phase
    assert legacy_names(_Toy)["added"] == [("search", "added")]


def test_a_leaf_given_twice_or_unknown_is_refused_with_the_known_names():
    with pytest.raises(ConfigError, match="search.epochs is given twice"):
        config_from_dict(_Toy, {"search": {"epochs": 1}, "search_epochs": 2})
    with pytest.raises(ConfigError, match=r"no field\(s\) \['nope'\]"):
        config_from_dict(_Toy, {"nope": 1})
    with pytest.raises(ConfigError, match=r"_Toy.search has no field\(s\) \['nope'\]"):
        config_from_dict(_Toy, {"search": {"nope": 1}})
    with pytest.raises(ConfigError, match="_Toy.final"):
        config_from_dict(_Toy, {"final": {"lr": -1.0}})
    with pytest.raises(ConfigError, match="must be a _Search"):
        _Toy(search=3)


def test_replace_config_merges_nested_and_flat_changes():
    cfg = _Toy()
    new = replace_config(cfg, search={"lr": 0.5}, final_epochs=1)
    assert (new.search.epochs, new.search.lr, new.final.epochs, new.final.lr) == (3, 0.5, 1, cfg.final.lr)
    with pytest.raises(ConfigError, match="no field"):
        replace_config(cfg, nope=1)


def test_phase_keys_come_from_the_subconfigs_under_their_flat_names():
    cfg = _Toy()
    assert key_config(cfg, "search") == {"search_epochs": 3, "search_lr": 0.1}  # `added` at its KEY_OMIT value
    assert key_config(replace_config(cfg, search={"added": 2}), "search")["added"] == 2
    final = key_config(cfg, "final")
    assert final["final_epochs"] == 9 and final["kd_alpha"] == 0.5 and "final_optimizer" not in final
    assert key_config(cfg, "search", top_level=True)["mode"] == "a"
    # a new leaf of a sub-config changes that phase's key and no other, by construction
    assert key_config(replace_config(cfg, final={"epochs": 1}), "search", "baseline") == key_config(cfg, "search", "baseline")
    # two leaves of one key with one flat name: once, as the flat config had it, until they differ
    both = key_config(cfg, "baseline", "final")
    assert both["kd_alpha"] == 0.5 and "final.kd_alpha" not in both
    apart = key_config(replace_config(cfg, final={"kd_alpha": 0.1}), "baseline", "final")
    assert (apart["kd_alpha"], apart["final.kd_alpha"]) == (0.5, 0.1)


def test_flat_value_reads_either_spelling():
    assert flat_value({"final_lr": 0.1}, "final_lr") == 0.1
    assert flat_value({"final": {"lr": 0.2}}, "final_lr") == 0.2
    assert flat_value({"prune": {"channel_rounding": "fixed"}}, "channel_rounding") == "fixed"
    assert flat_value({}, "x", "d") == "d"


def test_finetune_config_builds_the_runtime_settings_and_refuses_bad_values():
    s = FinetuneConfig(epochs=3, lr=0.2, time_s=5.0, grad_clip=1.0).settings(seed=4, keep_best=False)
    assert (s.epochs, s.lr, s.time_budget_s, s.grad_clip, s.seed, s.keep_best) == (3, 0.2, 5.0, 1.0, 4, False)
    assert {f.name for f in dataclasses.fields(FinetuneConfig)} - {"time_s"} <= {f.name for f in dataclasses.fields(s)}
    for bad in ({"optimizer": "lion"}, {"warmup_epochs": 9}, {"time_s": 0.0}, {"lr": "x"}):
        with pytest.raises(ConfigError):
            FinetuneConfig(**bad)


class _ToyStrategy(Strategy):
    config_cls = _Toy

    def run(self, ctx):  # pragma: no cover - not run
        raise NotImplementedError


def test_a_strategy_takes_nested_or_flat_overrides():
    assert _ToyStrategy(search={"epochs": 2}).config.search.epochs == 2
    with pytest.warns(ConfigDeprecationWarning):
        assert _ToyStrategy({"final_lr": 0.4}, search_lr=0.3).config.search.lr == 0.3
    assert _ToyStrategy(_Toy(), mode="z").config.mode == "z"


def test_every_bad_leaf_of_every_subconfig_is_reported_at_once():
    with pytest.raises(ConfigError) as exc:
        config_from_dict(_Toy, {"search": {"epochs": 1.5}, "final": {"lr": -1.0}, "mode": 3})
    msg = str(exc.value)
    assert "_Toy.search" in msg and "`epochs` = 1.5" in msg and "_Toy.final" in msg and "`lr` = -1.0" in msg
    assert "`mode` = 3" in msg


def test_an_unknown_key_names_its_nested_spellings():
    with pytest.raises(ConfigError) as exc:
        config_from_dict(_Toy, {"epoch": 1, "lr": 0.1})
    msg = str(exc.value)
    assert "'epoch': did you mean" in msg and "'search.epochs'" in msg and "'final.epochs'" in msg
    assert "'lr': did you mean 'baseline.lr' or 'final.lr' or 'search.lr'" in msg
    assert "sub-configs ['search', 'baseline', 'final']" in msg
