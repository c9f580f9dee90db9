"""recsys.evaluation.simulate (the in-process engine) and the evaluation's protocol helpers."""

from __future__ import annotations

import math

import pytest

from state_schemas.config import load_config
from recsys.evaluation import prequential
from recsys.evaluation.simulate import (
    EngineSimulator, request_records, run_protocol_a, run_protocol_b)

T0 = 1_767_225_600_000
ITEMS = [{"item_id": i, "ts": T0 - 100, "title": t, "categories": c, "tags": [], "price": 20.0,
          "available": True}
         for i, t, c in (("a", "Alpha", ["shoes"]), ("b", "Bravo", ["socks"]),
                         ("c", "Charlie", ["hats"]), ("d", "Delta", ["jackets"]))]


def ev(eid, user, etype, item, dt, value=None):
    return {"event_id": eid, "user_id": user, "item_id": item, "event_type": etype,
            "ts": T0 + dt, "value": value}


def cfg(*overrides):
    return load_config(overrides=list(overrides), environ={})


def test_exact_cosine_and_cf_like_the_job():
    """The scenario of tests/integration/test_job_recommendations.py, in process."""
    sim = EngineSimulator(cfg(), ms_per_event=1.0, wall_now_ms=T0)
    sim.add_items(ITEMS)
    sim.process_event(ev("p1", "uA", "purchase", "a", 0))
    sim.process_event(ev("p2", "uA", "purchase", "b", 10))
    sim.drain()
    assert sim.neighbors("a") == [("b", pytest.approx(1.0))]
    assert sim.neighbors("b") == [("a", pytest.approx(1.0))]
    assert sim.neighbors("c") == []
    sim.process_event(ev("p3", "uB", "purchase", "a", 20))
    sim.process_event(ev("p4", "uB", "view", "c", 30))
    sim.drain()
    assert dict(sim.neighbors("a")) == pytest.approx(
        {"b": 10 / math.sqrt(20 * 10), "c": 1 / math.sqrt(20)})
    rec = sim.process_event(ev("p5", "uE", "purchase", "a", 40))
    assert rec.items[0] == "b" and rec.trigger_event_id == "p5"
    assert "because you purchased Alpha" in rec.reasons[0]
    assert "a" not in rec.items


def test_validation_duplicates_and_dead_letters():
    sim = EngineSimulator(cfg(), wall_now_ms=T0)
    sim.add_items(ITEMS)
    assert sim.process_event(ev("x1", "u", "view", "a", 0)) is not None
    assert sim.process_event(ev("x1", "u", "view", "a", 5)) is None      # duplicate
    assert sim.process_event({"event_id": "x2", "user_id": "u", "item_id": "a",
                              "event_type": "rate", "ts": T0}) is None   # rate without value
    old = ev("x3", "u", "view", "a", 0)
    old["ts"] = 880_000_000_000                                         # 1997: absurd by default
    assert sim.process_event(old) is None
    assert sim.stats.duplicates == 1 and sim.stats.dead_letters == 2
    assert sim.stats.dlq_reasons == {"invalid_field": 1, "absurd_timestamp": 1}


def test_flushes_follow_the_virtual_clock():
    c = cfg("similarity.flush_interval_ms=100", "similarity.emit_min_interval_ms=1000")
    sim = EngineSimulator(c, ms_per_event=10.0, wall_now_ms=T0)
    sim.add_items(ITEMS)
    for n in range(4):  # the first pair updates at 20 ms: flushed 100 ms later
        sim.process_event(ev(f"e{n}", f"u{n}", "purchase", "a" if n % 2 else "b", n))
        sim.process_event(ev(f"f{n}", f"u{n}", "purchase", "c", n + 1))
    assert sim.stats.flushes == 0 and all(not sim.neighbors(i) for i in "abcd")
    for n in range(4):  # 80 ms more: the item operator's batch delay has passed
        sim.process_event(ev(f"g{n}", "u9", "view", "d", 99 + n))
    assert sim.stats.flushes == 1
    assert {i for i in "abcd" if sim.neighbors(i)} == {"a", "b", "c"}
    sim.drain()
    assert sim.stats.flushes >= 1 and {i for i in "abcd" if sim.neighbors(i)} == {"a", "b", "c"}


def test_frozen_item_model_stops_learning():
    sim = EngineSimulator(cfg(), wall_now_ms=T0)
    sim.add_items(ITEMS)
    sim.process_event(ev("p1", "uA", "purchase", "a", 0))
    sim.freeze_item_model()
    occurrence_a = sim.occurrence("a")
    sim.process_event(ev("p2", "uA", "purchase", "b", 10))
    sim.drain()
    assert not sim.neighbors("a") and not sim.neighbors("b")
    assert occurrence_a > 0 and sim.occurrence("a") == occurrence_a and sim.occurrence("b") == 0
    assert sim.profile("uA").recent_ids == ["b", "a"]


def test_frozen_by_configuration_like_the_job():
    """similarity.freeze_item_model_at_ms: the job's own switch, in the simulator too."""
    sim = EngineSimulator(cfg(f"similarity.freeze_item_model_at_ms={T0 + 5}"), wall_now_ms=T0)
    sim.add_items(ITEMS)
    sim.process_event(ev("p1", "uA", "purchase", "a", 0))
    sim.process_event(ev("p2", "uA", "purchase", "b", 10))  # at/after the freeze
    sim.drain()
    assert not sim.neighbors("a") and sim.occurrence("b") == 0 and sim.occurrence("a") > 0


def test_protocol_runners():
    events = [ev(f"e{n}", f"u{n % 3}", "purchase", "abcd"[n % 4], n * 10) for n in range(12)]
    train, test = events[:9], {"u0": {"d"}, "u1": {"a"}, "u2": {"b"}}
    res = run_protocol_a(cfg(), ITEMS, [], train, test, k=3)
    assert res.metrics["users"] == 3 and set(res.recommendations) == {"u0", "u1", "u2"}
    assert all(len(v) <= 3 for v in res.recommendations.values())
    b = run_protocol_b(cfg(), ITEMS, [], events, k=3)
    assert len(b.cases) == 12 - 3                      # every user's first event has no list
    reqs = request_records(train, ["u0", "nobody"], k=5)
    assert reqs[0]["ts"] == max(e["ts"] for e in train if e["user_id"] == "u0")
    assert reqs[1]["ts"] == max(e["ts"] for e in train) and reqs[1]["k"] == 5


def test_prequential_cases_use_the_previous_events_list():
    events = [ev("1", "u", "rate", "a", 0, 4.0), ev("2", "v", "rate", "b", 1, 4.0),
              ev("3", "u", "rate", "b", 2, 4.0), ev("4", "u", "rate", "c", 3, 4.0)]
    lists = {"1": ("tuned", ["x", "b"]), "3": ("tuned", ["c"]), "2": ("tuned", ["a"])}
    cases = prequential.cases(events, lists, 10)
    assert cases == [(T0 + 2, "u", "tuned", 2), (T0 + 3, "u", "tuned", 1)]
    assert prequential.cases(events, lists, 10, since_ts=T0 + 3) == cases[1:]
    assert prequential.cases(events, lists, 10, users={"v"}) == []
    assert prequential.cases(events, lists, 1) == [(T0 + 2, "u", "tuned", 0),
                                                   (T0 + 3, "u", "tuned", 1)]
    s = prequential.summarise(cases, T0, T0 + 3, 10)
    assert s["cases"] == 2 and s["hit_rate@10"] == 1.0 and s["mrr@10"] == pytest.approx(0.75)
    assert s["second_half_cases"] == 1 and s["per_variant"]["tuned"]["cases"] == 2


def test_similarity_rows_expire_from_keyed_state_like_flinks_state_ttl():
    def stream(ttl_overrides):
        sim = EngineSimulator(cfg(*ttl_overrides, "job.checkpoint_interval_ms=1000"),
                              ms_per_event=100.0, wall_now_ms=T0, recommend_on_events=False)
        sim.process_event(ev("p1", "uA", "purchase", "a", 0))
        sim.process_event(ev("p2", "uA", "purchase", "b", 10))
        seen_ab = False
        for n in range(50):  # 10 s of virtual time; new users keep the rows of c and d busy
            sim.process_event(ev(f"c{n}", f"u{n}", "purchase", "c", 20 + 2 * n))
            sim.process_event(ev(f"d{n}", f"u{n}", "purchase", "d", 21 + 2 * n))
            seen_ab |= {"a", "b"} <= set(sim.item_state)
        return sim, seen_ab

    sim, seen_ab = stream(["similarity.row_ttl_ms=5000"])
    assert seen_ab  # rows a and b were in keyed state ...
    assert "a" not in sim.item_state and "b" not in sim.item_state  # ... and expired
    assert {"c", "d"} <= set(sim.item_state)  # written again and again: kept
    sim, _ = stream([])
    assert {"a", "b", "c", "d"} <= set(sim.item_state)  # without a TTL nothing expires
