"""EASE over the head of the catalogue, kept up to date from the stream.

EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019) is the item-item
weight matrix ``B`` minimising ``||X - X B||^2 + lambda ||B||^2`` with ``diag(B) = 0`` over the
binary user x item matrix X, in closed form ``P = (G + lambda I)^-1``, ``B = I - P
diag(1 / diag(P))`` with the Gram matrix ``G = X^T X``. Its scores ``X B`` sum, over a user's
items, the rows of B: exactly the engine's gather/scatter over a user's recent items.

Streaming form (:class:`EaseHead`, one instance on the item-operator subtask that owns the key
``records.EASE_KEY``):

* X is each user's *recent-item set* (``profile.recent_items_max``, the set the recommender
  scores over). When a set changes, the user operator sends (kept, added, removed), and G
  changes by the difference of the set's outer products: ``G[a, kept] += 1`` and
  ``G[kept, a] += 1`` for each added a, ``G[added, added] += 1``, and the same with -1 for the
  removed. G is exactly the Gram matrix of the current sets, restricted to the head.
* The head is up to ``similarity.ease_head_items`` items (M): items enter while there is room;
  once full, a refresh swaps in items outside the head whose occurrence N (the replicated
  counters, :class:`udfs.similarity.ItemStats`) exceeds ``SWAP_RATIO`` times that of the least
  active head item, at most ``SWAP_SHARE`` of M per refresh. A swapped-in item's row starts
  from zero (its earlier co-occurrences were not counted); a swapped-out item's EASE row is
  withdrawn (an empty EASE row), and the recommender uses its item-CF row again.
* Every ``similarity.ease_refresh_ms`` of processing time after G changed, :meth:`refresh`
  solves for B over the head items with a non-zero diagonal and publishes each one's top-K
  weights by magnitude, signs kept (negative weights demote), as its neighbour row with source
  ``SOURCE_EASE``: the recommender then ignores that item's item-CF rows.

Cost: G takes ``4 M^2`` bytes (float32 counts, exact to 2^24) of keyed state on one subtask,
and a refresh inverts an M x M matrix on one working copy (``bench/bench_ease.py`` measures
time and memory per M).
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from state_schemas.config import EngineConfig
from state_schemas.item_state import GramState, decode_gram_state, encode_gram_state
from state_schemas.records import SOURCE_EASE
from udfs.items import NO_CODE
from udfs.similarity import Emission, ItemStats

# Head swaps: an outside item replaces the least active head item once its occurrence is this
# many times larger (hysteresis: items near the boundary do not swap back and forth, each swap
# losing the row's history), and at most this share of the head is swapped per refresh.
SWAP_RATIO = 2.0
SWAP_SHARE = 0.05
SELECT_ROWS_PER_BLOCK = 256
# Stack of the thread that inverts G (see inverse()).
SOLVER_STACK_BYTES = 64 << 20
_stack_size_lock = threading.Lock()


def inverse(g: np.ndarray) -> np.ndarray:
    """``numpy.linalg.inv(g)``, computed on a thread of its own with a 64 MiB stack.

    In the job the engine runs on a Flink task thread (thread mode: CPython embedded in the
    JVM), whose stack is the JVM's default 1 MiB. OpenBLAS's multi-threaded LU factorisation
    (``dgetrf_parallel``, taken for M x M with M >= 100 when OpenBLAS has more than one thread)
    recurses with a ~528 KiB stack frame per level, about 8 levels at M = 1,000: it runs
    megabytes past the end of that stack, stepping over the JVM's 16 KiB guard pages. It then
    either writes into the stacks of neighbouring JVM threads (silent corruption) or hits an
    unmapped or protected page, where the kernel cannot even deliver SIGSEGV to the JVM's
    handler: the TaskManager dies with no Java exception and no hs_err file. A thread started
    here gets a stack of our choosing whoever the caller is (the simulator's main thread, a
    task thread of the mini-cluster or of a standalone TaskManager). The caller waits without
    the GIL; numpy's inverse releases it as well.
    """
    result: dict[str, object] = {}

    def solve() -> None:
        try:
            result["inverse"] = np.linalg.inv(g)
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            result["error"] = e

    with _stack_size_lock:  # threading.stack_size() is process-wide: set it for this one thread
        previous = threading.stack_size(SOLVER_STACK_BYTES)
        try:
            worker = threading.Thread(target=solve, name="ease-inverse", daemon=True)
            worker.start()
        finally:
            threading.stack_size(previous)
    worker.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["inverse"]  # type: ignore[return-value]


class EaseHead:
    """The Gram matrix of the head and its refresh into EASE rows (module docstring)."""

    def __init__(self, cfg: EngineConfig, stats: ItemStats | None = None) -> None:
        sim = cfg.similarity
        self.capacity = sim.ease_head_items
        self.lam = float(sim.ease_lambda)
        self.refresh_ms = sim.ease_refresh_ms
        self.k = sim.top_k
        self.stats = stats
        self.ids: list[str] = []
        self.slot: dict[str, int] = {}
        self.gram = np.zeros((0, 0), dtype=np.float32)
        self.last_refresh = 0
        self.pending = False          # G changed since the last refresh
        self.dirty = False            # G changed since the last snapshot
        self.loaded = False
        self.published: set[str] = set()  # items whose EASE row the recommender holds
        self.updates_outside_head = 0

    # ---------------------------------------------------------------------- state
    def load(self, blob: bytes | None) -> None:
        """Take the keyed-state value, once (later calls keep the resident matrix)."""
        if self.loaded:
            return
        self.loaded = True
        if blob is not None:
            g = decode_gram_state(blob)
            self.ids = list(g.ids)
            self.slot = {i: n for n, i in enumerate(self.ids)}
            self.gram = g.gram
            self.last_refresh, self.pending = g.last_refresh, g.pending
            self.published = {i for n, i in enumerate(self.ids) if g.gram[n, n] > 0}

    def snapshot(self) -> bytes | None:
        """The keyed-state value when G changed since the last snapshot, else None."""
        if not self.dirty:
            return None
        self.dirty = False
        return encode_gram_state(GramState(self.ids, self.gram, self.last_refresh, self.pending))

    # ---------------------------------------------------------------------- updates
    def _slots(self, ids: Sequence[str], admit: bool) -> np.ndarray:
        out = []
        for i in ids:
            s = self.slot.get(i)
            if s is None and admit and len(self.ids) < self.capacity:
                s = self._admit(i)
            if s is None:
                self.updates_outside_head += 1
            else:
                out.append(s)
        return np.asarray(out, dtype=np.int64)

    def _admit(self, item_id: str) -> int:
        n = len(self.ids)
        if n >= len(self.gram):
            size = min(self.capacity, max(64, 2 * len(self.gram)))
            grown = np.zeros((size, size), dtype=np.float32)
            grown[:n, :n] = self.gram[:n, :n]
            self.gram = grown
        self.ids.append(item_id)
        self.slot[item_id] = n
        return n

    def apply(self, changes: Sequence[tuple[Sequence[str], Sequence[str], Sequence[str]]]
              ) -> None:
        """Fold users' recent-set changes (kept, added, removed) into G."""
        g = self.gram
        for kept, added, removed in changes:
            k = self._slots(kept, admit=False)
            for ids, sign in ((added, 1.0), (removed, -1.0)):
                s = self._slots(ids, admit=sign > 0)
                if not len(s):
                    continue
                g = self.gram  # admission may have grown it
                g[np.ix_(s, k)] += sign
                g[np.ix_(k, s)] += sign
                g[np.ix_(s, s)] += sign
                self.pending = self.dirty = True

    def due_at(self) -> int:
        """Processing time of the next refresh (meaningful while :attr:`pending`)."""
        return self.last_refresh + self.refresh_ms

    # ---------------------------------------------------------------------- refresh
    def _swap(self) -> list[str]:
        """Swap more active outside items into a full head; returns the items swapped out."""
        stats = self.stats
        if stats is None or len(self.ids) < self.capacity:
            return []
        codes = np.asarray([stats.items.get(i) for i in self.ids], dtype=np.int64)
        head_occ = np.where(codes != NO_CODE, stats.occ[np.maximum(codes, 0)], 0.0)
        in_head = np.zeros(len(stats.occ), dtype=bool)
        in_head[codes[codes != NO_CODE]] = True
        occ = np.where(in_head, 0.0, stats.occ[:len(in_head)])
        n_swap = max(1, int(self.capacity * SWAP_SHARE))
        outside = np.argsort(-occ, kind="stable")[:n_swap]
        weakest = np.argsort(head_occ, kind="stable")[:n_swap]
        gone = []
        for c, s in zip(outside.tolist(), weakest.tolist()):
            if not occ[c] > SWAP_RATIO * head_occ[s]:
                break
            old = self.ids[s]
            new = stats.items.id_of(c)
            del self.slot[old]
            self.ids[s] = new
            self.slot[new] = s
            self.gram[s, :] = 0.0
            self.gram[:, s] = 0.0
            gone.append(old)
            self.dirty = True
        return gone

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """``(active slots, B over them)``: EASE's weights among head items with a non-zero
        diagonal (B[a, b]: how much item a in a user's set speaks for item b), in float64
        (numpy's inverse computes in double precision whatever the input). Its working set is
        the float64 copy of G plus what ``numpy.linalg.inv`` allocates (about three M x M
        float64 arrays in all, measured by ``bench/bench_ease.py``)."""
        n = len(self.ids)
        diag = np.diag(self.gram[:n, :n])
        active = np.flatnonzero(diag > 0)
        if not len(active):
            return active, np.zeros((0, 0))
        g = (self.gram[:n, :n] if len(active) == n
             else self.gram[np.ix_(active, active)]).astype(np.float64)
        # Removing a set counted before a swap zeroed a slot can leave small negative counts.
        np.maximum(g, 0.0, out=g)
        g[np.diag_indices_from(g)] += self.lam
        b = inverse(g)  # not np.linalg.inv(g) on this thread: see inverse()
        del g
        b /= -np.diag(b).copy()
        b[np.diag_indices_from(b)] = 0.0
        return active, b

    def refresh(self, proc_now: int) -> list[Emission]:
        """Solve and publish every active head item's row; withdraw the rows of items that left
        the head or have no user any more."""
        gone = self._swap()
        active, b = self.weights()
        out = []
        k = min(self.k, max(len(active) - 1, 0))
        # Top-K by magnitude, a block of rows at a time (argpartition's indices for all rows
        # at once would take 8 M^2 bytes).
        for start in range(0, len(active) if k > 0 else 0, SELECT_ROWS_PER_BLOCK):
            block = b[start:start + SELECT_ROWS_PER_BLOCK]
            top = np.argpartition(-np.abs(block), k - 1, axis=1)[:, :k]
            vals = np.take_along_axis(block, top, axis=1)
            order = np.argsort(-vals, axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            vals = np.take_along_axis(vals, order, axis=1)
            for row in range(len(block)):
                keep = vals[row] != 0.0
                out.append(Emission(self.ids[active[start + row]],
                                    [self.ids[active[j]] for j in top[row][keep].tolist()],
                                    vals[row][keep].tolist(), proc_now, SOURCE_EASE))
        now_published = {e.item_id for e in out if e.neighbor_ids}
        for item in sorted((self.published - now_published) | set(gone)):
            out.append(Emission(item, [], [], proc_now, SOURCE_EASE))
        self.published = now_published
        self.last_refresh = proc_now
        self.pending = False
        self.dirty = True
        return out
