"""A local single-node Apache Kafka broker (KRaft, combined broker + controller).

``make run`` and the integration tests need a real broker but no Docker and no system install:
the broker jars are fetched by ``scripts/setup.sh`` into ``.cache/jars/kafka`` and run here with
``java -cp 'DIR/*' kafka.Kafka``. Each broker owns one data directory (its KRaft metadata, logs,
``server.properties``, ``broker.log`` and ``broker.pid``) and two ports: ``port`` for clients and
``port + 1`` for the controller, so several brokers can run side by side.

A broker is identified by its data directory: the pid in ``broker.pid`` only counts when that
process really is ``kafka.Kafka`` running this directory's ``server.properties`` (pids get reused).

``start_broker(..., sasl_users={"alice": "secret"})`` makes the client listener SASL_PLAINTEXT
with SCRAM-SHA-256 and SCRAM-SHA-512 (a Python API for tests; ``recsys kafka start`` stays
PLAINTEXT). The users get SCRAM credentials when the data directory is formatted
(``kafka.tools.StorageTool format --add-scram``, KIP-900), together with an internal user for
inter-broker traffic (the transaction coordinator writes its commit markers over the inter-broker
listener even on a single node, so exactly-once sinks need it). The controller listener stays
PLAINTEXT on 127.0.0.1. Passwords never appear on a command line, in a log or in an error
message: the storage tool gets salted SCRAM credentials (computed here) through a 0600 argument
file that is deleted right after, and only the internal user's password is stored, in the
data directory (``inter-broker.secret`` and the 0600 ``server.properties``).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from recsys import paths
from recsys.local.processes import CHILDREN as _CHILDREN, alive as _alive, cmdline as _cmdline
from recsys.local.processes import log_tail as _tail, terminate

HOST = "127.0.0.1"
PID_FILE = "broker.pid"
LOG_FILE = "broker.log"
STDOUT_FILE = "broker.out"  # JVM output that bypasses log4j (crashes, bad flags)
PROPERTIES_FILE = "server.properties"
LOG4J_FILE = "log4j2.properties"
HEAP = "-Xmx512m"
STOP_TIMEOUT_S = 30.0

# SASL/SCRAM (start_broker(sasl_users=...)).
SASL_LISTENER = "SASL_PLAINTEXT"  # listener name = security protocol of the client listener
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_ITERATIONS = 4096  # Kafka's default and minimum
INTER_BROKER_USER = "recsys-inter-broker"
INTER_BROKER_SECRET_FILE = "inter-broker.secret"
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
# flink-sql-connector-kafka relocates kafka-clients under this package: the job's
# sasl.jaas.config must name the relocated login module, plain Java clients the original one.
FLINK_CONNECTOR_SHADE_PREFIX = "org.apache.flink.kafka.shaded."
# A SCRAM user name goes into `--add-scram name=...` (split on ',') and JAAS options (quoted).
_USER_NAME = re.compile(r"[A-Za-z0-9._@-]{1,128}")
# During start-up, authentication failures only count as final after this long.
AUTH_GRACE_S = 5.0



class KafkaLocalError(RuntimeError):
    """The local broker could not be started, stopped or reached; the message says why."""


@dataclass(frozen=True)
class BrokerInfo:
    port: int
    data_dir: Path
    pid: int
    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"  # of the client listener: PLAINTEXT or SASL_PLAINTEXT


@dataclass(frozen=True)
class ScramCredentials:
    """A SCRAM user as a client uses it; the password is kept out of repr() and str()."""

    username: str
    password: str = field(repr=False)
    mechanism: str = "SCRAM-SHA-256"

    def client_kwargs(self) -> dict[str, Any]:
        """kafka-python keyword arguments (the Python tools, tests, ``ensure_topics``)."""
        return {"security_protocol": SASL_LISTENER, "sasl_mechanism": self.mechanism,
                "sasl_plain_username": self.username, "sasl_plain_password": self.password}

    def jaas_config(self, login_module: str = SCRAM_LOGIN_MODULE) -> str:
        return (f'{login_module} required username="{_jaas_quote(self.username)}" '
                f'password="{_jaas_quote(self.password)}";')

    def client_properties(self, shaded: bool = True) -> dict[str, str]:
        """Java client properties: ``kafka.client_properties`` of the job (``shaded=True``: the
        login module relocated inside the Flink Kafka connector jar) or of a plain Java client
        (``shaded=False``). ``recsys.kafka_io.client_kwargs`` reads them back for kafka-python."""
        module = (FLINK_CONNECTOR_SHADE_PREFIX if shaded else "") + SCRAM_LOGIN_MODULE
        return {"security.protocol": SASL_LISTENER, "sasl.mechanism": self.mechanism,
                "sasl.jaas.config": self.jaas_config(module)}


def _jaas_quote(value: str) -> str:
    """Escape for a double-quoted JAAS option value (Java's StreamTokenizer unescapes it)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


# --------------------------------------------------------------------------- locations

def default_data_dir(port: int) -> Path:
    """``var/kafka-PORT``: one directory per port, so default brokers never share state."""
    return paths.VAR_DIR / f"kafka-{port}"


def resolve_data_dir(port: int, data_dir: str | os.PathLike | None) -> Path:
    """Absolute, symlink-free path: the broker is identified by it, so it must be canonical."""
    return Path(data_dir or default_data_dir(port)).expanduser().resolve()


def _classpath() -> str:
    jars_dir = paths.KAFKA_JARS_DIR
    if not any(jars_dir.glob("kafka_*.jar")):
        raise KafkaLocalError(f"the Kafka broker jars are missing from {jars_dir}; "
                              "run `bash scripts/setup.sh` (or `make setup`) first")
    return f"{jars_dir}/*"


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home, "bin", "java") if java_home else None
    if candidate and candidate.is_file():
        return str(candidate)
    found = shutil.which("java")
    if not found:
        raise KafkaLocalError("java is not on PATH; the local Kafka broker needs Java 17 or newer")
    return found


# --------------------------------------------------------------------------- configuration files

def server_properties(port: int, data_dir: Path, inter_broker_password: str | None = None) -> str:
    """Single-node KRaft settings; replication factors of 1 because there is one broker.

    With ``inter_broker_password`` the client listener (also the inter-broker one) is
    SASL_PLAINTEXT with SCRAM, authenticating inter-broker traffic as ``INTER_BROKER_USER``.
    """
    controller = port + 1
    client = SASL_LISTENER if inter_broker_password is not None else "PLAINTEXT"
    lines = [
        "# Written by recsys.local.kafka_broker on every start; edits are overwritten.",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{HOST}:{controller}",
        f"listeners={client}://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
        f"advertised.listeners={client}://{HOST}:{port}",
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={client}",
        f"listener.security.protocol.map={client}:{client},CONTROLLER:PLAINTEXT",
    ]
    if inter_broker_password is not None:
        admin = ScramCredentials(INTER_BROKER_USER, inter_broker_password, SCRAM_MECHANISMS[0])
        lines += [
            f"sasl.enabled.mechanisms={','.join(SCRAM_MECHANISMS)}",
            f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISMS[0]}",
            # One JAAS entry per enabled mechanism of the listener; the broker uses the
            # inter-broker mechanism's entry for its own connections (as INTER_BROKER_USER).
            *(f"listener.name.{client.lower()}.{m.lower()}.sasl.jaas.config={admin.jaas_config()}"
              for m in SCRAM_MECHANISMS),
        ]
    return "\n".join(lines + [
        f"log.dirs={data_dir / 'logs'}",
        "num.partitions=1",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",  # faster first consumer-group use on a dev broker
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=1",
        "transaction.max.timeout.ms=900000",
        "group.initial.rebalance.delay.ms=0",
        "log.cleaner.backoff.ms=1000",
        "",
    ])


def log4j2_properties(data_dir: Path) -> str:
    """INFO to ``broker.log`` only: the broker runs detached, so stdout would be lost or noisy."""
    log = data_dir / LOG_FILE
    return "\n".join([
        "status = warn",
        "name = recsys-local-kafka",
        "appender.file.type = RollingFile",
        "appender.file.name = FILE",
        f"appender.file.fileName = {log}",
        f"appender.file.filePattern = {log}.%i",
        "appender.file.layout.type = PatternLayout",
        "appender.file.layout.pattern = [%d] %p %m (%c)%n",
        "appender.file.policies.type = Policies",
        "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
        "appender.file.policies.size.size = 50MB",
        "appender.file.strategy.type = DefaultRolloverStrategy",
        "appender.file.strategy.max = 2",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.file.ref = FILE",
        "logger.request.name = kafka.request.logger",
        "logger.request.level = WARN",
        "",
    ])


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (0600 from the start, no window)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _write_config(port: int, data_dir: Path, inter_broker_password: str | None = None) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / LOG4J_FILE).write_text(log4j2_properties(data_dir))
    props = data_dir / PROPERTIES_FILE
    if inter_broker_password is None:
        props.write_text(server_properties(port, data_dir))
    else:  # holds the inter-broker user's password
        _write_private(props, server_properties(port, data_dir, inter_broker_password))
    return props


# --------------------------------------------------------------------------- SASL/SCRAM users

def _check_sasl_users(sasl_users: Mapping[str, str]) -> dict[str, str]:
    """The users as a plain dict; KafkaLocalError (naming no password) when one is unusable."""
    users = dict(sasl_users)
    if not users:
        raise KafkaLocalError("sasl_users is empty: give at least one user, or None for PLAINTEXT")
    for name, password in users.items():
        if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
            raise KafkaLocalError(f"SASL user name {name!r} is not allowed: use 1-128 characters "
                                  "of letters, digits and . _ @ -")
        if name == INTER_BROKER_USER:
            raise KafkaLocalError(f"SASL user name {name!r} is reserved for inter-broker traffic")
        if not isinstance(password, str) or not password:
            raise KafkaLocalError(f"the password of SASL user {name!r} must be a non-empty string")
    return users


def scram_credential_argument(mechanism: str, name: str, password: str,
                              iterations: int = SCRAM_ITERATIONS, salt: bytes | None = None) -> str:
    """``--add-scram`` value with a salted password instead of the password itself.

    SaltedPassword = PBKDF2-HMAC(password as UTF-8, salt, iterations) as in Kafka's
    ScramFormatter, so the storage tool never sees the password (and a password may contain
    any character, including the ',' and ']' the tool's parser splits on).
    """
    digest = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[mechanism]
    salt = salt if salt is not None else os.urandom(24)
    salted = hashlib.pbkdf2_hmac(digest, password.encode("utf-8"), salt, iterations)
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return (f"{mechanism}=[name={name},iterations={iterations},"
            f"salt={b64(salt)},saltedpassword={b64(salted)}]")


def inter_broker_credentials(data_dir: str | os.PathLike) -> ScramCredentials | None:
    """The internal SCRAM user of a SASL broker's data directory (None if it never had one).

    ``recsys`` code uses it for readiness checks and user management; it is an admin-like
    identity of that local broker, not something to hand to applications.
    """
    try:
        password = (Path(data_dir) / INTER_BROKER_SECRET_FILE).read_text().strip()
    except OSError:
        return None
    return ScramCredentials(INTER_BROKER_USER, password, SCRAM_MECHANISMS[0]) if password else None


def _new_inter_broker_password(data_dir: Path) -> str:
    password = secrets.token_urlsafe(24)  # no characters that need escaping anywhere
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_private(data_dir / INTER_BROKER_SECRET_FILE, password + "\n")
    return password


def _redact(text: str, hidden: list[str]) -> str:
    for secret in hidden:
        if secret:
            text = text.replace(secret, "***")
    return text


def _sync_sasl_users(bootstrap: str, admin: ScramCredentials, users: Mapping[str, str],
                     timeout_s: float = 30.0) -> None:
    """Make the broker's SCRAM users exactly ``users`` (+ the internal one), for a data directory
    formatted earlier with other users or passwords (AlterUserScramCredentials)."""
    from kafka import KafkaAdminClient
    from kafka.admin import UserScramCredentialDeletion, UserScramCredentialUpsertion

    ms = int(timeout_s * 1000)
    with KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=ms, request_timeout_ms=ms,
                          client_id="recsys-local-users", **admin.client_kwargs()) as client:
        existing = client.describe_user_scram_credentials()
        changes: list[Any] = [UserScramCredentialUpsertion(name, mechanism, password,
                                                           iterations=SCRAM_ITERATIONS)
                              for name, password in users.items() for mechanism in SCRAM_MECHANISMS]
        for name, description in existing.items():
            if name not in users and name != INTER_BROKER_USER:
                changes += [UserScramCredentialDeletion(name, info["mechanism"])
                            for info in description["credential_infos"]]
        errors: dict[str, str] = {}
        for change in changes:  # the broker refuses two changes of one user in one request
            errors.update((user, error) for user, error
                          in client.alter_user_scram_credentials([change]).items() if error)
    if errors:
        raise KafkaLocalError(f"updating the SCRAM users of the broker at {bootstrap} failed: "
                              + "; ".join(f"{user}: {error}" for user, error in sorted(errors.items())))


def random_cluster_id() -> str:
    """Kafka's Uuid.randomUuid() format (base64url, 22 chars) without starting a JVM.

    Like Kafka, avoid ids starting with '-' (they would read as a command-line option).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _jvm_base(data_dir: Path) -> list[str]:
    return [_java(), f"-Dlog4j2.configurationFile={data_dir / LOG4J_FILE}",
            "-Djava.awt.headless=true", "-cp", _classpath()]


def _is_formatted(data_dir: Path) -> bool:
    return (data_dir / "logs" / "meta.properties").is_file()


def _format_storage(props: Path, data_dir: Path, scram_users: Mapping[str, str] | None = None) -> None:
    """Format the KRaft metadata log once; a formatted directory keeps its cluster id.

    ``scram_users`` (name -> password) get SCRAM credentials for every mechanism in the bootstrap
    metadata. They reach the storage tool salted, through an ``@argument-file`` readable by the
    owner only and deleted right after, never on the command line (visible in ``ps``).
    """
    if _is_formatted(data_dir):
        return
    cmd = _jvm_base(data_dir)
    cmd[1:1] = ["-XX:TieredStopAtLevel=1", "-Xshare:auto"]  # a short-lived JVM: start fast
    cmd += ["kafka.tools.StorageTool", "format", "--ignore-formatted",
            "-t", random_cluster_id(), "-c", str(props)]
    hidden = list((scram_users or {}).values())
    args_file = data_dir / ".format-scram.args"
    if scram_users:
        arguments = [scram_credential_argument(mechanism, name, password)
                     for name, password in scram_users.items() for mechanism in SCRAM_MECHANISMS]
        hidden += [a.rsplit("saltedpassword=", 1)[1].rstrip("]") for a in arguments]
        # argparse4j (StorageTool's parser, fromFilePrefix '@') reads one argument per line.
        _write_private(args_file, "".join(f"--add-scram\n{a}\n" for a in arguments))
        cmd.append(f"@{args_file}")
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=data_dir)
    finally:
        args_file.unlink(missing_ok=True)
    if result.returncode != 0:
        output = _redact(f"{result.stdout}{result.stderr}", hidden)
        raise KafkaLocalError(f"formatting the broker storage in {data_dir} failed "
                              f"(exit {result.returncode}):\n{output}")


# --------------------------------------------------------------------------- processes


def _properties_of(pid: int) -> Path | None:
    """The server.properties a ``kafka.Kafka`` process runs with (None for other processes)."""
    args = _cmdline(pid)
    if "kafka.Kafka" not in args or args[-1] == "kafka.Kafka":
        return None
    props = Path(args[-1])
    if not props.is_absolute():
        try:
            props = Path(os.readlink(f"/proc/{pid}/cwd")) / props
        except OSError:
            return None
    return Path(os.path.normpath(props))


def _kafka_processes() -> Iterator[tuple[int, Path]]:
    """Every local ``kafka.Kafka`` JVM with its properties file (Linux /proc; empty elsewhere)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if entry.name.isdigit():
            props = _properties_of(int(entry.name))
            if props is not None:
                yield int(entry.name), props



def _is_our_broker(pid: int, data_dir: Path) -> bool:
    if not _alive(pid):
        return False
    props = _properties_of(pid)
    if props is None and not Path("/proc").is_dir():
        return True  # no /proc to check against: trust the pid file
    return props == data_dir / PROPERTIES_FILE


def _read_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _running_pid(data_dir: Path) -> int | None:
    """The pid of the broker of ``data_dir``, from the pid file or, if that is lost, from /proc."""
    pid = _read_pid(data_dir)
    if pid is not None and _is_our_broker(pid, data_dir):
        return pid
    for other_pid, props in _kafka_processes():
        if props == data_dir / PROPERTIES_FILE and _alive(other_pid):
            return other_pid
    return None


def _configured_port(data_dir: Path) -> int | None:
    return _listener_port(data_dir / PROPERTIES_FILE)


def _client_listener(props: Path) -> tuple[str, int] | None:
    """(name, port) of the client listener (the one that is not CONTROLLER) in ``props``."""
    try:
        text = props.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "listeners":
            for listener in value.split(","):
                name, sep, address = listener.strip().partition("://")
                port = address.rsplit(":", 1)[-1]
                if sep and name != "CONTROLLER" and port.isdigit():
                    return name, int(port)
    return None


def _listener_port(props: Path) -> int | None:
    listener = _client_listener(props)
    return listener[1] if listener else None


def _configured_protocol(data_dir: Path) -> str:
    listener = _client_listener(data_dir / PROPERTIES_FILE)
    return listener[0] if listener else "PLAINTEXT"


def _port_in_use(port: int) -> bool:
    """Whether binding ``HOST:port`` fails; SO_REUSEADDR so TIME_WAIT leftovers don't count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def _check_ports_free(port: int, data_dir: Path) -> None:
    """Fail early with who holds the port, instead of a JVM bind error buried in broker.log."""
    if not 0 < port < 65535:
        raise KafkaLocalError(f"port {port} is out of range (the controller needs port+1 too)")
    taken = [p for p in (port, port + 1) if _port_in_use(p)]
    if not taken:
        return
    owners = []
    for pid, props in _kafka_processes():
        other = _listener_port(props)
        if other is not None and {other, other + 1} & set(taken):
            owners.append(f"the Kafka broker with {props} (pid {pid})")
    who = "; it is used by " + ", ".join(owners) if owners else \
        f" by another process (see `ss -ltnp | grep {taken[0]}`)"
    held = f"ports {port} and {port + 1} are" if len(taken) == 2 else f"port {taken[0]} is"
    raise KafkaLocalError(
        f"cannot start a broker for {data_dir} on port {port}: {held} already in use{who}. "
        f"The broker needs ports {port} (clients) and {port + 1} (controller); "
        "pick another --port or stop what holds them.")


def _diagnostics(data_dir: Path) -> str:
    text = f"--- last lines of {data_dir / LOG_FILE}:\n{_tail(data_dir / LOG_FILE, 30)}"
    out = data_dir / STDOUT_FILE
    if out.is_file() and out.stat().st_size:
        text += f"\n--- last lines of {out}:\n{_tail(out, 15)}"
    return text


def _launch(props: Path, data_dir: Path) -> int:
    cmd = _jvm_base(data_dir)
    cmd[1:1] = [HEAP, "-XX:+ExitOnOutOfMemoryError"]
    cmd += ["kafka.Kafka", str(props)]
    with open(data_dir / STDOUT_FILE, "ab") as out:
        child = subprocess.Popen(cmd, cwd=data_dir, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[child.pid] = child
    (data_dir / PID_FILE).write_text(f"{child.pid}\n")
    return child.pid


# --------------------------------------------------------------------------- readiness

def _tcp_open(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or HOST, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _metadata_ok(bootstrap: str, timeout_s: float) -> bool:
    from kafka import KafkaAdminClient  # imported late: `recsys kafka status` stays fast

    ms = max(1000, int(timeout_s * 1000))
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=ms,
                                 request_timeout_ms=max(ms, 5000), client_id="recsys-ready-check")
    except Exception:  # noqa: BLE001 - any failure just means "not ready yet"
        return False
    try:
        admin.list_topics()
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        admin.close()


def _sasl_metadata_error(bootstrap: str, timeout_s: float,
                         credentials: ScramCredentials) -> tuple[str, bool] | None:
    """None when a SASL-authenticated metadata request succeeds, else (reason, auth_failed).

    Uses the job's own pre-flight (``kafka_io.check_connection``), which reports a refused login
    at once instead of retrying it until its timeout; its messages never contain the password.
    """
    from kafka.errors import (IllegalSaslStateError, SaslAuthenticationFailedError,
                              UnsupportedSaslMechanismError)

    from state_schemas.config import KafkaConfig
    from recsys.kafka_io import KafkaUnavailable, check_connection

    cfg = KafkaConfig(bootstrap_servers=bootstrap,
                      client_properties=credentials.client_properties(shaded=False))
    try:
        check_connection(cfg, timeout_s=max(1.0, timeout_s))
    except KafkaUnavailable as e:
        auth = isinstance(e.__cause__, (SaslAuthenticationFailedError, IllegalSaslStateError,
                                        UnsupportedSaslMechanismError))
        return str(e), auth
    return None


def wait_until_ready(bootstrap: str, timeout_s: float = 60.0,
                     alive: Callable[[], bool] | None = None,
                     credentials: ScramCredentials | None = None) -> None:
    """Block until the broker answers a metadata request; ``alive`` lets us stop waiting early
    when the broker process has already died. Raises KafkaLocalError on timeout.

    ``credentials``: log in with SASL/SCRAM (a broker started with ``sasl_users``). A login that
    keeps being refused for ``AUTH_GRACE_S`` fails at once, saying so (and naming the user,
    never the password).
    """
    deadline = time.monotonic() + timeout_s
    last_error: str | None = None
    refused_since: float | None = None
    while True:
        if alive is not None and not alive():
            raise KafkaLocalError(f"the broker at {bootstrap} exited during start-up")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            detail = f"; last error: {last_error}" if last_error else ""
            raise KafkaLocalError(f"the broker at {bootstrap} did not answer within {timeout_s:.0f} s"
                                  f"{detail}")
        # A plain TCP probe first: the Kafka client would log a warning per refused connection.
        if _tcp_open(bootstrap):
            if credentials is None:
                if _metadata_ok(bootstrap, min(remaining, 5.0)):
                    return
            else:
                failure = _sasl_metadata_error(bootstrap, min(remaining, 5.0), credentials)
                if failure is None:
                    return
                last_error, auth_failed = failure
                if not auth_failed:
                    refused_since = None
                elif refused_since is None:
                    refused_since = time.monotonic()
                elif time.monotonic() - refused_since >= AUTH_GRACE_S:
                    raise KafkaLocalError(
                        f"the broker at {bootstrap} refused SASL user {credentials.username!r} "
                        f"({credentials.mechanism}): authentication failed ({last_error})")
        time.sleep(0.2)


# --------------------------------------------------------------------------- public API

def broker_status(port: int = 9092, data_dir: str | os.PathLike | None = None) -> BrokerInfo | None:
    """The running broker of ``data_dir`` (default ``var/kafka-PORT``), or None.

    The reported port is the one it really listens on, read from its server.properties.
    """
    ddir = resolve_data_dir(port, data_dir)
    pid = _running_pid(ddir)
    if pid is None:
        return None
    actual = _configured_port(ddir) or port
    return BrokerInfo(port=actual, data_dir=ddir, pid=pid, bootstrap_servers=f"{HOST}:{actual}",
                      security_protocol=_configured_protocol(ddir))


def _describe_protocol(protocol: str) -> str:
    return "SASL_PLAINTEXT (SCRAM)" if protocol == SASL_LISTENER else "PLAINTEXT"


def start_broker(port: int = 9092, data_dir: str | os.PathLike | None = None,
                 timeout_s: float = 60.0,
                 sasl_users: Mapping[str, str] | None = None) -> BrokerInfo:
    """Start the broker detached and return once it accepts clients (idempotent).

    The JVM gets its own session, so Ctrl-C in the terminal that started it does not stop it;
    ``stop_broker`` (``recsys kafka stop``) does.

    ``sasl_users`` (user name -> password): the client listener on ``port`` is SASL_PLAINTEXT
    and accepts exactly these users with SCRAM-SHA-256 or SCRAM-SHA-512 (clients: see
    ``ScramCredentials``). They are created when the data directory is formatted; a data
    directory formatted by an earlier SASL start gets its users replaced by these through the
    admin API. A directory first formatted without SASL cannot become a SASL broker (it lacks
    the inter-broker user): use a new one. Without ``sasl_users`` the listener is PLAINTEXT.
    """
    ddir = resolve_data_dir(port, data_dir)
    _classpath(), _java()  # fail on missing jars or java before touching anything
    users = _check_sasl_users(sasl_users) if sasl_users is not None else None
    wanted = SASL_LISTENER if users is not None else "PLAINTEXT"
    running = broker_status(port, ddir)
    if running is not None:
        if running.port != port:
            raise KafkaLocalError(f"the broker of {ddir} is already running on port {running.port} "
                                  f"(pid {running.pid}); stop it or use another --data-dir")
        if running.security_protocol != wanted:
            raise KafkaLocalError(
                f"the broker of {ddir} is already running on port {port} (pid {running.pid}) with "
                f"{_describe_protocol(running.security_protocol)} clients, not "
                f"{_describe_protocol(wanted)}; stop it first")
        admin = inter_broker_credentials(ddir) if users is not None else None
        wait_until_ready(running.bootstrap_servers, timeout_s, alive=lambda: _alive(running.pid),
                         credentials=admin)
        if users is not None and admin is not None:
            _sync_sasl_users(running.bootstrap_servers, admin, users)
        return running
    _check_ports_free(port, ddir)
    (ddir / PID_FILE).unlink(missing_ok=True)
    admin = None
    formatted_before = _is_formatted(ddir)
    if users is not None:
        admin = inter_broker_credentials(ddir)
        if admin is None:
            if formatted_before:
                raise KafkaLocalError(
                    f"{ddir} was formatted for a PLAINTEXT broker and has no inter-broker SCRAM "
                    "user; SASL users are created when a data directory is first formatted, so "
                    "use a new data directory for a SASL broker")
            admin = ScramCredentials(INTER_BROKER_USER, _new_inter_broker_password(ddir),
                                     SCRAM_MECHANISMS[0])
    props = _write_config(port, ddir, admin.password if admin else None)
    _format_storage(props, ddir, None if users is None else {**users, admin.username: admin.password})
    pid = _launch(props, ddir)
    info = BrokerInfo(port=port, data_dir=ddir, pid=pid, bootstrap_servers=f"{HOST}:{port}",
                      security_protocol=wanted)
    try:
        wait_until_ready(info.bootstrap_servers, timeout_s, alive=lambda: _alive(pid), credentials=admin)
        if users is not None and formatted_before:
            _sync_sasl_users(info.bootstrap_servers, admin, users)
    except KafkaLocalError as e:
        _terminate(pid, STOP_TIMEOUT_S)  # don't leave a half-started JVM holding the ports
        (ddir / PID_FILE).unlink(missing_ok=True)
        hidden = [admin.password] if admin else []
        hidden += list(users.values()) if users else []
        raise KafkaLocalError(_redact(f"{e}\n{_diagnostics(ddir)}", hidden)) from None
    return info


def _terminate(pid: int, timeout_s: float) -> None:
    if not terminate(pid, timeout_s):
        raise KafkaLocalError(f"broker pid {pid} survived SIGKILL")


def stop_broker(port: int = 9092, data_dir: str | os.PathLike | None = None,
                timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the broker of ``data_dir``; True if one was running. Not running is success too."""
    ddir = resolve_data_dir(port, data_dir)
    pid = _running_pid(ddir)
    if pid is None:
        (ddir / PID_FILE).unlink(missing_ok=True)
        return False
    _terminate(pid, timeout_s)
    (ddir / PID_FILE).unlink(missing_ok=True)
    return True


def main(action: str, port: int = 9092, data_dir: str | os.PathLike | None = None) -> int:
    """``recsys kafka start|stop|status``: 0 on success; status exits 3 when stopped."""
    ddir = resolve_data_dir(port, data_dir)
    try:
        if action == "start":
            before = broker_status(port, ddir)
            info = start_broker(port, ddir)
            state = "already running" if before is not None else "started"
            print(f"kafka: broker {state} on {info.bootstrap_servers} "
                  f"(pid {info.pid}, data dir {info.data_dir}, log {info.data_dir / LOG_FILE})")
            return 0
        if action == "stop":
            was_running = stop_broker(port, ddir)
            print(f"kafka: broker {'stopped' if was_running else 'was not running'} "
                  f"(port {port}, data dir {ddir})")
            return 0
        if action == "status":
            info = broker_status(port, ddir)
            if info is None:
                print(f"kafka: stopped (port {port}, data dir {ddir})")
                return 3
            sasl = ", SASL_PLAINTEXT/SCRAM clients" if info.security_protocol == SASL_LISTENER else ""
            print(f"kafka: running on {info.bootstrap_servers} (pid {info.pid}, port {info.port}, "
                  f"data dir {info.data_dir}{sasl})")
            return 0
    except KafkaLocalError as e:
        print(f"kafka: {e}", file=sys.stderr)
        return 1
    print(f"kafka: unknown action {action!r} (start, stop, status)", file=sys.stderr)
    return 2


def free_port_pair() -> int:
    """A port P such that P and P+1 (the controller) are both free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65534:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of consecutive ports found")
