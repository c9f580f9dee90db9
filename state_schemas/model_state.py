"""The user operator's replicated state: its copy of the item model (version 1).

Stored in the operator's broadcast state (every subtask holds the same model), one entry per
item and per kind, so that a checkpoint writes only what changed since the previous one:

* ``cat:<item id>`` — the item's catalogue record (orjson, ``item-catalog`` fields);
* ``item:<item id>`` — orjson ``[version, neighbour ids, neighbour scores, popularity,
  {segment: popularity}]`` (popularity: forward-decayed values against the landmark below);
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


def encode_item_entry(neighbor_ids: list[str], scores: list[float], popularity: float,
                      segments: dict[str, float]) -> bytes:
    return orjson.dumps([MODEL_STATE_VERSION, neighbor_ids, scores, popularity, segments])


def decode_item_entry(blob: bytes) -> tuple[list[str], list[float], float, dict[str, float]]:
    ids, scores, popularity, segments = load_versioned(blob, MODEL_STATE_VERSION,
                                                       "item model entry state", 4)
    return ids, scores, popularity, segments


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
