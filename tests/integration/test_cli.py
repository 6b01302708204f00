"""The `slimforge` CLI: demo, run, measure, strategies, and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from compress.cli import app

runner = CliRunner()


def test_run_on_npz_and_measure(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30).astype(np.uint8)
    x = (rng.random((120, 16, 16, 3)) * 60 + y[:, None, None, None] * 45).astype(np.uint8)
    np.savez(tmp_path / "toy.npz", x=x, y=y)
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--model", "compress.testing:TinyConvNet", "--data", str(tmp_path / "toy.npz"),
                              "--budget", "macs=0.6x", "--out", str(out), "--allow-slower", "--config",
                              '{"epochs": 1, "bisection_steps": 3, "calib_samples": 32}'])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["model_spec"] == "compress.testing:TinyConvNet"
    assert report["student"]["macs"] <= 0.6 * report["teacher"]["macs"]

    res = runner.invoke(app, ["measure", "--model", "cifar:resnet20", "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    assert m["cost"]["params"] == 269722  # ResNet-20: 0.27M parameters (He et al. 2016, Table 6)
    assert m["latency_ms"]["onnxruntime"]["median_ms"] > 0


def test_errors_are_clean_and_exit_2(tmp_path):
    res = runner.invoke(app, ["run", "--model", "timm:resnet181", "--data", "digits", "--budget", "macs=0.5x",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert "ModelSpecError" in res.output and "resnet18" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["run", "--model", "cifar:resnet20", "--data", "digits", "--budget", "flops=0.5x",
                              "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "BudgetError" in res.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_python_m_compress_and_strategies():
    from compress import list_strategies

    out = subprocess.run([sys.executable, "-m", "compress", "strategies"], capture_output=True, text=True, check=True)
    names = [line.split("\t")[0] for line in out.stdout.splitlines()]
    assert names == list_strategies() and "gp-prune" in names


def test_bad_time_limits_exit_2_before_anything_is_written(tmp_path):
    for item, expected in [("prune=abc", "'abc' is not a positive number of seconds"),
                           ("prnue=60", "unknown phase 'prnue' (did you mean 'prune'?)"),
                           ("prune", "'prune' is not PHASE=SECONDS")]:
        out = tmp_path / item.replace("=", "_")
        res = runner.invoke(app, ["run", "--model", "compress.testing:TinyConvNet", "--data", "digits", "--budget",
                                  "macs=0.5x", "--out", str(out), "--time-limit", "finetune=none", "--time-limit", item])
        assert res.exit_code == 2, res.output
        text = " ".join(res.output.split())
        assert "ConfigError" in text and expected in text and "--time-limit" in text, text
        assert "Traceback" not in res.output and not out.exists()


def test_a_phase_past_its_time_limit_exits_2_saying_which_option_raises_it(tmp_path, monkeypatch):
    import time

    import torch_pruning

    monkeypatch.setattr(torch_pruning.pruner.MetaPruner, "step", lambda self, *a, **k: time.sleep(60))
    out = tmp_path / "run"
    t0 = time.monotonic()
    res = runner.invoke(app, ["run", "--model", "compress.testing:TinyConvNet", "--data", "digits", "--budget",
                              "macs=0.5x", "--out", str(out), "--config", '{"epochs": 0, "bisection_steps": 2}',
                              "--time-limit", "prune=2"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "TimeLimitError: phase 'prune'" in text and "--time-limit prune=SECONDS" in text, text
    assert "Traceback" not in res.output and time.monotonic() - t0 < 50
    assert not (out / "run_args.json").exists()  # no checkpoint was written: the corrected command runs in --out


def test_a_flat_config_key_is_one_warning_line_then_the_config_error(tmp_path):
    """A --config written before the nested configs: each flat key is named with its nested
    spelling in one ``slimforge: warning:`` line (no source line), before the config is checked."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        res = runner.invoke(app, ["run", "--model", "compress.testing:TinyConvNet", "--data", "digits", "--budget",
                                  "macs=0.5x", "--config", '{"epochs": 1, "lr": -1}', "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert ("slimforge: warning: GPPruneConfig: flat config keys are deprecated; nest them: epochs -> finetune.epochs; "
            "lr -> finetune.lr.") in res.output
    assert "warnings.warn(" not in res.output and "Traceback" not in res.output
    assert "`lr` = -1: a learning rate, must be > 0" in " ".join(res.output.split()) and not (tmp_path / "o").exists()
