"""The pure core never pulls in the gevent shell (ARCHITECTURE.md), so the
rules tools start fast and the core is testable with plain data."""

from __future__ import annotations

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
