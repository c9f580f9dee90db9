import pickle
from collections import Counter

import pytest

from state_schemas.config import RecommendConfig, VariantConfig
from udfs.ab import (CLICK_EVENT_TYPES, ImpressionLog, assign_variant, attribute_feedback, ctr,
                     expire_impressions, feedback_kind, record_impressions, variant_bucket)

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
    assert "view" not in CLICK_EVENT_TYPES


def test_attribution_window():
    log = ImpressionLog()
    assert record_impressions(log, ["a", "b"], "control", 1_000, max_items=10) == 2
    assert attribute_feedback(log, "a", "click", 1_000 + W, W) == ("control", "click")  # edge in
    assert attribute_feedback(log, "b", "click", 1_000 + W + 1, W) is None            # too late
    assert attribute_feedback(log, "b", "like", 999, W) is None        # before it was shown
    assert attribute_feedback(log, "zzz", "click", 1_500, W) is None   # never recommended
    assert attribute_feedback(log, "b", "view", 1_500, W) is None      # not feedback
    assert attribute_feedback(log, "b", "purchase", 2_000, W) == ("control", "purchase")


def test_each_impression_is_credited_once_per_kind():
    log = ImpressionLog()
    record_impressions(log, ["a"], "v1", 0, max_items=10)
    assert attribute_feedback(log, "a", "click", 10, W) == ("v1", "click")
    assert attribute_feedback(log, "a", "like", 20, W) is None          # already a click
    assert attribute_feedback(log, "a", "purchase", 30, W) == ("v1", "purchase")
    assert attribute_feedback(log, "a", "purchase", 40, W) is None


def test_reshowing_refreshes_window_and_counts_new_impressions_only_after_window():
    log = ImpressionLog()
    assert record_impressions(log, ["a"], "v1", 0, max_items=10, window_ms=W) == 1
    assert record_impressions(log, ["a"], "v1", W // 2, max_items=10, window_ms=W) == 0
    # the window now runs from the latest showing
    assert attribute_feedback(log, "a", "click", W + W // 2, W) == ("v1", "click")
    # shown again long after: a new impression, credits reset
    assert record_impressions(log, ["a"], "v1", 10 * W, max_items=10, window_ms=W) == 1
    assert attribute_feedback(log, "a", "click", 10 * W + 5, W) == ("v1", "click")
    # a late recording older than the stored one is ignored
    assert record_impressions(log, ["a"], "v1", 5 * W, max_items=10, window_ms=W) == 0
    assert log.entries["a"][1] == 10 * W


def test_log_is_bounded_oldest_first():
    log = ImpressionLog()
    record_impressions(log, ["a", "b", "c"], "v", 0, max_items=3)
    record_impressions(log, ["d", "a"], "v", 10, max_items=3)  # a refreshed; b evicted first
    assert list(log.entries) == ["c", "d", "a"]
    assert attribute_feedback(log, "b", "click", 20, W) is None
    with pytest.raises(ValueError):
        record_impressions(log, ["x"], "v", 0, max_items=0)


def test_expire_and_state_round_trip():
    log = ImpressionLog()
    record_impressions(log, ["a", "b"], "control", 0, max_items=10)
    record_impressions(log, ["c"], "content_heavy", 2 * W, max_items=10)
    attribute_feedback(log, "c", "click", 2 * W + 1, W)
    state = pickle.loads(pickle.dumps(log.to_state()))
    assert state["v"] == 1
    restored = ImpressionLog.from_state(state)
    assert restored == log
    assert attribute_feedback(restored, "c", "click", 2 * W + 2, W) is None  # credit survived
    assert expire_impressions(restored, 2 * W + 10, W) == 2
    assert list(restored.entries) == ["c"]
    with pytest.raises(ValueError):
        ImpressionLog.from_state({"v": 0, "entries": []})


def test_ctr():
    assert ctr(0, 0) == 0.0
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
