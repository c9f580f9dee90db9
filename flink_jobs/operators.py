"""The job's Flink functions: thin glue between Flink state/timers and the pure code in ``udfs``.

Topology (see flink_jobs/recsys_job.py):

  kafka sources -> ParseInput --(dlq)--> events-dlq
        catalogue --broadcast--+
  events/attrs/requests/privacy -> keyBy(user) -> ProfileOperator --> user-profiles
                                      |  |  +--(pairs)--> keyBy(shard) -> SimilarityOperator --> item-similarity
                                      |  +--(activity)--broadcast--^            |
                                      +--(trigger)--> keyBy(user) -> RecommendOperator --> recommendations
                     catalogue + activity + neighbours --broadcast--^
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import orjson
from pyflink.common import Row, Types

# Records between embedded (thread-mode) Python operators cross the JVM and come back as plain
# tuples, so every NamedTuple from state_schemas.internal is re-wrapped with ._make() on entry.
from pyflink.datastream import OutputTag
from pyflink.datastream.functions import (
    KeyedBroadcastProcessFunction, ProcessFunction, RuntimeContext)
from pyflink.datastream.state import (
    ListStateDescriptor, MapStateDescriptor, StateTtlConfig, ValueStateDescriptor)
from pyflink.common.time import Time

from flink_jobs.io import KAFKA_RECORD
from recsys.config import EngineConfig
from state_schemas.internal import (
    InputRecord, ItemActivity, ModelUpdate, PairShardBatch, RecommendationTrigger)
from state_schemas.state import (
    ItemInfo, RecentItem, UserProfileState, item_info_from_state, item_info_to_state,
    user_profile_from_state, user_profile_to_state)
from udfs import profile as prof
from udfs.ab import (
    ImpressionLog, assign_variant, attribute_feedback, record_impressions)
from udfs.privacy import load_pseudonym_key, pseudonymize
from udfs.observability import cumulative_buckets, histogram_labels
from udfs.recommend import ItemModel, UserView, recommend
from udfs.similarity import ItemRow, PairBatch, apply_pair_updates, pair_batches_by_shard
from udfs.trending import TrendingModel
from udfs.validation import (
    KIND_ATTRIBUTES, KIND_EVENT, KIND_ITEM, KIND_PRIVACY, KIND_REQUEST, DeadLetter, dead_letter,
    parse_input)

PICKLED = Types.PICKLED_BYTE_ARRAY()
DLQ_TAG = OutputTag("dlq", KAFKA_RECORD)
PROFILE_TAG = OutputTag("profiles", KAFKA_RECORD)
# The profile operator's main output is a tagged union, split by ``SplitProfileOutput``:
# PyFlink 2.3 drops side-output routing for records yielded from on_timer() of a
# KeyedBroadcastProcessFunction (they land on the main output), and the trailing, rate-limited
# profile snapshots come from a timer.
OUT_TRIGGER = 0
OUT_PROFILE = 1
PAIRS_TAG = OutputTag("pairs", PICKLED)
ACTIVITY_TAG = OutputTag("activity", PICKLED)

CATALOG_STATE = MapStateDescriptor("catalog", Types.STRING(), PICKLED)
OCCURRENCE_STATE = MapStateDescriptor("item-occurrence", Types.STRING(), Types.DOUBLE())
MODEL_STATE = MapStateDescriptor("item-model", Types.STRING(), PICKLED)


def kafka_record(key: str, value: dict[str, Any] | None) -> Row:
    return Row(key.encode("utf-8"), None if value is None else orjson.dumps(value))


def dlq_record(letter: DeadLetter) -> Row:
    return kafka_record(letter.source_topic, letter.to_message())


def now_ms() -> int:
    return int(time.time() * 1000)


class ParseInput(ProcessFunction):
    """Bytes of one input topic -> ``InputRecord``, or a dead letter on the DLQ side output."""

    def __init__(self, cfg: EngineConfig, kind: str, topic: str):
        self.cfg = cfg
        self.kind = kind
        self.topic = topic

    def open(self, runtime_context: RuntimeContext):
        group = runtime_context.get_metrics_group().add_group("source_topic", self.topic)
        self.accepted = group.counter("records_accepted")
        self.rejected_group = group
        self.rejected: dict[str, Any] = {}
        self.key_field = {KIND_EVENT: "user_id", KIND_ATTRIBUTES: "user_id", KIND_ITEM: "item_id",
                          KIND_REQUEST: "user_id", KIND_PRIVACY: "user_id"}[self.kind]
        privacy = self.cfg.privacy
        # Loaded here, on the task manager, from its environment: the key never travels in the
        # job graph or the configuration.
        self.pseudonym_key = (load_pseudonym_key(privacy)
                              if privacy.pseudonymize_user_ids and self.key_field == "user_id"
                              else None)

    def _count_rejected(self, reason: str) -> None:
        counter = self.rejected.get(reason)
        if counter is None:
            counter = self.rejected_group.add_group("reason", reason).counter("dlq_records")
            self.rejected[reason] = counter
        counter.inc()

    def process_element(self, value, ctx):
        raw = bytes(value) if value is not None else None
        out = parse_input(raw, self.kind, self.topic, now_ms(), self.cfg.validation,
                          self.cfg.profile, self.cfg.recommend.default_k, self.cfg.recommend.max_k)
        if isinstance(out, DeadLetter):
            self._count_rejected(out.reason)
            yield DLQ_TAG, dlq_record(out)
        else:
            self.accepted.inc()
            if self.pseudonym_key is not None:
                out["user_id"] = pseudonymize(out["user_id"], self.pseudonym_key,
                                              self.cfg.privacy.pseudonym_hex_chars)
            if self.kind in (KIND_EVENT, KIND_REQUEST):
                out["ingest_ms"] = now_ms()  # not part of the contract; feeds the latency metric
            yield InputRecord(self.kind, out[self.key_field], out)


def item_info(rec: dict[str, Any]) -> ItemInfo:
    return ItemInfo(rec["item_id"], rec["title"], tuple(rec["categories"]), tuple(rec["tags"]),
                    rec["price"], rec["available"], rec["ts"])


class CatalogMirror:
    """In-memory copy of the catalogue broadcast state (reads in Python are per-record hot)."""

    def __init__(self):
        self.items: dict[str, ItemInfo] = {}
        self.loaded = False

    def ensure_loaded(self, ctx) -> None:
        # Broadcast state is restored before the first element but cannot be read in open().
        if not self.loaded:
            for key, value in ctx.get_broadcast_state(CATALOG_STATE).items():
                self.items[key] = item_info_from_state(value)
            self.loaded = True

    def upsert(self, ctx, info: ItemInfo) -> bool:
        self.ensure_loaded(ctx)
        current = self.items.get(info.item_id)
        if current is not None and current.updated_at > info.updated_at:
            return False
        self.items[info.item_id] = info
        ctx.get_broadcast_state(CATALOG_STATE).put(info.item_id, item_info_to_state(info))
        return True


class ProfileOperator(KeyedBroadcastProcessFunction):
    """Keyed by user: folds events/attributes into the profile; triggers recommendations."""

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg

    def open(self, runtime_context: RuntimeContext):
        descriptor = ValueStateDescriptor("user-profile", PICKLED)
        ttl_ms = self.cfg.profile.inactive_user_ttl_ms
        if ttl_ms > 0:
            descriptor.enable_time_to_live(
                StateTtlConfig.new_builder(Time.milliseconds(ttl_ms))
                .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
                .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
                .build())
        self.profile_state = runtime_context.get_state(descriptor)
        self.catalog = CatalogMirror()
        metrics = runtime_context.get_metrics_group()
        self.events_by_type = {t: metrics.add_group("event_type", t).counter("events_in")
                               for t in self.cfg.profile.event_weights}
        self.duplicates = (metrics.add_group("source_topic", self.cfg.topics.user_events)
                           .add_group("reason", "duplicate_event").counter("dlq_records"))
        self.late_events = metrics.counter("late_events")
        self.profiles_updated = metrics.counter("profiles_updated")
        self.profiles_created = metrics.counter("profiles_created")
        self.loaded_new = False
        self.forgotten = metrics.counter("users_forgotten")

    # -- state ---------------------------------------------------------------------------------
    def _load(self, user_id: str) -> UserProfileState:
        stored = self.profile_state.value()
        self.loaded_new = stored is None  # counted when saved: requests alone create nothing
        if stored is None:
            return UserProfileState(user_id)
        return user_profile_from_state(stored)

    def _save(self, p: UserProfileState) -> None:
        if self.loaded_new:
            self.profiles_created.inc()
            self.loaded_new = False
        self.profile_state.update(user_profile_to_state(p))

    def _variant(self, p: UserProfileState) -> str:
        """The user's A/B variant: sticky while the experiment salt stays the same."""
        rc = self.cfg.recommend
        if p.variant_salt != rc.experiment_salt or p.variant not in rc.variants:
            p.variant = assign_variant(p.user_id, rc.experiment_salt, rc.variants)
            p.variant_salt = rc.experiment_salt
        return p.variant

    def _snapshot_now(self, p: UserProfileState) -> int:
        return max(p.last_seen or 0, p.attributes_ts)

    def _maybe_snapshot(self, p: UserProfileState, ctx) -> Iterable:
        """Emit a user-profiles record now, or at most once per interval per user (timer)."""
        proc_now = ctx.timer_service().current_processing_time()
        interval = self.cfg.profile.snapshot_min_interval_ms
        if proc_now - p.last_snapshot_at >= interval:
            p.last_snapshot_at = proc_now
            p.snapshot_pending = False
            yield OUT_PROFILE, kafka_record(p.user_id, prof.profile_snapshot(
                p, self._snapshot_now(p), self.cfg.profile, self._variant(p)))
        elif not p.snapshot_pending:
            p.snapshot_pending = True
            ctx.timer_service().register_processing_time_timer(p.last_snapshot_at + interval)

    # -- inputs --------------------------------------------------------------------------------
    def process_broadcast_element(self, value: InputRecord, ctx):
        self.catalog.upsert(ctx, item_info(InputRecord._make(value).record))

    def process_element(self, value: InputRecord, ctx):
        self.catalog.ensure_loaded(ctx)
        kind, user_id, rec = value
        if kind == KIND_EVENT:
            yield from self._on_event(user_id, rec, ctx)
        elif kind == KIND_ATTRIBUTES:
            p = self._load(user_id)
            if prof.apply_attributes(p, rec["attributes"], rec["ts"]):
                self.profiles_updated.inc()
                yield from self._maybe_snapshot(p, ctx)
                self._save(p)
        elif kind == KIND_REQUEST:
            p = self._load(user_id)
            yield OUT_TRIGGER, self._trigger(p, rec["ts"], rec["k"], request_id=rec["request_id"],
                                             ingest_ms=rec.get("ingest_ms", 0))
        elif kind == KIND_PRIVACY:
            yield from self._forget(user_id, rec, ctx)

    def _on_event(self, user_id: str, event: dict[str, Any], ctx):
        cfg = self.cfg
        p = self._load(user_id)
        if not prof.remember_event_id(p, event["event_id"], event["ts"],
                                      cfg.validation.dedup_window_ms,
                                      cfg.validation.dedup_max_ids_per_user):
            self.duplicates.inc()
            yield DLQ_TAG, dlq_record(dead_letter(
                orjson.dumps(event), cfg.topics.user_events, "duplicate_event",
                f"event_id {event['event_id']!r} was already processed within "
                f"{cfg.validation.dedup_window_ms} ms", now_ms(), cfg.validation))
            return
        self.events_by_type[event["event_type"]].inc()
        watermark = ctx.timer_service().current_watermark()
        if event["ts"] < watermark:
            self.late_events.inc()
        item = self.catalog.items.get(event["item_id"])
        outcome = prof.apply_event(p, event, item, cfg.profile, cfg.similarity)
        self.profiles_updated.inc()
        segment = prof.demographic_segment(p.attributes)
        # A frozen item model (evaluation's "trained once" baseline): profiles keep updating,
        # popularity, occurrence and co-occurrence stop at the configured event time.
        frozen = 0 < cfg.similarity.freeze_item_model_at_ms <= event["ts"]
        if outcome.weight > 0 and not frozen:
            yield ACTIVITY_TAG, ItemActivity(event["item_id"], outcome.weight,
                                             outcome.occurrence_delta, event["ts"], segment,
                                             item.categories if item else ())
        if outcome.pairs and not frozen:
            for batch in pair_batches_by_shard(outcome.pairs, cfg.similarity.shards):
                yield PAIRS_TAG, batch
        yield from self._maybe_snapshot(p, ctx)
        self._save(p)
        yield OUT_TRIGGER, self._trigger(p, event["ts"], cfg.recommend.default_k, event=event,
                                         segment=segment)

    def _trigger(self, p: UserProfileState, event_ts: int, k: int, *, event=None,
                 request_id=None, segment=None, ingest_ms: int = 0) -> RecommendationTrigger:
        now = max(event_ts, p.last_seen or 0)
        interests = prof.interests_at(p.interests, p.interests_ts, now,
                                      self.cfg.profile.interest_half_life_ms)
        return RecommendationTrigger(
            user_id=p.user_id,
            trigger_event_id=event["event_id"] if event else None,
            request_id=request_id,
            event_ts=event_ts,
            k=k,
            event_item_id=event["item_id"] if event else None,
            event_type=event["event_type"] if event else None,
            recent_items=[(r.item_id, r.event_type, r.ts, r.weight) for r in p.recent_items],
            interests=interests,
            exclude=list(p.consumed),
            not_interested=list(p.not_interested),
            segment=segment if segment is not None else prof.demographic_segment(p.attributes),
            variant=self._variant(p),
            attributes=dict(p.attributes),
            ingest_ms=event.get("ingest_ms", 0) if event else ingest_ms,
        )

    def _forget(self, user_id: str, rec: dict[str, Any], ctx):
        """Right to be forgotten: drop the profile, tombstone user-profiles, tell the recommender."""
        self.profile_state.clear()
        self.forgotten.inc()
        yield OUT_PROFILE, kafka_record(user_id, None)
        yield OUT_TRIGGER, RecommendationTrigger(user_id, None, None, rec["ts"], 0, None, None, [],
                                                 {}, [], [], "", "", {}, forget=True)

    def on_timer(self, timestamp: int, ctx):
        stored = self.profile_state.value()
        if stored is None:
            return
        p = user_profile_from_state(stored)
        if p.snapshot_pending:
            p.last_snapshot_at = timestamp
            p.snapshot_pending = False
            yield OUT_PROFILE, kafka_record(p.user_id, prof.profile_snapshot(
                p, self._snapshot_now(p), self.cfg.profile, self._variant(p)))
            self._save(p)


class SplitProfileOutput(ProcessFunction):
    """Recommendation triggers on the main output, profile snapshots to ``PROFILE_TAG``."""

    def process_element(self, value, ctx):
        kind, payload = value
        if kind == OUT_PROFILE:
            yield PROFILE_TAG, payload
        else:
            yield payload


def forward_decay(ts: int, landmark_ms: int, half_life_ms: int) -> float:
    if half_life_ms <= 0:
        return 1.0
    return 2.0 ** ((ts - landmark_ms) / half_life_ms)


class SimilarityOperator(KeyedBroadcastProcessFunction):
    """Keyed by similarity shard: buffers pair updates and applies them in vectorised batches.

    The broadcast side carries every item's occurrence increments, so each instance knows N(j)
    for all items (the denominators of the similarity) while holding only its shards' rows.
    """

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg

    def open(self, runtime_context: RuntimeContext):
        self.pending = runtime_context.get_list_state(ListStateDescriptor("pending-pairs", PICKLED))
        # The shard count the rows of this shard key were written with: item rows are keyed by
        # shard, so a changed similarity.shards would silently orphan them (see recsys/config.py).
        self.layout = runtime_context.get_state(ValueStateDescriptor("shard-layout", Types.INT()))
        self.layout_checked: set[int] = set()  # shard keys checked since open(): no state read
        self.rows = runtime_context.get_map_state(
            MapStateDescriptor("item-rows", Types.STRING(), PICKLED))
        # item -> (last emitted processing time, emission pending). Pending items are also kept
        # in their own small map so that a flush looks at them only, not at every item the shard
        # ever emitted (that scan grew with the catalogue).
        self.emitted = runtime_context.get_map_state(
            MapStateDescriptor("item-emitted", Types.STRING(), PICKLED))
        self.emit_pending = runtime_context.get_map_state(
            MapStateDescriptor("item-emit-pending", Types.STRING(), Types.BOOLEAN()))
        self.occurrence: dict[str, float] = {}
        self.occurrence_loaded = False
        metrics = runtime_context.get_metrics_group()
        self.pair_updates = metrics.counter("similarity_pair_updates")
        self.batches = metrics.counter("similarity_batches")
        self.neighbor_updates = metrics.counter("similarity_updates_emitted")
        self.rows_created = metrics.counter("similarity_rows_created")
        metrics.gauge("similarity_items_with_occurrence", lambda: len(self.occurrence))

    def _ensure_occurrence(self, ctx) -> None:
        if not self.occurrence_loaded:
            for key, value in ctx.get_broadcast_state(OCCURRENCE_STATE).items():
                self.occurrence[key] = value
            self.occurrence_loaded = True

    def process_broadcast_element(self, value: ItemActivity, ctx):
        self._ensure_occurrence(ctx)
        value = ItemActivity._make(value)
        if value.occurrence_delta <= 0:
            return
        sim = self.cfg.similarity
        n = self.occurrence.get(value.item_id, 0.0) + value.occurrence_delta * forward_decay(
            value.ts, sim.decay_landmark_ms, sim.half_life_ms)
        self.occurrence[value.item_id] = n
        ctx.get_broadcast_state(OCCURRENCE_STATE).put(value.item_id, n)

    def process_element(self, value: PairShardBatch, ctx):
        self._ensure_occurrence(ctx)
        value = PairShardBatch._make(value)
        if value.shard not in self.layout_checked:
            self._check_layout()
            self.layout_checked.add(value.shard)
        self.pending.add(value)
        self.pair_updates.inc(len(value.rows))
        interval = self.cfg.similarity.flush_interval_ms
        proc_now = ctx.timer_service().current_processing_time()
        # Coalesced: every record of this shard in the same interval maps to the same timer.
        ctx.timer_service().register_processing_time_timer((proc_now // interval + 1) * interval)
        return iter(())

    def _check_layout(self) -> None:
        shards = self.cfg.similarity.shards
        written_with = self.layout.value()
        if written_with is None:
            self.layout.update(shards)  # new shard key, or state from before this check
        elif written_with != shards:
            raise ValueError(
                f"similarity.shards is {shards}, but the restored similarity state was written "
                f"with {written_with} shards: its item rows would be unreachable. Set "
                f"similarity.shards={written_with} (it is part of the state layout), or start "
                f"without this savepoint to rebuild the similarities from new events.")

    def on_timer(self, timestamp: int, ctx):
        self._ensure_occurrence(ctx)
        sim = self.cfg.similarity
        batches = list(self.pending.get() or [])
        due: list[str] = []
        if batches:
            self.pending.clear()
            self.batches.inc()
            batch = PairBatch.from_shard_batches(batches)
            touched = set(batch.rows.tolist())
            current = {}
            for item_id in touched:
                stored = self.rows.get(item_id)
                if stored is not None:
                    current[item_id] = ItemRow.from_state(stored)
                else:
                    self.rows_created.inc()
            updated = apply_pair_updates(current, batch, self.occurrence, sim,
                                         sim.decay_landmark_ms, delta=sim.hoeffding_delta,
                                         min_obs=sim.hoeffding_min_obs)
            for item_id, row in updated.items():
                old = current.get(item_id)
                self.rows.put(item_id, row.to_state())
                if old is None or list(old.neighbors) != list(row.neighbors):
                    due.append(item_id)
        yield from self._emit_due(due, timestamp, ctx)

    def _emit_due(self, changed: list[str], proc_now: int, ctx):
        """Emit the neighbour rows that changed, at most once per ``emit_min_interval_ms`` per
        item; a row changed again too soon waits for a timer at its next allowed time."""
        interval = self.cfg.similarity.emit_min_interval_ms
        for item_id in changed:
            self.emit_pending.put(item_id, True)
        for item_id in list(self.emit_pending.keys()):
            last, _ = self.emitted.get(item_id) or (0, False)
            if proc_now - last >= interval:
                neighbors = ItemRow.neighbors_of_state(self.rows.get(item_id))
                self.emitted.put(item_id, (proc_now, False))
                self.emit_pending.remove(item_id)
                self.neighbor_updates.inc()
                yield (item_id, [(j, float(s)) for j, s in neighbors], proc_now)
            else:
                ctx.timer_service().register_processing_time_timer(last + interval)


def similarity_message(update: tuple) -> Row:
    item_id, neighbors, updated_at = update
    return kafka_record(item_id, {
        "schema_version": 1, "item_id": item_id, "updated_at": updated_at,
        "neighbors": [{"item_id": j, "score": round(s, 6)} for j, s in neighbors]})


class RecommendOperator(KeyedBroadcastProcessFunction):
    """Keyed by user: blends the broadcast item model with the user's view into top-k lists."""

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg

    def open(self, runtime_context: RuntimeContext):
        self.impressions = runtime_context.get_state(ValueStateDescriptor("impressions", PICKLED))
        self.model = ItemModel(catalog={}, neighbors={}, trending=self._new_trending())
        self.model_loaded = False
        self.activity_since_snapshot = 0
        metrics = runtime_context.get_metrics_group()
        self.metrics = metrics
        self.emitted: dict[tuple[str, str], Any] = {}
        self.feedback: dict[tuple[str, str], Any] = {}
        # Cumulative histogram of ingest -> emit latency (see udfs/observability.py).
        self.latency_buckets = {le: metrics.add_group("le", le).counter("recommendation_latency_ms_bucket")
                                for le in histogram_labels()}
        self.latency_sum = metrics.counter("recommendation_latency_ms_sum")
        self.latency_count = metrics.counter("recommendation_latency_ms_count")
        self.event_lag_ms = 0
        self.neighbor_pairs = 0
        metrics.gauge("event_time_lag_ms", lambda: self.event_lag_ms)
        metrics.gauge("model_catalog_items", lambda: len(self.model.catalog))
        metrics.gauge("model_items_with_neighbors", lambda: len(self.model.neighbors))
        metrics.gauge("model_neighbor_pairs", lambda: self.neighbor_pairs)
        metrics.gauge("model_trending_items", lambda: len(self.model.trending.items))
        # Registered at 0 before the first recommendation: Prometheus' increase() cannot see
        # the growth of a series whose first scrape already holds its value, and the
        # "no recommendations while events arrive" alert would fire on a fresh, busy job.
        for variant in self.cfg.recommend.variants:
            for trigger in ("event", "request"):
                self._count(self.emitted, "recommendations_emitted", variant, "trigger",
                            trigger, 0)

    def _new_trending(self) -> TrendingModel:
        rc = self.cfg.recommend
        return TrendingModel(half_life_ms=rc.trending_half_life_ms, top_cache_size=rc.trending_top_n)

    def _ensure_model(self, ctx) -> None:
        if self.model_loaded:
            return
        for key, value in ctx.get_broadcast_state(MODEL_STATE).items():
            if key.startswith("item:"):
                info = item_info_from_state(value)
                self.model.catalog[info.item_id] = info
            elif key.startswith("nbr:"):
                self.model.neighbors[key[4:]] = [tuple(n) for n in value]
                self.neighbor_pairs += len(value)
            elif key == "trending":
                restored = TrendingModel.from_state(value, top_cache_size=self.cfg.recommend.trending_top_n)
                # A changed half-life makes the stored counts meaningless: start afresh.
                if restored.half_life_ms == self.cfg.recommend.trending_half_life_ms:
                    self.model.trending = restored
        self.model_loaded = True

    def process_broadcast_element(self, value: ModelUpdate, ctx):
        self._ensure_model(ctx)
        value = ModelUpdate._make(value)
        state = ctx.get_broadcast_state(MODEL_STATE)
        if value.kind == "item":
            info = item_info(InputRecord._make(value.payload).record)
            current = self.model.catalog.get(info.item_id)
            if current is None or current.updated_at <= info.updated_at:
                self.model.catalog[info.item_id] = info
                state.put("item:" + info.item_id, item_info_to_state(info))
        elif value.kind == "neighbors":
            item_id, neighbors, _ = value.payload
            self.neighbor_pairs += len(neighbors) - len(self.model.neighbors.get(item_id, ()))
            self.model.neighbors[item_id] = neighbors
            state.put("nbr:" + item_id, neighbors)
        elif value.kind == "activity":
            a = ItemActivity._make(value.payload)
            self.model.trending.record(a.item_id, a.categories, a.segment, a.weight, a.ts)
            self.activity_since_snapshot += 1
            # Trending is checkpointed every N records rather than per record (cost); after a
            # failure at most N records of popularity are missing, then Kafka replay refills.
            if self.activity_since_snapshot >= self.cfg.recommend.trending_snapshot_every:
                state.put("trending", self.model.trending.to_state())
                self.activity_since_snapshot = 0

    def _count(self, table: dict, name: str, variant: str, label: str, label_value: str,
               n: int = 1):
        key = (variant, label_value)
        counter = table.get((name, key))
        if counter is None:
            counter = (self.metrics.add_group("variant", variant).add_group(label, label_value)
                       .counter(name))
            table[(name, key)] = counter
        counter.inc(n)

    def process_element(self, t: RecommendationTrigger, ctx):
        self._ensure_model(ctx)
        t = RecommendationTrigger._make(t)
        cfg = self.cfg.recommend
        if t.forget:
            self.impressions.clear()
            yield kafka_record(t.user_id, None)
            return
        stored = self.impressions.value()
        log = ImpressionLog.from_state(stored) if stored is not None else ImpressionLog()
        if t.event_item_id is not None:
            hit = attribute_feedback(log, t.event_item_id, t.event_type, t.event_ts,
                                     cfg.feedback_window_ms)
            if hit is not None:
                variant, kind = hit
                self._count(self.feedback, "feedback_events", variant, "kind", kind)
        view = UserView(
            user_id=t.user_id,
            recent_items=[RecentItem(*r) for r in t.recent_items],
            interests=t.interests,
            exclude=set(t.exclude),
            not_interested=set(t.not_interested),
            segment=t.segment,
            variant=t.variant,
            attributes=t.attributes,
        )
        weights = cfg.variants.get(t.variant) or next(iter(cfg.variants.values()))
        now = max(t.event_ts, 0)
        items = recommend(view, self.model, weights, cfg, t.k, now,
                          recency_half_life_ms=cfg.recency_half_life_ms)
        shown = record_impressions(log, [s.item_id for s in items], t.variant, now,
                                   cfg.impressions_max, window_ms=cfg.feedback_window_ms)
        if shown:
            self._count(self.feedback, "impressions", t.variant, "kind", "new", shown)
        self.impressions.update(log.to_state())
        trigger = "request" if t.request_id is not None else "event"
        self._count(self.emitted, "recommendations_emitted", t.variant, "trigger", trigger)
        emitted_at = now_ms()
        if t.ingest_ms:
            latency = max(0, emitted_at - t.ingest_ms)
            for le in cumulative_buckets(latency):
                self.latency_buckets[le].inc()
            self.latency_sum.inc(latency)
            self.latency_count.inc()
        if t.trigger_event_id is not None:
            self.event_lag_ms = emitted_at - t.event_ts
        yield kafka_record(t.user_id, {
            "schema_version": 1,
            "user_id": t.user_id,
            "request_id": t.request_id,
            "trigger_event_id": t.trigger_event_id,
            "generated_at": emitted_at,
            "event_ts": t.event_ts,
            "variant": t.variant,
            "items": [{"item_id": s.item_id, "score": round(float(s.score), 6),
                       "reasons": list(s.reasons)} for s in items],
        })
