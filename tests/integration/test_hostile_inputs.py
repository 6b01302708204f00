"""slimforge against hostile input (issue 16). Every case asserts our error type (API) or exit code 2
(CLI, no traceback), a message that says what to do, nothing half-written in the folders involved and
no stray ``slimforge-*`` temp files. Sections follow the issue's classes."""

from __future__ import annotations

import json
import os
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
