"""The edge fuzz (``tests/edge_fuzz.py``) through the user operator's engine, without Flink: every
record ends as what the oracle expects (processed, or one dead letter with the expected reason),
and none as an ``internal_error``. The integration test sends 5,000 of them through the job."""

from __future__ import annotations

from collections import Counter

import orjson

from state_schemas import records as rec
from state_schemas.config import load_config
from tests.edge_fuzz import KIND_OF, fuzz_stream, routing_key
from recsys.evaluation.simulate import keyed_batch
from udfs.user_side import UserSide

RECORD_KIND = {"user_events": rec.KIND_EVENT, "user_attributes": rec.KIND_ATTRIBUTES,
               "item_catalog": rec.KIND_CATALOG, "recommendation_requests": rec.KIND_REQUEST,
               "privacy_requests": rec.KIND_PRIVACY}


def test_every_fuzzed_record_ends_as_the_oracle_expects():
    cfg = load_config(overrides=[], environ={})
    stream = fuzz_stream(800, cfg)
    side = UserSide(cfg)
    letters, triggers, requests = [], Counter(), set()
    for start in range(0, len(stream), 50):
        chunk = stream[start:start + 50]
        keys, batch = keyed_batch(
            (None if r.topic == "item_catalog" else routing_key(r.topic, r.value),
             RECORD_KIND[r.topic], r.value or b"", 0) for r, _ in chunk)
        assert {r.topic for r, _ in chunk} <= set(KIND_OF)
        out = side.process(keys, [[None, None] for _ in keys], batch, 0, -(1 << 63))
        letters += [orjson.loads(v) for _, v in out.outputs.of(rec.USER_OUT_DLQ)]
        for _, v in out.outputs.of(rec.USER_OUT_RECOMMENDATIONS):
            if v is not None:
                m = orjson.loads(v)
                triggers[m["trigger_event_id"]] += 1
                requests.add(m["request_id"])
    # Every profile goes to keyed state, as at a checkpoint: its encoding must take what the
    # edge let through (a float ts once failed it, outside any record's exception boundary).
    assert side.process([], [], [], 0, -(1 << 63), checkpoint=True).state_updates
    topic_name = {f: getattr(cfg.topics, f) for f in RECORD_KIND}
    expected = Counter((topic_name[r.topic], o.reason) for r, o in stream if not o.valid)
    assert Counter((d["source_topic"], d["reason"]) for d in letters) == expected
    assert not any(d["reason"] == "internal_error" for d in letters)
    valid_events = {o.parsed["event_id"] for r, o in stream
                    if o.valid and r.topic == "user_events"}
    assert {t for t in triggers if t is not None} == valid_events
    assert max(triggers[t] for t in valid_events) == 1
    assert {o.parsed["request_id"] for r, o in stream
            if o.valid and r.topic == "recommendation_requests"} <= requests
