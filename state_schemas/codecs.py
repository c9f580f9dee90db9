"""One small typed interface over every state value and inter-operator record: ``Codec[T]``.

Each codec names what it encodes, its current version, where that version lives in the bytes
(``layout``) and its ``encode``/``decode`` pair; ``CODECS`` lists them all. The engine calls
the module functions directly on its hot paths; this registry is what a reader (or a test, or a
tool that inspects a savepoint) uses to treat every format alike: ``tests/unit/test_codecs.py``
round-trips each one and checks that any other version is refused with ``StateVersionError``,
and that no codec of ``state_schemas`` is missing from the list.

Layouts:

* ``"binary"``: two magic bytes, then the version byte (profiles, impression logs,
  forgotten-user markers, similarity rows, the EASE Gram matrix);
* ``"list"``: an orjson array whose first element is the version (every other codec).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Literal, TypeVar

from state_schemas import item_state, model_state, profile_state, records

T = TypeVar("T")


@dataclass(frozen=True)
class Codec(Generic[T]):
    name: str                                   # what it encodes
    kind: Literal["state", "record"]            # Flink state, or a record between operators
    version: int                                # the version it writes
    layout: Literal["binary", "list"]           # where the version is in the bytes
    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]


def _spread(fn: Callable[..., bytes]) -> Callable[[tuple], bytes]:
    """Adapt an encoder of several arguments to a codec of one tuple value."""
    return lambda value: fn(*value)


CODECS: tuple[Codec[Any], ...] = (
    Codec("user profile", "state", profile_state.PROFILE_STATE_VERSION, "binary",
          profile_state.encode_profile, profile_state.decode_profile),
    Codec("impression log", "state", profile_state.IMPRESSION_STATE_VERSION, "binary",
          profile_state.encode_impressions, profile_state.decode_impressions),
    Codec("forgotten-user marker", "state", profile_state.FORGOTTEN_MARKER_VERSION, "binary",
          profile_state.encode_forgotten, profile_state.decode_forgotten),
    Codec("similarity row", "state", item_state.ROW_STATE_VERSION, "binary",
          item_state.encode_row, item_state.decode_row),
    Codec("EASE Gram matrix", "state", item_state.GRAM_STATE_VERSION, "binary",
          item_state.encode_gram_state, item_state.decode_gram_state),
    Codec("item counters", "state", item_state.STATS_STATE_VERSION, "list",
          _spread(item_state.encode_counters), item_state.decode_counters),
    Codec("item counters meta", "state", item_state.STATS_STATE_VERSION, "list",
          _spread(item_state.encode_counters_meta), item_state.decode_counters_meta),
    Codec("catalogue entry", "state", model_state.MODEL_STATE_VERSION, "list",
          model_state.encode_catalog_entry, model_state.decode_catalog_entry),
    Codec("item model entry", "state", model_state.ITEM_ENTRY_VERSION, "list",
          _spread(model_state.encode_item_entry), model_state.decode_item_entry),
    Codec("item model meta", "state", model_state.MODEL_STATE_VERSION, "list",
          _spread(model_state.encode_meta), model_state.decode_meta),
    Codec("A/B totals", "state", model_state.MODEL_STATE_VERSION, "list",
          model_state.encode_ab_totals, model_state.decode_ab_totals),
    Codec("item activity", "record", records.STAMPED_VERSION, "list",
          _spread(records.encode_activity), records.decode_activity),
    Codec("pair updates", "record", records.STAMPED_VERSION, "list",
          _spread(records.encode_pairs), records.decode_pairs),
    Codec("Gram updates", "record", records.GRAM_VERSION, "list",
          records.encode_gram, records.decode_gram),
    Codec("item model update", "record", records.MODEL_UPDATE_VERSION, "list",
          _spread(records.encode_model_update), records.decode_model_update),
)

BY_NAME: dict[str, Codec[Any]] = {c.name: c for c in CODECS}
