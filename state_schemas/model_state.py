"""The user operator's replicated state: its copy of the item model (version 1).

Stored in the operator's broadcast state at every checkpoint (every subtask holds the same
model), under two keys, each rewritten only when it changed:

* ``model:catalog`` — orjson list of ``item-catalog`` records (the catalogue changes rarely);
* ``model:items`` — neighbours and popularity::

    "IM" u8 version u8 flags  i64 popularity landmark  i64 newest ts  u32 n_items  u16 k
    u16 n_segments
    i32[n, k] neighbour (index into the id list, -1 = none)  f64[n, k] scores
    f64[n] popularity  f64[n_segments, n] popularity per segment
    orjson [item ids, segment names]
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from state_schemas.profile_state import StateVersionError

MODEL_STATE_VERSION = 1
CATALOG_KEY = "model:catalog"
ITEMS_KEY = "model:items"
_HEAD = struct.Struct("<2sBBqqIHH")
_NONE = -(1 << 63)


def encode_catalog(records: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"v": MODEL_STATE_VERSION, "items": records})


def decode_catalog(blob: bytes) -> list[dict[str, Any]]:
    msg = orjson.loads(blob)
    if not isinstance(msg, dict) or msg.get("v") != MODEL_STATE_VERSION:
        raise StateVersionError("catalogue state of an unknown version")
    return msg["items"]


def encode_items(ids: list[str], nbr: np.ndarray, nbr_scores: np.ndarray, pop: np.ndarray,
                 pop_seg: dict[str, np.ndarray], landmark: int | None,
                 newest_ts: int | None) -> bytes:
    segs = sorted(pop_seg)
    n, k = nbr.shape
    return b"".join([
        _HEAD.pack(b"IM", MODEL_STATE_VERSION, 0, _NONE if landmark is None else landmark,
                   _NONE if newest_ts is None else newest_ts, n, k, len(segs)),
        np.asarray(nbr, dtype="<i4").tobytes(), np.asarray(nbr_scores, dtype="<f8").tobytes(),
        np.asarray(pop, dtype="<f8").tobytes(),
        np.stack([pop_seg[s] for s in segs]).astype("<f8").tobytes() if segs else b"",
        orjson.dumps([ids, segs])])


def decode_items(blob: bytes):
    """(ids, neighbours [n, k], scores [n, k], popularity, {segment: popularity}, landmark,
    newest ts)."""
    if blob[:2] != b"IM":
        raise StateVersionError("not an item model state value")
    if blob[2] != MODEL_STATE_VERSION:
        raise StateVersionError(f"item model state version {blob[2]} is not supported "
                                f"(this code reads {MODEL_STATE_VERSION})")
    _, _, _, landmark, newest, n, k, n_seg = _HEAD.unpack_from(blob)
    at = _HEAD.size

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal at
        a = np.frombuffer(blob, dtype=dtype, count=count, offset=at)
        at += a.nbytes
        return a

    nbr = take("<i4", n * k).reshape(n, k)
    scores = take("<f8", n * k).reshape(n, k)
    pop = take("<f8", n)
    seg = take("<f8", n * n_seg).reshape(n_seg, n)
    ids, segs = orjson.loads(memoryview(blob)[at:])
    return (ids, nbr, scores, pop, {s: seg[i] for i, s in enumerate(segs)},
            None if landmark == _NONE else landmark, None if newest == _NONE else newest)
