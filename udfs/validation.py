"""Cleaning at the job's edge: bytes from Kafka in, a typed record or a dead letter out.

Nothing here raises on bad input: every way a record can be wrong maps to a ``DeadLetter`` with a
machine-readable ``reason`` (a metrics label) and an ``error`` a person can read. The JSON Schema
files in ``state_schemas/json`` are the single source of truth for shape and types; this module
adds the checks a schema cannot express (size, encoding, time sanity, finite numbers, PII).
"""

from __future__ import annotations

import functools
import math
import unicodedata
from dataclasses import dataclass
from typing import Any

import orjson

from state_schemas.config import ProfileConfig, ValidationConfig
from state_schemas import validator
from udfs.privacy import redact_personal_text

# Logical input kinds and the schema each is validated against.
KIND_EVENT = "user-event"
KIND_ATTRIBUTES = "user-attributes"
KIND_ITEM = "item-catalog"
KIND_REQUEST = "recommendation-request"
KIND_PRIVACY = "privacy-request"
INPUT_KINDS = (KIND_EVENT, KIND_ATTRIBUTES, KIND_ITEM, KIND_REQUEST, KIND_PRIVACY)


@dataclass(slots=True)
class DeadLetter:
    """A rejected input record, as written to ``events-dlq``."""
    source_topic: str
    raw: str
    raw_truncated: bool
    error: str
    reason: str
    ts: int

    def to_message(self) -> dict[str, Any]:
        return {"schema_version": 1, "source_topic": self.source_topic, "raw": self.raw,
                "raw_truncated": self.raw_truncated, "error": self.error, "reason": self.reason,
                "ts": self.ts}


def _raw_text(raw: bytes, limit: int) -> tuple[str, bool]:
    text = raw[: limit * 4].decode("utf-8", errors="replace")
    return (text[:limit], True) if len(text) > limit or len(raw) > limit * 4 else (text, False)


def dead_letter(raw: bytes | str, source_topic: str, reason: str, error: str, now_ms: int,
                cfg: ValidationConfig) -> DeadLetter:
    data = raw.encode("utf-8", errors="replace") if isinstance(raw, str) else raw
    text, truncated = _raw_text(data, cfg.dlq_raw_max_chars)
    return DeadLetter(source_topic, text, truncated, error, reason, now_ms)


# The identifiers of each input kind, normalised at the edge (and, for the routing key, in
# the Java deserializer, which must agree: deploy/java/.../InputRecordDeserializer.java).
ID_FIELDS: dict[str, tuple[str, ...]] = {
    KIND_EVENT: ("user_id", "item_id"), KIND_ATTRIBUTES: ("user_id",), KIND_ITEM: ("item_id",),
    KIND_REQUEST: ("user_id",), KIND_PRIVACY: ("user_id",)}
# Invisible characters that would make two ids look the same and differ: zero-width space,
# non-joiner and joiner, word joiner, byte-order mark, soft hyphen, Mongolian vowel separator.
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"
_DROP_ZERO_WIDTH = dict.fromkeys(map(ord, ZERO_WIDTH))


def normalise_id(value: str) -> str:
    """A user or item id as the engine knows it: zero-width characters removed, then Unicode
    NFKC (full-width and other compatibility forms folded). ASCII ids are unchanged."""
    if value.isascii():
        return value
    return unicodedata.normalize("NFKC", value.translate(_DROP_ZERO_WIDTH))


def _schema_reason(rule: str | None, message: str) -> str:
    if rule == "required":
        return "missing_field"
    if rule == "enum" and "event_type" in message:
        return "unknown_event_type"
    if rule in ("minLength",) and message.split(" ")[0].endswith("_id"):
        return "empty_key"
    return "invalid_field"


_isfinite = math.isfinite


def _check_ts(ts: int, now_ms: int, cfg: ValidationConfig) -> str | None:
    if ts < cfg.min_ts_ms:
        return f"ts {ts} is before {cfg.min_ts_ms} (absurd timestamp)"
    if ts > now_ms + cfg.max_future_skew_ms:
        return f"ts {ts} is more than {cfg.max_future_skew_ms} ms in the future (absurd timestamp)"
    return None


def _walk(record: dict[str, Any], limit: int) -> tuple[bool, bool]:
    """``(too deep, non-finite)`` in one iterative walk (a crafted record must not exhaust the
    stack of the check either): whether objects/arrays nest deeper than ``limit`` levels below
    the record itself, and whether it holds a float that overflowed to infinity (orjson rejects
    the NaN/Infinity tokens but reads 1e999 as inf, which JSON allows). Exact types: what
    orjson produces."""
    non_finite = False
    stack: list[tuple[Any, int]] = [(record, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True, non_finite
        for child in (value.values() if type(value) is dict else value):
            kind = type(child)
            if kind is float:
                if not _isfinite(child):
                    non_finite = True
            elif kind is dict or kind is list:
                stack.append((child, depth + 1))
    return False, non_finite


def _out_of_range(rec: dict[str, Any], kind: str, cfg: ValidationConfig) -> str | None:
    if kind == KIND_EVENT:
        value = rec.get("value")
        if value is not None and abs(value) > cfg.max_abs_value:
            return f"value {value!r} is outside [-{cfg.max_abs_value:g}, {cfg.max_abs_value:g}]"
    elif kind == KIND_ITEM:
        price = rec.get("price")
        if price is not None and not 0 <= price <= cfg.max_price:
            return f"price {price!r} is outside [0, {cfg.max_price:g}]"
    return None


def _attributes_limit(attributes: dict[str, Any], cfg: ValidationConfig) -> str | None:
    if len(attributes) > cfg.max_attributes:
        return f"{len(attributes)} attributes; the limit is {cfg.max_attributes}"
    for k, v in attributes.items():
        if len(k) > cfg.max_attribute_key_chars:
            return (f"an attribute name is {len(k)} characters long; the limit is "
                    f"{cfg.max_attribute_key_chars}")
        if isinstance(v, str) and len(v) > cfg.max_attribute_value_chars:
            return (f"attribute {k[:cfg.max_attribute_key_chars]!r} is {len(v)} characters long; "
                    f"the limit is {cfg.max_attribute_value_chars}")
    return None


def _normalise_event(rec: dict[str, Any]) -> dict[str, Any] | str:
    value = rec.get("value")
    if rec["event_type"] == "rate":
        if value is None:
            return "event_type 'rate' needs a numeric 'value' (the rating)"
        value = float(value)
    elif value is not None:
        value = float(value)
    context = rec.get("context")
    return {"event_id": rec["event_id"], "user_id": rec["user_id"], "item_id": rec["item_id"],
            "event_type": rec["event_type"], "ts": rec["ts"], "value": value,
            "context": context if isinstance(context, dict) else None}


# Letters of other scripts that look like Latin ones (Unicode confusables), so "еmail" with a
# Cyrillic "е" is still an email attribute. NFKC already folds full-width and compatibility
# forms; zero-width characters (ZERO_WIDTH, as for ids) are dropped.
_HOMOGLYPHS = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "х": "x", "у": "y", "і": "i",
    "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l", "ո": "n", "ս": "u", "α": "a",
    "ε": "e", "ο": "o", "ρ": "p", "ι": "i", "κ": "k", "ν": "v", "τ": "t", "μ": "m",
    **dict.fromkeys(ZERO_WIDTH)})


def normalised_name(name: str) -> str:
    """An attribute name as the personal-data check compares it: NFKC, zero-width characters
    and soft hyphens removed, homoglyphs mapped to Latin, case-folded, separators as "_"."""
    if name.isascii():  # (NFKC and the mapping change nothing; casefold is lower)
        key = name.lower().strip()
    else:
        key = unicodedata.normalize("NFKC", name).translate(_HOMOGLYPHS).casefold().strip()
    return key.replace("-", "_").replace(" ", "_").replace(".", "_")


@functools.lru_cache(maxsize=8)
def pii_names(configured: tuple[str, ...]) -> frozenset[str]:
    """``profile.pii_attribute_names`` as compared (lower case), built once per list."""
    return frozenset(n.lower() for n in configured)


def is_pii_attribute(name: str, pii_names: frozenset[str]) -> bool:
    """Attribute names that look like personal data: exact list plus obvious substrings, on
    the normalised name."""
    key = normalised_name(name)
    return key in pii_names or any(s in key for s in ("email", "e_mail", "phone", "address",
                                                      "passport"))


def redact_attributes(rec: dict[str, Any], pii_names: frozenset[str]) -> dict[str, Any]:
    """The record with the values of PII-looking attributes replaced (for dead letters)."""
    attributes = rec.get("attributes")
    if not isinstance(attributes, dict):
        return rec
    return {**rec, "attributes": {k: "[redacted]" if is_pii_attribute(str(k), pii_names) else v
                                  for k, v in attributes.items()}}


def redacted_attributes_payload(raw: bytes, profile_cfg: ProfileConfig) -> bytes:
    """An attributes record (already parsed once) with its PII-looking values redacted, for a
    dead letter rejected after parsing."""
    return orjson.dumps(redact_attributes(orjson.loads(raw),
                                          pii_names(tuple(profile_cfg.pii_attribute_names))))


def _normalise_attributes(rec: dict[str, Any], pii_names: frozenset[str]) -> dict[str, Any]:
    # Values shaped like emails or phone numbers are redacted whatever the attribute's name.
    attributes = {k: redact_personal_text(v) if isinstance(v, str) else v
                  for k, v in rec["attributes"].items()
                  if not is_pii_attribute(k, pii_names) and not isinstance(v, (dict, list))}
    return {"user_id": rec["user_id"], "ts": rec["ts"], "attributes": attributes}


def _normalise_item(rec: dict[str, Any]) -> dict[str, Any]:
    price = rec.get("price")
    return {"item_id": rec["item_id"], "ts": rec["ts"], "title": rec["title"],
            "categories": list(dict.fromkeys(rec["categories"])), "tags": list(dict.fromkeys(rec["tags"])),
            "price": float(price) if price is not None else None, "available": rec["available"]}


def _normalise_request(rec: dict[str, Any], default_k: int, max_k: int) -> dict[str, Any]:
    k = rec.get("k")
    return {"request_id": rec["request_id"], "user_id": rec["user_id"], "ts": rec["ts"],
            "k": min(int(k), max_k) if k is not None else default_k,
            "context": rec.get("context") if isinstance(rec.get("context"), dict) else None}


def _normalise_privacy(rec: dict[str, Any]) -> dict[str, Any]:
    return {"user_id": rec["user_id"], "ts": rec["ts"], "action": rec["action"]}


def parse_input(raw: bytes | None, kind: str, source_topic: str, now_ms: int,
                cfg: ValidationConfig, profile_cfg: ProfileConfig,
                default_k: int = 10, max_k: int = 100) -> dict[str, Any] | DeadLetter:
    """Decode, validate and normalise one input record of ``kind`` (one of ``INPUT_KINDS``).

    Returns the normalised record (only the contract's fields, typed) or a ``DeadLetter``.
    """
    def reject(reason: str, error: str) -> DeadLetter:
        return dead_letter(raw or b"", source_topic, reason, error, now_ms, cfg)

    if raw is None or len(raw) == 0:
        return reject("empty_record", "record has no value")
    if len(raw) > cfg.max_record_bytes:
        return reject("oversize", f"record is {len(raw)} bytes; the limit is {cfg.max_record_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return reject("not_utf8", f"record is not UTF-8 text: {e.reason} at byte {e.start}")
    try:
        rec = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        return reject("malformed_json", f"not valid JSON: {e}")
    if not isinstance(rec, dict):
        return reject("not_object", f"expected a JSON object, got {type(rec).__name__}")
    too_deep, non_finite = _walk(rec, cfg.max_nesting_depth)
    if too_deep:
        return reject("too_deep", f"objects or arrays nest deeper than "
                                  f"{cfg.max_nesting_depth} levels")
    if kind == KIND_ATTRIBUTES:
        # A rejected attributes record must not carry personal data into the DLQ either.
        raw = orjson.dumps(redact_attributes(rec, pii_names(tuple(profile_cfg.pii_attribute_names))))
    try:
        validator(kind)(rec)
    except Exception as e:  # fastjsonschema.JsonSchemaValueException
        message = str(e).replace("data.", "", 1) if str(e).startswith("data.") else str(e)
        return reject(_schema_reason(getattr(e, "rule", None), message), f"schema {kind}: {message}")
    if non_finite:
        return reject("non_finite_number", "record contains a non-finite number")
    out_of_range = _out_of_range(rec, kind, cfg)
    if out_of_range:
        return reject("out_of_range", out_of_range)
    if kind == KIND_ATTRIBUTES:
        too_many = _attributes_limit(rec["attributes"], cfg)
        if too_many:
            return reject("attributes_limit", too_many)
    bad_ts = _check_ts(rec["ts"], now_ms, cfg)
    if bad_ts:
        return reject("absurd_timestamp", bad_ts)
    # JSON Schema's integer includes integral floats (1e12, 1000000000000.0): typed here, or a
    # float ts reaches the profile and its binary encoding fails at write-back, failing the task
    # on every replay (the edge fuzz found it). Exact: ts is bounded by the check above.
    rec["ts"] = int(rec["ts"])
    for field in ID_FIELDS[kind]:
        value = rec[field] = normalise_id(rec[field])
        if not value:
            return reject("empty_key", f"{field} is empty once normalised")
        if len(value) > cfg.max_id_length:
            return reject("invalid_field", f"{field} is longer than {cfg.max_id_length} "
                                           f"characters once normalised (NFKC)")
    if kind == KIND_EVENT:
        out = _normalise_event(rec)
        if isinstance(out, str):
            return reject("invalid_field", out)
        return out
    if kind == KIND_ATTRIBUTES:
        return _normalise_attributes(rec, pii_names(tuple(profile_cfg.pii_attribute_names)))
    if kind == KIND_ITEM:
        return _normalise_item(rec)
    if kind == KIND_REQUEST:
        return _normalise_request(rec, default_k, max_k)
    if kind == KIND_PRIVACY:
        return _normalise_privacy(rec)
    raise ValueError(f"unknown input kind {kind!r}")
