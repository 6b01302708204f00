"""The CI gate against hostile input: every broken baseline, tolerance or option exits 2 (never 1,
which CI reads as "regression", and never 0), with a message that says what to do, no traceback,
and nothing written. Nothing here depends on timing: every bad input is refused before measuring."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_gate import tiny_onnx  # noqa: F401  (fixture: two tiny ONNX classifiers)
from typer.testing import CliRunner

from compress.cli import app
from compress.errors import ConfigError
from compress.gate import BASELINE_SCHEMA, compare, parse_tolerance, validate_baseline, write_baseline

runner = CliRunner()
NAN, INF = float("nan"), float("inf")


def _gate(*args: str):
    return runner.invoke(app, ["gate", *args], env={"COLUMNS": "1000"})


def _text(res) -> str:
    return " ".join(res.output.split())


def _snapshot(*dirs: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() if p.is_file() else b"<dir>" for d in dirs for p in sorted(d.rglob("*"))}


def _assert_refused(res, *fragments: str) -> str:
    """Exit 2, the fix named (``--update-baseline`` unless other fragments are given), no traceback."""
    text = _text(res)
    assert res.exit_code == 2, text
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert "error" in text
    for f in fragments or ("--update-baseline",):
        assert f in text, f"{f!r} not in: {text}"
    return text


@pytest.fixture(scope="module")
def good(tiny_onnx, tmp_path_factory):  # noqa: F811
    """A valid baseline of the small tiny model, written by the gate itself."""
    small, _ = tiny_onnx
    path = tmp_path_factory.mktemp("good") / "baseline.json"
    res = _gate("--model", str(small), "--baseline", str(path), "--update-baseline", "--repeats", "5")
    assert res.exit_code == 0, res.output
    return json.loads(path.read_text())


def _with(path: tuple, value):
    def edit(d):
        *parents, last = path
        for k in parents:
            d = d[k]
        if value is _DROP:
            del d[last]
        else:
            d[last] = value
    return edit


_DROP = object()


def _json(edit):
    def build(good: dict) -> bytes:
        d = copy.deepcopy(good)
        edit(d)
        return json.dumps(d).encode()  # NaN / Infinity tokens as Python's json writes them
    return build


def _all_nan(d):
    d["macs"] = d["params"] = NAN
    d["latency_ms"]["median"] = d["latency_ms"]["p90"] = d["latency_ms"]["iqr"] = NAN


BAD_BASELINES = {
    # NaN and infinities: json.loads accepts them, the gate must not (NaN compares False with everything)
    "nan-macs": (_json(_with(("macs",), NAN)), ["`macs`: nan"]),
    "nan-params": (_json(_with(("params",), NAN)), ["`params`: nan"]),
    "nan-latency": (_json(_with(("latency_ms", "median"), NAN)), ["`latency_ms.median`: nan"]),
    "nan-everything": (_json(_all_nan), ["5 problems", "`macs`", "`params`", "`latency_ms.median`"]),
    "inf-macs": (_json(_with(("macs",), INF)), ["`macs`: inf"]),
    "minus-inf-iqr": (_json(_with(("latency_ms", "iqr"), -INF)), ["`latency_ms.iqr`: -inf"]),
    "overflow-1e999": (lambda g: json.dumps(g).replace(f'"params": {g["params"]}', '"params": 1e999').encode(),
                       ["`params`: inf"]),
    "nan-in-extra-key": (_json(_with(("comment",), NAN)), ["`comment`: nan"]),
    "nan-accuracy": (_json(_with(("accuracy",), NAN)), ["`accuracy`: nan"]),
    # missing keys
    "missing-macs": (_json(_with(("macs",), _DROP)), ["`macs`: missing"]),
    "missing-params": (_json(_with(("params",), _DROP)), ["`params`: missing"]),
    "missing-latency": (_json(_with(("latency_ms",), _DROP)), ["`latency_ms`: missing"]),
    "missing-target": (_json(_with(("target",), _DROP)), ["`target`: missing"]),
    "missing-format": (_json(_with(("format",), _DROP)), ["`format`: missing"]),
    "missing-median": (_json(_with(("latency_ms", "median"), _DROP)), ["`latency_ms.median`: missing"]),
    "missing-threads": (_json(_with(("target", "intra_op_threads"), _DROP)), ["`target.intra_op_threads`: missing"]),
    "empty-object": (lambda g: b"{}", ["problems", "`macs`: missing", "`target`: missing"]),
    # wrong types and ranges (strict: no coercion)
    "macs-as-string": (_json(_with(("macs",), "41000000")), ["`macs`", "'41000000'"]),
    "params-as-bool": (_json(_with(("params",), True)), ["`params`", "True"]),
    "repeats-as-float": (_json(_with(("latency_ms", "repeats"), 1.5)), ["`latency_ms.repeats`"]),
    "latency-as-number": (_json(_with(("latency_ms",), 3.0)), ["`latency_ms`"]),
    "target-as-list": (_json(_with(("target",), ["cpu-1t"])), ["`target`"]),
    "threads-as-string": (_json(_with(("target", "intra_op_threads"), "1")), ["`target.intra_op_threads`"]),
    "accuracy-as-string": (_json(_with(("accuracy",), "0.9")), ["`accuracy`"]),
    "accuracy-above-1": (_json(_with(("accuracy",), 1.5)), ["`accuracy`"]),
    "negative-macs": (_json(_with(("macs",), -1)), ["`macs`"]),
    "foreign-format": (_json(_with(("format",), "someone-else/1")), ["`format`"]),
    "bad-sha256": (_json(_with(("sha256",), 123)), ["`sha256`"]),
    "unknown-schema": (_json(_with(("schema",), "gate/2")), ["`schema`"]),
    "newer-schema": (_json(_with(("schema",), "slimforge-gate-baseline/3")), ["newer", "upgrade slimforge"]),
    # not an object at the top level
    "list-top-level": (lambda g: json.dumps([g]).encode(), ["JSON list at the top level"]),
    "string-top-level": (lambda g: b'"baseline"', ["JSON string at the top level"]),
    "null-top-level": (lambda g: b"null", ["JSON null at the top level"]),
    # not UTF-8 JSON text
    "utf16-bom": (lambda g: json.dumps(g).encode("utf-16"), ["UTF-16", "iconv"]),
    "utf16le-no-bom": (lambda g: json.dumps(g).encode("utf-16-le"), ["UTF-16"]),
    "utf32": (lambda g: json.dumps(g).encode("utf-32"), ["UTF-32"]),
    "latin1": (lambda g: json.dumps({**g, "model": "modèle.onnx"}, ensure_ascii=False).encode("latin-1"),
               ["not UTF-8", "0xe8"]),
    "empty-file": (lambda g: b"", ["is empty"]),
    "whitespace-only": (lambda g: b" \n\t\n", ["is empty"]),
    "not-json": (lambda g: b"macs = 1000\n", ["not valid JSON", "line 1"]),
    "truncated-json": (lambda g: json.dumps(g).encode()[:40], ["not valid JSON"]),
    "trailing-comma": (lambda g: json.dumps(g).encode()[:-1] + b",}", ["not valid JSON"]),
    "deeply-nested": (lambda g: b"[" * 200_000, ["nested too deeply"]),
}


@pytest.mark.parametrize("case", list(BAD_BASELINES))
def test_bad_baseline_exits_2_with_the_fix_and_writes_nothing(case, good, tiny_onnx, tmp_path):  # noqa: F811
    build, fragments = BAD_BASELINES[case]
    small, big = tiny_onnx
    base = tmp_path / "baseline.json"
    base.write_bytes(build(good))
    before = _snapshot(tmp_path, small.parent)
    # the NaN attack of issue 16 gated a model with more MACs: a fooled gate would exit 0 or 1
    res = _gate("--model", str(big), "--baseline", str(base), "--json")
    _assert_refused(res, "--update-baseline", *fragments)
    assert res.stdout.strip() == ""  # no JSON result on stdout for a refused comparison
    assert _snapshot(tmp_path, small.parent) == before


def test_the_onnx_file_given_as_baseline_is_named(tiny_onnx, tmp_path):  # noqa: F811
    small, _ = tiny_onnx
    before = _snapshot(small.parent)
    res = _gate("--model", str(small), "--baseline", str(small))
    _assert_refused(res, "binary data", "--reference", "--update-baseline")
    assert _snapshot(small.parent) == before


def test_a_folder_or_missing_file_as_baseline(tiny_onnx, tmp_path):  # noqa: F811
    small, _ = tiny_onnx
    _assert_refused(_gate("--model", str(small), "--baseline", str(tmp_path)), "is not a file")
    _assert_refused(_gate("--model", str(small), "--baseline", str(tmp_path / "none.json")), "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_markup_like_paths_do_not_break_the_message(good, tiny_onnx, tmp_path):  # noqa: F811
    """A path holding ``[/b]`` would be a rich markup error (a traceback) if printed as markup."""
    small, _ = tiny_onnx
    d = tmp_path / "[" / "b]"
    d.mkdir(parents=True)
    base = d / "baseline.json"
    base.write_text(json.dumps({**good, "macs": NAN}))
    text = _assert_refused(_gate("--model", str(small), "--baseline", str(base)), "`macs`")
    assert "[/b]" in text


def test_nan_baseline_through_the_installed_command(good, tiny_onnx, tmp_path):  # noqa: F811
    """The issue's attack end to end, in a real process: exit 2, the fix on stderr, no traceback."""
    small, big = tiny_onnx
    base = tmp_path / "baseline.json"
    d = copy.deepcopy(good)
    _all_nan(d)
    base.write_text(json.dumps(d))
    before = _snapshot(tmp_path)
    exe = Path(sys.executable).with_name("slimforge")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "compress"]
    proc = subprocess.run([*cmd, "gate", "--model", str(big), "--baseline", str(base)], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "1000"}, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    err = " ".join(proc.stderr.split())
    assert "`macs`: nan" in err and "--update-baseline" in err
    assert _snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------ accepted

def test_old_baseline_without_schema_is_read_as_version_1(good, tiny_onnx, tmp_path):  # noqa: F811
    small, _ = tiny_onnx
    old = {k: v for k, v in good.items() if k not in ("schema", "slimforge_version")}
    base = tmp_path / "v1.json"
    base.write_text(json.dumps(old))
    res = _gate("--model", str(small), "--baseline", str(base), "--json", "--repeats", "5")
    assert res.exit_code == 0, res.output
    assert any("read as schema 1" in n for n in json.loads(res.stdout)["notes"])
    assert json.loads(base.read_text()) == old  # read, never rewritten


def test_utf8_with_bom_is_accepted(good, tiny_onnx, tmp_path):  # noqa: F811
    small, _ = tiny_onnx
    base = tmp_path / "bom.json"
    base.write_bytes(json.dumps(good).encode("utf-8-sig"))
    assert _gate("--model", str(small), "--baseline", str(base), "--repeats", "5").exit_code == 0


# ----------------------------------------------------------------------------------- tolerance

@pytest.mark.parametrize(("text", "value"), [
    ("5%", 0.05), ("0.05", 0.05), (" 7.5 % ", 0.075), ("0", 0.0), ("0%", 0.0), ("0.999", 0.999),
    ("150%", 1.5), ("1000%", 10.0), ("5e-2", 0.05), (0.05, 0.05),
])
def test_tolerance_accepts_percent_or_fraction(text, value):
    assert math.isclose(parse_tolerance(text), value)


@pytest.mark.parametrize(("text", "hint"), [
    ("5", "'5%'"), ("1", "'1%'"), ("1.0", "'1%'"), ("50", "'50%'"), (5, "'5%'"),
    ("nan", "finite"), ("inf", "finite"), ("-inf%", "finite"), ("-1%", "between 0% and 1000%"),
    ("-0.1", "between 0% and 1000%"), ("1001%", "between 0% and 1000%"),
    ("five", "'5%' or 0.05"), ("", "'5%' or 0.05"), ("%", "'5%' or 0.05"), ("5%%", "'5%' or 0.05"),
    (True, "'5%' or 0.05"),
])
def test_tolerance_refuses_ambiguous_or_bad_values(text, hint):
    with pytest.raises(ConfigError, match="tolerance") as info:
        parse_tolerance(text)
    assert hint in str(info.value)


def test_bare_tolerance_5_exits_2_before_measuring_or_writing(tiny_onnx, tmp_path):  # noqa: F811
    small, _ = tiny_onnx
    base = tmp_path / "b.json"
    res = _gate("--model", str(small), "--baseline", str(base), "--update-baseline", "--tolerance", "5")
    _assert_refused(res, "'5%'", "500%")
    assert not base.exists()


def test_tolerance_forms_pass_the_cli(good, tiny_onnx, tmp_path):  # noqa: F811
    small, _ = tiny_onnx
    base = tmp_path / "b.json"
    base.write_text(json.dumps(good))
    for tol in ("5%", "0.05"):
        res = _gate("--model", str(small), "--baseline", str(base), "--tolerance", tol, "--repeats", "5", "--json")
        assert res.exit_code == 0, res.output
        assert {r["metric"]: r for r in json.loads(res.stdout)["rows"]}["macs"]["limit"] == "+5.0%"


# ------------------------------------------------------------------------------ other options

@pytest.mark.parametrize(("args", "fragment"), [
    (["--max-latency-ms", "nan"], "--max-latency-ms"),
    (["--max-latency-ms", "-1"], "--max-latency-ms"),
    (["--max-accuracy-drop", "nan"], "--max-accuracy-drop"),
    (["--max-accuracy-drop", "-1"], "--max-accuracy-drop"),
    (["--repeats", "0"], "--repeats"),
    (["--reference", "SMALL", "--rounds", "1"], "--rounds"),
    (["--target", "cpu-1"], "cpu-1t"),
    (["--target", "cpu-2t"], "--update-baseline"),  # another target than the baseline's
    (["--data", "MISSING.npz"], "--data"),
    (["--data", "DATA.npz", "--mean", "abc", "--std", "1,1,1"], "ValueError"),
])
def test_bad_options_exit_2(args, fragment, good, tiny_onnx, tmp_path):  # noqa: F811
    small, _ = tiny_onnx
    base = tmp_path / "b.json"
    base.write_text(json.dumps(good))
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8, 3), dtype=np.uint8), y=np.zeros(4, dtype=np.uint8))
    subst = {"SMALL": str(small), "MISSING.npz": str(tmp_path / "none.npz"), "DATA.npz": str(tmp_path / "d.npz")}
    before = _snapshot(tmp_path)
    res = _gate("--model", str(small), "--baseline", str(base), "--repeats", "5", *[subst.get(a, a) for a in args])
    _assert_refused(res, fragment)
    assert _snapshot(tmp_path) == before


def test_a_text_file_as_model_exits_2(good, tmp_path):
    base = tmp_path / "b.json"
    base.write_text(json.dumps(good))
    fake = tmp_path / "student.onnx"
    fake.write_text("not a model")
    _assert_refused(_gate("--model", str(fake), "--baseline", str(base)), "CostError")
    _assert_refused(_gate("--model", str(fake), "--baseline", str(tmp_path / "new.json"), "--update-baseline"),
                    "CostError")
    assert not (tmp_path / "new.json").exists()


# ------------------------------------------------------------------------------------------ API

def test_api_refuses_nan_baselines_and_limits(good):
    bad = {**good, "macs": NAN}
    with pytest.raises(ConfigError, match="`macs`: nan"):
        compare(bad, good)
    with pytest.raises(ConfigError, match="`macs`: nan"):
        validate_baseline(bad)
    for kwargs in ({"tolerance": NAN}, {"tolerance": -0.1}, {"max_latency_ms": NAN}, {"max_accuracy_drop_pts": INF}):
        with pytest.raises(ConfigError):
            compare(good, good, **kwargs)
    assert compare(good, good).ok


def test_write_baseline_refuses_a_nan_measurement(good, tmp_path):
    with pytest.raises(ConfigError, match="`latency_ms.median`"):
        write_baseline(tmp_path / "b.json", {**good, "latency_ms": {**good["latency_ms"], "median": NAN}})
    assert list(tmp_path.iterdir()) == []
    written = json.loads(write_baseline(tmp_path / "b.json", good).read_text())
    assert written["schema"] == BASELINE_SCHEMA
