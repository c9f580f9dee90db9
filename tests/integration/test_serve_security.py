"""The HTTP service's access rules, with real HTTP requests to the real service.

API keys and scopes (X-API-Key and Bearer), refusal to listen beyond loopback without keys
(through the real command line), per-key rate limits with Retry-After, JSON-only POSTs, the
body-read timeout, the Host-header check on loopback, and error bodies without addresses.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Iterator

import pytest
import requests

from recsys.paths import PROJECT_ROOT
from recsys.serving.api import build_app
from state_schemas.config import ConfigError, load_config
from recsys.local.stack import suffixed_topic_names, topic_overrides
from tests.integration.conftest import ServerThread

READER = "reader-key-0123456789abcdef"
WRITER = "writer-key-0123456789abcdef"
KEYS = {"RECSYS_API_KEYS": f"{READER}:read,{WRITER}:write"}


def config(bootstrap: str, *extra: str):
    return load_config(overrides=[f'kafka.bootstrap_servers="{bootstrap}"',
                                  *topic_overrides(suffixed_topic_names()), *extra], environ={})


@pytest.fixture(scope="module")
def keyed(kafka_bootstrap: str) -> Iterator[str]:
    """The service with two API keys, a rate limit of 5/s (burst 5), a 1 s body timeout."""
    cfg = config(kafka_bootstrap, "serve.rate_limit_per_s=5", "serve.rate_limit_burst=5",
                 "serve.body_timeout_s=1")
    server = ServerThread(build_app(cfg, environ=KEYS))
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def wait_for_tokens() -> None:
    time.sleep(1.2)  # > burst / rate: every bucket full again


def test_user_data_needs_a_key_with_the_right_scope(keyed):
    wait_for_tokens()
    r = requests.get(f"{keyed}/users/u1/profile", timeout=5)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = requests.get(f"{keyed}/users/u1/profile", headers={"X-API-Key": "not-a-key-0123456789"},
                     timeout=5)
    assert r.status_code == 401
    # a valid read key gets through to the handler (404: no such user yet)
    r = requests.get(f"{keyed}/users/u1/profile", headers={"X-API-Key": READER}, timeout=5)
    assert r.status_code == 404 and r.json()["error"] == "unknown_user"
    r = requests.get(f"{keyed}/users", headers={"Authorization": f"Bearer {WRITER}"}, timeout=5)
    assert r.status_code == 200
    # read may not write
    r = requests.post(f"{keyed}/events", json={"event_id": "e"}, headers={"X-API-Key": READER},
                      timeout=5)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    # write may (the event itself is invalid: 422 from the job's own edge check)
    r = requests.post(f"{keyed}/events", json={"event_id": "e"}, headers={"X-API-Key": WRITER},
                      timeout=5)
    assert r.status_code == 422
    # the page, health and the API description stay open; the description declares the keys
    for path in ("/", "/healthz", "/openapi.json"):
        assert requests.get(f"{keyed}{path}", timeout=5).status_code in (200, 503), path
    spec = requests.get(f"{keyed}/openapi.json", timeout=5).json()
    assert set(spec["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
    assert spec["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert "401" in spec["paths"]["/events"]["post"]["responses"]


def test_posts_must_be_json(keyed):
    wait_for_tokens()
    headers = {"X-API-Key": WRITER}
    r = requests.post(f"{keyed}/users/u1/recommendations:refresh", data="x", timeout=5,
                      headers={**headers, "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    r = requests.post(f"{keyed}/events", data='{"a": 1}', timeout=5,
                      headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415


def test_rate_limit_per_key_answers_429_with_retry_after(keyed):
    wait_for_tokens()
    codes = [requests.get(f"{keyed}/users", headers={"X-API-Key": READER}, timeout=5).status_code
             for _ in range(8)]
    assert codes[:5] == [200] * 5 and 429 in codes[5:]
    r = requests.get(f"{keyed}/users", headers={"X-API-Key": READER}, timeout=5)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # another key has its own bucket
    assert requests.get(f"{keyed}/users", headers={"X-API-Key": WRITER},
                        timeout=5).status_code == 200


def test_a_body_that_does_not_arrive_times_out(keyed):
    wait_for_tokens()
    host, port = keyed.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall((f"POST /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {WRITER}\r\n"
                   "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"event_id\"")
                  .encode())
        started = time.monotonic()
        answer = s.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 5


def test_foreign_host_names_are_refused_on_loopback(keyed):
    wait_for_tokens()
    r = requests.get(f"{keyed}/users", timeout=5,
                     headers={"X-API-Key": READER, "Host": "attacker.example"})
    assert r.status_code == 421
    r = requests.get(f"{keyed}/healthz", timeout=5, headers={"Host": "attacker.example"})
    assert r.status_code == 421


def test_health_and_errors_do_not_reveal_addresses(kafka_bootstrap):
    """With Kafka unreachable, /healthz says so without the broker's address or exception text."""
    cfg = config("127.0.0.1:1")
    server = ServerThread(build_app(cfg, environ={}))
    url = server.start()
    try:
        time.sleep(1.0)
        r = requests.get(f"{url}/healthz", timeout=5)
        assert r.status_code == 503
        assert "127.0.0.1:1" not in r.text and "Error" not in r.json()["message"]
    finally:
        server.stop()


def test_without_keys_the_service_refuses_a_non_loopback_address(kafka_bootstrap):
    with pytest.raises(ConfigError, match="without API keys"):
        build_app(config(kafka_bootstrap), bind_host="0.0.0.0", environ={})
    # the real command line says so and exits 2, before listening
    env = {k: v for k, v in __import__("os").environ.items() if k != "RECSYS_API_KEYS"}
    proc = subprocess.run([sys.executable, "-m", "recsys.serving.api", "--host", "0.0.0.0", "--port",
                           "0", "--bootstrap-servers", kafka_bootstrap], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "without API keys" in proc.stderr and "RECSYS_API_KEYS" in proc.stderr
    # with keys it starts
    assert build_app(config(kafka_bootstrap), bind_host="0.0.0.0", environ=KEYS) is not None
