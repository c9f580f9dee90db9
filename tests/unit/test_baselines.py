"""The evaluation's batch baselines (``recsys/evaluation/baselines.py``) against direct computations."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation import baselines
from recsys.evaluation.baselines import Interaction, InteractionMatrix

DAY = baselines.DAY_MS


def random_binary(seed: int, users: int = 30, items: int = 12, p: float = 0.3) -> np.ndarray:
    x = (np.random.RandomState(seed).rand(users, items) < p).astype(np.float64)
    x[0, :] = 1.0  # no empty column
    return x


@pytest.mark.parametrize("seed, lam", [(0, 1.0), (1, 10.0), (2, 250.0)])
def test_ease_equals_a_ridge_regression_per_column(seed, lam):
    """Column j of B minimises ||X_j - X_{-j} b||^2 + lam ||b||^2 over the other columns (the
    constraint diag(B) = 0): the closed form must give that solution, column by column."""
    x = random_binary(seed)
    b = baselines.ease_weights(x, lam)
    n = x.shape[1]
    for j in range(n):
        others = [i for i in range(n) if i != j]
        xo = x[:, others]
        direct = np.linalg.solve(xo.T @ xo + lam * np.eye(n - 1), xo.T @ x[:, j])
        assert b[j, j] == 0.0
        np.testing.assert_allclose(b[others, j], direct, rtol=1e-9, atol=1e-12)


def test_ease_keeps_negative_weights_and_refuses_a_zero_lambda():
    b = baselines.ease_weights(random_binary(3), 5.0)
    assert (b < 0).any() and (b > 0).any()
    with pytest.raises(ValueError, match="lambda"):
        baselines.ease_weights(random_binary(3), 0.0)


def test_sar_similarities_from_cooccurrence():
    #           a  b  c
    x = np.array([[1, 1, 0],
                  [1, 1, 1],
                  [1, 0, 1],
                  [0, 0, 1]], dtype=np.float64)
    # C = [[3, 2, 2], [2, 2, 1], [2, 1, 3]]
    cos = baselines.sar_similarity(x, "cosine")
    jac = baselines.sar_similarity(x, "jaccard")
    lift = baselines.sar_similarity(x, "lift")
    assert cos[0, 1] == pytest.approx(2 / np.sqrt(3 * 2))
    assert jac[0, 2] == pytest.approx(2 / (3 + 3 - 2))
    assert lift[1, 2] == pytest.approx(1 / (2 * 3))
    assert np.allclose(np.diag(jac), 1.0)
    with pytest.raises(ValueError):
        baselines.sar_similarity(x, "pearson")


def test_affinity_decays_by_half_per_half_life():
    m = InteractionMatrix.of([Interaction("u", "a", 0, 4.0), Interaction("u", "b", 10 * DAY, 4.0),
                              Interaction("u", "a", 10 * DAY, 1.0)])
    a = m.decayed_affinity(10 * DAY)
    assert a[0, m.item_index["a"]] == pytest.approx(4.0 / 2 + 1.0)
    assert a[0, m.item_index["b"]] == pytest.approx(4.0)
    assert m.decayed_affinity(None)[0, m.item_index["a"]] == pytest.approx(5.0)


def test_lists_skip_training_items_and_are_deterministic():
    events = [Interaction("u1", "a", 1, 1.0), Interaction("u2", "a", 2, 1.0),
              Interaction("u2", "b", 3, 1.0), Interaction("u3", "c", 4, 1.0),
              Interaction("u3", "a", 5, 1.0), Interaction("u1", "d", 6, 1.0)]
    m = InteractionMatrix.of(events, items=["a", "b", "c", "d", "e"])
    pop = baselines.popularity(m, ["u1", "u2", "nobody"], 10)
    assert pop["u1"] == ["b", "c", "e"]            # a, d seen; b, c ahead of e (counts 1, 1, 0)
    assert pop["u2"] == ["c", "d", "e"] and pop["nobody"] == []
    for name, params in (("sar", {"similarity": "jaccard"}), ("ease", {"lam": 1.0})):
        lists = baselines.recommend(name, m, ["u1", "u2", "u3"], 2, params)
        for u in ("u1", "u2", "u3"):
            seen = {e.item for e in events if e.user == u}
            assert len(lists[u]) == 2 and not set(lists[u]) & seen, (name, u, lists[u])
        assert lists == baselines.recommend(name, m, ["u1", "u2", "u3"], 2, params)


def test_top_k_unseen_returns_fewer_when_everything_was_seen():
    scores = np.array([[3.0, 2.0, 1.0]])
    assert baselines.top_k_unseen(scores, np.array([[True, False, True]]), 3).tolist() == [
        [1, -1, -1]]
    assert baselines.top_k_unseen(np.array([[1.0, 1.0, 1.0]]), np.zeros((1, 3), bool),
                                  2).tolist() == [[0, 1]]


def test_top_k_unseen_equals_a_full_stable_sort_ties_and_all():
    """The partial selection gives what sorting every row would: best first, ties by column."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        users, n, k = int(rng.integers(1, 5)), int(rng.integers(1, 40)), int(rng.integers(0, 45))
        scores = rng.integers(0, 4, size=(users, n)).astype(float)   # many ties
        seen = rng.random((users, n)) < rng.random()
        s = np.where(seen, -np.inf, scores)
        order = np.argsort(-s, axis=1, kind="stable")[:, :min(k, n)]
        expected = np.where(np.take_along_axis(s, order, axis=1) > -np.inf, order, -1)
        np.testing.assert_array_equal(baselines.top_k_unseen(scores, seen, k), expected)


def test_protocol_b_baselines_score_every_case_their_way():
    """Popularity is scored on every case, EASE (trained on the first half) on the second
    half's, each rank that of a direct computation of its list."""
    from recsys.evaluation import compare
    from recsys.evaluation.metrics import rank_of

    rng = np.random.RandomState(3)
    events = [{"event_id": f"e{n}", "user_id": f"u{rng.randint(6)}",
               "item_id": f"i{rng.randint(9)}", "ts": n} for n in range(80)]
    t_mid = 40
    out = compare.prequential_baselines(events, t_mid, k=3, ease_lambda=5.0)
    items = list(dict.fromkeys(e["item_id"] for e in events))
    x = np.zeros((6, len(items)))
    for e in events[:t_mid]:
        x[int(e["user_id"][1:]), items.index(e["item_id"])] = 1.0
    b = baselines.ease_weights(x, 5.0)
    expected_pop, expected_ease, previous, counts, seen = [], [], {}, np.zeros(len(items)), {}
    for e in events:
        u, c = e["user_id"], items.index(e["item_id"])
        if u in previous:
            pop_list, ease_list = previous[u]
            expected_pop.append(rank_of(e["item_id"], pop_list, 3))
            if e["ts"] >= t_mid:
                expected_ease.append(rank_of(e["item_id"], ease_list, 3))
        counts[c] += 1
        s = seen.setdefault(u, np.zeros(len(items), dtype=bool))
        s[c] = True
        top = lambda scores: [items[j] for j in baselines.top_k_unseen(  # noqa: E731
            scores[None, :], s[None, :], 3)[0] if j >= 0]
        previous[u] = (top(counts), top(b[s].sum(axis=0)))
    assert [c.rank for c in out["popularity, live"]] == expected_pop
    assert [c.rank for c in out["EASE, first half"]] == expected_ease
    assert len(expected_ease) > 10 and any(expected_ease)
