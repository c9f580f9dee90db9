"""The real job on the local mini-cluster against the real broker: profiles and dead letters.

One scripted sequence (good events, a duplicate, bad records on several topics) goes in; the
exact profile of the user and the exact set of dead letters must come out.
"""

from __future__ import annotations

import math
from collections import Counter

import orjson
import pytest

from state_schemas import validator

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SQRT2 = math.sqrt(2)

CATALOG = [
    {"item_id": "i1", "ts": T0 - 10, "title": "Road Runner 2", "categories": ["shoes"],
     "tags": ["running"], "price": 50.0, "available": True},
    {"item_id": "i2", "ts": T0 - 10, "title": "A Long Novel", "categories": ["books"], "tags": [],
     "price": 10.0, "available": True},
    {"item_id": "i3", "ts": T0 - 10, "title": "Trail Blazer", "categories": ["shoes"],
     "tags": ["trail"], "price": 120.0, "available": True},
]


def ev(eid, etype, item, dt, value=None, user="u1"):
    return {"event_id": eid, "user_id": user, "item_id": item, "event_type": etype,
            "ts": T0 + dt, "value": value}


def latest_by_key(records):
    out = {}
    for r in records:
        out[r["key"]] = r["value"]
    return out


@pytest.fixture(scope="module")
def warmed_job(running_job):
    """Catalogue and attributes in, then a sentinel event whose profile proves they were applied."""
    running_job.produce("item_catalog", CATALOG, key_field="item_id")
    running_job.produce("user_attributes", [
        {"user_id": "u1", "ts": T0 - 5, "attributes": {
            "age": 30, "gender": "F", "email": "ann@example.com", "region": "EU"}}],
        key_field="user_id")

    def sentinel_has_interests(records):
        p = latest_by_key(records).get("warmup")
        return bool(p and "category:shoes" in p["interests"])

    # The catalogue (broadcast) and the events are separate sources read in parallel: a warm-up
    # event can overtake the catalogue and then moves no interests. Send one every few seconds
    # until one arrives after the catalogue (the first normally does).
    recs: list = []
    for n in range(20):
        running_job.produce("user_events", [ev(f"w{n}", "view", "i1", n, user="warmup")],
                            key_field="user_id")
        recs = running_job.consume("user_profiles", sentinel_has_interests, timeout_s=6)
        if sentinel_has_interests(recs):
            break
    assert sentinel_has_interests(recs), "the job produced no profile for the warm-up events"
    return running_job


def test_profile_and_dead_letters_are_exact(warmed_job):
    job = warmed_job
    job.produce("user_events", [
        ev("e1", "view", "i1", 0), ev("e2", "click", "i1", 1000), ev("e3", "purchase", "i1", 2000),
        ev("e4", "not_interested", "i2", 3000),
        ev("e1", "view", "i1", 0),  # duplicate event_id
        ev("e5", "rate", "i3", 4000, value=5),
    ], key_field="user_id")
    big = orjson.dumps({**ev("e9", "view", "i1", 0), "context": {"blob": "x" * 70_000}})
    job.produce_raw("user_events", [
        b"{not json", b"\xff\xfe\x00\x01", big,
        orjson.dumps(ev("e6", "teleport", "i1", 0)),
        orjson.dumps({k: v for k, v in ev("e7", "view", "i1", 0).items() if k != "event_id"}),
        orjson.dumps({**ev("e8", "view", "i1", 0), "ts": 5}),
    ])
    job.produce_raw("user_attributes", [
        orjson.dumps({"user_id": "u2", "ts": T0, "attributes": {"age": "thirty"}})])
    job.produce_raw("item_catalog", [orjson.dumps({"item_id": "i9", "ts": T0, "categories": [],
                                                   "tags": [], "available": True})])

    def u1_complete(records):
        p = latest_by_key(records).get("u1")
        return bool(p and sum(p["counters"]["all_time"].values()) == 5)

    profiles = job.consume("user_profiles", u1_complete, timeout_s=90)
    p = latest_by_key(profiles)["u1"]
    validator("user-profile")(p)
    assert p["attributes"] == {"age": 30, "gender": "F", "region": "EU"}  # email never stored
    assert p["counters"]["all_time"] == {"view": 1, "click": 1, "purchase": 1,
                                         "not_interested": 1, "rate": 1}
    assert p["counters"]["recent"] == p["counters"]["all_time"]
    assert p["interests"] == pytest.approx({
        "category:shoes": 18 / SQRT2, "tag:running": 13 / SQRT2, "tag:trail": 5 / SQRT2,
        "category:books": -8.0}, rel=1e-4)
    assert [(r["item_id"], r["event_type"], r["ts"]) for r in p["recent_items"]] == [
        ("i3", "rate", T0 + 4000), ("i1", "purchase", T0 + 2000)]
    assert p["not_interested"] == ["i2"]
    assert (p["first_seen"], p["last_seen"]) == (T0, T0 + 4000)
    assert p["segments"] == {"activity": "medium", "price_level": "mid", "lifecycle": "new",
                             "demographic": "age:25-34|gender:F"}
    assert p["variant"] in ("control", "content_heavy")

    expected = Counter({
        (job.topics.user_events, "malformed_json"): 1,
        (job.topics.user_events, "not_utf8"): 1,
        (job.topics.user_events, "oversize"): 1,
        (job.topics.user_events, "unknown_event_type"): 1,
        (job.topics.user_events, "missing_field"): 1,
        (job.topics.user_events, "absurd_timestamp"): 1,
        (job.topics.user_events, "duplicate_event"): 1,
        (job.topics.user_attributes, "invalid_field"): 1,
        (job.topics.item_catalog, "missing_field"): 1,
    })
    dlq = job.consume("events_dlq", lambda rs: len(rs) >= sum(expected.values()), timeout_s=60)
    for r in dlq:
        validator("events-dlq")(r["value"])
    assert Counter((r["value"]["source_topic"], r["value"]["reason"]) for r in dlq) == expected
    assert all(r["value"]["error"] for r in dlq)


def test_every_accepted_event_gets_a_recommendation(warmed_job):
    job = warmed_job
    job.produce("user_events", [ev(f"r{i}", "view", "i1", 10_000 + i, user="u3") for i in range(3)],
                key_field="user_id")
    recs = job.consume("recommendations",
                       lambda rs: {r["value"]["trigger_event_id"] for r in rs if r["value"]
                                   and r["value"]["user_id"] == "u3"} >= {"r0", "r1", "r2"},
                       timeout_s=60)
    mine = [r["value"] for r in recs if r["value"] and r["value"]["user_id"] == "u3"]
    assert sorted(m["trigger_event_id"] for m in mine) == ["r0", "r1", "r2"]
    for m in mine:
        validator("recommendation")(m)
