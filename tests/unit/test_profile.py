import math

import pytest

from state_schemas.config import DAY_MS, EngineConfig
from state_schemas import validator
from state_schemas.state import (
    ItemInfo, RecentItem, UserProfileState, user_profile_from_state, user_profile_to_state,
    StateVersionError)
from udfs import profile as prof

CFG = EngineConfig()
T0 = 1_767_225_600_000
H = 86_400_000


def item(item_id="i1", cats=("shoes",), tags=("running",), price=50.0):
    return ItemInfo(item_id, f"Item {item_id}", tuple(cats), tuple(tags), price, True, T0)


def ev(item_id="i1", etype="view", ts=T0, value=None, eid=None):
    return {"event_id": eid or f"{item_id}-{etype}-{ts}", "user_id": "u1", "item_id": item_id,
            "event_type": etype, "ts": ts, "value": value}


def test_decay_factor_halves_each_half_life():
    assert prof.decay_factor(0, 10) == 1.0
    assert prof.decay_factor(10, 10) == pytest.approx(0.5)
    assert prof.decay_factor(30, 10) == pytest.approx(0.125)
    assert prof.decay_factor(123, 0) == 1.0  # no decay configured


def test_event_weight_rating_is_centred():
    assert prof.event_weight("rate", 5, CFG.profile) == pytest.approx(5.0)
    assert prof.event_weight("rate", 1, CFG.profile) == pytest.approx(-3.0)
    assert prof.event_weight("purchase", None, CFG.profile) == 10.0
    assert prof.event_weight("not_interested", None, CFG.profile) < 0


def test_interest_vector_decays_and_adds():
    interests, ts = prof.update_interest_vector({}, 0, ["a", "b"], 2.0, T0, H, 10)
    per = 2.0 / math.sqrt(2)
    assert interests == pytest.approx({"a": per, "b": per}) and ts == T0
    interests, ts = prof.update_interest_vector(interests, ts, ["a"], 1.0, T0 + H, H, 10)
    assert interests["a"] == pytest.approx(per / 2 + 1.0)
    assert interests["b"] == pytest.approx(per / 2)
    assert ts == T0 + H


def test_interest_vector_is_order_independent():
    a, ta = prof.update_interest_vector({}, 0, ["x"], 1.0, T0, H, 10)
    a, ta = prof.update_interest_vector(a, ta, ["x"], 1.0, T0 + 2 * H, H, 10)
    b, tb = prof.update_interest_vector({}, 0, ["x"], 1.0, T0 + 2 * H, H, 10)
    b, tb = prof.update_interest_vector(b, tb, ["x"], 1.0, T0, H, 10)  # late arrival
    assert ta == tb and a["x"] == pytest.approx(b["x"]) == pytest.approx(1.25)


def test_interest_vector_evicts_weakest_beyond_max():
    interests = {"a": 5.0, "b": 0.1, "c": -4.0}
    out, _ = prof.update_interest_vector(interests, T0, ["d"], 1.0, T0, H, 3)
    assert set(out) == {"a", "c", "d"}


def test_counters_all_time_and_recent_window():
    all_time, days = {}, {}
    for d in range(10):
        prof.update_counters(all_time, days, "view", T0 + d * DAY_MS, 7 * DAY_MS)
    assert all_time == {"view": 10}
    assert len(days) == 7  # buckets older than the window are pruned
    assert prof.recent_counts(days, T0 + 9 * DAY_MS, 7 * DAY_MS) == {"view": 7}
    assert prof.recent_counts(days, T0 + 20 * DAY_MS, 7 * DAY_MS) == {}


def test_recent_items_dedup_keep_strongest_and_bound():
    recent = []
    recent, old = prof.update_recent_items(recent, "a", "view", 1.0, T0, 3)
    assert old == 0.0
    recent, old = prof.update_recent_items(recent, "b", "purchase", 10.0, T0 + 1, 3)
    recent, old = prof.update_recent_items(recent, "a", "view", 1.0, T0 + 2, 3)
    assert old == 1.0
    assert [r.item_id for r in recent] == ["a", "b"]
    recent, old = prof.update_recent_items(recent, "b", "view", 1.0, T0 + 3, 3)
    assert recent[0] == RecentItem("b", "purchase", T0 + 3, 10.0) and old == 10.0
    for i in range(5):
        recent, _ = prof.update_recent_items(recent, f"x{i}", "view", 1.0, T0 + 10 + i, 3)
    assert [r.item_id for r in recent] == ["x4", "x3", "x2"]


def test_pair_updates_count_each_user_once_per_item():
    sim = CFG.similarity
    history = [RecentItem("h1", "purchase", T0, 10.0), RecentItem("h2", "view", T0, 1.0)]
    n, pairs = prof.pair_updates(history, "j", 0.0, 2.0, T0 + 1, sim)
    assert n == 2.0
    assert {(p.row, p.col, p.weight) for p in pairs} == {
        ("j", "h1", 2.0), ("h1", "j", 2.0), ("j", "h2", 1.0), ("h2", "j", 1.0)}
    # The same user upgrades j from click (2) to purchase (10): only the increments count.
    n, pairs = prof.pair_updates(history, "j", 2.0, 10.0, T0 + 2, sim)
    assert n == 8.0
    assert {(p.row, p.col, p.weight) for p in pairs} == {("j", "h1", 8.0), ("h1", "j", 8.0)}
    # A weaker repeat changes nothing.
    assert prof.pair_updates(history, "j", 10.0, 1.0, T0 + 3, sim) == (0.0, [])


def test_pair_updates_respect_history_bounds():
    sim = EngineConfig().similarity
    sim.history_max_items = 2
    history = [RecentItem(f"h{i}", "view", T0, 1.0) for i in range(5)]
    _, pairs = prof.pair_updates(history, "j", 0.0, 1.0, T0, sim)
    assert len(pairs) == 4  # 2 history items x both directions
    old = [RecentItem("old", "view", T0 - sim.history_window_ms - 1, 1.0)]
    assert prof.pair_updates(old, "j", 0.0, 1.0, T0, sim)[1] == []


def test_segments():
    p = CFG.profile
    assert prof.demographic_segment({"age": 29, "gender": "F"}) == "age:25-34|gender:F"
    assert prof.demographic_segment({}) == ""
    assert prof.activity_level(25, p) == "high" and prof.activity_level(3, p) == "medium"
    assert prof.activity_level(0, p) == "low"
    assert prof.price_level(0, 0, [20, 100]) == "unknown"
    assert prof.price_level(30, 2, [20, 100]) == "budget"
    assert prof.price_level(300, 2, [20, 100]) == "premium"
    assert prof.lifecycle(T0, T0, T0 + DAY_MS, p) == "new"
    assert prof.lifecycle(T0, T0 + 10 * DAY_MS, T0 + 10 * DAY_MS, p) == "active"
    assert prof.lifecycle(T0, T0 + 10 * DAY_MS, T0 + 50 * DAY_MS, p) == "dormant"


def test_apply_event_full_profile_and_snapshot_schema():
    p = UserProfileState("u1")
    prof.apply_attributes(p, {"age": 30, "gender": "M"}, T0)
    shoes = item("i1")
    for e in (ev("i1", "view"), ev("i1", "purchase", T0 + 10)):
        prof.apply_event(p, e, shoes, CFG.profile, CFG.similarity)
    out = prof.apply_event(p, ev("i2", "not_interested", T0 + 20), item("i2", ("books",), ()),
                           CFG.profile, CFG.similarity)
    assert out.weight < 0 and out.pairs == []
    assert p.counts_all_time == {"view": 1, "purchase": 1, "not_interested": 1}
    assert p.not_interested == ["i2"] and "i1" in p.consumed
    assert p.first_seen == T0 and p.last_seen == T0 + 20
    snap = prof.profile_snapshot(p, T0 + 20, CFG.profile, "control")
    validator("user-profile")(snap)
    assert snap["segments"]["price_level"] == "mid"
    assert snap["segments"]["demographic"] == "age:25-34|gender:M"
    assert snap["interests"]["category:shoes"] > 0 > snap["interests"]["category:books"]
    assert [r["item_id"] for r in snap["recent_items"]] == ["i1"]


def test_remember_event_id_dedups_within_window():
    p = UserProfileState("u1")
    assert prof.remember_event_id(p, "e1", T0, DAY_MS, 100)
    assert not prof.remember_event_id(p, "e1", T0 + 5, DAY_MS, 100)
    for i in range(200):
        prof.remember_event_id(p, f"x{i}", T0 + i, DAY_MS, 100)
    assert len(p.seen_event_ids) <= 100


def test_attributes_newer_wins_and_null_removes():
    p = UserProfileState("u1")
    assert prof.apply_attributes(p, {"age": 30, "region": "EU"}, T0)
    assert not prof.apply_attributes(p, {"age": 99}, T0 - 1)
    assert prof.apply_attributes(p, {"region": None}, T0 + 1)
    assert p.attributes == {"age": 30}


def test_v1_state_migrates_to_current():
    v1 = {"v": 1, "user_id": "u1", "attributes": {"age": 3}, "attributes_ts": 5,
          "counts_all_time": {"view": 3}, "counts_by_day": [(T0, {"view": 2}), (T0 + DAY_MS, {"view": 1})],
          "interests": {"category:a": 1.5}, "interests_ts": T0, "recent_items": [("i1", "view", T0, 1.0)],
          "not_interested": [], "consumed": {}, "first_seen": T0, "last_seen": T0 + DAY_MS,
          "purchase_amount_sum": 0.0, "purchase_priced_count": 0, "seen_event_ids": {"e": T0},
          "last_snapshot_at": 0, "snapshot_pending": False}
    p = user_profile_from_state(v1)
    assert p.counts_by_day == {T0: {"view": 2}, T0 + DAY_MS: {"view": 1}}
    assert p.variant is None and p.recent_items == [RecentItem("i1", "view", T0, 1.0)]
    assert prof.recent_counts(p.counts_by_day, T0 + DAY_MS, 7 * DAY_MS) == {"view": 3}
    assert user_profile_to_state(p)["v"] == 2


def test_state_round_trip_and_version_check():
    p = UserProfileState("u1")
    prof.apply_event(p, ev("i1", "click"), item(), CFG.profile, CFG.similarity)
    state = user_profile_to_state(p)
    assert user_profile_from_state(state) == p
    with pytest.raises(StateVersionError):
        user_profile_from_state({**state, "v": 99})
