"""Every codec of ``state_schemas.codecs`` alike: it round-trips, its bytes carry the version it
declares, any newer version is refused with ``StateVersionError``, and no codec is missing."""

from __future__ import annotations

import inspect

import numpy as np
import orjson
import pytest

from state_schemas import item_state, model_state, profile_state, records
from state_schemas.codecs import BY_NAME, CODECS, Codec
from state_schemas.versioning import StateVersionError

T0 = 1_767_225_600_000

EXAMPLES = {
    "user profile": profile_state.UserProfile(
        "u1", attributes={"age": 30}, attributes_ts=T0, interests={"category:c": 1.5},
        interests_landmark=T0, recent_ids=["a", "b"], recent_types=[0, 6],
        recent_ts=[T0, T0 + 5], recent_weights=[1.0, 10.0], first_seen=T0, last_seen=T0 + 5),
    "impression log": profile_state.ImpressionLog({11: (T0, T0 + 9, 0, 1), 12: (T0, T0, 1, 0)},
                                                  ["control", "tuned"]),
    "forgotten-user marker": T0,
    "similarity row": item_state.RowState(
        T0, np.array([1, 2], dtype=np.uint64), np.array([0.5, 2.0]),
        np.array([1, 3], dtype=np.int32), np.array([2], dtype=np.uint64), np.array([0.25]),
        T0 + 1, True),
    "EASE Gram matrix": item_state.GramState(["a", "b"], np.array([[2, 1], [1, 3]], "f4"),
                                             T0, False),
    "item counters": (3.0, 2.5, {"age:25-34": 1.0}),
    "item counters meta": (T0, T0 + 1, None),
    "catalogue entry": {"item_id": "i1", "ts": T0, "title": "One", "categories": ["c"],
                        "tags": [], "price": 1.0, "available": True},
    "item model entry": (["n1"], [-0.5], 2.0, {"s": 1.0}, 1),
    "item model meta": (T0, None),
    "A/B totals": {("impressions", "control", "event"): 3},
    "item activity": (0, 7, ["i1"], [1.0], [1.0], [T0], [""]),
    "pair updates": (1, 7, ["c1"], [0.5], [T0]),
    "Gram updates": [(["a"], ["b"], []), ([], [], ["a"])],
    "item model update": ([["i1", ["n1"], [0.5], 0]], None),
}


def bumped(codec: Codec, blob: bytes, by: int) -> bytes:
    """``blob`` with its version field changed by ``by``."""
    if codec.layout == "binary":
        return blob[:2] + bytes([blob[2] + by]) + blob[3:]
    value = orjson.loads(blob)
    return orjson.dumps([value[0] + by, *value[1:]])


def version_of(codec: Codec, blob: bytes) -> int:
    return blob[2] if codec.layout == "binary" else orjson.loads(blob)[0]


@pytest.mark.parametrize("codec", CODECS, ids=[c.name for c in CODECS])
def test_a_codec_round_trips_and_writes_its_declared_version(codec):
    blob = codec.encode(EXAMPLES[codec.name])
    assert version_of(codec, blob) == codec.version
    again = codec.encode(codec.decode(blob))
    assert again == blob


@pytest.mark.parametrize("codec", CODECS, ids=[c.name for c in CODECS])
def test_a_codec_refuses_a_newer_version_with_state_version_error(codec):
    blob = codec.encode(EXAMPLES[codec.name])
    with pytest.raises(StateVersionError):
        codec.decode(bumped(codec, blob, +1))


def test_every_decoder_of_state_schemas_is_a_registered_codec():
    decoders = {f"{m.__name__}.{name}" for m in (profile_state, item_state, model_state, records)
                for name, fn in inspect.getmembers(m, inspect.isfunction)
                if name.startswith("decode_") and fn.__module__ == m.__name__}
    registered = {f"{c.decode.__module__}.{c.decode.__name__}" for c in CODECS}
    assert decoders == registered
    assert set(EXAMPLES) == set(BY_NAME)
