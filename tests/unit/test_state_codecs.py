"""Every state and record codec in state_schemas/: round trips, version checks, migrations.

profile_state (user profile v3, impression log v2), legacy (pickled v1/v2 profile dicts, the
old catalogue tuples), item_state (similarity rows, item counters), model_state (the user
operator's replicated model) and records (payloads between operators).
"""

from __future__ import annotations

import pickle

import numpy as np
import orjson
import pytest

from state_schemas import item_state, model_state, records, validator
from state_schemas.config import DAY_MS, EVENT_TYPES, EngineConfig
from state_schemas.ids import id_hash
from state_schemas.legacy import legacy_catalog_record
from state_schemas.profile_state import (
    IMPRESSION_STATE_VERSION, N_TYPES, PROFILE_STATE_VERSION, TYPE_CODE, ImpressionLog,
    StateVersionError, UserProfile, decode_impressions, decode_profile, encode_impressions,
    encode_profile, migrate_profile_dict)
from udfs.ab import record_impressions
from udfs.profile import ProfileStep

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a day boundary
DAY0 = T0 // DAY_MS

# What the v3 layout stores (caches such as consumed_sorted are rebuilt, not stored).
STORED = ("user_id", "attributes", "attributes_ts", "counts_all_time", "counts_by_day",
          "interests", "interests_landmark", "recent_ids", "recent_types", "recent_ts",
          "recent_weights", "not_interested", "consumed", "first_seen", "last_seen",
          "purchase_amount_sum", "purchase_priced_count", "dedup", "dedup_base_minute",
          "last_snapshot_at", "snapshot_pending", "last_active_at", "variant", "variant_salt")


def stored(p: UserProfile) -> dict:
    return {name: getattr(p, name) for name in STORED}


def round_trip(p: UserProfile) -> UserProfile:
    blob = encode_profile(p)
    assert isinstance(blob, bytes) and blob[:2] == b"UP" and blob[2] == PROFILE_STATE_VERSION
    return decode_profile(blob)


# =========================================================================== user profile v3

def test_empty_profile_round_trips():
    p = UserProfile("u-empty")
    q = round_trip(p)
    assert stored(q) == stored(p)
    assert q.first_seen is None and q.last_seen is None and q.variant is None
    assert q.counts_all_time == [0] * N_TYPES and q.consumed == {} and q.dedup == {}


def big_profile() -> UserProfile:
    """Every field filled, with values float32 can hold exactly (interests and recent weights
    are stored as float32)."""
    n_recent, n_consumed, n_dedup = 500, 3_000, 2_000
    base_minute = (T0 + 10 * DAY_MS) // 60_000
    return UserProfile(
        user_id="üser-1 \"quoted\"",
        attributes={"age": 31, "gender": "F", "tags": ["a", "b"], "nested": {"x": 1.5}},
        attributes_ts=T0 + 123,
        counts_all_time=[n * 1_000 + 7 for n in range(N_TYPES)],
        counts_by_day={DAY0 + d: [d + t for t in range(N_TYPES)] for d in range(30)},
        interests={f"category:c{n}": (n - 32) * 0.25 for n in range(64)},
        interests_landmark=T0 - 5 * DAY_MS,
        recent_ids=[f"item-{n}" for n in range(n_recent)],
        recent_types=[n % N_TYPES for n in range(n_recent)],
        recent_ts=[T0 + 10 * DAY_MS - n * 60_000 for n in range(n_recent)],
        recent_weights=[float(n % 11) - 0.5 for n in range(n_recent)],
        not_interested=[f"nope-{n}" for n in range(200)],
        consumed=dict.fromkeys(id_hash(f"c{n}") for n in range(n_consumed)),
        first_seen=T0 - 400 * DAY_MS,
        last_seen=T0 + 10 * DAY_MS,
        purchase_amount_sum=12345.678,
        purchase_priced_count=321,
        dedup={id_hash(f"e{n}") >> 16: base_minute - n % 1440 for n in range(n_dedup)},
        dedup_base_minute=base_minute,
        last_snapshot_at=T0 + 99,
        snapshot_pending=True,
        last_active_at=T0 // 1000 * 1000 + 5_000,  # kept to the second
        variant="content_heavy",
        variant_salt="exp-2026-1",
    )


def test_big_profile_round_trips_exactly():
    p = big_profile()
    blob = encode_profile(p)
    assert blob[3] & 2 == 0  # recent items within 2^31 ms of last_seen: narrow offsets
    q = decode_profile(blob)
    assert stored(q) == stored(p)
    # Orders that carry meaning survive: consumed least recently first, recent newest first.
    assert list(q.consumed) == list(p.consumed)
    assert q.recent_ids[:3] == ["item-0", "item-1", "item-2"]
    assert all(type(h) is int for h in q.consumed) and all(type(t) is int for t in q.recent_ts)


def test_float32_columns_round_to_float32():
    p = UserProfile("u1", interests={"tag:x": 0.1}, recent_ids=["a"], recent_types=[0],
                    recent_ts=[T0], recent_weights=[0.1], last_seen=T0)
    q = round_trip(p)
    assert q.interests["tag:x"] == float(np.float32(0.1)) == pytest.approx(0.1, rel=1e-7)
    assert q.recent_weights == [float(np.float32(0.1))]
    assert q.purchase_amount_sum == p.purchase_amount_sum  # float64 stays exact


def recent_at(ts_list: list[int], last_seen: int) -> UserProfile:
    n = len(ts_list)
    return UserProfile("u1", recent_ids=[f"i{k}" for k in range(n)], recent_types=[1] * n,
                       recent_ts=ts_list, recent_weights=[2.0] * n, first_seen=min(ts_list),
                       last_seen=last_seen)


@pytest.mark.parametrize("spread, wide", [
    (0, False), (2**31 - 1, False), (2**31, True), (400 * DAY_MS, True)])
def test_recent_item_times_use_wide_offsets_only_when_needed(spread, wide):
    newest = T0 + 500 * DAY_MS
    p = recent_at([newest, newest - spread // 2, newest - spread], newest)
    blob = encode_profile(p)
    assert bool(blob[3] & 2) is wide
    assert decode_profile(blob).recent_ts == p.recent_ts


def test_wide_offsets_also_cover_times_after_last_seen():
    p = recent_at([T0 + 2**31 + 5, T0], T0)  # an item newer than last_seen by > 2^31 ms
    blob = encode_profile(p)
    assert blob[3] & 2
    assert decode_profile(blob).recent_ts == p.recent_ts


def test_optional_times_keep_none_apart_from_zero():
    p = UserProfile("u1", first_seen=0, last_seen=None)
    q = round_trip(p)
    assert q.first_seen == 0 and q.last_seen is None
    p = UserProfile("u1", first_seen=None, last_seen=0)
    q = round_trip(p)
    assert q.first_seen is None and q.last_seen == 0


def test_snapshot_pending_flag_round_trips():
    assert round_trip(UserProfile("u1", snapshot_pending=True)).snapshot_pending is True
    assert round_trip(UserProfile("u1", snapshot_pending=False)).snapshot_pending is False


def test_dedup_ids_older_than_16_bits_of_minutes_stay_outside_every_window():
    base = T0 // 60_000
    p = UserProfile("u1", dedup={1: base, 2: base - 65_535, 3: base - 100_000},
                    dedup_base_minute=base)
    q = round_trip(p)
    assert q.dedup[1] == base and q.dedup[2] == base - 65_535
    # Clamped to the oldest representable minute: still older than the longest allowed window.
    assert q.dedup[3] == base - 65_535 < base - 45 * DAY_MS // 60_000


def test_a_profile_built_by_the_profile_step_round_trips():
    cfg = EngineConfig()
    step = ProfileStep(cfg)
    p = UserProfile("u1")
    step.apply_attributes(p, {"age": 40}, T0)
    for n, etype in enumerate(["view", "click", "purchase", "rate", "not_interested", "like"]):
        e = {"event_id": f"e{n}", "user_id": "u1", "item_id": f"i{n % 4}", "event_type": etype,
             "ts": T0 + n * DAY_MS, "value": 4}
        assert step.remember_event_id(p, e["event_id"], e["ts"])
        step.apply_event(p, e, (("cat",), ("tag",), 10.0))
    step.variant(p)
    step.snapshot_due(p, 5_000)
    q = round_trip(p)
    for name in STORED:
        if name == "interests":
            assert q.interests == pytest.approx(p.interests, rel=1e-6)
        elif name == "recent_weights":
            assert q.recent_weights == pytest.approx(p.recent_weights, rel=1e-6)
        else:
            assert getattr(q, name) == getattr(p, name), name
    assert step.snapshot(q)["counters"] == step.snapshot(p)["counters"]


@pytest.mark.parametrize("blob", [
    b"", b"U", b"XX\x03\x00" + bytes(100), b"IL\x02\x00" + bytes(100),
    b"{\"user_id\": \"u1\"}",
])
def test_profile_with_an_unknown_magic_is_refused(blob):
    with pytest.raises(StateVersionError):
        decode_profile(blob)


@pytest.mark.parametrize("version", [0, 1, 2, PROFILE_STATE_VERSION + 1, 255])
def test_profile_of_another_binary_version_is_refused(version):
    blob = bytearray(encode_profile(big_profile()))
    blob[2] = version
    with pytest.raises(StateVersionError, match="version"):
        decode_profile(bytes(blob))


def test_state_version_error_is_a_value_error():
    assert issubclass(StateVersionError, ValueError)


# =========================================================================== legacy v1 / v2

def v2_state(**changes) -> dict:
    """A user profile as the releases before v3 pickled it (see state_schemas/legacy.py)."""
    state = {
        "v": 2,
        "user_id": "u-old",
        "attributes": {"age": 33, "gender": "F"},
        "attributes_ts": T0 - 5,
        "counts_all_time": {"view": 7, "purchase": 2, "rate": 1},
        "counts_by_day": {T0: {"view": 2}, T0 + DAY_MS: {"view": 1, "purchase": 1}},
        "interests": {"category:shoes": 3.5, "tag:run": -1.25},
        "interests_ts": T0 + DAY_MS,
        "recent_items": [("i2", "purchase", T0 + DAY_MS, 10.0), ("i1", "view", T0, 1.0)],
        "not_interested": ["bad"],
        "consumed": {"i2": T0 + DAY_MS, "i0": T0 - DAY_MS, "i3": T0},
        "first_seen": T0 - DAY_MS,
        "last_seen": T0 + DAY_MS,
        "purchase_amount_sum": 99.5,
        "purchase_priced_count": 2,
        "seen_event_ids": {"ev-1": T0, "ev-2": T0 + DAY_MS},
        "last_snapshot_at": 1_234,
        "snapshot_pending": True,
        "variant": "control",
        "variant_salt": "exp-2026-1",
    }
    state.update(changes)
    return state


def v1_state() -> dict:
    state = v2_state(v=1, counts_by_day=[[T0, {"view": 2}], [T0 + DAY_MS, {"view": 1, "purchase": 1}]])
    del state["variant"], state["variant_salt"]
    return state


def counts_row(d: dict) -> list[int]:
    return [d.get(t, 0) for t in EVENT_TYPES]


def check_migrated(p: UserProfile, *, variant, salt) -> None:
    step = ProfileStep(EngineConfig())
    assert p.user_id == "u-old" and p.attributes == {"age": 33, "gender": "F"}
    assert p.attributes_ts == T0 - 5
    assert p.counts_all_time == counts_row({"view": 7, "purchase": 2, "rate": 1})
    assert p.counts_by_day == {DAY0: counts_row({"view": 2}),
                               DAY0 + 1: counts_row({"view": 1, "purchase": 1})}
    assert step.recent_counts(p, T0 + DAY_MS) == {"view": 3, "purchase": 1}
    # Interests were decayed to interests_ts: the same weights at that time, halved one
    # half-life later.
    h = step.p.interest_half_life_ms
    assert step.interests_at(p, T0 + DAY_MS) == pytest.approx({"category:shoes": 3.5,
                                                               "tag:run": -1.25})
    assert step.interests_at(p, T0 + DAY_MS + h) == pytest.approx({"category:shoes": 1.75,
                                                                   "tag:run": -0.625})
    assert p.recent_ids == ["i2", "i1"]
    assert p.recent_types == [TYPE_CODE["purchase"], TYPE_CODE["view"]]
    assert p.recent_ts == [T0 + DAY_MS, T0] and p.recent_weights == [10.0, 1.0]
    assert p.not_interested == ["bad"]
    assert list(p.consumed) == [id_hash("i0"), id_hash("i3"), id_hash("i2")]  # oldest first
    assert (p.first_seen, p.last_seen) == (T0 - DAY_MS, T0 + DAY_MS)
    assert (p.purchase_amount_sum, p.purchase_priced_count) == (99.5, 2)
    assert (p.last_snapshot_at, p.snapshot_pending) == (1_234, True)
    assert (p.variant, p.variant_salt) == (variant, salt)
    # The dedup window goes on recognising the events of the old release.
    assert not step.remember_event_id(p, "ev-1", T0 + DAY_MS)
    assert not step.remember_event_id(p, "ev-2", T0 + DAY_MS)
    assert step.remember_event_id(p, "ev-3", T0 + DAY_MS)


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_pickled_v2_profile_migrates(protocol):
    p = decode_profile(pickle.dumps(v2_state(), protocol=protocol))
    check_migrated(p, variant="control", salt="exp-2026-1")


def test_pickled_v1_profile_migrates():
    p = decode_profile(pickle.dumps(v1_state()))
    check_migrated(p, variant=None, salt=None)


def test_migrated_profile_is_stored_as_v3_without_loss():
    p = decode_profile(pickle.dumps(v1_state()))
    blob = encode_profile(p)
    assert blob[:3] == b"UP\x03"
    check_migrated(decode_profile(blob), variant=None, salt=None)


def test_migrated_profile_keeps_working_with_the_profile_step():
    step = ProfileStep(EngineConfig())
    p = decode_profile(pickle.dumps(v2_state()))
    out = step.apply_event(p, {"event_id": "n1", "user_id": "u-old", "item_id": "i9",
                               "event_type": "click", "ts": T0 + DAY_MS + 1, "value": None},
                           (("shoes",), (), None))
    assert {(r, c) for r, c, _ in out.pairs} == {("i9", "i2"), ("i2", "i9"), ("i9", "i1"),
                                                ("i1", "i9")}
    assert step.interests_at(p, T0 + DAY_MS + 1)["category:shoes"] == pytest.approx(
        3.5 + 2.0, rel=1e-6)


def test_migrate_profile_dict_converts_v1_day_buckets():
    out = migrate_profile_dict(v1_state())
    assert out["v"] == 2 and out["variant"] is None and out["variant_salt"] is None
    assert out["counts_by_day"] == {T0: {"view": 2}, T0 + DAY_MS: {"view": 1, "purchase": 1}}
    assert migrate_profile_dict(v2_state()) == v2_state()


@pytest.mark.parametrize("value", [
    {**v2_state(), "v": 3}, {**v2_state(), "v": 0}, {k: v for k, v in v2_state().items() if k != "v"},
    ["not", "a", "dict"], ("v", 2),
])
def test_pickled_value_of_an_unknown_version_is_refused(value):
    with pytest.raises(StateVersionError):
        decode_profile(pickle.dumps(value))


# =========================================================================== impression log v2

def rows(log: ImpressionLog) -> dict[int, tuple]:
    return {h: tuple(v) for h, v in log.entries.items()}


def test_empty_impression_log_round_trips():
    log = decode_impressions(encode_impressions(ImpressionLog()))
    assert log.entries == {} and log.variants == [] and len(log) == 0


def test_impression_log_round_trips_in_order():
    log = ImpressionLog(
        entries={id_hash("b"): [T0, T0 + 50, 1, 3], id_hash("a"): [T0 - 10, T0 + 100, 0, 0],
                 2**64 - 1: [T0 + 7, T0 + 7, 2, 1]},
        variants=["control", "content_heavy", "ünï"])
    blob = encode_impressions(log)
    assert blob[:3] == b"IL\x02" and blob[3] & 2 == 0
    back = decode_impressions(blob)
    assert rows(back) == rows(log) and back.variants == log.variants
    assert list(back.entries) == list(log.entries)
    assert all(type(v) is int for row in back.entries.values() for v in row)


def test_impression_log_with_showings_far_apart_uses_wide_offsets():
    log = ImpressionLog(entries={1: [T0, T0, 0, 0], 2: [T0 - 400 * DAY_MS, T0 - 300 * DAY_MS, 0, 2]},
                        variants=["v"])
    blob = encode_impressions(log)
    assert blob[3] & 2
    back = decode_impressions(blob)
    assert rows(back) == rows(log) and back.variants == ["v"]


@pytest.mark.parametrize("blob", [b"", b"UP\x03\x00" + bytes(40), b"XX\x02\x00" + bytes(40)])
def test_impression_log_with_an_unknown_magic_is_refused(blob):
    with pytest.raises(StateVersionError):
        decode_impressions(blob)


@pytest.mark.parametrize("version", [1, IMPRESSION_STATE_VERSION + 1])
def test_impression_log_of_another_version_is_refused(version):
    blob = bytearray(encode_impressions(ImpressionLog({5: [1, 2, 0, 0]}, ["v"])))
    blob[2] = version
    with pytest.raises(StateVersionError, match="version"):
        decode_impressions(bytes(blob))


def test_impression_log_keeps_variant_codes_beyond_255():
    log = ImpressionLog()
    for n in range(300):
        record_impressions(log, [n + 1], f"exp-{n}", T0 + n, max_items=1_000)
    back = decode_impressions(encode_impressions(log))
    assert back.variants[back.entries[300][2]] == "exp-299"


# =========================================================================== item state

def row(landmark, pending, n=5, k=3) -> item_state.RowState:
    rng = np.random.default_rng(n * 10 + k)
    return item_state.RowState(
        landmark=landmark,
        col_hashes=np.array([id_hash(f"c{i}") for i in range(n)], dtype=np.uint64),
        vals=rng.random(n) * 1e6, obs=np.arange(n, dtype=np.int32) * 7 - 3,
        nbr_hashes=np.array([id_hash(f"nb{i}") for i in range(k)], dtype=np.uint64),
        nbr_scores=np.sort(rng.random(k))[::-1].copy(), last_emit=T0 + 42, pending=pending)


def assert_rows_equal(a: item_state.RowState, b: item_state.RowState) -> None:
    assert (a.landmark, a.last_emit, a.pending) == (b.landmark, b.last_emit, b.pending)
    for name in ("col_hashes", "vals", "obs", "nbr_hashes", "nbr_scores"):
        x, y = getattr(a, name), getattr(b, name)
        assert len(x) == len(y), name
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


@pytest.mark.parametrize("landmark, pending, n, k", [
    (T0, True, 5, 3), (None, False, 5, 3), (0, False, 1, 0), (None, True, 0, 0), (T0, False, 200, 20)])
def test_similarity_row_round_trips(landmark, pending, n, k):
    r = row(landmark, pending, n, k)
    blob = item_state.encode_row(r)
    assert blob[:3] == b"SR\x02"
    back = item_state.decode_row(blob)
    assert_rows_equal(back, r)
    assert back.col_hashes.dtype == np.uint64 and back.obs.dtype == np.int32


@pytest.mark.parametrize("blob", [b"", b"UP\x02\x00" + bytes(30), pickle.dumps((1, "shard", {}))])
def test_similarity_row_with_an_unknown_magic_is_refused(blob):
    with pytest.raises(StateVersionError):
        item_state.decode_row(blob)


@pytest.mark.parametrize("version", [1, item_state.ROW_STATE_VERSION + 1])
def test_similarity_row_of_another_version_is_refused(version):
    blob = bytearray(item_state.encode_row(row(T0, False)))
    blob[2] = version
    with pytest.raises(StateVersionError, match="version"):
        item_state.decode_row(bytes(blob))


def test_item_counters_round_trip():
    blob = item_state.encode_counters(12.5, 3.25e30, {"age:25-34|gender:F": 1.5, "": 0.125})
    assert item_state.decode_counters(blob) == (12.5, 3.25e30, {"age:25-34|gender:F": 1.5,
                                                                "": 0.125})
    assert item_state.decode_counters(item_state.encode_counters(0.0, 0.0, {})) == (0.0, 0.0, {})


@pytest.mark.parametrize("meta", [(T0, T0 - 5, T0 + 9), (None, None, None), (T0, None, T0)])
def test_item_counters_meta_round_trips(meta):
    assert item_state.decode_counters_meta(item_state.encode_counters_meta(*meta)) == meta


def test_item_counters_of_another_version_are_refused():
    with pytest.raises(StateVersionError, match="version"):
        item_state.decode_counters(orjson.dumps([2, 1.0, 2.0, {}]))
    with pytest.raises(StateVersionError, match="version"):
        item_state.decode_counters_meta(orjson.dumps([0, 1, 2, 3]))


# =========================================================================== model state

def test_catalog_entry_round_trips():
    record = {"item_id": "i1", "ts": T0, "title": "Ünï \"shoe\"", "categories": ["a", "b"],
              "tags": [], "price": None, "available": True}
    assert model_state.decode_catalog_entry(model_state.encode_catalog_entry(record)) == record


def test_item_model_entry_round_trips():
    entry = (["n1", "n2"], [0.75, -0.5], 1.5e20, {"age:18-24": 3.0}, 1)
    assert model_state.decode_item_entry(model_state.encode_item_entry(*entry)) == entry
    empty = ([], [], 0.0, {}, 0)
    assert model_state.decode_item_entry(model_state.encode_item_entry(*empty)) == empty


def test_item_model_entry_of_version_1_reads_as_an_item_cf_row():
    """What the previous release checkpointed (no row source) still restores."""
    v1 = orjson.dumps([1, ["n1"], [0.5], 2.0, {"s": 1.0}])
    assert model_state.decode_item_entry(v1) == (["n1"], [0.5], 2.0, {"s": 1.0}, 0)


def test_model_update_of_version_1_reads_as_item_cf_rows():
    """Records of the previous release left in the item-model-updates topic after an upgrade."""
    v1 = orjson.dumps([1, [["i1", ["n1"], [0.5]]], None])
    assert records.decode_model_update(v1) == ([("i1", ["n1"], [0.5], 0)], None)


def test_gram_payload_round_trips():
    changes = [(["a", "b"], ["c"], []), ([], [], ["a", "b", "c"])]
    assert records.decode_gram(records.encode_gram(changes)) == [
        (list(k), list(a), list(r)) for k, a, r in changes]


@pytest.mark.parametrize("meta", [(T0, T0 + 5), (None, None)])
def test_model_meta_round_trips(meta):
    assert model_state.decode_meta(model_state.encode_meta(*meta)) == meta


def test_model_state_of_another_version_is_refused():
    with pytest.raises(StateVersionError, match="version"):
        model_state.decode_catalog_entry(orjson.dumps([2, {"item_id": "x"}]))
    with pytest.raises(StateVersionError, match="version"):
        model_state.decode_item_entry(orjson.dumps([0, [], [], 0.0, {}]))
    with pytest.raises(StateVersionError, match="version"):
        model_state.decode_meta(orjson.dumps([2, None, None]))


def test_model_state_keys_are_distinct_prefixes():
    keys = (model_state.CATALOG_PREFIX, model_state.ITEM_PREFIX, model_state.META_KEY)
    assert len(set(keys)) == 3
    assert not model_state.META_KEY.startswith((model_state.CATALOG_PREFIX, model_state.ITEM_PREFIX))


# =========================================================================== records

def test_activity_payload_round_trips():
    args = (["i1", "i2"], [1.0, 10.0], [1.0, 9.0], [T0, T0 + 1], ["", "age:25-34"])
    assert records.decode_activity(records.encode_activity(3, 17, *args)) == (
        3, 17, *(list(a) for a in args))
    # Any sequences are accepted (tuples, generators' lists, numpy-free).
    assert records.decode_activity(records.encode_activity(0, 1, (), (), (), (), ())) == (
        0, 1, *([],) * 5)


def test_pairs_payload_round_trips():
    args = (("c1", "c2", "c3"), (2.0, 0.5, 8.0), (T0, T0, T0 + 2))
    assert records.decode_pairs(records.encode_pairs(1, 9, *args)) == (
        1, 9, *(list(a) for a in args))


def test_activity_and_pairs_of_version_1_are_refused():
    """v2 added the activity stamp; a v1 sender beside a v2 receiver must fail loudly."""
    with pytest.raises(StateVersionError, match="version 1"):
        records.decode_activity(orjson.dumps([1, ["i1"], [1.0], [1.0], [T0], [""]]))
    with pytest.raises(StateVersionError, match="version 1"):
        records.decode_pairs(orjson.dumps([1, ["c1"], [1.0], [T0]]))


def test_model_update_payload_round_trips():
    rows = [["i1", ["n1", "n2"], [0.5, 0.25]], ["i2", [], []]]
    popularity = {"landmark": T0, "newest_ts": T0 + 1, "ids": ["i1"], "pop": [1.5],
                  "seg": ["age:25-34"], "seg_item": [0], "seg_pop": [0.5]}
    assert records.decode_model_update(records.encode_model_update(rows, popularity)) == (
        rows, popularity)
    tuples = [("i1", ["n1"], [0.5])]
    assert records.decode_model_update(records.encode_model_update(tuples, None)) == (
        [["i1", ["n1"], [0.5]]], None)


@pytest.mark.parametrize("max_bytes", [300, 2_000, 1_000_000])
def test_model_updates_are_split_to_fit_a_message_and_carry_the_same_content(max_bytes):
    rng = np.random.default_rng(3)
    rows = [[f"item-{n}", [f"nb-{n}-{j}" for j in range(5)], [round(float(x), 6)
                                                             for x in rng.random(5)]]
            for n in range(60)]
    ids = [f"item-{n}" for n in range(200)]
    seg, seg_item, seg_pop = [], [], []
    for i in range(200):
        for name in ("age:25-34", "gender:F")[: i % 3]:
            seg.append(name)
            seg_item.append(i)
            seg_pop.append(float(i) / 7)
    popularity = {"landmark": T0, "newest_ts": T0 + 1, "ids": ids,
                  "pop": [float(i) for i in range(200)], "seg": seg, "seg_item": seg_item,
                  "seg_pop": seg_pop}
    payloads = records.encode_model_updates(rows, popularity, max_bytes)
    assert all(len(p) <= max(max_bytes, 300) for p in payloads)
    if max_bytes == 1_000_000:
        assert len(payloads) == 2  # rows, then popularity: one message each
    got_rows, got_pop, got_seg = [], {}, {}
    for p in payloads:
        r, pop = records.decode_model_update(p)
        got_rows += r
        if pop is not None:
            assert (pop["landmark"], pop["newest_ts"]) == (T0, T0 + 1)
            got_pop.update(zip(pop["ids"], pop["pop"]))
            for name, i, v in zip(pop["seg"], pop["seg_item"], pop["seg_pop"]):
                got_seg[(pop["ids"][i], name)] = v
    assert got_rows == rows
    assert got_pop == dict(zip(ids, popularity["pop"]))
    assert got_seg == {(ids[i], name): v for name, i, v in zip(seg, seg_item, seg_pop)}


def test_payloads_of_another_version_are_refused():
    with pytest.raises(StateVersionError, match="version"):
        records.decode_activity(orjson.dumps([3, 0, 1, [], [], [], [], []]))
    with pytest.raises(StateVersionError, match="version"):
        records.decode_pairs(orjson.dumps([0, 0, 1, [], [], []]))
    with pytest.raises(StateVersionError, match="version"):
        records.decode_model_update(orjson.dumps([3, [], None]))
    with pytest.raises(StateVersionError):
        records.decode_model_update(orjson.dumps({"v": 1, "rows": [], "popularity": None}))


def test_record_kinds_and_output_tags_are_distinct():
    kinds = [records.KIND_TIMER, records.KIND_EVENT, records.KIND_ATTRIBUTES, records.KIND_REQUEST,
             records.KIND_PRIVACY, records.KIND_CATALOG, records.KIND_MODEL_UPDATE,
             records.KIND_ACTIVITY, records.KIND_PAIRS]
    assert len(set(kinds)) == len(kinds)
    user_tags = [records.USER_OUT_RECOMMENDATIONS, records.USER_OUT_PROFILES, records.USER_OUT_DLQ,
                 records.USER_OUT_PAIRS, records.USER_OUT_ACTIVITY]
    assert sorted(user_tags) == list(range(len(user_tags)))


# Every list-shaped orjson codec: a newer version is most likely to change the number of fields.
NEWER_WITH_AN_EXTRA_FIELD = [
    ("item_state.decode_counters", item_state.decode_counters, [2, 1.0, 2.0, {}, "new"]),
    ("item_state.decode_counters_meta", item_state.decode_counters_meta, [2, 1, 2, 3, "new"]),
    ("model_state.decode_catalog_entry", model_state.decode_catalog_entry, [2, {}, "new"]),
    ("model_state.decode_item_entry", model_state.decode_item_entry, [3, [], [], 0.0, {}, 0, "new"]),
    ("model_state.decode_meta", model_state.decode_meta, [2, 1, 2, "new"]),
    ("records.decode_activity", records.decode_activity, [3, 0, 1, [], [], [], [], [], "new"]),
    ("records.decode_pairs", records.decode_pairs, [3, 0, 1, [], [], [], "new"]),
]


@pytest.mark.parametrize("name, decode, value", NEWER_WITH_AN_EXTRA_FIELD,
                         ids=[n for n, _, _ in NEWER_WITH_AN_EXTRA_FIELD])
def test_newer_version_with_another_shape_raises_state_version_error(name, decode, value):
    with pytest.raises(StateVersionError):
        decode(orjson.dumps(value))


# =========================================================================== legacy catalogue

def test_legacy_catalog_entry_becomes_an_item_catalog_record():
    entry = (1, "i1", "Running shoe", ("shoes", "sport"), ("running",), 49.5, 1, T0 - 7)
    record = legacy_catalog_record(pickle.dumps(entry))
    assert record == {"item_id": "i1", "ts": T0 - 7, "title": "Running shoe",
                      "categories": ["shoes", "sport"], "tags": ["running"], "price": 49.5,
                      "available": True}
    assert type(record["available"]) is bool
    validator("item-catalog")(record)
    no_price = legacy_catalog_record(pickle.dumps((1, "i2", "", (), (), None, False, T0)))
    assert no_price["price"] is None and no_price["available"] is False
    validator("item-catalog")(no_price)


@pytest.mark.parametrize("entry", [
    (2, "i1", "t", (), (), None, True, T0),          # another version
    (1, "i1", "t", (), (), None, True),              # too short
    (1, "i1", "t", (), (), None, True, T0, "extra"),  # too long
    [1, "i1", "t", (), (), None, True, T0],          # not a tuple
    {"item_id": "i1"},
])
def test_legacy_catalog_entry_of_an_unknown_shape_is_refused(entry):
    with pytest.raises(StateVersionError):
        legacy_catalog_record(pickle.dumps(entry))


def test_ab_totals_round_trip_and_reject_other_versions():
    from state_schemas.model_state import decode_ab_totals, encode_ab_totals

    totals = {("impressions", "control", "new"): 12, ("feedback_events", "control", "click"): 3}
    assert decode_ab_totals(encode_ab_totals(totals)) == totals
    assert decode_ab_totals(None) == {}
    with pytest.raises(StateVersionError):
        decode_ab_totals(b'[9, []]')
