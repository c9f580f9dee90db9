"""A local standalone Flink cluster, and the job's lifecycle on any Flink session cluster.

``recsys cluster start|stop|status`` runs a JobManager and TaskManager(s) as separate JVMs from the
Flink distribution inside the apache-flink pip package (``pyflink/bin``, ``lib``, ``plugins``),
with a configuration directory of our own (``var/flink-REST_PORT/conf``), so the pip package is
never modified. Everything of one cluster lives in ``var/flink-REST_PORT/``: ``conf/``, ``log/``,
``checkpoints/``, ``savepoints/``, ``tmp/`` and ``cluster.json`` (ports and pids).

The cluster configuration makes PyFlink jobs work in thread mode and exports metrics:

* ``python.executable`` / ``python.client.executable``: this venv's interpreter. The TaskManager
  runs with ``PYTHONPATH=<venv site-packages>``: Flink's Python environment manager hands the
  process's PYTHONPATH to the embedded (pemja, thread-mode) interpreter when a job does not set
  ``python.pythonpath``, and that interpreter starts from the base Python's ``sys.path``, not the
  venv's. (``python.pythonpath`` itself is a job-level option read from the client's
  configuration, so it cannot be set for every job here.) The project's own packages are not on
  that path: they travel with the job (``-pyfs``, a zip built at submission), as they would to a
  remote cluster.
* ``lib/``: links to the distribution's jars plus ``opt/flink-python``, which the JobManager and
  TaskManagers need for PyFlink operators (the pip package keeps it in ``opt/``).
* the PrometheusReporter (loaded as a plugin from ``pyflink/plugins/metrics-prometheus``) on a port
  range, so the JobManager and each TaskManager take the next free port (9250, 9251, ...).
* checkpoints and savepoints under ``var/flink-REST_PORT/``; the last checkpoints of a cancelled
  job are retained (a restart point besides savepoints).

``recsys job submit`` runs ``flink run -d -py flink_jobs/recsys_job.py -pyfs <project zip>``
against any JobManager; ``list``, ``cancel`` and ``savepoint`` use the JobManager's REST API.
The Kafka connector and the project's Java extras travel with the job through ``pipeline.jars``,
which ``flink_jobs/io.build_environment`` sets from ``.cache/jars/``.

The functions below are the API for tests (fault injection, savepoint migration):
``start_cluster``, ``stop_cluster``, ``cluster_status``, ``submit_job``, ``list_jobs``,
``job_details``, ``job_metric``, ``wait_for_job_running``, ``wait_for_job_state``, ``cancel_job``,
``trigger_savepoint``, ``stop_job_with_savepoint``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from recsys import paths
from recsys.config_args import add_config_arguments
from recsys.local.processes import CHILDREN as _CHILDREN, alive as _alive, cmdline as _cmdline
from recsys.local.processes import log_tail as _tail, terminate

HOST = "localhost"
DEFAULT_REST_PORT = 8081
DEFAULT_SLOTS = 2
DEFAULT_METRICS_PORTS = "9250-9260"
STATE_FILE = "cluster.json"
JM_CLASS = "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"
TM_CLASS = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"
# The project's packages, shipped with every submission as one zip (-pyfs).
PROJECT_PACKAGES = ("recsys", "flink_jobs", "udfs", "state_schemas")
JOB_ID_RE = re.compile(r"JobID\s+([0-9a-f]{32})")
TERMINAL_STATES = {"FINISHED", "FAILED", "CANCELED", "SUSPENDED"}


class ClusterError(RuntimeError):
    """The cluster or a job operation failed; the message says why (and where the logs are)."""


@dataclass
class ClusterInfo:
    rest_port: int
    home: Path
    rpc_port: int
    slots: int
    taskmanagers: int
    metrics_ports: str
    jobmanager_pid: int = 0
    taskmanager_pids: list[int] = field(default_factory=list)

    @property
    def jobmanager(self) -> str:
        """``host:port`` of the REST endpoint, as ``submit_job`` and ``flink run -m`` take it."""
        return f"{HOST}:{self.rest_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def checkpoint_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def savepoint_dir(self) -> Path:
        return self.home / "savepoints"

    def to_json(self) -> str:
        data = asdict(self)
        data["home"] = str(self.home)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ClusterInfo":
        data = json.loads(text)
        data["home"] = Path(data["home"])
        return cls(**data)


# --------------------------------------------------------------------------- the distribution

def flink_home() -> Path:
    """The Flink distribution inside the apache-flink pip package (``.../site-packages/pyflink``)."""
    import importlib.util

    spec = importlib.util.find_spec("pyflink")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("apache-flink is not installed in this Python (pip install -r requirements.txt)")
    home = Path(list(spec.submodule_search_locations)[0]).resolve()
    if not (home / "bin" / "flink").is_file():
        raise ClusterError(f"no Flink distribution (bin/flink) in {home}")
    return home


def python_executable() -> str:
    """The interpreter the cluster runs Python functions with: this venv's (not resolved, so the
    venv's site-packages come with it)."""
    return sys.executable


def site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def default_home(rest_port: int) -> Path:
    return paths.VAR_DIR / f"flink-{rest_port}"


def resolve_home(rest_port: int, home: str | os.PathLike | None) -> Path:
    return Path(home or default_home(rest_port)).expanduser().resolve()


def _java_opts(dist: Path) -> str:
    """The distribution's ``env.java.opts.all`` (module opens Flink needs on Java 17)."""
    try:
        import yaml

        data = yaml.safe_load((dist / "conf" / "config.yaml").read_text()) or {}
        return str(data.get("env", {}).get("java", {}).get("opts", {}).get("all", ""))
    except Exception:  # noqa: BLE001 - fall back to reading the line
        for line in (dist / "conf" / "config.yaml").read_text().splitlines():
            if line.strip().startswith("all:") and "--add-opens" in line:
                return line.split(":", 1)[1].strip()
    return ""


def _yaml_value(value: Any) -> str:
    """One scalar for config.yaml (JSON strings are valid YAML and quote everything needed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def cluster_settings(info: ClusterInfo, dist: Path,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flattened ``config.yaml`` of the cluster (Flink 2.x keys)."""
    from flink_jobs.settings import prometheus_reporter_settings

    settings: dict[str, Any] = {
        "env.java.opts.all": _java_opts(dist),
        "env.log.dir": str(info.log_dir),
        "env.pid.dir": str(info.home / "pid"),
        "io.tmp.dirs": str(info.home / "tmp"),
        "jobmanager.rpc.address": HOST,
        "jobmanager.rpc.port": info.rpc_port,
        "jobmanager.bind-host": HOST,
        "jobmanager.memory.process.size": "1024m",
        "jobmanager.execution.failover-strategy": "region",
        # A crashed TaskManager is noticed after heartbeat.timeout (Flink's default: 50 s, in
        # which the job stalls and its slots are offered again); on one host, 10 s is safe.
        "heartbeat.interval": 2_000,
        "heartbeat.timeout": 10_000,
        "taskmanager.host": HOST,
        "taskmanager.bind-host": HOST,
        "taskmanager.numberOfTaskSlots": info.slots,
        "taskmanager.memory.process.size": "1728m",
        "parallelism.default": 1,
        "rest.address": HOST,
        "rest.bind-address": HOST,
        "rest.port": info.rest_port,
        "execution.checkpointing.dir": info.checkpoint_dir.as_uri(),
        "execution.checkpointing.savepoint-dir": info.savepoint_dir.as_uri(),
        "execution.checkpointing.num-retained": 2,
        # Keep the last checkpoints of a cancelled job: a restart point besides savepoints.
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        # PyFlink: this venv's interpreter for Python functions and for `flink run -py` clients
        # using this directory. Its site-packages reach the TaskManager's embedded (thread-mode)
        # interpreter through the TaskManager's PYTHONPATH (see _launch): the job-level option
        # python.pythonpath would override it, so it is left to `submit_job(python_path=...)`.
        "python.executable": python_executable(),
        "python.client.executable": python_executable(),
    }
    settings.update(prometheus_reporter_settings(info.metrics_ports))
    settings.update(extra or {})
    return settings


def _write_conf(conf_dir: Path, dist: Path, settings: dict[str, Any]) -> None:
    """config.yaml of our own plus the distribution's log4j/logback files, quieter where noisy."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    for src in (dist / "conf").iterdir():
        if src.name.startswith(("log4j", "logback")):
            text = src.read_text()
            if src.name.startswith("log4j") and src.name.endswith(".properties"):
                # The Kafka sink's committer re-registers a metric every checkpoint and Flink logs a
                # WARN "Name collision ... pendingCommittables" each time: keep the logs readable.
                text += ("\n# Added by recsys.local.cluster\n"
                         "logger.recsys_metric_collisions.name = org.apache.flink.metrics.MetricGroup\n"
                         "logger.recsys_metric_collisions.level = ERROR\n")
            (conf_dir / src.name).write_text(text)
    lines = ["# Written by recsys.local.cluster on every start; edits are overwritten.",
             "# Flattened Flink 2.x keys (config.yaml accepts nested and flattened forms)."]
    lines += [f"{key}: {_yaml_value(value)}" for key, value in settings.items()]
    (conf_dir / "config.yaml").write_text("\n".join(lines) + "\n")
    (conf_dir / "masters").write_text(f"{HOST}:{settings['rest.port']}\n")
    (conf_dir / "workers").write_text(f"{HOST}\n")


def _prepare_lib_dir(dist: Path, lib_dir: Path) -> None:
    """The cluster's ``lib/``: links to the distribution's jars plus ``opt/flink-python``.

    The JobManager deserialises PyFlink operators (``EmbeddedPythonProcessOperator``) and the
    TaskManagers run them, so flink-python must be on the cluster classpath; the pip package keeps
    it in ``opt/`` (only the client adds it). Links keep the pip package untouched.
    """
    if lib_dir.exists():
        shutil.rmtree(lib_dir)
    lib_dir.mkdir(parents=True)
    jars = sorted((dist / "lib").glob("*.jar")) + sorted((dist / "opt").glob("flink-python-*.jar"))
    if not any(j.name.startswith("flink-python-") for j in jars):
        raise ClusterError(f"no flink-python jar in {dist / 'opt'}")
    for jar in jars:
        (lib_dir / jar.name).symlink_to(jar)


def _script_env(dist: Path, conf_dir: Path, log_dir: Path, pid_dir: Path,
                lib_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if lib_dir is not None:
        env["FLINK_LIB_DIR"] = str(lib_dir)
    else:
        env.pop("FLINK_LIB_DIR", None)
    env.update({
        "FLINK_HOME": str(dist),
        "FLINK_CONF_DIR": str(conf_dir),
        "FLINK_LOG_DIR": str(log_dir),
        "FLINK_PID_DIR": str(pid_dir),
        "FLINK_PLUGINS_DIR": str(dist / "plugins"),
        "FLINK_IDENT_STRING": "recsys",
        "STD_REDIRECT_TO_FILE": "true",  # JVM stdout/stderr to log/*.out / *.err, not to us
    })
    # A PYTHONPATH of the caller must not leak into the cluster (python.pythonpath decides).
    env.pop("PYTHONPATH", None)
    return env


# --------------------------------------------------------------------------- processes



def _is_ours(pid: int, conf_dir: Path, main_class: str) -> bool:
    """``pid`` is a JVM of ``main_class`` started with our ``--configDir`` (pids get reused)."""
    if not _alive(pid):
        return False
    args = _cmdline(pid)
    if not args and not Path("/proc").is_dir():
        return True
    return main_class in args and str(conf_dir) in args


def _launch(script: str, dist: Path, info: ClusterInfo, name: str) -> int:
    """``jobmanager.sh|taskmanager.sh start-foreground`` in its own session; the scripts exec the
    JVM, so the child's pid is the JVM's. A TaskManager's resource id is ``name``, so the REST
    API's TaskManager ids lead back to processes (:func:`taskmanager_pid`)."""
    env = _script_env(dist, info.conf_dir, info.log_dir, info.home / "pid", info.home / "lib")
    # Flink's Python environment manager falls back to the process's PYTHONPATH when a job does not
    # set python.pythonpath: the venv's site-packages play the TaskManager's Python installation.
    # The project root follows, as if the project were installed in the TaskManagers' Python
    # (the Docker image does install it): jobs submitted with ship_code=False import from there.
    env["PYTHONPATH"] = os.pathsep.join([site_packages(), str(paths.PROJECT_ROOT)])
    with open(info.log_dir / f"{name}.launch.out", "ab") as out:
        args = [f"-Dtaskmanager.resource-id={name}"] if script == "taskmanager.sh" else []
        child = subprocess.Popen(["bash", str(dist / "bin" / script), "start-foreground", *args],
                                 cwd=info.home, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[child.pid] = child
    return child.pid


def _terminate(pid: int, conf_dir: Path, main_class: str, timeout_s: float) -> None:
    if _is_ours(pid, conf_dir, main_class):
        terminate(pid, timeout_s)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _diagnostics(info: ClusterInfo) -> str:
    logs = sorted(info.log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)
    parts = [f"--- last lines of {p}:\n{_tail(p, 15)}" for p in logs[-2:]]
    for p in sorted(info.log_dir.glob("*.err")) + sorted(info.log_dir.glob("*.launch.out")):
        if p.stat().st_size:
            parts.append(f"--- {p}:\n{_tail(p, 10)}")
    return "\n".join(parts) or f"(no logs in {info.log_dir})"


# --------------------------------------------------------------------------- REST

def _base_url(jobmanager: str) -> str:
    jobmanager = jobmanager.strip().rstrip("/")
    return jobmanager if jobmanager.startswith(("http://", "https://")) else f"http://{jobmanager}"


def rest(jobmanager: str, method: str, path: str, body: dict | None = None,
         timeout_s: float = 10.0) -> Any:
    """One call of the JobManager's REST API; returns the decoded JSON (None when empty)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(_base_url(jobmanager) + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        raise ClusterError(f"{method} {path} on {jobmanager}: HTTP {e.code}: {detail}") from e
    except (urllib.error.URLError, OSError) as e:
        raise ClusterError(f"cannot reach the JobManager at {jobmanager}: {e}") from e
    return json.loads(raw) if raw.strip() else None


def overview(jobmanager: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """``GET /overview``: taskmanagers, slots-total, slots-available, jobs-running, flink-version."""
    return rest(jobmanager, "GET", "/overview", timeout_s=timeout_s)


# --------------------------------------------------------------------------- cluster lifecycle

def _read_state(home: Path) -> ClusterInfo | None:
    try:
        return ClusterInfo.from_json((home / STATE_FILE).read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _running(info: ClusterInfo) -> tuple[bool, list[int]]:
    """(JobManager alive, alive TaskManager pids) of a recorded cluster."""
    jm = _is_ours(info.jobmanager_pid, info.conf_dir, JM_CLASS)
    tms = [p for p in info.taskmanager_pids if _is_ours(p, info.conf_dir, TM_CLASS)]
    return jm, tms


def cluster_status(rest_port: int = DEFAULT_REST_PORT,
                   home: str | os.PathLike | None = None) -> ClusterInfo | None:
    """The running local cluster of ``home`` (default ``var/flink-REST_PORT``), or None."""
    info = _read_state(resolve_home(rest_port, home))
    if info is None:
        return None
    jm, tms = _running(info)
    if not jm and not tms:
        return None
    info.taskmanager_pids = tms
    if not jm:
        info.jobmanager_pid = 0
    return info


def start_cluster(rest_port: int = DEFAULT_REST_PORT, slots: int = DEFAULT_SLOTS,
                  taskmanagers: int = 1, metrics_ports: str = DEFAULT_METRICS_PORTS,
                  home: str | os.PathLike | None = None, extra_conf: dict[str, Any] | None = None,
                  timeout_s: float = 120.0) -> ClusterInfo:
    """Start a JobManager and ``taskmanagers`` TaskManagers (``slots`` slots each) on this host.

    Returns once the REST API answers and every TaskManager has registered its slots. Idempotent:
    a cluster already running from the same ``home`` is returned as it is. Raises ClusterError
    (with the last log lines) when a port is taken or a process dies during start-up.
    """
    dist = flink_home()
    home_dir = resolve_home(rest_port, home)
    running = cluster_status(rest_port, home_dir)
    if running is not None:
        if running.jobmanager_pid and len(running.taskmanager_pids) == running.taskmanagers:
            return running
        stop_cluster(rest_port, home_dir)
    if _port_in_use(rest_port):
        raise ClusterError(f"cannot start a Flink cluster with REST port {rest_port}: the port is "
                           f"already in use (see `ss -ltnp | grep {rest_port}`); pick another "
                           "--rest-port or stop what holds it")
    if slots < 1 or taskmanagers < 1:
        raise ClusterError("slots and taskmanagers must be >= 1")
    info = ClusterInfo(rest_port=rest_port, home=home_dir, rpc_port=_free_port(), slots=slots,
                       taskmanagers=taskmanagers, metrics_ports=str(metrics_ports))
    for d in (info.log_dir, info.home / "pid", info.home / "tmp", info.checkpoint_dir,
              info.savepoint_dir):
        d.mkdir(parents=True, exist_ok=True)
    # Stale pid files make the scripts number their logs -1, -2, ...: start each cluster afresh.
    for stale in (info.home / "pid").glob("*.pid"):
        stale.unlink()
    _write_conf(info.conf_dir, dist, cluster_settings(info, dist, extra_conf))
    _prepare_lib_dir(dist, info.home / "lib")

    info.jobmanager_pid = _launch("jobmanager.sh", dist, info, "jobmanager")
    (info.home / STATE_FILE).write_text(info.to_json())
    try:
        _wait_for_rest(info, timeout_s)
        for n in range(taskmanagers):
            info.taskmanager_pids.append(_launch("taskmanager.sh", dist, info, f"taskmanager-{n}"))
            (info.home / STATE_FILE).write_text(info.to_json())
        _wait_for_slots(info, timeout_s)
    except ClusterError:
        stop_cluster(rest_port, home_dir)
        raise
    return info


def _wait_for_rest(info: ClusterInfo, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(info.jobmanager_pid):
            raise ClusterError(f"the JobManager exited during start-up\n{_diagnostics(info)}")
        try:
            overview(info.jobmanager, timeout_s=2)
            return
        except ClusterError:
            time.sleep(0.5)
    raise ClusterError(f"the JobManager's REST API on port {info.rest_port} did not answer "
                       f"within {timeout_s:.0f} s\n{_diagnostics(info)}")


def _wait_for_slots(info: ClusterInfo, timeout_s: float) -> None:
    want = info.slots * info.taskmanagers
    deadline = time.monotonic() + timeout_s
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for pid in info.taskmanager_pids:
            if not _alive(pid):
                raise ClusterError(f"a TaskManager (pid {pid}) exited during start-up\n"
                                   f"{_diagnostics(info)}")
        try:
            seen = overview(info.jobmanager, timeout_s=2)
            if seen.get("taskmanagers", 0) >= info.taskmanagers and seen.get("slots-total", 0) >= want:
                return
        except ClusterError:
            pass
        time.sleep(0.5)
    raise ClusterError(f"the TaskManagers did not register {want} slots within {timeout_s:.0f} s "
                       f"(last overview: {seen})\n{_diagnostics(info)}")


def kill_taskmanager(info: ClusterInfo, index: int = 0) -> int:
    """SIGKILL one TaskManager, as a crash would (fault injection); returns its pid."""
    pid = info.taskmanager_pids.pop(index)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(10)
    (info.home / STATE_FILE).write_text(info.to_json())
    return pid


def taskmanager_pid(info: ClusterInfo, resource_id: str) -> int | None:
    """The pid of the live TaskManager whose resource id (the REST API's TaskManager id) is
    ``resource_id``, if it is one of this cluster's."""
    flag = f"-Dtaskmanager.resource-id={resource_id}"
    for pid in info.taskmanager_pids:
        if _alive(pid) and flag in _cmdline(pid):
            return pid
    return None


def taskmanagers_running(jobmanager: str, job_id: str) -> set[str]:
    """Resource ids of the TaskManagers that hold a task of the job (deploying or running)."""
    out = set()
    for vertex in job_details(jobmanager, job_id)["vertices"]:
        placed = rest(jobmanager, "GET", f"/jobs/{job_id}/vertices/{vertex['id']}/taskmanagers")
        for tm in placed.get("taskmanagers", []):
            if tm.get("status") in ("DEPLOYING", "INITIALIZING", "RUNNING"):
                out.add(tm["taskmanager-id"])
    return out


def kill_job_taskmanager(info: ClusterInfo, job_id: str, timeout_s: float = 60.0) -> str:
    """SIGKILL a TaskManager that holds a task of the job (waiting until one does, e.g. while
    the job is being redeployed), as a crash would; returns its resource id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for tm in sorted(taskmanagers_running(info.jobmanager, job_id)):
            pid = taskmanager_pid(info, tm)
            if pid is not None:
                kill_taskmanager(info, info.taskmanager_pids.index(pid))
                return tm
        time.sleep(0.05)
    raise ClusterError(f"no live TaskManager holds a task of job {job_id}")


def start_taskmanager(info: ClusterInfo, timeout_s: float = 120.0) -> int:
    """Start one more TaskManager in a running cluster (e.g. to replace a crashed one) and wait
    until the JobManager sees ``info.taskmanagers`` live TaskManagers again."""
    before = {tm["id"] for tm in rest(info.jobmanager, "GET", "/taskmanagers")["taskmanagers"]}
    pid = _launch("taskmanager.sh", flink_home(), info, f"taskmanager-{uuid.uuid4().hex[:6]}")
    info.taskmanager_pids.append(pid)
    (info.home / STATE_FILE).write_text(info.to_json())
    # The JobManager may still list a killed TaskManager until its heartbeat times out, so wait
    # for this one to register rather than for a count.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise ClusterError(f"the new TaskManager (pid {pid}) exited\n{_diagnostics(info)}")
        now = {tm["id"] for tm in rest(info.jobmanager, "GET", "/taskmanagers")["taskmanagers"]}
        if now - before:
            return pid
        time.sleep(0.5)
    raise ClusterError(f"the new TaskManager did not register within {timeout_s:.0f} s\n"
                       f"{_diagnostics(info)}")


def stop_cluster(rest_port: int = DEFAULT_REST_PORT, home: str | os.PathLike | None = None,
                 timeout_s: float = 30.0) -> bool:
    """Stop the local cluster of ``home``: TaskManagers first, then the JobManager (SIGTERM, then
    SIGKILL after ``timeout_s``). Running jobs are not cancelled first: they are lost unless
    they were stopped with a savepoint. Returns False when nothing was running."""
    home_dir = resolve_home(rest_port, home)
    info = _read_state(home_dir)
    if info is None:
        return False
    jm, tms = _running(info)
    for pid in tms:
        _terminate(pid, info.conf_dir, TM_CLASS, timeout_s)
    if jm:
        _terminate(info.jobmanager_pid, info.conf_dir, JM_CLASS, timeout_s)
    return jm or bool(tms)


# --------------------------------------------------------------------------- jobs

def build_pyfiles_zip(dest: Path) -> Path:
    """The project's packages (``recsys``, ``flink_jobs``, ``udfs``, ``state_schemas`` with their
    JSON Schemas) as one zip for ``-pyfs``: Flink extracts it on the TaskManagers and puts the
    extraction directory on the Python path, so ``import udfs`` works there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in PROJECT_PACKAGES:
            root = paths.PROJECT_ROOT / package
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    zf.write(path, path.relative_to(paths.PROJECT_ROOT).as_posix())
    tmp.replace(dest)
    return dest


def _client_conf_dir(dist: Path) -> Path:
    """A configuration directory for the ``flink`` CLI (the client), independent of any cluster."""
    conf_dir = paths.VAR_DIR / "flink-client" / "conf"
    settings = {
        "env.java.opts.all": _java_opts(dist),
        "env.log.dir": str(paths.VAR_DIR / "flink-client" / "log"),
        "python.executable": python_executable(),
        "python.client.executable": python_executable(),
        # Job-level (read by the client): keep the last checkpoints of a cancelled job.
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "rest.address": HOST,
        "rest.port": DEFAULT_REST_PORT,
    }
    _write_conf(conf_dir, dist, settings)
    return conf_dir


def submit_job(jobmanager: str = f"{HOST}:{DEFAULT_REST_PORT}", config_file: str | None = None,
               overrides: Sequence[str] = (), *, savepoint: str | None = None,
               allow_non_restored_state: bool = False, parallelism: int | None = None,
               python_path: str | None = None, extra_flink_args: Sequence[str] = (),
               timeout_s: float = 300.0, log_path: Path | None = None,
               ship_code: bool = True) -> str:
    """Submit ``flink_jobs/recsys_job.py`` to the session cluster at ``jobmanager`` (host:port of
    its REST endpoint), detached; returns the job id.

    ``config_file``/``overrides`` are the job's own ``--config``/``--set`` (checked here first, so
    a bad setting fails before a JVM starts); ``parallelism`` adds ``job.parallelism=N``.
    ``savepoint`` restores from a savepoint or retained checkpoint (``-s``),
    ``allow_non_restored_state`` is ``-n``. ``python_path`` is ``-pypath``
    (the TaskManagers' site-packages), for clusters not started by ``start_cluster``.
    The output of ``flink run`` goes to ``log_path`` (default ``var/flink-client/submit.log``).

    ``ship_code=False`` does not ship the project's packages (``-pyfs``) and relies on them being
    importable on the TaskManagers. Prefer it where failover within a TaskManager matters: in
    thread mode the TaskManager's embedded interpreter keeps modules imported by a task attempt,
    while shipped code is extracted per attempt and deleted when the attempt ends, so a restart
    in the same TaskManager fails with ModuleNotFoundError (seen with PyFlink 2.3).
    """
    from state_schemas.config import load_config

    overrides = list(overrides)
    if parallelism:
        # The job sets its parallelism from job.parallelism (which would override `flink run -p`).
        overrides.append(f"job.parallelism={parallelism}")
    load_config(config_file, overrides)  # raises ConfigError early
    dist = flink_home()
    conf_dir = _client_conf_dir(dist)
    client_dir = conf_dir.parent
    pyfiles = build_pyfiles_zip(client_dir / "recsys-pyfiles.zip")
    job_file = paths.PROJECT_ROOT / "flink_jobs" / "recsys_job.py"
    cmd = ["bash", str(dist / "bin" / "flink"), "run", "--detached", "-m", jobmanager,
           "-py", str(job_file), *(["-pyfs", str(pyfiles)] if ship_code else []),
           "-pyclientexec", python_executable(), "-pyexec", python_executable()]
    if python_path:
        cmd += ["-pypath", python_path]
    if savepoint:
        cmd += ["-s", savepoint]
        if allow_non_restored_state:
            cmd.append("-n")
    cmd += list(extra_flink_args)
    if config_file:
        cmd += ["--config", str(Path(config_file).resolve())]
    for item in overrides:
        cmd += ["--set", item]
    env = _script_env(dist, conf_dir, client_dir / "log", client_dir / "pid")
    env["PYFLINK_CLIENT_EXECUTABLE"] = python_executable()
    log_path = log_path or client_dir / "submit.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(cmd, cwd=paths.PROJECT_ROOT, env=env, capture_output=True,
                                text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"flink run did not finish within {timeout_s:.0f} s") from e
    output = result.stdout + result.stderr
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n{output}\n")
    match = JOB_ID_RE.search(output)
    if result.returncode != 0 or match is None:
        raise ClusterError(f"flink run failed (exit {result.returncode}); output:\n"
                           f"{output[-4000:]}")
    return match.group(1)


def list_jobs(jobmanager: str = f"{HOST}:{DEFAULT_REST_PORT}") -> list[dict[str, Any]]:
    """``GET /jobs/overview``: one dict per job (``jid``, ``name``, ``state``, ``start-time``, ...),
    newest first."""
    jobs = rest(jobmanager, "GET", "/jobs/overview").get("jobs", [])
    return sorted(jobs, key=lambda j: j.get("start-time", 0), reverse=True)


def job_details(jobmanager: str, job_id: str) -> dict[str, Any]:
    """``GET /jobs/JOB_ID``: ``state`` and ``vertices`` (each with its ``status``)."""
    return rest(jobmanager, "GET", f"/jobs/{job_id}")


def job_metric(jobmanager: str, job_id: str, name: str, timeout_s: float = 30.0,
               poll_s: float = 0.5, fresh_s: float = 11.5) -> float:
    """The value of one job-level metric, e.g. ``numRestarts`` (the restart attempts since the
    job was submitted, full and partial): ``GET /jobs/JOB_ID/metrics?get=NAME``.

    The REST endpoint answers from the copy of the metrics it fetched last: a request starts a
    new fetch once that copy is older than ``metrics.fetcher.update-interval`` (Flink's default
    10 s) but is answered from the old copy meanwhile, an empty list the first time. So this
    polls for ``fresh_s`` (that interval and a margin for the fetch) and returns the last value
    read, fetched after the call began (a first answer may be seconds old: a fault test read
    two restarts after three). Raises ClusterError if the metric is not there by then and
    ``timeout_s`` (a missing metric never reads as 0)."""
    path = f"/jobs/{job_id}/metrics?get={urllib.parse.quote(name)}"
    started = time.monotonic()
    value: float | None = None
    while True:
        for metric in rest(jobmanager, "GET", path) or []:
            if metric.get("id") == name and metric.get("value") is not None:
                value = float(metric["value"])
        elapsed = time.monotonic() - started
        if value is not None and elapsed >= fresh_s:
            return value
        if elapsed >= max(timeout_s, fresh_s):
            raise ClusterError(f"job {job_id} has no metric {name!r} after {elapsed:.0f} s")
        time.sleep(poll_s)


def wait_for_job_state(jobmanager: str, job_id: str, states: Iterable[str],
                       timeout_s: float = 60.0) -> str:
    """Poll until the job is in one of ``states``; returns it. Raises ClusterError on timeout."""
    wanted = set(states)
    deadline = time.monotonic() + timeout_s
    state = "?"
    while time.monotonic() < deadline:
        state = job_details(jobmanager, job_id).get("state", "?")
        if state in wanted:
            return state
        time.sleep(0.5)
    raise ClusterError(f"job {job_id} is {state}, not {sorted(wanted)}, after {timeout_s:.0f} s")


def wait_for_failover(jobmanager: str, job_id: str, timeout_s: float = 30.0,
                      poll_s: float = 0.2) -> None:
    """Poll until the job has noticed a failure (it, or one of its tasks, left RUNNING).
    Raises ClusterError if that does not happen within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        details = job_details(jobmanager, job_id)
        if details["state"] != "RUNNING" or any(v["status"] != "RUNNING"
                                                for v in details["vertices"]):
            return
        time.sleep(poll_s)
    raise ClusterError(f"job {job_id} did not notice a failure within {timeout_s:.0f} s")


def wait_for_job_running(jobmanager: str, job_id: str, timeout_s: float = 120.0,
                         poll_s: float = 0.5) -> dict[str, Any]:
    """Poll until the job is RUNNING with every task RUNNING (sources read, checkpoints can
    start); returns the job details. Raises ClusterError if it fails or times out."""
    deadline = time.monotonic() + timeout_s
    details: dict[str, Any] = {}
    while time.monotonic() < deadline:
        details = job_details(jobmanager, job_id)
        state = details.get("state")
        if state in TERMINAL_STATES:
            raise ClusterError(f"job {job_id} is {state}: {_failure_cause(jobmanager, job_id)}")
        vertices = details.get("vertices", [])
        if state == "RUNNING" and vertices and all(v.get("status") == "RUNNING" for v in vertices):
            return details
        time.sleep(poll_s)
    raise ClusterError(f"job {job_id} did not get all its tasks running within {timeout_s:.0f} s "
                       f"(state {details.get('state')})")


def _failure_cause(jobmanager: str, job_id: str) -> str:
    try:
        exceptions = rest(jobmanager, "GET", f"/jobs/{job_id}/exceptions")
        root = (exceptions.get("exceptionHistory", {}).get("entries") or [{}])[0]
        return (root.get("stacktrace") or exceptions.get("root-exception") or "no exception")[:3000]
    except ClusterError as e:
        return str(e)


def cancel_job(jobmanager: str, job_id: str, wait: bool = True, timeout_s: float = 60.0) -> str:
    """Cancel the job (no savepoint); returns its state (CANCELED when ``wait``)."""
    rest(jobmanager, "PATCH", f"/jobs/{job_id}?mode=cancel")
    if not wait:
        return job_details(jobmanager, job_id).get("state", "?")
    return wait_for_job_state(jobmanager, job_id, TERMINAL_STATES, timeout_s)


def _await_savepoint(jobmanager: str, job_id: str, trigger: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = rest(jobmanager, "GET", f"/jobs/{job_id}/savepoints/{trigger}")
        if status.get("status", {}).get("id") == "COMPLETED":
            operation = status.get("operation", {})
            if "location" in operation:
                return operation["location"]
            cause = operation.get("failure-cause", {})
            raise ClusterError(f"savepoint of job {job_id} failed: "
                               f"{cause.get('stack-trace', cause)}"[:4000])
        time.sleep(0.5)
    raise ClusterError(f"savepoint of job {job_id} did not complete within {timeout_s:.0f} s")


def trigger_savepoint(jobmanager: str, job_id: str, target_dir: str | None = None,
                      cancel: bool = False, timeout_s: float = 120.0) -> str:
    """Take a savepoint (canonical format) and return its location (``file:/...``).

    ``target_dir`` defaults to the cluster's ``execution.checkpointing.savepoint-dir``. With
    ``cancel`` the job is cancelled once the savepoint is complete (prefer
    ``stop_job_with_savepoint`` for upgrades: it also commits the sinks' last transactions).
    """
    body: dict[str, Any] = {"cancel-job": cancel, "formatType": "CANONICAL"}
    if target_dir:
        body["target-directory"] = _as_uri(target_dir)
    trigger = rest(jobmanager, "POST", f"/jobs/{job_id}/savepoints", body)["request-id"]
    return _await_savepoint(jobmanager, job_id, trigger, timeout_s)


def stop_job_with_savepoint(jobmanager: str, job_id: str, target_dir: str | None = None,
                            drain: bool = False, timeout_s: float = 120.0) -> str:
    """Stop the job gracefully with a final savepoint (``flink stop``); returns its location."""
    body: dict[str, Any] = {"drain": drain, "formatType": "CANONICAL"}
    if target_dir:
        body["targetDirectory"] = _as_uri(target_dir)
    trigger = rest(jobmanager, "POST", f"/jobs/{job_id}/stop", body)["request-id"]
    try:
        location = _await_savepoint(jobmanager, job_id, trigger, timeout_s)
    except ClusterError:
        # A local mini-cluster can finish the job and shut its REST endpoint down between two
        # polls of the savepoint's status: the completed savepoint is then on disk.
        found = (_completed_savepoint_on_disk(target_dir, job_id)
                 if target_dir and not _reachable(jobmanager) else None)
        if found is None:
            raise
        return found
    try:
        wait_for_job_state(jobmanager, job_id, TERMINAL_STATES, timeout_s)
    except ClusterError:
        # A local mini-cluster (``job.rest_port``) shuts down with its only job, taking its REST
        # endpoint along: the savepoint is complete, which is what the caller waits for.
        if _reachable(jobmanager):
            raise
    return location


def _completed_savepoint_on_disk(target_dir: str, job_id: str, wait_s: float = 10.0
                                 ) -> str | None:
    """The newest complete savepoint of ``job_id`` in a local ``target_dir`` (Flink writes
    ``savepoint-<first 6 hex digits of the job id>-<random>/_metadata`` last), as the
    ``file:`` location the REST API would have given; None if there is none."""
    uri = _as_uri(target_dir)
    if not uri.startswith("file:"):
        return None
    directory = Path(urllib.parse.urlparse(uri).path)
    deadline = time.monotonic() + wait_s
    while True:
        done = sorted(directory.glob(f"savepoint-{job_id[:6]}-*/_metadata"),
                      key=lambda m: m.stat().st_mtime)
        if done:
            return f"file:{done[-1].parent}"
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def _reachable(jobmanager: str) -> bool:
    try:
        overview(jobmanager, timeout_s=2)
        return True
    except ClusterError:
        return False


def _as_uri(path: str) -> str:
    return path if "://" in path or path.startswith("file:") else Path(path).resolve().as_uri()


# --------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``recsys cluster start|stop|status``: add the sub-commands to the ``cluster`` parser."""
    sub = parser.add_subparsers(dest="action", required=True)
    for action, text in (("start", "start a JobManager and TaskManager(s) in the background"),
                         ("stop", "stop them (running jobs are lost: take a savepoint first)"),
                         ("status", "show the cluster; exit 3 when stopped")):
        p = sub.add_parser(action, help=text)
        p.add_argument("--rest-port", type=int, default=DEFAULT_REST_PORT,
                       help="JobManager REST/web UI port (default 8081)")
        p.add_argument("--home", metavar="DIR",
                       help="cluster directory (conf, logs, checkpoints; default var/flink-PORT)")
        if action == "start":
            p.add_argument("--slots", type=int, default=DEFAULT_SLOTS,
                           help="task slots per TaskManager (default 2)")
            p.add_argument("--taskmanagers", type=int, default=1)
            p.add_argument("--metrics-ports", default=DEFAULT_METRICS_PORTS, metavar="P-Q",
                           help="PrometheusReporter port range of the JM/TMs (default 9250-9260)")
            p.add_argument("--conf", dest="extra_conf", action="append", default=[],
                           metavar="KEY=VALUE", help="extra Flink setting (repeatable)")


def add_job_arguments(job_subparsers: argparse._SubParsersAction) -> None:
    """``recsys job submit|list|cancel|savepoint``: add them to the existing ``job`` sub-parsers."""

    def jm_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--jobmanager", "-m", default=f"{HOST}:{DEFAULT_REST_PORT}", metavar="H:P",
                       help="the JobManager's REST address (default localhost:8081)")

    submit = job_subparsers.add_parser("submit", help="submit the job to a running Flink cluster")
    jm_arg(submit)
    add_config_arguments(submit)
    submit.add_argument("--parallelism", type=int)
    submit.add_argument("--from-savepoint", metavar="PATH", help="restore from this savepoint")
    submit.add_argument("--allow-non-restored-state", action="store_true")
    submit.add_argument("--pythonpath", metavar="DIR",
                        help="site-packages on the TaskManagers (-pypath), for clusters not "
                             "started by `recsys cluster start`")
    submit.add_argument("--installed-code", action="store_true",
                        help="do not ship the project with the job (-pyfs): the TaskManagers "
                             "import it from their Python path (the local cluster has it there). "
                             "Faster recovery: shipped code is compiled again by every new "
                             "TaskManager")
    lst = job_subparsers.add_parser("list", help="jobs of the cluster")
    jm_arg(lst)
    lst.add_argument("--all", action="store_true", help="also finished/cancelled/failed jobs")
    cancel = job_subparsers.add_parser("cancel", help="cancel a job (no savepoint)")
    jm_arg(cancel)
    cancel.add_argument("job_id")
    savepoint = job_subparsers.add_parser("savepoint", help="take a savepoint of a running job")
    jm_arg(savepoint)
    savepoint.add_argument("job_id")
    savepoint.add_argument("--dir", metavar="DIR", help="target directory (default: the "
                           "cluster's execution.checkpointing.savepoint-dir)")
    savepoint.add_argument("--stop", action="store_true",
                           help="stop the job with this savepoint (for upgrades)")


def _job_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "bootstrap_servers", None):
        overrides.append(f'kafka.bootstrap_servers="{args.bootstrap_servers}"')
    if getattr(args, "parallelism", None):
        overrides.append(f"job.parallelism={args.parallelism}")
    return overrides


def _print_cluster(info: ClusterInfo) -> None:
    try:
        ov = overview(info.jobmanager)
        summary = (f"{ov.get('taskmanagers')} TaskManager(s), {ov.get('slots-available')}/"
                   f"{ov.get('slots-total')} slots free, {ov.get('jobs-running')} job(s) running, "
                   f"Flink {ov.get('flink-version')}")
    except ClusterError as e:
        summary = f"REST API not answering ({e})"
    print(f"flink cluster: web UI/REST {info.rest_url} (JobManager pid {info.jobmanager_pid or '-'}, "
          f"TaskManager pids {info.taskmanager_pids or '-'}); {summary}")
    print(f"  metrics (Prometheus): ports {info.metrics_ports} on this host; "
          f"conf {info.conf_dir}; logs {info.log_dir}")


def main(args: argparse.Namespace) -> int:
    """Run ``recsys cluster ...`` or ``recsys job submit|list|cancel|savepoint`` from parsed args."""
    from state_schemas.config import ConfigError

    try:
        if args.command == "cluster":
            return _cluster_main(args)
        return _job_main(args)
    except ClusterError as e:
        print(f"recsys {args.command}: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"recsys: configuration error: {e}", file=sys.stderr)
        return 2


def _cluster_main(args: argparse.Namespace) -> int:
    if args.action == "start":
        extra = {}
        for item in args.extra_conf:
            key, sep, value = item.partition("=")
            if not sep:
                raise ClusterError(f"--conf expects KEY=VALUE, got {item!r}")
            extra[key.strip()] = value.strip()
        info = start_cluster(args.rest_port, args.slots, args.taskmanagers, args.metrics_ports,
                             args.home, extra)
        _print_cluster(info)
        return 0
    if args.action == "stop":
        stopped = stop_cluster(args.rest_port, args.home)
        print("flink cluster: stopped" if stopped else "flink cluster: not running")
        return 0
    info = cluster_status(args.rest_port, args.home)
    if info is None:
        print(f"flink cluster: not running ({resolve_home(args.rest_port, args.home)})")
        return 3
    _print_cluster(info)
    return 0


def _job_main(args: argparse.Namespace) -> int:
    jm = args.jobmanager
    if args.action == "submit":
        job_id = submit_job(jm, args.config, _job_overrides(args), savepoint=args.from_savepoint,
                            allow_non_restored_state=args.allow_non_restored_state,
                            python_path=args.pythonpath, ship_code=not args.installed_code)
        print(f"submitted job {job_id} to {jm}; waiting for its tasks to run ...")
        wait_for_job_running(jm, job_id)
        print(f"job {job_id} is running (web UI: {_base_url(jm)}/#/job/running/{job_id}/overview)")
        return 0
    if args.action == "list":
        jobs = list_jobs(jm)
        if not args.all:
            jobs = [j for j in jobs if j.get("state") not in TERMINAL_STATES]
        for j in jobs:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.get("start-time", 0) / 1000))
            print(f"{j['jid']}  {j.get('state', '?'):<12} {started}  {j.get('name', '')}")
        if not jobs:
            print("no jobs" if args.all else "no running jobs")
        return 0
    if args.action == "cancel":
        print(f"job {args.job_id}: {cancel_job(jm, args.job_id)}")
        return 0
    if args.action == "savepoint":
        if args.stop:
            location = stop_job_with_savepoint(jm, args.job_id, args.dir)
        else:
            location = trigger_savepoint(jm, args.job_id, args.dir)
        print(f"savepoint: {location}")
        print(f"resume with: recsys job submit --jobmanager {jm} --from-savepoint {location}")
        return 0
    raise ClusterError(f"unknown job action {args.action!r}")


def build_parser() -> argparse.ArgumentParser:
    """Stand-alone parser (``python -m recsys.local.cluster``) with the same sub-commands as the CLI."""
    parser = argparse.ArgumentParser(prog="python -m recsys.local.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("cluster", help="a local standalone Flink cluster"))
    job = sub.add_parser("job", help="the job on a Flink cluster")
    add_job_arguments(job.add_subparsers(dest="action", required=True))
    return parser


if __name__ == "__main__":
    try:
        sys.exit(main(build_parser().parse_args()))
    except KeyboardInterrupt:
        sys.exit(130)
