"""Running Python inside a live server process, as an attacker who took it over would.

A debugger attached as root makes the process call PyRun_SimpleString, so
each statement runs in the server's own interpreter, with its uid, its
descriptors and its confinement. lldb is used rather than gdb: gdb 13
(Debian 12) cannot call functions in a process on a CPU with AMX state
("Couldn't write extended state status: Bad address").

A statement that forks or execs successfully interrupts the debugger's call
and leaves the process broken: write attempts that fail, or that succeed
without a new process image.
"""

from __future__ import annotations

import re
import subprocess


def run_inside(pid: int, statements: list[str], timeout: float = 60) -> list[int]:
    """Run each statement in process pid's interpreter; for each, 0 if it
    completed and -1 if it raised."""
    commands = ["expr (int)PyGILState_Ensure()"]
    for statement in statements:
        literal = statement.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        commands.append(f'expr (int)PyRun_SimpleString("{literal}")')
    commands += ["expr (void)PyGILState_Release($0)", "detach"]
    argv = ["lldb", "--batch", "--no-lldbinit", "-p", str(pid)]
    for command in commands:
        argv += ["-o", command]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    ).stdout
    results = [int(v) for v in re.findall(r"^\(int\) \$\d+ = (-?\d+)$", out, re.MULTILINE)]
    if len(results) != 1 + len(statements):
        raise RuntimeError(f"lldb did not run every statement in {pid}:\n{out}")
    return results[1:]
