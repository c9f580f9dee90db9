"""Load test of ``GET /users/{id}/recommendations`` (recsys/serving/api.py) on loopback.

The serving path is "dict lookup + JSON encoding" behind aiohttp, so the job is not needed:
this script starts its own broker (or uses --bootstrap-servers), writes synthetic, schema-valid
recommendations for --users users plus a catalogue (for titles) into topics of its own, starts
``python -m recsys.serving.api`` in a separate process, waits for /healthz, and drives it for --seconds
with ``wrk`` (Debian package; scripts/install_test_tools.sh installs it) or, without wrk, with an
asyncio load generator in another process. Random users per request, keep-alive connections.
Writes requests/s, p50/p90/p99 latency, the command line and the machine to --out.

    .venv/bin/python bench/bench_serve.py --seconds 20 --out reports/bench_serve.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsys import kafka_io  # noqa: E402
from recsys.local import kafka_broker  # noqa: E402
from recsys.local.stack import LocalBroker, suffixed_topic_names, topic_overrides  # noqa: E402
from recsys.local.job_process import stop_job_process  # noqa: E402
from recsys.serving.api import start_process  # noqa: E402
from recsys.local.topics import ensure_topics  # noqa: E402
from state_schemas import validator  # noqa: E402

TARGET_RPS = 2_000
CATEGORIES = ["books", "movies", "music", "games", "garden", "kitchen", "sports", "toys"]
WRK_SCRIPT = """
local users = %d
request = function()
  return wrk.format("GET", string.format("/users/u%%06d/recommendations", math.random(0, users - 1)))
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_JSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,' ..
    '"errors":{"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d},' ..
    '"latency_us":{"p50":%%d,"p90":%%d,"p99":%%d,"max":%%d,"mean":%%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


# --------------------------------------------------------------------------- data

def synthetic_records(users: int, n_items: int, k: int, seed: int = 7) -> tuple[list[dict], list[dict]]:
    """A catalogue and one recommendation per user, shaped like the job's output."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    items = [{"item_id": f"i{i:05d}", "ts": now, "title": f"Item {i} of {CATEGORIES[i % 8]}",
              "categories": [CATEGORIES[i % 8]], "tags": [], "price": 10.0 + i % 90, "available": True}
             for i in range(n_items)]
    reasons = ["trending now", "popular with users like you", "matches your interest in books",
               "because you purchased Item 3 of garden"]
    recs = []
    for u in range(users):
        picks = rng.sample(range(n_items), k)
        recs.append({"schema_version": 1, "user_id": f"u{u:06d}", "request_id": None,
                     "trigger_event_id": f"ev-{u}", "generated_at": now, "event_ts": now,
                     "variant": "control" if u % 2 else "content_heavy",
                     "items": [{"item_id": f"i{p:05d}", "score": round(1.0 - j * 0.07, 4),
                                "reasons": rng.sample(reasons, 2)} for j, p in enumerate(picks)]})
    validator("recommendation")(recs[0])
    return items, recs


# --------------------------------------------------------------------------- load generators

def run_wrk(base: str, users: int, seconds: float, connections: int, threads: int) -> tuple[dict, list[str]]:
    script = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "users.lua"
    script.write_text(WRK_SCRIPT % users)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "-s", str(script), base]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH_JSON "))
    raw = json.loads(line[len("BENCH_JSON "):])
    duration = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    return {"requests": raw["requests"], "duration_s": duration,
            "requests_per_s": raw["requests"] / duration,
            "latency_ms": {q: lat[q] / 1000 for q in ("p50", "p90", "p99", "max", "mean")},
            "errors": raw["errors"]}, cmd


def _python_worker(base: str, users: int, seconds: float, connections: int, queue: Any) -> None:
    import asyncio

    import aiohttp

    async def go() -> tuple[list[float], int, int]:
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def loop() -> None:
                nonlocal errors
                while time.perf_counter() < deadline:
                    url = f"{base}/users/u{random.randrange(users):06d}/recommendations"
                    t0 = time.perf_counter()
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors += 1
                    latencies.append(time.perf_counter() - t0)
            start = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(connections)))
            return latencies, errors, int((time.perf_counter() - start) * 1e6)

    queue.put(asyncio.run(go()))


def run_python(base: str, users: int, seconds: float, connections: int) -> tuple[dict, list[str]]:
    queue: Any = multiprocessing.Queue()
    proc = multiprocessing.Process(target=_python_worker, args=(base, users, seconds, connections, queue))
    proc.start()
    latencies, errors, duration_us = queue.get(timeout=seconds + 60)
    proc.join(10)
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(n - 1, int(q * n))] * 1000

    duration = duration_us / 1e6
    return {"requests": n, "duration_s": duration, "requests_per_s": n / duration,
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": latencies[-1] * 1000,
                           "mean": sum(latencies) / n * 1000},
            "errors": {"status": errors}}, ["python-asyncio-aiohttp-client", f"c={connections}"]


# --------------------------------------------------------------------------- plumbing

def machine() -> dict[str, Any]:
    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    except OSError:
        pass
    import aiohttp

    return {"cpus": os.cpu_count(), "cpu_model": model, "load_average_1m_5m_15m": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(), "aiohttp": aiohttp.__version__}


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except OSError:
        return 0, None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap-servers", metavar="H:P", help="use this broker (default: start one)")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--k", type=int, default=10, help="items per recommendation")
    ap.add_argument("--seconds", type=float, default=20.0, help="load duration (bounded)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (the server needs a core too)")
    ap.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--out", default="reports/bench_serve.json")
    args = ap.parse_args()
    if not 1 <= args.seconds <= 300:
        ap.error("--seconds must be within [1, 300]")
    tool = args.tool if args.tool != "auto" else ("wrk" if shutil.which("wrk") else "python")

    broker = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        broker = LocalBroker(Path(tempfile.mkdtemp(prefix="bench-serve-kafka-")), timeout_s=90)
        bootstrap = broker.start()
    server = None
    try:
        names = suffixed_topic_names("bench-" + uuid.uuid4().hex[:8])
        ensure_topics(bootstrap, names, 1)
        items, recs = synthetic_records(args.users, args.items, args.k)
        kafka_io.produce_json(bootstrap, names.item_catalog, items, "item_id")
        kafka_io.produce_json(bootstrap, names.recommendations, recs, "user_id", timeout_s=120)

        http_port = kafka_broker.free_port_pair()
        log_path = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "serve.log"
        server = start_process(http_port, [f'kafka.bootstrap_servers="{bootstrap}"',
                                           *topic_overrides(names)], log_path)
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 120
        while True:
            status, health = get_json(f"{base}/healthz")
            if status == 200 and health["recommendations"] >= args.users:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not become healthy: {health}\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        status, sample = get_json(f"{base}/users/u000000/recommendations")
        assert status == 200 and sample["items"][0]["title"], sample

        if tool == "wrk":
            run_wrk(base, args.users, 2, args.connections, args.threads)  # warm-up
            result, load_cmd = run_wrk(base, args.users, args.seconds, args.connections, args.threads)
        else:
            run_python(base, args.users, 2, args.connections)
            result, load_cmd = run_python(base, args.users, args.seconds, args.connections)
    finally:
        if server is not None:
            stop_job_process(server)
        if broker is not None:
            broker.stop()
            shutil.rmtree(broker.data_dir.parent, ignore_errors=True)

    report = {
        "benchmark": "GET /users/{id}/recommendations (random user among --users), keep-alive, loopback",
        "command": " ".join(["bench/bench_serve.py", *sys.argv[1:]]),
        "tool": tool, "load_command": " ".join(load_cmd), "server_command": "python -m recsys.serving.api",
        "users": args.users, "items_per_recommendation": args.k, "connections": args.connections,
        **result,
        "target_requests_per_s": TARGET_RPS, "meets_target": result["requests_per_s"] >= TARGET_RPS,
        "machine": machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    lat = result["latency_ms"]
    print(f"bench_serve: {result['requests_per_s']:.0f} requests/s, p50 {lat['p50']:.2f} ms, "
          f"p99 {lat['p99']:.2f} ms, errors {result['errors']} ({tool}, {args.connections} connections, "
          f"{result['duration_s']:.0f} s) -> {out}")
    return 0 if report["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
