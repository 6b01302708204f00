"""compress() reads the validation and test splits batch by batch (issue 17: nothing loads a whole
image set into memory); only a bounded prefix is kept, and a split that fits keeps its old
fingerprint so earlier runs still resume."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import compress.api as api
import compress.inputs as inputs
import compress.measure as measure
from compress import compress
from compress.errors import DataError
from compress.testing import TinyResidualNet
from compress.training.checkpoint import SplitFingerprint, _tensor_fingerprint, run_identity


def _loader(x, y, batch_size=16):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _split(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_a_split_that_fits_is_kept_whole_with_its_old_fingerprint():
    x, y = _split()
    xk, yk, ident = inputs.scan_val(_loader(x, y), num_classes=4)
    assert torch.equal(xk, x) and torch.equal(yk, y)
    rid = run_identity(strategy="s", config={}, seed=0, budget={}, target={}, data={}, val=ident,
                       model=torch.nn.Linear(1, 1), teacher=None)
    assert rid["data"]["val_fingerprint"] == _tensor_fingerprint(x, y)


def test_a_large_split_keeps_a_bounded_prefix_and_a_streamed_fingerprint(monkeypatch):
    x, y = _split(100)
    per_sample = x[0].numel() * x.element_size()
    monkeypatch.setattr(inputs, "VAL_KEEP_BYTES", 40 * per_sample)
    xk, yk, ident = inputs.scan_val(_loader(x, y, batch_size=16), num_classes=4)
    assert len(xk) == 40 and torch.equal(xk, x[:40]) and torch.equal(yk, y[:40])
    assert isinstance(ident, str) and len(ident) == 20 and ident != _tensor_fingerprint(x, y)
    # independent of the batching, sensitive to one pixel
    assert inputs.scan_val(_loader(x, y, batch_size=7), num_classes=4)[2] == ident
    x2 = x.clone()
    x2[77, 1, 2, 3] += 1e-3
    assert inputs.scan_val(_loader(x2, y, batch_size=16), num_classes=4)[2] != ident


def test_split_fingerprint_counts_samples_and_shapes():
    x, y = _split(10)
    a, b = SplitFingerprint(), SplitFingerprint()
    a.update(x, y)
    b.update(x[:5], y[:5])
    b.update(x[5:], y[5:])
    assert a.samples == b.samples == 10 and a.hexdigest() == b.hexdigest()
    c = SplitFingerprint()
    c.update(x[:9], y[:9])
    assert c.hexdigest() != a.hexdigest()


def test_bad_rows_are_found_in_every_batch_with_their_index_in_the_split():
    x, y = _split(64)
    x[3, 0, 0, 0] = float("nan")
    x[50, 1, 1, 1] = float("inf")
    with pytest.raises(DataError, match=r"\(2 image\(s\), first: \[3, 50\]\)"):
        inputs.scan_val(_loader(x, y, batch_size=16), num_classes=4)
    x, y = _split(64)
    y[40] = 9
    with pytest.raises(DataError, match=r"labels range over \[0, 9\] but the task has 4 classes"):
        inputs.scan_val(_loader(x, y, batch_size=16), num_classes=4)
    with pytest.raises(DataError, match="empty"):
        inputs.scan_val(_loader(x[:0], y[:0]), num_classes=4)


def test_compress_never_collects_a_whole_split(monkeypatch, digits_task):
    calls = []
    real = api.collect

    def spy(loader, max_samples=None):
        calls.append((loader, max_samples))
        return real(loader, max_samples)

    monkeypatch.setattr(api, "collect", spy)
    monkeypatch.setattr(measure, "collect", spy)  # the int8 calibration set
    x0, _ = next(iter(digits_task.val))
    monkeypatch.setattr(inputs, "VAL_KEEP_BYTES", 32 * x0[0].numel() * x0.element_size())  # 32 validation images
    torch.manual_seed(0)
    res = compress(TinyResidualNet(), "macs=0.6x", data=digits_task, progress=False, mobile=False, memory=False,
                   allow_slower=True, config={"epochs": 0, "bisection_steps": 3, "metric": "l1"})
    assert res.validation.ok
    assert calls and all(m is not None for _, m in calls), calls
    assert digits_task.test is not None and (digits_task.test, api.PARITY_MAX_SAMPLES) in calls  # bounded parity
