"""Reading a job metric over Flink's REST API (``recsys/local/cluster.job_metric``).

The REST endpoint answers from the copy of the metrics it fetched last, refreshed at most every
``metrics.fetcher.update-interval`` and only once asked: a first answer is an empty list or a
value seconds old (a fault test read 2 restarts after three, the third one 27 s old). Neither
may pass for the value: an empty list is waited out, never read as 0, and the value returned
is the last one read over a whole fetch interval.
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


def restarts(n: int) -> list[dict]:
    return [{"id": "numRestarts", "value": str(n)}]


def test_the_value_read_last_over_a_fetch_interval_is_returned(monkeypatch):
    asked = answers(monkeypatch, [], None, restarts(2), restarts(3))
    got = cluster.job_metric("127.0.0.1:8081", JOB, "numRestarts", poll_s=0.01, fresh_s=0.1)
    assert got == 3.0
    assert len(asked) > 4 and set(asked) == {("GET", f"/jobs/{JOB}/metrics?get=numRestarts")}


def test_zero_is_a_value_read_not_a_default(monkeypatch):
    answers(monkeypatch, restarts(0))
    assert cluster.job_metric("127.0.0.1:8081", JOB, "numRestarts", poll_s=0.01,
                              fresh_s=0) == 0.0


def test_a_metric_that_never_shows_up_is_an_error(monkeypatch):
    answers(monkeypatch, [], [{"id": "uptime", "value": "5"}])
    with pytest.raises(cluster.ClusterError, match="numRestarts"):
        cluster.job_metric("127.0.0.1:8081", JOB, "numRestarts", timeout_s=0.05, poll_s=0.01,
                           fresh_s=0)
