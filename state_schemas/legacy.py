"""State written by releases before the micro-batch engine, read once and migrated.

Those releases stored state as pickled plain containers (never pickled project classes):

* the user profile (keyed state ``user-profile`` of operator ``profiles``): a dict with ``"v"``
  1 or 2 (v1 -> v2: day buckets became a dict, the A/B variant was stored);
* the catalogue (broadcast state ``catalog`` of the same operator): per item a tuple
  ``(1, item_id, title, categories, tags, price, available, updated_at)``.

A savepoint of such a release restores into this code: :func:`state_schemas.profile_state.
decode_profile` recognises a pickle and calls :func:`profile_from_v2`; the user operator reads the
old catalogue once at start (``legacy_catalog_record``). Nothing writes these formats any more.
"""

from __future__ import annotations

import pickle
from typing import Any

from state_schemas.config import DAY_MS, EVENT_TYPES

LEGACY_PROFILE_VERSION = 2
LEGACY_CATALOG_STATE = "catalog"


def migrate_profile_dict(state: dict[str, Any]) -> dict[str, Any]:
    """A v1 or v2 profile dict as v2."""
    from state_schemas.versioning import StateVersionError

    version = state.get("v") if isinstance(state, dict) else None
    if version not in (1, 2):
        raise StateVersionError(f"user profile state version {version!r} is not supported")
    if version == 1:
        state = dict(state)
        state["counts_by_day"] = {int(day): dict(bucket) for day, bucket in state["counts_by_day"]}
        state["variant"] = None
        state["variant_salt"] = None
        state["v"] = 2
    return state


def profile_from_v2(state: dict[str, Any]):
    """The v3 profile holding what a v2 dict held (dedup ids rehashed, consumed items hashed)."""
    from state_schemas.profile_state import N_TYPES, TYPE_CODE, UserProfile
    from state_schemas.ids import id_hash as item_hash

    def counts(d: dict[str, int]) -> list[int]:
        row = [0] * N_TYPES
        for t, n in d.items():
            if t in TYPE_CODE:
                row[TYPE_CODE[t]] = int(n)
        return row

    recent = [tuple(r) for r in state["recent_items"]]
    consumed = sorted(state["consumed"].items(), key=lambda kv: kv[1])  # oldest first
    seen = state["seen_event_ids"]
    newest_minute = max(seen.values()) // 60_000 if seen else 0
    dedup = {item_hash(e) >> 16: t // 60_000 for e, t in seen.items()}
    return UserProfile(
        user_id=state["user_id"],
        attributes=dict(state["attributes"]),
        attributes_ts=int(state["attributes_ts"]),
        counts_all_time=counts(state["counts_all_time"]),
        counts_by_day={int(day) // DAY_MS: counts(b) for day, b in state["counts_by_day"].items()},
        interests=dict(state["interests"]),  # decayed to interests_ts: the same as forward
        interests_landmark=int(state["interests_ts"]),  # decay with it as the landmark
        recent_ids=[r[0] for r in recent],
        recent_types=[TYPE_CODE.get(r[1], 0) for r in recent],
        recent_ts=[int(r[2]) for r in recent],
        recent_weights=[float(r[3]) for r in recent],
        not_interested=list(state["not_interested"]),
        consumed=dict.fromkeys(item_hash(i) for i, _ in consumed),
        first_seen=state["first_seen"],
        last_seen=state["last_seen"],
        purchase_amount_sum=float(state["purchase_amount_sum"]),
        purchase_priced_count=int(state["purchase_priced_count"]),
        dedup=dedup,
        dedup_base_minute=newest_minute,
        last_snapshot_at=int(state["last_snapshot_at"]),
        snapshot_pending=bool(state["snapshot_pending"]),
        variant=state.get("variant"),
        variant_salt=state.get("variant_salt"),
    )


def legacy_catalog_record(value: bytes) -> dict[str, Any]:
    """An entry of the old ``catalog`` broadcast state as an ``item-catalog`` record."""
    from state_schemas.versioning import StateVersionError

    entry = pickle.loads(value)
    if not isinstance(entry, tuple) or entry[0] != 1 or len(entry) != 8:
        raise StateVersionError("catalogue state entry of an unknown version")
    _, item_id, title, categories, tags, price, available, updated_at = entry
    return {"item_id": item_id, "ts": int(updated_at), "title": title,
            "categories": list(categories), "tags": list(tags), "price": price,
            "available": bool(available)}


__all__ = ["EVENT_TYPES", "LEGACY_CATALOG_STATE", "LEGACY_PROFILE_VERSION",
           "legacy_catalog_record", "migrate_profile_dict", "profile_from_v2"]
