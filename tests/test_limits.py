"""Limits the code base keeps, checked on every run (pure AST, except the import-time check):

* no function or method longer than :data:`MAX_FUNCTION_LINES` (``def`` line to last line,
  decorators left out; a nested function counts inside its parent and is also checked alone);
* no module longer than :data:`MAX_MODULE_LINES`;
* no import cycle among the modules of ``convit``, counting every import statement anywhere in
  a module (top level, inside functions, under ``if TYPE_CHECKING:``);
* ``import convit.model`` does not load ``huggingface_hub`` (the hub is only for ``pretrained``
  weights and export, and the model must not pay its import time).

Each failure names the file (and function or cycle) and the limit it breaks.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
CHECKED_DIRS = ("convit", "tests", "benchmarks")
PACKAGE = "convit"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def python_files() -> List[Path]:
    """Every ``.py`` file under the checked folders, sorted."""
    return sorted(p for d in CHECKED_DIRS for p in (REPO / d).rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[Tuple[str, ast.AST]]:
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
                offenders.append(f"{_rel(path)}:{node.lineno} {name}: {n} lines "
                                 f"(limit {MAX_FUNCTION_LINES} lines a function)")
    assert not offenders, "functions over the limit:\n" + "\n".join(offenders)


def test_no_module_over_the_line_limit():
    offenders = []
    for path in python_files():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            offenders.append(f"{_rel(path)}: {n} lines (limit {MAX_MODULE_LINES} lines a module)")
    assert not offenders, "modules over the limit:\n" + "\n".join(offenders)


# -- import cycles ----------------------------------------------------------------------------

def package_modules(root: Path = REPO / PACKAGE) -> Dict[str, Path]:
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


def _known(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """``name`` if it is a module of the package, else its longest prefix that is one."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_targets(module: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
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
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in modules else _known(source, modules))
    targets.discard(None)
    targets.discard(module)
    return targets


def import_graph(modules: Dict[str, Path]) -> Dict[str, Set[str]]:
    return {m: import_targets(m, p, modules) for m, p in modules.items()}


def import_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle (``[a, b, ..., a]``) through each group of mutually importing modules
    (strongly connected components of two or more, Tarjan's algorithm)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups: List[List[str]] = []

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


def _cycle_in(group: List[str], graph: Dict[str, Set[str]]) -> List[str]:
    """A shortest cycle through the first module of a strongly connected ``group`` (breadth
    first from it until an edge leads back to it)."""
    start, members = group[0], set(group)
    parents: Dict[str, str] = {start: start}
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
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from .. import c\n")
    (pkg / "c.py").write_text("import convit\n")
    (pkg / "d.py").write_text("from convit import a\nfrom . import sub\n")
    modules = package_modules(pkg)
    graph = import_graph(modules)
    assert graph["convit.a"] == {"convit.sub.b"} and graph["convit.sub.b"] == {"convit.c"}
    assert graph["convit.d"] == {"convit.a", "convit.sub"}
    assert import_cycles(graph) == [["convit", "convit.a", "convit.sub.b", "convit.c", "convit"]]


# -- what importing the model loads -----------------------------------------------------------

def test_importing_the_model_does_not_load_huggingface_hub():
    code = ("import sys, convit.model\n"
            "hub = sorted(m for m in sys.modules if m.split('.')[0] == 'huggingface_hub')\n"
            "ours = sorted(m for m in sys.modules if m.split('.')[0] == 'convit')\n"
            "assert not hub, f'loaded {len(hub)} huggingface_hub modules; convit modules loaded: {ours}'\n"
            # building a zoo model (timm's package now loads for the checkpoint readers) still
            # leaves convit's hub client alone: it is imported only for pretrained weights
            "import convit\nconvit.create_model('convit_digits')\n"
            "assert 'convit.hub' not in sys.modules, 'create_model without pretrained imported convit.hub'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, ("`import convit.model` loads huggingface_hub (limit: the model imports "
                                  "no hub code):\n" + proc.stderr[-3000:])


# -- the README's layout tree is the import order ---------------------------------------------

def layout_order(readme: Path = REPO / "README.md") -> Dict[str, int]:
    """Rank of each module named in the README's layout tree (``## Layout``), in reading order.

    A line indented under ``data/`` (or another subpackage line) names that package's
    modules; a subpackage whose modules are not listed one by one shares the package's rank.
    """
    text = readme.read_text(encoding="utf-8").split("## Layout", 1)[1].split("```", 2)[1]
    modules, ranks, package = package_modules(), {PACKAGE: -1}, None
    for line in text.splitlines()[2:]:  # after the opening fence's line and `convit/`
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            break  # tests/, benchmarks/
        for token, kind in re.findall(r"([a-z_]+)(\.py|/)", line):
            if indent == 2:
                package = token if kind == "/" else None
            inside = f"{PACKAGE}.{package}.{token}" if package and indent > 2 else None
            name = inside if inside in modules else f"{PACKAGE}.{token}"
            if name in modules and name not in ranks:
                ranks[name] = len(ranks)
    return ranks


def test_readme_layout_lists_modules_in_import_order():
    """The README says a module imports only from modules listed above it: keep that true."""
    modules, ranks = package_modules(), layout_order()
    assert "convit.data.reader" in ranks and "convit.fast_gpsa" in ranks and "convit.train" in ranks

    def rank(m: str) -> int:
        while m not in ranks:
            m = m.rpartition(".")[0]
        return ranks[m]

    def allowed(m: str, t: str) -> bool:  # a package may import its own modules
        same_package = t.rpartition(".")[0] == m.rpartition(".")[0]
        return t.startswith(m + ".") or rank(t) < rank(m) or (rank(t) == rank(m) and same_package)

    bad = [f"{m} imports {t}" for m, targets in import_graph(modules).items() for t in sorted(targets)
           if not allowed(m, t)]
    unlisted = sorted(m for m in modules if m.count(".") == 1 and m not in ranks)
    assert not unlisted, f"modules missing from the README's layout tree: {unlisted}"
    assert not bad, "imports of a module listed below the importer in README's layout:\n" + "\n".join(bad)
