"""Limits the code base keeps, checked on every run (pure AST, except the import-time check):

* no function or method longer than :data:`MAX_FUNCTION_LINES` (``def`` line to last line,
  decorators left out; a nested function counts inside its parent and is also checked alone);
* no module longer than :data:`MAX_MODULE_LINES`;
* no import cycle among the modules of ``convit``, counting every import statement anywhere in
  a module (top level, inside functions, under ``if TYPE_CHECKING:``);
* ``import convit.nn.model`` does not load ``huggingface_hub`` (the hub is only for ``pretrained``
  weights and export, and the model must not pay its import time).

Each failure names the file (and function or cycle) and the limit it breaks.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
CHECKED_DIRS = ("convit", "tests", "benchmarks")
PACKAGE = "convit"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def python_files() -> list[Path]:
    """Every ``.py`` file under the checked folders, sorted."""
    return sorted(p for d in CHECKED_DIRS for p in (REPO / d).rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.<locals>.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def test_no_function_over_the_line_limit():
    offenders = []
    for path in python_files():
        for name, node in _functions(_parse(path)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                offenders.append(
                    f"{_rel(path)}:{node.lineno} {name}: {n} lines "
                    f"(limit {MAX_FUNCTION_LINES} lines a function)"
                )
    assert not offenders, "functions over the limit:\n" + "\n".join(offenders)


def test_no_module_over_the_line_limit():
    offenders = []
    for path in python_files():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            offenders.append(f"{_rel(path)}: {n} lines (limit {MAX_MODULE_LINES} lines a module)")
    assert not offenders, "modules over the limit:\n" + "\n".join(offenders)


# -- import cycles ----------------------------------------------------------------------------


def package_modules(root: Path = REPO / PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of the package; a package is its ``__init__.py``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> Optional[str]:
    """``name`` if it is a module of the package, else its longest prefix that is one."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_targets(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports, from every import statement in it.

    ``from X import n`` counts as importing the submodule ``X.n`` when there is one, else
    ``X`` itself (its ``__init__`` for a package); relative imports are resolved against the
    module's package.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            targets.update(_known(a.name, modules) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in modules else _known(source, modules))
    targets.discard(None)
    targets.discard(module)
    return targets


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {m: import_targets(m, p, modules) for m, p in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each group of mutually importing modules
    (strongly connected components of two or more, Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected ``group`` (breadth
    first from it until an edge leads back to it)."""
    start, members = group[0], set(group)
    parents: dict[str, str] = {start: start}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return path[::-1] + [start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {group}")


def test_no_import_cycle_in_the_package():
    modules = package_modules()
    graph = import_graph(modules)
    cycles = import_cycles(graph)
    lines = [" -> ".join(c) + "   (" + ", ".join(_rel(modules[m]) for m in c[:-1]) + ")" for c in cycles]
    assert not cycles, "import cycles (limit: none among convit's modules):\n" + "\n".join(lines)


def test_cycle_finder_sees_imports_anywhere(tmp_path):
    """The checker itself: relative, function-level and TYPE_CHECKING imports all make edges."""
    pkg = tmp_path / "convit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import c\n"
    )
    (pkg / "c.py").write_text("import convit\n")
    (pkg / "d.py").write_text("from convit import a\nfrom . import sub\n")
    modules = package_modules(pkg)
    graph = import_graph(modules)
    assert graph["convit.a"] == {"convit.sub.b"} and graph["convit.sub.b"] == {"convit.c"}
    assert graph["convit.d"] == {"convit.a", "convit.sub"}
    assert import_cycles(graph) == [["convit", "convit.a", "convit.sub.b", "convit.c", "convit"]]


# -- what importing the model loads -----------------------------------------------------------


def test_importing_the_model_does_not_load_huggingface_hub():
    code = (
        "import sys, convit.nn.model\n"
        "hub = sorted(m for m in sys.modules if m.split('.')[0] == 'huggingface_hub')\n"
        "ours = sorted(m for m in sys.modules if m.split('.')[0] == 'convit')\n"
        "assert not hub, f'loaded {len(hub)} huggingface_hub modules; convit modules loaded: {ours}'\n"
        # building a zoo model (timm's package now loads for the checkpoint readers) still
        # leaves convit's hub client alone: it is imported only for pretrained weights
        "import convit\nconvit.create_model('convit_digits')\n"
        "assert 'convit.weights.hub' not in sys.modules, "
        "'create_model without pretrained imported convit.weights.hub'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, (
        "`import convit.nn.model` loads huggingface_hub (limit: the model imports "
        "no hub code):\n" + proc.stderr[-3000:]
    )


# -- the layer packages ------------------------------------------------------------------------

#: convit's packages, bottom to top: each imports only from itself and the packages before it.
LAYERS = ("core", "data", "nn", "weights", "training", "analysis", "experiments", "study", "commands")
#: modules at the top of convit/: the version (below everything) and the CLI (above everything).
TOP_LEVEL = {"convit._version": -1, "convit.cli": len(LAYERS)}
ARCHITECTURE = REPO / "docs" / "architecture.md"


def layer_rank(module: str) -> int:
    """The rank of ``module``'s layer (its package under convit), -1 for ``convit._version``;
    a module that belongs to no layer is a KeyError naming it."""
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    package = module.split(".")[1]
    if package not in LAYERS:
        raise KeyError(
            f"{module} is in no layer package ({', '.join(LAYERS)}) and is not {sorted(TOP_LEVEL)}"
        )
    return LAYERS.index(package)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a higher layer, as ``"a imports b (layer x above y)"``.  ``convit`` itself
    (the lazy ``__init__``) is left out: it imports only ``_version``."""
    bad = []
    for module, targets in sorted(graph.items()):
        if module == PACKAGE:
            continue
        for target in sorted(targets):
            if target == PACKAGE or layer_rank(target) > layer_rank(module):
                bad.append(f"{module} imports {target}")
    return bad


def test_each_package_imports_only_from_the_layers_below():
    modules = package_modules()
    top = sorted(m for m, path in modules.items() if m.count(".") == 1 and path.name != "__init__.py")
    assert top == sorted(TOP_LEVEL), f"modules at the top of convit/ besides {sorted(TOP_LEVEL)}: {top}"
    bad = layer_violations(import_graph(modules))
    assert not bad, (
        f"imports against the layer order {' -> '.join(LAYERS)} (a package imports only from "
        "itself and the packages before it):\n" + "\n".join(bad)
    )


def test_layer_check_sees_an_upward_import(tmp_path):
    """The checker itself: a data module importing the trainer breaks the rule."""
    pkg = tmp_path / "convit"
    for sub in ("data", "training"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from ..training import fit\n")
    (pkg / "training" / "fit.py").write_text("from ..data import a\n")
    graph = import_graph(package_modules(pkg))
    assert layer_violations(graph) == ["convit.data.a imports convit.training.fit"]


def test_each_file_name_appears_once():
    names: dict[str, list[str]] = {}
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        if "__pycache__" not in path.parts and path.name != "__init__.py":
            names.setdefault(path.name, []).append(_rel(path))
    twice = {name: paths for name, paths in names.items() if len(paths) > 1}
    assert not twice, f"file names used more than once in convit/: {twice}"


def test_architecture_doc_draws_every_package_in_layer_order():
    """docs/architecture.md's tree (the first fenced block) names the layers bottom to top and
    every module of each package."""
    tree = ARCHITECTURE.read_text(encoding="utf-8").split("```", 2)[1]
    order = re.findall(r"^  ([a-z]+)/", tree, flags=re.M)
    assert order == list(LAYERS), f"architecture.md's tree lists packages {order}, expected {list(LAYERS)}"
    missing = [
        m
        for m, path in package_modules().items()
        if path.name != "__init__.py" and f"{path.stem}" not in re.findall(r"[a-z_0-9]+", tree)
    ]
    assert not missing, f"modules missing from docs/architecture.md's tree: {missing}"
