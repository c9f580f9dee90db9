"""A savepoint written by the previous release (state v1) restores into this code (state v2).

The previous release is checked out from git into a worktree and run with this venv; it takes a
real savepoint through Flink's REST API; the current code starts from it (with
``kafka.starting_offsets="latest"``, so a lost state could not be rebuilt by re-reading Kafka)
and must continue every profile: counters, recent-window buckets (the migrated field), interests.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from recsys import cluster
from recsys.job_process import log_tail, start_job_process, stop_job_process
from recsys.kafka_local import free_port_pair
from recsys.paths import PROJECT_ROOT
from recsys.topics import ensure_topics
from state_schemas.state import USER_PROFILE_STATE_VERSION
from tests.conftest import unique_topic_names
from tests.integration.conftest import FAST_SETTINGS, RunningJob, topic_overrides

pytestmark = pytest.mark.slow

# The last commit whose user profile state is version 1 (before the v2 migration landed).
STATE_V1_COMMIT = "745a576f7f2017e4981d248789f9520066f32a80"
T0 = 1_767_225_600_000
USERS = ["ua", "ub", "uc"]


@pytest.fixture
def v1_checkout(tmp_path):
    if subprocess.run(["git", "cat-file", "-e", f"{STATE_V1_COMMIT}^{{commit}}"], cwd=PROJECT_ROOT,
                      capture_output=True).returncode != 0:
        pytest.fail(f"commit {STATE_V1_COMMIT} (state v1 release) is not in this clone's history")
    path = tmp_path / "v1"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), STATE_V1_COMMIT],
                   cwd=PROJECT_ROOT, check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=PROJECT_ROOT,
                       capture_output=True)


def first_job_id(jobmanager: str, timeout_s: float = 60) -> str:
    """The mini-cluster's REST endpoint can come up after the job's first output."""
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


def ev(eid, user, etype, item, dt):
    return {"event_id": eid, "user_id": user, "item_id": item, "event_type": etype,
            "ts": T0 + dt, "value": None}


def test_v1_savepoint_restores_into_current_code(kafka_bootstrap, tmp_path, v1_checkout):
    assert USER_PROFILE_STATE_VERSION == 2
    names = unique_topic_names()
    ensure_topics(kafka_bootstrap, names, 1)
    rest_port = free_port_pair()
    base = [f'kafka.bootstrap_servers="{kafka_bootstrap}"', f'kafka.group_id="evo-{uuid.uuid4().hex[:6]}"',
            f'kafka.transactional_id_prefix="evo{uuid.uuid4().hex[:6]}"', f"job.rest_port={rest_port}"
            ] + topic_overrides(names) + FAST_SETTINGS
    from recsys.paths import CACHE_DIR

    env = {**os.environ, "PYTHONPATH": str(v1_checkout), "RECSYS_CACHE_DIR": str(CACHE_DIR)}
    old = start_job_process(base + ['kafka.starting_offsets="earliest"'], tmp_path / "v1.log",
                            env=env, project_root=v1_checkout)
    job = RunningJob(kafka_bootstrap, names, tmp_path / "v1.log", old)
    try:
        job.produce("item_catalog", [{"item_id": "i1", "ts": T0, "title": "One", "categories": ["c"],
                                      "tags": [], "price": 1.0, "available": True}], key_field="item_id")
        job.produce("user_events", [ev(f"{u}-{n}", u, "view", "i1", n * 1000)
                                    for u in USERS for n in range(3)], key_field="user_id")
        job.consume("user_profiles", lambda rs: all(any(
            r["key"] == u and sum(r["value"]["counters"]["all_time"].values()) == 3 for r in rs)
            for u in USERS), timeout_s=120)
        jobmanager = f"127.0.0.1:{rest_port}"  # the mini-cluster's REST API (job.rest_port)
        job_id = first_job_id(jobmanager)
        cluster.wait_for_job_running(jobmanager, job_id, timeout_s=60)
        savepoint = cluster.stop_job_with_savepoint(jobmanager, job_id, str(tmp_path / "savepoints"))
        old.wait(60)
    finally:
        stop_job_process(old)
    assert Path(savepoint.removeprefix("file:")).exists(), savepoint

    new = start_job_process(base + ['kafka.starting_offsets="latest"', f'job.savepoint_path="{savepoint}"'],
                            tmp_path / "v2.log")
    job = RunningJob(kafka_bootstrap, names, tmp_path / "v2.log", new)
    try:
        job.produce("user_events", [ev(f"{u}-new", u, "click", "i1", 10_000) for u in USERS],
                    key_field="user_id")

        def continued(rs):
            latest = {r["key"]: r["value"] for r in rs}
            return all(latest.get(u) and latest[u]["counters"]["all_time"].get("click") == 1
                       for u in USERS)

        profiles = job.consume("user_profiles", continued, timeout_s=120)
        assert continued(profiles), log_tail(tmp_path / "v2.log")
        latest = {r["key"]: r["value"] for r in profiles}
        for u in USERS:
            p = latest[u]
            assert p["counters"]["all_time"] == {"view": 3, "click": 1}
            assert p["counters"]["recent"] == {"view": 3, "click": 1}  # migrated day buckets
            assert p["first_seen"] == T0 and p["last_seen"] == T0 + 10_000
            assert p["interests"]["category:c"] > 0
    finally:
        stop_job_process(new)


def test_a_changed_shard_count_is_refused_with_the_setting_to_use(kafka_bootstrap, tmp_path):
    """``similarity.shards`` is part of the state layout: restoring similarity rows written with
    another shard count fails the job with a message naming the setting, instead of silently
    orphaning every row."""
    names = unique_topic_names()
    ensure_topics(kafka_bootstrap, names, 1)
    rest_port = free_port_pair()
    base = [f'kafka.bootstrap_servers="{kafka_bootstrap}"', 'kafka.starting_offsets="earliest"',
            f'kafka.group_id="shards-{uuid.uuid4().hex[:6]}"',
            f'kafka.transactional_id_prefix="sh{uuid.uuid4().hex[:6]}"', f"job.rest_port={rest_port}",
            "job.restart_attempts=1", "job.restart_delay_ms=500"] + topic_overrides(names) + FAST_SETTINGS
    first = start_job_process(base + ["similarity.shards=4"], tmp_path / "first.log")
    job = RunningJob(kafka_bootstrap, names, tmp_path / "first.log", first)
    try:
        # Every item id lands in some shard of 4; with a few of them, shard keys 0-1 get rows.
        items = [f"i{n}" for n in range(12)]
        job.produce("user_events", [ev(f"s{n}", f"u{n % 3}", "purchase", item, n * 10)
                                    for n, item in enumerate(items)], key_field="user_id")
        job.consume("item_similarity", lambda rs: len({r["key"] for r in rs}) >= 6, timeout_s=120)
        jobmanager = f"127.0.0.1:{rest_port}"
        job_id = first_job_id(jobmanager)
        savepoint = cluster.stop_job_with_savepoint(jobmanager, job_id, str(tmp_path / "sp"))
        first.wait(60)
    finally:
        stop_job_process(first)

    second = start_job_process(base + ["similarity.shards=2", f'job.savepoint_path="{savepoint}"'],
                               tmp_path / "second.log")
    try:
        # New items for the same users: pair updates with their restored histories.
        RunningJob(kafka_bootstrap, names, tmp_path / "second.log", second).produce(
            "user_events", [ev(f"t{n}", f"u{n % 3}", "purchase", f"j{n}", 10_000 + n)
                            for n in range(12)], key_field="user_id")
        second.wait(180)  # the restart strategy gives up after one more attempt
    finally:
        stop_job_process(second)
    # The job's own output (the client's exception) and Flink's log (the task's failure).
    log = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
    assert second.returncode != 0, log_tail(tmp_path / "second.log")
    assert "similarity.shards is 2, but the restored similarity state was written with 4" in log, \
        log_tail(tmp_path / "second.log")
