"""EASE's inverse runs on a thread with a large stack (udfs/ease.py ``inverse``).

A Flink task thread has the JVM's 1 MiB stack, and OpenBLAS's threaded LU factorisation needs
several MiB of it at M in the hundreds: on such a thread ``numpy.linalg.inv`` silently
overwrote neighbouring threads' stacks or killed the JVM with an uncatchable SIGSEGV.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from recsys.paths import PROJECT_ROOT
from udfs.ease import inverse


def test_inverse_is_numpys_inverse_and_raises_its_errors():
    rng = np.random.default_rng(7)
    g = rng.random((150, 150)) + 150 * np.eye(150)
    assert np.allclose(inverse(g), np.linalg.inv(g))
    with pytest.raises(np.linalg.LinAlgError):
        inverse(np.zeros((3, 3)))


def test_inverse_survives_a_caller_with_a_1_mib_stack_like_a_jvm_thread():
    code = textwrap.dedent("""
        import threading, numpy as np
        from udfs.ease import inverse
        threading.stack_size(1 << 20)  # a Flink task thread's stack (JVM default -Xss1m)
        out = {}
        def run():
            g = np.random.default_rng(0).random((600, 600)) + 600 * np.eye(600)
            out["ok"] = bool(np.allclose(inverse(g) @ g, np.eye(600)))
        t = threading.Thread(target=run); t.start(); t.join()
        print(out)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "{'ok': True}" in proc.stdout
