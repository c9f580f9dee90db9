"""The stack harness's pure parts: suffixed topic names and the overrides that point the job at them."""

from dataclasses import asdict

from recsys.local.stack import suffixed_topic_names, topic_overrides
from state_schemas.config import TopicNames, load_config


def test_every_topic_gets_the_suffix_and_runs_get_distinct_names():
    names = suffixed_topic_names("abc")
    defaults = asdict(TopicNames())
    assert {k: v for k, v in asdict(names).items()} == {k: f"{v}-abc" for k, v in defaults.items()}
    assert set(asdict(suffixed_topic_names()).values()).isdisjoint(
        asdict(suffixed_topic_names()).values())


def test_the_overrides_give_the_job_exactly_those_topics():
    names = suffixed_topic_names("xyz")
    assert load_config(overrides=topic_overrides(names), environ={}).topics == names
