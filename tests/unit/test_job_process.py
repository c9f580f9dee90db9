"""Stopping the job's process: nothing of its process group outlives the stop."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from recsys.local.job_process import stop_job_process


def test_a_child_that_ignores_sigterm_does_not_outlive_the_stop(tmp_path):
    # The driver exits on SIGTERM at once; its child (standing in for the JVM stuck in its
    # shutdown hooks) ignores SIGTERM and would live on, orphaned.
    pid_file = tmp_path / "child.pid"
    child_code = (f"import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    driver = textwrap.dedent(f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", {child_code!r}])
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], start_new_session=True)
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    stop_job_process(proc, timeout_s=1)
    assert proc.returncode is not None
    time.sleep(0.2)
    try:
        os.kill(child, 0)
        state = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0]
        alive = state != "Z"
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive, "the child outlived the stop"


def test_stopping_a_process_that_already_ended_is_fine():
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()
    stop_job_process(proc, timeout_s=1)
    assert proc.returncode == 0
