"""Architecture guard: lower packages never import higher ones.

compress (API, strategies, CLI) -> compress.budgets -> compress.profiling -> compress.exporters

Layers: exporters (0) < profiling (1) < budgets (2) < compress proper (3); a module may import its
own layer and lower ones. Two exceptions: ``compress._error_root``, the leaf that defines
``SlimforgeError`` (the root of every layer's errors), and ``compress._lazy``, the lazy attributes of
every package ``__init__``, may be imported from every layer. They can be, because they import
nothing of the project (``test_error_root_is_a_leaf``, ``test_lazy_attributes_are_a_leaf``) and
importing them runs only the lazy ``compress/__init__.py``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"exporters": 0, "profiling": 1, "budgets": 2}
#: modules of compress proper that every layer may import (leaves that import nothing)
SHARED_LEAVES = {"compress._error_root", "compress._lazy"}


def _layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "compress" or module in SHARED_LEAVES:
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
    f.write_text("from compress._error_root import SlimforgeError\nfrom compress import _error_root\n")
    assert [_layer_of(m) for _, m in _imports(f)] == [None, 3]  # only the dotted form names the leaf


def test_lazy_attributes_are_a_leaf():
    """``compress._lazy`` imports only the standard library's importlib, so any layer may use it."""
    mods = [m for _, m in _imports(ROOT / "compress" / "_lazy.py")]
    assert mods == ["importlib"], f"compress/_lazy.py must import only importlib, imports {mods}"


def test_error_root_is_a_leaf():
    """``compress._error_root`` imports nothing (not even the standard library), so any layer may use it."""
    path = ROOT / "compress" / "_error_root.py"
    mods = [m for _, m in _imports(path)]
    assert mods == [], f"compress/_error_root.py must import nothing, imports {mods}"


def test_import_compress_is_light():
    code = (
        "import sys, compress, compress.budgets, compress.exporters, compress.profiling;"
        "bad=[m for m in ('onnxruntime','compress.strategies','compress.api') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the packages pulled in: {out}"


# ---------------------------------------------------------------- inside compress (issue 15, part 8)
#
# The graph below is the project's module-level import graph: every module of compress/, budgets/,
# profiling/ and exporters/ (the last three are compress.budgets, compress.profiling and
# compress.exporters) and the imports that run when it is imported: those at the top level and in
# class bodies (through if/try/with), not those inside functions nor under ``if TYPE_CHECKING:``.
# Importing ``a.b.c`` is an edge to ``a.b.c`` and to the packages ``a.b`` and ``a`` that Python
# initialises first, except the importer's own packages, which are initialising already (so a
# package's ``__init__`` may import its own submodules, as compress/strategies/__init__.py does).

PACKAGES = {"compress": "compress", "budgets": "compress.budgets", "profiling": "compress.profiling",
            "exporters": "compress.exporters"}


def _project_modules(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for folder, package in PACKAGES.items():
        for f in sorted((root / folder).rglob("*.py")):
            parts = list(f.relative_to(root / folder).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            out[".".join([package, *(parts[:-1] if is_pkg else parts)])] = (f, is_pkg)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run on import: top level and class bodies; not in functions nor under TYPE_CHECKING."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, (ast.ClassDef, ast.With)):
                visit(node.body)

    visit(tree.body)
    return out


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import that can run: module level and inside functions, not under TYPE_CHECKING."""
    skip = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
            for stmt in block.body for n in ast.walk(stmt)}
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip]


def _imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool,
                      modules: dict[str, tuple[Path, bool]]) -> set[str]:
    """The project modules ``node`` (in ``module``) names: ``from a import b`` names ``a.b`` when
    that is a module, else ``a``; a dotted name not a module names its longest module prefix."""

    def longest(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) or None

    if isinstance(node, ast.Import):
        found = {longest(a.name) for a in node.names}
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".") if is_pkg else module.split(".")[:-1]
            base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
        found = {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else longest(base) for a in node.names}
    return {m for m in found if m}


def _graph(modules: dict[str, tuple[Path, bool]], imports=_module_level_imports) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, (path, is_pkg) in modules.items():
        edges: set[str] = set()
        for node in imports(ast.parse(path.read_text())):
            for target in _imported_modules(node, module, is_pkg, modules):
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # the target and the packages initialised before it
                    name = ".".join(parts[:i])
                    own_package = module.startswith(name + ".") or (is_pkg and module == name)
                    if name in modules and not own_package:
                        edges.add(name)
        edges.discard(module)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative), each given as one
    cycle through its modules, for the failure message."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    components.append(component)
    return [_a_cycle(c, graph) for c in components]


def _a_cycle(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    first = min(component)
    paths = {w: [first, w] for w in sorted(graph[first] & component)}
    queue = list(paths)
    while first not in paths:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return paths[first]


def test_no_module_level_import_cycle():
    cycles = _cycles(_graph(_project_modules()))
    assert not cycles, "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_checker_finds_a_cycle_and_ignores_function_and_type_checking_imports(tmp_path):
    (tmp_path / "compress" / "sub").mkdir(parents=True)
    for folder in ("budgets", "profiling", "exporters"):
        (tmp_path / folder).mkdir()
    files = {
        "compress/__init__.py": "",
        "compress/a.py": "from compress.b import x\n",
        "compress/b.py": "import compress.c\nclass K:\n    from compress import a\n",
        "compress/c.py": "def f():\n    import compress.a\nif TYPE_CHECKING:\n    import compress.a\n",
        "compress/sub/__init__.py": "from compress.sub import leaf\n",
        "compress/sub/leaf.py": "from compress.sub import other\n",
        "compress/sub/other.py": "",
        "compress/d.py": "from compress.sub.other import y\n",
        "compress/e.py": "from .d import z\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    modules = _project_modules(tmp_path)
    graph = _graph(modules)
    assert graph["compress.d"] == {"compress.sub", "compress.sub.other"}  # and the package run before it
    assert graph["compress.e"] == {"compress.d"}  # relative import; its own package is not an edge
    assert graph["compress.c"] == set()  # in a function, under TYPE_CHECKING: not at import time
    assert _cycles(graph) == [["compress.a", "compress.b", "compress.a"]]  # the package __init__ is no cycle
    assert _graph(modules, _runtime_imports)["compress.c"] == {"compress.a"}  # the function's import only


def test_registry_is_a_leaf():
    """compress/registry.py imports nothing of the project but compress.errors, even inside its
    functions (only ``if TYPE_CHECKING:`` imports, for annotations, are allowed)."""
    modules = _project_modules()
    path, is_pkg = modules["compress.registry"]
    imported = set()
    for node in _runtime_imports(ast.parse(path.read_text())):
        imported |= _imported_modules(node, "compress.registry", is_pkg, modules)
    assert imported <= {"compress", "compress.errors"}, f"compress/registry.py imports {sorted(imported)}"


FORBIDDEN_IN_STRATEGIES = ("compress.api", "compress.result", "compress.serialization")


def test_strategies_never_import_the_api_result_or_serialization():
    """Strategies sit below the API: they never import compress.api, compress.result or
    compress.serialization, at any level (functions and TYPE_CHECKING blocks included)."""
    modules = _project_modules()
    bad = []
    for module, (path, is_pkg) in sorted(modules.items()):
        if not module.startswith("compress.strategies"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                hit = sorted(_imported_modules(node, module, is_pkg, modules) & set(FORBIDDEN_IN_STRATEGIES))
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {m}" for m in hit]
    assert not bad, "strategies import modules above them:\n" + "\n".join(bad)


def _imports_matching(package: str, forbidden: tuple[str, ...], allowed: frozenset[str] = frozenset()) -> list[str]:
    """``path:line imports module`` for every import (at any level, TYPE_CHECKING blocks included) in
    the modules of ``package`` of a project module equal to or under one of ``forbidden``, except
    the modules in ``allowed``."""
    modules = _project_modules()
    bad = []
    for module, (path, is_pkg) in sorted(modules.items()):
        if module != package and not module.startswith(package + "."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in sorted(_imported_modules(node, module, is_pkg, modules) - allowed):
                    if any(target == f or target.startswith(f + ".") for f in forbidden):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
    return bad


#: the one module of compress.strategies the evolution may import: the generic check of a config
#: dataclass's fields (it imports only compress.errors); everything else of the strategies is above
#: the evolution (gp-prune imports compress.evolution.metrics, never the reverse)
EVOLUTION_MAY_IMPORT = frozenset({"compress.strategies._parts.config_fields"})


def test_evolution_never_imports_the_strategies_api_or_cli():
    """compress.evolution (GP evolution of pruning metrics) sits below the gp-prune strategy and the
    API: it never imports compress.strategies (but its config-field check), compress.api, compress.cli."""
    assert (ROOT / "compress" / "evolution" / "__init__.py").exists()
    bad = _imports_matching("compress.evolution", ("compress.strategies", "compress.api", "compress.cli"),
                            EVOLUTION_MAY_IMPORT)
    assert not bad, "compress.evolution imports modules above it:\n" + "\n".join(bad)


def test_kit_never_imports_the_api_cli_result_or_serialization():
    """The plug-in kit (compress.kit) is what out-of-tree strategies import; like the strategies it
    sits below compress.api, compress.cli, compress.result and compress.serialization."""
    assert (ROOT / "compress" / "kit" / "__init__.py").exists()
    bad = _imports_matching("compress.kit", ("compress.api", "compress.cli", "compress.result",
                                             "compress.serialization"))
    assert not bad, "compress.kit imports modules above it:\n" + "\n".join(bad)


def test_import_checker_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The matcher used by the two tests above: prefixes match whole module names, allowed ones pass."""
    for folder in ("budgets", "profiling", "exporters"):
        (tmp_path / folder).mkdir()
    (tmp_path / "compress" / "evolution").mkdir(parents=True)
    (tmp_path / "compress" / "strategies" / "_parts").mkdir(parents=True)
    files = {
        "compress/__init__.py": "", "compress/api.py": "", "compress/apix.py": "",
        "compress/strategies/__init__.py": "", "compress/strategies/_parts/__init__.py": "",
        "compress/strategies/_parts/config_fields.py": "", "compress/strategies/base.py": "",
        "compress/evolution/__init__.py": "",
        "compress/evolution/a.py": ("from compress.strategies._parts.config_fields import check_fields\n"
                                    "import compress.apix\n"
                                    "def f():\n    from compress.strategies.base import Strategy\n"),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "_project_modules", lambda root=tmp_path: _PROJECT_MODULES(root))
    bad = _imports_matching("compress.evolution", ("compress.strategies", "compress.api"), EVOLUTION_MAY_IMPORT)
    assert bad == ["compress/evolution/a.py:4 imports compress.strategies.base"]


_PROJECT_MODULES = _project_modules


# ---------------------------------------------------------------- the CLI package (issue 15, part 4)

#: the modules that may import compress.cli: its own, and ``python -m compress``
CLI_IMPORTERS = ("compress.cli", "compress.__main__")


def _cli_importers() -> list[str]:
    """``path:line imports module`` for every import of compress.cli or one of its modules (at any
    level) in a product module outside :data:`CLI_IMPORTERS`."""
    modules = _project_modules()
    bad = []
    for module, (path, is_pkg) in sorted(modules.items()):
        if any(module == m or module.startswith(m + ".") for m in CLI_IMPORTERS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in sorted(_imported_modules(node, module, is_pkg, modules)):
                    if target == "compress.cli" or target.startswith("compress.cli."):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
    return bad


def test_nothing_imports_the_cli():
    """The CLI (the package compress.cli) is the top of the project: no product module imports it,
    but its own modules and compress/__main__.py."""
    assert (ROOT / "compress" / "cli" / "__init__.py").exists()
    bad = _cli_importers()
    assert not bad, "modules import the CLI:\n" + "\n".join(bad)


def test_the_cli_rules_cover_the_modules_of_the_cli_package(tmp_path, monkeypatch):
    """The rules that name compress.cli (the two above, and the evolution's and the kit's) catch an
    import of any module of the package, at any level."""
    for folder in ("budgets", "profiling", "exporters"):
        (tmp_path / folder).mkdir()
    for package in ("cli", "kit", "evolution"):
        (tmp_path / "compress" / package).mkdir(parents=True)
    files = {
        "compress/__init__.py": "", "compress/__main__.py": "from compress.cli import main\n",
        "compress/cli/__init__.py": "from compress.cli.app import app\n", "compress/cli/app.py": "",
        "compress/cli/options.py": "from compress.cli import app\n",
        "compress/kit/__init__.py": "", "compress/kit/a.py": "from compress.cli.app import app\n",
        "compress/evolution/__init__.py": "", "compress/evolution/b.py": "def f():\n    from compress.cli import options\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "_project_modules", lambda root=tmp_path: _PROJECT_MODULES(root))
    assert _cli_importers() == ["compress/evolution/b.py:2 imports compress.cli.options",
                                "compress/kit/a.py:1 imports compress.cli.app"]
    assert _imports_matching("compress.kit", ("compress.api", "compress.cli")) == [
        "compress/kit/a.py:1 imports compress.cli.app"]
    assert _imports_matching("compress.evolution", ("compress.strategies", "compress.api", "compress.cli"),
                             EVOLUTION_MAY_IMPORT) == ["compress/evolution/b.py:2 imports compress.cli.options"]


# ---------------------------------------------------------------- function-level imports (issue 15, part 8)
#
# An import of the project's own modules inside a function hides an edge from the graph above. It
# stays only to keep an optional heavy third-party dependency out of its module's import, and says
# which on its line: ``# deferred: <dep>[, <dep>...] (why)``, at least one <dep> from DEFERRABLE
# (a distribution name such as ``torch-pruning`` reads as its module, ``torch_pruning``). The
# comment must be true: the importing module does not load that dependency already (what the
# imported module loads is not checked here: a third-party package may load another, as
# torch_pruning loads timm, which a reading of our sources cannot see). An import that only breaks
# a cycle has no such comment: move the shared code to a lower module instead.

#: third-party dependencies (pyproject.toml) heavy enough to defer: each takes 0.2 s or more to
#: import on one core (measured on a shared 2-core machine): seconds for torch and everything built
#: on it, onnx, onnxscript, matplotlib, scikit-learn and cma; 0.4-2 s for onnxruntime, scipy and ray;
#: 0.2-0.35 s for numpy, pydantic, tqdm and typer (pydantic alone would double the 0.25 s that
#: ``slimforge --help`` takes). Not here, as they take at most 0.1 s: rich, deap, PIL, pyyaml,
#: platformdirs, safetensors.
DEFERRABLE = frozenset({"torch", "torchvision", "timm", "fvcore", "torch_pruning", "lightning_fabric", "onnx",
                        "onnxscript", "onnxruntime", "matplotlib", "sklearn", "scipy", "cma", "ray", "numpy",
                        "pydantic", "tqdm", "typer"})

#: product files whose function-level imports are not checked (none: every one is)
UNCHECKED: frozenset[str] = frozenset()

_DEFERRED = re.compile(r"#\s*deferred:\s*([^(#]*)")
_NAME = re.compile(r"[A-Za-z_][\w.-]*")


def _is_own_import(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] in PACKAGES
    return any(a.name.split(".")[0] in PACKAGES for a in node.names)


def _function_level_own_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports of project modules inside a function (at any depth), as benchmarks/arch_stats.py counts them."""
    found: dict[int, ast.Import | ast.ImportFrom] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and _is_own_import(node):
                    found[id(node)] = node
    return sorted(found.values(), key=lambda n: n.lineno)


def _deferred_deps(lines: list[str], node: ast.stmt) -> list[str] | None:
    """The top-level module names that the ``# deferred:`` comment on the statement's lines starts
    with (comma-separated words, up to the first one that is not a bare name or a parenthesis);
    None without such a comment."""
    for line in lines[node.lineno - 1: node.end_lineno]:
        m = _DEFERRED.search(line)
        if m:
            names = []
            for word in m.group(1).split(","):
                if not _NAME.fullmatch(word.strip()):
                    break
                names.append(word.strip().split(".")[0].replace("-", "_"))
            return names
    return None


def _undeclared_deferrals(source: str) -> list[tuple[int, str]]:
    """``(line, problem)`` for each function-level own import of ``source`` without a
    ``# deferred:`` comment that names a dependency of :data:`DEFERRABLE`."""
    lines = source.splitlines()
    bad = []
    for node in _function_level_own_imports(ast.parse(source)):
        deps = _deferred_deps(lines, node)
        if deps is None:
            bad.append((node.lineno, "no '# deferred: <dep>' comment"))
        elif not DEFERRABLE.intersection(deps):
            bad.append((node.lineno, f"'# deferred: {', '.join(deps)}' names no heavy dependency of DEFERRABLE"))
    return bad


def _third_party(node: ast.Import | ast.ImportFrom) -> set[str]:
    names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
        [node.module] if node.level == 0 and node.module else [])
    return {n.split(".")[0] for n in names} - set(PACKAGES)


def _loaded(module: str, graph: dict[str, set[str]], third: dict[str, set[str]]) -> set[str]:
    """Third-party top-level modules that importing ``module`` loads, as far as our sources say: the
    module-level imports of the module, of its packages, and of every project module they import in turn."""
    parts = module.split(".")
    todo = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen or m not in graph:
            continue
        seen.add(m)
        todo += graph[m]
    return set().union(*(third[m] for m in seen))


def _untrue_deferrals(modules: dict[str, tuple[Path, bool]], root: Path = ROOT) -> list[str]:
    """``path:line defers <dep>, but <module> imports it already`` for each heavy dependency a
    ``# deferred:`` comment names that its module loads at import anyway."""
    graph = _graph(modules)
    third = {m: set().union(*(_third_party(n) for n in _module_level_imports(ast.parse(p.read_text()))))
             for m, (p, _) in modules.items()}
    bad = []
    for module, (path, _) in sorted(modules.items()):
        lines = path.read_text().splitlines()
        already = _loaded(module, graph, third)
        for node in _function_level_own_imports(ast.parse(path.read_text())):
            for dep in sorted(DEFERRABLE.intersection(_deferred_deps(lines, node) or ()) & already):
                bad.append(f"{path.relative_to(root)}:{node.lineno} defers {dep}, but {module} imports it already")
    return bad


def test_function_level_imports_of_own_modules_name_the_dependency_they_defer():
    """No function imports a project module unless its ``# deferred: <dep>`` comment names the
    optional heavy dependency (:data:`DEFERRABLE`) it keeps out of its module's import."""
    bad = []
    for module, (path, _) in sorted(_project_modules().items()):
        rel = str(path.relative_to(ROOT))
        if rel not in UNCHECKED:
            bad += [f"{rel}:{line} {problem}" for line, problem in _undeclared_deferrals(path.read_text())]
    assert not bad, ("function-level imports of the project's own modules (move them to the top; or, to defer a "
                     "heavy dependency, say which: '# deferred: torch (why)'):\n" + "\n".join(bad))


def test_a_deferred_import_defers_a_dependency_its_module_does_not_load():
    bad = _untrue_deferrals(_project_modules())
    assert not bad, "'# deferred:' comments that are not true:\n" + "\n".join(bad)


def test_deferral_checkers_flag_an_uncommented_import_and_an_untrue_comment(tmp_path):
    source = (
        "import torch\n"
        "from compress.errors import ConfigError\n"
        "def a():\n    from compress.models import load_model\n"
        "def b():\n    from compress.api import compress  # deferred: torch-pruning, timm (the strategies), kept\n"
        "def c():\n    import compress.strategies  # deferred: rich, kept out of --help\n"
        "def d():\n    from compress.pareto import (  # deferred: matplotlib.pyplot\n        pareto_plot)\n"
        "def e():\n    from . import sibling  # noqa\n"
        "def f():\n    import json\n    from typing import Any  # the standard library: not checked\n"
        "lazy = lambda: __import__('x')\n"
        "class K:\n    def g(self):\n        import budgets.cost  # deferred (torch)\n"
    )
    assert _undeclared_deferrals(source) == [
        (4, "no '# deferred: <dep>' comment"),
        (8, "'# deferred: rich' names no heavy dependency of DEFERRABLE"),
        (13, "no '# deferred: <dep>' comment"),
        (20, "no '# deferred: <dep>' comment"),
    ]
    assert _deferred_deps(source.splitlines(), ast.parse(source).body[3].body[0]) == ["torch_pruning", "timm"]
    for folder in ("budgets", "profiling", "exporters"):
        (tmp_path / folder).mkdir()
    (tmp_path / "compress").mkdir()
    files = {
        "compress/__init__.py": "",
        "compress/heavy.py": "import matplotlib.pyplot as plt\n",
        "compress/middle.py": "import torch\n",
        "compress/user.py": ("from compress import middle\n"
                             "def a():\n    from compress import heavy  # deferred: matplotlib (plots)\n"
                             "def b():\n    from compress import middle  # deferred: torch, pydantic\n"),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert _untrue_deferrals(_project_modules(tmp_path), tmp_path) == [
        "compress/user.py:5 defers torch, but compress.user imports it already"]


def test_the_errors_and_the_cli_load_no_torch():
    # `slimforge --help` and an error message need neither torch nor pydantic: compress.errors and the CLI's
    # top level stay light (the three layer packages load their names on first use)
    code = ("import sys, compress.errors, compress.cli;"
            "print(','.join(m for m in ('torch', 'pydantic', 'onnxruntime', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing compress.errors and compress.cli pulled in: {out}"
