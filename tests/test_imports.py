"""No import cycles, no reach-backs (issue #10; CONVENTIONS 16).

Every module imports on its own; the module-level import graph has no cycle; code imports
downward (services -> training/serving -> streams -> flywheel), at module level and inside
functions alike; and product code does not depend on the simulator.

The graph is read from the source with `ast`, so it sees the import statements as written:
those at module level run when the module loads, those inside functions (the sanctioned way
to defer a load-time dependency) run later, and `if TYPE_CHECKING:` ones never run.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("flywheel", "services", "streams", "training", "serving")
# Lower layers never import higher ones. training and serving are one layer.
LAYER = {"flywheel": 0, "streams": 1, "training": 2, "serving": 2, "services": 3}
# The composition roots live in flywheel/ but sit above every layer: the CLI and the local
# stack run the other layers' code. They import it inside functions only, so that
# `flywheel --help` loads no library and flywheel/ imports nothing above it at load time.
ENTRY_POINTS = ("flywheel.__main__", "flywheel.cli", "flywheel.stack")
# The simulator is a client of the product (it drives the gateway and produces events like
# any backend would); nothing but itself and its CLI command may import it.
SIMULATOR = "flywheel.simulate"
SIMULATOR_FRONT_END = "flywheel.cli.simulate"


def _within(name: str, prefixes: str | tuple[str, ...]) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (the deepest one of ours the statement names)
    line: int
    where: str  # "module" (runs at load), "function" (runs when called), "type" (TYPE_CHECKING only)

    def __str__(self) -> str:
        return f"{self.source}:{self.line} -> {self.target} ({self.where} level)"


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules of ours an import statement loads (the deepest named one each)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importing module's package upward
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    targets = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name not in targets:
            targets.append(name)
    return targets


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports() -> list[Import]:
    found = []
    for module, path in MODULES.items():
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, where: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    found.extend(Import(module, t, child.lineno, where) for t in _resolve(module, is_package, child))
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    visit(child, "function" if where == "module" else where)
                elif _is_type_checking(child):
                    for stmt in child.body:
                        visit(ast.Module(body=[stmt], type_ignores=[]), "type" if where == "module" else where)
                    for stmt in child.orelse:
                        visit(ast.Module(body=[stmt], type_ignores=[]), where)
                else:
                    visit(child, where)

        visit(ast.parse(path.read_text(), str(path)), "module")
    return found


IMPORTS = _imports()


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a self-import
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    components.append(sorted(component))
    return components


def test_the_checks_see_the_code():
    """Guards the guards: the walker finds the packages, the CLI and imports of each kind."""
    assert {"flywheel.cli", "flywheel.cli.review", "flywheel.settings", "services.gateway.auth"} <= set(MODULES)
    kinds = {i.where for i in IMPORTS}
    assert kinds == {"module", "function", "type"}, kinds
    assert any(i.source == "flywheel.cli" and i.target == "flywheel.cli.review" and i.where == "module"
               for i in IMPORTS)
    assert any(i.source == "flywheel.stack" and i.target == "services.gateway.auth" and i.where == "function"
               for i in IMPORTS)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}, "b": set()}) == [["a"]]


def test_every_module_imports_in_a_fresh_interpreter():
    """Walk the packages with pkgutil and import every module (but `__main__`), in a fresh
    process: nothing this test session already loaded can hide an import-order problem."""
    script = (
        "import importlib, json, pkgutil, sys, traceback\n"
        f"packages = {PACKAGES!r}\n"
        "names, failed = list(packages), []\n"
        "for p in packages:\n"
        "    names += [m.name for m in pkgutil.walk_packages(importlib.import_module(p).__path__, p + '.',\n"
        "              onerror=lambda n: failed.append((n, traceback.format_exc())))\n"
        "              if m.name.rpartition('.')[2] != '__main__']\n"
        "for n in names:\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except BaseException:\n"
        "        failed.append((n, traceback.format_exc()))\n"
        "print(json.dumps(names))\n"
        "for n, tb in failed:\n"
        "    print(f'--- {n}\\n{tb}', file=sys.stderr)\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    walked = set(json.loads(done.stdout.splitlines()[-1]))
    unreached = sorted(m for m in MODULES if m not in walked and m.rpartition(".")[2] != "__main__")
    assert not unreached, f"pkgutil does not reach these modules (a folder without __init__.py?): {unreached}"


@pytest.mark.parametrize("module", ["flywheel.stack", *sorted(m for m in MODULES if _within(m, "flywheel.cli")
                                                           and not m.endswith("__main__"))])
def test_the_cli_and_the_stack_import_first(module):
    """The CLI package and the stack used to import each other; each of their modules must
    load first in a fresh interpreter, and without loading any library above flywheel/."""
    script = (f"import sys, {module}\n"
              f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(PACKAGES) - {'flywheel'}!r}))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", f"importing {module} loads {done.stdout.strip()}"


def test_no_import_cycles_at_module_level():
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if i.where == "module" and i.target != i.source:
            edges[i.source].add(i.target)
    cycles = _cycles(edges)
    detail = [" -> ".join(c) + "\n    " + "\n    ".join(
        str(i) for i in IMPORTS if i.where == "module" and i.source in c and i.target in c) for c in cycles]
    assert not cycles, "import cycles among module-level imports:\n" + "\n".join(detail)


def test_imports_go_down_the_layers():
    """services -> training/serving -> streams -> flywheel, inside functions too (a lazy
    import defers a load, it does not change who depends on whom). The entry points sit on
    top and reach the layers only inside functions; the simulator is a client on top."""
    upward = []
    for i in IMPORTS:
        if _within(i.source, SIMULATOR):
            continue
        if _within(i.source, ENTRY_POINTS):
            if i.where != "function" and not _within(i.target, "flywheel"):
                upward.append(i)
            continue
        if _within(i.target, ENTRY_POINTS) or LAYER[i.target.split(".")[0]] > LAYER[i.source.split(".")[0]]:
            upward.append(i)
    assert not upward, "imports that go up the layers:\n" + "\n".join(map(str, upward))


def test_nothing_but_the_simulator_imports_the_simulator():
    """The simulator is a client of the product, never a dependency of it (issue #10:
    domains are plugins; the simulator imports them). Only its own modules and its CLI
    command (`flywheel simulate`, `flywheel up --simulate`) import it."""
    reach = [i for i in IMPORTS if _within(i.target, SIMULATOR)
             and not _within(i.source, (SIMULATOR, SIMULATOR_FRONT_END))]
    assert not reach, "product code imports the simulator:\n" + "\n".join(map(str, reach))


def test_nothing_reaches_back_into_the_cli():
    """The CLI is the top: only the `python -m` shims import the `flywheel.cli` package, and
    its command modules never import the package that registers them (the old cli.py <->
    review_cli.py <-> stack.py loop went through such imports, hidden inside functions)."""
    shims = ("flywheel.__main__", "flywheel.cli.__main__")
    reach = [i for i in IMPORTS if _within(i.target, "flywheel.cli") and i.source not in shims
             and (i.target == "flywheel.cli" or not _within(i.source, "flywheel.cli"))]
    assert not reach, "imports of the CLI from below it:\n" + "\n".join(map(str, reach))
