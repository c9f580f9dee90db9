"""recsys.evaluation.movielens: atomic-file parsing, mapping to the contract's records, the split, replay
speed parsing and the simulator's protocol helpers (no network: files are written here)."""

from __future__ import annotations

import collections

import pytest

from recsys.evaluation import movielens as m
from recsys.evaluation.replay import parse_speed
from state_schemas import validator

INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "1\t10\t5\t881250949\n2\t10\t1\t881250950\n1\t20\t3\t881250900\n"
         "1\t30\t4\t881250900\n2\t20\t2\t881250000\n")
USER = ("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\tT8H1N\n")
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Children's Comedy\n"
        "20\tunkonwn\tunkonwn\tunknown\n"
        "30\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation Children's\n")


@pytest.fixture
def ml(tmp_path):
    for ext, text in (("inter", INTER), ("user", USER), ("item", ITEM)):
        (tmp_path / f"ml-100k.{ext}").write_text(text, encoding="utf-8")
    return m.load(tmp_path, fetch_if_missing=False)


def test_parse_atomic_header_and_rows():
    fields, rows = m.parse_atomic(INTER)
    assert fields == [("user_id", "token"), ("item_id", "token"), ("rating", "float"),
                      ("timestamp", "float")]
    assert rows[0] == ["1", "10", "5", "881250949"] and len(rows) == 5
    with pytest.raises(m.DatasetError):
        m.parse_atomic("user_id\titem_id\n1\t2\n")          # untyped header
    with pytest.raises(m.DatasetError):
        m.parse_atomic("a:token\tb:token\n1\n")              # short row


def test_load(ml):
    assert ml.users["1"] == {"age": 24, "gender": "M", "occupation": "technician",
                             "zip_code": "85711"}
    assert ml.items["10"] == {"title": "Toy Story", "year": 1995,
                              "genres": ["Animation", "Children's", "Comedy"]}
    assert ml.items["20"]["year"] is None and ml.items["30"]["year"] is None
    assert ml.ratings[0] == m.Rating("1", "10", 5, 881250949)
    assert ml.first_ts_ms == 881250000_000


def test_records_follow_the_contract_schemas(ml):
    catalog = m.catalog_records(ml)
    attributes = m.attribute_records(ml)
    events = m.events(ml.ratings)
    for rec in catalog:
        validator("item-catalog")(rec)
    for rec in attributes:
        validator("user-attributes")(rec)
    for rec in events:
        validator("user-event")(rec)
    toy = catalog[0]
    assert toy == {"item_id": "m10", "ts": ml.first_ts_ms - m.DAY_MS, "title": "Toy Story (1995)",
                   "categories": ["Animation", "Children's", "Comedy"], "tags": ["1990s"],
                   "price": None, "available": True}
    unknown = catalog[1]
    assert unknown["title"] == "Movie 20" and unknown["categories"] == [] and unknown["tags"] == []
    assert catalog[2]["title"].endswith("(1995)") and catalog[2]["tags"] == []
    assert attributes[0]["attributes"] == {"age": 24, "gender": "M", "occupation": "technician",
                                           "region": "us-8"}
    assert attributes[1]["attributes"]["region"] == "non-us"  # no raw zip code passed on
    first = events[0]
    assert first == {"event_id": "ml-u2-m20", "user_id": "u2", "item_id": "m20",
                     "event_type": "rate", "ts": 881250000_000, "value": 2.0, "context": None}


def test_events_are_in_event_time_order_with_deterministic_ties(ml):
    events = m.events(reversed(ml.ratings))
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    tied = [e["event_id"] for e in events if e["ts"] == 881250900_000]
    assert tied == ["ml-u1-m20", "ml-u1-m30"]
    assert events == m.events(ml.ratings)


def test_event_ids_are_unique_and_stable():
    assert m.event_id("196", "242") == "ml-u196-m242"
    assert m.region_of("01002") == "us-0" and m.region_of("V3N4P") == "non-us"
    assert m.decade_of(1995) == "1990s" and m.decade_of(None) is None


def _ratings(n_users=20, per_user=(1, 2, 3, 4, 7, 20, 41)):
    out = []
    for u in range(n_users):
        for i in range(per_user[u % len(per_user)]):
            out.append(m.Rating(str(u), str(i), 1 + (u + i) % 5, 1000 + u * 100 + i))
    return out


def test_stratified_split_ratio_per_user_and_partition():
    ratings = _ratings()
    train, test = m.stratified_split(ratings, 0.75, seed=42)
    assert sorted(train + test, key=ratings.index) == ratings           # a partition
    per_user = collections.Counter(r.user for r in ratings)
    tr = collections.Counter(r.user for r in train)
    for u, n in per_user.items():
        # rank / count <= 0.75 -> floor(0.75 n) rows in train (all of a user's 1 row: 0 -> test)
        assert tr[u] == int(0.75 * n + 1e-9)
    # deterministic for a seed, different for another
    assert m.stratified_split(ratings, 0.75, seed=42) == (train, test)
    assert m.stratified_split(ratings, 0.75, seed=7)[0] != train


def test_stratified_split_matches_the_documented_procedure():
    """Hand-run of Recommenders' procedure: one draw per row (file order), rank within user."""
    import numpy as np

    ratings = _ratings(3, (4, 5, 8))
    draws = np.random.RandomState(3).rand(len(ratings))
    expected_train = set()
    for u in {r.user for r in ratings}:
        rows = [n for n, r in enumerate(ratings) if r.user == u]
        rows.sort(key=lambda n: draws[n])
        for rank, n in enumerate(rows, start=1):
            if rank / len(rows) <= 0.75:
                expected_train.add(n)
    train, _ = m.stratified_split(ratings, 0.75, seed=3)
    assert {ratings.index(r) for r in train} == expected_train


def test_temporal_split_puts_each_users_newest_quarter_in_test():
    import random

    ratings = _ratings()
    random.Random(1).shuffle(ratings)            # file order must not matter
    train, test = m.temporal_split(ratings)
    assert sorted(train + test, key=ratings.index) == ratings
    for u in {r.user for r in ratings}:
        tr = [r.ts for r in train if r.user == u]
        te = [r.ts for r in test if r.user == u]
        assert len(tr) == int(0.75 * (len(tr) + len(te)) + 1e-9)
        assert not te or not tr or max(tr) <= min(te), u    # nothing in test older than train


@pytest.mark.parametrize("kind", m.SPLIT_KINDS)
def test_validation_is_carved_from_train_and_never_sees_test(kind):
    """What ``recsys tune`` scores on: a split of the training ratings only."""
    ratings = _ratings()
    train, test = m.make_split(ratings, kind, seed=42)
    fit, validation = m.make_split(ratings, kind, seed=42, validation=True)
    assert sorted(fit + validation, key=ratings.index) == train
    assert not set(validation) & set(test) and not set(fit) & set(test)
    assert validation and fit
    if kind == "random":   # its own seed: not the test split's draws again
        assert m.stratified_split(train, 0.75, 42) != (fit, validation)
    with pytest.raises(ValueError, match="split kind"):
        m.make_split(ratings, "by-genre")


def test_select_splits_over_all_users_first(ml):
    full_train = m.select(ml, "train")
    only_1 = m.select(ml, "train", users=["1"])
    assert only_1 == [r for r in full_train if r.user == "1"]
    assert len(m.select(ml, "all")) == 5
    with pytest.raises(ValueError):
        m.select(ml, "validation")


def test_fetch_is_idempotent_when_files_are_present(tmp_path, monkeypatch):
    for ext in m.FILES:
        (tmp_path / f"ml-100k.{ext}").write_text("x")
    monkeypatch.setattr(m, "FILES", {ext: m._sha256(tmp_path / f"ml-100k.{ext}")
                                     for ext in m.FILES})

    def no_download(*_a, **_k):
        raise AssertionError("must not download when the files are there")

    monkeypatch.setattr(m, "_download_wheel", no_download)
    assert m.fetch(tmp_path) == tmp_path


def test_parse_speed():
    assert parse_speed("max") is None and parse_speed(None) is None and parse_speed("0") is None
    assert parse_speed("3600x") == 3600.0 and parse_speed("2") == 2.0 and parse_speed(10) == 10.0
    with pytest.raises(ValueError):
        parse_speed("fast")


@pytest.mark.skipif(not all((m.data_dir() / f"ml-100k.{e}").is_file() for e in m.FILES),
                    reason="ml-100k not extracted (make eval / recsys replay fetch it)")
def test_the_real_files():
    ml = m.load(fetch_if_missing=False)
    assert (len(ml.users), len(ml.items), len(ml.ratings)) == (943, 1682, 100_000)
    train, test = m.stratified_split(ml.ratings)
    assert (len(train), len(test)) == (74_646, 25_354)
    counts = collections.Counter(r.user for r in ml.ratings)
    assert max(counts.values()) == 737 and min(counts.values()) == 20


def test_replay_cli_constants_match_the_module():
    from recsys.evaluation import replay

    assert replay.SPLITS == m.SPLITS and replay.SPLIT_SEED == m.DEFAULT_SPLIT_SEED
