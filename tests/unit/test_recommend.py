import math
import random

import pytest

from state_schemas.config import DAY_MS, RecommendConfig, VariantConfig
from state_schemas.state import ItemInfo, RecentItem
from udfs.recommend import (Blended, ItemModel, ScoredItem, UserView, blend,
                            collaborative_candidates, content_scores, diversify, explain,
                            matched_feature,
                            recommend, top_interest_categories, trending_candidates)
from udfs.trending import TrendingModel

NOW = 1_750_000_000_000
HL = 3 * DAY_MS  # default recency half-life of recommend()
CONTROL = VariantConfig(traffic=1.0, w_collaborative=1.0, w_content=0.5, w_trending=0.2,
                        w_segment=0.2)


def item(item_id, title, categories=(), tags=(), available=True):
    return ItemInfo(item_id, title, tuple(categories), tuple(tags), None, available, 0)


def cfg(**kw):
    base = dict(max_per_category=0, candidates_per_source=50)
    base.update(kw)
    return RecommendConfig(**base)


def hand_model():
    """Small model whose blended scores are worked out by hand in test_exact_ranking."""
    catalog = {i.item_id: i for i in [
        item("r1", "Trail Runner X", ["shoes"], ["running"]),
        item("r2", "Blue Jacket", ["outerwear"]),
        item("a", "Road Shoe", ["shoes"], ["running"]),
        item("b", "Rain Coat", ["outerwear"]),
        item("c", "Running Cap", ["hats"], ["running"]),
        item("t1", "Sun Hat", ["hats"]),
        item("t2", "Big Novel", ["books"]),
        item("s1", "Yo-yo", ["toys"]),
    ]}
    neighbors = {
        "r1": [("a", 0.5), ("b", 0.125)],
        "r2": [("b", 1.0), ("c", 0.5)],
    }
    trending = TrendingModel(2 * DAY_MS)
    trending.record("t1", ["hats"], "old", 10.0, NOW)
    trending.record("t2", ["books"], "young", 5.0, NOW)
    trending.record("s1", ["toys"], "young", 4.0, NOW)
    trending.record("a", ["shoes"], "old", 2.5, NOW)
    return ItemModel(catalog, neighbors, trending)


def hand_user(**kw):
    base = dict(
        user_id="u1",
        recent_items=[RecentItem("r1", "like", NOW, 4.0),
                      RecentItem("r2", "view", NOW - HL, 2.0)],  # one half-life old: votes 1.0
        interests={"category:hats": 3.0, "tag:running": 4.0, "category:books": -5.0},
        exclude={"r1", "r2"}, not_interested=set(), segment="young", variant="control")
    base.update(kw)
    return UserView(**base)


# --------------------------------------------------------------------------- whole scorer
def test_exact_ranking_on_hand_built_model():
    # CF votes: r1 4.0, r2 2.0 * 0.5 = 1.0 -> a 2.0, b 0.5 + 1.0 = 1.5, c 0.5
    #   normalised: a 1, b 0.75, c 0.25
    # content (|p| = 5 over hats 3, running 4): cos = dot / (5 * sqrt(#features))
    #   c 7/(5*sqrt2) (max), a 4/(5*sqrt2) -> 4/7, t1 3/5 -> 3*sqrt2/7; b, t2, s1: 0
    # trending: t1 10, t2 5, s1 4, a 2.5 -> 1, .5, .4, .25;  segment young: t2 1, s1 .8
    expected = {
        "a": 1.0 + 0.5 * 4 / 7 + 0.2 * 0.25,
        "b": 0.75,
        "c": 0.25 + 0.5,                      # ties with b: item id decides
        "t1": 0.5 * 3 * math.sqrt(2) / 7 + 0.2,
        "t2": 0.2 * 0.5 + 0.2 * 1.0,
        "s1": 0.2 * 0.4 + 0.2 * 0.8,
    }
    recs = recommend(hand_user(), hand_model(), CONTROL, cfg(), 10, NOW)
    assert [r.item_id for r in recs] == ["a", "b", "c", "t1", "t2", "s1"]
    for r in recs:
        assert r.score == pytest.approx(expected[r.item_id], rel=1e-12)
    reasons = {r.item_id: r.reasons for r in recs}
    assert reasons["a"] == ["because you liked Trail Runner X", "matches your interest in running"]
    assert reasons["b"] == ["because you viewed Blue Jacket"]
    assert reasons["c"] == ["matches your interest in running", "because you viewed Blue Jacket"]
    assert reasons["t1"] == ["matches your interest in hats", "trending now"]
    assert reasons["t2"] == ["popular with users like you", "trending now"]
    assert all(isinstance(r, ScoredItem) for r in recs)


def test_k_limits_and_k_zero():
    model, user = hand_model(), hand_user()
    assert [r.item_id for r in recommend(user, model, CONTROL, cfg(), 2, NOW)] == ["a", "b"]
    assert recommend(user, model, CONTROL, cfg(), 0, NOW) == []
    assert recommend(user, model, CONTROL, cfg(), -3, NOW) == []
    assert len(recommend(user, model, CONTROL, cfg(max_k=3), 10, NOW)) == 3


def test_variant_weights_change_the_order():
    content_only = VariantConfig(w_collaborative=0.0, w_content=1.0, w_trending=0.0,
                                 w_segment=0.0)
    recs = recommend(hand_user(), hand_model(), content_only, cfg(), 10, NOW)
    # c 1, t1 3*sqrt2/7 = .606, a 4/7 = .571; zero-score items are dropped
    assert [r.item_id for r in recs] == ["c", "t1", "a"]
    # t1 came in as trending in the user's favourite category, and trending does not count here
    t1 = next(r for r in recs if r.item_id == "t1")
    assert t1.reasons == ["matches your interest in hats", "trending in hats"]


def test_not_interested_item_never_appears_even_if_top_neighbour_and_top_trending():
    model = hand_model()
    model.catalog["x"] = item("x", "Pushy Item", ["hats"], ["running"])
    model.neighbors["r1"].insert(0, ("x", 1.0))
    model.neighbors["r2"].insert(0, ("x", 1.0))
    model.trending.record("x", ["hats"], "young", 1000.0, NOW)
    assert recommend(hand_user(), model, CONTROL, cfg(), 10, NOW)[0].item_id == "x"
    for user in (hand_user(not_interested={"x"}),
                 hand_user(recent_items=[], interests={}, not_interested={"x"}),  # cold start
                 hand_user(not_interested={"x"}, segment="")):
        recs = recommend(user, model, CONTROL, cfg(), 100, NOW)
        assert recs and "x" not in {r.item_id for r in recs}


def test_consumed_unavailable_and_unknown_items_are_filtered():
    model = hand_model()
    model.catalog["gone"] = item("gone", "Sold Out", ["hats"], ["running"], available=False)
    model.neighbors["r1"] += [("gone", 1.0), ("ghost", 0.25), ("r2", 1.0)]
    model.trending.record("gone", ["hats"], "young", 50.0, NOW)
    model.trending.record("phantom", ["hats"], "young", 50.0, NOW)  # not in the catalogue
    user = hand_user(exclude={"r1", "r2", "b"})
    ids = [r.item_id for r in recommend(user, model, CONTROL, cfg(), 100, NOW)]
    assert "b" not in ids                 # consumed
    assert "gone" not in ids              # unavailable
    assert "phantom" not in ids           # unknown to the catalogue and not from CF
    assert "r1" not in ids and "r2" not in ids
    assert "ghost" in ids                 # unknown to the catalogue but from CF: allowed
    ghost = next(r for r in recommend(user, model, CONTROL, cfg(), 100, NOW)
                 if r.item_id == "ghost")
    assert ghost.reasons == ["because you liked Trail Runner X"]


def test_recent_items_are_not_recommended_back_unless_asked():
    model = hand_model()
    model.neighbors["r1"].append(("r2", 1.0))
    user = hand_user(exclude=set())
    assert "r2" not in {r.item_id for r in recommend(user, model, CONTROL, cfg(), 50, NOW)}
    ids = {r.item_id for r in recommend(user, model, CONTROL, cfg(), 50, NOW,
                                        exclude_recent=False)}
    assert "r2" in ids


def test_diversity_cap_on_primary_category():
    model = ItemModel(catalog={}, neighbors={"r": []}, trending=TrendingModel(DAY_MS))
    model.catalog["r"] = item("r", "Seed", ["shoes"])
    for i in range(6):
        model.catalog[f"s{i}"] = item(f"s{i}", f"Shoe {i}", ["shoes", "sale"])
        model.neighbors["r"].append((f"s{i}", 1.0 - i / 10))
    model.catalog["h0"] = item("h0", "Hat", ["hats", "shoes"])
    model.neighbors["r"].append(("h0", 0.05))
    model.catalog["n0"] = item("n0", "No category")
    model.neighbors["r"].append(("n0", 0.01))
    user = UserView("u", recent_items=[RecentItem("r", "purchase", NOW, 10.0)])
    recs = recommend(user, model, CONTROL, cfg(max_per_category=2), 10, NOW)
    assert [r.item_id for r in recs] == ["s0", "s1", "h0", "n0"]  # hats is h0's primary
    recs = recommend(user, model, CONTROL, cfg(max_per_category=0), 10, NOW)
    assert len(recs) == 8
    recs = recommend(user, model, CONTROL, cfg(max_per_category=2), 1, NOW)
    assert [r.item_id for r in recs] == ["s0"]


def test_cold_start_user_gets_segment_trending_then_global():
    model = hand_model()
    user = UserView("new", segment="young")
    recs = recommend(user, model, CONTROL, cfg(), 10, NOW)
    # segment young: t2, s1 (by blended score .3, .24); then global: t1 (.2), a (.05)
    assert [r.item_id for r in recs] == ["t2", "s1", "t1", "a"]
    assert recs[0].reasons[0] == "popular with users like you"
    assert recs[1].reasons[0] == "popular with users like you"
    assert recs[2].reasons == ["trending now"]
    assert recs[0].score == pytest.approx(0.3)
    # a weak segment favourite still comes before a strong global-only item
    model.trending.record("s2", ["toys"], "young", 0.5, NOW)
    model.catalog["s2"] = item("s2", "Kite", ["toys"])
    recs = recommend(user, model, CONTROL, cfg(), 10, NOW)
    assert [r.item_id for r in recs] == ["t2", "s1", "s2", "t1", "a"]
    assert recs[2].score < recs[3].score
    assert recs[2].reasons[0] == "popular with users like you"
    # no segment: global trending only
    recs = recommend(UserView("new"), model, CONTROL, cfg(), 10, NOW)
    assert [r.item_id for r in recs] == ["t1", "t2", "s1", "a", "s2"]
    assert all(r.reasons == ["trending now"] for r in recs)


def test_only_negative_signals_is_cold_start():
    model = hand_model()
    user = UserView("u", recent_items=[RecentItem("r1", "not_interested", NOW, -8.0)],
                    interests={"category:hats": -8.0}, not_interested={"r1"}, segment="young")
    assert [r.item_id for r in recommend(user, model, CONTROL, cfg(), 3, NOW)] == ["t2", "s1",
                                                                                     "t1"]


def test_nothing_at_all_gives_empty_list():
    empty = ItemModel(catalog={}, neighbors={}, trending=TrendingModel(DAY_MS))
    assert recommend(UserView("u"), empty, CONTROL, cfg(), 10, NOW) == []
    assert recommend(UserView("u", segment="young"), ItemModel(), CONTROL, RecommendConfig(),
                     10, NOW) == []
    user = hand_user()  # a real user, but nothing known about items
    assert recommend(user, empty, CONTROL, cfg(), 10, NOW) == []


def test_stale_or_skewed_request_time_does_not_break_trending():
    model = hand_model()
    fresh = recommend(UserView("n"), model, CONTROL, cfg(), 10, NOW)
    for now in (NOW - 10_000 * DAY_MS, NOW + 10_000 * DAY_MS):
        assert recommend(UserView("n"), model, CONTROL, cfg(), 10, now) == fresh


def test_deterministic_and_independent_of_dict_order():
    base = recommend(hand_user(), hand_model(), CONTROL, cfg(max_per_category=1), 10, NOW)
    assert [r.item_id for r in base] == ["a", "b", "c", "t2", "s1"]  # t1: hats already used
    rng = random.Random(7)
    for _ in range(5):
        model = hand_model()
        keys = list(model.catalog)
        rng.shuffle(keys)
        model.catalog = {k: model.catalog[k] for k in keys}
        user = hand_user()
        items = list(user.interests.items())
        rng.shuffle(items)
        user.interests = dict(items)
        again = recommend(user, model, CONTROL, cfg(max_per_category=1), 10, NOW)
        assert again == base


def test_default_config_runs():
    recs = recommend(hand_user(), hand_model(), RecommendConfig().variants["content_heavy"],
                     RecommendConfig(), 10, NOW)
    cats = [hand_model().catalog[r.item_id].categories[0] for r in recs]
    assert all(cats.count(c) <= 3 for c in cats)
    assert all(r.reasons for r in recs)


# ------------------------------------------------------------------------------ pieces
def test_collaborative_candidates_decay_and_best_contributor():
    recent = [RecentItem("r1", "click", NOW, 2.0),
              RecentItem("r2", "purchase", NOW - 2 * HL, 10.0),   # votes 2.5
              RecentItem("r3", "not_interested", NOW, -8.0)]     # ignored
    neighbors = {"r1": [("x", 1.0), ("y", 0.5)], "r2": [("x", 0.4), ("z", 0.1)],
                 "r3": [("bad", 1.0)]}
    scores, because = collaborative_candidates(recent, neighbors, NOW, half_life_ms=HL, limit=10)
    assert scores == pytest.approx({"x": 2.0 + 1.0, "y": 1.0, "z": 0.25})
    assert list(scores) == ["x", "y", "z"]
    assert because["x"].item_id == "r1" and because["z"].item_id == "r2"
    scores, _ = collaborative_candidates(recent, neighbors, NOW, half_life_ms=HL, limit=1,
                                         allowed=lambda i: i != "x")
    assert scores == {"y": 1.0}
    # a timestamp ahead of now counts as now, not more
    future = [RecentItem("r1", "click", NOW + HL, 2.0)]
    assert collaborative_candidates(future, neighbors, NOW, half_life_ms=HL, limit=5)[0]["x"] == 2.0


def test_content_scores_cosine_on_positive_part():
    catalog = {"i": item("i", "I", ["hats"], ["red", "wool"]), "j": item("j", "J", ["shoes"]),
               "k": item("k", "K", ["books"])}
    interests = {"category:hats": 1.0, "tag:red": 2.0, "tag:blue": 2.0,
                 "category:books": -4.0}
    scores = content_scores(interests, ["i", "j", "k", "unknown"], catalog)
    # |p| = 3; i: dot 3, 3 features -> 3 / (3 * sqrt 3)
    assert scores == pytest.approx({"i": 1 / math.sqrt(3)})
    assert matched_feature(interests, catalog["i"]) == "tag:red"
    assert matched_feature(interests, catalog["j"]) is None
    assert matched_feature(interests, None) is None
    assert content_scores({}, ["i"], catalog) == {}
    assert content_scores({"category:hats": -1.0}, ["i"], catalog) == {}


def test_trending_candidates_normalised_filtered_and_refetched():
    t = TrendingModel(DAY_MS)
    for n, w in enumerate([8.0, 4.0, 2.0, 1.0, 0.5]):
        t.record(f"i{n}", ["c"], "s", w, NOW)
    assert trending_candidates(t, NOW, 2) == {"i0": 1.0, "i1": 0.5}
    # the top three are filtered out by the predicate: it fetches further down
    got = trending_candidates(t, NOW, 2, allowed=lambda i: i not in {"i0", "i1", "i2"})
    assert got == {"i3": 1.0, "i4": 0.5}
    assert trending_candidates(t, NOW, 1, exclude={"i0"}, segment="s") == {"i1": 1.0}
    assert trending_candidates(t, NOW, 3, category="nope") == {}
    assert trending_candidates(t, NOW, 0) == {}


def test_top_interest_categories():
    interests = {"category:a": 1.0, "category:b": 3.0, "tag:x": 9.0, "category:c": -2.0,
                 "category:d": 3.0}
    assert top_interest_categories(interests, 2) == ["b", "d"]
    assert top_interest_categories(interests, 10) == ["b", "d", "a"]


def test_blend_normalises_each_source_and_breaks_ties_by_id():
    out = blend({"collaborative": {"x": 4.0, "y": 2.0}, "content": {"y": 0.5, "z": 0.25},
                 "trending": {}, "segment": {"w": -1.0}},
                {"collaborative": 1.0, "content": 1.0, "trending": 1.0, "segment": 1.0})
    assert [(b.item_id, b.score) for b in out] == [("y", 1.5), ("x", 1.0), ("z", 0.5),
                                                   ("w", 0.0)]
    assert out[0].contributions == {"collaborative": 0.5, "content": 1.0}
    tied = blend({"trending": {"b": 1.0, "a": 1.0, "c": 1.0}}, {"trending": 0.3})
    assert [b.item_id for b in tied] == ["a", "b", "c"]
    many = {f"i{n:02d}": 1.0 for n in reversed(range(40))}
    many["z"] = 2.0
    assert [b.item_id for b in blend({"content": many}, {"content": 1.0})] == (
        ["z"] + [f"i{n:02d}" for n in range(40)])
    assert blend({}, {}) == []


def test_diversify_greedy_with_cap():
    catalog = {"a": item("a", "A", ["x"]), "b": item("b", "B", ["x", "y"]),
               "c": item("c", "C", ["y"]), "d": item("d", "D", ["x"])}
    ranked = [Blended(i, 1.0, {}) for i in ["a", "b", "d", "c", "unknown"]]
    assert [b.item_id for b in diversify(ranked, 10, 2, catalog)] == ["a", "b", "c", "unknown"]
    assert [b.item_id for b in diversify(ranked, 2, 1, catalog)] == ["a", "c"]
    assert [b.item_id for b in diversify(ranked, 10, 0, catalog)] == ["a", "b", "d", "c",
                                                                      "unknown"]


@pytest.mark.parametrize("event_type,verb", [
    ("view", "viewed"), ("click", "clicked"), ("like", "liked"), ("share", "shared"),
    ("comment", "commented on"), ("add_to_cart", "added to cart"), ("purchase", "purchased"),
    ("rate", "rated highly")])
def test_explain_uses_the_verb_and_title(event_type, verb):
    catalog = {"r": item("r", "The Title")}
    reasons = explain({"collaborative": 1.0}, catalog,
                      because=RecentItem("r", event_type, NOW, 1.0))
    assert reasons == [f"because you {verb} The Title"]


def test_explain_order_share_and_forced_first():
    catalog = {}
    contributions = {"collaborative": 0.05, "content": 0.5, "trending": 0.3, "segment": 0.3}
    reasons = explain(contributions, catalog, because=RecentItem("zz", "like", NOW, 4.0),
                      interest_feature="category:hats", trending_category="hats")
    # collaborative is under 10 % of the score; trending ties segment (source order decides)
    assert reasons == ["matches your interest in hats", "trending now",
                       "popular with users like you"]
    assert explain(contributions, catalog, first="segment", max_reasons=1) == [
        "popular with users like you"]
    assert explain({"collaborative": 1.0}, catalog,
                   because=RecentItem("zz", "like", NOW, 4.0)) == ["because you liked zz"]


def test_interning_tables_never_give_two_ids_one_code_under_threads():
    """Thread mode runs several operator instances in one interpreter; the shared interning
    tables of the vectorised scorers must stay one-to-one however the threads interleave.
    (A race shows up in some rounds only; unlocked tables failed this test within 10 rounds.)"""
    import sys
    import threading

    from udfs.recommend import _ItemFeatureArrays, _NeighborArrays

    names = [f"x{n}" for n in range(5_000)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for round_ in range(10):
            neighbor_codes, feature_codes = _NeighborArrays(), _ItemFeatureArrays()

            def work(seed: int) -> None:
                for name in random.Random(seed).sample(names, len(names)):
                    neighbor_codes.intern(name)
                    feature_codes.intern(name)

            threads = [threading.Thread(target=work, args=(round_ * 10 + s,)) for s in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(neighbor_codes.code.values()) == list(range(len(names)))
            assert all(neighbor_codes.ids[c] == n for n, c in neighbor_codes.code.items())
            assert sorted(feature_codes.code.values()) == list(range(len(names)))
    finally:
        sys.setswitchinterval(old)
