"""A local single-node Apache Kafka broker (KRaft, combined broker + controller).

``make run`` and the integration tests need a real broker but no Docker and no system install:
the broker jars are fetched by ``scripts/setup.sh`` into ``.cache/jars/kafka`` and run here with
``java -cp 'DIR/*' kafka.Kafka``. Each broker owns one data directory (its KRaft metadata, logs,
``server.properties``, ``broker.log`` and ``broker.pid``) and two ports: ``port`` for clients and
``port + 1`` for the controller, so several brokers can run side by side.

A broker is identified by its data directory: the pid in ``broker.pid`` only counts when that
process really is ``kafka.Kafka`` running this directory's ``server.properties`` (pids get reused).
"""

from __future__ import annotations

import base64
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from recsys import paths

HOST = "127.0.0.1"
PID_FILE = "broker.pid"
LOG_FILE = "broker.log"
STDOUT_FILE = "broker.out"  # JVM output that bypasses log4j (crashes, bad flags)
PROPERTIES_FILE = "server.properties"
LOG4J_FILE = "log4j2.properties"
HEAP = "-Xmx512m"
STOP_TIMEOUT_S = 30.0

# Children started by this Python process. Keeping the Popen lets us reap them: a dead child
# that is not waited for stays a zombie, and a zombie still "exists" for os.kill(pid, 0).
_CHILDREN: dict[int, subprocess.Popen] = {}


class KafkaLocalError(RuntimeError):
    """The local broker could not be started, stopped or reached; the message says why."""


@dataclass(frozen=True)
class BrokerInfo:
    port: int
    data_dir: Path
    pid: int
    bootstrap_servers: str


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

def server_properties(port: int, data_dir: Path) -> str:
    """Single-node KRaft settings; replication factors of 1 because there is one broker."""
    controller = port + 1
    return "\n".join([
        "# Written by recsys.kafka_local on every start; edits are overwritten.",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{HOST}:{controller}",
        f"listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
        f"advertised.listeners=PLAINTEXT://{HOST}:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
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


def _write_config(port: int, data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / LOG4J_FILE).write_text(log4j2_properties(data_dir))
    props = data_dir / PROPERTIES_FILE
    props.write_text(server_properties(port, data_dir))
    return props


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


def _format_storage(props: Path, data_dir: Path) -> None:
    """Format the KRaft metadata log once; a formatted directory keeps its cluster id."""
    if (data_dir / "logs" / "meta.properties").is_file():
        return
    cmd = _jvm_base(data_dir)
    cmd[1:1] = ["-XX:TieredStopAtLevel=1", "-Xshare:auto"]  # a short-lived JVM: start fast
    cmd += ["kafka.tools.StorageTool", "format", "--ignore-formatted",
            "-t", random_cluster_id(), "-c", str(props)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=data_dir)
    if result.returncode != 0:
        raise KafkaLocalError(f"formatting the broker storage in {data_dir} failed "
                              f"(exit {result.returncode}):\n{result.stdout}{result.stderr}")


# --------------------------------------------------------------------------- processes

def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


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


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped by its parent) is not a running broker
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


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


def _listener_port(props: Path) -> int | None:
    try:
        text = props.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "listeners":
            for listener in value.split(","):
                port = listener.strip().rsplit(":", 1)[-1]
                if listener.strip().startswith("PLAINTEXT://") and port.isdigit():
                    return int(port)
    return None


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


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} does not exist)"


def _diagnostics(data_dir: Path) -> str:
    text = f"--- last lines of {data_dir / LOG_FILE}:\n{_tail(data_dir / LOG_FILE)}"
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


def wait_until_ready(bootstrap: str, timeout_s: float = 60.0,
                     alive: Callable[[], bool] | None = None) -> None:
    """Block until the broker answers a metadata request; ``alive`` lets us stop waiting early
    when the broker process has already died. Raises KafkaLocalError on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None and not alive():
            raise KafkaLocalError(f"the broker at {bootstrap} exited during start-up")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KafkaLocalError(f"the broker at {bootstrap} did not answer within {timeout_s:.0f} s")
        # A plain TCP probe first: the Kafka client would log a warning per refused connection.
        if _tcp_open(bootstrap) and _metadata_ok(bootstrap, min(remaining, 5.0)):
            return
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
    return BrokerInfo(port=actual, data_dir=ddir, pid=pid, bootstrap_servers=f"{HOST}:{actual}")


def start_broker(port: int = 9092, data_dir: str | os.PathLike | None = None,
                 timeout_s: float = 60.0) -> BrokerInfo:
    """Start the broker detached and return once it accepts clients (idempotent).

    The JVM gets its own session, so Ctrl-C in the terminal that started it does not stop it;
    ``stop_broker`` (``recsys kafka stop``) does.
    """
    ddir = resolve_data_dir(port, data_dir)
    _classpath(), _java()  # fail on missing jars or java before touching anything
    running = broker_status(port, ddir)
    if running is not None:
        if running.port != port:
            raise KafkaLocalError(f"the broker of {ddir} is already running on port {running.port} "
                                  f"(pid {running.pid}); stop it or use another --data-dir")
        wait_until_ready(running.bootstrap_servers, timeout_s, alive=lambda: _alive(running.pid))
        return running
    _check_ports_free(port, ddir)
    (ddir / PID_FILE).unlink(missing_ok=True)
    props = _write_config(port, ddir)
    _format_storage(props, ddir)
    pid = _launch(props, ddir)
    info = BrokerInfo(port=port, data_dir=ddir, pid=pid, bootstrap_servers=f"{HOST}:{port}")
    try:
        wait_until_ready(info.bootstrap_servers, timeout_s, alive=lambda: _alive(pid))
    except KafkaLocalError as e:
        _terminate(pid, STOP_TIMEOUT_S)  # don't leave a half-started JVM holding the ports
        (ddir / PID_FILE).unlink(missing_ok=True)
        raise KafkaLocalError(f"{e}\n{_diagnostics(ddir)}") from None
    return info


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM (Kafka shuts down cleanly), then SIGKILL if it takes longer than ``timeout_s``."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
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
            print(f"kafka: running on {info.bootstrap_servers} (pid {info.pid}, port {info.port}, "
                  f"data dir {info.data_dir})")
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
