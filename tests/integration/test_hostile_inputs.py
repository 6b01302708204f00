"""slimforge against hostile input (issue 16). Every case asserts our error type (API) or exit code 2
(CLI, no traceback), a message that says what to do, nothing half-written in the folders involved and
no stray ``slimforge-*`` temp files. Sections follow the issue's classes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from compress.cli import app
from compress.errors import CheckpointError, ModelSpecError, UntrustedCodeError
from compress.profiling import Target, TargetError
from compress.serialization import load_student, save_student
from compress.testing import TinyConvNet
from compress.training.checkpoint import CheckpointStore, open_run_dir

ROOT = Path(__file__).resolve().parents[2]
SLIMFORGE = ROOT / ".venv" / "bin" / "slimforge"
if not SLIMFORGE.exists():  # another environment: the console script next to this interpreter
    SLIMFORGE = Path(sys.executable).parent / "slimforge"
runner = CliRunner()


# ---- shared helpers


def _snapshot(*dirs: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() if p.is_file() else b"<dir>" for d in dirs if d.exists() for p in sorted(d.rglob("*"))}


def _stray(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.glob("slimforge-*"))


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """A private system temp folder for this test (in-process and subprocesses), so stray
    ``slimforge-*`` files are ours to see, whatever other tests on the machine do."""
    tmp = tmp_path / "systmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp


def _text(output: str) -> str:
    return " ".join(output.split())


def _cli(*args: str, cwd: Path, tmp: Path, python_m: bool = False, pythonpath: Path | None = None):
    """Run the installed CLI (``slimforge ...``, or ``python -m compress ...``, which puts ``cwd`` first
    on ``sys.path``) in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TMPDIR=str(tmp), OMP_NUM_THREADS="1", COLUMNS="1000")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, "-m", "compress", *args] if python_m else [str(SLIMFORGE), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _assert_cli_refused(proc, *fragments: str) -> str:
    out = proc.stdout + proc.stderr
    text = _text(out)
    assert proc.returncode == 2, f"exit {proc.returncode}: {out}"
    assert "Traceback" not in out, out
    for f in fragments:
        assert f in text, f"{f!r} not in: {text}"
    return text


# ---- 1. files can run code

_EVIL = """import pathlib
pathlib.Path({sentinel!r}).write_text("imported")


def factory(num_classes=10):
    pathlib.Path({sentinel!r}).write_text("called")
    raise SystemExit(0)
"""
_TRUSTED = """from compress.testing import TinyConvNet


def factory(num_classes=10):
    return TinyConvNet(num_classes=num_classes)
"""
_TINY_CONFIG = json.dumps({"epochs": 1, "bisection_steps": 3, "calib_samples": 32, "max_steps_per_epoch": 2})


def _record(run: Path, args: dict, command: str = "run") -> Path:
    run.mkdir(parents=True, exist_ok=True)
    path = run / "run_args.json"
    path.write_text(json.dumps({"format": "slimforge-run-args/1", "command": command, "args": args}))
    return path


def _run_args(model: str, **more) -> dict:
    return {"model": model, "data": "digits", "budget": "macs=0.5x", **more}


@pytest.fixture()
def trap(tmp_path):
    """``evil_module.py`` in a run directory and in the working directory: importing either one
    writes the sentinel file."""
    sentinel = tmp_path / "SENTINEL"
    run, cwd = tmp_path / "run", tmp_path / "cwd"
    for d in (run, cwd):
        d.mkdir()
        (d / "evil_module.py").write_text(_EVIL.format(sentinel=str(sentinel)))
    return sentinel, run, cwd


@pytest.fixture()
def trusted_pkg(tmp_path):
    """A factory module in its own folder (neither the working nor the run directory)."""
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    (pkgs / "mytrusted_factory.py").write_text(_TRUSTED)
    return pkgs


def test_run_args_naming_os_abort_is_refused_not_called(tmp_path, private_tmp):
    run = tmp_path / "run"
    _record(run, _run_args("os:abort"))
    before = _snapshot(run)
    proc = _cli("resume", str(run), cwd=tmp_path, tmp=private_tmp)
    _assert_cli_refused(proc, "UntrustedCodeError", "'os:abort'", "not a registry spec",
                        f"slimforge resume {run} --model os:abort", "--trust-remote-code")
    assert _snapshot(run) == before and _stray(private_tmp) == []


def test_run_args_module_in_run_dir_and_cwd_is_never_imported(trap, private_tmp):
    sentinel, run, cwd = trap
    _record(run, _run_args("evil_module:factory"))
    before = _snapshot(run, cwd)
    proc = _cli("resume", str(run), cwd=cwd, tmp=private_tmp)
    _assert_cli_refused(proc, "UntrustedCodeError", "--model evil_module:factory", "--trust-remote-code")
    assert not sentinel.exists()
    assert _snapshot(run, cwd) == before and _stray(private_tmp) == []


def test_trust_remote_code_still_never_imports_from_cwd_or_run_dir(trap, private_tmp):
    """``python -m compress`` puts the working directory first on sys.path; even a trusted spec
    is not looked up there, nor in the run directory."""
    sentinel, run, cwd = trap
    _record(run, _run_args("evil_module:factory"))
    before = _snapshot(run, cwd)
    proc = _cli("resume", str(run), "--trust-remote-code", cwd=cwd, tmp=private_tmp, python_m=True)
    _assert_cli_refused(proc, "ModelSpecError", "never imports from there", "PYTHONPATH")
    assert not sentinel.exists()
    assert _snapshot(run, cwd) == before and _stray(private_tmp) == []


def test_explicit_model_is_not_imported_from_the_run_dir_either(trap, private_tmp):
    sentinel, run, _ = trap
    _record(run, _run_args("evil_module:factory"))
    before = _snapshot(run)
    proc = _cli("resume", str(run), "--model", "evil_module:factory", cwd=run, tmp=private_tmp, python_m=True)
    _assert_cli_refused(proc, "ModelSpecError", "never imports from there", "install the package")
    assert not sentinel.exists()
    assert _snapshot(run) == before and _stray(private_tmp) == []


def test_demo_run_args_teacher_model_is_checked_too(trap, private_tmp, monkeypatch):
    sentinel, run, cwd = trap
    _record(run, {"teacher_model": "evil_module:factory", "seed": 0}, command="demo")
    monkeypatch.chdir(cwd)
    before = _snapshot(run, cwd)
    res = runner.invoke(app, ["resume", str(run)], env={"COLUMNS": "1000"})
    text = _text(res.output)
    assert res.exit_code == 2 and "Traceback" not in res.output, text
    assert "UntrustedCodeError" in text and "'evil_module:factory'" in text and "--trust-remote-code" in text
    assert not sentinel.exists() and "evil_module" not in sys.modules
    assert _snapshot(run, cwd) == before and _stray(private_tmp) == []


@pytest.mark.parametrize("spec", ["compress.testing:torch.load", "python:os:system", "compress.testing:tiny_models"])
def test_specs_that_only_look_like_the_registry_are_refused(spec, tmp_path, private_tmp):
    run = tmp_path / "run"
    _record(run, _run_args(spec))
    before = _snapshot(run)
    res = runner.invoke(app, ["resume", str(run)], env={"COLUMNS": "1000"})
    text = _text(res.output)
    assert res.exit_code == 2 and "Traceback" not in res.output, text
    assert "UntrustedCodeError" in text and "--trust-remote-code" in text
    assert _snapshot(run) == before and _stray(private_tmp) == []


def test_run_args_ray_address_is_never_taken_from_the_file(tmp_path, private_tmp):
    run = tmp_path / "run"
    _record(run, _run_args("timm:resnet18", executor="ray", ray_address="ray://203.0.113.7:10001"))
    before = _snapshot(run)
    res = runner.invoke(app, ["resume", str(run)], env={"COLUMNS": "1000"})
    text = _text(res.output)
    assert res.exit_code == 2 and "Traceback" not in res.output, text
    assert "UntrustedCodeError" in text and "--ray-address ray://203.0.113.7:10001" in text
    assert _snapshot(run) == before and _stray(private_tmp) == []


def test_resume_with_another_model_is_refused(tmp_path, private_tmp):
    run = tmp_path / "run"
    _record(run, _run_args("evil_module:factory"))
    before = _snapshot(run)
    res = runner.invoke(app, ["resume", str(run), "--model", "timm:resnet18"], env={"COLUMNS": "1000"})
    text = _text(res.output)
    assert res.exit_code == 2 and "CheckpointError" in text and "Start a new run" in text, text
    assert _snapshot(run) == before and _stray(private_tmp) == []


_GOOD = {"format": "slimforge-run-args/1", "command": "run", "args": _run_args("timm:resnet18")}
_BAD_RUN_ARGS = {
    "nan": (json.dumps(_GOOD)[:-2] + ', "seed": NaN}}', "NaN is not a finite number"),
    "infinity": (json.dumps(_GOOD)[:-2] + ', "seed": -Infinity}}', "-Infinity is not a finite number"),
    "overflow": (json.dumps(_GOOD)[:-2] + ', "seed": 1e999}}', "overflows to inf"),
    "missing-key": (json.dumps({**_GOOD, "args": {"data": "digits", "budget": "macs=0.5x"}}), "`model`: missing"),
    "wrong-types": (json.dumps({**_GOOD, "args": {**_GOOD["args"], "seed": "0", "int8": 1}}),
                    "`seed`: should be a valid integer (got '0'); `int8`: should be a valid boolean (got 1)"),
    "unknown-arg": (json.dumps({**_GOOD, "args": {**_GOOD["args"], "exec": "rm -rf /"}}), "`exec`: unknown key"),
    "list-top-level": (json.dumps([_GOOD]), "a list, not a JSON object"),
    "unknown-command": (json.dumps({**_GOOD, "command": "exec"}), "`command`: should be 'demo' or 'run'"),
    "no-format": (json.dumps({k: v for k, v in _GOOD.items() if k != "format"}), "`format`: missing"),
    "truncated": (json.dumps(_GOOD)[:40], "is corrupt or truncated"),
    "utf-16": (json.dumps(_GOOD).encode("utf-16"), "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(_BAD_RUN_ARGS))
def test_bad_run_args_are_refused_by_resume(case, tmp_path, private_tmp):
    content, fragment = _BAD_RUN_ARGS[case]
    run = tmp_path / "run"
    run.mkdir()
    path = run / "run_args.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = _snapshot(run)
    res = runner.invoke(app, ["resume", str(run)], env={"COLUMNS": "1000"})
    text = _text(res.output)
    assert res.exit_code == 2 and "Traceback" not in res.output, text
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "CheckpointError" in text and str(path) in text and fragment in text and "--no-resume" in text, text
    assert _snapshot(run) == before and _stray(private_tmp) == []


def test_bad_run_args_are_refused_by_run_into_that_dir(tmp_path, private_tmp):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_args.json").write_text(_BAD_RUN_ARGS["nan"][0])
    before = _snapshot(run)
    res = runner.invoke(app, ["run", "--model", "timm:resnet18", "--data", "digits", "--budget", "macs=0.5x",
                              "--out", str(run)], env={"COLUMNS": "1000"})
    text = _text(res.output)
    assert res.exit_code == 2 and "Traceback" not in res.output, text
    assert "CheckpointError" in text and "NaN is not a finite number" in text and "--no-resume" in text
    assert _snapshot(run) == before and _stray(private_tmp) == []


def test_target_toml_with_a_top_level_target_string_exits_2_and_leaves_nothing(tmp_path, private_tmp):
    bad = tmp_path / "t.toml"
    bad.write_text('target = "cpu-1t"\n')
    out = tmp_path / "out"
    proc = _cli("run", "--model", "compress.testing:TinyConvNet", "--data", "digits", "--budget", "macs=0.5x",
                "--out", str(out), "--target", str(bad), cwd=tmp_path, tmp=private_tmp)
    _assert_cli_refused(proc, "TargetError", str(bad), 'preset = "cpu-1t"')
    assert not out.exists() and _stray(private_tmp) == []


@pytest.mark.parametrize("content, fragment", [
    ('target = "cpu-1t"\n', 'to start from that preset write preset = "cpu-1t"'),
    ("target = 3\nname = 'x'\n", "next to other keys ['name']"),
    ('preset = "cpu-1t"\nintra_op_threads = nan\n', "`intra_op_threads`: should be a valid integer (got nan)"),
    ('intra_op_threads = inf\n', "`intra_op_threads`: should be a valid integer (got inf)"),
    ('intra_op_threads = "2"\nbatch_size = true\n', "`batch_size`: should be a valid integer (got True)"),
    ('input_shape = "abc"\n', "`input_shape`: should be a valid list"),
    ("preset = []\n", "unknown target preset []"),
    ("[target]\nprovider = 7\n", "`provider`: should be a valid string (got 7)"),
], ids=["target-string", "target-int-and-more", "nan", "inf", "wrong-types", "shape-string", "preset-list", "table"])
def test_bad_target_toml_is_a_target_error(content, fragment, tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(content)
    with pytest.raises(TargetError) as exc:
        Target.from_file(path)
    assert str(path) in str(exc.value) and fragment in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.toml"]


@pytest.mark.parametrize("content, fragment", [
    ("- 1\n- 2\n", "not a list"),
    ("intra_op_threads: .nan\n", "`intra_op_threads`: should be a valid integer"),
    ("input_shape: [3, 0, 32]\n", "`input_shape.1`: should be greater than or equal to 1"),
], ids=["list", "nan", "zero-dim"])
def test_bad_target_yaml_is_a_target_error(content, fragment, tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(content)
    with pytest.raises(TargetError) as exc:
        Target.from_file(path)
    assert str(path) in str(exc.value) and fragment in str(exc.value)


# student folders


def _student(folder: Path, base_spec: str | None) -> Path:
    torch.manual_seed(0)
    save_student(TinyConvNet(), folder, base_spec=base_spec, surgery=[])
    return folder


def test_student_base_spec_naming_code_is_refused(trap, monkeypatch, private_tmp):
    sentinel, folder, cwd = trap
    _student(folder, "evil_module:factory")
    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(cwd))  # the working directory on sys.path, as with `python -c`
    before = _snapshot(folder, cwd)
    with pytest.raises(UntrustedCodeError) as exc:
        load_student(folder)
    msg = str(exc.value)
    assert "student.arch.json" in msg and "base_spec='evil_module:factory'" in msg and "trust_remote_code=True" in msg
    with pytest.raises(ModelSpecError, match="never imports from there"):
        load_student(folder, trust_remote_code=True)  # trusted, but still not from the folder or the cwd
    assert not sentinel.exists() and "evil_module" not in sys.modules
    assert _snapshot(folder, cwd) == before and _stray(private_tmp) == []


def test_student_base_spec_os_abort_is_refused(tmp_path, private_tmp):
    folder = _student(tmp_path / "s", "os:abort")
    with pytest.raises(UntrustedCodeError, match="'os:abort'.*base_spec='os:abort'"):
        load_student(folder)
    with pytest.raises(ModelSpecError, match="differs from the spec the student was compressed from"):
        load_student(folder, base_spec="timm:resnet18")
    assert _stray(private_tmp) == []


def _arch_with(folder: Path, change) -> Path:
    path = folder / "student.arch.json"
    arch = json.loads(path.read_text())
    change(arch)
    path.write_text(json.dumps(arch))
    return path


_BAD_ARCH = {
    "nan-width": (lambda a: a["modules"]["fc"].update(out_features=float("nan")), "NaN is not a finite number"),
    "missing-modules": (lambda a: a.pop("modules"), "`modules`: missing"),
    "wrong-type": (lambda a: a["modules"]["fc"].update(out_features="10"), "should be a valid integer (got '10')"),
    "unknown-surgery": (lambda a: a.update(surgery=["__import__('os').system('x')"]),
                        "`surgery[0]`: should be 'pad_shortcuts_to_conv'"),
    "unknown-key": (lambda a: a["modules"]["fc"].update(factory="os:abort"), "unknown key"),
    "huge-width": (lambda a: a["modules"]["fc"].update(out_features=10**9), "do not match the tensors"),
    "bad-builder": (lambda a: a.update(builder={"strategy": "grow", "args": {"structure": 7}}),
                    "do not build a grow student"),
}


@pytest.mark.parametrize("case", sorted(_BAD_ARCH))
def test_bad_student_arch_is_a_model_spec_error(case, tmp_path, private_tmp):
    change, fragment = _BAD_ARCH[case]
    folder = _student(tmp_path / "s", "compress.testing:TinyConvNet")
    path = _arch_with(folder, change)
    before = _snapshot(folder)
    with pytest.raises(ModelSpecError) as exc:
        load_student(folder)
    assert str(path) in str(exc.value) and fragment in str(exc.value) and "re-save the student" in str(exc.value)
    assert _snapshot(folder) == before and _stray(private_tmp) == []


def test_student_arch_list_at_top_level(tmp_path):
    folder = _student(tmp_path / "s", "cifar:resnet20")
    (folder / "student.arch.json").write_text("[]")
    with pytest.raises(ModelSpecError, match=r"a list, not a JSON object.*re-save the student"):
        load_student(folder)


# checkpoint manifests and state envelopes


_IDENT = {"strategy": "grow", "config": {"epochs": 3}, "seed": 0}


@pytest.mark.parametrize("content, fragment", [
    ('{"format": "slimforge-run/1", "identity": {"strategy": "grow", "seed": NaN}}', "NaN is not a finite number"),
    ('{"format": "slimforge-run/1"}', "`identity`: missing"),
    ('{"format": "slimforge-run/1", "identity": ["grow"]}', "`identity`: should be a valid dictionary"),
    ('[{"format": "slimforge-run/1", "identity": {}}]', "a list, not a JSON object"),
    ('{"format": "slimforge-run/9", "identity": {}}', "`format`: should be 'slimforge-run/1'"),
], ids=["nan", "missing-identity", "identity-list", "list", "format"])
def test_bad_run_manifest_is_a_checkpoint_error(content, fragment, tmp_path, private_tmp):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    (ck / "run.json").write_text(content)
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError) as exc:
        open_run_dir(tmp_path, _IDENT)
    msg = str(exc.value)
    assert str(ck / "run.json") in msg and fragment in msg and "delete the folder" in msg
    assert _snapshot(tmp_path) == before and _stray(private_tmp) == []


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d.update(tensors="../../../etc/passwd.pt"), "`tensors`: string should match pattern"),
    (lambda d: d["rng"]["python"].__setitem__(1, [0] * 3), "`rng.python[1]`: list should have at least 625 items"),
    (lambda d: d["rng"]["numpy"].__setitem__(4, float("inf")), "`rng.numpy[4]`: should be a finite number"),
    (lambda d: d.pop("key"), "`key`: missing"),
    (lambda d: d.update(name="other", tensors="other.0.pt"), "names checkpoint 'other'"),
], ids=["path-traversal", "rng-length", "rng-inf", "missing-key", "other-name"])
def test_bad_checkpoint_state_envelope_is_a_checkpoint_error(change, fragment, tmp_path, private_tmp):
    store = CheckpointStore(tmp_path / "ck")
    store.commit("state", {"i": 1}, {"w": torch.zeros(2)}, key="k")
    path = tmp_path / "ck" / "state.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError) as exc:
        store.load("state", key="k")
    assert "state.json is corrupt or truncated" in str(exc.value) and fragment in str(exc.value)
    assert "delete the folder" in str(exc.value)
    assert _snapshot(tmp_path) == before and _stray(private_tmp) == []


# what still works: registry specs, a spec passed again, trust_remote_code


def test_registry_spec_student_loads(tmp_path):
    folder = _student(tmp_path / "s", "compress.testing:TinyConvNet")
    x = TinyConvNet().example_inputs()
    torch.manual_seed(0)
    ref = TinyConvNet().eval()
    assert torch.equal(load_student(folder)(x), ref(x))


def test_student_with_a_factory_spec_loads_when_passed_again_or_trusted(tmp_path, trusted_pkg, monkeypatch):
    monkeypatch.syspath_prepend(str(trusted_pkg))
    folder = _student(tmp_path / "s", "mytrusted_factory:factory")
    with pytest.raises(UntrustedCodeError):
        load_student(folder)
    x = TinyConvNet().example_inputs()
    a = load_student(folder, base_spec="mytrusted_factory:factory")(x)
    b = load_student(folder, trust_remote_code=True)(x)
    assert torch.equal(a, b)


def test_resume_with_the_factory_spec_passed_again_runs(tmp_path, trusted_pkg, private_tmp):
    """(Resuming a registry-spec run is tested by test_sigkill_resume.py::
    test_slimforge_run_killed_then_slimforge_resume_writes_the_same_report.)"""
    run = tmp_path / "run"
    _record(run, _run_args("mytrusted_factory:factory", config=_TINY_CONFIG, allow_slower=True))  # exit 0: not a timing race
    proc = _cli("resume", str(run), "--model", "mytrusted_factory:factory", cwd=tmp_path, tmp=private_tmp,
                pythonpath=trusted_pkg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((run / "report.json").read_text())["model_spec"] == "mytrusted_factory:factory"
    assert _stray(private_tmp) == []


# ---- 3. every failure typed and clean

_RUN = ("run", "--model", "compress.testing:TinyConvNet", "--budget", "macs=0.5x")
_FAST = {"epochs": 1, "bisection_steps": 2, "calib_samples": 32, "max_steps_per_epoch": 2, "channel_rounding": "off"}
_FAST_API = dict(config=_FAST, progress=False, allow_slower=True, mobile=False, memory=False, latency_warmup=1,
                 latency_repeats=3)


def _refused(*args: str, code: int = 2) -> str:
    """``slimforge ARGS`` in this process: exit ``code``, no traceback, the message as one line."""
    res = runner.invoke(app, list(args), env={"COLUMNS": "1000"})
    text = _text(res.output)
    assert res.exit_code == code and "Traceback" not in res.output, f"exit {res.exit_code}: {text}"
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return text


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()

    def same(a, b):
        if a.is_floating_point():
            return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
        return torch.equal(a, b)

    return after.keys() == before.keys() and all(same(after[k], before[k]) for k in before)


@pytest.fixture(scope="module")
def small_digits():
    """The digits task with a few val samples (the API checks run on them)."""
    from compress.data import load_digits_task

    return load_digits_task(seed=0, batch_size=32)


def _npz(path: Path, x, y) -> Path:
    import numpy as np

    np.savez(path, x=np.asarray(x), y=np.asarray(y))
    return path


def _rgb_npz(path: Path, n: int = 40, labels=None, dtype="uint8") -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(n, 8, 8, 3)).astype(dtype)
    if dtype != "uint8":
        x = x / 255.0
    y = np.arange(n) % 4 if labels is None else np.asarray(labels)
    return _npz(path, x, y)


# the CLI: one paragraph, exit 2, --debug, Ctrl-C, no record left behind


def test_cli_internal_error_is_one_paragraph_exit_2_and_debug_shows_it(tmp_path, private_tmp, monkeypatch):
    import compress.data

    def boom(*a, **k):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(compress.data, "load_task", boom)
    out = tmp_path / "out"
    text = _refused(*_RUN, "--data", "digits", "--out", str(out))
    assert "internal error (RuntimeError: boom second line)" in text and "slimforge --debug" in text, text
    assert not out.exists() and _stray(private_tmp) == []
    res = runner.invoke(app, ["--debug", *_RUN, "--data", "digits", "--out", str(out)])
    assert isinstance(res.exception, RuntimeError) and str(res.exception).startswith("boom")
    assert not out.exists()
    res = runner.invoke(app, ["--debug", "resume", str(tmp_path / "nothing")])  # our own errors too
    assert type(res.exception).__name__ == "CheckpointError" and "has no run_args.json" in str(res.exception)


@pytest.mark.parametrize("exc, fragment", [
    (ValueError("bad value"), "ValueError: bad value; check the files and options given"),
    (PermissionError(13, "Permission denied", "/x/y"), "check the paths given"),
], ids=["value-error", "os-error"])
def test_cli_maps_builtin_errors_to_exit_2(exc, fragment, tmp_path, monkeypatch):
    import compress.data

    monkeypatch.setattr(compress.data, "load_task", lambda *a, **k: (_ for _ in ()).throw(exc))
    text = _refused(*_RUN, "--data", "digits", "--out", str(tmp_path / "out"))
    assert fragment in text
    assert not (tmp_path / "out").exists()


def test_cli_ctrl_c_exits_130_without_traceback_or_record(tmp_path, private_tmp, monkeypatch):
    import compress.data

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(compress.data, "load_task", interrupted)
    out = tmp_path / "out"
    text = _refused(*_RUN, "--data", "digits", "--out", str(out), code=130)
    assert "interrupted (SIGINT / Ctrl-C)" in text and "slimforge resume OUT" in text
    assert not out.exists() and _stray(private_tmp) == []


def test_failed_run_removes_its_record_so_the_corrected_command_runs(tmp_path, private_tmp):
    out = tmp_path / "out"
    bad = json.dumps({**_FAST, "lr": -1})
    text = _refused(*_RUN, "--data", "digits", "--out", str(out), "--config", bad, "--allow-slower")
    assert "ConfigError" in text and "`lr` = -1: a learning rate, must be > 0" in text and "--config" in text
    assert not (out / "run_args.json").exists() and not out.exists()
    res = runner.invoke(app, [*_RUN, "--data", "digits", "--out", str(out), "--config", json.dumps(_FAST),
                              "--allow-slower"], env={"COLUMNS": "1000"})
    assert res.exit_code == 0, res.output
    assert (out / "report.json").is_file() and (out / "run_args.json").is_file()
    assert _stray(private_tmp) == []


def test_failed_run_keeps_its_record_once_a_checkpoint_is_committed(tmp_path):
    """After a committed checkpoint the record stays: ``slimforge resume`` needs it."""
    from compress.cli import _record_run

    out = tmp_path / "out"
    cleanup = _record_run(out, "run", _run_args("timm:resnet18"), resume=True)
    (out / "checkpoints" / "gp-prune").mkdir(parents=True)
    (out / "checkpoints" / "gp-prune" / "pruned.json").write_text("{}")
    cleanup()
    assert (out / "run_args.json").is_file()
    (out / "checkpoints" / "gp-prune" / "pruned.json").unlink()
    cleanup()
    assert not (out / "run_args.json").exists()


# seeds


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_cli_out_of_range_seed_is_a_config_error(seed, tmp_path, private_tmp):
    out = tmp_path / "out"
    text = _refused(*_RUN, "--data", "digits", "--out", str(out), "--seed", seed)
    assert f"ConfigError: --seed must be an integer from 0 to 4294967295, got {seed}" in text
    assert not out.exists() and _stray(private_tmp) == []


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "0", True])
def test_api_bad_seed_is_a_config_error(seed, small_digits):
    from compress import compress as compress_fn
    from compress.errors import ConfigError

    model = TinyConvNet()
    before = _state(model)
    with pytest.raises(ConfigError, match=r"seed must be an integer from 0 to 4294967295, got .*pick another seed"):
        compress_fn(model, "macs=0.5x", data=small_digits, seed=seed, progress=False)
    assert _same_state(model, before)


def test_api_switches_must_be_bools_and_counts_ints(small_digits, tmp_path):
    from compress import compress as compress_fn
    from compress.errors import ConfigError

    model = TinyConvNet()
    before = _state(model)
    with pytest.raises(ConfigError) as exc:
        compress_fn(model, "macs=0.5x", data=small_digits, int8="false", memory=0, allow_slower="yes",
                    latency_repeats=0, out_dir=tmp_path / "out", progress=False)
    msg = str(exc.value)
    for part in ("int8='false' (True or False)", "memory=0 (True or False)", "allow_slower='yes' (True or False)",
                 "latency_repeats=0 (an int >= 1)"):
        assert part in msg, msg
    assert _same_state(model, before) and not (tmp_path / "out").exists()


# --mean / --std / --image-size / --in-chans


@pytest.mark.parametrize("opts, fragment", [
    (("--mean", "abc"), "--mean takes comma-separated numbers, one per image channel or one for all channels (e.g. "
                        "--mean 0.485,0.456,0.406 for RGB, --mean 0.5 for all); got 'abc'"),
    (("--std", "0"), "each > 0 (a std of 0 divides by zero); got '0'"),
    (("--std", "nan,1,1"), "--std takes comma-separated numbers"),
    (("--mean", "0.5,0.5"), "mean has 2 values but the images have 3 channel(s); pass one value per channel"),
    (("--image-size", "0"), "--image-size applies to image-folder data only"),
    (("--in-chans", "1"), "--in-chans 1 but the data"),
], ids=["mean-abc", "std-0", "std-nan", "mean-wrong-length", "image-size-on-npz", "in-chans-mismatch"])
def test_cli_bad_normalisation_and_shape_options(opts, fragment, tmp_path, private_tmp):
    data = _rgb_npz(tmp_path / "d.npz")
    out = tmp_path / "out"
    text = _refused(*_RUN, "--data", str(data), "--out", str(out), *opts)
    assert fragment in text, text
    assert ("ConfigError" in text) or ("DataError" in text)
    assert not out.exists() and _stray(private_tmp) == []


def test_cli_mean_on_digits_names_the_flags_not_the_loader_arguments(tmp_path):
    text = _refused(*_RUN, "--data", "digits", "--out", str(tmp_path / "out"), "--std", "0.5")
    assert "--mean/--std apply to .npz and image-folder data" in text
    assert "load_digits_task does not take" not in text and "image_size" not in text


# strategy configs: every field, bools included


@pytest.mark.parametrize("strategy, config, fragment", [
    ("grow", {"grad_clip": "yes"}, "`grad_clip` = 'yes': should be a valid number (the field is float | None)"),
    ("gp-prune", {"lr": -1}, "`lr` = -1: a learning rate, must be > 0"),
    ("gp-prune", {"weight_decay": -0.1}, "`weight_decay` = -0.1: a weight decay, must be >= 0"),
    ("grow", {"checkpoint": 1}, "`checkpoint` = 1: should be a valid boolean"),
    ("grow", {"checkpoint": "true"}, "`checkpoint` = 'true': should be a valid boolean"),
    ("eg-nas", {"keep_mean": "false", "search_epochs": 1.5},
     "`epochs` = 1.5: should be a valid integer (the field is int)"),
    ("eg-nas", {"es": {"keep_mean": "false"}, "search": {"epochs": 2}}, "`keep_mean` = 'false': should be a valid boolean"),
    ("darts-gal", {"momentum": 1.0}, "DartsGalConfig has no field(s) ['momentum']"),
    ("darts-gal", {"search_momentum": 1.0}, "`momentum` = 1.0: a momentum, must be >= 0 and < 1"),
    ("darts-gal", {"search": {"epochs": 1}, "search_epochs": 2}, "search.epochs is given twice"),
], ids=["grad-clip-yes", "lr-negative", "wd-negative", "bool-1", "bool-string", "bool-and-float-epochs",
        "nested-bool", "unknown-field", "momentum-1", "given-twice"])
def test_cli_config_fields_are_validated(strategy, config, fragment, tmp_path, private_tmp):
    out = tmp_path / "out"
    text = _refused(*_RUN, "--data", "digits", "--out", str(out), "--strategy", strategy,
                    "--config", json.dumps(config))
    assert "ConfigError" in text and fragment in text, text
    assert not out.exists() and _stray(private_tmp) == []


def test_demo_checks_its_config_before_training_the_teacher(tmp_path, private_tmp, monkeypatch):
    import compress.teachers

    monkeypatch.setattr(compress.teachers, "get_or_train_teacher", lambda *a, **k: pytest.fail("teacher trained"))
    out = tmp_path / "demo"
    text = _refused("demo", "--out", str(out), "--config", json.dumps({"lr": -1, "augment": True}))
    assert "`lr` = -1: a learning rate, must be > 0" in text and "`augment` = True: should be a valid string" in text
    assert not out.exists() and _stray(private_tmp) == []


@pytest.mark.parametrize("cls_path", ["compress.strategies.gp_prune.config:GPPruneConfig",
                                      "compress.strategies.grow.strategy:GrowConfig",
                                      "compress.strategies.eg_nas.config:EGNASConfig",
                                      "compress.strategies.darts_gal.config:DartsGalConfig",
                                      "compress.evolution.config:EvolveConfig"])
def test_every_config_class_checks_types_and_ranges(cls_path):
    """A string for a number, 1 for a bool, True for an int and a negative learning rate, in the
    config's own leaves and in every sub-config (issue 15, part 5): all named in one ConfigError."""
    import dataclasses
    import importlib
    import typing

    from compress.errors import ConfigError
    from compress.strategies.config_tree import config_from_dict, subconfig_names

    def bad_leaves(klass) -> dict:
        hints = typing.get_type_hints(klass)
        leaves = [f.name for f in dataclasses.fields(klass) if f.name not in subconfig_names(klass)]
        bad = {}
        for kind, value in ((bool, 1), (int, True), (float, "0.5")):
            name = next((f for f in leaves if hints[f] is kind), None)
            if name is not None:
                bad[name] = value
        lr = next((f for f in leaves if f.endswith("lr") and f not in bad), None)
        if lr is not None:
            bad[lr] = -1.0
        return bad

    mod, name = cls_path.split(":")
    cls = getattr(importlib.import_module(mod), name)
    given = {None: bad_leaves(cls)}
    for sub in subconfig_names(cls):
        given[sub] = bad_leaves(type(getattr(cls(), sub)))
    data = {**given[None], **{sub: leaves for sub, leaves in given.items() if sub is not None and leaves}}
    assert sum(len(v) for v in given.values()) >= 2
    with pytest.raises(ConfigError) as exc:
        config_from_dict(cls, data)
    msg = str(exc.value)
    for sub, leaves in given.items():
        for fname, value in leaves.items():
            assert f"`{fname}` = {value!r}" in msg, (sub, fname, msg)
            if sub is not None:
                assert f"{cls.__name__}.{sub}" in msg
    assert "Fix these fields in the config" in msg


# ImageFolder: unreadable files, sizes on every image, --image-size, --in-chans


def _image_folder(root: Path, per_class: int = 6, size: int = 8) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i:04d}.png")
    return root


def _truncated_jpeg(path: Path, keep: float) -> Path:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * keep)])
    return path


@pytest.mark.parametrize("make, fragment", [
    (lambda d: (d / "cat" / "notes.png").write_text("not an image"), "notes.png (UnidentifiedImageError"),
    (lambda d: _truncated_jpeg(d / "dog" / "cut.jpg", 0.5), "cut.jpg (OSError: Truncated File Read)"),
    (lambda d: _truncated_jpeg(d / "dog" / "cut.jpg", 0.9), "cut.jpg (OSError: JPEG file is truncated)"),
    (lambda d: (d / "dog" / "empty.jpeg").write_bytes(b""), "empty.jpeg ("),
], ids=["text-named-png", "jpeg-cut-in-header", "jpeg-cut-in-data", "empty-file"])
def test_image_folder_with_unreadable_files_is_refused_listing_them(make, fragment, tmp_path, private_tmp):
    from compress.data import load_task
    from compress.errors import DataError

    root = _image_folder(tmp_path / "imgs")
    make(root)
    before = _snapshot(root)
    with pytest.raises(DataError) as exc:
        load_task(root)
    msg = str(exc.value)
    assert "1 file(s) in" in msg and fragment in msg and "Remove or replace them" in msg, msg
    out = tmp_path / "out"
    text = _refused(*_RUN, "--data", str(root), "--out", str(out))
    assert "DataError" in text and fragment in text
    assert not out.exists() and _snapshot(root) == before and _stray(private_tmp) == []


def test_image_folder_odd_size_outside_the_stats_sample_is_found(tmp_path, private_tmp):
    from PIL import Image

    from compress.data import load_image_folder_task
    from compress.errors import DataError

    root = _image_folder(tmp_path / "imgs", per_class=12)
    Image.new("RGB", (9, 8)).save(root / "dog" / "9999.png")  # sorted last; the 4-image sample cannot hold it
    with pytest.raises(DataError) as exc:
        load_image_folder_task(root, stats_samples=4)
    msg = str(exc.value)
    assert "2 different sizes: most are 8x8" in msg and "9999.png (9x8)" in msg and "--image-size 8" in msg
    out = tmp_path / "out"
    text = _refused(*_RUN, "--data", str(root), "--out", str(out))
    assert "9999.png (9x8)" in text and "slimforge run --image-size 8" in text
    assert not out.exists() and _stray(private_tmp) == []
    task = load_image_folder_task(root, image_size=8, stats_samples=4)  # what the message says works
    assert task.spec.input_shape == (3, 8, 8)


def test_image_folder_in_chans_1_reads_grayscale_and_bad_values_are_refused(tmp_path):
    from compress.cli import _data_options
    from compress.data import load_task
    from compress.errors import ConfigError

    root = _image_folder(tmp_path / "imgs")
    kw = _data_options(str(root), seed=0, test_data=None, mean=None, std=None, image_size=6, in_chans=1,
                       num_classes=None)
    task = load_task(str(root), **kw)
    x, _ = next(iter(task.train))
    assert task.spec.input_shape == (1, 6, 6) and tuple(x.shape[1:]) == (1, 6, 6)
    text = _refused(*_RUN, "--data", str(root), "--out", str(tmp_path / "out"), "--in-chans", "2")
    assert "--in-chans must be 1 (grayscale) or 3 (RGB) for an image folder, got 2" in text
    with pytest.raises(ConfigError, match="--image-size applies to image-folder data only"):
        _data_options("digits", seed=0, test_data=None, mean=None, std=None, image_size=32, in_chans=None,
                      num_classes=None)


# models: train-mode (logits, aux) tuples, NaN weights, heads that do not match the data


class _AuxNet(torch.nn.Module):
    """TinyConvNet's layers plus an aux head (conv, pool, flatten, linear, like torchvision's
    InceptionAux) that runs only in train mode, where the model returns ``(logits, aux_logits)``
    like GoogLeNet / Inception v3. The aux head is registered after ``fc``, so "the last 10-output
    Linear" is the aux head's."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        base = TinyConvNet(num_classes)
        self.features, self.pool, self.fc = base.features, base.pool, base.fc
        self.aux = torch.nn.Sequential(torch.nn.Conv2d(64, 8, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                                       torch.nn.Flatten(), torch.nn.Linear(32, num_classes))

    def forward(self, x):
        f = self.features(x)
        logits = self.fc(self.pool(f).flatten(1))
        return (logits, self.aux(f)) if self.training else logits


def test_model_returning_aux_logits_in_train_mode_compresses_on_its_main_logits(small_digits, tmp_path, private_tmp):
    from compress import compress as compress_fn

    model = _AuxNet()
    before = _state(model)
    res = compress_fn(model, "macs=0.5x", data=small_digits, strategy="gp-prune", out_dir=tmp_path / "out", **_FAST_API)
    assert res.budget_check.ok, res.budget_check.violations
    student = res.student.eval()
    assert student.fc.out_features == student.aux[4].out_features == 10  # every class head kept
    assert student.aux[0].in_channels == student.fc.in_features < 64  # the aux head's input follows the features
    assert student.aux[0].out_channels == 8  # layers that run only in training are not pruned themselves
    x = next(iter(small_digits.val))[0][:4]
    assert student(x).shape == (4, 10)
    logits, aux = student.train()(x)  # train mode still works on the pruned student
    assert logits.shape == aux.shape == (4, 10)
    assert _same_state(model, before) and model.training  # the user's model untouched (mode included)
    assert _stray(private_tmp) == []


def test_model_with_a_wrong_train_mode_output_is_refused_before_any_work(small_digits, tmp_path, private_tmp):
    from compress import compress as compress_fn
    from compress.errors import UnsupportedModelError

    model = _AuxNet()
    model.fc = torch.nn.Identity()  # eval: (B, 64) features; train: a tuple whose first element is (B, 64)
    before = _state(model)
    with pytest.raises(UnsupportedModelError, match=r"got \(2, 64\) in eval mode.*--num-classes"):
        compress_fn(model, "macs=0.5x", data=small_digits, out_dir=tmp_path / "out", progress=False)
    wrong_aux = _AuxNet()
    wrong_aux.forward = lambda x: (torch.zeros(len(x), 3), None) if wrong_aux.training else torch.zeros(len(x), 10)
    with pytest.raises(UnsupportedModelError, match=r"got \(2, 3\) in train mode"):
        compress_fn(wrong_aux, "macs=0.5x", data=small_digits, progress=False)
    assert _same_state(model, before) and not (tmp_path / "out").exists() and _stray(private_tmp) == []


@pytest.mark.parametrize("who", ["model", "teacher"])
def test_non_finite_weights_are_a_model_spec_error(who, small_digits, tmp_path, private_tmp):
    from compress import compress as compress_fn
    from compress.errors import ModelSpecError

    model, teacher = TinyConvNet(), TinyConvNet()
    broken = model if who == "model" else teacher
    with torch.no_grad():
        broken.features[1].running_var[3] = float("inf")
        broken.fc.weight[0, 0] = float("nan")
    before = _state(broken)
    with pytest.raises(ModelSpecError) as exc:
        compress_fn(model, "macs=0.5x", data=small_digits, teacher=teacher, out_dir=tmp_path / "out", progress=False)
    msg = str(exc.value)
    assert f"{who} has NaN or infinite weights in 2 tensor(s) (fc.weight, features.1.running_var)" in msg
    assert "load finite weights" in msg and "ridge" not in msg
    assert _same_state(broken, before) and not (tmp_path / "out").exists() and _stray(private_tmp) == []


def test_head_that_does_not_match_the_data_names_the_cli_flag(tmp_path, private_tmp):
    out = tmp_path / "out"
    text = _refused(*_RUN, "--data", "digits", "--out", str(out), "--num-classes", "7")
    assert "UnsupportedModelError" in text and "got (2, 7) in eval mode" in text
    assert "--num-classes" in text and "by default the data's class count" in text
    assert not out.exists() and _stray(private_tmp) == []


def test_grayscale_npz_builds_a_one_channel_model_instead_of_failing(tmp_path, monkeypatch):
    """(Before: a 3-channel model met 1-channel data and the message advised an option the CLI lacked.)"""
    import numpy as np

    import compress.api
    from compress.errors import ConfigError

    data = _npz(tmp_path / "gray.npz", np.random.default_rng(0).integers(0, 255, (40, 8, 8), dtype=np.uint8),
                np.arange(40) % 4)
    seen = {}

    def stub(model, budget, *, data, **kw):
        seen["conv"] = model.features[0].in_channels
        seen["shape"] = data.spec.input_shape
        raise ConfigError("stub: stop here")

    monkeypatch.setattr(compress.api, "compress", stub)
    text = _refused(*_RUN, "--data", str(data), "--out", str(tmp_path / "out"))
    assert "stub: stop here" in text and seen == {"conv": 1, "shape": (1, 8, 8)}
    assert not (tmp_path / "out").exists()


# data: sparse labels, non-finite pixels


def test_sparse_labels_are_remapped_with_a_warning_not_a_900001_class_head(tmp_path):
    from compress.data import load_task

    labels = [100000 * (i % 10) for i in range(60)]
    path = _rgb_npz(tmp_path / "sparse.npz", n=60, labels=labels)
    with pytest.warns(UserWarning, match=r"10 distinct values between 0 and 900000, not 0..9; remapped to 0..9"):
        task = load_task(path)
    assert task.spec.num_classes == 10
    assert task.spec.class_names == tuple(str(100000 * k) for k in range(10))
    ys = torch.cat([y for _, y in task.train] + [y for _, y in task.val])
    assert int(ys.min()) == 0 and int(ys.max()) == 9


def test_sparse_labels_in_train_and_test_share_one_mapping(tmp_path):
    from compress.data import load_task

    path = _rgb_npz(tmp_path / "train.npz", n=40, labels=[5 * (i % 4) for i in range(40)])  # 0, 5, 10, 15
    test = _rgb_npz(tmp_path / "test.npz", n=8, labels=[15, 0, 5, 10, 15, 15, 0, 0])
    with pytest.warns(UserWarning, match="remapped to 0..3"):
        task = load_task(path, test_path=test)
    assert task.spec.num_classes == 4
    assert torch.cat([y for _, y in task.test]).tolist() == [3, 0, 1, 2, 3, 3, 0, 0]


def test_sparse_labels_in_the_callers_own_loaders(tmp_path):
    """Labels inside a caller's loaders cannot be remapped: sparse ones are refused, gaps warn."""
    from torch.utils.data import DataLoader, TensorDataset

    from compress.data import as_task_data
    from compress.errors import DataError

    x = torch.randn(20, 3, 8, 8)
    sparse = DataLoader(TensorDataset(x, torch.arange(20) % 4 * 100000), batch_size=8)
    with pytest.raises(DataError, match=r"4 distinct values between 0 and 300000, so a head of 300001 outputs.*"
                                        r"relabel them 0..3 \(np.unique\(y, return_inverse=True\)\)"):
        as_task_data((sparse, sparse))
    gap = DataLoader(TensorDataset(x, torch.tensor([0, 1, 3] * 6 + [0, 1])), batch_size=8)
    with pytest.warns(UserWarning, match="3 distinct values between 0 and 3"):
        assert as_task_data((gap, gap)).spec.num_classes == 4


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_pixels_are_a_data_error(bad, tmp_path, private_tmp):
    import numpy as np

    from compress.data import load_task
    from compress.errors import DataError

    path = _rgb_npz(tmp_path / "f.npz", dtype="float32")
    with np.load(path) as z:
        x, y = z["x"].copy(), z["y"]
    x[7, 2, 3, 1] = bad
    _npz(path, x, y)
    with pytest.raises(DataError, match=r"holds 1 NaN or infinite value\(s\) in 1 image\(s\) \(first: \[7\]\); replace"):
        load_task(path)
    out = tmp_path / "out"
    text = _refused(*_RUN, "--data", str(path), "--out", str(out))
    assert "DataError" in text and "NaN or infinite" in text and "ridge" not in text
    assert not out.exists() and _stray(private_tmp) == []


def test_non_finite_pixels_in_the_callers_own_loaders_are_a_data_error(tmp_path, private_tmp):
    from torch.utils.data import DataLoader, TensorDataset

    from compress import compress as compress_fn
    from compress.errors import DataError

    x, y = torch.randn(16, 3, 16, 16), torch.arange(16) % 4
    xv = x.clone()
    xv[5, 1, 2, 3] = float("nan")
    model = TinyConvNet(num_classes=4)
    before = _state(model)
    with pytest.raises(DataError, match=r"validation images hold NaN or infinite values \(1 image\(s\), first: \[5\]\)"):
        compress_fn(model, "macs=0.5x", data=(DataLoader(TensorDataset(x, y), batch_size=8),
                                              DataLoader(TensorDataset(xv, y), batch_size=8)),
                    out_dir=tmp_path / "out", progress=False)
    assert _same_state(model, before) and not (tmp_path / "out").exists() and _stray(private_tmp) == []


@pytest.mark.parametrize("shape", ["3,abc,32", "3,32", "3,0,32"])
def test_measure_with_a_malformed_input_shape_is_a_config_error(shape):
    text = _refused("measure", "--model", "compress.testing:TinyConvNet", "--input-shape", shape)
    assert f"ConfigError: --input-shape takes C,H,W as three positive integers (e.g. 3,32,32), got '{shape}'" in text


# run identity: absolute paths, so `slimforge resume` works from another directory


def test_resume_from_another_directory_after_a_relative_data_path(tmp_path, monkeypatch, private_tmp):
    import compress.api
    from compress.cli import _record_run
    from compress.errors import ConfigError

    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    _rgb_npz(start / "d.npz")
    monkeypatch.chdir(start)
    _record_run(Path("out"), "run", {**_run_args("compress.testing:TinyConvNet", data="d.npz"), "test_data": "d.npz",
                                     "weights": None}, resume=True)  # a run killed after it wrote its record
    rec = json.loads((start / "out" / "run_args.json").read_text())["args"]
    assert rec["data"] == rec["test_data"] == str(start / "d.npz")
    seen = {}

    def stub(model, budget, *, data, **kw):
        seen["source"] = data.spec.source
        raise ConfigError("stub: stop here")

    monkeypatch.setattr(compress.api, "compress", stub)
    monkeypatch.chdir(elsewhere)
    text = _refused("resume", "../start/out")
    assert "stub: stop here" in text, text
    assert seen["source"].startswith(str(start / "d.npz"))
    assert (start / "out" / "run_args.json").is_file()  # resuming never drops the record it resumes


# a full disk


def _enospc(path) -> OSError:
    import errno

    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_full_disk_during_compress_is_a_disk_full_error_and_leaves_nothing(small_digits, tmp_path, private_tmp,
                                                                           monkeypatch):
    import compress.api
    from compress import compress as compress_fn
    from compress.errors import DiskFullError

    def full(model, example, path, *a, **k):
        Path(path).write_bytes(b"half an onnx file")
        raise _enospc(path)

    monkeypatch.setattr(compress.api, "export_onnx", full)
    model, out = TinyConvNet(), tmp_path / "out"
    before = _state(model)
    with pytest.raises(DiskFullError) as exc:
        compress_fn(model, "macs=0.5x", data=small_digits, out_dir=out, progress=False)
    msg = str(exc.value)
    assert "the disk is full while writing" in msg and "teacher.onnx" in msg and "Free some space" in msg
    assert isinstance(exc.value, OSError) and exc.value.errno == 28
    assert not any(p.is_file() for p in out.rglob("*")) and _stray(private_tmp) == []
    assert _same_state(model, before)


def test_full_disk_in_the_cli_exits_2_without_a_record(tmp_path, private_tmp, monkeypatch):
    import compress.api

    monkeypatch.setattr(compress.api, "export_onnx", lambda m, x, path, *a, **k: (_ for _ in ()).throw(_enospc(path)))
    out = tmp_path / "out"
    text = _refused(*_RUN, "--data", "digits", "--out", str(out))
    assert "DiskFullError: the disk is full while writing" in text and "write elsewhere (out_dir / --out" in text
    assert not (out / "run_args.json").exists() and not any(p.is_file() for p in out.rglob("*"))
    assert _stray(private_tmp) == []


def test_full_disk_writing_the_run_record(tmp_path, monkeypatch):
    import compress.exporters.atomic as atomic

    def full(path, text, *a, **k):
        raise _enospc(path)

    monkeypatch.setattr(atomic, "write_text_atomic", full)
    out = tmp_path / "out"
    text = _refused(*_RUN, "--data", "digits", "--out", str(out))
    assert f"the disk is full while writing {out / 'run_args.json'}" in text
    assert not out.exists()


def test_full_disk_copying_an_artifact_leaves_no_partial_file(tmp_path, monkeypatch):
    import shutil

    from compress import result

    src, dst = tmp_path / "a.onnx", tmp_path / "out" / "student.onnx"
    src.write_bytes(b"x" * 1000)
    dst.parent.mkdir()

    def half(a, b, *k, **kw):
        Path(b).write_bytes(Path(a).read_bytes()[:500])
        raise _enospc(b)

    monkeypatch.setattr(shutil, "copyfile", half)
    with pytest.raises(OSError, match="No space left"):
        result._copy_atomic(src, dst)
    assert list(dst.parent.iterdir()) == []


# training: a BatchNorm1d head and a last batch of one sample


def test_batchnorm1d_head_with_a_last_batch_of_one_trains(private_tmp):
    from torch.utils.data import DataLoader, TensorDataset

    from compress.training import FinetuneSettings, finetune

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = torch.randn(9, 3, 8, 8), torch.arange(9) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert [len(b[0]) for b in loader][-1] == 1  # the hazard: a last batch of one sample
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        net.train()(x[:1])  # what BatchNorm1d does with it in train mode
    before = [p.detach().clone() for p in net.parameters()]
    hist = finetune(net, loader, None, FinetuneSettings(epochs=2, lr=0.01, keep_best=False))
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert _stray(private_tmp) == []


# SIGTERM / SIGINT: the private temp folder is removed, conventional exit codes


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")],
                         ids=["sigterm", "sigint"])
def test_signal_mid_run_removes_the_temp_folder(sig, code, name, tmp_path):
    import time

    systmp = tmp_path / "systmp"
    systmp.mkdir()
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TMPDIR=str(systmp), OMP_NUM_THREADS="1", COLUMNS="1000")
    # the default SIGINT disposition, as in a terminal: a pytest-xdist worker ignores SIGINT, and an
    # ignored signal stays ignored in the processes it starts (slimforge then leaves it ignored too)
    proc = subprocess.Popen([str(SLIMFORGE), *_RUN, "--data", "digits", "--out", str(out), "--config",
                             json.dumps({"epochs": 50})], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.monotonic()
    while not _stray(systmp) and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    assert _stray(systmp), "the run never created its temp folder"
    time.sleep(0.3)  # inside the teacher's measurements
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    out_text = stdout + stderr
    assert proc.returncode == code, out_text
    assert "Traceback" not in out_text and f"interrupted ({name}" in out_text and "temporary files removed" in out_text
    assert _stray(systmp) == [] and list(systmp.rglob("*.onnx")) == []
    ck = out / "checkpoints"
    if not (ck.is_dir() and any(p.name != "run.json" for p in ck.rglob("*") if p.is_file())):
        assert not (out / "run_args.json").exists()  # no checkpoint yet: no record to refuse the next run
