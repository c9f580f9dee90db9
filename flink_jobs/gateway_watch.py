"""The local Flink JVM's stderr and exit status, kept in the job's own log.

PyFlink starts the local JVM (the mini-cluster and, in thread mode, the embedded CPython that
runs every Python operator) with ``stderr=PIPE`` and reads that pipe only if the JVM dies before
it has started. Afterwards nothing reads it, with two consequences:

* whatever native code in the JVM process writes to file descriptor 2 is lost. That is exactly
  the last words of a process that dies without a Java exception: "Fatal Python error: ...",
  glibc's "malloc(): corrupted ..." before abort(), "LLVM ERROR: ..." before exit(1), a Rust
  panic message. The process just disappears and Flink's log stops mid-line;
* the pipe holds 64 KiB: once anything in the JVM has written that much to stderr, the next
  write blocks for ever (in the embedded interpreter: while holding the GIL, so every Python
  operator of the TaskManager stops).

:func:`install` wraps PyFlink's launcher so a daemon thread copies the pipe to this process's
stderr (the job log when the job runs under ``recsys.job_process``) and, when the JVM ends
unexpectedly, writes its exit status there, naming the signal that killed it, and ends the job
process (status 1, as before) so that this is the log's last line. It also asks the
JVM to write a crash report (``hs_err_pid<pid>.log``) beside Flink's log instead of into the
working directory. Nothing here applies to ``flink run`` submissions: there the CLI owns the JVM.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import BinaryIO, Callable

_installed = False


def describe_exit(returncode: int) -> str:
    """``Popen.returncode`` in words: a negative code is the signal that killed the process."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def drain(process, out: BinaryIO, label: str = "Flink JVM",
          on_failure: Callable[[], None] | None = None) -> None:
    """Copy ``process.stderr`` to ``out`` until the process closes it; if the process then
    ends with a non-zero status, say how and call ``on_failure``."""
    stream = process.stderr
    while True:
        try:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        except (OSError, ValueError):  # closed under us (e.g. PyFlink read it on a failed start)
            chunk = b""
        if not chunk:
            break
        try:
            out.write(chunk)
            out.flush()
        except (OSError, ValueError):
            pass
    returncode = process.wait()
    if returncode != 0:
        note = f"recsys job: the {label} (pid {process.pid}) {describe_exit(returncode)}\n"
        try:
            out.write(note.encode())
            out.flush()
        except (OSError, ValueError):
            pass
        if on_failure is not None:
            on_failure()


def error_file_option(environ=os.environ) -> str | None:
    """``-XX:ErrorFile=...`` for a crash report beside Flink's log (``FLINK_LOG_DIR``)."""
    log_dir = environ.get("FLINK_LOG_DIR")
    if not log_dir:
        return None
    return "-XX:ErrorFile=" + os.path.join(os.path.abspath(log_dir), "hs_err_pid%p.log")


def install() -> None:
    """Wrap PyFlink's gateway launcher (before the first ``get_gateway()``); idempotent."""
    global _installed
    if _installed:
        return
    from pyflink import java_gateway

    original = java_gateway.launch_gateway_server_process

    def launch(env, args):
        option = error_file_option(env)
        if option and option not in env.get("JVM_ARGS", ""):
            env["JVM_ARGS"] = (env.get("JVM_ARGS", "") + " " + option).strip()
        process = original(env, args)
        if getattr(process, "stderr", None) is not None:
            # fd 2 itself (the job log), whatever sys.stderr has been replaced with
            out = os.fdopen(os.dup(2), "wb", buffering=0)
            # A job without its JVM has nothing left to do: end now, with the note above as the
            # log's last line, instead of after pages of py4j reconnection errors.
            threading.Thread(target=drain, args=(process, out),
                             kwargs={"on_failure": lambda: os._exit(1)}, daemon=True,
                             name="flink-jvm-stderr").start()
        return process

    java_gateway.launch_gateway_server_process = launch
    _installed = True
