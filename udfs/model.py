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
    CATALOG_PREFIX, ITEM_PREFIX, META_KEY, decode_catalog_entry, decode_item_entry, decode_meta,
    encode_catalog_entry, encode_item_entry, encode_meta)
from state_schemas.records import SOURCE_EASE, SOURCE_ITEM_CF
from udfs.decay import landmark_factor
from udfs.items import NO_CODE, FeatureTable, ItemTable

_F64 = np.float64
_I32 = np.int32


def item_features(categories: Sequence[str], tags: Sequence[str]) -> tuple[str, ...]:
    """Interest features of an item, without repeats, in first-seen order."""
    return tuple(dict.fromkeys([f"category:{c}" for c in categories] + [f"tag:{t}" for t in tags]))


def ranked_prefix(values: np.ndarray, hashes: np.ndarray, candidates: np.ndarray,
                  n: int) -> np.ndarray:
    """The ``n`` candidates with the largest positive ``values`` (all of them when fewer), in
    descending order; equal values ordered by item hash (stable across processes)."""
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
    order = np.lexsort((hashes[candidates], -v))
    return candidates[order[:n]].astype(_I32)


class ItemModel:
    """Columnar item model of one user-operator subtask (see the module docstring)."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.top_k = cfg.similarity.top_k
        self.top_n = max(cfg.recommend.trending_top_n, cfg.recommend.candidates_per_source)
        self.items = ItemTable(cfg.recommend.model_max_items, on_evict=self._on_evict)
        self.features = FeatureTable()
        self._feature_rank = np.zeros(1, dtype=np.int64)
        self.categories = FeatureTable()  # category names -> codes (primary category, lists)
        self.segments: dict[str, int] = {}
        cap = self.items.capacity
        # catalogue columns
        self.in_catalog = np.zeros(cap, dtype=bool)
        self.available = np.zeros(cap, dtype=bool)
        self.updated_at = np.full(cap, -(1 << 62), dtype=np.int64)
        # When the item entered the catalogue (its first record's ts): the new-item lists.
        self.first_listed = np.full(cap, -(1 << 62), dtype=np.int64)
        self.price = np.full(cap, np.nan, dtype=_F64)
        self.primary_cat = np.full(cap, NO_CODE, dtype=_I32)
        self.titles: dict[int, str] = {}
        self.item_cats: dict[int, tuple[str, ...]] = {}
        # (item code, category code) of every catalogue item's categories, as arrays, rebuilt
        # when item_cats changes (not on every trending refresh)
        self._cat_pairs: tuple[np.ndarray, np.ndarray] | None = None
        self.item_tags: dict[int, tuple[str, ...]] = {}
        self.item_feature_names: dict[int, tuple[str, ...]] = {}
        # neighbours
        self.nbr_codes = np.full((cap, self.top_k), NO_CODE, dtype=_I32)
        self.nbr_scores = np.zeros((cap, self.top_k), dtype=_F64)
        self.nbr_len = np.zeros(cap, dtype=np.int16)
        # Where each row came from: an EASE row (head items) is not replaced by the item-CF row
        # of the same item until EASE releases it (an empty EASE row).
        self.nbr_source = np.zeros(cap, dtype=np.int8)
        self.neighbor_pairs = 0
        # popularity (stored forward-decayed values against self.pop_landmark)
        self.pop = np.zeros(cap, dtype=_F64)
        self.pop_seg: dict[int, np.ndarray] = {}
        self.pop_landmark: int | None = None
        self.pop_newest_ts: int | None = None
        # derived, rebuilt lazily
        # item features: codes in an append-only store, [feat_start, feat_start + feat_len) per
        # item (an update appends; the store is compacted when mostly garbage)
        self.feat_start = np.zeros(cap, dtype=np.int64)
        self.feat_len = np.zeros(cap, dtype=_I32)
        self.feat_store = np.zeros(1024, dtype=_I32)
        self.feat_used = 0
        self.usable = np.zeros(cap, dtype=bool)  # in the catalogue and available
        self.list_bounds = np.zeros(2, dtype=np.int64)
        self.list_bounds_list = [0, 0]
        self.seg_range: dict[int, int] = {}
        self.cat_range: dict[int, int] = {}
        self.new_range: dict[int, int] = {}
        self.lst_codes = np.zeros(0, dtype=_I32)
        self.lst_vals = np.zeros(0, dtype=_F64)
        self.lst_hash = np.zeros(0, dtype=np.uint64)
        self.lst_fptr = np.zeros(1, dtype=np.int64)
        self.lst_fidx = np.zeros(0, dtype=_I32)
        self._trending_dirty = True
        self._trending_urgent = False
        self._trending_built_at = -math.inf
        self.catalog_version = 0  # bumped by every catalogue change (titles in reasons)
        # ids whose entries of the replicated state changed since the last snapshot
        self._dirty_catalog: set[str] = set()
        self._dirty_items: set[str] = set()

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
        self.first_listed = grow(self.first_listed, -(1 << 62))
        self.price = grow(self.price, np.nan)
        self.primary_cat = grow(self.primary_cat, NO_CODE)
        self.nbr_codes = grow(self.nbr_codes, NO_CODE)
        self.nbr_scores = grow(self.nbr_scores, 0.0)
        self.nbr_len = grow(self.nbr_len, 0)
        self.nbr_source = grow(self.nbr_source, SOURCE_ITEM_CF)
        self.pop = grow(self.pop, 0.0)
        self.pop_seg = {s: grow(a, 0.0) for s, a in self.pop_seg.items()}
        self.usable = grow(self.usable, False)
        self.feat_start = grow(self.feat_start, 0)
        self.feat_len = grow(self.feat_len, 0)

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
            self._cat_pairs = None
            self.item_tags.pop(c, None)
            self.item_feature_names.pop(c, None)
        self.feat_len[victims] = 0
        for c in victims.tolist():
            item = self.items.ids[c]
            self._dirty_catalog.add(item)
            self._dirty_items.add(item)
        self.neighbor_pairs -= int(self.nbr_len[victims].sum())
        self.nbr_len[victims] = 0
        self.nbr_codes[victims] = NO_CODE
        self.nbr_source[victims] = SOURCE_ITEM_CF
        hit = np.isin(self.nbr_codes, victims)
        rows = np.flatnonzero(hit.any(axis=1))
        for r in rows.tolist():  # rare (one batch of evictions at a time): compact each row
            keep = ~hit[r, :self.nbr_len[r]]
            self._set_row(r, self.nbr_codes[r, :self.nbr_len[r]][keep],
                          self.nbr_scores[r, :self.nbr_len[r]][keep])
            self._dirty_items.add(self.items.ids[r])
        self._trending_dirty = True

    # ------------------------------------------------------------------------ catalogue
    def upsert_item(self, rec: dict[str, Any]) -> bool:
        """Apply one validated ``item-catalog`` record; False when an entry as new is known."""
        c = self.code(rec["item_id"])
        if self.in_catalog[c] and self.updated_at[c] > rec["ts"]:
            return False
        if self.usable[c] and not rec["available"]:
            self._trending_urgent = True  # never recommend it from a list built before
        if not self.in_catalog[c]:
            self.first_listed[c] = rec["ts"]
        self.in_catalog[c] = True
        self.available[c] = bool(rec["available"])
        self.catalog_version += 1
        self.updated_at[c] = rec["ts"]
        self.price[c] = np.nan if rec.get("price") is None else float(rec["price"])
        cats, tags = tuple(rec["categories"]), tuple(rec["tags"])
        self.titles[c] = rec["title"]
        if self.item_cats.get(c) != cats:  # a price or availability update keeps the index
            self._cat_pairs = None
        self.item_cats[c] = cats
        self.item_tags[c] = tags
        self.primary_cat[c] = self.categories.code(cats[0]) if cats else NO_CODE
        for cat in cats:
            self.categories.code(cat)
        names = item_features(cats, tags)
        self.item_feature_names[c] = names
        self._store_features(c, np.array([self.features.code(f) for f in names], dtype=_I32))
        self.usable[c] = self.available[c]
        self._trending_dirty = True
        self._dirty_catalog.add(rec["item_id"])
        return True

    def _store_features(self, c: int, feats: np.ndarray) -> None:
        n = len(feats)
        if self.feat_used + n > len(self.feat_store):
            live = int(self.feat_len.sum())
            if live * 2 < self.feat_used:  # mostly superseded versions: compact
                self._compact_features()
            if self.feat_used + n > len(self.feat_store):
                grown = np.zeros(max(2 * len(self.feat_store), self.feat_used + n), dtype=_I32)
                grown[:self.feat_used] = self.feat_store[:self.feat_used]
                self.feat_store = grown
        self.feat_store[self.feat_used:self.feat_used + n] = feats
        self.feat_start[c] = self.feat_used
        self.feat_len[c] = n
        self.feat_used += n

    def _compact_features(self) -> None:
        store = np.zeros(max(1024, 2 * int(self.feat_len.sum())), dtype=_I32)
        at = 0
        for c in np.flatnonzero(self.feat_len > 0).tolist():
            n = int(self.feat_len[c])
            store[at:at + n] = self.feat_store[self.feat_start[c]:self.feat_start[c] + n]
            self.feat_start[c] = at
            at += n
        self.feat_store, self.feat_used = store, at

    def item_features_of(self, code: int) -> np.ndarray:
        """The feature codes of an item (empty when it is not in the catalogue)."""
        a = int(self.feat_start[code])
        return self.feat_store[a:a + int(self.feat_len[code])]

    def in_catalogue(self, item_id: str) -> bool:
        c = self.items.get(item_id)
        return c != NO_CODE and bool(self.in_catalog[c])

    def info(self, item_id: str) -> tuple[tuple[str, ...], tuple[str, ...], float | None] | None:
        """(categories, tags, price) of a catalogue item, or None."""
        c = self.items.get(item_id)
        if c == NO_CODE or not self.in_catalog[c]:
            return None
        price = float(self.price[c])
        return self.item_cats[c], self.item_tags[c], None if math.isnan(price) else price

    def feature_rank(self) -> np.ndarray:
        """Each feature code's position in the sorted feature names (ties between equally
        liked features go to the name first in that order); plus one entry for "none"."""
        if len(self._feature_rank) != len(self.features) + 1:
            order = np.argsort(np.array(self.features.names, dtype=object), kind="stable")
            rank = np.empty(len(self.features) + 1, dtype=np.int64)
            rank[order] = np.arange(len(order))
            rank[-1] = len(order)
            self._feature_rank = rank
        return self._feature_rank

    def feature_names(self, code: int) -> tuple[str, ...]:
        """The interest features of a catalogue item (empty for others)."""
        return self.item_feature_names.get(code, ())

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

    def set_neighbors(self, item_id: str, neighbor_ids: Sequence[str],
                      scores: Sequence[float], source: int = SOURCE_ITEM_CF) -> None:
        """Replace an item's neighbour row (ids and scores, best first), unless it is an
        item-CF row for an item whose row EASE holds; an empty EASE row gives it back."""
        c = self.code(item_id)
        self._ensure_capacity()
        if self.nbr_source[c] == SOURCE_EASE:
            if source == SOURCE_ITEM_CF:
                return
        elif source == SOURCE_EASE and not len(neighbor_ids):
            return  # EASE withdraws a row it does not hold: the item-CF row stays
        codes = self.items.codes(neighbor_ids) if len(neighbor_ids) else np.zeros(0, _I32)
        self._set_row(c, codes, np.asarray(scores, dtype=_F64))
        self.nbr_source[c] = SOURCE_EASE if source == SOURCE_EASE and len(codes) else SOURCE_ITEM_CF
        self._dirty_items.add(item_id)

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
            factor = landmark_factor(self.pop_landmark, landmark, hl)
            self.pop *= factor
            for a in self.pop_seg.values():
                a *= factor
            # Every stored value is now against the new landmark, and the snapshot has one
            # landmark for all entries: each must be written again, not only this update's.
            held = self.pop > 0
            for a in self.pop_seg.values():
                held |= a > 0
            self._dirty_items.update(self.items.ids[c] for c in np.flatnonzero(held).tolist())
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
        self._trending_dirty = True
        self._dirty_items.update(ids)

    # ------------------------------------------------------------------------ derived arrays
    def refresh(self, proc_now: float, force: bool = False) -> None:
        """Rebuild the ranked trending lists when stale, at most every
        ``trending_refresh_ms`` of processing time (unless ``force``, or an item in them became
        unavailable: then at once)."""
        if self._trending_dirty and (force or self._trending_urgent
                                     or proc_now - self._trending_built_at
                                     >= self.cfg.recommend.trending_refresh_ms):
            self._build_trending()
            self._trending_built_at = proc_now
            self._trending_urgent = False

    def ready(self) -> None:
        """Make every array the scoring kernel reads cover the table's capacity."""
        self._ensure_capacity()

    def _build_trending(self) -> None:
        """The ranked lists, all in one structure of arrays (list after list): each entry's
        code, popularity at build time, hash and features (CSR), so that the recommender walks
        them reading memory in order. Only usable (catalogue, available) items with a positive
        popularity, at most ``top_n`` per list."""
        n = self.top_n
        usable = np.flatnonzero(self.usable[:self.items.high_water]).astype(_I32)
        hashes = self.items.hashes
        lists: list[np.ndarray] = [ranked_prefix(self.pop, hashes, usable, n)]
        values: list[np.ndarray] = [self.pop]
        self.seg_range = {}
        for s, a in self.pop_seg.items():
            self.seg_range[s] = len(lists)
            lists.append(ranked_prefix(a, hashes, usable, n))
            values.append(a)
        self.cat_range = {}
        self.new_range = {}
        ncat = len(self.categories)
        if ncat:
            items, cats = self._category_pairs()
            keep = self.usable[items]
            items, cats = items[keep], cats[keep]
            order = np.argsort(cats, kind="stable")
            bounds_by_cat = np.searchsorted(cats[order], np.arange(ncat + 1))
            members_sorted = items[order]
            n_new = self.cfg.recommend.new_items_per_category
            fresh = self._freshness() if n_new > 0 else None
            for k in range(ncat):
                self.cat_range[k] = len(lists)
                members = members_sorted[bounds_by_cat[k]:bounds_by_cat[k + 1]]
                popular = ranked_prefix(self.pop, hashes, members, n)
                lists.append(popular)
                values.append(self.pop)
                if n_new > 0:
                    self.new_range[k] = len(lists)
                    lists.append(ranked_prefix(fresh, hashes,
                                               np.setdiff1d(members, popular), n_new))
                    values.append(fresh)
        bounds = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lists], out=bounds[1:])
        self.list_bounds = bounds
        self.list_bounds_list = bounds.tolist()
        codes = np.concatenate(lists).astype(_I32)
        self.lst_codes = codes
        self.lst_vals = np.concatenate([v[x] for v, x in zip(values, lists)]).astype(_F64)
        self.lst_hash = self.items.hashes[codes]
        counts = self.feat_len[codes].astype(np.int64)
        fptr = np.zeros(len(codes) + 1, dtype=np.int64)
        np.cumsum(counts, out=fptr[1:])
        starts = np.repeat(self.feat_start[codes], counts)
        offsets = np.arange(int(fptr[-1]), dtype=np.int64) - np.repeat(fptr[:-1], counts)
        self.lst_fptr = fptr
        self.lst_fidx = (self.feat_store[starts + offsets] if len(starts)
                         else np.zeros(0, _I32))
        self._trending_dirty = False

    def _freshness(self) -> np.ndarray:
        """Per item code, how new its listing is: ``2^(-age / window)`` for usable items listed
        within ``recommend.new_item_window_ms`` of the newest listing, else 0 (event time, so
        replays and the simulator rank alike)."""
        window = self.cfg.recommend.new_item_window_ms
        listed = self.first_listed[:len(self.usable)]
        fresh = np.zeros(len(self.usable), dtype=_F64)
        if not self.usable.any() or window <= 0:
            return fresh
        newest = listed[self.usable].max()
        age = newest - listed
        ok = self.usable & (age <= window)
        fresh[ok] = np.exp2(-age[ok] / window)
        return fresh

    def _category_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cat_pairs is None:
            items: list[int] = []
            cats: list[int] = []
            for c, names in self.item_cats.items():
                for cat in dict.fromkeys(names):
                    items.append(c)
                    cats.append(self.categories.get(cat))
            self._cat_pairs = (np.asarray(items, dtype=np.int64), np.asarray(cats, dtype=np.int64))
        return self._cat_pairs

    def list_ranges(self, segment: str, categories: Sequence[str]) -> np.ndarray:
        """(start, end) in the ``lst_*`` arrays of the lists a user's candidates come from:
        overall, the segment's (empty when unknown), each category's popular items, then each
        category's new items (empty when unknown)."""
        b = self.list_bounds_list
        n_cat = len(categories)
        out = np.zeros((2 + 2 * n_cat, 2), dtype=np.int64)
        out[0, 1] = b[1]
        s = self.segments.get(segment) if segment else None
        r = self.seg_range.get(s) if s is not None else None
        if r is not None:
            out[1] = b[r], b[r + 1]
        for n, cat in enumerate(categories):
            code = self.categories.get(cat)
            r = self.cat_range.get(code)
            if r is not None:
                out[n + 2] = b[r], b[r + 1]
            r = self.new_range.get(code)
            if r is not None:
                out[n + 2 + n_cat] = b[r], b[r + 1]
        return out

    # ------------------------------------------------------------------------ sizes
    def sizes(self) -> dict[str, float]:
        return {"model_catalog_items": float(self.in_catalog.sum()),
                "model_items_with_neighbors": float((self.nbr_len > 0).sum()),
                "model_neighbor_pairs": float(self.neighbor_pairs),
                "model_trending_items": float((self.pop[:self.items.high_water] > 0).sum())}

    # ------------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, bytes | None]:
        """The replicated-state entries that changed since the last snapshot (None: delete)."""
        out: dict[str, bytes | None] = {}
        for item in self._dirty_catalog:
            c = self.items.get(item)
            out[CATALOG_PREFIX + item] = (encode_catalog_entry(self._catalog_record(c))
                                          if c != NO_CODE and self.in_catalog[c] else None)
        seg_names = {code: name for name, code in self.segments.items()}
        for item in self._dirty_items:
            c = self.items.get(item)
            if c == NO_CODE:
                out[ITEM_PREFIX + item] = None
                continue
            n = int(self.nbr_len[c])
            segs = {seg_names[s]: float(a[c]) for s, a in self.pop_seg.items() if a[c] > 0}
            out[ITEM_PREFIX + item] = encode_item_entry(
                [self.items.ids[j] for j in self.nbr_codes[c, :n].tolist()],
                self.nbr_scores[c, :n].tolist(), float(self.pop[c]), segs,
                int(self.nbr_source[c]))
        if self._dirty_items:
            out[META_KEY] = encode_meta(self.pop_landmark, self.pop_newest_ts)
        self._dirty_catalog = set()
        self._dirty_items = set()
        return out

    def _catalog_record(self, c: int) -> dict[str, Any]:
        price = float(self.price[c])
        return {"item_id": self.items.id_of(c), "ts": int(self.updated_at[c]),
                "title": self.titles[c], "categories": list(self.item_cats[c]),
                "tags": list(self.item_tags[c]), "price": None if math.isnan(price) else price,
                "available": bool(self.available[c])}

    def catalog_records(self) -> Iterable[dict[str, Any]]:
        """Every catalogue entry as an ``item-catalog`` record (tests, tools)."""
        for c in np.flatnonzero(self.in_catalog).tolist():
            yield self._catalog_record(c)

    def restore(self, entries: dict[str, bytes]) -> None:
        """Load what :meth:`snapshot` wrote."""
        meta = entries.get(META_KEY)
        if meta is not None:
            self.pop_landmark, self.pop_newest_ts = decode_meta(meta)
        for key, value in entries.items():
            if key.startswith(CATALOG_PREFIX):
                self.upsert_item(decode_catalog_entry(value))
        for key, value in entries.items():
            if key.startswith(ITEM_PREFIX):
                item = key[len(ITEM_PREFIX):]
                ids, scores, pop, segs, source = decode_item_entry(value)
                c = self.code(item)
                if ids:
                    self.set_neighbors(item, ids, scores, source)
                self.pop[c] = pop
                for name, v in segs.items():
                    s = self.segment_code(name)
                    arr = self.pop_seg.get(s)
                    if arr is None:
                        arr = self.pop_seg[s] = np.zeros(self.items.capacity, dtype=_F64)
                    arr[c] = v
        self._trending_dirty = True
        self._dirty_catalog = set()
        self._dirty_items = set()
