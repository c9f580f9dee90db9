"""Erasure that holds, on the user operator's engine with its keyed state kept between batches
(as Flink keeps it, including across a restart of the operator).

After a forget, the profile's state slot holds a forgotten-user marker: later, late or replayed
records of that user become ``forgotten_user`` dead letters without payload and re-create
nothing, until the marker expires. Dead letters are keyed by the (pseudonymised) user and carry
neither raw ids (with pseudonymisation on) nor email- or phone-shaped values.
"""

from __future__ import annotations

import orjson
import pytest

from state_schemas import records as rec
from state_schemas.config import load_config
from state_schemas.profile_state import decode_forgotten, encode_forgotten
from state_schemas.versioning import StateVersionError
from recsys.evaluation.simulate import keyed_batch
from udfs.privacy import pseudonymize, pseudonymize_raw_user_ids, redact_personal_text
from udfs.user_side import STATE_IMPRESSIONS, STATE_PROFILE, Record, UserSide
from udfs.validation import is_pii_attribute

T0 = 1_767_225_600_000
KEY = b"k" * 32
NO_WATERMARK = -(1 << 63)


def event(eid: str, user: str = "u1", item: str = "i1", etype: str = "purchase", dt: int = 0,
          **extra) -> bytes:
    return orjson.dumps({"event_id": eid, "user_id": user, "item_id": item, "event_type": etype,
                         "ts": T0 + dt, "value": None, **extra})


def forget(user: str = "u1") -> bytes:
    return orjson.dumps({"user_id": user, "ts": T0, "action": "forget"})


def request(user: str = "u1") -> bytes:
    return orjson.dumps({"request_id": "r1", "user_id": user, "ts": T0})


class Host:
    """What the Flink operator does around UserSide: keyed state per user, timers, the
    processing-time clock, the routing key read (and pseudonymised) in Java."""

    def __init__(self, *overrides: str, pseudonym_key: bytes | None = None) -> None:
        self.cfg = load_config(overrides=list(overrides), environ={})
        self.key = pseudonym_key
        self.now = T0
        self.state: dict[str, list[bytes | None]] = {}
        self.timers: list[tuple[str, int]] = []
        self.restart()

    def restart(self) -> None:
        """A new operator instance: nothing cached, everything from keyed state."""
        self.side = UserSide(self.cfg, pseudonym_key=self.key, clock=lambda: self.now / 1000)

    def routing_key(self, user: str) -> str:
        return pseudonymize(user, self.key, self.cfg.privacy.pseudonym_hex_chars) \
            if self.key else user

    def batch(self, records: list[tuple[int, str, bytes]]) -> dict:
        return self._run(*keyed_batch((self.routing_key(u), kind, payload, T0)
                                      for kind, u, payload in records))

    def fire_timers(self) -> dict:
        due = [(k, t) for k, t in self.timers if t <= self.now]
        self.timers = [(k, t) for k, t in self.timers if t > self.now]
        keys = list(dict.fromkeys(k for k, _ in due))
        return self._run(keys, [Record(rec.KIND_TIMER, keys.index(k), t, 0, b"") for k, t in due])

    def _run(self, keys: list[str], batch: list[Record]) -> dict:
        out = self.side.process(keys, [list(self.state.get(k, [None, None])) for k in keys],
                                batch, self.now, NO_WATERMARK, checkpoint=True)
        for key, which, value in out.state_updates:
            user = keys[key] if isinstance(key, int) else key
            self.state.setdefault(user, [None, None])[which] = value
        self.timers += [(keys[k] if isinstance(k, int) else k, t) for k, t in out.timers]
        return {
            "dlq": [(k, orjson.loads(v)) for k, v in out.outputs.of(rec.USER_OUT_DLQ)],
            "recs": out.outputs.of(rec.USER_OUT_RECOMMENDATIONS),
            "profiles": out.outputs.of(rec.USER_OUT_PROFILES),
            "activity": out.outputs.of(rec.USER_OUT_ACTIVITY, rec.KIND_ACTIVITY),
        }


def test_the_forgotten_marker_codec_round_trips_and_rejects_other_versions():
    blob = encode_forgotten(T0)
    assert decode_forgotten(blob) == T0
    assert decode_forgotten(b"UP\x03" + b"\0" * 40) is None  # a profile is not a marker
    with pytest.raises(StateVersionError):
        decode_forgotten(blob[:2] + b"\x09" + blob[3:])


def test_after_a_forget_no_record_brings_the_user_back():
    h = Host()
    h.batch([(rec.KIND_EVENT, "u1", event("e1")), (rec.KIND_EVENT, "u2", event("e2", "u2"))])
    assert h.state["u1"][STATE_PROFILE] is not None
    out = h.batch([(rec.KIND_PRIVACY, "u1", forget())])
    assert [(k, v) for k, v in out["profiles"] + out["recs"]] == [("u1", None), ("u1", None)]
    assert decode_forgotten(h.state["u1"][STATE_PROFILE]) == T0
    assert h.state["u1"][STATE_IMPRESSIONS] is None

    later = [(rec.KIND_EVENT, "u1", event("e1")),  # a replay of an old event
             (rec.KIND_EVENT, "u1", event("e9", dt=5_000, context={"email": "ann@example.com"})),
             (rec.KIND_REQUEST, "u1", request()),
             (rec.KIND_ATTRIBUTES, "u1", orjson.dumps(
                 {"user_id": "u1", "ts": T0, "attributes": {"age": 30}}))]
    for restarted in (False, True):  # from the operator's cache, and from keyed state alone
        if restarted:
            h.restart()
        out = h.batch(later)
        assert [(k, d["reason"], d["raw"]) for k, d in out["dlq"]] == \
            [("u1", "forgotten_user", "")] * 4
        assert out["recs"] == out["profiles"] == out["activity"] == []
        assert decode_forgotten(h.state["u1"][STATE_PROFILE]) == T0
    # other users are untouched
    out = h.batch([(rec.KIND_EVENT, "u2", event("e3", "u2", "i2"))])
    assert out["dlq"] == [] and len(out["recs"]) == 1


def test_the_marker_expires_by_its_timer_and_the_user_may_start_afresh():
    h = Host("privacy.forgotten_marker_ttl_ms=60000")
    h.batch([(rec.KIND_EVENT, "u1", event("e1"))])
    h.batch([(rec.KIND_PRIVACY, "u1", forget())])
    assert ("u1", T0 + 60_000) in h.timers
    h.now = T0 + 59_999
    assert h.batch([(rec.KIND_EVENT, "u1", event("e2"))])["dlq"][0][1]["reason"] == "forgotten_user"
    h.now = T0 + 60_000
    h.fire_timers()
    assert h.state["u1"][STATE_PROFILE] is None  # nothing left of the user in keyed state
    h.restart()
    out = h.batch([(rec.KIND_EVENT, "u1", event("e3"))])
    assert out["dlq"] == [] and len(out["recs"]) == 1
    counters = orjson.loads(out["profiles"][0][1])["counters"]["all_time"]
    assert counters == {"purchase": 1}  # a new profile, nothing from before the forget


def test_without_a_marker_ttl_a_forget_just_deletes():
    h = Host("privacy.forgotten_marker_ttl_ms=0")
    h.batch([(rec.KIND_EVENT, "u1", event("e1"))])
    h.batch([(rec.KIND_PRIVACY, "u1", forget())])
    assert h.state["u1"] == [None, None] and h.timers == []


def test_an_inactive_user_expires_with_tombstones_and_activity_postpones_it():
    h = Host("profile.inactive_user_ttl_ms=60000")
    h.batch([(rec.KIND_EVENT, "u1", event("e1")), (rec.KIND_EVENT, "u2", event("e2", "u2"))])
    h.now = T0 + 30_000
    h.batch([(rec.KIND_EVENT, "u2", event("e3", "u2", "i2"))])  # u2 stays active
    h.now = T0 + 75_000
    out = h.fire_timers()
    assert [(k, v) for k, v in out["profiles"] + out["recs"]] == [("u1", None), ("u1", None)]
    assert h.state["u1"] == [None, None] and h.state["u2"][STATE_PROFILE] is not None
    h.restart()  # u2's remaining timer works from keyed state alone
    h.now = T0 + 120_000
    out = h.fire_timers()
    assert [k for k, v in out["profiles"]] == ["u2"] and h.state["u2"] == [None, None]
    # an expired user may come back (no marker: expiry is not an erasure request)
    out = h.batch([(rec.KIND_EVENT, "u1", event("e4"))])
    assert out["dlq"] == [] and len(out["recs"]) == 1
    assert len({t for k, t in h.timers if k == "u2"}) <= 5


def test_a_user_known_only_by_requests_expires_too():
    """Their impression log and their answer on the compacted recommendations topic go after
    the TTL (counted from the first request), not only at Flink's backstop TTL."""
    h = Host("profile.inactive_user_ttl_ms=60000")
    popular = {"landmark": T0, "newest_ts": T0, "ids": ["i1", "i2"], "pop": [2.0, 1.0],
               "seg": [], "seg_item": [], "seg_pop": []}
    h.batch([(rec.KIND_CATALOG, None, orjson.dumps(
        {"item_id": i, "ts": T0, "title": i, "categories": ["c"], "tags": [], "price": None,
         "available": True})) for i in ("i1", "i2")]
            + [(rec.KIND_MODEL_UPDATE, None, p)
               for p in rec.encode_model_updates([], popular, 1 << 20)])
    h.now += 1000  # the trending lists are rebuilt
    out = h.batch([(rec.KIND_REQUEST, "asker", request("asker"))])
    assert len(out["recs"]) == 1 and orjson.loads(out["recs"][0][1])["items"]
    assert h.state["asker"][STATE_IMPRESSIONS] is not None
    h.now = T0 + 30_000
    h.batch([(rec.KIND_REQUEST, "asker", request("asker"))])  # requests do not postpone it
    h.now = T0 + 75_000
    out = h.fire_timers()
    assert [(k, v) for k, v in out["profiles"] + out["recs"]] == [("asker", None)] * 2
    assert h.state["asker"] == [None, None]
    # without a TTL nothing is stored for such a user beyond the impression log, as before
    h2 = Host()
    h2.batch([(rec.KIND_REQUEST, "asker", request("asker"))])
    assert h2.state.get("asker", [None, None])[STATE_PROFILE] is None and not h2.timers


def test_dead_letters_are_keyed_by_the_pseudonymised_user_and_carry_no_raw_id_or_contact():
    h = Host("privacy.pseudonymize_user_ids=true", pseudonym_key=KEY)
    pseudonym = h.routing_key("alice-real-id")
    bad = orjson.dumps({"event_id": "x", "user_id": "alice-real-id", "item_id": "i1",
                        "event_type": "teleport", "ts": T0,
                        "context": {"note": "call +44 20 7946 0958 or ann@example.com"}})
    out = h.batch([(rec.KIND_EVENT, "alice-real-id", bad)])
    [(key, letter)] = out["dlq"]
    assert key == pseudonym and letter["reason"] == "unknown_event_type"
    assert pseudonym in letter["raw"] and "alice-real-id" not in letter["raw"]
    assert "ann@example.com" not in letter["raw"] and "7946" not in letter["raw"]
    # a duplicate (dead-lettered after parsing) is treated the same
    h.batch([(rec.KIND_EVENT, "alice-real-id", event("d1", "alice-real-id"))])
    [(key, letter)] = h.batch([(rec.KIND_EVENT, "alice-real-id",
                                event("d1", "alice-real-id"))])["dlq"]
    assert (key, letter["reason"]) == (pseudonym, "duplicate_event")
    assert "alice-real-id" not in letter["raw"] and pseudonym in letter["raw"]


def test_a_raw_text_whose_user_id_cannot_be_replaced_for_sure_is_withheld():
    h = Host("privacy.pseudonymize_user_ids=true", "validation.dlq_raw_max_chars=40",
             pseudonym_key=KEY)
    # cut inside the id by the 40-character limit
    truncated = orjson.dumps({"event_type": "teleport", "user_id": "alice-real-id",
                              "ts": T0, "item_id": "i1", "event_id": "x"})
    escaped = b'{"user_id": "\\u0061lice", "event_id": 5}'
    for payload in (truncated, escaped):
        out = h.batch([(rec.KIND_EVENT, "alice", payload)])
        [(_, letter)] = out["dlq"]
        assert letter["raw"] == "" and "withheld" in letter["error"], payload
    # without pseudonymisation the raw text stays (redacted of contacts)
    h = Host()
    [(key, letter)] = h.batch([(rec.KIND_EVENT, "u1", b'{"user_id": "u1", "x": "a@b.io"}')])["dlq"]
    assert key == "u1" and letter["raw"] == '{"user_id": "u1", "x": "[redacted]"}'


def test_records_without_a_readable_user_are_keyed_by_their_topic():
    h = Host()
    out = h.batch([(rec.KIND_EVENT, "", b"not json")])
    [(key, letter)] = out["dlq"]
    assert key == h.cfg.topics.user_events and letter["reason"] == "malformed_json"


def test_pseudonymize_raw_user_ids_replaces_every_complete_value():
    text = '{"user_id": "a\\"b", "other": {"user_id":"c"}}'
    out = pseudonymize_raw_user_ids(text, KEY, 32)
    assert out == ('{"user_id": "%s", "other": {"user_id":"%s"}}'
                   % (pseudonymize('a"b', KEY), pseudonymize("c", KEY)))
    assert pseudonymize_raw_user_ids('{"user_id": 42}', KEY, 32) is None
    assert pseudonymize_raw_user_ids('{"user_id": "ab', KEY, 32) is None
    assert pseudonymize_raw_user_ids('{"item_id": "x"}', KEY, 32) == '{"item_id": "x"}'


@pytest.mark.parametrize("text, expected", [
    ("mail ann.example+x@mail.example.co.uk now", "mail [redacted] now"),
    ("+44 20 7946 0958", "[redacted]"),
    ("(555) 123-4567", "[redacted]"),
    ("555-123-4567", "[redacted]"),
    # numbers that are not phone numbers stay
    ('{"ts": 1767225600000, "value": 4.123456789, "price": 1234567.5}',
     '{"ts": 1767225600000, "value": 4.123456789, "price": 1234567.5}'),
    ("born 1990-01-01", "born 1990-01-01"),
])
def test_redact_personal_text(text, expected):
    assert redact_personal_text(text) == expected


@pytest.mark.parametrize("name", ["email", "E-Mail", "ＥＭＡＩＬ", "e\u200bmail", "\u0435mail",
                                  "phone_number", "Home Address", "p\u00adhone"])
def test_personal_attribute_names_are_caught_in_any_disguise(name):
    assert is_pii_attribute(name, frozenset({"full_name"}))


@pytest.mark.parametrize("name", ["age", "city", "segment", "premium"])
def test_ordinary_attribute_names_are_not_personal(name):
    assert not is_pii_attribute(name, frozenset({"full_name"}))


def test_attribute_values_shaped_like_contacts_are_redacted_whatever_the_name():
    h = Host()
    out = h.batch([(rec.KIND_ATTRIBUTES, "u1", orjson.dumps({"user_id": "u1", "ts": T0,
                                                            "attributes": {
        "contact": "ann@example.com", "note": "+44 20 7946 0958", "city": "Leeds"}}))])
    attributes = orjson.loads(out["profiles"][0][1])["attributes"]
    assert attributes == {"contact": "[redacted]", "note": "[redacted]", "city": "Leeds"}


# --------------------------------------------------------------------------- bounded state

def test_with_admit_catalogue_unknown_items_stay_out_of_the_global_models():
    catalogue = orjson.dumps({"item_id": "known", "ts": T0, "title": "K", "categories": ["c"],
                              "tags": [], "price": 1.0, "available": True})
    for admit, expected_items in (("all", {"known", "made-up-1", "made-up-2"}),
                                  ("catalogue", {"known"})):
        h = Host(f'similarity.admit="{admit}"')
        h.side.process([], [], [Record(rec.KIND_CATALOG, -1, T0, 0, catalogue)], T0, NO_WATERMARK)
        h.batch([(rec.KIND_EVENT, "u1", event("e1", item="known")),
                 (rec.KIND_EVENT, "u1", event("e2", item="made-up-1")),
                 (rec.KIND_EVENT, "u1", event("e3", item="made-up-2")),
                 (rec.KIND_EVENT, "u1", event("e4", item="known", etype="view"))])
        # (what the item operator would receive, taken from a fresh batch's outputs)
        out = h.side.process(
            ["u2"], [[None, None]],
            [Record(rec.KIND_EVENT, 0, T0, 0, event("e5", "u2", "made-up-1")),
             Record(rec.KIND_EVENT, 0, T0, 0, event("e6", "u2", "known"))], T0, NO_WATERMARK)
        activity = [rec.decode_activity(v)[2] for _, v in
                    out.outputs.of(rec.USER_OUT_ACTIVITY, rec.KIND_ACTIVITY)]
        pair_items = {k for k, _ in out.outputs.of(rec.USER_OUT_PAIRS, rec.KIND_PAIRS)}
        for _, v in out.outputs.of(rec.USER_OUT_PAIRS, rec.KIND_PAIRS):
            pair_items.update(rec.decode_pairs(v)[2])
        seen = set(activity[0]) | pair_items
        assert seen <= expected_items and "known" in seen, (admit, seen)
        if admit == "all":
            assert "made-up-1" in seen
