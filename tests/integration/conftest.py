"""Fixtures for tests that run the real job (a child process on the local mini-cluster)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import pytest
from aiohttp import web

from recsys.local import cluster
from recsys.local.stack import JobExited, JobStack

# Small intervals so tests see outputs quickly; everything else is the shipped default.
FAST_SETTINGS = [
    "job.checkpoint_interval_ms=500",
    "profile.snapshot_min_interval_ms=200",
    "similarity.flush_interval_ms=100",
    "similarity.emit_min_interval_ms=200",
]


class RunningJob(JobStack):
    """The harness's ``JobStack`` with the shared fast settings; a dead job fails the test with
    the end of its log."""

    def check_alive(self) -> None:
        try:
            super().check_alive()
        except JobExited as e:
            pytest.fail(str(e), pytrace=False)


def start_running_job(bootstrap: str, log_dir: Path, extra: Sequence[str] = ()) -> RunningJob:
    return RunningJob(bootstrap, log_dir, overrides=FAST_SETTINGS + list(extra)).start()


@pytest.fixture(scope="module")
def running_job(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningJob]:
    """One job per test module (start-up costs ~10 s), on topics of its own."""
    job = start_running_job(kafka_bootstrap, tmp_path_factory.mktemp("job"))
    try:
        yield job
    finally:
        job.stop()


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
