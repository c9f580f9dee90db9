"""5,000 hypothesis-generated records (``tests/edge_fuzz.py``) on every input topic of the running
job, interleaved with 1,000 valid events. Afterwards: dead letters equal, per source topic and
reason, what the oracle expects for the invalid ones (so valid + dead letters = sent); every
valid event and request got its recommendation; and the job never failed over (Flink's
REST API: never RESTARTING, an empty exception history, the job metric ``numRestarts`` 0).

It found one defect when written: the Java deserializer read the names inside an object or
array given as the value of ``user_id`` or ``ts`` (e.g. ``{"ts": [], "user_id": "a", "ts": 1}``)
as top-level names, so it routed the record by another key than the edge parsed, and the record
went to the dead-letter topic as "ambiguous" although valid. ``tests/fuzz_examples.json`` keeps
such records."""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest
from kafka import KafkaProducer

from recsys.local import cluster
from recsys.local.kafka_broker import free_port_pair
from state_schemas.config import load_config
from tests.edge_fuzz import fuzz_stream
from tests.integration.conftest import first_job_id, start_running_job

pytestmark = pytest.mark.slow
N_FUZZED = 5_000
N_VALID = 1_000


def test_fuzzed_records_on_every_topic_never_stop_the_job(kafka_bootstrap, tmp_path_factory):
    cfg = load_config(overrides=[], environ={})
    stream = fuzz_stream(N_FUZZED, cfg)
    assert len(stream) >= N_FUZZED
    now = int(time.time() * 1000)
    clean = [orjson.dumps({"event_id": f"clean-{n}", "user_id": f"cu{n % 97}",
                           "item_id": f"fi{n % 29}", "event_type": "view", "ts": now + n,
                           "value": None}) for n in range(N_VALID)]
    rest_port = free_port_pair()
    job = start_running_job(kafka_bootstrap, tmp_path_factory.mktemp("fuzz-job"),
                            [f"job.rest_port={rest_port}"])
    try:
        producer = KafkaProducer(bootstrap_servers=job.bootstrap, acks="all",
                                 max_request_size=2 * 1024 * 1024)
        every = max(1, len(stream) // N_VALID)
        futures = []
        for n, (r, _) in enumerate(stream):
            futures.append(producer.send(getattr(job.topics, r.topic), key=b"fz", value=r.value))
            if n % every == 0 and n // every < N_VALID:
                futures.append(producer.send(job.topics.user_events, value=clean[n // every]))
        producer.flush()
        for f in futures:
            f.get(timeout=60)
        producer.close()

        names = {f: getattr(job.topics, f) for f in ("user_events", "user_attributes",
                                                     "item_catalog", "recommendation_requests",
                                                     "privacy_requests")}
        expected = Counter((names[r.topic], o.reason) for r, o in stream if not o.valid)
        total = sum(expected.values())
        letters = job.consume("events_dlq", lambda rs: len(rs) >= total, timeout_s=300)
        got = Counter((d["value"]["source_topic"], d["value"]["reason"]) for d in letters)
        ambiguous = [d["value"]["raw"][:300] for d in letters
                     if "ambiguous" in d["value"]["error"]]  # where Java and Python disagree
        assert got == expected, (got - expected, expected - got, ambiguous[:5])

        event_ids = {o.parsed["event_id"] for r, o in stream
                     if o.valid and r.topic == "user_events"} | {f"clean-{n}" for n in range(N_VALID)}
        request_ids = {o.parsed["request_id"] for r, o in stream
                       if o.valid and r.topic == "recommendation_requests"}

        def answered(rs):
            seen = {(r["value"] or {}).get("trigger_event_id") for r in rs}
            seen |= {(r["value"] or {}).get("request_id") for r in rs}
            return event_ids | request_ids <= seen

        recs = job.consume("recommendations", answered, timeout_s=300)
        triggers = Counter(r["value"]["trigger_event_id"] for r in recs
                           if r["value"] and r["value"]["trigger_event_id"])
        assert set(triggers) == event_ids
        assert request_ids <= {r["value"]["request_id"] for r in recs if r["value"]}

        jobmanager = f"127.0.0.1:{rest_port}"
        job_id = first_job_id(jobmanager)
        # The job never failed over: it was never RESTARTING, and its exception history
        # (every failure that caused a restart) is empty.
        details = cluster.rest(jobmanager, "GET", f"/jobs/{job_id}")
        assert details["state"] == "RUNNING" and details["timestamps"]["RESTARTING"] == 0
        history = cluster.rest(jobmanager, "GET", f"/jobs/{job_id}/exceptions")
        assert history["exceptionHistory"]["entries"] == [], history
        # Flink's own count of restarts, the job metric (job_metric waits until the REST
        # endpoint has fetched it: an empty answer is not read as 0).
        assert cluster.job_metric(jobmanager, job_id, "numRestarts") == 0
        job.check_alive()
    finally:
        job.stop()
