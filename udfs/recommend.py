"""The recommender: a user's view and the columnar item model in, top-k items with reasons out.

Sources (each normalised to [0, 1] by its maximum before blending):

* ``collaborative`` — item-to-item CF. Every recent item ``r`` with a positive action weight
  votes with ``r.weight * 2^(-(now - r.ts) / recency_half_life)`` for each neighbour ``(j, s)``
  of its row: ``cf[j] += s * vote``. The best ``candidates_per_source`` allowed items are kept.
* ``content`` — cosine between the positive part of the user's interest vector and each
  candidate's 0/1 feature vector (``category:*``, ``tag:*``), over the candidates of every source
  plus the items trending in the user's favourite categories (the ``max_interest_categories``
  categories with the highest positive interest).
* ``trending`` — the most popular catalogue items overall (forward-decayed activity).
* ``segment`` — the most popular among users of the user's demographic segment.

Blend: ``score = w_collaborative*cf + w_content*content + w_trending*trending + w_segment*segment``
with the variant's weights; items with score <= 0 are dropped; ties are broken by item id.

Filters: consumed and "not interested" items, the user's recent items, and unavailable
catalogue items never appear. Items unknown to the catalogue may come in through CF only.

Cold start: with no CF candidate and no content match, the list is the segment's favourites
first, then the overall trending items (each group in blended order).

Diversity: at most ``max_per_category`` items per primary category (an item's first category),
greedily in rank order. Reasons: the sources giving at least ``min_reason_share`` of an item's
score, largest first, at most ``max_reasons``, in words ("because you purchased <title>",
"matches your interest in <feature>", "trending in <category>", "trending now", "popular with
users like you").

The per-candidate work — gathering neighbours, filtering, scoring, blending, ordering — is one
compiled kernel (:func:`score_candidates`, ``udfs/jit.py``); Python builds its inputs from the
profile and writes the reasons of the k items returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from state_schemas.config import RecommendConfig, VariantConfig
from udfs.items import NO_CODE
from udfs.jit import kernel, lex_order
from udfs.model import ItemModel

COLLABORATIVE = "collaborative"
CONTENT = "content"
TRENDING = "trending"
SEGMENT = "segment"
SOURCES: tuple[str, ...] = (COLLABORATIVE, CONTENT, TRENDING, SEGMENT)  # also the tie order

EVENT_VERBS: dict[str, str] = {
    "view": "viewed", "click": "clicked", "like": "liked", "share": "shared",
    "comment": "commented on", "add_to_cart": "added to cart", "purchase": "purchased",
    "rate": "rated highly",
}

# Bits of a candidate's source flags (kernel output).
SRC_CF, SRC_CONTENT, SRC_TREND, SRC_SEG = 1, 2, 4, 8


@dataclass(slots=True)
class UserView:
    """What the recommender needs to know about one user at trigger time."""
    user_id: str
    recent_ids: list[str]        # newest first
    recent_types: list[str]      # strongest action per recent item
    recent_ts: list[int]
    recent_weights: list[float]
    interests: dict[str, float]  # any scale: only directions matter (cosine)
    consumed: np.ndarray         # sorted uint64 item hashes
    not_interested: list[str]
    segment: str
    variant: str


@dataclass(slots=True)
class ScoredItem:
    item_id: str
    score: float
    reasons: list[str]


# ---------------------------------------------------------------------------------- kernel
@kernel
def sorted_contains(sorted_values, value):
    """Binary search: is ``value`` in the ascending array ``sorted_values``?"""
    lo, hi = 0, len(sorted_values)
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_values[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(sorted_values) and sorted_values[lo] == value


@kernel
def score_candidates(recent_codes, recent_votes, consumed, blocked_codes,
                     int_feats, int_weights, norm_p,
                     global_list, seg_list, pop_seg, cat_lists, cat_ptr,
                     nbr_codes, nbr_scores, nbr_len, hashes, in_catalog, usable,
                     feat_ptr, feat_idx, pop,
                     limit, w_cf, w_ct, w_tr, w_sg,
                     stamp, mark, pmark, cf, best_c, best_r, pool_idx, feat_w,
                     out_codes, out_parts, out_score, out_because, out_cat):
    """Score one user's candidates and write them, best first, into the ``out_*`` arrays:
    code, normalised value of each source (``out_parts``, unweighted), blended score, the recent
    item that contributed most to the CF score (index, -1), the favourite category whose list
    brought a content candidate (index, -1).

    Returns ``(n, cold_start)``. Scratch arrays are per item code and never cleared: an entry is
    valid only where ``mark`` (CF) or ``pmark`` (``stamp + 1`` blocked, ``stamp + 2`` in the
    pool) holds this call's stamp, so the caller passes a stamp 4 larger each call. ``feat_w``
    (per feature code) is zero on entry and left zero. Order: blended score descending, ties by
    item hash (the caller re-orders runs of equal scores by item id).
    """
    blocked = stamp + 1
    in_pool = stamp + 2
    for i in range(len(blocked_codes)):
        if blocked_codes[i] >= 0:
            pmark[blocked_codes[i]] = blocked

    # -- collaborative: scatter-add each recent item's vote over its neighbours --
    n_touched = 0
    touched = np.empty(64, dtype=np.int32)
    for r in range(len(recent_codes)):
        rc = recent_codes[r]
        vote = recent_votes[r]
        if rc < 0 or not vote > 0:
            continue
        for k in range(nbr_len[rc]):
            j = nbr_codes[rc, k]
            s = nbr_scores[rc, k]
            if j < 0 or not s > 0:
                continue
            v = s * vote
            if mark[j] != stamp:
                mark[j] = stamp
                cf[j] = 0.0
                best_c[j] = -1.0
                best_r[j] = -1
                if n_touched == len(touched):
                    grown = np.empty(2 * len(touched), dtype=np.int32)
                    grown[:n_touched] = touched[:n_touched]
                    touched = grown
                touched[n_touched] = j
                n_touched += 1
            cf[j] += v
            if v > best_c[j]:  # strictly: a tie keeps the newer recent item (lower r)
                best_c[j] = v
                best_r[j] = r
    cand = np.empty(n_touched, dtype=np.int32)
    n_cand = 0
    for i in range(n_touched):
        j = touched[i]
        if pmark[j] == blocked or (in_catalog[j] and not usable[j]):
            continue
        if len(consumed) and sorted_contains(consumed, hashes[j]):
            continue
        cand[n_cand] = j
        n_cand += 1
    if n_cand > limit:  # the best `limit` by CF score, ties by hash
        neg = np.empty(n_cand, dtype=np.float64)
        hk = np.empty(n_cand, dtype=np.uint64)
        for i in range(n_cand):
            neg[i] = -cf[cand[i]]
            hk[i] = hashes[cand[i]]
        order = lex_order(neg, neg, hk)
        cand = cand[order[:limit]]
        n_cand = limit
    else:
        cand = cand[:n_cand]

    # -- the pool: every candidate of every source, with its per-source values --
    size = n_cand + (2 + len(cat_ptr)) * limit
    pool = np.empty(size, dtype=np.int32)
    p_cf = np.zeros(size, dtype=np.float64)
    p_tr = np.zeros(size, dtype=np.float64)
    p_sg = np.zeros(size, dtype=np.float64)
    p_r = np.full(size, -1, dtype=np.int32)
    p_cat = np.full(size, -1, dtype=np.int32)
    n_pool = 0
    cf_max = 0.0
    for i in range(n_cand):
        j = cand[i]
        pmark[j] = in_pool
        pool_idx[j] = n_pool
        pool[n_pool] = j
        p_cf[n_pool] = cf[j]
        p_r[n_pool] = best_r[j]
        if cf[j] > cf_max:
            cf_max = cf[j]
        n_pool += 1

    # -- trending overall, in the segment, in the favourite categories --
    for source in range(2 + len(cat_ptr) - 1):
        if source == 0:
            lst, values, a, b = global_list, pop, 0, len(global_list)
        elif source == 1:
            lst, values, a, b = seg_list, pop_seg, 0, len(seg_list)
        else:
            lst, values, a, b = cat_lists, pop, cat_ptr[source - 2], cat_ptr[source - 1]
        taken = 0
        top = 0.0
        for i in range(a, b):
            if taken >= limit:
                break
            j = lst[i]
            if pmark[j] == blocked or not values[j] > 0:
                continue
            if len(consumed) and sorted_contains(consumed, hashes[j]):
                continue
            if taken == 0:
                top = values[j]
            taken += 1
            if pmark[j] != in_pool:
                pmark[j] = in_pool
                pool_idx[j] = n_pool
                pool[n_pool] = j
                n_pool += 1
            q = pool_idx[j]
            if source == 0:
                p_tr[q] = values[j] / top
            elif source == 1:
                p_sg[q] = values[j] / top
            elif p_cat[q] < 0:
                p_cat[q] = source - 2

    # -- content: cosine between the positive interests and each pool item's features --
    for i in range(len(int_feats)):
        feat_w[int_feats[i]] = int_weights[i]
    p_ct = np.zeros(n_pool, dtype=np.float64)
    ct_max = 0.0
    if norm_p > 0:
        for q in range(n_pool):
            j = pool[q]
            fa, fb = feat_ptr[j], feat_ptr[j + 1]
            if not in_catalog[j] or fb == fa:
                continue
            dot = 0.0
            for f in range(fa, fb):
                dot += feat_w[feat_idx[f]]
            if dot > 0:
                p_ct[q] = dot / (norm_p * math.sqrt(fb - fa))
                if p_ct[q] > ct_max:
                    ct_max = p_ct[q]
    for i in range(len(int_feats)):
        feat_w[int_feats[i]] = 0.0

    # -- blend: each source normalised by its maximum, weighted, summed --
    n_out = 0
    for q in range(n_pool):
        has_ct = p_ct[q] > 0
        if not (p_cf[q] > 0 or has_ct or p_tr[q] > 0 or p_sg[q] > 0):
            continue  # found only in a category list, with no content match
        j = pool[q]
        out_codes[n_out] = j
        out_parts[n_out, 0] = p_cf[q] / cf_max if p_cf[q] > 0 else 0.0
        out_parts[n_out, 1] = p_ct[q] / ct_max if has_ct else 0.0
        out_parts[n_out, 2] = p_tr[q]
        out_parts[n_out, 3] = p_sg[q]
        out_score[n_out] = (w_cf * out_parts[n_out, 0] + w_ct * out_parts[n_out, 1]
                            + w_tr * out_parts[n_out, 2] + w_sg * out_parts[n_out, 3])
        out_because[n_out] = p_r[q] if p_cf[q] > 0 else -1
        out_cat[n_out] = p_cat[q] if has_ct else -1
        n_out += 1
    neg = np.empty(n_out, dtype=np.float64)
    hk = np.empty(n_out, dtype=np.uint64)
    for i in range(n_out):
        neg[i] = -out_score[i]
        hk[i] = hashes[out_codes[i]]
    order = lex_order(neg, neg, hk)
    out_codes[:n_out] = out_codes[:n_out][order]
    out_score[:n_out] = out_score[:n_out][order]
    out_because[:n_out] = out_because[:n_out][order]
    out_cat[:n_out] = out_cat[:n_out][order]
    parts = out_parts[:n_out].copy()
    for i in range(n_out):
        for s in range(4):
            out_parts[i, s] = parts[order[i], s]
    return n_out, n_cand == 0 and ct_max == 0.0


# ---------------------------------------------------------------------------------- Python side
class Recommender:
    """Top-k lists for users of one operator instance, over that instance's :class:`ItemModel`.

    Holds the kernel's scratch arrays (sized to the model, grown with it); not thread-safe, one
    per operator instance.
    """

    def __init__(self, model: ItemModel, cfg: RecommendConfig) -> None:
        self.model = model
        self.cfg = cfg
        self._stamp = 0
        self._alloc(0, 0)

    def _alloc(self, n_codes: int, n_features: int) -> None:
        self.mark = np.zeros(n_codes, dtype=np.int64)
        self.pmark = np.zeros(n_codes, dtype=np.int64)
        self.cf = np.zeros(n_codes, dtype=np.float64)
        self.best_c = np.zeros(n_codes, dtype=np.float64)
        self.best_r = np.zeros(n_codes, dtype=np.int32)
        self.pool_idx = np.zeros(n_codes, dtype=np.int32)
        self.feat_w = np.zeros(max(1, n_features), dtype=np.float64)

    def _scratch(self, out_size: int) -> None:
        n_codes = self.model.items.capacity
        n_feat = len(self.model.features)
        if len(self.mark) < n_codes or len(self.feat_w) < n_feat:
            self._alloc(max(n_codes, len(self.mark)), max(n_feat, 2 * len(self.feat_w)))
            self._stamp = 0
        if not hasattr(self, "out_codes") or len(self.out_codes) < out_size:
            self.out_codes = np.zeros(out_size, dtype=np.int32)
            self.out_parts = np.zeros((out_size, 4), dtype=np.float64)
            self.out_score = np.zeros(out_size, dtype=np.float64)
            self.out_because = np.zeros(out_size, dtype=np.int32)
            self.out_cat = np.zeros(out_size, dtype=np.int32)

    def recommend(self, user: UserView, weights: VariantConfig, k: int,
                  now_ms: int) -> list[ScoredItem]:
        """Top ``k`` items for ``user`` with reasons (see the module docstring)."""
        cfg = self.cfg
        if cfg.max_k > 0:
            k = min(k, cfg.max_k)
        if k <= 0:
            return []
        model = self.model
        limit = max(cfg.candidates_per_source, k)
        items = model.items
        recent_codes = items.lookup(user.recent_ids)
        ages = np.maximum(now_ms - np.asarray(user.recent_ts, dtype=np.float64), 0.0)
        votes = np.asarray(user.recent_weights, dtype=np.float64) * np.exp2(
            -ages / cfg.recency_half_life_ms)
        blocked = np.concatenate([recent_codes, items.lookup(user.not_interested)])
        positive = {f: w for f, w in user.interests.items() if w > 0 and math.isfinite(w)}
        norm_p = math.sqrt(math.fsum(w * w for w in positive.values())) if positive else 0.0
        known = [(model.features.get(f), w) for f, w in positive.items()]
        known = [(c, w) for c, w in known if c != NO_CODE]
        int_feats = np.array([c for c, _ in known], dtype=np.int32)
        int_weights = np.array([w for _, w in known], dtype=np.float64)
        top_cats: list[str] = []
        if weights.w_content != 0 or positive:
            cats = sorted(((w, f[9:]) for f, w in positive.items() if f.startswith("category:")),
                          key=lambda p: (-p[0], p[1]))
            top_cats = [c for _, c in cats[:max(0, cfg.max_interest_categories)]]
        cat_arrays = [model.category_list(c) for c in top_cats]
        cat_ptr = np.zeros(len(cat_arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in cat_arrays], out=cat_ptr[1:])
        cat_lists = (np.concatenate(cat_arrays) if cat_arrays else np.zeros(0, dtype=np.int32))
        seg_list, pop_seg = model.segment_arrays(user.segment)
        self._scratch(limit * (3 + len(top_cats)))
        self._stamp += 4
        n, cold = score_candidates(
            recent_codes, votes, user.consumed, blocked, int_feats, int_weights, norm_p,
            model.trend_global, seg_list, pop_seg, cat_lists.astype(np.int32), cat_ptr,
            model.nbr_codes, model.nbr_scores, model.nbr_len, items.hashes, model.in_catalog,
            model.usable, model.feat_ptr, model.feat_idx, model.pop,
            limit, float(weights.w_collaborative), float(weights.w_content),
            float(weights.w_trending), float(weights.w_segment),
            self._stamp, self.mark, self.pmark, self.cf, self.best_c, self.best_r,
            self.pool_idx, self.feat_w, self.out_codes, self.out_parts, self.out_score,
            self.out_because, self.out_cat)
        codes = self.out_codes[:n].tolist()
        scores = self.out_score[:n].tolist()
        parts = self.out_parts[:n]
        if cold:  # segment favourites first, then the rest, each in blended order
            in_seg = parts[:, 3] > 0
            order = np.concatenate([np.flatnonzero(in_seg), np.flatnonzero(~in_seg)]).tolist()
            firsts = [SEGMENT if in_seg[i] else TRENDING for i in range(n)]
        else:
            order = [i for i in range(n) if scores[i] > 0]
            firsts = None
        chosen = self._diversify(self._by_id_on_ties(order, codes, scores), codes, k)
        w = (weights.w_collaborative, weights.w_content, weights.w_trending, weights.w_segment)
        out = []
        for i in chosen:
            contributions = {SOURCES[s]: w[s] * float(parts[i, s]) for s in range(4)
                             if parts[i, s] > 0 and w[s] * parts[i, s] != 0}
            r = int(self.out_because[i])
            c = int(self.out_cat[i])
            code = codes[i]
            reasons = explain(
                contributions, model,
                because=(user.recent_types[r], _title_of(model, user.recent_ids[r]))
                if r >= 0 else None,
                interest_feature=matched_feature(positive, model, code)
                if parts[i, 1] > 0 else None,
                trending_category=top_cats[c] if c >= 0 else None,
                first=firsts[i] if firsts is not None else None,
                max_reasons=cfg.max_reasons, min_share=cfg.min_reason_share)
            out.append(ScoredItem(items.id_of(code), scores[i], reasons))
        return out

    def _by_id_on_ties(self, order: list[int], codes: list[int], scores: list[float]):
        """``order`` with every run of equal scores re-ordered by item id (lazily)."""
        ids = self.model.items.ids
        i, n = 0, len(order)
        while i < n:
            j = i + 1
            while j < n and scores[order[j]] == scores[order[i]]:
                j += 1
            if j - i == 1:
                yield order[i]
            else:
                yield from sorted(order[i:j], key=lambda q: ids[codes[q]])
            i = j

    def _diversify(self, ranked, codes: list[int], k: int) -> list[int]:
        """Greedy: at most ``max_per_category`` items per primary category (0: no cap)."""
        cap = self.cfg.max_per_category
        primary = self.model.primary_cat
        out: list[int] = []
        used: dict[int, int] = {}
        for i in ranked:
            if len(out) >= k:
                break
            if cap > 0:
                p = int(primary[codes[i]])
                if p >= 0:
                    if used.get(p, 0) >= cap:
                        continue
                    used[p] = used.get(p, 0) + 1
            out.append(i)
        return out


def _title_of(model: ItemModel, item_id: str) -> str:
    c = model.items.get(item_id)
    return model.title(c) if c != NO_CODE else item_id


def matched_feature(positive: dict[str, float], model: ItemModel, code: int) -> str | None:
    """The item's feature the user is most interested in (ties: feature name), or None."""
    names = model.features.names
    hits = [(positive[names[f]], names[f]) for f in model.item_feats.get(code, ()).tolist()
            if names[f] in positive]
    return min(hits, key=lambda h: (-h[0], h[1]))[1] if hits else None


def _feature_label(feature: str) -> str:
    return feature.split(":", 1)[1] if ":" in feature else feature


def explain(contributions: dict[str, float], model: ItemModel, *,
            because: tuple[int, str] | None = None, interest_feature: str | None = None,
            trending_category: str | None = None, first: str | None = None,
            max_reasons: int = 3, min_share: float = 0.1) -> list[str]:
    """Human-readable reasons from an item's top contributing sources.

    A source is named when it gives at least ``min_share`` of the item's score; largest first
    (ties in ``SOURCES`` order); ``first`` puts one source first regardless. ``because`` is the
    (event type code, title) of the recent item behind the CF score.
    """
    from state_schemas.config import EVENT_TYPES

    total = sum(v for v in contributions.values() if v > 0)
    picked = [s for s in SOURCES if contributions.get(s, 0.0) > 0
              and contributions[s] >= min_share * total]
    picked.sort(key=lambda s: -contributions[s])
    if first is not None:
        picked = [first] + [s for s in picked if s != first]
    reasons: list[str] = []
    for source in picked:
        if source == COLLABORATIVE:
            if because is not None:
                verb = EVENT_VERBS.get(EVENT_TYPES[because[0]], "interacted with")
                reasons.append(f"because you {verb} {because[1]}")
            else:
                reasons.append("because of your recent activity")
        elif source == CONTENT:
            if interest_feature is not None:
                reasons.append(f"matches your interest in {_feature_label(interest_feature)}")
            if trending_category is not None and TRENDING not in picked:
                reasons.append(f"trending in {trending_category}")
        elif source == TRENDING:
            reasons.append("trending now")
        elif source == SEGMENT:
            reasons.append("popular with users like you")
    return list(dict.fromkeys(reasons))[:max(0, max_reasons)]
