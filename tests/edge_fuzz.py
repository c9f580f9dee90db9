"""Hypothesis-generated records for every input topic of the job, and what the edge must make of
each (issue 13, "property-based fuzzing of the edge").

The generator mixes, per topic: valid records, valid records with mutated fields (dropped,
replaced by any JSON value, duplicated with another value), arbitrary JSON values of any depth
up to past the parser's limit, extreme numbers (1e400, 2**70, NaN and Infinity tokens, -0),
Unicode tricks (lone surrogates, zero-width, bidi overrides, NUL, combining marks), huge
strings, raw bytes and tombstones. The draw is derandomised from ``SEED``, so a run is
reproducible; ``tests/fuzz_examples.json`` keeps records that once broke the engine, and they
are sent first.

:func:`expected` is the oracle: the edge's own validation (``udfs.validation.parse_input``) plus
the routing-key rule the Java deserializer applies. :func:`fuzz_stream` drops the few records
whose outcome would depend on the order of records across topics (a forget racing an event of
the same user) or on other records (an event id drawn twice), so every remaining record has
exactly one expected outcome.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from hypothesis import seed as hypothesis_seed

from state_schemas.config import EngineConfig
from udfs import validation as edge

SEED = 20261201
EXAMPLES_FILE = Path(__file__).with_name("fuzz_examples.json")
TOPICS = ("user_events", "user_attributes", "item_catalog", "recommendation_requests",
          "privacy_requests")
KIND_OF = {"user_events": edge.KIND_EVENT, "user_attributes": edge.KIND_ATTRIBUTES,
           "item_catalog": edge.KIND_ITEM, "recommendation_requests": edge.KIND_REQUEST,
           "privacy_requests": edge.KIND_PRIVACY}
KEY_FIELD = {t: "item_id" if t == "item_catalog" else "user_id" for t in TOPICS}
# Users of privacy requests are kept apart from everyone else's: a forget would otherwise race
# (across topics, in no fixed order) with the same user's events.
USER_POOL = {"user_events": "fu", "user_attributes": "au", "recommendation_requests": "fu",
             "privacy_requests": "pu"}


@dataclass(frozen=True)
class FuzzRecord:
    topic: str              # TopicNames field
    value: bytes | None     # None: a Kafka tombstone


# ------------------------------------------------------------------------ JSON with tricks

TRICKS = ["\u200b", "\u202e", "\ufeff", "\uff45", "e\u0301", "\U0001F600", "\x00", "\ud800",
          "\udfff", "\\", '"', "\n", "\u0130", "\u00df", "\ufb01", "\u0435mail", "\u2028"]

leaf_text = st.one_of(
    st.text(max_size=12),
    st.lists(st.sampled_from(TRICKS), min_size=1, max_size=4).map("".join),
)
huge_text = st.integers(30_000, 70_000).map(lambda n: "x" * n)  # around the record size limit
numbers = st.one_of(
    st.integers(-(2 ** 70), 2 ** 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["1e400", "-1e400", "-0", "NaN", "Infinity", "-Infinity", "1E308",
                     "0.0000000000000000000001", "123456789012345678901234567890"]).map(
        lambda t: RawJson(t)),
)


class RawJson(str):
    """JSON text written as is: number tokens json cannot write (1e400, NaN), and nestings too
    deep for a recursive writer."""


class Duplicated(list):
    """An object written with its keys as given, duplicates included."""


def _dump(value: Any, ascii_only: bool) -> str:
    if isinstance(value, RawJson):
        return str(value)
    if isinstance(value, Duplicated):
        return "{" + ",".join(f"{_dump(str(k), ascii_only)}:{_dump(v, ascii_only)}"
                              for k, v in value) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_dump(str(k), ascii_only)}:{_dump(v, ascii_only)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def to_bytes(value: Any, ascii_only: bool) -> bytes:
    # Lone surrogates survive as \\ud800 escapes (ascii) or as invalid UTF-8 bytes (raw).
    return _dump(value, ascii_only).encode("utf-8", "surrogatepass")


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, leaf_text),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=12)


def nested(depth: int) -> RawJson:
    """Objects and arrays alternating ``depth`` levels deep around a 1."""
    opens = "".join("[" if n % 2 else '{"n":' for n in range(depth))
    closes = "".join("]" if n % 2 else "}" for n in reversed(range(depth)))
    return RawJson(opens + "1" + closes)


deep_values = st.integers(1, 1_100).map(nested)  # past orjson's and Jackson's limits


# ------------------------------------------------------------------------ valid templates

FULL_WIDTH = {c: c + 0xFEE0 for c in range(0x21, 0x7F)}  # "u1" -> "ｕ１"

def template(topic: str, i: int, draw) -> dict[str, Any]:
    now = int(time.time() * 1000)
    ts = now - draw(st.integers(0, 3_600_000))
    user = f"{USER_POOL.get(topic, 'fu')}{draw(st.integers(0, 39))}"
    # the same user written differently: full-width letters, a zero-width space inside
    user = draw(st.sampled_from([user, user, user.translate(FULL_WIDTH),
                                 user[:1] + "\u200b" + user[1:]]))
    if topic == "user_events":
        etype = draw(st.sampled_from(["view", "click", "like", "share", "comment",
                                      "add_to_cart", "purchase", "rate", "not_interested"]))
        return {"event_id": f"fz-{i}", "user_id": user, "item_id": f"fi{draw(st.integers(0, 29))}",
                "event_type": etype, "ts": ts,
                "value": draw(st.floats(0, 5)) if etype == "rate" else None,
                "context": draw(st.one_of(st.none(), st.dictionaries(
                    st.text(max_size=5), st.text(max_size=5), max_size=2)))}
    if topic == "user_attributes":
        return {"user_id": f"au{i}", "ts": ts, "attributes": draw(st.dictionaries(
            st.sampled_from(["age", "gender", "city", "email", "plan", "\uff45mail"]),
            st.one_of(st.integers(0, 99), st.text(max_size=8)), max_size=4))}
    if topic == "item_catalog":
        return {"item_id": f"fi{draw(st.integers(0, 29))}", "ts": ts, "title": draw(leaf_text),
                "categories": draw(st.lists(st.text(max_size=6), max_size=3)),
                "tags": draw(st.lists(st.text(max_size=6), max_size=3)),
                "price": draw(st.one_of(st.none(), st.floats(0, 1000))),
                "available": draw(st.booleans())}
    if topic == "recommendation_requests":
        return {"request_id": f"fz-req-{i}", "user_id": user, "ts": ts,
                "k": draw(st.one_of(st.none(), st.integers(-2, 200)))}
    return {"user_id": user, "ts": ts, "action": "forget"}


@st.composite
def fuzz_record(draw, i: int) -> FuzzRecord:
    topic = draw(st.sampled_from(TOPICS))
    shape = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "mutated",
                                  "duplicate_key", "deep", "any_json", "any_json", "bytes",
                                  "huge", "tombstone"]))
    ascii_only = draw(st.booleans())
    if shape == "tombstone":
        return FuzzRecord(topic, None)
    if shape == "bytes":
        return FuzzRecord(topic, draw(st.binary(max_size=300)))
    if shape == "any_json":
        return FuzzRecord(topic, to_bytes(draw(json_values), ascii_only))
    rec = template(topic, i, draw)
    if shape == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            field = draw(st.sampled_from(sorted(rec) + ["extra"]))
            if draw(st.booleans()) and field in rec:
                del rec[field]
            else:
                rec[field] = draw(json_values)
    elif shape == "huge":
        rec[draw(st.sampled_from(sorted(rec) + ["extra"]))] = draw(huge_text)
    elif shape == "deep":
        rec[draw(st.sampled_from(["context", "attributes", "title", "extra"]))] = draw(deep_values)
    elif shape == "duplicate_key":
        field = draw(st.sampled_from(sorted(rec)))
        pairs = list(rec.items())
        pairs.insert(draw(st.integers(0, len(pairs))), (field, draw(json_values)))
        return FuzzRecord(topic, to_bytes(Duplicated(pairs), ascii_only))
    return FuzzRecord(topic, to_bytes(rec, ascii_only))


# ------------------------------------------------------------------------ the oracle

def routing_key(topic: str, value: bytes | None) -> str:
    """The key the Java deserializer routes by: the top-level key field's last string value,
    normalised like the edge's ids, else empty."""
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return ""
    v = obj.get(KEY_FIELD[topic]) if isinstance(obj, dict) else None
    return edge.normalise_id(v) if isinstance(v, str) else ""


@dataclass(frozen=True)
class Outcome:
    valid: bool
    reason: str | None               # the dead letter's reason
    parsed: dict[str, Any] | None    # the normalised record when valid


def expected(r: FuzzRecord, cfg: EngineConfig) -> Outcome:
    parsed = edge.parse_input(r.value, KIND_OF[r.topic], r.topic, int(time.time() * 1000),
                              cfg.validation, cfg.profile, cfg.recommend.default_k,
                              cfg.recommend.max_k)
    if isinstance(parsed, edge.DeadLetter):
        return Outcome(False, parsed.reason, None)
    if r.topic != "item_catalog" and routing_key(r.topic, r.value) != parsed["user_id"]:
        return Outcome(False, "invalid_field", None)  # ambiguous user id
    return Outcome(True, None, parsed)


def fuzz_stream(n: int, cfg: EngineConfig) -> list[tuple[FuzzRecord, Outcome]]:
    """The saved examples, then ``n`` drawn records with their expected outcomes, without the
    order-dependent few (see the module docstring)."""
    drawn: list[FuzzRecord] = []

    @hypothesis_seed(SEED)
    @settings(max_examples=n, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(st.data())
    def collect(data):
        drawn.append(data.draw(fuzz_record(len(drawn))))

    collect()
    stream: list[tuple[FuzzRecord, Outcome]] = []
    seen_ids: set[tuple[str, str]] = set()
    users_of = {t: set() for t in TOPICS}
    forgotten: set[str] = set()
    for r in saved_examples() + drawn[:n]:
        out = expected(r, cfg)
        if out.valid and r.topic != "item_catalog":
            user = out.parsed["user_id"]
            unique = {"user_events": "event_id", "recommendation_requests": "request_id",
                      "user_attributes": None, "privacy_requests": None}[r.topic]
            if unique is not None:
                ident = (r.topic, out.parsed[unique])
                if ident in seen_ids:
                    continue
                seen_ids.add(ident)
            if r.topic == "user_attributes" and user in users_of["user_attributes"]:
                continue  # merged attribute counts would depend on the other record
            if r.topic == "privacy_requests":
                if any(user in users_of[t] for t in TOPICS if t != "privacy_requests"):
                    continue
                forgotten.add(user)
            elif user in forgotten:
                continue
            users_of[r.topic].add(user)
        stream.append((r, out))
    return stream


def saved_examples() -> list[FuzzRecord]:
    """Records that once broke the engine (``tests/fuzz_examples.json``: topic, value as text
    with surrogates escaped, or null for a tombstone; ``TS`` stands for the current time)."""
    if not EXAMPLES_FILE.exists():
        return []
    now = str(int(time.time() * 1000))
    return [FuzzRecord(e["topic"], None if e["value"] is None
                       else e["value"].replace("TS", now).encode("utf-8", "surrogatepass"))
            for e in json.loads(EXAMPLES_FILE.read_text())["examples"]]
