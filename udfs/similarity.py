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
codes so a batch never hashes the ~100 strings of every touched row again; the table also knows
the string order of its ids, which is what "ties broken by col id" means.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from recsys.config import SimilarityConfig
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
    """Append-only map of item ids to dense int codes, with the ids' string order.

    ``encode`` is one C-level dict lookup per id; new ids are added under a lock (PyFlink's
    thread mode may run several operator instances in one interpreter). ``rank()`` gives every
    code its position in the sorted order of all known ids; inserting ids shifts ranks but never
    changes the relative order of existing ids, so rows sorted by rank stay sorted. Arrays are
    replaced, never mutated in place, so a reader's snapshot stays consistent.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._code: dict[str, int] = {}
        self._strings = np.empty(1024, dtype=object)  # code -> id (capacity doubles)
        # (all ids ascending, their codes, code -> position in id order): swapped as one tuple
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] = (
            np.empty(0, dtype=object), _empty_i(), _empty_i())

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
        """Snapshot: ``rank()[code]`` is the position of the id in sorted order."""
        return self._index[2]

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Consistent ``(order, rank)``: codes in id order, and its inverse."""
        _, order, rank = self._index
        return order, rank

    def _add(self, ids: Iterable[str]) -> None:
        with self._lock:
            new = sorted(set(ids).difference(self._code))
            if not new:
                return
            bad = [s for s in new if not isinstance(s, str)]
            if bad:
                raise TypeError(f"item ids must be str, got {bad[:3]!r}")
            start = len(self._code)
            n = start + len(new)
            strings = self._strings
            if n > len(strings):
                strings = np.empty(max(n, 2 * len(strings)), dtype=object)
                strings[:start] = self._strings[:start]
            codes = np.arange(start, n, dtype=_I64)
            strings[start:n] = new
            new_arr = _object_array(new)
            old_sorted, old_order, _ = self._index
            at = np.searchsorted(old_sorted, new_arr) if start else np.zeros(len(new), _I64)
            order = np.insert(old_order, at, codes)
            rank = np.empty(len(strings), dtype=_I64)
            rank[order] = np.arange(n, dtype=_I64)
            self._strings = strings
            self._index = (np.insert(old_sorted, at, new_arr), order, rank)
            self._code.update(zip(new, range(start, n)))


ID_TABLE = IdTable()


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
    forward-decayed C(i, j)) and ``obs`` (int64 raw observations of each pair) are parallel;
    ``nb_codes``/``nb_scores`` are the top-K, best first. Arrays, not tuples, so that many rows
    concatenate into the kernel's arrays without per-entry Python work. ``cols`` and
    ``neighbors`` give the ids as ``str``; :meth:`to_state` gives plain containers for Flink.
    """
    codes: np.ndarray
    vals: np.ndarray
    obs: np.ndarray
    nb_codes: np.ndarray
    nb_scores: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def cols(self) -> tuple[str, ...]:
        return tuple(ID_TABLE.decode(self.codes).tolist())

    @property
    def neighbors(self) -> tuple[tuple[str, float], ...]:
        """The top-K as ``((j, score), ...)``, best first."""
        return tuple(zip(ID_TABLE.decode(self.nb_codes).tolist(), self.nb_scores.tolist()))

    @classmethod
    def empty(cls) -> ItemRow:
        return cls(_empty_i(), _empty_f(), _empty_i(), _empty_i(), _empty_f())

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
        nb = list(neighbors)
        nb_codes = ID_TABLE.encode([c for c, _ in nb]) if nb else _empty_i()
        nb_scores = np.array([float(s) for _, s in nb], dtype=_F64)
        return cls(codes, vals, obs, nb_codes, nb_scores)

    @classmethod
    def from_entries(cls, entries: Mapping[str, tuple[float, int]],
                     neighbors: Iterable[tuple[str, float]] = ()) -> ItemRow:
        """A row from ``{col: (val, obs)}``."""
        cols = list(entries)
        return cls.from_columns(cols, [entries[c][0] for c in cols],
                                [entries[c][1] for c in cols], neighbors)

    def entries(self) -> dict[str, tuple[float, int]]:
        """``{col: (val, obs)}`` as plain Python values."""
        return dict(zip(self.cols, zip(self.vals.tolist(), self.obs.tolist())))

    def scaled(self, factor: float) -> ItemRow:
        """The row with every C multiplied by ``factor`` (moving the decay landmark).

        Every metric is a ratio of homogeneous degree 0 in (C, N), so when N is rescaled by the
        same factor the scores and neighbours stay what they were.
        """
        return ItemRow(self.codes.copy(), self.vals * float(factor), self.obs.copy(),
                       self.nb_codes.copy(), self.nb_scores.copy())

    def to_state(self) -> tuple:
        """``(version, cols, vals, obs, neighbors)`` of plain tuples/str/float/int (pickle-safe)."""
        return (ITEM_ROW_STATE_VERSION, self.cols, tuple(self.vals.tolist()),
                tuple(self.obs.tolist()), self.neighbors)

    @classmethod
    def from_state(cls, state: Sequence[Any]) -> ItemRow:
        """Read what :meth:`to_state` wrote. ``vals``/``obs`` may also be float64/int64 arrays or
        their little-endian bytes (a more compact encoding a later version may choose)."""
        _check_state(state)
        _, cols, vals, obs, neighbors = state
        return cls.from_columns(cols, _state_array(vals, "<f8", _F64),
                                _state_array(obs, "<i8", _I64), neighbors)

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
    """Distinct ``keys`` (ascending), index of a first occurrence, sum of ``contrib``, count.

    ``np.bincount`` adds sequentially in input (batch) order, unlike the pairwise summation of
    ``np.add.reduceat``, so the sums are bit-identical to the reference's ``+=`` loop.
    """
    uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    vals = np.bincount(inv, weights=contrib, minlength=len(uniq))
    obs = np.bincount(inv, minlength=len(uniq)).astype(_I64)
    return uniq, first, vals, obs


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
    order, rank = ID_TABLE.snapshot()
    size = _I64(len(order))
    ns = r != c
    keys, _, vals, obs = _aggregate_keys(rank[r[ns]] * size + rank[c[ns]], contrib[ns])
    return (ID_TABLE.decode(order[keys // size]), ID_TABLE.decode(order[keys % size]), vals, obs)


def _denominator(c: np.ndarray, n_i: np.ndarray, n_j: np.ndarray, metric: str,
                 f_i: np.ndarray, f_j: np.ndarray) -> np.ndarray:
    """The metric's denominator. ``f_i``/``f_j`` are sqrt(N) (cosine) or N**(1-alpha), N**alpha
    (penalised). sqrt(N_i) * sqrt(N_j), not sqrt(N_i * N_j): forward-decayed N may be ~2**900."""
    if metric == "jaccard":
        return (n_i + n_j) - c
    return f_i * f_j


def _scores(c: np.ndarray, n_i: np.ndarray, n_j: np.ndarray, den: np.ndarray) -> np.ndarray:
    ok = (n_i > 0) & (n_j > 0) & (den > 0)
    out = np.zeros(c.shape, dtype=_F64)
    np.divide(c, den, out=out, where=ok)
    return out


def pair_scores(c: np.ndarray, n_i: np.ndarray, n_j: np.ndarray, metric: str,
                alpha: float) -> np.ndarray:
    """Similarity of pairs from co-occurrence ``c`` and occurrences ``n_i``, ``n_j``.

    cosine ``C/sqrt(N_i N_j)``; jaccard ``C/(N_i + N_j - C)``; popularity_penalised
    ``C/(N_i**(1-alpha) N_j**alpha)`` (alpha > 0.5 penalises popular neighbours j). A pair scores
    0 when either occurrence is <= 0 (unknown item) or the denominator is <= 0.
    """
    _check_metric(metric)
    c, n_i, n_j = (np.asarray(a, dtype=_F64) for a in (c, n_i, n_j))
    p_i, p_j = np.where(n_i > 0, n_i, 1.0), np.where(n_j > 0, n_j, 1.0)
    if metric == "cosine":
        f_i, f_j = np.sqrt(p_i), np.sqrt(p_j)
    elif metric == "popularity_penalised":
        f_i, f_j = p_i ** (1.0 - alpha), p_j ** alpha
    else:
        f_i = f_j = p_i
    return _scores(c, n_i, n_j, _denominator(c, n_i, n_j, metric, f_i, f_j))


def _occurrence_by_code(codes: np.ndarray, size: int, occurrence: Mapping[str, float],
                        metric: str, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N and the per-item denominator factors, as arrays indexed by id code.

    One lookup per distinct id, not per pair. The penalised metric's powers use Python's ``**``
    so that scores are bit-identical to the reference's (numpy's SIMD ``power`` can differ in
    the last ulp, which could flip exact ties).
    """
    ids = ID_TABLE.decode(codes).tolist()
    n_list = [float(occurrence.get(s, 0.0)) for s in ids]
    n = np.zeros(size, dtype=_F64)
    n[codes] = n_list
    if metric == "cosine":
        f = np.ones(size, dtype=_F64)
        f[codes] = np.sqrt(np.where(n[codes] > 0, n[codes], 1.0))
        return n, f, f
    if metric == "popularity_penalised":
        a = float(alpha)
        f_i, f_j = np.ones(size, dtype=_F64), np.ones(size, dtype=_F64)
        f_i[codes] = [x ** (1.0 - a) if x > 0 else 1.0 for x in n_list]
        f_j[codes] = [x ** a if x > 0 else 1.0 for x in n_list]
        return n, f_i, f_j
    return n, n, n


# --------------------------------------------------------------------------------------------
# Vectorised kernel
# --------------------------------------------------------------------------------------------

def _sort_rows(starts: np.ndarray, counts: np.ndarray, key: np.ndarray,
               ties: Sequence[np.ndarray]) -> np.ndarray:
    """Indices of the entries of the given rows, each row sorted by (key, *ties), rows in order.

    Row ``r`` owns entries ``starts[r] : starts[r] + counts[r]``. Rows are sorted side by side
    as the lines of a padded matrix (one ``np.argsort(axis=1)`` per power-of-two width class;
    ~20x faster than ``np.lexsort`` over the flat arrays), then the few runs of equal ``key``
    within a row are re-sorted by ``ties`` (``ties[-1]`` must be unique within a row). ``key``
    must not be NaN (NaN pads the matrix).
    """
    total = int(counts.sum())
    out_start = np.zeros(len(counts), dtype=_I64)
    np.cumsum(counts[:-1], out=out_start[1:])
    res = np.empty(total, dtype=_I64)
    if total == 0:
        return res
    width = np.maximum(counts, 1)
    cls = np.ceil(np.log2(width)).astype(_I64)
    for c in np.unique(cls).tolist():
        sel = np.flatnonzero(cls == c)
        w = 1 << c
        lane = np.arange(w, dtype=_I64)
        valid = lane[None, :] < counts[sel][:, None]
        idx = np.where(valid, starts[sel][:, None] + lane[None, :], 0)
        mat = np.where(valid, key[idx], np.nan)  # NaN sorts after everything, even inf
        perm = np.argsort(mat, axis=1)
        srt = np.take_along_axis(idx, perm, axis=1)
        dest = out_start[sel][:, None] + lane[None, :]
        res[dest[valid]] = srt[valid]
    # Runs of equal key inside a row: order them by the tie keys.
    k = key[res]
    row_of = np.repeat(np.arange(len(counts), dtype=_I64), counts)
    same = (k[1:] == k[:-1]) & (row_of[1:] == row_of[:-1])
    if same.any():
        in_run = np.zeros(total, dtype=bool)
        in_run[1:] |= same
        in_run[:-1] |= same
        pos = np.flatnonzero(in_run)
        run_id = np.cumsum(~np.concatenate(([False], same)))[pos]
        members = res[pos]
        sub = np.lexsort(tuple(t[members] for t in reversed(ties)) + (run_id,))
        res[pos] = members[sub]
    return res


@dataclass(slots=True)
class _Selection:
    """Per-entry outcome of scoring a set of rows (entry arrays in (row, col id) order)."""
    keep: np.ndarray        # bool per entry
    top: np.ndarray         # indices of the top-K entries, rows in order, best first
    top_counts: np.ndarray  # top-K size per row


def _select(starts: np.ndarray, counts: np.ndarray, row_idx: np.ndarray, col_rank: np.ndarray,
            vals: np.ndarray, obs: np.ndarray, scores: np.ndarray, cfg: SimilarityConfig, *,
            prune: bool, delta: float, min_obs: int) -> _Selection:
    """Top-K per row, then Hoeffding pruning and the hard cap (see the module docstring)."""
    k = cfg.top_k
    n_rows = len(counts)
    eligible = (vals >= cfg.min_cooccurrence) & (scores > 0)
    order = _sort_rows(starts, counts, np.where(eligible, -scores, np.inf), (col_rank,))
    n_elig = np.bincount(row_idx[eligible], minlength=n_rows)
    top_counts = np.minimum(n_elig, k)
    pos = np.arange(len(order), dtype=_I64) - np.repeat(starts, counts)
    row_of = np.repeat(np.arange(n_rows, dtype=_I64), counts)
    top = order[pos < top_counts[row_of]]
    keep = np.ones(len(vals), dtype=bool)
    if not prune or len(vals) == 0:
        return _Selection(keep, top, top_counts)

    is_top = np.zeros(len(vals), dtype=bool)
    is_top[top] = True
    # (1) Hoeffding: in rows with a full top-K, drop pairs confidently below the K-th score.
    kth = order[(pos == k - 1) & (n_elig[row_of] >= k)]
    t_k = np.full(n_rows, np.nan)  # NaN: no full top-K, nothing can be "below" it
    t_k[row_idx[kth]] = np.clip(scores[kth], 0.0, 1.0)
    test = np.flatnonzero(~is_top & (obs >= min_obs) & ~np.isnan(t_k[row_idx]))
    if len(test):
        eps = np.sqrt(math.log(1.0 / delta) / (2.0 * obs[test].astype(_F64)))
        drop = np.clip(scores[test], 0.0, 1.0) + eps < t_k[row_idx[test]]
        keep[test[drop]] = False
    # (2) Hard cap: evict the lowest non-top-K entries by (score, val, then the higher col id).
    cap = cfg.max_pairs_per_item
    kept = np.bincount(row_idx[keep], minlength=n_rows)
    over = np.flatnonzero(kept > np.maximum(cap, top_counts))
    if len(over):
        candidate = keep & ~is_top
        key = np.where(candidate, -scores, np.inf)
        ranked = _sort_rows(starts[over], counts[over], key, (-vals, col_rank))
        sub_counts = counts[over]
        sub_pos = np.arange(len(ranked), dtype=_I64) - np.repeat(
            np.concatenate(([0], np.cumsum(sub_counts)[:-1])), sub_counts)
        room = np.repeat(np.maximum(cap - top_counts[over], 0), sub_counts)
        evict = ranked[(sub_pos >= room) & candidate[ranked]]
        keep[evict] = False
    return _Selection(keep, top, top_counts)


def _rows_out(row_codes: np.ndarray, row_idx: np.ndarray, col_code: np.ndarray,
              vals: np.ndarray, obs: np.ndarray, scores: np.ndarray,
              sel: _Selection) -> dict[str, ItemRow]:
    """Slice the kept entries and the top-K back into one ``ItemRow`` per row."""
    n_rows = len(row_codes)
    keep = sel.keep
    k_codes, k_vals, k_obs = col_code[keep], vals[keep], obs[keep]
    bounds = np.zeros(n_rows + 1, dtype=_I64)
    np.cumsum(np.bincount(row_idx[keep], minlength=n_rows), out=bounds[1:])
    t_codes, t_scores = col_code[sel.top], scores[sel.top]
    t_bounds = np.zeros(n_rows + 1, dtype=_I64)
    np.cumsum(sel.top_counts, out=t_bounds[1:])
    b, tb = bounds.tolist(), t_bounds.tolist()
    out: dict[str, ItemRow] = {}
    for p, item in enumerate(ID_TABLE.decode(row_codes).tolist()):
        s, e, a, z = b[p], b[p + 1], tb[p], tb[p + 1]
        # Copies, not views: a view would keep this whole batch's arrays alive with the row.
        out[item] = ItemRow(k_codes[s:e].copy(), k_vals[s:e].copy(), k_obs[s:e].copy(),
                            t_codes[a:z].copy(), t_scores[a:z].copy())
    return out


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
    :func:`apply_pair_updates_reference`.
    """
    _check_params(cfg, delta, min_obs)
    _check_weights(batch.weights)
    if len(batch) == 0:
        return {}
    contrib = batch.weights * decay_factor(batch.ts, landmark_ms, cfg.half_life_ms)
    b_r = ID_TABLE.encode(batch.rows)
    b_c = ID_TABLE.encode(batch.cols)
    order, rank = ID_TABLE.snapshot()  # taken after every id of this batch is known
    size = _I64(len(order))

    # Touched rows (by code) and their current entries, already sorted by col id.
    row_codes = np.unique(b_r)
    n_rows = len(row_codes)
    empty = ItemRow.empty()
    prior = [rows.get(t, empty) for t in ID_TABLE.decode(row_codes).tolist()]
    lengths = np.fromiter(map(len, prior), dtype=_I64, count=n_rows)
    if lengths.any():
        ex_code = np.concatenate([p.codes for p in prior]).astype(_I64, copy=False)
        ex_val = np.concatenate([p.vals for p in prior]).astype(_F64, copy=False)
        ex_obs = np.concatenate([p.obs for p in prior]).astype(_I64, copy=False)
    else:
        ex_code, ex_val, ex_obs = _empty_i(), _empty_f(), _empty_i()
    ex_row = np.repeat(np.arange(n_rows, dtype=_I64), lengths)
    own = ex_code == row_codes[ex_row]
    if own.any():
        ex_code, ex_val, ex_obs, ex_row = ex_code[~own], ex_val[~own], ex_obs[~own], ex_row[~own]
    ex_key = ex_row * size + rank[ex_code]
    if len(ex_key) > 1 and not (ex_key[1:] > ex_key[:-1]).all():
        raise ValueError("an input ItemRow is not sorted by col id or repeats a column; "
                         "build rows with ItemRow.from_columns / from_state")

    # New entries aggregated per (row, col): key = row position * size + col rank.
    b_pos = np.searchsorted(row_codes, b_r)
    ns = b_r != b_c
    new_key, first, new_val, new_obs = _aggregate_keys(b_pos[ns] * size + rank[b_c[ns]],
                                                       contrib[ns])
    new_code = b_c[ns][first]

    # Merge (both sides sorted, keys unique): add matches (old + new), insert the rest.
    at = np.searchsorted(ex_key, new_key)
    hit = at < len(ex_key)
    hit[hit] = ex_key[at[hit]] == new_key[hit]
    vals = ex_val.copy()
    obs = ex_obs.copy()
    vals[at[hit]] += new_val[hit]
    obs[at[hit]] += new_obs[hit]
    ins, miss = at[~hit], ~hit
    keys = np.insert(ex_key, ins, new_key[miss])
    vals = np.insert(vals, ins, new_val[miss])
    obs = np.insert(obs, ins, new_obs[miss])
    col_code = np.insert(ex_code, ins, new_code[miss])
    row_idx = keys // size
    col_rank = keys - row_idx * size

    # Score every entry of every touched row.
    involved = np.zeros(int(size), dtype=bool)
    involved[col_code] = True
    involved[row_codes] = True
    n_occ, f_i, f_j = _occurrence_by_code(np.flatnonzero(involved), int(size), occurrence,
                                          cfg.metric, cfg.popularity_alpha)
    ri = row_codes[row_idx]
    n_i, n_j = n_occ[ri], n_occ[col_code]
    scores = _scores(vals, n_i, n_j, _denominator(vals, n_i, n_j, cfg.metric, f_i[ri],
                                                  f_j[col_code]))

    counts = np.bincount(row_idx, minlength=n_rows).astype(_I64)
    starts = np.zeros(n_rows, dtype=_I64)
    np.cumsum(counts[:-1], out=starts[1:])
    sel = _select(starts, counts, row_idx, col_rank, vals, obs, scores, cfg, prune=True,
                  delta=delta, min_obs=min_obs)
    return _rows_out(row_codes, row_idx, col_code, vals, obs, scores, sel)


def recompute_neighbors(row: ItemRow, item_id: str, occurrence: Mapping[str, float],
                        cfg: SimilarityConfig) -> ItemRow:
    """Re-score a row whose entries did not change but whose N(.) did; entries are kept as is.

    Useful when occurrences moved (e.g. an item became popular) and the row's neighbours should
    reflect it before the row's next pair update. No pruning: no new evidence arrived.
    """
    _check_metric(cfg.metric)
    code = ID_TABLE.encode([item_id])
    order, rank = ID_TABLE.snapshot()
    size = len(order)
    not_own = row.codes != code[0]
    col_code = row.codes[not_own].astype(_I64)
    vals = row.vals[not_own].astype(_F64)
    obs = row.obs[not_own].astype(_I64)
    order = np.argsort(rank[col_code], kind="stable")
    col_code, vals, obs = col_code[order], vals[order], obs[order]
    m = len(col_code)
    n_occ, f_i, f_j = _occurrence_by_code(np.union1d(col_code, code), size, occurrence,
                                          cfg.metric, cfg.popularity_alpha)
    ri = np.full(m, code[0], dtype=_I64)
    n_i, n_j = n_occ[ri], n_occ[col_code]
    scores = _scores(vals, n_i, n_j, _denominator(vals, n_i, n_j, cfg.metric, f_i[ri],
                                                  f_j[col_code]))
    row_idx = np.zeros(m, dtype=_I64)
    starts, counts = np.zeros(1, dtype=_I64), np.array([m], dtype=_I64)
    sel = _select(starts, counts, row_idx, rank[col_code], vals, obs, scores, cfg, prune=False,
                  delta=0.5, min_obs=1)
    return _rows_out(code, row_idx, col_code, vals, obs, scores, sel)[item_id]


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
        # 5. Hoeffding pruning, only in a row with a full top-K (K-th score t_K).
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
        out[i] = ItemRow.from_columns(kept, [entries[j][0] for j in kept],
                                      [entries[j][1] for j in kept],
                                      [(j, score[j]) for j in top])
    return out
