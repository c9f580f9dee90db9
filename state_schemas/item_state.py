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

EASE's Gram matrix (keyed state ``similarity-row`` of the key ``records.EASE_KEY``, version 1)::

    "EG" u8 version u8 flags(bit 0: a refresh is pending)  i64 last refresh (processing ms)
    u32 n_items  u32 n_id_bytes  orjson list of the head's item ids (slot order)
    f32[n * n] Gram matrix, row-major (counts: exact in f32 up to 2^24)

Counters (replicated state, version 1), one entry per item so that a checkpoint writes only
what changed: ``n:<item id>`` -> orjson ``[version, occurrence N, popularity, {segment:
popularity}]`` (forward-decayed values), and ``counters:meta`` -> orjson ``[version, occurrence
landmark, popularity landmark, newest event ts]``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import orjson

from state_schemas.versioning import check_binary_header, load_versioned

ROW_STATE_VERSION = 2
GRAM_STATE_VERSION = 1
_GRAM = struct.Struct("<2sBBqII")
STATS_STATE_VERSION = 1
_ROW = struct.Struct("<2sBBqqHH")
STATS_PREFIX = "n:"
STATS_META_KEY = "counters:meta"


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
    check_binary_header(blob, b"SR", ROW_STATE_VERSION, "a similarity row")
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


def encode_counters(occurrence: float, popularity: float, segments: dict[str, float]) -> bytes:
    return orjson.dumps([STATS_STATE_VERSION, occurrence, popularity, segments])


def decode_counters(blob: bytes) -> tuple[float, float, dict[str, float]]:
    occurrence, popularity, segments = load_versioned(blob, STATS_STATE_VERSION,
                                                      "item counters state", 3)
    return occurrence, popularity, segments


def encode_counters_meta(occ_landmark: int | None, pop_landmark: int | None,
                         newest_ts: int | None) -> bytes:
    return orjson.dumps([STATS_STATE_VERSION, occ_landmark, pop_landmark, newest_ts])


def decode_counters_meta(blob: bytes) -> tuple[int | None, int | None, int | None]:
    occ_landmark, pop_landmark, newest = load_versioned(blob, STATS_STATE_VERSION,
                                                        "item counters meta state", 3)
    return occ_landmark, pop_landmark, newest


@dataclass(slots=True)
class GramState:
    ids: list[str]          # the head's items, by slot
    gram: np.ndarray        # float32 (n, n)
    last_refresh: int
    pending: bool


def encode_gram_state(g: GramState) -> bytes:
    ids = orjson.dumps(g.ids)
    n = len(g.ids)
    return b"".join([_GRAM.pack(b"EG", GRAM_STATE_VERSION, 1 if g.pending else 0,
                                g.last_refresh, n, len(ids)), ids,
                     np.ascontiguousarray(g.gram[:n, :n], dtype="<f4").tobytes()])


def decode_gram_state(blob: bytes) -> GramState:
    check_binary_header(blob, b"EG", GRAM_STATE_VERSION, "an EASE Gram matrix")
    _, _, flags, last_refresh, n, n_id_bytes = _GRAM.unpack_from(blob)
    at = _GRAM.size
    ids = orjson.loads(blob[at:at + n_id_bytes])
    at += n_id_bytes
    gram = np.frombuffer(blob, dtype="<f4", count=n * n, offset=at).reshape(n, n).copy()
    return GramState(ids, gram, last_refresh, bool(flags & 1))
