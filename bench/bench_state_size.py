"""State size: per user (profile) and per item (similarity rows), growth, and skew bounds.

Offline (no Flink, no Kafka), with the same pure functions the operators call and the same
serialisation the job stores: PyFlink keeps a ``PICKLED_BYTE_ARRAY`` state value as
``pickle.dumps(value)`` (``pyflink/fn_execution/embedded/converters.py``), i.e. the bytes counted
here are what the heap backend holds per key (plus its per-entry overhead) and what RocksDB and
checkpoints store (before compression).

Sections (``--only`` picks some):

* ``ml100k``   — every ml-100k rating replayed per user (``deploy/ml-100k.toml`` settings)
  through ``remember_event_id`` + ``apply_event``; pickled ``user_profile_to_state`` per user,
  its distribution and which fields make it up. Target: <= 2 KB per user.
* ``sample``   — the same for the bundled sample stream (``data/sample``).
* ``growth``   — synthetic users (``--growth-users``, default 10k, 100k, 1M), each with a week of
  heavy-tailed activity (log-normal number of events, median 8), production-like 32-hex event
  ids; total pickled bytes and the RSS of holding them as the heap backend would (one bytes
  object per user), extrapolated to 100M users.
* ``rows``     — similarity rows after replaying ml-100k's pair updates through
  ``apply_pair_updates`` in flush batches: entries per row vs ``similarity.max_pairs_per_item``.
* ``skew``     — one hot user (``--hot-user-events`` events) and one hot item (every event of many
  users touches it): per-event cost and state stay bounded by ``history_max_items``,
  ``recent_items_max``/``consumed_max``/``dedup_max_ids_per_user`` and ``max_pairs_per_item``.

    .venv/bin/python bench/bench_state_size.py [--only ml100k,rows,skew] [--growth-users 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

from state_schemas.config import DAY_MS, EngineConfig, load_config  # noqa: E402
from state_schemas.state import (  # noqa: E402
    ItemInfo, UserProfileState, user_profile_from_state, user_profile_to_state)
from udfs import profile as prof  # noqa: E402
from udfs.ab import ImpressionLog, record_impressions  # noqa: E402
from udfs.similarity import ItemRow, PairBatch, apply_pair_updates  # noqa: E402
from workload import Workload, zipf_p  # noqa: E402


def state_bytes(p: UserProfileState) -> int:
    return len(pickle.dumps(user_profile_to_state(p)))  # what PyFlink stores


def dist(values: list[float]) -> dict[str, Any]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(len(a)), "mean": round(float(a.mean()), 1),
            "p50": round(float(np.percentile(a, 50)), 1),
            "p90": round(float(np.percentile(a, 90)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1),
            "share_over_2048": round(float((a > 2048).mean()), 4)}


def field_breakdown(profiles: Iterable[UserProfileState]) -> dict[str, float]:
    """Mean pickled bytes of each field of the state dict (each pickled alone: an estimate)."""
    sums: dict[str, int] = {}
    n = 0
    for p in profiles:
        n += 1
        for k, v in user_profile_to_state(p).items():
            sums[k] = sums.get(k, 0) + len(pickle.dumps(v)) - len(pickle.dumps(None))
    return {k: round(v / max(1, n), 1) for k, v in sorted(sums.items(), key=lambda kv: -kv[1])}


def info_of(r: dict[str, Any]) -> ItemInfo:
    return ItemInfo(r["item_id"], r["title"], tuple(r["categories"]), tuple(r["tags"]),
                    r["price"], r["available"], r["ts"])


def replay_profiles(cfg: EngineConfig, catalog: dict[str, ItemInfo], attributes: list[dict],
                    events: list[dict]) -> tuple[dict[str, UserProfileState], dict[str, Any]]:
    """Every event through the profile operator's pure calls, in the given (time) order."""
    profiles: dict[str, UserProfileState] = {}
    for a in attributes:
        p = profiles.setdefault(a["user_id"], UserProfileState(a["user_id"]))
        prof.apply_attributes(p, a["attributes"], a["ts"])
    pairs = 0
    t0 = time.process_time()
    for e in events:
        p = profiles.get(e["user_id"])
        if p is None:
            p = profiles[e["user_id"]] = UserProfileState(e["user_id"])
        if not prof.remember_event_id(p, e["event_id"], e["ts"], cfg.validation.dedup_window_ms,
                                      cfg.validation.dedup_max_ids_per_user):
            continue
        out = prof.apply_event(p, e, catalog.get(e["item_id"]), cfg.profile, cfg.similarity)
        pairs += len(out.pairs)
    cpu = time.process_time() - t0
    return profiles, {"events": len(events), "pair_updates_per_event": round(pairs / max(1, len(events)), 2),
                      "cpu_us_per_event": round(cpu * 1e6 / max(1, len(events)), 1)}


def impressions_bound_bytes(cfg: EngineConfig, item_ids: list[str], variant: str) -> int:
    """The recommendation operator's per-user impressions state at its bound (impressions_max)."""
    log = ImpressionLog()
    record_impressions(log, item_ids[:cfg.recommend.impressions_max], variant, 1_700_000_000_000,
                       cfg.recommend.impressions_max, window_ms=cfg.recommend.feedback_window_ms)
    return len(pickle.dumps(log.to_state()))


# ----------------------------------------------------------------------------------- sections
ML_DEFAULTS = ["validation.min_ts_ms=788918400000", "similarity.decay_landmark_ms=873072000000"]


def section_ml100k(out: dict[str, Any]) -> None:
    """ml-100k with the shipped defaults (+ the two settings its 1997-98 timestamps need), and
    with ``deploy/ml-100k.toml`` as it is in the tree."""
    from recsys import movielens
    ml = movielens.load()
    catalog = {r["item_id"]: info_of(r) for r in movielens.catalog_records(ml)}
    events = movielens.events(ml.ratings)
    events_per_user: dict[str, int] = {}
    for e in events:
        events_per_user[e["user_id"]] = events_per_user.get(e["user_id"], 0) + 1
    variants = {"defaults": load_config(None, ML_DEFAULTS, environ={})}
    # What-if: tighter caps on the two fields that dominate (behaviour changes; see docs/scaling.md)
    variants["defaults + dedup_max_ids_per_user=64, consumed_max=200"] = load_config(
        None, ML_DEFAULTS + ["validation.dedup_max_ids_per_user=64", "profile.consumed_max=200"],
        environ={})
    if (ROOT / "deploy" / "ml-100k.toml").is_file():
        variants["deploy/ml-100k.toml"] = load_config(ROOT / "deploy" / "ml-100k.toml", environ={})
    res: dict[str, Any] = {"users": len(ml.users), "events_per_user": dist(list(events_per_user.values())),
                           "target_bytes": 2048}
    for name, cfg in variants.items():
        profiles, run = replay_profiles(cfg, catalog, movielens.attribute_records(ml), events)
        sizes = {u: state_bytes(p) for u, p in profiles.items()}
        heavy = sorted(profiles, key=lambda u: -sizes[u])[:3]
        res[name] = {
            "settings": name,
            "caps": {"recent_items_max": cfg.profile.recent_items_max,
                     "consumed_max": cfg.profile.consumed_max,
                     "dedup_max_ids_per_user": cfg.validation.dedup_max_ids_per_user,
                     "dedup_window_ms": cfg.validation.dedup_window_ms,
                     "interests_max": cfg.profile.interests_max},
            **run,
            "profile_state_bytes": dist(list(sizes.values())),
            "fields_mean_bytes": field_breakdown(profiles.values()),
            "largest": [{"user": u, "bytes": sizes[u], "events": events_per_user.get(u, 0),
                         "consumed": len(profiles[u].consumed),
                         "seen_event_ids": len(profiles[u].seen_event_ids),
                         "recent_items": len(profiles[u].recent_items),
                         "interests": len(profiles[u].interests)} for u in heavy],
            "compact_encoding_estimate": dist([compact_bytes(p) for p in profiles.values()]),
            "impressions_state_bytes_at_bound": impressions_bound_bytes(cfg, list(catalog), "control"),
        }
    res["compact_encoding"] = COMPACT_DOC
    out["ml100k"] = res


COMPACT_DOC = ("same information, columnar: consumed / not_interested / seen_event_ids as 8-byte "
               "hashes + uint32 second offsets from first_seen; recent_items as one joined id "
               "string + uint8 type codes + uint32 offsets + float32 weights; interests as one "
               "joined feature string + float32 weights; day counters as is; no user_id (it is "
               "the state key); pickle protocol 5")
TYPE_CODES = {t: i for i, t in enumerate(("view", "click", "like", "share", "comment", "add_to_cart",
                                          "purchase", "rate", "not_interested"))}


def compact_bytes(p: UserProfileState) -> int:
    """Size of a compact encoding of the same profile (a suggestion for state v2, measured)."""
    base = p.first_seen or 0

    def offs(ts: Iterable[int]) -> bytes:
        return np.fromiter(((t - base) // 1000 for t in ts), np.int64).astype("<u4").tobytes()

    def hashes(ids: Iterable[str]) -> bytes:
        return np.fromiter((hash64(i) for i in ids), np.uint64).tobytes()

    st = {
        "v": 2, "a": p.attributes, "at": p.attributes_ts, "c": p.counts_all_time,
        "d": p.counts_by_day,
        "i": ("\x1f".join(p.interests), np.fromiter(p.interests.values(), np.float32).tobytes(),
              p.interests_ts),
        "r": ("\x1f".join(r.item_id for r in p.recent_items),
              bytes(TYPE_CODES.get(r.event_type, 0) for r in p.recent_items),
              offs(r.ts for r in p.recent_items),
              np.fromiter((r.weight for r in p.recent_items), np.float32).tobytes()),
        "n": hashes(p.not_interested),
        "k": (hashes(p.consumed), offs(p.consumed.values())),
        "s": (hashes(p.seen_event_ids), offs(p.seen_event_ids.values())),
        "f": (p.first_seen, p.last_seen), "p": (p.purchase_amount_sum, p.purchase_priced_count),
        "x": (p.last_snapshot_at, p.snapshot_pending),
    }
    return len(pickle.dumps(st, protocol=5))


def hash64(s: str) -> int:
    import hashlib
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


def section_sample(out: dict[str, Any]) -> None:
    from recsys.sample_stream import load_sample
    cfg = load_config(None, environ={})
    data = load_sample()
    catalog = {r["item_id"]: info_of(r) for r in data.items}
    profiles, run = replay_profiles(cfg, catalog, data.users, sorted(data.events, key=lambda e: e["ts"]))
    sizes = [state_bytes(p) for p in profiles.values()]
    out["sample"] = {"users": len(profiles), **run, "profile_state_bytes": dist(sizes),
                     "fields_mean_bytes": field_breakdown(profiles.values()),
                     "compact_encoding_estimate": dist([compact_bytes(p) for p in profiles.values()])}


def synthetic_user_events(rng: np.random.Generator, n_events: int, user: str, items: list[str],
                          item_p: np.ndarray, types: list[str], type_p: np.ndarray,
                          start_ms: int) -> list[dict[str, Any]]:
    """A week of one user's activity: sessions of a few events, Zipf items, the event mix."""
    its = rng.choice(len(items), n_events, p=item_p)
    tys = rng.choice(len(types), n_events, p=type_p)
    ts = np.sort(rng.integers(0, 7 * DAY_MS, n_events)) + start_ms
    rates = rng.integers(1, 6, n_events)
    return [{"event_id": uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | int(rng.integers(0, 2**63))).hex,
             "user_id": user, "item_id": items[its[k]], "event_type": types[tys[k]],
             "ts": int(ts[k]), "value": float(rates[k]) if types[tys[k]] == "rate" else None,
             "context": None} for k in range(n_events)]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def section_growth(out: dict[str, Any], user_counts: list[int], n_items: int, seed: int) -> None:
    from workload import EVENT_MIX
    cfg = load_config(None, environ={})
    wl = Workload(n_users=1, n_items=n_items, seed=seed)
    catalog = {r["item_id"]: info_of(r) for r in wl.catalog(1_767_000_000_000)}
    items = wl.item_ids
    item_p = zipf_p(n_items, 1.1)
    types = list(EVENT_MIX)
    type_p = np.array([EVENT_MIX[t] for t in types])
    type_p = type_p / type_p.sum()
    start = 1_767_000_000_000
    results = []
    for n_users in user_counts:
        rng = np.random.default_rng(seed)
        gc.collect()
        rss0 = rss_mb()
        store: dict[str, bytes] = {}  # what the heap backend holds: one pickled value per key
        total = 0
        n_events = 0
        sample_sizes = []
        t0 = time.process_time()
        counts = np.minimum(np.maximum(1, rng.lognormal(np.log(8), 1.0, n_users).astype(np.int64)), 2000)
        chunk = 10_000
        for c0 in range(0, n_users, chunk):
            cnt = counts[c0:c0 + chunk]
            m = int(cnt.sum())
            its = rng.choice(n_items, m, p=item_p)  # drawn in bulk: one cumsum per chunk
            tys = rng.choice(len(types), m, p=type_p)
            tss = start + rng.integers(0, 7 * DAY_MS, m)
            rts = rng.integers(1, 6, m)
            ages = rng.integers(16, 75, len(cnt))
            pos = 0
            for j, c in enumerate(cnt.tolist()):
                k = c0 + j
                user = f"user-{k:09d}"
                p = UserProfileState(user)
                prof.apply_attributes(p, {"age": int(ages[j]), "gender": "F" if k % 2 else "M",
                                          "occupation": "engineer", "region": "us-9"}, start)
                order = np.argsort(tss[pos:pos + c], kind="stable") + pos
                for n, e_i in enumerate(order.tolist()):
                    et = types[tys[e_i]]
                    e = {"event_id": f"{k:016x}{n:016x}", "user_id": user,
                         "item_id": items[its[e_i]], "event_type": et, "ts": int(tss[e_i]),
                         "value": float(rts[e_i]) if et == "rate" else None, "context": None}
                    if prof.remember_event_id(p, e["event_id"], e["ts"], cfg.validation.dedup_window_ms,
                                              cfg.validation.dedup_max_ids_per_user):
                        prof.apply_event(p, e, catalog.get(e["item_id"]), cfg.profile, cfg.similarity)
                pos += c
                blob = pickle.dumps(user_profile_to_state(p))
                store[user] = blob
                total += len(blob)
                if len(sample_sizes) < 100_000:
                    sample_sizes.append(len(blob))
            n_events += m
        cpu = time.process_time() - t0
        rss1 = rss_mb()
        row = {"users": n_users, "events": n_events, "events_per_user_mean": round(n_events / n_users, 2),
               "pickled_total_mb": round(total / 2**20, 1),
               "pickled_bytes_per_user": round(total / n_users, 1),
               "profile_state_bytes_first_100k": dist(sample_sizes),
               "python_rss_growth_mb": round(rss1 - rss0, 1),
               "python_rss_bytes_per_user": round((rss1 - rss0) * 2**20 / n_users, 1),
               "cpu_s": round(cpu, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
        del store
    per_user = results[-1]["pickled_bytes_per_user"]
    out["growth"] = {
        "activity": "log-normal events per user (median 8, sigma 1, capped at 2000) over 7 days; "
                    "32-hex event ids; Zipf(1.1) items over the catalogue; EVENT_MIX types",
        "items": n_items, "points": results,
        "extrapolation_100M_users": {
            "pickled_gb": round(per_user * 1e8 / 2**30, 1),
            "note": "state per user does not depend on the number of users (only on the user's "
                    "own history, bounded by the profile caps), so total = users x bytes/user"},
    }


def section_rows(out: dict[str, Any], flush_events: int) -> None:
    """ml-100k pair updates through the kernel: row sizes vs max_pairs_per_item."""
    from recsys import movielens
    cfg = load_config(None, ML_DEFAULTS, environ={})  # the shipped similarity settings
    sim = cfg.similarity
    ml = movielens.load()
    catalog = {r["item_id"]: info_of(r) for r in movielens.catalog_records(ml)}
    profiles: dict[str, UserProfileState] = {}
    rows: dict[str, ItemRow] = {}
    occurrence: dict[str, float] = {}
    buf: tuple[list, list, list, list] = ([], [], [], [])
    kernel_s = 0.0
    flushes = 0
    max_len_seen = 0

    def flush() -> None:
        nonlocal kernel_s, flushes, max_len_seen, buf
        if not buf[0]:
            return
        batch = PairBatch.from_lists(*buf)
        current = {i: rows[i] for i in set(buf[0]) if i in rows}
        t0 = time.process_time()
        updated = apply_pair_updates(current, batch, occurrence, sim, sim.decay_landmark_ms,
                                     delta=sim.hoeffding_delta, min_obs=sim.hoeffding_min_obs)
        kernel_s += time.process_time() - t0
        flushes += 1
        for i, r in updated.items():
            rows[i] = r.copy()
            max_len_seen = max(max_len_seen, len(r))
        buf = ([], [], [], [])

    for n, e in enumerate(movielens.events(ml.ratings), start=1):
        p = profiles.setdefault(e["user_id"], UserProfileState(e["user_id"]))
        o = prof.apply_event(p, e, catalog.get(e["item_id"]), cfg.profile, sim)
        if o.occurrence_delta > 0:
            occurrence[e["item_id"]] = occurrence.get(e["item_id"], 0.0) + o.occurrence_delta * \
                2.0 ** ((e["ts"] - sim.decay_landmark_ms) / sim.half_life_ms)
        for pu in o.pairs:
            buf[0].append(pu.row)
            buf[1].append(pu.col)
            buf[2].append(pu.weight)
            buf[3].append(pu.ts)
        if n % flush_events == 0:
            flush()
    flush()
    lens = [len(r) for r in rows.values()]
    row_bytes = [len(pickle.dumps(r.to_state())) for r in rows.values()]
    nb_bytes = [len(pickle.dumps(r.neighbors)) for r in rows.values()]
    out["rows"] = {
        "config": {"max_pairs_per_item": sim.max_pairs_per_item, "top_k": sim.top_k,
                   "history_max_items": sim.history_max_items},
        "items_with_row": len(rows), "flushes": flushes, "flush_every_events": flush_events,
        "kernel_ms_per_flush": round(kernel_s * 1000 / max(1, flushes), 2),
        "entries_per_row": dist(lens), "max_entries_ever": max_len_seen,
        "rows_at_cap": int(sum(1 for x in lens if x >= sim.max_pairs_per_item)),
        "bound_holds": max_len_seen <= sim.max_pairs_per_item,
        "row_state_bytes": dist(row_bytes),
        "neighbors_bytes (broadcast per item, top_k)": dist(nb_bytes),
    }


def section_model(out: dict[str, Any], n_items: int) -> None:
    """The broadcast item model every recommendation subtask holds (and the profile subtasks'
    catalogue mirror, and the similarity subtasks' occurrence map): Python memory per item."""
    from state_schemas.state import item_info_to_state
    cfg = load_config(None, environ={})
    rc, sim = cfg.recommend, cfg.similarity
    wl = Workload(n_users=1000, n_items=n_items, seed=5)
    t = 1_767_000_000_000
    gc.collect()
    rss0 = rss_mb()
    catalog = {r["item_id"]: info_of(r) for r in wl.catalog(t)}
    rss1 = rss_mb()
    rng = np.random.default_rng(5)
    ids = wl.item_ids
    neighbors = {i: [(ids[j], float(s)) for j, s in zip(rng.integers(0, n_items, sim.top_k),
                                                       np.sort(rng.random(sim.top_k))[::-1])]
                 for i in ids}
    rss2 = rss_mb()
    from udfs.trending import TrendingModel
    from workload import CATEGORIES
    tm = TrendingModel(rc.trending_half_life_ms, top_cache_size=rc.trending_top_n)
    segs = [f"age:{a}|gender:{g}" for a in ("18-24", "25-34", "35-44", "45-54", "55+") for g in "FM"]
    for k, i in enumerate(ids):  # every item active at least once, in ~2 categories, 1 segment
        tm.record(i, catalog[i].categories, segs[k % len(segs)], 1.0, t + k)
    rss3 = rss_mb()
    occurrence = {i: float(k) for k, i in enumerate(ids)}
    rss4 = rss_mb()
    pickled_catalog = sum(len(pickle.dumps(item_info_to_state(v))) for v in catalog.values())
    pickled_nbr = sum(len(pickle.dumps(v)) for v in neighbors.values())
    pickled_trending = len(pickle.dumps(tm.to_state()))
    per = lambda mb: round(mb * 2**20 / n_items, 1)  # noqa: E731
    out["model"] = {
        "items": n_items, "top_k": sim.top_k,
        "python_bytes_per_item": {"catalog (ItemInfo)": per(rss1 - rss0),
                                  "neighbours (top_k tuples)": per(rss2 - rss1),
                                  "trending (global + categories + segments)": per(rss3 - rss2),
                                  "occurrence (similarity operator)": per(rss4 - rss3)},
        "broadcast_state_pickled_bytes_per_item": {
            "catalog": round(pickled_catalog / n_items, 1),
            "neighbours": round(pickled_nbr / n_items, 1),
            "trending snapshot": round(pickled_trending / n_items, 1)},
        "note": "held by EVERY subtask of the operator (broadcast): Python objects in the "
                "embedded interpreter plus the pickled broadcast state in the JVM heap",
    }
    del catalog, neighbors, tm, occurrence


def section_skew(out: dict[str, Any], hot_user_events: int, hot_item_users: int) -> None:
    cfg = load_config(None, environ={})
    sim = cfg.similarity
    wl = Workload(n_users=1, n_items=20_000)
    catalog = {r["item_id"]: info_of(r) for r in wl.catalog(1_767_000_000_000)}
    rng = np.random.default_rng(3)
    items = wl.item_ids
    item_p = zipf_p(len(items), 1.1)
    from workload import EVENT_MIX
    types = list(EVENT_MIX)
    type_p = np.array([EVENT_MIX[t] for t in types]) / sum(EVENT_MIX.values())

    # One hot user: hot_user_events events within a few days.
    p = UserProfileState("hot-user")
    evs = synthetic_user_events(rng, hot_user_events, "hot-user", items, item_p, types, type_p,
                                1_767_000_000_000)
    windows = []
    pairs_max = 0
    chunk = max(1, hot_user_events // 10)
    for start in range(0, hot_user_events, chunk):
        t0 = time.process_time()
        blob = None
        n_pairs = 0
        for e in evs[start:start + chunk]:
            # the operator's per-event state round trip, too
            if prof.remember_event_id(p, e["event_id"], e["ts"], cfg.validation.dedup_window_ms,
                                      cfg.validation.dedup_max_ids_per_user):
                o = prof.apply_event(p, e, catalog.get(e["item_id"]), cfg.profile, sim)
                n_pairs += len(o.pairs)
                pairs_max = max(pairs_max, len(o.pairs))
            blob = pickle.dumps(user_profile_to_state(p))
            p = user_profile_from_state(pickle.loads(blob))
        cpu = time.process_time() - t0
        windows.append({"after_events": start + chunk, "us_per_event": round(cpu * 1e6 / chunk, 1),
                        "state_bytes": len(blob or b""), "pairs_per_event": round(n_pairs / chunk, 2)})
    hot_user = {"events": hot_user_events, "windows": windows,
                "max_pair_updates_per_event": pairs_max,
                "bound_pair_updates_per_event": 2 * sim.history_max_items,
                "final": {"consumed": len(p.consumed), "seen_event_ids": len(p.seen_event_ids),
                          "recent_items": len(p.recent_items), "interests": len(p.interests),
                          "not_interested": len(p.not_interested)},
                "caps": {"consumed_max": cfg.profile.consumed_max,
                         "dedup_max_ids_per_user": cfg.validation.dedup_max_ids_per_user,
                         "recent_items_max": cfg.profile.recent_items_max,
                         "interests_max": cfg.profile.interests_max,
                         "not_interested_max": cfg.profile.not_interested_max}}

    # One hot item: every user's history pairs with it; its row receives updates in every flush.
    hot = "HOT-ITEM"
    rows: dict[str, ItemRow] = {}
    occurrence: dict[str, float] = {hot: 0.0}
    flush_stats = []
    per_flush_users = max(1, hot_item_users // 20)
    ts = 1_767_000_000_000
    for f in range(20):
        r_, c_, w_, t_ = [], [], [], []
        for u in range(per_flush_users):
            hist = rng.choice(len(items), sim.history_max_items, p=item_p)
            for j in set(hist.tolist()):
                col = items[j]
                r_ += [hot, col]
                c_ += [col, hot]
                w_ += [1.0, 1.0]
                t_ += [ts, ts]
                occurrence[col] = occurrence.get(col, 0.0) + 1.0 * 2.0 ** (
                    (ts - sim.decay_landmark_ms) / sim.half_life_ms)
            occurrence[hot] += 1.0 * 2.0 ** ((ts - sim.decay_landmark_ms) / sim.half_life_ms)
            ts += 1000
        batch = PairBatch.from_lists(r_, c_, w_, t_)
        current = {i: rows[i] for i in set(r_) if i in rows}
        t0 = time.process_time()  # CPU time: other jobs on the machine do not inflate it
        upd = apply_pair_updates(current, batch, occurrence, sim, sim.decay_landmark_ms,
                                 delta=sim.hoeffding_delta, min_obs=sim.hoeffding_min_obs)
        dt = time.process_time() - t0
        for i, r in upd.items():
            rows[i] = r.copy()
        flush_stats.append({"flush": f + 1, "pairs": len(batch), "hot_row_entries": len(rows[hot]),
                            "kernel_ms": round(dt * 1000, 2),
                            "us_per_pair": round(dt * 1e6 / len(batch), 2),
                            "hot_row_state_bytes": len(pickle.dumps(rows[hot].to_state()))})
    out["skew"] = {"hot_user": hot_user,
                   "hot_item": {"users": per_flush_users * 20, "flushes": flush_stats,
                                "max_pairs_per_item": sim.max_pairs_per_item,
                                "bound_holds": all(s["hot_row_entries"] <= sim.max_pairs_per_item
                                                   for s in flush_stats)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="ml100k,sample,rows,model,skew,growth")
    ap.add_argument("--model-items", type=int, default=200_000)
    ap.add_argument("--growth-users", default="10000,100000,1000000")
    ap.add_argument("--growth-items", type=int, default=100_000)
    ap.add_argument("--flush-events", type=int, default=200,
                    help="ml-100k events per similarity flush in the rows section")
    ap.add_argument("--hot-user-events", type=int, default=20_000)
    ap.add_argument("--hot-item-users", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default=str(ROOT / "reports" / "state_size.json"))
    ap.add_argument("--merge", action="store_true",
                    help="update only the sections run in an existing --out file")
    args = ap.parse_args(argv)
    sections = set(args.only.split(","))
    out: dict[str, Any] = {
        "command": " ".join(["python", "bench/bench_state_size.py", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "serialisation": f"pickle.dumps(user_profile_to_state(p)) (protocol {pickle.DEFAULT_PROTOCOL}, as PyFlink)",
    }
    path = Path(args.out)
    if args.merge and path.is_file():
        previous = json.loads(path.read_text())
        previous.update({k: v for k, v in out.items() if k != "command"})
        previous.setdefault("merged_commands", []).append(out["command"])
        out = previous

    def save() -> None:
        out["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")

    have_ml = (ROOT / "recsys" / "movielens.py").is_file()
    if "ml100k" in sections:
        if have_ml:
            section_ml100k(out)
            print(json.dumps(out["ml100k"], indent=1)[:6000], flush=True)
        else:
            out["ml100k"] = {"skipped": "recsys/movielens.py is absent"}
        save()
    if "sample" in sections:
        section_sample(out)
        print(json.dumps(out["sample"], indent=1), flush=True)
        save()
    if "rows" in sections and have_ml:
        section_rows(out, args.flush_events)
        print(json.dumps(out["rows"], indent=1), flush=True)
        save()
    if "model" in sections:
        section_model(out, args.model_items)
        print(json.dumps(out["model"], indent=1), flush=True)
        save()
    if "skew" in sections:
        section_skew(out, args.hot_user_events, args.hot_item_users)
        print(json.dumps(out["skew"], indent=1), flush=True)
        save()
    if "growth" in sections:
        section_growth(out, [int(x) for x in args.growth_users.split(",")], args.growth_items,
                       args.seed)
        print(json.dumps(out["growth"], indent=1), flush=True)
        save()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
