"""The shared checkpoint parts: atomic (JSON, tensors) pairs, RNG states, per-epoch fine-tune
checkpoints, and the run manifest that refuses another run's directory."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compress.errors import CheckpointError
from compress.strategies._parts.checkpoint import (
    CheckpointStore,
    EpochCheckpoint,
    capture_rng,
    config_key_omit,
    open_run_dir,
    run_identity,
    restore_rng,
)
from compress.strategies._parts.training import FinetuneSettings, finetune


def test_commit_load_round_trip_keys_and_stale_tensor_files(tmp_path):
    store = CheckpointStore(tmp_path)
    for epoch in (1, 2):
        store.commit("phase", {"epoch": epoch, "hist": [(1, 2)]}, {"w": torch.full((3,), float(epoch))},
                     key="k", tag=epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phase.2.pt", "phase.json"]  # older tensors removed
    got = store.load("phase", key="k")
    assert got.state == {"epoch": 2, "hist": [[1, 2]]} and torch.equal(got.tensors["w"], torch.full((3,), 2.0))
    assert store.load("phase", key="other") is None  # another key: a stale phase, recomputed by the caller
    assert store.load("absent", key="k") is None
    assert CheckpointStore(None).load("phase", key="k") is None
    (tmp_path / "phase.2.pt").unlink()
    with pytest.raises(CheckpointError, match="phase.2.pt is corrupt or truncated.*missing.*resume=False"):
        store.load("phase", key="k")


def test_rng_states_of_torch_numpy_python_and_generators_come_back():
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    js, tensors = capture_rng({"g": gen})
    js = json.loads(json.dumps(js))  # what a checkpoint stores
    want = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    torch.manual_seed(9), np.random.seed(9), random.seed(9), gen.manual_seed(9)
    restore_rng(js, tensors, {"g": gen})
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]
    assert torch.equal(want[3], got[3])


class _Stop(Exception):
    pass


def _finetune(ckpt_dir, stop_at=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, 2, 2, generator=g), torch.randint(0, 3, (40,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    val = DataLoader(TensorDataset(x, y), batch_size=20)
    seen = []

    def on_epoch(epoch, rec):
        if epoch == stop_at:
            raise _Stop
        seen.append(rec)

    store = CheckpointStore(ckpt_dir)
    hist = finetune(model, train, val, FinetuneSettings(epochs=4, lr=0.1, augment="flip-crop", seed=3),
                    on_epoch=on_epoch, checkpoint=EpochCheckpoint(store, "ft", "key"))
    return model, hist, seen


def test_finetune_resumes_after_an_interrupted_epoch_bit_identically(tmp_path):
    ref, ref_hist, _ = _finetune(None)
    with pytest.raises(_Stop):
        _finetune(tmp_path, stop_at=3)  # epochs 1-2 committed, epoch 3 lost
    assert json.loads((tmp_path / "ft.json").read_text())["state"]["epoch"] == 2
    torch.manual_seed(123)  # the global RNG is restored from the checkpoint, not from here
    model, hist, seen = _finetune(tmp_path)
    assert [r["epoch"] for r in seen] == [1, 2, 3, 4]  # on_epoch replayed for the restored epochs
    assert hist == ref_hist
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))


def test_run_manifest_refuses_another_run_and_resume_false_starts_over(tmp_path):
    ident = {"strategy": "grow", "config": {"epochs": 3}, "seed": 0}
    first = open_run_dir(tmp_path, ident)
    assert first.created_manifest and not first.resumed
    CheckpointStore.for_strategy(tmp_path, "grow").commit("state", {"i": 1}, {}, key="k")
    again = open_run_dir(tmp_path, ident)
    assert again.resumed and not again.created_manifest
    with pytest.raises(CheckpointError, match=r"config\.epochs: 3 -> 4.*resume=False"):
        open_run_dir(tmp_path, {**ident, "config": {"epochs": 4}})
    fresh = open_run_dir(tmp_path, {**ident, "config": {"epochs": 4}}, resume=False)
    assert fresh.created_manifest and not (tmp_path / "checkpoints" / "grow").exists()
    fresh.discard_if_unused()  # nothing committed after the manifest: the directory is left clean
    assert not (tmp_path / "checkpoints").exists()
    (tmp_path / "checkpoints" / "grow").mkdir(parents=True)
    (tmp_path / "checkpoints" / "grow" / "state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="without a run.json"):
        open_run_dir(tmp_path, ident)
    (tmp_path / "checkpoints" / "run.json").write_text('{"format": "slimforge-run/1", "ident')
    with pytest.raises(CheckpointError, match="run.json is corrupt or truncated"):
        open_run_dir(tmp_path, ident)


def test_run_manifest_without_a_field_added_later_resumes_at_its_default(tmp_path):
    """A manifest written before a config field existed (gp-prune's ``prune.drop_blocks``) lacks
    it: the same run at the field's default resumes, another value is refused (found when a
    benchmark row started before the field was added could not resume)."""
    from compress.strategies.gp_prune.config import GPPruneConfig

    model = nn.Linear(2, 2)
    val = (torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))

    def ident(cfg):
        return run_identity(strategy="gp-prune", config=cfg, seed=0, budget={"macs": 1}, target={}, data={},
                            val=val, model=model, teacher=None)

    cfg = GPPruneConfig()
    omit = config_key_omit(cfg)
    assert omit["config.prune.drop_blocks"] == 0.0 and omit["config.prune.schedule"] == "one-shot"
    old = ident(cfg)
    del old["config"]["prune"]["drop_blocks"]  # as written by the slimforge before the field
    open_run_dir(tmp_path, old)
    CheckpointStore.for_strategy(tmp_path, "gp-prune").commit("state", {"i": 1}, {}, key="k")
    with pytest.raises(CheckpointError, match=r"drop_blocks: \(absent\) -> 0\.0"):
        open_run_dir(tmp_path, ident(cfg))  # without the table: the old refusal
    assert open_run_dir(tmp_path, ident(cfg), key_omit=omit).resumed
    cfg = dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, drop_blocks=0.5))
    with pytest.raises(CheckpointError, match=r"drop_blocks: \(absent\) -> 0\.5"):
        open_run_dir(tmp_path, ident(cfg), key_omit=config_key_omit(cfg))
