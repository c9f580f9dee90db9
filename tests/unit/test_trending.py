import pickle
import random

import numpy as np
import pytest

from udfs.trending import MAX_EXPONENT, DecayedCounter, TrendingModel

H = 1_000  # half-life in ms
T0 = 1_700_000_000_000


def test_one_half_life_older_counts_exactly_half():
    c = DecayedCounter(H)
    c.add("old", 1.0, T0)
    c.add("new", 1.0, T0 + H)
    assert c.score("new", T0 + H) == 1.0
    assert c.score("old", T0 + H) == 0.5
    # The ratio does not depend on when we look.
    assert c.score("old", T0 + 5 * H) / c.score("new", T0 + 5 * H) == 0.5
    assert c.score("new", T0 + 3 * H) == 0.25
    assert c.score("missing", T0) == 0.0


def test_weights_accumulate_and_add_many_matches_add():
    a, b = DecayedCounter(H), DecayedCounter(H)
    events = [("x", 2.0, T0), ("y", 1.0, T0 + 500), ("x", 3.0, T0 + 2 * H), ("z", 0.5, T0 + H)]
    for key, w, ts in events:
        a.add(key, w, ts)
    b.add_many([e[0] for e in events], np.array([e[1] for e in events]),
               np.array([e[2] for e in events]))
    now = T0 + 2 * H
    for key in "xyz":
        assert b.score(key, now) == pytest.approx(a.score(key, now), rel=1e-12)
    assert a.score("x", now) == pytest.approx(2.0 * 0.25 + 3.0)
    # scalars broadcast
    c = DecayedCounter(H)
    c.add_many(["p", "q", "p"], 1.0, T0)
    assert c.score("p", T0) == 2.0 and c.score("q", T0) == 1.0


def test_top_order_ties_and_exclude():
    c = DecayedCounter(H)
    c.add("a", 1.0, T0)          # 0.5 at T0+H
    c.add("b", 1.0, T0 + H)      # 1.0
    c.add("c", 3.0, T0)          # 1.5
    c.add("d", 1.0, T0 + H)      # 1.0, ties with b
    now = T0 + H
    assert c.top(10, now) == [("c", 1.5), ("b", 1.0), ("d", 1.0), ("a", 0.5)]
    assert c.top(2, now) == [("c", 1.5), ("b", 1.0)]
    assert c.top(2, now, exclude={"c"}) == [("b", 1.0), ("d", 1.0)]
    assert c.top(0, now) == []
    assert DecayedCounter(H).top(3, now) == []


@pytest.mark.parametrize("cache", [0, 3, 100])
def test_ties_at_the_cut_are_broken_by_key(cache):
    c = DecayedCounter(H, top_cache_size=cache)
    for n in reversed(range(50)):
        c.add(f"k{n:02d}", 1.0, T0)
    c.add("best", 2.0, T0)
    assert [k for k, _ in c.top(6, T0)] == ["best", "k00", "k01", "k02", "k03", "k04"]
    assert [k for k, _ in c.top(3, T0, exclude={"k01"})] == ["best", "k00", "k02"]


@pytest.mark.parametrize("cache", [0, 1, 2, 5])
def test_top_cache_is_exact(cache):
    rng = random.Random(cache)
    for _ in range(100):
        cached, full = DecayedCounter(H, top_cache_size=cache), DecayedCounter(H)
        for _ in range(rng.randint(1, 50)):
            if rng.random() < 0.3:
                keys = [f"k{rng.randint(0, 15)}" for _ in range(3)]
                ws = [rng.choice([0.0, 1.0, 2.0]) for _ in keys]
                ts = [T0 + rng.randint(0, 4 * H) for _ in keys]
                cached.add_many(keys, ws, ts)
                full.add_many(keys, ws, ts)
            else:
                key, w, ts = f"k{rng.randint(0, 15)}", rng.choice([1.0, 0.5]), T0 + rng.randint(0, 4 * H)
                cached.add(key, w, ts)
                full.add(key, w, ts)
        exclude = {f"k{rng.randint(0, 15)}" for _ in range(rng.randint(0, 4))}
        n = rng.randint(1, 10)
        assert cached.top(n, T0 + 5 * H, exclude) == full.top(n, T0 + 5 * H, exclude)


@pytest.mark.parametrize("cache", [0, 1, 3, 8, 500])
def test_top_where_equals_a_full_sort_with_the_filter(cache):
    """The lazy ranked walk gives exactly the first n allowed keys of the full order (value
    desc, key asc), ties at the cache's cut included, and stays right as the counter changes."""
    rng = random.Random(100 + cache)
    for _ in range(60):
        c = DecayedCounter(H, top_cache_size=cache)
        reference = DecayedCounter(H)
        for step in range(rng.randint(1, 60)):
            key = f"k{rng.randint(0, 25):02d}"
            w, ts = rng.choice([1.0, 1.0, 2.0, 0.5]), T0 + rng.choice([0, H, 2 * H])
            c.add(key, w, ts)
            reference.add(key, w, ts)
            if step % 7 == 0:
                banned = {f"k{rng.randint(0, 25):02d}" for _ in range(rng.randint(0, 8))}
                exclude = {f"k{rng.randint(0, 25):02d}" for _ in range(rng.randint(0, 3))}
                n = rng.randint(1, 12)
                full = [kv for kv in reference.top(1000, T0 + 3 * H, exclude)
                        if kv[0] not in banned]
                got = c.top_where(n, T0 + 3 * H, exclude, lambda k: k not in banned)
                assert got == full[:n]
    assert DecayedCounter(H).top_where(3, T0) == []
    assert c.top_where(0, T0) == []


def test_top_where_grows_its_fallback_prefix_until_enough_keys_pass():
    """A reader that filters out nearly all popular keys walks past the cache and past several
    growing prefixes of the full order; the answer is still the exact filtered order."""
    rng = random.Random(5)
    c, reference = DecayedCounter(H, top_cache_size=5), DecayedCounter(H)
    for n in range(3000):
        key, w = f"k{rng.randint(0, 1999):04d}", rng.choice([1.0, 2.0, 3.0])
        c.add(key, w, T0 + n)
        reference.add(key, w, T0 + n)
    full = reference.top(5000, T0 + 3000)
    allowed = {k for k, _ in full[-150:]}  # only the least popular keys pass
    got = c.top_where(40, T0 + 3000, exclude={full[-1][0]}, allowed=allowed.__contains__)
    assert got == [kv for kv in full if kv[0] in allowed and kv[0] != full[-1][0]][:40]
    assert len(got) == 40


def test_top_where_scores_survive_a_rebase():
    c = DecayedCounter(H, top_cache_size=4)
    c.add_many(["a", "b"], [2.0, 1.0], T0)
    assert c.top_where(2, T0 + 10 * H) == [("a", 2.0 / 1024), ("b", 1.0 / 1024)]
    c.rebase(T0 + 10 * H)  # scales every stored value, so the cached order's values too
    assert c.top_where(2, T0 + 10 * H) == [("a", 2.0 / 1024), ("b", 1.0 / 1024)]


def test_top_where_sees_each_add_and_prune():
    c = DecayedCounter(H, top_cache_size=2)
    c.add_many(["a", "b", "c"], [3.0, 2.0, 1.0], T0)
    assert [k for k, _ in c.top_where(3, T0, allowed=lambda k: k != "a")] == ["b", "c"]
    c.add("c", 5.0, T0)  # the cached order must not be reused after a change
    assert [k for k, _ in c.top_where(2, T0)] == ["c", "a"]
    c.prune(T0, min_score=2.5)
    assert [k for k, _ in c.top_where(5, T0)] == ["c", "a"]


def test_grows_past_initial_capacity():
    c = DecayedCounter(H, initial_capacity=1)
    keys = [f"i{i}" for i in range(1000)]
    c.add_many(keys, np.arange(1000, dtype=float), T0)
    assert len(c) == 1000
    assert c.top(3, T0) == [("i999", 999.0), ("i998", 998.0), ("i997", 997.0)]
    assert "i5" in c and "nope" not in c


def test_rejects_negative_and_non_finite_weights():
    c = DecayedCounter(H)
    with pytest.raises(ValueError):
        c.add("a", -1.0, T0)
    with pytest.raises(ValueError):
        c.add("a", float("nan"), T0)
    with pytest.raises(ValueError):
        c.add_many(["a", "b"], [1.0, -1.0], T0)
    assert len(c) == 0
    with pytest.raises(ValueError):
        DecayedCounter(0)


def test_overflow_guard_raises_clear_value_error_without_rebasing():
    c = DecayedCounter(H, rebase_after=None)
    c.add("a", 1.0, T0)
    with pytest.raises(ValueError, match="half-lives"):
        c.add("a", 1.0, T0 + int((MAX_EXPONENT + 10) * H))
    with pytest.raises(ValueError, match="half-lives"):
        c.score("a", T0 - int((MAX_EXPONENT + 10) * H))
    assert c.score("a", T0) == 1.0  # unchanged by the rejected add


def test_rebase_keeps_scores_and_prevents_overflow():
    c = DecayedCounter(H)  # re-bases after 64 half-lives by default
    c.add("a", 1.0, T0)
    c.add("b", 1.0, T0 + 10 * H)
    for step in range(1, 40):  # 2000 half-lives later: would overflow without re-basing
        c.add("b", 1.0, T0 + 10 * H + step * 50 * H)
    now = T0 + 10 * H + 39 * 50 * H
    assert c.landmark > T0
    assert np.isfinite(c.score("b", now))
    assert c.score("b", now) == pytest.approx(1.0 + 2.0 ** -50, rel=1e-9)
    assert c.score("a", now) == 0.0  # decayed to nothing, no overflow
    d = DecayedCounter(H)
    d.add("x", 4.0, T0)
    before = d.score("x", T0 + 3 * H)
    d.rebase(T0 + 2 * H)
    assert d.score("x", T0 + 3 * H) == before == 0.5


def test_counter_state_round_trip_is_plain_and_versioned():
    c = DecayedCounter(H, top_cache_size=2)
    c.add("a", 1.0, T0)
    c.add("b", 2.0, T0 + H)
    c.add("c", 0.25, T0 + H)
    state = c.to_state()
    assert state["v"] == 1
    assert pickle.loads(pickle.dumps(state)) == state
    assert all(type(x) in (str, int, float, list, type(None)) for x in state.values())
    r = DecayedCounter.from_state(pickle.loads(pickle.dumps(state)), top_cache_size=2)
    for key in "abc":
        assert r.score(key, T0 + 2 * H) == c.score(key, T0 + 2 * H)
    assert r.top(3, T0 + 2 * H) == c.top(3, T0 + 2 * H)
    r.add("c", 10.0, T0 + 2 * H)  # still writable after restore
    assert r.top(1, T0 + 2 * H)[0][0] == "c"
    with pytest.raises(ValueError, match="version"):
        DecayedCounter.from_state({**state, "v": 99})


def test_prune_drops_faded_keys():
    c = DecayedCounter(H, top_cache_size=4)
    c.add("old", 1.0, T0)
    c.add("new", 1.0, T0 + 10 * H)
    c.add("mid", 1.0, T0 + 8 * H)
    assert c.prune(T0 + 10 * H, min_score=0.01) == 1  # old: 2**-10 < 0.01
    assert c.keys() == ["new", "mid"]
    assert c.prune(T0 + 10 * H, max_keys=1) == 1
    assert c.top(5, T0 + 10 * H) == [("new", 1.0)]


def test_trending_model_global_category_segment():
    m = TrendingModel(H)
    m.record("shoe1", ["shoes", "sale"], "young", 1.0, T0)
    m.record("shoe2", ["shoes"], "old", 4.0, T0)
    m.record("hat1", ["hats"], "young", 2.0, T0 + H)
    m.record("shoe1", ["shoes"], "young", 1.0, T0 + H)
    now = T0 + H
    assert m.trending_items(3, now) == [("hat1", 2.0), ("shoe2", 2.0), ("shoe1", 1.5)]
    assert m.trending_in_category("shoes", 5, now) == [("shoe2", 2.0), ("shoe1", 1.5)]
    assert m.trending_in_category("sale", 5, now) == [("shoe1", 0.5)]
    assert m.trending_in_segment("young", 5, now) == [("hat1", 2.0), ("shoe1", 1.5)]
    assert m.trending_in_segment("nobody", 5, now) == []
    assert m.trending_in_category("nothing", 5, now) == []
    assert m.trending_items(5, now, exclude={"hat1"})[0][0] == "shoe2"
    assert m.last_ts == now


def test_negative_weights_are_ignored_for_popularity():
    m = TrendingModel(H)
    assert m.record("a", ["c"], "s", 1.0, T0)
    assert not m.record("a", ["c"], "s", -8.0, T0)   # not_interested
    assert not m.record("b", ["c"], "s", -8.0, T0)
    assert not m.record("b", ["c"], "s", 0.0, T0)
    assert m.trending_items(5, T0) == [("a", 1.0)]
    assert m.trending_in_category("c", 5, T0) == [("a", 1.0)]
    assert m.trending_in_segment("s", 5, T0) == [("a", 1.0)]


def test_empty_segment_is_not_a_segment():
    m = TrendingModel(H)
    m.record("a", [], "", 1.0, T0)
    assert m.by_segment == {} and m.by_category == {}
    assert m.trending_in_segment("", 5, T0) == []


def test_trending_state_round_trip():
    m = TrendingModel(H, top_cache_size=3)
    for i in range(10):
        m.record(f"i{i}", [f"c{i % 3}"], f"s{i % 2}", 1.0 + i, T0 + i * 100)
    state = pickle.loads(pickle.dumps(m.to_state()))
    assert state["v"] == 1
    r = TrendingModel.from_state(state, top_cache_size=3)
    now = T0 + 2_000
    assert r.trending_items(4, now) == m.trending_items(4, now)
    for c in ("c0", "c1", "c2"):
        assert r.trending_in_category(c, 5, now) == m.trending_in_category(c, 5, now)
    for s in ("s0", "s1"):
        assert r.trending_in_segment(s, 5, now) == m.trending_in_segment(s, 5, now)
    assert r.last_ts == m.last_ts and r.half_life_ms == H
    with pytest.raises(ValueError):
        TrendingModel.from_state({"v": 2})


def test_trending_prune_drops_empty_counters():
    m = TrendingModel(H)
    m.record("a", ["old"], "s", 1.0, T0)
    m.record("b", ["new"], "s", 1.0, T0 + 20 * H)
    removed = m.prune(T0 + 20 * H, min_score=0.001)
    assert removed == 3  # a from items, from "old", from segment "s"
    assert set(m.by_category) == {"new"}
    assert m.trending_items(5, T0 + 20 * H) == [("b", 1.0)]
