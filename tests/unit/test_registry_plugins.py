"""Out-of-tree strategies through the entry-point group ``slimforge.strategies`` (issue 15, part 1).

A tiny strategy defined here is installed through a monkeypatched
``importlib.metadata.entry_points`` (what :mod:`compress.registry` calls) and run through
``compress.compress()`` and ``slimforge run --strategy``; broken entry points give a
:class:`StrategyPluginError` that names the entry point and its distribution.
"""

from __future__ import annotations

import importlib.metadata
import json
import types
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import compress
from compress import registry
from compress.cli import app
from compress.errors import StrategyError, StrategyPluginError
from compress.serialization import load_student
from compress.testing import TinyConvNet

# ---------------------------------------------------------------- the plug-in: only compress.kit
from compress.kit import ConfigError, Strategy, StrategyContext, StrategyOutput, check_fields  # noqa: E402

NAME = "thin-plugin"
DIST = types.SimpleNamespace(name="slimforge-thin-plugin", version="0.1")


@dataclass(frozen=True)
class ThinConfig:
    width: int = 4

    def __post_init__(self) -> None:
        check_fields(self)
        if self.width < 1:
            raise ConfigError(f"width must be at least 1, got {self.width}.")


class ThinStrategy(Strategy):
    """An out-of-tree strategy: the teacher's architecture (its class, e.g. a TinyConvNet) at
    ``width`` channels. It imports nothing of slimforge but :mod:`compress.kit`."""

    config_cls = ThinConfig
    paper = "a test plugin"

    def run(self, ctx: StrategyContext) -> StrategyOutput:
        with ctx.phase("finetune"):
            torch.manual_seed(ctx.seed)
            student = type(ctx.model)(num_classes=ctx.model.fc.out_features, width=self.config.width).eval()
        ctx.log(width=self.config.width)
        return StrategyOutput(student=student, info={"width": self.config.width})


class FakeEntryPoint:
    """What ``importlib.metadata.entry_points(group=...)`` yields: name, value, group, dist, load()."""

    def __init__(self, name: str, load: Callable[[], Any], value: str = "thin_plugin:ThinStrategy",
                 dist: Any = DIST) -> None:
        self.name, self.value, self.group, self.dist = name, value, registry.ENTRY_POINT_GROUP, dist
        self._load = load
        self.loads = 0

    def load(self) -> Any:
        self.loads += 1
        return self._load()


def install(monkeypatch, *eps: FakeEntryPoint) -> None:
    """Make ``eps`` the installed entry points (of every group asked for, filtered by group)."""
    real = importlib.metadata.entry_points

    def entry_points(**params: Any):
        if params.get("group") == registry.ENTRY_POINT_GROUP:
            return list(eps)
        return real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    registry.reset_plugins()


@pytest.fixture(autouse=True)
def fresh_plugins():
    """Every test starts and ends with no plugin loaded (the built-ins stay registered)."""
    registry.reset_plugins()
    yield
    registry.reset_plugins()


def _boom():
    raise ImportError("No module named 'thin_plugin'")


def test_a_plugin_strategy_runs_through_compress(monkeypatch, digits_task, tmp_path):
    install(monkeypatch, FakeEntryPoint(NAME, lambda: ThinStrategy))
    assert NAME in compress.list_strategies() and "gp-prune" in compress.list_strategies()
    assert compress.get_strategy(NAME) is ThinStrategy and ThinStrategy.name == NAME

    teacher = TinyConvNet().eval()
    res = compress.compress(teacher, "params=0.5x", data=digits_task, strategy=NAME, config={"width": 4},
                            progress=False, out_dir=tmp_path, latency_repeats=3, latency_warmup=1,
                            allow_slower=True)
    assert res.strategy == NAME and res.config == {"width": 4}
    assert res.budget_check.ok and res.student_report.cost.params <= 0.5 * res.teacher.cost.params
    assert res.validation.ok
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["strategy"] == NAME and report["info"]["width"] == 4
    x = torch.randn(2, 3, 32, 32)
    # a resized copy of the teacher's architecture: load_student rebuilds it by width surgery
    torch.testing.assert_close(load_student(tmp_path, base=TinyConvNet())(x), res.student(x))


def test_a_plugin_strategy_runs_through_the_cli(monkeypatch, tmp_path):
    install(monkeypatch, FakeEntryPoint(NAME, lambda: ThinStrategy))
    runner = CliRunner()
    listed = runner.invoke(app, ["strategies"])
    assert listed.exit_code == 0, listed.output
    assert f"{NAME}\ta test plugin" in listed.output.splitlines()

    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--model", "compress.testing:TinyConvNet", "--data", "digits",
                              "--budget", "params=0.5x", "--out", str(out), "--strategy", NAME,
                              "--config", '{"width": 4}', "--allow-slower"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["strategy"] == NAME and report["config"] == {"width": 4}
    assert report["budget"]["ok"] is True


def test_a_broken_entry_point_names_itself_and_its_distribution(monkeypatch):
    install(monkeypatch, FakeEntryPoint("broken", _boom, value="thin_plugin:Nope"),
            FakeEntryPoint(NAME, lambda: ThinStrategy))
    with pytest.raises(StrategyPluginError) as info:
        registry.get_strategy("broken")
    msg = str(info.value)
    assert "'broken'" in msg and "thin_plugin:Nope" in msg and "slimforge.strategies" in msg
    assert "slimforge-thin-plugin 0.1" in msg and "ImportError" in msg and "pip uninstall slimforge-thin-plugin" in msg
    assert isinstance(info.value, StrategyError)  # the CLI's error handling catches it like any of ours
    with pytest.raises(StrategyPluginError, match="'broken'"):
        compress.list_strategies()
    # the other strategies still resolve; an unknown name says which entry points failed
    assert compress.get_strategy(NAME) is ThinStrategy and compress.get_strategy("gp-prune").name == "gp-prune"
    with pytest.raises(StrategyError, match="failed to load: broken"):
        compress.get_strategy("nope")


def test_a_broken_entry_point_fails_the_cli_with_exit_2(monkeypatch, tmp_path):
    install(monkeypatch, FakeEntryPoint("broken", _boom))
    res = CliRunner().invoke(app, ["strategies"])
    assert res.exit_code == 2 and "StrategyPluginError" in res.output and "broken" in res.output
    res = CliRunner().invoke(app, ["run", "--model", "compress.testing:TinyConvNet", "--data", "digits",
                                   "--budget", "params=0.5x", "--out", str(tmp_path / "x"), "--strategy", "broken"])
    assert res.exit_code == 2 and "slimforge-thin-plugin" in res.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("obj, expected", [
    (lambda: print, "neither a compress.strategies.base.Strategy subclass nor a module"),
    (lambda: Strategy, "neither a compress.strategies.base.Strategy subclass nor a module"),
])
def test_an_entry_point_that_is_not_a_strategy_is_refused(monkeypatch, obj, expected):
    install(monkeypatch, FakeEntryPoint(NAME, obj))
    with pytest.raises(StrategyPluginError, match=expected):
        compress.get_strategy(NAME)


def test_an_entry_point_may_not_take_a_builtin_name(monkeypatch):
    install(monkeypatch, FakeEntryPoint("gp-prune", lambda: ThinStrategy, dist=None))
    with pytest.raises(StrategyPluginError, match="already registered by GPPrune") as info:
        compress.list_strategies()
    assert "an unknown distribution" in str(info.value)
    assert compress.get_strategy("gp-prune").__name__ == "GPPrune"


def _plugin_module(registers: str | None) -> types.ModuleType:
    """A module that, like ``import thin_plugin_mod``, registers a strategy when it is loaded."""
    mod = types.ModuleType("thin_plugin_mod")
    mod.ThinStrategy = type("ThinStrategy", (ThinStrategy,), {"__module__": mod.__name__})
    if registers:
        registry.register_strategy(registers)(mod.ThinStrategy)
    return mod


def test_a_module_entry_point_registers_on_import(monkeypatch):
    modules: list[types.ModuleType] = []

    def load() -> types.ModuleType:  # like an import: the module's body runs on the first load only
        if not modules:
            modules.append(_plugin_module(NAME))
        return modules[0]

    install(monkeypatch, FakeEntryPoint(NAME, load, value="thin_plugin_mod"))
    assert compress.get_strategy(NAME) is modules[0].ThinStrategy
    registry.reset_plugins()  # loaded again, the module does not run its decorator: its class registers all the same
    assert NAME not in registry._REGISTRY
    assert compress.get_strategy(NAME) is modules[0].ThinStrategy


def test_a_module_entry_point_must_register_its_name(monkeypatch):
    install(monkeypatch, FakeEntryPoint(NAME, lambda: _plugin_module(None), value="thin_plugin_mod"))
    with pytest.raises(StrategyPluginError, match=r"registered no strategy named 'thin-plugin'.*@register_strategy"):
        compress.get_strategy(NAME)


def test_entry_points_load_once_and_reset_plugins_forgets_them(monkeypatch):
    ep = FakeEntryPoint(NAME, lambda: ThinStrategy)
    install(monkeypatch, ep)
    for _ in range(3):
        assert compress.get_strategy(NAME) is ThinStrategy
    compress.list_strategies()
    assert ep.loads == 1

    install(monkeypatch)  # uninstalled: reset_plugins drops what the entry point registered
    with pytest.raises(StrategyError, match="Unknown strategy 'thin-plugin'"):
        compress.get_strategy(NAME)
    assert NAME not in compress.list_strategies()
    assert {"gp-prune", "grow", "darts-gal", "eg-nas"} <= set(compress.list_strategies())  # built-ins stay


def test_no_plugin_is_left_over_from_the_other_tests():
    assert NAME not in compress.list_strategies() and "broken" not in compress.list_strategies()
