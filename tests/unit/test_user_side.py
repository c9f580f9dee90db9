"""The user operator's engine on crafted records: no record's content can fail the task.

Each case here crashed, or grew state without bound, in the per-record engine of the previous
release (issue 13): huge ratings (infinite weights), deep nesting (the parser, the DLQ's
re-serialisation), attribute floods (a profile snapshot over the broker's message limit). Each
must now end as a dead letter with its own reason, and the records around it must be processed.
"""

from __future__ import annotations

import orjson
import pytest

import udfs.profile as profile_mod
from state_schemas import records as rec
from state_schemas.config import load_config
from recsys.evaluation.simulate import keyed_batch
from udfs.user_side import Record, UserSide

T0 = 1_767_225_600_000


def cfg(*overrides: str):
    return load_config(overrides=list(overrides), environ={})


def event(eid: str, user: str = "u1", item: str = "i1", etype: str = "view", value=None,
          **extra) -> dict:
    return {"event_id": eid, "user_id": user, "item_id": item, "event_type": etype,
            "ts": T0, "value": value, **extra}


def run(side: UserSide, records: list[tuple[int, str, bytes]]):
    """One batch of (kind, user key, payload): dead-letter reasons, recommendations, dead
    letters, metric deltas."""
    keys, batch = keyed_batch((k, kind, payload, T0) for kind, k, payload in records)
    out = side.process(keys, [[None, None] for _ in keys], batch, T0, -(1 << 63))
    letters = [orjson.loads(v) for _, v in out.outputs.of(rec.USER_OUT_DLQ)]
    recs = [orjson.loads(v) for _, v in out.outputs.of(rec.USER_OUT_RECOMMENDATIONS)]
    metrics = {(path, name): v for path, name, _, v in out.metrics}
    return [d["reason"] for d in letters], recs, letters, metrics


def side(*overrides: str) -> UserSide:
    return UserSide(cfg(*overrides), clock=lambda: T0 / 1000)


def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth):
        value = {"x": value}
    return value


def test_a_record_the_engine_fails_on_becomes_an_internal_error_dead_letter(monkeypatch):
    original = profile_mod.ProfileStep.apply_event

    def failing(self, u, ev, item):
        if ev["event_id"] == "boom":
            raise RuntimeError("a defect")
        return original(self, u, ev, item)

    monkeypatch.setattr(profile_mod.ProfileStep, "apply_event", failing)
    s = side()
    reasons, recs, letters, metrics = run(s, [
        (rec.KIND_EVENT, "u1", orjson.dumps(event("ok-1"))),
        (rec.KIND_EVENT, "u2", orjson.dumps(event("boom", user="u2"))),
        (rec.KIND_EVENT, "u1", orjson.dumps(event("ok-2", item="i2")))])
    assert reasons == ["internal_error"]
    assert letters[0]["source_topic"] == s.cfg.topics.user_events
    assert "RuntimeError" in letters[0]["error"] and "a defect" not in letters[0]["error"]
    assert [r["trigger_event_id"] for r in recs] == ["ok-1", "ok-2"]
    assert metrics[("kind=event", "internal_errors")] == 1


@pytest.mark.parametrize("value", [1e308, -1e308, 1e7, -2e6])
def test_ratings_beyond_the_bound_are_dead_letters_and_nothing_becomes_infinite(value):
    s = side()
    reasons, recs, _, _ = run(s, [
        (rec.KIND_EVENT, "u1", orjson.dumps(event("r1", etype="rate", value=value))),
        (rec.KIND_EVENT, "u1", orjson.dumps(event("r2", etype="rate", value=value, item="i2"))),
        (rec.KIND_EVENT, "u1", orjson.dumps(event("r3", etype="rate", value=5.0, item="i3")))])
    assert reasons == ["out_of_range", "out_of_range"]
    assert [r["trigger_event_id"] for r in recs] == ["r3"]
    u = s._profile(s.cache["u1"], "u1")
    assert all(abs(w) < 1e30 for w in u.interests.values())


def test_a_catalogue_price_beyond_the_bound_is_a_dead_letter():
    s = side()
    item = {"item_id": "i1", "ts": T0, "title": "T", "categories": [], "tags": [],
            "price": 1e300, "available": True}
    out = s.process([], [], [Record(rec.KIND_CATALOG, -1, T0, 0, orjson.dumps(item))], T0,
                    -(1 << 63))
    assert [orjson.loads(v)["reason"] for _, v in out.outputs.of(rec.USER_OUT_DLQ)] == \
        ["out_of_range"]


@pytest.mark.parametrize("depth", [9, 60, 253, 600])
def test_deep_nesting_in_context_or_attributes_is_a_dead_letter(depth):
    s = side()
    deep_event = orjson.dumps(event("d1", context=nested(depth))) if depth < 250 else (
        b'{"event_id":"d1","user_id":"u1","item_id":"i1","event_type":"view","ts":%d,'
        b'"context":' % T0 + b'{"x":' * depth + b'1' + b'}' * depth + b'}')
    deep_attrs = (b'{"user_id":"u1","ts":%d,"attributes":{"a":' % T0 + b'[' * depth + b'1'
                  + b']' * depth + b'}}')
    reasons, recs, _, _ = run(s, [
        (rec.KIND_EVENT, "u1", deep_event),
        (rec.KIND_ATTRIBUTES, "u1", deep_attrs),
        (rec.KIND_EVENT, "u1", deep_event),  # a duplicate of a deep record: re-serialised
        (rec.KIND_EVENT, "u1", orjson.dumps(event("ok")))])
    # orjson's own limit (~255 levels) turns the deepest into malformed JSON
    assert set(reasons) <= {"too_deep", "malformed_json"} and len(reasons) == 3
    assert [r["trigger_event_id"] for r in recs] == ["ok"]


def test_nesting_within_the_bound_is_accepted():
    s = side()
    reasons, recs, _, _ = run(s, [(rec.KIND_EVENT, "u1", orjson.dumps(event("d1",
                                                                         context=nested(6))))])
    assert reasons == [] and len(recs) == 1


def test_attribute_floods_are_refused_and_the_profile_stays_small():
    s = side()
    records = []
    for n in range(20):  # 20 records of 60 new attributes each: 1,200 keys if merged
        attrs = {f"k{n}_{i}": "v" * 1000 for i in range(60)}
        records.append((rec.KIND_ATTRIBUTES, "u1", orjson.dumps(
            {"user_id": "u1", "ts": T0 + n, "attributes": attrs})))
    records.append((rec.KIND_ATTRIBUTES, "u1", orjson.dumps(
        {"user_id": "u1", "ts": T0 + 99, "attributes": {"x" * 65: "long name"}})))
    records.append((rec.KIND_ATTRIBUTES, "u1", orjson.dumps(
        {"user_id": "u1", "ts": T0 + 99, "attributes": {"bio": "y" * 1025}})))
    reasons, _, _, _ = run(s, records)
    assert reasons == ["attributes_limit"] * 21
    u = s._profile(s.cache["u1"], "u1")
    assert len(u.attributes) <= s.cfg.validation.max_attributes
    snapshot = orjson.dumps(s.step.snapshot(u))
    assert len(snapshot) < 100_000


def test_attribute_dead_letters_carry_no_personal_data():
    s = side()
    attrs = {f"k{i}": i for i in range(70)}
    attrs["email"] = "someone@example.com"
    reasons, _, letters, _ = run(s, [(rec.KIND_ATTRIBUTES, "u1", orjson.dumps(
        {"user_id": "u1", "ts": T0, "attributes": attrs}))])
    assert reasons == ["attributes_limit"]
    assert "someone@example.com" not in letters[0]["raw"]


def test_a_snapshot_larger_than_a_kafka_message_is_a_dead_letter_not_a_failing_sink():
    s = side("kafka.max_message_bytes=300")
    reasons, recs, letters, _ = run(s, [(rec.KIND_EVENT, "u1", orjson.dumps(event("e1")))])
    assert reasons == ["snapshot_too_large"]
    assert letters[0]["source_topic"] == s.cfg.topics.user_profiles and letters[0]["raw"] == ""
    assert len(recs) == 1  # the event itself was processed


def test_ab_totals_survive_a_failure_without_counting_the_replay_twice():
    """Totals restored from the checkpoint, then the records after it replayed: the gauges end
    where an uninterrupted run ends (counters in Flink would count the replay again)."""
    catalogue = [Record(rec.KIND_CATALOG, -1, T0, 0, orjson.dumps(
        {"item_id": f"i{n}", "ts": T0, "title": "t", "categories": ["c"], "tags": [],
         "price": 1.0, "available": True})) for n in range(20)]
    # neighbours i(n+1), i(n+2) of every i(n): a view of i(n) recommends i(n+1), clicked next
    catalogue += [Record(rec.KIND_MODEL_UPDATE, -1, T0, 0, payload)
                  for payload in rec.encode_model_updates(
                      [(f"i{n}", [f"i{(n + 1) % 20}", f"i{(n + 2) % 20}"], [0.9, 0.5],
                        rec.SOURCE_ITEM_CF) for n in range(20)], None, 1 << 20)]

    def events(n0: int) -> list[tuple[str, bytes]]:
        return [(f"u{n % 3}", orjson.dumps(event(
            f"e{n}", user=f"u{n % 3}", item=f"i{(n // 6) * 2 + (n % 6 >= 3)}",
            etype="click" if n % 6 >= 3 else "view"))) for n in range(n0, n0 + 12)]

    class Task:
        """A subtask with keyed state and shared state as Flink checkpoints them."""

        def __init__(self, checkpoint: tuple[dict, dict] | None = None) -> None:
            self.side = side()
            self.state, shared = ({}, {}) if checkpoint is None else (
                {k: list(v) for k, v in checkpoint[0].items()}, dict(checkpoint[1]))
            self.shared = shared
            self.side.restore(shared, {})
            self.ab: dict = {}
            self.now = T0  # processing time: a second per batch (lists rebuild in between)
            self.run([], broadcast=catalogue)

        def run(self, records, checkpoint=False, broadcast=()) -> None:
            keys = list(dict.fromkeys(k for k, _ in records))
            self.now += 1000
            out = self.side.process(
                keys, [self.state.get(k, [None, None]) for k in keys],
                list(broadcast) + [Record(rec.KIND_EVENT, keys.index(k), T0, 0, p)
                                   for k, p in records], self.now, -(1 << 63),
                checkpoint=checkpoint)
            for key, which, value in out.state_updates:
                user = keys[key] if isinstance(key, int) else key
                self.state.setdefault(user, [None, None])[which] = value
            self.shared.update(out.shared)
            self.ab.update({(path, name): v for path, name, kind, v in out.metrics
                            if kind == 1 and name in ("impressions", "feedback_events")})

    straight = Task()
    straight.run(events(0))
    straight.run(events(12))
    clicks = {path: v for (path, name), v in straight.ab.items() if name == "feedback_events"}
    assert sum(clicks.values()) > 0  # the stream does produce feedback

    failing = Task()
    failing.run(events(0), checkpoint=True)
    checkpoint = ({k: list(v) for k, v in failing.state.items()}, dict(failing.shared))
    failing.run(events(12))  # processed; the task fails before the next checkpoint
    assert failing.ab == straight.ab
    restored = Task(checkpoint)
    restored.run(events(12))  # the sources replay what came after the checkpoint
    assert restored.ab == straight.ab


def test_a_profile_the_codec_refuses_is_dropped_with_a_dead_letter_not_a_failed_task():
    s = side()
    run(s, [(rec.KIND_EVENT, "u1", orjson.dumps(event("e1"))),
            (rec.KIND_EVENT, "u2", orjson.dumps(event("e2", user="u2")))])
    # A defect upstream let a float into an integer field (the i64 codec refuses it).
    s.cache["u1"].profile.first_seen = T0 + 0.5
    s.cache["u1"].profile_dirty = True
    keys, batch = keyed_batch([])
    out = s.process(keys, [], batch, T0, -(1 << 63), checkpoint=True)
    letters = [orjson.loads(v) for _, v in out.outputs.of(rec.USER_OUT_DLQ)]
    assert [(d["reason"], d["source_topic"]) for d in letters] == [
        ("internal_error", "internal:user_state")]
    assert [k for k, _ in out.outputs.of(rec.USER_OUT_DLQ)] == ["u1"]  # keyed by the user
    assert "u1" not in s.cache  # the next record reloads the last good state
    assert {k for k, _, _ in out.state_updates} == {"u2"}  # the other user is written
    metrics = {(path, name): v for path, name, _, v in out.metrics}
    assert metrics[("kind=state_write", "internal_errors")] == 1
