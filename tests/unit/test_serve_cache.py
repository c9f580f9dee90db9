"""The HTTP service's in-memory view of the compacted topics, fed records directly."""

from __future__ import annotations

import orjson

from recsys.serving.api import LiveView, ServeMetrics
from state_schemas.config import load_config


def view(max_users: int) -> tuple[LiveView, str, str]:
    cfg = load_config(overrides=[f"serve.max_users_cached={max_users}"], environ={})
    return LiveView(cfg, ServeMetrics()), cfg.topics.recommendations, cfg.topics.user_profiles


def rec(user: str, n: int) -> bytes:
    return orjson.dumps({"user_id": user, "items": [], "n": n})


def test_the_cache_keeps_the_most_recently_updated_users_up_to_its_bound():
    v, recs, profiles = view(3)
    for n, user in enumerate(["a", "b", "c", "d"]):
        v.apply(recs, user, rec(user, n))
    assert list(v.recommendations) == ["b", "c", "d"]  # "a" was updated longest ago
    v.apply(recs, "b", rec("b", 9))  # an update makes "b" the most recent
    v.apply(recs, "e", rec("e", 10))
    assert list(v.recommendations) == ["d", "b", "e"] and v.recommendations["b"]["n"] == 9
    v.apply(recs, "d", None)  # a tombstone removes the user
    assert list(v.recommendations) == ["b", "e"]
    v.apply(profiles, "z", orjson.dumps({"user_id": "z"}))  # each kind has its own bound
    assert list(v.profiles) == ["z"] and len(v.recommendations) == 2
    evicted = v.metrics.registry.get_sample_value("recsys_serve_users_evicted_total",
                                                  {"kind": "recommendations"})
    assert evicted == 2
