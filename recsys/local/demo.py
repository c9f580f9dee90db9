"""``make run``: the whole engine on one machine, with the bundled sample stream.

Starts (or reuses) a local broker, creates the topics, starts the job on the local mini-cluster
in a child process, plays the sample stream into Kafka in a loop, and prints profiles and
recommendations as they arrive. Ctrl-C (or ``--seconds``) stops the job and the broker it started.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from kafka import KafkaConsumer

from recsys.local import kafka_broker, topics

from recsys.sample_data import synthetic
from state_schemas.config import EngineConfig
from recsys.local.job_process import start_job_process, stop_job_process
from recsys.paths import VAR_DIR


def describe_recommendation(rec: dict, titles: dict[str, str], top: int = 3) -> str:
    trigger = f"request {rec['request_id']}" if rec.get("request_id") else f"event {rec.get('trigger_event_id')}"
    parts = []
    for it in rec["items"][:top]:
        reason = it["reasons"][0] if it["reasons"] else ""
        parts.append(f"{titles.get(it['item_id'], it['item_id'])} ({reason})")
    return f"[reco] {rec['user_id']:>6} {rec['variant']:<14} after {trigger}: " + "; ".join(parts)


def describe_profile(p: dict) -> str:
    top = ", ".join(f"{f}={w:.1f}" for f, w in list(p["interests"].items())[:3])
    seg = p["segments"]
    return (f"[profile] {p['user_id']:>6} events={sum(p['counters']['all_time'].values()):<4} "
            f"activity={seg['activity']} lifecycle={seg['lifecycle']} interests: {top}")


def print_outputs(cfg: EngineConfig, stop: threading.Event, titles: dict[str, str]) -> None:
    consumer = KafkaConsumer(cfg.topics.recommendations, cfg.topics.user_profiles,
                             bootstrap_servers=cfg.kafka.bootstrap_servers,
                             isolation_level="read_committed", auto_offset_reset="latest",
                             group_id=None, value_deserializer=lambda b: b)
    import orjson

    while not stop.is_set():
        for tp, records in consumer.poll(timeout_ms=500).items():
            for r in records:
                if r.value is None:
                    continue
                value = orjson.loads(r.value)
                if tp.topic == cfg.topics.recommendations:
                    print(describe_recommendation(value, titles), flush=True)
                else:
                    print(describe_profile(value), flush=True)
    consumer.close()


def run_demo(args: argparse.Namespace, cfg: EngineConfig) -> int:
    port = args.port
    broker = kafka_broker.broker_status(port)
    started_broker = broker is None
    if started_broker:
        print(f"demo: starting Kafka on 127.0.0.1:{port}")
        broker = kafka_broker.start_broker(port)
    cfg.kafka.bootstrap_servers = broker.bootstrap_servers
    topics.create_topics(cfg)
    log_path = VAR_DIR / "demo-job.log"
    print(f"demo: starting the job on the local mini-cluster (log: {log_path})")
    job = start_job_process([f'kafka.bootstrap_servers="{cfg.kafka.bootstrap_servers}"']
                            + list(args.overrides), log_path, args.config)
    server, serve_log = None, VAR_DIR / "demo-api.log"
    if args.http_port:
        from recsys.serving import api

        server = api.start_process(args.http_port,
                                     [f'kafka.bootstrap_servers="{cfg.kafka.bootstrap_servers}"']
                                     + list(args.overrides), serve_log, args.config)
        print(f"demo: explorer and API at http://127.0.0.1:{args.http_port}/ (log: {serve_log})")
    stop = threading.Event()
    sample = synthetic.load_sample()
    titles = {i["item_id"]: i["title"] for i in sample.items}
    printer = threading.Thread(target=print_outputs, args=(cfg, stop, titles), daemon=True)
    printer.start()
    producer = threading.Thread(target=synthetic.produce, args=(cfg,),
                                kwargs={"rate": 20.0, "loop": True, "stop": stop}, daemon=True)
    time.sleep(3)
    producer.start()
    deadline = time.time() + args.seconds if args.seconds else None
    try:
        while deadline is None or time.time() < deadline:
            if server is not None and server.poll() is not None:
                print(f"demo: the HTTP service exited with code {server.returncode}; see {serve_log}",
                      file=sys.stderr)
                return 1
            if job.poll() is not None:
                print(f"demo: the job exited with code {job.returncode}; see {log_path}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        print("demo: stopping")
        if server is not None:
            stop_job_process(server)
        stop_job_process(job)
        if started_broker:
            kafka_broker.stop_broker(port)
    return 0
