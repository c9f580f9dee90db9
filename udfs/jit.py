"""Compiled kernels: Numba (``nogil``, cached on disk) with the plain-Python function as twin.

Every kernel of the hot path is written once, as a plain Python function over numpy arrays and
scalars, and decorated with :func:`kernel`. The decorator returns the Numba-compiled version and
keeps the original as ``.py``: the same source run by CPython is the reference the compiled code
is tested against (``tests/unit/test_kernels.py`` compares the two on random inputs), and it is
what runs when Numba is missing or ``RECSYS_NO_JIT=1`` is set.

``nogil=True`` lets two operator subtasks in one TaskManager (thread mode: one interpreter, one
GIL) run their kernels on two cores at once. ``cache=True`` writes the machine code next to the
module (``__pycache__``) or into ``$NUMBA_CACHE_DIR``, so a job restart, or a new TaskManager on
the same host, loads it instead of compiling again.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

try:  # pragma: no cover - exercised by whichever branch the machine takes
    import numba as _numba
except ImportError:  # pragma: no cover
    _numba = None

JIT_ENABLED = _numba is not None and os.environ.get("RECSYS_NO_JIT", "") not in ("1", "true")
_NOGIL = os.environ.get("RECSYS_JIT_NOGIL", "1") not in ("0", "false")


def kernel(fn: F) -> F:
    """Compile ``fn`` with Numba (nopython, nogil, cached); ``result.py`` is ``fn`` itself."""
    if not JIT_ENABLED:
        fn.py = fn  # type: ignore[attr-defined]
        return fn
    compiled = _numba.njit(cache=True, nogil=_NOGIL, fastmath=False, boundscheck=False)(fn)
    compiled.py = fn
    return compiled  # type: ignore[return-value]


@kernel
def _sort_run(order, key, lo, hi):
    """Stable sort of ``order[lo:hi]`` by ``key``."""
    sub = order[lo:hi].copy()
    by = np.argsort(key[sub], kind="mergesort")
    for i in range(hi - lo):
        order[lo + i] = sub[by[i]]


@kernel
def _run_end(order, key, i, hi):
    """The end of the run of equal ``key`` that starts at ``order[i]`` (at most ``hi``)."""
    j = i + 1
    while j < hi and key[order[j]] == key[order[i]]:
        j += 1
    return j


@kernel
def lex_order(k1, k2, k3):
    """Indices ordering the rows by (k1, k2, k3) ascending, like ``np.lexsort((k3, k2, k1))``
    (which Numba lacks): one stable sort by k1, then each run of equal k1 by k2, then each run
    of equal (k1, k2) by k3."""
    order = np.argsort(k1, kind="mergesort")
    n = len(order)
    i = 0
    while i < n:
        j = _run_end(order, k1, i, n)
        if j - i > 1:
            _sort_run(order, k2, i, j)
            a = i
            while a < j:
                b = _run_end(order, k2, a, j)
                if b - a > 1:
                    _sort_run(order, k3, a, b)
                a = b
        i = j
    return order


@kernel
def best_n(neg, codes, hashes, n):
    """Indices of the ``n`` smallest ``neg``, ties at the cut broken by the smallest
    ``hashes[codes[i]]``, in no particular order: the set a full sort by (neg, hash) would put
    first, without sorting it all (hashes are read only for the ties at the cut)."""
    m = len(neg)
    if m <= n:
        return np.arange(m)
    cut = np.partition(neg, n - 1)[n - 1]
    better = 0
    for i in range(m):
        if neg[i] < cut:
            better += 1
    tied = np.empty(m - better, dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    b = 0
    t = 0
    for i in range(m):
        if neg[i] < cut:
            out[b] = i
            b += 1
        elif neg[i] == cut:
            tied[t] = i
            t += 1
    tied = tied[:t]
    th = np.empty(t, dtype=np.uint64)
    for i in range(t):
        th[i] = hashes[codes[tied[i]]]
    by_hash = np.argsort(th, kind="mergesort")
    for i in range(n - b):
        out[b + i] = tied[by_hash[i]]
    return out
