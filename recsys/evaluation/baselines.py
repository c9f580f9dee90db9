"""Batch baselines for the offline evaluation: popularity, SAR and EASE, in numpy.

They are trained on the same training interactions the engine replays and scored with the same
metric code (``recsys/evaluation/metrics.py``), so their numbers sit beside the engine's like for like. The
engine never imports this module.

* **Popularity**: items by number of training interactions.
* **SAR** (Smart Adaptive Recommendations, Microsoft Recommenders' ``SARSingleNode``): affinity
  ``A[u, i] = sum of w * 2^(-(T - t) / half_life)`` over u's interactions with i (``T`` the
  newest training time; ``w`` the event's weight, the rating on MovieLens), item co-occurrence
  ``C = B^T B`` over the binary matrix ``B = [A > 0]``, item similarity from C (``cosine``
  ``C_ij / sqrt(C_ii C_jj)``, ``jaccard`` ``C_ij / (C_ii + C_jj - C_ij)`` or ``lift``
  ``C_ij / (C_ii C_jj)``), scores ``A S``.
* **EASE** (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): the
  item-item weights minimising ``||X - X B||^2 + lambda ||B||^2`` with ``diag(B) = 0`` over the
  binary matrix X, in closed form ``P = (X^T X + lambda I)^-1``,
  ``B = I - P diag(1 / diag(P))``; scores ``X B``.

Every ``recommend`` excludes the user's training items and breaks ties by item order, so
results are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

DAY_MS = 86_400_000
SAR_SIMILARITIES = ("cosine", "jaccard", "lift")


@dataclass(frozen=True)
class Interaction:
    user: str
    item: str
    ts: int          # epoch ms
    weight: float    # the rating on MovieLens; the event's weight elsewhere


@dataclass
class InteractionMatrix:
    """Training interactions as dense arrays: ``users`` x ``items`` in first-seen order."""
    users: list[str]
    items: list[str]
    user_index: dict[str, int]
    item_index: dict[str, int]
    rows: np.ndarray       # int64, one per interaction
    cols: np.ndarray       # int64
    ts: np.ndarray         # int64, epoch ms
    weight: np.ndarray     # float64

    @classmethod
    def of(cls, interactions: Iterable[Interaction],
           items: Sequence[str] = ()) -> "InteractionMatrix":
        """From interactions; ``items`` (e.g. the catalogue) come first, in that order, so items
        nobody interacted with can still be ranked (they score 0)."""
        user_index: dict[str, int] = {}
        item_index: dict[str, int] = {i: n for n, i in enumerate(dict.fromkeys(items))}
        rows, cols, ts, weight = [], [], [], []
        for x in interactions:
            rows.append(user_index.setdefault(x.user, len(user_index)))
            cols.append(item_index.setdefault(x.item, len(item_index)))
            ts.append(x.ts)
            weight.append(x.weight)
        return cls(list(user_index), list(item_index), user_index, item_index,
                   np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64),
                   np.asarray(ts, dtype=np.int64), np.asarray(weight, dtype=np.float64))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.users), len(self.items)

    def binary(self) -> np.ndarray:
        """X[u, i] = 1 when u interacted with i (float64)."""
        x = np.zeros(self.shape, dtype=np.float64)
        x[self.rows, self.cols] = 1.0
        return x

    def decayed_affinity(self, half_life_ms: float | None) -> np.ndarray:
        """SAR's affinity: the sum of weights, each decayed by its age at the newest time
        (``half_life_ms`` None or <= 0: no decay)."""
        a = np.zeros(self.shape, dtype=np.float64)
        w = self.weight
        if half_life_ms and half_life_ms > 0 and len(self.ts):
            w = w * np.exp2(-(self.ts.max() - self.ts) / float(half_life_ms))
        np.add.at(a, (self.rows, self.cols), w)
        return a


def top_k_unseen(scores: np.ndarray, seen: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column indices of the ``k`` best scores among unseen columns (best first;
    ties by column index)."""
    s = np.where(seen, -np.inf, scores)
    n = s.shape[1]
    k = min(k, n)
    out = np.full((s.shape[0], k), -1, dtype=np.int64)
    if k == 0:
        return out
    for r, row in enumerate(s):
        # Only the k best are sorted (a partition finds the k-th best value; of the columns
        # tied with it, the lowest indices are kept), not the whole catalogue per row.
        kth = np.partition(row, n - k)[n - k]
        above = np.flatnonzero(row > kth)
        chosen = np.concatenate([above, np.flatnonzero(row == kth)[:k - len(above)]])
        chosen = chosen[np.lexsort((chosen, -row[chosen]))]
        out[r, :len(chosen)] = np.where(row[chosen] > -np.inf, chosen, -1)
    return out


def top_lists(m: InteractionMatrix, scores: np.ndarray, users: Sequence[str], k: int
              ) -> dict[str, list[str]]:
    """Each user's top ``k`` unseen items by ``scores`` (users x items); [] for a user the
    matrix does not know."""
    seen = m.binary() > 0
    out: dict[str, list[str]] = {}
    known = [u for u in users if u in m.user_index]
    if known:
        idx = np.asarray([m.user_index[u] for u in known], dtype=np.int64)
        top = top_k_unseen(scores[idx], seen[idx], k)
        for u, row in zip(known, top):
            out[u] = [m.items[c] for c in row if c >= 0]
    for u in users:
        out.setdefault(u, [])
    return out


# --------------------------------------------------------------------------- the models

def popularity(m: InteractionMatrix, users: Sequence[str], k: int) -> dict[str, list[str]]:
    counts = np.bincount(m.cols, minlength=m.shape[1]).astype(np.float64)
    return top_lists(m, np.broadcast_to(counts, m.shape), users, k)


def sar_similarity(binary: np.ndarray, kind: str) -> np.ndarray:
    """Item-item similarity of SAR from the binary user x item matrix."""
    if kind not in SAR_SIMILARITIES:
        raise ValueError(f"SAR similarity must be one of {SAR_SIMILARITIES}, got {kind!r}")
    c = binary.T @ binary
    d = np.diag(c).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "cosine":
            s = c / np.sqrt(np.outer(d, d))
        elif kind == "jaccard":
            s = c / (d[:, None] + d[None, :] - c)
        else:
            s = c / np.outer(d, d)
    return np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)


def sar(m: InteractionMatrix, users: Sequence[str], k: int, *, similarity: str = "jaccard",
        half_life_ms: float | None = 30 * DAY_MS) -> dict[str, list[str]]:
    s = sar_similarity(m.binary(), similarity)
    return top_lists(m, m.decayed_affinity(half_life_ms) @ s, users, k)


def ease_weights(binary: np.ndarray, lam: float) -> np.ndarray:
    """EASE's item-item weight matrix B (zero diagonal) for the binary user x item matrix."""
    if lam <= 0:
        raise ValueError(f"EASE needs lambda > 0, got {lam}")
    g = binary.T @ binary
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))          # column j divided by -P_jj
    b[np.diag_indices_from(b)] = 0.0
    return b


def ease(m: InteractionMatrix, users: Sequence[str], k: int, *, lam: float = 400.0
         ) -> dict[str, list[str]]:
    x = m.binary()
    return top_lists(m, x @ ease_weights(x, lam), users, k)


def recommend(model: str, m: InteractionMatrix, users: Sequence[str], k: int,
              params: Mapping[str, float | str]) -> dict[str, list[str]]:
    """One entry point for the evaluation's table: ``model`` is popularity, sar or ease."""
    if model == "popularity":
        return popularity(m, users, k)
    if model == "sar":
        return sar(m, users, k, **params)  # type: ignore[arg-type]
    if model == "ease":
        return ease(m, users, k, **params)  # type: ignore[arg-type]
    raise ValueError(f"unknown baseline {model!r}")
