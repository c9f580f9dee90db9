"""The profile step: every rule that folds a user's records into their profile.

:class:`ProfileStep` works on a :class:`state_schemas.profile_state.UserProfile` (decoded from
keyed state by the caller) and returns what the event changed for the rest of the engine: the
item activity (popularity, occurrence) and the co-occurrence pair updates. It owns the dedup
window, counters, interest decay (``udfs/decay.py``), recent/consumed/"not interested" items,
segments, the sticky A/B variant, the snapshot rate limit and the snapshot message. Nothing here
knows about Flink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from state_schemas.config import DAY_MS, EVENT_TYPES, EngineConfig
from state_schemas.ids import id_hash
from state_schemas.profile_state import N_TYPES, TYPE_CODE, UserProfile
from udfs.ab import assign_variant
from udfs.decay import MAX_EXPONENT, REBASE_AFTER, forward_exponent
from udfs.items import NO_CODE, ItemTable
from udfs.model import item_features
from udfs.recommend import UserView

MINUTE_MS = 60_000


class TooManyAttributes(ValueError):
    """An attributes record would leave the profile with more than the configured number."""


@dataclass(slots=True)
class EventOutcome:
    """What one accepted event changed, for the item side of the engine."""
    weight: float = 0.0            # action weight (<= 0: no popularity, no pairs)
    occurrence_delta: float = 0.0  # increase of the user's rating of the item
    pairs: list[tuple[str, str, float]] = field(default_factory=list)  # (row, col, delta)
    # How the recent-item set changed (EASE's Gram matrix counts users' recent-item sets).
    recent_added: str | None = None
    recent_removed: list[str] = field(default_factory=list)


def age_band(age: Any) -> str | None:
    if not isinstance(age, (int, float)) or isinstance(age, bool):
        return None
    for upper, label in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (55, "45-54")):
        if age < upper:
            return label
    return "55+"


def demographic_segment(attributes: Mapping[str, Any]) -> str:
    """A coarse segment key such as ``age:25-34|gender:F`` ('' when nothing is known)."""
    parts = []
    band = age_band(attributes.get("age"))
    if band:
        parts.append(f"age:{band}")
    gender = attributes.get("gender")
    if isinstance(gender, str) and gender:
        parts.append(f"gender:{gender}")
    return "|".join(parts)


class ProfileStep:
    """The rules of the profile, configured once (see the module docstring)."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        p = cfg.profile
        self.p = p
        self.sim = cfg.similarity
        self._binary_pairs = self.sim.pair_weights == "binary"
        # the weight of the pair with the k-th newest history item (all 1.0 without a half-life)
        h = self.sim.pair_half_life_items
        self._pair_fades = [2.0 ** (-k / h) if h > 0 else 1.0
                            for k in range(self.sim.history_max_items)]
        self.type_weight = [p.event_weights.get(t, 0.0) for t in EVENT_TYPES]
        self.consumed_types = {TYPE_CODE[t] for t in p.consumed_event_types if t in TYPE_CODE}
        self.rate = TYPE_CODE["rate"]
        self.purchase = TYPE_CODE["purchase"]
        self.dedup_window_min = -(-cfg.validation.dedup_window_ms // MINUTE_MS)

    # ------------------------------------------------------------------------ dedup
    def remember_event_id(self, u: UserProfile, event_id: str, ts: int) -> bool:
        """Record ``event_id``; False when it was already seen within the dedup window.

        Ids are remembered as 48-bit hashes with the minute of their event (an id is remembered
        up to a minute longer than the window), at most ``dedup_max_ids_per_user`` of them (when
        there are more, the oldest go until 7/8 of that bound are left).
        """
        h = id_hash(event_id) >> 16
        minute = ts // MINUTE_MS
        seen = u.dedup
        old = seen.get(h)
        if old is not None and old >= u.dedup_base_minute - self.dedup_window_min:
            return False
        seen[h] = minute
        if minute > u.dedup_base_minute:
            u.dedup_base_minute = minute
        limit = self.cfg.validation.dedup_max_ids_per_user
        if len(seen) > limit or not len(seen) & 255:
            oldest = u.dedup_base_minute - self.dedup_window_min
            kept = {e: m for e, m in seen.items() if m >= oldest}
            if len(kept) > limit:  # the oldest go first, down to 7/8 of the limit so that the
                keep = limit - limit // 8  # next inserts do not each pay for a pruning pass
                kept = dict(sorted(kept.items(), key=lambda em: em[1])[-keep:])
            u.dedup = kept
        return True

    # ------------------------------------------------------------------------ events
    def event_weight(self, type_code: int, value: float | None) -> float:
        """How strongly one event speaks for (positive) or against (negative) its item: a rating
        ``r`` weighs ``rate_weight_scale * (r - rate_neutral)``."""
        if type_code == self.rate:
            return self.p.rate_weight_scale * ((value or 0.0) - self.p.rate_neutral)
        return self.type_weight[type_code]

    def apply_event(self, u: UserProfile, event: Mapping[str, Any],
                    item: tuple[Sequence[str], Sequence[str], float | None] | None
                    ) -> EventOutcome:
        """Fold one validated, deduplicated event into the profile.

        ``item`` is the catalogue's (categories, tags, price) of the event's item, or None.
        """
        p = self.p
        ts = event["ts"]
        t = TYPE_CODE[event["event_type"]]
        item_id = event["item_id"]
        weight = self.event_weight(t, event.get("value"))
        self._count(u, t, ts)
        u.first_seen = ts if u.first_seen is None else min(u.first_seen, ts)
        u.last_seen = ts if u.last_seen is None else max(u.last_seen, ts)
        if item is not None:
            self._update_interests(u, item_features(item[0], item[1]), weight, ts)
        outcome = EventOutcome(weight=weight)
        if weight < 0:
            if item_id in u.not_interested:
                u.not_interested.remove(item_id)
            u.not_interested.insert(0, item_id)
            del u.not_interested[p.not_interested_max:]
            if item_id in u.recent_ids:
                self._drop_recent(u, u.recent_ids.index(item_id))
                outcome.recent_removed.append(item_id)
            return outcome
        if t == self.purchase and item is not None and item[2] is not None:
            u.purchase_amount_sum += item[2]
            u.purchase_priced_count += 1
        if t in self.consumed_types:
            self._consume(u, item_id)
        was_recent = item_id in u.recent_ids
        old_weight = self._update_recent(u, item_id, t, weight, ts, outcome.recent_removed)
        if not was_recent:
            outcome.recent_added = item_id
        outcome.occurrence_delta, outcome.pairs = self._pairs(u, item_id, old_weight, weight, ts)
        return outcome

    def _count(self, u: UserProfile, t: int, ts: int) -> None:
        u.counts_all_time[t] += 1
        day = ts // DAY_MS
        bucket = u.counts_by_day.get(day)
        if bucket is None:  # a new day: drop the buckets that left the window
            bucket = u.counts_by_day[day] = [0] * N_TYPES
            limit = max(u.counts_by_day) * DAY_MS - self.p.recent_window_ms
            for d in [d for d in u.counts_by_day if d * DAY_MS <= limit]:
                del u.counts_by_day[d]
            if day not in u.counts_by_day:
                return
        bucket[t] += 1

    def _update_interests(self, u: UserProfile, features: tuple[str, ...], weight: float,
                          ts: int) -> None:
        """Add ``weight`` to each feature at ``ts``, forward-decayed: the event adds
        ``weight * 2^((ts - landmark) / half_life)``, so no other weight changes and arrival order
        does not matter. The landmark moves (every weight rescaled) before the numbers could
        grow past 2^64. Beyond ``interests_max`` the smallest |weight| is evicted."""
        if not features or weight == 0.0:
            return
        if u.interests_prepared is not None:
            u.interests_prepared[0] = None
        half_life = self.p.interest_half_life_ms
        interests = u.interests
        if not interests:
            u.interests_landmark = ts
        exponent = forward_exponent(ts, u.interests_landmark, half_life)
        if exponent > REBASE_AFTER:
            factor = 2.0 ** -exponent
            interests = u.interests = {f: w * factor for f, w in interests.items()}
            u.interests_landmark = ts
            exponent = 0.0
        per_feature = weight * 2.0 ** max(exponent, -MAX_EXPONENT) / math.sqrt(len(features))
        for f in features:
            interests[f] = interests.get(f, 0.0) + per_feature
        if len(interests) > self.p.interests_max:
            keep = sorted(interests.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
            u.interests = dict(keep[:self.p.interests_max])

    def decay_to(self, u: UserProfile, now_ms: int) -> float:
        """The factor turning the stored (forward-decayed) interest weights into their values
        at ``now_ms``."""
        exponent = forward_exponent(now_ms, u.interests_landmark, self.p.interest_half_life_ms)
        return 2.0 ** -min(max(exponent, -MAX_EXPONENT), MAX_EXPONENT)

    def interests_at(self, u: UserProfile, now_ms: int) -> dict[str, float]:
        """The interest weights decayed to ``now_ms``."""
        factor = self.decay_to(u, now_ms)
        return {f: w * factor for f, w in u.interests.items()}

    def _consume(self, u: UserProfile, item_id: str) -> None:
        h = id_hash(item_id)
        consumed = u.consumed
        if h in consumed:
            del consumed[h]  # re-inserted at the end: the most recently consumed
        elif len(consumed) >= self.p.consumed_max:  # the least recently consumed goes
            del consumed[next(iter(consumed))]
        consumed[h] = None
        u.consumed_sorted = None

    def consumed_sorted(self, u: UserProfile) -> np.ndarray:
        """The consumed item hashes, sorted (cached until they change)."""
        if u.consumed_sorted is None:
            a = np.fromiter(u.consumed, dtype=np.uint64, count=len(u.consumed))
            a.sort()
            u.consumed_sorted = a
        return u.consumed_sorted

    def _drop_recent(self, u: UserProfile, i: int) -> None:
        del u.recent_ids[i], u.recent_types[i], u.recent_ts[i], u.recent_weights[i]
        if u.recent_codes is not None:
            del u.recent_codes[i]

    def _update_recent(self, u: UserProfile, item_id: str, t: int, weight: float,
                       ts: int, evicted: list[str]) -> float:
        """Move the item to the front keeping its strongest action; the old weight (0 if new).
        Items pushed out of the list are appended to ``evicted``.

        The stored weight is the user's "rating" of the item (max action weight so far)."""
        old_weight, old_type, old_ts = 0.0, t, ts
        if item_id in u.recent_ids:
            i = u.recent_ids.index(item_id)
            old_weight, old_type, old_ts = u.recent_weights[i], u.recent_types[i], u.recent_ts[i]
            self._drop_recent(u, i)
        latest = max(ts, old_ts)
        if weight > old_weight:
            entry_type, entry_weight = t, weight
        else:
            entry_type, entry_weight = old_type, old_weight
        u.recent_ids.insert(0, item_id)
        u.recent_types.insert(0, entry_type)
        u.recent_ts.insert(0, latest)
        u.recent_weights.insert(0, entry_weight)
        if u.recent_codes is not None:
            u.recent_codes.insert(0, NO_CODE)  # looked up by recent_item_codes
        n = self.p.recent_items_max
        if len(u.recent_ids) > n:
            evicted.extend(u.recent_ids[n:])
            del u.recent_ids[n:], u.recent_types[n:], u.recent_ts[n:], u.recent_weights[n:]
            if u.recent_codes is not None:
                del u.recent_codes[n:]
        return old_weight

    def _pairs(self, u: UserProfile, item_id: str, old_weight: float, new_weight: float,
               ts: int) -> tuple[float, list[tuple[str, str, float]]]:
        """Occurrence and co-occurrence increments of one interaction (TencentRec counting).

        A user's rating of an item is its strongest action weight r; N(i) = sum_u r_ui and
        C(i, j) = sum_u min(r_ui, r_uj), so when the rating of ``item_id`` rises from old to new
        the increments are new - old and min(new, r_h) - min(old, r_h) for each history item h:
        the user's newest ``history_max_items`` other items within ``history_window_ms`` (the
        hot-user bound). Both directions are returned. ``similarity.pair_weights = "binary"``
        counts every positive weight as 1 (an item counts once, when it first turns positive);
        ``similarity.pair_half_life_items`` fades the pair with the k-th of those items by
        2^(-k / h).
        """
        if new_weight <= old_weight or new_weight <= 0:
            return 0.0, []
        old = max(old_weight, 0.0)
        binary = self._binary_pairs
        if binary:
            if old > 0:
                return 0.0, []
            new_weight = 1.0
        pairs: list[tuple[str, str, float]] = []
        taken = 0
        window = self.sim.history_window_ms
        limit = self.sim.history_max_items
        fades = self._pair_fades
        for h_id, h_ts, h_w in zip(u.recent_ids, u.recent_ts, u.recent_weights):
            if taken >= limit:
                break
            if h_id == item_id or h_w <= 0 or ts - h_ts > window:
                continue
            # binary: both items count 1, and this one was 0 before
            delta = fades[taken] * (1.0 if binary else min(new_weight, h_w) - min(old, h_w))
            taken += 1
            if delta > 0:
                pairs.append((item_id, h_id, delta))
                pairs.append((h_id, item_id, delta))
        return new_weight - old, pairs

    # ------------------------------------------------------------------------ attributes
    @staticmethod
    def apply_attributes(u: UserProfile, attributes: Mapping[str, Any], ts: int,
                         limit: int | None = None) -> bool:
        """Merge newer attributes (a null value removes one); False if ``ts`` is older.
        Raises ``TooManyAttributes`` (the profile unchanged) if the merge would leave more
        than ``limit`` attributes."""
        if ts < u.attributes_ts:
            return False
        merged = dict(u.attributes)
        for k, v in attributes.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        if limit is not None and len(merged) > limit:
            raise TooManyAttributes(f"the user would have more than {limit} attributes")
        u.attributes = merged
        u.attributes_ts = ts
        return True

    # ------------------------------------------------------------------------ A/B, views
    def variant(self, u: UserProfile) -> str:
        """The user's A/B variant: assigned once and kept while the experiment salt stays."""
        rc = self.cfg.recommend
        if u.variant_salt != rc.experiment_salt or u.variant not in rc.variants:
            u.variant = assign_variant(u.user_id, rc.experiment_salt, rc.variants)
            u.variant_salt = rc.experiment_salt
        return u.variant

    @staticmethod
    def recent_item_codes(u: UserProfile, items: ItemTable) -> np.ndarray:
        """The recent items' codes in ``items``, kept with the profile: only the entries that
        were unknown are looked up again (all of them after an eviction reused codes)."""
        codes = u.recent_codes
        if codes is None or u.codes_epoch != items.epoch or len(codes) != len(u.recent_ids):
            codes = u.recent_codes = [NO_CODE] * len(u.recent_ids)
            u.codes_epoch = items.epoch
        get = items.get
        for i, c in enumerate(codes):
            if c == NO_CODE:
                codes[i] = get(u.recent_ids[i])
        return np.array(codes, dtype=np.int32)

    def view(self, u: UserProfile, variant: str, items: ItemTable) -> UserView:
        """What the recommender needs of the profile (interests at any common scale)."""
        if u.interests_prepared is None:
            u.interests_prepared = [None]
        return UserView(u.user_id, u.recent_ids, self.recent_item_codes(u, items),
                        u.recent_types, u.recent_ts, u.recent_weights, u.interests,
                        self.consumed_sorted(u), u.not_interested,
                        demographic_segment(u.attributes), variant, u.interests_prepared)

    # ------------------------------------------------------------------------ snapshots
    def snapshot_due(self, u: UserProfile, proc_now: int) -> int | None:
        """Rate limit of ``user-profiles`` records: None to emit now (and the profile records
        it), else the processing time of the trailing snapshot to schedule (only once)."""
        interval = self.p.snapshot_min_interval_ms
        if proc_now - u.last_snapshot_at >= interval:
            u.last_snapshot_at = proc_now
            u.snapshot_pending = False
            return None
        if u.snapshot_pending:
            return -1  # a trailing snapshot is already scheduled
        u.snapshot_pending = True
        return u.last_snapshot_at + interval

    def snapshot(self, u: UserProfile, variant: str | None = None) -> dict[str, Any]:
        """The ``user-profiles`` message (``user-profile.v1.json``) at the profile's own time
        (the newest event or attributes seen), so replays produce the same snapshots."""
        now = max(u.last_seen or 0, u.attributes_ts)
        recent = self.recent_counts(u, now)
        names = list(u.interests)
        weights = np.fromiter(u.interests.values(), dtype=np.float64, count=len(names))
        weights *= self.decay_to(u, now)
        order = np.argsort(-weights, kind="stable").tolist()
        rounded = np.round(weights, 6).tolist()
        snapshot = {
            "schema_version": 1,
            "user_id": u.user_id,
            "updated_at": now,
            "attributes": dict(u.attributes),
            "counters": {"all_time": {EVENT_TYPES[t]: n for t, n in enumerate(u.counts_all_time)
                                      if n},
                         "recent": recent},
            "interests": {names[i]: rounded[i] for i in order},
            "recent_items": [{"item_id": i, "event_type": EVENT_TYPES[t], "ts": ts}
                             for i, t, ts in zip(u.recent_ids, u.recent_types, u.recent_ts)],
            "not_interested": list(u.not_interested),
            "first_seen": u.first_seen,
            "last_seen": u.last_seen,
            "segments": {
                "activity": self.activity_level(sum(recent.values())),
                "price_level": self.price_level(u),
                "lifecycle": self.lifecycle(u, now),
                "demographic": demographic_segment(u.attributes),
            },
        }
        if variant is not None:
            snapshot["variant"] = variant
        return snapshot

    def recent_counts(self, u: UserProfile, now_ms: int) -> dict[str, int]:
        """Events per type in the day buckets that overlap ``(now - window, now]``."""
        totals = [0] * N_TYPES
        for day, bucket in u.counts_by_day.items():
            if day * DAY_MS > now_ms - self.p.recent_window_ms:
                for t, n in enumerate(bucket):
                    totals[t] += n
        return {EVENT_TYPES[t]: n for t, n in enumerate(totals) if n}

    def activity_level(self, recent_total: int) -> str:
        if recent_total >= self.p.active_events_per_week:
            return "high"
        if recent_total >= self.p.casual_events_per_week:
            return "medium"
        return "low"

    def price_level(self, u: UserProfile) -> str:
        """budget / mid / premium from the average purchase price ('unknown' without any)."""
        if u.purchase_priced_count <= 0:
            return "unknown"
        avg = u.purchase_amount_sum / u.purchase_priced_count
        bounds = self.p.price_level_bounds
        if avg < bounds[0]:
            return "budget"
        if avg < bounds[1]:
            return "mid"
        return "premium"

    def lifecycle(self, u: UserProfile, now_ms: int) -> str:
        if u.first_seen is None or u.last_seen is None:
            return "new"
        if now_ms - u.last_seen > self.p.dormant_after_ms:
            return "dormant"
        if now_ms - u.first_seen <= self.p.new_user_age_ms:
            return "new"
        return "active"
