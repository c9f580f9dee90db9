"""Kafka security end to end: a second local broker with SASL/SCRAM beside the session broker.

* the pre-flight (``kafka_io.check_connection``) refuses a wrong password within seconds, with a
  message naming the broker and saying that authentication failed, never the password;
* ``recsys job run`` with a wrong password exits non-zero within seconds instead of hanging;
* with the right credentials (``kafka.client_properties`` with the Flink connector's shaded
  SCRAM login module) the real job consumes events and writes recommendations on that broker;
* the local broker tooling keeps passwords out of its files, logs and error messages.

Credentials reach the job through ``RECSYS__KAFKA__CLIENT_PROPERTIES`` in its environment, not
through ``--set``: a command line is visible to every local user (``ps``).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from recsys import cli, kafka_io

from recsys.local import kafka_broker
from state_schemas.config import KafkaConfig, TopicNames, load_config
from recsys.local.job_process import start_job_process, stop_job_process
from recsys.local.processes import log_tail
from recsys.local.kafka_broker import ScramCredentials
from recsys.paths import PROJECT_ROOT, connector_jars
from recsys.local.topics import ensure_topics
from state_schemas import validator
from recsys.local.stack import suffixed_topic_names, topic_overrides
from tests.conftest import free_port_pair
from tests.integration.conftest import FAST_SETTINGS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = 1_767_225_600_000
SHADED_SCRAM_LOGIN_MODULE = \
    "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule"


def _password(tag: str) -> str:
    # Characters that break naive handling: ',' and ']' (the storage tool's --add-scram parser),
    # '"' and '\' (JAAS quoting), '=' and non-ASCII (SCRAM encoding).
    return f'{tag}-{uuid.uuid4().hex[:12]},]"\\=ä'


@dataclass
class SaslBroker:
    info: kafka_broker.BrokerInfo
    users: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return self.info.bootstrap_servers

    def credentials(self, user: str = "alice", mechanism: str = "SCRAM-SHA-256") -> ScramCredentials:
        return ScramCredentials(user, self.users[user], mechanism)

    def secrets(self) -> list[str]:
        admin = kafka_broker.inter_broker_credentials(self.info.data_dir)
        return [*self.users.values(), *([admin.password] if admin else [])]


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    """A second broker (own ports, own data dir) whose client listener is SASL_PLAINTEXT/SCRAM."""
    port, data_dir = free_port_pair(), tmp_path_factory.mktemp("kafka-sasl")
    users = {"alice": _password("alice"), "bob": _password("bob")}
    started = time.monotonic()
    try:
        info = kafka_broker.start_broker(port, data_dir, timeout_s=120, sasl_users=users)
    except kafka_broker.KafkaLocalError as e:
        pytest.fail(f"could not start the SASL test broker: {e}", pytrace=False)
    print(f"SASL broker started in {time.monotonic() - started:.1f} s")
    try:
        yield SaslBroker(info, users)
    finally:
        kafka_broker.stop_broker(port, data_dir)
    assert kafka_broker.broker_status(port, data_dir) is None


def _toml_table(props: dict[str, str]) -> str:
    # A JSON string (ASCII-escaped) is a valid TOML basic string.
    return "{" + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in props.items()) + "}"


def _job_env(props: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS__")}
    env["RECSYS__KAFKA__CLIENT_PROPERTIES"] = _toml_table(props)
    return env


def _assert_no_secret(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a password appears in {where}"
        assert json.dumps(secret)[1:-1] not in text, f"an escaped password appears in {where}"


# --------------------------------------------------------------------------- no broker needed

def test_scram_arguments_match_kafkas_salted_password() -> None:
    from kafka.admin import UserScramCredentialUpsertion

    salt = b"0123456789abcdef"
    for mechanism in kafka_broker.SCRAM_MECHANISMS:
        arg = kafka_broker.scram_credential_argument(mechanism, "alice", 'p,w]"ä', 4096, salt)
        expected = UserScramCredentialUpsertion("alice", mechanism, 'p,w]"ä', 4096, salt).salted_password
        assert arg == (f"{mechanism}=[name=alice,iterations=4096,salt={base64.b64encode(salt).decode()},"
                       f"saltedpassword={base64.b64encode(expected).decode()}]")
        assert "p,w" not in arg


def test_credentials_hide_the_password_and_round_trip_through_client_kwargs() -> None:
    secret = 'se"cr\\et,]'
    creds = ScramCredentials("alice", secret)
    assert secret not in repr(creds) and secret not in str(creds)
    props = creds.client_properties()
    assert props["sasl.jaas.config"].startswith(SHADED_SCRAM_LOGIN_MODULE + " required ")
    assert creds.client_properties(shaded=False)["sasl.jaas.config"].startswith(
        "org.apache.kafka.common.security.scram.ScramLoginModule required ")
    # The Python tools read the same properties back (JAAS escapes undone).
    assert kafka_io.client_kwargs(KafkaConfig(client_properties=props)) == creds.client_kwargs()
    # ... and so does the job's configuration, from the environment variable the tests use.
    cfg = load_config(environ=_job_env(props))
    assert cfg.kafka.client_properties == props


def test_tls_pem_stores_reach_the_python_tools() -> None:
    """One set of TLS properties serves the job (Java, PEM stores) and the kafka-python tools."""
    props = {"security.protocol": "SASL_SSL", "ssl.truststore.type": "PEM",
             "ssl.truststore.location": "/etc/kafka/ca.pem", "ssl.keystore.type": "PEM",
             "ssl.keystore.location": "/etc/kafka/client.pem", "ssl.key.password": "kp",
             "ssl.endpoint.identification.algorithm": "https",
             **{k: v for k, v in ScramCredentials("alice", "pw", "SCRAM-SHA-512").client_properties().items()
                if k != "security.protocol"}}
    assert kafka_io.client_kwargs(KafkaConfig(client_properties=props)) == {
        "security_protocol": "SASL_SSL", "ssl_cafile": "/etc/kafka/ca.pem",
        "ssl_certfile": "/etc/kafka/client.pem", "ssl_password": "kp", "ssl_check_hostname": True,
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "alice", "sasl_plain_password": "pw"}
    # A JKS truststore has no kafka-python equivalent: not mapped (a warning says so).
    jks = {"security.protocol": "SSL", "ssl.truststore.location": "/etc/kafka/ca.jks"}
    assert kafka_io.client_kwargs(KafkaConfig(client_properties=jks)) == {"security_protocol": "SSL"}


def test_shaded_login_module_is_in_the_connector_jar() -> None:
    import zipfile

    jar = next(j for j in connector_jars() if "kafka" in j.name)
    with zipfile.ZipFile(jar) as z:
        assert SHADED_SCRAM_LOGIN_MODULE.replace(".", "/") + ".class" in z.namelist()
    assert kafka_broker.FLINK_CONNECTOR_SHADE_PREFIX + kafka_broker.SCRAM_LOGIN_MODULE == \
        SHADED_SCRAM_LOGIN_MODULE


def test_unusable_sasl_users_are_refused_before_anything_starts(tmp_path: Path) -> None:
    port = free_port_pair()
    secret = _password("never")
    for users, message in (({}, "empty"), ({"a,b": secret}, "not allowed"), ({"alice": ""}, "non-empty"),
                           ({kafka_broker.INTER_BROKER_USER: secret}, "reserved")):
        with pytest.raises(kafka_broker.KafkaLocalError, match=message) as e:
            kafka_broker.start_broker(port, tmp_path / "never", sasl_users=users)
        _assert_no_secret(str(e.value), [secret], "the error message")
    assert not (tmp_path / "never").exists()
    # A data dir first formatted for PLAINTEXT has no inter-broker user: refused, nothing started.
    formatted = tmp_path / "plain"
    (formatted / "logs").mkdir(parents=True)
    (formatted / "logs" / "meta.properties").write_text("# pretend formatted\n")
    with pytest.raises(kafka_broker.KafkaLocalError, match="formatted for a PLAINTEXT broker"):
        kafka_broker.start_broker(port, formatted, sasl_users={"alice": "pw"})
    assert not (formatted / "broker.pid").exists()


# --------------------------------------------------------------------------- the SASL broker

@pytest.mark.timeout(300)
def test_sasl_broker_status_idempotence_and_no_password_on_disk(
        sasl_broker: SaslBroker, capsys: pytest.CaptureFixture[str]) -> None:
    info = sasl_broker.info
    assert info.security_protocol == "SASL_PLAINTEXT"
    assert kafka_broker.broker_status(info.port, info.data_dir) == info
    capsys.readouterr()
    assert cli.main(["kafka", "status", "--port", str(info.port), "--data-dir", str(info.data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"running on {info.bootstrap_servers} (pid {info.pid}" in out and "SASL_PLAINTEXT" in out

    # A second start with the same users is a no-op returning the same broker; asking for a
    # PLAINTEXT broker on it is an error that says why.
    assert kafka_broker.start_broker(info.port, info.data_dir, sasl_users=sasl_broker.users) == info
    with pytest.raises(kafka_broker.KafkaLocalError, match="SASL_PLAINTEXT .*not PLAINTEXT; stop it first"):
        kafka_broker.start_broker(info.port, info.data_dir)

    # Readiness with credentials: the right ones pass, wrong ones fail fast and say so.
    kafka_broker.wait_until_ready(info.bootstrap_servers, 10, credentials=sasl_broker.credentials())
    kafka_broker.wait_until_ready(info.bootstrap_servers, 10,
                                 credentials=sasl_broker.credentials("bob", "SCRAM-SHA-512"))
    wrong = ScramCredentials("alice", _password("wrong"))
    started = time.monotonic()
    with pytest.raises(kafka_broker.KafkaLocalError, match="authentication failed") as e:
        kafka_broker.wait_until_ready(info.bootstrap_servers, 60, credentials=wrong)
    assert time.monotonic() - started < 20
    assert "'alice'" in str(e.value) and info.bootstrap_servers in str(e.value)
    _assert_no_secret(str(e.value), [wrong.password, *sasl_broker.secrets()], "the error message")

    # Passwords: the users' are nowhere in the data dir (the metadata log holds salted SCRAM
    # credentials only); the inter-broker one only in the two files only the owner can read.
    ddir = info.data_dir
    for name in ("server.properties", kafka_broker.INTER_BROKER_SECRET_FILE):
        assert stat.S_IMODE((ddir / name).stat().st_mode) == 0o600, name
    admin_password = kafka_broker.inter_broker_credentials(ddir).password
    for path in ddir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in sasl_broker.users.values():
                assert secret.encode() not in data, f"a user's password is in {path}"
            if path.name not in ("server.properties", kafka_broker.INTER_BROKER_SECRET_FILE):
                assert admin_password.encode() not in data, f"the inter-broker password is in {path}"
    assert not list(ddir.glob(".format-scram.args"))
    assert "SCRAM" in (ddir / kafka_broker.LOG_FILE).read_text()  # the broker logged its SASL setup


@pytest.mark.timeout(120)
def test_check_connection_refuses_a_wrong_password_quickly(sasl_broker: SaslBroker) -> None:
    bootstrap = sasl_broker.bootstrap
    for creds in (sasl_broker.credentials(), sasl_broker.credentials("bob", "SCRAM-SHA-512")):
        kafka_io.check_connection(KafkaConfig(bootstrap_servers=bootstrap,
                                              client_properties=creds.client_properties()), timeout_s=15)

    for user, password in (("alice", _password("wrong")), ("mallory", sasl_broker.users["alice"])):
        props = ScramCredentials(user, password).client_properties()
        started = time.monotonic()
        with pytest.raises(kafka_io.KafkaUnavailable) as e:
            kafka_io.check_connection(KafkaConfig(bootstrap_servers=bootstrap, client_properties=props),
                                      timeout_s=15)
        elapsed = time.monotonic() - started
        message = str(e.value)
        print(f"check_connection({user}): {elapsed:.1f} s: {message}")
        assert elapsed < 20
        assert bootstrap in message and "authentication failed" in message and repr(user) in message
        _assert_no_secret(message, [password, *sasl_broker.secrets()], "the error message")

    # A mechanism the broker does not offer is named as such.
    props = {**sasl_broker.credentials().client_properties(), "sasl.mechanism": "PLAIN"}
    with pytest.raises(kafka_io.KafkaUnavailable, match="does not offer SASL mechanism PLAIN"):
        kafka_io.check_connection(KafkaConfig(bootstrap_servers=bootstrap, client_properties=props),
                                  timeout_s=15)


@pytest.mark.timeout(120)
def test_recsys_job_run_with_a_wrong_password_exits_with_a_clear_message(
        sasl_broker: SaslBroker, tmp_path: Path) -> None:
    wrong = ScramCredentials("alice", _password("wrong"))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "job", "run", "--bootstrap-servers", sasl_broker.bootstrap],
        cwd=PROJECT_ROOT, env=_job_env(wrong.client_properties()), capture_output=True, text=True,
        timeout=90)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    print(f"recsys job run (wrong password): exit {result.returncode} after {elapsed:.1f} s")
    assert result.returncode != 0, output
    assert elapsed < 30, output
    assert f"Kafka at {sasl_broker.bootstrap} refused" in result.stderr, output
    assert "authentication failed" in result.stderr, output
    _assert_no_secret(output, [wrong.password, *sasl_broker.secrets()], "the job's output")


@pytest.mark.timeout(420)
def test_job_runs_end_to_end_on_the_sasl_broker(sasl_broker: SaslBroker, tmp_path: Path) -> None:
    bootstrap = sasl_broker.bootstrap
    alice = sasl_broker.credentials()
    kwargs = alice.client_kwargs()  # kafka-python: sasl_plain_username/password
    names: TopicNames = suffixed_topic_names()
    created = ensure_topics(bootstrap, names, 1, **kwargs)
    assert sorted(created.created) == sorted(set(names.all_topics()))

    suffix = uuid.uuid4().hex[:8]
    overrides = [f'kafka.bootstrap_servers="{bootstrap}"', 'kafka.starting_offsets="earliest"',
                 f'kafka.group_id="test-{suffix}"', f'kafka.transactional_id_prefix="t{suffix}"',
                 *topic_overrides(names), *FAST_SETTINGS]
    log_path = tmp_path / "job.log"
    # The job's Java clients get the shaded login module (alice.client_properties()).
    props = alice.client_properties()
    assert props["sasl.jaas.config"].startswith(SHADED_SCRAM_LOGIN_MODULE)
    started = time.monotonic()
    process = start_job_process(overrides, log_path, env=_job_env(props))

    def produce(topic: str, records: list[dict], key: str) -> None:
        kafka_io.produce_json(bootstrap, topic, records, key_field=key, **kwargs)

    def consume(topic: str, until, timeout_s: float) -> list[dict]:
        assert process.poll() is None, f"the job exited with {process.returncode}:\n{log_tail(log_path)}"
        return kafka_io.consume(bootstrap, topic, until=until, timeout_s=timeout_s, **kwargs)

    try:
        produce(names.item_catalog, [
            {"item_id": i, "ts": T0 - 100, "title": f"Item {i}", "categories": [c], "tags": [],
             "price": 10.0, "available": True}
            for i, c in (("a", "books"), ("b", "books"), ("c", "music"))], "item_id")
        produce(names.user_attributes, [{"user_id": u, "ts": T0 - 50, "attributes": {"age": 30}}
                                        for u in ("uS", "uT")], "user_id")
        profiles = consume(names.user_profiles, lambda rs: {"uS", "uT"} <= {r["key"] for r in rs}, 180)
        assert {"uS", "uT"} <= {r["key"] for r in profiles}, f"no profiles:\n{log_tail(log_path)}"

        def ev(eid: str, user: str, item: str, dt: int) -> dict:
            return {"event_id": eid, "user_id": user, "item_id": item, "event_type": "purchase",
                    "ts": T0 + dt, "value": None}

        produce(names.user_events, [ev("s1", "uS", "a", 0), ev("s2", "uS", "b", 10),
                                    ev("t1", "uT", "a", 20)], "user_id")

        def answered(rs: list[dict]) -> bool:
            return {"s1", "s2", "t1"} <= {(r["value"] or {}).get("trigger_event_id") for r in rs}

        recs = consume(names.recommendations, answered, 120)
        first = time.monotonic() - started
        by_trigger = {r["value"]["trigger_event_id"]: r["value"] for r in recs if r["value"]}
        assert {"s1", "s2", "t1"} <= set(by_trigger), f"recommendations missing:\n{log_tail(log_path)}"
        assert by_trigger["t1"]["user_id"] == "uT"
        for rec in by_trigger.values():
            validator("recommendation")(rec)

        # Content: ask for uT's recommendations until the catalogue and activity have reached
        # the recommender (broadcast inputs; the first answers may come before them).
        deadline, answer, n = time.monotonic() + 90, None, 0
        while time.monotonic() < deadline and not (answer and answer["items"]):
            n += 1
            produce(names.recommendation_requests,
                    [{"request_id": f"r{n}", "user_id": "uT", "ts": T0 + 100 + n, "k": 3}], "user_id")
            answers = consume(names.recommendations,
                              lambda rs: any((r["value"] or {}).get("request_id") == f"r{n}" for r in rs), 30)
            answer = next((r["value"] for r in answers if (r["value"] or {}).get("request_id") == f"r{n}"),
                          None)
        assert answer and answer["items"], f"no recommended items for uT:\n{log_tail(log_path)}"
        validator("recommendation")(answer)
        ids = [i["item_id"] for i in answer["items"]]
        assert "a" not in ids  # never the item uT just bought
        print(f"SASL job: first recommendations {first:.1f} s after the job started; "
              f"uT -> {ids} (request {n})")
        assert process.poll() is None, log_tail(log_path)
    finally:
        stop_job_process(process)
    _assert_no_secret(log_path.read_text(errors="replace"), sasl_broker.secrets(), "the job log")


@pytest.mark.timeout(300)
def test_restart_with_other_users_replaces_them(sasl_broker: SaslBroker) -> None:
    """Runs last: restarts the module's broker. Users of a formatted data dir are re-synced."""
    info = sasl_broker.info
    assert kafka_broker.stop_broker(info.port, info.data_dir) is True
    users = {"carol": _password("carol")}
    restarted = kafka_broker.start_broker(info.port, info.data_dir, timeout_s=120, sasl_users=users)
    assert restarted.security_protocol == "SASL_PLAINTEXT"
    sasl_broker.info, old_users, sasl_broker.users = restarted, sasl_broker.users, users
    kafka_io.check_connection(KafkaConfig(
        bootstrap_servers=restarted.bootstrap_servers,
        client_properties=ScramCredentials("carol", users["carol"], "SCRAM-SHA-512").client_properties()))
    with pytest.raises(kafka_io.KafkaUnavailable, match="authentication failed"):
        kafka_io.check_connection(KafkaConfig(
            bootstrap_servers=restarted.bootstrap_servers,
            client_properties=ScramCredentials("alice", old_users["alice"]).client_properties()))
