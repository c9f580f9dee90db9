"""The recommender: a user's view and the columnar item model in, top-k items with reasons out.

Sources (each normalised to [0, 1] by its maximum before blending):

* ``collaborative`` — item-to-item CF. Every recent item ``r`` with a positive action weight
  votes with ``r.weight * (floor + (1 - floor) * 2^(-(ref - r.ts) / recency_half_life)
  * 2^(-r.position / recency_half_life_items))`` (``recency_floor``, 0 by default; position 0
  is the newest item; the position term is off by default) for each neighbour ``(j, s)`` of
  its row: ``cf[j] += s * vote``, where ``ref`` is the newest recent item's time (or now, if
  earlier): the same ranking as decaying from now, and defined after a gap of any length. Rows
  of EASE head items (``udfs/ease.py``) carry signed weights: a negative one lowers ``cf[j]``,
  and items whose sum is not positive are no candidates. The best ``candidates_per_source``
  allowed items are kept.
* ``content`` — cosine between the positive part of the user's interest vector and each
  candidate's 0/1 feature vector (``category:*``, ``tag:*``), over the candidates of every source
  plus the items trending in the user's favourite categories (the ``max_interest_categories``
  categories with the highest positive interest) and each such category's newest items that are
  not among its popular ones (``recommend.new_items_per_category`` listed within
  ``recommend.new_item_window_ms`` of the newest listing): item cold start, an item nobody has
  touched yet can match. ``ceil(recommend.exploration_share * k)`` of the k slots go to such new
  items when one matches, in place of the lowest-ranked other picks (exploration: new items
  earn the feedback the CF model needs).
* ``trending`` — the most popular catalogue items overall (forward-decayed activity).
* ``segment`` — the most popular among users of the user's demographic segment.

Blend: ``score = w_collaborative*cf + w_content*content + w_trending*trending + w_segment*segment``
with the variant's weights; items with score <= 0 are dropped; ties are broken by the items'
stable 64-bit hashes (the same order in every process and release).

Filters: consumed and "not interested" items, the user's recent items, and unavailable
catalogue items never appear. Items unknown to the catalogue may come in through CF only.

Cold start: with no CF candidate and no content match, the list is the segment's favourites
first, then the overall trending items (each group in blended order).

Diversity: at most ``max_per_category`` items per primary category (an item's first category),
greedily in rank order. Reasons: the sources giving at least ``min_reason_share`` of an item's
score, largest first, at most ``max_reasons``, in words ("because you purchased <title>",
"matches your interest in <feature>", "trending in <category>", "new in <category>",
"trending now", "popular with users like you").

The per-candidate work — gathering neighbours, filtering, scoring, blending, ordering — is one
compiled kernel (:func:`score_candidates`, ``udfs/jit.py``); Python builds its inputs from the
profile and writes the reasons of the k items returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np

from state_schemas.config import EVENT_TYPES, RecommendConfig, VariantConfig
from udfs.decay import decay_factors
from udfs.items import NO_CODE
from udfs.jit import best_n, kernel, lex_order
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
    recent_codes: np.ndarray     # their codes in the model's item table (-1: unknown)
    recent_types: list[int]      # strongest action per recent item (index in EVENT_TYPES)
    recent_ts: list[int]
    recent_weights: list[float]
    interests: dict[str, float]  # any scale: only directions matter (cosine)
    consumed: np.ndarray         # sorted uint64 item hashes
    not_interested: list[str]
    segment: str
    variant: str
    # A one-slot box the recommender may keep its prepared form of ``interests`` in; its owner
    # empties it (``box[0] = None``) whenever the interests change.
    prepared: list | None = None


@dataclass(slots=True)
class Ranked:
    """A top-k list: item ids best first, their scores, reasons and 64-bit hashes."""
    ids: list[str]
    scores: list[float]
    reasons: list[list[str]]
    hashes: list[int]

    def __len__(self) -> int:
        return len(self.ids)


NOTHING = Ranked([], [], [], [])


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
def _hash_set(values):
    """An open-addressing set of the non-negative ``values`` (uint64 hashes or codes): a table
    of size a power of two, 0 marking an empty slot (values are stored plus one)."""
    size = 16
    while size < 2 * len(values) + 1:
        size *= 2
    table = np.zeros(size, dtype=np.uint64)
    mask = np.uint64(size - 1)
    for v in values:
        key = np.uint64(v) + np.uint64(1)
        s = key & mask  # hashes are uniform already; codes are distinct small integers
        while table[s] != 0 and table[s] != key:
            s = (s + np.uint64(1)) & mask
        table[s] = key
    return table


@kernel
def _in_set(table, v):
    mask = np.uint64(len(table) - 1)
    key = np.uint64(v) + np.uint64(1)
    s = key & mask
    while table[s] != 0:
        if table[s] == key:
            return True
        s = (s + np.uint64(1)) & mask
    return False


@kernel
def score_candidates(recent_codes, recent_votes, consumed, blocked,
                     int_feats, int_weights, norm_p, ranges,
                     lst_codes, lst_vals, lst_hash, lst_fptr, lst_fidx,
                     nbr_codes, nbr_scores, nbr_len, hashes, in_catalog, usable,
                     feat_start, feat_len, feat_idx, limit, w_cf, w_ct, w_tr, w_sg, feat_w,
                     pool_of, k, need, primary_cat, max_per_category, cat_count, min_share, feat_rank,
                     n_explore, out_codes, out_parts, out_score, out_because, out_cat, out_order,
                     out_reasons, out_feature):
    """Score one user's candidates into the ``out_*`` arrays (in no particular order): code,
    normalised value of each source (``out_parts``, unweighted), blended score, the recent item
    that contributed most to the CF score (index, -1), the favourite category whose list brought a
    content candidate (index c < n_fav: its popular items; n_fav + c: its new items; -1). ``out_order`` lists the (at most ``k``) candidates picked,
    best first; for each, ``out_reasons`` the sources to give as reasons, in order (-1 ends),
    and ``out_feature`` the feature code behind its content reason (-1: none).

    ``consumed`` (item hashes) becomes a small hash set; ``blocked`` (item codes: recent and
    "not interested" items) is marked in ``pool_of``, a scratch array over item codes (all -1 on
    entry and on exit) that also maps a candidate's code to its slot, so candidates are found
    without hashing and nothing as large as the catalogue is allocated. ``ranges`` are the
    (start, end) rows of the ranked lists in ``lst_*`` to walk: trending overall, in the user's
    segment, then in each favourite category, then each favourite category's new items; the
    lists hold each entry's code, value (popularity, or freshness for new items), hash and
    features (CSR), contiguous, so the walks read memory in order. ``feat_w`` (per feature
    code) and ``cat_count`` (per category code) are zero on entry and left zero. Up to
    ``n_explore`` of the k picks go to new items with a content match (exploration), in place
    of the lowest-ranked other picks. Returns ``(n candidates, n picked, cold start)``.
    """
    # Dense scratch over item codes: -1 = not seen, -2 = blocked, else an index (CF entry,
    # then pool entry). Left all -1 on exit, so a call touches only the entries it uses.
    for b in blocked:
        if b >= 0:
            pool_of[b] = -2
    consumed_set = _hash_set(consumed)
    # -- collaborative: scatter-add each recent item's vote over its neighbours --
    cap_cf = len(recent_codes) * nbr_codes.shape[1]
    cf_code = np.empty(cap_cf, dtype=np.int64)
    cf_sum = np.empty(cap_cf, dtype=np.float64)
    cf_best = np.empty(cap_cf, dtype=np.float64)
    cf_r = np.empty(cap_cf, dtype=np.int32)
    n_cf = 0
    for r in range(len(recent_codes)):
        rc = recent_codes[r]
        vote = recent_votes[r]
        if rc < 0 or not vote > 0:
            continue
        for q in range(nbr_len[rc]):
            j = nbr_codes[rc, q]
            sc = nbr_scores[rc, q]
            if j < 0 or not sc != 0.0:  # EASE rows carry negative weights: they demote
                continue
            p = pool_of[j]
            if p == -2:
                continue
            v = sc * vote
            if p < 0:
                p = n_cf
                pool_of[j] = p
                cf_code[p] = j
                cf_sum[p] = 0.0
                cf_best[p] = 0.0  # the reason is the largest positive contribution
                cf_r[p] = -1
                n_cf += 1
            cf_sum[p] += v
            if v > cf_best[p]:  # strictly: a tie keeps the newer recent item (lower r)
                cf_best[p] = v
                cf_r[p] = r
    # The best `limit` allowed entries by CF score (ties by hash). Filtering reads per-item
    # arrays at random codes, so it runs on the best entries first and looks further down only
    # when too many of them are filtered out: any allowed entry outside the best `take` ranks
    # below all of them.
    neg = np.empty(n_cf, dtype=np.float64)
    for p in range(n_cf):
        neg[p] = -cf_sum[p]
        pool_of[cf_code[p]] = -1
    take = min(n_cf, limit + limit // 4 + 8)
    while True:
        top = best_n(neg, cf_code, hashes, take)
        cand = np.empty(len(top), dtype=np.int64)
        n_cand = 0
        for p in top:
            j = cf_code[p]
            if not cf_sum[p] > 0:
                continue  # demoted below zero by negative (EASE) weights
            if in_catalog[j] and not usable[j]:
                continue
            if _in_set(consumed_set, hashes[j]):
                continue
            cand[n_cand] = p
            n_cand += 1
        if n_cand >= limit or take == n_cf:
            break
        take = min(n_cf, 2 * take)
    cand = cand[:n_cand]
    if n_cand > limit:
        cand = cand[best_n(neg[cand], cf_code[cand], hashes, limit)]
        n_cand = limit

    # -- the pool: every candidate of every source, with its per-source values --
    cap = n_cand
    for l in range(len(ranges)):
        cap += min(limit, ranges[l, 1] - ranges[l, 0])
    pool = np.empty(cap, dtype=np.int64)
    p_cf = np.zeros(cap, dtype=np.float64)
    p_tr = np.zeros(cap, dtype=np.float64)
    p_sg = np.zeros(cap, dtype=np.float64)
    p_r = np.full(cap, -1, dtype=np.int32)
    p_cat = np.full(cap, -1, dtype=np.int32)
    p_fa = np.zeros(cap, dtype=np.int64)  # features: [p_fa, p_fb) of lst_fidx, or of feat_idx
    p_fb = np.zeros(cap, dtype=np.int64)  # when p_flist is False
    p_flist = np.zeros(cap, dtype=np.bool_)
    p_fresh = np.zeros(cap, dtype=np.bool_)  # from a category's new-item list
    p_hash = np.zeros(cap, dtype=np.uint64)
    n_pool = 0
    cf_max = 0.0
    for i in range(n_cand):
        p = cand[i]
        j = cf_code[p]
        pool_of[j] = n_pool
        pool[n_pool] = j
        p_hash[n_pool] = hashes[j]
        p_cf[n_pool] = cf_sum[p]
        p_r[n_pool] = cf_r[p]
        if in_catalog[j]:
            p_fa[n_pool] = feat_start[j]
            p_fb[n_pool] = feat_start[j] + feat_len[j]
        if cf_sum[p] > cf_max:
            cf_max = cf_sum[p]
        n_pool += 1

    # -- trending overall, in the segment, in the favourite categories, new in them --
    n_fav = (len(ranges) - 2) // 2
    for l in range(len(ranges)):
        taken = 0
        top = 0.0
        for i in range(ranges[l, 0], ranges[l, 1]):
            if taken >= limit:
                break
            j = lst_codes[i]
            if not lst_vals[i] > 0:
                break  # lists are sorted: nothing positive follows
            q = pool_of[j]
            if q == -2 or _in_set(consumed_set, lst_hash[i]):
                continue
            if taken == 0:
                top = lst_vals[i]
            taken += 1
            if q < 0:
                q = n_pool
                pool_of[j] = q
                pool[n_pool] = j
                p_hash[n_pool] = lst_hash[i]
                p_fa[n_pool] = lst_fptr[i]
                p_fb[n_pool] = lst_fptr[i + 1]
                p_flist[n_pool] = True
                n_pool += 1
            if l == 0:
                p_tr[q] = lst_vals[i] / top
            elif l == 1:
                p_sg[q] = lst_vals[i] / top
            else:
                if p_cat[q] < 0:
                    p_cat[q] = l - 2  # < n_fav: popular in category l - 2; else new in it
                if l >= 2 + n_fav:
                    p_fresh[q] = True

    for q in range(n_pool):
        pool_of[pool[q]] = -1
    for b in blocked:
        if b >= 0:
            pool_of[b] = -1

    # -- content: cosine between the positive interests and each pool item's features --
    for i in range(len(int_feats)):
        feat_w[int_feats[i]] = int_weights[i]
    p_ct = np.zeros(n_pool, dtype=np.float64)
    ct_max = 0.0
    if norm_p > 0:
        for q in range(n_pool):
            fa, fb = p_fa[q], p_fb[q]
            if fb == fa:
                continue
            dot = 0.0
            if p_flist[q]:
                for f in range(fa, fb):
                    dot += feat_w[lst_fidx[f]]
            else:
                for f in range(fa, fb):
                    dot += feat_w[feat_idx[f]]
            if dot > 0:
                p_ct[q] = dot / (norm_p * math.sqrt(fb - fa))
                if p_ct[q] > ct_max:
                    ct_max = p_ct[q]

    # -- blend: each source normalised by its maximum, weighted, summed --
    n_out = 0
    out_hash = np.empty(n_pool, dtype=np.uint64)
    out_pool = np.empty(n_pool, dtype=np.int64)
    out_fresh = np.zeros(n_pool, dtype=np.bool_)
    for q in range(n_pool):
        has_ct = p_ct[q] > 0
        if not (p_cf[q] > 0 or has_ct or p_tr[q] > 0 or p_sg[q] > 0):
            continue  # found only in a category list, with no content match
        out_codes[n_out] = pool[q]
        out_hash[n_out] = p_hash[q]
        out_pool[n_out] = q
        a_cf = p_cf[q] / cf_max if p_cf[q] > 0 else 0.0
        a_ct = p_ct[q] / ct_max if has_ct else 0.0
        out_parts[n_out, 0] = a_cf
        out_parts[n_out, 1] = a_ct
        out_parts[n_out, 2] = p_tr[q]
        out_parts[n_out, 3] = p_sg[q]
        out_score[n_out] = w_cf * a_cf + w_ct * a_ct + w_tr * p_tr[q] + w_sg * p_sg[q]
        out_because[n_out] = p_r[q] if p_cf[q] > 0 else -1
        out_cat[n_out] = p_cat[q] if has_ct else -1
        out_fresh[n_out] = p_fresh[q] and has_ct
        n_out += 1
    cold = n_cand == 0 and ct_max == 0.0

    # -- order and pick: score descending, ties by item hash; on a cold start the segment's
    #    candidates first; at most `max_per_category` per primary category; sorting only the
    #    best `need` unless the category cap makes the walk run past them --
    elig = np.empty(n_out, dtype=np.int64)
    n_el = 0
    for i in range(n_out):
        if cold or out_score[i] > 0:
            elig[n_el] = i
            n_el += 1
    elig = elig[:n_el]
    k1 = np.empty(n_el, dtype=np.float64)
    k2 = np.empty(n_el, dtype=np.float64)
    k3 = np.empty(n_el, dtype=np.uint64)
    for e in range(n_el):
        i = elig[e]
        k2[e] = -out_score[i]
        k1[e] = (0.0 if out_parts[i, 3] > 0 else 1.0) if cold else k2[e]
        k3[e] = out_hash[i]
    first = np.arange(n_el) if cold else best_n(k1, elig, out_hash, need)
    in_first = np.zeros(n_el, dtype=np.bool_)
    for e in first:
        in_first[e] = True
    n_chosen = 0
    for stage in range(2):
        part = first
        if stage == 1:  # rare: the category cap skipped too many of the best `need`
            part = np.empty(n_el - len(first), dtype=np.int64)
            m = 0
            for e in range(n_el):
                if not in_first[e]:
                    part[m] = e
                    m += 1
        order = lex_order(k1[part], k2[part], k3[part])
        for q in range(len(part)):
            if n_chosen >= k:
                break
            i = elig[part[order[q]]]
            if max_per_category > 0:
                c = primary_cat[out_codes[i]]
                if c >= 0:
                    if cat_count[c] >= max_per_category:
                        continue
                    cat_count[c] += 1
            out_order[n_chosen] = i
            n_chosen += 1
        if n_chosen >= k or len(first) == n_el:
            break
    if max_per_category > 0:
        for q in range(n_chosen):
            c = primary_cat[out_codes[out_order[q]]]
            if c >= 0:
                cat_count[c] = 0
    # -- exploration: new items matching the user's interests take up to n_explore picks,
    #    replacing the lowest-ranked picks that are not new (outside the category cap); then
    #    the picks in rank order --
    if n_explore > 0 and not cold:
        have = 0
        for q in range(n_chosen):
            if out_fresh[out_order[q]]:
                have += 1
        chosen = np.zeros(n_out, dtype=np.bool_)
        for q in range(n_chosen):
            chosen[out_order[q]] = True
        fresh_part = np.empty(n_el, dtype=np.int64)
        n_fp = 0
        for e in range(n_el):
            if out_fresh[elig[e]] and not chosen[elig[e]]:
                fresh_part[n_fp] = e
                n_fp += 1
        fresh_part = fresh_part[:n_fp]
        f_order = lex_order(k2[fresh_part], k2[fresh_part], k3[fresh_part])
        nxt = 0
        slot = n_chosen - 1
        while have < n_explore and nxt < n_fp:
            i = elig[fresh_part[f_order[nxt]]]
            nxt += 1
            if n_chosen < k:
                out_order[n_chosen] = i
                n_chosen += 1
            else:
                while slot >= 0 and out_fresh[out_order[slot]]:
                    slot -= 1
                if slot < 0:
                    break
                out_order[slot] = i
                slot -= 1
            have += 1
        picked = out_order[:n_chosen].copy()
        ranked = lex_order(-out_score[picked], -out_score[picked], out_hash[picked])
        for q in range(n_chosen):
            out_order[q] = picked[ranked[q]]
    # -- reasons of the picked: the sources giving at least min_share of the score, largest
    #    first (ties in source order; on a cold start the list's own source first), and the
    #    item's feature the user likes most (ties: the feature name first in sort order) --
    for q in range(n_chosen):
        i = out_order[q]
        c0 = w_cf * out_parts[i, 0]
        c1 = w_ct * out_parts[i, 1]
        c2 = w_tr * out_parts[i, 2]
        c3 = w_sg * out_parts[i, 3]
        total = max(c0, 0.0) + max(c1, 0.0) + max(c2, 0.0) + max(c3, 0.0)
        contrib = np.array([c0, c1, c2, c3])
        n_src = 0
        if cold:
            first = 3 if out_parts[i, 3] > 0 else 2
            out_reasons[q, 0] = first
            n_src = 1
        for _ in range(4):
            best = -1
            for s in range(4):
                taken = False
                for t in range(n_src):
                    if out_reasons[q, t] == s:
                        taken = True
                if taken or not (contrib[s] > 0 and contrib[s] >= min_share * total):
                    continue
                if best < 0 or contrib[s] > contrib[best]:
                    best = s
            if best < 0:
                break
            out_reasons[q, n_src] = best
            n_src += 1
        for t in range(n_src, 4):
            out_reasons[q, t] = -1
        out_feature[q] = -1
        if out_parts[i, 1] > 0:
            pq = out_pool[i]
            best_w = 0.0
            for f in range(p_fa[pq], p_fb[pq]):
                fc = lst_fidx[f] if p_flist[pq] else feat_idx[f]
                fw = feat_w[fc]
                if fw > 0 and (fw > best_w or (fw == best_w
                                               and feat_rank[fc] < feat_rank[out_feature[q]])):
                    best_w = fw
                    out_feature[q] = fc
    for i in range(len(int_feats)):
        feat_w[int_feats[i]] = 0.0
    return n_out, n_chosen, cold


# ---------------------------------------------------------------------------------- Python side
class Recommender:
    """Top-k lists for users of one operator instance, over that instance's :class:`ItemModel`.

    Holds the kernel's output and scratch arrays; not thread-safe, one per operator instance.
    """

    def __init__(self, model: ItemModel, cfg: RecommendConfig) -> None:
        self.model = model
        self.cfg = cfg
        self._out_size = 0
        # Reason strings, made once: (event type, recent item) and feature -> words.
        self._because_cache: dict[tuple[int, str], str] = {}
        self._interest_cache: dict[int, str] = {}
        self._feature_info: dict[str, tuple[int, str | None]] = {}
        self._cache_version = -1
        self.cat_count = np.zeros(16, dtype=np.int32)
        self.feat_w = np.zeros(16, dtype=np.float64)
        self.pool_of = np.full(16, -1, dtype=np.int32)
        # 2^(-position / recency_half_life_items) for positions 0.., grown on demand: the same
        # for every user, so not recomputed per recommendation.
        self._position_fade = np.ones(0, dtype=np.float64)

    def _position_fades(self, n: int) -> np.ndarray:
        if len(self._position_fade) < n:
            self._position_fade = np.exp2(-np.arange(max(n, 2 * len(self._position_fade)))
                                          / self.cfg.recency_half_life_items)
        return self._position_fade[:n]

    def _scratch(self, out_size: int) -> None:
        n_feat = len(self.model.features)
        if len(self.cat_count) < len(self.model.categories):
            self.cat_count = np.zeros(2 * len(self.model.categories), dtype=np.int32)
        if len(self.pool_of) < len(self.model.items.hashes):
            self.pool_of = np.full(len(self.model.items.hashes), -1, dtype=np.int32)
        if len(self.feat_w) < n_feat:
            self.feat_w = np.zeros(2 * n_feat, dtype=np.float64)
        if self._out_size < out_size:
            self._out_size = out_size
            self.out_codes = np.zeros(out_size, dtype=np.int32)
            self.out_parts = np.zeros((out_size, 4), dtype=np.float64)
            self.out_score = np.zeros(out_size, dtype=np.float64)
            self.out_because = np.zeros(out_size, dtype=np.int32)
            self.out_cat = np.zeros(out_size, dtype=np.int32)
            self.out_order = np.zeros(out_size, dtype=np.int64)
            self.out_reasons = np.zeros((out_size, 4), dtype=np.int64)
            self.out_feature = np.zeros(out_size, dtype=np.int64)

    def recommend(self, user: UserView, weights: VariantConfig, k: int,
                  now_ms: int) -> Ranked:
        """Top ``k`` items for ``user`` with reasons (see the module docstring)."""
        cfg = self.cfg
        if cfg.max_k > 0:
            k = min(k, cfg.max_k)
        if k <= 0:
            return NOTHING
        model = self.model
        limit = max(cfg.candidates_per_source, k)
        items = model.items
        recent_codes = user.recent_codes
        # Recency is measured from the newest recent item (or now, if that is earlier): only the
        # votes' ratios matter (CF scores are normalised by their maximum), and a long gap since
        # the user's last event must not underflow every vote to zero.
        ts = np.asarray(user.recent_ts, dtype=np.float64)
        ref = min(float(now_ms), float(ts.max())) if len(ts) else float(now_ms)
        fade = decay_factors(ref - ts, cfg.recency_half_life_ms)
        if cfg.recency_half_life_items > 0:  # the sequence orders what time cannot
            fade *= self._position_fades(len(ts))
        if cfg.recency_floor:
            fade = cfg.recency_floor + (1.0 - cfg.recency_floor) * fade
        votes = np.asarray(user.recent_weights, dtype=np.float64) * fade
        blocked = (np.concatenate([recent_codes, items.lookup(user.not_interested)])
                   if user.not_interested else recent_codes)
        box = user.prepared
        prepared = box[0] if box is not None else None
        if prepared is None or prepared[0] != len(model.features):
            prepared = self._prepare_interests(user.interests)
            if box is not None:
                box[0] = prepared
        _, int_feats, int_weights, norm_p, top_cats = prepared
        ranges = model.list_ranges(user.segment, top_cats)
        self._scratch(limit * (1 + len(ranges)))  # CF, then at most `limit` from each list
        n, m, cold = score_candidates(
            recent_codes, votes, user.consumed, blocked,
            int_feats, int_weights, norm_p,
            ranges, model.lst_codes, model.lst_vals, model.lst_hash, model.lst_fptr,
            model.lst_fidx, model.nbr_codes, model.nbr_scores, model.nbr_len, items.hashes,
            model.in_catalog, model.usable, model.feat_start, model.feat_len, model.feat_store,
            limit, float(weights.w_collaborative), float(weights.w_content),
            float(weights.w_trending), float(weights.w_segment), self.feat_w, self.pool_of,
            k, 4 * k + 16, model.primary_cat, cfg.max_per_category, self.cat_count,
            float(cfg.min_reason_share), model.feature_rank(),
            math.ceil(cfg.exploration_share * k), self.out_codes, self.out_parts,
            self.out_score, self.out_because, self.out_cat, self.out_order, self.out_reasons,
            self.out_feature)
        order = self.out_order[:m]
        codes = self.out_codes[order]
        ids = items.ids
        all_reasons = []
        max_reasons = cfg.max_reasons
        for q, (sources, i) in enumerate(zip(self.out_reasons[:m].tolist(), order.tolist())):
            reasons: list[str] = []
            for s in sources:
                if s < 0:
                    break
                if s == _CF:
                    r = int(self.out_because[i])
                    reason = self._because(user.recent_types[r], user.recent_ids[r])
                elif s == _CT:
                    f = int(self.out_feature[q])
                    if f >= 0:
                        reason = self._interest_reason(f)
                        if reason not in reasons:
                            reasons.append(reason)
                    c = int(self.out_cat[i])
                    if c < 0 or _TR in sources:
                        continue
                    reason = ("trending in " + top_cats[c] if c < len(top_cats)
                              else "new in " + top_cats[c - len(top_cats)])
                elif s == _TR:
                    reason = "trending now"
                else:
                    reason = "popular with users like you"
                if reason not in reasons:
                    reasons.append(reason)
            all_reasons.append(reasons[:max_reasons])
        return Ranked([ids[c] for c in codes.tolist()], self.out_score[order].tolist(),
                      all_reasons, items.hashes[codes].tolist())

    def _prepare_interests(self, interests: dict[str, float]) -> tuple:
        """The positive interests as the kernel takes them: (size of the feature table they were
        looked up in, feature codes, weights, norm, favourite categories best first)."""
        feature_info = self._feature_info
        int_feats, int_weights, cats = [], [], []
        square_sum = 0.0
        for f, w in interests.items():
            if not 0.0 < w < math.inf:
                continue
            square_sum += w * w
            info = feature_info.get(f)
            if info is None:
                info = self._describe_feature(f)
            if info[0] != NO_CODE:
                int_feats.append(info[0])
                int_weights.append(w)
            if info[1] is not None:
                cats.append((-w, info[1]))
        cats.sort()
        return (len(self.model.features), np.array(int_feats, dtype=np.int32),
                np.array(int_weights, dtype=np.float64), math.sqrt(square_sum),
                [c for _, c in cats[:max(0, self.cfg.max_interest_categories)]])

    def _describe_feature(self, feature: str) -> tuple[int, str | None]:
        """(feature code or NO_CODE, category name or None), cached per feature name."""
        code = self.model.features.get(feature)
        info = (code, feature[9:] if feature.startswith("category:") else None)
        if code != NO_CODE:  # an unknown feature may become known: ask again next time
            self._feature_info[feature] = info
        return info

    def _because(self, type_code: int, item_id: str) -> str:
        if self._cache_version != self.model.catalog_version:  # a title may have changed
            self._because_cache.clear()
            self._cache_version = self.model.catalog_version
        key = (type_code, item_id)
        reason = self._because_cache.get(key)
        if reason is None:
            if len(self._because_cache) > 100_000:
                self._because_cache.clear()
            verb = EVENT_VERBS.get(EVENT_TYPES[type_code], "interacted with")
            reason = self._because_cache[key] = (
                f"because you {verb} {_title_of(self.model, item_id)}")
        return reason

    def _interest_reason(self, feature: int) -> str:
        reason = self._interest_cache.get(feature)
        if reason is None:
            name = self.model.features.names[feature]
            reason = self._interest_cache[feature] = (
                f"matches your interest in {_feature_label(name)}")
        return reason


_NO_CODES = np.zeros(0, dtype=np.int32)


def _title_of(model: ItemModel, item_id: str) -> str:
    c = model.items.get(item_id)
    return model.title(c) if c != NO_CODE else item_id


def _feature_label(feature: str) -> str:
    return feature.split(":", 1)[1] if ":" in feature else feature


# Source indices of the kernel's out_parts/out_reasons, in SOURCES order.
_CF, _CT, _TR, _SG = range(4)
