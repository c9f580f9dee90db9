"""Background JVMs started by the project's tools (broker, JobManager, TaskManagers): liveness.

Children started by this Python process are kept here so they can be reaped: a dead, unreaped
child is a zombie that still answers ``os.kill(pid, 0)``, which would make "is it running?"
wrong until the parent exits.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CHILDREN: dict[int, subprocess.Popen] = {}


def cmdline(pid: int) -> list[str]:
    """The process's command line (Linux /proc; empty when unknown)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def alive(pid: int) -> bool:
    """Running (not a zombie); reaps our own children on the way."""
    if pid <= 0:
        return False
    child = CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
