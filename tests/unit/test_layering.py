"""The pure core never pulls in the gevent shell (ARCHITECTURE.md), so the
rules tools start fast and the core is testable with plain data."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "s6tls"


def _modules(paths: Iterable[Path]) -> list[str]:
    """The dotted names of these module files (a package's __init__.py left out)."""
    return sorted(
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        for p in paths
        if p.name != "__init__.py"
    )


CORE = _modules([*PACKAGE.glob("*.py"), *PACKAGE.glob("rules/*.py")])
# The rules tools; s6-tcprules is a package, checked whole and module by module.
TOOLS = [
    "s6tls.commands.cdb_from_fs",
    "s6tls.commands.fs_from_cdb",
    "s6tls.commands.tcprules",
    *_modules(PACKAGE.glob("commands/tcprules/*.py")),
]
PURE = [*CORE, *TOOLS]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_loads_no_shell(module: str) -> None:
    probe = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('gevent', 'dns')"
        " or m.startswith('s6tls.shell')); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"{module} loads {out.stdout.strip()}"


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that ``name`` imports anywhere: at the top, inside
    functions, under TYPE_CHECKING."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    ours = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            ours.add(target)
    return ours


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle() -> None:
    modules = _modules()
    # A package's __init__ may import its own modules; they must not import it back.
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _circles(graph) == []


def test_the_circle_check_sees_a_circle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_the_readme_walk_names_every_shell_module() -> None:
    readme = (PACKAGE.parent / "README.rst").read_text()
    walk = readme[readme.index("The code\n========") :]
    walk = walk[: walk.index("\nTests: ")]
    shell = PACKAGE / "shell"
    missing = [
        str(p.relative_to(shell))
        for p in sorted(shell.rglob("*.py"))
        if p.name != "__init__.py" and p.name not in walk
    ]
    missing += [
        f"{p.name}/"
        for p in sorted(shell.iterdir())
        if p.is_dir() and p.name != "__pycache__" and f"{p.name}/" not in walk
    ]
    assert missing == []
