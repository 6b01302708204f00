"""The training runtime (compress.training) end to end: every strategy trains through it, bf16 on
the CPU, 2-process DDP over gloo, the options' errors, and the one-loop rule."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from compress.api import compress
from compress.errors import CheckpointError, ConfigError
from compress.testing import TinyConvNet
from compress.training import (CheckpointStore, EpochCheckpoint, FinetuneSettings, FitPlan, Runtime, RuntimeOptions,
                               evaluate, finetune, fit)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained_teacher(digits_task):
    """A TinyConvNet that has learned digits (test accuracy >= 90%)."""
    torch.manual_seed(0)
    net = TinyConvNet(width=32)
    finetune(net, digits_task.train, digits_task.val, FinetuneSettings(epochs=8, lr=0.1, kd_alpha=0.0))
    acc = evaluate(net, digits_task.test)
    assert acc >= 0.9, acc
    return net.eval()


def test_no_backward_outside_the_runtime():
    """Every training step ends in Runtime.optimize: `.backward(` appears in at most two files,
    the runtime and (if it needs its own) the DARTS second-order step."""
    out = subprocess.run(["grep", "-rl", "--include=*.py", r"\.backward(", str(ROOT / "compress")],
                         capture_output=True, text=True).stdout.split()
    files = sorted(str(Path(f).relative_to(ROOT)) for f in out)
    allowed = {"compress/training/runtime.py", "compress/strategies/darts/architect.py"}
    assert "compress/training/runtime.py" in files
    assert set(files) <= allowed and len(files) <= 2, files


class _RecordingRuntime(Runtime):
    """The CPU fp32 runtime, counting the optimisation steps and batches it handles."""

    steps = 0
    batches = 0

    def optimize(self, loss, optimizer, **kw):  # noqa: D102
        type(self).steps += 1
        return super().optimize(loss, optimizer, **kw)

    def to_device(self, batch):  # noqa: D102
        type(self).batches += 1
        return super().to_device(batch)


@pytest.mark.parametrize("strategy", ["gp-prune", "grow", "darts-gal", "eg-nas"])
def test_every_strategy_trains_through_the_runtime(strategy, digits_task, monkeypatch):
    from tests.integration.test_pipeline import CONTRACT_CONFIGS

    monkeypatch.setattr("compress.api.Runtime", _RecordingRuntime)
    _RecordingRuntime.steps = _RecordingRuntime.batches = 0
    res = compress(TinyConvNet(), "macs=0.5x", data=digits_task, strategy=strategy,
                   config=CONTRACT_CONFIGS[strategy], progress=False, mobile=False, memory=False,
                   latency_repeats=5, device="cpu")
    assert _RecordingRuntime.steps > 0 and _RecordingRuntime.batches >= _RecordingRuntime.steps
    assert res.to_dict()["runtime"]["device"] == "cpu"


def test_bf16_end_to_end_on_cpu(trained_teacher, digits_task):
    """precision='bf16' for gp-prune on a tiny trained teacher: budget met, ONNX parity (the
    export runs on a float32 CPU copy), accuracy reported, the runtime block in the report."""
    res = compress(trained_teacher, "macs=0.5x", data=digits_task, strategy="gp-prune",
                   config={"epochs": 2, "bisection_steps": 5, "calib_samples": 64}, progress=False, mobile=False,
                   memory=False, latency_repeats=5, device="cpu", precision="bf16",
                   allow_slower=True)  # the MACs budget, not wall-clock speed
    rep = res.to_dict()
    assert rep["budget"]["ok"] and res.validation.ok
    assert rep["runtime"]["precision"] == "bf16" and rep["runtime"]["world_size"] == 1
    assert rep["runtime"]["torch"] == torch.__version__
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in res.student.parameters())
    acc = rep["student"]["accuracy"]["test"]
    assert acc is not None and acc > 0.5, acc  # learned, not chance (10%)


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def test_ddp_two_processes_on_cpu(trained_teacher, digits_task, tmp_path):
    """A 2-process gloo DDP fine-tune of gp-prune's student: identical weights on both ranks after
    every epoch, only rank 0 writes (same files as the 1-process run, no temp folders left), and
    the student's accuracy within 2 points of the 1-process run with the same global batch."""
    cfg = {"epochs": 3, "bisection_steps": 5, "calib_samples": 64, "lr": 0.02}
    before = set(Path(tempfile.gettempdir()).glob("slimforge-ddp-*"))
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"ddp{n}"
        runs[n] = compress(trained_teacher, "macs=0.5x", data=digits_task, strategy="gp-prune", config=cfg,
                           progress=False, mobile=False, memory=False, latency_repeats=5, device="cpu", devices=n,
                           out_dir=out, seed=0)
    ft = [h for h in runs[2].history if h.get("phase") == "finetune"]
    assert len(ft) == 3 and all(h["ranks_agree"] is True for h in ft), ft
    assert runs[2].to_dict()["runtime"]["devices"] == 2
    assert _files(tmp_path / "ddp1") == _files(tmp_path / "ddp2")
    assert set(Path(tempfile.gettempdir()).glob("slimforge-ddp-*")) == before
    a1 = runs[1].to_dict()["student"]["accuracy"]["test"]
    a2 = runs[2].to_dict()["student"]["accuracy"]["test"]
    assert a1 > 0.8 and abs(a1 - a2) <= 0.02, (a1, a2)
    # a different world size is refused on resume, and the message says what differs
    with pytest.raises(CheckpointError, match=r"world size 2.*world size 1|devices=2"):
        compress(trained_teacher, "macs=0.5x", data=digits_task, strategy="gp-prune", config=cfg, progress=False,
                 mobile=False, memory=False, latency_repeats=5, device="cpu", devices=1, out_dir=tmp_path / "ddp2",
                 seed=0)


class _OtherRank(Runtime):
    """A CPU runtime that believes it is rank 1 of a job (its collectives are no-ops)."""

    @property
    def global_rank(self) -> int:
        return 1


def test_only_rank_zero_writes_checkpoints(digits_task, tmp_path):
    net = TinyConvNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    plan = FitPlan(modules=[net], optimizer=opt, epochs=2, steps_per_epoch=2,
                   step=lambda b: torch.nn.functional.cross_entropy(net(b[0]), b[1]))
    store = CheckpointStore(tmp_path / "ck")
    fit(plan, digits_task.train, runtime=_OtherRank(), checkpoint=EpochCheckpoint(store, "t", "k"))
    assert not (tmp_path / "ck").exists()
    fit(plan, digits_task.train, runtime=Runtime(), checkpoint=EpochCheckpoint(store, "t", "k"))
    assert (tmp_path / "ck" / "t.json").is_file()


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "tpu"}, "unknown device"),
    ({"device": 3}, "must be a string"),
    ({"precision": "fp8"}, "precision must be one of"),
    ({"precision": "fp16", "device": "cpu"}, "needs a CUDA device"),
    ({"devices": 0}, "positive integer"),
    ({"devices": True}, "positive integer"),
    ({"num_workers": -1}, "num_workers"),
    ({"channels_last": "yes"}, "channels_last"),
    ({"pin_memory": "no"}, "pin_memory"),
])
def test_runtime_options_are_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RuntimeOptions(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_says_what_to_do():
    with pytest.raises(ConfigError, match="use device='cpu' or 'auto'"):
        RuntimeOptions(device="cuda")


def test_cli_device_errors_exit_2_without_traceback(tmp_path):
    r = subprocess.run([str(ROOT / ".venv/bin/slimforge") if (ROOT / ".venv/bin/slimforge").exists() else "slimforge",
                        "run", "--model", "compress.testing:TinyConvNet", "--data", "digits", "--budget", "macs=0.5x",
                        "--out", str(tmp_path / "o"), "--precision", "fp16", "--device", "cpu"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr
    assert re.search("needs a CUDA device", " ".join((r.stdout + r.stderr).split()))  # rich wraps lines
    assert not (tmp_path / "o").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_finetune_and_compress(trained_teacher, digits_task, precision):
    """On a CUDA device: the fine-tune trains there (weights come back to the CPU) and the
    compress() pipeline meets the budget with ONNX parity."""
    res = compress(trained_teacher, "macs=0.5x", data=digits_task, strategy="gp-prune",
                   config={"epochs": 2, "bisection_steps": 5, "calib_samples": 64}, progress=False, mobile=False,
                   memory=False, latency_repeats=5, device="cuda", precision=precision,
                   allow_slower=True)  # the MACs budget, not wall-clock speed
    rep = res.to_dict()
    assert rep["runtime"]["device"].startswith("cuda") and rep["runtime"]["precision"] == precision
    assert rep["budget"]["ok"] and res.validation.ok
    assert rep["student"]["accuracy"]["test"] > 0.5
    print(json.dumps({"gpu_check": precision, "acc": rep["student"]["accuracy"]["test"],
                      "device": rep["runtime"]["device_name"]}))
