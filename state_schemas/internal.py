"""Schemas of the records that flow between the job's operators (never written to Kafka).

They are plain tuples on the wire (pickled by PyFlink); the NamedTuples give them names.
Aligned checkpoints never persist in-flight records, so these may change between releases
without a state migration — unlike ``state.py``.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class InputRecord(NamedTuple):
    """A validated input of one kind (``udfs.validation.INPUT_KINDS``) keyed by ``key``."""
    kind: str
    key: str
    record: dict[str, Any]


class RecommendationTrigger(NamedTuple):
    """Profile operator -> recommendation operator: recommend now for this user."""
    user_id: str
    trigger_event_id: str | None
    request_id: str | None
    event_ts: int
    k: int
    # The event that triggered it (for feedback attribution), or None for requests.
    event_item_id: str | None
    event_type: str | None
    # The user's view at trigger time (see udfs.recommend.UserView).
    recent_items: list[tuple[str, str, int, float]]
    interests: dict[str, float]
    exclude: list[str]
    not_interested: list[str]
    segment: str
    variant: str
    attributes: dict[str, Any]
    forget: bool = False  # a privacy "forget": drop per-user state and emit a tombstone
    ingest_ms: int = 0    # wall-clock time the input record was parsed (latency metric)


class ItemActivity(NamedTuple):
    """One accepted positive interaction, broadcast for trending and item occurrence."""
    item_id: str
    weight: float
    occurrence_delta: float
    ts: int
    segment: str
    categories: tuple[str, ...]


class PairShardBatch(NamedTuple):
    """Co-occurrence increments of one event that belong to one similarity shard."""
    shard: int
    rows: list[str]
    cols: list[str]
    weights: list[float]
    ts: int


class ModelUpdate(NamedTuple):
    """Broadcast into the recommendation operator: catalogue, neighbours or activity."""
    kind: str  # "item" | "neighbors" | "activity"
    payload: Any
