"""The engine in one process, without Flink or Kafka: for evaluation, tuning and what-ifs.

:class:`EngineSimulator` is a loop over the job's own engine classes — the user operator's
:class:`udfs.user_side.UserSide` and the item operator's :class:`udfs.item_side.ItemSide` — with
in-memory keyed state and a virtual clock. Nothing of the per-record logic is written here:

=====================================  ==================================================
the job                                here
=====================================  ==================================================
Kafka sources, Java keying             records handed in one at a time, keyed by user
user operator micro-batch              ``UserSide.process`` on each record (a batch of one)
item operator micro-batch              ``ItemSide.process`` on the pair updates and item
                                       activity gathered since the first one arrived, once
                                       ``similarity.flush_interval_ms`` of virtual time
                                       has passed (as the Java operator's batch delay)
keyed processing-time timers           a heap of (time, operator, key), fired on the clock
state TTL of similarity rows           rows not written for ``similarity.row_ttl_ms`` of
                                       virtual time dropped at each virtual checkpoint
model updates via their Kafka topic    delivered to the user side as soon as they are made
=====================================  ==================================================

Processing time is virtual: every input record advances the clock by ``ms_per_event`` (the
job's measured throughput, see ``recsys/evaluation/protocols.py``). That reproduces the places where the
job's output depends on processing time: how many events' pair updates share one flush (rows are
re-scored only when they receive updates), how stale the neighbour rows a recommendation sees
are (``emit_min_interval_ms``), and when trending lists are rebuilt (``trending_refresh_ms``).
What differs: the job's model updates take a Kafka round trip (milliseconds), and its user
operator batches several records per call (the same results, processed in the same order).

``freeze_item_model()`` stops every update of the item model (co-occurrence, neighbours,
popularity) while profiles keep updating: protocol B's "trained once" comparison point (the
job does the same from ``similarity.freeze_item_model_at_ms``).

Command line: ``python -m recsys.evaluation.simulate [--config FILE] [--set k=v ...] [--protocol A|B]``
prints the metrics of one run; ``--sweep 'key=v1,v2,...'`` (repeatable) runs the grid.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import json
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import orjson

from recsys.evaluation import prequential
from state_schemas import records as rec
from state_schemas.config import EngineConfig, load_config
from state_schemas.profile_state import UserProfile, decode_forgotten, decode_profile
from udfs.item_side import ItemSide
from udfs.memory import freeze_survivors, tune_collector
from udfs.user_side import BatchResult, UserSide
from udfs.user_side import Record as BatchRecord

Record = dict[str, Any]
PROC_EPOCH_MS = 1_700_000_000_000  # where the virtual processing-time clock starts
_USER, _ITEM = 0, 1


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


@dataclass
class Recommendation:
    """One recommendation the simulated job emitted."""
    user_id: str
    variant: str
    items: list[str]
    reasons: list[list[str]]
    scores: list[float]
    trigger_event_id: str | None = None
    request_id: str | None = None


def keyed_batch(items: Iterable[tuple[str | None, int, bytes, int]]
                 ) -> tuple[list[str], list[BatchRecord]]:
    """(key or None, kind, payload, ts) -> the batch's distinct keys, in first-seen order, and
    its records indexing them (-1: no key), as the Java operator hands a batch to Python."""
    keys: list[str] = []
    index: dict[str, int] = {}
    records = []
    for key, kind, payload, ts in items:
        k = -1
        if key is not None:
            k = index.get(key)
            if k is None:
                k = index[key] = len(keys)
                keys.append(key)
        records.append(BatchRecord(kind, k, ts, 0, payload))
    return keys, records


class EngineSimulator:
    """The job's two operators in one process (see the module docstring)."""

    def __init__(self, cfg: EngineConfig, *, ms_per_event: float = 1.0,
                 wall_now_ms: int | None = None, recommend_on_events: bool = True):
        self.cfg = cfg
        self.ms_per_event = float(ms_per_event)
        self.proc_ms = float(PROC_EPOCH_MS)
        self._wall0 = wall_now_ms if wall_now_ms is not None else int(time.time() * 1000)
        self.user = UserSide(cfg, clock=lambda: (self._wall0 + self.proc_ms - PROC_EPOCH_MS) / 1e3)
        self.item = ItemSide(cfg)
        self.recommend_on_events = recommend_on_events
        self.user_state: dict[str, list[bytes | None]] = {}
        self.item_state: dict[str, list[bytes | None]] = {}
        # Flink's state TTL on similarity rows (similarity.row_ttl_ms): keys by last write,
        # oldest first, expired at each virtual checkpoint.
        self._item_written: OrderedDict[str, float] = OrderedDict()
        self._row_ttl_ms = cfg.similarity.row_ttl_ms
        self._inbox: list[tuple[str | None, int, bytes]] = []  # (key or None, kind, payload)
        self._flush_at: float | None = None
        self._timers: list[tuple[float, int, int, str]] = []
        self._timer_seq = itertools.count()
        self.frozen = False
        self.stats = SimStats()
        self.recommendations: list[Recommendation] = []
        # as the job's operators do at each checkpoint (udfs/memory.py)
        tune_collector()
        self._next_freeze = self.proc_ms + cfg.job.checkpoint_interval_ms

    # ------------------------------------------------------------------ clock and timers
    def _advance(self) -> None:
        self.proc_ms += self.ms_per_event
        self._run_due(self.proc_ms)
        self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        """Every ``job.checkpoint_interval_ms`` of virtual time, what a checkpoint does to the
        operators' state (cached users and dirty similarity rows written to keyed state, the
        collector's survivors frozen), so that the engine's CPU measured here includes it. The
        pending item batch is not flushed early (the job's is): that keeps the outputs
        independent of the checkpoint interval."""
        if self.proc_ms >= self._next_freeze:
            proc_now = int(self.proc_ms)
            self._apply_item_state(self.item.process([], [], [], proc_now, checkpoint=True))
            self._user_batch([], proc_now, checkpoint=True)
            self._expire_item_state()
            freeze_survivors()
            self._next_freeze = self.proc_ms + max(1, self.cfg.job.checkpoint_interval_ms)

    def _apply_item_state(self, result: BatchResult, keys: Sequence[str] = ()) -> None:
        for key, s, value in result.state_updates:
            name = keys[key] if isinstance(key, int) else key
            self.item_state.setdefault(name, [None])[s] = value
            if self._row_ttl_ms > 0:
                self._item_written[name] = self.proc_ms
                self._item_written.move_to_end(name)

    def _expire_item_state(self) -> None:
        ttl = self._row_ttl_ms
        if ttl <= 0:
            return
        written = self._item_written
        while written:
            name, at = next(iter(written.items()))
            if self.proc_ms - at <= ttl:
                break
            del written[name]
            self.item_state.pop(name, None)

    def _run_due(self, until: float) -> None:
        while True:
            nxt = self._timers[0][0] if self._timers else None
            if self._flush_at is not None and (nxt is None or self._flush_at <= nxt):
                nxt = self._flush_at
            if nxt is None or nxt > until:
                return
            if self._flush_at is not None and nxt == self._flush_at:
                self._flush_at = None
                self._flush_items(int(nxt))
                continue
            _, _, side, key = heapq.heappop(self._timers)
            if side == _USER:
                self._user_batch([(key, rec.KIND_TIMER, b"", int(nxt))], int(nxt))
            else:
                self._to_items(key, rec.KIND_TIMER, b"", int(nxt))

    def checkpoint(self) -> None:
        """What the job's operators do before a checkpoint barrier: flush what they hold and
        write their cached state (user profiles and impression logs, dirty similarity rows)
        into keyed state (``user_state``/``item_state`` here)."""
        proc_now = int(self.proc_ms)
        self._flush_at = None
        self._flush_items(proc_now, checkpoint=True)
        self._user_batch([], proc_now, checkpoint=True)
        self._expire_item_state()

    def drain(self) -> None:
        """Run every pending flush and timer: the state the job reaches once idle for a few
        seconds (rows flushed and emitted, model updates applied, trending rebuilt)."""
        sim = self.cfg.similarity
        horizon = self.proc_ms + sim.flush_interval_ms + max(
            sim.emit_min_interval_ms, sim.ease_refresh_ms if sim.ease_head_items else 0) + 1
        while True:
            self._run_due(horizon)
            self.proc_ms = max(self.proc_ms, horizon)
            if self._flush_at is None and not (self._timers and self._timers[0][0] <= horizon):
                break
            horizon += sim.flush_interval_ms + 1
        self.proc_ms += self.cfg.recommend.trending_refresh_ms
        self.user.model.refresh(self.proc_ms, force=True)

    # ------------------------------------------------------------------ the two operators
    def _user_batch(self, items: list[tuple[str | None, int, bytes, int]],
                    proc_now: int, checkpoint: bool = False) -> BatchResult:
        keys, records = keyed_batch(items)
        states = [self.user_state.get(k, [None, None]) for k in keys]
        result = self.user.process(keys, states, records, proc_now, -(1 << 63),
                                   checkpoint=checkpoint)
        for key, s, value in result.state_updates:
            name = keys[key] if isinstance(key, int) else key
            self.user_state.setdefault(name, [None, None])[s] = value
        for key, time_ in result.timers:
            name = keys[key] if isinstance(key, int) else key
            heapq.heappush(self._timers, (float(time_), next(self._timer_seq), _USER, name))
        self._count(result.metrics)
        for key, value in result.outputs.of(rec.USER_OUT_PAIRS, rec.KIND_PAIRS):
            self._to_items(key, rec.KIND_PAIRS, value, proc_now)
        for key, value in result.outputs.of(rec.USER_OUT_PAIRS, rec.KIND_GRAM):
            self._to_items(key, rec.KIND_GRAM, value, proc_now)
        for _, value in result.outputs.of(rec.USER_OUT_ACTIVITY, rec.KIND_ACTIVITY):
            self._to_items(None, rec.KIND_ACTIVITY, value, proc_now)
        return result

    def _to_items(self, key: str | None, kind: int, payload: bytes, proc_now: int) -> None:
        if self.frozen and kind != rec.KIND_TIMER:
            return
        if not self._inbox and self._flush_at is None:
            self._flush_at = proc_now + self.cfg.similarity.flush_interval_ms
        self._inbox.append((key, kind, payload))

    def _flush_items(self, proc_now: int, checkpoint: bool = False) -> None:
        inbox, self._inbox = self._inbox, []
        keys, records = keyed_batch((key, kind, payload, proc_now) for key, kind, payload in inbox)
        states = [self.item_state.get(k, [None]) for k in keys]
        result = self.item.process(keys, states, records, proc_now, checkpoint=checkpoint)
        self.stats.flushes += 1
        self._apply_item_state(result, keys)
        for key, time_ in result.timers:
            name = keys[key] if isinstance(key, int) else key
            heapq.heappush(self._timers, (float(time_), next(self._timer_seq), _ITEM, name))
        self._count(result.metrics)
        updates = result.outputs.of(rec.ITEM_OUT_MODEL, rec.KIND_MODEL_UPDATE)
        if updates:
            self._user_batch([(None, rec.KIND_MODEL_UPDATE, v, proc_now) for _, v in updates],
                             proc_now)

    def _count(self, metrics: list[tuple[str, str, int, float]]) -> None:
        s = self.stats
        for path, name, kind, value in metrics:
            if kind != 0:
                continue
            if name == "dlq_records":
                reason = dict(p.split("=", 1) for p in path.split(","))["reason"]
                if reason == "duplicate_event":
                    s.duplicates += int(value)
                else:
                    s.dead_letters += int(value)
                    s.dlq_reasons[reason] = s.dlq_reasons.get(reason, 0) + int(value)
            elif name == "events_in":
                s.events += int(value)
            elif name == "similarity_pair_updates":
                s.pair_updates += int(value)
            elif name == "similarity_updates_emitted":
                s.neighbor_emissions += int(value)
            elif name == "recommendations_emitted":
                s.recommendations += int(value)

    # ------------------------------------------------------------------ inputs
    def _send(self, kind: int, key: str | None, record: Record) -> BatchResult:
        self._advance()
        ts = record.get("ts") if isinstance(record.get("ts"), int) else 0
        return self._user_batch([(key, kind, orjson.dumps(record), ts)], int(self.proc_ms))

    def add_items(self, records: Iterable[Record]) -> None:
        batch = [(None, rec.KIND_CATALOG, orjson.dumps(r), r.get("ts", 0)) for r in records]
        self._user_batch(batch, int(self.proc_ms))
        self.user.model.refresh(self.proc_ms, force=True)

    def add_attributes(self, records: Iterable[Record]) -> None:
        for r in records:
            self._send(rec.KIND_ATTRIBUTES, str(r.get("user_id")), r)

    def freeze_item_model(self) -> None:
        """From now on: no co-occurrence, neighbour or popularity updates."""
        self.drain()
        self.frozen = True

    def _recommendation(self, result: BatchResult) -> Recommendation | None:
        got = result.outputs.of(rec.USER_OUT_RECOMMENDATIONS)
        if not got or got[-1][1] is None:
            return None
        m = orjson.loads(got[-1][1])
        r = Recommendation(m["user_id"], m["variant"], [i["item_id"] for i in m["items"]],
                           [i["reasons"] for i in m["items"]], [i["score"] for i in m["items"]],
                           m["trigger_event_id"], m["request_id"])
        self.recommendations.append(r)
        return r

    def process_event(self, record: Record, *, recommend_after: bool = True
                      ) -> Recommendation | None:
        """One ``user-events`` record; the recommendation it triggers (None when the record is
        rejected or a duplicate, or when ``recommend_after`` is False)."""
        self.user.recommend_on_events = recommend_after and self.recommend_on_events
        result = self._send(rec.KIND_EVENT, str(record.get("user_id")), record)
        return self._recommendation(result) if self.user.recommend_on_events else None

    def process_events(self, records: Sequence[Record], batch: int) -> list[Recommendation]:
        """Events in micro-batches of ``batch`` records, as the job's user operator takes them
        from a backlog (the clock still advances per record); the recommendations made."""
        self.user.recommend_on_events = self.recommend_on_events
        made: list[Recommendation] = []
        for start in range(0, len(records), batch):
            chunk = records[start:start + batch]
            items = []
            for r in chunk:
                ts = r.get("ts") if isinstance(r.get("ts"), int) else 0
                items.append((str(r.get("user_id")), rec.KIND_EVENT, orjson.dumps(r), ts))
            self.proc_ms += self.ms_per_event * len(chunk)
            result = self._user_batch(items, int(self.proc_ms))
            for _, value in result.outputs.of(rec.USER_OUT_RECOMMENDATIONS):
                if value is not None:
                    m = orjson.loads(value)
                    made.append(Recommendation(
                        m["user_id"], m["variant"], [i["item_id"] for i in m["items"]],
                        [i["reasons"] for i in m["items"]], [i["score"] for i in m["items"]],
                        m["trigger_event_id"], m["request_id"]))
            self._run_due(self.proc_ms)
            self._maybe_checkpoint()
        self.recommendations.extend(made)
        return made

    def forget(self, user_id: str, ts: int | None = None) -> None:
        """A ``privacy-requests`` forget for ``user_id``."""
        self._send(rec.KIND_PRIVACY, user_id, {"user_id": user_id, "action": "forget",
                                               "ts": int(self.proc_ms) if ts is None else ts})

    def request(self, record: Record) -> Recommendation | None:
        """One ``recommendation-requests`` record (the user's profile as it is now)."""
        return self._recommendation(self._send(rec.KIND_REQUEST, str(record.get("user_id")),
                                               record))

    # ------------------------------------------------------------------ inspection
    def profile(self, user_id: str) -> UserProfile | None:
        slot = self.user.cache.get(user_id)
        if slot is not None and (slot.profile is not None or slot.profile_blob is not None):
            return self.user._profile(slot, user_id)
        blob = self.user_state.get(user_id, [None])[0]
        if blob is None or decode_forgotten(blob) is not None:  # none, or forgotten
            return None
        return decode_profile(blob)

    def variant(self, user_id: str) -> str:
        p = self.profile(user_id) or UserProfile(user_id)
        return self.user.step.variant(p)

    def neighbors(self, item_id: str) -> list[tuple[str, float]]:
        """The neighbour row the recommender sees for ``item_id``."""
        return self.user.model.neighbors_of(item_id)

    def occurrence(self, item_id: str) -> float:
        c = self.item.stats.items.get(item_id)
        return float(self.item.stats.occ[c]) if c >= 0 else 0.0


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
                   ms_per_event: float = 1.0,
                   progress: Callable[[int], None] | None = None) -> ProtocolAResult:
    """Replay ``train_events`` (event-time order), then one request per test user."""
    from recsys.evaluation.metrics import ranking_metrics

    t0 = time.perf_counter()
    sim = EngineSimulator(cfg, ms_per_event=ms_per_event)
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
        recs[req["user_id"]] = out.items if out is not None else []
    result = ranking_metrics(recs, test, k)
    per_variant: dict[str, dict[str, float]] = {}
    for v in sorted(set(sim.variant(u) for u in recs)):
        users = [u for u in recs if sim.variant(u) == v]
        per_variant[v] = ranking_metrics({u: recs[u] for u in users},
                                         {u: test[u] for u in users}, k)
    return ProtocolAResult(result, per_variant, recs, time.perf_counter() - t0, sim.stats)


@dataclass
class ProtocolBResult:
    cases: list[prequential.Case]
    seconds: float
    stats: SimStats


def run_protocol_b(cfg: EngineConfig, catalog: Sequence[Record], attributes: Sequence[Record],
                   events: Sequence[Record], *, k: int = 10, ms_per_event: float = 1.0,
                   freeze_after_ms: int | None = None, users: set[str] | None = None,
                   progress: Callable[[int], None] | None = None) -> ProtocolBResult:
    """Prequential (``recsys.evaluation.prequential``): is each event's item in the list the
    user's previous event triggered? ``freeze_after_ms``: freeze the item model at the first
    event at or after this time. ``users``: evaluate only these users (all events are still
    applied; lists are computed only for them)."""
    t0 = time.perf_counter()
    if freeze_after_ms is not None:  # the job's own switch
        cfg = dataclasses.replace(cfg, similarity=dataclasses.replace(
            cfg.similarity, freeze_item_model_at_ms=freeze_after_ms))
    sim = EngineSimulator(cfg, ms_per_event=ms_per_event)
    sim.add_items(catalog)
    sim.add_attributes(attributes)
    lists_after: dict[str, tuple[str, list[str]]] = {}
    for n, e in enumerate(events):
        u = e["user_id"]
        wanted = users is None or u in users
        out = sim.process_event(e, recommend_after=wanted)
        if out is not None:
            lists_after[e["event_id"]] = (sim.variant(u), out.items)
        if progress is not None and n % 5000 == 0:
            progress(n)
    return ProtocolBResult(prequential.cases(events, lists_after, k, users),
                           time.perf_counter() - t0, sim.stats)


# ---------------------------------------------------------------------------- CLI

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
    parser = argparse.ArgumentParser(prog="python -m recsys.evaluation.simulate", description=__doc__,
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
    parser.add_argument("--split-seed", type=int, default=42,
                        help="seed of the per-user split (42: the evaluation's)")
    parser.add_argument("--split", choices=["random", "temporal"], default="random")
    parser.add_argument("--on", choices=["validation", "test"], default="validation",
                        help="score on the validation split carved from the training ratings "
                             "(default: what tuning may look at) or on the test split")
    args = parser.parse_args(argv)

    from recsys.evaluation.datasets import load_data

    data = load_data(args.users, args.split_seed, kind=args.split,
                     validation=args.on == "validation")
    catalog, attributes, train, test = data.catalog, data.attributes, data.train_events, data.test
    for combo in _grid(args.sweep):
        cfg = load_config(args.config, list(args.overrides) + combo, environ={})
        if args.protocol == "A":
            res = run_protocol_a(cfg, catalog, attributes, train, test,
                                 ms_per_event=args.ms_per_event)
            m = res.metrics
            print(json.dumps({"set": combo, "on": args.on, "ndcg@10": round(m["ndcg@10"], 4),
                              "precision@10": round(m["precision@10"], 4),
                              "recall@10": round(m["recall@10"], 4), "map": round(m["map"], 4),
                              "seconds": round(res.seconds, 1)}), flush=True)
        else:
            from recsys.evaluation.metrics import hit_and_rr

            everyone = data.all_events
            users = sorted({e["user_id"] for e in everyone})
            rng = np.random.RandomState(7)
            chosen = set(rng.choice(users, max(1, int(len(users) * args.b_user_fraction)),
                                    replace=False).tolist())
            res = run_protocol_b(cfg, catalog, attributes, everyone, users=chosen,
                                 ms_per_event=args.ms_per_event)
            hr, mrr = hit_and_rr(np.array([c.rank for c in res.cases]))
            print(json.dumps({"set": combo, "hit_rate@10": round(hr, 4), "mrr@10": round(mrr, 4),
                              "cases": len(res.cases), "seconds": round(res.seconds, 1)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
