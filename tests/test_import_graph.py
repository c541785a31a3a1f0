"""The import graph of both distributions has no cycles, counting every import: top-level, inside functions and
under ``TYPE_CHECKING`` (a type-level cycle is still two modules that each need the other to be read)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"dopr": ROOT / "src" / "dopr", "dopr_bench": ROOT / "bench" / "src" / "dopr_bench"}


def modules(package: str) -> dict[str, Path]:
    root = PACKAGES[package]
    out = {}
    for path in root.rglob("*.py"):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports (``from pkg import sub`` counts as importing ``sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def graph_of(package: str) -> dict[str, set[str]]:
    mods = modules(package)
    # a package's __init__ is read before its submodules anyway; an edge submodule -> its own package is not a cycle
    # that a reader has to untangle, so it is left out
    return {m: {t for t in imports_of(m, p, set(mods)) if not m.startswith(t + ".")} for m, p in mods.items()}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycles(package: str) -> None:
    assert cycles(graph_of(package)) == []


def test_the_cycle_finder_finds_a_type_level_cycle(tmp_path: Path) -> None:
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    code = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .bench import S\n"
    (tmp_path / "train.py").write_text(code)
    assert imports_of("p.train", tmp_path / "train.py", {"p.train", "p.bench"}) == {"p.bench"}


def test_the_library_never_imports_the_bench() -> None:
    lib = modules("dopr")
    for name, path in lib.items():
        assert not imports_of(name, path, set(modules("dopr_bench"))), f"{path} imports dopr_bench"
