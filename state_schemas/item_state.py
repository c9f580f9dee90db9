"""The item operator's state: a similarity row per item (keyed), the replicated item counters.

Both are compact binary values with a magic and a version. Columns and neighbours are referred
to by their 64-bit id hashes (``state_schemas/ids.py``); the counters snapshot holds the ids,
so a restored subtask maps hashes back to items.

Row (keyed state ``similarity-row``, version 2; version 1 was a pickled tuple keyed by shard in
releases before the micro-batch engine, and is not read: rows rebuild from new events)::

    "SR" u8 version u8 flags(bit 0: pending emission, bit 1: has landmark)
    i64 landmark  i64 last_emit  u16 n_entries  u16 n_neighbors
    u64[n] column hashes  f64[n] C  i32[n] observations
    u64[k] neighbour hashes  f64[k] scores (best first)

Counters (replicated state ``item-stats``, version 1)::

    "IS" u8 version u8 flags  i64 occurrence landmark  i64 popularity landmark  i64 newest ts
    u32 n_items  u16 n_segments
    f64[n] occurrence  f64[n] popularity  f64[n_segments, n] popularity per segment
    orjson [item ids, segment names]
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import orjson

from state_schemas.profile_state import StateVersionError

ROW_STATE_VERSION = 2
STATS_STATE_VERSION = 1
_ROW = struct.Struct("<2sBBqqHH")
_STATS = struct.Struct("<2sBBqqqIH")
_NONE = -(1 << 63)


@dataclass(slots=True)
class RowState:
    landmark: int | None
    col_hashes: np.ndarray
    vals: np.ndarray
    obs: np.ndarray
    nbr_hashes: np.ndarray
    nbr_scores: np.ndarray
    last_emit: int
    pending: bool


def encode_row(r: RowState) -> bytes:
    flags = (1 if r.pending else 0) | (2 if r.landmark is not None else 0)
    return b"".join([
        _ROW.pack(b"SR", ROW_STATE_VERSION, flags,
                  r.landmark if r.landmark is not None else 0, r.last_emit,
                  len(r.col_hashes), len(r.nbr_hashes)),
        np.asarray(r.col_hashes, dtype="<u8").tobytes(),
        np.asarray(r.vals, dtype="<f8").tobytes(),
        np.asarray(r.obs, dtype="<i4").tobytes(),
        np.asarray(r.nbr_hashes, dtype="<u8").tobytes(),
        np.asarray(r.nbr_scores, dtype="<f8").tobytes()])


def decode_row(blob: bytes) -> RowState:
    if blob[:2] != b"SR":
        raise StateVersionError("not a similarity row state value")
    if blob[2] != ROW_STATE_VERSION:
        raise StateVersionError(f"similarity row state version {blob[2]} is not supported "
                                f"(this code reads {ROW_STATE_VERSION})")
    _, _, flags, landmark, last_emit, n, k = _ROW.unpack_from(blob)
    at = _ROW.size

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal at
        a = np.frombuffer(blob, dtype=dtype, count=count, offset=at)
        at += a.nbytes
        return a

    return RowState(landmark if flags & 2 else None, take("<u8", n), take("<f8", n),
                    take("<i4", n), take("<u8", k), take("<f8", k), last_emit,
                    bool(flags & 1))


def encode_stats(ids: list[str], occ: np.ndarray, pop: np.ndarray,
                 pop_seg: dict[str, np.ndarray], occ_landmark: int | None,
                 pop_landmark: int | None, newest_ts: int | None) -> bytes:
    segs = sorted(pop_seg)
    seg_block = (np.stack([pop_seg[s] for s in segs]).astype("<f8").tobytes() if segs else b"")
    return b"".join([
        _STATS.pack(b"IS", STATS_STATE_VERSION, 0,
                    _NONE if occ_landmark is None else occ_landmark,
                    _NONE if pop_landmark is None else pop_landmark,
                    _NONE if newest_ts is None else newest_ts, len(ids), len(segs)),
        np.asarray(occ, dtype="<f8").tobytes(), np.asarray(pop, dtype="<f8").tobytes(),
        seg_block, orjson.dumps([ids, segs])])


def decode_stats(blob: bytes):
    """(ids, occurrence, popularity, {segment: popularity}, occurrence landmark, popularity
    landmark, newest ts)."""
    if blob[:2] != b"IS":
        raise StateVersionError("not an item counters state value")
    if blob[2] != STATS_STATE_VERSION:
        raise StateVersionError(f"item counters state version {blob[2]} is not supported "
                                f"(this code reads {STATS_STATE_VERSION})")
    _, _, _, occ_l, pop_l, newest, n, n_seg = _STATS.unpack_from(blob)
    at = _STATS.size
    occ = np.frombuffer(blob, dtype="<f8", count=n, offset=at)
    pop = np.frombuffer(blob, dtype="<f8", count=n, offset=at + 8 * n)
    seg = np.frombuffer(blob, dtype="<f8", count=n * n_seg, offset=at + 16 * n).reshape(n_seg, n)
    ids, segs = orjson.loads(memoryview(blob)[at + 16 * n + 8 * n * n_seg:])
    return (ids, occ, pop, {s: seg[i] for i, s in enumerate(segs)},
            None if occ_l == _NONE else occ_l, None if pop_l == _NONE else pop_l,
            None if newest == _NONE else newest)
