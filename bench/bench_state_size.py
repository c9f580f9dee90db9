"""State size per user and per item, and the bound a hot user stays within.

Offline (no Flink, no Kafka): the job's engine in the simulator (``recsys/evaluation/simulate.py``) replays
the data, and the state values are encoded with the job's own codecs
(``state_schemas/profile_state.py``, ``state_schemas/item_state.py``). The bytes counted are the
values the job puts into Flink's keyed state (``ValueState<byte[]>``): what the heap backend
holds per key and what RocksDB and checkpoints store before compression, plus Flink's own
per-entry overhead (the key, a user or item id, and a few bytes of framing) which is not counted.

Sections (``--only`` picks some):

* ``ml100k`` — every ml-100k rating replayed (with the ``deploy/ml-100k.toml`` settings and with
  the defaults plus what ml-100k needs to be accepted), one recommendation per rating as the
  job makes them: the ``user-profile`` and ``impressions`` values of every user, their
  distribution and which parts of the profile the bytes are in; the ``similarity-row`` value of
  every item. Bar (issue 12): mean profile state <= 2 KB per user.
* ``hot_user`` — one user with ``--hot-user-events`` events over many items: the profile stays
  within the bounds of ``profile.recent_items_max``, ``profile.consumed_max``,
  ``profile.interests_max`` and ``validation.dedup_max_ids_per_user``.

    .venv/bin/python bench/bench_state_size.py [--only ml100k,hot_user] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from recsys.evaluation.simulate import EngineSimulator  # noqa: E402
from state_schemas.config import EngineConfig, load_config  # noqa: E402
from state_schemas.profile_state import UserProfile, encode_profile  # noqa: E402

ML_CONFIG = ROOT / "deploy" / "ml-100k.toml"
# The defaults, except what ml-100k needs to be accepted at all (1997-98 timestamps).
ML_MINIMAL = ["validation.min_ts_ms=788918400000"]


def dist(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    if not len(a):
        return {"n": 0}
    return {"n": int(len(a)), "mean": round(float(a.mean()), 1),
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "share_over_2048": round(float((a > 2048).mean()), 4)}


# The parts of a profile value, each measured as the bytes it adds (encoded with the part
# emptied, subtracted from the full encoding).
PARTS: dict[str, dict[str, Any]] = {
    "dedup window (event-id hashes)": {"dedup": {}},
    "consumed item hashes": {"consumed": {}},
    "recent items (ids, types, times, weights)": {"recent_ids": [], "recent_types": [],
                                                  "recent_ts": [], "recent_weights": []},
    "interests (feature names, weights)": {"interests": {}},
    "day counters": {"counts_by_day": {}},
    "attributes": {"attributes": {}},
    "not-interested items": {"not_interested": []},
}


def breakdown(profiles: list[UserProfile]) -> dict[str, float]:
    sums = dict.fromkeys(PARTS, 0)
    rest = 0
    for p in profiles:
        full = len(encode_profile(p))
        left = full
        for name, empty in PARTS.items():
            part = full - len(encode_profile(dataclasses.replace(p, **empty)))
            sums[name] += part
            left -= part
        rest += left
    n = max(1, len(profiles))
    out = {k: round(v / n, 1) for k, v in sorted(sums.items(), key=lambda kv: -kv[1])}
    out["header, all-time counters, user id, variant"] = round(rest / n, 1)
    return out


def replay_ml100k(cfg: EngineConfig, ms_per_event: float) -> EngineSimulator:
    from recsys.evaluation import movielens

    ml = movielens.load()
    sim = EngineSimulator(cfg, ms_per_event=ms_per_event)
    sim.add_items(movielens.catalog_records(ml))
    sim.add_attributes(movielens.attribute_records(ml))
    sim.process_events(movielens.events(ml.ratings), 500)
    sim.drain()
    sim.checkpoint()
    return sim


def section_ml100k(out: dict[str, Any]) -> None:
    res: dict[str, Any] = {}
    for name, cfg in (("deploy/ml-100k.toml", load_config(str(ML_CONFIG), environ={})),
                      ("defaults", load_config(overrides=ML_MINIMAL, environ={}))):
        t0 = time.perf_counter()
        sim = replay_ml100k(cfg, ms_per_event=1.0)
        users = sorted(sim.user_state)
        profiles = [sim.profile(u) for u in users]
        prof_bytes = [len(sim.user_state[u][0] or b"") for u in users]
        imp_bytes = [len(sim.user_state[u][1] or b"") for u in users if sim.user_state[u][1]]
        row_bytes = [len(v[0]) for v in sim.item_state.values() if v and v[0]]
        res[name] = {"users": len(users), "profile_state_bytes": dist(prof_bytes),
                     "fields_mean_bytes": breakdown([p for p in profiles if p is not None]),
                     "impressions_state_bytes": dist(imp_bytes),
                     "similarity_row_state_bytes": dist(row_bytes),
                     "bounds": {"recent_items_max": cfg.profile.recent_items_max,
                                "consumed_max": cfg.profile.consumed_max,
                                "interests_max": cfg.profile.interests_max,
                                "dedup_max_ids_per_user": cfg.validation.dedup_max_ids_per_user,
                                "dedup_window_ms": cfg.validation.dedup_window_ms,
                                "impressions_max": cfg.recommend.impressions_max},
                     "replay_s": round(time.perf_counter() - t0, 1)}
        d = res[name]["profile_state_bytes"]
        print(f"ml-100k {name}: profile mean {d['mean']} B, p99 {d['p99']}, max {d['max']}",
              flush=True)
    out["ml100k"] = res


def section_hot_user(out: dict[str, Any], n_events: int) -> None:
    cfg = load_config(environ={})
    t = int(time.time() * 1000) - n_events * 1000
    sim = EngineSimulator(cfg, ms_per_event=1.0)
    n_items = 5_000
    sim.add_items({"item_id": f"i{k}", "ts": t - 1, "title": f"Item {k}",
                   "categories": [f"c{k % 40}"], "tags": [f"t{k % 300}"], "price": 10.0,
                   "available": True} for k in range(n_items))
    rng = np.random.default_rng(5)
    types = ["view", "click", "like", "add_to_cart", "purchase"]
    windows = []
    step = max(1, n_events // 5)
    for w in range(0, n_events, step):
        events = [{"event_id": f"e{k}", "user_id": "hot", "item_id": f"i{int(rng.integers(n_items))}",
                   "event_type": types[k % len(types)], "ts": t + k * 1000}
                  for k in range(w, min(n_events, w + step))]
        t0 = time.thread_time()
        sim.process_events(events, 500)
        cpu = time.thread_time() - t0
        sim.checkpoint()
        p = sim.profile("hot")
        windows.append({"events_so_far": w + len(events),
                        "state_bytes": len(sim.user_state["hot"][0]),
                        "recent": len(p.recent_ids), "consumed": len(p.consumed),
                        "interests": len(p.interests), "dedup_ids": len(p.dedup),
                        "cpu_us_per_event": round(cpu / len(events) * 1e6, 1)})
    last = windows[-1]
    bounded = (last["recent"] <= cfg.profile.recent_items_max
               and last["consumed"] <= cfg.profile.consumed_max
               and last["interests"] <= cfg.profile.interests_max
               and last["dedup_ids"] <= cfg.validation.dedup_max_ids_per_user)
    out["hot_user"] = {"events": n_events, "windows": windows, "bounded": bounded}
    print(f"hot user: state {windows[0]['state_bytes']} -> {last['state_bytes']} B, "
          f"bounded={bounded}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="ml100k,hot_user")
    ap.add_argument("--hot-user-events", type=int, default=20_000)
    ap.add_argument("--out", default=str(ROOT / "reports" / "state_size.json"))
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    out: dict[str, Any] = {
        "command": " ".join(["python", "bench/bench_state_size.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}}
    if "ml100k" in only:
        section_ml100k(out)
    if "hot_user" in only:
        section_hot_user(out, args.hot_user_events)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
