"""``recsys serve``: the HTTP face of the engine, for clients that cannot speak Kafka.

The job answers through compacted Kafka topics; front ends ask over HTTP. This service bridges the
two without a database: one consumer thread replays ``recommendations``, ``user-profiles`` and
``item-catalog`` (for titles) from the beginning into dicts (latest value per key; a tombstone
deletes), then follows them live, reading ``read_committed`` because the job writes in
transactions (its output becomes visible at each checkpoint). Requests are answered from memory,
so ``GET`` costs a dict lookup and a JSON encoding; writes go to the job's input topics:

    GET  /users/{user_id}/recommendations          latest recommendation, with reasons and variant
    GET  /users/{user_id}/profile                   latest profile snapshot
    POST /users/{user_id}/recommendations:refresh   publish a recommendation request, wait for the
                                                    answer carrying its request_id (504 on timeout)
    POST /events                                    validate like the job's edge, publish (202)
    GET  /users, /items                             a few known ids, for the explorer page
    GET  /healthz  /metrics  /openapi.json  /       readiness, Prometheus, API description, page

Errors are JSON ``{"error": code, "message": text}`` (plus ``reason`` for rejected input), with
404 for unknown users and 422 for bodies or parameters the job would reject.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from recsys import kafka_io
from recsys.serving.security import (READ, WRITE, Authenticator, HostCheck, TokenBuckets,
                                     check_bind, load_api_keys, retry_after_header)
from state_schemas.config import ConfigError, EngineConfig
from recsys.paths import PROJECT_ROOT
from state_schemas import load_schema
from udfs.validation import KIND_EVENT, KIND_REQUEST, DeadLetter, parse_input

log = logging.getLogger("recsys.serving.api")  # same name when run as __main__

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_PORT = 8080
REFRESH_TIMEOUT_S = 10.0
# Answers become visible at the job's next checkpoint (1 s by default): shorter waits only make
# 504s, so they are refused as invalid.
MIN_REFRESH_TIMEOUT_S = 5.0
MAX_REFRESH_TIMEOUT_S = 30.0
PUBLISH_TIMEOUT_S = 10.0
RECONNECT_DELAY_S = 2.0
LIST_LIMIT_MAX = 1_000
JSON = "application/json"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- metrics

class ServeMetrics:
    """Prometheus metrics of one app, in a registry of its own (several apps in one test process
    must not collide in the global registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("recsys_serve_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("recsys_serve_request_seconds", "HTTP request latency by route",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.consumed = Counter("recsys_serve_records_consumed", "Kafka records applied to the cache",
                                ["topic"], registry=r)
        self.undecodable = Counter("recsys_serve_records_undecodable",
                                   "Kafka records that were not JSON objects (skipped)", ["topic"],
                                   registry=r)
        self.published = Counter("recsys_serve_records_published", "records published to Kafka",
                                 ["topic"], registry=r)
        self.refresh_timeouts = Counter("recsys_serve_refresh_timeouts",
                                        "refreshes answered 504 (no answer within the timeout)",
                                        registry=r)
        self.users_cached = Gauge("recsys_serve_users_cached", "users held in memory", ["kind"],
                                  registry=r)
        self.items_cached = Gauge("recsys_serve_items_cached", "catalogue items held in memory",
                                  registry=r)
        self.users_evicted = Counter("recsys_serve_users_evicted",
                                     "users dropped from memory beyond serve.max_users_cached "
                                     "(least recently updated first)", ["kind"], registry=r)
        self.caught_up = Gauge("recsys_serve_caught_up",
                               "1 once the cache has read up to the end offsets seen at start",
                               registry=r)
        # Label lookups cost more than the observation itself on the hot path: cache the children.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)),
                        self.latency.labels(route, method))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


# --------------------------------------------------------------------------- the live cache

class LiveView:
    """Latest value per key of the compacted topics, fed by one consumer thread.

    Handlers read the dicts from the event loop without locks: each value is replaced whole, never
    mutated, and a dict get/set is atomic under the GIL. ``expect`` lets a handler wait for the
    recommendation that answers its request_id (resolved from the consumer thread).
    """

    def __init__(self, cfg: EngineConfig, metrics: ServeMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        # OrderedDicts: least recently updated first, and evicting the first entry stays O(1)
        # (a plain dict's first live entry is found past every deleted slot).
        self.recommendations: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.profiles: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.items: dict[str, dict[str, Any]] = {}
        self.caught_up = threading.Event()
        self.status_message = "starting: connecting to Kafka"
        self._waiters: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        t = cfg.topics
        self._kinds = {t.recommendations: "recommendations", t.user_profiles: "user_profiles",
                       t.item_catalog: "item_catalog"}
        metrics.users_cached.labels("recommendations").set_function(lambda: len(self.recommendations))
        metrics.users_cached.labels("profiles").set_function(lambda: len(self.profiles))
        metrics.items_cached.set_function(lambda: len(self.items))
        metrics.caught_up.set_function(lambda: 1.0 if self.caught_up.is_set() else 0.0)

    # ---- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recsys-serve-consumer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ---- request/answer correlation
    def expect(self, request_id: str) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._waiters[request_id] = (loop, future)
        return future

    def forget(self, request_id: str) -> None:
        self._waiters.pop(request_id, None)

    # ---- applying records (public so unit tests can feed records without Kafka)
    def apply(self, topic: str, key: str | None, raw: bytes | None) -> None:
        kind = self._kinds.get(topic)
        if kind is None:
            return
        self.metrics.consumed.labels(kind).inc()
        value: Any = None
        if raw is not None:
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                self.metrics.undecodable.labels(kind).inc()
                return
        if kind == "item_catalog":
            item_id = (value or {}).get("item_id", key)
            if value is None:
                if key is not None:
                    self.items.pop(key, None)
            elif isinstance(item_id, str):
                self.items[item_id] = {"item_id": item_id, "title": value.get("title"),
                                       "categories": value.get("categories") or [],
                                       "available": value.get("available", True)}
            return
        target = self.recommendations if kind == "recommendations" else self.profiles
        user = (value or {}).get("user_id", key)
        if not isinstance(user, str):
            return
        if value is None:
            target.pop(user, None)  # a tombstone: the user was forgotten
            return
        target[user] = value
        target.move_to_end(user)  # order: least recently updated first
        if len(target) > self.cfg.serve.max_users_cached:
            target.popitem(last=False)
            self.metrics.users_evicted.labels(kind).inc()
        request_id = value.get("request_id") if kind == "recommendations" else None
        if request_id is not None:
            waiter = self._waiters.pop(request_id, None)
            if waiter is not None:
                waiter[0].call_soon_threadsafe(_resolve, waiter[1], value)

    # ---- the consumer thread
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as e:  # broker down, topic missing, ...: say so in /healthz, retry
                # /healthz is public: the reason without addresses or exception text
                self.status_message = "starting: Kafka is not reachable yet (see the service log)"
                log.warning("serve: consumer error (retrying in %.0f s): %s", RECONNECT_DELAY_S, e)
                self._stop.wait(RECONNECT_DELAY_S)

    def _follow(self) -> None:
        kafka = self.cfg.kafka
        consumer = kafka_io.open_consumer(
            kafka.bootstrap_servers, list(self._kinds), from_beginning=True, read_committed=True,
            topic_wait_s=5.0, client_id="recsys-serve", fetch_max_wait_ms=100,
            **kafka_io.client_kwargs(kafka))
        try:
            partitions = list(consumer.assignment())
            # With read_committed these are last stable offsets: what a reader can reach now.
            targets = consumer.end_offsets(partitions)
            self.status_message = "starting: reading the topics from the beginning"
            while not self._stop.is_set():
                for tp, messages in consumer.poll(timeout_ms=200).items():
                    for m in messages:
                        key = m.key.decode("utf-8", errors="replace") if m.key is not None else None
                        self.apply(tp.topic, key, m.value)
                if not self.caught_up.is_set() and all(
                        consumer.position(tp) >= end for tp, end in targets.items()):
                    self.status_message = "ok"
                    self.caught_up.set()
                    log.info("serve: caught up (%d recommendations, %d profiles, %d items)",
                             len(self.recommendations), len(self.profiles), len(self.items))
        finally:
            consumer.close(autocommit=False)


def _resolve(future: asyncio.Future, value: dict[str, Any]) -> None:
    if not future.done():
        future.set_result(value)


# --------------------------------------------------------------------------- app state

@dataclass
class ServeState:
    cfg: EngineConfig
    metrics: ServeMetrics
    view: LiveView
    user_key: Callable[[str], str]
    producer: Any = None
    producer_lock: threading.Lock = field(default_factory=threading.Lock)

    def publish_sync(self, topic: str, key: str, value: dict[str, Any]) -> Any:
        """Send and wait for the broker's ack (the producer is made on first use, so the service
        starts even while Kafka is down)."""
        with self.producer_lock:
            if self.producer is None:
                self.producer = kafka_io.json_producer(
                    self.cfg.kafka.bootstrap_servers, client_id="recsys-serve", linger_ms=0,
                    max_block_ms=int(PUBLISH_TIMEOUT_S * 1000), **kafka_io.client_kwargs(self.cfg.kafka))
        metadata = self.producer.send(topic, key=key, value=value).get(timeout=PUBLISH_TIMEOUT_S)
        t = self.cfg.topics
        label = {t.user_events: "user_events", t.recommendation_requests: "recommendation_requests"}
        self.metrics.published.labels(label.get(topic, topic)).inc()
        return metadata

    async def publish(self, topic: str, key: str, value: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.publish_sync, topic, key, value)

    def close(self) -> None:
        self.view.stop()
        if self.producer is not None:
            self.producer.close(timeout=5)


STATE = web.AppKey("recsys_serve_state", ServeState)


def _user_key_function(cfg: EngineConfig) -> Callable[[str], str]:
    """With pseudonymisation on, the job keys its outputs by HMAC(user id): look up the same."""
    if not cfg.privacy.pseudonymize_user_ids:
        return lambda user_id: user_id
    from udfs.privacy import load_pseudonym_key, pseudonymize

    key = load_pseudonym_key(cfg.privacy)
    chars = cfg.privacy.pseudonym_hex_chars
    return lambda user_id: pseudonymize(user_id, key, chars)


# --------------------------------------------------------------------------- responses

def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON, headers=headers)


def error_response(status: int, error: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> web.Response:
    return json_response({"error": error, "message": message, **extra}, status, headers)


def _with_titles(rows: list[dict[str, Any]], items: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        known = items.get(row.get("item_id"))  # type: ignore[arg-type]
        out.append({**row, "title": known["title"] if known else None})
    return out


def _recommendation_body(rec: dict[str, Any], items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {**rec, "items": _with_titles(rec.get("items") or [], items)}


def _profile_body(profile: dict[str, Any], items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {**profile, "recent_items": _with_titles(profile.get("recent_items") or [], items)}


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _Invalid(f"query parameter {name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise _Invalid(f"query parameter {name} must be within [{low}, {high}], got {value}")
    return value


class _Invalid(Exception):
    """A parameter the service rejects with 422 (message says which and why)."""


# --------------------------------------------------------------------------- handlers

async def get_recommendations(request: web.Request) -> web.Response:
    return _user_entry(request, "recommendations", "recommendations", _recommendation_body)


async def get_profile(request: web.Request) -> web.Response:
    return _user_entry(request, "profiles", "profile", _profile_body)


def _user_entry(request: web.Request, table: str, what: str,
                body: Callable[[Any, Any], dict[str, Any]]) -> web.Response:
    """The user's entry of one table of the live view, or 404 while there is none."""
    state = request.app[STATE]
    user_id = request.match_info["user_id"]
    entry = getattr(state.view, table).get(state.user_key(user_id))
    if entry is None:
        return error_response(404, "unknown_user", f"no {what} for user {user_id!r} (yet)",
                              user_id=user_id)
    return json_response(body(entry, state.view.items))


async def refresh_recommendations(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cfg = state.cfg
    user_id = request.match_info["user_id"]
    try:
        k = _int_param(request, "k", cfg.recommend.default_k, 1, cfg.recommend.max_k)
        timeout_raw = request.query.get("timeout_s", str(REFRESH_TIMEOUT_S))
        try:
            timeout_s = float(timeout_raw)
        except ValueError:
            raise _Invalid(f"query parameter timeout_s must be a number, got {timeout_raw!r}") from None
        if not MIN_REFRESH_TIMEOUT_S <= timeout_s <= MAX_REFRESH_TIMEOUT_S:
            raise _Invalid(f"query parameter timeout_s must be within "
                           f"[{MIN_REFRESH_TIMEOUT_S:g}, {MAX_REFRESH_TIMEOUT_S:g}] seconds")
    except _Invalid as e:
        return error_response(422, "invalid_parameter", str(e))
    request_id = f"http-{uuid.uuid4().hex}"
    now = now_ms()
    record = {"request_id": request_id, "user_id": user_id, "ts": now, "k": k}
    # The job's own edge check: what it would dead-letter is refused here, not timed out on.
    checked = parse_input(orjson.dumps(record), KIND_REQUEST, cfg.topics.recommendation_requests,
                          now, cfg.validation, cfg.profile, cfg.recommend.default_k, cfg.recommend.max_k)
    if isinstance(checked, DeadLetter):
        return error_response(422, "invalid_request", checked.error, reason=checked.reason)
    answer = state.view.expect(request_id)
    try:
        try:
            await state.publish(cfg.topics.recommendation_requests, user_id, record)
        except Exception:
            log.exception("serve: publishing a recommendation request failed")
            return error_response(503, "kafka_unavailable", "could not publish the request "
                                  "(Kafka unavailable; see the service log)")
        try:
            rec = await asyncio.wait_for(answer, timeout_s)
        except asyncio.TimeoutError:
            state.metrics.refresh_timeouts.inc()
            return error_response(504, "timeout",
                                  f"no recommendation answered request {request_id} within "
                                  f"{timeout_s:g} s (is the job running?)", request_id=request_id)
    finally:
        state.view.forget(request_id)
    return json_response(_recommendation_body(rec, state.view.items))


async def post_event(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cfg = state.cfg
    try:
        raw = await asyncio.wait_for(request.read(), cfg.serve.body_timeout_s)
    except asyncio.TimeoutError:
        return error_response(408, "request_timeout",
                              f"the body did not arrive within {cfg.serve.body_timeout_s:g} s")
    topic = cfg.topics.user_events
    event = parse_input(raw, KIND_EVENT, topic, now_ms(), cfg.validation, cfg.profile)
    if isinstance(event, DeadLetter):
        return error_response(422, "invalid_event", event.error, reason=event.reason)
    try:
        meta = await state.publish(topic, event["user_id"], event)
    except Exception:
        log.exception("serve: publishing an event failed")
        return error_response(503, "kafka_unavailable", "could not publish the event "
                              "(Kafka unavailable; see the service log)")
    return json_response({"status": "accepted", "event_id": event["event_id"],
                          "user_id": event["user_id"], "topic": topic, "partition": meta.partition,
                          "offset": meta.offset}, 202)


async def list_users(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        limit = _int_param(request, "limit", 50, 1, LIST_LIMIT_MAX)
    except _Invalid as e:
        return error_response(422, "invalid_parameter", str(e))
    users = list(state.view.recommendations)  # one C-level copy: safe against the consumer thread
    return json_response({"users": users[::-1][:limit], "total": len(users)})


async def list_items(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        limit = _int_param(request, "limit", 200, 1, LIST_LIMIT_MAX)
    except _Invalid as e:
        return error_response(422, "invalid_parameter", str(e))
    items = list(state.view.items.values())
    return json_response({"items": items[:limit], "total": len(items)})


async def healthz(request: web.Request) -> web.Response:
    view = request.app[STATE].view
    ready = view.caught_up.is_set()
    return json_response({"status": "ok" if ready else "starting", "caught_up": ready,
                          "message": view.status_message,
                          "recommendations": len(view.recommendations),
                          "profiles": len(view.profiles), "items": len(view.items)},
                         200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_spec(request.app[STATE].cfg,
                                      api_keys=request.app[SECURITY].auth.enabled))


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


# --------------------------------------------------------------------------- middleware

def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Metrics for every request, and JSON bodies for every error (aiohttp's own 404/405/413 too)."""
    start = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = e.reason.lower().replace(" ", "_")
        message = (f"no route for {request.method} {request.path}" if e.status == 404
                   else f"{request.method} is not allowed here" if e.status == 405 else e.text or e.reason)
        response = error_response(e.status, code, message)
        if "Allow" in e.headers:
            response.headers["Allow"] = e.headers["Allow"]
    except Exception:
        log.exception("serve: %s %s failed", request.method, request.path)
        response = error_response(500, "internal_error", "internal error (see the service log)")
    request.app[STATE].metrics.observe(_route_label(request), request.method, response.status,
                                       time.perf_counter() - start)
    return response


@dataclass
class Security:
    """The service's access rules (``recsys/serving/security.py``), fixed at start."""
    auth: Authenticator
    buckets: TokenBuckets
    hosts: HostCheck


SECURITY = web.AppKey("recsys_serve_security", Security)
# Reachable without a key: the page and its files (they hold no user data; the page asks for a
# key), health, the API description and the service's own metrics.
OPEN_PATHS = frozenset({"/", "/healthz", "/openapi.json", "/metrics"})


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host check, API key and scope, rate limit, JSON-only POSTs (see api_security)."""
    security = request.app[SECURITY]
    if not security.hosts.allows(request.headers.get("Host")):
        return error_response(421, "misdirected_request",
                              "this service answers to its loopback address only")
    if request.match_info.http_exception is not None:
        return await handler(request)  # no such route or method: 404/405 as they are
    caller = security.auth.caller(request.headers, request.remote or "?")
    if request.path not in OPEN_PATHS and not request.path.startswith("/static/"):
        if caller is None:
            return error_response(401, "unauthorized", "an API key is required (X-API-Key "
                                  "header, or Authorization: Bearer)",
                                  headers={"WWW-Authenticate": 'Bearer realm="recsys"'})
        needed = WRITE if request.method == "POST" else READ
        if needed not in caller.scopes:
            return error_response(403, "forbidden", f"this API key has no {needed} scope")
    identity = caller.identity if caller is not None else f"peer:{request.remote}"
    wait = security.buckets.take(identity, time.monotonic())
    if wait > 0:
        return error_response(429, "rate_limited", "too many requests; retry later",
                              headers={"Retry-After": retry_after_header(wait)})
    if request.method == "POST" and request.content_type != JSON:
        # Also what keeps a cross-site form (text/plain, no preflight) from posting here.
        return error_response(415, "unsupported_media_type",
                              f"POST bodies must be {JSON} (send Content-Type: {JSON})")
    return await handler(request)


# --------------------------------------------------------------------------- the app

def build_app(cfg: EngineConfig, bind_host: str = "127.0.0.1",
              environ: Mapping[str, str] | None = None) -> web.Application:
    """The service as an aiohttp app; the consumer thread starts with the app and stops with it.
    ``bind_host`` is the address it will listen on (the Host-header rule depends on it); API
    keys come from ``environ`` (default: the process environment) or the config."""
    keys = load_api_keys(cfg.serve, os.environ if environ is None else environ)
    refused = check_bind(bind_host, bool(keys))
    if refused:
        raise ConfigError(refused)
    metrics_ = ServeMetrics()
    state = ServeState(cfg, metrics_, LiveView(cfg, metrics_), _user_key_function(cfg))
    app = web.Application(middlewares=[observe, guard],
                          client_max_size=max(1 << 20, 2 * cfg.validation.max_record_bytes))
    app[STATE] = state
    app[SECURITY] = Security(Authenticator(keys), TokenBuckets(cfg.serve.rate_limit_per_s,
                                                              cfg.serve.rate_limit_burst),
                             HostCheck(bind_host, cfg.serve))
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/users", list_users)
    app.router.add_get("/items", list_items)
    app.router.add_get("/users/{user_id}/recommendations", get_recommendations)
    app.router.add_get("/users/{user_id}/profile", get_profile)
    app.router.add_post("/users/{user_id}/recommendations:refresh", refresh_recommendations)
    app.router.add_post("/events", post_event)
    app.router.add_static("/static", STATIC_DIR)

    async def start(_: web.Application) -> None:
        state.view.start()

    async def stop(_: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, state.close)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def serve(cfg: EngineConfig, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> int:
    """Run the service until interrupted (blocking). Returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python logs every reconnect attempt; the consumer thread says once per failed attempt
    # (and /healthz says) that Kafka cannot be reached.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    def listening(_: str) -> None:  # run_app calls this once the socket is bound
        print(f"serve: explorer and API at http://{host}:{port}/ (Kafka {cfg.kafka.bootstrap_servers}; "
              f"API description at /openapi.json)", flush=True)

    try:
        app = build_app(cfg, bind_host=host)
    except ConfigError as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    try:
        web.run_app(app, host=host, port=port, access_log=None, print=listening,
                    handle_signals=True)
    except OSError as e:
        print(f"serve: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


def start_process(port: int, overrides: list[str], log_path: Path, config_file: str | None = None,
                  host: str = "127.0.0.1") -> subprocess.Popen:
    """``python -m recsys.serving.api`` in a child process with its own session (like the job), so
    ``recsys demo`` and the benchmark can run it beside other work and stop it with
    ``recsys.local.job_process.stop_job_process``. ``overrides`` are ``--set`` strings."""
    args = [sys.executable, "-m", "recsys.serving.api", "--port", str(port), "--host", host]
    if config_file:
        args += ["--config", config_file]
    for item in overrides:
        args += ["--set", item]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``recsys serve`` options of their own (the CLI adds --config/--set/--bootstrap-servers)."""
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")


def main(args: argparse.Namespace, cfg: EngineConfig) -> int:
    return serve(cfg, port=args.port, host=args.host)


# --------------------------------------------------------------------------- OpenAPI

def _message_schema(name: str) -> dict[str, Any]:
    schema = copy.deepcopy(load_schema(name))
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    return schema


def _error_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["error", "message"], "properties": {
        "error": {"type": "string", "description": "machine-readable code, e.g. unknown_user"},
        "message": {"type": "string", "description": "what went wrong, for a person"},
        "reason": {"type": "string", "description": "the job's dead-letter reason code "
                                                    "(missing_field, absurd_timestamp, ...)"},
        "user_id": {"type": "string"}, "request_id": {"type": "string"}}}


def _response(description: str, ref: str) -> dict[str, Any]:
    return {"description": description,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def openapi_spec(cfg: EngineConfig, api_keys: bool = True) -> dict[str, Any]:
    """OpenAPI 3.1 description, built from the message schemas in ``state_schemas/json`` so it
    cannot drift from the contract. The event's ``ts`` window is computed now (the job rejects
    timestamps before ``validation.min_ts_ms`` or more than ``max_future_skew_ms`` ahead). With
    ``api_keys`` (the service has keys) it declares the key schemes and who needs which scope;
    without, the service is loopback-only and open, and says so."""
    rec = _message_schema("recommendation")
    rec["properties"]["items"]["items"]["properties"]["title"] = {
        "type": ["string", "null"], "description": "from item-catalog; null if unknown"}
    rec["description"] = "The latest recommendations record of the user, titles added."
    profile = _message_schema("user-profile")
    profile["properties"]["recent_items"]["items"]["properties"]["title"] = {"type": ["string", "null"]}
    event = _message_schema("user-event")
    event["properties"]["ts"].update(minimum=cfg.validation.min_ts_ms,
                                     maximum=now_ms() + cfg.validation.max_future_skew_ms)
    # The job's own bounds (a value beyond them is an out_of_range dead letter).
    event["properties"]["value"].update(minimum=-cfg.validation.max_abs_value,
                                        maximum=cfg.validation.max_abs_value)
    for name in ("event_id", "user_id", "item_id"):
        event["properties"][name]["maxLength"] = min(event["properties"][name]["maxLength"],
                                                     cfg.validation.max_id_length)
    # A rating needs its value; other event types may omit it.
    event["if"] = {"properties": {"event_type": {"const": "rate"}}, "required": ["event_type"]}
    event["then"] = {"properties": {"value": {"type": "number"}}, "required": ["value"]}
    user_id = {"name": "user_id", "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": cfg.validation.max_id_length}}
    unknown = _response("No record for this user (yet)", "Error")
    invalid = _response("Rejected input; `reason` has the job's dead-letter code", "Error")
    kafka_down = _response("Kafka could not be reached", "Error")

    def limit(default: int) -> dict[str, Any]:
        return {"name": "limit", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": LIST_LIMIT_MAX, "default": default}}

    spec = {
        "openapi": "3.1.0",
        "info": {"title": "recsys serving API", "version": "1.0.0",
                 "description": "Live profiles and recommendations of the flink-recsys job, read from "
                                "its compacted Kafka topics; writes go to its input topics."},
        "paths": {
            "/users/{user_id}/recommendations": {"get": {
                "operationId": "getRecommendations", "summary": "Latest recommendations, with reasons and variant",
                "parameters": [user_id],
                "responses": {"200": _response("The latest recommendation", "Recommendation"),
                              "404": unknown}}},
            "/users/{user_id}/profile": {"get": {
                "operationId": "getProfile", "summary": "Latest profile snapshot",
                "parameters": [user_id],
                "responses": {"200": _response("The profile", "Profile"), "404": unknown}}},
            "/users/{user_id}/recommendations:refresh": {"post": {
                "operationId": "refreshRecommendations",
                "summary": "Ask the job for fresh recommendations and wait for its answer",
                "description": "Publishes a recommendation-requests record with a new request_id and "
                               "waits for the recommendation carrying it. Unknown users get "
                               "trending items (cold start). Send Content-Type: application/json "
                               "(the body, e.g. {}, is ignored): the service takes no other POSTs.",
                "requestBody": {"required": True, "content": {JSON: {"schema": {
                    "description": "any JSON, ignored"}}}},
                "parameters": [user_id,
                               {"name": "k", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": cfg.recommend.max_k,
                                           "default": cfg.recommend.default_k}},
                               {"name": "timeout_s", "in": "query", "required": False,
                                "schema": {"type": "number", "minimum": MIN_REFRESH_TIMEOUT_S,
                                           "maximum": MAX_REFRESH_TIMEOUT_S, "default": REFRESH_TIMEOUT_S}}],
                "responses": {"200": _response("The answer to this request", "Recommendation"),
                              "422": invalid, "503": kafka_down,
                              "504": _response("No answer within timeout_s", "Error")}}},
            "/events": {"post": {
                "operationId": "postEvent", "summary": "Validate a user event and publish it to user-events",
                "requestBody": {"required": True, "content": {JSON: {"schema": {"$ref": "#/components/schemas/UserEvent"}}}},
                "responses": {"202": _response("Published", "EventAccepted"), "413": _response("Body too large", "Error"),
                              "408": _response("The body did not arrive in time", "Error"),
                              "422": invalid, "503": kafka_down}}},
            "/users": {"get": {
                "operationId": "listUsers", "summary": "Most recently recommended user ids",
                "parameters": [limit(50)],
                "responses": {"200": {"description": "User ids", "content": {JSON: {"schema": {
                    "type": "object", "required": ["users", "total"],
                    "properties": {"users": {"type": "array", "items": {"type": "string"}},
                                   "total": {"type": "integer"}}}}}},
                              "422": invalid}}},
            "/items": {"get": {
                "operationId": "listItems", "summary": "Catalogue items (id, title, categories)",
                "parameters": [limit(200)],
                "responses": {"200": {"description": "Items", "content": {JSON: {"schema": {
                    "type": "object", "required": ["items", "total"],
                    "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                                   "total": {"type": "integer"}}}}}},
                              "422": invalid}}},
            "/healthz": {"get": {
                "operationId": "healthz", "summary": "Ready once the cache caught up with the topics",
                "responses": {"200": _response("Caught up", "Health"),
                              "503": _response("Still reading the topics (or Kafka unreachable)", "Health")}}},
            "/metrics": {"get": {
                "operationId": "metrics", "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text format",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This description",
                "responses": {"200": {"description": "OpenAPI 3.1",
                                      "content": {JSON: {"schema": {"type": "object"}}}}}}},
            "/": {"get": {
                "operationId": "explorer", "summary": "The explorer page",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": {
            "Recommendation": rec,
            "Profile": profile,
            "UserEvent": event,
            "Error": _error_schema(),
            "EventAccepted": {"type": "object",
                              "required": ["status", "event_id", "user_id", "topic", "partition", "offset"],
                              "properties": {"status": {"const": "accepted"}, "event_id": {"type": "string"},
                                             "user_id": {"type": "string"}, "topic": {"type": "string"},
                                             "partition": {"type": "integer"}, "offset": {"type": "integer"}}},
            "Item": {"type": "object", "required": ["item_id", "title", "categories", "available"],
                     "properties": {"item_id": {"type": "string"}, "title": {"type": ["string", "null"]},
                                    "categories": {"type": "array", "items": {"type": "string"}},
                                    "available": {"type": ["boolean", "null"]}}},
            "Health": {"type": "object",
                       "required": ["status", "caught_up", "message", "recommendations", "profiles", "items"],
                       "properties": {"status": {"enum": ["ok", "starting"]}, "caught_up": {"type": "boolean"},
                                      "message": {"type": "string"},
                                      "recommendations": {"type": "integer", "minimum": 0},
                                      "profiles": {"type": "integer", "minimum": 0},
                                      "items": {"type": "integer", "minimum": 0}}},
        }},
    }
    if api_keys:
        _add_security(spec)
    else:
        spec["info"]["description"] += (" This instance has no API keys: it listens on a "
                                        "loopback address only, and asks for none.")
    for ops in spec["paths"].values():  # the guard's rate limit and media type apply anyway
        for method, op in ops.items():
            op["responses"]["429"] = _response("Rate limit reached; see Retry-After", "Error")
            if method == "post":
                op["responses"]["415"] = _response(f"Content-Type is not {JSON}", "Error")
    return spec


def _add_security(spec: dict[str, Any]) -> None:
    """API keys (``recsys/serving/security.py``): the schemes, who needs which scope, the guard's
    401 and 403 on every operation it applies to."""
    spec["components"]["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                   "description": "Scope read: GET of user data; write: POST, and GET. Required "
                                  "when the service has keys (always when it listens on a "
                                  "non-loopback address)."},
        "Bearer": {"type": "http", "scheme": "bearer",
                   "description": "The same API key as `Authorization: Bearer <key>`."}}
    spec["security"] = [{"ApiKey": []}, {"Bearer": []}]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path in OPEN_PATHS:
                op["security"] = []
                continue
            op["responses"]["401"] = _response("No valid API key", "Error")
            op["responses"]["403"] = _response(
                f"The key lacks the {'write' if method == 'post' else 'read'} scope", "Error")


# `python -m recsys.serving.api --port P --bootstrap-servers H:P` works before the CLI wiring exists.
if __name__ == "__main__":
    from recsys.config_args import add_config_arguments, config_from_arguments

    cli = argparse.ArgumentParser(prog="recsys serve", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(cli)
    add_arguments(cli)
    parsed = cli.parse_args()
    sys.exit(main(parsed, config_from_arguments(parsed)))
