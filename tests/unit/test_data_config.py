"""Image folders read with the teacher's data config (issue 17): timm's resolve_data_config /
create_transform, torchvision weights' transforms(), overrides, the record in DataSpec / report /
manifest, lazy folders, and the CLI's --crop-pct / --interpolation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from compress.cli import _data_options, app
from compress.data import (
    AUTO_WORKERS_MIN_IMAGES,
    DataSpec,
    Preprocess,
    auto_num_workers,
    collect,
    load_digits_task,
    load_image_folder_task,
    load_task,
)
from compress.errors import ConfigError, DataError

# (W, H) of the generated images: four aspect ratios
_SIZES = [(40, 30), (30, 50), (64, 64), (80, 20)]


def _folder(root: Path, per_class: int = 6, sizes=_SIZES) -> Path:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("imgs") / "imgs")


def _val_pairs(task):
    """The val split's (PIL image, tensor) pairs: the files and what the loader made of them."""
    subset = task.val.dataset
    x, _ = collect(task.val)
    paths = [subset.dataset.samples[i][0] for i in subset.indices]
    return [Image.open(p).convert("RGB") for p in paths], x


def _tf_parts(tf):
    """(Resize size, interpolation, CenterCrop size, mean, std) of a timm/torchvision eval Compose."""
    parts = {type(t).__name__: t for t in tf.transforms}
    norm = parts["Normalize"]
    return (parts["Resize"].size, parts["Resize"].interpolation.value, tuple(parts["CenterCrop"].size),
            tuple(float(v) for v in norm.mean), tuple(float(v) for v in norm.std))


# ------------------------------------------------------------------ timm


def test_timm_teacher_eval_transform_is_timms_own(folder):
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    teacher = timm.create_model("resnet10t", pretrained=False, num_classes=2)
    ref = create_transform(**resolve_data_config(model=teacher))
    task = load_image_folder_task(folder, model=teacher, seed=0)
    pre = task.spec.preprocess
    resize, interp, crop, mean, std = _tf_parts(ref)
    # what compress() writes into report.json["data"]
    rec = task.to_dict()["spec"]["preprocess"]
    assert rec["resize_size"] == [resize] and rec["crop_size"] == list(crop) and rec["interpolation"] == interp
    assert tuple(rec["mean"]) == pytest.approx(mean) and tuple(rec["std"]) == pytest.approx(std)
    assert rec["input_size"] == [3, *crop] and rec["source"] == "timm data config"
    assert task.spec.input_shape == (3, *crop) and pre.crop_pct == resolve_data_config(model=teacher)["crop_pct"]
    # and the loader applies exactly that transform to the files
    images, x = _val_pairs(task)
    assert torch.equal(x, torch.stack([ref(im) for im in images]))
    # the spec string resolves the same config without building the model
    by_spec = load_image_folder_task(folder, model="timm:resnet10t", seed=0)
    assert by_spec.spec.preprocess.to_dict() == pre.to_dict()
    # training: timm's RandomResizedCrop + flip at the same size; calib: eval transform, bounded
    assert "RandomResizedCrop" in pre.train_transform and "RandomHorizontalFlip" in pre.train_transform
    xb, _ = next(iter(task.train))
    assert tuple(xb.shape[1:]) == (3, *crop)
    assert len(task.calib.dataset) == len(task.train.dataset)  # 10 train images < calib_samples
    few = load_image_folder_task(folder, model="timm:resnet10t", calib_samples=4, seed=0)
    _, y_cal = collect(few.calib)  # gp-prune calibrates on the first samples: both classes among them
    assert len(y_cal) == 4 and set(y_cal.tolist()) == {0, 1}


def test_timm_config_overrides_are_applied_and_recorded(folder):
    pytest.importorskip("timm")
    task = load_image_folder_task(folder, model="timm:resnet10t", image_size=24, crop_pct=1.0)
    pre = task.spec.preprocess
    assert pre.input_size == (3, 24, 24) and pre.crop_pct == 1.0 and pre.resize_size == (24,)
    fs = dict(pre.field_sources)
    assert fs["input_size"] == fs["crop_pct"] == "user" and fs["interpolation"] == fs["mean"] == "timm data config"
    assert pre.source == "timm data config"
    every = load_image_folder_task(folder, model="timm:resnet10t", image_size=16, crop_pct=0.5,
                                   interpolation="nearest", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert every.spec.preprocess.source == "user" and every.spec.preprocess.resize_size == (32,)
    assert every.spec.mean == (0.5, 0.5, 0.5) and every.spec.std == (0.25, 0.25, 0.25)
    gray = load_image_folder_task(folder, model="timm:resnet10t", image_size=16, channels=1)
    assert gray.spec.input_shape == (1, 16, 16) and len(gray.spec.mean) == 1  # the 3 means averaged
    assert tuple(next(iter(gray.val))[0].shape[1:]) == (1, 16, 16)


# ------------------------------------------------------------------ torchvision


def test_torchvision_weights_transforms_are_used(folder):
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1  # transforms() is metadata: nothing is downloaded
    ref = weights.transforms()
    for model in ("torchvision:resnet18", weights):
        task = load_image_folder_task(folder, model=model, seed=0)
        pre = task.spec.preprocess
        assert pre.source == "torchvision weights" and pre.input_size == (3, *ref.crop_size * 2)
        assert pre.resize_size == tuple(ref.resize_size) and pre.interpolation == ref.interpolation.value
        assert pre.mean == tuple(ref.mean) and pre.std == tuple(ref.std)
        images, x = _val_pairs(task)
        assert torch.equal(x, torch.stack([ref(im) for im in images]))
        assert "RandomResizedCrop" in pre.train_transform and "ColorJitter" not in pre.train_transform


# ------------------------------------------------------------------ lazy folders, crops, workers


def test_folder_is_lazy_and_different_aspect_ratios_are_center_cropped(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=4)
    # one wide image: red | green | green | blue quarters; a center crop keeps only green
    wide = np.zeros((32, 64, 3), dtype=np.uint8)
    wide[:, :16, 0] = 255
    wide[:, 16:48, 1] = 255
    wide[:, 48:, 2] = 255
    Image.fromarray(wide).save(root / "cat" / "wide.png")
    task = load_image_folder_task(root, image_size=16, crop_pct=1.0, interpolation="nearest",
                                  mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), val_fraction=0.3, seed=0)
    ds = task.train.dataset.dataset
    assert all(isinstance(p, str) and isinstance(y, int) for p, y in ds.samples)  # paths, not pixels
    assert not any(isinstance(v, torch.Tensor) for v in vars(ds).values())
    x, _ = collect(task.val)
    assert tuple(x.shape[1:]) == (3, 16, 16)
    x_train, _ = next(iter(task.train))
    assert tuple(x_train.shape[1:]) == (3, 16, 16)
    # the wide image through the eval transform: pure green (aspect ratio kept, then cropped)
    idx = [p for p, _ in ds.samples].index(str(root / "cat" / "wide.png"))
    img, _ = task.calib.dataset.dataset[idx]
    assert img[1].min() > 0.99 and img[0].max() < 0.01 and img[2].max() < 0.01
    # the legacy resize (no crop_pct / interpolation / teacher config) squashes it: red and blue stay
    legacy = load_image_folder_task(root, image_size=16, mean=(0.0,) * 3, std=(1.0,) * 3, val_fraction=0.3, seed=0)
    img, _ = legacy.train.dataset.dataset[idx]
    assert img[0, :, 0].max() > 0.9 and img[2, :, -1].max() > 0.9
    assert legacy.spec.preprocess.crop_pct is None and legacy.calib is None


def test_workers_default_and_results_do_not_depend_on_them(folder):
    assert auto_num_workers(AUTO_WORKERS_MIN_IMAGES - 1) == 0
    assert 1 <= auto_num_workers(AUTO_WORKERS_MIN_IMAGES) <= 4
    a = load_image_folder_task(folder, model="timm:resnet10t", image_size=16, seed=0)
    assert a.train.num_workers == a.val.num_workers == 0  # 12 images
    b = load_image_folder_task(folder, model="timm:resnet10t", image_size=16, seed=0, num_workers=1)
    assert b.val.num_workers == 1
    assert torch.equal(collect(a.val)[0], collect(b.val)[0])
    with pytest.raises(DataError, match="num_workers must be an int >= 0"):
        load_image_folder_task(folder, num_workers=-1)


# ------------------------------------------------------------------ the caller's own transforms, errors


def test_own_transforms_and_bad_values(folder):
    from torchvision import transforms as T

    tf = T.Compose([T.Resize((8, 8)), T.ToTensor()])
    task = load_image_folder_task(folder, eval_transform=tf)
    assert task.spec.input_shape == (3, 8, 8) and task.spec.preprocess.source == "user"
    assert task.spec.mean == () and task.spec.preprocess.resize_size == (8, 8)
    with pytest.raises(DataError, match="not both"):
        load_image_folder_task(folder, eval_transform=tf, model="timm:resnet10t")
    with pytest.raises(DataError, match=r"crop_pct must be a number in \(0, 1\]"):
        load_image_folder_task(folder, crop_pct=2)
    with pytest.raises(DataError, match="interpolation must be one of nearest, bilinear, bicubic"):
        load_image_folder_task(folder, interpolation="foo")


# ------------------------------------------------------------------ cifar:, digits, user modules: unchanged


def test_models_without_a_data_config_keep_the_legacy_path(folder):
    plain = load_image_folder_task(folder, image_size=12, seed=0)
    for model in ("cifar:resnet20", "compress.testing:TinyConvNet", torch.nn.Linear(2, 2)):
        task = load_image_folder_task(folder, image_size=12, seed=0, model=model)
        assert task.spec.to_dict() == plain.spec.to_dict()
        assert torch.equal(collect(task.val)[0], collect(plain.val)[0])
    assert plain.spec.preprocess.source == "sampled from data" and plain.spec.preprocess.resize_size == (12, 12)
    digits = load_digits_task(seed=0)
    assert digits.spec.preprocess is None and "preprocess" not in digits.spec.to_dict()  # contract unchanged


def test_spec_with_preprocess_round_trips_through_json(folder):
    task = load_image_folder_task(folder, model="timm:resnet10t", image_size=16)
    d = json.loads(json.dumps(task.spec.to_dict()))
    again = DataSpec(**{**d, "input_shape": tuple(d["input_shape"])})
    assert isinstance(again.preprocess, Preprocess) and again.to_dict() == task.spec.to_dict()


def test_manifest_records_the_preprocessing(tmp_path, folder):
    from compress.exporters.mobile import write_manifest

    (tmp_path / "student.bin").write_bytes(b"x")
    pre = load_image_folder_task(folder, model="timm:resnet10t", image_size=16).spec.preprocess.to_dict()
    path = write_manifest(tmp_path, [{"file": "student.bin", "kind": "other"}], strategy="s", preprocess=pre)
    manifest = json.loads(path.read_text())
    assert manifest["preprocess"] == json.loads(json.dumps(pre)) and manifest["artifacts"][0]["file"] == "student.bin"


# ------------------------------------------------------------------ CLI


runner = CliRunner()
_RUN = ("run", "--model", "compress.testing:TinyConvNet", "--budget", "macs=0.5x")


@pytest.mark.parametrize("opts, fragment", [
    (("--crop-pct", "2"), "--crop-pct must be in (0, 1], the fraction of the resized image the center crop keeps"),
    (("--crop-pct", "0"), "--crop-pct must be in (0, 1]"),
    (("--interpolation", "foo"), "--interpolation must be one of nearest, bilinear, bicubic, box, hamming, lanczos, "
                                 "got 'foo'"),
], ids=["crop-pct-2", "crop-pct-0", "interpolation-foo"])
def test_cli_bad_crop_pct_and_interpolation_exit_2(opts, fragment, folder, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, [*_RUN, "--data", str(folder), "--out", str(out), *opts], env={"COLUMNS": "1000"})
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in res.output, text
    assert "ConfigError" in text and fragment in text
    assert not out.exists()


def test_cli_data_options_pass_the_teacher_spec_and_overrides_for_folders_only(folder):
    kw = _data_options(str(folder), seed=0, test_data=None, mean=None, std=None, image_size=24, in_chans=None,
                       num_classes=None, crop_pct=0.9, interpolation="Bicubic", model="timm:resnet10t")
    assert kw["model"] == "timm:resnet10t" and kw["crop_pct"] == 0.9 and kw["interpolation"] == "bicubic"
    task = load_task(str(folder), **kw)
    assert task.spec.preprocess.input_size == (3, 24, 24) and task.spec.preprocess.interpolation == "bicubic"
    kw = _data_options(str(folder), seed=0, test_data=None, mean=None, std=None, image_size=None, in_chans=None,
                       num_classes=None, model="cifar:resnet20")
    assert "model" not in kw  # no data config: the legacy path
    with pytest.raises(ConfigError, match="--crop-pct applies to image-folder data only"):
        _data_options("digits", seed=0, test_data=None, mean=None, std=None, image_size=None, in_chans=None,
                      num_classes=None, crop_pct=0.9)
    with pytest.raises(ConfigError, match="--interpolation applies to image-folder data only"):
        _data_options("digits", seed=0, test_data=None, mean=None, std=None, image_size=None, in_chans=None,
                      num_classes=None, interpolation="bicubic")
