"""Every compiled kernel (``udfs/jit.py``) equals its plain-Python twin (``kernel.py``).

The twin is the same source run by CPython: what runs without Numba (``RECSYS_NO_JIT=1``) and
the readable statement of what the machine code must do. Each test runs the compiled kernel
*first* (so that any compilation happens with the module's own globals), then the twin, with the
kernels it calls also swapped for their twins, on copies of the same random inputs.

``score_candidates`` is not called with hand-built arguments (its signature is an internal
detail): the twin run goes through ``Recommender.recommend`` with the module's kernels
monkeypatched to their ``.py`` versions, on small random item models.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import udfs.recommend as recommend_mod
import udfs.similarity as similarity_mod
from state_schemas.records import SOURCE_EASE
from state_schemas.config import EVENT_TYPES, VariantConfig, load_config
from state_schemas.ids import id_hash
from udfs.jit import _sort_run, best_n, lex_order
from udfs.model import ItemModel
from udfs.recommend import Recommender, UserView, _hash_set, _in_set, sorted_contains
from udfs.similarity import apply_pairs, pair_score

# The twins do uint64 arithmetic on numpy scalars, which wraps as intended (e.g. -1 + 1 in
# _hash_set) but makes numpy warn about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

U64_MAX = np.iinfo(np.uint64).max


# ------------------------------------------------------------------------------ lex_order
@pytest.mark.parametrize("seed", range(30))
def test_lex_order_equals_np_lexsort_and_twin(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 60))
    spread = int(rng.integers(1, 6))  # few distinct values: long runs of ties on every key
    k1 = rng.integers(-spread, spread + 1, n).astype(np.float64)
    k2 = rng.integers(-spread, spread + 1, n).astype(np.float64)
    k3 = rng.integers(0, spread + 1, n).astype(np.uint64)
    if seed % 3 == 0:  # hashes near the top of the uint64 range
        k3 = (U64_MAX - k3).astype(np.uint64)
    expected = np.lexsort((k3, k2, k1))
    got = lex_order(k1, k2, k3)
    twin = lex_order.py(k1, k2, k3)
    assert got.tolist() == expected.tolist()
    assert np.asarray(twin).tolist() == expected.tolist()


def test_lex_order_same_array_twice_orders_by_first_then_third():
    # apply_pairs calls lex_order(neg, neg, hashes): score descending, then hash ascending.
    neg = np.array([-0.5, -1.0, -0.5, -1.0, -0.25])
    h = np.array([9, 7, 3, 8, 1], dtype=np.uint64)
    assert lex_order(neg, neg, h).tolist() == [1, 3, 2, 0, 4]
    assert np.asarray(lex_order.py(neg, neg, h)).tolist() == [1, 3, 2, 0, 4]


@pytest.mark.parametrize("seed", range(30))
def test_best_n_is_the_first_n_of_a_full_sort_and_equals_its_twin(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(0, 50))
    n = int(rng.integers(1, 12))
    neg = rng.integers(-4, 1, m).astype(np.float64)  # many ties at the cut
    codes = rng.permutation(m + 5)[:m].astype(np.int64)  # positions -> codes -> hashes
    hashes = rng.permutation(1000)[:m + 5].astype(np.uint64)
    expected = np.lexsort((hashes[codes], neg))[:n]
    got = best_n(neg, codes, hashes, n)
    twin = best_n.py(neg, codes, hashes, n)
    assert sorted(got.tolist()) == sorted(expected.tolist())
    assert sorted(np.asarray(twin).tolist()) == sorted(expected.tolist())


@pytest.mark.parametrize("seed", range(5))
def test_sort_run_is_a_stable_sort_of_a_slice(seed):
    rng = np.random.default_rng(seed)
    n = 30
    key = rng.integers(0, 4, n).astype(np.float64)
    order = rng.permutation(n).astype(np.int64)
    lo, hi = sorted(rng.integers(0, n + 1, 2).tolist())
    expected = order.copy()
    sub = order[lo:hi]
    expected[lo:hi] = sub[np.argsort(key[sub], kind="stable")]
    a, b = order.copy(), order.copy()
    _sort_run(a, key, lo, hi)
    _sort_run.py(b, key, lo, hi)
    assert a.tolist() == expected.tolist() == b.tolist()


# ------------------------------------------------------------------------------ hash sets
@pytest.mark.parametrize("seed", range(20))
def test_hash_set_and_in_set_equal_their_twins_and_python_sets(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 80))
    if seed % 2:
        values = rng.integers(0, 2 ** 63, n, dtype=np.uint64) * np.uint64(2)
        values[: n // 4] = U64_MAX - np.arange(1, n // 4 + 1, dtype=np.uint64)  # big hashes
        probes = np.concatenate([values, rng.integers(0, 2 ** 63, 40, dtype=np.uint64)])
    else:  # item codes (int32), with repeats
        values = rng.integers(0, 50, n).astype(np.int32)
        probes = np.arange(0, 70, dtype=np.int32)
    table = _hash_set(values)
    twin = _hash_set.py(values)
    assert table.dtype == twin.dtype == np.uint64
    assert table.tolist() == twin.tolist()
    size = len(table)
    assert size >= 16 and size & (size - 1) == 0 and size >= 2 * len(values) + 1
    assert int((table != 0).sum()) == len(set(values.tolist()))
    members = set(int(v) for v in values.tolist())
    for p in probes:
        expected = int(p) in members
        assert bool(_in_set(table, p)) == expected
        assert bool(_in_set.py(twin, p)) == expected


@pytest.mark.parametrize("seed", range(10))
def test_sorted_contains_equals_twin_and_python(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 40))
    values = np.unique(rng.integers(0, 100, n).astype(np.uint64))
    members = set(values.tolist())
    for v in range(102):
        probe = np.uint64(v)
        assert bool(sorted_contains(values, probe)) == (v in members)
        assert bool(sorted_contains.py(values, probe)) == (v in members)


# ------------------------------------------------------------------------------ pair_score
def test_pair_score_equals_twin_and_formulas():
    rng = np.random.default_rng(1)
    cases = [(c, ni, nj) for c in (0.0, 1.0, 3.0, 5.0) for ni in (0.0, -1.0, 1.0, 4.0, 9.0)
             for nj in (0.0, -2.0, 1.0, 4.0)]
    cases += [tuple(rng.uniform(0, 50, 3).tolist()) for _ in range(200)]
    for c, ni, nj in cases:
        for metric in range(3):
            for alpha in (0.0, 0.3, 0.5, 0.75, 1.0):
                got = pair_score(c, ni, nj, metric, alpha)
                assert got == pair_score.py(c, ni, nj, metric, alpha)
                if not (ni > 0 and nj > 0):
                    assert got == 0.0
                    continue
                den = (math.sqrt(ni) * math.sqrt(nj), ni + nj - c,
                       ni ** (1 - alpha) * nj ** alpha)[metric]
                assert got == (pytest.approx(c / den, rel=1e-14) if den > 0 else 0.0)


# ------------------------------------------------------------------------------ apply_pairs
def _random_pool(rng):
    """Random pool arrays and a batch of pair updates, as SimilarityShard.flush passes them."""
    n_codes = int(rng.integers(3, 40))
    integer = bool(rng.integers(0, 2))  # integer values: many exact ties
    hashes = rng.permutation(rng.integers(1, 2 ** 63, n_codes * 2, dtype=np.uint64))[:n_codes]
    hashes = np.unique(hashes)
    n_codes = len(hashes)
    hashes = rng.permutation(hashes).astype(np.uint64)
    occ = (rng.integers(0, 6, n_codes).astype(np.float64) if integer
           else rng.uniform(0, 5, n_codes))
    occ[rng.random(n_codes) < 0.1] = 0.0  # unknown items: score 0
    top_k = int(rng.integers(1, 6))
    cap = top_k + int(rng.integers(0, 8))
    n_slots = int(rng.integers(1, 12))
    cols = np.zeros((n_slots, cap), dtype=np.int32)
    vals = np.zeros((n_slots, cap), dtype=np.float64)
    obs = np.zeros((n_slots, cap), dtype=np.int32)
    counts = np.zeros(n_slots, dtype=np.int32)
    nbr = rng.integers(-1, n_codes, (n_slots, top_k)).astype(np.int32)
    nbr_score = rng.uniform(0, 1, (n_slots, top_k))
    nbr_len = rng.integers(0, top_k + 1, n_slots).astype(np.int32)
    slot_code = rng.choice(n_codes, min(n_slots, n_codes), replace=False).astype(np.int32)
    n_slots = len(slot_code)
    for s in range(n_slots):
        n = int(rng.integers(0, min(cap, n_codes) + 1))
        row = np.sort(rng.choice(n_codes, n, replace=False)).astype(np.int32)
        counts[s] = n
        cols[s, :n] = row  # may hold the row's own code: the kernel drops it
        vals[s, :n] = (rng.integers(1, 6, n).astype(np.float64) if integer
                       else rng.uniform(0.01, 5, n))
        obs[s, :n] = rng.integers(1, 12, n)
    groups = rng.choice(n_slots, int(rng.integers(1, n_slots + 1)), replace=False)
    group_start = [0]
    pair_col, pair_val = [], []
    for _ in groups:
        m = int(rng.integers(0, 15))
        pair_col += rng.integers(-1, n_codes, m).tolist()  # -1 and self pairs are ignored
        pair_val += (rng.integers(1, 4, m).astype(float).tolist() if integer
                     else rng.uniform(0.01, 3, m).tolist())
        group_start.append(len(pair_col))
    args = dict(
        group_start=np.array(group_start, dtype=np.int64),
        pair_col=np.array(pair_col, dtype=np.int32),
        pair_val=np.array(pair_val, dtype=np.float64),
        row_slot=groups.astype(np.int32), row_code=slot_code[groups],
        cols=cols, vals=vals, obs=obs, counts=counts, nbr=nbr, nbr_score=nbr_score,
        nbr_len=nbr_len, occ=occ, hashes=hashes,
        metric=int(rng.integers(0, 3)), alpha=float(rng.choice([0.0, 0.3, 0.5, 1.0])),
        top_k=top_k, cap=cap, min_cooc=float(rng.choice([0.0, 0.0, 2.0])),
        eps_num=math.log(1.0 / float(rng.choice([0.05, 0.3, 0.9]))),
        min_obs=int(rng.choice([1, 2, 5])),
        changed=np.zeros(len(groups), dtype=np.bool_))
    return args


def _copy(args):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}


@pytest.mark.parametrize("seed", range(40))
def test_apply_pairs_equals_twin(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    args = _random_pool(rng)
    compiled, twin = _copy(args), _copy(args)
    apply_pairs(**compiled)
    monkeypatch.setattr(similarity_mod, "pair_score", pair_score.py)
    monkeypatch.setattr(similarity_mod, "lex_order", lex_order.py)
    apply_pairs.py(**twin)
    for name in ("cols", "vals", "obs", "counts", "nbr", "nbr_score", "nbr_len", "changed"):
        assert compiled[name].tolist() == twin[name].tolist(), name
    # and the kernel did something checkable: rows sorted by column, no self entries, bounded
    for g, s in enumerate(args["row_slot"].tolist()):
        n = int(compiled["counts"][s])
        row = compiled["cols"][s, :n]
        assert (np.diff(row) > 0).all()
        assert args["row_code"][g] not in row.tolist()
        k = int(compiled["nbr_len"][s])
        assert k <= args["top_k"]
        assert set(compiled["nbr"][s, :k].tolist()) <= set(row.tolist())


# ------------------------------------------------------------------------------ score_candidates
T0 = 1_750_000_000_000
HOUR = 3_600_000
CATS = ["shoes", "hats", "books", "toys", "garden"]
TAGS = ["red", "blue", "wool", "running", "sale", "kids"]
SEGMENTS = ["young", "old", "mid"]


def _random_model(rng):
    cfg = load_config(overrides=[
        "similarity.top_k=5", "recommend.candidates_per_source=6", "recommend.trending_top_n=8",
        f"recommend.max_per_category={int(rng.choice([0, 1, 2]))}",
        "recommend.max_interest_categories=2", f"recommend.max_k={int(rng.choice([0, 7]))}",
    ], environ={})
    model = ItemModel(cfg)
    n_items = int(rng.integers(10, 30))
    ids = [f"item-{seed_id}" for seed_id in rng.choice(1000, n_items, replace=False).tolist()]
    for n, item in enumerate(ids):
        if rng.random() < 0.15:
            continue  # not in the catalogue (may still be a neighbour or popular)
        cats = rng.choice(CATS, int(rng.integers(0, 3)), replace=False).tolist()
        tags = rng.choice(TAGS, int(rng.integers(0, 3)), replace=False).tolist()
        model.upsert_item({"item_id": item, "ts": T0, "title": f"Title {n}", "categories": cats,
                           "tags": tags, "price": None, "available": bool(rng.random() > 0.15)})
    for item in ids:
        if rng.random() < 0.7:
            nb = rng.choice(ids, int(rng.integers(0, 6)), replace=False).tolist()
            nb = [j for j in nb if j != item]
            if rng.random() < 0.3:  # an EASE row: signed weights, negative ones demote
                scores = sorted((float(rng.uniform(-1, 1)) for _ in nb), reverse=True)
                model.set_neighbors(item, nb, scores, SOURCE_EASE)
                continue
            scores = sorted((float(rng.choice([0.25, 0.5, 1.0])) if rng.random() < 0.5
                             else float(rng.uniform(0, 1)) for _ in nb), reverse=True)
            model.set_neighbors(item, nb, scores)
    popular = rng.choice(ids, int(rng.integers(0, n_items)), replace=False).tolist()
    values = np.array([float(rng.choice([1.0, 2.0, 5.0])) if rng.random() < 0.3
                       else float(rng.uniform(0.1, 10)) for _ in popular])
    seg_names, seg_item, seg_vals = [], [], []
    for n in range(len(popular)):
        for seg in SEGMENTS:
            if rng.random() < 0.3:
                seg_names.append(seg)
                seg_item.append(n)
                seg_vals.append(float(values[n] * rng.uniform(0.1, 1)))
    model.apply_popularity(T0, T0, popular, values, seg_names, np.array(seg_item, dtype=np.int64),
                           np.array(seg_vals))
    model.refresh(0, force=True)
    return cfg, model, ids


def make_view(model, rng, ids, kind):
    if kind == "cold":
        recent, interests = [], {}
    else:
        n = int(rng.integers(1, 6))
        recent = rng.choice(ids + ["never-seen"], n, replace=False).tolist()
        interests = {}
        for f in rng.choice([f"category:{c}" for c in CATS] + [f"tag:{t}" for t in TAGS]
                            + ["tag:unknown-feature"], int(rng.integers(0, 6)), replace=False):
            interests[str(f)] = float(rng.choice([-3.0, 1.0, 2.0, 4.0]) if rng.random() < 0.5
                                      else rng.uniform(-1, 5))
    types = [int(rng.integers(0, len(EVENT_TYPES))) for _ in recent]
    ts = [T0 - int(rng.integers(0, 100 * HOUR)) for _ in recent]
    weights = [float(rng.choice([-8.0, 1.0, 4.0, 10.0])) for _ in recent]
    consumed = rng.choice(ids, int(rng.integers(0, 4)), replace=False).tolist()
    not_interested = rng.choice(ids, int(rng.integers(0, 3)), replace=False).tolist()
    fields = dict(user_id="u", recent_ids=recent, recent_types=types, recent_ts=ts,
                  recent_weights=weights, interests=interests,
                  consumed=np.array(sorted(id_hash(i) for i in consumed), dtype=np.uint64),
                  not_interested=not_interested,
                  segment=str(rng.choice(SEGMENTS + ["", "unknown-segment"])), variant="v")
    if "recent_codes" in {f.name for f in dataclasses.fields(UserView)}:
        fields["recent_codes"] = model.items.lookup(recent)
    return UserView(**fields)


def _random_weights(rng):
    if rng.random() < 0.3:
        return VariantConfig()
    w = rng.choice([0.0, 0.2, 0.5, 1.0], 4)
    return VariantConfig(w_collaborative=float(w[0]), w_content=float(w[1]),
                         w_trending=float(w[2]), w_segment=float(w[3]))


def _twin_kernels(monkeypatch):
    for name in ("score_candidates", "lex_order", "best_n", "_hash_set", "_in_set",
                 "sorted_contains"):
        monkeypatch.setattr(recommend_mod, name, getattr(recommend_mod, name).py)


@pytest.mark.parametrize("seed", range(12))
def test_score_candidates_equals_twin_through_the_recommender(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    cfg, model, ids = _random_model(rng)
    calls = []
    for n in range(8):
        kind = "cold" if n % 4 == 0 else "warm"
        calls.append((make_view(model, rng, ids, kind), _random_weights(rng),
                      int(rng.choice([1, 3, 5, 10]))))
    compiled_rec = Recommender(model, cfg.recommend)
    compiled = [compiled_rec.recommend(u, w, k, T0) for u, w, k in calls]
    _twin_kernels(monkeypatch)
    twin_rec = Recommender(model, cfg.recommend)
    twin = [twin_rec.recommend(u, w, k, T0) for u, w, k in calls]
    for (u, w, k), a, b in zip(calls, compiled, twin):
        assert a.ids == b.ids, (u, w, k)
        assert a.scores == b.scores
        assert a.reasons == b.reasons
        assert a.hashes == b.hashes
        assert a.hashes == [id_hash(i) for i in a.ids]
        assert len(a) <= k
        assert not set(a.ids) & (set(u.recent_ids) | set(u.not_interested))
        assert not {id_hash(i) for i in a.ids} & set(u.consumed.tolist())
    assert any(len(r) for r in compiled)  # the random models are not all empty
    # the kernel's scratch over item codes is left as it found it (all -1)
    assert (compiled_rec.pool_of == -1).all() and (twin_rec.pool_of == -1).all()
    assert not compiled_rec.feat_w.any() and not compiled_rec.cat_count.any()
