"""Pure user-profile updates: decay, interests, counters, recent items, segments, snapshots.

The profile operator in ``flink_jobs`` reads a ``UserProfileState`` from keyed state, calls these
functions, and writes it back; nothing here knows about Flink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from recsys.config import DAY_MS, ProfileConfig, SimilarityConfig
from state_schemas.state import ItemInfo, RecentItem, UserProfileState

LN2 = math.log(2.0)


def decay_factor(elapsed_ms: float, half_life_ms: float) -> float:
    """2^(-elapsed/half_life): the weight left of a signal ``elapsed_ms`` old (1 if no decay)."""
    if half_life_ms <= 0 or elapsed_ms == 0:
        return 1.0
    return math.exp(-LN2 * elapsed_ms / half_life_ms)


def event_weight(event_type: str, value: float | None, cfg: ProfileConfig) -> float:
    """How strongly one event speaks for (positive) or against (negative) its item.

    A rating becomes ``rate_weight_scale * (rating - rate_neutral)``: with the defaults a 5 is
    +5, a 3 is +1 and a 1 is -3, so a poor rating pushes interests away like "not interested".
    """
    if event_type == "rate":
        return cfg.rate_weight_scale * ((value or 0.0) - cfg.rate_neutral)
    return cfg.event_weights.get(event_type, 0.0)


def update_interest_vector(interests: dict[str, float], interests_ts: int, features: Iterable[str],
                           weight: float, ts: int, half_life_ms: int,
                           max_features: int) -> tuple[dict[str, float], int]:
    """Add ``weight`` to each feature at time ``ts``, keeping every weight decayed to one time.

    The whole vector is stored decayed to ``interests_ts``; a newer event first decays the vector
    forward, an older (out-of-order) event is added already decayed, so arrival order does not
    change the result. Beyond ``max_features`` the feature with the smallest |weight| is evicted.
    """
    features = list(features)
    if not features or weight == 0.0:
        return interests, interests_ts
    if ts > interests_ts:
        factor = decay_factor(ts - interests_ts, half_life_ms)
        if factor != 1.0:
            interests = {f: w * factor for f, w in interests.items()}
        interests_ts = ts
        added = weight
    else:
        added = weight * decay_factor(interests_ts - ts, half_life_ms)
    per_feature = added / math.sqrt(len(features))  # an item with many tags does not dominate
    for f in features:
        interests[f] = interests.get(f, 0.0) + per_feature
    if len(interests) > max_features:
        keep = sorted(interests.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:max_features]
        interests = dict(keep)
    return interests, interests_ts


def interests_at(interests: Mapping[str, float], interests_ts: int, now_ms: int,
                 half_life_ms: int) -> dict[str, float]:
    """The interest vector decayed to ``now_ms`` (never decays backwards)."""
    factor = decay_factor(max(0, now_ms - interests_ts), half_life_ms)
    return {f: w * factor for f, w in interests.items()}


def day_start(ts: int) -> int:
    return ts - ts % DAY_MS


def update_counters(counts_all_time: dict[str, int], counts_by_day: dict[int, dict[str, int]],
                    event_type: str, ts: int, window_ms: int) -> None:
    """Count one event all-time and in its day bucket; drop buckets older than the window."""
    counts_all_time[event_type] = counts_all_time.get(event_type, 0) + 1
    bucket = counts_by_day.setdefault(day_start(ts), {})
    bucket[event_type] = bucket.get(event_type, 0) + 1
    newest = max(counts_by_day)
    for day in [d for d in counts_by_day if d <= newest - window_ms]:
        del counts_by_day[day]


def recent_counts(counts_by_day: Mapping[int, Mapping[str, int]], now_ms: int,
                  window_ms: int) -> dict[str, int]:
    """Events per type in the day buckets that overlap ``(now - window, now]``."""
    out: dict[str, int] = {}
    for day, bucket in counts_by_day.items():
        if day > now_ms - window_ms:
            for t, n in bucket.items():
                out[t] = out.get(t, 0) + n
    return out


def update_recent_items(recent: list[RecentItem], item_id: str, event_type: str, weight: float,
                        ts: int, max_items: int) -> tuple[list[RecentItem], float]:
    """Move ``item_id`` to the front, keeping its strongest action; return (list, old weight).

    The stored weight is the user's "rating" of the item (the max action weight so far), which
    the similarity updates use to count each user once per item (see ``pair_updates``).
    """
    old_weight, old_type, old_ts = 0.0, event_type, ts
    rest = []
    for r in recent:
        if r.item_id == item_id:
            old_weight, old_type, old_ts = r.weight, r.event_type, r.ts
        else:
            rest.append(r)
    latest = max(ts, old_ts)
    if weight > old_weight:
        entry = RecentItem(item_id, event_type, latest, weight)
    else:
        entry = RecentItem(item_id, old_type, latest, old_weight)
    return ([entry] + rest)[:max_items], old_weight


@dataclass(slots=True)
class PairUpdate:
    row: str
    col: str
    weight: float
    ts: int


def pair_updates(history: list[RecentItem], item_id: str, old_weight: float, new_weight: float,
                 ts: int, cfg: SimilarityConfig) -> tuple[float, list[PairUpdate]]:
    """Occurrence and co-occurrence increments caused by one interaction (TencentRec style).

    A user's rating of an item is its strongest action weight r. Item occurrence is
    N(i) = sum_u r_ui and co-occurrence C(i,j) = sum_u min(r_ui, r_uj), so when the rating of
    ``item_id`` rises from ``old_weight`` to ``new_weight`` the increments are exactly
    new - old and min(new, r_h) - min(old, r_h) for each history item h. Only the newest
    ``cfg.history_max_items`` items within ``cfg.history_window_ms`` pair up (hot-user bound:
    at most 2 * history_max_items pair updates per event). Both directions are emitted.
    """
    if new_weight <= old_weight or new_weight <= 0:
        return 0.0, []
    occurrence_delta = new_weight - max(old_weight, 0.0)
    updates: list[PairUpdate] = []
    taken = 0
    for h in history:
        if taken >= cfg.history_max_items:
            break
        if h.item_id == item_id or h.weight <= 0 or ts - h.ts > cfg.history_window_ms:
            continue
        taken += 1
        delta = min(new_weight, h.weight) - min(max(old_weight, 0.0), h.weight)
        if delta > 0:
            updates.append(PairUpdate(item_id, h.item_id, delta, ts))
            updates.append(PairUpdate(h.item_id, item_id, delta, ts))
    return occurrence_delta, updates


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


def activity_level(recent_total: int, cfg: ProfileConfig) -> str:
    if recent_total >= cfg.active_events_per_week:
        return "high"
    if recent_total >= cfg.casual_events_per_week:
        return "medium"
    return "low"


def price_level(amount_sum: float, priced_count: int, bounds: list[float]) -> str:
    """budget / mid / premium from the average price of purchases ('unknown' without any)."""
    if priced_count <= 0:
        return "unknown"
    avg = amount_sum / priced_count
    if avg < bounds[0]:
        return "budget"
    if avg < bounds[1]:
        return "mid"
    return "premium"


def lifecycle(first_seen: int | None, last_seen: int | None, now_ms: int, cfg: ProfileConfig) -> str:
    if first_seen is None or last_seen is None:
        return "new"
    if now_ms - last_seen > cfg.dormant_after_ms:
        return "dormant"
    if now_ms - first_seen <= cfg.new_user_age_ms:
        return "new"
    return "active"


@dataclass(slots=True)
class EventOutcome:
    """What one accepted event changed, for the operator to emit downstream."""
    duplicate: bool = False
    weight: float = 0.0
    occurrence_delta: float = 0.0
    pairs: list[PairUpdate] = field(default_factory=list)


def remember_event_id(p: UserProfileState, event_id: str, ts: int, window_ms: int,
                      max_ids: int) -> bool:
    """Record ``event_id``; False when it was already seen within the dedup window."""
    if event_id in p.seen_event_ids:
        return False
    p.seen_event_ids[event_id] = ts
    if len(p.seen_event_ids) > max_ids or (len(p.seen_event_ids) % 64 == 0):
        newest = max(p.seen_event_ids.values())
        kept = {e: t for e, t in p.seen_event_ids.items() if t > newest - window_ms}
        if len(kept) > max_ids:
            kept = dict(sorted(kept.items(), key=lambda kv: kv[1])[-max_ids:])
        p.seen_event_ids = kept
    return True


def apply_event(p: UserProfileState, event: Mapping[str, Any], item: ItemInfo | None,
                cfg: ProfileConfig, sim_cfg: SimilarityConfig) -> EventOutcome:
    """Fold one validated user event into the profile (dedup is the caller's job)."""
    ts = event["ts"]
    etype = event["event_type"]
    item_id = event["item_id"]
    weight = event_weight(etype, event.get("value"), cfg)
    update_counters(p.counts_all_time, p.counts_by_day, etype, ts, cfg.recent_window_ms)
    p.first_seen = ts if p.first_seen is None else min(p.first_seen, ts)
    p.last_seen = ts if p.last_seen is None else max(p.last_seen, ts)
    if item is not None:
        p.interests, p.interests_ts = update_interest_vector(
            p.interests, p.interests_ts, item.features(), weight, ts, cfg.interest_half_life_ms,
            cfg.interests_max)
    outcome = EventOutcome(weight=weight)
    if weight < 0:
        if item_id in p.not_interested:
            p.not_interested.remove(item_id)
        p.not_interested.insert(0, item_id)
        del p.not_interested[cfg.not_interested_max:]
        p.recent_items = [r for r in p.recent_items if r.item_id != item_id]
        return outcome
    if etype == "purchase" and item is not None and item.price is not None:
        p.purchase_amount_sum += item.price
        p.purchase_priced_count += 1
    if etype in cfg.consumed_event_types:
        p.consumed[item_id] = ts
        if len(p.consumed) > cfg.consumed_max:
            oldest = min(p.consumed, key=p.consumed.__getitem__)
            del p.consumed[oldest]
    history = p.recent_items
    p.recent_items, old_weight = update_recent_items(history, item_id, etype, weight, ts,
                                                     cfg.recent_items_max)
    outcome.occurrence_delta, outcome.pairs = pair_updates(
        history, item_id, old_weight, weight, ts, sim_cfg)
    return outcome


def apply_attributes(p: UserProfileState, attributes: Mapping[str, Any], ts: int) -> bool:
    """Merge newer attributes (a null value removes the attribute); False if ``ts`` is older."""
    if ts < p.attributes_ts:
        return False
    merged = dict(p.attributes)
    for k, v in attributes.items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = v
    p.attributes = merged
    p.attributes_ts = ts
    return True


def profile_snapshot(p: UserProfileState, now_ms: int, cfg: ProfileConfig,
                     variant: str | None = None) -> dict[str, Any]:
    """The ``user-profiles`` message (state_schemas/json/user-profile.v1.json) at ``now_ms``.

    ``now_ms`` is event time (the newest event seen), so replays produce the same snapshots.
    """
    recent = recent_counts(p.counts_by_day, now_ms, cfg.recent_window_ms)
    interests = interests_at(p.interests, p.interests_ts, now_ms, cfg.interest_half_life_ms)
    snapshot = {
        "schema_version": 1,
        "user_id": p.user_id,
        "updated_at": now_ms,
        "attributes": dict(p.attributes),
        "counters": {"all_time": dict(p.counts_all_time), "recent": recent},
        "interests": {f: round(w, 6) for f, w in sorted(interests.items(), key=lambda kv: -kv[1])},
        "recent_items": [{"item_id": r.item_id, "event_type": r.event_type, "ts": r.ts}
                         for r in p.recent_items],
        "not_interested": list(p.not_interested),
        "first_seen": p.first_seen,
        "last_seen": p.last_seen,
        "segments": {
            "activity": activity_level(sum(recent.values()), cfg),
            "price_level": price_level(p.purchase_amount_sum, p.purchase_priced_count,
                                       cfg.price_level_bounds),
            "lifecycle": lifecycle(p.first_seen, p.last_seen, now_ms, cfg),
            "demographic": demographic_segment(p.attributes),
        },
    }
    if variant is not None:
        snapshot["variant"] = variant
    return snapshot
