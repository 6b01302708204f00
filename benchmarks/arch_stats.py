"""Architecture figures of a checkout, for issue 15's closing note (before and after).

    python benchmarks/arch_stats.py                 # this checkout
    python benchmarks/arch_stats.py /tmp/arch-before  # another one (git worktree add /tmp/arch-before 2b5f55b)
    python benchmarks/arch_stats.py --json          # the same, as JSON

Reads the sources with ``ast`` only (nothing is imported, so any commit can be measured). The
product is ``compress/``, ``budgets/``, ``profiling/`` and ``exporters/`` (the last three are
``compress.budgets``, ``compress.profiling`` and ``compress.exporters``). Figures:

* **function-level own imports**: ``import``/``from ... import`` statements inside a function
  body (at any depth) that import a project module (``compress``, ``compress.*``, the three
  layer packages by either name, or a relative import), one per statement;
* **longest modules**: the ten longest product files, in lines;
* **config fields**: the annotated fields (``ClassVar`` excluded) of every dataclass named
  ``*Config`` under ``compress/strategies/`` and ``compress/evolution/``;
* **error roots**: product exception classes none of whose bases is a product exception class
  (a class is an exception when a base is a built-in exception or a product exception class;
  bases are matched by their last dotted name);
* **layering tests**: the test functions of ``tests/test_layering.py``.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import json
import sys
from pathlib import Path

PRODUCT = ("compress", "budgets", "profiling", "exporters")
OWN_TOP = {"compress", "budgets", "profiling", "exporters"}
BUILTIN_EXCEPTIONS = {n for n, o in vars(builtins).items() if isinstance(o, type) and issubclass(o, BaseException)}


def product_files(root: Path) -> list[Path]:
    return sorted(f for d in PRODUCT for f in (root / d).rglob("*.py"))


def _is_own(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] in OWN_TOP
    return any(a.name.split(".")[0] in OWN_TOP for a in node.names)


def function_level_own_imports(root: Path) -> list[str]:
    """``path:line module`` of every own-module import statement inside a function."""
    out = []
    for f in product_files(root):
        tree = ast.parse(f.read_text())
        seen: set[int] = set()
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in seen and _is_own(node):
                    seen.add(id(node))
                    name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    out.append(f"{f.relative_to(root)}:{node.lineno} {'.' * getattr(node, 'level', 0)}{name or ''}")
    return out


def longest_modules(root: Path, n: int = 10) -> list[tuple[str, int]]:
    sizes = [(str(f.relative_to(root)), len(f.read_text().splitlines())) for f in product_files(root)]
    return sorted(sizes, key=lambda s: (-s[1], s[0]))[:n]


def _is_classvar(annotation: ast.expr) -> bool:
    text = ast.unparse(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


def config_fields(root: Path) -> dict[str, int]:
    """Fields of every config dataclass, inherited ones included (``DARTSTrainConfig(FinetuneConfig)``)."""
    own: dict[str, tuple[str, int, list[str]]] = {}
    for d in ("compress/strategies", "compress/evolution"):
        for f in sorted((root / d).rglob("*.py")) if (root / d).is_dir() else []:
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.ClassDef) and node.name.endswith("Config") and any(
                        "dataclass" in ast.unparse(dec) for dec in node.decorator_list):
                    names = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)
                             and isinstance(s.target, ast.Name) and not _is_classvar(s.annotation)}
                    own[node.name] = (str(f.relative_to(root)), names, [ast.unparse(b).split(".")[-1] for b in node.bases])

    def fields_of(name: str) -> set[str]:  # a field a subclass re-declares (a new default) counts once
        _, names, bases = own[name]
        return names.union(*(fields_of(b) for b in bases if b in own))

    return {f"{name} ({path})": len(fields_of(name)) for name, (path, _, _) in own.items()}


def error_roots(root: Path) -> list[str]:
    classes: dict[str, tuple[str, list[str]]] = {}
    for f in product_files(root):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b).split(".")[-1] for b in node.bases]
                classes.setdefault(node.name, (str(f.relative_to(root)), bases))
    exceptions: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, (_, bases) in classes.items():
            if name not in exceptions and any(b in BUILTIN_EXCEPTIONS or b in exceptions for b in bases) and not any(
                    b.endswith("Warning") for b in bases):  # a warning category is no error
                exceptions.add(name)
                changed = True
    roots = []
    for name in sorted(exceptions):
        path, bases = classes[name]
        if not any(b in exceptions for b in bases):
            roots.append(f"{name}({', '.join(bases)}) in {path}")
    return roots


def layering_tests(root: Path) -> list[str]:
    path = root / "tests" / "test_layering.py"
    if not path.is_file():
        return []
    return [n.name for n in ast.parse(path.read_text()).body
            if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


def stats(root: Path) -> dict:
    imports = function_level_own_imports(root)
    return {
        "root": str(root),
        "function_level_own_imports": len(imports),
        "function_level_own_imports_at": imports,
        "longest_modules": longest_modules(root),
        "config_fields": config_fields(root),
        "error_roots": error_roots(root),
        "layering_tests": layering_tests(root),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--list-imports", action="store_true", help="also list every function-level own import")
    args = ap.parse_args(argv)
    s = stats(Path(args.root).resolve())
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"# {s['root']}")
    print(f"function-level imports of own modules: {s['function_level_own_imports']}")
    if args.list_imports:
        print("\n".join(f"  {i}" for i in s["function_level_own_imports_at"]))
    print("longest product modules (lines):")
    print("\n".join(f"  {n:5d}  {p}" for p, n in s["longest_modules"]))
    print("strategy config fields:")
    print("\n".join(f"  {n:3d}  {c}" for c, n in s["config_fields"].items()))
    print(f"error roots ({len(s['error_roots'])}):")
    print("\n".join(f"  {r}" for r in s["error_roots"]))
    print(f"tests/test_layering.py tests ({len(s['layering_tests'])}):")
    print("\n".join(f"  {t}" for t in s["layering_tests"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
