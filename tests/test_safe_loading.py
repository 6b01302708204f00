"""No unsafe deserialisation anywhere: every torch.load passes weights_only=True, no pickle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("compress", "budgets", "profiling", "exporters", "benchmarks") for p in (ROOT / d).rglob("*.py")]


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            yield node


# Files allowed one full unpickling ``torch.load(io.BytesIO(...), weights_only=False)`` of an in-memory payload
# the same program built (never a file, never bytes read from disk), with the reason.
IN_MEMORY_PAYLOADS = {
    "compress/training/parallel.py": "the DDP spawn payload (_pack in the launcher -> _rank_entry in each rank)",
}


def _from_memory(call: ast.Call) -> bool:
    arg = call.args[0] if call.args else None
    return (isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "BytesIO"
            and all(isinstance(a, ast.Name) for a in arg.args))


def test_every_torch_load_is_weights_only():
    offenders, seen = [], 0
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        for call in _torch_load_calls(ast.parse(path.read_text())):
            seen += 1
            ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                     for k in call.keywords) or (rel in IN_MEMORY_PAYLOADS and _from_memory(call))
            if not ok:
                offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert seen > 0, "the scan found no torch.load call at all; is it looking at the right files?"
    assert not offenders, "torch.load without weights_only=True at:\n" + "\n".join(offenders)


def test_the_checker_flags_an_unsafe_load():
    calls = list(_torch_load_calls(ast.parse("import torch\ntorch.load(open('x'))\ntorch.load(p, weights_only=True)\n")))
    flags = [any(k.arg == "weights_only" for k in c.keywords) for c in calls]
    assert flags == [False, True]


def test_no_pickle():
    pattern = re.compile(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", re.M)
    bad = [str(p.relative_to(ROOT)) for p in SOURCES if pattern.search(p.read_text())]
    assert not bad, f"pickle-based (de)serialisation in: {bad}"


def test_the_scan_sees_the_sources():
    assert len(SOURCES) > 30
