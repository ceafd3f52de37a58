"""The rooms of src/danlu import only downwards, and no modules import each other.

The room order is read from docs/architecture.md (its room-order table), so the document and
the code cannot drift apart. Every import counts, at module level or inside a function; imports
under ``if TYPE_CHECKING:`` are for type checkers only and are skipped.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "danlu"
MAX_LINES = 500


def room_levels() -> dict[str, int]:
    """``room -> level`` from the table of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text.split("<!-- room-order", 1)[1]
    levels = {}
    for m in re.finditer(r"^\| `([\w_]+)` \| (\d+) \|", table, flags=re.M):
        levels[m.group(1)] = int(m.group(2))
    assert levels, "docs/architecture.md has no room-order table"
    return levels


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(name: str) -> str | None:
    """The danlu module an import names (the longest existing prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The danlu modules ``module`` imports at run time."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                base = ".".join(up[: len(up) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # "from pkg import sub" names the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {r for r in (_resolve(n) for n in found if n.startswith("danlu")) if r and r != module}


GRAPH = {m: imports_of(m) for m in MODULES}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_room_is_in_the_documented_order():
    levels = room_levels()
    rooms = {room_of(m) for m in MODULES} - {None}
    assert rooms <= set(levels), f"rooms missing from docs/architecture.md: {rooms - set(levels)}"


def test_no_room_imports_a_higher_or_sibling_room():
    levels = room_levels()
    wrong = []
    for module, targets in GRAPH.items():
        room = room_of(module)
        if room is None:  # the package root is exempt: it exports the starting names
            continue
        for target in targets:
            other = room_of(target)
            if other is None or other == room:
                continue
            if levels[other] >= levels[room]:
                wrong.append(f"{module} ({room}, {levels[room]}) imports {target} "
                             f"({other}, {levels[other]})")
    assert not wrong, "imports against the room order:\n" + "\n".join(sorted(wrong))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_infer_needs_nothing_from_train():
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            for t in GRAPH.get(m, ()):
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return seen

    for module in (m for m in MODULES if room_of(m) == "infer"):
        assert not {m for m in reach(module) if room_of(m) == "train"}, module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module):
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{module}: {lines} lines (split it by what it does)"
