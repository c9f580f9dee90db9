"""Flink's REST API, for the lifecycle calls the tools and tests need (no Flink client install).

Works against a standalone cluster's JobManager and against the local mini-cluster when the job
runs with ``job.rest_port`` set.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


class FlinkRestError(RuntimeError):
    pass


def _call(base_url: str, path: str, body: dict[str, Any] | None = None, timeout_s: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base_url.rstrip("/") + path, data=data,
                                 method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        raise FlinkRestError(f"{path}: HTTP {e.code}: {e.read()[:500]!r}") from None
    except (urllib.error.URLError, OSError) as e:
        raise FlinkRestError(f"{base_url}{path}: {e}") from None


def list_jobs(base_url: str) -> list[dict[str, Any]]:
    """[{"id": ..., "status": "RUNNING" | ...}] of every job the cluster knows."""
    return _call(base_url, "/jobs")["jobs"]


def wait_for_running_job(base_url: str, timeout_s: float = 60) -> str:
    """The id of the (single) RUNNING job, once there is one and all its tasks run."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            for job in list_jobs(base_url):
                if job["status"] == "RUNNING":
                    detail = _call(base_url, f"/jobs/{job['id']}")
                    states = {v["status"] for v in detail.get("vertices", [])}
                    if states == {"RUNNING"}:
                        return job["id"]
            last = "no running job yet"
        except FlinkRestError as e:
            last = e
        time.sleep(0.5)
    raise FlinkRestError(f"no RUNNING job at {base_url} after {timeout_s} s ({last})")


def _wait_for_operation(base_url: str, path: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _call(base_url, path)
        if status["status"]["id"] == "COMPLETED":
            operation = status.get("operation") or {}
            if "failure-cause" in operation:
                raise FlinkRestError(f"savepoint failed: {operation['failure-cause']}")
            return operation
        time.sleep(0.5)
    raise FlinkRestError(f"savepoint did not complete within {timeout_s} s")


def trigger_savepoint(base_url: str, job_id: str, target_dir: str, *, stop: bool = False,
                      timeout_s: float = 120) -> str:
    """Take a savepoint (and stop the job if ``stop``); returns the savepoint's location."""
    if stop:
        trigger = _call(base_url, f"/jobs/{job_id}/stop",
                        {"targetDirectory": target_dir, "drain": False})
    else:
        trigger = _call(base_url, f"/jobs/{job_id}/savepoints",
                        {"target-directory": target_dir, "cancel-job": False})
    operation = _wait_for_operation(base_url, f"/jobs/{job_id}/savepoints/{trigger['request-id']}",
                                    timeout_s)
    return operation["location"]
