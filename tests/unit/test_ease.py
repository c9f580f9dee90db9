"""EASE over the head (``udfs/ease.py``): the streamed Gram matrix, the refresh, the head swap,
its state codec, and how the recommender's model holds EASE rows beside item-CF rows."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation import baselines
from recsys.evaluation.simulate import EngineSimulator
from state_schemas.config import load_config
from state_schemas.item_state import GramState, decode_gram_state, encode_gram_state
from state_schemas.records import SOURCE_EASE, SOURCE_ITEM_CF
from state_schemas.versioning import StateVersionError
from udfs.ease import EaseHead
from udfs.model import ItemModel
from udfs.similarity import ItemStats

T0 = 1_767_225_600_000


def cfg(*overrides: str):
    return load_config(overrides=["similarity.ease_head_items=50", "similarity.top_k=8",
                                  *overrides], environ={})


def random_stream(seed: int, users: int = 12, items: int = 15, n: int = 400):
    rng = np.random.default_rng(seed)
    types = ["view", "click", "purchase", "like", "not_interested"]
    return [{"event_id": f"e{k}", "user_id": f"u{rng.integers(users)}",
             "item_id": f"i{rng.integers(items)}", "event_type": str(rng.choice(types, p=[
                 .4, .25, .15, .15, .05])), "ts": T0 + 1000 * k, "value": None}
            for k in range(n)]


def recent_sets(sim: EngineSimulator, users) -> dict[str, list[str]]:
    out = {}
    for u in users:
        p = sim.profile(u)
        out[u] = list(p.recent_ids) if p is not None else []
    return out


@pytest.mark.parametrize("seed", range(4))
def test_the_streamed_gram_matrix_is_that_of_the_users_current_recent_sets(seed):
    """Through the real engine (user side -> Gram records -> item side), with a recent list of
    5 so that evictions and "not interested" removals happen all the time, and a forget."""
    sim = EngineSimulator(cfg("profile.recent_items_max=5"), recommend_on_events=False)
    events = random_stream(seed)
    for e in events:
        sim.process_event(e, recommend_after=False)
    sim.forget("u3")
    sim.drain()
    ease = sim.item.ease
    sets = recent_sets(sim, sorted({e["user_id"] for e in events}))
    assert not sets["u3"]
    slot = ease.slot
    expected = np.zeros((len(ease.ids),) * 2)
    for items in sets.values():
        s = [slot[i] for i in items]
        expected[np.ix_(s, s)] += 1
    n = len(ease.ids)
    np.testing.assert_array_equal(ease.gram[:n, :n], expected)
    assert expected.sum() > 0


def test_the_refresh_publishes_eases_weights_top_k_by_magnitude_with_signs():
    c = cfg("similarity.top_k=4", "similarity.ease_lambda=2.0")
    ease = EaseHead(c)
    rng = np.random.default_rng(7)
    x = (rng.random((30, 9)) < 0.4).astype(float)
    x[0] = 1.0
    items = [f"i{j}" for j in range(9)]
    for row in x:
        chosen = [items[j] for j in np.flatnonzero(row)]
        ease.apply([([], chosen, [])])
    rows = {e.item_id: e for e in ease.refresh(T0)}
    assert ease.ids == items  # slots in admission order: B's rows and columns line up with x
    b = baselines.ease_weights(x, 2.0)
    for a, item in enumerate(items):
        e = rows[item]
        assert e.source == SOURCE_EASE and len(e.neighbor_ids) == 4
        want = sorted(((items[j], b[a, j]) for j in range(9) if j != a),
                      key=lambda t: -abs(t[1]))[:4]
        got = dict(zip(e.neighbor_ids, e.scores))
        assert set(got) == {j for j, _ in want}
        for j, w in want:
            assert got[j] == pytest.approx(w, rel=1e-9, abs=1e-12)
        assert e.scores == sorted(e.scores, reverse=True)
    assert any(s < 0 for e in rows.values() for s in e.scores)


def test_a_removed_user_withdraws_rows_that_lose_every_user():
    ease = EaseHead(cfg())
    ease.apply([([], ["a", "b"], []), ([], ["b", "c"], [])])
    first = {e.item_id: e for e in ease.refresh(T0)}
    assert first["a"].neighbor_ids and first["c"].neighbor_ids
    ease.apply([(["b"], [], ["a"])])                 # the first user's set is now {b}
    ease.apply([([], [], ["b"])])
    second = {e.item_id: e for e in ease.refresh(T0 + 1)}
    assert second["a"].neighbor_ids == [] and second["a"].source == SOURCE_EASE  # withdrawn
    assert second["c"].neighbor_ids == ["b"]


def test_a_full_head_swaps_in_a_much_more_active_item():
    c = cfg("similarity.ease_head_items=2")
    stats = ItemStats(c)
    stats.apply_activity(["a", "b", "z"], np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 9.0]),
                         np.array([T0] * 3), ["", "", ""])
    ease = EaseHead(c, stats)
    ease.apply([([], ["a", "b"], []), (["a", "b"], ["z"], [])])  # z finds the head full
    assert ease.ids == ["a", "b"] and ease.updates_outside_head == 1
    rows = {e.item_id: e for e in ease.refresh(T0)}
    assert ease.ids == ["z", "b"]                  # a (N=1) made room for z (N=9 > 2 x 1)
    assert rows["a"].neighbor_ids == [] and ease.gram[0, 0] == 0.0


def test_gram_state_round_trips_and_refuses_other_versions():
    g = GramState(["a", "b"], np.array([[2.0, 1.0], [1.0, 3.0]], dtype=np.float32), T0, True)
    back = decode_gram_state(encode_gram_state(g))
    assert back.ids == g.ids and back.last_refresh == T0 and back.pending
    np.testing.assert_array_equal(back.gram, g.gram)
    blob = bytearray(encode_gram_state(g))
    blob[2] = 9
    with pytest.raises(StateVersionError, match="version 9"):
        decode_gram_state(bytes(blob))
    ease = EaseHead(cfg())
    ease.load(encode_gram_state(g))
    assert ease.slot == {"a": 0, "b": 1} and ease.pending and ease.published == {"a", "b"}


def test_the_model_keeps_an_ease_row_until_ease_gives_it_back():
    model = ItemModel(cfg())
    model.set_neighbors("a", ["b"], [0.5])                       # item-CF
    model.set_neighbors("a", ["c", "d"], [0.4, -0.2], SOURCE_EASE)
    model.set_neighbors("a", ["b"], [0.9])                       # ignored: EASE holds the row
    assert model.neighbors_of("a") == [("c", 0.4), ("d", -0.2)]
    model.set_neighbors("a", [], [], SOURCE_EASE)                # withdrawn
    assert model.neighbors_of("a") == [] and model.nbr_source[model.code("a")] == SOURCE_ITEM_CF
    model.set_neighbors("a", ["b"], [0.9])
    assert model.neighbors_of("a") == [("b", 0.9)]
    model.set_neighbors("a", [], [], SOURCE_EASE)                # nothing to withdraw: kept
    assert model.neighbors_of("a") == [("b", 0.9)]
    restored = ItemModel(cfg())
    model.set_neighbors("e", ["a"], [-0.1], SOURCE_EASE)
    restored.restore(model.snapshot())
    assert restored.nbr_source[restored.code("e")] == SOURCE_EASE
    assert restored.neighbors_of("e") == [("a", -0.1)]


def test_ease_in_the_engine_beats_item_cf_where_item_cf_pairs_only_recent_neighbours():
    """A user's early items never pair with their late ones under item-CF's history window;
    EASE's Gram matrix covers the whole recent set. The engine with EASE must rank a held-out
    item that co-occurs with a user's early items above items that do not."""
    events = []
    k = 0
    for u in range(20):  # every user: x first, then filler, then y (far apart in the history)
        for item in ["x", *[f"f{(u + j) % 9}" for j in range(6)], "y"]:
            events.append({"event_id": f"e{k}", "user_id": f"u{u}", "item_id": item,
                           "event_type": "purchase", "ts": T0 + 1000 * k, "value": None})
            k += 1
    probe = {"event_id": "p", "user_id": "new", "item_id": "x", "event_type": "purchase",
             "ts": T0 + 1000 * k, "value": None}
    out = {}
    for head in (0, 50):
        sim = EngineSimulator(cfg(f"similarity.ease_head_items={head}",
                                  "similarity.history_max_items=2", "profile.recent_items_max=20",
                                  "recommend.variants.control.w_trending=0",
                                  "recommend.variants.control.w_segment=0",
                                  "recommend.variants.control.w_content=0"),
                              recommend_on_events=False)
        for e in events + [probe]:
            sim.process_event(e, recommend_after=False)
        sim.drain()
        rec = sim.request({"request_id": "r", "user_id": "new", "ts": probe["ts"], "k": 3})
        out[head] = rec.items if rec is not None else []
    assert "y" not in out[0] and out[50][:1] == ["y"], out
