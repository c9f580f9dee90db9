"""The local Flink JVM's stderr and exit status reach the job log (flink_jobs/gateway_watch.py)."""

from __future__ import annotations

import io
import subprocess
import sys

from flink_jobs.gateway_watch import describe_exit, drain, error_file_option


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_a_native_abort_leaves_its_last_words_and_the_signal_in_the_log():
    proc = _child("import os, sys; sys.stderr.write('Fatal Python error: boom\\n'); "
                  "sys.stderr.flush(); os.abort()")
    out = io.BytesIO()
    drain(proc, out)
    text = out.getvalue().decode()
    assert "Fatal Python error: boom" in text
    assert f"(pid {proc.pid}) was killed by SIGABRT" in text


def test_more_than_a_pipe_full_of_stderr_does_not_block_the_writer():
    proc = _child("import sys; sys.stderr.write('x' * 300_000); sys.exit(1)")
    out = io.BytesIO()
    drain(proc, out)
    assert out.getvalue().startswith(b"x" * 300_000)
    assert out.getvalue().endswith(b"exited with status 1\n")


def test_a_clean_exit_adds_nothing():
    proc = _child("pass")
    out = io.BytesIO()
    drain(proc, out)
    assert out.getvalue() == b""


def test_describe_exit_and_the_crash_report_location(tmp_path):
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(239) == "exited with status 239"
    assert error_file_option({}) is None
    assert error_file_option({"FLINK_LOG_DIR": str(tmp_path)}) == \
        f"-XX:ErrorFile={tmp_path}/hs_err_pid%p.log"


def test_a_failed_process_calls_on_failure_after_the_note():
    proc = _child("import sys; sys.exit(3)")
    out, calls = io.BytesIO(), []
    drain(proc, out, on_failure=lambda: calls.append(out.getvalue()))
    assert calls == [f"recsys job: the Flink JVM (pid {proc.pid}) exited with status 3\n".encode()]


def test_the_watch_wraps_the_launcher_pyflink_really_calls():
    """The watch replaces a private PyFlink function: an upgrade that renames it, or stops
    calling it, must fail here rather than silently drop the watch."""
    from pyflink import java_gateway

    from flink_jobs import gateway_watch

    gateway_watch.install()
    assert java_gateway.launch_gateway_server_process.__module__ == gateway_watch.__name__
    # launch_gateway() looks the launcher up by this name in its module at call time
    assert "launch_gateway_server_process" in java_gateway.launch_gateway.__code__.co_names
