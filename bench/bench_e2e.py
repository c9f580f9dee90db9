"""End-to-end benchmark on the real stack: throughput, latency, ceilings, parallelism.

One command, bounded in time (~15 min on the 2-core reference machine):

    .venv/bin/python bench/bench_e2e.py            # writes reports/bench.json and reports/bench.md
    .venv/bin/python bench/bench_e2e.py --quick    # small sizes, a smoke test

What it does, in one run, on one broker it starts itself (free port, temporary data dir):

1. **Hot-path replay** (``bench/bench_hot_path.py``, before anything else runs): Python CPU per
   event of the engine, and the compiled kernels against their plain-Python twins.
2. **Synthetic workload** (``bench/workload.py``: Zipf items over a catalogue, Zipf user
   activity, every event type in a shop-like mix). Catalogue, user attributes and ``--events``
   events are written to the run's own input topics *before* the job starts; then the job starts
   on the local mini-cluster (``recsys.local.job_process.start_job_process`` with ``--set`` overrides,
   ``kafka.starting_offsets="earliest"``) and drains the backlog.
   **Throughput** = events/s with a recommendation for every event, counted on the
   ``recommendations`` topic from the first recommendation to the last (start-up excluded); the
   topic is created with ``message.timestamp.type=LogAppendTime``, so each record carries the
   broker's append time. *Sustained* is the rate over the second half of the backlog, once the
   JVM's JIT compiler and the item model have warmed up. Every event id must come back as a
   ``trigger_event_id``.
3. **Latency** at ``--latency-fraction`` (½) of that sustained rate, and at the rates of
   ``--latency-curve``, in the same warm job: a
   producer paces fresh events (ts = now) for ``--latency-seconds`` while a read_committed
   consumer matches ``trigger_event_id``s: send -> visible p50/p95/p99, and send ->
   ``generated_at``. Recommendations are at-least-once by default (visible when written); the
   run is repeated with ``kafka.delivery_guarantees.recommendations="exactly-once"`` (visible
   when the checkpoint commits the transaction).
4. **ml-100k replay** (``deploy/ml-100k.toml``): the first ``--ml-events`` ratings preloaded,
   throughput, then the following ratings paced for latency.
5. **Scale-out on a real cluster**: a local standalone cluster (``recsys/local/cluster.py``) with two
   single-slot TaskManagers (two JVMs: two Python interpreters, two GILs) runs the job at
   parallelism 1 and then 2 (2-partition topics), each draining the same backlog.
6. **Ceilings of the same machine in the same run**: (a) ``bench/copy_job.py``, a Flink job with
   no Python (KafkaSource -> KafkaSink, exactly-once, same checkpoint interval) copying the
   synthetic input topic, measured the same way, and the same with one Python identity map;
   (b) the raw Kafka consume rate of that topic (``ConsumerPerformance``). Ratios of ours to
   each.

Checkpoints go to a temporary ``file://`` directory (``job.checkpoint_dir``), as a real
deployment would. The load average is recorded around every phase: other jobs on the machine
skew the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

from recsys.local import kafka_broker  # noqa: E402
from recsys.local.job_process import stop_job_process  # noqa: E402
from recsys.local.processes import log_tail  # noqa: E402
from recsys.local.stack import JobStack, LocalBroker  # noqa: E402
from recsys.paths import KAFKA_JARS_DIR  # noqa: E402
from workload import Workload, now_ms  # noqa: E402

PY = sys.executable
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - T0:6.1f}s load {os.getloadavg()[0]:.2f}] {msg}", flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


# ------------------------------------------------------------------------------- machine
def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown"


def code_version() -> dict[str, Any]:
    """The commit and the uncommitted changes of the code the job runs (others edit the tree)."""
    import hashlib
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.rstrip("\n")
    paths = ["udfs", "flink_jobs", "state_schemas", "recsys/config.py", "deploy/ml-100k.toml"]
    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", *paths).splitlines()]
    diff = git("diff", "HEAD", "--", *paths)
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_files": dirty,
            "diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else None}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    mem_kb = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    import numpy
    import pyflink.version as fv
    kafka_jar = sorted(KAFKA_JARS_DIR.glob("kafka-clients-*.jar"))
    return {"cpu": cpu, "cpus": os.cpu_count(), "mem_gb": round(mem_kb / 2**20, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": numpy.__version__, "pyflink": fv.__version__,
            "kafka": kafka_jar[0].stem.rsplit("-", 1)[-1] if kafka_jar else "unknown",
            "java": _first_line(["java", "-version"]),
            "loadavg_at_start": loadavg()}


# ------------------------------------------------------------------------------- kafka helpers
def create_plain_topic(bootstrap: str, topic: str, partitions: int,
                       configs: dict[str, str] | None = None) -> None:
    with KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench") as admin:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1,
                                     "configs": configs or {}}},
                            timeout_ms=30_000, wait_for_metadata=True)


def bulk_producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=50,
                         batch_size=1 << 20, max_request_size=4 << 20,
                         client_id="bench-preload")


def produce_all(bootstrap: str, topic: str, records: Iterable[tuple[str, bytes]]) -> tuple[int, float]:
    """Send (key, value bytes) pairs; returns (count, seconds). Raises on a failed send."""
    failures: list[BaseException] = []
    producer = bulk_producer(bootstrap)
    t0 = time.monotonic()
    n = 0
    try:
        for key, value in records:
            producer.send(topic, key=key.encode(), value=value).add_errback(failures.append)
            n += 1
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=30)
    if failures:
        raise RuntimeError(f"{len(failures)} sends to {topic} failed: {failures[0]!r}")
    return n, time.monotonic() - t0


def end_offsets(consumer: KafkaConsumer, topic: str) -> int:
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    return sum(consumer.end_offsets(parts).values()) if parts else 0


class OffsetWatcher(threading.Thread):
    """Samples the end offsets (high watermark = written, LSO = committed) of one topic."""

    def __init__(self, bootstrap: str, topic: str, interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.interval_s = bootstrap, topic, interval_s
        self.samples: list[tuple[float, int, int]] = []  # (time.time(), hw, lso)
        self.stop_event = threading.Event()

    def run(self) -> None:
        kw = dict(bootstrap_servers=self.bootstrap, group_id=None, client_id="bench-watch")
        unc = KafkaConsumer(isolation_level="read_uncommitted", **kw)
        com = KafkaConsumer(isolation_level="read_committed", **kw)
        try:
            while not self.stop_event.is_set():
                try:
                    self.samples.append((time.time(), end_offsets(unc, self.topic),
                                         end_offsets(com, self.topic)))
                except Exception:  # noqa: BLE001 - a slow metadata call: just sample again
                    pass
                self.stop_event.wait(self.interval_s)
        finally:
            unc.close()
            com.close()

    def latest(self) -> tuple[float, int, int]:
        return self.samples[-1] if self.samples else (time.time(), 0, 0)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


def consume_records(bootstrap: str, topic: str, expected: int, timeout_s: float,
                    parse: Callable[[Any], Any]) -> list[Any]:
    """Read a whole topic read_committed from the beginning; ``parse(message)`` per record.
    Stops at ``expected`` records or after 5 s without new records or at ``timeout_s``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             isolation_level="read_committed", auto_offset_reset="earliest",
                             enable_auto_commit=False, max_poll_records=10_000,
                             fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20,
                             client_id="bench-verify")
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while len(out) < expected and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            got = 0
            for msgs in batch.values():
                for m in msgs:
                    out.append(parse(m))
                    got += 1
            if got:
                last_new = time.monotonic()
            elif time.monotonic() - last_new > 5:
                break
    finally:
        consumer.close(autocommit=False)
    return out


# ------------------------------------------------------------------------------- the job
class JobRun(JobStack):
    """One recsys job on its own topics (the stack harness), started after its input was
    preloaded."""

    def __init__(self, bench: "Bench", label: str, partitions: int = 1,
                 overrides: Iterable[str] = (), config_file: str | None = None):
        super().__init__(bench.bootstrap, bench.work_dir, tag=label, config_file=config_file,
                         overrides=list(overrides), partitions=partitions, checkpoints=True)
        self.bench, self.label = bench, label

    def start(self, extra: Iterable[str] = ()) -> "JobRun":
        self.started_at = time.time()
        return super().start(list(extra))

    def java_pid(self) -> int | None:
        """The JVM the job's Python process launched (mini-cluster + embedded interpreter)."""
        if self.process is None:
            return None
        out = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(self.process.pid)],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            pid, comm = line.split(None, 1)
            if comm.strip() == "java":
                return int(pid)
        return None


class ClusterJobRun(JobRun):
    """The same job submitted to a local standalone cluster (``recsys/local/cluster.py``: JobManager
    and TaskManagers as separate JVMs), as a deployment runs it."""

    def __init__(self, bench: "Bench", label: str, cluster_info: Any, partitions: int = 1,
                 overrides: Iterable[str] = ()):
        super().__init__(bench, label, partitions, overrides)
        self.cluster = cluster_info
        self.job_id: str | None = None

    def start(self, extra: Iterable[str] = ()) -> "ClusterJobRun":
        from recsys.local import cluster
        self.started_at = time.time()
        self.job_id = cluster.submit_job(self.cluster.jobmanager,
                                         overrides=self.overrides + list(extra),
                                         log_path=self.log_path)
        return self

    def stop(self) -> None:
        from recsys.local import cluster
        if self.job_id is not None and self.alive():
            cluster.cancel_job(self.cluster.jobmanager, self.job_id)

    def alive(self) -> bool:
        from recsys.local import cluster
        if self.job_id is None:
            return False
        state = cluster.job_details(self.cluster.jobmanager, self.job_id).get("state")
        return state not in cluster.TERMINAL_STATES

    def java_pid(self) -> int | None:
        return None

    def log_files(self) -> list[Path]:
        return sorted(self.cluster.log_dir.glob("*taskmanager*.log"))


def drain(job: JobRun, n_events: int, max_s: float, startup_timeout_s: float = 180) -> dict[str, Any]:
    """Wait for one recommendation per preloaded event; measure the rate (see module doc)."""
    b = job.bench
    watcher = OffsetWatcher(b.bootstrap, job.topics.recommendations)
    watcher.start()
    load0 = loadavg()
    try:
        t_start = time.time()
        while watcher.latest()[1] == 0:
            if not job.alive():
                raise RuntimeError(f"job {job.label} exited:\n{job.log_tail()}")
            if time.time() - t_start > startup_timeout_s:
                raise RuntimeError(f"job {job.label} wrote nothing in {startup_timeout_s} s:\n"
                                   f"{job.log_tail()}")
            time.sleep(0.1)
        t_first = watcher.latest()[0]
        startup_s = t_first - job.started_at
        log(f"{job.label}: first recommendation written {startup_s:.1f} s after start")
        last_hw, last_change = 0, time.time()
        complete = False
        while True:
            t, hw, lso = watcher.latest()
            if hw != last_hw:
                last_hw, last_change = hw, t
            if hw >= n_events and lso >= hw and time.time() - last_change > 2.0:
                complete = True
                break
            if time.time() - t_first > max_s:
                break
            if not job.alive():
                raise RuntimeError(f"job {job.label} exited:\n{job.log_tail()}")
            time.sleep(0.2)
    finally:
        watcher.stop()
    load1 = loadavg()
    if not complete:  # a bounded window: stop the job so that the topic stops growing
        job.stop()
    samples = watcher.samples
    # Written-offset curve: slope between 10% and 90% of what was written (steady state).
    hw_final = samples[-1][1]

    def t_at(frac: float) -> float:
        target = frac * hw_final
        return next(t for t, hw, _ in samples if hw >= target)

    slope = (0.8 * hw_final) / max(1e-9, t_at(0.9) - t_at(0.1)) if hw_final > 10 else None
    # Every record, read_committed: append time, generated_at, trigger id.
    recs = consume_records(b.bootstrap, job.topics.recommendations, n_events, 120,
                           lambda m: (m.timestamp, *_reco_fields(m.value)))
    triggers = {r[1] for r in recs if r[1]}
    appended = sorted(r[0] for r in recs)
    generated = sorted(r[2] for r in recs if r[2])
    out: dict[str, Any] = {
        "events_preloaded": n_events,
        "recommendations": len(recs),
        "events_with_recommendation": len(triggers),
        "complete": complete and len(triggers) >= n_events,
        "startup_s": round(startup_s, 1),
        "loadavg_before": load0, "loadavg_after": load1,
    }
    if len(appended) > 1:
        span = (appended[-1] - appended[0]) / 1000
        out["first_to_last_s"] = round(span, 2)
        out["events_per_s"] = round((len(triggers) - 1) / span, 1) if span > 0 else None
        # The rate in each third of the backlog: the model (trending, neighbours) grows as the
        # job goes, and so does the cost per event.
        thirds = []
        for a, b in ((0, 1), (1, 2), (2, 3)):
            lo, hi = appended[len(appended) * a // 3], appended[min(len(appended) - 1, len(appended) * b // 3)]
            cnt = len(appended) * b // 3 - len(appended) * a // 3
            thirds.append(round(cnt / ((hi - lo) / 1000), 1) if hi > lo else None)
        out["events_per_s_by_third"] = thirds
        # Sustained: the second half of the backlog (the JVM's JIT and the model warmed up).
        half = len(appended) // 2
        lo, hi = appended[half], appended[-1]
        out["events_per_s_steady"] = (round((len(appended) - 1 - half) / ((hi - lo) / 1000), 1)
                                      if hi > lo else None)
    if len(generated) > 1:
        gspan = (generated[-1] - generated[0]) / 1000
        out["events_per_s_generated_at"] = round((len(generated) - 1) / gspan, 1) if gspan > 0 else None
    out["events_per_s_steady_10_90"] = round(slope, 1) if slope else None
    return out


def _reco_fields(raw: bytes | None) -> tuple[str | None, int | None]:
    if not raw:
        return None, None
    v = orjson.loads(raw)
    return v.get("trigger_event_id"), v.get("generated_at")


_TRIGGER = b'"trigger_event_id":"'
_GENERATED = b'"generated_at":'


def _trigger_and_generated(raw: bytes | None) -> tuple[bytes | None, int]:
    """The trigger event id and generated_at of a recommendation record, found in its bytes
    (the job writes them with orjson, without spaces): the harness must not spend the CPU the
    job needs on parsing every record."""
    if not raw:
        return None, 0
    a = raw.find(_TRIGGER)
    if a < 0:
        return None, 0
    a += len(_TRIGGER)
    trigger = raw[a:raw.index(b'"', a)]
    g = raw.find(_GENERATED)
    generated = 0
    if g >= 0:
        g += len(_GENERATED)
        end = g
        while end < len(raw) and raw[end] in b"0123456789":
            end += 1
        generated = int(raw[g:end])
    return trigger, generated


def paced_latency(job: JobRun, rate: float, seconds: float,
                  events: Iterator[dict[str, Any]], restamp: bool = True) -> dict[str, Any]:
    """Events at ``rate``/s for ``seconds``; per event send -> visible (read_committed) latency.

    The harness shares the machine with the job, so it is kept lean: events are generated and
    encoded before the clock starts, and producer and consumer are librdkafka's
    (confluent-kafka), the consumer reading ids out of the record bytes."""
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition as CTopicPartition

    b = job.bench
    n = int(rate * seconds)
    batch = [next(events) for _ in range(n)]
    ids = [ev["event_id"].encode() for ev in batch]
    keys = [ev["user_id"].encode() for ev in batch]
    if not restamp:
        values = [orjson.dumps(ev) for ev in batch]
    sent: dict[bytes, float] = {}
    seen: dict[bytes, tuple[float, int, int]] = {}  # id -> (arrival, generated_at, append ts)
    stop = threading.Event()
    consumer = Consumer({"bootstrap.servers": b.bootstrap, "group.id": f"lat-{uuid.uuid4().hex[:6]}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 10})
    meta = consumer.list_topics(job.topics.recommendations, timeout=10)
    parts = [CTopicPartition(job.topics.recommendations, p, OFFSET_END)
             for p in meta.topics[job.topics.recommendations].partitions]
    consumer.assign(parts)

    def collect() -> None:
        while not stop.is_set():
            # consume() waits for num_messages or the timeout: keep the timeout short, or the
            # harness itself adds up to it to every latency
            for m in consumer.consume(num_messages=1000, timeout=0.002):
                if m.error():
                    continue
                now = time.time()
                eid, gen = _trigger_and_generated(m.value())
                if eid is not None and eid not in seen:
                    seen[eid] = (now, gen, m.timestamp()[1])

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    time.sleep(1.0)  # the consumer has its partitions and sits at their end
    producer = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 0})
    topic = job.topics.user_events
    load0 = loadavg()
    start = time.time()
    behind = 0.0
    for i in range(n):
        if restamp:
            batch[i]["ts"] = now_ms()
            value = orjson.dumps(batch[i])
        else:
            value = values[i]
        sent[ids[i]] = time.time()
        producer.produce(topic, value=value, key=keys[i])
        producer.poll(0)
        delay = start + (i + 1) / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        else:
            behind = max(behind, -delay)
    producer.flush(30)
    send_s = time.time() - start
    deadline = time.time() + 30
    while len(seen) < len(sent) and time.time() < deadline:
        if not job.alive():
            break
        time.sleep(0.2)
    stop.set()
    reader.join(5)
    consumer.close()
    got = [e for e in sent if e in seen]
    visible = [(seen[e][0] - sent[e]) * 1000 for e in got]
    emitted = [seen[e][1] - sent[e] * 1000 for e in got]
    written = [seen[e][2] - sent[e] * 1000 for e in got]

    def dist(v: list[float]) -> dict[str, Any] | None:
        return ({"p50": percentile(v, 0.5), "p95": percentile(v, 0.95),
                 "p99": percentile(v, 0.99), "max": round(max(v), 1)} if v else None)

    emit_p50 = percentile(emitted, 0.5)
    return {"rate_events_per_s": round(rate, 1), "seconds": seconds, "events_sent": len(sent),
            "kept_up": bool(emit_p50 is not None and emit_p50 < 1000),
            "achieved_send_rate": round(len(sent) / send_s, 1), "max_send_lag_s": round(behind, 3),
            "recommendations_received": len(got),
            "latency_ms_send_to_visible": dist(visible),
            "latency_ms_send_to_generated": dist(emitted),
            "latency_ms_send_to_broker_append": dist(written),
            "loadavg_before": load0, "loadavg_after": loadavg()}


# ------------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work_dir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
        self.broker = LocalBroker(self.work_dir)
        self.bootstrap = ""
        self.wl = Workload(n_users=args.users, n_items=args.items, zipf_s=args.zipf, seed=args.seed)
        self.results: dict[str, Any] = {}

    def start_broker(self) -> None:
        self.bootstrap = self.broker.start()
        log(f"broker on {self.bootstrap} (data {self.broker.data_dir})")

    def stop(self) -> None:
        try:
            self.broker.stop()
        finally:
            if not self.args.keep:
                shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- synthetic data, encoded once and written to each run's topics ----------------------
    def synthetic_data(self) -> None:
        t = now_ms()
        n = self.args.events
        step = 3_600_000 / max(1, n)  # the preloaded events span the hour before now
        self.catalog = [(r["item_id"], orjson.dumps(r)) for r in self.wl.catalog(t - 86_400_000)]
        self.user_attrs = [(r["user_id"], orjson.dumps(r)) for r in self.wl.users(t - 86_400_000)]
        self.preload = [(e["user_id"], orjson.dumps(e))
                        for e in self.wl.events(n, t - 3_600_000, step, tag="pre")]
        sizes = [len(v) for _, v in self.preload]
        self.results["workload"] = {
            "kind": "synthetic (bench/workload.py)", "users": self.args.users,
            "items": self.args.items, "item_zipf_s": self.args.zipf,
            "user_zipf_s": self.wl.user_s, "events_preloaded": n,
            "event_mix": __import__("workload").EVENT_MIX,
            "mean_event_bytes": round(sum(sizes) / len(sizes), 1)}

    def preload_synthetic(self, job: JobRun, n: int | None = None) -> None:
        events = self.preload if n is None else self.preload[:n]
        produce_all(self.bootstrap, job.topics.item_catalog, self.catalog)
        produce_all(self.bootstrap, job.topics.user_attributes, self.user_attrs)
        k, s = produce_all(self.bootstrap, job.topics.user_events, events)
        log(f"{job.label}: preloaded {len(self.catalog)} items, {len(self.user_attrs)} users, "
            f"{k} events ({k / s:.0f}/s)")

    def live_events(self) -> Iterator[dict[str, Any]]:
        return self.wl.event_stream(tag=f"live{uuid.uuid4().hex[:4]}")

    # -- phases -------------------------------------------------------------------------------
    def synthetic_run(self, label: str, overrides: list[str], partitions: int = 1,
                      n_events: int | None = None, max_s: float | None = None,
                      latency_rate: float | str | None = None,
                      curve: Iterable[float] = ()) -> dict[str, Any]:
        n = n_events or self.args.events
        job = JobRun(self, label, partitions, overrides)
        self.preload_synthetic(job, n)
        job.start()
        try:
            res = {"overrides": overrides, "partitions": partitions,
                   "throughput": drain(job, n, max_s or self.args.max_drain_s)}
            log(f"{label}: throughput {res['throughput'].get('events_per_s')} events/s "
                f"(complete={res['throughput']['complete']})")
            if latency_rate == "auto":
                t = res["throughput"]
                latency_rate = self.args.latency_fraction * (t.get("events_per_s_steady")
                                                             or t.get("events_per_s") or 0)
            if latency_rate:
                res["latency"] = paced_latency(job, latency_rate, self.args.latency_seconds,
                                               self.live_events())
                log(f"{label}: latency at {latency_rate:.0f}/s: "
                    f"{res['latency']['latency_ms_send_to_visible']}")
                if curve:
                    res["latency_curve"] = []
                    for rate in curve:
                        time.sleep(3)  # let the previous phase's backlog drain
                        point = paced_latency(job, rate, self.args.curve_seconds,
                                              self.live_events())
                        res["latency_curve"].append(point)
                        log(f"{label}: latency at {rate:.0f}/s: "
                            f"{point['latency_ms_send_to_visible']}")
            res["job_log_errors"] = _log_errors(job.log_path)
            res["job_input_topic"] = job.topics.user_events
            return res
        finally:
            job.stop()

    def ml100k_run(self, overrides: list[str]) -> dict[str, Any]:
        if not (ROOT / "recsys" / "movielens.py").is_file():
            return {"skipped": "recsys/evaluation/movielens.py is absent"}
        from recsys.evaluation import movielens
        ml = movielens.load()
        events = movielens.events(ml.ratings)
        n = min(self.args.ml_events, len(events))
        job = JobRun(self, "ml100k", 1, overrides, config_file=str(ROOT / "deploy" / "ml-100k.toml"))
        produce_all(self.bootstrap, job.topics.item_catalog,
                    [(r["item_id"], orjson.dumps(r)) for r in movielens.catalog_records(ml)])
        produce_all(self.bootstrap, job.topics.user_attributes,
                    [(r["user_id"], orjson.dumps(r)) for r in movielens.attribute_records(ml)])
        k, s = produce_all(self.bootstrap, job.topics.user_events,
                           [(e["user_id"], orjson.dumps(e)) for e in events[:n]])
        log(f"ml100k: preloaded {len(ml.items)} items, {len(ml.users)} users, {k} ratings")
        job.start()
        try:
            res = {"config_file": "deploy/ml-100k.toml", "overrides": overrides,
                   "ratings_total": len(events),
                   "throughput": drain(job, n, self.args.max_drain_s)}
            peak = (res["throughput"].get("events_per_s_steady")
                    or res["throughput"].get("events_per_s") or 0)
            log(f"ml100k: throughput {peak} events/s")
            rest = iter(events[n:])
            if peak > 0 and len(events) > n:
                rate = self.args.latency_fraction * peak
                seconds = min(self.args.latency_seconds, (len(events) - n) / rate)
                res["latency"] = paced_latency(job, rate, seconds, rest, restamp=False)
                log(f"ml100k: latency at {rate:.0f}/s: {res['latency']['latency_ms_send_to_visible']}")
            res["job_log_errors"] = _log_errors(job.log_path)
            return res
        finally:
            job.stop()

    def copy_ceiling(self, source_topic: str, n_records: int,
                     python_map: bool = False) -> dict[str, Any]:
        """The no-Python Flink job copying ``source_topic``; rate on LogAppendTime."""
        tag = uuid.uuid4().hex[:6]
        sink = f"copy-out-{tag}"
        create_plain_topic(self.bootstrap, sink, 1, {"message.timestamp.type": "LogAppendTime"})
        log_path = self.work_dir / f"copy-{tag}.log"
        cmd = [PY, str(ROOT / "bench" / "copy_job.py"), "--bootstrap", self.bootstrap,
               "--source", source_topic, "--sink", sink, "--checkpoint-ms", "1000",
               "--txn-prefix", f"copy-{tag}",
               "--checkpoint-dir", (self.work_dir / f"ckpt-copy-{tag}").as_uri()] \
            + (["--python-map"] if python_map else [])
        load0 = loadavg()
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        started = time.time()
        watcher = OffsetWatcher(self.bootstrap, sink)
        watcher.start()
        try:
            while True:
                t, hw, lso = watcher.latest()
                if lso >= n_records:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"copy job exited:\n{log_tail(log_path)}")
                if time.time() - started > 240:
                    break
                time.sleep(0.2)
        finally:
            watcher.stop()
            stop_job_process(proc)
        first_written = next((t for t, hw, _ in watcher.samples if hw > 0), None)
        recs = consume_records(self.bootstrap, sink, n_records, 120, lambda m: m.timestamp)
        recs.sort()
        span = (recs[-1] - recs[0]) / 1000 if len(recs) > 1 else 0
        return {"command": " ".join(["python", "bench/copy_job.py", "--checkpoint-ms", "1000"]
                                    + (["--python-map"] if python_map else [])
                                    + ["(exactly-once, parallelism 1)"]),
                "records": len(recs), "expected": n_records,
                "startup_s": round(first_written - started, 1) if first_written else None,
                "first_to_last_s": round(span, 2),
                "records_per_s": round((len(recs) - 1) / span, 1) if span > 0 else None,
                "loadavg_before": load0, "loadavg_after": loadavg()}

    def consumer_perf(self, topic: str, n_records: int) -> dict[str, Any]:
        cmd = ["java", "-Xmx512m", "-cp", f"{KAFKA_JARS_DIR}/*",
               "org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", self.bootstrap,
               "--topic", topic, "--messages", str(n_records), "--timeout", "60000",
               "--group", f"perf-{uuid.uuid4().hex[:6]}"]
        load0 = loadavg()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        res: dict[str, Any] = {"command": "java -cp '.cache/jars/kafka/*' "
                               "org.apache.kafka.tools.ConsumerPerformance --bootstrap-server H:P "
                               f"--topic <synthetic input> --messages {n_records}",
                               "loadavg_before": load0, "loadavg_after": loadavg()}
        try:
            header = [h.strip() for h in lines[-2].split(",")]
            values = [v.strip() for v in lines[-1].split(",")]
            row = dict(zip(header, values))
            res.update({"raw": row,
                        # fetch.nMsg.sec: records / fetch time (the group join excluded)
                        "records_per_s": float(row.get("fetch.nMsg.sec", "nan")),
                        "records_per_s_incl_group_join": float(row.get("nMsg.sec", "nan")),
                        "MB_per_s": float(row.get("MB.sec", "nan")),
                        "records": int(float(row.get("data.consumed.in.nMsg", "0")))})
        except (IndexError, ValueError):
            res["error"] = (out.stdout + out.stderr)[-2000:]
        return res

    def hot_path(self) -> dict[str, Any]:
        """``bench/bench_hot_path.py``: Python CPU per event in the engine replay, kernels vs twins."""
        out = ROOT / "reports" / "hot_path.json"
        cmd = [PY, str(ROOT / "bench" / "bench_hot_path.py"), "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not out.is_file():
            return {"error": proc.stderr[-2000:]}
        return json.loads(out.read_text())

    def cluster_runs(self, partitions_list: list[int]) -> dict[str, Any]:
        """The job on a local standalone cluster with two single-slot TaskManagers (two JVMs,
        so two Python interpreters and two GILs), once per parallelism in ``partitions_list``."""
        from recsys.local import cluster
        home = self.work_dir / "flink-cluster"
        rest_port = kafka_broker.free_port_pair()
        info = cluster.start_cluster(rest_port=rest_port, slots=1, taskmanagers=2,
                                     metrics_ports="0", home=home)
        out: dict[str, Any] = {"cluster": "2 TaskManagers x 1 slot (recsys/local/cluster.py)"}
        try:
            for par in partitions_list:
                label = f"cluster_p{par}"
                job = ClusterJobRun(self, label, info, par, [f"job.parallelism={par}"])
                self.preload_synthetic(job, self.args.events)
                job.start()
                try:
                    res = {"partitions": par,
                           "throughput": drain(job, self.args.events, self.args.max_drain_s)}
                    errors: dict[str, int] = {}
                    for f in job.log_files():
                        for k, v in _log_errors(f).items():
                            errors[k] = errors.get(k, 0) + v
                    res["job_log_errors"] = errors
                    out[label] = res
                    log(f"{label}: throughput {res['throughput'].get('events_per_s')} events/s, "
                        f"steady {res['throughput'].get('events_per_s_steady')}")
                finally:
                    job.stop()
        finally:
            cluster.stop_cluster(rest_port, home)
        return out


def _log_errors(path: Path) -> dict[str, Any]:
    """Checkpoint failures and restarts in a job log (a failing run must not look healthy)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    return {"exceptions": len(re.findall(r"^\S*(Exception|Error)\b", text, re.M)),
            "checkpoint_declined_or_failed": len(re.findall(r"(?i)checkpoint.{0,80}(declin|fail)", text)),
            "restarts": len(re.findall(r"(?i)switched from RUNNING to (FAILING|RESTARTING)", text))}


# ------------------------------------------------------------------------------- report
# The bars of issue 12 (README, "Performance").
TARGETS = {"throughput": 5000.0, "p99_at_least_once_ms": 100.0, "eo_slack_ms": 150.0,
           "kernel_speedup": 20.0, "python_us_per_event": 150.0, "state_bytes": 2048}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


def _p99(run: dict | None, key: str = "latency") -> float | None:
    return ((((run or {}).get(key) or {}).get("latency_ms_send_to_visible")) or {}).get("p99")


def write_markdown(report: dict[str, Any], path: Path) -> None:
    m = report["machine"]
    r = report["results"]
    a = report["args"]
    L = []
    L.append("# Benchmark: end to end on the real stack\n")
    L.append(f"Command: `{report['command']}`  ")
    L.append(f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['mem_gb']} GB, {m['platform']}; "
             f"Python {m['python']}, PyFlink {m['pyflink']}, Kafka {m['kafka']}, {m['java']}  ")
    L.append(f"Load average (1/5/15 min): start {m['loadavg_at_start']}, end "
             f"{report.get('loadavg_at_end')} (other jobs share this machine; see each row's load)  ")
    code = report.get("code") or {}
    L.append(f"Started {report['started']}, took {report.get('duration_s', 0):.0f} s; code "
             f"{code.get('commit')} + uncommitted {code.get('uncommitted_files')} "
             f"(diff {code.get('diff_sha1')})\n")
    wl = r.get("workload", {})
    if wl:
        L.append(f"Synthetic workload: {wl['users']} users, {wl['items']} items, item Zipf "
                 f"s={wl['item_zipf_s']}, user Zipf s={wl['user_zipf_s']}, "
                 f"{wl['events_preloaded']} events preloaded per run, ~{wl['mean_event_bytes']:.0f} "
                 f"B/event, mix {wl['event_mix']}\n")

    def thr(run: dict | None) -> str:
        if not run or "throughput" not in run:
            return "n/a"
        t = run["throughput"]
        return (f"{t.get('events_per_s')} ev/s overall, **{t.get('events_per_s_steady')} ev/s "
                f"sustained** (second half; by third {t.get('events_per_s_by_third')}; "
                f"{t['events_with_recommendation']}/{t['events_preloaded']} events answered; "
                f"start-up {t['startup_s']} s; load {t['loadavg_before'][0]}→{t['loadavg_after'][0]})")

    def lat(run: dict | None, key: str = "latency") -> str:
        if not run or not run.get(key):
            return "n/a"
        x = run[key]
        v = x["latency_ms_send_to_visible"] or {}
        g = x["latency_ms_send_to_generated"] or {}
        return (("" if x.get("kept_up", True) else "**did not keep up at this rate**: ")
                + f"p50 {v.get('p50')} / p95 {v.get('p95')} / p99 {v.get('p99')} ms visible "
                f"(emit p50 {g.get('p50')} / p99 {g.get('p99')} ms) at {x['rate_events_per_s']} "
                f"ev/s for {x['seconds']} s, {x['recommendations_received']}/{x['events_sent']} "
                f"answered; load {x['loadavg_before'][0]}")

    def sustained(run: dict | None) -> float | None:
        return ((run or {}).get("throughput") or {}).get("events_per_s_steady")

    L.append("| measurement | result | bar | status |")
    L.append("|---|---|---|---|")
    base = r.get("synthetic_p1")
    peak = sustained(base)
    L.append(f"| throughput, synthetic, p=1 (mini-cluster), recommendations at-least-once | "
             f"{thr(base)} | ≥ 5000 ev/s | {_status(peak, TARGETS['throughput'], True)} |")
    cl = r.get("cluster") or {}
    c1, c2 = cl.get("cluster_p1"), cl.get("cluster_p2")
    if c1:
        L.append(f"| throughput, standalone cluster (2 TaskManagers × 1 slot), p=1 | {thr(c1)} | | |")
    if c2:
        L.append(f"| throughput, standalone cluster, p=2 (2 partitions, one subtask per "
                 f"TaskManager) | {thr(c2)} | ≥ 5000 ev/s | "
                 f"{_status(sustained(c2), TARGETS['throughput'], True)}; p2/p1 = "
                 f"×{ratio(sustained(c2), sustained(c1))} |")
    L.append(f"| latency at ½ sustained peak, at-least-once recommendations, checkpoint "
             f"{a['checkpoint_ms']} ms | {lat(base)} | p99 ≤ 100 ms | "
             f"{_status(_p99(base), TARGETS['p99_at_least_once_ms'], False)} |")
    for point in (base or {}).get("latency_curve") or []:
        L.append(f"| latency at {point['rate_events_per_s']} ev/s, at-least-once | "
                 f"{lat({'latency': point})} | | |")
    eo = r.get("synthetic_p1_exactly_once")
    bound = a["checkpoint_ms"] + TARGETS["eo_slack_ms"]
    L.append(f"| latency at the same rate, exactly-once recommendations, checkpoint "
             f"{a['checkpoint_ms']} ms | {lat(eo)} | p99 ≤ {bound:.0f} ms | "
             f"{_status(_p99(eo), bound, False)} |")
    ml = r.get("ml100k")
    if ml and "skipped" in ml:
        L.append(f"| ml-100k replay | skipped: {ml['skipped']} | | |")
    elif ml:
        L.append(f"| throughput, ml-100k replay (deploy/ml-100k.toml) | {thr(ml)} | | |")
        L.append(f"| latency, ml-100k at ½ its peak | {lat(ml)} | | |")
    hp = r.get("hot_path") or {}
    if "python_cpu_us_per_event" in hp:
        per = hp["cpu_us_per_event"]
        L.append(f"| Python CPU per event, engine replay ({hp['settings']['warm_events']} warm-up "
                 f"events, then {hp['settings']['measured_events']}, batches of "
                 f"{hp['settings']['batch_records']}) | {hp['python_cpu_us_per_event']} µs "
                 f"(user side {per['user operator engine']}, of which scoring kernel "
                 f"{per['  of which scoring kernel']}; item side {per['item operator engine']}) "
                 f"| ≤ 150 µs | {_status(hp['python_cpu_us_per_event'], TARGETS['python_us_per_event'], False)} |")
        sk, pk = hp["scoring_kernel"], hp["similarity_kernel"]
        L.append(f"| scoring kernel vs its plain-Python twin ({sk['calls']} captured calls) | "
                 f"{sk['compiled_us']} µs vs {sk['python_twin_us']} µs = ×{sk['speedup']} | ≥ 20× | "
                 f"{_status(sk['speedup'], TARGETS['kernel_speedup'], True)} |")
        L.append(f"| similarity kernel vs its twin ({pk['pairs_per_flush']} pairs per flush) | "
                 f"{pk['compiled_ms']} ms vs {pk['python_twin_ms']} ms = ×{pk['speedup']} | | |")
    elif hp:
        L.append(f"| hot-path replay | error: {hp.get('error', '')[-300:]} | | |")
    cp = r.get("ceiling_flink_copy")
    if cp and "records_per_s" in cp:
        L.append(f"| ceiling (a): Flink Kafka→Kafka copy, no Python | {cp['records_per_s']} rec/s "
                 f"({cp['records']} records; load {cp['loadavg_before'][0]}) | | "
                 f"ours = {ratio(peak, cp['records_per_s'])} of it |")
    pm1 = r.get("pyflink_identity_map")
    if pm1 and "records_per_s" in pm1:
        L.append(f"| reference: the copy job + ONE Python identity map (thread mode) | "
                 f"{pm1['records_per_s']} rec/s ({pm1['records']} records; load "
                 f"{pm1['loadavg_before'][0]}) | | ours = {ratio(peak, pm1['records_per_s'])} of it |")
    cc = r.get("ceiling_kafka_consume")
    if cc and "records_per_s" in cc:
        L.append(f"| ceiling (b): raw Kafka consume (ConsumerPerformance) | "
                 f"{cc['records_per_s']:.0f} rec/s ({cc.get('MB_per_s')} MB/s; load "
                 f"{cc['loadavg_before'][0]}) | | ours = {ratio(peak, cc['records_per_s'])} of it |")
    L.append("")
    L.append("Throughput: events answered ÷ time between the first and the last recommendation's "
             "broker append time (LogAppendTime), start-up excluded; *sustained* is the same over "
             "the second half of the backlog (the JVM's JIT compiler and the item model have warmed "
             "up), and is the figure the bar is read on. Latency: producer send → the "
             "recommendation visible to a consumer (read_committed); 'emit' is send → the "
             "operator's generated_at.")
    L += _other_reports()
    path.write_text("\n".join(L) + "\n")


def _load_json(name: str) -> dict[str, Any] | None:
    try:
        return json.loads((ROOT / "reports" / name).read_text())
    except (OSError, ValueError):
        return None


def _other_reports() -> list[str]:
    """Rows from the offline benchmarks' reports (their own commands), when present."""
    L: list[str] = []
    st = _load_json("state_size.json")
    if st:
        L.append(f"\n## State size (`{st['command']}`)\n")
        L.append("| measurement | result | bar | status |")
        L.append("|---|---|---|---|")
        for name, x in (st.get("ml100k") or {}).items():
            d = x["profile_state_bytes"]
            L.append(f"| profile state per user, ml-100k, {name} | mean {d['mean']:.0f} B, p50 "
                     f"{d['p50']:.0f}, p99 {d['p99']:.0f}, max {d['max']:.0f} | ≤ 2 KB (mean) | "
                     f"{_status(d['mean'], TARGETS['state_bytes'], False)} |")
            f = x.get("fields_mean_bytes") or {}
            if f:
                L.append(f"| where those bytes are (mean per user) | "
                         f"{', '.join(f'{k} {v:.0f}' for k, v in f.items())} | | |")
            imp = x.get("impressions_state_bytes")
            if imp:
                L.append(f"| impressions state per user, ml-100k, {name} | mean {imp['mean']:.0f} B, "
                         f"max {imp['max']:.0f} | | |")
        for key, label in (("model", "item model per user-operator subtask"),
                           ("similarity", "similarity rows per item-operator subtask")):
            x = st.get(key)
            if x:
                L.append(f"| {label}, ml-100k | {x['summary']} | | |")
    rv = _load_json("recovery.json")
    if rv:
        L.append(f"\n## Recovery after a killed TaskManager (`{rv['command']}`)\n")
        L.append(f"{rv['setup']}; {rv['rate_per_s']:.0f} events/s; {rv['lost']} of "
                 f"{rv['events_sent']} events without a recommendation at the end.\n")
        L.append("| kill | noticed | running again | first answer | latency back under the "
                 "bound | worst latency |")
        L.append("|---|---|---|---|---|---|")
        for n, k in enumerate(rv["kills"], 1):
            L.append(f"| {n} | {k['detected_s']} s | {k['running_s']} s | "
                     f"{k.get('first_answer_s')} s | {k['recovered_s']} s | "
                     f"{k['worst_latency_s']} s |")
    ui = _load_json("unknown_ids.json")
    if ui:
        L.append(f"\n## A flood of unknown item ids (`{ui['command']}`)\n")
        L.append("| admit | events | RSS MB | recommender items | item-operator items | "
                 "resident rows | rows in keyed state | user state MB |")
        L.append("|---|---|---|---|---|---|---|---|")
        for run in ui["runs"]:
            for x in run["samples"][1:]:
                L.append(f"| {run['admit']} | {x['events']:,} | {x['rss_mb']} | "
                         f"{x['recommender_items']:,} | {x['item_operator_items']:,} | "
                         f"{x['resident_similarity_rows']:,} | "
                         f"{x['similarity_rows_in_keyed_state']:,} | {x['user_state_mb']} |")
    pj = _load_json("profile_job.json")
    if pj and "cpu" in pj:
        c = pj["cpu"]
        L.append(f"\n## Where the time goes in the running job (`{pj['command']}`)\n")
        L.append(f"{pj['events_per_s_during_profile']} events/s during a {c['window_s']} s window, "
                 f"load {pj['loadavg'][0]}; job JVM {c['job_jvm_cpu_ms_per_event']} ms CPU/event "
                 f"({c['job_jvm_cores_busy']} cores busy), broker {c['broker_cpu_ms_per_event']} ms "
                 "CPU/event.\n")
        L.append("| thread (operator chain) | CPU ms/event |")
        L.append("|---|---|")
        for t in c["by_thread_group"][:8]:
            L.append(f"| {t['thread'][:110].replace('|', '/')} | {t['cpu_ms_per_event']} |")
        L.append("\n| Python (GIL) time by stage, py-spy --gil | share |")
        L.append("|---|---|")
        for t in pj["by_stage"][:12]:
            L.append(f"| {t['what']} | {t['share']:.1%} |")
    return L


def _status(value: float | None, target: float, higher_better: bool) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_better else value <= target
    if ok:
        return "**met**"
    return (f"missed: {value / target:.2f}× of the bar" if higher_better
            else f"missed: {value / target:.1f}× the bar")


# ------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--events", type=int, default=40_000, help="synthetic events preloaded per run")
    ap.add_argument("--ml-events", type=int, default=20_000, help="ml-100k ratings preloaded")
    ap.add_argument("--ceiling-records", type=int, default=200_000,
                    help="records copied / consumed by the ceiling measurements")
    ap.add_argument("--checkpoint-ms", type=int, default=1000,
                    help="job.checkpoint_interval_ms of every run (the job's default)")
    ap.add_argument("--max-drain-s", type=float, default=240,
                    help="bound of each throughput phase after the first output")
    ap.add_argument("--latency-seconds", type=float, default=30)
    ap.add_argument("--latency-fraction", type=float, default=0.5)
    ap.add_argument("--latency-curve", default="100,300,600",
                    help="also measure latency at these rates (events/s), after the ½-peak phase")
    ap.add_argument("--curve-seconds", type=float, default=15)
    ap.add_argument("--skip", action="append", default=[],
                    choices=["hot_path", "exactly_once", "ml100k", "cluster", "copy", "pymap",
                             "consume"])
    ap.add_argument("--pymap-records", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--render-only", action="store_true",
                    help="only re-write --out-md from --out-json (e.g. after the offline "
                         "benchmarks refreshed their reports)")
    ap.add_argument("--out-json", default=str(ROOT / "reports" / "bench.json"))
    ap.add_argument("--out-md", default=str(ROOT / "reports" / "bench.md"))
    args = ap.parse_args(argv)
    if args.render_only:
        write_markdown(json.loads(Path(args.out_json).read_text()), Path(args.out_md))
        print(Path(args.out_md).read_text())
        return 0
    if args.quick:
        args.events, args.ml_events, args.ceiling_records = 6_000, 4_000, 50_000
        args.latency_seconds = 15

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    report: dict[str, Any] = {"command": " ".join(["python", "bench/bench_e2e.py",
                                                   *(argv if argv is not None else sys.argv[1:])]),
                              "started": started, "machine": machine(), "code": code_version(),
                              "args": vars(args)}
    log(f"machine: {report['machine']}")
    bench = Bench(args)
    r = bench.results
    report["results"] = r

    def save() -> None:
        report["loadavg_at_end"] = loadavg()
        report["duration_s"] = time.monotonic() - T0
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        write_markdown(report, Path(args.out_md))

    def on_signal(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        # The replay first: a quiet machine for a CPU-only measurement (no job running yet).
        if "hot_path" not in args.skip:
            r["hot_path"] = bench.hot_path()
            log(f"hot path: {r['hot_path'].get('python_cpu_us_per_event')} µs/event")
            save()
        bench.start_broker()
        bench.synthetic_data()
        _run_all(bench, args, save)
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        save()
        bench.stop()
    log(f"done: {args.out_json}, {args.out_md}")
    print(Path(args.out_md).read_text())
    return 0


def _run_all(bench: Bench, args: argparse.Namespace, save: Callable[[], None]) -> None:
    r = bench.results
    ckpt = [f"job.checkpoint_interval_ms={args.checkpoint_ms}"]
    # Throughput (drain the backlog), then latency at half the sustained peak in the same,
    # warm job; recommendations at-least-once (the default).
    base = bench.synthetic_run("synthetic_p1", ckpt, latency_rate="auto",
                               curve=[float(x) for x in args.latency_curve.split(",") if x])
    r["synthetic_p1"] = base
    rate = (base.get("latency") or {}).get("rate_events_per_s") or 0
    save()
    if "exactly_once" not in args.skip:
        # The same with exactly-once recommendations: visible when the checkpoint commits.
        r["synthetic_p1_exactly_once"] = bench.synthetic_run(
            "synthetic_p1_exactly_once",
            ckpt + ['kafka.delivery_guarantees.recommendations="exactly-once"'],
            n_events=max(1, args.events // 2), latency_rate=rate or "auto")
        save()
    if "ml100k" not in args.skip:
        r["ml100k"] = bench.ml100k_run(ckpt)
        save()
    if "cluster" not in args.skip:
        r["cluster"] = bench.cluster_runs([1, 2])
        save()
    if "copy" in args.skip and "consume" in args.skip and "pymap" in args.skip:
        return
    # Ceilings on a topic of their own: the synthetic events, repeated to --ceiling-records.
    source = f"ceiling-in-{uuid.uuid4().hex[:6]}"
    create_plain_topic(bench.bootstrap, source, 1)
    n = args.ceiling_records
    k, s = produce_all(bench.bootstrap, source,
                       (bench.preload[i % len(bench.preload)] for i in range(n)))
    log(f"ceilings: {k} records in {source} ({k / s:.0f}/s produced)")
    if "copy" not in args.skip:
        r["ceiling_flink_copy"] = bench.copy_ceiling(source, n)
        log(f"copy ceiling: {r['ceiling_flink_copy'].get('records_per_s')} records/s")
        save()
    if "pymap" not in args.skip:
        r["pyflink_identity_map"] = bench.copy_ceiling(source, min(n, args.pymap_records),
                                                       python_map=True)
        log(f"one Python identity map: {r['pyflink_identity_map'].get('records_per_s')} records/s")
        save()
    if "consume" not in args.skip:
        r["ceiling_kafka_consume"] = bench.consumer_perf(source, n)
        log(f"consume ceiling: {r['ceiling_kafka_consume'].get('records_per_s')} records/s")
        save()


if __name__ == "__main__":
    raise SystemExit(main())
