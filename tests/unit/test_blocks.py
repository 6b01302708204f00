"""Depth pruning (compress.models.blocks): which blocks are removable, their scores, the choice,
and a saved student that lacks blocks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compress.errors import ModelSpecError
from compress.models import cifar_resnet
from compress.models.blocks import (
    DroppedBlock,
    block_scores,
    choose_blocks,
    drop_blocks,
    dropped_block_names,
    removable_blocks,
    stage_sizes,
)
from compress.serialization import load_student, save_student


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    m = cifar_resnet(20).eval()
    for mod in m.modules():  # non-trivial BN statistics, so that blocks differ
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m


def test_removable_blocks_are_the_identity_shortcut_blocks_of_a_cifar_resnet():
    m = _resnet20()
    names = removable_blocks(m)
    # 3 stages x 3 blocks; the first block of stages 2 and 3 downsamples (option-A shortcut)
    assert names == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


@pytest.mark.parametrize("spec", ["torchvision", "timm"])
def test_removable_blocks_of_torchvision_and_timm_resnet18(spec):
    if spec == "torchvision":
        from torchvision.models import resnet18

        m = resnet18(num_classes=10)
    else:
        import timm

        m = timm.create_model("resnet18", pretrained=False, num_classes=10)
    assert removable_blocks(m) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    small = drop_blocks(m.eval(), ["layer1.1", "layer3.1"])
    assert small(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert dropped_block_names(small) == ["layer1.1", "layer3.1"]


def test_a_block_with_a_zero_branch_equals_its_removal():
    """y = relu(F(x) + x) with F = 0 and x >= 0 (the previous ReLU's output) is x: the network
    with that block dropped computes the same function."""
    m = _resnet20()
    blk = m.layer2[1]
    nn.init.zeros_(blk.bn2.weight)
    nn.init.zeros_(blk.bn2.bias)
    blk.bn2.running_mean.zero_()
    x = torch.randn(4, 3, 32, 32)
    dropped = drop_blocks(m, ["layer2.1"])
    assert isinstance(dropped.layer2[1], DroppedBlock)
    torch.testing.assert_close(dropped(x), m(x), rtol=0, atol=1e-6)
    assert not torch.allclose(drop_blocks(m, ["layer2.2"])(x), m(x), atol=1e-4)  # an ordinary block matters


def test_block_scores_rank_a_zero_branch_block_lowest():
    m = _resnet20()
    blk = m.layer3[2]
    nn.init.zeros_(blk.bn2.weight)
    nn.init.zeros_(blk.bn2.bias)
    blk.bn2.running_mean.zero_()
    names = removable_blocks(m)
    scores = block_scores(m, names, torch.randn(8, 3, 32, 32), batch_size=3)
    assert scores["layer3.2"] == pytest.approx(0.0, abs=1e-6)
    assert all(scores[n] > 1e-3 for n in names if n != "layer3.2")
    assert choose_blocks(scores, 0.2, stage_sizes(m, names)) == ["layer3.2"]  # floor(0.2 * 7) = 1


def test_choose_blocks_keeps_a_block_in_every_stage():
    scores = {"s1.0": 0.1, "s1.1": 0.2, "s2.1": 0.3, "s2.2": 0.05}
    sizes = {"s1": 2, "s2": 3}
    chosen = choose_blocks(scores, 0.99, sizes)  # floor(0.99 * 4) = 3 wanted, but s1 keeps one
    assert chosen == ["s1.0", "s2.1", "s2.2"]
    assert choose_blocks(scores, 0.0, sizes) == []
    with pytest.raises(ValueError):
        choose_blocks(scores, 1.0, sizes)


def test_drop_blocks_refuses_a_downsampling_block():
    with pytest.raises(ModelSpecError, match="identity shortcut"):
        drop_blocks(_resnet20(), ["layer2.0"])


def test_saved_student_without_blocks_loads_to_the_same_function(tmp_path):
    m = drop_blocks(_resnet20(), ["layer1.1", "layer3.2"])
    save_student(m, tmp_path, base_spec="cifar:resnet20", surgery=[])
    arch = json.loads((tmp_path / "student.arch.json").read_text())
    assert arch["dropped_blocks"] == ["layer1.1", "layer3.2"]
    back = load_student(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(back(x), m(x), rtol=0, atol=0)
    assert dropped_block_names(back) == ["layer1.1", "layer3.2"]


def test_student_without_dropped_blocks_writes_no_key(tmp_path):
    save_student(_resnet20(), tmp_path, base_spec="cifar:resnet20", surgery=[])
    assert "dropped_blocks" not in json.loads((tmp_path / "student.arch.json").read_text())
    load_student(tmp_path)


def test_load_student_refuses_a_dropped_name_that_is_not_a_removable_block(tmp_path):
    save_student(drop_blocks(_resnet20(), ["layer1.1"]), tmp_path, base_spec="cifar:resnet20", surgery=[])
    path = tmp_path / "student.arch.json"
    arch = json.loads(path.read_text())
    arch["dropped_blocks"] = ["layer2.0"]
    path.write_text(json.dumps(arch))
    with pytest.raises(ModelSpecError, match="identity"):
        load_student(tmp_path)
    arch["dropped_blocks"] = [""]
    path.write_text(json.dumps(arch))
    with pytest.raises(ModelSpecError):
        load_student(tmp_path)


def test_gp_prune_drop_blocks_removes_blocks_then_meets_the_budget_and_reloads(digits_task, tmp_path):
    """Config ``prune.drop_blocks``: the lowest-scoring identity-shortcut blocks go first (here
    floor(0.5 x 7) = 3 of a ResNet-20's 7), the channel pruning meets the rest of the budget, the
    report says which, and the saved student (and a resumed run) has the same blocks removed."""
    from compress import compress
    from compress.errors import ConfigError
    from compress.strategies.gp_prune.strategy import GPPruneConfig

    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="drop_blocks"):
            GPPruneConfig(prune={"drop_blocks": bad})
    config = {"finetune": {"epochs": 1, "max_steps_per_epoch": 2}, "importance": {"metric": "l1", "calib_samples": 32},
              "prune": {"bisection_steps": 3, "drop_blocks": 0.5}}
    runs = []
    for _ in range(2):  # the second run resumes from the first's checkpoints
        torch.manual_seed(0)
        teacher = cifar_resnet(20, in_chans=digits_task.spec.input_shape[0])
        runs.append(compress(teacher, "macs=0.5x", data=digits_task, progress=False, mobile=False, memory=False,
                             allow_slower=True, out_dir=tmp_path / "run", config=config))
    res = runs[0]
    depth = res.info["recipe"]["depth"]
    assert depth["removable"] == 7 and len(depth["removed"]) == 3
    assert depth["convs_after"] == depth["convs_before"] - 6
    assert sorted(depth["scores"][n] for n in depth["removed"]) == sorted(depth["scores"].values())[:3]
    assert res.budget_check.ok
    assert dropped_block_names(res.student) == depth["removed"]
    assert "Depth pruning removed 3 of 7" in (tmp_path / "run" / "report.md").read_text()
    assert runs[1].info["resumed"] == "pruned" and dropped_block_names(runs[1].student) == depth["removed"]
    x = next(iter(digits_task.val))[0][:4]
    torch.testing.assert_close(runs[1].student(x), res.student(x), rtol=0, atol=0)
    back = load_student(tmp_path / "run", num_classes=10, base_spec=None,
                        base=cifar_resnet(20, in_chans=digits_task.spec.input_shape[0]))
    torch.testing.assert_close(back(x), res.student.eval()(x), rtol=0, atol=0)
