"""udfs/ab.py: deterministic variant assignment, and feedback attribution on the ImpressionLog
(state_schemas/profile_state.py) of item hashes."""

from collections import Counter

import pytest

from state_schemas.config import RecommendConfig, VariantConfig
from state_schemas.ids import id_hash
from state_schemas.profile_state import ImpressionLog, decode_impressions, encode_impressions
from udfs.ab import (CLICK_EVENT_TYPES, PURCHASE_EVENT_TYPES, assign_variant, attribute_feedback,
                     ctr, expire_impressions, feedback_kind, record_impressions, variant_bucket)

SALT = "exp-test"
W = 3_600_000  # attribution window


def test_assignment_is_deterministic_and_independent_of_mapping_order():
    variants = {"b": VariantConfig(traffic=1), "a": VariantConfig(traffic=1)}
    reordered = {"a": VariantConfig(traffic=1), "b": VariantConfig(traffic=1)}
    for i in range(500):
        uid = f"user-{i}"
        v = assign_variant(uid, SALT, variants)
        assert v in variants
        assert assign_variant(uid, SALT, variants) == v
        assert assign_variant(uid, SALT, reordered) == v


def test_bucket_is_uniform_in_unit_interval():
    us = [variant_bucket(f"u{i}", SALT) for i in range(20_000)]
    assert all(0.0 <= u < 1.0 for u in us)
    assert sum(us) / len(us) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("shares", [(0.5, 0.5), (0.2, 0.8), (1.0, 3.0, 6.0)])
def test_traffic_split_within_tolerance(shares):
    names = [f"v{i}" for i in range(len(shares))]
    variants = {n: VariantConfig(traffic=s) for n, s in zip(names, shares)}
    n = 20_000
    counts = Counter(assign_variant(f"synthetic-{i}", SALT, variants) for i in range(n))
    total = sum(shares)
    for name, share in zip(names, shares):
        # binomial sd <= sqrt(n/4) = 71 users; 2% of 20k = 400 is > 5 sd
        assert abs(counts[name] / n - share / total) < 0.02, (name, counts)


def test_default_config_variants_split_evenly():
    cfg = RecommendConfig()
    counts = Counter(assign_variant(f"u{i}", cfg.experiment_salt, cfg.variants)
                     for i in range(20_000))
    assert set(counts) == set(cfg.variants)
    assert abs(counts["control"] / 20_000 - 0.5) < 0.02


def test_zero_traffic_variant_gets_nobody_and_salt_reshuffles():
    variants = {"on": VariantConfig(traffic=1.0), "off": VariantConfig(traffic=0.0)}
    assert {assign_variant(f"u{i}", SALT, variants) for i in range(2_000)} == {"on"}
    two = {"a": VariantConfig(traffic=1), "b": VariantConfig(traffic=1)}
    same = sum(assign_variant(f"u{i}", "s1", two) == assign_variant(f"u{i}", "s2", two)
               for i in range(2_000))
    assert 800 < same < 1_200  # a new salt is an independent split


def test_bad_variant_tables_raise():
    with pytest.raises(ValueError):
        assign_variant("u", SALT, {})
    with pytest.raises(ValueError):
        assign_variant("u", SALT, {"a": VariantConfig(traffic=0.0)})
    with pytest.raises(ValueError):
        assign_variant("u", SALT, {"a": VariantConfig(traffic=-1.0), "b": VariantConfig()})


def test_feedback_kinds():
    for et in ("click", "like", "share", "comment", "add_to_cart"):
        assert feedback_kind(et) == "click"
    assert feedback_kind("purchase") == "purchase"
    for et in ("view", "rate", "not_interested", "bogus"):
        assert feedback_kind(et) is None
    assert "view" not in CLICK_EVENT_TYPES and PURCHASE_EVENT_TYPES == {"purchase"}
    assert feedback_kind("view", click_types={"view"}) == "click"
    assert feedback_kind("click", click_types=(), purchase_types={"click"}) == "purchase"


# --------------------------------------------------------------------------- the documented hash

def test_bucket_is_the_documented_sha256_prefix():
    import hashlib

    for uid in ("u1", "Ünïcode-user", ""):
        digest = hashlib.sha256(("exp-x" + uid).encode("utf-8")).digest()
        expected = int.from_bytes(digest[:8], "big") / 2.0 ** 64  # the top 53 bits of it
        assert variant_bucket(uid, "exp-x") == pytest.approx(expected, abs=2.0 ** -53)
    assert variant_bucket("u1", "a") != variant_bucket("u1", "b")


# --------------------------------------------------------------------------- impression log
# The log is keyed by 64-bit item hashes (state_schemas.ids.id_hash), as the user operator uses it.

A, B, C, D, X = (id_hash(i) for i in ("item-a", "item-b", "item-c", "item-d", "item-x"))


def rows(log: ImpressionLog) -> dict[int, tuple[int, int, int, int]]:
    """The entries as tuples (first, last, variant code, credited kinds), in recording order,
    whatever sequence type the log keeps them in."""
    return {h: tuple(v) for h, v in log.entries.items()}


def test_record_impressions_stores_first_last_variant_and_no_credit():
    log = ImpressionLog()
    assert record_impressions(log, [A, B], "control", 1_000, max_items=10) == 2
    assert record_impressions(log, [C], "content_heavy", 2_000, max_items=10) == 1
    assert log.variants == ["control", "content_heavy"]
    assert rows(log) == {A: (1_000, 1_000, 0, 0), B: (1_000, 1_000, 0, 0),
                         C: (2_000, 2_000, 1, 0)}
    assert len(log) == 3


def test_repeated_items_in_one_recording_count_once():
    log = ImpressionLog()
    assert record_impressions(log, [A, A, B, A], "v", 0, max_items=10) == 2
    assert list(log.entries) == [A, B]


def test_attribution_window():
    log = ImpressionLog()
    assert record_impressions(log, [A, B], "control", 1_000, max_items=10) == 2
    assert attribute_feedback(log, A, "click", 1_000 + W, W) == ("control", "click")  # edge in
    assert attribute_feedback(log, B, "click", 1_000 + W + 1, W) is None             # too late
    assert attribute_feedback(log, B, "like", 999, W) is None        # before it was shown
    assert attribute_feedback(log, X, "click", 1_500, W) is None     # never recommended
    assert attribute_feedback(log, B, "view", 1_500, W) is None      # not feedback
    assert attribute_feedback(log, B, "rate", 1_500, W) is None
    assert attribute_feedback(log, B, "not_interested", 1_500, W) is None
    assert attribute_feedback(log, B, "purchase", 2_000, W) == ("control", "purchase")
    assert log.entries[A][3] == 1 and log.entries[B][3] == 2  # credited kinds: bit 0, bit 1


def test_each_impression_is_credited_once_per_kind():
    log = ImpressionLog()
    record_impressions(log, [A], "v1", 0, max_items=10)
    assert attribute_feedback(log, A, "click", 10, W) == ("v1", "click")
    assert attribute_feedback(log, A, "like", 20, W) is None          # already a click
    assert attribute_feedback(log, A, "add_to_cart", 25, W) is None
    assert attribute_feedback(log, A, "purchase", 30, W) == ("v1", "purchase")
    assert attribute_feedback(log, A, "purchase", 40, W) is None
    assert rows(log)[A] == (0, 0, 0, 3)


def test_reshowing_refreshes_window_and_counts_new_impressions_only_after_window():
    log = ImpressionLog()
    assert record_impressions(log, [A], "v1", 0, max_items=10, window_ms=W) == 1
    assert record_impressions(log, [A], "v1", W // 2, max_items=10, window_ms=W) == 0
    assert rows(log)[A] == (0, W // 2, 0, 0)
    # the window now runs from the latest showing
    assert attribute_feedback(log, A, "click", W + W // 2, W) == ("v1", "click")
    # refreshed again within the window: the credit is kept
    assert record_impressions(log, [A], "v1", W + W // 2, max_items=10, window_ms=W) == 0
    assert attribute_feedback(log, A, "click", W + W // 2 + 1, W) is None
    # shown again long after: a new impression, credits reset
    assert record_impressions(log, [A], "v1", 10 * W, max_items=10, window_ms=W) == 1
    assert rows(log)[A] == (10 * W, 10 * W, 0, 0)
    assert attribute_feedback(log, A, "click", 10 * W + 5, W) == ("v1", "click")
    # a late recording older than the stored one is ignored
    assert record_impressions(log, [A], "v1", 5 * W, max_items=10, window_ms=W) == 0
    assert rows(log)[A][:2] == (10 * W, 10 * W)


def test_without_a_window_a_reshown_item_is_never_a_new_impression():
    log = ImpressionLog()
    assert record_impressions(log, [A], "v1", 0, max_items=10) == 1
    assert record_impressions(log, [A], "v1", 100 * W, max_items=10) == 0
    assert rows(log)[A] == (0, 100 * W, 0, 0)


def test_showing_under_another_variant_is_a_new_impression_for_that_variant():
    log = ImpressionLog()
    record_impressions(log, [A], "control", 0, max_items=10, window_ms=W)
    assert attribute_feedback(log, A, "click", 1, W) == ("control", "click")
    assert record_impressions(log, [A], "content_heavy", 2, max_items=10, window_ms=W) == 1
    assert attribute_feedback(log, A, "click", 3, W) == ("content_heavy", "click")


def test_log_is_bounded_oldest_recording_first():
    log = ImpressionLog()
    record_impressions(log, [A, B, C], "v", 0, max_items=3)
    record_impressions(log, [D, A], "v", 10, max_items=3)  # a refreshed; b evicted first
    assert list(log.entries) == [C, D, A]
    assert attribute_feedback(log, B, "click", 20, W) is None
    with pytest.raises(ValueError):
        record_impressions(log, [X], "v", 0, max_items=0)


def test_expire_impressions_drops_entries_shown_longer_ago_than_the_window():
    log = ImpressionLog()
    record_impressions(log, [A, B], "control", 0, max_items=10)
    record_impressions(log, [C], "content_heavy", 2 * W, max_items=10)
    record_impressions(log, [B], "control", W, max_items=10)  # b's latest showing: W
    assert expire_impressions(log, 2 * W, W) == 1  # a: 2W old; b: exactly W old stays
    assert list(log.entries) == [C, B]
    assert expire_impressions(log, 2 * W, W) == 0
    assert expire_impressions(log, 3 * W + 1, W) == 2
    assert len(log) == 0


def test_ctr_is_at_most_one_with_record_impressions_counts():
    log = ImpressionLog()
    gaps = [0, W // 2, 2 * W, W // 2, W // 2, 3 * W, W, W + 1]  # > W starts a new impression
    expected_new = 1 + sum(g > W for g in gaps[1:])
    shown = clicks = 0
    ts = 0
    for gap in gaps:
        ts += gap
        shown += record_impressions(log, [A, B], "v", ts, max_items=10, window_ms=W)
        for h in (A, B):  # a click after every showing: credited once per impression
            clicks += attribute_feedback(log, h, "click", ts + 1, W) is not None
    assert shown == 2 * expected_new == 2 * 4
    assert clicks == shown
    assert ctr(shown, clicks) == 1.0


def test_impression_log_round_trips_through_its_codec():
    log = ImpressionLog()
    record_impressions(log, [A, B], "control", 0, max_items=10)
    record_impressions(log, [C], "content_heavy", 2 * W, max_items=10)
    attribute_feedback(log, C, "click", 2 * W + 1, W)
    restored = decode_impressions(encode_impressions(log))
    assert rows(restored) == rows(log) and restored.variants == log.variants
    assert list(restored.entries) == [A, B, C]
    assert attribute_feedback(restored, C, "click", 2 * W + 2, W) is None  # credit survived
    assert attribute_feedback(restored, C, "purchase", 2 * W + 2, W) == ("content_heavy", "purchase")


def test_ctr():
    assert ctr(0, 0) == 0.0
    assert ctr(-1, 3) == 0.0
    assert ctr(200, 10) == 0.05


def test_rounding_fallback_picks_last_variant_with_traffic(monkeypatch):
    import udfs.ab as ab
    shares = [0.2, 0.05, 0.3, 0.05, 0.15, 0.1, 0.2]  # normalised sum rounds to just below 1
    variants = {f"v{i}": VariantConfig(traffic=s) for i, s in enumerate(shares)}
    variants["zz_off"] = VariantConfig(traffic=0.0)
    cumulative = 0.0
    for s in shares:
        cumulative += s / sum(shares)
    largest_bucket = 1.0 - 2.0 ** -53
    assert cumulative <= largest_bucket
    monkeypatch.setattr(ab, "variant_bucket", lambda user_id, salt: largest_bucket)
    assert assign_variant("u", SALT, variants) == "v6"
