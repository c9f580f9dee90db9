"""Item-item similarity and recommendations from the real job, on scripted streams.

Similarities are checked exactly (cosine of weighted co-occurrence, see udfs/profile.pair_updates
for the counting rule). Phases are separated by waiting for the job's output, because the
similarity operator refreshes a row's scores only when the row itself receives a pair update.
"""

from __future__ import annotations

import math

import pytest

from state_schemas.config import EngineConfig
from state_schemas import validator
from tests.integration.conftest import start_running_job
from udfs.ab import assign_variant

T0 = 1_767_225_600_000
ITEMS = {
    "a": ("Alpha Trail Shoes", ["shoes"], ["trail"]),
    "b": ("Bravo Socks", ["socks"], ["running"]),
    "c": ("Charlie Cap", ["hats"], ["sun"]),
    "d": ("Delta Jacket", ["jackets"], ["rain"]),
}


@pytest.fixture(scope="module")
def job(kafka_bootstrap, tmp_path_factory):
    running = start_running_job(kafka_bootstrap, tmp_path_factory.mktemp("recs-job"))
    try:
        running.seed([{"item_id": i, "ts": T0 - 100, "title": t, "categories": c, "tags": g,
                       "price": 20.0, "available": True} for i, (t, c, g) in ITEMS.items()],
                     [{"user_id": u, "ts": T0 - 50, "attributes": {"age": 30, "gender": "F"}}
                      for u in ("uA", "uCold")])
        yield running
    finally:
        running.stop()


def ev(eid, user, etype, item, dt):
    return {"event_id": eid, "user_id": user, "item_id": item, "event_type": etype, "ts": T0 + dt,
            "value": None}


def latest_neighbors(records):
    out = {}
    for r in records:
        out[r["key"]] = {n["item_id"]: n["score"] for n in r["value"]["neighbors"]}
    return out


def recs_of(records, user):
    return [r["value"] for r in records if r["value"] and r["value"]["user_id"] == user]


def test_similarities_are_exact_and_recommendations_follow(job):
    # Phase 1: one user buys a and b -> N(a) = N(b) = C(a,b) = 10 -> cosine 1.
    job.produce("user_events", [ev("p1", "uA", "purchase", "a", 0), ev("p2", "uA", "purchase", "b", 10)],
                key_field="user_id")
    expected1 = {"a": {"b": 1.0}, "b": {"a": 1.0}}
    sims = job.consume("item_similarity", lambda rs: latest_neighbors(rs) == expected1, timeout_s=90)
    assert latest_neighbors(sims) == expected1
    for r in sims:
        validator("item-similarity")(r["value"])

    # Phase 2: another user buys a (N(a) = 20), then views c (N(c) = 1, C(a,c) = min(1, 10)).
    job.produce("user_events", [ev("p3", "uB", "purchase", "a", 20), ev("p4", "uB", "view", "c", 30)],
                key_field="user_id")
    cos_ab = 10 / math.sqrt(20 * 10)
    cos_ac = 1 / math.sqrt(20 * 1)

    def phase2(rs):
        n = latest_neighbors(rs)
        return "c" in n and n.get("a", {}).get("c") is not None

    sims = job.consume("item_similarity", phase2, timeout_s=60)
    n = latest_neighbors(sims)
    assert n["a"] == pytest.approx({"b": cos_ab, "c": cos_ac}, rel=1e-5)
    assert n["c"] == pytest.approx({"a": cos_ac}, rel=1e-5)
    assert n["b"] == {"a": 1.0}  # not touched since phase 1: scores refresh on the row's updates
    assert list(n["a"]) == ["b", "c"]  # ordered by score

    # A new user buys a: the collaborative source ranks a's neighbours, with the reason.
    job.produce("user_events", [ev("p5", "uE", "purchase", "a", 40)], key_field="user_id")
    recs = job.consume("recommendations", lambda rs: bool(recs_of(rs, "uE")), timeout_s=60)
    rec = recs_of(recs, "uE")[-1]
    validator("recommendation")(rec)
    assert rec["trigger_event_id"] == "p5" and rec["request_id"] is None
    ids = [i["item_id"] for i in rec["items"]]
    assert "a" not in ids  # already purchased
    assert ids[0] == "b"
    assert "because you purchased Alpha Trail Shoes" in rec["items"][0]["reasons"]
    cfg = EngineConfig()
    assert rec["variant"] == assign_variant("uE", cfg.recommend.experiment_salt, cfg.recommend.variants)


def test_request_and_cold_start_user(job):
    job.produce("recommendation_requests", [
        {"request_id": "req-cold", "user_id": "uCold", "ts": T0 + 100, "k": 3},
        {"request_id": "req-nobody", "user_id": "uNobody", "ts": T0 + 100, "k": 3}],
        key_field="user_id")

    def answered(rs):
        ids = {r["value"]["request_id"] for r in rs if r["value"]}
        return {"req-cold", "req-nobody"} <= ids

    recs = job.consume("recommendations", answered, timeout_s=60)
    by_request = {r["value"]["request_id"]: r["value"] for r in recs if r["value"]}
    cold = by_request["req-cold"]
    assert cold["trigger_event_id"] is None and cold["user_id"] == "uCold"
    assert 0 < len(cold["items"]) <= 3
    reasons = {reason for item in cold["items"] for reason in item["reasons"]}
    # uA (same segment: age 25-34, gender F) bought a and b.
    assert "popular with users like you" in reasons
    nobody = by_request["req-nobody"]
    assert nobody["items"], "a user with no profile at all still gets trending items"
    assert all("trending now" in i["reasons"] for i in nobody["items"])


def test_not_interested_item_never_comes_back(job):
    job.produce("user_events", [ev("n1", "uN", "not_interested", "b", 50),
                                ev("n2", "uN", "purchase", "a", 60),
                                ev("n3", "uN", "view", "c", 70),
                                ev("n4", "uN", "view", "d", 80)], key_field="user_id")
    recs = job.consume("recommendations", lambda rs: len(recs_of(rs, "uN")) >= 4, timeout_s=60)
    mine = recs_of(recs, "uN")
    assert sorted(r["trigger_event_id"] for r in mine) == ["n1", "n2", "n3", "n4"]
    for r in mine:
        assert "b" not in [i["item_id"] for i in r["items"]]


def test_frozen_item_model_stops_at_the_configured_event_time(kafka_bootstrap, tmp_path):
    """``similarity.freeze_item_model_at_ms`` (protocol B's frozen baseline): events before it
    build co-occurrence and popularity; events at or after it update profiles only."""
    freeze_at = T0 + 1_000
    job = start_running_job(kafka_bootstrap, tmp_path,
                            [f"similarity.freeze_item_model_at_ms={freeze_at}"])
    try:
        job.produce("item_catalog", [
            {"item_id": i, "ts": T0 - 100, "title": t, "categories": c, "tags": g,
             "price": 20.0, "available": True} for i, (t, c, g) in ITEMS.items()],
            key_field="item_id")
        job.produce("user_events", [ev("f1", "uF", "purchase", "a", 0),
                                    ev("f2", "uF", "purchase", "b", 10)], key_field="user_id")
        before = {"a": {"b": 1.0}, "b": {"a": 1.0}}
        sims = job.consume("item_similarity", lambda rs: latest_neighbors(rs) == before,
                           timeout_s=120)
        assert latest_neighbors(sims) == before
        # After the freeze: c and d are bought together by two users, many times over.
        late = [ev(f"g{n}", u, "purchase", item, 2_000 + 10 * n)
                for n, (u, item) in enumerate([("uG", "c"), ("uG", "d"), ("uH", "c"),
                                               ("uH", "d"), ("uF", "c")])]
        job.produce("user_events", late, key_field="user_id")
        recs = job.consume("recommendations",
                           lambda rs: any(r["value"] and r["value"]["trigger_event_id"] == "g4"
                                          for r in rs), timeout_s=60)
        by_event = {r["value"]["trigger_event_id"]: r["value"] for r in recs if r["value"]}
        assert "g4" in by_event, "the job did not answer the last event"
        # The profiles did move: uF's c purchase is consumed and not recommended back.
        assert "c" not in [i["item_id"] for i in by_event["g4"]["items"]]
        # ... but the item model did not: d, bought twice after c (a neighbour of c and
        # popular when live), was never counted, so uF is not offered it.
        assert "d" not in [i["item_id"] for i in by_event["g4"]["items"]], by_event["g4"]
        # Several flush + emit + checkpoint intervals later there is still no c/d neighbour row.
        sims = job.consume("item_similarity", None, timeout_s=4)
        assert latest_neighbors(sims) == before
        job.check_alive()
    finally:
        job.stop()
