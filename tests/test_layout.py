"""The package's layout: no import circles between its files, and every package says what it does.

The import graph is read from the source (``ast``), counting every import: those at the top of a
module and those inside functions alike (an import moved into a function still closes a circle,
it only hides it until the function runs), and a name a package exports lazily (its ``_EXPORTS``
table) counts as an import of the submodule that defines it. Importing ``a.b.c`` runs ``a/__init__`` and
``a/b/__init__`` too, so those count as well, except the importer's own parent packages (which are
necessarily being imported already).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rm_registry

SRC = Path(rm_registry.__file__).resolve().parent
ROOT = "rm_registry"


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _lazy_exports(path: Path) -> dict[str, str]:
    """A package's ``_EXPORTS = {"name": "submodule"}`` (names its ``__getattr__`` imports on first use)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)
                and isinstance(node.value, ast.Dict)):
            return {k.value: v.value for k, v in zip(node.value.keys, node.value.values)
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
    return {}


def _from_target(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` in module ``name`` (file ``path``) reads from."""
    if not node.level:
        return node.module or ""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(name: str, path: Path, node: ast.AST, known: set[str],
             lazy: dict[str, dict[str, str]] | None = None) -> set[str]:
    found: set[str] = set()
    if isinstance(node, ast.ImportFrom):
        target = _from_target(name, path, node)
        if not target.startswith(ROOT):
            return found
        found.add(target)
        for alias in node.names:
            if f"{target}.{alias.name}" in known:
                found.add(f"{target}.{alias.name}")
            elif alias.name in (lazy or {}).get(target, {}):  # resolved by the package's __getattr__
                found.add(f"{target}.{lazy[target][alias.name]}")
    elif isinstance(node, ast.Import):
        found.update(a.name for a in node.names if a.name.startswith(ROOT))
    # importing a.b.c runs every parent package first
    for target in list(found):
        parts = target.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return {t for t in found if t in known and t != name and t not in ancestors}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    lazy = {name: _lazy_exports(path) for name, path in modules.items() if path.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _targets(name, path, node, known, lazy)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, "modules that import each other (directly or around a circle): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_checker_sees_a_circle_hidden_in_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    # and it reads imports inside functions from the source
    tree = ast.parse("def f():\n    from . import _registry\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _targets("rm_registry._hooks", SRC / "_hooks.py", node, {"rm_registry._registry"}) == {"rm_registry._registry"}


ENGINE_PACKAGES = ["checkpoint", "config", "data", "evaluation", "hf", "model", "parallel", "trainer"]


@pytest.mark.parametrize("package", ENGINE_PACKAGES)
def test_each_engine_package_says_what_flows_in_and_out(package: str) -> None:
    init = SRC / "engine" / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc and len(doc.split()) >= 30, f"{init} needs a docstring saying what the stage does"
    assert "in:" in doc.lower() or "->" in doc, f"{init}: say what flows in and out"


def test_engine_folder_holds_only_stage_packages_and_a_few_modules() -> None:
    engine = SRC / "engine"
    packages = sorted(p.name for p in engine.iterdir() if (p / "__init__.py").exists())
    assert packages == ENGINE_PACKAGES
    modules = sorted(p.name for p in engine.glob("*.py"))
    assert len(modules) <= 10, modules


def test_docs_map_names_every_engine_package() -> None:
    text = (SRC.parents[1] / "docs" / "engine.md").read_text(encoding="utf-8")
    section = text[text.index("## Where things are"):text.index("## Commands")]
    missing = [p for p in ENGINE_PACKAGES if f"  {p}/" not in section]
    assert not missing, f"docs/engine.md's map lacks {missing}"


def test_protocol_docstring_says_each_thing_once() -> None:
    """The first file a plugin author reads: no paragraph of its opening repeated (a merge once left
    a second, older copy of it inside the docstring)."""
    doc = ast.get_docstring(ast.parse((SRC / "_protocol.py").read_text(encoding="utf-8")))
    assert doc is not None
    lines = [line.strip() for line in doc.splitlines() if len(line.strip()) > 20]
    assert len(lines) == len(set(lines)), [line for line in lines if lines.count(line) > 1]


def private_names_used_elsewhere(src: Path = SRC) -> list[str]:
    """``from pkg.mod import _name`` and ``mod._name`` where ``_name`` is not a module: a private
    name of one module used by another (where a name is shared, it is not private)."""
    global SRC
    saved, SRC = SRC, src
    try:
        modules = _modules()
    finally:
        SRC = saved
    known = set(modules)
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _from_target(name, path, node)
            if not target.startswith(ROOT):
                continue
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{name}: from {target} import {alias.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and f"{aliases[node.value.id]}.{node.attr}" not in known):
                found.append(f"{name}: {node.value.id}.{node.attr}")
    return sorted(set(found))


def test_no_private_name_is_used_by_another_module() -> None:
    assert private_names_used_elsewhere() == []
