"""Background JVMs started by the project's tools (broker, JobManager, TaskManagers): liveness
and the tails of their logs.

Children started by this Python process are kept here so they can be reaped: a dead, unreaped
child is a zombie that still answers ``os.kill(pid, 0)``, which would make "is it running?"
wrong until the parent exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
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


def terminate(pid: int, timeout_s: float, kill_wait_s: float = 10.0) -> bool:
    """SIGTERM (a JVM shuts down cleanly), then SIGKILL if it takes longer than ``timeout_s``;
    reaps our own child. False if the process survived SIGKILL for ``kill_wait_s``."""
    gone = False
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, kill_wait_s)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not alive(pid):
                gone = True
                break
            time.sleep(0.1)
        if gone:
            break
    child = CHILDREN.pop(pid, None)
    if child is not None:
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            pass
    return gone


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} does not exist)"
