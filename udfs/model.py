"""The recommender's view of the items: columnar arrays indexed by item code.

Fed by three streams, all broadcast to every subtask of the user operator:

* the catalogue (``item-catalog`` records): title, categories, tags, price, availability;
* neighbour rows from the item operator: each item's top-K similar items and scores;
* popularity from the item operator: forward-decayed activity counts per item, overall and per
  demographic segment (stored values against one landmark; their ranking never depends on when
  they are read).

From them the model keeps, per code (:class:`udfs.items.ItemTable`): catalogue columns, item
features as a CSR array of feature codes, neighbours as fixed-width arrays (``top_k`` per item),
popularity as float64 arrays; and, rebuilt on a cadence (``recommend.trending_refresh_ms`` of
processing time) rather than on every update, the ranked trending lists the recommender walks:
overall, per category and per segment, each holding only catalogue items that are available.

:meth:`ItemModel.snapshot` / :meth:`ItemModel.restore` write and read the whole model as a few
blobs (``state_schemas/model_state.py``): the user operator stores them in its replicated
(broadcast) state at each checkpoint, so a restore finds the model it left.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from state_schemas.config import EngineConfig
from state_schemas.model_state import (
    CATALOG_KEY, ITEMS_KEY, decode_catalog, decode_items, encode_catalog, encode_items)
from udfs.items import NO_CODE, FeatureTable, ItemTable

_F64 = np.float64
_I32 = np.int32


def item_features(categories: Sequence[str], tags: Sequence[str]) -> tuple[str, ...]:
    """Interest features of an item, without repeats, in first-seen order."""
    return tuple(dict.fromkeys([f"category:{c}" for c in categories] + [f"tag:{t}" for t in tags]))


def ranked_prefix(values: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` candidates with the largest positive ``values`` (all of them when fewer), in
    descending order; equal values keep candidate order (stable)."""
    if not len(candidates):
        return candidates
    v = values[candidates]
    keep = v > 0
    candidates, v = candidates[keep], v[keep]
    if len(candidates) > 4 * n:
        part = np.argpartition(-v, n - 1)[:n]
        cut = v[part].min()
        sel = v >= cut  # every candidate tied at the cut, so the order below is exact
        candidates, v = candidates[sel], v[sel]
    order = np.argsort(-v, kind="stable")
    return candidates[order[:n]].astype(_I32)


class ItemModel:
    """Columnar item model of one user-operator subtask (see the module docstring)."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.top_k = cfg.similarity.top_k
        self.top_n = max(cfg.recommend.trending_top_n, cfg.recommend.candidates_per_source)
        self.items = ItemTable(cfg.recommend.model_max_items, on_evict=self._on_evict)
        self.features = FeatureTable()
        self.categories = FeatureTable()  # category names -> codes (primary category, lists)
        self.segments: dict[str, int] = {}
        cap = self.items.capacity
        # catalogue columns
        self.in_catalog = np.zeros(cap, dtype=bool)
        self.available = np.zeros(cap, dtype=bool)
        self.updated_at = np.full(cap, -(1 << 62), dtype=np.int64)
        self.price = np.full(cap, np.nan, dtype=_F64)
        self.primary_cat = np.full(cap, NO_CODE, dtype=_I32)
        self.titles: dict[int, str] = {}
        self.item_cats: dict[int, tuple[str, ...]] = {}
        self.item_tags: dict[int, tuple[str, ...]] = {}
        self.item_feats: dict[int, np.ndarray] = {}  # code -> feature codes
        # neighbours
        self.nbr_codes = np.full((cap, self.top_k), NO_CODE, dtype=_I32)
        self.nbr_scores = np.zeros((cap, self.top_k), dtype=_F64)
        self.nbr_len = np.zeros(cap, dtype=np.int16)
        self.neighbor_pairs = 0
        # popularity (stored forward-decayed values against self.pop_landmark)
        self.pop = np.zeros(cap, dtype=_F64)
        self.pop_seg: dict[int, np.ndarray] = {}
        self.pop_landmark: int | None = None
        self.pop_newest_ts: int | None = None
        # derived, rebuilt lazily
        self.feat_ptr = np.zeros(1, dtype=np.int64)
        self.feat_idx = np.zeros(0, dtype=_I32)
        self.usable = np.zeros(cap, dtype=bool)  # in the catalogue and available
        self.trend_global = np.zeros(0, dtype=_I32)
        self.trend_cat_ptr = np.zeros(1, dtype=np.int64)
        self.trend_cat = np.zeros(0, dtype=_I32)
        self.trend_seg: dict[int, np.ndarray] = {}
        self._catalog_dirty = True
        self._trending_dirty = True
        self._trending_built_at = -math.inf
        # what changed since the last snapshot (replicated state is rewritten only then)
        self._catalog_changed = False
        self._items_changed = False

    # ------------------------------------------------------------------------ capacity
    def _ensure_capacity(self) -> None:
        cap = self.items.capacity
        if len(self.in_catalog) >= cap:
            return
        old = len(self.in_catalog)

        def grow(a: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full((cap,) + a.shape[1:], fill, dtype=a.dtype)
            out[:old] = a
            return out

        self.in_catalog = grow(self.in_catalog, False)
        self.available = grow(self.available, False)
        self.updated_at = grow(self.updated_at, -(1 << 62))
        self.price = grow(self.price, np.nan)
        self.primary_cat = grow(self.primary_cat, NO_CODE)
        self.nbr_codes = grow(self.nbr_codes, NO_CODE)
        self.nbr_scores = grow(self.nbr_scores, 0.0)
        self.nbr_len = grow(self.nbr_len, 0)
        self.pop = grow(self.pop, 0.0)
        self.pop_seg = {s: grow(a, 0.0) for s, a in self.pop_seg.items()}
        self.usable = grow(self.usable, False)

    def code(self, item_id: str) -> int:
        c = self.items.code(item_id)
        self._ensure_capacity()
        return c

    def _on_evict(self, victims: np.ndarray) -> None:
        """Clear every column of the evicted codes and every neighbour entry naming them."""
        self.in_catalog[victims] = False
        self.available[victims] = False
        self.usable[victims] = False
        self.updated_at[victims] = -(1 << 62)
        self.price[victims] = np.nan
        self.primary_cat[victims] = NO_CODE
        self.pop[victims] = 0.0
        for a in self.pop_seg.values():
            a[victims] = 0.0
        for c in victims.tolist():
            self.titles.pop(c, None)
            self.item_cats.pop(c, None)
            self.item_tags.pop(c, None)
            self.item_feats.pop(c, None)
        self.neighbor_pairs -= int(self.nbr_len[victims].sum())
        self.nbr_len[victims] = 0
        self.nbr_codes[victims] = NO_CODE
        hit = np.isin(self.nbr_codes, victims)
        rows = np.flatnonzero(hit.any(axis=1))
        for r in rows.tolist():  # rare (one batch of evictions at a time): compact each row
            keep = ~hit[r, :self.nbr_len[r]]
            self._set_row(r, self.nbr_codes[r, :self.nbr_len[r]][keep],
                          self.nbr_scores[r, :self.nbr_len[r]][keep])
        self._catalog_dirty = self._trending_dirty = True

    # ------------------------------------------------------------------------ catalogue
    def upsert_item(self, rec: dict[str, Any]) -> bool:
        """Apply one validated ``item-catalog`` record; False when an entry as new is known."""
        c = self.code(rec["item_id"])
        if self.in_catalog[c] and self.updated_at[c] > rec["ts"]:
            return False
        self.in_catalog[c] = True
        self.available[c] = bool(rec["available"])
        self.updated_at[c] = rec["ts"]
        self.price[c] = np.nan if rec.get("price") is None else float(rec["price"])
        cats, tags = tuple(rec["categories"]), tuple(rec["tags"])
        self.titles[c] = rec["title"]
        self.item_cats[c] = cats
        self.item_tags[c] = tags
        self.primary_cat[c] = self.categories.code(cats[0]) if cats else NO_CODE
        for cat in cats:
            self.categories.code(cat)
        self.item_feats[c] = np.array([self.features.code(f) for f in item_features(cats, tags)],
                                      dtype=_I32)
        self._catalog_dirty = self._trending_dirty = self._catalog_changed = True
        return True

    def info(self, item_id: str) -> tuple[tuple[str, ...], tuple[str, ...], float | None] | None:
        """(categories, tags, price) of a catalogue item, or None."""
        c = self.items.get(item_id)
        if c == NO_CODE or not self.in_catalog[c]:
            return None
        price = float(self.price[c])
        return self.item_cats[c], self.item_tags[c], None if math.isnan(price) else price

    def title(self, code: int) -> str:
        t = self.titles.get(code)
        return t if t else self.items.id_of(code)

    # ------------------------------------------------------------------------ neighbours
    def _set_row(self, c: int, codes: np.ndarray, scores: np.ndarray) -> None:
        n = min(len(codes), self.top_k)
        self.neighbor_pairs += n - int(self.nbr_len[c])
        self.nbr_codes[c, :n] = codes[:n]
        self.nbr_codes[c, n:] = NO_CODE
        self.nbr_scores[c, :n] = scores[:n]
        self.nbr_scores[c, n:] = 0.0
        self.nbr_len[c] = n
        self._items_changed = True

    def set_neighbors(self, item_id: str, neighbor_ids: Sequence[str],
                      scores: Sequence[float]) -> None:
        """Replace an item's neighbour row (ids and scores, best first)."""
        c = self.code(item_id)
        codes = self.items.codes(neighbor_ids) if len(neighbor_ids) else np.zeros(0, _I32)
        self._ensure_capacity()
        self._set_row(c, codes, np.asarray(scores, dtype=_F64))

    def neighbors_of(self, item_id: str) -> list[tuple[str, float]]:
        c = self.items.get(item_id)
        if c == NO_CODE:
            return []
        n = int(self.nbr_len[c])
        return [(self.items.id_of(j), float(s))
                for j, s in zip(self.nbr_codes[c, :n].tolist(), self.nbr_scores[c, :n].tolist())]

    # ------------------------------------------------------------------------ popularity
    def segment_code(self, segment: str) -> int:
        s = self.segments.get(segment)
        if s is None:
            s = self.segments[segment] = len(self.segments)
        return s

    def apply_popularity(self, landmark: int, newest_ts: int, ids: Sequence[str],
                         values: np.ndarray, seg_names: Sequence[str], seg_item: np.ndarray,
                         seg_values: np.ndarray) -> None:
        """Set the stored popularity of ``ids`` (global) and of (segment, item) pairs.

        ``seg_item`` indexes ``ids``; stored values are against ``landmark``: when it moved since
        the last update, every stored value here is rescaled to it first.
        """
        hl = self.cfg.recommend.trending_half_life_ms
        if self.pop_landmark is not None and landmark != self.pop_landmark:
            factor = 2.0 ** ((self.pop_landmark - landmark) / hl)
            self.pop *= factor
            for a in self.pop_seg.values():
                a *= factor
        self.pop_landmark = landmark
        if self.pop_newest_ts is None or newest_ts > self.pop_newest_ts:
            self.pop_newest_ts = newest_ts
        codes = self.items.codes(ids)
        self._ensure_capacity()
        self.pop[codes] = values
        if len(seg_item):
            seg_codes = np.array([self.segment_code(s) for s in seg_names], dtype=_I32)
            for s in np.unique(seg_codes).tolist():
                arr = self.pop_seg.get(s)
                if arr is None:
                    arr = self.pop_seg[s] = np.zeros(self.items.capacity, dtype=_F64)
                sel = seg_codes == s
                arr[codes[seg_item[sel]]] = seg_values[sel]
        self._trending_dirty = self._items_changed = True

    # ------------------------------------------------------------------------ derived arrays
    def refresh(self, proc_now: float, force: bool = False) -> None:
        """Rebuild derived arrays that are stale: features CSR (when the catalogue changed),
        ranked trending lists (at most every ``trending_refresh_ms``)."""
        if self._catalog_dirty:
            self._build_features()
        if self._trending_dirty and (force or proc_now - self._trending_built_at
                                     >= self.cfg.recommend.trending_refresh_ms):
            self._build_trending()
            self._trending_built_at = proc_now

    def ready(self) -> None:
        """Make every array the scoring kernel reads cover the table's capacity (items interned
        since the last refresh have no features and are not usable yet)."""
        cap = self.items.capacity
        if len(self.feat_ptr) < cap + 1:
            ptr = np.full(cap + 1, self.feat_ptr[-1], dtype=np.int64)
            ptr[:len(self.feat_ptr)] = self.feat_ptr
            self.feat_ptr = ptr
        self._ensure_capacity()

    def _build_features(self) -> None:
        cap = self.items.capacity
        lengths = np.zeros(cap, dtype=np.int64)
        for c, f in self.item_feats.items():
            lengths[c] = len(f)
        ptr = np.zeros(cap + 1, dtype=np.int64)
        np.cumsum(lengths, out=ptr[1:])
        idx = np.zeros(int(ptr[-1]), dtype=_I32)
        for c, f in self.item_feats.items():
            idx[ptr[c]:ptr[c + 1]] = f
        self.feat_ptr, self.feat_idx = ptr, idx
        self.usable = self.in_catalog & self.available
        self._catalog_dirty = False
        self._trending_dirty = True

    def _build_trending(self) -> None:
        n = self.top_n
        usable = np.flatnonzero(self.usable[:self.items.high_water]).astype(_I32)
        self.trend_global = ranked_prefix(self.pop, usable, n)
        self.trend_seg = {s: ranked_prefix(a, usable, n) for s, a in self.pop_seg.items()}
        # per category: the usable items of each category, by popularity
        ncat = len(self.categories)
        lists: list[np.ndarray] = [np.zeros(0, dtype=_I32)] * ncat
        if ncat:
            by_cat: list[list[int]] = [[] for _ in range(ncat)]
            for c in usable.tolist():
                for cat in dict.fromkeys(self.item_cats.get(c, ())):
                    by_cat[self.categories.get(cat)].append(c)
            lists = [ranked_prefix(self.pop, np.asarray(m, dtype=_I32), n) for m in by_cat]
        ptr = np.zeros(ncat + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lists], out=ptr[1:])
        self.trend_cat_ptr = ptr
        self.trend_cat = np.concatenate(lists).astype(_I32) if lists else np.zeros(0, _I32)
        self._trending_dirty = False

    def segment_arrays(self, segment: str) -> tuple[np.ndarray, np.ndarray]:
        """(ranked codes, stored popularity) of a segment; empty when it has no activity."""
        s = self.segments.get(segment) if segment else None
        if s is None or s not in self.pop_seg:
            return np.zeros(0, dtype=_I32), self.pop
        return self.trend_seg.get(s, np.zeros(0, dtype=_I32)), self.pop_seg[s]

    def category_list(self, category: str) -> np.ndarray:
        k = self.categories.get(category)
        if k == NO_CODE or k + 1 >= len(self.trend_cat_ptr):  # not in the lists built last
            return np.zeros(0, dtype=_I32)
        return self.trend_cat[self.trend_cat_ptr[k]:self.trend_cat_ptr[k + 1]]

    # ------------------------------------------------------------------------ sizes
    def sizes(self) -> dict[str, float]:
        return {"model_catalog_items": float(self.in_catalog.sum()),
                "model_items_with_neighbors": float((self.nbr_len > 0).sum()),
                "model_neighbor_pairs": float(self.neighbor_pairs),
                "model_trending_items": float((self.pop[:self.items.high_water] > 0).sum())}

    def catalog_records(self) -> Iterable[dict[str, Any]]:
        """Every catalogue entry as an ``item-catalog`` record (snapshots, tests)."""
        for c in np.flatnonzero(self.in_catalog).tolist():
            price = float(self.price[c])
            yield {"item_id": self.items.id_of(c), "ts": int(self.updated_at[c]),
                   "title": self.titles[c], "categories": list(self.item_cats[c]),
                   "tags": list(self.item_tags[c]),
                   "price": None if math.isnan(price) else price,
                   "available": bool(self.available[c])}

    # ------------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, bytes]:
        """The replicated-state entries that changed since the last snapshot."""
        out: dict[str, bytes] = {}
        if self._catalog_changed:
            out[CATALOG_KEY] = encode_catalog(list(self.catalog_records()))
            self._catalog_changed = False
        if self._items_changed:
            codes = self.items.live_codes()
            index = np.full(self.items.capacity, -1, dtype=np.int32)
            index[codes] = np.arange(len(codes), dtype=np.int32)
            nbr = self.nbr_codes[codes]
            nbr_index = np.where(nbr >= 0, index[np.maximum(nbr, 0)], -1)
            for r, n in enumerate(self.nbr_len[codes].tolist()):
                nbr_index[r, n:] = -1
            out[ITEMS_KEY] = encode_items(
                [self.items.id_of(c) for c in codes.tolist()], nbr_index, self.nbr_scores[codes],
                self.pop[codes], {s: a[codes] for s, a in self._segment_names().items()},
                self.pop_landmark, self.pop_newest_ts)
            self._items_changed = False
        return out

    def _segment_names(self) -> dict[str, np.ndarray]:
        names = {code: name for name, code in self.segments.items()}
        return {names[s]: a for s, a in self.pop_seg.items()}

    def restore(self, entries: dict[str, bytes]) -> None:
        """Load what :meth:`snapshot` wrote (any subset of its keys)."""
        if CATALOG_KEY in entries:
            for rec in decode_catalog(entries[CATALOG_KEY]):
                self.upsert_item(rec)
        if ITEMS_KEY in entries:
            ids, nbr, scores, pop, seg, landmark, newest = decode_items(entries[ITEMS_KEY])
            codes = self.items.codes(ids)
            self._ensure_capacity()
            for r, c in enumerate(codes.tolist()):
                row = nbr[r]
                n = int((row >= 0).sum())
                if n:
                    self._set_row(c, codes[row[:n]], scores[r, :n])
            self.pop[codes] = pop
            for name, values in seg.items():
                s = self.segment_code(name)
                arr = self.pop_seg[s] = np.zeros(self.items.capacity, dtype=_F64)
                arr[codes] = values
            self.pop_landmark, self.pop_newest_ts = landmark, newest
            self._trending_dirty = True
        self._catalog_changed = self._items_changed = False
