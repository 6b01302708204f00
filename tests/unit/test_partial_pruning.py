"""Graceful partial pruning (compress/strategies/_parts/partial_pruning.py, issue #19 part 3).

Correctness is checked in closed form: removing a channel whose every consumer (a conv's or
linear's input column) is zero changes nothing, so the pruned model must equal the unpruned one
with exactly those input columns zeroed. A channel shuffle followed as the identity (what
Torch-Pruning does by itself) removes other columns than the channels it cuts, and fails this.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from compress.budgets import measure_cost
from compress.errors import UnsupportedModelError
from compress.strategies._parts import partial_pruning as partial
from compress.testing import HiddenStateNet, TinyResidualNet, TinyShuffleNet


class ShuffleBlockNet(nn.Module):
    """conv -> BN -> ReLU -> ``nn.ChannelShuffle(2)`` -> depthwise conv -> 1x1 conv -> linear: the
    shuffle sits between two ordinary convs, so its channels can be cut column by column."""

    def __init__(self, shuffle: str = "module") -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pw1 = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.shuffle = nn.ChannelShuffle(2) if shuffle == "module" else None
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16))
        self.pw2 = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw1(self.stem(x))
        if self.shuffle is not None:
            x = self.shuffle(x)
        else:
            b, c, h, w = x.shape
            x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(self.pw2(self.dw(x)).mean(dim=(2, 3)))


def _x(size: int = 16) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def _prune_and_compare(model: nn.Module, x: torch.Tensor, ignored: list[str], *, plan=None, use_partial=True,
                       ratio: float = 0.5) -> tuple[nn.Module, float]:
    """Prune ``model`` in place; return it and max |pruned(x) - reference(x)|, where the reference
    is the unpruned model with the input columns of every removed channel set to zero."""
    model.eval()
    reference = copy.deepcopy(model)
    ref_modules = dict(reference.named_modules())
    name_of = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    kwargs = dict(importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                  ignored_layers=[modules[n] for n in ignored])
    pruner = (partial.meta_pruner(model, x, plan=plan, **kwargs) if use_partial
              else tp.pruner.MetaPruner(model, x, **kwargs))
    groups = list(pruner.step(interactive=True))  # indices in the unpruned model's numbering
    with torch.no_grad():
        for group in groups:
            for dep, idxs in group:
                m = dep.target.module
                consumer = dep.handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
                if consumer and getattr(m, "groups", 1) == 1:
                    ref_modules[name_of[m]].weight[:, idxs] = 0
    for group in groups:
        group.prune()
    with torch.no_grad():
        return model, (model(x) - reference(x)).abs().max().item()


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# --- the shape rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("i, o, mixes", [
    ((2, 16, 8, 8), (2, 2, 8, 8, 8), True),      # channel shuffle, split
    ((2, 8, 2, 8, 8), (2, 16, 8, 8), True),      # channel shuffle, merge
    ((2, 16, 8, 8), (2, 4, 4, 64), True),        # heads out of channels
    ((8, 16, 8, 8), (2, 64, 8, 8), True),        # batch and channels merged
    ((2, 16, 8, 8), (2, 16, 64), False),         # spatial flatten
    ((2, 16, 8, 8), (2, 1024), False),           # flatten before a Linear
    ((2, 1024), (2, 16, 8, 8), False),           # and back
    ((2, 16, 1, 1), (2, 16), False),             # pooled
    ((16,), (1, 16, 1, 1), False),               # a parameter vector made to broadcast (ConvNeXt's gamma)
    ((2, 197, 192), (2, 197, 3, 64), False),     # token layouts: Torch-Pruning's own rules
])
def test_mixes_channels(i, o, mixes):
    assert partial.mixes_channels(i, o) is mixes


# --- what Torch-Pruning does alone ---------------------------------------------------------------


def test_torch_pruning_alone_mis_wires_a_channel_shuffle():
    torch.manual_seed(0)
    _, diff = _prune_and_compare(ShuffleBlockNet("module"), _x(), ["fc", "stem.0", "pw2.0"], use_partial=False)
    assert diff > 1e-4  # it runs, with the right shapes, but other input columns than the cut channels went


def test_torch_pruning_alone_fails_on_shufflenet_v2_units():
    torch.manual_seed(0)
    model = TinyShuffleNet(shuffle="functional").eval()
    with pytest.raises(Exception):
        pruner = tp.pruner.MetaPruner(model, model.example_inputs(), importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=0.5, ignored_layers=[model.fc])
        pruner.step()
        model(model.example_inputs())


# --- partial pruning around channel shuffles -----------------------------------------------------


@pytest.mark.parametrize("shuffle", ["functional", "module"])
def test_channel_shuffle_net_is_pruned_partially_and_reports_its_untouched_groups(shuffle):
    torch.manual_seed(0)
    model = TinyShuffleNet(shuffle=shuffle).eval()
    x = model.example_inputs()
    before = measure_cost(model, x[:1]).macs
    widths = _widths(model)
    plan = partial.scan_channel_ops(model, x, ["fc"])
    assert _widths(model) == widths and not any("slimforge" in n for n, _ in model.named_modules())

    # the groups whose channels cross a shuffle are named, with the layers they hold and why
    assert plan.partial
    untouched = {r["group"]: r for r in plan.untouched}
    assert "units.0.branch2.5" in untouched
    held = {name for r in plan.untouched for name in r["layers"]}
    assert {"units.0.branch1.2", "units.0.branch2.5", "units.1.branch2.5", "conv5.0"} <= held
    assert all("shuffle" in r["reason"] for r in plan.untouched)
    if shuffle == "functional":
        assert [op.op for op in plan.barrier_ops] == ["view", "reshape", "view", "reshape"]
        assert plan.barrier_ops[0].module == "units.0"
    else:
        assert plan.keep_whole == ("units.0.shuffle",) and not plan.barrier_ops

    pruned, diff = _prune_and_compare(model, x, ["fc"], plan=plan)
    assert diff < 1e-5                                    # the channels removed are the ones cut
    assert tuple(pruned(x).shape) == (2, 10)
    after = _widths(pruned)
    for name in ("stem.0", "units.0.branch2.0", "units.1.branch2.0", "conv5.0"):   # the rest prunes
        assert after[name] == widths[name] // 2, name
    for name in ("units.0.branch1.2", "units.0.branch2.5", "units.1.branch2.5"):   # the untouched stay
        assert after[name] == widths[name], name
    assert measure_cost(pruned, x[:1]).macs < 0.75 * before


def test_functional_shuffle_between_convs_is_kept_whole():
    torch.manual_seed(0)
    model = ShuffleBlockNet("functional")
    plan = partial.scan_channel_ops(model, _x(), ["fc"])
    assert [r["group"] for r in plan.untouched] == ["dw.0"]
    assert set(plan.untouched[0]["layers"]) == {"pw1.0", "pw1.1", "dw.0", "dw.1", "pw2.0"}
    pruned, diff = _prune_and_compare(model, _x(), ["fc"], plan=plan)
    assert diff < 1e-5
    assert _widths(pruned) == {"stem.0": 8, "pw1.0": 16, "dw.0": 16, "pw2.0": 16}


def test_channel_shuffle_module_is_registered_and_a_shuffle_block_prunes_fully():
    torch.manual_seed(0)
    model = ShuffleBlockNet("module")
    with torch.no_grad():  # make half of pw1's channels dead, in whole shuffle columns (odd b in both groups)
        for i in (1, 3, 5, 7, 9, 11, 13, 15):
            model.pw1[0].weight[i] = 0
            model.pw1[1].weight[i] = 0
            model.pw1[1].bias[i] = 0
    plan = partial.scan_channel_ops(model, _x(), ["fc"])
    assert plan == partial.PartialPlan()  # nothing kept whole
    pruned, diff = _prune_and_compare(model, _x(), ["fc"], plan=plan)
    assert _widths(pruned) == {"stem.0": 8, "pw1.0": 8, "dw.0": 8, "pw2.0": 16}
    assert pruned.shuffle.groups == 2
    assert diff < 1e-5

    # the dead channels went, and the model computes what it computed before
    torch.manual_seed(0)
    model = ShuffleBlockNet("module").eval()
    with torch.no_grad():
        for i in (1, 3, 5, 7, 9, 11, 13, 15):
            model.pw1[0].weight[i] = 0
            model.pw1[1].weight[i] = 0
            model.pw1[1].bias[i] = 0
        before = model(_x())
    pruner = partial.meta_pruner(model, _x(), importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                 ignored_layers=[model.fc, model.stem[0], model.pw2[0]])
    pruner.step()
    with torch.no_grad():
        assert torch.allclose(model(_x()), before, atol=1e-6)
    assert model.pw1[0].out_channels == 8


def test_torchvision_shufflenet_v2_prunes_partially():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(weights=None).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plan = partial.scan_channel_ops(model, x, ["fc"])
    assert {r["group"] for r in plan.untouched} >= {"stage2.0.branch2.5", "stage3.0.branch2.5", "stage4.0.branch2.5"}
    before = measure_cost(model, x).macs
    pruner = partial.meta_pruner(model, x, plan=plan, importance=tp.importance.MagnitudeImportance(p=2),
                                 pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()  # Torch-Pruning alone: ZeroDivisionError while building the graph
    with torch.no_grad():
        assert tuple(model(x).shape) == (1, 1000)
    assert measure_cost(model, x).macs < 0.6 * before
    assert model.stage2[0].branch2[5].out_channels == 24  # a group through the shuffle: untouched


def test_dependency_graph_yields_only_the_groups_that_may_be_pruned():
    torch.manual_seed(0)
    model = TinyShuffleNet(shuffle="functional").eval()
    x = model.example_inputs()
    plan = partial.scan_channel_ops(model, x, ["fc"])
    dg = partial.dependency_graph(model, x, plan=plan)
    names = {m: n for n, m in model.named_modules()}
    roots = {names[g[0].dep.target.module]
             for g in dg.get_all_groups(ignored_layers=[model.fc], root_module_types=[nn.Conv2d, nn.Linear])}
    assert roots == {"stem.0", "units.0.branch2.3", "units.1.branch2.3", "conv5.0"}
    assert roots.isdisjoint(r["group"] for r in plan.untouched)
    plain = tp.DependencyGraph().build_dependency(model, x, verbose=False)  # offers the shuffled groups too
    assert len(list(plain.get_all_groups(ignored_layers=[model.fc], root_module_types=[nn.Conv2d, nn.Linear]))) > 4


# --- groups that fail when pruned ----------------------------------------------------------------


def test_find_unprunable_groups_names_the_failing_group_and_the_rest_prunes():
    torch.manual_seed(0)
    model = HiddenStateNet().eval()  # a plain tensor attribute sized by the channels of features.3
    x = model.example_inputs()
    with pytest.raises(RuntimeError):
        trial = copy.deepcopy(model)
        tp.pruner.MetaPruner(trial, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                             ignored_layers=[trial.fc]).step()
        trial(x)

    plan = partial.find_unprunable_groups(model, x, ["fc"], expected_shape=(2, 10))
    assert plan.keep_whole == ("features.3",)
    (record,) = plan.untouched
    assert record["group"] == "features.3" and "features.4" in record["layers"]
    assert "forward fails" in record["reason"] and "size of tensor" in record["reason"]
    assert 2 <= plan.probes <= 8

    before = measure_cost(model, x[:1]).macs
    pruner = partial.meta_pruner(model, x, plan=plan, importance=tp.importance.MagnitudeImportance(p=2),
                                 pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()
    with torch.no_grad():
        assert tuple(model(x).shape) == (2, 10)
    assert _widths(model) == {"features.0": 8, "features.3": 32, "features.6": 32}
    assert measure_cost(model, x[:1]).macs < before


def test_a_model_without_bad_groups_costs_one_trial_prune():
    torch.manual_seed(0)
    model = TinyResidualNet().eval()
    assert partial.scan_channel_ops(model, model.example_inputs(), ["head"]) == partial.PartialPlan()
    plan = partial.find_unprunable_groups(model, model.example_inputs(), ["head"])
    assert plan.untouched == () and plan.keep_whole == () and plan.probes == 1


def test_find_unprunable_groups_gives_up_within_max_probes():
    torch.manual_seed(0)
    model = HiddenStateNet().eval()
    with pytest.raises(UnsupportedModelError, match="within 1 trial prunes"):
        partial.find_unprunable_groups(model, model.example_inputs(), ["fc"], max_probes=1)


def test_unknown_ignored_name_is_refused():
    model = TinyResidualNet().eval()
    with pytest.raises(UnsupportedModelError, match="no module named 'nope'"):
        partial.find_unprunable_groups(model, model.example_inputs(), ["nope"])
