"""The job in a child process (demo, tests, benchmarks): start it, stop it (its log:
``processes.log_tail``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from recsys.paths import PROJECT_ROOT


def start_job_process(overrides: list[str], log_path: Path, config_file: str | None = None,
                      env: dict[str, str] | None = None,
                      project_root: Path = PROJECT_ROOT) -> subprocess.Popen:
    """``python -m flink_jobs.recsys_job`` with ``--set`` overrides; output goes to ``log_path``.

    A child process keeps the caller free to produce and consume, and lets it kill the job and
    its mini-cluster as a whole (own session, so the process group is the job's alone).
    ``project_root`` runs another checkout of the project (e.g. an older release) with this venv.
    """
    args = [sys.executable, "-m", "flink_jobs.recsys_job"]
    if config_file:
        args += ["--config", config_file]
    for item in overrides:
        args += ["--set", item]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Flink's own log goes beside ours (by default every mini-cluster writes one shared file
    # inside the pip package).
    env = dict(os.environ if env is None else env)
    env.setdefault("FLINK_LOG_DIR", str(log_path.parent))
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, cwd=project_root, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)


def stop_job_process(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM to the job's process group, then SIGKILL to whatever of it is left after
    ``timeout_s``. The group, not only the driver: the driver can be gone while its JVM (the
    mini-cluster) still runs, or hangs in, its shutdown hooks — an eval run left one such JVM
    alive, orphaned, for good."""
    deadline = time.monotonic() + timeout_s
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    while time.monotonic() < deadline and _group_alive(proc.pid):
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
