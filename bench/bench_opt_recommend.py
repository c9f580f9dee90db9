"""Prototype of two recommend() optimisations, measured against the code in the tree.

Nothing in ``udfs/`` is changed: the prototypes are installed by monkeypatching *this process
only*, and every recommendation they produce is compared with the unpatched one (same items,
same scores, same reasons) on the same inputs.

1. ``trending_candidates`` without the re-fetch loop: today every call asks the counter for
   ``limit`` items, filters them with ``allowed`` (catalogue, availability), and when any was
   filtered out asks again for 4x as many — which is beyond the counter's top cache (500), so it
   sorts *every* key of the counter in Python. The prototype keeps, per counter, the order of its
   top cache (rebuilt with one numpy argsort when the counter changed) and walks it lazily,
   skipping excluded / not allowed keys, until ``limit`` are taken (falling back to the full order
   only if the cache runs out). Same result by construction: the first ``limit`` allowed,
   non-excluded keys in (score desc, key asc) order.
2. ``content_scores`` with each item's feature tuple computed once per catalogue entry instead of
   building ``"category:..."``/``"tag:..."`` strings for every candidate of every call.

The replay (``bench/bench_hot_path.py``'s ``Replay``) warms the model with ``--warm`` events,
then for ``--events`` events records the trending update and the recommendation input exactly as
the job would interleave them, and times ``recommend()`` both ways on identical inputs.

    .venv/bin/python bench/bench_opt_recommend.py [--warm 10000 --events 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

import udfs.recommend as R  # noqa: E402
from bench_hot_path import Replay  # noqa: E402
from recsys.config import load_config  # noqa: E402
from state_schemas.state import ItemInfo, RecentItem  # noqa: E402
from udfs.recommend import UserView, recommend  # noqa: E402
from udfs.trending import DecayedCounter, TrendingModel  # noqa: E402
from workload import Workload, now_ms  # noqa: E402

ORIGINAL = {"trending_candidates": R.trending_candidates, "content_scores": R.content_scores}


# ------------------------------------------------------------------------ prototype 1: trending
class _Ranking:
    """A counter's top-cache indices in (value desc, key asc) order, for one state of it."""
    __slots__ = ("top_ref", "size", "order")

    def __init__(self, c: DecayedCounter):
        top = c._top if c._top is not None else c._rebuild_top()
        self.top_ref = top  # identity changes on every add (see DecayedCounter._touch)
        self.size = len(c._keys)
        vals = c._values[top]
        pos = vals > 0
        top, vals = top[pos], vals[pos]
        order = np.argsort(-vals, kind="stable")
        idx, v = top[order].tolist(), vals[order].tolist()
        # Equal values are rare (float sums); order each run of equal values by key, exactly.
        keys = c._keys
        i = 0
        while i < len(v) - 1:
            if v[i] == v[i + 1]:
                j = i + 1
                while j < len(v) and v[j] == v[i]:
                    j += 1
                idx[i:j] = sorted(idx[i:j], key=keys.__getitem__)
                i = j
            else:
                i += 1
        self.order = idx


_RANKINGS: dict[int, _Ranking] = {}


def _ranking(c: DecayedCounter) -> _Ranking:
    r = _RANKINGS.get(id(c))
    if r is None or r.top_ref is not c._top or r.size != len(c._keys) or c._top is None:
        r = _RANKINGS[id(c)] = _Ranking(c)
    return r


def _walk(c: DecayedCounter, now: float, limit: int, exclude: set[str] | None,
          allowed: Callable[[str], bool] | None) -> list[tuple[str, float]]:
    keys, values = c._keys, c._values
    factor = c._factor(now)
    out: list[tuple[str, float]] = []
    rk = _ranking(c)
    seen_all = len(rk.order) < c.top_cache_size  # the cache holds every positive key
    for i in rk.order:
        k = keys[i]
        if (exclude and k in exclude) or (allowed is not None and not allowed(k)):
            continue
        out.append((k, values[i] * factor))
        if len(out) >= limit:
            return out
    if seen_all:
        return out
    # Cache exhausted: continue with the keys outside it, in full order (rare).
    in_cache = set(rk.order)
    rest = [i for i in range(len(keys)) if values[i] > 0 and i not in in_cache]
    rest.sort(key=lambda i: (-values[i], keys[i]))
    for i in rest:
        k = keys[i]
        if (exclude and k in exclude) or (allowed is not None and not allowed(k)):
            continue
        out.append((k, values[i] * factor))
        if len(out) >= limit:
            break
    return out


def trending_candidates_fast(trending: TrendingModel, now_ms: float, limit: int, *,
                             segment: str | None = None, category: str | None = None,
                             exclude: set[str] | None = None,
                             allowed: Callable[[str], bool] | None = None) -> dict[str, float]:
    if limit <= 0:
        return {}
    if segment is not None:
        c = trending.by_segment.get(segment) if segment else None
    elif category is not None:
        c = trending.by_category.get(category)
    else:
        c = trending.items
    if c is None or not c._keys or c.top_cache_size <= 0:
        return ORIGINAL["trending_candidates"](trending, now_ms, limit, segment=segment,
                                               category=category, exclude=exclude, allowed=allowed)
    kept = [(i, float(s)) for i, s in _walk(c, now_ms, limit, exclude, allowed) if s > 0]
    if not kept:
        return {}
    top = kept[0][1]
    return {i: s / top for i, s in kept}


# ------------------------------------------------------------------------- prototype 2: content
_FEATURES: dict[int, tuple[ItemInfo, tuple[str, ...]]] = {}


def _features(info: ItemInfo) -> tuple[str, ...]:
    hit = _FEATURES.get(id(info))
    if hit is None or hit[0] is not info:
        hit = _FEATURES[id(info)] = (info, tuple(dict.fromkeys(info.features())))
    return hit[1]


def content_scores_fast(interests: Mapping[str, float], candidates: Iterable[str],
                        catalog: Mapping[str, ItemInfo]) -> tuple[dict[str, float], dict[str, str]]:
    p = R.positive_interests(interests)
    if not p:
        return {}, {}
    norm_p = math.sqrt(math.fsum(w * w for w in p.values()))
    scores: dict[str, float] = {}
    matched: dict[str, str] = {}
    get = catalog.get
    for item in candidates:
        info = get(item)
        if info is None:
            continue
        feats = _features(info)
        if not feats:
            continue
        hits = [(p[f], f) for f in feats if f in p]
        if not hits:
            continue
        dot = math.fsum(w for w, _ in hits)
        scores[item] = dot / (norm_p * math.sqrt(len(feats)))
        matched[item] = min(hits, key=lambda h: (-h[0], h[1]))[1]
    return scores, matched


def install(trending: bool, content: bool) -> None:
    R.trending_candidates = trending_candidates_fast if trending else ORIGINAL["trending_candidates"]
    R.content_scores = content_scores_fast if content else ORIGINAL["content_scores"]


# ------------------------------------------------------------------------------------- bench
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--warm", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=1_500)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "reports" / "opt_recommend.json"))
    args = ap.parse_args(argv)
    cfg = load_config(None, args.overrides, environ={})
    wl = Workload(n_users=args.users, n_items=args.items)
    t = now_ms()
    rp = Replay(cfg, wl.catalog(t - 86_400_000), wl.users(t - 86_400_000), 200.0)
    n = args.warm + args.events
    events = [orjson.dumps(e) for e in wl.events(n, t - 3_600_000, 3_600_000 / n)]
    for raw in events[:args.warm]:
        rp.event(raw)
    # Capture each measured event's recommendation input right after its own processing: the
    # replay calls recommend() itself; wrap it to record (view, now) and the model state.
    rc = cfg.recommend
    calls: list[tuple[UserView, int, Any]] = []
    real = R.recommend

    def capture(user, model, weights, cfgr, k, now, **kw):
        calls.append((user, now, weights))
        return real(user, model, weights, cfgr, k, now, **kw)

    import bench_hot_path as H
    H.recommend = capture
    timings = {"original": 0.0, "trending": 0.0, "trending+content": 0.0}
    mismatches = {"trending": 0, "trending+content": 0}
    for raw in events[args.warm:]:
        calls.clear()
        rp.event(raw)  # updates the model (trending, neighbours) exactly as the job would
        if not calls:
            continue
        user, now, weights = calls[-1]
        results = {}
        for name, (tr, co) in {"original": (False, False), "trending": (True, False),
                               "trending+content": (True, True)}.items():
            install(tr, co)
            t0 = time.process_time()
            items = recommend(user, rp.model, weights, rc, rc.default_k, now,
                              recency_half_life_ms=rc.recency_half_life_ms)
            timings[name] += time.process_time() - t0
            results[name] = [(s.item_id, s.score, tuple(s.reasons)) for s in items]
        install(False, False)
        for name in mismatches:
            if results[name] != results["original"]:
                mismatches[name] += 1
    measured = args.events
    report = {
        "command": " ".join(["python", "bench/bench_opt_recommend.py", *(argv or sys.argv[1:])]),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "events": measured,
        "recommend_cpu_us_per_call": {k: round(v * 1e6 / measured, 1) for k, v in timings.items()},
        "speedup_vs_original": {k: round(timings["original"] / v, 2) for k, v in timings.items() if v},
        "outputs_differing_from_original": mismatches,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if not any(mismatches.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
