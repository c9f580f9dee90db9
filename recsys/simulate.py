"""The engine in one process, without Flink or Kafka: for tuning and for what-if variants.

:class:`EngineSimulator` applies the *same pure functions in the same order* as the job's
operators (``flink_jobs/operators.py``), on the same records:

=====================================  ==================================================
operator (flink_jobs/operators.py)     here
=====================================  ==================================================
``ParseInput``                         ``udfs.validation.parse_input`` (same config)
``ProfileOperator._on_event``          ``remember_event_id`` -> ``apply_event`` ->
                                       activity (if weight > 0) -> pair updates ->
                                       trigger (``_trigger``)
``SimilarityOperator`` broadcast side  occurrence N(i) += delta * 2^((ts - L) / half_life)
``SimilarityOperator.on_timer``        buffered pairs flushed on processing-time timers
                                       aligned to ``flush_interval_ms``, one
                                       ``apply_pair_updates`` call; changed rows are emitted
                                       at most once per ``emit_min_interval_ms`` per item
``RecommendOperator`` broadcast side   ``TrendingModel.record``; neighbour rows; catalogue
``RecommendOperator.process_element``  ``udfs.recommend.recommend`` on the trigger's view
=====================================  ==================================================

Processing time is virtual: every input record advances a clock by ``ms_per_event`` (the
job's measured throughput, see ``recsys/evaluation.py``), and the timers of the similarity
operator fire on that clock. That reproduces the two places where the job's output depends on
processing time: how many events' pair updates are batched into one kernel call (rows are
re-scored only when they receive an update), and how stale the neighbour rows seen by the
recommender are (``emit_min_interval_ms``). The remaining differences from the job: all
shards flush at the same instant (the job's shard timers are aligned to the same boundaries
too, and rows are independent, so this is exact), broadcast records arrive with zero delay,
and the activity of an event always reaches the recommender before the event's own trigger
(in the job either may come first).

``freeze_item_model()`` stops every update of the item model (occurrence, co-occurrence,
neighbours, trending) while profiles keep updating: "a model trained once, served with live
user history" — protocol B's comparison point.

Command line: ``python -m recsys.simulate [--config FILE] [--set k=v ...] [--protocol A|B]``
prints the metrics of one run; ``--sweep 'key=v1,v2,...'`` (repeatable) runs the grid.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from state_schemas.config import EngineConfig, load_config
from state_schemas.state import ItemInfo, RecentItem, UserProfileState
from udfs import profile as prof
from udfs.ab import assign_variant
from udfs.recommend import ItemModel, ScoredItem, UserView, recommend
from udfs.similarity import ItemRow, PairBatch, apply_pair_updates, decay_factor
from udfs.trending import TrendingModel
from udfs.validation import (
    KIND_ATTRIBUTES, KIND_EVENT, KIND_ITEM, KIND_REQUEST, DeadLetter, parse_input)

Record = dict[str, Any]
PROC_EPOCH_MS = 1_700_000_000_000  # where the virtual processing-time clock starts


def _bytes(record: Record) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass
class SimStats:
    events: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    flushes: int = 0
    pair_updates: int = 0
    neighbor_emissions: int = 0
    recommendations: int = 0
    dlq_reasons: dict[str, int] = field(default_factory=dict)


class EngineSimulator:
    """The job's state machines in one process (see the module docstring)."""

    def __init__(self, cfg: EngineConfig, *, ms_per_event: float = 1.0, validate: bool = True,
                 wall_now_ms: int | None = None):
        self.cfg = cfg
        self.ms_per_event = float(ms_per_event)
        self.validate = validate
        self.wall_now_ms = wall_now_ms if wall_now_ms is not None else int(time.time() * 1000)
        # Wall-clock-like start, as in the job: an item never emitted is emitted at once.
        self.proc_ms = float(PROC_EPOCH_MS)
        self.catalog: dict[str, ItemInfo] = {}
        self.profiles: dict[str, UserProfileState] = {}
        # similarity operator
        self.occurrence: dict[str, float] = {}
        self.rows: dict[str, ItemRow] = {}
        self._pending: tuple[list[str], list[str], list[float], list[int]] = ([], [], [], [])
        self._flush_at: float | None = None
        self._emitted: dict[str, tuple[float, bool]] = {}  # item -> (last emit, pending)
        self._emit_timers: list[tuple[float, str]] = []
        # recommendation operator
        self.model = ItemModel(catalog=self.catalog, neighbors={},
                               trending=TrendingModel(cfg.recommend.trending_half_life_ms,
                                                      top_cache_size=cfg.recommend.trending_top_n))
        self.frozen = False
        self.stats = SimStats()
        self._variants: dict[str, str] = {}

    # ------------------------------------------------------------------ helpers
    def variant(self, user_id: str) -> str:
        v = self._variants.get(user_id)
        if v is None:
            v = self._variants[user_id] = assign_variant(
                user_id, self.cfg.recommend.experiment_salt, self.cfg.recommend.variants)
        return v

    def _parse(self, record: Record, kind: str, topic: str) -> Record | None:
        if not self.validate:
            return dict(record)
        out = parse_input(_bytes(record), kind, topic, self.wall_now_ms, self.cfg.validation,
                          self.cfg.profile, self.cfg.recommend.default_k, self.cfg.recommend.max_k)
        if isinstance(out, DeadLetter):
            self.stats.dead_letters += 1
            self.stats.dlq_reasons[out.reason] = self.stats.dlq_reasons.get(out.reason, 0) + 1
            return None
        return out

    def _profile(self, user_id: str) -> UserProfileState:
        p = self.profiles.get(user_id)
        if p is None:
            p = self.profiles[user_id] = UserProfileState(user_id)
        return p

    # ------------------------------------------------------------------ processing time
    def _advance(self) -> None:
        """One input record's worth of processing time; fire the timers that came due."""
        self.proc_ms += self.ms_per_event
        self._run_timers(self.proc_ms)

    def _run_timers(self, until: float) -> None:
        while True:
            nxt = self._flush_at
            emit = self._emit_timers[0][0] if self._emit_timers else None
            if emit is not None and (nxt is None or emit < nxt):
                nxt = emit
            if nxt is None or nxt > until:
                return
            while self._emit_timers and self._emit_timers[0][0] <= nxt:
                heapq.heappop(self._emit_timers)
            if self._flush_at is not None and self._flush_at <= nxt:
                self._flush_at = None
                self._on_timer(nxt, flush=True)
            else:
                self._on_timer(nxt, flush=False)

    def drain(self) -> None:
        """Run every pending timer (flush buffered pairs, emit every pending row): the state a
        request sees once the job has been idle for a few seconds."""
        horizon = self.proc_ms + self.cfg.similarity.flush_interval_ms \
            + self.cfg.similarity.emit_min_interval_ms + 1
        self._run_timers(horizon)
        self.proc_ms = max(self.proc_ms, horizon)

    # ------------------------------------------------------------------ similarity operator
    def _on_activity(self, item_id: str, occurrence_delta: float, ts: int) -> None:
        if occurrence_delta <= 0:
            return
        sim = self.cfg.similarity
        f = float(decay_factor(np.array([ts]), sim.decay_landmark_ms, sim.half_life_ms)[0])
        self.occurrence[item_id] = self.occurrence.get(item_id, 0.0) + occurrence_delta * f

    def _on_pairs(self, pairs: Sequence[prof.PairUpdate], ts: int) -> None:
        rows, cols, weights, tss = self._pending
        for pu in pairs:
            rows.append(pu.row)
            cols.append(pu.col)
            weights.append(pu.weight)
            tss.append(ts)  # PairShardBatch carries the event's ts
        self.stats.pair_updates += len(pairs)
        interval = self.cfg.similarity.flush_interval_ms
        at = (self.proc_ms // interval + 1) * interval
        if self._flush_at is None or at < self._flush_at:
            self._flush_at = at

    def _on_timer(self, timestamp: float, flush: bool) -> None:
        sim = self.cfg.similarity
        due: list[str] = []
        rows, cols, weights, tss = self._pending
        if flush and rows:
            self._pending = ([], [], [], [])
            self.stats.flushes += 1
            batch = PairBatch.from_lists(rows, cols, weights, tss)
            current = {i: self.rows[i] for i in set(rows) if i in self.rows}
            updated = apply_pair_updates(current, batch, self.occurrence, sim,
                                         sim.decay_landmark_ms, delta=sim.hoeffding_delta,
                                         min_obs=sim.hoeffding_min_obs)
            for item_id, row in updated.items():
                old = current.get(item_id)
                self.rows[item_id] = row.copy()  # kernel rows are slices of the batch arrays
                if old is None or list(old.neighbors) != list(row.neighbors):
                    due.append(item_id)
        self._emit_due(due, timestamp)

    def _emit_due(self, changed: list[str], proc_now: float) -> None:
        interval = self.cfg.similarity.emit_min_interval_ms
        for item_id in changed:
            last, _ = self._emitted.get(item_id, (0.0, False))
            self._emitted[item_id] = (last, True)
        for item_id, (last, pending) in list(self._emitted.items()):
            if not pending:
                continue
            if proc_now - last >= interval:
                self._emitted[item_id] = (proc_now, False)
                self.stats.neighbor_emissions += 1
                self.model.neighbors[item_id] = [(j, float(s))
                                                 for j, s in self.rows[item_id].neighbors]
            else:
                heapq.heappush(self._emit_timers, (last + interval, item_id))

    # ------------------------------------------------------------------ inputs
    def add_items(self, records: Iterable[Record]) -> None:
        for rec in records:
            out = self._parse(rec, KIND_ITEM, self.cfg.topics.item_catalog)
            if out is None:
                continue
            info = ItemInfo(out["item_id"], out["title"], tuple(out["categories"]),
                            tuple(out["tags"]), out["price"], out["available"], out["ts"])
            current = self.catalog.get(info.item_id)
            if current is None or current.updated_at <= info.updated_at:
                self.catalog[info.item_id] = info

    def add_attributes(self, records: Iterable[Record]) -> None:
        for rec in records:
            out = self._parse(rec, KIND_ATTRIBUTES, self.cfg.topics.user_attributes)
            if out is not None:
                prof.apply_attributes(self._profile(out["user_id"]), out["attributes"], out["ts"])

    def freeze_item_model(self) -> None:
        """From now on: no occurrence/co-occurrence/neighbour/trending updates."""
        self.drain()
        self._pending = ([], [], [], [])
        self.frozen = True

    def process_event(self, record: Record, *, recommend_after: bool = True
                      ) -> list[ScoredItem] | None:
        """One ``user-events`` record; returns the recommendation it triggers (None when the
        record is rejected, a duplicate, or ``recommend_after`` is False)."""
        self._advance()
        event = self._parse(record, KIND_EVENT, self.cfg.topics.user_events)
        if event is None:
            return None
        cfg = self.cfg
        p = self._profile(event["user_id"])
        if not prof.remember_event_id(p, event["event_id"], event["ts"],
                                      cfg.validation.dedup_window_ms,
                                      cfg.validation.dedup_max_ids_per_user):
            self.stats.duplicates += 1
            return None
        self.stats.events += 1
        item = self.catalog.get(event["item_id"])
        outcome = prof.apply_event(p, event, item, cfg.profile, cfg.similarity)
        segment = prof.demographic_segment(p.attributes)
        if not self.frozen:
            if outcome.weight > 0:
                self._on_activity(event["item_id"], outcome.occurrence_delta, event["ts"])
                self.model.trending.record(event["item_id"], item.categories if item else (),
                                           segment, outcome.weight, event["ts"])
            if outcome.pairs:
                self._on_pairs(outcome.pairs, event["ts"])
        if not recommend_after:
            return None
        return self._recommend(p, event["ts"], cfg.recommend.default_k, segment)

    def request(self, record: Record) -> list[ScoredItem] | None:
        """One ``recommendation-requests`` record (the user's profile as it is now)."""
        self._advance()
        req = self._parse(record, KIND_REQUEST, self.cfg.topics.recommendation_requests)
        if req is None:
            return None
        p = self.profiles.get(req["user_id"]) or UserProfileState(req["user_id"])
        return self._recommend(p, req["ts"], req["k"], None)

    def _recommend(self, p: UserProfileState, event_ts: int, k: int,
                   segment: str | None) -> list[ScoredItem]:
        """``ProfileOperator._trigger`` then ``RecommendOperator.process_element``."""
        cfg = self.cfg
        now = max(event_ts, p.last_seen or 0)
        interests = prof.interests_at(p.interests, p.interests_ts, now,
                                      cfg.profile.interest_half_life_ms)
        variant = self.variant(p.user_id)
        view = UserView(
            user_id=p.user_id,
            recent_items=[RecentItem(r.item_id, r.event_type, r.ts, r.weight)
                          for r in p.recent_items],
            interests=interests,
            exclude=set(p.consumed),
            not_interested=set(p.not_interested),
            segment=segment if segment is not None else prof.demographic_segment(p.attributes),
            variant=variant,
            attributes=dict(p.attributes),
        )
        weights = cfg.recommend.variants.get(variant) or next(iter(cfg.recommend.variants.values()))
        self.stats.recommendations += 1
        return recommend(view, self.model, weights, cfg.recommend, k, max(event_ts, 0),
                         recency_half_life_ms=cfg.recommend.recency_half_life_ms)


# ---------------------------------------------------------------------------- protocols

@dataclass
class ProtocolAResult:
    metrics: dict[str, float]
    per_variant: dict[str, dict[str, float]]
    recommendations: dict[str, list[str]]
    seconds: float
    stats: SimStats


def request_records(train_events: Sequence[Record], users: Iterable[str], k: int = 10,
                    prefix: str = "eval-a") -> list[Record]:
    """One request per user, stamped with the user's last training event (a user asking right
    after their last activity; users without training events get the latest time seen)."""
    last: dict[str, int] = {}
    for e in train_events:
        last[e["user_id"]] = max(last.get(e["user_id"], 0), e["ts"])
    fallback = max(last.values()) if last else 0
    return [{"request_id": f"{prefix}-{u}", "user_id": u, "ts": last.get(u, fallback), "k": k}
            for u in users]


def run_protocol_a(cfg: EngineConfig, catalog: Sequence[Record], attributes: Sequence[Record],
                   train_events: Sequence[Record], test: Mapping[str, set[str]], *, k: int = 10,
                   ms_per_event: float = 1.0, validate: bool = True,
                   progress: Callable[[int], None] | None = None) -> ProtocolAResult:
    """Replay ``train_events`` (event-time order), then one request per test user."""
    from udfs.metrics import ranking_metrics

    t0 = time.perf_counter()
    sim = EngineSimulator(cfg, ms_per_event=ms_per_event, validate=validate)
    sim.add_items(catalog)
    sim.add_attributes(attributes)
    for n, e in enumerate(train_events):
        sim.process_event(e, recommend_after=False)
        if progress is not None and n % 5000 == 0:
            progress(n)
    sim.drain()
    recs: dict[str, list[str]] = {}
    for req in request_records(train_events, sorted(test), k):
        out = sim.request(req)
        recs[req["user_id"]] = [s.item_id for s in (out or [])]
    result = ranking_metrics(recs, test, k)
    per_variant: dict[str, dict[str, float]] = {}
    for v in sorted(set(sim.variant(u) for u in recs)):
        users = [u for u in recs if sim.variant(u) == v]
        per_variant[v] = ranking_metrics({u: recs[u] for u in users},
                                         {u: test[u] for u in users}, k)
    return ProtocolAResult(result, per_variant, recs, time.perf_counter() - t0, sim.stats)


@dataclass
class PrequentialCase:
    ts: int
    user_id: str
    variant: str
    rank: int          # 1-based rank of the event's item in the previous top-k; 0 = miss


@dataclass
class ProtocolBResult:
    cases: list[PrequentialCase]
    seconds: float
    stats: SimStats


def run_protocol_b(cfg: EngineConfig, catalog: Sequence[Record], attributes: Sequence[Record],
                   events: Sequence[Record], *, k: int = 10, ms_per_event: float = 1.0,
                   freeze_after_ms: int | None = None, users: set[str] | None = None,
                   validate: bool = True,
                   progress: Callable[[int], None] | None = None) -> ProtocolBResult:
    """Prequential: before each event, is its item in the user's latest top-k (the list the
    user's previous event triggered)? ``freeze_after_ms``: freeze the item model at the first
    event at or after this time. ``users``: evaluate only these users (all events are still
    applied; lists are computed only for them)."""
    from udfs.metrics import rank_of

    t0 = time.perf_counter()
    if freeze_after_ms is None and cfg.similarity.freeze_item_model_at_ms > 0:
        freeze_after_ms = cfg.similarity.freeze_item_model_at_ms  # as the job does
    sim = EngineSimulator(cfg, ms_per_event=ms_per_event, validate=validate)
    sim.add_items(catalog)
    sim.add_attributes(attributes)
    latest: dict[str, list[str]] = {}
    cases: list[PrequentialCase] = []
    for n, e in enumerate(events):
        if freeze_after_ms is not None and not sim.frozen and e["ts"] >= freeze_after_ms:
            sim.freeze_item_model()
        u = e["user_id"]
        wanted = users is None or u in users
        if wanted and u in latest:
            cases.append(PrequentialCase(e["ts"], u, sim.variant(u),
                                         rank_of(e["item_id"], latest[u], k)))
        out = sim.process_event(e, recommend_after=wanted)
        if out is not None:
            latest[u] = [s.item_id for s in out]
        if progress is not None and n % 5000 == 0:
            progress(n)
    return ProtocolBResult(cases, time.perf_counter() - t0, sim.stats)


def popularity_baseline(train_events: Sequence[Record], test: Mapping[str, set[str]],
                        k: int = 10) -> dict[str, list[str]]:
    """Offline: the k most-rated training items the user has not rated (ties by item id)."""
    counts: dict[str, int] = {}
    seen: dict[str, set[str]] = {}
    for e in train_events:
        counts[e["item_id"]] = counts.get(e["item_id"], 0) + 1
        seen.setdefault(e["user_id"], set()).add(e["item_id"])
    ranked = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    out: dict[str, list[str]] = {}
    for u in test:
        s = seen.get(u, set())
        out[u] = list(itertools.islice((i for i in ranked if i not in s), k))
    return out


# ---------------------------------------------------------------------------- CLI

def _ml100k_inputs(users_limit: int | None = None, seed: int = 42):
    from recsys import movielens as ml_mod

    ml = ml_mod.load()
    users = None
    if users_limit:
        users = sorted(ml.users, key=int)[:users_limit]
    train = ml_mod.select(ml, "train", seed=seed, users=users)
    test_r = ml_mod.select(ml, "test", seed=seed, users=users)
    test: dict[str, set[str]] = {}
    for r in test_r:
        test.setdefault(ml_mod.user_id(r.user), set()).add(ml_mod.item_id(r.item))
    return ml, ml_mod, train, test


def _grid(sweeps: list[str]) -> list[list[str]]:
    axes = []
    for s in sweeps:
        key, _, values = s.partition("=")
        axes.append([f"{key}={v}" for v in _split_values(values)])
    return [list(c) for c in itertools.product(*axes)] if axes else [[]]


def _split_values(values: str) -> list[str]:
    """Split on commas outside brackets/braces/quotes (values are TOML literals)."""
    out, depth, cur, quote = [], 0, "", None
    for ch in values:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    out.append(cur)
    return [v.strip() for v in out if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys.simulate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="deploy/ml-100k.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--sweep", action="append", default=[],
                        help="key=v1,v2,... (repeatable: the grid of all combinations)")
    parser.add_argument("--protocol", choices=["A", "B"], default="A")
    parser.add_argument("--users", type=int, default=0, help="only the first N users (0: all)")
    parser.add_argument("--ms-per-event", type=float, default=1.0)
    parser.add_argument("--b-user-fraction", type=float, default=0.25,
                        help="protocol B: share of users whose lists are computed")
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument("--split-seed", type=int, default=42,
                        help="seed of the per-user split (42: the evaluation's)")
    args = parser.parse_args(argv)

    ml, ml_mod, train, test = _ml100k_inputs(args.users or None, args.split_seed)
    catalog = ml_mod.catalog_records(ml)
    attributes = ml_mod.attribute_records(ml)
    if args.users:
        keep = {r["user_id"] for r in attributes[:args.users]}
        attributes = [a for a in attributes if a["user_id"] in keep]
    for combo in _grid(args.sweep):
        cfg = load_config(args.config, list(args.overrides) + combo, environ={})
        if args.protocol == "A":
            res = run_protocol_a(cfg, catalog, attributes, ml_mod.events(train), test,
                                 ms_per_event=args.ms_per_event, validate=not args.no_validate)
            m = res.metrics
            print(json.dumps({"set": combo, "ndcg@10": round(m["ndcg@10"], 4),
                              "precision@10": round(m["precision@10"], 4),
                              "recall@10": round(m["recall@10"], 4), "map": round(m["map"], 4),
                              "seconds": round(res.seconds, 1)}), flush=True)
        else:
            from udfs.metrics import hit_and_rr

            everyone = ml_mod.events(ml_mod.select(ml, "all", users=None if not args.users else
                                                   sorted(ml.users, key=int)[:args.users]))
            users = sorted({e["user_id"] for e in everyone})
            rng = np.random.RandomState(7)
            chosen = set(rng.choice(users, max(1, int(len(users) * args.b_user_fraction)),
                                    replace=False).tolist())
            res = run_protocol_b(cfg, catalog, attributes, everyone, users=chosen,
                                 ms_per_event=args.ms_per_event, validate=not args.no_validate)
            hr, mrr = hit_and_rr(np.array([c.rank for c in res.cases]))
            print(json.dumps({"set": combo, "hit_rate@10": round(hr, 4), "mrr@10": round(mrr, 4),
                              "cases": len(res.cases), "seconds": round(res.seconds, 1)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
