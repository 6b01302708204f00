"""Tensors that slimforge creates take their device from an existing tensor (issue 13, item 2).

No GPU is needed. Two checks, both built on :class:`_StrayTensors`, a ``TorchDispatchMode``
that records every *factory* op (an op without a tensor argument, e.g. ``zeros``, ``empty``,
``arange``, and ``lift_fresh``, the op behind ``torch.tensor``) whose output lands on a given
"stray" device, and optionally every op that reads or writes a tensor there:

* **The model on ``meta``** (width surgery ``apply_widths``, feature collection). Every tensor
  the code makes should be on ``meta`` too; a CPU factory output is a tensor that would stay on
  the CPU while the model lives on a GPU. The recorder flags it, and the tests also check the
  device of everything returned (with a CPU batch fed to a ``meta`` model, nothing raises by
  itself: ``meta`` kernels accept CPU inputs, so the model's input device is recorded too).
* **The CPU model under ``torch.device("meta")``** (TreeImportance, the metric closed forms,
  ``ChannelOperands.from_layer``, the GP task's surgery and scoring). These functions cannot run
  on ``meta``: a tree's score is checked for finiteness (``bool(...)``) and label-aware trees
  loop over ``torch.unique(y).tolist()``, which need real values. So the model keeps real CPU
  values and the *default* device becomes ``meta``: a tensor created without ``device=`` lands
  on ``meta``, away from the model, exactly as it would land on the CPU while the model lives on
  a GPU. The recorder flags every op that reads or writes a ``meta`` tensor (nothing belongs
  there; ``torch.tensor(..., device=meta)`` creates its tensor without any op the recorder
  sees, so it shows up where the tensor is used).

Each test fails with the code before the fix (the functions allocated with ``torch.zeros(c)``,
``torch.empty(...)``, ``torch.tensor(...)`` and ``nn.Conv2d(...)`` without a device, and
``collect_feature_maps`` fed CPU batches to the model as they came).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from compress.models import apply_widths, describe_widths
from compress.strategies.gp_prune.features import collect_feature_maps
from compress.strategies.gp_prune.importance import TreeImportance
from compress.evolution import engine, tasks
from compress.evolution.metrics import METRICS, REFERENCES, ChannelOperands, get_metric, reference_score
from compress.evolution.trees import score_tree, validity_operands
from compress.testing import TinyConvNet

META = torch.device("meta")


class _StrayTensors(TorchDispatchMode):
    """Records the ops that create a tensor on device type ``stray`` (factory ops: no tensor
    argument, or ``lift_fresh``) and, with ``any_op``, every op with a ``stray`` input or output."""

    def __init__(self, stray: str, any_op: bool = False) -> None:
        super().__init__()
        self.stray, self.any_op = stray, any_op
        self.hits: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        outputs = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        watched = outputs + inputs if self.any_op else (
            outputs if func is torch.ops.aten.lift_fresh.default or not inputs else [])
        if any(t.device.type == self.stray for t in watched):
            self.hits.append(f"{func} on {sorted({str(t.device) for t in inputs + outputs})}")
        return out


def _run(fn: Callable[[], Any], *, stray: str, default_device: torch.device | None = None) -> Any:
    """``fn()`` under the recorder; fails the test on any stray tensor or any error, naming both.
    With ``default_device`` (case 2 of the module docstring) every op touching ``stray`` counts."""
    rec = _StrayTensors(stray, any_op=default_device is not None)
    error: Exception | None = None
    result = None
    try:
        if default_device is not None:
            with default_device, rec:
                result = fn()
        else:
            with rec:
                result = fn()
    except Exception as exc:  # noqa: BLE001  (reported below together with the stray factories)
        error = exc
    assert not rec.hits and error is None, (
        f"tensors created on {stray!r}, away from the model: {sorted(set(rec.hits))}; error: {error!r}")
    return result


def _devices(model: nn.Module) -> set[torch.device]:
    return {t.device for t in list(model.parameters()) + list(model.buffers())}


# ============================================================================ model on meta


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_widths_makes_the_new_tensors_on_the_models_device_and_dtype(dtype):
    small = TinyConvNet(width=8)
    model = TinyConvNet(width=16).to(dtype).to(META)
    _run(lambda: apply_widths(model, describe_widths(small)), stray="cpu")
    assert _devices(model) == {META}
    for (name, p), (_, q) in zip(model.state_dict().items(), small.state_dict().items()):
        assert p.shape == q.shape, name
        assert p.dtype == (dtype if q.is_floating_point() else q.dtype), name
    assert all(p.requires_grad for p in model.parameters())


def _calibration_batches(n_batches: int = 2, batch: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, 16, 16, generator=g), torch.arange(batch) % 2) for _ in range(n_batches)]


def test_feature_collection_runs_the_batches_on_the_models_device():
    model = TinyConvNet(width=8).to(META)
    seen: list[torch.device] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].device))
    batches = _calibration_batches()  # CPU batches, as a DataLoader gives them
    maps, labels = _run(lambda: collect_feature_maps(model, batches, max_samples=6, max_map_hw=4), stray="cpu")
    assert seen == [META, META]
    assert labels.device == META and labels.dtype == torch.long and labels.shape == (6,)
    assert maps and all(m.device == META and m.shape[1] == 6 for m in maps.values())
    assert maps["features.0"].shape == (8, 6, 16)  # (C, N, D) with the 16 x 16 map pooled to 4 x 4


def test_feature_collection_without_samples_returns_labels_on_the_models_device():
    model = TinyConvNet(width=8).to(META)
    maps, labels = _run(lambda: collect_feature_maps(model, []), stray="cpu")
    assert maps == {} and labels.device == META and labels.dtype == torch.long and labels.numel() == 0


# ============================================================================ default device meta


class _PlainAndAffineFreeBN(nn.Module):
    """A conv without BN, a conv with an affine-free BN (no gamma / beta), a linear head: the
    paths of ``TreeImportance`` that fill in ``[1, 0, 0, 1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8, affine=False)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.conv1(x)))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("metric_name", ["l1", "bn_scale", "fisher"])
@pytest.mark.parametrize("net", ["tiny_conv", "plain"])
def test_tree_importance_creates_nothing_without_a_device(metric_name, net):
    torch.manual_seed(0)
    model = (TinyConvNet(num_classes=2, width=8) if net == "tiny_conv" else _PlainAndAffineFreeBN()).eval()
    metric = get_metric(metric_name)
    maps, labels = collect_feature_maps(model, _calibration_batches(), max_map_hw=4)
    example = torch.randn(1, 3, 16, 16)
    dg = tp.DependencyGraph().build_dependency(model, example)
    groups = list(dg.get_all_groups(ignored_layers=[model.fc], root_module_types=[nn.Conv2d, nn.Linear]))
    assert groups
    imp = TreeImportance(metric, model, maps, labels).bind(model)
    scores = _run(lambda: [imp(g) for g in groups], stray="meta", default_device=META)
    assert all(s is not None and s.device.type == "cpu" and bool(torch.isfinite(s).all()) for s in scores)


def test_metric_closed_forms_and_trees_create_nothing_without_a_device():
    ops = validity_operands()

    def score_all() -> list[torch.Tensor]:
        out = [reference_score(name, ops) for name in REFERENCES]
        out += [score_tree(expr, ops) for expr in METRICS.values()]
        return out

    scores = _run(score_all, stray="meta", default_device=META)
    assert len(scores) == len(REFERENCES) + len(METRICS) and all(s.device.type == "cpu" for s in scores)


def test_channel_operands_from_a_layer_without_bn_take_the_weights_device():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    ops = _run(lambda: ChannelOperands.from_layer(w), stray="meta", default_device=META)
    assert ops.B.device.type == "cpu" and ops.B.dtype == torch.float64
    assert ops.B.tolist() == [[1.0, 0.0, 0.0, 1.0]] * 4


def test_gp_task_scoring_and_surgery_create_nothing_without_a_device():
    spec = tasks.PROFILES["tiny"][0]  # LeNet-5: conv -> conv -> flatten -> linear (the H x W column blocks)
    torch.manual_seed(0)
    net = engine.build_net(spec, (1, 16, 16), 10).eval()
    x, y = torch.randn(12, 1, 16, 16), torch.arange(12) % 3
    metric = get_metric("fisher")

    def prune_every_unit() -> None:
        for i in range(len(net.units)):
            ops = engine.channel_operands(net, i, x, y, spec.max_map_hw)
            scores = engine.score_channels(metric, ops, chunk=7)
            keep = torch.sort(engine.removal_order(scores)[2:]).values
            engine.mask_channels(net, i, keep)
            engine.prune_unit(net, i, keep)

    _run(prune_every_unit, stray="meta", default_device=META)
    assert _devices(net) == {torch.device("cpu")}
    assert net.widths == tuple(w - 2 for w in spec.widths)
    with torch.no_grad():
        assert net(x).shape == (12, 10)
