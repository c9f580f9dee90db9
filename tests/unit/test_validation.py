import orjson
import pytest

from state_schemas.config import EngineConfig
from udfs.validation import (
    KIND_ATTRIBUTES, KIND_EVENT, KIND_ITEM, KIND_PRIVACY, KIND_REQUEST, DeadLetter, parse_input)

CFG = EngineConfig()
NOW = 1_767_225_600_000  # 2026-01-01


def parse(obj, kind=KIND_EVENT, raw=None):
    data = raw if raw is not None else orjson.dumps(obj)
    return parse_input(data, kind, "topic-x", NOW, CFG.validation, CFG.profile)


def event(**over):
    base = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "click", "ts": NOW - 1000}
    base.update(over)
    return base


def test_valid_event_is_normalised_and_unknown_fields_dropped():
    out = parse(event(extra="x", value=None, context={"device": "ios"}))
    assert out == {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "click",
                   "ts": NOW - 1000, "value": None, "context": {"device": "ios"}}


@pytest.mark.parametrize("raw,reason", [
    (b"", "empty_record"),
    (None, "empty_record"),
    (b"\xff\xfe\x00garbage", "not_utf8"),
    (b'{"event_id": "e1", ', "malformed_json"),
    (b'{"ts": NaN}', "malformed_json"),
    (b"[1, 2]", "not_object"),
    (b'"just a string"', "not_object"),
])
def test_undecodable_records_go_to_dlq_with_reason(raw, reason):
    out = parse_input(raw, KIND_EVENT, "topic-x", NOW, CFG.validation, CFG.profile)
    assert isinstance(out, DeadLetter)
    assert out.reason == reason
    assert out.source_topic == "topic-x"
    assert out.error


@pytest.mark.parametrize("obj,reason,fragment", [
    ({"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": NOW}, "missing_field", "event_id"),
    (event(event_type="teleport"), "unknown_event_type", "event_type"),
    (event(ts="yesterday"), "invalid_field", "ts"),
    (event(ts=1.5), "invalid_field", "ts"),
    (event(user_id=""), "empty_key", "user_id"),
    (event(user_id=123), "invalid_field", "user_id"),
    (event(ts=5), "absurd_timestamp", "before"),
    (event(ts=NOW + 10 * 86_400_000), "absurd_timestamp", "future"),
    (event(event_type="rate", value=None), "invalid_field", "rating"),
])
def test_invalid_events_are_rejected_with_readable_error(obj, reason, fragment):
    out = parse(obj)
    assert isinstance(out, DeadLetter), out
    assert out.reason == reason
    assert fragment in out.error


def test_oversize_record_is_rejected_and_raw_truncated():
    big = orjson.dumps(event(context={"blob": "x" * (CFG.validation.max_record_bytes + 10)}))
    out = parse(None, raw=big)
    assert isinstance(out, DeadLetter) and out.reason == "oversize"
    assert out.raw_truncated and len(out.raw) == CFG.validation.dlq_raw_max_chars


def test_overflowing_number_is_rejected():
    out = parse(None, raw=b'{"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "rate", "ts": 1, "value": 1e999}')
    assert isinstance(out, DeadLetter) and out.reason == "malformed_json" and "infinity" in out.error


def test_rating_value_is_kept_as_float():
    out = parse(event(event_type="rate", value=4))
    assert out["value"] == 4.0


def test_attributes_drop_pii():
    rec = {"user_id": "u1", "ts": NOW, "attributes": {
        "age": 30, "gender": "F", "email": "a@b.c", "Phone": "123", "home_address": "x",
        "full_name": "Ann", "region": "EU"}}
    out = parse(rec, KIND_ATTRIBUTES)
    assert out["attributes"] == {"age": 30, "gender": "F", "region": "EU"}


def test_attributes_with_nested_values_rejected():
    out = parse({"user_id": "u1", "ts": NOW, "attributes": {"nested": {"a": 1}}}, KIND_ATTRIBUTES)
    assert isinstance(out, DeadLetter) and out.reason == "invalid_field"


def test_attributes_with_wrong_typed_age_rejected():
    out = parse({"user_id": "u1", "ts": NOW, "attributes": {"age": "thirty"}}, KIND_ATTRIBUTES)
    assert isinstance(out, DeadLetter) and out.reason == "invalid_field"


def test_item_dedups_categories_and_tags():
    out = parse({"item_id": "i1", "ts": NOW, "title": "T", "categories": ["a", "a", "b"],
                 "tags": ["x"], "price": 3, "available": True}, KIND_ITEM)
    assert out["categories"] == ["a", "b"] and out["price"] == 3.0


def test_request_defaults_and_caps_k():
    out = parse({"request_id": "r1", "user_id": "u1", "ts": NOW}, KIND_REQUEST)
    assert out["k"] == CFG.recommend.default_k
    out = parse({"request_id": "r1", "user_id": "u1", "ts": NOW, "k": 999}, KIND_REQUEST)
    assert out["k"] == CFG.recommend.max_k



@pytest.mark.parametrize("kind,fields", [
    (KIND_EVENT, event()),
    (KIND_ATTRIBUTES, {"user_id": "u1", "attributes": {"age": 30}}),
    (KIND_ITEM, {"item_id": "i1", "title": "T", "categories": [], "tags": [], "available": True}),
    (KIND_REQUEST, {"request_id": "r1", "user_id": "u1"}),
    (KIND_PRIVACY, {"user_id": "u1", "action": "forget"}),
])
@pytest.mark.parametrize("written", [b"1000000000000.0", b"1e12", b"1.0E12"])
def test_a_ts_written_as_an_integral_float_is_an_int(kind, fields, written):
    """JSON Schema's integer admits 1e12 and 1000000000000.0; the engine stores ts in integer
    fields (a float one failed the profile's encoding, and the job, at every write-back)."""
    raw = orjson.dumps({**fields, "ts": 0}).replace(b'"ts":0', b'"ts":' + written)
    out = parse(None, kind, raw=raw)
    assert not isinstance(out, DeadLetter), out
    assert out["ts"] == 10 ** 12 and type(out["ts"]) is int
    assert isinstance(parse(None, kind, raw=raw.replace(written, b"1000000000000.5")),
                      DeadLetter)

def test_privacy_request_only_knows_forget():
    assert parse({"user_id": "u1", "ts": NOW, "action": "forget"}, KIND_PRIVACY)["action"] == "forget"
    assert isinstance(parse({"user_id": "u1", "ts": NOW, "action": "sell"}, KIND_PRIVACY), DeadLetter)


def test_dead_letter_message_matches_schema():
    from state_schemas import validator

    out = parse(None, raw=b"nope")
    validator("events-dlq")(out.to_message())


def test_rejected_attributes_record_is_redacted_in_the_dlq():
    out = parse({"user_id": "u1", "ts": NOW, "attributes": {"age": "x", "email": "ann@example.com"}},
                KIND_ATTRIBUTES)
    assert isinstance(out, DeadLetter)
    assert "ann@example.com" not in out.raw and "[redacted]" in out.raw


@pytest.mark.parametrize("written", ["ｕ１", "u\u200b1", "\ufeffu1", "u\u00ad1", "u1"])
def test_ids_are_normalised_so_look_alikes_are_one_user(written):
    out = parse(event(user_id=written, item_id=written.replace("u", "i").replace("ｕ", "ｉ")))
    assert (out["user_id"], out["item_id"]) == ("u1", "i1")
    for kind, rec in ((KIND_PRIVACY, {"user_id": written, "ts": NOW, "action": "forget"}),
                      (KIND_REQUEST, {"request_id": "r", "user_id": written, "ts": NOW})):
        assert parse(rec, kind)["user_id"] == "u1"


def test_an_id_that_is_empty_or_too_long_once_normalised_is_rejected():
    assert parse(event(user_id="\u200b\u200b")).reason == "empty_key"
    # U+FDFA becomes 18 characters under NFKC: 20 of them pass the schema's 256, not after
    long = parse(event(user_id="\ufdfa" * 20))
    assert long.reason == "invalid_field" and "normalised" in long.error


def test_one_walk_finds_nesting_beyond_the_limit_and_non_finite_numbers_at_any_depth():
    from udfs.validation import _walk

    def nested(levels, leaf):
        v = leaf
        for n in range(levels):
            v = {"k": v} if n % 2 else [v]
        return v

    assert _walk({"a": nested(3, 1.0)}, 3) == (False, False)
    assert _walk({"a": nested(4, 1.0)}, 3)[0] is True            # one level too many
    assert _walk({"a": nested(3, float("inf"))}, 3) == (False, True)
    assert _walk({"x": 1.0, "y": [2.0, {"z": -float("inf")}]}, 8) == (False, True)
    assert _walk({"deep": nested(100_000, 0.0)}, 8)[0] is True     # iterative: no recursion
