"""Where the Python time goes per event: the operators' pure calls replayed without Flink.

Replays the synthetic workload (``bench/workload.py``) through the same calls, in the same
order, as the job's operators (``flink_jobs/operators.py``), *including what PyFlink does around
them in thread mode*: every record between Python operators is ``pickle.dumps``-ed by the
sender and ``pickle.loads``-ed by the receiver (``PICKLED_BYTE_ARRAY``,
``pyflink/fn_execution/embedded/converters.py``), every ``key_by(lambda)`` is an extra Python
map (unpickle, key, pickle), and keyed/broadcast state values are pickled bytes in the JVM.
Processing time is virtual (``--rate`` events per second), so the similarity operator's 64 shard
timers fire every ``flush_interval_ms`` as in the job, each flushing its own shard's buffer.

Each stage is timed with ``perf_counter``; ``--cprofile`` also prints the top functions.
What the replay cannot see: the JVM's own per-record work (Flink network stack, pemja calls,
Kafka clients), which ``bench/profile_job.py`` measures per thread on the real job.

    .venv/bin/python bench/bench_hot_path.py [--warm 20000 --events 10000] [--cprofile]
"""

from __future__ import annotations

import argparse
import cProfile
import collections
import io
import json
import os
import pickle
import platform
import pstats
import sys
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402

from state_schemas.config import EngineConfig, load_config  # noqa: E402
from state_schemas.internal import (  # noqa: E402
    InputRecord, ItemActivity, ModelUpdate, PairShardBatch, RecommendationTrigger)
from state_schemas.state import (  # noqa: E402
    ItemInfo, RecentItem, UserProfileState, user_profile_from_state, user_profile_to_state)
from udfs import profile as prof  # noqa: E402
from udfs.ab import ImpressionLog, assign_variant, attribute_feedback, record_impressions  # noqa: E402
from udfs.recommend import ItemModel, UserView, recommend  # noqa: E402
from udfs.similarity import (ItemRow, PairBatch, apply_pair_updates,  # noqa: E402
                             pair_batches_by_shard)
from udfs.trending import TrendingModel  # noqa: E402
from udfs.validation import KIND_EVENT, parse_input  # noqa: E402
from workload import Workload, now_ms  # noqa: E402

dumps, loads = pickle.dumps, pickle.loads


class Timer:
    def __init__(self) -> None:
        self.total: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self.on = False

    def __call__(self, stage: str, t0: float) -> float:
        t1 = time.perf_counter()
        if self.on:
            self.total[stage] += t1 - t0
            self.calls[stage] += 1
        return t1


def kafka_record(key: str, value: dict | None) -> tuple:
    return (key.encode("utf-8"), None if value is None else orjson.dumps(value))


class Replay:
    """The job's operators as plain Python, state as pickled bytes (see module docstring)."""

    def __init__(self, cfg: EngineConfig, catalog: list[dict], users: list[dict], rate: float):
        self.cfg = cfg
        self.t = Timer()
        self.ms_per_event = 1000.0 / rate
        self.proc_ms = 0.0
        self.catalog = {r["item_id"]: ItemInfo(r["item_id"], r["title"], tuple(r["categories"]),
                                               tuple(r["tags"]), r["price"], r["available"], r["ts"])
                        for r in catalog}
        self.profile_state: dict[str, bytes] = {}
        for u in users:
            p = UserProfileState(u["user_id"])
            prof.apply_attributes(p, u["attributes"], u["ts"])
            self.profile_state[p.user_id] = dumps(user_profile_to_state(p))
        self.impressions: dict[str, bytes] = {}
        rc = cfg.recommend
        self.model = ItemModel(catalog=dict(self.catalog), neighbors={},
                               trending=TrendingModel(rc.trending_half_life_ms,
                                                      top_cache_size=rc.trending_top_n))
        self.occurrence: dict[str, float] = {}
        self.rows: dict[str, bytes] = {}             # item -> pickled ItemRow state
        self.pending: dict[int, list[bytes]] = {}    # shard -> ListState (pickled batches)
        self.timers: dict[int, float] = {}           # shard -> next flush (processing ms)
        self.emitted: dict[int, dict[str, bytes]] = collections.defaultdict(dict)
        self.emit_pending: dict[int, set[str]] = collections.defaultdict(set)
        self.stats = collections.Counter()
        self.reco_digest = 0

    # ------------------------------------------------------------------ one event
    def event(self, raw: bytes) -> None:
        t, cfg = self.t, self.cfg
        t0 = time.perf_counter()
        # ParseInput
        out = parse_input(raw, KIND_EVENT, "user-events", now_ms(), cfg.validation, cfg.profile,
                          cfg.recommend.default_k, cfg.recommend.max_k)
        out["ingest_ms"] = now_ms()
        t0 = t("1 parse_input (validation)", t0)
        wire = dumps(InputRecord(KIND_EVENT, out["user_id"], out))
        # key_by(lambda r: r[1]): a Python map in front of the keyed operator
        rec = loads(wire)
        key = rec[1]
        wire = dumps(rec)
        t0 = t("2 pickle hops parse->keyBy->profile", t0)
        kind, user_id, event = loads(wire)
        # ProfileOperator._on_event
        stored = self.profile_state.get(user_id)
        p = user_profile_from_state(loads(stored)) if stored else UserProfileState(user_id)
        t0 = t("3 profile state read (unpickle + from_state)", t0)
        if not prof.remember_event_id(p, event["event_id"], event["ts"],
                                      cfg.validation.dedup_window_ms,
                                      cfg.validation.dedup_max_ids_per_user):
            self.stats["duplicates"] += 1
            return
        item = self.catalog.get(event["item_id"])
        outcome = prof.apply_event(p, event, item, cfg.profile, cfg.similarity)
        segment = prof.demographic_segment(p.attributes)
        t0 = t("4 apply_event + dedup + segment", t0)
        activity = None
        if outcome.weight > 0:
            activity = dumps(ItemActivity(event["item_id"], outcome.weight,
                                          outcome.occurrence_delta, event["ts"], segment,
                                          item.categories if item else ()))
        batches = []
        if outcome.pairs:
            batches = [dumps(b) for b in pair_batches_by_shard(outcome.pairs,
                                                                 cfg.similarity.shards)]
        t0 = t("5 side outputs: activity + pair batches (build + pickle)", t0)
        snapshot = None
        proc_now = int(self.proc_ms)
        if proc_now - p.last_snapshot_at >= cfg.profile.snapshot_min_interval_ms:
            p.last_snapshot_at = proc_now
            p.snapshot_pending = False
            snapshot = dumps((1, kafka_record(p.user_id, prof.profile_snapshot(
                p, max(p.last_seen or 0, p.attributes_ts), cfg.profile,
                assign_variant(p.user_id, cfg.recommend.experiment_salt, cfg.recommend.variants)))))
            self.stats["snapshots"] += 1
        elif not p.snapshot_pending:
            p.snapshot_pending = True  # (the timer's later snapshot is not replayed)
        t0 = t("6 profile snapshot (rate-limited) + orjson", t0)
        self.profile_state[user_id] = dumps(user_profile_to_state(p))
        t0 = t("7 profile state write (to_state + pickle)", t0)
        now = max(event["ts"], p.last_seen or 0)
        trig = RecommendationTrigger(
            user_id=p.user_id, trigger_event_id=event["event_id"], request_id=None,
            event_ts=event["ts"], k=cfg.recommend.default_k, event_item_id=event["item_id"],
            event_type=event["event_type"],
            recent_items=[(r.item_id, r.event_type, r.ts, r.weight) for r in p.recent_items],
            interests=prof.interests_at(p.interests, p.interests_ts, now,
                                        cfg.profile.interest_half_life_ms),
            exclude=list(p.consumed), not_interested=list(p.not_interested), segment=segment,
            variant=assign_variant(p.user_id, cfg.recommend.experiment_salt, cfg.recommend.variants),
            attributes=dict(p.attributes), ingest_ms=event.get("ingest_ms", 0))
        wire = dumps((0, trig))
        t0 = t("8 trigger build + pickle", t0)
        # SplitProfileOutput, then key_by(lambda trig: trig[0]) (a Python map), then recommend
        _, trig_t = loads(wire)
        wire = dumps(trig_t)
        rec = loads(wire)
        wire = dumps(rec)
        if snapshot is not None:
            loads(snapshot)
        t0 = t("9 pickle hops split->keyBy->recommend", t0)
        # Broadcasts of the activity: similarity (occurrence) and recommend (trending, via map)
        if activity is not None:
            a = ItemActivity._make(loads(activity))
            if a.occurrence_delta > 0:
                sim = cfg.similarity
                self.occurrence[a.item_id] = self.occurrence.get(a.item_id, 0.0) + \
                    a.occurrence_delta * 2.0 ** ((a.ts - sim.decay_landmark_ms) / sim.half_life_ms)
            mu = dumps(ModelUpdate("activity", loads(activity)))
            a = ItemActivity._make(ModelUpdate._make(loads(mu)).payload)
            self.model.trending.record(a.item_id, a.categories, a.segment, a.weight, a.ts)
        t0 = t("10 activity broadcast: occurrence + trending.record", t0)
        # Pair batches: key_by(shard) map, then SimilarityOperator.process_element
        for b in batches:
            rec = loads(dumps(loads(b)))
            value = PairShardBatch._make(rec)
            self.pending.setdefault(value.shard, []).append(dumps(value))  # ListState.add
            interval = cfg.similarity.flush_interval_ms
            self.timers[value.shard] = (self.proc_ms // interval + 1) * interval
            self.stats["pair_updates"] += len(value.rows)
        t0 = t("11 pair batches: keyBy + buffer in ListState", t0)
        # RecommendOperator.process_element
        tr = RecommendationTrigger._make(loads(wire))
        rc = cfg.recommend
        stored = self.impressions.get(tr.user_id)
        log = ImpressionLog.from_state(loads(stored)) if stored is not None else ImpressionLog()
        attribute_feedback(log, tr.event_item_id, tr.event_type, tr.event_ts, rc.feedback_window_ms)
        view = UserView(user_id=tr.user_id, recent_items=[RecentItem(*r) for r in tr.recent_items],
                        interests=tr.interests, exclude=set(tr.exclude),
                        not_interested=set(tr.not_interested), segment=tr.segment,
                        variant=tr.variant, attributes=tr.attributes)
        t0 = t("12 recommend operator: trigger unpickle + impressions read + view", t0)
        weights = rc.variants.get(tr.variant) or next(iter(rc.variants.values()))
        items = recommend(view, self.model, weights, rc, tr.k, max(tr.event_ts, 0),
                          recency_half_life_ms=rc.recency_half_life_ms)
        t0 = t("13 recommend() (scoring)", t0)
        record_impressions(log, [s.item_id for s in items], tr.variant, tr.event_ts,
                           rc.impressions_max, window_ms=rc.feedback_window_ms)
        self.impressions[tr.user_id] = dumps(log.to_state())
        t0 = t("14 impressions write (to_state + pickle)", t0)
        msg = kafka_record(tr.user_id, {
            "schema_version": 1, "user_id": tr.user_id, "request_id": tr.request_id,
            "trigger_event_id": tr.trigger_event_id, "generated_at": now_ms(),
            "event_ts": tr.event_ts, "variant": tr.variant,
            "items": [{"item_id": s.item_id, "score": round(float(s.score), 6),
                       "reasons": list(s.reasons)} for s in items]})
        self.stats["reco_bytes"] += len(msg[1])
        t("15 recommendation JSON (orjson)", t0)
        # Untimed: a digest of what was recommended (items, scores, reasons; no wall-clock
        # fields). Equal digests: an optimisation left every recommendation unchanged.
        self.reco_digest = zlib.crc32(orjson.dumps([[s.item_id, round(float(s.score), 6),
                                                     list(s.reasons)] for s in items]),
                                      self.reco_digest)
        self.stats["events"] += 1
        self.proc_ms += self.ms_per_event
        self.fire_timers()

    # ------------------------------------------------------------------ similarity timers
    def fire_timers(self) -> None:
        due = [s for s, at in self.timers.items() if at <= self.proc_ms]
        for shard in due:
            at = self.timers.pop(shard)
            self.flush(shard, at)

    def flush(self, shard: int, timestamp: float) -> None:
        t, sim = self.t, self.cfg.similarity
        t0 = time.perf_counter()
        batches = [loads(b) for b in self.pending.pop(shard, [])]
        if not batches:
            return
        batch = PairBatch.from_shard_batches(batches)
        current = {}
        for item_id in set(batch.rows.tolist()):
            stored = self.rows.get(item_id)
            if stored is not None:
                current[item_id] = ItemRow.from_state(loads(stored))
        t0 = t("16 similarity flush: read pending + rows (unpickle)", t0)
        updated = apply_pair_updates(current, batch, self.occurrence, sim, sim.decay_landmark_ms,
                                     delta=sim.hoeffding_delta, min_obs=sim.hoeffding_min_obs)
        t0 = t("17 similarity flush: apply_pair_updates (kernel)", t0)
        due = []
        for item_id, row in updated.items():
            old = current.get(item_id)
            self.rows[item_id] = dumps(row.to_state())
            if old is None or list(old.neighbors) != list(row.neighbors):
                due.append(item_id)
        t0 = t("18 similarity flush: write rows (to_state + pickle)", t0)
        emitted, pending = self.emitted[shard], self.emit_pending[shard]
        pending.update(due)
        for item_id in list(pending):  # the operator looks at its pending map only
            last, _ = loads(emitted[item_id]) if item_id in emitted else (0, False)
            if timestamp - last >= sim.emit_min_interval_ms:
                neighbors = ItemRow.neighbors_of_state(loads(self.rows[item_id]))
                emitted[item_id] = dumps((timestamp, False))
                pending.discard(item_id)
                nb = [(j, float(s)) for j, s in neighbors]
                self.model.neighbors[item_id] = nb  # (+ pickle hops, broadcast)
                self.stats["neighbor_rows_emitted"] += 1
            else:
                self.timers.setdefault(shard, last + sim.emit_min_interval_ms)
        t("19 similarity flush: emit (pending items of the shard)", t0)
        self.stats["flushes"] += 1
        self.stats["flushed_pairs"] += len(batch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--warm", type=int, default=20_000, help="events replayed before measuring")
    ap.add_argument("--events", type=int, default=10_000, help="events measured")
    ap.add_argument("--rate", type=float, default=200.0,
                    help="virtual events/s (sets how many events each similarity flush sees)")
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "reports" / "hot_path.json"))
    args = ap.parse_args(argv)

    cfg = load_config(None, args.overrides, environ={})
    wl = Workload(n_users=args.users, n_items=args.items, zipf_s=args.zipf)
    t = now_ms()
    rp = Replay(cfg, wl.catalog(t - 86_400_000), wl.users(t - 86_400_000), args.rate)
    n = args.warm + args.events
    events = [orjson.dumps(e) for e in wl.events(n, t - 3_600_000, 3_600_000 / n)]
    for raw in events[:args.warm]:
        rp.event(raw)
    rp.t.on = True
    stats0 = collections.Counter(rp.stats)
    profiler = cProfile.Profile() if args.cprofile else None
    load0 = os.getloadavg()[0]
    c0, w0 = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    for raw in events[args.warm:]:
        rp.event(raw)
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    measured = args.events
    stats = {k: v - stats0.get(k, 0) for k, v in rp.stats.items()}
    total = sum(rp.t.total.values())
    stages = [{"stage": k, "us_per_event": round(v * 1e6 / measured, 1),
               "share": round(v / total, 4), "calls": rp.t.calls[k]}
              for k, v in sorted(rp.t.total.items())]
    report = {
        "command": " ".join(["python", "bench/bench_hot_path.py", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_1m_before": round(load0, 2),
                    "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "workload": {"users": args.users, "items": args.items, "zipf_s": args.zipf,
                     "warm_events": args.warm, "measured_events": measured,
                     "virtual_rate": args.rate},
        "python_us_per_event_total": round(total * 1e6 / measured, 1),
        "process_cpu_us_per_event": round(cpu * 1e6 / measured, 1),
        "wall_us_per_event": round(wall * 1e6 / measured, 1),
        "single_core_python_ceiling_events_per_s": round(measured / cpu, 1),
        "stages": stages,
        "stats_per_event": {k: round(v / measured, 3) for k, v in stats.items()},
        "flush_mean_pairs": round(stats.get("flushed_pairs", 0) / max(1, stats.get("flushes", 0)), 1),
        "recommendations_crc32": rp.reco_digest,
    }
    if profiler:
        s = io.StringIO()
        pstats.Stats(profiler, stream=s).sort_stats("tottime").print_stats(35)
        report["cprofile_top_tottime"] = s.getvalue().splitlines()[:70]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for row in stages:
        print(f"{row['us_per_event']:9.1f} us  {row['share']:6.1%}  {row['stage']}")
    print(json.dumps({k: v for k, v in report.items() if k not in ("stages", "cprofile_top_tottime")},
                     indent=1))
    if profiler:
        print("\n".join(report["cprofile_top_tottime"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
