"""``recsys tune``'s pure parts: the search file, the coordinate descent's bookkeeping and the
preset it writes (the trials themselves are simulator runs, covered by the simulator's tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.evaluation import tune
from state_schemas.config import load_config


def search_file(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "search.toml"
    p.write_text(body)
    return p


SEARCH = """
[tune]
split = "random"
seed = 42
[fixed]
"validation.min_ts_ms" = 788918400000
"recommend.variants" = { tuned = { traffic = 1.0 } }
[space]
"similarity.top_k" = [20, 50]
"similarity.metric" = ["cosine", "jaccard"]
"recommend.variants.tuned.w_trending" = [0.2, 0.5]
"""


def test_coordinate_descent_keeps_the_best_value_per_setting_and_stops_when_nothing_changes(
        tmp_path, monkeypatch):
    search = tune.Search.load(search_file(tmp_path, SEARCH))
    assert search.dataset == "ml-100k" and search.metric == "ndcg@10"
    calls = []

    class Pool:  # scores the settings with a known function, in this process
        def __init__(self, **_): pass
        def submit(self, fn, settings):
            calls.append(settings)
            score = (0.1 * ("similarity.top_k=50" in settings)
                     + 0.01 * ('similarity.metric="jaccard"' in settings))

            class Done:
                def result(self):
                    return score
            return Done()
        def shutdown(self, **_): pass

    monkeypatch.setattr(tune, "ProcessPoolExecutor", Pool)
    result = tune.coordinate_descent(search, workers=1, log=lambda s: None)
    assert result.settings["similarity.top_k"] == 50
    assert result.settings["similarity.metric"] == "jaccard"
    assert result.settings["recommend.variants.tuned.w_trending"] == 0.2  # a tie keeps the first
    assert result.score == pytest.approx(0.11)
    assert all('validation.min_ts_ms=788918400000' in c for c in calls)  # fixed in every trial
    assert len(calls) == len(set(map(tuple, calls)))  # each configuration scored once
    assert {t.round for t in result.trials} == {1, 2}  # round 2 changed nothing: stop

    preset = tmp_path / "preset.toml"
    preset.write_text(tune.preset_toml(search, result, "recsys tune search.toml"))
    cfg = load_config(preset, ["validation.min_ts_ms=788918400000"], environ={})
    assert cfg.similarity.top_k == 50 and cfg.similarity.metric == "jaccard"
    assert set(cfg.recommend.variants) == {"tuned"}
    assert "validation nDCG" not in preset.read_text()  # the metric's own name is written
    assert "# validation ndcg@10: 20 0.0100, 50 0.1100" in preset.read_text()
    md = tune.markdown(search, result, "recsys tune search.toml")
    assert "test ratings were not loaded" in md and "| 1 | `similarity.top_k` | `50` **(kept)**" in md


def test_search_files_are_checked(tmp_path):
    with pytest.raises(SystemExit, match="names no setting"):
        tune.Search.load(search_file(tmp_path, "[tune]\nseed = 1\n"))
    with pytest.raises(SystemExit, match="non-empty list"):
        tune.Search.load(search_file(tmp_path, '[space]\n"similarity.top_k" = 5\n'))
    with pytest.raises(SystemExit, match="tune.split"):
        tune.Search.load(search_file(tmp_path, '[tune]\nsplit = ["random", "x"]\n[space]\n"a.b" = [1]\n'))
    both = tune.Search.load(search_file(tmp_path, '[tune]\nsplit = ["random", "temporal"]\n'
                                                  '[space]\n"a.b" = [1]\n'))
    assert both.splits == ["random", "temporal"] and "mean over the splits" in tune.describe(both)
    with pytest.raises(SystemExit, match="tune.objective"):
        tune.Search.load(search_file(tmp_path, '[tune]\nobjective = "max"\n[space]\n"a.b" = [1]\n'))
    worst = tune.Search.load(search_file(
        tmp_path, '[tune]\nsplit = ["random", "temporal"]\nobjective = "worst_vs_ease"\n'
                  '[space]\n"a.b" = [1]\n'))
    assert worst.metric == "ndcg@10/EASE (worst split)" and "worst split" in tune.describe(worst)
    with pytest.raises(SystemExit, match="dataset"):
        tune.Search.load(search_file(tmp_path, '[tune]\ndataset = "imdb"\n[space]\n"a.b" = [1]\n'))


def test_literals_are_toml():
    assert tune.literal(True) == "true" and tune.literal("jaccard") == '"jaccard"'
    assert tune.literal({"tuned": {"traffic": 1.0}}) == "{tuned = {traffic = 1.0}}"
    assert tune.overrides({"similarity.top_k": 50}) == ["similarity.top_k=50"]


def test_a_trial_over_several_splits_is_their_mean_or_the_worst_ratio_to_ease():
    assert tune.combine([0.3, 0.2], [], "mean") == pytest.approx(0.25)
    # 0.27 / 0.27 = 1.0 on one split, 0.18 / 0.20 = 0.9 on the other: the worst counts
    assert tune.combine([0.27, 0.18], [0.27, 0.20], "worst_vs_ease") == pytest.approx(0.9)


def test_the_streaming_validation_data_holds_no_event_of_protocol_b_second_half():
    from recsys.evaluation.compare import first_half_of_time

    events = [{"ts": t, "user_id": "u", "item_id": f"i{t}"} for t in (100, 130, 149, 150, 151, 200)]
    kept, t_first, t_mid = first_half_of_time(events)
    assert (t_first, t_mid) == (100, 150)
    assert [e["ts"] for e in kept] == [100, 130, 149]  # the second half starts at t_mid


def test_a_streaming_search_scores_protocol_b_hit_rate(tmp_path):
    search = tune.Search.load(search_file(tmp_path, SEARCH.replace(
        'split = "random"', 'dataset = "ml-100k-first-half"')))
    assert search.metric == "hit_rate@10"
    assert "first half of their time range" in tune.describe(search)
