"""Unit tests for compress.data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from compress.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataSpec,
    TaskData,
    as_task_data,
    collect,
    load_digits_task,
    load_image_folder_task,
    load_npz_task,
    load_task,
    make_task,
)
from compress.errors import DataError


def _labels(loader) -> np.ndarray:
    return collect(loader)[1].numpy()


@pytest.fixture(scope="module")
def digits() -> TaskData:
    return load_digits_task(seed=0)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_spec(digits):
    x, y = next(iter(digits.train))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    spec = digits.spec
    assert spec.num_classes == 10 and spec.input_shape == (3, 32, 32)
    assert len(spec.mean) == len(spec.std) == 3 and spec.source == "sklearn.datasets.load_digits"
    sizes = digits.to_dict()["sizes"]
    assert sum(sizes[k] for k in ("train", "val", "test")) == 1797
    assert sizes["test"] == 360 and sizes["val"] == 270
    json.dumps(digits.to_dict())  # report-ready


def test_digits_splits_disjoint_and_stratified(digits):
    from collections import Counter

    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    def keys(x: torch.Tensor) -> list[bytes]:
        return [r.tobytes() for r in x[:, 0].mul(1000).round().to(torch.int32).numpy()]

    raw = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0).unsqueeze(1)
    ref = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    ref = (ref - digits.spec.mean[0]) / digits.spec.std[0]
    split_keys = {k: keys(collect(getattr(digits, k))[0]) for k in ("train", "val", "test")}
    # the three splits are exactly the 1797 images, each used once (a partition)
    assert Counter(split_keys["train"]) + Counter(split_keys["val"]) + Counter(split_keys["test"]) == Counter(
        keys(ref)
    )
    for split in ("train", "val", "test"):
        counts = np.bincount(_labels(getattr(digits, split)), minlength=10)
        assert (counts > 0).all(), f"{split} misses a class"
        frac = counts / counts.sum()
        assert np.abs(frac - 0.1).max() < 0.03, f"{split} not stratified: {frac}"


def test_digits_normalised_train(digits):
    x, _ = collect(digits.train)
    assert abs(x.mean().item()) < 1e-4
    assert abs(x.std().item() - 1.0) < 1e-3


def test_digits_deterministic():
    a, b, c = load_digits_task(seed=3), load_digits_task(seed=3), load_digits_task(seed=4)
    xa, ya = next(iter(a.train))
    xb, yb = next(iter(b.train))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(collect(a.val)[0], collect(b.val)[0])
    assert not torch.equal(collect(a.val)[0], collect(c.val)[0])
    xc, _ = next(iter(c.train))
    assert not torch.equal(xa, xc)


def test_digits_options_and_errors():
    t = load_digits_task(image_size=16, batch_size=10, test_fraction=0.0)
    assert t.test is None and t.spec.input_shape == (3, 16, 16)
    assert next(iter(t.train))[0].shape == (10, 3, 16, 16)
    with pytest.raises(DataError, match="val_fraction"):
        load_digits_task(val_fraction=0)
    with pytest.raises(DataError, match="< 1"):
        load_digits_task(val_fraction=0.5, test_fraction=0.5)


# --------------------------------------------------------------------------- npz


def _write_npz(path, n=60, shape=(8, 8, 3), n_classes=3, seed=0, **extra):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = (np.arange(n) % n_classes).astype(np.uint8)
    np.savez_compressed(path, x=x, y=y, **extra)
    return x, y


def test_npz_round_trip(tmp_path):
    x, y = _write_npz(tmp_path / "tiny.npz", n_classes=3, classes=np.array(["a", "b", "c"]))
    task = load_npz_task(tmp_path / "tiny.npz", val_fraction=0.2, batch_size=8)
    assert task.spec.input_shape == (3, 8, 8) and task.spec.num_classes == 3
    assert task.spec.class_names == ("a", "b", "c") and task.test is None
    assert task.to_dict()["sizes"]["train"] == 48 and task.to_dict()["sizes"]["val"] == 12
    xv, yv = collect(task.val)
    assert set(yv.tolist()) == {0, 1, 2}
    # undo the normalisation and find the exact original images
    mean = torch.tensor(task.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(task.spec.std).view(1, 3, 1, 1)
    pixels = ((xv * std + mean) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    originals = {arr.tobytes(): int(lbl) for arr, lbl in zip(x, y)}
    assert all(originals[p.tobytes()] == int(lbl) for p, lbl in zip(pixels, yv))
    xt, _ = collect(task.train)
    assert torch.allclose(xt.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)


def test_npz_grayscale_override_limit_and_test(tmp_path):
    _write_npz(tmp_path / "g.npz", n=100, shape=(6, 6), n_classes=4)
    _write_npz(tmp_path / "g_test.npz", n=20, shape=(6, 6), n_classes=4, seed=1)
    task = load_task(
        tmp_path / "g.npz", test_path=tmp_path / "g_test.npz", mean=[0.5], std=[0.25], limit=40, seed=1
    )
    assert task.spec.input_shape == (1, 6, 6) and task.spec.mean == (0.5,) and task.spec.std == (0.25,)
    sizes = task.to_dict()["sizes"]
    assert sizes["train"] + sizes["val"] == 40 and sizes["test"] == 20
    assert np.bincount(_labels(task.train), minlength=4).min() >= 8
    x, _ = collect(task.test)
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-6 and x.max() <= (1 - 0.5) / 0.25 + 1e-6


def test_npz_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_npz_task(tmp_path / "nope.npz")
    np.savez(tmp_path / "nox.npz", images=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"no array 'x'.*images"):
        load_npz_task(tmp_path / "nox.npz")
    np.savez(tmp_path / "int.npz", x=np.zeros((4, 8, 8, 3), np.int32), y=np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"'x'.*int32.*uint8"):
        load_npz_task(tmp_path / "int.npz")
    np.savez(tmp_path / "nchw.npz", x=np.zeros((4, 3, 8, 8), np.uint8), y=np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="transpose"):
        load_npz_task(tmp_path / "nchw.npz")
    np.savez(tmp_path / "len.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="must match"):
        load_npz_task(tmp_path / "len.npz")
    np.savez(tmp_path / "soft.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.full((4, 2), 0.5))
    with pytest.raises(DataError, match="labels"):
        load_npz_task(tmp_path / "soft.npz")
    _write_npz(tmp_path / "ok.npz")
    with pytest.raises(DataError, match="channel"):
        load_npz_task(tmp_path / "ok.npz", mean=IMAGENET_MEAN[:2], std=IMAGENET_STD[:2])
    _write_npz(tmp_path / "other.npz", shape=(4, 4, 3))
    with pytest.raises(DataError, match="same size"):
        load_npz_task(tmp_path / "ok.npz", test_path=tmp_path / "other.npz")


# --------------------------------------------------------------------------- image folder


def _write_pngs(root, classes=("cat", "dog"), per_class=6, size=(10, 12)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")


def test_image_folder(tmp_path):
    _write_pngs(tmp_path / "imgs")
    task = load_task(tmp_path / "imgs", val_fraction=0.25, batch_size=4)
    assert task.spec.class_names == ("cat", "dog") and task.spec.num_classes == 2
    assert task.spec.input_shape == (3, 10, 12)
    assert task.to_dict()["sizes"] == {"train": 9, "val": 3, "test": None, "calib": None}
    x, y = collect(task.train)
    assert x.shape == (9, 3, 10, 12) and set(y.tolist()) == {0, 1}
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)

    resized = load_image_folder_task(tmp_path / "imgs", image_size=8, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert resized.spec.input_shape == (3, 8, 8) and resized.spec.mean == IMAGENET_MEAN
    assert next(iter(resized.val))[0].shape[1:] == (3, 8, 8)


def test_image_folder_split_layout(tmp_path):
    _write_pngs(tmp_path / "ds" / "train", per_class=4)
    _write_pngs(tmp_path / "ds" / "val", per_class=2)
    _write_pngs(tmp_path / "ds" / "test", per_class=3)
    task = load_image_folder_task(tmp_path / "ds")
    assert task.to_dict()["sizes"] == {"train": 8, "val": 4, "test": 6, "calib": None}
    assert task.spec.class_names == ("cat", "dog")
    # a separate test tree
    task = load_task(tmp_path / "ds" / "train", test_path=tmp_path / "ds" / "test", val_fraction=0.25)
    assert task.to_dict()["sizes"] == {"train": 6, "val": 2, "test": 6, "calib": None}
    _write_pngs(tmp_path / "other", classes=("cat", "cow"), per_class=2)
    with pytest.raises(DataError, match="same class"):
        load_image_folder_task(tmp_path / "ds" / "train", test_path=tmp_path / "other")


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="sub-folder per class"):
        load_image_folder_task(tmp_path / "empty")
    _write_pngs(tmp_path / "mixed", classes=("a",), per_class=3, size=(8, 8))
    _write_pngs(tmp_path / "mixed2", classes=("b",), per_class=3, size=(9, 9))
    (tmp_path / "mixed2" / "b").rename(tmp_path / "mixed" / "b")
    with pytest.raises(DataError, match="image_size"):
        load_image_folder_task(tmp_path / "mixed", val_fraction=0.34)


# --------------------------------------------------------------------------- dispatch / wrapping


def test_load_task_dispatch_and_errors(tmp_path):
    assert load_task().spec.name == "digits"
    assert load_task("digits", image_size=8).spec.input_shape == (3, 8, 8)
    with pytest.raises(DataError, match="does not exist"):
        load_task(tmp_path / "missing_dir")
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported data file"):
        load_task(tmp_path / "table.csv")
    with pytest.raises(DataError, match="does not take image_sz"):
        load_task("digits", image_sz=8)


def _tensor_ds(n=40, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % classes)


def test_as_task_data_with_dict_of_loaders():
    train = DataLoader(_tensor_ds(40), batch_size=8, shuffle=True)
    val = DataLoader(_tensor_ds(12, seed=1), batch_size=8)
    task = as_task_data({"train": train, "val": val})
    assert task.train is train and task.val is val and task.test is None
    assert task.spec.num_classes == 4 and task.spec.input_shape == (3, 8, 8)
    assert task.spec.mean == () and task.spec.name == "custom"
    assert as_task_data(task) is task


def test_as_task_data_splits_when_val_missing():
    task = as_task_data((DataLoader(_tensor_ds(40), batch_size=5),), seed=2)
    sizes = task.to_dict()["sizes"]
    assert sizes["train"] + sizes["val"] == 40 and sizes["val"] == 6
    assert task.train.batch_size == 5
    assert set(_labels(task.val).tolist()) == {0, 1, 2, 3}

    class Plain(torch.utils.data.Dataset):  # no cheap labels: inferred by iterating
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.zeros(1, 4, 4), i % 3

    task = as_task_data(Plain())
    assert task.spec.num_classes == 3 and task.spec.input_shape == (1, 4, 4)


@pytest.mark.parametrize(
    "bad,text",
    [
        (42, "expected a TaskData"),
        ({"val": None}, "no 'train' entry"),
        ({"train": DataLoader(_tensor_ds()), "tset": None}, "unknown key"),
        ({"train": [1, 2, 3]}, "not a DataLoader|is a list"),
        (DataLoader([(1, 2)] * 4, batch_size=2), "expected images"),
        (DataLoader([{"img": torch.zeros(3, 4, 4)}] * 4, batch_size=2), r"\(x, y\)"),
    ],
)
def test_as_task_data_bad_input(bad, text):
    with pytest.raises(DataError, match=text):
        as_task_data(bad)


def test_make_task_and_collect():
    spec = DataSpec("toy", 4, (3, 8, 8), (0.0,) * 3, (1.0,) * 3)
    task = make_task(_tensor_ds(40), spec=spec, seed=0, val_fraction=0.25, batch_size=16)
    assert task.to_dict()["sizes"]["val"] == 10 and task.spec is spec
    x, y = collect(task.val, max_samples=7)
    assert x.shape == (7, 3, 8, 8) and y.shape == (7,)
    x, y = collect(_tensor_ds(40))
    assert x.shape == (40, 3, 8, 8)
    with pytest.raises(DataError, match="no batches"):
        collect(DataLoader(TensorDataset(torch.zeros(0, 3), torch.zeros(0))))
    with pytest.raises(DataError, match="DataSpec"):
        make_task(_tensor_ds(), spec={"name": "toy"})
    with pytest.raises(DataError, match="same length"):
        DataSpec("toy", 4, (3, 8, 8), (0.0,) * 3, (1.0,))
