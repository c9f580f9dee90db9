"""Savepoints of earlier releases restore into this code, and this release's own savepoints
restore at another parallelism.

An earlier release is checked out from git into a worktree and run with this venv; it takes a
real savepoint through Flink's REST API; the current code starts from it, resuming the input
from the offsets the old job committed (nothing is read twice, so a lost state could not be
rebuilt by re-reading Kafka), and must continue every profile: counters, recent-window buckets, interests, first/last seen.
Two releases: the one whose profile state is version 1 (pickled dicts), and the previous
release (version 2, pickled, operators of the per-record design). This code stores version 3
(``state_schemas/profile_state.py``) and migrates the others as it reads them. The operators of
the previous design whose state is rebuilt from the stream (similarity shards, trending, the
recommendation operator's caches) have no counterpart here, hence
``job.allow_non_restored_state=true`` (docs/deploy.md, "Upgrading").
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from recsys.local import cluster
from recsys.local.kafka_broker import free_port_pair
from recsys.paths import PROJECT_ROOT
from state_schemas.profile_state import PROFILE_STATE_VERSION
from tests.integration.conftest import FAST_SETTINGS, RunningJob, first_job_id

pytestmark = pytest.mark.slow

# The last commit whose user profile state is version 1 (before the v2 migration landed), and
# the previous release (profile state version 2, before the micro-batch engine).
STATE_V1_COMMIT = "745a576f7f2017e4981d248789f9520066f32a80"
STATE_V2_COMMIT = "9fcbdd7cbd643787d31ebcc7fb453669334193c2"
T0 = 1_767_225_600_000
USERS = ["ua", "ub", "uc"]


def checkout(commit: str, path: Path):
    if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=PROJECT_ROOT,
                      capture_output=True).returncode != 0:
        pytest.fail(f"commit {commit} (an earlier release) is not in this clone's history")
    subprocess.run(["git", "worktree", "add", "--detach", str(path), commit],
                   cwd=PROJECT_ROOT, check=True, capture_output=True)


@pytest.fixture(params=[STATE_V1_COMMIT, STATE_V2_COMMIT], ids=["state-v1", "state-v2"])
def release_checkout(request, tmp_path):
    path = tmp_path / "release"
    checkout(request.param, path)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=PROJECT_ROOT,
                       capture_output=True)


def wait_until_reading(job: RunningJob, timeout_s: float = 120) -> None:
    """Until a job started at the latest offsets reads its input: a probe user's events are
    sent until the probe's profile comes out (a record sent earlier would be skipped)."""
    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline:
        job.produce("user_events", [ev(f"probe-{n}", "probe", "view", "i1", n)],
                    key_field="user_id")
        n += 1
        seen = job.consume("user_profiles", lambda rs: any(r["key"] == "probe" for r in rs),
                           timeout_s=3)
        if any(r["key"] == "probe" for r in seen):
            return
    pytest.fail(f"the job read nothing within {timeout_s:.0f} s:\n{job.log_tail()}")


def stop_with_savepoint(job: RunningJob, jobmanager: str, directory: Path) -> str:
    """Stop the job (the mini-cluster's REST API at ``jobmanager``) with a savepoint into
    ``directory``; returns its path once the job's process has ended."""
    job_id = first_job_id(jobmanager)
    cluster.wait_for_job_running(jobmanager, job_id, timeout_s=60)
    savepoint = cluster.stop_job_with_savepoint(jobmanager, job_id, str(directory))
    job.process.wait(60)
    return savepoint


def ev(eid, user, etype, item, dt):
    return {"event_id": eid, "user_id": user, "item_id": item, "event_type": etype,
            "ts": T0 + dt, "value": None}


def test_earlier_release_savepoint_restores_into_current_code(kafka_bootstrap, tmp_path,
                                                             release_checkout):
    assert PROFILE_STATE_VERSION == 3
    rest_port = free_port_pair()
    deployment = FAST_SETTINGS + [f'kafka.group_id="evo-{uuid.uuid4().hex[:6]}"',
                                  f'kafka.transactional_id_prefix="evo{uuid.uuid4().hex[:6]}"',
                                  f"job.rest_port={rest_port}"]
    from recsys.paths import CACHE_DIR

    env = {**os.environ, "PYTHONPATH": str(release_checkout), "RECSYS_CACHE_DIR": str(CACHE_DIR)}
    job = RunningJob(kafka_bootstrap, tmp_path, tag="old", overrides=deployment, env=env,
                     project_root=release_checkout)
    names = job.topics
    # Settings this release added are unknown to the earlier one.
    job.overrides = [o for o in job.overrides if not o.startswith("topics.item_model=")]
    job.start()
    try:
        job.produce("item_catalog", [{"item_id": "i1", "ts": T0, "title": "One", "categories": ["c"],
                                      "tags": [], "price": 1.0, "available": True}], key_field="item_id")
        job.produce("user_events", [ev(f"{u}-{n}", u, "view", "i1", n * 1000)
                                    for u in USERS for n in range(3)], key_field="user_id")
        job.consume("user_profiles", lambda rs: all(any(
            r["key"] == u and sum(r["value"]["counters"]["all_time"].values()) == 3 for r in rs)
            for u in USERS), timeout_s=120)
        jobmanager = f"127.0.0.1:{rest_port}"  # the mini-cluster's REST API (job.rest_port)
        savepoint = stop_with_savepoint(job, jobmanager, tmp_path / "savepoints")
    finally:
        job.stop()
    assert Path(savepoint.removeprefix("file:")).exists(), savepoint

    # The earlier releases read each topic with a source of its own; this one reads the user
    # inputs with one source, so their offsets do not restore: it starts from the latest ones.
    job = RunningJob(kafka_bootstrap, tmp_path, tag="new", topics=names,
                     overrides=deployment).start(['kafka.starting_offsets="latest"',
                                                  f'job.savepoint_path="{savepoint}"',
                                                  "job.allow_non_restored_state=true"])
    try:
        wait_until_reading(job)
        job.produce("user_events", [ev(f"{u}-new", u, "click", "i1", 10_000) for u in USERS],
                    key_field="user_id")

        def continued(rs):
            latest = {r["key"]: r["value"] for r in rs}
            return all(latest.get(u) and latest[u]["counters"]["all_time"].get("click") == 1
                       for u in USERS)

        profiles = job.consume("user_profiles", continued, timeout_s=120)
        assert continued(profiles), job.log_tail()
        latest = {r["key"]: r["value"] for r in profiles}
        for u in USERS:
            p = latest[u]
            assert p["counters"]["all_time"] == {"view": 3, "click": 1}
            assert p["counters"]["recent"] == {"view": 3, "click": 1}  # migrated day buckets
            assert p["first_seen"] == T0 and p["last_seen"] == T0 + 10_000
            assert p["interests"]["category:c"] > 0
    finally:
        job.stop()


def one_more_view(job: RunningJob, users: list[str], tag: str, item: str, views: int,
                  bought: dict[str, list[str]]) -> dict[str, dict]:
    """Each user views ``item`` once more; every profile then continues from the restored one
    (its purchases, and ``views`` views in all). Returns the latest profiles."""
    job.produce("user_events", [ev(f"{u}-{tag}", u, "view", item, 10_000 * views)
                                for u in users], key_field="user_id")

    def continued(rs):
        latest = {r["key"]: r["value"] for r in rs}
        return all(latest.get(u) and latest[u]["counters"]["all_time"].get("view") == views
                   for u in users)

    profiles = job.consume("user_profiles", continued, timeout_s=120)
    assert continued(profiles), job.log_tail()
    latest = {r["key"]: r["value"] for r in profiles}
    for u in users:
        assert latest[u]["counters"]["all_time"] == {"purchase": len(bought[u]), "view": views}
    return latest


def test_savepoint_restores_at_another_parallelism(kafka_bootstrap, tmp_path):
    """Rescaling 1 -> 2 -> 1: a savepoint taken at parallelism 1 restores at parallelism 2, and
    one taken there restores at parallelism 1 again. Keyed state (user profiles, similarity
    rows) is redistributed by key group; the replicated item model (catalogue, popularity) is
    restored into every subtask."""
    rest_port = free_port_pair()
    deployment = FAST_SETTINGS + [f'kafka.group_id="rescale-{uuid.uuid4().hex[:6]}"',
                                  f'kafka.transactional_id_prefix="rs{uuid.uuid4().hex[:6]}"',
                                  f"job.rest_port={rest_port}"]
    job = RunningJob(kafka_bootstrap, tmp_path, tag="p1", overrides=deployment, partitions=2
                     ).start(["job.parallelism=1"])
    names = job.topics
    users = [f"u{n}" for n in range(8)]
    try:
        job.produce("item_catalog", [{"item_id": i, "ts": T0, "title": f"Item {i}",
                                      "categories": ["c"], "tags": [], "price": 1.0,
                                      "available": True} for i in ("i1", "i2")],
                    key_field="item_id")
        # u0 buys i1 only; everyone else buys i1 and i2: i2 becomes i1's neighbour.
        bought = {u: ["i1"] if u == "u0" else ["i1", "i2"] for u in users}
        job.produce("user_events", [ev(f"{u}-{n}", u, "purchase", item, n * 1000)
                                    for u in users for n, item in enumerate(bought[u])],
                    key_field="user_id")
        job.consume("user_profiles", lambda rs: all(any(
            r["key"] == u and sum(r["value"]["counters"]["all_time"].values()) == len(bought[u])
            for r in rs) for u in users), timeout_s=120)
        job.consume("item_similarity", lambda rs: {r["key"] for r in rs} >= {"i1", "i2"},
                    timeout_s=120)
        jobmanager = f"127.0.0.1:{rest_port}"
        savepoint = stop_with_savepoint(job, jobmanager, tmp_path / "sp")
    finally:
        job.stop()

    def restore(tag: str, parallelism: int, savepoint: str) -> RunningJob:
        return RunningJob(kafka_bootstrap, tmp_path, tag=tag, topics=names, overrides=deployment
                          ).start(['kafka.starting_offsets="latest"',
                                   f"job.parallelism={parallelism}",
                                   f'job.savepoint_path="{savepoint}"'])

    job = restore("p2", 2, savepoint)
    try:
        latest = one_more_view(job, users, "new", "i1", 1, bought)
        for u in users:
            assert latest[u]["first_seen"] == T0
        # i2, i1's neighbour from before the savepoint, is recommended to u0 for the i1 it
        # bought (restored profile + restored model, catalogue titles in every subtask).
        def answered(rs):
            return any(r["value"] and r["value"].get("trigger_event_id") == "u0-new" for r in rs)

        recs = job.consume("recommendations", answered, timeout_s=120)
        rec = next(r["value"] for r in recs
                   if r["value"] and r["value"].get("trigger_event_id") == "u0-new")
        by_item = {i["item_id"]: i["reasons"] for i in rec["items"]}
        assert "i2" in by_item, rec
        assert "because you purchased Item i1" in by_item["i2"], rec
        savepoint = stop_with_savepoint(job, jobmanager, tmp_path / "sp2")
    finally:
        job.stop()

    # ... and back to parallelism 1: both subtasks' keyed state in one.
    job = restore("p1b", 1, savepoint)
    try:
        one_more_view(job, users, "again", "i2", 2, bought)
    finally:
        job.stop()
