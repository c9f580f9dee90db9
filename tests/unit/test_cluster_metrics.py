"""Reading a job metric over Flink's REST API (``recsys/local/cluster.job_metric``).

The REST endpoint answers from metrics it fetches lazily, so a first answer is often an empty
list; that must be waited out, never read as 0 (a test asserting ``numRestarts == 0`` would
then pass without having read anything).
"""

from __future__ import annotations

import pytest

from recsys.local import cluster

JOB = "daf823b08644f2b08c15cc95fea69de4"


def answers(monkeypatch, *replies):
    """``cluster.rest`` answering ``replies`` in turn (the last one from then on); the paths
    asked are recorded."""
    asked: list[tuple[str, str]] = []

    def rest(jobmanager, method, path, body=None, timeout_s=10.0):
        asked.append((method, path))
        return replies[min(len(asked), len(replies)) - 1]

    monkeypatch.setattr(cluster, "rest", rest)
    return asked


def test_the_metric_is_read_once_the_endpoint_has_fetched_it(monkeypatch):
    asked = answers(monkeypatch, [], None, [{"id": "numRestarts", "value": "3"}])
    assert cluster.job_metric("127.0.0.1:8081", JOB, "numRestarts", poll_s=0) == 3.0
    assert asked == [("GET", f"/jobs/{JOB}/metrics?get=numRestarts")] * 3


def test_zero_is_a_value_read_not_a_default(monkeypatch):
    answers(monkeypatch, [{"id": "numRestarts", "value": "0"}])
    assert cluster.job_metric("127.0.0.1:8081", JOB, "numRestarts", poll_s=0) == 0.0


def test_a_metric_that_never_shows_up_is_an_error(monkeypatch):
    answers(monkeypatch, [], [{"id": "uptime", "value": "5"}])
    with pytest.raises(cluster.ClusterError, match="numRestarts"):
        cluster.job_metric("127.0.0.1:8081", JOB, "numRestarts", timeout_s=0.05, poll_s=0.01)
