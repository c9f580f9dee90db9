"""Event -> recommendation latency, as a read_committed consumer sees it, on the real stack.

Starts its own broker (free port) and the job on the mini-cluster with the shipped defaults,
loads the sample catalogue, then sends the sample events with fresh ids and current timestamps
at a steady --rate, and measures, per event, the time from the producer's send to the arrival
of the recommendation carrying that event's id. Writes JSON to --out.

    .venv/bin/python bench/latency_probe.py --rate 50 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from dataclasses import fields
from pathlib import Path

from recsys import kafka_io, kafka_local, sample_stream
from state_schemas.config import TopicNames
from recsys.job_process import log_tail, start_job_process, stop_job_process
from recsys.topics import ensure_topics


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=50.0, help="events per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--out", default="reports/latency_probe.json")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    from recsys.kafka_local import free_port_pair

    port = free_port_pair()
    data_dir = Path(tempfile.mkdtemp(prefix="latency-kafka-"))
    broker = kafka_local.start_broker(port, data_dir)
    names = TopicNames()
    ensure_topics(broker.bootstrap_servers, names, 1)
    log = Path(tempfile.mkdtemp(prefix="latency-job-")) / "job.log"
    job = start_job_process([f'kafka.bootstrap_servers="{broker.bootstrap_servers}"',
                             'kafka.starting_offsets="earliest"'] + args.overrides, log)
    try:
        sample = sample_stream.load_sample()
        kafka_io.produce_json(broker.bootstrap_servers, names.item_catalog, sample.items, "item_id")
        kafka_io.produce_json(broker.bootstrap_servers, names.user_attributes, sample.users, "user_id")
        # Warm-up: wait until the job answers at all (start-up is ~10 s).
        warm = {"event_id": "warm-" + uuid.uuid4().hex, "user_id": "warm", "item_id": sample.items[0]["item_id"],
                "event_type": "view", "ts": int(time.time() * 1000), "value": None}
        kafka_io.produce_json(broker.bootstrap_servers, names.user_events, [warm], "user_id")
        got = kafka_io.consume(broker.bootstrap_servers, names.recommendations, timeout_s=120,
                               until=lambda rs: any(r["value"] and r["value"]["trigger_event_id"] == warm["event_id"] for r in rs))
        if not got:
            raise SystemExit(f"the job produced nothing:\n{log_tail(log)}")

        sent: dict[str, float] = {}
        received: dict[str, float] = {}
        stop = threading.Event()
        consumer = kafka_io.open_consumer(broker.bootstrap_servers, names.recommendations, from_beginning=False)

        def collect() -> None:
            while not stop.is_set():
                for r in kafka_io.poll_records(consumer, 0.2):
                    eid = r["value"] and r["value"].get("trigger_event_id")
                    if eid in sent and eid not in received:
                        received[eid] = time.time()

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        producer = kafka_io.json_producer(broker.bootstrap_servers, linger_ms=0)
        run = uuid.uuid4().hex[:6]
        n = int(args.rate * args.seconds)
        start = time.time()
        for i in range(n):
            base = sample.events[i % len(sample.events)]
            ev = {**base, "event_id": f"{base['event_id']}-{run}-{i}", "ts": int(time.time() * 1000)}
            sent[ev["event_id"]] = time.time()
            producer.send(names.user_events, key=ev["user_id"], value=ev)
            delay = start + (i + 1) / args.rate - time.time()
            if delay > 0:
                time.sleep(delay)
        producer.flush()
        deadline = time.time() + 30
        while len(received) < len(sent) and time.time() < deadline:
            time.sleep(0.2)
        stop.set()
        reader.join()
        consumer.close()
        lat = [(received[e] - sent[e]) * 1000 for e in received]
        result = {
            "command": "bench/latency_probe.py " + " ".join(os.sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "rate_events_per_s": args.rate, "events_sent": len(sent), "recommendations_received": len(received),
            "latency_ms": {"p50": percentile(lat, 0.5), "p95": percentile(lat, 0.95),
                           "p99": percentile(lat, 0.99), "max": max(lat)} if lat else None,
            "checkpoint_interval_ms": "default (see recsys/config.py) unless overridden",
            "overrides": args.overrides,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return 0 if len(received) == len(sent) else 1
    finally:
        stop_job_process(job)
        kafka_local.stop_broker(port, data_dir)


if __name__ == "__main__":
    raise SystemExit(main())
