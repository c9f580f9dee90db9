"""recsys.evaluation.metrics against hand-computed values (Recommenders' python_evaluation definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.evaluation import metrics as m

LN = math.log

# User a: hits at ranks 2 and 5 of 5, 3 relevant.  User b: hit at rank 2 of a 2-item list, 1
# relevant.  u_norel has no relevant items and u_norec no list: both are left out.
RECS = {"a": [1, 2, 3, 4, 5], "b": [7, 8], "u_norel": [1], "other": [9]}
REL = {"a": {2, 5, 9}, "b": {8}, "u_norel": set(), "u_norec": {1}, "other": {1, 2}}
K = 5


def test_precision_counts_k_not_list_length():
    # a: 2/5, b: 1/5 (short list), other: 0
    assert m.precision_at_k(RECS, REL, K) == pytest.approx((0.4 + 0.2 + 0.0) / 3)


def test_recall():
    assert m.recall_at_k(RECS, REL, K) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


def test_ndcg_binary_relevance():
    ndcg_a = (1 / LN(3) + 1 / LN(6)) / (1 / LN(2) + 1 / LN(3) + 1 / LN(4))
    ndcg_b = (1 / LN(3)) / (1 / LN(2))
    assert ndcg_a == pytest.approx(0.477624, abs=1e-6)
    assert m.ndcg_at_k(RECS, REL, K) == pytest.approx((ndcg_a + ndcg_b + 0.0) / 3)


def test_ndcg_is_base_independent_and_perfect_list_scores_one():
    assert m.ndcg_at_k({"u": [1, 2, 3]}, {"u": {1, 2, 3}}, 3) == pytest.approx(1.0)
    # more relevant items than k: the ideal list is k hits
    assert m.ndcg_at_k({"u": [1, 2]}, {"u": {1, 2, 3, 4}}, 2) == pytest.approx(1.0)


def test_map_is_normalised_by_all_relevant_items():
    # a: (1/2 + 2/5) / 3 = 0.3 ; b: (1/2) / 1 ; other: 0
    assert m.map_score(RECS, REL, K) == pytest.approx((0.3 + 0.5 + 0.0) / 3)
    # 4 relevant, k = 2, both ranks hit: map = (1 + 1) / 4, map@k = (1 + 1) / 2
    recs, rel = {"u": [1, 2, 9]}, {"u": {1, 2, 3, 4}}
    assert m.map_score(recs, rel, 2) == pytest.approx(0.5)
    assert m.map_at_k(recs, rel, 2) == pytest.approx(1.0)


def test_hit_rate_and_mrr():
    assert m.hit_rate_at_k(RECS, REL, K) == pytest.approx(2 / 3)
    assert m.mrr_at_k(RECS, REL, K) == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    # only the first k count
    assert m.hit_rate_at_k({"u": [1, 2, 3]}, {"u": {3}}, 2) == 0.0


def test_duplicates_and_truncation():
    # [3, 3, 4] with k = 2 is [3, 4]: the hit on 4 is at rank 2
    assert m.mrr_at_k({"u": [3, 3, 4]}, {"u": {4}}, 2) == pytest.approx(0.5)
    assert m.precision_at_k({"u": [4, 4, 4]}, {"u": {4}}, 2) == pytest.approx(0.5)


def test_empty_list_counts_as_zero_and_empty_input_is_zero():
    assert m.precision_at_k({"u": [], "v": [1]}, {"u": {1}, "v": {1}}, 1) == pytest.approx(0.5)
    assert m.ndcg_at_k({}, {}, 10) == 0.0


def test_ranking_metrics_agrees_with_the_single_functions():
    out = m.ranking_metrics(RECS, REL, K)
    assert out["users"] == 3
    assert out["precision@5"] == pytest.approx(m.precision_at_k(RECS, REL, K))
    assert out["recall@5"] == pytest.approx(m.recall_at_k(RECS, REL, K))
    assert out["ndcg@5"] == pytest.approx(m.ndcg_at_k(RECS, REL, K))
    assert out["map"] == pytest.approx(m.map_score(RECS, REL, K))
    assert out["map@5"] == pytest.approx(m.map_at_k(RECS, REL, K))
    assert out["hit_rate@5"] == pytest.approx(m.hit_rate_at_k(RECS, REL, K))
    assert out["mrr@5"] == pytest.approx(m.mrr_at_k(RECS, REL, K))


def test_single_target_cases():
    assert m.rank_of("x", ["a", "x", "b"], 10) == 2
    assert m.rank_of("x", ["a", "b", "x"], 2) == 0
    assert m.rank_of("x", ["a", "a", "x"], 2) == 2
    hr, mrr = m.hit_and_rr(np.array([1, 0, 4, 0]))
    assert hr == pytest.approx(0.5)
    assert mrr == pytest.approx((1 + 0.25) / 4)
    assert m.hit_and_rr(np.array([], dtype=int)) == (0.0, 0.0)


def test_k_must_be_positive():
    with pytest.raises(ValueError):
        m.precision_at_k(RECS, REL, 0)


def test_protocol_b_ratios_state_the_issue_bars():
    from recsys.evaluation.protocols import protocol_b_ratios

    def s(hr, hr2):
        return {"hit_rate@10": hr, "second_half_hit_rate@10": hr2}

    b = {"pipeline": s(0.15, 0.16), "baselines": {"popularity, live": s(0.075, 0.08)},
         "pipeline_on_sim_users": s(0.1, 0.12), "pipeline_frozen_on_sim_users": s(0.1, 0.1),
         "sim_live": s(0.1, 0.15)}
    assert protocol_b_ratios(b) == ["  the job over popularity: x2.00 (2nd half x2.00)",
                                    "  the job live over frozen (same users, 2nd half): x1.20",
                                    "  the job over the simulator (same users, 2nd half): x0.80"]
    assert protocol_b_ratios({"pipeline": s(0.1, 0.1)}) == []


def test_make_eval_runs_protocol_b_with_the_next_item_file_and_a_with_the_ratings_one():
    from recsys.evaluation.protocols import build_parser
    from recsys.paths import PROJECT_ROOT
    from state_schemas.config import load_config

    args = build_parser().parse_args([])
    a = load_config(PROJECT_ROOT / args.config, environ={})
    b = load_config(PROJECT_ROOT / args.b_config, environ={})
    assert a.recommend.recency_floor > 0 and a.similarity.ease_head_items > 0  # whole history
    assert b.recommend.recency_floor == 0 and b.recommend.recency_half_life_items > 0  # next item
    assert build_parser().parse_args(["--b-config", "x.toml"]).b_config == "x.toml"
