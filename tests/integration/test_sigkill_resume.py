"""Fault injection: SIGKILL a run at a random checkpoint boundary, resume it, and get the
uninterrupted run's student and history bit for bit (issue 8, "what it must show" 1).

For each strategy: an uninterrupted reference run (in this process) lists the boundaries its
checkpoints commit; a seeded random choice picks one; the same run in a subprocess
(``sigkill_worker.py``) stops right after that boundary's commit and is killed with SIGKILL;
resuming in this process must commit exactly the remaining boundaries and give the reference's
student state_dict (``torch.equal``) and run history. These runs drive the strategy directly
(seconds each); ``slimforge run`` -> SIGKILL -> ``slimforge resume`` repeats the check through
``compress()`` and compares the written reports and student files.

Wall-clock and latency fields (``wall*``, ``*latency*``) differ between any two runs and are left
out of the comparisons; so are the ``resumed*`` facts that say what was restored.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from sigkill_worker import CASES, on_commit, run_case, run_compress  # noqa: E402

from compress.cli import app  # noqa: E402
from compress.errors import CheckpointError  # noqa: E402

WORKER = HERE / "sigkill_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
VOLATILE = ("wall", "latency", "resumed")  # keys whose values are timings or resume facts


@contextlib.contextmanager
def _one_thread():
    """The subprocess runs with OMP_NUM_THREADS=1; in-process runs use one thread too, so float
    reductions happen in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stable(obj):
    """JSON view of ``obj`` without timing / latency / resume-bookkeeping keys (recursively)."""
    obj = json.loads(json.dumps(obj, default=str))

    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if not any(w in str(k) for w in VOLATILE)}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o

    return strip(obj)


def _wait_and_kill(proc: subprocess.Popen, marker: Path, what: str, timeout: float = 120.0) -> str:
    """Wait until ``proc`` has written ``marker`` (it then sleeps at the boundary), SIGKILL it;
    returns the label of the last committed boundary."""
    deadline = time.monotonic() + timeout
    try:
        while not marker.is_file():
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-3000:] if proc.stderr else ""
                pytest.fail(f"{what} exited with {proc.returncode} before its boundary: {err}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not reach its boundary within {timeout} s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return json.loads(marker.read_text())["label"]


def test_every_strategy_has_a_sigkill_case():
    from compress import list_strategies

    assert set(list_strategies()) == set(CASES), "add a tiny config to CASES in tests/integration/sigkill_worker.py"


@pytest.mark.parametrize("strategy", sorted(CASES))
def test_sigkill_at_a_random_boundary_then_resume_is_bit_identical(strategy, tmp_path):
    t0 = time.perf_counter()
    boundaries: list[str] = []
    with _one_thread(), on_commit(boundaries.append):
        ref, ref_ctx = run_case(strategy, tmp_path / "ref")
    assert len(boundaries) >= 4 and len(set(boundaries)) == len(boundaries), boundaries

    k = random.Random(f"sigkill:{strategy}").randrange(len(boundaries))  # seeded choice of the boundary
    marker, run_dir = tmp_path / "marker.json", tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(WORKER), strategy, str(run_dir), "--pause-after", str(k + 1),
                             "--marker", str(marker)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    label = _wait_and_kill(proc, marker, f"{strategy} worker")
    assert label == boundaries[k]

    redone: list[str] = []
    with _one_thread(), on_commit(redone.append):
        res, res_ctx = run_case(strategy, run_dir)
    assert redone == boundaries[k + 1:]  # continued after the boundary; nothing before it was redone

    a, b = ref.student.state_dict(), res.student.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), f"student tensor {name} differs"
    assert len(ref_ctx.history) > 0 and _stable(ref_ctx.history) == _stable(res_ctx.history)
    assert _stable(ref.info) == _stable(res.info) and ref.arch == res.arch
    print(f"{strategy}: killed after {label} ({k + 1}/{len(boundaries)}), {time.perf_counter() - t0:.1f} s")


def test_corrupt_or_truncated_checkpoints_raise_a_typed_error(tmp_path):
    with _one_thread():
        run_case("gp-prune", tmp_path)
    ck = tmp_path / "checkpoints" / "gp-prune"
    pt = next(ck.glob("finetune.*.pt"))
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="finetune.3.pt is corrupt or truncated.*delete the folder.*resume=False"):
        run_case("gp-prune", tmp_path)
    js = ck / "pruned.json"
    js.write_text(js.read_text()[:100])
    with pytest.raises(CheckpointError, match="pruned.json is corrupt or truncated"):
        run_case("gp-prune", tmp_path)


def test_slimforge_run_killed_then_slimforge_resume_writes_the_same_report(tmp_path):
    cfg = json.dumps(CASES["gp-prune"])
    args = ["run", "--model", "compress.testing:TinyConvNet", "--data", "digits", "--budget", "macs=0.5x",
            "--config", cfg, "--allow-slower"]  # exit 0 must not hang on the wall-clock race with the teacher
    runner = CliRunner()
    with _one_thread():
        ref = runner.invoke(app, [*args, "--out", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output

    # the same command in a subprocess, SIGKILLed after its 2nd boundary (the first fine-tune epoch)
    code = ("import json, sys, time, torch\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "from sigkill_worker import on_commit\n"
            "from compress.cli import app\n"
            "from compress.exporters.atomic import write_text_atomic\n"
            "torch.set_num_threads(1)\n"
            "seen = []\n"
            "def pause(label):\n"
            "    seen.append(label)\n"
            "    if len(seen) == 2:\n"
            "        write_text_atomic(sys.argv[2], json.dumps({'label': label}))\n"
            "        time.sleep(600)\n"
            "with on_commit(pause):\n"
            "    app(sys.argv[3:], standalone_mode=False)\n")
    run_dir, marker = tmp_path / "run", tmp_path / "marker.json"
    proc = subprocess.Popen([sys.executable, "-c", code, str(HERE), str(marker), *args, "--out", str(run_dir)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert _wait_and_kill(proc, marker, "slimforge run") == "gp-prune/finetune.1"
    assert json.loads((run_dir / "run_args.json").read_text())["command"] == "run"
    assert not (run_dir / "report.json").exists()

    with _one_thread():
        res = runner.invoke(app, ["resume", str(run_dir)])
    assert res.exit_code == 0, res.output
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (tmp_path / "ref", run_dir))
    for key in ("history", "config", "info", "model_spec", "budget", "seed", "strategy"):
        assert _stable(ra[key]) == _stable(rb[key]), f"report.json[{key!r}] differs"
    for who in ("teacher", "student"):
        assert [ra[who][k] for k in ("macs", "params", "accuracy")] == [rb[who][k] for k in ("macs", "params", "accuracy")]
    assert (tmp_path / "ref" / "student.safetensors").read_bytes() == (run_dir / "student.safetensors").read_bytes()

    # another invocation into the same directory is refused, naming what differs (exit 2)
    other = runner.invoke(app, ["run", "--model", "compress.testing:TinyConvNet", "--data", "digits", "--budget",
                                "macs=0.4x", "--config", cfg, "--out", str(run_dir)])
    assert other.exit_code == 2 and "CheckpointError" in other.output and "macs=0.4x" in other.output
    assert runner.invoke(app, ["resume", str(tmp_path / "nowhere")]).exit_code == 2
    # compress() itself refuses checkpoints of another config, and resume=False starts over
    with pytest.raises(CheckpointError, match=r"config\.finetune\.epochs: 3 -> 2.*resume=False"):
        run_compress("gp-prune", run_dir, {**CASES["gp-prune"], "epochs": 2})
    assert (run_dir / "checkpoints" / "gp-prune" / "finetune.json").is_file()
