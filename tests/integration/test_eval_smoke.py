"""Protocol A of `make eval` on a slice of MovieLens-100k, through the real job.

The first 50 users (their ~4k training ratings) are replayed into a fresh job on the session
broker, one request per user follows, and the answers are scored. Checks the machinery, not the
tuning: every request is answered with a full top-10 that never repeats a training item, the
metrics are computed for every user, and the in-process simulator agrees with the job.
"""

from __future__ import annotations

import pytest

from recsys.evaluation import movielens
from state_schemas.config import load_config
from recsys.evaluation.protocols import DEFAULT_CONFIG, K, PipelineRunner, load_data, pipeline_protocol_a
from recsys.paths import PROJECT_ROOT
from recsys.evaluation import baselines
from recsys.evaluation.simulate import run_protocol_a
from recsys.evaluation.metrics import ranking_metrics

USERS = 50
CONFIG = str(PROJECT_ROOT / DEFAULT_CONFIG)


@pytest.fixture(scope="module")
def data():
    try:
        movielens.fetch(quiet=True)  # idempotent: a pip download the first time only
    except movielens.DatasetError as e:
        pytest.fail(f"could not fetch ml-100k: {e}", pytrace=False)
    return load_data(USERS)


@pytest.mark.timeout(240)
def test_protocol_a_through_the_job(kafka_bootstrap, tmp_path, data):
    runner = PipelineRunner(kafka_bootstrap, tmp_path)
    metrics, run, recs = pipeline_protocol_a(runner, CONFIG, [], data, timeout_s=200)

    assert run.requests_sent == USERS and run.requests_answered == USERS
    assert run.events == len(data.train_events) and run.dead_letters == 0
    seen = {}
    for e in data.train_events:
        seen.setdefault(e["user_id"], set()).add(e["item_id"])
    for user in data.users:
        assert len(recs[user]) == K, user
        assert len(set(recs[user])) == K
        assert not set(recs[user]) & seen[user], f"{user} got a movie rated in training"

    assert metrics["users"] == USERS
    for name in ("precision@10", "recall@10", "ndcg@10", "map"):
        assert 0.0 <= metrics[name] <= 1.0
    popularity = ranking_metrics(baselines.popularity(data.interactions(), sorted(data.test), K),
                                 data.test, K)
    assert metrics["ndcg@10"] > popularity["ndcg@10"]

    cfg = load_config(CONFIG, environ={})
    sim = run_protocol_a(cfg, data.catalog, data.attributes, data.train_events, data.test, k=K,
                         ms_per_event=1000.0 / max(run.events_per_second, 1.0))
    overlap = sum(len(set(recs[u]) & set(sim.recommendations[u])) for u in data.users) / (
        K * USERS)
    assert overlap >= 0.8, f"simulator and job agree on only {overlap:.0%} of the top-10s"
    assert abs(sim.metrics["ndcg@10"] - metrics["ndcg@10"]) < 0.05
