"""The engine beside batch baselines, like for like: same splits, same metric code.

For every protocol-A split of ``make eval`` (random per-user splits on several seeds and the
per-user temporal split, ``recsys.evaluation.datasets``) this module scores popularity, SAR (cosine and
Jaccard, with the time decay Recommenders documents: 30 days) and EASE, whose lambda is
chosen on the validation split carved from that split's *training* ratings, never on its test
ratings. Protocol B's baselines replay the same event stream: popularity refreshed at every
event, and EASE trained once on the first half of time.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from recsys.evaluation import baselines, prequential
from recsys.evaluation.datasets import Data, load_data
from recsys.evaluation.metrics import ranking_metrics

K_DEFAULT = 10
EASE_LAMBDAS = (50.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1200.0)
SAR_HALF_LIFE_MS = 30 * baselines.DAY_MS   # Recommenders' SAR time_decay_coefficient default
SAR_VARIANTS = {"SAR cosine": "cosine", "SAR jaccard": "jaccard"}


def tune_ease(users_limit: int, seed: int, kind: str, k: int
              ) -> tuple[float, dict[float, float]]:
    """EASE's lambda with the best validation nDCG@k on the validation split of (kind, seed);
    returns it and the whole search (lambda -> nDCG@k)."""
    val = load_data(users_limit, seed, kind=kind, validation=True)
    m = val.interactions()
    users = sorted(val.test)
    search = {lam: ranking_metrics(baselines.ease(m, users, k, lam=lam), val.test, k)[f"ndcg@{k}"]
              for lam in EASE_LAMBDAS}
    best = max(EASE_LAMBDAS, key=lambda lam: (search[lam], -lam))
    return best, search


def baseline_metrics(data: Data, k: int, ease_lambda: float) -> dict[str, dict[str, float]]:
    """Every baseline's protocol-A metrics on ``data``'s test split."""
    m = data.interactions()
    users = sorted(data.test)
    out = {"popularity": ranking_metrics(baselines.popularity(m, users, k), data.test, k)}
    for name, sim in SAR_VARIANTS.items():
        out[name] = ranking_metrics(baselines.sar(m, users, k, similarity=sim,
                                                  half_life_ms=SAR_HALF_LIFE_MS), data.test, k)
    out["EASE"] = ranking_metrics(baselines.ease(m, users, k, lam=ease_lambda), data.test, k)
    return out


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of a metric over seeds."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


# ------------------------------------------------------------------------- protocol B

def prequential_baselines(events: Sequence[dict[str, Any]], t_mid: int, k: int,
                          ease_lambda: float, users: set[str] | None = None
                          ) -> dict[str, list[prequential.Case]]:
    """Protocol B cases (``recsys.evaluation.prequential``) of two baselines over ``events``
    (event-time order), from the list each would have shown after every event:

    * ``popularity, live``: the k most frequent items over every event so far (the list after
      the user's previous event), minus the user's own items.
    * ``EASE, first half``: trained once on the events before ``t_mid``; the user's scores are
      the sum of the B rows of every item they touched so far (history keeps growing), minus
      their own items. Only cases at or after ``t_mid`` are returned (before, it would be
      scored on its own training data).
    """
    items = list(dict.fromkeys(e["item_id"] for e in events))
    index = {i: n for n, i in enumerate(items)}
    n_items = len(items)
    first = [e for e in events if e["ts"] < t_mid]
    m = baselines.InteractionMatrix.of(
        (baselines.Interaction(e["user_id"], e["item_id"], e["ts"], 1.0) for e in first),
        items=items)
    b = baselines.ease_weights(m.binary(), ease_lambda)

    # EASE's list after an event is only looked at when the user's next event is in the second
    # half: the others are not computed.
    next_ts: dict[str, int] = {}
    ease_needed = [False] * len(events)
    for n in range(len(events) - 1, -1, -1):
        u = events[n]["user_id"]
        ease_needed[n] = next_ts.get(u, -1) >= t_mid
        next_ts[u] = events[n]["ts"]

    counts = np.zeros(n_items, dtype=np.float64)
    seen: dict[str, np.ndarray] = {}
    ease_scores: dict[str, np.ndarray] = {}
    popular_after: dict[str, tuple[str, list[str]]] = {}
    ease_after: dict[str, tuple[str, list[str]]] = {}
    for n, e in enumerate(events):
        u, c = e["user_id"], index[e["item_id"]]
        counts[c] += 1.0
        s = seen.get(u)
        if s is None:
            s = seen[u] = np.zeros(n_items, dtype=bool)
            ease_scores[u] = np.zeros(n_items, dtype=np.float64)
        if not s[c]:
            s[c] = True
            ease_scores[u] += b[c]
        if users is None or u in users:
            popular_after[e["event_id"]] = ("popularity", _top_unseen(counts, s, k, items))
            if ease_needed[n]:
                ease_after[e["event_id"]] = ("ease", _top_unseen(ease_scores[u], s, k, items))
    return {"popularity, live": prequential.cases(events, popular_after, k, users),
            "EASE, first half": prequential.cases(events, ease_after, k, users, since_ts=t_mid)}


def _top_unseen(scores: np.ndarray, seen: np.ndarray, k: int, items: list[str]) -> list[str]:
    top = baselines.top_k_unseen(scores[None, :], seen[None, :], k)[0]
    return [items[c] for c in top if c >= 0]


# ----------------------------------------------------------------- the synthetic stream

SYNTHETIC = {"n_users": 500, "n_items": 600, "n_events": 20_000}
SYNTHETIC_TUNING_SEED = 11   # recsys tune (deploy/tuning/ecommerce.toml)
SYNTHETIC_EVAL_SEED = 7      # make eval: another stream from the same generator


def synthetic_stream(seed: int) -> dict[str, Any]:
    """The synthetic e-commerce stream (``recsys.sample_data.synthetic``, larger than the bundled
    sample): catalogue, users, events in time order, and the mid time."""
    from recsys.sample_data.synthetic import generate_sample

    d = generate_sample(seed=seed, **SYNTHETIC)
    events = sorted(d.events, key=lambda e: (e["ts"], e["event_id"]))
    t_first, t_mid = prequential.time_range(events)
    return {"items": d.items, "users": d.users, "events": events, "t_first": t_first,
            "t_mid": t_mid, "seed": seed}


def first_half_of_time(events: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, int]:
    """The events (in time order) before the middle of their time range, with the range's
    first time and middle: protocol B's first half, ``t_mid`` as ``make eval`` computes it."""
    t_first, t_mid = prequential.time_range(events)
    return [e for e in events if e["ts"] < t_mid], t_first, t_mid


def movielens_first_half(users_limit: int = 0) -> dict[str, Any]:
    """MovieLens-100k's ratings before the middle of their time range, as a stream for protocol
    B: the validation data of a streaming preset (``recsys tune``). Protocol B in ``make eval``
    reports the second half apart, and no rating of it is in this stream."""
    from recsys.evaluation.datasets import load_data

    d = load_data(users_limit)
    events, t_first, _ = first_half_of_time(d.all_events)
    # the stream's own middle (the tuner reads its overall HitRate, not the halves)
    return {"items": d.catalog, "users": d.attributes, "events": events, "t_first": t_first,
            "t_mid": prequential.time_range(events)[1], "seed": None}


def engine_protocol_b(cfg: Any, stream: dict[str, Any]) -> dict[str, Any]:
    """Protocol B of the engine (simulator) on a synthetic stream."""
    from recsys.evaluation.simulate import run_protocol_b

    res = run_protocol_b(cfg, stream["items"], stream["users"], stream["events"], k=K_DEFAULT)
    return prequential.summarise(res.cases, stream["t_first"], stream["t_mid"], K_DEFAULT)


def synthetic_report(k: int = K_DEFAULT) -> dict[str, Any]:
    """Protocol B on the evaluation's synthetic stream: the engine with the shipped defaults
    beside popularity refreshed at every event and EASE trained on the first half."""
    from state_schemas.config import load_config

    stream = synthetic_stream(SYNTHETIC_EVAL_SEED)
    out: dict[str, Any] = {"seed": stream["seed"], "events": len(stream["events"]),
                           **SYNTHETIC,
                           "engine_defaults": engine_protocol_b(load_config(None, [], environ={}),
                                                                stream)}
    # EASE's lambda is chosen on the tuning stream (the validation data of this protocol).
    tuning = synthetic_stream(SYNTHETIC_TUNING_SEED)
    hit = {lam: prequential.summarise(prequential_baselines(tuning["events"], tuning["t_mid"], k,
                                                            lam)["EASE, first half"],
                                      tuning["t_first"], tuning["t_mid"], k)[f"hit_rate@{k}"]
        for lam in EASE_LAMBDAS}
    lam = max(EASE_LAMBDAS, key=lambda x: (hit[x], -x))
    out["ease_lambda"], out["ease_lambda_search"] = lam, hit
    out["baselines"] = {name: prequential.summarise(c, stream["t_first"], stream["t_mid"], k)
                        for name, c in prequential_baselines(stream["events"], stream["t_mid"],
                                                             k, lam).items()}
    return out
