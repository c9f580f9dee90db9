"""Offline ranking metrics (pure numpy; no Flink, no pandas).

Top-k list metrics follow Microsoft Recommenders' ``recommenders.evaluation.python_evaluation``
with ``relevancy_method="top_k"`` and binary relevance, so our numbers sit beside its published
MovieLens table:

* users: those with at least one relevant (test) item *and* a recommendation list ("common
  users"); a user whose list is empty still counts (with zero hits) when passed in.
* ``precision@k`` = mean over users of hits / k (k, not the list length: a short list is
  penalised).
* ``recall@k`` = mean of hits / |relevant|.
* ``ndcg@k`` = mean of DCG / IDCG with gain 1 per hit, DCG = sum over hits of 1 / log(1 + rank)
  (rank from 1; the log base cancels), IDCG = the same for min(|relevant|, k) hits at ranks
  1..min(|relevant|, k).
* ``map`` = mean of (sum over hits of (number of hits up to rank r) / r) / |relevant| — MAP
  normalised by the number of relevant items (Recommenders' ``map``; the published table's
  "MAP"). ``map_at_k`` divides by min(|relevant|, k) instead (Recommenders' newer ``map_at_k``).
* ``hit_rate@k`` = share of users with at least one hit in the top k.
* ``mrr@k`` = mean of 1 / (rank of the first hit within the top k), 0 without a hit.

Every function takes ``recommended: Mapping[user, Sequence[item]]`` (best first; only the first
``k`` count; duplicates after the first occurrence are ignored) and ``relevant: Mapping[user,
Collection[item]]``. Users missing from ``recommended`` are left out (as Recommenders does with
users it has no predictions for); users with no relevant items are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Hashable, Mapping, Sequence

import numpy as np

User = Hashable
Item = Hashable


@dataclass(frozen=True)
class UserHits:
    """Per-user hit pattern of one top-k list: ``hits[r]`` is True when rank r+1 is relevant."""
    hits: np.ndarray   # bool, length <= k
    n_relevant: int


def _dedup(items: Sequence[Item], k: int) -> list[Item]:
    out: list[Item] = []
    seen: set = set()
    for i in items:
        if i in seen:
            continue
        seen.add(i)
        out.append(i)
        if len(out) >= k:
            break
    return out


def user_hits(recommended: Mapping[User, Sequence[Item]], relevant: Mapping[User, Collection[Item]],
              k: int) -> dict[User, UserHits]:
    """The hit pattern of every evaluated user (in both mappings, with relevant items)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    out: dict[User, UserHits] = {}
    for user, rel in relevant.items():
        if user not in recommended:
            continue
        rel_set = set(rel)
        if not rel_set:
            continue
        top = _dedup(recommended[user], k)
        out[user] = UserHits(np.fromiter((i in rel_set for i in top), dtype=bool, count=len(top)),
                             len(rel_set))
    return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def precision_at_k(recommended, relevant, k: int) -> float:
    return _mean([h.hits.sum() / k for h in user_hits(recommended, relevant, k).values()])


def recall_at_k(recommended, relevant, k: int) -> float:
    return _mean([h.hits.sum() / h.n_relevant
                  for h in user_hits(recommended, relevant, k).values()])


def _ndcg(h: UserHits, k: int) -> float:
    ranks = np.flatnonzero(h.hits) + 1
    dcg = float(np.sum(1.0 / np.log1p(ranks)))
    ideal = np.arange(1, min(h.n_relevant, k) + 1)
    idcg = float(np.sum(1.0 / np.log1p(ideal)))
    return dcg / idcg if idcg > 0 else 0.0


def ndcg_at_k(recommended, relevant, k: int) -> float:
    return _mean([_ndcg(h, k) for h in user_hits(recommended, relevant, k).values()])


def _precision_sum(h: UserHits) -> float:
    ranks = np.flatnonzero(h.hits) + 1
    return float(np.sum(np.arange(1, len(ranks) + 1) / ranks))


def map_score(recommended, relevant, k: int) -> float:
    """MAP over the top k, normalised by the number of relevant items (Recommenders' ``map``)."""
    return _mean([_precision_sum(h) / h.n_relevant
                  for h in user_hits(recommended, relevant, k).values()])


def map_at_k(recommended, relevant, k: int) -> float:
    """MAP normalised by min(|relevant|, k) (Recommenders' current ``map_at_k``)."""
    return _mean([_precision_sum(h) / min(h.n_relevant, k)
                  for h in user_hits(recommended, relevant, k).values()])


def hit_rate_at_k(recommended, relevant, k: int) -> float:
    return _mean([float(h.hits.any()) for h in user_hits(recommended, relevant, k).values()])


def _rr(h: UserHits) -> float:
    idx = np.flatnonzero(h.hits)
    return 1.0 / (idx[0] + 1) if len(idx) else 0.0


def mrr_at_k(recommended, relevant, k: int) -> float:
    return _mean([_rr(h) for h in user_hits(recommended, relevant, k).values()])


def ranking_metrics(recommended, relevant, k: int = 10) -> dict[str, float]:
    """All of the above at once (one pass over the users), plus ``users`` evaluated."""
    hits = user_hits(recommended, relevant, k)
    vals = list(hits.values())
    return {
        "users": len(vals),
        f"precision@{k}": _mean([h.hits.sum() / k for h in vals]),
        f"recall@{k}": _mean([h.hits.sum() / h.n_relevant for h in vals]),
        f"ndcg@{k}": _mean([_ndcg(h, k) for h in vals]),
        "map": _mean([_precision_sum(h) / h.n_relevant for h in vals]),
        f"map@{k}": _mean([_precision_sum(h) / min(h.n_relevant, k) for h in vals]),
        f"hit_rate@{k}": _mean([float(h.hits.any()) for h in vals]),
        f"mrr@{k}": _mean([_rr(h) for h in vals]),
    }


# ------------------------------------------------------------------ one target per case
def rank_of(target: Item, recommended: Sequence[Item], k: int) -> int:
    """1-based rank of ``target`` in the first ``k`` (deduplicated) items; 0 if absent."""
    for r, item in enumerate(_dedup(recommended, k), start=1):
        if item == target:
            return r
    return 0


def hit_and_rr(ranks: np.ndarray) -> tuple[float, float]:
    """(HitRate, MRR) of cases with one target each, from their ranks (0 = not in the top k)."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        return 0.0, 0.0
    hit = ranks > 0
    rr = np.zeros(len(ranks), dtype=np.float64)
    rr[hit] = 1.0 / ranks[hit]
    return float(hit.mean()), float(rr.mean())
