"""Python's cyclic garbage collector and the engine's long-lived caches.

A busy operator holds about a million small objects that live for minutes (cached profiles,
the item model's tables). CPython's default collector thresholds (700, 10, 10) make it scan all
of them again and again: measured on the hot-path replay, a full collection of such a heap
takes ~0.5 s and the collector cost about as much CPU as the engine itself. The engine's data
structures hold no reference cycles (reference counting frees them), so:

* :func:`tune_collector` raises the young-generation threshold, so collections are rarer;
* :func:`freeze_survivors` moves every object alive now into the permanent generation, which
  the collector never scans; called once per checkpoint (the job) or per virtual checkpoint
  interval (the simulator). Frozen objects are still freed by reference counting; only garbage
  *cycles* among them would stay until the process ends, and the engine makes none.

Both act on the whole interpreter (in thread mode, every Python operator of a TaskManager).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def tune_collector() -> None:
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, g1, g2)


def freeze_survivors() -> None:
    gc.freeze()
