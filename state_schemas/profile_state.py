"""The user operator's keyed state: the profile (version 3) and the impression log (version 2).

Both are compact binary values (what Flink stores per user key, in the heap backend, RocksDB and
every checkpoint): a fixed header, numpy arrays for the numeric columns, and one orjson array for
the strings. Items the profile only needs to *recognise* (consumed items, the dedup window of
event ids, impressions) are kept as 64-bit hashes (:func:`udfs.items.item_hash` for items);
items it must *name* (recent items, "not interested" items, interest features) keep their ids.

Versions:

* v1, v2 (releases before the micro-batch engine): a pickled dict, see ``profile_from_v2``.
  :func:`decode_profile` recognises a pickle by its first byte and migrates it.
* v3: this module.

The same state slot holds a **forgotten-user marker** after a privacy "forget" (its own magic
``"FU"``, version 1: ``"FU" u8 version u8 0 i64 forgotten_at``): it keeps a late or replayed
record from re-creating the profile until it expires (``privacy.forgotten_marker_ttl_ms``).

Layout of v3 (little-endian)::

    "UP" u8 version u8 flags
    i64 attributes_ts, interests_landmark, first_seen, last_seen, last_snapshot_at, base_ts,
        dedup_base_minute
    f64 purchase_amount_sum   u32 purchase_priced_count
    u32 last_active_at, in seconds since 2020-01-01 (processing time; 0: not recorded, as in
        values written before it was, which had 0 in this place)
    u16 n_days, n_interests, n_recent, n_consumed, n_dedup
    u32[EVENT_TYPES]      counts_all_time
    u32[n_days]           day index (ts // DAY_MS) of each recent-window bucket
    u32[n_days, types]    counts per bucket
    f32[n_interests]      interest weights (forward-decayed against interests_landmark)
    u8[n_recent]          strongest event type of each recent item (index into EVENT_TYPES)
    i32|i64[n_recent]     base_ts - ts (i64 when flags says "wide")
    f32[n_recent]         weight of the strongest action
    u64[n_consumed]       consumed item hashes, least recently consumed first
    u64[n_dedup]          (event id hash >> 16 << 16) | minutes before dedup_base_minute
    orjson [user_id, attributes, interest features, recent item ids, not-interested ids,
            variant, variant salt]
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from state_schemas.config import DAY_MS, EVENT_TYPES
from state_schemas.versioning import StateVersionError, check_binary_header

PROFILE_STATE_VERSION = 3
IMPRESSION_STATE_VERSION = 2
_MAGIC = b"UP"
_IMAGIC = b"IL"
FORGOTTEN_MAGIC = b"FU"
FORGOTTEN_MARKER_VERSION = 1
_FORGOTTEN = struct.Struct("<2sBBq")
N_TYPES = len(EVENT_TYPES)
TYPE_CODE: dict[str, int] = {t: n for n, t in enumerate(EVENT_TYPES)}

_HEADER = struct.Struct("<2sBBqqqqqqqdIIHHHHH")
_F_PENDING = 1
_F_WIDE_TS = 2
_F_FIRST_SEEN = 4
_F_LAST_SEEN = 8
NO_TS = -(1 << 63)


@dataclass(slots=True)
class UserProfile:
    """Everything the job keeps per user, in the form the profile step works on."""
    user_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    attributes_ts: int = 0
    counts_all_time: list[int] = field(default_factory=lambda: [0] * N_TYPES)
    # Recent-window buckets: day index (ts // DAY_MS) -> counts per event type.
    counts_by_day: dict[int, list[int]] = field(default_factory=dict)
    # Interest weights, forward-decayed (``udfs/decay.py``): an event at ts added
    # w * 2^((ts - interests_landmark) / half_life), so no weight is rewritten as time passes.
    interests: dict[str, float] = field(default_factory=dict)
    interests_landmark: int = 0
    # Recent items, newest first, one entry per item: id, strongest type code, ts, weight.
    recent_ids: list[str] = field(default_factory=list)
    recent_types: list[int] = field(default_factory=list)
    recent_ts: list[int] = field(default_factory=list)
    recent_weights: list[float] = field(default_factory=list)
    not_interested: list[str] = field(default_factory=list)  # newest first, bounded
    # Consumed item hashes, least recently consumed first (the first goes when full).
    consumed: dict[int, None] = field(default_factory=dict)
    first_seen: int | None = None
    last_seen: int | None = None
    purchase_amount_sum: float = 0.0
    purchase_priced_count: int = 0
    # Dedup window: 48-bit hash of each recent event id -> the event's minute (ts // 60 000).
    dedup: dict[int, int] = field(default_factory=dict)
    dedup_base_minute: int = 0  # the newest minute seen
    last_snapshot_at: int = 0  # processing time of the last user-profiles record
    # Processing time of the last event or attributes record (0: unknown), for the
    # inactive-user TTL; kept to the second.
    last_active_at: int = 0
    snapshot_pending: bool = False
    # A/B assignment, kept while the experiment salt is unchanged.
    variant: str | None = None
    variant_salt: str | None = None
    # Not stored: the consumed hashes sorted, for the recommender (rebuilt when consumed changes),
    # the recent items' codes in the operator's item table (-1: unknown when looked up), and
    # the recommender's prepared form of the interests (emptied whenever they change).
    consumed_sorted: np.ndarray | None = None
    recent_codes: list[int] | None = None
    codes_epoch: int = -1
    interests_prepared: list | None = None


def _arr(buf: memoryview, at: int, dtype: str, n: int) -> tuple[np.ndarray, int]:
    size = np.dtype(dtype).itemsize * n
    return np.frombuffer(buf, dtype=dtype, count=n, offset=at), at + size


def encode_profile(p: UserProfile) -> bytes:
    base = p.last_seen if p.last_seen is not None else 0
    offsets = [base - t for t in p.recent_ts]
    wide = any(o > 0x7FFFFFFF or o < -0x80000000 for o in offsets)
    flags = ((_F_PENDING if p.snapshot_pending else 0) | (_F_WIDE_TS if wide else 0)
             | (_F_FIRST_SEEN if p.first_seen is not None else 0)
             | (_F_LAST_SEEN if p.last_seen is not None else 0))
    days = sorted(p.counts_by_day)
    header = _HEADER.pack(
        _MAGIC, PROFILE_STATE_VERSION, flags, p.attributes_ts, p.interests_landmark,
        p.first_seen if p.first_seen is not None else 0, base, p.last_snapshot_at, base,
        p.dedup_base_minute, p.purchase_amount_sum, p.purchase_priced_count,
        _active_seconds(p.last_active_at),
        len(days), len(p.interests), len(p.recent_ids), len(p.consumed), len(p.dedup))
    parts = [header,
             np.asarray(p.counts_all_time, dtype="<u4").tobytes(),
             np.asarray(days, dtype="<u4").tobytes(),
             np.asarray([p.counts_by_day[d] for d in days], dtype="<u4").reshape(-1).tobytes(),
             np.asarray(list(p.interests.values()), dtype="<f4").tobytes(),
             np.asarray(p.recent_types, dtype="u1").tobytes(),
             np.asarray(offsets, dtype="<i8" if wide else "<i4").tobytes(),
             np.asarray(p.recent_weights, dtype="<f4").tobytes(),
             np.fromiter(p.consumed, dtype="<u8", count=len(p.consumed)).tobytes(),
             _pack_dedup(p.dedup, p.dedup_base_minute),
             orjson.dumps([p.user_id, p.attributes, list(p.interests), p.recent_ids,
                           p.not_interested, p.variant, p.variant_salt])]
    return b"".join(parts)


_ACTIVE_EPOCH_S = 1_577_836_800  # 2020-01-01: u32 seconds from here last until 2156


def _active_seconds(at_ms: int) -> int:
    return min(max(at_ms // 1000 - _ACTIVE_EPOCH_S, 0), 0xFFFFFFFF) if at_ms > 0 else 0


def _pack_dedup(seen: dict[int, int], base_minute: int) -> bytes:
    if not seen:
        return b""
    hashes = np.fromiter(seen.keys(), dtype=np.uint64, count=len(seen))
    back = np.minimum(base_minute - np.fromiter(seen.values(), dtype=np.int64, count=len(seen)),
                      0xFFFF)
    return ((hashes << np.uint64(16)) | back.astype(np.uint64)).astype("<u8").tobytes()


def _unpack_dedup(packed: np.ndarray, base_minute: int) -> dict[int, int]:
    if not len(packed):
        return {}
    hashes = (packed >> np.uint64(16)).tolist()
    minutes = (base_minute - (packed & np.uint64(0xFFFF)).astype(np.int64)).tolist()
    return dict(zip(hashes, minutes))


def decode_profile(blob: bytes, user_id: str | None = None) -> UserProfile:
    """The profile in ``blob`` (v3, or a pickled v1/v2 value of an earlier release)."""
    if blob[:1] == b"\x80":  # pickle protocol 2+: a state value written before v3
        return profile_from_v2(migrate_profile_dict(pickle.loads(blob)))
    if blob[:2] != _MAGIC:
        raise StateVersionError("not a user profile state value")
    if blob[2] != PROFILE_STATE_VERSION:
        raise StateVersionError(f"user profile state version {blob[2]} is not supported "
                                f"(this code reads up to {PROFILE_STATE_VERSION})")
    (_, _, flags, attributes_ts, landmark, first_seen, last_seen, last_snapshot_at, base,
     dedup_base_minute, amount, priced, active_s, n_days, n_int, n_recent, n_consumed,
     n_dedup) = _HEADER.unpack_from(blob)
    buf = memoryview(blob)
    at = _HEADER.size
    all_time, at = _arr(buf, at, "<u4", N_TYPES)
    days, at = _arr(buf, at, "<u4", n_days)
    day_counts, at = _arr(buf, at, "<u4", n_days * N_TYPES)
    weights, at = _arr(buf, at, "<f4", n_int)
    types, at = _arr(buf, at, "u1", n_recent)
    offsets, at = _arr(buf, at, "<i8" if flags & _F_WIDE_TS else "<i4", n_recent)
    recent_weights, at = _arr(buf, at, "<f4", n_recent)
    consumed, at = _arr(buf, at, "<u8", n_consumed)
    dedup, at = _arr(buf, at, "<u8", n_dedup)
    uid, attributes, features, recent_ids, not_interested, variant, salt = orjson.loads(buf[at:])
    day_rows = day_counts.reshape(n_days, N_TYPES).tolist()
    return UserProfile(
        user_id=uid, attributes=attributes, attributes_ts=attributes_ts,
        counts_all_time=all_time.tolist(),
        counts_by_day={int(d): row for d, row in zip(days.tolist(), day_rows)},
        interests=dict(zip(features, weights.tolist())), interests_landmark=landmark,
        recent_ids=recent_ids, recent_types=types.tolist(),
        recent_ts=[base - o for o in offsets.tolist()],
        recent_weights=recent_weights.tolist(), not_interested=not_interested,
        consumed=dict.fromkeys(consumed.tolist()),
        first_seen=first_seen if flags & _F_FIRST_SEEN else None,
        last_seen=last_seen if flags & _F_LAST_SEEN else None,
        purchase_amount_sum=amount, purchase_priced_count=priced,
        dedup=_unpack_dedup(dedup, dedup_base_minute), dedup_base_minute=dedup_base_minute,
        last_snapshot_at=last_snapshot_at, snapshot_pending=bool(flags & _F_PENDING),
        last_active_at=(active_s + _ACTIVE_EPOCH_S) * 1000 if active_s else 0,
        variant=variant, variant_salt=salt)


# ------------------------------------------------------------------------- impression log
@dataclass(slots=True)
class ImpressionLog:
    """One user's recently recommended items, for feedback attribution (``udfs/ab.py``).

    ``entries``: item hash -> (first showing, last showing (event time, ms), variant code,
    feedback kinds already credited (bit 0 click, bit 1 purchase)), in recording order (the
    oldest first, evicted first). ``variants``: variant code -> name. (Tuples, not lists: a
    tuple of ints is not tracked by Python's cyclic garbage collector, and a busy operator holds
    a million of these.)
    """
    entries: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    variants: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)


_IHEADER = struct.Struct("<2sBBqI")


def encode_impressions(log: ImpressionLog) -> bytes:
    n = len(log.entries)
    cols = np.array(list(log.entries.values()), dtype=np.int64).reshape(n, 4)
    base = int(cols[:, 1].max()) if n else 0
    back = base - cols[:, 1]
    wide = bool(n) and int(back.max()) > 0x7FFFFFFF
    return b"".join([
        _IHEADER.pack(_IMAGIC, IMPRESSION_STATE_VERSION, _F_WIDE_TS if wide else 0, base, n),
        np.fromiter(log.entries, dtype="<u8", count=n).tobytes(),
        (base - cols[:, 0]).astype("<i8").tobytes(),
        back.astype("<i8" if wide else "<i4").tobytes(),
        cols[:, 2].astype("u1").tobytes(),
        cols[:, 3].astype("u1").tobytes(),
        orjson.dumps(log.variants)])


def decode_impressions(blob: bytes) -> ImpressionLog:
    check_binary_header(blob, _IMAGIC, IMPRESSION_STATE_VERSION, "an impression log")
    _, _, flags, base, n = _IHEADER.unpack_from(blob)
    buf = memoryview(blob)
    at = _IHEADER.size
    items, at = _arr(buf, at, "<u8", n)
    first, at = _arr(buf, at, "<i8", n)
    last, at = _arr(buf, at, "<i8" if flags & _F_WIDE_TS else "<i4", n)
    variant, at = _arr(buf, at, "u1", n)
    kinds, at = _arr(buf, at, "u1", n)
    rows = zip((base - first).tolist(), (base - last.astype(np.int64)).tolist(),
               variant.tolist(), kinds.tolist())
    return ImpressionLog(dict(zip(items.tolist(), rows)), orjson.loads(buf[at:]))


def encode_forgotten(forgotten_at: int) -> bytes:
    """The forgotten-user marker: when (processing time) the user was erased."""
    return _FORGOTTEN.pack(FORGOTTEN_MAGIC, FORGOTTEN_MARKER_VERSION, 0, forgotten_at)


def decode_forgotten(blob: bytes) -> int | None:
    """When the user was erased, if ``blob`` is a forgotten-user marker; None for a profile."""
    if blob[:2] != FORGOTTEN_MAGIC:
        return None
    if blob[2] != FORGOTTEN_MARKER_VERSION or len(blob) != _FORGOTTEN.size:
        raise StateVersionError(f"forgotten-user marker version {blob[2]} is not supported "
                                f"(this code reads {FORGOTTEN_MARKER_VERSION})")
    return _FORGOTTEN.unpack(blob)[3]


def day_index(ts: int) -> int:
    return ts // DAY_MS


# ---------------------------------------------------------------------------------------------
# v1 / v2: releases before the micro-batch engine stored the profile (keyed state
# ``user-profile`` of operator ``profiles``) as a pickled dict with ``"v"`` 1 or 2 (v1 -> v2: day
# buckets became a dict, the A/B variant was stored). Read once, by ``decode_profile``.

def migrate_profile_dict(state: dict[str, Any]) -> dict[str, Any]:
    """A v1 or v2 profile dict as v2."""
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


def profile_from_v2(state: dict[str, Any]) -> UserProfile:
    """The v3 profile holding what a v2 dict held (dedup ids rehashed, consumed items hashed)."""
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
