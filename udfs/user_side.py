"""The user operator's engine: one micro-batch of records in, state changes and outputs out.

:class:`UserSide` holds everything one subtask of the user operator knows besides keyed state:
the item model (fed by the catalogue and the item operator's model updates), the recommender and
the profile rules. :meth:`UserSide.process` takes the records of one batch in arrival order, with
the keyed state of every user in it, and returns what changed. The Flink operator
(``flink_jobs/batch_host.py``), the simulator and the benchmarks all call it; none of the rules
below exist anywhere else.

Per record kind:

* user event — edge validation (dead letter with a reason on failure), routing-key check, dedup
  window, profile step, item activity and pair updates for the item operator (unless the item
  model is frozen), a rate-limited profile snapshot, feedback attribution, a recommendation;
* attributes — merged into the profile (snapshot when they changed);
* recommendation request — a recommendation for the profile as it is (nothing is stored);
* privacy "forget" — both keyed states cleared, tombstones on the compacted topics, and a
  forgotten-user marker in the profile's place: until it expires, the user's records go to the
  dead-letter topic (reason ``forgotten_user``, without payload) instead of re-creating state;
* timer — the trailing profile snapshot of the rate limit, the forgotten-user marker's expiry,
  or the inactive-user expiry (state dropped, tombstones written, as for a forget);
* catalogue record (broadcast) — validated (subtask 0 dead-letters), applied to the model;
* model update (broadcast) — neighbour rows and popularity applied to the model.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import orjson

from state_schemas import records as rec
from state_schemas.config import EngineConfig
from state_schemas.ids import id_hash
from state_schemas.legacy import LEGACY_CATALOG_STATE, legacy_catalog_record
from state_schemas.model_state import AB_TOTALS_PREFIX, decode_ab_totals, encode_ab_totals
from state_schemas.profile_state import (
    ImpressionLog, UserProfile, decode_forgotten, decode_impressions, decode_profile,
    encode_forgotten, encode_impressions, encode_profile)
from udfs import validation as edge
from udfs.ab import attribute_feedback, record_impressions
from udfs.model import ItemModel
from udfs.observability import MetricDeltas
from udfs.privacy import pseudonymize, pseudonymize_raw_user_ids, redact_personal_text
from udfs.profile import ProfileStep, TooManyAttributes, demographic_segment
from udfs.recommend import Ranked, Recommender

STATE_PROFILE = 0
STATE_IMPRESSIONS = 1
STATE_NAMES = ("user-profile", "impressions")

_SCHEMA_KIND = {rec.KIND_EVENT: edge.KIND_EVENT, rec.KIND_ATTRIBUTES: edge.KIND_ATTRIBUTES,
                rec.KIND_REQUEST: edge.KIND_REQUEST, rec.KIND_PRIVACY: edge.KIND_PRIVACY,
                rec.KIND_CATALOG: edge.KIND_ITEM}


@dataclass(slots=True)
class Record:
    """One record of a batch (``state_schemas/records.py``); ``key`` indexes the batch's keys
    (-1 for broadcast records)."""
    kind: int
    key: int
    ts: int
    ingest_ms: int
    payload: bytes


class Outputs:
    """Output records grouped by (tag, kind): the host emits each group in one go."""

    __slots__ = ("groups",)

    def __init__(self) -> None:
        self.groups: dict[tuple[int, int], tuple[list[str], list[bytes | None]]] = {}

    def emit(self, tag: int, kind: int, key: str, value: bytes | None) -> None:
        group = self.groups.get((tag, kind))
        if group is None:
            group = self.groups[(tag, kind)] = ([], [])
        group[0].append(key)
        group[1].append(value)

    def of(self, tag: int, kind: int = 0) -> list[tuple[str, bytes | None]]:
        keys, values = self.groups.get((tag, kind), ([], []))
        return list(zip(keys, values))


@dataclass(slots=True)
class BatchResult:
    state_updates: list[tuple[int | str, int, bytes | None]] = field(default_factory=list)
    outputs: Outputs = field(default_factory=Outputs)
    timers: list[tuple[int | str, int]] = field(default_factory=list)
    shared: dict[str, bytes | None] = field(default_factory=dict)
    metrics: list[tuple[str, str, int, float]] = field(default_factory=list)


@dataclass(slots=True)
class _UserSlot:
    """A user's state in the operator's cache: decoded on first use, written back to keyed state
    at checkpoints (and when evicted)."""
    profile: UserProfile | None
    impressions: ImpressionLog | None
    profile_blob: bytes | None
    impressions_blob: bytes | None
    profile_dirty: bool = False
    impressions_dirty: bool = False
    stored: bool = False  # keyed state holds a profile for this user
    forgotten_at: int | None = None  # keyed state holds a forgotten-user marker from then


class UserSide:
    """One user-operator subtask's engine (see the module docstring)."""

    def __init__(self, cfg: EngineConfig, *, subtask: int = 0,
                 pseudonym_key: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.subtask = subtask
        # Number of the last item-activity record sent; pair updates carry it so that the item
        # operator scores them only after counting that activity (state_schemas/records.py).
        # It starts again at 0 after a restore, as does the item operator's count of it: both
        # operators restart together (one pipelined region) and no record survives in flight.
        self.activity_seq = 0
        # EASE (similarity.ease_head_items > 0): changes of users' recent-item sets, sent once
        # per batch to the item operator's Gram matrix.
        self.ease_on = cfg.similarity.ease_head_items > 0
        self._grams: list[tuple[list[str], list[str], list[str]]] = []
        self.pseudonym_key = pseudonym_key
        self.clock = clock
        self.model = ItemModel(cfg)
        self.recommender = Recommender(self.model, cfg.recommend)
        self.step = ProfileStep(cfg)
        self.metrics = MetricDeltas()
        # Decoded user state of the users seen lately (LRU): decoded once while cached.
        self.cache: OrderedDict[str, _UserSlot] = OrderedDict()
        # Users whose cached state differs from keyed state -> when it first did (processing
        # time), in that order: written back profile.state_write_back_ms later, or at the
        # next checkpoint, whichever comes first.
        self.dirty: dict[str, int] = {}
        # Offline replays of training data (the simulator) skip the per-event recommendation.
        self.recommend_on_events = True
        # similarity.admit = "catalogue": items the catalogue does not know never enter the
        # global models (popularity, occurrence, similarity rows), so a flood of made-up ids
        # costs profile space only, which is bounded per user.
        self.catalogue_only = cfg.similarity.admit == "catalogue"
        self.topic_of = {rec.KIND_EVENT: cfg.topics.user_events,
                         rec.KIND_ATTRIBUTES: cfg.topics.user_attributes,
                         rec.KIND_REQUEST: cfg.topics.recommendation_requests,
                         rec.KIND_PRIVACY: cfg.topics.privacy_requests,
                         rec.KIND_CATALOG: cfg.topics.item_catalog}
        # Registered at 0 before the first recommendation: Prometheus' increase() cannot see
        # the growth of a series whose first scrape already holds its value.
        for name in ("late_events", "profiles_created", "profiles_updated", "users_forgotten",
                     "users_expired", "items_not_admitted"):
            self.metrics.inc(name, 0)
        for variant in cfg.recommend.variants:
            for trigger in ("event", "request"):
                self.metrics.inc("recommendations_emitted", 0,
                                 (("variant", variant), ("trigger", trigger)))
        # A/B impressions and feedback, per (metric, variant, kind): totals kept in checkpointed
        # state and published as gauges, so a replay after a failure does not count twice.
        self.ab_totals: dict[tuple[str, str, str], int] = {}
        self._publish_ab_totals()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------------------------ restore
    def restore(self, shared: dict[str, bytes], legacy: dict[str, dict[str, bytes]]) -> None:
        """Load the replicated model; migrate the catalogue of an earlier release."""
        self.model.restore(shared)
        for value in legacy.get(LEGACY_CATALOG_STATE, {}).values():
            self.model.upsert_item(legacy_catalog_record(value))
        self.ab_totals = decode_ab_totals(shared.get(f"{AB_TOTALS_PREFIX}{self.subtask}"))
        self._publish_ab_totals()

    def _publish_ab_totals(self) -> None:
        for variant in self.cfg.recommend.variants:
            for key in (("impressions", variant, "new"), ("feedback_events", variant, "click"),
                        ("feedback_events", variant, "purchase")):
                self.ab_totals.setdefault(key, 0)
        for (metric, variant, kind), n in self.ab_totals.items():
            self.metrics.set(metric, n, (("variant", variant), ("kind", kind)))

    def _count_ab(self, metric: str, n: int, variant: str, kind: str) -> None:
        key = (metric, variant, kind)
        total = self.ab_totals[key] = self.ab_totals.get(key, 0) + n
        self.metrics.set(metric, total, (("variant", variant), ("kind", kind)))

    # ------------------------------------------------------------------------ the batch
    def process(self, keys: Sequence[str], states: Sequence[Sequence[bytes | None]],
                records: Sequence[Record], proc_now: int, watermark: int,
                checkpoint: bool = False) -> BatchResult:
        out = BatchResult()
        self.model.items.tick()
        self.model.refresh(proc_now)
        activity: tuple[list, list, list, list, list] = ([], [], [], [], [])
        pairs: dict[str, tuple[list, list, list]] = {}
        for r in records:
            kind = r.kind
            try:
                if kind == rec.KIND_TIMER:
                    self._on_timer(keys, states, r, proc_now, out)
                elif kind == rec.KIND_CATALOG:
                    self._on_catalog(r, out)
                elif kind == rec.KIND_MODEL_UPDATE:
                    rows, popularity = rec.decode_model_update(r.payload)
                    self._apply_model_update(rows, popularity)
                else:
                    self._on_user_record(keys, states, r, proc_now, watermark, out, activity,
                                         pairs)
            except Exception as e:  # noqa: BLE001 - the boundary: no record fails the task
                self._internal_error(r, e, out, keys[r.key] if 0 <= r.key < len(keys) else None)
        if activity[0]:
            self.activity_seq += 1
            out.outputs.emit(rec.USER_OUT_ACTIVITY, rec.KIND_ACTIVITY, "",
                             rec.encode_activity(self.subtask, self.activity_seq, *activity))
        for row, (cols, deltas, ts) in pairs.items():
            out.outputs.emit(rec.USER_OUT_PAIRS, rec.KIND_PAIRS, row,
                             rec.encode_pairs(self.subtask, self.activity_seq, cols, deltas, ts))
        if self._grams:
            out.outputs.emit(rec.USER_OUT_PAIRS, rec.KIND_GRAM, rec.EASE_KEY,
                             rec.encode_gram(self._grams))
            self._grams = []
        for key in keys:  # the users this batch changed join the write-back queue
            if key not in self.dirty:
                slot = self.cache.get(key)
                if slot is not None and (slot.profile_dirty or slot.impressions_dirty):
                    self.dirty[key] = proc_now
        if checkpoint:
            self._write_back_dirty(out, None)
            out.shared.update(self.model.snapshot())
            out.shared[f"{AB_TOTALS_PREFIX}{self.subtask}"] = encode_ab_totals(self.ab_totals)
            for name, value in self.model.sizes().items():
                self.metrics.set(name, value)
            self.metrics.set("user_state_cached", len(self.cache))
        else:
            self._write_back_dirty(out, proc_now - self.cfg.profile.state_write_back_ms)
        while len(self.cache) > self.cfg.profile.state_cache_users:
            key, slot = self.cache.popitem(last=False)
            self._write_back(key, slot, out)
            self.dirty.pop(key, None)
        out.metrics = self.metrics.drain()
        return out

    def _write_back_dirty(self, out: BatchResult, changed_before: int | None) -> None:
        """Write the users changed before ``changed_before`` (all: None) to keyed state, the
        longest-changed first. Spread over the batches, so a checkpoint finds little left to
        write and does not stall the stream."""
        dirty = self.dirty
        while dirty:
            key, since = next(iter(dirty.items()))
            if changed_before is not None and since > changed_before:
                break
            del dirty[key]
            slot = self.cache.get(key)
            if slot is not None:
                self._write_back(key, slot, out)

    def _write_back(self, key: str, slot: _UserSlot, out: BatchResult) -> None:
        """Encode a changed user into keyed state. The exception boundary of write-back: a
        profile the codec refuses (a defect: validation should have kept its cause out) must
        not fail the task, which would fail again at every replay. The user's changes since the
        last write are dropped instead (the cached copy goes; the next record reloads the
        last good state), with a dead letter saying so and the internal_errors metric."""
        try:
            self._encode_user(key, slot, out)
        except Exception as e:  # noqa: BLE001 - the boundary
            self.cache.pop(key, None)
            self.dirty.pop(key, None)
            self.metrics.inc("internal_errors", 1, (("kind", "state_write"),))
            self._dead_letter(edge.dead_letter(
                b"", "internal:user_state", "internal_error",
                f"the user's state could not be encoded ({type(e).__name__}); its changes "
                "since the last write were dropped", self.now_ms(), self.cfg.validation),
                out, key)

    def _encode_user(self, key: str, slot: _UserSlot, out: BatchResult) -> None:
        if slot.profile_dirty:
            if not slot.stored:
                self.metrics.inc("profiles_created")
                slot.stored = True
            out.state_updates.append((key, STATE_PROFILE, encode_profile(slot.profile)))
            slot.profile_dirty = False
            ttl = self.cfg.profile.inactive_user_ttl_ms
            if ttl > 0:
                # The expiry check, a little after the TTL runs out. Rounded up to a quarter of
                # the TTL so that a busy user has at most five such timers pending (Flink keeps
                # one timer per key and time), not one per write.
                step = max(ttl // 4, 1000)
                due = (slot.profile.last_active_at or self.now_ms()) + ttl
                out.timers.append((key, -(-due // step) * step))
        if slot.impressions_dirty:
            out.state_updates.append((key, STATE_IMPRESSIONS, encode_impressions(slot.impressions)))
            slot.impressions_dirty = False

    # ------------------------------------------------------------------------ records
    def _parse(self, r: Record, out: BatchResult, dead_letter: bool = True,
               user_key: str | None = None) -> dict | None:
        topic = self.topic_of[r.kind]
        parsed = edge.parse_input(bytes(r.payload), _SCHEMA_KIND[r.kind], topic, self.now_ms(),
                                  self.cfg.validation, self.cfg.profile,
                                  self.cfg.recommend.default_k, self.cfg.recommend.max_k)
        if isinstance(parsed, edge.DeadLetter):
            if dead_letter:
                self._dead_letter(parsed, out, user_key)
            return None
        self.metrics.inc("records_accepted", 1, (("source_topic", topic),))
        return parsed

    def _internal_error(self, r: Record, error: Exception, out: BatchResult,
                        user_key: str | None) -> None:
        """A record the engine failed on, for whatever reason: a dead letter (reason
        ``internal_error``) instead of a failed task, which would restart and fail again on the
        same record. What the record had already changed stays (the user's profile may hold part
        of the event)."""
        self.metrics.inc("internal_errors", 1, (("kind", rec.KIND_NAMES.get(r.kind, "?")),))
        topic = self.topic_of.get(r.kind, f"internal:{rec.KIND_NAMES.get(r.kind, r.kind)}")
        raw = r.payload if r.kind in self.topic_of else b""
        self._dead_letter(edge.dead_letter(
            raw, topic, "internal_error",
            f"the engine failed on this record ({type(error).__name__}); it was not applied "
            "completely", self.now_ms(), self.cfg.validation), out, user_key)

    def _dead_letter(self, letter: edge.DeadLetter, out: BatchResult,
                     user_key: str | None = None) -> None:
        """Write a dead letter, keyed by the user it concerns (the routing key: pseudonymised
        when pseudonymisation is on) where one was read, else by its source topic. Its raw text
        loses email- and phone-shaped values, and with pseudonymisation on its user ids (or,
        if one cannot be replaced for sure, the whole raw text)."""
        raw = letter.raw
        if raw:
            raw = redact_personal_text(raw)
            if self.pseudonym_key is not None and letter.source_topic != self.cfg.topics.item_catalog:
                raw = pseudonymize_raw_user_ids(raw, self.pseudonym_key,
                                                self.cfg.privacy.pseudonym_hex_chars)
                if raw is None:
                    raw = ""
                    letter = dataclasses.replace(letter, raw_truncated=False, error=(
                        letter.error + " [raw text withheld: it may name a user id that "
                        "cannot be pseudonymised]"))
            letter = dataclasses.replace(letter, raw=raw)
        self.metrics.inc("dlq_records", 1, (("source_topic", letter.source_topic),
                                            ("reason", letter.reason)))
        out.outputs.emit(rec.USER_OUT_DLQ, 0, user_key or letter.source_topic,
                         orjson.dumps(letter.to_message()))

    def _slot(self, keys: Sequence[str], states, k: int) -> _UserSlot:
        key = keys[k]
        slot = self.cache.get(key)
        if slot is None:
            profile_blob, impressions_blob = states[k]
            forgotten_at = decode_forgotten(profile_blob) if profile_blob is not None else None
            if forgotten_at is not None:
                profile_blob = None
            slot = self.cache[key] = _UserSlot(None, None, profile_blob, impressions_blob,
                                               stored=profile_blob is not None,
                                               forgotten_at=forgotten_at)
        else:
            self.cache.move_to_end(key)
        return slot

    def _profile(self, slot: _UserSlot, user_id: str) -> UserProfile:
        if slot.profile is None:
            blob = slot.profile_blob
            slot.profile = decode_profile(blob) if blob is not None else UserProfile(user_id)
            if blob is not None and blob[:1] == b"\x80":
                slot.profile_dirty = True  # migrated from an earlier release: store as v3
            slot.profile_blob = None
        return slot.profile

    def _impressions(self, slot: _UserSlot) -> ImpressionLog:
        if slot.impressions is None:
            blob = slot.impressions_blob
            slot.impressions = (decode_impressions(blob) if blob is not None and blob[:2] == b"IL"
                                else ImpressionLog())
            slot.impressions_blob = None
        return slot.impressions

    def _on_user_record(self, keys, states, r: Record, proc_now: int, watermark: int,
                        out: BatchResult, activity, pairs) -> None:
        routing_key = keys[r.key] if r.key >= 0 else None
        parsed = self._parse(r, out, user_key=routing_key)
        if parsed is None:
            return
        user_id = parsed["user_id"]
        if self.pseudonym_key is not None:
            user_id = parsed["user_id"] = pseudonymize(user_id, self.pseudonym_key,
                                                       self.cfg.privacy.pseudonym_hex_chars)
        if r.key < 0 or user_id != keys[r.key]:
            # The routing key (read in Java) is not the user id parsed here: a JSON object that
            # names user_id twice. Processing it would touch another user's state.
            self._dead_letter(edge.dead_letter(
                r.payload, self.topic_of[r.kind], "invalid_field",
                "user_id is ambiguous (the record names it more than once)", self.now_ms(),
                self.cfg.validation), out, routing_key)
            return
        slot = self._slot(keys, states, r.key)
        if slot.forgotten_at is not None:
            if proc_now - slot.forgotten_at < self.cfg.privacy.forgotten_marker_ttl_ms:
                if r.kind != rec.KIND_PRIVACY:
                    # Erased: a late, replayed or new record must not bring anything back, and
                    # its payload (personal data) is not kept either.
                    self._dead_letter(edge.DeadLetter(
                        self.topic_of[r.kind], "", False,
                        "the user was erased; records for this user are not processed until "
                        "privacy.forgotten_marker_ttl_ms has passed", "forgotten_user",
                        self.now_ms()), out, routing_key)
                    return
            else:
                slot.forgotten_at = None  # expired: the user starts afresh
        if r.kind == rec.KIND_EVENT:
            self._on_event(slot, parsed, r, proc_now, watermark, out, activity, pairs)
        elif r.kind == rec.KIND_ATTRIBUTES:
            u = self._profile(slot, user_id)
            try:
                applied = self.step.apply_attributes(u, parsed["attributes"], parsed["ts"],
                                                     self.cfg.validation.max_attributes)
            except TooManyAttributes as e:
                self._dead_letter(edge.dead_letter(
                    edge.redacted_attributes_payload(bytes(r.payload), self.cfg.profile),
                    self.topic_of[r.kind], "attributes_limit", str(e), self.now_ms(),
                    self.cfg.validation), out, user_id)
                return
            if applied:
                self.metrics.inc("profiles_updated")
                u.last_active_at = proc_now
                slot.profile_dirty = True
                self._maybe_snapshot(slot, r.key, proc_now, out)
        elif r.kind == rec.KIND_REQUEST:
            u = self._profile(slot, user_id)
            if not u.last_active_at and self.cfg.profile.inactive_user_ttl_ms > 0:
                # A user known only by requests: their impression log (and the answer on the
                # compacted recommendations topic) expires like an inactive user, counted from
                # the first request (requests are not activity: they do not postpone it).
                u.last_active_at = proc_now
                slot.profile_dirty = True
            self._recommend(slot, u, parsed["ts"], parsed["k"], out, r.ingest_ms,
                            request_id=parsed["request_id"])
        elif r.kind == rec.KIND_PRIVACY:
            self._forget(slot, r.key, user_id, proc_now, out)

    def _on_event(self, slot: _UserSlot, event: dict, r: Record, proc_now: int, watermark: int,
                  out: BatchResult, activity, pairs) -> None:
        cfg = self.cfg
        u = self._profile(slot, event["user_id"])
        if not self.step.remember_event_id(u, event["event_id"], event["ts"]):
            self._dead_letter(edge.dead_letter(
                bytes(r.payload), cfg.topics.user_events, "duplicate_event",
                f"event_id {event['event_id']!r} was already processed within "
                f"{cfg.validation.dedup_window_ms} ms", self.now_ms(), cfg.validation), out,
                event["user_id"])
            return
        self.metrics.inc("events_in", 1, (("event_type", event["event_type"]),))
        if event["ts"] < watermark:
            self.metrics.inc("late_events")
        item_id = event["item_id"]
        info = self.model.info(item_id)
        outcome = self.step.apply_event(u, event, info)
        self.metrics.inc("profiles_updated")
        u.last_active_at = proc_now
        slot.profile_dirty = True
        frozen = 0 < cfg.similarity.freeze_item_model_at_ms <= event["ts"]
        catalogue_only = self.catalogue_only
        if catalogue_only and info is None:
            self.metrics.inc("items_not_admitted")
        elif not frozen:
            if outcome.weight > 0:
                activity[0].append(item_id)
                activity[1].append(outcome.weight)
                activity[2].append(outcome.occurrence_delta)
                activity[3].append(event["ts"])
                activity[4].append(demographic_segment(u.attributes))
            for row, col, delta in outcome.pairs:
                if catalogue_only and not self.model.in_catalogue(
                        col if row == item_id else row):
                    continue
                entry = pairs.get(row)
                if entry is None:
                    entry = pairs[row] = ([], [], [])
                entry[0].append(col)
                entry[1].append(delta)
                entry[2].append(event["ts"])
            if self.ease_on and (outcome.recent_added or outcome.recent_removed):
                added = outcome.recent_added
                self._gram_change([i for i in u.recent_ids if i != added],
                                  [added] if added else [], outcome.recent_removed)
        self._maybe_snapshot(slot, r.key, proc_now, out)
        log = self._impressions(slot)
        hit = attribute_feedback(log, id_hash(item_id), event["event_type"], event["ts"],
                                 cfg.recommend.feedback_window_ms)
        if hit is not None:
            slot.impressions_dirty = True
            self._count_ab("feedback_events", 1, hit[0], hit[1])
        if self.recommend_on_events:
            self._recommend(slot, u, event["ts"], cfg.recommend.default_k, out, r.ingest_ms,
                            trigger_event_id=event["event_id"])

    def _maybe_snapshot(self, slot: _UserSlot, key: int, proc_now: int, out: BatchResult) -> None:
        """A user-profiles record now, or at most once per interval (a timer sends the last)."""
        u = slot.profile
        due = self.step.snapshot_due(u, proc_now)
        if due is None:
            self._emit_snapshot(u, out)
        elif due >= 0:
            out.timers.append((key, due))

    def _on_timer(self, keys, states, r: Record, proc_now: int, out: BatchResult) -> None:
        slot = self._slot(keys, states, r.key)
        if slot.forgotten_at is not None:
            if r.ts >= slot.forgotten_at + self.cfg.privacy.forgotten_marker_ttl_ms:
                out.state_updates.append((r.key, STATE_PROFILE, None))  # the marker's expiry
                slot.forgotten_at = None
            return
        if slot.profile is None and slot.profile_blob is None:
            return
        u = self._profile(slot, keys[r.key])
        ttl = self.cfg.profile.inactive_user_ttl_ms
        if ttl > 0 and r.ts - (u.last_active_at or u.last_snapshot_at) >= ttl:
            self._erase(slot, r.key, u.user_id, out)
            self.metrics.inc("users_expired")
            return
        if u.snapshot_pending:
            u.last_snapshot_at = r.ts
            u.snapshot_pending = False
            slot.profile_dirty = True
            self._emit_snapshot(u, out)

    def _emit_snapshot(self, u: UserProfile, out: BatchResult) -> None:
        """The user-profiles record, unless it is larger than a Kafka message may be (the
        edge's limits make that unlikely; a failing sink would fail the task on every retry)."""
        message = orjson.dumps(self.step.snapshot(u, self.step.variant(u)))
        limit = self.cfg.kafka.max_message_bytes
        if len(message) > limit:
            self._dead_letter(edge.DeadLetter(
                self.cfg.topics.user_profiles, "", False,
                f"the profile snapshot is {len(message)} bytes; the limit is {limit} "
                "(kafka.max_message_bytes)", "snapshot_too_large", self.now_ms()), out, u.user_id)
            return
        out.outputs.emit(rec.USER_OUT_PROFILES, 0, u.user_id, message)

    def _forget(self, slot: _UserSlot, key: int, user_id: str, proc_now: int,
                out: BatchResult) -> None:
        """Right to be forgotten: erase the user, and keep a forgotten-user marker (with an
        expiry timer) in the profile's place. Repeating a forget repeats the tombstones and
        restarts the marker's time."""
        ttl = self.cfg.privacy.forgotten_marker_ttl_ms
        self._erase(slot, key, user_id, out, encode_forgotten(proc_now) if ttl > 0 else None)
        self.metrics.inc("users_forgotten")
        if ttl > 0:
            slot.forgotten_at = proc_now
            out.timers.append((key, proc_now + ttl))

    def _gram_change(self, kept: list[str], added: list[str], removed: list[str]) -> None:
        if self.catalogue_only:
            known = self.model.in_catalogue
            kept, added, removed = ([i for i in ids if known(i)] for ids in (kept, added, removed))
        if added or removed:
            self._grams.append((kept, added, removed))

    def _erase(self, slot: _UserSlot, key: int, user_id: str, out: BatchResult,
               profile_value: bytes | None = None) -> None:
        """Drop both states (the profile's may take ``profile_value``) and tombstone the
        compacted topics (forget, inactive-user expiry). The user's recent items leave EASE's
        Gram matrix too."""
        if self.ease_on and (slot.profile is not None or slot.profile_blob is not None):
            self._gram_change([], [], list(self._profile(slot, user_id).recent_ids))
        slot.profile = slot.impressions = None
        slot.profile_blob = slot.impressions_blob = None
        slot.profile_dirty = slot.impressions_dirty = False
        slot.stored = False
        self.dirty.pop(user_id, None)
        out.state_updates.append((key, STATE_PROFILE, profile_value))
        out.state_updates.append((key, STATE_IMPRESSIONS, None))
        out.outputs.emit(rec.USER_OUT_PROFILES, 0, user_id, None)
        out.outputs.emit(rec.USER_OUT_RECOMMENDATIONS, 0, user_id, None)

    def _recommend(self, slot: _UserSlot, u: UserProfile, event_ts: int, k: int,
                   out: BatchResult, ingest_ms: int, *, trigger_event_id: str | None = None,
                   request_id: str | None = None) -> None:
        cfg = self.cfg.recommend
        variant = self.step.variant(u)
        weights = cfg.variants.get(variant) or next(iter(cfg.variants.values()))
        now = max(event_ts, 0)
        ranked = self.recommend(u, variant, weights, k, now)
        if ranked.ids:
            log = self._impressions(slot)
            shown = record_impressions(log, ranked.hashes, variant, now,
                                       cfg.impressions_max, window_ms=cfg.feedback_window_ms)
            slot.impressions_dirty = True
            if shown:
                self._count_ab("impressions", shown, variant, "new")
        trigger = "request" if request_id is not None else "event"
        self.metrics.inc("recommendations_emitted", 1, (("variant", variant),
                                                        ("trigger", trigger)))
        emitted_at = self.now_ms()
        if ingest_ms:
            self.metrics.observe_latency(max(0, emitted_at - ingest_ms))
        if trigger_event_id is not None:
            self.metrics.set("event_time_lag_ms", emitted_at - event_ts)
        out.outputs.emit(rec.USER_OUT_RECOMMENDATIONS, 0, u.user_id, orjson.dumps({
            "schema_version": 1, "user_id": u.user_id, "request_id": request_id,
            "trigger_event_id": trigger_event_id, "generated_at": emitted_at,
            "event_ts": event_ts, "variant": variant,
            "items": [{"item_id": i, "score": round(s, 6), "reasons": r}
                      for i, s, r in zip(ranked.ids, ranked.scores, ranked.reasons)]}))

    def recommend(self, u: UserProfile, variant: str, weights, k: int,
                  now: int) -> Ranked:
        self.model.ready()
        return self.recommender.recommend(self.step.view(u, variant, self.model.items), weights,
                                          k, now)

    # ------------------------------------------------------------------------ broadcasts
    def _on_catalog(self, r: Record, out: BatchResult) -> None:
        # Every subtask sees every catalogue record; one of them speaks for the rejects.
        parsed = self._parse(r, out, dead_letter=self.subtask == 0)
        if parsed is not None:
            self.model.upsert_item(parsed)

    def _apply_model_update(self, rows: list, popularity: dict[str, Any] | None) -> None:
        import numpy as np

        for item_id, neighbor_ids, scores, source in rows:
            self.model.set_neighbors(item_id, neighbor_ids, scores, source)
        if popularity is not None:
            self.model.apply_popularity(
                popularity["landmark"], popularity["newest_ts"], popularity["ids"],
                np.asarray(popularity["pop"], dtype=np.float64), popularity["seg"],
                np.asarray(popularity["seg_item"], dtype=np.int64),
                np.asarray(popularity["seg_pop"], dtype=np.float64))
