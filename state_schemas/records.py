"""Records between the job's operators: kinds, output tags and payload codecs.

Every record inside the job is an engine record ``(key, kind, ts, ingest_ms, payload)``
(``deploy/java/.../EngineRecords.java``). Input records carry the raw Kafka value as payload
(``kind`` says which topic it came from); the others carry one of the payloads below. Records
between operators are never persisted (checkpoints are aligned and hold no in-flight data), so a
release may change these without migrating state; the version is in each payload all the same,
so a mismatch between the two sides of a running job fails loudly instead of misreading.

Item activity and pair updates travel on two different edges (broadcast and keyed) and reach the
item operator in no fixed order. A row scored before the activity of its own batch arrived would
use occurrence counts that are too small (or zero) and keep that score until it is touched
again, so both payloads carry an *activity stamp*: the user-operator subtask that sent them and
the sequence number of its activity record. The item operator holds pair updates until it has
applied the activity they were stamped with (``udfs/item_side.py``).

Kinds::

    1-4  user inputs, keyed by user id (events, attributes, recommendation requests, privacy)
    5    catalogue record, broadcast to the user operator (raw item-catalog value)
    6    model update: item operator -> user operator (broadcast)
    7    item activity: user operator -> item operator (broadcast)
    8    pair updates of one similarity row: user operator -> item operator (keyed by row item)
    9    a change of one user's recent-item set for EASE's Gram matrix: user operator -> item
         operator (keyed by ``EASE_KEY``: one subtask holds the matrix)
    -1   a fired keyed timer (made by the operator host, never sent)
"""

from __future__ import annotations

from typing import Any, Sequence

import orjson

from state_schemas.versioning import load_versioned

KIND_TIMER = -1
KIND_EVENT = 1
KIND_ATTRIBUTES = 2
KIND_REQUEST = 3
KIND_PRIVACY = 4
KIND_CATALOG = 5
KIND_MODEL_UPDATE = 6
KIND_ACTIVITY = 7
KIND_PAIRS = 8
KIND_GRAM = 9
KIND_NAMES = {KIND_TIMER: "timer", KIND_EVENT: "event", KIND_ATTRIBUTES: "attributes",
              KIND_REQUEST: "request", KIND_PRIVACY: "privacy", KIND_CATALOG: "catalog",
              KIND_MODEL_UPDATE: "model_update", KIND_ACTIVITY: "activity", KIND_PAIRS: "pairs",
              KIND_GRAM: "gram"}
# The key of the Gram-matrix records: not an item id (ids are validated non-empty and free of
# control characters, so no item can collide with it).
EASE_KEY = "\x00ease"
# Where a neighbour row of a model update comes from: the item-CF shard or the EASE refresh.
SOURCE_ITEM_CF = 0
SOURCE_EASE = 1

# Output tags of the user operator (0 is the main output).
USER_OUT_RECOMMENDATIONS = 0
USER_OUT_PROFILES = 1
USER_OUT_DLQ = 2
USER_OUT_PAIRS = 3
USER_OUT_ACTIVITY = 4
# Output tags of the item operator.
ITEM_OUT_SIMILARITY = 0
ITEM_OUT_MODEL = 1

MODEL_UPDATE_VERSION = 2   # v2 added each row's source; v1 (read back from the
                           # item-model-updates topic after an upgrade) reads as item-CF rows
STAMPED_VERSION = 2        # item activity and pair updates: v2 added the activity stamp
GRAM_VERSION = 1


def encode_activity(origin: int, seq: int, ids: Sequence[str], weights: Sequence[float],
                    occ_deltas: Sequence[float], ts: Sequence[int],
                    segments: Sequence[str]) -> bytes:
    """The item activity of one user-operator batch (accepted positive interactions), number
    ``seq`` of user-operator subtask ``origin``."""
    return orjson.dumps([STAMPED_VERSION, origin, seq, list(ids), list(weights),
                         list(occ_deltas), list(ts), list(segments)])


def decode_activity(payload: bytes) -> tuple[int, int, list, list, list, list, list]:
    """``(origin, seq, ids, weights, occurrence deltas, ts, segments)``."""
    origin, seq, ids, weights, deltas, ts, segments = load_versioned(
        payload, STAMPED_VERSION, "item activity payload", 7)
    return origin, seq, ids, weights, deltas, ts, segments


def encode_pairs(origin: int, seq: int, cols: Sequence[str], deltas: Sequence[float],
                 ts: Sequence[int]) -> bytes:
    """Co-occurrence increments of one row (the record's key): C(key, col) += delta at ts, to
    apply once activity ``seq`` of user-operator subtask ``origin`` has been counted."""
    return orjson.dumps([STAMPED_VERSION, origin, seq, list(cols), list(deltas), list(ts)])


def decode_pairs(payload: bytes) -> tuple[int, int, list, list, list]:
    """``(origin, seq, cols, deltas, ts)``."""
    origin, seq, cols, deltas, ts = load_versioned(payload, STAMPED_VERSION,
                                                   "pair updates payload", 5)
    return origin, seq, cols, deltas, ts


GramChange = tuple[Sequence[str], Sequence[str], Sequence[str]]   # kept, added, removed


def encode_gram(changes: Sequence[GramChange]) -> bytes:
    """Changes of users' recent-item sets, in order: in each, ``added`` joined the set,
    ``removed`` left it and ``kept`` stayed (the three are disjoint). The Gram matrix changes by
    the difference of the set's outer products (``udfs/ease.py``)."""
    return orjson.dumps([GRAM_VERSION, [[list(k), list(a), list(r)] for k, a, r in changes]])


def decode_gram(payload: bytes) -> list[tuple[list, list, list]]:
    (changes,) = load_versioned(payload, GRAM_VERSION, "Gram update payload", 1)
    return [(k, a, r) for k, a, r in changes]


Row = tuple[str, list[str], list[float], int]   # item, neighbour ids, scores, source


def encode_model_update(rows: Sequence[Row], popularity: dict[str, Any] | None) -> bytes:
    """Neighbour rows (item, neighbour ids, scores, source) and the popularity of changed items
    (``udfs.similarity.ItemStats.popularity_update``)."""
    return orjson.dumps([MODEL_UPDATE_VERSION, rows, popularity])


def encode_model_updates(rows: Sequence[Row], popularity: dict[str, Any] | None,
                         max_bytes: int) -> list[bytes]:
    """The same content as :func:`encode_model_update`, in as many payloads of at most
    ``max_bytes`` as it takes (a Kafka message has a size limit; one batch of a large catalogue
    can change more rows than fit). Rows first, then the popularity, split by items."""
    head = b"[%d,[" % MODEL_UPDATE_VERSION
    tail_no_pop = b"],null]"
    out: list[bytes] = []
    parts: list[bytes] = []
    size = len(head) + len(tail_no_pop)
    for row in rows:
        encoded = orjson.dumps(row)
        if parts and size + len(encoded) + 1 > max_bytes:
            out.append(head + b",".join(parts) + tail_no_pop)
            parts, size = [], len(head) + len(tail_no_pop)
        parts.append(encoded)
        size += len(encoded) + 1
    encoded_pop: list[bytes] = []
    if popularity is not None:
        whole = orjson.dumps([MODEL_UPDATE_VERSION, [], popularity])  # almost always fits
        encoded_pop = [whole] if len(whole) <= max_bytes else [
            orjson.dumps([MODEL_UPDATE_VERSION, [], piece])
            for piece in _split_popularity(popularity, max_bytes - 64)]
    if parts or not encoded_pop:
        out.append(head + b",".join(parts) + tail_no_pop)
    return out + encoded_pop


def _split_popularity(popularity: dict[str, Any], max_bytes: int) -> list[dict[str, Any]]:
    """The popularity update in pieces of at most ``max_bytes`` encoded, each a popularity update
    of its own (a slice of the items, with their segment values re-indexed)."""
    size = len(orjson.dumps(popularity))
    n_items = len(popularity["ids"])
    if size <= max_bytes or n_items <= 1:
        return [popularity]
    n_pieces = min(n_items, -(-size // max_bytes) * 2)
    step = -(-n_items // n_pieces)
    by_item: dict[int, list[tuple[str, float]]] = {}
    for seg, i, v in zip(popularity["seg"], popularity["seg_item"], popularity["seg_pop"]):
        by_item.setdefault(i, []).append((seg, v))
    pieces = []
    for lo in range(0, n_items, step):
        hi = min(n_items, lo + step)
        seg, seg_item, seg_pop = [], [], []
        for i in range(lo, hi):
            for s, v in by_item.get(i, ()):
                seg.append(s)
                seg_item.append(i - lo)
                seg_pop.append(v)
        pieces.append({**popularity, "ids": popularity["ids"][lo:hi],
                       "pop": popularity["pop"][lo:hi], "seg": seg, "seg_item": seg_item,
                       "seg_pop": seg_pop})
    return [p for piece in pieces for p in _split_popularity(piece, max_bytes)]


def decode_model_update(payload: bytes) -> tuple[list[Row], dict[str, Any] | None]:
    """Rows as ``(item, ids, scores, source)``; a v1 payload's rows are item-CF rows."""
    if bytes(payload[:3]) == b"[1,":  # written by the previous release (orjson: no spaces)
        rows, popularity = load_versioned(payload, 1, "model update payload", 2)
        return [(item, ids, scores, SOURCE_ITEM_CF) for item, ids, scores in rows], popularity
    rows, popularity = load_versioned(payload, MODEL_UPDATE_VERSION, "model update payload", 2)
    return rows, popularity
