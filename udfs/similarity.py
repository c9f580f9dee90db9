"""Incremental item-item similarity: a pure, vectorised kernel (no Flink in here).

The similarity operator is keyed by a *shard* of items. Every ``flush_interval_ms`` it hands this
module all pair updates buffered for the shard plus the shard's current rows, and stores what comes
back. A batch is processed with array operations over the whole batch, because a Python loop per
pair entry is what limits throughput in a PyFlink job (``bench/bench_similarity_kernel.py``).

Model (TencentRec, Huang et al., SIGMOD 2015, with forward decay):

* A pair update ``(i, j, w, ts)`` says "a user interacted with j while i was in their recent
  history", with the action weight ``w``. The operator emits both directions.
* **Forward decay** with a global landmark ``L``: an update at ``ts`` contributes
  ``w * 2**((ts - L) / half_life)``. The co-occurrence ``C(i, j)`` stored in a row and the
  occurrence ``N(i)`` supplied by the caller are both scaled this way, so every ratio
  ``C / f(N_i, N_j)`` *is* the time-decayed similarity at any read time and nothing ever has to be
  re-decayed (no timers, no rewrite of old state). The price: stored numbers grow as
  ``2**((now - L) / half_life)``. Past :data:`MAX_DECAY_EXPONENT` half-lives float64 would soon
  overflow, so :func:`decay_factor` raises and the job must move ``landmark_ms`` forward,
  multiplying every stored C and N by :func:`landmark_rescale_factor` (ratios, hence neighbours,
  do not change; see :meth:`ItemRow.scaled`).
* Per row ``i`` we keep the co-occurrence entries ``cols/vals``, ``obs`` (the number of raw
  observations of each pair, for the Hoeffding bound) and the current top-K ``neighbors``.
* After each batch every touched row re-scores *all* its entries (N changed), keeps its top-K
  and prunes so that memory per item stays bounded: first the Hoeffding bound (a pair observed
  ``n`` times whose score plus ``eps(n) = sqrt(ln(1/delta) / (2 n))`` is still below the K-th best
  score will, with probability >= 1 - delta, not belong to the top-K), then a hard cap of
  ``max_pairs_per_item`` entries that never evicts a current top-K member. A pruned pair that
  keeps co-occurring comes back and starts counting afresh (unlike TencentRec's permanent prune
  list, which would itself need unbounded memory).

:func:`apply_pair_updates_reference` states the same semantics in plain Python; it is the
executable specification that the vectorised :func:`apply_pair_updates` is tested against.

Item ids inside the kernel are int codes from :data:`ID_TABLE`, a process-local, append-only
interning table (never checkpointed: state holds the ids themselves). Rows keep their columns as
codes so a batch never hashes the ~100 strings of every touched row again; the table also ranks
its ids in string order, which is what "ties broken by col id" means.

Performance (``bench/bench_similarity_kernel.py``: 20k pair updates, 1.6k touched rows of ~100
entries): ~13 ms per flush against ~185 ms for the reference. What is left is mostly the
per-row Python work of gathering the rows and slicing the results back, and glibc page-faulting
the temporaries in again on every call (see :func:`tune_allocator`).
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import math
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from recsys.config import SimilarityConfig
from state_schemas.internal import PairShardBatch
from state_schemas.state import ITEM_ROW_STATE_VERSION, StateVersionError

METRICS: tuple[str, ...] = ("cosine", "jaccard", "popularity_penalised")

# 2**900 is ~1e271: sums of many such contributions, and the products formed in the scores
# (computed as sqrt(N_i) * sqrt(N_j), never N_i * N_j), stay well inside float64 (max 2**1024).
MAX_DECAY_EXPONENT = 900.0

_I64 = np.int64
_F64 = np.float64


def _empty_i() -> np.ndarray:
    return np.empty(0, dtype=_I64)


def _empty_f() -> np.ndarray:
    return np.empty(0, dtype=_F64)


def _object_array(values: Any) -> np.ndarray:
    """A 1-d object array of ``str`` (numpy 'U' arrays become real ``str`` objects)."""
    if isinstance(values, np.ndarray):
        return values.reshape(-1) if values.dtype == object else values.reshape(-1).astype(object)
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


# --------------------------------------------------------------------------------------------
# Id interning
# --------------------------------------------------------------------------------------------

class IdTable:
    """Append-only map of item ids to dense int codes, with ranks that follow the ids' order.

    ``encode`` is one C-level dict lookup per id. ``snapshot()`` returns ``(rank, limit)``:
    ``rank[code]`` is an int in ``[0, limit)``, strictly increasing in string order of the ids.
    Ranks are spaced ``_GAP`` apart and a new id takes the midpoint between its neighbours, so
    adding ids never changes existing ranks (rows sorted by rank stay sorted) and costs
    O(log n) per id instead of re-ranking the whole table; only when a gap is used up are all
    ranks renumbered (into a new array). New ids are added under a lock (PyFlink's thread mode
    may run several operators in one interpreter); a code is published only after its rank is
    written, and arrays are never shrunk or reordered in place, so snapshots stay consistent.
    Memory: the ids the process has seen (bounded by the catalogue), ~100 bytes each.
    """

    _GAP = 1 << 12

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._code: dict[str, int] = {}
        self._strings = np.empty(1024, dtype=object)  # code -> id (capacity doubles)
        self._rank = np.empty(1024, dtype=_I64)       # code -> rank
        self._snap: tuple[np.ndarray, int] = (self._rank, 1)
        self._main: list[str] = []     # all ids, sorted, as of the last compaction
        self._pending: list[str] = []  # ids added since, sorted

    def __len__(self) -> int:
        return len(self._code)

    def encode(self, ids: Sequence[str]) -> np.ndarray:
        """int64 codes of ``ids`` (a list, tuple or object array), adding unknown ids."""
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        try:
            return np.fromiter(map(self._code.__getitem__, ids), dtype=_I64, count=len(ids))
        except KeyError:
            self._add(ids)
            return np.fromiter(map(self._code.__getitem__, ids), dtype=_I64, count=len(ids))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Object array of the ids of ``codes``."""
        return self._strings[codes]

    def rank(self) -> np.ndarray:
        """``rank()[code]``: a number increasing with the id's string order."""
        return self._snap[0]

    def snapshot(self) -> tuple[np.ndarray, int]:
        """``(rank, limit)`` with ``0 <= rank[code] < limit`` for every code known now."""
        return self._snap

    def _add(self, ids: Iterable[str]) -> None:
        with self._lock:
            missing = set(ids).difference(self._code)
            bad = [s for s in missing if not isinstance(s, str)]
            if bad:
                raise TypeError(f"item ids must be str, got {bad[:3]!r}")
            new = sorted(missing)
            if not new:
                return
            start = len(self._code)
            n = start + len(new)
            if n > len(self._strings):  # grow: new arrays, old snapshots keep theirs
                cap = max(n, 2 * len(self._strings))
                strings, rank = np.empty(cap, dtype=object), np.empty(cap, dtype=_I64)
                strings[:start], rank[:start] = self._strings[:start], self._rank[:start]
                self._strings, self._rank = strings, rank
            if len(new) > max(1024, start // 8):  # bulk load: one sort beats many inserts
                self._renumber(new, start)
                return
            limit = self._snap[1]
            for k, s in enumerate(new):
                r = self._place(s)
                if r is None:  # no room between the neighbours: renumber everything
                    self._renumber(new[k:], start + k)
                    return
                code = start + k
                self._strings[code] = s
                self._rank[code] = r
                limit = max(limit, r + 1)
                self._snap = (self._rank, limit)
                bisect.insort(self._pending, s)
                self._code[s] = code
            if len(self._pending) > max(1024, int(math.sqrt(len(self._main)))):
                self._main = sorted(self._main + self._pending)  # timsort: merges two runs
                self._pending = []

    def _place(self, s: str) -> int | None:
        """A rank strictly between the ranks of the ids around ``s``, or None if none is free."""
        lo = hi = None
        for ids in (self._main, self._pending):
            p = bisect.bisect_left(ids, s)
            if p > 0 and (lo is None or ids[p - 1] > lo):
                lo = ids[p - 1]
            if p < len(ids) and (hi is None or ids[p] < hi):
                hi = ids[p]
        r_lo = int(self._rank[self._code[lo]]) if lo is not None else 0
        if hi is None:
            return r_lo + self._GAP
        r = (r_lo + int(self._rank[self._code[hi]])) // 2
        return r if r > r_lo else None

    def _renumber(self, rest: list[str], first_code: int) -> None:
        """Give every id (known ones and ``rest``) the rank (position + 1) * _GAP."""
        codes = range(first_code, first_code + len(rest))
        self._strings[first_code:first_code + len(rest)] = rest
        everything = sorted(self._main + self._pending + rest)
        lookup = {**self._code, **dict(zip(rest, codes))}
        in_order = np.fromiter(map(lookup.__getitem__, everything), dtype=_I64,
                               count=len(everything))
        rank = np.empty(len(self._strings), dtype=_I64)
        rank[in_order] = np.arange(1, len(everything) + 1, dtype=_I64) * self._GAP
        self._rank = rank
        self._snap = (rank, (len(everything) + 1) * self._GAP)
        self._main, self._pending = everything, []
        self._code.update(zip(rest, codes))


ID_TABLE = IdTable()


def tune_allocator(trim_threshold: int = 512 << 20, mmap_threshold: int = 32 << 20) -> bool:
    """Make glibc keep freed memory for reuse; call once per process (e.g. in ``open()``).

    A flush allocates tens of MB of temporary arrays. By default glibc hands large freed blocks
    back to the OS at once, so every flush page-faults the same memory in again: measured as
    ~40% of the kernel's time on the reference machine (e.g. 21 ms -> 13 ms). Raising
    ``M_TRIM_THRESHOLD``/``M_MMAP_THRESHOLD`` keeps up to ``trim_threshold`` bytes of freed
    heap mapped. Same effect as ``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_`` in the
    environment. Returns False where it does not apply (not glibc).
    """
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path) if path else None
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_trim_threshold, int(trim_threshold))
                and mallopt(m_mmap_threshold, int(mmap_threshold)))


# --------------------------------------------------------------------------------------------
# Batches of pair updates
# --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class PairBatch:
    """Pair updates as parallel arrays (columnar, so a whole batch is processed at once).

    ``rows``/``cols`` are object arrays of item ids (``str``), ``weights`` float64 action weights,
    ``ts`` int64 event times in ms. Update ``k`` means: C(rows[k], cols[k]) += weights[k] at ts[k].
    """
    rows: np.ndarray
    cols: np.ndarray
    weights: np.ndarray
    ts: np.ndarray

    def __post_init__(self) -> None:
        self.rows = _object_array(self.rows)
        self.cols = _object_array(self.cols)
        self.weights = np.asarray(self.weights, dtype=_F64).reshape(-1)
        self.ts = np.asarray(self.ts, dtype=_I64).reshape(-1)
        n = len(self.rows)
        if not (len(self.cols) == len(self.weights) == len(self.ts) == n):
            raise ValueError(f"PairBatch arrays differ in length: rows={n}, cols={len(self.cols)}, "
                             f"weights={len(self.weights)}, ts={len(self.ts)}")

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def empty(cls) -> PairBatch:
        return cls(_object_array(()), _object_array(()), _empty_f(), _empty_i())

    @classmethod
    def from_lists(cls, rows: Sequence[str], cols: Sequence[str], weights: Sequence[float],
                   ts: Sequence[int]) -> PairBatch:
        """Build a batch from the parallel Python lists an operator buffers."""
        return cls(rows, cols, weights, ts)

    @classmethod
    def from_shard_batches(cls, batches: Iterable[Sequence[Any]]) -> PairBatch:
        """One batch from buffered ``PairShardBatch`` records (plain tuples once PyFlink has
        pickled them), in order; a record's ``ts`` applies to each of its pairs. The inverse
        of :func:`pair_batches_by_shard`."""
        rows: list[str] = []
        cols: list[str] = []
        weights: list[float] = []
        ts: list[int] = []
        for b in map(PairShardBatch._make, batches):
            rows.extend(b.rows)
            cols.extend(b.cols)
            weights.extend(b.weights)
            ts.extend([b.ts] * len(b.rows))
        return cls.from_lists(rows, cols, weights, ts)

    @classmethod
    def from_tuples(cls, updates: Iterable[tuple[str, str, float, int]]) -> PairBatch:
        """Build a batch from ``(row, col, weight, ts)`` tuples (handy in tests)."""
        updates = list(updates)
        if not updates:
            return cls.empty()
        rows, cols, weights, ts = zip(*updates)
        return cls(rows, cols, weights, ts)

    @classmethod
    def concat(cls, batches: Iterable[PairBatch]) -> PairBatch:
        """One batch holding the updates of ``batches`` in order (buffers flushed together)."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        return cls(np.concatenate([b.rows for b in batches]),
                   np.concatenate([b.cols for b in batches]),
                   np.concatenate([b.weights for b in batches]),
                   np.concatenate([b.ts for b in batches]))


# --------------------------------------------------------------------------------------------
# Row state
# --------------------------------------------------------------------------------------------

@dataclass(slots=True, eq=False)
class ItemRow:
    """Similarity state of one item i.

    ``codes`` (int64 :data:`ID_TABLE` codes of the columns j, ascending by id), ``vals`` (float64
    forward-decayed C(i, j)) and ``obs`` (int64 raw observations of each pair) are parallel.
    Arrays, not tuples, so that many rows concatenate into the kernel's arrays without
    per-entry Python work; ``cols`` gives the ids as ``str``.

    The top-K, best first, is ``neighbors`` (``((j, score), ...)``); rows made by the kernel hold
    it as arrays (``nb_codes``/``nb_scores``) and decode it on first use, rows read from state
    keep the stored tuple (``nb_codes``/``nb_scores`` are then None): the kernel never reads
    its input rows' neighbours, so nobody pays to convert them.

    Rows returned by :func:`apply_pair_updates` hold slices of one array per batch (copying
    them would add ~2-3 ms per 1,500 rows): treat them as read-only, and :meth:`copy` a row
    that is kept around for long, since a slice keeps its whole batch array alive.
    """
    codes: np.ndarray
    vals: np.ndarray
    obs: np.ndarray
    nb_codes: np.ndarray | None = None
    nb_scores: np.ndarray | None = None
    _neighbors: tuple[tuple[str, float], ...] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def cols(self) -> tuple[str, ...]:
        return tuple(ID_TABLE.decode(self.codes).tolist())

    @property
    def neighbors(self) -> tuple[tuple[str, float], ...]:
        """The top-K as ``((j, score), ...)``, best first."""
        if self._neighbors is None:
            if self.nb_codes is None or self.nb_scores is None:
                self._neighbors = ()
            else:
                self._neighbors = tuple(zip(ID_TABLE.decode(self.nb_codes).tolist(),
                                            self.nb_scores.tolist()))
        return self._neighbors

    @classmethod
    def empty(cls) -> ItemRow:
        return cls(_empty_i(), _empty_f(), _empty_i(), _empty_i(), _empty_f(), ())

    @classmethod
    def from_columns(cls, cols: Sequence[str], vals: Sequence[float], obs: Sequence[int],
                     neighbors: Iterable[tuple[str, float]] = ()) -> ItemRow:
        """A row from parallel sequences, in any order (sorted here; duplicates are an error)."""
        codes = ID_TABLE.encode(cols)
        vals = np.array(vals, dtype=_F64).reshape(-1)
        obs = np.array(obs, dtype=_I64).reshape(-1)
        if not len(codes) == len(vals) == len(obs):
            raise ValueError(f"item row has {len(codes)} cols, {len(vals)} vals, {len(obs)} obs")
        ranks = ID_TABLE.rank()[codes]
        if len(ranks) > 1 and not (ranks[1:] > ranks[:-1]).all():
            order = np.argsort(ranks, kind="stable")
            codes, vals, obs, ranks = codes[order], vals[order], obs[order], ranks[order]
            if (ranks[1:] == ranks[:-1]).any():
                raise ValueError("item row lists a column twice")
        nb = tuple((str(c), float(s)) for c, s in neighbors)
        return cls(codes, vals, obs, None, None, nb)

    @classmethod
    def from_entries(cls, entries: Mapping[str, tuple[float, int]],
                     neighbors: Iterable[tuple[str, float]] = ()) -> ItemRow:
        """A row from ``{col: (val, obs)}``."""
        cols = list(entries)
        return cls.from_columns(cols, [entries[c][0] for c in cols],
                                [entries[c][1] for c in cols], neighbors)

    def copy(self) -> ItemRow:
        """A row owning its arrays."""
        return ItemRow(self.codes.copy(), self.vals.copy(), self.obs.copy(), None, None,
                       self.neighbors)

    def entries(self) -> dict[str, tuple[float, int]]:
        """``{col: (val, obs)}`` as plain Python values."""
        return dict(zip(self.cols, zip(self.vals.tolist(), self.obs.tolist())))

    def scaled(self, factor: float) -> ItemRow:
        """The row with every C multiplied by ``factor`` (moving the decay landmark).

        Every metric is a ratio of homogeneous degree 0 in (C, N), so when N is rescaled by the
        same factor the scores and neighbours stay what they were.
        """
        return ItemRow(self.codes.copy(), self.vals * float(factor), self.obs.copy(), None, None,
                       self.neighbors)

    def to_state(self) -> tuple:
        """``(version, cols, vals, obs, neighbors)``: a tuple of str, little-endian float64
        bytes, a tuple of int and ``((j, score), ...)``. Plain builtins (pickle-safe); bytes for
        the floats because a tuple of 200 floats takes ~4x longer to pickle and ~15x longer to
        unpickle (measured: 1.7/4.0 us vs 0.4/0.24 us)."""
        return (ITEM_ROW_STATE_VERSION, self.cols, self.vals.astype("<f8", copy=False).tobytes(),
                tuple(self.obs.tolist()), self.neighbors)

    @classmethod
    def from_state(cls, state: Sequence[Any]) -> ItemRow:
        """Read what :meth:`to_state` wrote (``vals``/``obs`` may be bytes, sequences or arrays).

        Trusts the stored column order (written sorted by :meth:`to_state`); the kernel checks
        it anyway and re-sorts a row that is not.
        """
        _check_state(state)
        _, cols, vals, obs, neighbors = state
        codes = ID_TABLE.encode(cols)
        vals = _state_array(vals, "<f8", _F64)
        obs = _state_array(obs, "<i8", _I64)
        if not len(codes) == len(vals) == len(obs):
            raise ValueError(f"item row state is corrupt: {len(codes)} cols, {len(vals)} vals, "
                             f"{len(obs)} obs")
        if not isinstance(neighbors, tuple) or (neighbors and not isinstance(neighbors[0], tuple)):
            neighbors = tuple((str(c), float(s)) for c, s in neighbors)
        return cls(codes, vals, obs, None, None, neighbors)

    @staticmethod
    def neighbors_of_state(state: Sequence[Any]) -> tuple[tuple[str, float], ...]:
        """Only the neighbours of a stored row (no decoding of the entries)."""
        _check_state(state)
        return tuple((str(c), float(s)) for c, s in state[4])


def _check_state(state: Sequence[Any]) -> None:
    if not state or state[0] != ITEM_ROW_STATE_VERSION:
        version = state[0] if state else None
        raise StateVersionError(f"item row state version {version!r} is not supported "
                                f"(this code reads {ITEM_ROW_STATE_VERSION})")
    if len(state) != 5:
        raise ValueError(f"item row state has {len(state)} fields, expected 5")


def _state_array(values: Any, wire: str, dtype: type) -> np.ndarray:
    if isinstance(values, (bytes, bytearray, memoryview)):
        return np.frombuffer(values, dtype=wire).astype(dtype)
    return np.asarray(values, dtype=dtype).reshape(-1)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

def decay_factor(ts: np.ndarray, landmark_ms: int, half_life_ms: int) -> np.ndarray:
    """Forward-decay factors ``2**((ts - landmark_ms) / half_life_ms)`` (all 1 if no decay).

    Raises ``ValueError`` when an exponent exceeds :data:`MAX_DECAY_EXPONENT` (900 half-lives):
    stored sums would approach float64 overflow. The fix is to move ``landmark_ms`` forward (to
    about "now") and rescale stored C and N by :func:`landmark_rescale_factor`. Events far
    *before* the landmark underflow towards 0, which is their decayed weight anyway.
    """
    ts = np.asarray(ts, dtype=_I64)
    if half_life_ms <= 0:
        return np.ones(ts.shape, dtype=_F64)
    x = (ts - _I64(landmark_ms)) / float(half_life_ms)
    if x.size:
        worst = int(np.argmax(x))
        _check_exponent(float(x.flat[worst]), int(ts.flat[worst]), landmark_ms, half_life_ms)
    return np.exp2(x)


def _check_exponent(x: float, ts: int, landmark_ms: int, half_life_ms: int) -> None:
    if x > MAX_DECAY_EXPONENT:
        raise ValueError(
            f"forward decay overflow: ts={ts} is {x:.1f} half-lives after landmark_ms="
            f"{landmark_ms} (limit {MAX_DECAY_EXPONENT:.0f}, half_life_ms={half_life_ms}). "
            f"Move landmark_ms forward and rescale the stored co-occurrence/occurrence values "
            f"by landmark_rescale_factor(old, new, half_life_ms).")


def landmark_rescale_factor(old_landmark_ms: int, new_landmark_ms: int, half_life_ms: int) -> float:
    """The factor converting values stored under ``old_landmark_ms`` to ``new_landmark_ms``."""
    if half_life_ms <= 0:
        return 1.0
    return 2.0 ** ((old_landmark_ms - new_landmark_ms) / half_life_ms)


def hoeffding_eps(n: np.ndarray | int, delta: float) -> np.ndarray:
    """``sqrt(R^2 ln(1/delta) / (2 n))`` with R = 1: how far the mean of n observations of a
    quantity in [0, 1] may be from its expectation, with probability >= 1 - delta."""
    return np.sqrt(math.log(1.0 / delta) / (2.0 * np.asarray(n, dtype=_F64)))


def _check_weights(weights: np.ndarray) -> None:
    if weights.size and not np.isfinite(weights).all():
        raise ValueError("pair update weights must be finite")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown similarity metric {metric!r}; expected one of {METRICS}")


def _check_params(cfg: SimilarityConfig, delta: float, min_obs: int) -> None:
    _check_metric(cfg.metric)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be within (0, 1), got {delta!r}")
    if min_obs < 1:
        raise ValueError(f"min_obs must be >= 1, got {min_obs!r}")
    if cfg.top_k < 1 or cfg.max_pairs_per_item < 1:
        raise ValueError("top_k and max_pairs_per_item must be positive")


def _aggregate_keys(keys: np.ndarray, contrib: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``keys`` (ascending), an index holding each, the sum of ``contrib``, count.

    ``np.bincount`` adds sequentially in input (batch) order, unlike the pairwise summation of
    ``np.add.reduceat``, so the sums are bit-identical to the reference's ``+=`` loop; so the
    sort itself need not be stable (quicksort, ~4x faster than ``np.unique``'s index path).
    """
    perm = np.argsort(keys)
    sorted_keys = keys[perm]
    first = np.empty(len(keys), dtype=bool)
    first[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=first[1:])
    inv = np.empty(len(keys), dtype=_I64)
    inv[perm] = np.cumsum(first) - 1
    uniq = sorted_keys[first]
    vals = np.bincount(inv, weights=contrib, minlength=len(uniq))
    obs = np.bincount(inv, minlength=len(uniq)).astype(_I64)
    return uniq, perm[first], vals, obs


def aggregate_pairs(batch: PairBatch, landmark_ms: int, half_life_ms: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sum the decayed weights of duplicate ``(row, col)`` updates: ``(rows, cols, vals, obs)``.

    Sorted by (row, col); ``obs`` counts the raw updates of each pair; self pairs (row == col)
    are dropped. Duplicates are the norm: the same pair from many users within one flush.
    """
    _check_weights(batch.weights)
    if len(batch) == 0:
        return _object_array(()), _object_array(()), _empty_f(), _empty_i()
    contrib = batch.weights * decay_factor(batch.ts, landmark_ms, half_life_ms)
    r = ID_TABLE.encode(batch.rows)
    c = ID_TABLE.encode(batch.cols)
    rank, limit = ID_TABLE.snapshot()
    ns = r != c
    r, c = r[ns], c[ns]
    _, at, vals, obs = _aggregate_keys(rank[r] * _I64(limit) + rank[c], contrib[ns])
    return ID_TABLE.decode(r[at]), ID_TABLE.decode(c[at]), vals, obs


def pair_scores(c: np.ndarray, n_i: np.ndarray, n_j: np.ndarray, metric: str,
                alpha: float) -> np.ndarray:
    """Similarity of pairs from co-occurrence ``c`` and occurrences ``n_i``, ``n_j``.

    cosine ``C/sqrt(N_i N_j)``; jaccard ``C/(N_i + N_j - C)``; popularity_penalised
    ``C/(N_i**(1-alpha) N_j**alpha)`` (alpha > 0.5 penalises popular neighbours j). A pair scores
    0 when either occurrence is <= 0 (unknown item) or the denominator is <= 0. Cosine is
    computed as C / (sqrt(N_i) * sqrt(N_j)): forward-decayed N may be ~2**900 and N_i * N_j
    would overflow.
    """
    _check_metric(metric)
    c, n_i, n_j = (np.asarray(a, dtype=_F64) for a in (c, n_i, n_j))
    p_i, p_j = np.where(n_i > 0, n_i, 1.0), np.where(n_j > 0, n_j, 1.0)
    if metric == "cosine":
        den = np.sqrt(p_i) * np.sqrt(p_j)
    elif metric == "popularity_penalised":
        den = p_i ** (1.0 - alpha) * p_j ** alpha
    else:
        den = (n_i + n_j) - c
    out = np.zeros(np.broadcast(c, den).shape, dtype=_F64)
    np.divide(c, den, out=out, where=(n_i > 0) & (n_j > 0) & (den > 0))
    return out


def _occurrence_by_code(codes: np.ndarray, size: int, occurrence: Mapping[str, float],
                        metric: str, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N and the per-item denominator factors ``f_i``/``f_j``, as arrays indexed by id code.

    One lookup per distinct id, not per pair. For cosine (sqrt N) and popularity_penalised
    (N**(1-alpha), N**alpha) the factor of an item with N <= 0 is inf, so its pairs score
    C / inf = 0 without a mask. The powers use Python's ``**`` so that scores are bit-identical
    to the reference's (numpy's SIMD ``power`` can differ in the last ulp and flip exact ties).
    """
    # Indexed by code but written only at ``codes``: np.empty, so a large id table costs
    # nothing here (untouched pages are never even mapped in).
    n_list = [float(occurrence.get(s, 0.0)) for s in ID_TABLE.decode(codes).tolist()]
    n = np.empty(size, dtype=_F64)
    n[codes] = n_list
    if metric == "jaccard":
        return n, n, n
    f_i = np.empty(size, dtype=_F64)
    if metric == "cosine":
        f_i[codes] = np.sqrt(np.where(n[codes] > 0, n[codes], np.inf))
        return n, f_i, f_i
    a = float(alpha)
    f_j = np.empty(size, dtype=_F64)
    f_i[codes] = [x ** (1.0 - a) if x > 0 else math.inf for x in n_list]
    f_j[codes] = [x ** a if x > 0 else math.inf for x in n_list]
    return n, f_i, f_j


def _entry_scores(vals: np.ndarray, row_codes: np.ndarray, counts: np.ndarray,
                  col_code: np.ndarray, metric: str, n: np.ndarray, f_i: np.ndarray,
                  f_j: np.ndarray) -> np.ndarray:
    """Scores of all entries (rows contiguous, ``counts`` entries each); see :func:`pair_scores`."""
    if metric == "jaccard":
        out = np.zeros(len(vals), dtype=_F64)
        n_i, n_j = np.repeat(n[row_codes], counts), n[col_code]
        den = (n_i + n_j) - vals
        np.divide(vals, den, out=out, where=(n_i > 0) & (n_j > 0) & (den > 0))
        return out
    den = f_j[col_code]
    den *= np.repeat(f_i[row_codes], counts)
    if not (den > 0).all():  # only if a factor underflowed to 0
        out = np.zeros(len(vals), dtype=_F64)
        np.divide(vals, den, out=out, where=den > 0)
        return out
    return np.divide(vals, den, out=den)


# --------------------------------------------------------------------------------------------
# Vectorised kernel
# --------------------------------------------------------------------------------------------

_LAST = float(np.finfo(np.float64).max)  # sort key of entries that must come after all others


def _width_groups(counts: np.ndarray, rows: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """``rows`` grouped by power-of-two width (>= 8), so that padded matrices waste < 2x."""
    widths = np.maximum(np.ceil(np.log2(np.maximum(counts[rows], 1))), 3).astype(_I64)
    classes = np.unique(widths).tolist()
    if len(classes) == 1:
        return [(rows, 1 << classes[0])]
    return [(rows[widths == c], 1 << c) for c in classes]


def _padded(starts: np.ndarray, counts: np.ndarray, rows: np.ndarray, width: int,
            key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(idx, mat)``: entry indices and keys of ``rows`` as lines of a (rows x width) matrix.

    Lane q of line r is entry ``starts[r] + q`` (lanes follow the entries' col-id order); lanes
    past a row's end hold inf, so keys must be finite (``_LAST`` marks entries to sort last).
    Not NaN padding: numpy's vectorised argsort falls back to a ~7x slower path on NaN.
    """
    lane = np.arange(width, dtype=_I64)
    idx = starts[rows][:, None] + lane
    valid = lane < counts[rows][:, None]
    np.minimum(idx, max(len(key) - 1, 0), out=idx)
    mat = key[idx] if len(key) else np.zeros(idx.shape)
    mat[~valid] = np.inf
    return idx, mat


def _hoeffding_margin(obs: np.ndarray, delta: float, min_obs: int) -> np.ndarray:
    """eps(obs) per entry, inf where obs < min_obs (never pruned). A lookup table over small
    counts (computed with the same float operations, so bit-identical) saves a sqrt and a
    division per entry."""
    num = math.log(1.0 / delta)
    top = int(obs.max()) if len(obs) else 0
    if top <= 4096:
        n = np.arange(max(top, min_obs) + 1, dtype=_F64)
        table = np.full(len(n), np.inf)
        table[min_obs:] = np.sqrt(num / (2.0 * n[min_obs:]))
        return table[obs] if obs.min() >= 0 else table[np.maximum(obs, 0)]
    out = np.full(len(obs), np.inf)
    ok = obs >= min_obs
    out[ok] = np.sqrt(num / (2.0 * obs[ok].astype(_F64)))
    return out


@dataclass(slots=True)
class _Selection:
    """Outcome of scoring rows whose entries are contiguous and in (row, col id) order."""
    keep: np.ndarray | None  # bool per entry; None: keep all
    top: np.ndarray          # entry indices of the top-K, rows in order, best first
    top_counts: np.ndarray   # top-K size per row


def _select(starts: np.ndarray, counts: np.ndarray, vals: np.ndarray, obs: np.ndarray,
            scores: np.ndarray, cfg: SimilarityConfig, *, prune: bool, delta: float,
            min_obs: int) -> _Selection:
    """Top-K per row, then Hoeffding pruning and the hard cap (see the module docstring).

    Rows are sorted side by side as the lines of padded matrices (one ``np.argsort(axis=1)``
    per power-of-two width class), several times faster than a ``np.lexsort`` over the flat
    arrays. That sort is not stable, so the few lines with equal keys are sorted again with a
    stable sort (lanes are in col-id order, so stability breaks ties by col id).
    """
    k = cfg.top_k
    n_rows = len(counts)
    eligible = (vals >= cfg.min_cooccurrence) & (scores > 0)
    key = np.negative(scores)
    key[~eligible] = _LAST
    top_idx = np.full((n_rows, k), -1, dtype=_I64)
    n_elig = np.zeros(n_rows, dtype=_I64)
    t_k = np.full(n_rows, -np.inf)  # clipped K-th score; -inf: no full top-K, nothing pruned
    for rows, width in _width_groups(counts, np.arange(n_rows, dtype=_I64)):
        idx, mat = _padded(starts, counts, rows, width, key)
        perm = np.argsort(mat, axis=1)
        head = perm[:, :min(k + 1, width)]
        head_keys = np.take_along_axis(mat, head, axis=1)
        tie = ((head_keys[:, 1:] == head_keys[:, :-1]) & (head_keys[:, 1:] < _LAST)).any(axis=1)
        if tie.any():
            t = np.flatnonzero(tie)
            head[t] = np.argsort(mat[t], axis=1, kind="stable")[:, :head.shape[1]]
        n_elig[rows] = (mat < _LAST).sum(axis=1)
        kk = min(k, width)
        top_idx[rows, :kk] = np.take_along_axis(idx, head[:, :kk], axis=1)
        if width >= k:
            full = n_elig[rows] >= k
            t_k[rows[full]] = np.clip(-head_keys[full, k - 1], 0.0, 1.0)
    top_counts = np.minimum(n_elig, k)
    top = top_idx[np.arange(k) < top_counts[:, None]]
    if not prune or len(vals) == 0:
        return _Selection(None, top, top_counts)

    # (1) Hoeffding: in rows with a full top-K, drop pairs confidently below the K-th score.
    # (Top-K members never qualify: score + eps > score >= t_K.)
    bound = np.clip(scores, 0.0, 1.0)
    bound += _hoeffding_margin(obs, delta, min_obs)
    bound -= np.repeat(t_k, counts)
    drop = bound < 0.0
    # (2) Hard cap: evict the lowest non-top-K entries by (score, val, then the higher col id).
    cap = cfg.max_pairs_per_item
    kept = counts - _rows_of(np.flatnonzero(drop), starts)
    over = np.flatnonzero(kept > np.maximum(cap, top_counts))
    if len(over):
        candidate = ~drop
        candidate[top] = False
        for rows, width in _width_groups(counts, over):
            idx, mat = _padded(starts, counts, rows, width, -scores)
            mat[~candidate[idx] & (mat < np.inf)] = _LAST
            perm = np.argsort(mat, axis=1)
            ranked = np.take_along_axis(mat, perm, axis=1)
            tie = ((ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] < _LAST)).any(axis=1)
            if tie.any():  # equal scores: higher val first, then lower col id (lane)
                t = np.flatnonzero(tie)
                lanes = np.broadcast_to(np.arange(width), (len(t), width))
                perm[t] = np.lexsort((lanes, -vals[idx[t]], mat[t]), axis=-1)
                ranked[t] = np.take_along_axis(mat[t], perm[t], axis=1)
            room = np.maximum(cap - top_counts[rows], 0)
            evict = (np.arange(width) >= room[:, None]) & (ranked < _LAST)
            drop[np.take_along_axis(idx, perm, axis=1)[evict]] = True
    return _Selection(~drop if drop.any() else None, top, top_counts)


def _rows_out(row_codes: np.ndarray, counts: np.ndarray, col_code: np.ndarray,
              vals: np.ndarray, obs: np.ndarray, scores: np.ndarray,
              sel: _Selection) -> dict[str, ItemRow]:
    """Slice the kept entries and the top-K back into one ``ItemRow`` per row.

    The rows' arrays are slices of one array per batch (no per-row copy; see :class:`ItemRow`).
    """
    n_rows = len(row_codes)
    if sel.keep is None:
        k_codes, k_vals, k_obs, k_counts = col_code, vals, obs, counts
    else:
        keep = sel.keep
        k_codes, k_vals, k_obs = col_code[keep], vals[keep], obs[keep]
        k_counts = counts - _rows_of(np.flatnonzero(~keep), _starts(counts))
    bounds = np.zeros(n_rows + 1, dtype=_I64)
    np.cumsum(k_counts, out=bounds[1:])
    t_codes, t_scores = col_code[sel.top], scores[sel.top]
    t_bounds = np.zeros(n_rows + 1, dtype=_I64)
    np.cumsum(sel.top_counts, out=t_bounds[1:])
    b, tb = bounds.tolist(), t_bounds.tolist()
    out: dict[str, ItemRow] = {}
    for p, item in enumerate(ID_TABLE.decode(row_codes).tolist()):
        s, e, a, z = b[p], b[p + 1], tb[p], tb[p + 1]
        out[item] = ItemRow(k_codes[s:e], k_vals[s:e], k_obs[s:e], t_codes[a:z], t_scores[a:z])
    return out


def _rows_of(entries: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """How many of ``entries`` (sorted indices) fall in each row (rows may be empty)."""
    rows = np.searchsorted(starts, entries, side="right") - 1
    return np.bincount(rows, minlength=len(starts)).astype(_I64)


def _starts(counts: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(counts), dtype=_I64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def apply_pair_updates(rows: Mapping[str, ItemRow], batch: PairBatch,
                       occurrence: Mapping[str, float], cfg: SimilarityConfig, landmark_ms: int,
                       *, delta: float = 0.05, min_obs: int = 5) -> dict[str, ItemRow]:
    """Merge a batch of pair updates into the rows; return the new state of every touched row.

    Touched rows are the distinct ``batch.rows`` (a row missing from ``rows`` starts empty).
    Each is re-scored in full with the current ``occurrence`` (forward-decayed N, same landmark;
    missing ids count as 0), gets its top-K (``cfg.top_k``, ties by col id ascending; entries
    with val < ``cfg.min_cooccurrence`` or score <= 0 are not eligible) and is pruned: Hoeffding
    (``delta``; pairs with ``obs >= min_obs`` in rows with a full top-K) then the
    ``cfg.max_pairs_per_item`` cap. Self pairs are ignored.

    All work over entries is array work over the whole batch; Python loops only over the
    touched rows (gathering them and slicing results back into ``ItemRow`` objects) and over
    distinct ids (the occurrence lookup). Semantics are exactly those of
    :func:`apply_pair_updates_reference`. The returned rows share their arrays with the batch
    (see :class:`ItemRow`).
    """
    _check_params(cfg, delta, min_obs)
    _check_weights(batch.weights)
    if len(batch) == 0:
        return {}
    contrib = batch.weights * decay_factor(batch.ts, landmark_ms, cfg.half_life_ms)
    b_r = ID_TABLE.encode(batch.rows)
    b_c = ID_TABLE.encode(batch.cols)
    rank, limit = ID_TABLE.snapshot()  # taken after every id of this batch is known
    size = _I64(limit)       # key = row position * size + col rank
    n_codes = len(ID_TABLE)  # > every code in use

    # Touched rows (by code) and their current entries, each row sorted by col id.
    row_codes = np.unique(b_r)
    n_rows = len(row_codes)
    empty = ItemRow.empty()
    prior = [rows.get(t, empty) for t in ID_TABLE.decode(row_codes).tolist()]
    code_parts = [p.codes for p in prior]
    lengths = np.array(list(map(len, code_parts)), dtype=_I64)
    if lengths.any():
        ex_code = np.concatenate(code_parts).astype(_I64, copy=False)
        ex_val = np.concatenate([p.vals for p in prior]).astype(_F64, copy=False)
        ex_obs = np.concatenate([p.obs for p in prior]).astype(_I64, copy=False)
    else:
        ex_code, ex_val, ex_obs = _empty_i(), _empty_f(), _empty_i()
    row_base = np.arange(n_rows, dtype=_I64) * size
    ex_key = rank[ex_code]
    ex_key += np.repeat(row_base, lengths)
    if len(ex_key) > 1 and not (ex_key[1:] > ex_key[:-1]).all():
        # A row not sorted by col id (not written by this module): sort; duplicates are corrupt.
        perm = np.argsort(ex_key, kind="stable")
        ex_code, ex_val, ex_obs, ex_key = (x[perm] for x in (ex_code, ex_val, ex_obs, ex_key))
        if (ex_key[1:] == ex_key[:-1]).any():
            raise ValueError("an input ItemRow lists a column twice")
    # A row listing itself (never written by this module) loses that entry.
    own_key = row_base + rank[row_codes]
    own_at = np.searchsorted(ex_key, own_key)
    own = own_at < len(ex_key)
    own[own] = ex_key[own_at[own]] == own_key[own]
    if own.any():
        ex_code, ex_val, ex_obs, ex_key = (np.delete(x, own_at[own])
                                           for x in (ex_code, ex_val, ex_obs, ex_key))
        lengths = lengths - own

    # New entries aggregated per (row, col): key = row position * size + col rank.
    row_pos = np.empty(n_codes, dtype=_I64)
    row_pos[row_codes] = np.arange(n_rows, dtype=_I64)
    b_pos = row_pos[b_r]
    ns = b_r != b_c
    b_c_ns = b_c[ns]
    new_key, at_new, new_val, new_obs = _aggregate_keys(b_pos[ns] * size + rank[b_c_ns],
                                                        contrib[ns])
    new_code = b_c_ns[at_new]

    # Merge (both sides sorted by key, keys unique): add matches (old + new), insert the rest.
    at = np.searchsorted(ex_key, new_key)
    hit = at < len(ex_key)
    hit[hit] = ex_key[at[hit]] == new_key[hit]
    ex_val[at[hit]] += new_val[hit]   # ex_* are fresh arrays (concatenated or filtered above)
    ex_obs[at[hit]] += new_obs[hit]
    miss = ~hit
    n_new = int(miss.sum())
    new_at = at[miss] + np.arange(n_new, dtype=_I64)  # positions in the merged arrays
    is_old = np.ones(len(ex_key) + n_new, dtype=bool)
    is_old[new_at] = False
    vals = _merged(is_old, new_at, ex_val, new_val[miss])
    obs = _merged(is_old, new_at, ex_obs, new_obs[miss])
    col_code = _merged(is_old, new_at, ex_code, new_code[miss])
    counts = lengths + np.bincount(new_key[miss] // size, minlength=n_rows)
    starts = _starts(counts)

    # Score every entry of every touched row with the current occurrences.
    involved = np.zeros(n_codes, dtype=bool)
    involved[col_code] = True
    involved[row_codes] = True
    n, f_i, f_j = _occurrence_by_code(np.flatnonzero(involved), n_codes, occurrence,
                                      cfg.metric, cfg.popularity_alpha)
    scores = _entry_scores(vals, row_codes, counts, col_code, cfg.metric, n, f_i, f_j)

    sel = _select(starts, counts, vals, obs, scores, cfg, prune=True, delta=delta,
                  min_obs=min_obs)
    return _rows_out(row_codes, counts, col_code, vals, obs, scores, sel)


def _merged(is_old: np.ndarray, new_at: np.ndarray, old: np.ndarray,
            new: np.ndarray) -> np.ndarray:
    out = np.empty(len(is_old), dtype=old.dtype)
    out[new_at] = new
    out[is_old] = old
    return out


def recompute_neighbors(row: ItemRow, item_id: str, occurrence: Mapping[str, float],
                        cfg: SimilarityConfig) -> ItemRow:
    """Re-score a row whose entries did not change but whose N(.) did; entries are kept as is.

    Useful when occurrences moved (e.g. an item became popular) and the row's neighbours should
    reflect it before the row's next pair update. No pruning: no new evidence arrived.
    """
    _check_metric(cfg.metric)
    code = ID_TABLE.encode([item_id])
    rank = ID_TABLE.rank()
    not_own = row.codes != code[0]
    col_code = row.codes[not_own].astype(_I64)
    order = np.argsort(rank[col_code], kind="stable")
    col_code = col_code[order]
    vals = row.vals[not_own].astype(_F64)[order]
    obs = row.obs[not_own].astype(_I64)[order]
    counts = np.array([len(col_code)], dtype=_I64)
    n, f_i, f_j = _occurrence_by_code(np.union1d(col_code, code), len(ID_TABLE), occurrence,
                                      cfg.metric, cfg.popularity_alpha)
    scores = _entry_scores(vals, code, counts, col_code, cfg.metric, n, f_i, f_j)
    sel = _select(_starts(counts), counts, vals, obs, scores, cfg, prune=False, delta=0.5,
                  min_obs=1)
    return _rows_out(code, counts, col_code, vals, obs, scores, sel)[item_id]


# --------------------------------------------------------------------------------------------
# Reference implementation (the executable specification)
# --------------------------------------------------------------------------------------------

def _score_reference(c: float, n_i: float, n_j: float, metric: str, alpha: float) -> float:
    if not (n_i > 0.0 and n_j > 0.0):
        return 0.0
    if metric == "cosine":
        den = math.sqrt(n_i) * math.sqrt(n_j)
    elif metric == "jaccard":
        den = n_i + n_j - c
    else:
        den = n_i ** (1.0 - alpha) * n_j ** alpha
    return c / den if den > 0.0 else 0.0


def apply_pair_updates_reference(rows: Mapping[str, ItemRow], batch: PairBatch,
                                 occurrence: Mapping[str, float], cfg: SimilarityConfig,
                                 landmark_ms: int, *, delta: float = 0.05,
                                 min_obs: int = 5) -> dict[str, ItemRow]:
    """Plain-Python statement of :func:`apply_pair_updates` (dicts and loops, for clarity)."""
    _check_params(cfg, delta, min_obs)
    # 1. Aggregate the batch per (row, col) in batch order: val = sum of w * decay, obs = count.
    new: dict[str, dict[str, list]] = {}
    for i, j, w, ts in zip(batch.rows.tolist(), batch.cols.tolist(), batch.weights.tolist(),
                           batch.ts.tolist()):
        if not math.isfinite(w):
            raise ValueError("pair update weights must be finite")
        f = 1.0
        if cfg.half_life_ms > 0:
            x = (ts - landmark_ms) / cfg.half_life_ms
            _check_exponent(x, ts, landmark_ms, cfg.half_life_ms)
            f = 2.0 ** x
        row_new = new.setdefault(i, {})
        if j == i:
            continue
        entry = row_new.setdefault(j, [0.0, 0])
        entry[0] += w * f
        entry[1] += 1

    eps_numerator = math.log(1.0 / delta)
    out: dict[str, ItemRow] = {}
    for i in sorted(new):
        # 2. Merge into the row's existing entries: old + aggregated new.
        old = rows.get(i, ItemRow.empty())
        entries: dict[str, list] = {}
        for j, val, n_obs in zip(old.cols, old.vals.tolist(), old.obs.tolist()):
            if j != i:
                entries[j] = [val, n_obs]
        for j, (val, n_obs) in new[i].items():
            if j in entries:
                entries[j][0] += val
                entries[j][1] += n_obs
            else:
                entries[j] = [val, n_obs]
        # 3. Score every entry with the current occurrences.
        n_i = float(occurrence.get(i, 0.0))
        score = {j: _score_reference(val, n_i, float(occurrence.get(j, 0.0)), cfg.metric,
                                     cfg.popularity_alpha)
                 for j, (val, _) in entries.items()}
        # 4. Top-K among eligible entries, by score descending then col id ascending.
        eligible = [j for j, (val, _) in entries.items()
                    if val >= cfg.min_cooccurrence and score[j] > 0.0]
        top = sorted(eligible, key=lambda j: (-score[j], j))[:cfg.top_k]
        in_top = set(top)
        # 5. Hoeffding pruning, only in a row with a full top-K (K-th score t_K); scores are
        #    clamped to [0, 1] so that R = 1.
        kept = list(entries)
        if len(top) == cfg.top_k:
            t_k = min(max(score[top[-1]], 0.0), 1.0)
            kept = []
            for j, (_, n_obs) in entries.items():
                s = min(max(score[j], 0.0), 1.0)
                if (j not in in_top and n_obs >= min_obs
                        and s + math.sqrt(eps_numerator / (2.0 * n_obs)) < t_k):
                    continue
                kept.append(j)
        # 6. Hard cap: keep the top-K plus the best others by (score, val) desc, col id asc.
        cap = max(cfg.max_pairs_per_item, len(top))
        if len(kept) > cap:
            others = sorted((j for j in kept if j not in in_top),
                            key=lambda j: (-score[j], -entries[j][0], j))
            kept = top + others[:cap - len(top)]
        # (from_columns stores the columns sorted by id)
        out[i] = ItemRow.from_columns(kept, [entries[j][0] for j in kept],
                                      [entries[j][1] for j in kept],
                                      [(j, score[j]) for j in top])
    return out


# ------------------------------------------------------------------------------ sharding
def shard_of(item_id: str, shards: int) -> int:
    """The similarity shard of an item's row: stable across processes and restarts (crc32;
    Python's ``hash()`` of a str is salted per process)."""
    return zlib.crc32(item_id.encode("utf-8")) % shards


def pair_batches_by_shard(pairs: Iterable[Any], shards: int) -> list[PairShardBatch]:
    """One event's pair updates (``udfs.profile.PairUpdate``) grouped into one batch per shard
    of their row item, in first-seen shard order."""
    by_shard: dict[int, PairShardBatch] = {}
    for pu in pairs:
        shard = shard_of(pu.row, shards)
        batch = by_shard.get(shard)
        if batch is None:
            batch = by_shard[shard] = PairShardBatch(shard, [], [], [], pu.ts)
        batch.rows.append(pu.row)
        batch.cols.append(pu.col)
        batch.weights.append(pu.weight)
    return list(by_shard.values())
