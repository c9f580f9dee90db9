"""Recovery after a crashed TaskManager, on a local standalone cluster (part of ``make bench``).

The job runs at parallelism 1 on three one-slot TaskManagers (two spare) with the cluster's
own settings (``recsys cluster start``: heartbeat timeout 10 s) and the job's defaults
(exponential-delay restarts, 1 s checkpoints), importing the project from the TaskManagers'
Python path as an installed deployment does. (``--ship-code`` ships it with the job instead:
each new TaskManager then compiles the Numba kernels again, ~20 s, because the shipped modules
live in a directory of their own per task attempt and the on-disk cache never matches.) Events stream in at a steady rate; the
TaskManager running the job is SIGKILLed ``--kills`` times, ``--gap-s`` apart. Per kill:

* ``detected_s``: until the JobManager notices (the job leaves RUNNING);
* ``running_s``: until the job runs again;
* ``first_answer_s``: until the first recommendation for an event sent after the kill;
* ``recovered_s``: until recommendations keep up again: from the kill to the send time of the
  first event after which every event's recommendation arrives within ``--ok-latency-ms``;
* ``worst_latency_s``: the longest event -> recommendation time around the kill.

Every event must get its recommendation by the end (``lost`` counts those that did not).

    python bench/bench_recovery.py --out reports/recovery.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer  # noqa: E402

from bench_e2e import code_version, machine  # noqa: E402
from recsys.local import cluster, kafka_broker  # noqa: E402
from recsys.local.topics import ensure_topics  # noqa: E402
from recsys.local.stack import LocalBroker, suffixed_topic_names, topic_overrides  # noqa: E402
from state_schemas.config import TopicNames  # noqa: E402


def log(msg: str) -> None:
    print(f"[recovery {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Stream(threading.Thread):
    """Produces events at ``rate`` and records each one's send time; a consumer thread records
    when its recommendation arrives."""

    def __init__(self, bootstrap: str, names: TopicNames, rate: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.names, self.rate, self.seconds = bootstrap, names, rate, seconds
        self.sent: dict[str, float] = {}
        self.answered: dict[str, float] = {}
        self.done = threading.Event()
        self.stop_consumer = threading.Event()
        self.consumer = threading.Thread(target=self.consume, daemon=True)

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0, acks=1)
        n_total = int(self.rate * self.seconds)
        start = time.monotonic()
        for n in range(n_total):
            eid = f"rv-{n}"
            ev = {"event_id": eid, "user_id": f"ru{n % 500}", "item_id": f"ri{(n * 7) % 300}",
                  "event_type": ("view", "click", "purchase")[n % 3],
                  "ts": int(time.time() * 1000), "value": None}
            self.sent[eid] = time.time()
            producer.send(self.names.user_events, key=ev["user_id"].encode(),
                          value=orjson.dumps(ev))
            delay = start + (n + 1) / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.flush()
        producer.close()
        self.done.set()

    def consume(self) -> None:
        c = KafkaConsumer(self.names.recommendations, bootstrap_servers=self.bootstrap,
                          group_id=None, auto_offset_reset="earliest", enable_auto_commit=False)
        try:
            while not self.stop_consumer.is_set():
                for records in c.poll(timeout_ms=200).values():
                    now = time.time()
                    for r in records:
                        if r.value:
                            trigger = orjson.loads(r.value).get("trigger_event_id")
                            if trigger is not None:
                                self.answered.setdefault(trigger, now)
        finally:
            c.close()


def per_kill(stream: Stream, kill_at: float, window_end: float, ok_s: float) -> dict[str, Any]:
    """Latency figures of the events sent from shortly before this kill to ``window_end``."""
    window = sorted((t, eid) for eid, t in stream.sent.items() if kill_at - 2 <= t < window_end)
    latencies = [(t, stream.answered.get(eid, float("inf")) - t) for t, eid in window]
    answers_after = [stream.answered[eid] for t, eid in window
                     if t >= kill_at and eid in stream.answered]
    recovered_at = None
    for i, (t, _) in enumerate(latencies):
        if t >= kill_at and all(lat <= ok_s for _, lat in latencies[i:]):
            recovered_at = t
            break
    finite = [lat for _, lat in latencies if lat != float("inf")]
    return {"first_answer_s": round(min(answers_after) - kill_at, 2) if answers_after else None,
            "recovered_s": round(recovered_at - kill_at, 2) if recovered_at else None,
            "worst_latency_s": round(max(finite), 2) if finite else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0, help="events per second")
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--warmup-s", type=float, default=20.0)
    ap.add_argument("--gap-s", type=float, default=45.0, help="between kills")
    ap.add_argument("--ok-latency-ms", type=float, default=2000.0)
    ap.add_argument("--out", default=str(ROOT / "reports" / "recovery.json"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--ship-code", action="store_true",
                    help="ship the project's code with the job (flink run -pyfs) instead of "
                         "importing it from the TaskManagers' Python path, as an installed "
                         "deployment (the Docker image) does")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    rest_port = kafka_broker.free_port_pair()
    broker = LocalBroker(work)
    bootstrap = broker.start()
    info = None
    try:
        info = cluster.start_cluster(rest_port=rest_port, slots=1, taskmanagers=args.kills + 1,
                                     metrics_ports="0", home=work / "flink", timeout_s=180)
        names = suffixed_topic_names("rv")
        ensure_topics(bootstrap, names, 1)
        overrides = [f'kafka.bootstrap_servers="{bootstrap}"',
                     'kafka.starting_offsets="earliest"', 'job.name="bench-recovery"',
                     *topic_overrides(names)]
        job_id = cluster.submit_job(info.jobmanager, overrides=overrides,
                                    log_path=work / "submit.log", ship_code=args.ship_code)
        cluster.wait_for_job_running(info.jobmanager, job_id, 180)
        seconds = args.warmup_s + args.kills * args.gap_s
        stream = Stream(bootstrap, names, args.rate, seconds)
        stream.consumer.start()
        stream.start()
        log(f"streaming {args.rate:.0f} events/s for {seconds:.0f} s; {args.kills} kills")
        time.sleep(args.warmup_s)
        kills = []
        for k in range(args.kills):
            tm = cluster.kill_job_taskmanager(info, job_id)
            kill_at = time.time()
            cluster.wait_for_failover(info.jobmanager, job_id, 120, poll_s=0.1)
            detected = time.time() - kill_at
            cluster.wait_for_job_running(info.jobmanager, job_id, 300, poll_s=0.1)
            running = time.time() - kill_at
            kills.append({"taskmanager": tm, "at": kill_at, "detected_s": round(detected, 2),
                          "running_s": round(running, 2)})
            log(f"kill {k + 1}: {tm}; noticed after {detected:.1f} s, running after "
                f"{running:.1f} s")
            time.sleep(max(0.0, kill_at + args.gap_s - time.time()))
        stream.done.wait(seconds + 120)
        deadline = time.time() + 120
        while time.time() < deadline and len(stream.answered) < len(stream.sent):
            time.sleep(1)
        stream.stop_consumer.set()
        for i, k in enumerate(kills):
            # (events sent in the last seconds before the next kill wait for that one)
            nxt = kills[i + 1]["at"] - 5 if i + 1 < len(kills) else float("inf")
            k.update(per_kill(stream, k["at"], nxt, args.ok_latency_ms / 1000))
            del k["at"]
        report = {
            "command": " ".join(["python", "bench/bench_recovery.py", *(argv or sys.argv[1:])]),
            "machine": machine(), "code": code_version(), "rate_per_s": args.rate,
            "setup": f"{args.kills + 1} TaskManagers x 1 slot, job parallelism 1, cluster "
                     "defaults of recsys/local/cluster.py (heartbeat timeout 10 s), job defaults",
            "kills": kills,
            "median": {key: statistics.median(k[key] for k in kills if k[key] is not None)
                       for key in ("detected_s", "running_s", "first_answer_s", "recovered_s")
                       if any(k[key] is not None for k in kills)},
            "events_sent": len(stream.sent),
            "lost": len(set(stream.sent) - set(stream.answered)),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        log(f"median {report['median']}; lost {report['lost']} of {report['events_sent']}")
        return 0 if report["lost"] == 0 else 1
    finally:
        if info is not None:
            cluster.stop_cluster(rest_port, work / "flink")
        broker.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
