"""The recommender's columnar item model (udfs/model.py), the item interning table
(udfs/items.py) and the time-decay helpers (udfs/decay.py).

Popularity ("trending") lives in ``ItemModel``: forward-decayed values set by the item
operator's model updates (``apply_popularity``) and ranked lists rebuilt by ``refresh``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from state_schemas.config import load_config
from state_schemas.ids import id_hash, id_hashes
from state_schemas.model_state import (CATALOG_PREFIX, ITEM_PREFIX, META_KEY,
                                       decode_catalog_entry, decode_item_entry, decode_meta)
from udfs.decay import (MAX_EXPONENT, REBASE_AFTER, ForwardDecay, decay_factors,
                        forward_exponent)
from udfs.items import NO_CODE, FeatureTable, ItemTable
from udfs.model import ItemModel, item_features, ranked_prefix

T = 1_767_225_600_000
H = 3_600_000
EMPTY_I = np.zeros(0, dtype=np.int64)
EMPTY_F = np.zeros(0, dtype=np.float64)


def make_model(*overrides: str) -> ItemModel:
    return ItemModel(load_config(overrides=["recommend.trending_half_life_ms=3600000",
                                            *overrides], environ={}))


def rec(item_id, categories=(), tags=(), *, ts=1, title=None, available=True, price=None):
    return {"item_id": item_id, "ts": ts, "title": title or item_id.upper(),
            "categories": list(categories), "tags": list(tags), "price": price,
            "available": available}


def popularity(model, values: dict[str, float], segs: dict[tuple[str, str], float] = {},
               landmark=T, newest=None):
    """One model update: global popularity of ``values`` and (segment, item) values."""
    ids = list(values)
    seg_names = [s for s, _ in segs]
    seg_item = np.array([ids.index(i) for _, i in segs], dtype=np.int64)
    model.apply_popularity(landmark, newest if newest is not None else landmark, ids,
                           np.array([values[i] for i in ids], dtype=np.float64), seg_names,
                           seg_item, np.array(list(segs.values()), dtype=np.float64))


def pop_of(model, item):
    return float(model.pop[model.items.get(item)])


def lists(model, segment="", categories=(), new=False):
    """The ranked lists a user reads: [overall, segment, *categories] as item ids (with
    ``new``: each category's new-item list instead)."""
    out = []
    rows = model.list_ranges(segment, list(categories)).tolist()
    n = len(categories)
    for a, b in rows[:2] + (rows[2 + n:] if new else rows[2:2 + n]):
        out.append([model.items.id_of(c) for c in model.lst_codes[a:b].tolist()])
    return out


# ------------------------------------------------------------------------------ popularity
def test_apply_popularity_sets_values_and_rescales_on_a_new_landmark():
    m = make_model()
    popularity(m, {"a": 4.0, "b": 8.0}, {("young", "a"): 2.0}, landmark=T)
    assert (pop_of(m, "a"), pop_of(m, "b")) == (4.0, 8.0)
    assert m.pop_landmark == T and m.pop_newest_ts == T
    # Two half-lives later the item operator re-based: earlier stored values shrink by 4.
    popularity(m, {"c": 1.0}, landmark=T + 2 * H, newest=T + 2 * H + 5)
    assert m.pop_landmark == T + 2 * H and m.pop_newest_ts == T + 2 * H + 5
    assert (pop_of(m, "a"), pop_of(m, "b"), pop_of(m, "c")) == (1.0, 2.0, 1.0)
    young = m.pop_seg[m.segments["young"]]
    assert young[m.items.get("a")] == 0.5
    # Values of a changed item replace what was stored (they are totals, not increments).
    popularity(m, {"a": 3.0}, {("young", "a"): 1.5}, landmark=T + 2 * H, newest=T)
    assert pop_of(m, "a") == 3.0 and young[m.items.get("a")] == 1.5
    assert m.pop_newest_ts == T + 2 * H + 5  # newest never goes back


def test_ranked_lists_only_usable_items_by_popularity():
    m = make_model()
    m.upsert_item(rec("i1", ["shoes"]))
    m.upsert_item(rec("i2", ["shoes", "hats"], ["red"]))
    m.upsert_item(rec("i3", ["hats"], available=False))  # unavailable: never listed
    m.upsert_item(rec("i5", ["books"]))                  # no popularity: never listed
    m.upsert_item(rec("i6", ["hats"], ["wool", "red"]))
    popularity(m, {"i1": 10.0, "i2": 8.0, "i3": 50.0, "i4": 20.0, "i6": 3.0},  # i4: no catalogue
               {("young", "i2"): 5.0, ("young", "i6"): 7.0, ("young", "i4"): 9.0,
                ("old", "i1"): 1.0})
    m.refresh(0, force=True)
    overall, young, hats, shoes, books, nope = lists(m, "young",
                                                     ["hats", "shoes", "books", "nope"])
    assert overall == ["i1", "i2", "i6"]
    assert young == ["i6", "i2"]
    assert hats == ["i2", "i6"] and shoes == ["i1", "i2"] and books == [] and nope == []
    assert lists(m, "old")[1] == ["i1"]
    assert lists(m, "")[1] == [] and lists(m, "unknown-segment")[1] == []
    # Every entry carries its popularity, hash and features, in list order.
    a, b = m.list_ranges("young", [])[1].tolist()
    assert m.lst_vals[a:b].tolist() == [7.0, 5.0]
    assert m.lst_hash[a:b].tolist() == [id_hash("i6"), id_hash("i2")]
    for n in range(len(m.lst_codes)):
        code = int(m.lst_codes[n])
        f = m.lst_fidx[m.lst_fptr[n]:m.lst_fptr[n + 1]]
        assert f.tolist() == m.item_features_of(code).tolist()
    assert [m.features.names[f] for f in m.item_features_of(m.items.get("i6"))] == [
        "category:hats", "tag:wool", "tag:red"]


def test_ranked_lists_hold_at_most_top_n():
    m = make_model("recommend.trending_top_n=3", "recommend.candidates_per_source=2")
    ids = [f"i{k}" for k in range(10)]
    for i in ids:
        m.upsert_item(rec(i, ["c"]))
    popularity(m, {i: float(k + 1) for k, i in enumerate(ids)}, {("s", i): 1.0 + k for k, i in
                                                               enumerate(ids)})
    m.refresh(0, force=True)
    overall, seg, cat = lists(m, "s", ["c"])
    assert overall == seg == cat == ["i9", "i8", "i7"]  # top_n = max(3, 2)
    big = make_model("recommend.trending_top_n=3", "recommend.candidates_per_source=5")
    for i in ids:
        big.upsert_item(rec(i, ["c"]))
    popularity(big, {i: float(k + 1) for k, i in enumerate(ids)})
    big.refresh(0, force=True)
    assert lists(big)[0] == ["i9", "i8", "i7", "i6", "i5"]


def test_ranked_prefix_partial_selection_keeps_ties_at_the_cut():
    values = np.array([0.0, 5.0, 3.0, 3.0, 9.0, 3.0, 1.0, 3.0, 2.0, 7.0, -1.0])
    cands = np.arange(len(values), dtype=np.int32)
    hashes = np.array([50, 40, 3, 30, 20, 1, 60, 2, 70, 80, 90], dtype=np.uint64)
    # the four items tied at 3.0 (2, 3, 5, 7) come in hash order: 5 (1), 7 (2), 2 (3), 3 (30)
    assert ranked_prefix(values, hashes, cands, 3).tolist() == [4, 9, 1]
    assert ranked_prefix(values, hashes, cands, 2).tolist() == [4, 9]  # argpartition (> 4n)
    assert ranked_prefix(values, hashes, cands, 5).tolist() == [4, 9, 1, 5, 7]
    assert ranked_prefix(values, hashes, cands, 100).tolist() == [4, 9, 1, 5, 7, 2, 3, 8, 6]
    assert ranked_prefix(values, hashes, cands[:0], 3).tolist() == []


def test_refresh_rebuilds_at_most_every_trending_refresh_ms():
    m = make_model("recommend.trending_refresh_ms=200")
    m.upsert_item(rec("a"))
    m.upsert_item(rec("b"))
    popularity(m, {"a": 2.0, "b": 1.0})
    m.refresh(1_000)
    assert lists(m)[0] == ["a", "b"]
    popularity(m, {"b": 5.0})
    m.refresh(1_100)  # too soon: the lists stay as they were
    assert lists(m)[0] == ["a", "b"]
    m.refresh(1_200)
    assert lists(m)[0] == ["b", "a"]
    popularity(m, {"a": 9.0})
    m.refresh(1_250, force=True)
    assert lists(m)[0] == ["a", "b"]


def test_popularity_ties_are_cut_by_item_hash_not_arrival_order():
    ids = ["x", "y", "z", "w"]
    expected = sorted(ids, key=id_hash)[:2]
    for order in (ids, ids[::-1]):
        m = make_model("recommend.trending_top_n=2", "recommend.candidates_per_source=2")
        for i in order:
            m.upsert_item(rec(i))
        popularity(m, {i: 5.0 for i in order})
        m.refresh(0, force=True)
        assert sorted(lists(m)[0], key=id_hash) == expected


# ------------------------------------------------------------------------------ catalogue
def test_catalogue_upsert_newer_wins_and_availability():
    m = make_model()
    assert m.upsert_item(rec("a", ["shoes"], ["red"], ts=10, title="Old", price=12.5))
    assert m.info("a") == (("shoes",), ("red",), 12.5)
    assert not m.upsert_item(rec("a", ["hats"], ts=9, title="Older"))  # older: ignored
    assert m.title(m.items.get("a")) == "Old"
    assert m.upsert_item(rec("a", ["hats"], ts=10, title="Same ts"))  # as new: replaces
    assert m.title(m.items.get("a")) == "Same ts" and m.info("a") == (("hats",), (), None)
    assert m.upsert_item(rec("a", ["hats", "sale"], ts=11, title="New", available=False))
    c = m.items.get("a")
    assert m.in_catalog[c] and not m.available[c] and not m.usable[c]
    assert m.categories.names[m.primary_cat[c]] == "hats"
    assert m.upsert_item(rec("a", ["hats"], ts=12, available=True))
    assert m.usable[c]
    assert m.info("never") is None
    m.set_neighbors("ghost", [], [])  # known to the table, not to the catalogue
    assert m.info("ghost") is None and m.title(m.items.get("ghost")) == "ghost"
    assert m.feature_names(m.items.get("ghost")) == ()
    assert [r["item_id"] for r in m.catalog_records()] == ["a"]
    assert next(iter(m.catalog_records())) == rec("a", ["hats"], ts=12)


def test_item_features_dedup_in_first_seen_order():
    assert item_features(["a", "b", "a"], ["x", "a", "x"]) == (
        "category:a", "category:b", "tag:x", "tag:a")
    assert item_features([], []) == ()


def test_features_follow_updates_and_survive_compaction():
    m = make_model()
    m.upsert_item(rec("keep", ["books"], ["paper"]))
    for n in range(700):  # 3 features per version: the store (1024) fills with old versions
        m.upsert_item(rec("busy", [f"c{n % 5}"], [f"t{n}", "common"], ts=n))
    assert m.feat_used < 700 * 3  # compacted at least once
    names = [m.features.names[f] for f in m.item_features_of(m.items.get("busy"))]
    assert names == ["category:c4", "tag:t699", "tag:common"]
    names = [m.features.names[f] for f in m.item_features_of(m.items.get("keep"))]
    assert names == ["category:books", "tag:paper"]
    assert m.feature_names(m.items.get("keep")) == ("category:books", "tag:paper")
    rank = m.feature_rank()
    assert len(rank) == len(m.features) + 1 and rank[-1] == len(m.features)
    by_rank = sorted(range(len(m.features)), key=lambda f: rank[f])
    assert [m.features.names[f] for f in by_rank] == sorted(m.features.names)


def test_neighbours_set_and_replace():
    m = make_model("similarity.top_k=3")
    m.set_neighbors("a", ["b", "c", "d", "e"], [0.9, 0.5, 0.4, 0.1])  # cut to top_k
    assert m.neighbors_of("a") == [("b", 0.9), ("c", 0.5), ("d", 0.4)]
    assert m.neighbor_pairs == 3
    m.set_neighbors("a", ["e"], [0.7])
    assert m.neighbors_of("a") == [("e", 0.7)] and m.neighbor_pairs == 1
    assert m.neighbors_of("unknown") == []
    assert m.sizes()["model_neighbor_pairs"] == 1.0


# ------------------------------------------------------------------------------ eviction
def test_eviction_clears_evicted_items_and_rows_naming_them():
    m = make_model("recommend.model_max_items=16", "similarity.top_k=4")
    m.items.tick()
    for i in "abcd":
        m.upsert_item(rec(i, ["cat"]))
    m.set_neighbors("c", ["a", "d", "b"], [0.9, 0.8, 0.7])
    m.set_neighbors("d", ["a"], [0.5])
    popularity(m, {"a": 5.0, "c": 1.0})
    m.snapshot()
    m.items.tick()
    m.set_neighbors("c", ["d", "a", "b"], [0.9, 0.8, 0.7])  # touch c and d (and a, b)
    m.items.tick()
    m.code("d")
    m.code("c")
    m.items.tick()
    for k in range(13):  # 16 items fill the table: the 17th evicts the 2 touched longest ago
        m.upsert_item(rec(f"n{k}", ["cat"]))
    assert "a" not in m.items and "b" not in m.items and "c" in m.items and "d" in m.items
    assert m.neighbors_of("c") == [("d", 0.9)]
    assert m.neighbors_of("d") == []
    assert m.neighbor_pairs == int(m.nbr_len.sum()) == 1
    assert m.info("a") is None
    snap = m.snapshot()
    assert snap[CATALOG_PREFIX + "a"] is None and snap[ITEM_PREFIX + "a"] is None
    assert decode_item_entry(snap[ITEM_PREFIX + "c"])[:2] == (["d"], [0.9])
    m.refresh(0, force=True)
    assert lists(m)[0] == ["c"]
    # An evicted item comes back with its next update (and a reused code).
    m.upsert_item(rec("a", ["cat"], title="Back"))
    assert m.title(m.items.get("a")) == "Back" and pop_of(m, "a") == 0.0


# ------------------------------------------------------------------------------ state
def _full_model() -> ItemModel:
    m = make_model()
    m.upsert_item(rec("a", ["shoes", "sale"], ["red"], ts=5, price=10.0))
    m.upsert_item(rec("b", ["hats"], ts=6, available=False))
    m.upsert_item(rec("c", [], ["wool"], ts=7))
    m.set_neighbors("a", ["b", "c", "ghost"], [0.5, 0.25, 0.125])
    m.set_neighbors("c", ["a"], [1.0])
    popularity(m, {"a": 3.0, "c": 1.5, "ghost": 0.5}, {("young", "a"): 2.0, ("old", "c"): 1.0},
               landmark=T, newest=T + 7)
    return m


def test_model_snapshot_restore_round_trip():
    m = _full_model()
    snap = m.snapshot()
    assert set(snap) == {META_KEY, *(CATALOG_PREFIX + i for i in "abc"),
                         *(ITEM_PREFIX + i for i in ("a", "c", "ghost"))}  # b: a neighbour
    assert decode_meta(snap[META_KEY]) == (T, T + 7)
    assert decode_catalog_entry(snap[CATALOG_PREFIX + "a"]) == rec(
        "a", ["shoes", "sale"], ["red"], ts=5, price=10.0)
    fresh = make_model()
    fresh.restore(snap)
    key = lambda r: r["item_id"]  # noqa: E731
    assert sorted(fresh.catalog_records(), key=key) == sorted(m.catalog_records(), key=key)
    for i in ("a", "b", "c", "ghost"):
        assert fresh.neighbors_of(i) == m.neighbors_of(i)
        assert pop_of(fresh, i) == pop_of(m, i)
    assert fresh.pop_seg[fresh.segments["young"]][fresh.items.get("a")] == 2.0
    assert fresh.pop_seg[fresh.segments["old"]][fresh.items.get("c")] == 1.0
    assert (fresh.pop_landmark, fresh.pop_newest_ts) == (T, T + 7)
    m.refresh(0, force=True)
    fresh.refresh(0, force=True)
    for seg in ("young", "old"):
        assert lists(fresh, seg, ["shoes", "hats", "sale"]) == lists(m, seg, ["shoes", "hats",
                                                                              "sale"])
    assert lists(fresh, "young")[:2] == [["a", "c"], ["a"]]
    assert fresh.snapshot() == {}  # restored: clean


def test_second_snapshot_holds_only_changed_entries():
    m = _full_model()
    m.snapshot()
    assert m.snapshot() == {}
    m.upsert_item(rec("b", ["hats"], ts=8))
    assert set(m.snapshot()) == {CATALOG_PREFIX + "b"}
    m.set_neighbors("c", ["b"], [0.5])
    snap = m.snapshot()
    assert set(snap) == {ITEM_PREFIX + "c", META_KEY}
    assert decode_item_entry(snap[ITEM_PREFIX + "c"]) == (["b"], [0.5], 1.5, {"old": 1.0}, 0)
    popularity(m, {"ghost": 2.0}, landmark=T, newest=T + 9)
    snap = m.snapshot()
    assert set(snap) == {ITEM_PREFIX + "ghost", META_KEY}
    assert decode_meta(snap[META_KEY]) == (T, T + 9)


def test_a_new_popularity_landmark_rewrites_every_stored_value():
    """The snapshot holds one landmark for all popularity entries: when an update comes with
    another landmark (the item operator re-based, or restarted without its counters and picked
    its own), every stored value is restated against it and must be written again. Writing
    only the update's items left the others against the old landmark, misread after a
    restore by the factor between the two."""
    m = make_model()
    shared = {}
    popularity(m, {"a": 4.0, "b": 8.0}, {("young", "a"): 2.0}, landmark=T)
    shared.update(m.snapshot())
    popularity(m, {"c": 1.0}, landmark=T + 2 * H)
    snap = m.snapshot()
    assert {ITEM_PREFIX + i for i in "abc"} <= set(snap)
    shared.update(snap)
    fresh = make_model()
    fresh.restore(shared)
    assert fresh.pop_landmark == T + 2 * H
    for i in "abc":
        assert pop_of(fresh, i) == pop_of(m, i)
    assert fresh.pop_seg[fresh.segments["young"]][fresh.items.get("a")] == 0.5
    popularity(m, {"c": 2.0}, landmark=T + 2 * H)  # the same landmark: only c is written
    assert set(m.snapshot()) == {ITEM_PREFIX + "c", META_KEY}


# ------------------------------------------------------------------------------ ItemTable
def test_item_table_interning():
    t = ItemTable(1000, initial_capacity=16)
    codes = [t.code(f"i{k}") for k in range(40)]
    assert codes == list(range(40))
    assert t.capacity >= 40 and len(t) == 40 and t.high_water == 40
    assert t.codes(["i3", "new", "i0", "new"]).tolist() == [3, 40, 0, 40]
    assert t.lookup(["i5", "missing", "new"]).tolist() == [5, NO_CODE, 40]
    assert t.get("missing") == NO_CODE and "missing" not in t and "i7" in t
    assert t.id_of(7) == "i7"
    assert t.hashes[:41].tolist() == id_hashes([f"i{k}" for k in range(40)] + ["new"]).tolist()
    assert t.live_codes().tolist() == list(range(41))
    with pytest.raises(ValueError):
        ItemTable(15)


def test_codes_of_hashes():
    t = ItemTable(1000)
    t.codes(["a", "b", "c"])
    h = np.array([id_hash("c"), id_hash("zz"), id_hash("a"), 0], dtype=np.uint64)
    assert t.codes_of_hashes(h).tolist() == [2, NO_CODE, 0, NO_CODE]
    t.code("zz")  # the lookup cache follows new items
    assert t.codes_of_hashes(h).tolist() == [2, 3, 0, NO_CODE]
    assert ItemTable(16).codes_of_hashes(h).tolist() == [NO_CODE] * 4


def test_codes_of_hashes_agrees_with_the_table_through_growth_and_eviction():
    """The index is rebuilt lazily (items added since live in a side dict): every lookup must
    still name exactly the current items."""
    rng = np.random.default_rng(5)
    t = ItemTable(256)
    for step in range(40):
        t.tick()
        t.codes([f"i{step}-{k}" for k in range(int(rng.integers(1, 60)))])
        probe = [f"i{int(rng.integers(0, step + 1))}-{int(rng.integers(0, 60))}"
                 for _ in range(50)]
        got = t.codes_of_hashes(id_hashes(probe)).tolist()
        assert got == [t.get(p) for p in probe], step


def test_eviction_takes_the_least_recently_touched_and_calls_back_first():
    seen = []
    t = ItemTable(16, on_evict=lambda victims: seen.append(
        (victims.tolist(), [t.ids[c] for c in victims.tolist()])))
    t.codes([f"i{k}" for k in range(16)])  # clock 0
    t.tick()
    t.code("i0")
    t.touch(np.array([1, 5], dtype=np.int32))
    t.tick()
    assert t.code("new") == 2  # evicts 16 // 8 = 2: untouched since clock 0, lowest codes
    assert seen == [([2, 3], ["i2", "i3"])]  # the callback still sees the ids
    assert "i2" not in t and "i3" not in t and t.ids[3] is None and t.hashes[3] == 0
    assert t.codes_of_hashes(np.array([id_hash("i2")], dtype=np.uint64)).tolist() == [NO_CODE]
    assert t.code("new2") == 3  # a freed code, no further eviction
    assert len(seen) == 1 and len(t) == 16
    t.tick()
    t.code("new3")
    assert seen[1][1] == ["i4", "i6"]  # i5 was touched at clock 1
    assert t.live_codes().tolist() == [c for c in range(16) if c != 6]


def test_codes_never_returns_a_code_evicted_during_the_same_call():
    t = ItemTable(16)
    t.codes([f"i{k}" for k in range(16)])
    t.tick()
    out = t.codes(["i0", "new"])
    assert out[0] != out[1]
    assert t.get("i0") == out[0] and t.get("new") == out[1]


def test_feature_table():
    f = FeatureTable()
    assert [f.code("tag:a"), f.code("category:b"), f.code("tag:a")] == [0, 1, 0]
    assert f.get("category:b") == 1 and f.get("nope") == NO_CODE
    assert f.names == ["tag:a", "category:b"] and len(f) == 2


# ------------------------------------------------------------------------------ decay
def test_forward_decay_prepare_rebases_past_the_headroom():
    d = ForwardDecay(H)
    assert d.landmark is None and d.read_factor(T) == 1.0
    assert d.prepare(T) == 1.0 and d.landmark == T
    assert d.prepare(T + int(REBASE_AFTER) * H) == 1.0 and d.landmark == T  # still within
    factor = d.prepare(T + 65 * H)
    assert factor == 2.0 ** -65 and d.landmark == T + 65 * H
    assert d.prepare(T) == 1.0 and d.landmark == T + 65 * H  # never moves back


def test_forward_decay_weights_and_read_factor():
    d = ForwardDecay(H, landmark=T)
    assert d.weight(T) == 1.0 and d.weight(T + H) == 2.0 and d.weight(T - 2 * H) == 0.25
    assert d.weights(np.array([T, T + H, T - H // 2])).tolist() == [1.0, 2.0, 2 ** -0.5]
    with pytest.raises(ValueError):
        d.weight(T + int((MAX_EXPONENT + 1) * H))
    with pytest.raises(ValueError):
        d.weights(np.array([T, T + int((MAX_EXPONENT + 1) * H)]))
    assert d.weight(T - int((MAX_EXPONENT + 1) * H)) == 0.0
    # stored value * read_factor(now) = decayed value at now
    assert d.weight(T + H) * d.read_factor(T + 3 * H) == 0.25
    assert d.read_factor(T - H) == 2.0
    for bad in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError):
            ForwardDecay(bad)


def test_decay_factors_and_forward_exponent():
    f = decay_factors(np.array([0, H, 2 * H, -5 * H, H // 2]), H)
    assert f.tolist() == [1.0, 0.5, 0.25, 1.0, 2 ** -0.5]  # never boosts
    assert decay_factors(np.array([H, 10 * H]), 0).tolist() == [1.0, 1.0]
    assert decay_factors(np.array([H]), -1).tolist() == [1.0]
    assert forward_exponent(T + 3 * H, T, H) == 3.0 and forward_exponent(T + H, T, 0) == 0.0
