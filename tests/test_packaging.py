"""pyproject.toml's package list names every package on disk, so a built wheel holds them all.

The editable install used by ``make install`` finds packages that the list misses, so only a
wheel shows the gap (measured: ``compress.data``, ``compress.evolution``, ``compress.kit`` and
``compress.strategies.eg_nas`` were missing after they became packages).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _on_disk() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir = pyproject["tool"]["setuptools"].get("package-dir", {})
    roots = {"compress": ROOT / "compress", **{name: ROOT / path for name, path in package_dir.items()}}
    found: set[str] = set()
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            if "__pycache__" in rel:
                continue
            found.add(".".join((name, *rel)))
    return found


def test_every_package_on_disk_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = _on_disk()
    missing, stale = sorted(on_disk - listed), sorted(listed - on_disk)
    assert not missing and not stale, (
        f"pyproject.toml [tool.setuptools] packages is out of date: add {missing}, remove {stale}")
