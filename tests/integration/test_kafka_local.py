"""The local broker tooling against real brokers: start/stop/status, topics, produce/consume, tail."""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Callable

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from recsys import cli

from recsys.local import kafka_broker, topics
from recsys.local import tail as tail_module
from state_schemas.config import EngineConfig, TopicNames, load_config
from recsys.kafka_io import client_kwargs, consume, json_producer, produce_json
from recsys.local.tail import tail
from recsys.local.topics import DLQ_RETENTION_MS, create_topics
from tests.conftest import free_port_pair

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


# --------------------------------------------------------------------------- broker lifecycle

def test_second_broker_runs_beside_the_session_broker(kafka_bootstrap: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    port, data_dir = free_port_pair(), tmp_path / "second"
    try:
        info = kafka_broker.start_broker(port, data_dir, timeout_s=90)
        assert info.bootstrap_servers == f"127.0.0.1:{port}"
        assert info.data_dir == data_dir.resolve()
        assert (data_dir / "broker.pid").read_text().strip() == str(info.pid)
        assert (data_dir / "broker.log").stat().st_size > 0  # log4j2 writes to the file ...

        # ... status sees it, and a second start is a no-op returning the same broker.
        assert kafka_broker.broker_status(port, data_dir) == info
        assert kafka_broker.start_broker(port, data_dir) == info
        capsys.readouterr()
        assert cli.main(["kafka", "start", "--port", str(port), "--data-dir", str(data_dir)]) == 0
        assert "already running" in capsys.readouterr().out
        assert cli.main(["kafka", "status", "--port", str(port), "--data-dir", str(data_dir)]) == 0
        assert f"running on 127.0.0.1:{port} (pid {info.pid}" in capsys.readouterr().out

        # Both brokers serve clients at the same time.
        kafka_broker.wait_until_ready(info.bootstrap_servers, timeout_s=10)
        kafka_broker.wait_until_ready(kafka_bootstrap, timeout_s=10)
    finally:
        assert kafka_broker.stop_broker(port, data_dir) is True
    assert kafka_broker.broker_status(port, data_dir) is None
    assert not (data_dir / "broker.pid").exists()
    assert cli.main(["kafka", "status", "--port", str(port), "--data-dir", str(data_dir)]) == 3
    assert "stopped" in capsys.readouterr().out
    assert cli.main(["kafka", "stop", "--port", str(port), "--data-dir", str(data_dir)]) == 0
    assert "was not running" in capsys.readouterr().out
    kafka_broker.wait_until_ready(kafka_bootstrap, timeout_s=10)  # the session broker is untouched


def test_start_refuses_a_port_held_by_another_process(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port_pair()
    for held in (port, port + 1):  # the client port and the controller port both matter
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", held))
            blocker.listen()
            with pytest.raises(kafka_broker.KafkaLocalError, match=f"port {held} is already in use"):
                kafka_broker.start_broker(port, tmp_path / "blocked")
            assert cli.main(["kafka", "start", "--port", str(port),
                             "--data-dir", str(tmp_path / "blocked")]) == 1
            assert "already in use" in capsys.readouterr().err
    assert not (tmp_path / "blocked" / "broker.pid").exists()  # no JVM was started


def test_start_names_the_broker_that_holds_the_port(kafka_bootstrap: str, tmp_path: Path) -> None:
    if not kafka_bootstrap.startswith("127.0.0.1:"):
        pytest.skip("needs the session broker started by the fixture")
    port = int(kafka_bootstrap.rsplit(":", 1)[1])
    with pytest.raises(kafka_broker.KafkaLocalError, match=r"used by the Kafka broker with .*server\.properties"):
        kafka_broker.start_broker(port, tmp_path / "other")


def test_stop_and_status_of_a_broker_that_never_ran(tmp_path: Path) -> None:
    assert kafka_broker.stop_broker(free_port_pair(), tmp_path / "never") is False
    assert kafka_broker.broker_status(free_port_pair(), tmp_path / "never") is None


def test_missing_jars_say_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_broker.paths, "KAFKA_JARS_DIR", tmp_path / "empty")
    with pytest.raises(kafka_broker.KafkaLocalError, match="scripts/setup.sh"):
        kafka_broker.start_broker(free_port_pair(), tmp_path / "data")


# --------------------------------------------------------------------------- topics

def _topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    with KafkaAdminClient(bootstrap_servers=bootstrap) as admin:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics], config_filter="all")
    return {t: {k: v["value"] for k, v in configs.items()} for t, configs in described["topic"].items()}


def _partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    with KafkaAdminClient(bootstrap_servers=bootstrap) as admin:
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(topics)}


def test_topics_create_makes_every_topic_once(kafka_bootstrap: str,
                                              topic_names_factory: Callable[..., TopicNames],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    names = topic_names_factory(create=False)
    cfg = load_config(overrides=[f'kafka.bootstrap_servers="{kafka_bootstrap}"', "kafka.partitions=2",
                                 "privacy.compaction_max_lag_ms=3600000",
                                 *(f'topics.{f}="{getattr(names, f)}"' for f in vars(names))],
                      environ={})
    assert create_topics(cfg) == 0
    assert "10 created, 0 already existed" in capsys.readouterr().out

    topics = names.all_topics()
    # item-model-updates has one partition whatever the count: it is read by one source subtask
    # and broadcast to every user-operator subtask, and one partition keeps the updates in order
    assert _partition_counts(kafka_bootstrap, topics) == {
        t: 1 if t == names.item_model else 2 for t in topics}
    configs = _topic_configs(kafka_bootstrap, topics)
    for topic in topics:
        expected = "compact" if topic in names.compacted_topics() else "delete"
        assert configs[topic]["cleanup.policy"] == expected, topic
    assert configs[names.events_dlq]["retention.ms"] == str(DLQ_RETENTION_MS)
    for topic in names.compacted_topics():  # erased users' values go within a bounded time
        assert configs[topic]["max.compaction.lag.ms"] == str(cfg.privacy.compaction_max_lag_ms)
        assert configs[topic]["delete.retention.ms"] == str(cfg.privacy.tombstone_retention_ms)

    assert create_topics(cfg) == 0  # idempotent
    assert "0 created, 10 already existed" in capsys.readouterr().out


def test_topics_create_reports_an_unreachable_broker(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "BOOTSTRAP_TIMEOUT_MS", 1000)
    cfg = load_config(overrides=[f'kafka.bootstrap_servers="127.0.0.1:{free_port_pair()}"'], environ={})
    assert create_topics(cfg) == 1
    assert "is the broker running" in capsys.readouterr().err


def test_topic_names_fixture_isolates_tests(topic_names: TopicNames, engine_config: EngineConfig) -> None:
    assert engine_config.topics == topic_names
    assert all(t.rsplit("-", 1)[1] == topic_names.user_events.rsplit("-", 1)[1]
               for t in topic_names.all_topics())
    assert engine_config.kafka.starting_offsets == "earliest"
    assert engine_config.kafka.group_id.startswith("test-")


# --------------------------------------------------------------------------- produce / consume

def test_produce_json_and_consume_round_trip(kafka_bootstrap: str, topic_names: TopicNames) -> None:
    topic = topic_names.user_events
    events = [{"user_id": f"u{i}", "item_id": f"i{i}", "n": i, "text": "ünïcode"} for i in range(3)]
    assert produce_json(kafka_bootstrap, topic, events, key_field="user_id") == 3
    with json_producer(kafka_bootstrap) as producer:  # a tombstone and a record that is not JSON
        producer.send(topic, key="u9", value=None)
        producer.send(topic, key=None, value=b"{not json")
        producer.flush()

    records = consume(kafka_bootstrap, topic, until=lambda rs: len(rs) >= 5, timeout_s=15)
    assert [r["value"] for r in records] == [*events, None, "{not json"]
    assert [r["key"] for r in records] == ["u0", "u1", "u2", "u9", None]
    assert [r["offset"] for r in records] == [0, 1, 2, 3, 4]
    assert all(r["topic"] == topic and r["partition"] == 0 and r["timestamp"] > 0 for r in records)

    assert len(consume(kafka_bootstrap, [topic], max_records=2, timeout_s=15)) == 2
    assert consume(kafka_bootstrap, topic, from_beginning=False, timeout_s=0.5) == []


def test_consume_reads_only_committed_transactions(kafka_bootstrap: str, topic_names: TopicNames) -> None:
    topic = topic_names.recommendations
    with json_producer(kafka_bootstrap, transactional_id=f"test-{topic}") as producer:
        producer.init_transactions()
        for key, commit in (("aborted", False), ("committed", True), ("open", None)):
            producer.begin_transaction()
            producer.send(topic, key=key, value={"state": key})
            producer.flush()
            if commit is True:
                producer.commit_transaction()
            elif commit is False:
                producer.abort_transaction()

        # "open" is still in flight: read_committed stops at it, read_uncommitted does not.
        committed = consume(kafka_bootstrap, topic, timeout_s=1.5)
        assert [r["key"] for r in committed] == ["committed"]
        uncommitted = consume(kafka_bootstrap, topic, read_committed=False,
                              until=lambda rs: len(rs) >= 3, timeout_s=10)
        assert [r["key"] for r in uncommitted] == ["aborted", "committed", "open"]

        producer.commit_transaction()
    after = consume(kafka_bootstrap, topic, until=lambda rs: len(rs) >= 2, timeout_s=10)
    assert [r["key"] for r in after] == ["committed", "open"]


def test_consume_of_a_missing_topic_fails_clearly(kafka_bootstrap: str) -> None:
    with pytest.raises(LookupError, match="no-such-topic"):
        consume(kafka_bootstrap, "no-such-topic", timeout_s=0.5)


# --------------------------------------------------------------------------- tail

def test_tail_prints_key_and_compact_json(engine_config: EngineConfig) -> None:
    topic = engine_config.topics.user_profiles
    produce_json(engine_config.kafka.bootstrap_servers, topic,
                 [{"user_id": "u1", "segments": ["new"]}, {"user_id": "u2", "n": 2}], key_field="user_id")
    out = io.StringIO()
    assert tail(engine_config, "user_profiles", from_beginning=True, max_records=2, out=out) == 0
    assert out.getvalue().splitlines() == ['u1\t{"user_id":"u1","segments":["new"]}',
                                           'u2\t{"user_id":"u2","n":2}']
    out = io.StringIO()  # the literal topic name works too
    assert tail(engine_config, topic, from_beginning=True, max_records=1, out=out) == 0
    assert out.getvalue().startswith("u1\t")


def test_tail_of_an_unknown_topic_exits_1(engine_config: EngineConfig, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tail_module, "TOPIC_WAIT_S", 0.5)
    assert tail(engine_config, "no-such-topic", max_records=1) == 1
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- client properties

def test_client_kwargs_maps_java_properties() -> None:
    cfg = load_config(overrides=['kafka.client_properties={"security.protocol"="SASL_SSL", '
                                 '"sasl.mechanism"="PLAIN", "ssl.cafile"="/etc/ca.pem", '
                                 '"sasl.jaas.config"="org.apache.kafka.common.security.plain.'
                                 'PlainLoginModule required username=\\"u\\" password=\\"p\\";"}'],
                      environ={})
    assert client_kwargs(cfg.kafka) == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "ssl_cafile": "/etc/ca.pem",
        "sasl_plain_username": "u", "sasl_plain_password": "p"}
    assert client_kwargs(load_config(environ={}).kafka) == {}
