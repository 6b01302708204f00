"""Architecture guard: lower packages never import higher ones.

compress (API, strategies, CLI) -> compress.budgets -> compress.profiling -> compress.exporters
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"exporters": 0, "profiling": 1, "budgets": 2}


def _layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "compress":
        return None
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS[parts[1]]
    return 3  # compress proper (api, registry, strategies, cli, ...)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            out.append((node.lineno, "<relative>"))
    return out


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_lower_layers_never_import_higher(folder):
    own = LAYERS[folder]
    bad = []
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no sources in {folder}/"
    for f in files:
        for line, mod in _imports(f):
            if mod == "<relative>":
                continue
            layer = _layer_of(mod)
            if layer is not None and layer > own:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "layering violated:\n" + "\n".join(bad)


def test_layering_checker_catches_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from compress.api import compress\nimport compress.budgets\n")
    layers = [_layer_of(m) for _, m in _imports(f)]
    assert layers == [3, 2]


def test_import_compress_is_light():
    code = (
        "import sys, compress, compress.budgets, compress.exporters, compress.profiling;"
        "bad=[m for m in ('onnxruntime','compress.strategies','compress.api') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the packages pulled in: {out}"
