"""The user operator's keyed state: the profile (version 3) and the impression log (version 2).

Both are compact binary values (what Flink stores per user key, in the heap backend, RocksDB and
every checkpoint): a fixed header, numpy arrays for the numeric columns, and one orjson array for
the strings. Items the profile only needs to *recognise* (consumed items, the dedup window of
event ids, impressions) are kept as 64-bit hashes (:func:`udfs.items.item_hash` for items);
items it must *name* (recent items, "not interested" items, interest features) keep their ids.

Versions:

* v1, v2 (releases before the micro-batch engine): a pickled dict, see ``legacy.py``.
  :func:`decode_profile` recognises a pickle by its first byte and migrates it.
* v3: this module.

Layout of v3 (little-endian)::

    "UP" u8 version u8 flags
    i64 attributes_ts, interests_ts, first_seen, last_seen, last_snapshot_at, base_ts,
        dedup_base_minute
    f64 purchase_amount_sum   u32 purchase_priced_count   u32 consumed_next
    u16 n_days, n_interests, n_recent, n_consumed, n_dedup
    u32[EVENT_TYPES]      counts_all_time
    u32[n_days]           day index (ts // DAY_MS) of each recent-window bucket
    u32[n_days, types]    counts per bucket
    f32[n_interests]      interest weights (decayed to interests_ts)
    u8[n_recent]          strongest event type of each recent item (index into EVENT_TYPES)
    i32|i64[n_recent]     base_ts - ts (i64 when flags says "wide")
    f32[n_recent]         weight of the strongest action
    u64[n_consumed]       consumed item hashes, sorted
    u32[n_consumed]       consumption sequence (eviction order: smallest first)
    u64[n_dedup]          (event id hash >> 16 << 16) | minutes before dedup_base_minute, sorted
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

PROFILE_STATE_VERSION = 3
IMPRESSION_STATE_VERSION = 2
_MAGIC = b"UP"
_IMAGIC = b"IL"
N_TYPES = len(EVENT_TYPES)
TYPE_CODE: dict[str, int] = {t: n for n, t in enumerate(EVENT_TYPES)}

_HEADER = struct.Struct("<2sBBqqqqqqqdIIHHHHH")
_F_PENDING = 1
_F_WIDE_TS = 2
_F_FIRST_SEEN = 4
_F_LAST_SEEN = 8
NO_TS = -(1 << 63)


class StateVersionError(ValueError):
    """A state value written by a version of the code this one cannot read."""


@dataclass(slots=True)
class UserProfile:
    """Everything the job keeps per user, in the form the profile step works on."""
    user_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    attributes_ts: int = 0
    counts_all_time: list[int] = field(default_factory=lambda: [0] * N_TYPES)
    # Recent-window buckets: day index (ts // DAY_MS) -> counts per event type.
    counts_by_day: dict[int, list[int]] = field(default_factory=dict)
    # Interest weights decayed to interests_ts (feature -> weight).
    interests: dict[str, float] = field(default_factory=dict)
    interests_ts: int = 0
    # Recent items, newest first, one entry per item: id, strongest type code, ts, weight.
    recent_ids: list[str] = field(default_factory=list)
    recent_types: list[int] = field(default_factory=list)
    recent_ts: list[int] = field(default_factory=list)
    recent_weights: list[float] = field(default_factory=list)
    not_interested: list[str] = field(default_factory=list)  # newest first, bounded
    consumed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    consumed_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint32))
    consumed_next: int = 0
    first_seen: int | None = None
    last_seen: int | None = None
    purchase_amount_sum: float = 0.0
    purchase_priced_count: int = 0
    dedup: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    dedup_base_minute: int = 0
    last_snapshot_at: int = 0  # processing time of the last user-profiles record
    snapshot_pending: bool = False
    # A/B assignment, kept while the experiment salt is unchanged.
    variant: str | None = None
    variant_salt: str | None = None


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
        _MAGIC, PROFILE_STATE_VERSION, flags, p.attributes_ts, p.interests_ts,
        p.first_seen if p.first_seen is not None else 0, base, p.last_snapshot_at, base,
        p.dedup_base_minute, p.purchase_amount_sum, p.purchase_priced_count, p.consumed_next,
        len(days), len(p.interests), len(p.recent_ids), len(p.consumed), len(p.dedup))
    parts = [header,
             np.asarray(p.counts_all_time, dtype="<u4").tobytes(),
             np.asarray(days, dtype="<u4").tobytes(),
             np.asarray([p.counts_by_day[d] for d in days], dtype="<u4").reshape(-1).tobytes(),
             np.asarray(list(p.interests.values()), dtype="<f4").tobytes(),
             np.asarray(p.recent_types, dtype="u1").tobytes(),
             np.asarray(offsets, dtype="<i8" if wide else "<i4").tobytes(),
             np.asarray(p.recent_weights, dtype="<f4").tobytes(),
             p.consumed.astype("<u8", copy=False).tobytes(),
             p.consumed_seq.astype("<u4", copy=False).tobytes(),
             p.dedup.astype("<u8", copy=False).tobytes(),
             orjson.dumps([p.user_id, p.attributes, list(p.interests), p.recent_ids,
                           p.not_interested, p.variant, p.variant_salt])]
    return b"".join(parts)


def decode_profile(blob: bytes, user_id: str | None = None) -> UserProfile:
    """The profile in ``blob`` (v3, or a pickled v1/v2 value of an earlier release)."""
    if blob[:1] == b"\x80":  # pickle protocol 2+: a state value written before v3
        from state_schemas import legacy

        return legacy.profile_from_v2(legacy.migrate_profile_dict(pickle.loads(blob)))
    if blob[:2] != _MAGIC:
        raise StateVersionError("not a user profile state value")
    if blob[2] != PROFILE_STATE_VERSION:
        raise StateVersionError(f"user profile state version {blob[2]} is not supported "
                                f"(this code reads up to {PROFILE_STATE_VERSION})")
    (_, _, flags, attributes_ts, interests_ts, first_seen, last_seen, last_snapshot_at, base,
     dedup_base_minute, amount, priced, consumed_next, n_days, n_int, n_recent, n_consumed,
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
    consumed_seq, at = _arr(buf, at, "<u4", n_consumed)
    dedup, at = _arr(buf, at, "<u8", n_dedup)
    uid, attributes, features, recent_ids, not_interested, variant, salt = orjson.loads(buf[at:])
    day_rows = day_counts.reshape(n_days, N_TYPES).tolist()
    return UserProfile(
        user_id=uid, attributes=attributes, attributes_ts=attributes_ts,
        counts_all_time=all_time.tolist(),
        counts_by_day={int(d): row for d, row in zip(days.tolist(), day_rows)},
        interests=dict(zip(features, weights.tolist())), interests_ts=interests_ts,
        recent_ids=recent_ids, recent_types=types.tolist(),
        recent_ts=[base - o for o in offsets.tolist()],
        recent_weights=recent_weights.tolist(), not_interested=not_interested,
        consumed=consumed.copy(), consumed_seq=consumed_seq.copy(), consumed_next=consumed_next,
        first_seen=first_seen if flags & _F_FIRST_SEEN else None,
        last_seen=last_seen if flags & _F_LAST_SEEN else None,
        purchase_amount_sum=amount, purchase_priced_count=priced,
        dedup=dedup.copy(), dedup_base_minute=dedup_base_minute,
        last_snapshot_at=last_snapshot_at, snapshot_pending=bool(flags & _F_PENDING),
        variant=variant, variant_salt=salt)


# ------------------------------------------------------------------------- impression log
@dataclass(slots=True)
class ImpressionLog:
    """One user's recently recommended items, for feedback attribution (``udfs/ab.py``).

    Parallel arrays in recording order (oldest first; the oldest is evicted first): item hash,
    first and last showing (event time, ms), variant, and the feedback kinds already credited
    (bit 0 click, bit 1 purchase).
    """
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    first: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    last: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    variant: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    kinds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    variants: list[str] = field(default_factory=list)  # variant code -> name

    def __len__(self) -> int:
        return len(self.items)


_IHEADER = struct.Struct("<2sBBqI")


def encode_impressions(log: ImpressionLog) -> bytes:
    base = int(log.last.max()) if len(log) else 0
    back = base - log.last
    wide = bool(len(log)) and int(back.max()) > 0x7FFFFFFF
    return b"".join([
        _IHEADER.pack(_IMAGIC, IMPRESSION_STATE_VERSION, _F_WIDE_TS if wide else 0, base, len(log)),
        log.items.astype("<u8", copy=False).tobytes(),
        (base - log.first).astype("<i8").tobytes(),
        back.astype("<i8" if wide else "<i4").tobytes(),
        log.variant.astype("u1", copy=False).tobytes(),
        log.kinds.astype("u1", copy=False).tobytes(),
        orjson.dumps(log.variants)])


def decode_impressions(blob: bytes) -> ImpressionLog:
    if blob[:2] != _IMAGIC:
        raise StateVersionError("not an impression log state value")
    if blob[2] != IMPRESSION_STATE_VERSION:
        raise StateVersionError(f"impression log state version {blob[2]} is not supported "
                                f"(this code reads {IMPRESSION_STATE_VERSION})")
    _, _, flags, base, n = _IHEADER.unpack_from(blob)
    buf = memoryview(blob)
    at = _IHEADER.size
    items, at = _arr(buf, at, "<u8", n)
    first, at = _arr(buf, at, "<i8", n)
    last, at = _arr(buf, at, "<i8" if flags & _F_WIDE_TS else "<i4", n)
    variant, at = _arr(buf, at, "u1", n)
    kinds, at = _arr(buf, at, "u1", n)
    return ImpressionLog(items.copy(), base - first.astype(np.int64),
                         base - last.astype(np.int64), variant.copy(), kinds.copy(),
                         orjson.loads(buf[at:]))


def day_index(ts: int) -> int:
    return ts // DAY_MS
