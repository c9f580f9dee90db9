"""The user operator's replicated state: its copy of the item model.

Stored in the operator's broadcast state (every subtask holds the same model), one entry per
item and per kind, so that a checkpoint writes only what changed since the previous one:

* ``cat:<item id>`` — the item's catalogue record (orjson, ``item-catalog`` fields);
* ``item:<item id>`` — orjson ``[2, neighbour ids, neighbour scores, popularity,
  {segment: popularity}, source]`` (popularity: forward-decayed values against the landmark
  below; source: 0 item-CF row, 1 EASE row; version 1 had no source and reads as item-CF);
* ``model:meta`` — orjson ``[version, popularity landmark, newest event ts]``;
* ``ab-totals:<subtask>`` — orjson ``[version, [[metric, variant, kind, count], ...]]``: the
  A/B impression and feedback totals this subtask has counted, restored with the checkpoint so
  that records replayed after a failure are not counted twice. Unlike the entries above it is
  not the same on every subtask: each subtask reads back its own (a subtask added by rescaling
  starts at zero; the totals of a subtask removed by rescaling are lost).
"""

from __future__ import annotations

from typing import Any

import orjson

from state_schemas.versioning import load_versioned

MODEL_STATE_VERSION = 1
CATALOG_PREFIX = "cat:"
ITEM_PREFIX = "item:"
META_KEY = "model:meta"
AB_TOTALS_PREFIX = "ab-totals:"


def encode_catalog_entry(record: dict[str, Any]) -> bytes:
    return orjson.dumps([MODEL_STATE_VERSION, record])


def decode_catalog_entry(blob: bytes) -> dict[str, Any]:
    (record,) = load_versioned(blob, MODEL_STATE_VERSION, "catalogue entry state", 1)
    return record


ITEM_ENTRY_VERSION = 2   # v2 added the row's source (item-CF or EASE)


def encode_item_entry(neighbor_ids: list[str], scores: list[float], popularity: float,
                      segments: dict[str, float], source: int = 0) -> bytes:
    return orjson.dumps([ITEM_ENTRY_VERSION, neighbor_ids, scores, popularity, segments, source])


def decode_item_entry(blob: bytes
                      ) -> tuple[list[str], list[float], float, dict[str, float], int]:
    """``(neighbour ids, scores, popularity, segments, source)``; a v1 entry (written by the
    previous release, before EASE) holds an item-CF row (source 0)."""
    if bytes(blob[:3]) == b"[1,":
        ids, scores, popularity, segments = load_versioned(blob, 1, "item model entry state", 4)
        return ids, scores, popularity, segments, 0
    ids, scores, popularity, segments, source = load_versioned(
        blob, ITEM_ENTRY_VERSION, "item model entry state", 5)
    return ids, scores, popularity, segments, source


def encode_meta(landmark: int | None, newest_ts: int | None) -> bytes:
    return orjson.dumps([MODEL_STATE_VERSION, landmark, newest_ts])


def decode_meta(blob: bytes) -> tuple[int | None, int | None]:
    landmark, newest = load_versioned(blob, MODEL_STATE_VERSION, "item model meta state", 2)
    return landmark, newest


def encode_ab_totals(totals: dict[tuple[str, str, str], int]) -> bytes:
    return orjson.dumps([MODEL_STATE_VERSION, [[*key, n] for key, n in sorted(totals.items())]])


def decode_ab_totals(blob: bytes | None) -> dict[tuple[str, str, str], int]:
    if blob is None:
        return {}
    (rows,) = load_versioned(blob, MODEL_STATE_VERSION, "A/B totals state", 1)
    return {(metric, variant, kind): int(n) for metric, variant, kind, n in rows}
