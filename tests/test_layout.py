"""The layout's promises: dependencies point one way (adapters <- harness <- suites), no import cycles, the contract's
leaf imports nothing of the project, and every framework package has the same family modules.

The import graph is read from the source (every `import` / `from ... import`, function-level ones included), so a
lazy import cannot hide a wrong-way dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import adapters

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("adapters", "harness", "suites")
# folder -> the folders it may import from (besides itself)
ALLOWED = {"adapters": set(), "harness": {"adapters"}, "suites": {"harness", "adapters"}}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that module `name` imports (resolved to the longest known module name)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            parts = t.split(".")
            for n in range(len(parts), 0, -1):
                cand = ".".join(parts[:n])
                if cand in known and cand != name:
                    found.add(cand)
                    break
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_dependencies_point_one_way():
    bad = [f"{a} -> {b}" for a, deps in graph().items() for b in deps
           if b.split(".")[0] != a.split(".")[0] and b.split(".")[0] not in ALLOWED[a.split(".")[0]]]
    assert not bad, f"wrong-way imports (allowed: {ALLOWED}): {bad}"


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            cycle = visit(n)
            assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_contract_leaf_imports_nothing_of_the_project():
    assert graph()["adapters.spec"] == set()


def test_the_graph_walker_sees_a_wrong_way_import(tmp_path):
    """The walker itself can fail: a function-level `from suites import common` inside harness is found."""
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from suites import common\n    return common\n")
    assert imports_of("harness.x", fake, {"suites", "suites.common", "harness"}) == {"suites.common"}


@pytest.mark.parametrize("framework", adapters.KNOWN)
def test_every_framework_package_has_every_family_module(framework):
    files = {p.stem for p in (ROOT / "adapters" / framework).glob("*.py")}
    want = {"__init__", "ops", *adapters.STRATEGY_FAMILIES}
    assert want <= files, f"adapters/{framework}/ lacks {sorted(want - files)}"
    for family in adapters.STRATEGY_FAMILIES:
        assert adapters.declared_strategies(framework, family), f"{framework} declares no {family} strategy"


def test_frameworks_are_defined_once():
    """FRAMEWORKS is defined in harness.axes only (tests, CLI and suites read it from there)."""
    hits = [str(p.relative_to(ROOT)) for pkg in (*PACKAGES, "tests") for p in (ROOT / pkg).rglob("*.py")
            if "\nFRAMEWORKS = " in p.read_text() and p.name != "test_layout.py"]
    assert hits == ["harness/axes.py"], hits
