"""A corpus of hostile input records, labelled with whether the job must accept or reject them.

Each generator returns ``(value_bytes_or_None, expect_valid)`` records of one class; the classes
cover what real producers get wrong and what attackers try. ``build_corpus`` interleaves them
with valid records, deterministically (seeded).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import orjson

T0 = 1_767_225_600_000


@dataclass(frozen=True)
class HostileRecord:
    topic_field: str      # TopicNames field
    value: bytes | None   # None: a Kafka tombstone (null value)
    expect_valid: bool
    klass: str
    event_id: str | None = None    # for valid events: the id the recommendation must carry
    request_id: str | None = None  # for valid requests


def _event(i: int, **over) -> dict:
    base = {"event_id": f"h-ev-{i}", "user_id": f"hu{i % 50}", "item_id": f"hi{i % 30}",
            "event_type": "view", "ts": T0 + i, "value": None}
    base.update(over)
    return base


def _dump(obj) -> bytes:
    return orjson.dumps(obj)


# Each class: name -> (topic field, factory(rng, i) -> (bytes|None, expect_valid)).
ClassFactory = Callable[[random.Random, int], tuple[bytes | None, bool]]


def _deep(depth: int) -> bytes:
    return b'{"event_id":"x","context":' + b"[" * depth + b"]" * depth + b"}"


EVENT_CLASSES: dict[str, ClassFactory] = {
    "binary_garbage": lambda r, i: (bytes(r.getrandbits(8) for _ in range(r.randint(1, 300))), False),
    "truncated_json": lambda r, i: (_dump(_event(i))[: r.randint(1, 40)], False),
    "deep_nesting": lambda r, i: (_deep(5000), False),
    "over_1mb": lambda r, i: (_dump(_event(i, context={"blob": "x" * 1_100_000})), False),
    "wrong_type_user": lambda r, i: (_dump(_event(i, user_id=12345)), False),
    "wrong_type_ts": lambda r, i: (_dump(_event(i, ts=str(T0))), False),
    "nan_token": lambda r, i: (_dump(_event(i)).replace(b'"value":null', b'"value":NaN'), False),
    "infinity_token": lambda r, i: (_dump(_event(i)).replace(b'"value":null', b'"value":Infinity'), False),
    "overflow_number": lambda r, i: (_dump(_event(i)).replace(b'"value":null', b'"value":1e400'), False),
    "negative_ts": lambda r, i: (_dump(_event(i, ts=-5)), False),
    "far_future_ts": lambda r, i: (_dump(_event(i, ts=T0 + 400 * 86_400_000 * 10)), False),
    "empty_user_id": lambda r, i: (_dump(_event(i, user_id="")), False),
    "missing_item": lambda r, i: (_dump({k: v for k, v in _event(i).items() if k != "item_id"}), False),
    "null_required": lambda r, i: (_dump(_event(i, event_type=None)), False),
    "unknown_event_type": lambda r, i: (_dump(_event(i, event_type="hack")), False),
    "top_level_array": lambda r, i: (b"[" + _dump(_event(i)) + b"]", False),
    "top_level_scalar": lambda r, i: (b"42", False),
    "empty_value": lambda r, i: (b"", False),
    "whitespace_only": lambda r, i: (b"   \n\t ", False),
    "bom_prefixed": lambda r, i: (b"\xef\xbb\xbf" + _dump(_event(i)), False),
    "invalid_utf8": lambda r, i: (b'{"event_id": "\xc0\xaf"}', False),
    "overlong_id": lambda r, i: (_dump(_event(i, item_id="i" * 300)), False),
    "rate_without_value": lambda r, i: (_dump(_event(i, event_type="rate")), False),
    "tombstone": lambda r, i: (None, False),
    # Hostile-looking but valid: must be accepted and must not break anything downstream.
    "unknown_fields": lambda r, i: (_dump(_event(i, extra={"a": 1}, __proto__="x")), True),
    "control_chars": lambda r, i: (_dump(_event(i, item_id="hi\u0001\u0007x")), True),
    "mixed_scripts": lambda r, i: (_dump(_event(i, user_id="пользователь-ユーザー-مستخدم-😀")), True),
    "injection_strings": lambda r, i: (_dump(_event(i, item_id="'; DROP TABLE items; --<script>")), True),
    "duplicate_json_keys": lambda r, i: (_dump(_event(i))[:-1] + b',"user_id":"dupkey"}', True),
}

OTHER_TOPIC_CLASSES: dict[str, tuple[str, ClassFactory]] = {
    "attr_wrong_age": ("user_attributes", lambda r, i: (_dump({"user_id": "hu1", "ts": T0, "attributes": {"age": "old"}}), False)),
    "attr_nested": ("user_attributes", lambda r, i: (_dump({"user_id": "hu1", "ts": T0, "attributes": {"x": {"y": 1}}}), False)),
    "attr_garbage": ("user_attributes", lambda r, i: (b"\x00\x01garbage", False)),
    "attr_pii_only": ("user_attributes", lambda r, i: (_dump({"user_id": f"hu{i % 50}", "ts": T0, "attributes": {"email": "x@y.z", "age": 33}}), True)),
    "item_missing_title": ("item_catalog", lambda r, i: (_dump({"item_id": "hx", "ts": T0, "categories": [], "tags": [], "available": True}), False)),
    "item_negative_price": ("item_catalog", lambda r, i: (_dump({"item_id": "hx", "ts": T0, "title": "t", "categories": [], "tags": [], "price": -1, "available": True}), False)),
    "item_tombstone": ("item_catalog", lambda r, i: (None, False)),
    "request_bad_k": ("recommendation_requests", lambda r, i: (_dump({"request_id": "hr", "user_id": "hu1", "ts": T0, "k": -3}), False)),
    "request_garbage": ("recommendation_requests", lambda r, i: (b"{{{{", False)),
    "privacy_unknown_action": ("privacy_requests", lambda r, i: (_dump({"user_id": "hu1", "ts": T0, "action": "sell"}), False)),
    "privacy_garbage": ("privacy_requests", lambda r, i: (b"\xff" * 10, False)),
}


def build_corpus(n_valid: int = 1500, bad_per_class: int = 30, seed: int = 11) -> list[HostileRecord]:
    """Valid events and requests interleaved with every hostile class, shuffled."""
    rng = random.Random(seed)
    out: list[HostileRecord] = []
    for i in range(n_valid):
        e = _event(i)
        out.append(HostileRecord("user_events", _dump(e), True, "valid", event_id=e["event_id"]))
    n = 0
    for name, factory in EVENT_CLASSES.items():
        count = 3 if name == "over_1mb" else bad_per_class  # keep the corpus a few MB
        for _ in range(count):
            n += 1
            value, ok = factory(rng, 100_000 + n)
            event_id = f"h-ev-{100_000 + n}" if ok else None
            out.append(HostileRecord("user_events", value, ok, name, event_id=event_id))
    for name, (topic_field, factory) in OTHER_TOPIC_CLASSES.items():
        for _ in range(bad_per_class):
            n += 1
            value, ok = factory(rng, n)
            out.append(HostileRecord(topic_field, value, ok, name))
    for j in range(50):
        rid = f"h-req-{j}"
        out.append(HostileRecord("recommendation_requests",
                                 _dump({"request_id": rid, "user_id": f"hu{j}", "ts": T0, "k": 5}),
                                 True, "valid_request", request_id=rid))
    rng.shuffle(out)
    return out


def class_names() -> list[str]:
    return list(EVENT_CLASSES) + list(OTHER_TOPIC_CLASSES)
