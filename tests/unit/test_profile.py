"""udfs/profile.py: the rules of the user profile (ProfileStep on a UserProfile).

Expected values are computed here from the documented formulas (forward decay, TencentRec
counting, ...), not read back from the code under test.
"""

from __future__ import annotations

import math

import fastjsonschema
import numpy as np
import pytest

from state_schemas import validator
from state_schemas.config import DAY_MS, EVENT_TYPES, EngineConfig
from state_schemas.ids import id_hash
from state_schemas.profile_state import TYPE_CODE, UserProfile, decode_profile, encode_profile
from udfs.ab import assign_variant
from udfs.decay import REBASE_AFTER
from udfs.profile import EventOutcome, ProfileStep, TooManyAttributes, age_band, demographic_segment

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a day boundary
DAY0 = T0 // DAY_MS
MINUTE = 60_000
SHOES = (("shoes",), ("running",), 50.0)  # (categories, tags, price) as the model gives them


def make_step(**sections: dict) -> ProfileStep:
    """A ProfileStep on a fresh default config with some fields changed, e.g.
    ``make_step(profile={"recent_items_max": 3})``."""
    cfg = EngineConfig()
    for section, values in sections.items():
        for key, value in values.items():
            assert hasattr(getattr(cfg, section), key), f"{section}.{key}"
            setattr(getattr(cfg, section), key, value)
    return ProfileStep(cfg)


def ev(item_id="i1", etype="view", ts=T0, value=None, eid=None, user="u1") -> dict:
    return {"event_id": eid or f"{item_id}-{etype}-{ts}", "user_id": user, "item_id": item_id,
            "event_type": etype, "ts": ts, "value": value}


def cat(*categories: str, tags: tuple[str, ...] = (), price: float | None = None):
    return tuple(categories), tuple(tags), price


def recent(u: UserProfile) -> list[tuple[str, str, int, float]]:
    return [(i, EVENT_TYPES[t], ts, w)
            for i, t, ts, w in zip(u.recent_ids, u.recent_types, u.recent_ts, u.recent_weights)]


def pair_set(outcome: EventOutcome) -> set[tuple[str, str, float]]:
    return {(r, c, round(d, 9)) for r, c, d in outcome.pairs}


# --------------------------------------------------------------------------- event weights

@pytest.mark.parametrize("etype, value, expected", [
    ("rate", 5, 2.0 * (5 - 2.5)),
    ("rate", 4.5, 2.0 * (4.5 - 2.5)),
    ("rate", 2.5, 0.0),
    ("rate", 1, 2.0 * (1 - 2.5)),
    ("rate", None, 2.0 * (0 - 2.5)),  # a rating without a value counts as 0
    ("view", None, 1.0),
    ("click", 99, 2.0),  # value only matters for ratings
    ("purchase", None, 10.0),
    ("not_interested", None, -8.0),
])
def test_event_weight_with_default_config(etype, value, expected):
    assert make_step().event_weight(TYPE_CODE[etype], value) == pytest.approx(expected)


def test_event_weight_follows_the_configured_scale_neutral_and_weights():
    step = make_step(profile={"rate_weight_scale": 3.0, "rate_neutral": 3.0,
                              "event_weights": {**EngineConfig().profile.event_weights,
                                                "view": 0.25}})
    assert step.event_weight(TYPE_CODE["rate"], 4) == pytest.approx(3.0 * (4 - 3.0))
    assert step.event_weight(TYPE_CODE["rate"], 2) == pytest.approx(3.0 * (2 - 3.0))
    assert step.event_weight(TYPE_CODE["view"], None) == 0.25


def test_apply_event_reports_the_event_weight():
    step, u = make_step(), UserProfile("u1")
    assert step.apply_event(u, ev("a", "rate", value=5), None).weight == pytest.approx(5.0)
    assert step.apply_event(u, ev("b", "share"), None).weight == 5.0


# --------------------------------------------------------------------------- counters

def test_counters_all_time_and_per_day_buckets_within_the_recent_window():
    step, u = make_step(), UserProfile("u1")  # recent window: 7 days
    for d in range(10):
        step.apply_event(u, ev(f"i{d}", "view", T0 + d * DAY_MS + 5), None)
    step.apply_event(u, ev("p", "purchase", T0 + 9 * DAY_MS + 7), None)
    step.apply_event(u, ev("q", "purchase", T0 + 9 * DAY_MS + 8), None)
    view, purchase = TYPE_CODE["view"], TYPE_CODE["purchase"]
    assert u.counts_all_time[view] == 10 and u.counts_all_time[purchase] == 2
    assert sum(u.counts_all_time) == 12
    # Buckets are keyed by day index; those older than the window are gone.
    assert sorted(u.counts_by_day) == [DAY0 + d for d in range(3, 10)]
    assert u.counts_by_day[DAY0 + 9][view] == 1 and u.counts_by_day[DAY0 + 9][purchase] == 2
    assert u.counts_by_day[DAY0 + 4] == [1 if t == view else 0 for t in range(len(EVENT_TYPES))]
    assert step.recent_counts(u, T0 + 9 * DAY_MS + 10) == {"view": 7, "purchase": 2}
    # Later, fewer buckets fall in the window (those starting after now - window: days 6-9);
    # long after, none.
    assert step.recent_counts(u, T0 + 12 * DAY_MS + 1) == {"view": 4, "purchase": 2}
    assert step.recent_counts(u, T0 + 30 * DAY_MS) == {}


def test_an_event_older_than_the_window_counts_all_time_only():
    step, u = make_step(), UserProfile("u1")
    step.apply_event(u, ev("a", "view", T0 + 20 * DAY_MS), None)
    step.apply_event(u, ev("b", "click", T0), None)  # 20 days late
    assert u.counts_all_time[TYPE_CODE["click"]] == 1
    assert list(u.counts_by_day) == [DAY0 + 20]
    assert step.recent_counts(u, T0 + 20 * DAY_MS) == {"view": 1}


def test_first_and_last_seen_follow_event_time_not_arrival_order():
    step, u = make_step(), UserProfile("u1")
    for ts in (T0 + 50, T0 + 10, T0 + 90, T0 + 20):
        step.apply_event(u, ev("a", "view", ts), None)
    assert (u.first_seen, u.last_seen) == (T0 + 10, T0 + 90)


# --------------------------------------------------------------------------- interests

def decayed(events, now, half_life):
    """Independent reference: sum over events (weight/sqrt(n features)) * 2^-(now-ts)/h."""
    out: dict[str, float] = {}
    for features, weight, ts in events:
        for f in features:
            out[f] = out.get(f, 0.0) + weight / math.sqrt(len(features)) * 2.0 ** (-(now - ts) / half_life)
    return out


def test_interests_are_forward_decayed_against_a_fixed_landmark():
    step, u = make_step(), UserProfile("u1")
    h = step.p.interest_half_life_ms
    step.apply_event(u, ev("a", "view", T0), SHOES)
    assert u.interests_landmark == T0
    stored_tag = u.interests["tag:running"]
    assert stored_tag == pytest.approx(1 / math.sqrt(2))
    step.apply_event(u, ev("b", "purchase", T0 + h), cat("shoes", price=80.0))
    # No weight is rewritten as time passes: the older feature keeps its stored value, the new
    # event is added with the multiplier 2^((ts - landmark)/h) = 2.
    assert u.interests_landmark == T0
    assert u.interests["tag:running"] == stored_tag
    assert u.interests["category:shoes"] == pytest.approx(1 / math.sqrt(2) + 10 * 2)
    events = [(("category:shoes", "tag:running"), 1.0, T0), (("category:shoes",), 10.0, T0 + h)]
    for now in (T0 + h, T0 + 3 * h + 12_345):
        assert step.interests_at(u, now) == pytest.approx(decayed(events, now, h), rel=1e-12)
    # One half-life after the last event everything is halved.
    at_h, at_2h = step.interests_at(u, T0 + h), step.interests_at(u, T0 + 2 * h)
    assert at_2h == pytest.approx({f: w / 2 for f, w in at_h.items()})


def test_interests_do_not_depend_on_arrival_order():
    events = [(ev("a", "view", T0), SHOES), (ev("b", "like", T0 + 3 * DAY_MS), cat("shoes")),
              (ev("c", "click", T0 + 40 * DAY_MS), cat("books", tags=("crime",)))]
    step = make_step()
    in_order, reversed_order = UserProfile("u1"), UserProfile("u2")
    for e, info in events:
        step.apply_event(in_order, e, info)
    for e, info in reversed(events):
        step.apply_event(reversed_order, e, info)
    now = T0 + 41 * DAY_MS
    assert step.interests_at(in_order, now) == pytest.approx(
        step.interests_at(reversed_order, now), rel=1e-9)


def test_negative_events_push_interests_down_and_no_item_info_leaves_them_alone():
    step, u = make_step(), UserProfile("u1")
    step.apply_event(u, ev("a", "view", T0), cat("books"))
    step.apply_event(u, ev("b", "not_interested", T0), cat("books"))
    assert u.interests["category:books"] == pytest.approx(1.0 - 8.0)
    before = dict(u.interests)
    step.apply_event(u, ev("c", "purchase", T0), None)  # not in the catalogue
    step.apply_event(u, ev("d", "rate", T0, value=2.5), cat("books"))  # weight 0
    assert u.interests == before


def test_interests_beyond_interests_max_evict_the_smallest_magnitude():
    step, u = make_step(profile={"interests_max": 3}), UserProfile("u1")
    step.apply_event(u, ev("a", "purchase", T0), cat("a"))         # +10
    step.apply_event(u, ev("b", "view", T0), cat("b"))             # +1
    step.apply_event(u, ev("c", "not_interested", T0), cat("c"))   # -8: large magnitude stays
    step.apply_event(u, ev("d", "click", T0), cat("d"))            # +2: b (1) is the weakest
    assert u.interests == pytest.approx({"category:a": 10.0, "category:c": -8.0,
                                         "category:d": 2.0})


def test_landmark_rebase_keeps_the_decayed_weights():
    half_life = 1_000
    step, u = make_step(profile={"interest_half_life_ms": half_life}), UserProfile("u1")
    events = []
    # 200 half-lives of activity: far past 2^REBASE_AFTER without rebasing.
    for n, ts in enumerate(range(T0, T0 + 200 * half_life + 1, 10 * half_life)):
        info = cat("a") if n % 2 else cat("b", tags=("t",))
        step.apply_event(u, ev(f"i{n}", "view", ts), info)
        events.append((tuple(f"category:{c}" for c in info[0]) + tuple(f"tag:{t}" for t in info[1]),
                       1.0, ts))
        assert u.interests_landmark > T0 or ts - T0 <= REBASE_AFTER * half_life
        assert all(math.isfinite(w) and abs(w) < 2.0 ** (REBASE_AFTER + 1) for w in u.interests.values())
    assert u.interests_landmark > T0  # it moved
    now = T0 + 200 * half_life
    expected = decayed(events, now, half_life)
    got = step.interests_at(u, now)
    assert got == pytest.approx(expected, rel=1e-9)
    assert got["category:a"] / got["tag:t"] == pytest.approx(
        expected["category:a"] / expected["tag:t"], rel=1e-9)


def test_one_rebase_moves_the_landmark_to_the_event_and_rescales_everything():
    half_life = 1_000
    step, u = make_step(profile={"interest_half_life_ms": half_life}), UserProfile("u1")
    step.apply_event(u, ev("a", "purchase", T0), cat("a"))
    later = T0 + 65 * half_life  # exponent 65 > REBASE_AFTER (64)
    step.apply_event(u, ev("b", "view", later), cat("b"))
    assert u.interests_landmark == later
    assert u.interests["category:b"] == pytest.approx(1.0, rel=1e-12)
    assert u.interests["category:a"] == pytest.approx(10.0 * 2.0 ** -65, rel=1e-12, abs=0)
    assert step.interests_at(u, later + half_life) == pytest.approx(
        {"category:a": 10.0 * 2.0 ** -66, "category:b": 0.5}, rel=1e-12, abs=0)


# --------------------------------------------------------------------------- recent items

def test_recent_items_keep_the_strongest_action_newest_first_and_bounded():
    step, u = make_step(profile={"recent_items_max": 3}), UserProfile("u1")
    step.apply_event(u, ev("a", "view", T0), None)
    step.apply_event(u, ev("b", "purchase", T0 + 1), None)
    step.apply_event(u, ev("a", "view", T0 + 2), None)
    assert recent(u) == [("a", "view", T0 + 2, 1.0), ("b", "purchase", T0 + 1, 10.0)]
    step.apply_event(u, ev("b", "view", T0 + 3), None)  # weaker: the purchase stays, time moves
    assert recent(u)[0] == ("b", "purchase", T0 + 3, 10.0)
    step.apply_event(u, ev("a", "like", T0 + 4), None)  # stronger: replaces the view
    assert recent(u)[0] == ("a", "like", T0 + 4, 4.0)
    for n in range(5):
        step.apply_event(u, ev(f"x{n}", "view", T0 + 10 + n), None)
    assert u.recent_ids == ["x4", "x3", "x2"]
    assert len(u.recent_types) == len(u.recent_ts) == len(u.recent_weights) == 3


def test_a_late_event_on_a_recent_item_keeps_the_latest_time():
    step, u = make_step(), UserProfile("u1")
    step.apply_event(u, ev("a", "view", T0 + 100), None)
    step.apply_event(u, ev("a", "click", T0 + 50), None)  # arrives late, but stronger
    assert recent(u) == [("a", "click", T0 + 100, 2.0)]


# --------------------------------------------------------------------------- not interested

def test_not_interested_removes_the_item_from_recent_items():
    step, u = make_step(), UserProfile("u1")
    step.apply_event(u, ev("a", "view", T0), SHOES)
    step.apply_event(u, ev("b", "click", T0 + 1), SHOES)
    out = step.apply_event(u, ev("a", "not_interested", T0 + 2), SHOES)
    assert out.weight == -8.0 and out.occurrence_delta == 0.0 and out.pairs == []
    assert u.recent_ids == ["b"] and len(u.recent_weights) == 1
    assert u.not_interested == ["a"]
    assert id_hash("a") not in u.consumed


def test_a_poor_rating_counts_as_not_interested():
    step, u = make_step(), UserProfile("u1")
    step.apply_event(u, ev("a", "view", T0), None)
    out = step.apply_event(u, ev("a", "rate", T0 + 1, value=1), None)
    assert out.weight == pytest.approx(-3.0) and out.pairs == []
    assert u.not_interested == ["a"] and u.recent_ids == []
    assert id_hash("a") not in u.consumed  # rate is a consumed type, but not when negative


def test_not_interested_list_is_newest_first_without_repeats_and_bounded():
    step, u = make_step(profile={"not_interested_max": 3}), UserProfile("u1")
    for n, item_id in enumerate(["a", "b", "c", "a", "d", "e"]):
        step.apply_event(u, ev(item_id, "not_interested", T0 + n), None)
    assert u.not_interested == ["e", "d", "a"]


# --------------------------------------------------------------------------- consumed items

def test_consumed_items_evict_the_least_recently_consumed():
    step, u = make_step(profile={"consumed_max": 3}), UserProfile("u1")
    for n, (item_id, etype) in enumerate([("a", "purchase"), ("b", "like"), ("c", "rate"),
                                          ("v", "view"), ("k", "click")]):
        step.apply_event(u, ev(item_id, etype, T0 + n, value=5), None)
    hashes = lambda *ids: [id_hash(i) for i in ids]  # noqa: E731
    assert list(u.consumed) == hashes("a", "b", "c")  # view and click do not consume
    step.apply_event(u, ev("a", "add_to_cart", T0 + 10), None)  # a is consumed again
    assert list(u.consumed) == hashes("b", "c", "a")
    step.apply_event(u, ev("d", "share", T0 + 11), None)
    assert list(u.consumed) == hashes("c", "a", "d")  # b: least recently consumed


def test_consumed_sorted_is_sorted_uint64_and_follows_changes():
    step, u = make_step(), UserProfile("u1")
    for item_id in ("x", "y", "z"):
        step.apply_event(u, ev(item_id, "purchase", T0), None)
    first = step.consumed_sorted(u)
    assert first.dtype == np.uint64
    assert first.tolist() == sorted(id_hash(i) for i in ("x", "y", "z"))
    step.apply_event(u, ev("w", "like", T0 + 1), None)
    assert step.consumed_sorted(u).tolist() == sorted(id_hash(i) for i in ("w", "x", "y", "z"))
    empty = step.consumed_sorted(UserProfile("u2"))
    assert empty.dtype == np.uint64 and len(empty) == 0


def test_purchases_with_a_price_feed_the_price_level():
    step, u = make_step(), UserProfile("u1")
    assert step.price_level(u) == "unknown"
    step.apply_event(u, ev("a", "purchase", T0), cat("x", price=10.0))
    step.apply_event(u, ev("b", "purchase", T0), cat("x", price=None))  # no price: ignored
    step.apply_event(u, ev("c", "purchase", T0), None)                   # unknown item: ignored
    step.apply_event(u, ev("d", "view", T0), cat("x", price=999.0))      # not a purchase
    assert (u.purchase_amount_sum, u.purchase_priced_count) == (10.0, 1)
    assert step.price_level(u) == "budget"
    step.apply_event(u, ev("e", "purchase", T0), cat("x", price=90.0))
    assert step.price_level(u) == "mid"  # average 50
    step.apply_event(u, ev("f", "purchase", T0), cat("x", price=500.0))
    assert step.price_level(u) == "premium"  # average 200


# --------------------------------------------------------------------------- pair updates

def expected_pairs(item, old, new, history):
    """TencentRec: C(i, h) += min(new, r_h) - min(old, r_h) for each history item h."""
    out = set()
    for h, r_h in history:
        delta = min(new, r_h) - min(max(old, 0.0), r_h)
        if delta > 0:
            out |= {(item, h, round(delta, 9)), (h, item, round(delta, 9))}
    return out


def test_pair_updates_count_only_the_increase_of_the_rating():
    step, u = make_step(), UserProfile("u1")
    step.apply_event(u, ev("h1", "purchase", T0), None)  # r = 10
    step.apply_event(u, ev("h2", "view", T0 + 1), None)  # r = 1
    history = [("h1", 10.0), ("h2", 1.0)]
    out = step.apply_event(u, ev("j", "click", T0 + 2), None)  # j: 0 -> 2
    assert out.occurrence_delta == 2.0
    assert pair_set(out) == expected_pairs("j", 0.0, 2.0, history) == {
        ("j", "h1", 2.0), ("h1", "j", 2.0), ("j", "h2", 1.0), ("h2", "j", 1.0)}
    out = step.apply_event(u, ev("j", "purchase", T0 + 3), None)  # j: 2 -> 10
    assert out.occurrence_delta == 8.0
    assert pair_set(out) == expected_pairs("j", 2.0, 10.0, history) == {
        ("j", "h1", 8.0), ("h1", "j", 8.0)}
    # The weight does not rise: nothing.
    for etype in ("view", "click", "purchase"):
        out = step.apply_event(u, ev("j", etype, T0 + 4), None)
        assert (out.occurrence_delta, out.pairs) == (0.0, [])


def test_pair_updates_with_ratings():
    step, u = make_step(), UserProfile("u1")
    step.apply_event(u, ev("h", "rate", T0, value=4), None)  # r = 3
    out = step.apply_event(u, ev("j", "rate", T0 + 1, value=5), None)  # r = 5
    assert out.occurrence_delta == pytest.approx(5.0)
    assert pair_set(out) == {("j", "h", 3.0), ("h", "j", 3.0)}
    # A neutral rating (weight 0) neither counts nor pairs, and is never paired with.
    out = step.apply_event(u, ev("n", "rate", T0 + 2, value=2.5), None)
    assert (out.occurrence_delta, out.pairs) == (0.0, [])
    out = step.apply_event(u, ev("k", "view", T0 + 3), None)
    assert {c for r, c, _ in out.pairs if r == "k"} == {"h", "j"}


def test_pair_updates_use_only_the_newest_history_max_items():
    step = make_step(similarity={"history_max_items": 2})
    u = UserProfile("u1")
    for n in range(5):
        step.apply_event(u, ev(f"h{n}", "view", T0 + n), None)
    out = step.apply_event(u, ev("j", "view", T0 + 10), None)
    assert pair_set(out) == {("j", "h4", 1.0), ("h4", "j", 1.0), ("j", "h3", 1.0), ("h3", "j", 1.0)}
    assert len(out.pairs) == 4  # hot-user bound: 2 * history_max_items


def test_pair_updates_skip_history_older_than_the_window():
    step, u = make_step(), UserProfile("u1")
    window = step.sim.history_window_ms
    step.apply_event(u, ev("old", "view", T0 - window - 1), None)
    step.apply_event(u, ev("edge", "view", T0 - window), None)
    out = step.apply_event(u, ev("j", "view", T0), None)
    assert pair_set(out) == {("j", "edge", 1.0), ("edge", "j", 1.0)}


def test_a_repeat_of_the_same_item_never_pairs_with_itself():
    step, u = make_step(), UserProfile("u1")
    step.apply_event(u, ev("a", "view", T0), None)
    out = step.apply_event(u, ev("a", "purchase", T0 + 1), None)
    assert out.occurrence_delta == 9.0 and out.pairs == []


def test_binary_pair_weights_count_each_positive_item_once():
    step, u = make_step(similarity={"pair_weights": "binary"}), UserProfile("u1")
    step.apply_event(u, ev("h1", "purchase", T0), None)  # action weight 10
    step.apply_event(u, ev("h2", "rate", T0 + 1, value=4), None)  # action weight 3
    out = step.apply_event(u, ev("j", "rate", T0 + 2, value=5), None)  # action weight 5
    assert out.occurrence_delta == 1.0  # action weights: 5, and pairs of 5 and 3
    assert pair_set(out) == {("j", "h1", 1.0), ("h1", "j", 1.0), ("j", "h2", 1.0), ("h2", "j", 1.0)}
    # a stronger action on an item already counted adds nothing (action weights would add 5)
    out = step.apply_event(u, ev("j", "purchase", T0 + 3), None)
    assert (out.occurrence_delta, out.pairs) == (0.0, [])
    # a neutral or negative rating still neither counts nor pairs
    out = step.apply_event(u, ev("n", "rate", T0 + 4, value=2.5), None)
    assert (out.occurrence_delta, out.pairs) == (0.0, [])


def test_pair_half_life_items_fades_pairs_by_distance_in_the_sequence():
    step = make_step(similarity={"pair_half_life_items": 2.0, "history_max_items": 3})
    u = UserProfile("u1")
    for n in range(4):
        step.apply_event(u, ev(f"h{n}", "view", T0 + n), None)
    out = step.apply_event(u, ev("j", "view", T0 + 10), None)
    # the newest history item (h3) is at distance 0: 2^(-k/2) for k = 0, 1, 2
    expected = {("j", "h3", 1.0), ("j", "h2", 2 ** -0.5), ("j", "h1", 0.5)}
    expected |= {(c, r, w) for r, c, w in expected}
    assert pair_set(out) == {(r, c, round(w, 9)) for r, c, w in expected}
    assert out.occurrence_delta == 1.0  # occurrences do not fade

# --------------------------------------------------------------------------- dedup window

def test_duplicate_event_id_within_the_window_is_refused():
    step, u = make_step(), UserProfile("u1")  # window: 1 day
    assert step.remember_event_id(u, "e1", T0)
    assert not step.remember_event_id(u, "e1", T0)
    assert not step.remember_event_id(u, "e1", T0 + 5)
    assert not step.remember_event_id(u, "e1", T0 + DAY_MS // 2)
    assert step.remember_event_id(u, "e2", T0 + 5)


def test_an_event_id_is_accepted_again_once_the_window_has_passed():
    step, u = make_step(), UserProfile("u1")
    window = step.cfg.validation.dedup_window_ms
    assert step.remember_event_id(u, "e1", T0)
    # The newest event seen is exactly one window later: e1 is still remembered.
    assert step.remember_event_id(u, "x1", T0 + window)
    assert not step.remember_event_id(u, "e1", T0)
    # Newest event more than a window (plus the minute granularity) later: e1 is forgotten.
    assert step.remember_event_id(u, "x2", T0 + window + MINUTE)
    assert step.remember_event_id(u, "e1", T0 + window + MINUTE)
    assert not step.remember_event_id(u, "e1", T0 + window + MINUTE)  # remembered again


def test_dedup_window_follows_the_configured_length():
    step, u = make_step(validation={"dedup_window_ms": 10 * MINUTE}), UserProfile("u1")
    assert step.remember_event_id(u, "e1", T0)
    assert step.remember_event_id(u, "x", T0 + 11 * MINUTE)
    assert step.remember_event_id(u, "e1", T0 + 11 * MINUTE)


def test_dedup_memory_is_bounded_and_keeps_the_newest_ids():
    step = make_step(validation={"dedup_max_ids_per_user": 100})
    u = UserProfile("u1")
    for n in range(300):
        assert step.remember_event_id(u, f"e{n}", T0 + n * 1_000)
        assert len(u.dedup) <= 100
    assert not step.remember_event_id(u, "e299", T0 + 299_000)  # the newest are remembered
    assert not step.remember_event_id(u, "e250", T0 + 250_000)
    assert step.remember_event_id(u, "e0", T0)  # the oldest was evicted


def test_dedup_window_survives_the_state_codec():
    step, u = make_step(), UserProfile("u1")
    for n in range(10):
        step.remember_event_id(u, f"e{n}", T0 + n * MINUTE)
    restored = decode_profile(encode_profile(u))
    assert restored.dedup == u.dedup and restored.dedup_base_minute == u.dedup_base_minute
    assert not step.remember_event_id(restored, "e3", T0 + 3 * MINUTE)
    assert step.remember_event_id(restored, "e10", T0 + 10 * MINUTE)


# --------------------------------------------------------------------------- attributes

def test_attributes_merge_newer_values_and_null_removes():
    u = UserProfile("u1")
    assert ProfileStep.apply_attributes(u, {"age": 30, "region": "EU"}, T0)
    assert not ProfileStep.apply_attributes(u, {"age": 99, "plan": "pro"}, T0 - 1)  # older
    assert u.attributes == {"age": 30, "region": "EU"} and u.attributes_ts == T0
    assert ProfileStep.apply_attributes(u, {"region": None, "plan": "pro"}, T0 + 1)
    assert u.attributes == {"age": 30, "plan": "pro"} and u.attributes_ts == T0 + 1
    assert ProfileStep.apply_attributes(u, {"age": 31, "nope": None}, T0 + 1)  # same ts: applies
    assert u.attributes == {"age": 31, "plan": "pro"}
    # A merge beyond the limit changes nothing; replacing or removing within it is fine.
    with pytest.raises(TooManyAttributes, match="more than 2 attributes"):
        ProfileStep.apply_attributes(u, {"region": "EU"}, T0 + 2, limit=2)
    assert u.attributes == {"age": 31, "plan": "pro"} and u.attributes_ts == T0 + 1
    assert ProfileStep.apply_attributes(u, {"region": "EU", "plan": None}, T0 + 2, limit=2)
    assert u.attributes == {"age": 31, "region": "EU"}


# --------------------------------------------------------------------------- A/B variant

def test_variant_is_sticky_while_the_salt_is_unchanged():
    step = make_step()
    rc = step.cfg.recommend
    u = UserProfile("sticky-user")
    first = step.variant(u)
    assert first == assign_variant("sticky-user", rc.experiment_salt, rc.variants)
    assert (u.variant, u.variant_salt) == (first, rc.experiment_salt)
    # New traffic shares that would put this user elsewhere do not move them.
    other = next(name for name in rc.variants if name != first)
    rc.variants[first].traffic, rc.variants[other].traffic = 1e-9, 1.0
    assert assign_variant("sticky-user", rc.experiment_salt, rc.variants) == other
    assert step.variant(u) == first


def test_variant_is_reassigned_when_the_salt_changes_or_the_variant_is_gone():
    step = make_step()
    rc = step.cfg.recommend
    # A user whose variant differs between the two salts, so the test can see the reassignment.
    uid = next(f"u{n}" for n in range(1000)
               if assign_variant(f"u{n}", rc.experiment_salt, rc.variants)
               != assign_variant(f"u{n}", "exp-next", rc.variants))
    u = UserProfile(uid)
    before = step.variant(u)
    rc.experiment_salt = "exp-next"
    after = step.variant(u)
    assert after != before
    assert after == assign_variant(uid, "exp-next", rc.variants)
    assert u.variant_salt == "exp-next"
    del rc.variants[after]  # the variant left the experiment: reassigned among the others
    assert step.variant(u) in rc.variants


# --------------------------------------------------------------------------- snapshots

def test_snapshot_rate_limit():
    step, u = make_step(profile={"snapshot_min_interval_ms": 1_000}), UserProfile("u1")
    assert step.snapshot_due(u, 10_000) is None  # emit now
    assert u.last_snapshot_at == 10_000 and not u.snapshot_pending
    assert step.snapshot_due(u, 10_400) == 11_000  # too soon: schedule a trailing snapshot
    assert u.snapshot_pending
    due = step.snapshot_due(u, 10_700)  # already scheduled: nothing more to schedule
    assert due is not None and due < 0 and u.snapshot_pending
    assert step.snapshot_due(u, 11_000) is None
    assert u.last_snapshot_at == 11_000 and not u.snapshot_pending


def test_snapshot_message_matches_the_profile_and_the_schema():
    step, u = make_step(), UserProfile("u1")
    h = step.p.interest_half_life_ms
    ProfileStep.apply_attributes(u, {"age": 30, "gender": "M"}, T0)
    step.apply_event(u, ev("i1", "view", T0), SHOES)
    step.apply_event(u, ev("i1", "purchase", T0 + 10), SHOES)
    step.apply_event(u, ev("i2", "not_interested", T0 + 20), cat("books"))
    snap = step.snapshot(u, "control")
    validator("user-profile")(snap)
    assert snap["schema_version"] == 1 and snap["user_id"] == "u1"
    assert snap["updated_at"] == T0 + 20
    assert snap["attributes"] == {"age": 30, "gender": "M"}
    assert snap["counters"] == {"all_time": {"view": 1, "purchase": 1, "not_interested": 1},
                                "recent": {"view": 1, "purchase": 1, "not_interested": 1}}
    now = T0 + 20
    shoes = (1.0 * 2 ** (-(now - T0) / h) + 10.0 * 2 ** (-(now - T0 - 10) / h)) / math.sqrt(2)
    assert snap["interests"] == pytest.approx(
        {"category:shoes": shoes, "tag:running": shoes, "category:books": -8.0}, abs=2e-6)
    assert list(snap["interests"])[-1] == "category:books"  # strongest first
    assert snap["recent_items"] == [{"item_id": "i1", "event_type": "purchase", "ts": T0 + 10}]
    assert snap["not_interested"] == ["i2"]
    assert (snap["first_seen"], snap["last_seen"]) == (T0, T0 + 20)
    assert snap["segments"] == {"activity": "medium", "price_level": "mid", "lifecycle": "new",
                                "demographic": "age:25-34|gender:M"}
    assert snap["variant"] == "control"
    assert "variant" not in step.snapshot(u)
    validator("user-profile")(step.snapshot(u))


def test_snapshot_of_an_empty_profile_is_valid():
    step = make_step()
    snap = step.snapshot(UserProfile("nobody"))
    validator("user-profile")(snap)
    assert snap["updated_at"] == 0 and snap["first_seen"] is None
    assert snap["counters"] == {"all_time": {}, "recent": {}}
    assert snap["segments"]["lifecycle"] == "new" and snap["segments"]["price_level"] == "unknown"


def test_the_schema_validator_rejects_a_broken_snapshot():
    step, u = make_step(), UserProfile("u1")
    step.apply_event(u, ev("a", "view", T0), None)
    snap = step.snapshot(u)
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validator("user-profile")({**snap, "surprise": 1})
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validator("user-profile")({**snap, "counters": {"all_time": {"view": -1}, "recent": {}}})


def test_snapshot_uses_the_profile_time_even_when_attributes_are_newer():
    step, u = make_step(), UserProfile("u1")
    step.apply_event(u, ev("a", "view", T0), None)
    ProfileStep.apply_attributes(u, {"gender": "F"}, T0 + 40 * DAY_MS)
    snap = step.snapshot(u)
    assert snap["updated_at"] == T0 + 40 * DAY_MS
    assert snap["segments"]["lifecycle"] == "dormant"  # 40 days without events
    assert snap["counters"]["recent"] == {}


# --------------------------------------------------------------------------- segments

@pytest.mark.parametrize("age, band", [
    (0, "<18"), (17.9, "<18"), (18, "18-24"), (24, "18-24"), (25, "25-34"), (44, "35-44"),
    (45, "45-54"), (54, "45-54"), (55, "55+"), (90, "55+"),
    (None, None), ("30", None), (True, None),
])
def test_age_band(age, band):
    assert age_band(age) == band


def test_demographic_segment():
    assert demographic_segment({"age": 29, "gender": "F"}) == "age:25-34|gender:F"
    assert demographic_segment({"age": 70}) == "age:55+"
    assert demographic_segment({"gender": "X", "age": "old"}) == "gender:X"
    assert demographic_segment({"gender": ""}) == ""
    assert demographic_segment({}) == ""


def test_activity_and_lifecycle_segments():
    step = make_step()
    assert [step.activity_level(n) for n in (0, 2, 3, 19, 20, 500)] == [
        "low", "low", "medium", "medium", "high", "high"]
    u = UserProfile("u1")
    assert step.lifecycle(u, T0) == "new"
    u.first_seen, u.last_seen = T0, T0
    assert step.lifecycle(u, T0 + DAY_MS) == "new"
    u.last_seen = T0 + 10 * DAY_MS
    assert step.lifecycle(u, T0 + 10 * DAY_MS) == "active"
    assert step.lifecycle(u, T0 + 41 * DAY_MS) == "dormant"
