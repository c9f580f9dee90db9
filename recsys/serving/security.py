"""Who may call the HTTP API, and how often (pure; ``recsys/serving/api.py`` applies it per request).

* **API keys with scopes.** A key comes in the ``X-API-Key`` header (Gorse's convention) or as
  ``Authorization: Bearer <key>``. Scope ``read`` allows the GET endpoints that return user
  data; ``write`` allows posting events and refresh requests, and reading. Keys come from
  ``$RECSYS_API_KEYS`` (``"key1:read,key2:write"``) or from ``serve.api_keys_file`` (one
  ``key:scope`` per line); only their SHA-256 digests are kept, compared in constant time, and
  a key is never logged or echoed.
* **Without keys** the service is for the local machine only: ``recsys serve`` refuses to
  listen on a non-loopback address (see :func:`check_bind`).
* **Rate limits.** A token bucket per key (per client address without keys):
  ``serve.rate_limit_per_s`` tokens per second up to ``serve.rate_limit_burst``; an empty bucket
  answers 429 with ``Retry-After``.
* **Host header.** On a loopback address only loopback host names (plus
  ``serve.allowed_hosts``) are accepted, so a page that rebinds its DNS name to 127.0.0.1 cannot
  use a browser to reach the API.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

from state_schemas.config import ConfigError, ServeConfig

READ = "read"
WRITE = "write"
SCOPES = {READ: frozenset({READ}), WRITE: frozenset({READ, WRITE})}
KEYS_ENV = "RECSYS_API_KEYS"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MIN_KEY_CHARS = 16


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_api_keys(text: str, where: str) -> dict[bytes, frozenset[str]]:
    """``key:scope`` entries separated by commas or new lines -> digest -> scopes. Errors name
    the entry's position, never the key."""
    keys: dict[bytes, frozenset[str]] = {}
    entries = [e.strip() for line in text.splitlines() for e in line.split(",")]
    for n, entry in enumerate((e for e in entries if e and not e.startswith("#")), start=1):
        key, sep, scope = entry.rpartition(":")
        if not sep or scope not in SCOPES:
            raise ConfigError(f"{where}: entry {n} is not key:read or key:write")
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"{where}: the key of entry {n} is shorter than {MIN_KEY_CHARS} "
                              "characters")
        keys[_digest(key)] = SCOPES[scope]
    return keys


def load_api_keys(cfg: ServeConfig, environ: Mapping[str, str] = os.environ
                  ) -> dict[bytes, frozenset[str]]:
    if environ.get(KEYS_ENV, "").strip():
        return parse_api_keys(environ[KEYS_ENV], f"${KEYS_ENV}")
    if cfg.api_keys_file:
        try:
            with open(cfg.api_keys_file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            raise ConfigError(f"serve.api_keys_file: cannot read {cfg.api_keys_file}: "
                              f"{e.strerror}") from None
        return parse_api_keys(text, "serve.api_keys_file")
    return {}


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: a key's digest (None without keys) and what it may do."""
    identity: str
    scopes: frozenset[str]


class Authenticator:
    def __init__(self, keys: dict[bytes, frozenset[str]]) -> None:
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def caller(self, headers: Mapping[str, str], peer: str) -> Caller | None:
        """The caller of a request with these headers; None when keys are configured and the
        request carries none that matches (401). Without keys everyone may do everything (the
        service then listens on loopback only)."""
        if not self._keys:
            return Caller(f"peer:{peer}", SCOPES[WRITE])
        key = headers.get("X-API-Key")
        if key is None:
            auth = headers.get("Authorization", "")
            if auth[:7].lower() == "bearer ":
                key = auth[7:].strip()
        if not key:
            return None
        digest = _digest(key)
        # A lookup by the key's SHA-256 digest: its timing can only tell about the digest,
        # which does not give the key away (nor a prefix of it).
        scopes = self._keys.get(digest)
        return Caller(f"key:{digest.hex()[:16]}", scopes) if scopes is not None else None


class TokenBuckets:
    """A token bucket per caller; at most ``max_callers`` remembered (least recent dropped)."""

    def __init__(self, rate_per_s: float, burst: int, max_callers: int = 10_000) -> None:
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self.max_callers = max_callers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, caller: str, now_s: float) -> float:
        """Take one token; 0 when granted, else the seconds until one is available."""
        tokens, at = self._buckets.pop(caller, (self.burst, now_s))
        tokens = min(self.burst, tokens + (now_s - at) * self.rate)
        granted = tokens >= 1.0
        if granted:
            tokens -= 1.0
        self._buckets[caller] = (tokens, now_s)
        while len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)
        return 0.0 if granted else (1.0 - tokens) / self.rate


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name part of a Host header (``[::1]:8080`` -> ``::1``, ``a.b:80`` -> ``a.b``)."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class HostCheck:
    """The Host-header rule of a service bound to ``bind_host``, worked out once: on a loopback
    address only loopback names (and ``serve.allowed_hosts``); elsewhere any (keys protect it)."""

    def __init__(self, bind_host: str, cfg: ServeConfig) -> None:
        self.open = not is_loopback(bind_host)
        self.allowed = frozenset(h.lower() for h in cfg.allowed_hosts)

    def allows(self, host_header: str | None) -> bool:
        if self.open:
            return True
        if not host_header:
            return False
        name = host_name(host_header)
        return name in self.allowed or is_loopback(name)


def check_bind(bind_host: str, keys_configured: bool) -> str | None:
    """Why the service must not listen on ``bind_host`` (None: it may)."""
    if keys_configured or is_loopback(bind_host):
        return None
    return (f"refusing to listen on {bind_host} without API keys: anyone who can reach it could "
            f"read every profile and post events for any user. Set ${KEYS_ENV} "
            "(\"key1:read,key2:write\") or serve.api_keys_file, or listen on 127.0.0.1")


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
