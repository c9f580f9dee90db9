"""Privacy on the real job: forget requests, PII never stored or emitted, pseudonymised ids, TTL."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.integration.conftest import start_running_job

T0 = 1_767_225_600_000
PII = ("ann@example.com", "+44 20 7946 0958", "Ann Example", "1 Secret Street")
CATALOG = [{"item_id": f"i{n}", "ts": T0 - 100, "title": f"Item {n}", "categories": [f"c{n % 2}"],
            "tags": [], "price": 5.0, "available": True} for n in range(4)]


def ev(eid, user, item, dt, etype="purchase"):
    return {"event_id": eid, "user_id": user, "item_id": item, "event_type": etype, "ts": T0 + dt,
            "value": None}


def read_to_end(job, topics: list[str]) -> list[tuple[str, bytes | None, bytes | None]]:
    """(topic, key, value) of every committed record of ``topics``, raw, up to their ends now."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=job.bootstrap, isolation_level="read_committed",
                             enable_auto_commit=False, group_id=None)
    out = []
    try:
        parts = [TopicPartition(t, 0) for t in topics]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        deadline = time.time() + 30
        while time.time() < deadline and any(consumer.position(p) < ends[p] for p in parts):
            for records in consumer.poll(timeout_ms=500).values():
                out += [(r.topic, r.key, r.value) for r in records]
    finally:
        consumer.close()
    return out


def all_output_bytes(job) -> list[bytes]:
    """Every key and value on every output topic, raw."""
    t = job.topics
    return [x or b"" for _, key, value in read_to_end(
        job, [t.user_profiles, t.recommendations, t.item_similarity, t.events_dlq])
        for x in (key, value)]


def values_of(job, topic_field: str, user: str) -> list[dict | None]:
    """The user's records on one topic, in order (None for a tombstone)."""
    return [orjson.loads(v) if v is not None else None
            for _, k, v in read_to_end(job, [getattr(job.topics, topic_field)])
            if k == user.encode()]


@pytest.fixture(scope="module")
def job(kafka_bootstrap, tmp_path_factory):
    running = start_running_job(kafka_bootstrap, tmp_path_factory.mktemp("privacy-job"))
    try:
        running.produce("item_catalog", CATALOG, key_field="item_id")
        yield running
    finally:
        running.stop()


def test_forget_deletes_profile_and_tombstones_outputs(job):
    job.produce("user_attributes", [{"user_id": "uF", "ts": T0, "attributes": {
        "age": 40, "email": PII[0], "phone": PII[1], "full_name": PII[2], "home_address": PII[3]}}],
        key_field="user_id")
    job.produce_raw("user_attributes", [  # rejected (age is not a number); must be redacted in the DLQ
        b'{"user_id": "uX", "ts": %d, "attributes": {"age": "old", "email": "%s"}}' % (T0, PII[0].encode())])
    job.produce("user_events", [ev("f1", "uF", "i1", 10), ev("f2", "uF", "i2", 20)], key_field="user_id")
    job.consume("user_profiles", lambda rs: any(
        r["key"] == "uF" and r["value"] and sum(r["value"]["counters"]["all_time"].values()) == 2
        for r in rs), timeout_s=90)
    job.consume("events_dlq", lambda rs: len(rs) >= 1, timeout_s=60)

    job.produce("privacy_requests", [{"user_id": "uF", "ts": T0 + 30, "action": "forget"}],
                key_field="user_id")

    def tombstoned(rs):
        return any(r["key"] == "uF" and r["value"] is None for r in rs)

    assert tombstoned(job.consume("user_profiles", tombstoned, timeout_s=60))
    assert tombstoned(job.consume("recommendations", tombstoned, timeout_s=60))

    # The profile is gone, and stays gone: a new event, a replay of an old one and a refresh
    # request become forgotten_user dead letters keyed by the user, without their payload.
    job.produce("user_events", [ev("f3", "uF", "i3", 40, "view"), ev("f1", "uF", "i1", 10)],
                key_field="user_id")
    job.produce("recommendation_requests", [{"request_id": "rF", "user_id": "uF", "ts": T0 + 50}],
                key_field="user_id")

    def refused(rs):
        return sum(r["key"] == "uF" and r["value"]["reason"] == "forgotten_user" for r in rs) == 3

    letters = job.consume("events_dlq", refused, timeout_s=60)
    assert refused(letters)
    assert all(r["value"]["raw"] == "" for r in letters if r["value"]["reason"] == "forgotten_user")
    # Nothing but tombstones follows the forget on the compacted topics (the sinks commit at
    # the checkpoint that also carried the dead letters; give it a moment).
    time.sleep(2)
    for topic in ("user_profiles", "recommendations"):
        values = values_of(job, topic, "uF")
        assert values and values[-1] is None, topic
        after = values[values.index(None):]
        assert all(v is None for v in after), topic

    # Once compacted, the topics hold nothing of the user but the tombstone. The job creates
    # them with max.compaction.lag.ms = privacy.compaction_max_lag_ms (a day); here a second,
    # so the broker's cleaner gets to them within the test.
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    compacted = [job.topics.user_profiles, job.topics.recommendations]
    admin = KafkaAdminClient(bootstrap_servers=job.bootstrap)
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t, configs={
        "max.compaction.lag.ms": "1000", "segment.ms": "1000"}) for t in compacted])
    admin.close()

    def only_tombstones_left() -> bool:
        # another user's activity appends to both topics, which rolls their segments
        job.produce("user_events", [ev(f"roll-{time.monotonic_ns()}", "uRoll", "i0", 60,
                                       "view")], key_field="user_id")
        time.sleep(2)
        return all(values_of(job, topic, "uF") == [None]
                   for topic in ("user_profiles", "recommendations"))

    deadline = time.monotonic() + 120
    while not only_tombstones_left():
        assert time.monotonic() < deadline, "the forgotten user's values were not compacted away"

    # No personal data anywhere in the job's output, including the dead letters.
    everything = b"\n".join(all_output_bytes(job))
    for secret in PII:
        assert secret.encode() not in everything, secret


def test_pseudonymised_ids_and_inactive_user_ttl(kafka_bootstrap, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RECSYS_PSEUDONYM_KEY", "k" * 32)  # inherited by the job process
    job = start_running_job(kafka_bootstrap, tmp_path_factory.mktemp("pseudonym-job"), [
        "privacy.pseudonymize_user_ids=true", "profile.inactive_user_ttl_ms=3000"])
    try:
        job.produce("item_catalog", CATALOG, key_field="item_id")
        job.produce("user_events", [ev("s1", "alice-real-id", "i1", 0)], key_field="user_id")
        profiles = job.consume("user_profiles", lambda rs: len(rs) >= 1, timeout_s=90)
        pseudonym = profiles[0]["key"]
        assert pseudonym != "alice-real-id" and len(pseudonym) == 32
        assert profiles[0]["value"]["user_id"] == pseudonym
        recs = job.consume("recommendations", lambda rs: len(rs) >= 1, timeout_s=60)
        assert recs[0]["key"] == pseudonym
        # Inactive beyond the TTL: the profile state expires, with tombstones, and the next
        # event starts afresh.
        def expired(rs):
            return any(r["key"] == pseudonym and r["value"] is None for r in rs)

        assert expired(job.consume("user_profiles", expired, timeout_s=30))
        assert expired(job.consume("recommendations", expired, timeout_s=30))
        job.produce("user_events", [ev("s2", "alice-real-id", "i2", 10, "view")], key_field="user_id")

        def restarted(rs):
            latest = [r["value"] for r in rs if r["key"] == pseudonym]
            return bool(latest) and latest[-1] is not None \
                and latest[-1]["counters"]["all_time"] == {"view": 1}

        assert restarted(job.consume("user_profiles", restarted, timeout_s=60))
        assert b"alice-real-id" not in b"\n".join(all_output_bytes(job))
    finally:
        job.stop()
