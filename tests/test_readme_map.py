"""The README's architecture map matches the tree (issue 15, "what it must show" 3).

The map is the first fenced block after the ``## Architecture`` heading of README.md. Its path
column (each line's text before the first run of two spaces) names files and folders, several per
line separated by ``", "``; a line indented by two more spaces than a folder's line lists that
folder's contents. Lines indented by 8 or more spaces continue the description above and name no
path. The comparison runs both ways at the map's depth:

* every path in the map exists;
* the top level lists every product package (a folder of the repository root with an
  ``__init__.py``, except ``tests``, ``benchmarks`` and ``docs``), and every folder whose contents
  the map lists shows all of its modules (``*.py`` but ``__init__.py``/``__main__.py``) and
  packages (subfolders with an ``__init__.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOT_PRODUCT = {"tests", "benchmarks", "docs"}
CONTINUATION_INDENT = 8
_PATH = re.compile(r"^[A-Za-z_][\w.-]*/?$")


def map_block(text: str) -> list[str]:
    """The lines of the first fenced block after ``## Architecture``."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "## Architecture")
        fence = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
        end = next(i for i in range(fence + 1, len(lines)) if lines[i].startswith("```"))
    except StopIteration as exc:
        raise AssertionError("README.md has no fenced block after a '## Architecture' heading") from exc
    return lines[fence + 1:end]


def parse_map(lines: list[str]) -> dict[str, set[str] | None]:
    """``{folder or file path: the names listed inside it (folders only; None if none listed)}``,
    paths relative to the repository root; folders end with ``/``."""
    entries: dict[str, set[str] | None] = {}
    stack: list[tuple[int, str]] = []  # (indent, folder path)
    for raw in lines:
        indent = len(raw) - len(raw.lstrip(" "))
        body = raw.strip()
        if not body or indent >= CONTINUATION_INDENT:
            continue
        column = re.split(r"\s{2,}", body, maxsplit=1)[0]
        names = [n.strip() for n in column.split(",") if n.strip()]
        bad = [n for n in names if not _PATH.match(n)]
        assert not bad, f"README map line {raw!r}: {bad} do not read as file or folder names"
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        for name in names:
            path = parent + name
            entries[path] = entries.get(path) if name.endswith("/") else None
            if parent:
                entries[parent] = (entries[parent] or set()) | {name}
        if len(names) == 1 and names[0].endswith("/"):
            stack.append((indent, parent + names[0]))
    return entries


def _is_package(path: Path) -> bool:
    return path.is_dir() and (path / "__init__.py").is_file()


def on_disk(folder: str, root: Path = ROOT) -> set[str]:
    """What a folder of the map must list: its modules and packages (the root: its product packages)."""
    base = root / folder
    if not folder:
        return {p.name + "/" for p in base.iterdir() if _is_package(p) and p.name not in NOT_PRODUCT}
    modules = {p.name for p in base.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    return modules | {p.name + "/" for p in base.iterdir() if _is_package(p)}


def differences(entries: dict[str, set[str] | None], root: Path = ROOT) -> list[str]:
    problems = [f"in the map, not on disk: {path}" for path in sorted(entries)
                if not ((root / path).is_dir() if path.endswith("/") else (root / path).is_file())]
    top = {path for path in entries if path.count("/") <= 1 and (path.endswith("/") or "/" not in path)}
    listed: dict[str, set[str]] = {"": top}
    listed.update({path: names for path, names in entries.items() if names})
    for folder, names in sorted(listed.items()):
        if folder and not (root / folder).is_dir():
            continue
        for missing in sorted(on_disk(folder, root) - names):
            problems.append(f"on disk, not in the map: {folder}{missing}")
    return problems


def test_the_readme_map_matches_the_tree():
    entries = parse_map(map_block(README.read_text()))
    assert entries, "README.md's architecture map names no path"
    problems = differences(entries)
    assert not problems, "README.md's architecture map and the tree differ:\n  " + "\n  ".join(problems)


def test_the_map_parser_and_comparison(tmp_path):
    for folder in ("pkg/sub", "other", "tests", "plain"):
        (tmp_path / folder).mkdir(parents=True)
    for f in ("pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/__main__.py", "pkg/sub/__init__.py",
              "pkg/sub/x.py", "other/__init__.py", "tests/__init__.py"):
        (tmp_path / f).write_text("")
    text = "\n".join([
        "# t", "## Architecture", "", "```",
        "pkg/                the package",
        "  a.py, sub/        two entries on one line",
        "                    a continuation line, naming c.py in passing",
        "  gone.py           listed, not on disk",
        "other/  -> elsewhere",
        "```", "text after",
    ])
    entries = parse_map(map_block(text))
    assert entries == {"pkg/": {"a.py", "sub/", "gone.py"}, "pkg/a.py": None, "pkg/sub/": None,
                       "pkg/gone.py": None, "other/": None}
    assert differences(entries, tmp_path) == ["in the map, not on disk: pkg/gone.py",
                                              "on disk, not in the map: pkg/b.py"]
