"""Thousands of records of 40 hostile classes, interleaved with valid ones, on every input topic.

The job must keep running, put every bad record in the DLQ with a reason, and process every valid
one: valid + dead letters = sent.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from tests.hostile_corpus import build_corpus, class_names
from tests.integration.conftest import start_running_job

pytestmark = pytest.mark.slow
MAX_MESSAGE = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def job(kafka_bootstrap, tmp_path_factory):
    running = start_running_job(kafka_bootstrap, tmp_path_factory.mktemp("hostile-job"))
    try:
        yield running
    finally:
        running.stop()


def allow_large_records(bootstrap: str, topic: str) -> None:
    """Brokers cap records at 1 MB by default; the corpus has larger ones to test our own cap."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                            configs={"max.message.bytes": str(MAX_MESSAGE)})])
        # The broker applies topic configs asynchronously: wait until it reports the new limit.
        deadline = time.monotonic() + 30
        while str(MAX_MESSAGE) not in repr(admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)])):
            assert time.monotonic() < deadline, "max.message.bytes was not applied"
            time.sleep(0.5)
        time.sleep(1)  # describe answers from the controller's view; give the log a moment
    finally:
        admin.close()


def test_corpus_has_at_least_twenty_classes():
    assert len(class_names()) >= 20


def test_hostile_corpus_valid_plus_dlq_equals_sent(job):
    corpus = build_corpus()
    # Duplicates: re-send 30 valid events byte for byte; exactly one of each pair is a dead letter.
    valid_events = [r for r in corpus if r.event_id and r.klass == "valid"][:30]
    allow_large_records(job.bootstrap, job.topics.user_events)
    producer = KafkaProducer(bootstrap_servers=job.bootstrap, acks="all", max_request_size=MAX_MESSAGE)
    futures = [producer.send(getattr(job.topics, r.topic_field), key=b"k", value=r.value)
               for r in corpus + valid_events]
    producer.flush()
    for f in futures:
        f.get(timeout=60)  # every record really is in Kafka (a rejected send would fail here)
    producer.close()

    bad = Counter(getattr(job.topics, r.topic_field) for r in corpus if not r.expect_valid)
    bad[job.topics.user_events] += len(valid_events)
    total_bad = sum(bad.values())
    dlq = job.consume("events_dlq", lambda rs: len(rs) >= total_bad, timeout_s=180)
    assert Counter(r["value"]["source_topic"] for r in dlq) == bad
    assert all(r["value"]["reason"] and r["value"]["error"] for r in dlq)
    reasons = Counter(r["value"]["reason"] for r in dlq)
    assert reasons["duplicate_event"] == len(valid_events)
    for expected in ("malformed_json", "not_utf8", "oversize", "invalid_field", "missing_field",
                     "unknown_event_type", "empty_key", "absurd_timestamp", "not_object",
                     "empty_record"):
        assert reasons[expected] > 0, expected

    event_ids = {r.event_id for r in corpus if r.expect_valid and r.event_id}
    request_ids = {r.request_id for r in corpus if r.request_id}

    def all_answered(rs):
        seen = {(r["value"] or {}).get("trigger_event_id") for r in rs}
        seen |= {(r["value"] or {}).get("request_id") for r in rs}
        return event_ids | request_ids <= seen

    recs = job.consume("recommendations", all_answered, timeout_s=180)
    triggers = Counter(r["value"]["trigger_event_id"] for r in recs if r["value"] and r["value"]["trigger_event_id"])
    assert set(triggers) == event_ids
    assert max(triggers.values()) == 1  # duplicates produced no second recommendation
    assert {r["value"]["request_id"] for r in recs if r["value"] and r["value"]["request_id"]} == request_ids
    job.check_alive()
