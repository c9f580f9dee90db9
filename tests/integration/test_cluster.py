"""The job on a real local standalone Flink cluster (JobManager + TaskManager JVMs from the pip
package's distribution), submitted with ``flink run -py ... -pyfs <project zip>`` like on any
session cluster: a scripted stream goes in, exact profiles, recommendations and dead letters come
out; the TaskManager's PrometheusReporter exports the job's metrics; savepoint, cancel, stop.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import fields
from pathlib import Path

import pytest

from recsys.local import cluster

from recsys import kafka_io
from state_schemas.config import TopicNames
from recsys.paths import PROJECT_ROOT
from tests.integration.conftest import FAST_SETTINGS

pytestmark = pytest.mark.slow

T0 = 1_767_225_600_000
ITEMS = {
    "a": ("Alpha Trail Shoes", ["shoes"], ["trail"]),
    "b": ("Bravo Socks", ["socks"], ["running"]),
    "c": ("Charlie Cap", ["hats"], ["sun"]),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(width: int = 4) -> str:
    """``"P-Q"``: ``width`` consecutive free ports (the reporters of the JM and the TMs)."""
    for _ in range(50):
        base = free_port()
        ports = range(base, base + width)
        if ports[-1] < 65536 and all(_free(p) for p in ports):
            return f"{ports[0]}-{ports[-1]}"
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


@pytest.fixture(scope="module")
def flink_cluster(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("flink-cluster")
    rest_port = free_port()
    try:
        info = cluster.start_cluster(rest_port=rest_port, slots=2, metrics_ports=free_port_range(),
                                     home=home, timeout_s=120)
    except cluster.ClusterError as e:
        pytest.fail(f"could not start the local Flink cluster: {e}", pytrace=False)
    try:
        yield info
    finally:
        cluster.stop_cluster(rest_port, home)


def test_cluster_is_up_and_idempotent(flink_cluster: cluster.ClusterInfo):
    ov = cluster.overview(flink_cluster.jobmanager)
    assert ov["taskmanagers"] == 1 and ov["slots-total"] == 2
    assert ov["flink-version"] == "2.3.0"
    again = cluster.start_cluster(rest_port=flink_cluster.rest_port, home=flink_cluster.home)
    assert again.jobmanager_pid == flink_cluster.jobmanager_pid
    assert again.taskmanager_pids == flink_cluster.taskmanager_pids
    status = subprocess.run(
        [sys.executable, "-m", "recsys.local.cluster", "cluster", "status", "--rest-port",
         str(flink_cluster.rest_port), "--home", str(flink_cluster.home)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "1 TaskManager(s)" in status.stdout
    # The JobManager's reporter took the first port of the range.
    first = int(flink_cluster.metrics_ports.split("-")[0])
    assert "flink_jobmanager_numRegisteredTaskManagers" in scrape(first)


def ev(eid: str, user: str, etype: str, item: str, dt: int, value=None) -> dict:
    return {"event_id": eid, "user_id": user, "item_id": item, "event_type": etype,
            "ts": T0 + dt, "value": value}


def test_job_on_standalone_cluster_end_to_end(flink_cluster: cluster.ClusterInfo,
                                               kafka_bootstrap: str, topic_names: TopicNames):
    jm = flink_cluster.jobmanager
    suffix = uuid.uuid4().hex[:8]
    overrides = [
        f'kafka.bootstrap_servers="{kafka_bootstrap}"', 'kafka.starting_offsets="earliest"',
        f'kafka.group_id="cluster-{suffix}"', f'kafka.transactional_id_prefix="cl{suffix}"',
        *(f'topics.{f.name}="{getattr(topic_names, f.name)}"' for f in fields(TopicNames)),
        *FAST_SETTINGS,
    ]
    job_id = cluster.submit_job(jm, None, overrides,
                                log_path=flink_cluster.home / "submit.log")
    try:
        cluster.wait_for_job_running(jm, job_id, timeout_s=120)
        assert any(j["jid"] == job_id and j["state"] == "RUNNING" for j in cluster.list_jobs(jm))

        def produce(topic: str, records: list, key: str | None = None) -> None:
            kafka_io.produce_json(kafka_bootstrap, topic, records, key_field=key)

        def consume(topic: str, until, timeout_s: float = 90) -> list:
            return kafka_io.consume(kafka_bootstrap, topic, timeout_s=timeout_s, until=until)

        produce(topic_names.item_catalog, [
            {"item_id": i, "ts": T0 - 100, "title": t, "categories": c, "tags": g, "price": 20.0,
             "available": True} for i, (t, c, g) in ITEMS.items()], "item_id")
        produce(topic_names.user_attributes, [
            {"user_id": "uA", "ts": T0 - 50, "attributes": {"age": 31, "gender": "F"}}], "user_id")
        # Wait for the attributes before the events (sources are read in parallel).
        consume(topic_names.user_profiles, lambda rs: any(r["key"] == "uA" for r in rs))
        produce(topic_names.user_events, [
            ev("c1", "uA", "view", "a", 1_000), ev("c2", "uA", "click", "a", 2_000),
            ev("c3", "uA", "purchase", "b", 3_000), ev("c4", "uB", "view", "a", 4_000),
            ev("c5", "uB", "like", "c", 5_000)], "user_id")
        produce(topic_names.user_events, [b"{not json"])
        produce(topic_names.recommendation_requests, [
            {"request_id": "req-1", "user_id": "uA", "ts": T0 + 6_000, "k": 2}], "user_id")

        recs = consume(topic_names.recommendations,
                       lambda rs: {r["value"]["trigger_event_id"] for r in rs} >= {"c1", "c2", "c3", "c4", "c5"}
                       and any(r["value"]["request_id"] == "req-1" for r in rs))
        by_trigger = {r["value"]["trigger_event_id"]: r["value"] for r in recs}
        assert set(by_trigger) >= {"c1", "c2", "c3", "c4", "c5"}
        answer = next(r["value"] for r in recs if r["value"]["request_id"] == "req-1")
        assert answer["user_id"] == "uA" and len(answer["items"]) <= 2
        # uA purchased b and clicked a: neither is recommended back after the purchase.
        assert "b" not in {i["item_id"] for i in by_trigger["c3"]["items"]}
        assert "b" not in {i["item_id"] for i in answer["items"]}

        profiles = consume(topic_names.user_profiles,
                           lambda rs: any(r["key"] == "uA" and r["value"] and
                                          r["value"]["counters"]["all_time"].get("purchase") == 1
                                          for r in rs))
        ua = [r["value"] for r in profiles if r["key"] == "uA"][-1]
        assert ua["counters"]["all_time"] == {"view": 1, "click": 1, "purchase": 1}
        assert ua["attributes"] == {"age": 31, "gender": "F"}
        assert [r["item_id"] for r in ua["recent_items"]] == ["b", "a"]

        dlq = consume(topic_names.events_dlq, lambda rs: len(rs) >= 1)
        assert [r["value"]["reason"] for r in dlq] == ["malformed_json"]

        # The TaskManager's PrometheusReporter (the second port of the range) exports the job's
        # user metrics under their Flink scope names.
        tm_port = int(flink_cluster.metrics_ports.split("-")[0]) + 1
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline:
            try:
                body = scrape(tm_port)
            except (OSError, http.client.HTTPException):
                # The reporter's HTTP server may drop a connection while the TaskManager is
                # busy (a fresh-clone run once got RemoteDisconnected): ask again.
                body = ""
            if 'flink_taskmanager_job_task_operator_variant_trigger_recommendations_emitted{' in body:
                break
            time.sleep(1)
        for name in ("event_type_events_in", "source_topic_reason_dlq_records",
                     "variant_trigger_recommendations_emitted", "le_recommendation_latency_ms_bucket",
                     "profiles_updated", "model_catalog_items", "pendingRecords"):
            assert f"flink_taskmanager_job_task_operator_{name}{{" in body, name
        assert 'le="+Inf"' in body and f'source_topic="{topic_names.user_events}"' in body

        # The project's packages reached the TaskManager through -pyfs (not through the venv).
        tm_logs = "".join(p.read_text(errors="replace")
                          for p in flink_cluster.log_dir.glob("*taskexecutor*.log"))
        assert "recsys-pyfiles" in tm_logs

        savepoint = cluster.trigger_savepoint(jm, job_id, target_dir=str(flink_cluster.home / "sp"))
        assert savepoint.startswith("file:")
        assert (Path(savepoint.removeprefix("file:")) / "_metadata").is_file()
    finally:
        state = cluster.cancel_job(jm, job_id, timeout_s=60)
    assert state == "CANCELED"
    assert any(j["jid"] == job_id and j["state"] == "CANCELED" for j in cluster.list_jobs(jm))


def test_stop_cluster(flink_cluster: cluster.ClusterInfo):
    """Runs last in this module: the fixture's own stop is then a no-op."""
    assert cluster.stop_cluster(flink_cluster.rest_port, flink_cluster.home) is True
    assert cluster.cluster_status(flink_cluster.rest_port, flink_cluster.home) is None
    with pytest.raises(cluster.ClusterError):
        cluster.overview(flink_cluster.jobmanager, timeout_s=2)
    assert cluster.stop_cluster(flink_cluster.rest_port, flink_cluster.home) is False
