"""Unit tests for compress.models (CIFAR ResNet, spec loader, surgery) and compress.errors."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import (
    CompressError,
    ConfigError,
    DataError,
    ModelSpecError,
    StrategyError,
    UnsupportedModelError,
)
from compress.models import (
    MODEL_SCHEMES,
    FixedShortcutConv,
    PadShortcut,
    cifar_resnet,
    cifar_resnet20,
    cifar_resnet32,
    cifar_resnet44,
    cifar_resnet56,
    cifar_resnet110,
    describe_model_spec,
    freeze_fixed_shortcuts,
    load_model,
    pad_shortcuts_to_conv,
)

SHARED = Path("/work/shared/data")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _x(batch: int = 2, chans: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- errors


def test_error_hierarchy():
    assert issubclass(ModelSpecError, CompressError) and issubclass(ModelSpecError, ValueError)
    assert issubclass(UnsupportedModelError, CompressError) and issubclass(UnsupportedModelError, TypeError)
    assert issubclass(DataError, ValueError) and issubclass(ConfigError, ValueError)
    assert issubclass(StrategyError, LookupError) and issubclass(StrategyError, CompressError)


def test_unsupported_model_error_keeps_layer_through_pickle():
    err = UnsupportedModelError("op 'foo' in 'a.b' unsupported; do X", layer="a.b")
    back = pickle.loads(pickle.dumps(err))
    assert back.layer == "a.b" and str(back) == str(err)
    assert UnsupportedModelError("msg").layer is None


# --------------------------------------------------------------------------- CIFAR ResNet


KEY_RE = re.compile(
    r"^(conv1\.weight|bn1\.\w+|linear\.(weight|bias)|layer[123]\.\d+\.(conv[12]\.weight|bn[12]\.\w+))$"
)


@pytest.mark.parametrize(
    "factory,depth,params",
    [(cifar_resnet20, 20, 269_722), (cifar_resnet32, 32, 464_154), (cifar_resnet44, 44, 658_586),
     (cifar_resnet56, 56, 853_018), (cifar_resnet110, 110, 1_727_962)],
)
def test_cifar_resnet_structure(factory, depth, params):
    model = factory(num_classes=10)
    assert model.depth == depth
    assert sum(p.numel() for p in model.parameters()) == params
    n = (depth - 2) // 6
    assert all(len(getattr(model, f"layer{i}")) == n for i in (1, 2, 3))
    assert all(KEY_RE.match(k) for k in model.state_dict()), "unexpected state-dict key layout"
    shortcuts = [name for name, m in model.named_modules() if isinstance(m, PadShortcut)]
    assert shortcuts == ["layer2.0.shortcut", "layer3.0.shortcut"]


def test_cifar_resnet_forward_and_validation():
    model = cifar_resnet(20, num_classes=7, in_chans=1).eval()
    with torch.no_grad():
        assert model(_x(2, 1)).shape == (2, 7)
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)


def test_pad_shortcut_semantics():
    sc = PadShortcut(16, 32, stride=2)
    x = _x(2, 16, 9)
    y = sc(x)
    assert y.shape == (2, 32, 5, 5)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0
    assert list(sc.parameters()) == [] and sc.state_dict() == {}
    with pytest.raises(ValueError):
        PadShortcut(32, 16, 1)


@pytest.mark.skipif(not (SHARED / "resnet20_cifar10.pt").exists(), reason="shared teacher weights not present")
def test_pretrained_resnet20_accuracy():
    model = cifar_resnet20()
    state = torch.load(SHARED / "resnet20_cifar10.pt", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    data = np.load(SHARED / "cifar10_test1k_lossless.npz")
    x = torch.from_numpy(data["x"][:500]).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    y = torch.from_numpy(data["y"][:500].astype(np.int64))
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.88, f"ResNet-20 accuracy {acc:.3f} < 0.88"


@pytest.mark.skipif(not (SHARED / "resnet56_cifar10.pt").exists(), reason="shared teacher weights not present")
def test_resnet56_weights_load_strict_via_spec():
    model = load_model("cifar:resnet56", num_classes=10, weights=SHARED / "resnet56_cifar10.pt")
    ref = torch.load(SHARED / "resnet56_cifar10.pt", weights_only=True)
    assert torch.equal(model.state_dict()["linear.weight"], ref["linear.weight"])
    cifar_resnet56().load_state_dict(ref, strict=True)


# --------------------------------------------------------------------------- surgery


def _trained_like(model: nn.Module) -> nn.Module:
    """Give BN non-trivial statistics so equivalence checks are meaningful."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


def test_pad_shortcuts_to_conv_is_equivalent_and_copies():
    model = _trained_like(cifar_resnet20()).eval()
    converted = pad_shortcuts_to_conv(model)
    assert converted is not model
    assert not any(isinstance(m, PadShortcut) for m in converted.modules())
    assert any(isinstance(m, PadShortcut) for m in model.modules()), "original must be untouched"
    sc = converted.layer2[0].shortcut
    assert isinstance(sc, nn.Conv2d) and isinstance(sc, FixedShortcutConv)
    assert sc.kernel_size == (1, 1) and sc.stride == (2, 2) and sc.bias is None
    assert not sc.weight.requires_grad
    assert sc.weight.sum().item() == 16 and set(sc.weight.unique().tolist()) == {0.0, 1.0}
    x = _x(2)
    with torch.no_grad():
        assert torch.allclose(model(x), converted(x), atol=1e-5, rtol=0)
    # train mode flags are preserved
    assert not converted.training
    assert pad_shortcuts_to_conv(cifar_resnet20().train()).training


def test_pad_shortcuts_to_conv_raises_when_not_equivalent(monkeypatch):
    import compress.models.surgery as surgery

    real = surgery.shortcut_as_conv

    def broken(shortcut, **kw):
        conv = real(shortcut, **kw)
        with torch.no_grad():
            conv.weight.mul_(2.0)
        return conv

    monkeypatch.setattr(surgery, "shortcut_as_conv", broken)
    with pytest.raises(UnsupportedModelError) as info:
        pad_shortcuts_to_conv(cifar_resnet20())
    assert info.value.layer == "layer2.0.shortcut"
    assert "layer2.0.shortcut" in str(info.value)


def test_converted_model_prunes_with_torch_pruning():
    tp = pytest.importorskip("torch_pruning")
    model = pad_shortcuts_to_conv(cifar_resnet20()).eval()
    example = _x(2)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    group = dg.get_pruning_group(model.layer2[0].conv2, tp.prune_conv_out_channels, idxs=[0, 1])
    assert any(dep.target.module is model.layer2[0].shortcut for dep, _ in group)
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.25,
        ignored_layers=[model.linear],
    )
    pruner.step()
    after = sum(p.numel() for p in model.parameters())
    assert after < before
    assert model.layer2[0].conv2.out_channels == 24
    with torch.no_grad():
        assert model(example).shape == (2, 10)
    assert freeze_fixed_shortcuts(model) == 2
    assert not model.layer3[0].shortcut.weight.requires_grad


# --------------------------------------------------------------------------- load_model


@pytest.mark.parametrize(
    "spec",
    [
        "timm:resnet18",
        "timm:mobilenetv3_small_100",
        "timm:efficientnet_b0",
        "torchvision:resnet18",
        "torchvision:mobilenet_v3_small",
        "cifar:resnet20",
        "compress.models:cifar_resnet20",
    ],
)
def test_load_model_specs_forward(spec):
    model = load_model(spec, num_classes=10).eval()
    assert isinstance(model, nn.Module)
    with torch.no_grad():
        assert model(_x(2)).shape == (2, 10)


@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:resnet18", "cifar:resnet20"])
def test_load_model_in_chans(spec):
    model = load_model(spec, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        assert model(_x(2, 1)).shape == (2, 10)


@pytest.mark.parametrize(
    "spec,expect",
    [
        ("timm:resnet181", "timm:resnet18"),
        ("torchvision:resnet181", "torchvision:resnet18"),
        ("torchvision:mobilenet_v3_smal", "mobilenet_v3_small"),
        ("cifar:resnet21", "cifar:resnet20"),
        ("tiem:resnet18", "timm:resnet18"),
        ("resnet18", "timm:resnet18"),
        ("compress.models:cifar_resnet2O", "cifar_resnet20"),
        ("torchvision:fasterrcnn_resnet50_fpn", "classifier"),
        ("timm:hf-hub:someone/model", "never downloads"),
        ("", "timm:NAME"),
        ("no_such_pkg_xyz.mod:build", "package.module:factory"),
    ],
)
def test_bad_specs_raise_with_suggestion(spec, expect):
    with pytest.raises(ModelSpecError) as info:
        load_model(spec, num_classes=10)
    assert expect in str(info.value)


def test_bad_num_classes():
    with pytest.raises(ModelSpecError, match="num_classes"):
        load_model("cifar:resnet20", num_classes=0)


def test_factory_errors(tmp_path, monkeypatch):
    pkg = tmp_path / "sf_fake_factories.py"
    pkg.write_text(
        "import torch.nn as nn\n"
        "def good(num_classes=5):\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))\n"
        "def not_a_model(num_classes=5):\n    return 42\n"
        "def boom(num_classes=5):\n    raise RuntimeError('kaput')\n"
        "VALUE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("sf_fake_factories:good", num_classes=3)
    assert model(_x(2)).shape == (2, 3)
    assert load_model("python:sf_fake_factories:good")(_x(1)).shape == (1, 5)
    for name, text in [("not_a_model", "not a torch.nn.Module"), ("boom", "kaput"), ("VALUE", "not callable")]:
        with pytest.raises(ModelSpecError, match=text):
            load_model(f"sf_fake_factories:{name}")


def test_describe_model_spec():
    assert describe_model_spec("timm:resnet18") == {"spec": "timm:resnet18", "scheme": "timm", "name": "resnet18"}
    assert describe_model_spec("cifar:resnet56")["scheme"] == "cifar"
    d = describe_model_spec("pkg.mod:build")
    assert d["scheme"] == "python" and d["name"] == "pkg.mod:build"
    assert set(MODEL_SCHEMES) == {"timm", "torchvision", "cifar", "python"}
    with pytest.raises(ModelSpecError):
        describe_model_spec("nocolon")


# --------------------------------------------------------------------------- weights


def test_weights_round_trip_and_wrappers(tmp_path):
    src = _trained_like(cifar_resnet20())
    sd = src.state_dict()
    plain, wrapped, prefixed = tmp_path / "plain.pt", tmp_path / "wrapped.pt", tmp_path / "prefixed.pt"
    torch.save(sd, plain)
    torch.save({"state_dict": sd, "epoch": 3}, wrapped)
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, prefixed)
    src.eval()
    x = _x(2)
    for path in (plain, wrapped, str(prefixed)):
        model = load_model("cifar:resnet20", weights=path).eval()
        with torch.no_grad():
            assert torch.equal(model(x), src(x))


def test_weights_errors(tmp_path):
    torch.save(cifar_resnet20().state_dict(), tmp_path / "r20.pt")
    with pytest.raises(ModelSpecError) as info:
        load_model("cifar:resnet32", weights=tmp_path / "r20.pt")
    msg = str(info.value)
    assert "missing key(s)" in msg and "layer1.3.conv1.weight" in msg and "pass the spec" in msg

    with pytest.raises(ModelSpecError, match=r"shape mismatch.*linear\.weight.*num_classes"):
        load_model("cifar:resnet20", num_classes=100, weights=tmp_path / "r20.pt")

    extra = dict(cifar_resnet20().state_dict(), **{"head.extra": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ModelSpecError, match="unexpected key.*head.extra"):
        load_model("cifar:resnet20", weights=tmp_path / "extra.pt")

    with pytest.raises(ModelSpecError, match="does not exist"):
        load_model("cifar:resnet20", weights=tmp_path / "missing.pt")

    torch.save(cifar_resnet20(), tmp_path / "pickled_model.pt")  # whole module, not a state_dict
    with pytest.raises(ModelSpecError, match="state_dict"):
        load_model("cifar:resnet20", weights=tmp_path / "pickled_model.pt")

    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ModelSpecError, match="not a state_dict"):
        load_model("cifar:resnet20", weights=tmp_path / "list.pt")
