"""Guards of the training loops: a NaN / inf loss (or weights) stops training with
TrainingDivergedError, the last good weights are restored, committed epochs stay."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from compress.errors import CompressError, TrainingDivergedError
from compress.strategies._parts.checkpoint import CheckpointStore, EpochCheckpoint
from compress.strategies._parts.training import FinetuneSettings, finetune
from compress.strategies.grow import GrowConfig
from compress.strategies.grow.partition import FeatureExtractor, partition_teacher
from compress.strategies.grow.strategy import AttentionBank, build_initial, train_stage
from compress.testing import TinyConvNet

X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class _PoisonedLoader:
    """Yields the batches of ``loader``; from pass ``poison_pass`` (0-based) on, batch
    ``poison_step`` has a NaN pixel."""

    def __init__(self, loader: DataLoader, poison_pass: int, poison_step: int) -> None:
        self.loader, self.poison_pass, self.poison_step, self.passes = loader, poison_pass, poison_step, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        p = self.passes
        self.passes += 1
        for i, (x, y) in enumerate(self.loader):
            if p >= self.poison_pass and i == self.poison_step:
                x = x.clone()
                x[0, 0, 0, 0] = float("nan")
            yield x, y


def _data(n=96, batch=16):
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(ds, batch_size=batch)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_in_a_later_epoch_restores_the_last_epoch_and_keeps_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = TinyConvNet(width=4)
    after_epoch: dict[int, dict] = {}
    store = CheckpointStore(tmp_path / "ck")
    loader = _PoisonedLoader(_data(), poison_pass=1, poison_step=2)
    with pytest.raises(TrainingDivergedError) as exc:
        finetune(model, loader, _data(), FinetuneSettings(epochs=3, lr=0.05),
                 on_epoch=lambda e, rec: after_epoch.__setitem__(e, _snapshot(model)),
                 checkpoint=EpochCheckpoint(store, "retrain", "k"))
    err = exc.value
    assert isinstance(err, CompressError) and (err.phase, err.epoch, err.step) == ("retrain", 2, 2)
    assert math.isnan(err.loss)
    msg = str(err)
    for needle in ("'retrain'", "epoch 2/3, step 3", "learning rate", "NaN", "after epoch 1", "resume=False",
                   str(tmp_path / "ck")):
        assert needle in msg, (needle, msg)
    assert set(after_epoch) == {1}
    assert _same(_snapshot(model), after_epoch[1]), "the weights of the last completed epoch were not restored"
    assert not model.training
    saved = json.loads((tmp_path / "ck" / "retrain.json").read_text())
    assert saved["state"]["epoch"] == 1  # the committed boundary stays; nothing of epoch 2 was committed
    assert len(list((tmp_path / "ck").glob("retrain.*.pt"))) == 1


def test_nan_loss_in_the_first_epoch_restores_the_starting_weights():
    torch.manual_seed(0)
    model = TinyConvNet(width=4)
    start = _snapshot(model)
    with pytest.raises(TrainingDivergedError, match="weights it started with") as exc:
        finetune(model, _PoisonedLoader(_data(), 0, 1), None, FinetuneSettings(epochs=2, lr=0.05))
    assert (exc.value.phase, exc.value.epoch, exc.value.step) == ("finetune", 1, 1)
    assert _same(_snapshot(model), start)


class _SqrtNet(nn.Module):
    """Finite loss, but d sqrt(a)/da at a = 0 is inf, times 0: the gradient of ``a`` is NaN, so
    the weights become NaN after the first step while the loss of that step was finite."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 10)
        self.a = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.fc(x.flatten(1)) + 0.0 * torch.sqrt(self.a)


def test_weights_that_become_non_finite_at_the_end_of_an_epoch_are_caught():
    torch.manual_seed(0)
    model = _SqrtNet()
    start = _snapshot(model)
    with pytest.raises(TrainingDivergedError, match="weights became non-finite during epoch 1/2") as exc:
        finetune(model, _data(), None, FinetuneSettings(epochs=2, lr=0.1, max_steps_per_epoch=1))
    assert (exc.value.epoch, exc.value.step) == (1, 0)
    assert _same(_snapshot(model), start)


def test_the_same_weights_caught_mid_epoch_as_a_nan_loss():
    torch.manual_seed(0)
    with pytest.raises(TrainingDivergedError, match="loss became nan at epoch 1/1, step 2"):
        finetune(_SqrtNet(), _data(), None, FinetuneSettings(epochs=1, lr=0.1))


def test_finite_training_is_unchanged_by_the_guard():
    torch.manual_seed(0)
    hist = finetune(TinyConvNet(width=4), _data(), _data(), FinetuneSettings(epochs=2, lr=0.05))
    assert [h["epoch"] for h in hist] == [1, 2] and all(math.isfinite(h["loss"]) for h in hist)


def test_grow_stage_training_stops_on_nan_and_restores_student_and_attention(digits_task):
    torch.manual_seed(0)
    teacher = TinyConvNet(width=8).eval()
    partition = partition_teacher(teacher, X32)
    cfg = GrowConfig()
    student = build_initial(partition, 10, cfg, seed=0)
    attn = AttentionBank("dot")
    attn.sync(student.structure, partition)
    s0, a0 = _snapshot(student), _snapshot(attn)
    sub = DataLoader(Subset(digits_task.train.dataset, range(128)), batch_size=32)
    ends: list[tuple] = []
    with pytest.raises(TrainingDivergedError) as exc:
        train_stage(student, attn, FeatureExtractor(partition), _PoisonedLoader(sub, 1, 0), cfg, epochs=2, lr=0.01,
                    seed=0, max_steps=2, phase="grow stage (iteration 3)",
                    on_epoch=lambda e, loss: ends.append((e, _snapshot(student), _snapshot(attn))))
    err = exc.value
    assert (err.phase, err.epoch, err.step) == ("grow stage (iteration 3)", 2, 0) and [e[0] for e in ends] == [1]
    assert "after epoch 1" in str(err)
    assert _same(_snapshot(student), ends[0][1]) and _same(_snapshot(attn), ends[0][2])
    assert not _same(_snapshot(student), s0)  # epoch 1 trained ...
    with pytest.raises(TrainingDivergedError, match="started the stage with"):
        student2 = build_initial(partition, 10, cfg, seed=0)
        attn2 = AttentionBank("dot")
        attn2.sync(student2.structure, partition)
        train_stage(student2, attn2, FeatureExtractor(partition), _PoisonedLoader(sub, 0, 1), cfg, epochs=1,
                    lr=0.01, seed=0, max_steps=2)
    assert _same(_snapshot(student2), s0) and _same(_snapshot(attn2), a0)  # ... epoch 1 of this one did not finish


def test_grad_clip_bounds_every_step():
    """FinetuneSettings.grad_clip clips the global gradient norm before each SGD step: with a
    clip of 1e-9 and no weight decay, 3 Nesterov steps (momentum 0.9) move the weights by at
    most 3 * lr * 1e-9 * (1 + 0.9 / (1 - 0.9)) = 1.5e-8 in global norm."""
    torch.manual_seed(0)
    free, clipped = TinyConvNet(width=4), TinyConvNet(width=4)
    clipped.load_state_dict(free.state_dict())
    start = _snapshot(free)
    base = dict(epochs=1, lr=0.5, momentum=0.9, weight_decay=0.0, keep_best=False, max_steps_per_epoch=3)
    finetune(free, _data(), None, FinetuneSettings(**base))
    clip = 1e-9
    finetune(clipped, _data(), None, FinetuneSettings(**base, grad_clip=clip))
    params = [k for k, _ in clipped.named_parameters()]
    moved_free = max(float((free.state_dict()[k] - start[k]).norm()) for k in params)
    moved_clipped = sum(float((clipped.state_dict()[k] - start[k]).norm()) ** 2 for k in params) ** 0.5
    # a Nesterov step is lr * (g + mu * buf) with |buf| <= clip / (1 - mu) and |g| <= clip
    steps, lr, mu = base["max_steps_per_epoch"], base["lr"], base["momentum"]
    bound = steps * lr * clip * (1 + mu / (1 - mu))
    assert moved_free > 1e-3
    assert moved_clipped <= bound * (1 + 1e-4)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True, "5"])
def test_grow_grad_clip_must_be_positive_or_none(bad):
    assert GrowConfig(stage={"grad_clip": None}).stage.grad_clip is None
    assert GrowConfig().stage.grad_clip == GrowConfig().final.grad_clip == 5.0
    for block in ("stage", "final"):
        with pytest.raises(CompressError, match="grad_clip"):
            GrowConfig(**{block: {"grad_clip": bad}})


def test_spawn_without_a_main_guard_is_a_config_error(monkeypatch):
    """Fabric's spawn launcher refuses a script without ``if __name__ == "__main__":`` with a bare
    RuntimeError; slimforge turns it into a ConfigError that says what to change."""
    import lightning_fabric

    from compress.errors import ConfigError
    from compress.training import Runtime, RuntimeOptions
    from compress.training.parallel import spawn

    def launch(self, *args, **kwargs):
        raise RuntimeError('Launching multiple processes with the \'spawn\' start method requires that your script '
                           'guards the main function with an `if __name__ == "__main__"` clause.')

    monkeypatch.setattr(lightning_fabric.Fabric, "launch", launch)
    with pytest.raises(ConfigError, match="__main__.*devices=1"):
        spawn(Runtime(RuntimeOptions(device="cpu", devices=2)), print)


def test_channels_last_auto_leaves_the_cpu_layout_alone():
    """"auto" is on for CUDA only: on the CPU the measured effect went both ways between machines
    (compress/training/runtime.py); "on"/"off" force it."""
    from compress.training import Runtime, RuntimeOptions

    assert Runtime(RuntimeOptions(device="cpu")).channels_last is False
    assert Runtime(RuntimeOptions(device="cpu", channels_last="on")).channels_last is True
    assert Runtime(RuntimeOptions(device="cpu", channels_last="off")).channels_last is False
