"""Shared fixtures of the whole test suite.

* A run that collects no tests fails (exit status 1) instead of pytest's quiet exit status 5, so a
  broken import path or a typo in ``-k`` cannot turn CI green.
* ``kafka_bootstrap``: ONE real local broker per session, started only when a test asks for it
  (``pytest tests/unit`` starts nothing). Set ``RECSYS_TEST_BOOTSTRAP=host:port`` to use an
  already-running broker instead.
* ``topic_names`` / ``engine_config``: per-test topic names with a random suffix, created on that
  broker, so tests sharing it never see each other's records, offsets or transactions.
"""

from __future__ import annotations

import os
import uuid
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterator

import pytest

# kafka-python 3.0.12 loads its protocol schemas at import time with deprecated importlib.resources
# calls: 218 DeprecationWarnings per run that are not ours and would hide the ones that are.
# Importing it once here, quietly, caches the module (this conftest loads before any other).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="(read|open)_text is deprecated", category=DeprecationWarning)
    import kafka  # noqa: F401

from state_schemas.config import EngineConfig, TopicNames, load_config
from recsys.local.kafka_broker import free_port_pair  # noqa: F401  (re-exported for tests)
from recsys.local.stack import suffixed_topic_names

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kafka_partitions(n): partitions of the topics the topic_names fixture creates")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection looks at the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration is an integration test, marked or not."""
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Turn "no tests collected" (exit 5, easy to mistake for success) into a failure."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = ("ERROR: no tests were collected (or all were deselected) - failing the run "
                   "on purpose; check the paths and -k/-m expressions")
        if reporter is not None:
            reporter.write_line(message, red=True, bold=True)
        else:
            print(message)


# --------------------------------------------------------------------------- broker

@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:PORT`` of the session's broker (started on first use, stopped at the end)."""
    external = os.environ.get("RECSYS_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    from recsys.local import kafka_broker

    port = free_port_pair()
    data_dir = tmp_path_factory.mktemp("kafka")
    try:
        info = kafka_broker.start_broker(port, data_dir, timeout_s=90)
    except kafka_broker.KafkaLocalError as e:
        pytest.fail(f"could not start the test Kafka broker: {e}", pytrace=False)
    try:
        yield info.bootstrap_servers
    finally:
        kafka_broker.stop_broker(port, data_dir)


# --------------------------------------------------------------------------- topics and config

@pytest.fixture
def topic_names_factory(kafka_bootstrap: str) -> Callable[..., TopicNames]:
    """``make(create=True, partitions=1) -> TopicNames``: fresh unique names, created or not."""
    from recsys.local.topics import ensure_topics

    def make(create: bool = True, partitions: int = 1) -> TopicNames:
        names = suffixed_topic_names()
        if create:
            ensure_topics(kafka_bootstrap, names, partitions)
        return names

    return make


@pytest.fixture
def topic_partitions(request: pytest.FixtureRequest) -> int:
    """1, or n from ``@pytest.mark.kafka_partitions(n)`` on the test."""
    marker = request.node.get_closest_marker("kafka_partitions")
    return int(marker.args[0]) if marker else 1


@pytest.fixture
def topic_names(topic_names_factory: Callable[..., TopicNames], topic_partitions: int) -> TopicNames:
    """This test's own topics, already created on the session broker."""
    return topic_names_factory(create=True, partitions=topic_partitions)


@pytest.fixture
def make_engine_config(kafka_bootstrap: str, topic_names: TopicNames,
                       topic_partitions: int) -> Callable[..., EngineConfig]:
    """``make(*overrides) -> EngineConfig`` on the session broker and this test's topics;
    ``overrides`` are ``--set``-style strings applied last (e.g. ``"similarity.top_k=5"``)."""
    suffix = uuid.uuid4().hex[:8]
    base = [
        f'kafka.bootstrap_servers="{kafka_bootstrap}"',
        'kafka.starting_offsets="earliest"',
        f'kafka.group_id="test-{suffix}"',
        f'kafka.transactional_id_prefix="test-{suffix}"',  # jobs of different tests never fence
        f"kafka.partitions={topic_partitions}",
        *(f'topics.{f.name}="{getattr(topic_names, f.name)}"' for f in fields(TopicNames)),
    ]

    def make(*overrides: str) -> EngineConfig:
        # environ={}: RECSYS__* variables of the developer's shell must not change the tests.
        return load_config(overrides=[*base, *overrides], environ={})

    return make


@pytest.fixture
def engine_config(make_engine_config: Callable[..., EngineConfig]) -> EngineConfig:
    """The engine configuration of this test: session broker, own topics, own group id."""
    return make_engine_config()
