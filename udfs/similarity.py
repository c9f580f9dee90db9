"""Incremental item-item similarity (TencentRec counting with forward decay), kept per item row.

The item operator is keyed by item. For each item ``i`` it keeps a *row*: the co-occurrence
entries ``C(i, j)`` with the items ``j`` that users interacted with near ``i``, the number of raw
observations of each pair (for the Hoeffding bound), and its current top-K neighbours.

* A pair update ``(i, j, w, ts)`` says "a user's rating of j rose by w while i was among their
  recent items" (``udfs/profile.py`` emits both directions). It adds ``w * 2^((ts - L) / h)`` to
  ``C(i, j)``: forward decay (``udfs/decay.py``) with the landmark ``L`` shared by every row and
  by the occurrences ``N`` (:class:`ItemStats`), so every ratio ``C / f(N_i, N_j)`` *is* the
  time-decayed similarity at any read time and nothing is ever re-decayed.
* After a batch, every touched row re-scores *all* its entries with the current ``N`` (cosine
  ``C/sqrt(N_i N_j)``, Jaccard ``C/(N_i + N_j - C)``, or popularity-penalised
  ``C/(N_i^(1-a) N_j^a)``), takes its top-K (ties: smaller column hash first; entries with
  ``C < min_cooccurrence`` or score <= 0 are not eligible) and is pruned so memory per item stays
  bounded: first the Hoeffding bound (a pair observed ``n`` times whose score plus
  ``sqrt(ln(1/delta) / 2n)`` is still below the K-th best score leaves, with probability >=
  1 - delta it would never enter the top-K), then a hard cap of ``max_pairs_per_item`` entries
  that never evicts a top-K member. A row's scores refresh only when it receives updates.

:func:`apply_pairs` is the compiled kernel (``udfs/jit.py``) over a pool of fixed-capacity row
slots; :func:`apply_pairs_reference` states the same semantics with dicts and loops, the
executable specification it is tested against. :class:`SimilarityShard` owns the rows of one
operator subtask (a cache over Flink keyed state, written back at checkpoints), and
:class:`ItemStats` the replicated per-item counters: occurrence N and popularity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from state_schemas.config import EngineConfig, SimilarityConfig
from state_schemas.item_state import (
    STATS_META_KEY, STATS_PREFIX, RowState, decode_counters, decode_counters_meta, decode_row,
    encode_counters, encode_counters_meta, encode_row)
from state_schemas.records import SOURCE_ITEM_CF
from udfs.decay import ForwardDecay, landmark_factor
from udfs.items import NO_CODE, ItemTable
from udfs.jit import kernel, lex_order

METRICS: tuple[str, ...] = ("cosine", "jaccard", "popularity_penalised")
_METRIC_CODE = {m: n for n, m in enumerate(METRICS)}


# ------------------------------------------------------------------------------------ kernel
@kernel
def pair_score(c, n_i, n_j, metric, alpha):
    """The similarity of one entry: ``c`` co-occurrence, ``n_i``/``n_j`` occurrences."""
    if not (n_i > 0.0 and n_j > 0.0):
        return 0.0
    if metric == 0:
        den = math.sqrt(n_i) * math.sqrt(n_j)
    elif metric == 1:
        den = n_i + n_j - c
    else:
        den = n_i ** (1.0 - alpha) * n_j ** alpha
    return c / den if den > 0.0 else 0.0


@kernel
def apply_pairs(group_start, pair_col, pair_val, row_slot, row_code,
                cols, vals, obs, counts, nbr, nbr_score, nbr_len,
                occ, hashes, metric, alpha, top_k, cap, min_cooc, eps_num, min_obs, changed):
    """Merge pair updates into their rows, re-score, select the top-K and prune, in place.

    Pairs are grouped by row: group ``g`` (row slot ``row_slot[g]``, item code ``row_code[g]``)
    owns pairs ``group_start[g]:group_start[g + 1]`` with column codes ``pair_col`` and decayed
    contributions ``pair_val``. A row slot holds ``counts[s]`` entries sorted by column code
    (``cols``/``vals``/``obs``) and its top-K (``nbr``/``nbr_score``/``nbr_len``, best first).
    ``changed[g]`` is set when the row's top-K (codes or scores) differs from before.
    """
    for g in range(len(row_slot)):
        s = row_slot[g]
        rc = row_code[g]
        a, b = group_start[g], group_start[g + 1]
        # new entries of this row, aggregated per column (self pairs ignored)
        order = np.argsort(pair_col[a:b], kind="mergesort")
        new_cols = np.empty(b - a, dtype=np.int32)
        new_vals = np.zeros(b - a, dtype=np.float64)
        new_obs = np.zeros(b - a, dtype=np.int32)
        n_new = 0
        for q in range(b - a):
            p = a + order[q]
            c = pair_col[p]
            if c == rc or c < 0:
                continue
            if n_new > 0 and new_cols[n_new - 1] == c:
                new_vals[n_new - 1] += pair_val[p]
                new_obs[n_new - 1] += 1
            else:
                new_cols[n_new] = c
                new_vals[n_new] = pair_val[p]
                new_obs[n_new] = 1
                n_new += 1
        # merge with the row's entries (both sorted by column code)
        n_old = counts[s]
        m_cols = np.empty(n_old + n_new, dtype=np.int32)
        m_vals = np.empty(n_old + n_new, dtype=np.float64)
        m_obs = np.empty(n_old + n_new, dtype=np.int32)
        i = 0
        j = 0
        m = 0
        while i < n_old or j < n_new:
            if j >= n_new or (i < n_old and cols[s, i] < new_cols[j]):
                if cols[s, i] != rc:
                    m_cols[m] = cols[s, i]
                    m_vals[m] = vals[s, i]
                    m_obs[m] = obs[s, i]
                    m += 1
                i += 1
            elif i >= n_old or new_cols[j] < cols[s, i]:
                m_cols[m] = new_cols[j]
                m_vals[m] = new_vals[j]
                m_obs[m] = new_obs[j]
                m += 1
                j += 1
            else:
                m_cols[m] = cols[s, i]
                m_vals[m] = vals[s, i] + new_vals[j]
                m_obs[m] = obs[s, i] + new_obs[j]
                m += 1
                i += 1
                j += 1
        # score every entry with the current occurrences
        n_i = occ[rc]
        scores = np.empty(m, dtype=np.float64)
        for e in range(m):
            scores[e] = pair_score(m_vals[e], n_i, occ[m_cols[e]], metric, alpha)
        # top-K among eligible entries: score descending, then column hash ascending
        elig = np.empty(m, dtype=np.int64)
        n_el = 0
        for e in range(m):
            if m_vals[e] >= min_cooc and scores[e] > 0.0:
                elig[n_el] = e
                n_el += 1
        neg = np.empty(n_el, dtype=np.float64)
        hk = np.empty(n_el, dtype=np.uint64)
        for e in range(n_el):
            neg[e] = -scores[elig[e]]
            hk[e] = hashes[m_cols[elig[e]]]
        ranked = lex_order(neg, neg, hk)
        n_top = min(top_k, n_el)
        in_top = np.zeros(m, dtype=np.bool_)
        top = np.empty(n_top, dtype=np.int64)
        for t in range(n_top):
            top[t] = elig[ranked[t]]
            in_top[top[t]] = True
        # Hoeffding pruning, only in a row with a full top-K (scores clamped to [0, 1])
        keep = np.ones(m, dtype=np.bool_)
        if n_top == top_k and top_k > 0:
            t_k = min(max(scores[top[n_top - 1]], 0.0), 1.0)
            for e in range(m):
                if in_top[e] or m_obs[e] < min_obs:
                    continue
                sc = min(max(scores[e], 0.0), 1.0)
                if sc + math.sqrt(eps_num / (2.0 * m_obs[e])) < t_k:
                    keep[e] = False
        # hard cap: the top-K plus the best others by (score, value) desc, column hash asc
        limit = max(cap, n_top)
        n_keep = 0
        for e in range(m):
            if keep[e]:
                n_keep += 1
        if n_keep > limit:
            others = np.empty(n_keep - n_top, dtype=np.int64)
            n_o = 0
            for e in range(m):
                if keep[e] and not in_top[e]:
                    others[n_o] = e
                    n_o += 1
            k1 = np.empty(n_o, dtype=np.float64)
            k2 = np.empty(n_o, dtype=np.float64)
            k3 = np.empty(n_o, dtype=np.uint64)
            for q in range(n_o):
                k1[q] = -scores[others[q]]
                k2[q] = -m_vals[others[q]]
                k3[q] = hashes[m_cols[others[q]]]
            o = lex_order(k1, k2, k3)
            for q in range(limit - n_top, n_o):
                keep[others[o[q]]] = False
        # write back (entries stay sorted by column code)
        w = 0
        for e in range(m):
            if keep[e]:
                cols[s, w] = m_cols[e]
                vals[s, w] = m_vals[e]
                obs[s, w] = m_obs[e]
                w += 1
        counts[s] = w
        diff = nbr_len[s] != n_top
        for t in range(n_top):
            code = m_cols[top[t]]
            if not diff and (nbr[s, t] != code or nbr_score[s, t] != scores[top[t]]):
                diff = True
            nbr[s, t] = code
            nbr_score[s, t] = scores[top[t]]
        nbr_len[s] = n_top
        changed[g] = diff


def apply_pairs_reference(rows: Mapping[str, dict[str, tuple[float, int]]],
                          pairs: Sequence[tuple[str, str, float]],
                          occurrence: Mapping[str, float], cfg: SimilarityConfig,
                          col_hash, read_factor: float = 1.0
                          ) -> dict[str, tuple[dict[str, tuple[float, int]],
                                               list[tuple[str, float]]]]:
    """The semantics of :func:`apply_pairs` with dicts and loops (the executable specification).

    ``rows``: item -> {col: (C, observations)}; ``pairs``: (row, col, decayed contribution) in
    batch order; ``read_factor`` turns stored (forward-decayed) C into C as of now, which is
    what ``min_cooccurrence`` is compared with. Returns, for each touched row, its new entries
    and its top-K (col, score).
    """
    delta, min_obs = cfg.hoeffding_delta, cfg.hoeffding_min_obs
    metric = _METRIC_CODE[cfg.metric]
    new: dict[str, dict[str, list]] = {}
    for i, j, v in pairs:
        row = new.setdefault(i, {})
        if j == i:
            continue
        e = row.setdefault(j, [0.0, 0])
        e[0] += v
        e[1] += 1
    out = {}
    for i, row_new in new.items():
        entries = {j: [v, o] for j, (v, o) in rows.get(i, {}).items() if j != i}
        for j, (v, o) in sorted(row_new.items(), key=lambda kv: col_hash(kv[0])):
            if j in entries:
                entries[j][0] += v
                entries[j][1] += o
            else:
                entries[j] = [v, o]
        n_i = float(occurrence.get(i, 0.0))
        score = {j: pair_score.py(v, n_i, float(occurrence.get(j, 0.0)), metric,
                                  cfg.popularity_alpha) for j, (v, _) in entries.items()}
        min_stored = cfg.min_cooccurrence / read_factor  # as the kernel's caller computes it
        eligible = [j for j, (v, _) in entries.items() if v >= min_stored and score[j] > 0.0]
        top = sorted(eligible, key=lambda j: (-score[j], col_hash(j)))[:cfg.top_k]
        kept = list(entries)
        if len(top) == cfg.top_k and cfg.top_k > 0:
            t_k = min(max(score[top[-1]], 0.0), 1.0)
            kept = [j for j, (_, o) in entries.items()
                    if j in top or o < min_obs
                    or not (min(max(score[j], 0.0), 1.0)
                            + math.sqrt(math.log(1.0 / delta) / (2.0 * o)) < t_k)]
        cap = max(cfg.max_pairs_per_item, len(top))
        if len(kept) > cap:
            others = sorted((j for j in kept if j not in top),
                            key=lambda j: (-score[j], -entries[j][0], col_hash(j)))
            kept = top + others[:cap - len(top)]
        out[i] = ({j: (entries[j][0], entries[j][1]) for j in kept},
                  [(j, score[j]) for j in top])
    return out


# ------------------------------------------------------------------------------ item stats
class ItemStats:
    """Per-item counters every item-operator subtask keeps for *all* items (replicated).

    Fed by the item-activity broadcast: occurrence ``N(i)`` (forward decay with the similarity
    half-life; the denominators of the similarity, needed for the columns of every local row)
    and popularity (trending half-life), overall and per demographic segment. Subtask 0
    publishes the popularity of the items changed in each batch to the user operator.
    """

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.items = ItemTable(cfg.recommend.model_max_items, on_evict=self._on_evict)
        self.occ_decay = ForwardDecay(cfg.similarity.half_life_ms)
        self.pop_decay = ForwardDecay(cfg.recommend.trending_half_life_ms)
        cap = self.items.capacity
        self.occ = np.zeros(cap, dtype=np.float64)
        self.pop = np.zeros(cap, dtype=np.float64)
        self.pop_seg: dict[str, np.ndarray] = {}
        self.newest_ts: int | None = None
        self.changed: set[int] = set()  # codes whose popularity changed since the last publish
        self.dirty: set[str] = set()  # items whose counters changed since the last snapshot
        self.evicted_listeners: list = []
        self.rescale_listeners: list = []  # called with the factor when the landmark moves

    def _ensure(self) -> None:
        cap = self.items.capacity
        if len(self.occ) < cap:
            for name in ("occ", "pop"):
                old = getattr(self, name)
                new = np.zeros(cap, dtype=np.float64)
                new[:len(old)] = old
                setattr(self, name, new)
            for s, old in list(self.pop_seg.items()):
                new = np.zeros(cap, dtype=np.float64)
                new[:len(old)] = old
                self.pop_seg[s] = new

    def code(self, item_id: str) -> int:
        c = self.items.code(item_id)
        self._ensure()
        return c

    def codes(self, ids: Sequence[str]) -> np.ndarray:
        c = self.items.codes(ids)
        self._ensure()
        return c

    def _on_evict(self, victims: np.ndarray) -> None:
        self.occ[victims] = 0.0
        self.pop[victims] = 0.0
        for a in self.pop_seg.values():
            a[victims] = 0.0
        self.changed.difference_update(victims.tolist())
        self.dirty.update(self.items.ids[c] for c in victims.tolist())
        for listener in self.evicted_listeners:
            listener(victims)

    def prepare_occurrence(self, newest_ts: int) -> None:
        """Set or move the occurrence landmark for events up to ``newest_ts``: N and every
        co-occurrence (``rescale_listeners``) are scaled by the same factor, so ratios stay."""
        factor = self.occ_decay.prepare(newest_ts)
        if factor != 1.0:
            self.occ *= factor
            # Every N is now stated against the new landmark, and the snapshot has one
            # landmark for all entries: each N must be written again, not only the batch's
            # (an entry left as it was would be misread by that factor after a restore).
            self.dirty.update(self.items.ids[c] for c in np.flatnonzero(self.occ > 0).tolist())
            for listener in self.rescale_listeners:
                listener(factor)

    def apply_activity(self, ids: Sequence[str], weights: np.ndarray, occ_deltas: np.ndarray,
                       ts: np.ndarray, segments: Sequence[str]) -> None:
        """Count a batch of item activity."""
        if not len(ids):
            return
        codes = self.codes(ids)
        self.dirty.update(ids)
        newest = int(ts.max())
        self.newest_ts = newest if self.newest_ts is None else max(self.newest_ts, newest)
        self.prepare_occurrence(newest)
        occ_inc = occ_deltas * self.occ_decay.weights(ts)
        np.add.at(self.occ, codes, np.where(occ_deltas > 0, occ_inc, 0.0))
        pop_rescale = self.pop_decay.prepare(newest)
        if pop_rescale != 1.0:
            self.pop *= pop_rescale
            for a in self.pop_seg.values():
                a *= pop_rescale
            self.changed.update(np.flatnonzero(self.pop > 0).tolist())
            self.dirty.update(self.items.ids[c] for c in np.flatnonzero(self.pop > 0).tolist())
        positive = weights > 0
        if positive.any():
            pc = codes[positive]
            inc = weights[positive] * self.pop_decay.weights(ts[positive])
            np.add.at(self.pop, pc, inc)
            segs = [s for s, ok in zip(segments, positive.tolist()) if ok]
            for seg in set(segs):
                if not seg:
                    continue
                arr = self.pop_seg.get(seg)
                if arr is None:
                    arr = self.pop_seg[seg] = np.zeros(self.items.capacity, dtype=np.float64)
                sel = np.array([s == seg for s in segs], dtype=bool)
                np.add.at(arr, pc[sel], inc[sel])
            self.changed.update(pc.tolist())

    def popularity_update(self) -> dict | None:
        """The popularity of every item changed since the last call (a model update for the
        user operator), or None."""
        if not self.changed:
            return None
        codes = np.array(sorted(self.changed), dtype=np.int32)
        self.changed = set()
        ids = [self.items.id_of(c) for c in codes.tolist()]
        seg_names, seg_item, seg_vals = [], [], []
        for seg, arr in self.pop_seg.items():
            v = arr[codes]
            nz = np.flatnonzero(v > 0)
            seg_names.extend([seg] * len(nz))
            seg_item.extend(nz.tolist())
            seg_vals.extend(v[nz].tolist())
        return {"landmark": self.pop_decay.landmark, "newest_ts": self.newest_ts, "ids": ids,
                "pop": self.pop[codes].tolist(), "seg": seg_names, "seg_item": seg_item,
                "seg_pop": seg_vals}

    # ---------------------------------------------------------------------- state
    def snapshot(self) -> dict[str, bytes | None]:
        """The replicated-state entries that changed since the last snapshot (None: delete)."""
        out: dict[str, bytes | None] = {}
        for item in self.dirty:
            c = self.items.get(item)
            if c == NO_CODE:
                out[STATS_PREFIX + item] = None
                continue
            segs = {s: float(a[c]) for s, a in self.pop_seg.items() if a[c] > 0}
            out[STATS_PREFIX + item] = encode_counters(float(self.occ[c]), float(self.pop[c]),
                                                       segs)
        if self.dirty:
            out[STATS_META_KEY] = encode_counters_meta(
                self.occ_decay.landmark, self.pop_decay.landmark, self.newest_ts)
        self.dirty = set()
        return out

    def restore(self, entries: dict[str, bytes]) -> None:
        meta = entries.get(STATS_META_KEY)
        if meta is not None:
            (self.occ_decay.landmark, self.pop_decay.landmark,
             self.newest_ts) = decode_counters_meta(meta)
        for key, value in entries.items():
            if not key.startswith(STATS_PREFIX):
                continue
            c = self.code(key[len(STATS_PREFIX):])
            self.occ[c], self.pop[c], segs = decode_counters(value)
            for s, v in segs.items():
                arr = self.pop_seg.get(s)
                if arr is None:
                    arr = self.pop_seg[s] = np.zeros(self.items.capacity, dtype=np.float64)
                arr[c] = v
        self.dirty = set()


# ------------------------------------------------------------------------------ the shard
@dataclass(slots=True)
class Emission:
    """A neighbour row to publish: the ``item-similarity`` record and the model update."""
    item_id: str
    neighbor_ids: list[str]
    scores: list[float]
    updated_at: int
    source: int = SOURCE_ITEM_CF   # or SOURCE_EASE (udfs/ease.py)


class SimilarityShard:
    """The rows of one item-operator subtask, in a pool of fixed-capacity slots.

    Rows are loaded from keyed state on first use (:meth:`load`), updated in memory by
    :meth:`flush`, and handed back for keyed state by :meth:`dirty_rows` (at checkpoints). The
    pool grows by doubling; a slot is freed when its item leaves :class:`ItemStats`' table.
    """

    def __init__(self, cfg: EngineConfig, stats: ItemStats) -> None:
        self.cfg = cfg
        self.sim = cfg.similarity
        self.stats = stats
        stats.evicted_listeners.append(self._on_evict)
        stats.rescale_listeners.append(self.rescale)
        self.cap = self.sim.max_pairs_per_item
        self.k = self.sim.top_k
        self.slot_of: dict[int, int] = {}   # item code -> slot
        self.code_of: list[int] = []        # slot -> item code (NO_CODE when free)
        self.free: list[int] = []
        self._alloc(64)
        self._pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.dirty: set[int] = set()        # slots changed since the last write-back
        self.evicted_writes: list[tuple[str, bytes | None]] = []
        self.rows_created = 0  # rows started from nothing (no keyed state), for the metric

    def _alloc(self, n: int) -> None:
        old = len(self.code_of)
        cols = np.zeros((n, self.cap), dtype=np.int32)
        vals = np.zeros((n, self.cap), dtype=np.float64)
        obs = np.zeros((n, self.cap), dtype=np.int32)
        counts = np.zeros(n, dtype=np.int32)
        nbr = np.full((n, self.k), NO_CODE, dtype=np.int32)
        nbr_score = np.zeros((n, self.k), dtype=np.float64)
        nbr_len = np.zeros(n, dtype=np.int32)
        last_emit = np.zeros(n, dtype=np.int64)
        pending = np.zeros(n, dtype=bool)
        if old:
            cols[:old], vals[:old], obs[:old] = self.cols, self.vals, self.obs
            counts[:old], nbr[:old], nbr_score[:old] = self.counts, self.nbr, self.nbr_score
            nbr_len[:old], last_emit[:old], pending[:old] = (self.nbr_len, self.last_emit,
                                                             self.pending)
        (self.cols, self.vals, self.obs, self.counts, self.nbr, self.nbr_score, self.nbr_len,
         self.last_emit, self.pending) = (cols, vals, obs, counts, nbr, nbr_score, nbr_len,
                                          last_emit, pending)
        self.code_of.extend([NO_CODE] * (n - old))
        self.free.extend(range(n - 1, old - 1, -1))

    def __len__(self) -> int:
        return len(self.slot_of)

    def has(self, item_id: str) -> bool:
        c = self.stats.items.get(item_id)
        return c != NO_CODE and c in self.slot_of

    def _slot(self, code: int) -> int:
        s = self.slot_of.get(code)
        if s is None:
            if not self.free:
                self._alloc(2 * len(self.code_of))
            s = self.free.pop()
            self.slot_of[code] = s
            self.code_of[s] = code
            self.counts[s] = 0
            self.nbr_len[s] = 0
            self.last_emit[s] = 0
            self.pending[s] = False
        return s

    def load(self, item_id: str, blob: bytes | None) -> None:
        """Make the row of ``item_id`` resident (from its keyed state value, or empty)."""
        code = self.stats.code(item_id)
        if code in self.slot_of:
            return
        s = self._slot(code)
        if blob is None:
            self.rows_created += 1
            return
        row = decode_row(blob)
        col_codes = self.stats.items.codes_of_hashes(row.col_hashes)
        factor = 1.0
        if self.stats.occ_decay.landmark is not None and row.landmark is not None:
            factor = landmark_factor(row.landmark, self.stats.occ_decay.landmark,
                                     self.stats.occ_decay.half_life_ms)
        known = col_codes != NO_CODE
        order = np.argsort(col_codes[known], kind="stable")
        n = min(int(known.sum()), self.cap)
        self.cols[s, :n] = col_codes[known][order][:n]
        self.vals[s, :n] = row.vals[known][order][:n] * factor
        self.obs[s, :n] = row.obs[known][order][:n]
        self.counts[s] = n
        nb = self.stats.items.codes_of_hashes(row.nbr_hashes)
        ok = nb != NO_CODE
        m = min(int(ok.sum()), self.k)
        self.nbr[s, :m] = nb[ok][:m]
        self.nbr_score[s, :m] = row.nbr_scores[ok][:m]
        self.nbr_len[s] = m
        self.last_emit[s] = row.last_emit
        self.pending[s] = row.pending

    def rescale(self, factor: float) -> None:
        """The occurrence landmark moved: scale every resident C the same way (ratios stay)."""
        if factor != 1.0:
            self.vals *= factor

    def on_pairs(self, row: str, cols: Sequence[str], deltas: Sequence[float],
                 ts: Sequence[int]) -> None:
        """Buffer the pair updates of one row (resident) until the next :meth:`flush`."""
        if cols:
            self._pairs.append((self.stats.code(row), self.stats.codes(cols), deltas, ts))

    def flush(self, proc_now: int) -> tuple[list[Emission], list[tuple[str, int]]]:
        """Apply the buffered pairs; return the rows to publish now and the (item, time) of
        the emission timers to register (a changed row waits ``emit_min_interval_ms``)."""
        if not self._pairs:
            return [], []
        pairs, self._pairs = self._pairs, []
        col_codes = np.concatenate([p[1] for p in pairs])
        row_codes = np.repeat(np.array([p[0] for p in pairs], dtype=np.int32),
                              [len(p[1]) for p in pairs])
        deltas = np.fromiter((d for p in pairs for d in p[2]), dtype=np.float64,
                             count=len(col_codes))
        ts = np.fromiter((t for p in pairs for t in p[3]), dtype=np.float64, count=len(col_codes))
        stats = self.stats
        stats.prepare_occurrence(int(ts.max()))
        contrib = deltas * stats.occ_decay.weights(ts)
        slots = np.fromiter((self._slot(c) for c in row_codes.tolist()), dtype=np.int32,
                            count=len(row_codes))
        order = np.argsort(slots, kind="stable")
        slots, col_codes, contrib = slots[order], col_codes[order], contrib[order]
        bounds = np.flatnonzero(np.diff(slots)) + 1
        group_start = np.concatenate([[0], bounds, [len(slots)]]).astype(np.int64)
        group_slot = slots[group_start[:-1]]
        group_code = np.array([self.code_of[s] for s in group_slot.tolist()], dtype=np.int32)
        changed = np.zeros(len(group_slot), dtype=np.bool_)
        sim = self.sim
        # min_cooccurrence is about C as of the newest event; stored values are forward-decayed
        min_cooc = sim.min_cooccurrence / stats.occ_decay.read_factor(stats.newest_ts
                                                                      or int(ts.max()))
        apply_pairs(group_start, col_codes, contrib, group_slot, group_code,
                    self.cols, self.vals, self.obs, self.counts, self.nbr, self.nbr_score,
                    self.nbr_len, self.stats.occ, self.stats.items.hashes,
                    _METRIC_CODE[sim.metric], float(sim.popularity_alpha), int(sim.top_k),
                    int(self.cap), float(min_cooc),
                    math.log(1.0 / sim.hoeffding_delta), int(sim.hoeffding_min_obs), changed)
        self.dirty.update(group_slot.tolist())
        self.pending[group_slot[changed]] = True
        return self.due(group_slot[changed], proc_now)

    def due(self, slots: Iterable[int], proc_now: int) -> tuple[list[Emission],
                                                                list[tuple[str, int]]]:
        """Rows of ``slots`` pending emission: emitted now when their last emission is at least
        ``emit_min_interval_ms`` old, else a timer for when it will be."""
        interval = self.sim.emit_min_interval_ms
        out, timers = [], []
        for s in slots:
            if not self.pending[s]:
                continue
            last = int(self.last_emit[s])
            if proc_now - last >= interval:
                out.append(self.emission(s, proc_now))
            else:
                timers.append((self.stats.items.id_of(self.code_of[s]), last + interval))
        return out, timers

    def on_timer(self, item_id: str, proc_now: int) -> tuple[list[Emission],
                                                             list[tuple[str, int]]]:
        c = self.stats.items.get(item_id)
        s = self.slot_of.get(c) if c != NO_CODE else None
        return self.due([s], proc_now) if s is not None else ([], [])

    def emission(self, s: int, proc_now: int) -> Emission:
        self.pending[s] = False
        self.last_emit[s] = proc_now
        self.dirty.add(s)
        n = int(self.nbr_len[s])
        ids = self.stats.items.ids
        return Emission(ids[self.code_of[s]], [ids[c] for c in self.nbr[s, :n].tolist()],
                        self.nbr_score[s, :n].tolist(), proc_now)

    def neighbors(self, item_id: str) -> list[tuple[str, float]]:
        c = self.stats.items.get(item_id)
        s = self.slot_of.get(c) if c != NO_CODE else None
        if s is None:
            return []
        n = int(self.nbr_len[s])
        ids = self.stats.items.ids
        return list(zip([ids[c] for c in self.nbr[s, :n].tolist()], self.nbr_score[s, :n].tolist()))

    def entries(self, item_id: str) -> dict[str, tuple[float, int]]:
        c = self.stats.items.get(item_id)
        s = self.slot_of.get(c) if c != NO_CODE else None
        if s is None:
            return {}
        n = int(self.counts[s])
        ids = self.stats.items.ids
        return {ids[c]: (v, o) for c, v, o in zip(self.cols[s, :n].tolist(),
                                                   self.vals[s, :n].tolist(),
                                                   self.obs[s, :n].tolist())}

    def _encode(self, s: int) -> bytes:
        n, k = int(self.counts[s]), int(self.nbr_len[s])
        hashes = self.stats.items.hashes
        return encode_row(RowState(
            landmark=self.stats.occ_decay.landmark,
            col_hashes=hashes[self.cols[s, :n]], vals=self.vals[s, :n], obs=self.obs[s, :n],
            nbr_hashes=hashes[self.nbr[s, :k]], nbr_scores=self.nbr_score[s, :k],
            last_emit=int(self.last_emit[s]), pending=bool(self.pending[s])))

    def dirty_rows(self) -> list[tuple[str, bytes]]:
        """(item id, state value) of every row changed since the last call."""
        ids = self.stats.items.ids
        out = [(ids[self.code_of[s]], self._encode(s)) for s in sorted(self.dirty)]
        self.dirty = set()
        out.extend(self.evicted_writes)
        self.evicted_writes = []
        return out

    def _on_evict(self, victims: np.ndarray) -> None:
        """Items leave the table: write their rows back if dirty, free their slots, and drop
        every resident entry and neighbour naming them."""
        gone = set(victims.tolist())
        for c in gone:
            s = self.slot_of.pop(c, None)
            if s is None:
                continue
            if s in self.dirty:
                self.evicted_writes.append((self.stats.items.id_of(c), self._encode(s)))
                self.dirty.discard(s)
            self.code_of[s] = NO_CODE
            self.counts[s] = 0
            self.nbr_len[s] = 0
            self.free.append(s)
        live = np.array(sorted(self.slot_of.values()), dtype=np.int64)
        if not len(live):
            return
        self._drop_codes(live, victims, self.cols, self.counts, (self.vals, self.obs))
        self._drop_codes(live, victims, self.nbr, self.nbr_len, (self.nbr_score,))

    def _drop_codes(self, live: np.ndarray, victims: np.ndarray, codes: np.ndarray,
                    lengths: np.ndarray, aligned: tuple[np.ndarray, ...]) -> None:
        """Remove ``victims`` from the filled part of each live slot's ``codes`` (and the
        same positions of the ``aligned`` arrays), keeping the order; free slots and stale
        tails hold old codes and are not looked at."""
        filled = np.arange(codes.shape[1])[None, :] < lengths[live][:, None]
        hit = np.isin(codes[live], victims) & filled
        for r in np.flatnonzero(hit.any(axis=1)).tolist():
            s = int(live[r])
            n = int(lengths[s])
            keep = ~hit[r, :n]
            m = int(keep.sum())
            for a in (codes, *aligned):
                a[s, :m] = a[s, :n][keep]
            lengths[s] = m
            self.dirty.add(s)
