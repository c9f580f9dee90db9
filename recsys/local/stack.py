"""The one local stack harness: a broker, the contract's topics under a suffix, the job, readers.

The integration tests, ``make eval``, ``make bench`` and the latency probe all run the job this
way. Every run gets fresh topic names (each name of the contract with ``-<suffix>``), created
with the contract's settings (``recsys.local.topics``), its own consumer group and
transactional id prefix, so runs sharing one broker never see each other's records, offsets or
transactions; the job runs in a child process (``job_process``) and outputs are read
``read_committed``.

    with LocalBroker(work_dir) as bootstrap, JobStack(bootstrap, work_dir, tag="demo") as job:
        job.produce("user_events", events, key_field="user_id")
        recs = job.consume("recommendations", until=lambda rs: len(rs) >= len(events))
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from recsys import kafka_io
from recsys.local.job_process import start_job_process, stop_job_process
from recsys.local.processes import log_tail
from recsys.local.topics import ensure_topics
from recsys.paths import PROJECT_ROOT
from state_schemas.config import EngineConfig, TopicNames, load_config


class JobExited(RuntimeError):
    """The job's process ended while the caller still needed it."""


def suffixed_topic_names(suffix: str | None = None) -> TopicNames:
    """Every topic of the contract with ``-<suffix>`` appended (8 random hex chars by default)."""
    suffix = suffix or uuid.uuid4().hex[:8]
    defaults = TopicNames()
    return TopicNames(**{f.name: f"{getattr(defaults, f.name)}-{suffix}" for f in fields(TopicNames)})


def topic_overrides(names: TopicNames) -> list[str]:
    """``--set`` overrides that point the job (or the service) at ``names``."""
    return [f'topics.{f.name}="{getattr(names, f.name)}"' for f in fields(TopicNames)]


class LocalBroker:
    """``with LocalBroker(work_dir) as bootstrap``: a broker on a free port, data under
    ``work_dir/kafka``, stopped at exit."""

    def __init__(self, work_dir: Path, timeout_s: float = 120):
        self.data_dir = Path(work_dir) / "kafka"
        self.timeout_s = timeout_s
        self.port = 0
        self.bootstrap = ""

    def start(self) -> str:
        """Start the broker; returns its bootstrap address."""
        from recsys.local import kafka_broker

        self.port = kafka_broker.free_port_pair()
        info = kafka_broker.start_broker(self.port, self.data_dir, timeout_s=self.timeout_s)
        self.bootstrap = info.bootstrap_servers
        return self.bootstrap

    def stop(self) -> None:
        from recsys.local import kafka_broker

        if self.port:
            kafka_broker.stop_broker(self.port, self.data_dir)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class JobStack:
    """One job on topics of its own.

    ``overrides`` come after the harness's own (bootstrap, earliest offsets, group, transactional
    id prefix, topics, checkpoint directory), so a caller can change any of them. ``topics``
    reuses names of an earlier stack (a restart of the same deployment); otherwise fresh ones are
    created, with ``every_topic`` settings added to each (e.g. broker append time). With
    ``checkpoints`` the job checkpoints to a directory under ``work_dir`` (the default in-memory
    storage holds only 5 MB of state).
    """

    def __init__(self, bootstrap: str, work_dir: Path, *, tag: str = "job",
                 config_file: str | None = None, overrides: Sequence[str] = (),
                 partitions: int = 1, topics: TopicNames | None = None,
                 every_topic: Mapping[str, str] | None = None, checkpoints: bool = False,
                 env: Mapping[str, str] | None = None, project_root: Path = PROJECT_ROOT):
        self.bootstrap = bootstrap
        self.work_dir = Path(work_dir)
        self.tag = f"{tag}-{uuid.uuid4().hex[:6]}"
        self.config_file = config_file
        self.env = dict(env) if env is not None else None
        self.project_root = project_root
        if topics is None:
            topics = suffixed_topic_names(self.tag)
            ensure_topics(bootstrap, topics, partitions, every_topic=every_topic)
        self.topics = topics
        self.overrides = [f'kafka.bootstrap_servers="{bootstrap}"',
                          'kafka.starting_offsets="earliest"',
                          f'kafka.group_id="g-{self.tag}"',
                          f'kafka.transactional_id_prefix="x-{self.tag}"',
                          *topic_overrides(topics)]
        if checkpoints:
            self.overrides.append(
                f'job.checkpoint_dir="{(self.work_dir / f"checkpoints-{self.tag}").resolve().as_uri()}"')
        self.overrides += list(overrides)
        self.log_path = self.work_dir / f"job-{self.tag}.log"
        self.process: subprocess.Popen | None = None

    def config(self) -> EngineConfig:
        """The configuration the job runs with (the caller's environment left out)."""
        return load_config(self.config_file, self.overrides, environ={})

    def start(self, extra: Sequence[str] = ()) -> "JobStack":
        """Start the job; ``extra`` overrides for this start only (e.g. a savepoint to restore)."""
        self.process = start_job_process(self.overrides + list(extra), self.log_path,
                                         self.config_file, env=self.env,
                                         project_root=self.project_root)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_job_process(self.process)

    def __enter__(self) -> "JobStack":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        """Raise ``JobExited`` with the end of the job's log if its process has ended."""
        if self.process is not None and self.process.poll() is not None:
            raise JobExited(f"the job exited with {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def topic(self, field: str) -> str:
        """The topic of the contract named by its field (``"user_events"``), or a topic name."""
        return getattr(self.topics, field, field)

    def produce(self, field: str, records: list[Any], key_field: str | None = None) -> int:
        return kafka_io.produce_json(self.bootstrap, self.topic(field), records, key_field=key_field)

    def produce_raw(self, field: str, values: list[bytes]) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        for v in values:
            producer.send(self.topic(field), value=v)
        producer.flush()
        producer.close()

    def seed(self, catalog: list[dict], attributes: list[dict], timeout_s: float = 120) -> list:
        """Send the catalogue and the users' attributes, then wait until every one of those
        users has a profile out: the sources are read in parallel, and events sent earlier could
        overtake the attributes (activity would miss the user's segment). Returns the profiles
        read."""
        self.produce("item_catalog", catalog, key_field="item_id")
        self.produce("user_attributes", attributes, key_field="user_id")
        users = {a["user_id"] for a in attributes}
        profiles = self.consume("user_profiles", lambda rs: users <= {r["key"] for r in rs},
                                timeout_s=timeout_s)
        missing = users - {r["key"] for r in profiles}
        if missing:
            raise TimeoutError(f"no profile of {sorted(missing)} within {timeout_s:.0f} s:\n"
                               f"{self.log_tail()}")
        return profiles

    def consume(self, field: str, until: Callable[[list], bool] | None = None,
                timeout_s: float = 60) -> list:
        """The topic's committed records from the beginning, until ``until(records)`` holds or
        ``timeout_s`` passes; the job must be alive before and after."""
        self.check_alive()
        records = kafka_io.consume(self.bootstrap, self.topic(field), timeout_s=timeout_s,
                                   until=until)
        self.check_alive()
        return records
