"""The package's imports run one way along the data flow (DESIGN sec. 1, docs/ARCHITECTURE.md):
spec -> model -> cost -> search -> plan -> export -> serve -> api -> sweep -> cli, with
`schema` (the plan's format) beside `model`, `check` beside the whole chain (the verifier
imports only the inputs, the model and the plan's format, never the search or the cost model
it checks) and `verify` beside `check` (it runs a plan; it reads the inputs echo with
check's reader).
Read with `ast`, so a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import autopar

PKG = Path(autopar.__file__).parent
# stage -> what it may import (besides itself and the leaf modules in LEAVES)
ALLOWED = {
    "spec": set(),
    "model": {"spec"},
    "schema": set(),
    "check": {"spec", "model", "schema"},
    "cost": {"spec", "model"},
    "search": {"spec", "model", "cost"},
    "plan": {"spec", "model", "schema", "cost", "search", "check"},
    "export": {"spec", "model", "schema"},
    "verify": {"spec", "model", "schema", "check"},
    "serve": {"spec", "model", "schema", "cost", "search", "plan", "export"},
    "api": {"spec", "model", "schema", "cost", "search", "plan", "check", "export", "serve",
            "verify"},
    "sweep": {"spec", "model", "schema", "cost", "search", "plan", "check", "export", "serve",
              "api"},
    "view": {"spec", "model", "schema", "cost", "search", "plan", "check", "export", "serve",
             "api"},
    "cli": {"spec", "model", "schema", "cost", "search", "plan", "check", "export", "serve",
            "api", "sweep", "verify", "view"},
}
LEAVES = {"errors", "version"}  # any stage may import them; they import nothing of ours
TOP = {"__init__", "__main__"}  # the package's front door may import anything


def stage_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, first component under autopar) of every import of the package's own code in
    the module at `path` (its text, unless given)."""
    rel = path.relative_to(PKG)
    package = ["autopar", *rel.parts[:-1]]
    out = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [node.module] if node.module else [a.name for a in node.names]
                for n in names:
                    full = [*base, *n.split(".")]
                    if len(full) > 1:
                        out.append((node.lineno, full[1]))
            elif node.module and node.module.split(".")[0] == "autopar":
                parts = node.module.split(".")
                out.append((node.lineno, parts[1] if len(parts) > 1 else node.names[0].name))
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "autopar" and len(parts) > 1:
                    out.append((node.lineno, parts[1]))
    return out


MODULES = sorted(p for p in PKG.rglob("*.py") if stage_of(p) not in TOP)


def test_every_module_belongs_to_a_known_stage():
    stray = sorted({stage_of(p) for p in MODULES} - set(ALLOWED) - LEAVES)
    assert not stray, f"modules outside the stages: {stray}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_run_along_the_flow(path: Path):
    stage = stage_of(path)
    allowed = LEAVES | ({stage} if stage in ALLOWED else set()) | ALLOWED.get(stage, set())
    bad = [f"line {ln}: {stage} imports {target}" for ln, target in imports(path)
           if target not in allowed]
    assert not bad, f"{path.relative_to(PKG)}: " + "; ".join(bad)


def test_the_checker_never_reaches_the_search_or_the_cost_model():
    """The point of the rule, stated on its own: check/ is independent of what it checks."""
    for path in (PKG / "check").rglob("*.py"):
        assert not {t for _, t in imports(path)} & {"search", "cost", "plan", "serve", "api"}


def test_no_module_is_over_the_size_limit():
    big = {str(p.relative_to(PKG)): n for p in MODULES
           if (n := len(p.read_text().splitlines())) > 420}
    assert not big, f"modules over ~400 lines: {big}"


@pytest.mark.parametrize("text", [
    "def f():\n    from ..search.driver import search\n",
    "from .. import cost\n",
    "import autopar.plan.build\n",
    "from autopar.serve import frontier\n",
])
def test_the_reader_finds_every_spelling_of_an_import(text):
    """A lazy, a relative-package, an absolute and a from-package import from check/."""
    found = {t for _, t in imports(PKG / "check" / "probe.py", text)}
    assert found & {"search", "cost", "plan", "serve"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (lazy imports included)."""
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = ".".join(pkg[: len(pkg) - node.level + 1]) if node.level else ""
            mod = ".".join(x for x in (base, node.module or "") if x)
            for a in node.names:
                target = f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod
                if target in mods and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def test_no_import_cycles():
    graph, done, path = import_graph(), set(), []

    def visit(m: str) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for d in sorted(graph[m]):
            visit(d)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    assert "autopar.cli.app" in graph and graph["autopar.cli.solve"] >= {"autopar.cli.app"}
