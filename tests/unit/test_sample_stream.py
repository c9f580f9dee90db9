"""The bundled sample stream: deterministic, valid against the contract, and learnable."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from state_schemas.config import EVENT_TYPES
from recsys.paths import SAMPLE_DATA_DIR
from recsys.sample_data.synthetic import (
    SAMPLE_FILES, SampleData, _merge_in_time_order, _next_round, _TickingClock, generate_sample, load_sample,
    shift_to_now, write_sample,
)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "state_schemas" / "json"
START_MS = 1_767_225_600_000


@pytest.fixture(scope="module")
def sample() -> SampleData:
    return generate_sample()


def _validator(file: str) -> jsonschema.Draft7Validator:
    # Draft 7 explicitly: the files say "https://json-schema.org/draft-07/schema#", which
    # jsonschema does not recognise as draft 7 (its canonical id starts with http://).
    schema = json.loads((SCHEMA_DIR / file).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _item_categories(sample: SampleData) -> dict[str, list[str]]:
    return {i["item_id"]: i["categories"] for i in sample.items}


def test_same_seed_same_data_other_seed_other_data(sample: SampleData) -> None:
    assert generate_sample() == sample
    assert generate_sample().preferred_categories == sample.preferred_categories
    assert generate_sample(seed=8).events != sample.events


def test_default_sizes(sample: SampleData) -> None:
    assert len(sample.items) == 120
    assert len(sample.users) == 60
    assert len(sample.events) == 3000
    assert 3 < len(sample.requests) <= 20
    assert {e["event_type"] for e in sample.events} == set(EVENT_TYPES)


@pytest.mark.parametrize("field, file", [
    ("items", "item-catalog.v1.json"),
    ("users", "user-attributes.v1.json"),
    ("events", "user-event.v1.json"),
    ("requests", "recommendation-request.v1.json"),
])
def test_every_record_validates_against_its_schema(sample: SampleData, field: str, file: str) -> None:
    validator = _validator(file)
    for record in getattr(sample, field):
        errors = list(validator.iter_errors(record))
        assert not errors, f"{record}: {[e.message for e in errors]}"


def test_records_carry_the_contract_fields(sample: SampleData) -> None:
    assert all(set(r) == {"event_id", "user_id", "item_id", "event_type", "ts", "value", "context"}
               for r in sample.events)
    assert all(set(r) == {"user_id", "ts", "attributes"} for r in sample.users)
    assert all(set(r["attributes"]) == {"age", "gender", "occupation", "region"} for r in sample.users)
    assert all(set(r) == {"item_id", "ts", "title", "categories", "tags", "price", "available"}
               for r in sample.items)
    assert all(set(r) == {"request_id", "user_id", "ts", "k", "context"} for r in sample.requests)


def test_ids_are_unique_and_well_formed(sample: SampleData) -> None:
    for records, key, prefix in ((sample.items, "item_id", "i"), (sample.users, "user_id", "u"),
                                 (sample.events, "event_id", "ev-"), (sample.requests, "request_id", "req-")):
        ids = [r[key] for r in records]
        assert len(ids) == len(set(ids)), key
        assert all(i.startswith(prefix) for i in ids), key
    assert sample.items[0]["item_id"] == "i0001" and sample.users[0]["user_id"] == "u001"
    assert sample.events[0]["event_id"] == "ev-000001"


def test_references_point_at_known_entities(sample: SampleData) -> None:
    items = {i["item_id"] for i in sample.items}
    users = {u["user_id"] for u in sample.users}
    assert {e["item_id"] for e in sample.events} <= items
    assert {e["user_id"] for e in sample.events} <= users
    assert {r["user_id"] for r in sample.requests} <= users


def test_catalogue_shape(sample: SampleData) -> None:
    titles = [i["title"] for i in sample.items]
    assert len(set(titles)) == len(titles)
    assert all(1 <= len(i["categories"]) <= 2 for i in sample.items)
    assert all(2 <= len(i["tags"]) <= 4 for i in sample.items)
    assert len({c for i in sample.items for c in i["categories"]}) == 8
    assert any(i["price"] is None for i in sample.items)
    unavailable = sum(not i["available"] for i in sample.items)
    assert 1 <= unavailable <= 0.1 * len(sample.items)


def test_timestamps_increase_over_about_a_week(sample: SampleData) -> None:
    ts = [e["ts"] for e in sample.events]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    assert START_MS <= ts[0] and 6 * 86_400_000 < ts[-1] - START_MS < 8 * 86_400_000
    assert max(i["ts"] for i in sample.items) < ts[0]


def test_users_events_concentrate_on_their_preferred_categories(sample: SampleData) -> None:
    categories = _item_categories(sample)
    totals: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for e in sample.events:
        preferred = set(sample.preferred_categories[e["user_id"]])
        totals[e["user_id"]] += 1
        hits[e["user_id"]] += any(c in preferred for c in categories[e["item_id"]])
    assert len(totals) == len(sample.users) - 3
    for user, total in totals.items():
        assert hits[user] / total > 0.5, (user, hits[user], total)
    assert all(1 <= len(p) <= 3 for p in sample.preferred_categories.values())


def test_ratings_and_not_interested_follow_preferences(sample: SampleData) -> None:
    categories = _item_categories(sample)
    ratings: dict[bool, list[float]] = defaultdict(list)
    for e in sample.events:
        preferred = any(c in sample.preferred_categories[e["user_id"]] for c in categories[e["item_id"]])
        if e["event_type"] == "rate":
            assert e["value"] in (1, 2, 3, 4, 5)
            ratings[preferred].append(e["value"])
        else:
            assert e["value"] is None
        if e["event_type"] == "not_interested":
            assert not preferred
    assert sum(ratings[True]) / len(ratings[True]) > sum(ratings[False]) / len(ratings[False]) + 1


def test_funnel_narrows(sample: SampleData) -> None:
    counts = Counter(e["event_type"] for e in sample.events)
    assert counts["view"] > counts["click"] > counts["add_to_cart"] > counts["purchase"] > 0


def test_cold_start_users_have_attributes_and_one_request_but_no_events(sample: SampleData) -> None:
    active = {e["user_id"] for e in sample.events}
    cold = [u["user_id"] for u in sample.users if u["user_id"] not in active]
    assert len(cold) == 3
    requests = Counter(r["user_id"] for r in sample.requests)
    assert all(requests[u] == 1 for u in cold)
    assert all(r["k"] == 5 for r in sample.requests)
    signed_up = {u["user_id"]: u["ts"] for u in sample.users}
    assert all(r["ts"] > signed_up[r["user_id"]] for r in sample.requests)


def test_bundled_files_equal_the_default_generation(sample: SampleData) -> None:
    assert load_sample() == sample
    assert sum((SAMPLE_DATA_DIR / f).stat().st_size for f in SAMPLE_FILES) < 1_000_000


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    small = generate_sample(seed=3, n_users=10, n_items=20, n_events=100)
    write_sample(tmp_path, small)
    assert load_sample(tmp_path) == small
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 100


def test_load_sample_names_the_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="events.jsonl"):
        load_sample(tmp_path)


def test_shift_to_now_keeps_gaps_and_ends_at_now() -> None:
    records: list[dict[str, Any]] = [{"id": "a", "ts": 1_000}, {"id": "b", "ts": 5_000}, {"id": "c", "ts": 3_500}]
    now = 1_800_000_000_000
    shifted = shift_to_now(records, now)
    assert max(r["ts"] for r in shifted) == now
    assert [r["ts"] - shifted[0]["ts"] for r in shifted] == [0, 4_000, 2_500]
    assert [r["id"] for r in shifted] == ["a", "b", "c"]
    assert records[0]["ts"] == 1_000  # the input is not modified
    assert shift_to_now([], now) == []


def test_shift_to_now_on_the_sample_stays_inside_the_engines_time_checks(sample: SampleData) -> None:
    now = 1_800_000_000_000
    stream = shift_to_now(_merge_in_time_order(sample.events, sample.requests), now)
    assert stream[-1]["ts"] == now
    assert all(946_684_800_000 <= r["ts"] <= now for r in stream)
    assert [r["ts"] for r in stream] == sorted(r["ts"] for r in stream)


def test_loop_rounds_get_fresh_ids_and_wall_clock_times(sample: SampleData) -> None:
    stream = _merge_in_time_order(sample.events[:5], sample.requests[:2])
    wall = iter([100, 100, 100, 105, 106, 106, 200, 90, 90])
    clock = _TickingClock(99, now=lambda: next(wall))
    replay = list(_next_round(stream, 2, clock))
    assert [r["ts"] for r in replay] == [100, 101, 102, 105, 106, 107, 200]
    ids = [r.get("event_id") or r.get("request_id") for r in replay]
    assert all(i.endswith("-r2") for i in ids) and len(set(ids)) == len(ids)
    assert [r["ts"] for r in _next_round(stream[:2], 3, clock)] == [201, 202]  # never back in time
    tagged = next(_next_round(stream, 1, _TickingClock(0, now=lambda: 300), run_tag="abc-"))
    assert tagged["event_id"] == f"{stream[0]['event_id']}-abc-r1"


class _FakeFuture:
    def add_errback(self, fn: Any) -> "_FakeFuture":
        return self


class _FakeProducer:
    """Stands in for kafka.KafkaProducer: records what would be sent, serialised as configured."""
    DEFAULT_CONFIG = {"security_protocol": "PLAINTEXT", "acks": 1}
    instances: list["_FakeProducer"] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []
        self.flushes: list[int] = []
        self.stop_after: int | None = None
        _FakeProducer.instances.append(self)

    def send(self, topic: str, key: str, value: dict[str, Any]) -> _FakeFuture:
        if self.stop_after is not None and len(self.sent) >= self.stop_after:
            raise KeyboardInterrupt
        self.sent.append((topic, self.kwargs["key_serializer"](key),
                          json.loads(self.kwargs["value_serializer"](value).decode("utf-8"))))
        return _FakeFuture()

    def flush(self) -> None:
        self.flushes.append(len(self.sent))

    def close(self, timeout: float | None = None) -> None:
        pass


@pytest.fixture()
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> type[_FakeProducer]:
    import kafka

    _FakeProducer.instances = []
    monkeypatch.setattr(kafka, "KafkaProducer", _FakeProducer)
    return _FakeProducer


def test_produce_sends_catalogue_and_users_first_then_the_stream_in_time_order(
        fake_kafka: type[_FakeProducer], sample: SampleData, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from state_schemas.config import EngineConfig
    from recsys.sample_data.synthetic import produce

    cfg = EngineConfig()
    cfg.kafka.client_properties = {"security.protocol": "PLAINTEXT", "sasl.jaas.config": "ignored"}
    before = int(time.time() * 1000)
    assert produce(cfg) == 0
    producer = fake_kafka.instances[0]
    assert producer.kwargs["acks"] == "all" and producer.kwargs["security_protocol"] == "PLAINTEXT"
    assert "sasl_jaas_config" not in producer.kwargs
    topics = [t for t, _, _ in producer.sent]
    n_static = len(sample.items) + len(sample.users)
    assert topics[:len(sample.items)] == ["item-catalog"] * len(sample.items)
    assert topics[len(sample.items):n_static] == ["user-attributes"] * len(sample.users)
    assert producer.flushes[0] == n_static
    stream = producer.sent[n_static:]
    assert Counter(t for t, _, _ in stream) == {"user-events": 3000, "recommendation-requests": len(sample.requests)}
    ts = [v["ts"] for _, _, v in stream]
    assert ts == sorted(ts) and before <= ts[-1] <= int(time.time() * 1000)
    assert ts[-1] - ts[0] == max(sample.events[-1]["ts"], sample.requests[-1]["ts"]) - sample.events[0]["ts"]
    assert all(v["ts"] < ts[0] for _, _, v in producer.sent[:len(sample.items)])
    assert all(k == v["user_id"].encode() for _, k, v in stream)
    assert all(k == v["item_id"].encode() for _, k, v in producer.sent[:len(sample.items)])
    out = capsys.readouterr().out
    assert out.count("records sent") == (n_static + len(stream)) // 500


def test_produce_loop_repeats_with_fresh_ids(fake_kafka: type[_FakeProducer], sample: SampleData,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from state_schemas.config import EngineConfig
    from recsys.sample_data.synthetic import produce

    original_init = _FakeProducer.__init__

    def init(self: _FakeProducer, **kwargs: Any) -> None:
        original_init(self, **kwargs)
        self.stop_after = len(sample.items) + len(sample.users) + 2 * (3000 + len(sample.requests)) + 10

    monkeypatch.setattr(_FakeProducer, "__init__", init)
    with pytest.raises(KeyboardInterrupt):
        produce(EngineConfig(), loop=True)
    sent = fake_kafka.instances[0].sent
    event_ids = [v["event_id"] for t, _, v in sent if t == "user-events"]
    assert len(event_ids) == len(set(event_ids))
    assert any(i.endswith("-r1") for i in event_ids) and any(i.endswith("-r2") for i in event_ids)
    ts = [v["ts"] for t, _, v in sent if t in ("user-events", "recommendation-requests")]
    assert ts == sorted(ts)


def test_produce_throttles_and_ends_when_told_to_stop(fake_kafka: type[_FakeProducer]) -> None:
    import threading
    import time

    from state_schemas.config import EngineConfig
    from recsys.sample_data.synthetic import produce

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    assert produce(EngineConfig(), rate=10.0, loop=True, stop=stop) == 0
    assert time.monotonic() - started < 2.0
    assert 3 <= len(fake_kafka.instances[0].sent) <= 8
