"""The bad-input matrix: every case raises one of our error types with a message that says what to
do, leaves the output directory clean, and leaves the user's model unchanged."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compress.api import compress
from compress.budgets import BudgetError
from compress.data import load_npz_task
from compress.errors import (
    BudgetAlreadyMetError,
    BudgetUnreachableError,
    CheckpointError,
    ConfigError,
    DataError,
    ModelSpecError,
    StrategyError,
    TimeLimitError,
    TrainingDivergedError,
    UnsupportedModelError,
)
from compress.exporters import ExportError, OnnxValidationError, export_onnx, validate_onnx
from compress.models import load_model
from compress.profiling import TargetError
from compress.serialization import load_student
from compress.evolution.metrics import MetricError
from compress.testing import HiddenStateNet, NoClassifierNet, TinyConvNet

FAST = {"epochs": 0, "bisection_steps": 2, "calib_samples": 32}
# lr=1e8 blows the fine-tune up within its first steps (after the pruned network is checkpointed)
DIVERGE = {**FAST, "epochs": 1, "lr": 1e8, "max_steps_per_epoch": 3, "channel_rounding": "off"}


class _SVDNet(TinyConvNet):
    """Uses an op (SVD) that the ONNX exporter cannot translate."""

    def forward(self, x):
        s = torch.linalg.svdvals(x.mean(1))  # (B, W)
        return super().forward(x) + s[:, :1] * 0


class _SlowNet(TinyConvNet):
    """forward() takes 0.5 s per call (``grad_only``: only with autograd on, as when Torch-Pruning
    traces it; fvcore and the input checks run under no_grad): a stand-in for a model whose trace
    does not finish."""

    def __init__(self, grad_only: bool = False) -> None:
        super().__init__()
        self.grad_only = grad_only

    def forward(self, x):
        if torch.is_grad_enabled() or not self.grad_only:
            time.sleep(0.5)
        return super().forward(x)


def _loaders(x, y, n=64):
    ds = TensorDataset(x[:n], y[:n])
    return {"train": DataLoader(ds, batch_size=16), "val": DataLoader(ds, batch_size=16)}


def _cases(task, tmp):
    x, y = next(iter(task.train))
    xs = torch.cat([b[0] for b in task.train])[:64]
    ys = torch.cat([b[1] for b in task.train])[:64]
    return {
        "no classifier": (NoClassifierNet(), dict(data=task), UnsupportedModelError, "(batch, 10)"),
        "wrong outputs": (TinyConvNet(num_classes=5), dict(data=task), UnsupportedModelError, "num_classes"),
        "not a module": ("resnet18", dict(data=task), UnsupportedModelError, "torch.nn.Module"),
        # the group feeding the hidden state is kept whole (issue 19); the budget is out of reach without it
        "unprunable op": (HiddenStateNet(), dict(data=task, config=FAST, budget="macs=0.05x"), UnsupportedModelError,
                          "'features.3'"),
        "unexportable op": (_SVDNet(), dict(data=task, config=FAST), ExportError, "svd"),
        "wrong input shape": (TinyConvNet(), dict(data=_loaders(xs[:, :1], ys)), UnsupportedModelError, "channels"),
        "wrong dtype": (TinyConvNet(), dict(data=_loaders((xs * 50).to(torch.uint8), ys)), DataError, "float"),
        "label range": (TinyConvNet(), dict(data=_loaders(xs, ys + 10)), UnsupportedModelError, "num_classes"),
        "negative labels": (TinyConvNet(), dict(data=_loaders(xs, ys - 20)), DataError, "relabel"),
        "empty dataset": (TinyConvNet(), dict(data=_loaders(xs[:0], ys[:0])), DataError, "no"),
        "unknown strategy": (TinyConvNet(), dict(data=task, strategy="gp-prunning"), StrategyError, "gp-prune"),
        "unknown target": (TinyConvNet(), dict(data=task, target="cpu-1"), TargetError, "cpu-1t"),
        "config out of range": (TinyConvNet(), dict(data=task, config={"max_ratio": 1.5}), ConfigError, "(0, 1)"),
        "unknown config field": (TinyConvNet(), dict(data=task, config={"epoch": 3}), ConfigError, "epochs"),
        "unknown metric": (TinyConvNet(), dict(data=task, config={**FAST, "metric": "xi_stra"}), MetricError, "xi_star"),
        "bad budget": (TinyConvNet(), dict(data=task, budget="macs=half"), BudgetError, "key=value"),
        "unwritable out_dir": (TinyConvNet(), dict(data=task, out_dir=tmp / "a_file" / "out"), ConfigError, "out_dir"),
        "training diverges": (TinyConvNet(), dict(data=task, config=DIVERGE), TrainingDivergedError, "learning rate"),
        "corrupt checkpoint": (TinyConvNet(), dict(data=task, config=DIVERGE), CheckpointError, "resume=False"),
        "corrupt run manifest": (TinyConvNet(), dict(data=task, config=FAST), CheckpointError, "resume=False"),
        "budget already met": (TinyConvNet(), dict(data=task, budget="macs=2x"), BudgetAlreadyMetError,
                               "already meets"),
        "impossible budget": (TinyConvNet(), dict(data=task, budget="params=10", config=FAST),
                              BudgetUnreachableError, "max_ratio"),
        "impossible budget (grow)": (TinyConvNet(), dict(data=task, budget="params=10", strategy="grow"),
                                     BudgetUnreachableError, "width_mult"),
        "slow trace": (_SlowNet(), dict(data=task, trace_time_limit_s=0.2), TimeLimitError, "trace_time_limit_s"),
        "slow dependency graph": (_SlowNet(grad_only=True), dict(data=task, trace_time_limit_s=0.2, mobile=False,
                                  memory=False, config={**FAST, "channel_rounding": "off"}), TimeLimitError,
                                  "dependency graph"),
    }


def _truncated_checkpoint_of_this_run(model, kwargs, out):
    """A real run of the same settings leaves its manifest and the gp-prune 'pruned' checkpoint (its
    fine-tune diverges); then the checkpoint's tensor file is cut in half, as a full disk would."""
    with pytest.raises(TrainingDivergedError):
        compress(model, "macs=0.5x", out_dir=out, progress=False, latency_repeats=2, latency_warmup=1, **kwargs)
    (pt,) = (out / "checkpoints" / "gp-prune").glob("pruned.*.pt")
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])


def _truncated_manifest(model, kwargs, out):
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "run.json").write_text('{"format": "slimforge-run/1", "identity": {"strat')


# Cases that find files in the output directory (written by the setup before the call), and cases
# allowed to leave some there: "as found" -- the user's files, byte for byte; "checkpoints" -- only
# complete checkpoints of boundaries committed before the failure (issue 8: "keep the last good
# checkpoint"), no report, no artifact, no temp file.
SETUP = {"corrupt checkpoint": _truncated_checkpoint_of_this_run, "corrupt run manifest": _truncated_manifest}
LEAVES = {"training diverges": "checkpoints", "corrupt checkpoint": "as found", "corrupt run manifest": "as found"}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_complete_checkpoints(out):
    files = _files(out)
    assert files, "the checkpoints of the completed boundaries were removed"
    assert all(name.startswith("checkpoints/") for name in files), f"not only checkpoints left: {sorted(files)}"
    for name in files:
        path = out / name
        assert path.suffix in (".json", ".pt"), f"half-written file left: {name}"
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            torch.load(path, weights_only=True)


CASE_NAMES = [
    "no classifier", "wrong outputs", "not a module", "unprunable op", "unexportable op", "wrong input shape",
    "wrong dtype", "label range", "negative labels", "empty dataset", "unknown strategy", "unknown target",
    "config out of range", "unknown config field", "unknown metric", "bad budget", "unwritable out_dir",
    "training diverges", "corrupt checkpoint", "corrupt run manifest", "slow trace", "slow dependency graph",
    "budget already met", "impossible budget", "impossible budget (grow)",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input(case, digits_task, tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    model, kwargs, err, needle = _cases(digits_task, tmp_path)[case]
    budget = kwargs.pop("budget", "macs=0.5x")
    out = kwargs.pop("out_dir", tmp_path / "out")
    before = {k: v.clone() for k, v in model.state_dict().items()} if isinstance(model, nn.Module) else None
    if case in SETUP:
        SETUP[case](model, kwargs, out)
    found = _files(out) if out.is_dir() else {}
    with pytest.raises(err) as exc:
        compress(model, budget, out_dir=out, progress=False, latency_repeats=2, latency_warmup=1, **kwargs)
    assert needle.lower() in str(exc.value).lower(), str(exc.value)
    leaves = LEAVES.get(case)
    if leaves == "as found":
        assert found and _files(out) == found, "the files found in the output directory were changed"
    elif leaves == "checkpoints":
        assert str(out / "checkpoints") in str(exc.value), "the message does not say where the checkpoints are"
        _assert_complete_checkpoints(out)
    else:
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "output dir not clean"
    if before is not None:
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), "the user's model changed"


def test_case_list_is_complete(digits_task, tmp_path):
    assert set(CASE_NAMES) == set(_cases(digits_task, tmp_path))
    assert len(CASE_NAMES) >= 15


def test_parity_failure_collects_every_mismatch(tmp_path):
    torch.manual_seed(0)
    m = TinyConvNet().eval()
    path = export_onnx(m, m.example_inputs(), tmp_path / "m.onnx")
    other = TinyConvNet().eval()  # different weights
    with pytest.raises(OnnxValidationError) as exc:
        validate_onnx(other, path, m.example_inputs(16), batch_sizes=(1, 8))
    rep = exc.value.report
    assert not rep.ok and len(rep.mismatches) >= 2 and set(rep.per_batch) == {1, 8}


def test_corrupt_checkpoints_and_weights(tmp_path):
    (tmp_path / "student.arch.json").write_text('{"format": "slimforge-student/1", "base_spec": "cifar:resnet20", '
                                                '"surgery": [], "modules": {}}')
    (tmp_path / "student.safetensors").write_bytes(b"\x00\x01truncated")
    with pytest.raises(ModelSpecError, match="corrupt|truncated"):
        load_student(tmp_path)
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelSpecError, match="state_dict|weights|load"):
        load_model("cifar:resnet20", weights=bad)


def test_bad_npz_is_a_data_error(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="'x'"):
        load_npz_task(tmp_path / "d.npz")


def test_a_budget_the_model_meets_is_refused_only_by_strategies_that_shrink_it(caplog):
    import logging

    from compress.budgets import Budget, measure_cost
    from compress.inputs import check_budget_not_met as _check_budget_not_met
    from compress.registry import get_strategy, list_strategies

    cost = measure_cost(TinyConvNet(), torch.randn(1, 3, 8, 8))
    assert {s for s in list_strategies() if get_strategy(s).shrinks_teacher} == {"gp-prune"}
    met = Budget.parse("macs=2x,params=1x").resolve(cost)  # params=1x: equal counts as met
    with pytest.raises(BudgetAlreadyMetError, match=f"params {cost.params:,} <= {cost.params:,}"):
        _check_budget_not_met(get_strategy("gp-prune"), met, cost)
    with caplog.at_level(logging.INFO, logger="compress.inputs"):
        for name in ("grow", "eg-nas", "darts-gal"):  # they build a new network: the budget still bounds it
            _check_budget_not_met(get_strategy(name), met, cost)
        _check_budget_not_met(get_strategy("gp-prune"), Budget.parse("macs=0.99x").resolve(cost), cost)
    logged = [r.getMessage() for r in caplog.records if "already meets" in r.getMessage()]
    assert len(logged) == 3 and all("builds a new network" in m for m in logged)
    lat = Budget.parse("latency=1.5x").resolve(cost, teacher_latency_ms=2.0)
    with pytest.raises(BudgetAlreadyMetError, match="latency 2.000 ms <= 3.000 ms"):
        _check_budget_not_met(get_strategy("gp-prune"), lat, cost, latency_ms=2.0)
    _check_budget_not_met(get_strategy("gp-prune"), lat, cost, latency_ms=3.5)  # slower than the limit: no error


def test_compress_takes_its_options_as_one_object_or_as_keywords(digits_task, tmp_path):
    import dataclasses
    import typing

    from compress import CompressOptions
    from compress.options import RUNTIME_KEYWORDS, CompressKeywords

    # every option is also a typed keyword (and the runtime shorthands), nothing else
    assert set(typing.get_type_hints(CompressKeywords)) == (
        {f.name for f in dataclasses.fields(CompressOptions)} | set(RUNTIME_KEYWORDS))
    cfg = {"epochs": 0, "bisection_steps": 3, "calib_samples": 64}
    opts = CompressOptions(progress=False, mobile=False, memory=False, latency_repeats=3, latency_warmup=1,
                           allow_slower=True)
    a = compress(TinyConvNet(num_classes=10).eval(), "macs=0.5x", data=digits_task, config=cfg, options=opts)
    b = compress(TinyConvNet(num_classes=10).eval(), "macs=0.5x", data=digits_task, config=cfg,
                 progress=False, mobile=False, memory=False, latency_repeats=3, latency_warmup=1, allow_slower=True)
    assert a.student_report.cost == b.student_report.cost and a.teacher.latency.repeats == 3
    # a keyword overrides the same field of options; a dict works as options
    c = compress(TinyConvNet(num_classes=10).eval(), "macs=0.5x", data=digits_task, config=cfg,
                 options=dataclasses.asdict(opts), latency_repeats=4, out_dir=tmp_path / "c")
    assert c.teacher.latency.repeats == 4
    with pytest.raises(ConfigError, match="'mobil' \\(did you mean 'mobile'\\?\\)"):
        compress(TinyConvNet(num_classes=10).eval(), "macs=0.5x", data=digits_task, options=opts, mobil=False)
    with pytest.raises(ConfigError, match="options must be a CompressOptions"):
        compress(TinyConvNet(num_classes=10).eval(), "macs=0.5x", data=digits_task, options=3)
