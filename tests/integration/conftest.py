"""Fixtures for tests that run the real job (a child process on the local mini-cluster)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from aiohttp import web

from recsys import cluster, kafka_io
from state_schemas.config import TopicNames
from recsys.job_process import log_tail, start_job_process, stop_job_process
from recsys.topics import ensure_topics
from tests.conftest import unique_topic_names

# Small intervals so tests see outputs quickly; everything else is the shipped default.
FAST_SETTINGS = [
    "job.checkpoint_interval_ms=500",
    "profile.snapshot_min_interval_ms=200",
    "similarity.flush_interval_ms=100",
    "similarity.emit_min_interval_ms=200",
]


@dataclass
class RunningJob:
    bootstrap: str
    topics: TopicNames
    log_path: Path
    process: Any

    def produce(self, topic_field: str, records: list[Any], key_field: str | None = None) -> int:
        return kafka_io.produce_json(self.bootstrap, getattr(self.topics, topic_field), records,
                                     key_field=key_field)

    def produce_raw(self, topic_field: str, values: list[bytes]) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        for v in values:
            producer.send(getattr(self.topics, topic_field), value=v)
        producer.flush()
        producer.close()

    def consume(self, topic_field: str, until: Callable[[list], bool], timeout_s: float = 60) -> list:
        self.assert_alive()
        records = kafka_io.consume(self.bootstrap, getattr(self.topics, topic_field),
                                   timeout_s=timeout_s, until=until)
        self.assert_alive()
        return records

    def assert_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"the job exited with {self.process.returncode}:\n{log_tail(self.log_path)}",
                        pytrace=False)


def topic_overrides(names: TopicNames) -> list[str]:
    return [f'topics.{f.name}="{getattr(names, f.name)}"' for f in fields(TopicNames)]


def start_running_job(bootstrap: str, log_dir: Path, extra: list[str] = ()) -> RunningJob:
    names = unique_topic_names()
    ensure_topics(bootstrap, names, 1)
    overrides = ([f'kafka.bootstrap_servers="{bootstrap}"', 'kafka.starting_offsets="earliest"',
                  f'kafka.group_id="test-{uuid.uuid4().hex[:8]}"',
                  f'kafka.transactional_id_prefix="t{uuid.uuid4().hex[:8]}"']
                 + topic_overrides(names) + FAST_SETTINGS + list(extra))
    log_path = log_dir / "job.log"
    proc = start_job_process(overrides, log_path)
    return RunningJob(bootstrap, names, log_path, proc)


@pytest.fixture(scope="module")
def running_job(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningJob]:
    """One job per test module (start-up costs ~10 s), on topics of its own."""
    job = start_running_job(kafka_bootstrap, tmp_path_factory.mktemp("job"))
    try:
        yield job
    finally:
        stop_job_process(job.process)


def first_job_id(jobmanager: str, timeout_s: float = 60) -> str:
    """The id of the first job the JobManager lists (the mini-cluster's REST endpoint can come
    up after the job's first output)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            jobs = cluster.list_jobs(jobmanager)
            if jobs:
                return jobs[0]["jid"]
        except cluster.ClusterError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


class ServerThread:
    """The aiohttp app on 127.0.0.1:<free port>, in a thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.base_url = ""

    def start(self) -> str:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.runner.setup(), self.loop).result(30)
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        asyncio.run_coroutine_threadsafe(site.start(), self.loop).result(30)
        host, port = self.runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
