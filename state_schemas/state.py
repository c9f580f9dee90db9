"""Versioned schemas of the job's keyed and broadcast state.

State is stored in Flink as plain, pickled Python containers (dicts, lists, tuples, str, int,
float) — never as pickled instances of project classes — so that renaming or moving a class can
never make a checkpoint unreadable. Each state value carries ``"v"`` (its schema version); code
reads it through ``*_from_state`` (which migrates older versions forward) and writes it through
``*_to_state``. Bump the version and add a migration step whenever a field changes meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# v1: first release. v2: counts_by_day is a dict keyed by day start (was a list of pairs), and
# the A/B variant is stored (sticky per experiment salt). See _migrate_user_profile_v1.
USER_PROFILE_STATE_VERSION = 2
ITEM_ROW_STATE_VERSION = 1
ITEM_INFO_STATE_VERSION = 1


class StateVersionError(ValueError):
    pass


@dataclass(slots=True)
class ItemInfo:
    """Catalogue entry of one item (broadcast state of the profile and recommendation operators)."""
    item_id: str
    title: str
    categories: tuple[str, ...]
    tags: tuple[str, ...]
    price: float | None
    available: bool
    updated_at: int

    # features() without repeats, built on first use: the recommender scores ~750 candidates
    # per call and rebuilding these strings each time was a fifth of its cost.
    _feature_set: tuple[str, ...] | None = field(default=None, init=False, repr=False,
                                                 compare=False)

    def features(self) -> tuple[str, ...]:
        """Interest features of the item: ``category:<c>`` and ``tag:<t>``."""
        return tuple(f"category:{c}" for c in self.categories) + tuple(f"tag:{t}" for t in self.tags)

    def feature_set(self) -> tuple[str, ...]:
        """``features()`` with repeats removed, in first-seen order (cached: treat an ItemInfo
        as immutable once built; catalogue updates make a new one)."""
        if self._feature_set is None:
            self._feature_set = tuple(dict.fromkeys(self.features()))
        return self._feature_set


def item_info_to_state(info: ItemInfo) -> tuple:
    return (ITEM_INFO_STATE_VERSION, info.item_id, info.title, info.categories, info.tags,
            info.price, info.available, info.updated_at)


def item_info_from_state(state: tuple) -> ItemInfo:
    if state[0] != ITEM_INFO_STATE_VERSION:
        raise StateVersionError(f"item info state version {state[0]} is not supported")
    _, item_id, title, categories, tags, price, available, updated_at = state
    return ItemInfo(item_id, title, tuple(categories), tuple(tags), price, available, updated_at)


@dataclass(slots=True)
class RecentItem:
    """One item the user interacted with; one entry per item, newest interaction first."""
    item_id: str
    event_type: str  # the strongest action the user took on the item
    ts: int          # time of the latest interaction with the item
    weight: float    # the action weight of event_type (config.profile.event_weights)


@dataclass(slots=True)
class UserProfileState:
    """Everything the job keeps per user (keyed by user_id in the profile operator)."""
    user_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    attributes_ts: int = 0
    counts_all_time: dict[str, int] = field(default_factory=dict)
    # Day buckets {day_start_ms: {event_type: n}}, pruned to the recent window.
    counts_by_day: dict[int, dict[str, int]] = field(default_factory=dict)
    # Interest weights decayed to interests_ts (feature -> weight).
    interests: dict[str, float] = field(default_factory=dict)
    interests_ts: int = 0
    recent_items: list[RecentItem] = field(default_factory=list)
    not_interested: list[str] = field(default_factory=list)  # newest first, bounded
    consumed: dict[str, int] = field(default_factory=dict)   # item -> last ts, bounded
    first_seen: int | None = None
    last_seen: int | None = None
    purchase_amount_sum: float = 0.0
    purchase_priced_count: int = 0
    seen_event_ids: dict[str, int] = field(default_factory=dict)  # dedup window: event_id -> ts
    last_snapshot_at: int = 0  # processing time of the last user-profiles record
    snapshot_pending: bool = False
    # A/B assignment, kept while the experiment salt is unchanged so that a change of traffic
    # shares does not move users already in the experiment to another variant.
    variant: str | None = None
    variant_salt: str | None = None


def user_profile_to_state(p: UserProfileState) -> dict[str, Any]:
    return {
        "v": USER_PROFILE_STATE_VERSION,
        "user_id": p.user_id,
        "attributes": p.attributes,
        "attributes_ts": p.attributes_ts,
        "counts_all_time": p.counts_all_time,
        "counts_by_day": p.counts_by_day,
        "interests": p.interests,
        "interests_ts": p.interests_ts,
        "recent_items": [(r.item_id, r.event_type, r.ts, r.weight) for r in p.recent_items],
        "not_interested": p.not_interested,
        "consumed": p.consumed,
        "first_seen": p.first_seen,
        "last_seen": p.last_seen,
        "purchase_amount_sum": p.purchase_amount_sum,
        "purchase_priced_count": p.purchase_priced_count,
        "seen_event_ids": p.seen_event_ids,
        "last_snapshot_at": p.last_snapshot_at,
        "snapshot_pending": p.snapshot_pending,
        "variant": p.variant,
        "variant_salt": p.variant_salt,
    }


def _migrate_user_profile_v1(state: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2: day buckets become a dict; no variant stored yet (assigned on next use)."""
    out = dict(state)
    out["counts_by_day"] = {int(day): dict(bucket) for day, bucket in state["counts_by_day"]}
    out["variant"] = None
    out["variant_salt"] = None
    out["v"] = 2
    return out


# Migrations: each takes the state dict of version N and returns version N+1.
_USER_PROFILE_MIGRATIONS: dict[int, Any] = {1: _migrate_user_profile_v1}


def user_profile_from_state(state: dict[str, Any]) -> UserProfileState:
    version = state.get("v")
    if not isinstance(version, int) or version > USER_PROFILE_STATE_VERSION or version < 1:
        raise StateVersionError(f"user profile state version {version!r} is not supported "
                                f"(this code reads up to {USER_PROFILE_STATE_VERSION})")
    while version < USER_PROFILE_STATE_VERSION:
        state = _USER_PROFILE_MIGRATIONS[version](state)
        version = state["v"]
    return UserProfileState(
        user_id=state["user_id"],
        attributes=state["attributes"],
        attributes_ts=state["attributes_ts"],
        counts_all_time=state["counts_all_time"],
        counts_by_day=state["counts_by_day"],
        interests=state["interests"],
        interests_ts=state["interests_ts"],
        recent_items=[RecentItem(*r) for r in state["recent_items"]],
        not_interested=list(state["not_interested"]),
        consumed=state["consumed"],
        first_seen=state["first_seen"],
        last_seen=state["last_seen"],
        purchase_amount_sum=state["purchase_amount_sum"],
        purchase_priced_count=state["purchase_priced_count"],
        seen_event_ids=state["seen_event_ids"],
        last_snapshot_at=state["last_snapshot_at"],
        snapshot_pending=state["snapshot_pending"],
        variant=state["variant"],
        variant_salt=state["variant_salt"],
    )
