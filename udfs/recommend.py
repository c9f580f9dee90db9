"""The recommendation scorer: a pure function of one user's view and the item model.

Sources (each a small function below, each normalised to [0, 1] by its maximum before blending):

* ``collaborative`` — item-to-item CF. Every recent item ``r`` with a positive action weight
  votes with ``r.weight * 2 ** (-(now - r.ts) / recency_half_life)`` for each of its neighbours
  ``(j, s)``: ``cf[j] += s * vote``.
* ``content`` — cosine between the positive part of the user's interest vector and each
  candidate's 0/1 feature vector (``category:*``, ``tag:*``). Candidates: the CF candidates,
  the globally trending items, the items trending in the user's segment, and the items trending
  in the user's favourite categories (the ``max_interest_categories`` categories with the
  highest positive interest).
* ``trending`` — global popularity (forward-decayed counts, ``udfs/trending.py``).
* ``segment`` — popularity among users of the user's segment.

Blend: ``score = w_collaborative*cf + w_content*content + w_trending*trending + w_segment*segment``
with the variant's weights; items with score <= 0 are dropped; ties are broken by item id.

Filters: consumed items (``exclude``), ``not_interested`` items, the user's own recent items
(``exclude_recent``), and catalogue items with ``available=False`` never appear. Items *unknown to
the catalogue* may come in only through CF (the similarity stream can know an item before its
catalogue entry arrives); they score on CF alone and their reasons use the item id where a title
is missing. Trending, segment and content candidates must be in the catalogue and available.

Cold start: when the user has no personal signal (no CF and no content candidates — e.g. no
recent items and no interests), the list is the items trending in the user's segment first, then
the globally trending items (each group ordered by its blended score), so scores are not
necessarily decreasing across the two groups.

Diversity: at most ``cfg.max_per_category`` items per primary category (an item's first
category; items without one are not capped); filled greedily in rank order, so the list can be
shorter than ``k``. ``k`` is capped at ``cfg.max_k``.

Reasons: the sources that contribute at least ``min_reason_share`` of an item's score, largest
first, at most ``max_reasons``, in words: "because you liked <title>" (verb of the recent item's
event type), "matches your interest in <category or tag>", "trending in <category>" (added after
the interest reason when the item was found among the trending items of that favourite category),
"trending now", "popular with users like you".
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from recsys.config import DAY_MS, RecommendConfig, VariantConfig
from state_schemas.state import ItemInfo, RecentItem
from udfs.trending import TrendingModel

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


@dataclass
class UserView:
    """What the scorer knows about one user at trigger time."""
    user_id: str
    recent_items: list[RecentItem] = field(default_factory=list)  # newest first
    interests: dict[str, float] = field(default_factory=dict)    # decayed to now; may be < 0
    exclude: set[str] = field(default_factory=set)                # consumed items
    not_interested: set[str] = field(default_factory=set)
    segment: str = ""
    variant: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class ItemModel:
    """The per-instance item knowledge fed by the broadcast streams."""
    catalog: dict[str, ItemInfo] = field(default_factory=dict)
    neighbors: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    trending: TrendingModel = field(default_factory=lambda: TrendingModel(2 * DAY_MS))


@dataclass
class ScoredItem:
    item_id: str
    score: float
    reasons: list[str]


@dataclass
class Blended:
    """One candidate after blending: its score and each source's weighted contribution."""
    item_id: str
    score: float
    contributions: dict[str, float]


# ----------------------------------------------------------------------------------- sources
class _NeighborArrays:
    """Per-item neighbour lists as numpy arrays (item codes, scores), for the vectorised CF.

    Entries are keyed by item id and remembered together with the list object they were built
    from; a lookup whose list is not that very object (the operator replaced the row, or another
    model uses the same id) rebuilds the entry, so the cache can never serve stale neighbours.
    Codes come from an append-only interning table shared by all models of the process (its size
    is bounded by the number of distinct item ids). Thread mode may run several operator
    instances in one interpreter, and the GIL can switch threads between any two bytecodes:
    new codes are handed out under a lock (two ids must never share one); a race on ``rows``
    at worst rebuilds an entry twice.
    """

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self.ids: list[str] = []
        self.rows: dict[str, tuple[object, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def intern(self, item: str) -> int:
        c = self.code.get(item)
        if c is None:
            with self._lock:
                c = self.code.get(item)
                if c is None:
                    c = len(self.ids)
                    self.ids.append(item)
                    self.code[item] = c
        return c

    def get(self, item: str, row: Sequence[tuple[str, float]]) -> tuple[np.ndarray, np.ndarray]:
        hit = self.rows.get(item)
        if hit is not None and hit[0] is row:
            return hit[1], hit[2]
        codes = np.fromiter((self.intern(j) for j, _ in row), dtype=np.int64, count=len(row))
        scores = np.fromiter((s for _, s in row), dtype=np.float64, count=len(row))
        keep = scores > 0  # also drops NaN
        if not keep.all():
            codes, scores = codes[keep], scores[keep]
        self.rows[item] = (row, codes, scores)
        return codes, scores


_NEIGHBOR_ARRAYS = _NeighborArrays()


def collaborative_candidates(recent_items: Sequence[RecentItem],
                             neighbors: Mapping[str, Sequence[tuple[str, float]]],
                             now_ms: int, *, half_life_ms: float, limit: int,
                             allowed: Callable[[str], bool] | None = None
                             ) -> tuple[dict[str, float], dict[str, RecentItem]]:
    """CF scores (unnormalised, best ``limit``, best first) and, per candidate, the recent item
    that contributed most to it (ties: the newer one, i.e. earlier in ``recent_items``).

    Vectorised (a Python loop per neighbour entry was the scorer's hot spot with long
    histories): each candidate's score is accumulated in the same order as the plain loop
    ``for r in recent_items: for (j, s) in neighbors[r]: cf[j] += s * vote(r)``, so the
    floating-point sums are identical.
    """
    cache = _NEIGHBOR_ARRAYS
    parts: list[tuple[int, np.ndarray, np.ndarray]] = []
    for n, r in enumerate(recent_items):
        if not r.weight > 0:
            continue
        row = neighbors.get(r.item_id)
        if not row:
            continue
        age = max(0, now_ms - r.ts)  # a timestamp ahead of now is not boosted
        vote = r.weight * 2.0 ** (-age / half_life_ms)
        if vote <= 0:
            continue
        codes, sims = cache.get(r.item_id, row)
        if len(codes):
            parts.append((n, codes, sims * vote))
    if not parts or limit <= 0:
        return {}, {}
    size = len(cache.ids)
    codes = np.concatenate([c for _, c, _ in parts])
    contrib = np.concatenate([v for _, _, v in parts])
    owner = np.repeat(np.array([n for n, _, _ in parts], dtype=np.int64),
                      [len(c) for _, c, _ in parts])
    # bincount adds in input order, i.e. recent item by recent item, as the plain loop does.
    scores = np.bincount(codes, weights=contrib, minlength=size)
    best_c = np.full(size, -np.inf, dtype=np.float64)
    np.maximum.at(best_c, codes, contrib)
    # The best contributor: the first entry (newest recent item) reaching its code's maximum.
    at_max = np.flatnonzero(contrib == best_c[codes])
    first_codes, first = np.unique(codes[at_max], return_index=True)
    best_r = np.full(size, -1, dtype=np.int64)
    best_r[first_codes] = owner[at_max[first]]
    cand = np.flatnonzero(best_r >= 0)
    ids = cache.ids
    cand_scores = scores[cand]
    vals = cand_scores.tolist()
    # Walk the candidates by score, testing ``allowed`` lazily, until ``limit`` are accepted
    # plus every candidate tied with the last one; then order by (score desc, id asc) exactly.
    picked: list[int] = []
    cut: float | None = None
    for p in np.argsort(-cand_scores, kind="stable").tolist():
        v = vals[p]
        if cut is not None and v != cut:
            break
        if allowed is not None and not allowed(ids[cand[p]]):
            continue
        picked.append(p)
        if cut is None and len(picked) >= limit:
            cut = v
    picked.sort(key=lambda p: (-vals[p], ids[cand[p]]))
    out: dict[str, float] = {}
    because: dict[str, RecentItem] = {}
    for p in picked[:limit]:
        j = ids[cand[p]]
        out[j] = vals[p]
        because[j] = recent_items[int(best_r[cand[p]])]
    return out, because


def positive_interests(interests: Mapping[str, float]) -> dict[str, float]:
    return {f: w for f, w in interests.items() if w > 0 and math.isfinite(w)}


class _ItemFeatureArrays:
    """Each catalogue item's features as an array of codes over an interned feature vocabulary,
    for the vectorised content score (same cache discipline as ``_NeighborArrays``: an entry is
    remembered with the ``ItemInfo`` object it was built from, and a catalogue update, which
    makes a new ``ItemInfo``, rebuilds it)."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self.items: dict[str, tuple[ItemInfo, np.ndarray]] = {}
        self._lock = threading.Lock()

    def intern(self, feature: str) -> int:
        c = self.code.get(feature)
        if c is None:
            with self._lock:  # see _NeighborArrays.intern
                c = self.code.get(feature)
                if c is None:
                    c = self.code[feature] = len(self.code)
        return c

    def get(self, item: str, info: ItemInfo) -> np.ndarray:
        hit = self.items.get(item)
        if hit is not None and hit[0] is info:
            return hit[1]
        feats = info.feature_set()
        codes = np.fromiter((self.intern(f) for f in feats), dtype=np.int64, count=len(feats))
        self.items[item] = (info, codes)
        return codes


_ITEM_FEATURES = _ItemFeatureArrays()


def content_scores(interests: Mapping[str, float], candidates: Iterable[str],
                   catalog: Mapping[str, ItemInfo]) -> dict[str, float]:
    """Cosine between the positive interests and each candidate's feature indicator vector;
    only the candidates with a positive cosine (``matched_feature`` names the reason).

    Vectorised over the candidates (the per-candidate Python loop was recommend()'s largest
    cost): a gather of the interest weights at every candidate's feature codes and one
    segmented sum (in feature order; it may differ from an exactly rounded sum in the last
    bit when three or more features match).
    """
    p = positive_interests(interests)
    if not p:
        return {}
    norm_p = math.sqrt(math.fsum(w * w for w in p.values()))
    cache, get, entries = _ITEM_FEATURES, catalog.get, _ITEM_FEATURES.items
    items: list[str] = []
    arrays: list[np.ndarray] = []
    for item in candidates:
        info = get(item)
        if info is None:
            continue
        hit = entries.get(item)
        codes = hit[1] if hit is not None and hit[0] is info else cache.get(item, info)
        if len(codes):
            items.append(item)
            arrays.append(codes)
    if not items:
        return {}
    weight_of = np.zeros(len(cache.code), dtype=np.float64)
    for f, w in p.items():
        c = cache.code.get(f)
        if c is not None:
            weight_of[c] = w
    lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
    starts = np.zeros(len(arrays), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    gathered = weight_of[np.concatenate(arrays)]
    dots = np.add.reduceat(gathered, starts)
    matched = np.flatnonzero(dots > 0)
    if not len(matched):
        return {}
    cos = dots[matched] / (norm_p * np.sqrt(lengths[matched]))
    return dict(zip([items[r] for r in matched.tolist()], cos.tolist()))


def matched_feature(interests: Mapping[str, float], info: ItemInfo | None) -> str | None:
    """The item's feature the user is most interested in (ties: feature name), or None.
    Computed for the returned items only, not for every scored candidate."""
    if info is None:
        return None
    p = positive_interests(interests)
    hits = [(p[f], f) for f in info.feature_set() if f in p]
    return min(hits, key=lambda h: (-h[0], h[1]))[1] if hits else None


def trending_candidates(trending: TrendingModel, now_ms: float, limit: int, *,
                        segment: str | None = None, category: str | None = None,
                        exclude: set[str] | None = None,
                        allowed: Callable[[str], bool] | None = None) -> dict[str, float]:
    """Up to ``limit`` trending items (overall, or within ``segment``, or within ``category``),
    best first, that pass ``allowed`` and are not in ``exclude``; normalised so the best is 1."""
    if limit <= 0:
        return {}
    if segment is not None:
        got = trending.trending_in_segment(segment, limit, now_ms, exclude, allowed)
    elif category is not None:
        got = trending.trending_in_category(category, limit, now_ms, exclude, allowed)
    else:
        got = trending.trending_items(limit, now_ms, exclude, allowed)
    kept = [(i, s) for i, s in got if s > 0]  # top_where returns at most ``limit``
    if not kept:
        return {}
    top = kept[0][1]
    return {i: s / top for i, s in kept}


def top_interest_categories(interests: Mapping[str, float], n: int) -> list[str]:
    """The user's ``n`` categories with the highest positive interest."""
    cats = [(w, f[len("category:"):]) for f, w in positive_interests(interests).items()
            if f.startswith("category:")]
    return [c for _, c in sorted(cats, key=lambda p: (-p[0], p[1]))[:max(0, n)]]


# ------------------------------------------------------------------------------ blending
def source_weights(weights: VariantConfig) -> dict[str, float]:
    return {COLLABORATIVE: weights.w_collaborative, CONTENT: weights.w_content,
            TRENDING: weights.w_trending, SEGMENT: weights.w_segment}


class _Blend:
    """Blended scores as arrays; ``Blended`` objects are made only for the rows asked for."""

    def __init__(self, sources: Mapping[str, Mapping[str, float]],
                 weights: Mapping[str, float]) -> None:
        names = [s for s, scores in sources.items() if scores]
        self.names = names
        if not names:
            self.ids: list[str] = []
            self.order: list[int] = []
            return
        ids = sorted(set(chain.from_iterable(sources[s] for s in names)))
        row = {item: r for r, item in enumerate(ids)}
        matrix = np.zeros((len(ids), len(names)), dtype=np.float64)
        for c, name in enumerate(names):
            src = sources[name]
            rows = np.fromiter((row[i] for i in src), dtype=np.int64, count=len(src))
            vals = np.maximum(np.fromiter(src.values(), dtype=np.float64, count=len(src)), 0.0)
            top = vals.max()
            if top > 0:
                matrix[rows, c] = vals / top
        w = np.array([float(weights.get(name, 0.0)) for name in names], dtype=np.float64)
        self.ids = ids
        self.contrib = matrix * w
        self.scores = self.contrib.sum(axis=1)
        self.order = np.argsort(-self.scores, kind="stable").tolist()  # ids sorted: ties by id

    def __len__(self) -> int:
        return len(self.order)

    def make(self, r: int) -> Blended:
        row = self.contrib[r]
        parts = {name: float(row[c]) for c, name in enumerate(self.names) if row[c]}
        return Blended(self.ids[r], float(self.scores[r]), parts)

    def __iter__(self) -> Iterator[Blended]:
        """Best first (lazily: a consumer that stops after k items builds only those)."""
        return (self.make(r) for r in self.order)

    def positive(self) -> Iterator[Blended]:
        return (self.make(r) for r in self.order if self.scores[r] > 0)


def blend(sources: Mapping[str, Mapping[str, float]], weights: Mapping[str, float]
          ) -> list[Blended]:
    """Normalise each source by its max (negative values count as 0), weight and add up.

    Returns every candidate of every source, best first, ties by item id.
    """
    return list(_Blend(sources, weights))


T = TypeVar("T")


def diversify(ranked: Sequence[T], k: int, max_per_category: int,
              catalog: Mapping[str, ItemInfo]) -> list[T]:
    """Greedy: take items in order, skipping one whose primary category is already used
    ``max_per_category`` times (0 = no cap), until ``k`` are taken. Items need ``.item_id``."""
    out: list[T] = []
    used: dict[str, int] = {}
    for cand in ranked:
        if len(out) >= k:
            break
        info = catalog.get(cand.item_id)  # type: ignore[attr-defined]
        primary = info.categories[0] if info is not None and info.categories else None
        if max_per_category > 0 and primary is not None:
            if used.get(primary, 0) >= max_per_category:
                continue
            used[primary] = used.get(primary, 0) + 1
        out.append(cand)
    return out


# ---------------------------------------------------------------------------- explanations
def _title(item_id: str, catalog: Mapping[str, ItemInfo]) -> str:
    info = catalog.get(item_id)
    return info.title if info is not None and info.title else item_id


def _feature_label(feature: str) -> str:
    return feature.split(":", 1)[1] if ":" in feature else feature


def explain(contributions: Mapping[str, float], catalog: Mapping[str, ItemInfo], *,
            because: RecentItem | None = None, interest_feature: str | None = None,
            trending_category: str | None = None, first: str | None = None,
            max_reasons: int = 3, min_share: float = 0.1) -> list[str]:
    """Human-readable reasons from an item's top contributing sources.

    A source is mentioned when it contributes at least ``min_share`` of the item's score; largest
    first (ties in ``SOURCES`` order). ``first`` names a source to put first regardless.
    """
    total = sum(v for v in contributions.values() if v > 0)
    picked = [s for s in SOURCES if contributions.get(s, 0.0) > 0
              and contributions[s] >= min_share * total]
    picked.sort(key=lambda s: -contributions[s])  # stable: ties keep SOURCES order
    if first is not None:
        picked = [first] + [s for s in picked if s != first]
    reasons: list[str] = []
    for source in picked:
        if source == COLLABORATIVE:
            if because is not None:
                verb = EVENT_VERBS.get(because.event_type, "interacted with")
                reasons.append(f"because you {verb} {_title(because.item_id, catalog)}")
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


# ---------------------------------------------------------------------------- entry point
def _has_content(user: UserView, cf: Mapping[str, float], popular: Mapping[str, float],
                 seg: Mapping[str, float], trend: TrendingModel, trend_now: float, limit: int,
                 blocked: set[str], in_catalog: Callable[[str], bool],
                 catalog: Mapping[str, ItemInfo], max_interest_categories: int) -> bool:
    """Whether ``content_scores`` over the candidate pool would be non-empty (without scoring
    every candidate): some pool item in the catalogue has a positively weighted feature."""
    p = positive_interests(user.interests)
    if not p:
        return False

    def matches(item: str) -> bool:
        info = catalog.get(item)
        return info is not None and any(f in p for f in info.feature_set())

    if any(matches(i) for i in chain(cf, popular, seg)):
        return True
    for cat in top_interest_categories(user.interests, max_interest_categories):
        if any(matches(i) for i in trending_candidates(trend, trend_now, limit, category=cat,
                                                        exclude=blocked, allowed=in_catalog)):
            return True
    return False


def recommend(user: UserView, model: ItemModel, weights: VariantConfig, cfg: RecommendConfig,
              k: int, now_ms: int, *, recency_half_life_ms: int = 3 * DAY_MS,
              exclude_recent: bool = True, max_interest_categories: int = 3,
              max_reasons: int = 3, min_reason_share: float = 0.1) -> list[ScoredItem]:
    """Top ``k`` items for ``user`` with reasons (see the module docstring)."""
    if cfg.max_k > 0:
        k = min(k, cfg.max_k)
    if k <= 0:
        return []
    limit = max(cfg.candidates_per_source, k)
    catalog = model.catalog
    blocked = set(user.exclude) | set(user.not_interested)
    if exclude_recent:
        blocked.update(r.item_id for r in user.recent_items)

    def in_catalog(item: str) -> bool:  # trending readers pass ``blocked`` as their exclude
        info = catalog.get(item)
        return info is not None and bool(info.available)

    def cf_allowed(item: str) -> bool:
        if item in blocked:
            return False
        info = catalog.get(item)
        return info is None or bool(info.available)

    cf, because = collaborative_candidates(user.recent_items, model.neighbors, now_ms,
                                           half_life_ms=recency_half_life_ms, limit=limit,
                                           allowed=cf_allowed)

    # Normalised popularity does not depend on the time it is read at (forward decay), so read
    # it at the newest recorded event: immune to requests with stale or skewed timestamps.
    trend = model.trending
    trend_now = trend.last_ts if trend.last_ts is not None else now_ms
    popular = trending_candidates(trend, trend_now, limit, exclude=blocked, allowed=in_catalog)
    seg = (trending_candidates(trend, trend_now, limit, segment=user.segment, exclude=blocked,
                               allowed=in_catalog) if user.segment else {})
    in_category: dict[str, str] = {}
    content: dict[str, float] = {}
    if weights.w_content != 0:
        for cat in top_interest_categories(user.interests, max_interest_categories):
            for item in trending_candidates(trend, trend_now, limit, category=cat,
                                            exclude=blocked, allowed=in_catalog):
                in_category.setdefault(item, cat)
        pool = dict.fromkeys(chain(cf, popular, seg, in_category))
        content = content_scores(user.interests, pool, catalog)
        has_content = bool(content)
    else:
        # Content cannot move a score; it only decides whether this is a cold start.
        has_content = _has_content(user, cf, popular, seg, trend, trend_now, limit, blocked,
                                    in_catalog, catalog, max_interest_categories)

    sources = {COLLABORATIVE: cf, CONTENT: content, TRENDING: popular, SEGMENT: seg}
    blended = _Blend(sources, source_weights(weights))
    firsts: dict[str, str] = {}
    ranked: Iterable[Blended]
    if not cf and not has_content:  # cold start: segment favourites first, then global trending
        everything = list(blended)
        ranked = ([b for b in everything if b.item_id in seg]
                  + [b for b in everything if b.item_id not in seg])
        firsts = {b.item_id: SEGMENT if b.item_id in seg else TRENDING for b in ranked}
    else:
        ranked = blended.positive()

    chosen = diversify(ranked, k, cfg.max_per_category, catalog)
    return [ScoredItem(b.item_id, b.score,
                       explain(b.contributions, catalog, because=because.get(b.item_id),
                               interest_feature=(matched_feature(user.interests,
                                                                 catalog.get(b.item_id))
                                                 if b.item_id in content else None),
                               trending_category=in_category.get(b.item_id),
                               first=firsts.get(b.item_id), max_reasons=max_reasons,
                               min_share=min_reason_share))
            for b in chosen]
