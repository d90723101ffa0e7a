"""The tree shows its processes (issue 28): no module imports itself back through others, and an
API worker's whole import graph holds neither onnxruntime nor the engine core nor the sessions."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT


def _module(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _imports(path: str, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere (function bodies too), except under
    `if TYPE_CHECKING:` (annotations only: nothing runs)."""
    tree = ast.parse((ROOT / path).read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    here = _module(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in known:
                    found.add(sub)
                elif node.module in known:
                    found.add(node.module)
    found.discard(here)
    return found


def _graph() -> dict[str, set[str]]:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "service").rglob("*.py"))
    known = {_module(f) for f in files}
    return {_module(f): _imports(f, known) for f in files}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_project_modules_import_each_other_in_a_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_an_api_worker_imports_no_onnxruntime_nor_the_engine_core() -> None:
    code = (
        "import sys, service.supervisor.worker_process\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'torch',"
        " 'training') or m.startswith(('service.engine', 'service.sessions')))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
