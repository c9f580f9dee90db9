"""Create the topics of the contract (``recsys topics create``), idempotently.

The broker has ``auto.create.topics.enable=false`` so a typo in a topic name fails loudly instead
of silently creating an empty topic. Compaction matters for the three "latest value per key"
topics (profiles, similarities, recommendations): a consumer that replays them from the start
then gets the current state instead of every historical update.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from state_schemas.config import DAY_MS, EngineConfig, PrivacyConfig, TopicNames
from recsys.kafka_io import client_kwargs

REPLICATION_FACTOR = 1  # the local broker is a single node
DLQ_RETENTION_MS = 7 * DAY_MS  # long enough to inspect and replay bad input after a weekend
MODEL_RETENTION_MS = 7 * DAY_MS
CREATE_TIMEOUT_MS = 30_000
BOOTSTRAP_TIMEOUT_MS = 10_000  # a stopped broker should fail `topics create` quickly


@dataclass
class TopicsResult:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


def topic_configs(topic: str, names: TopicNames,
                  privacy: PrivacyConfig | None = None) -> dict[str, str]:
    """Per-topic settings: compaction for the keyed state topics (with bounded compaction lag,
    so an erased user's values go within ``privacy.compaction_max_lag_ms``), 7-day retention
    for the DLQ."""
    privacy = privacy or PrivacyConfig()
    # The job's output records carry event time; on replays of old data that would make the
    # broker roll segments at once and compact or expire records by their (old) timestamps.
    # Output topics therefore keep the broker's append time.
    append_time = {"message.timestamp.type": "LogAppendTime"}
    if topic in names.compacted_topics():
        return {"cleanup.policy": "compact",
                "max.compaction.lag.ms": str(privacy.compaction_max_lag_ms),
                "delete.retention.ms": str(privacy.tombstone_retention_ms), **append_time}
    if topic == names.events_dlq:
        return {"cleanup.policy": "delete", "retention.ms": str(DLQ_RETENTION_MS), **append_time}
    if topic == names.item_model:
        # Replayed from the user operator's checkpointed offset after a restore; kept longer
        # than any checkpoint interval, and in one partition so updates stay in order.
        return {"cleanup.policy": "delete", "retention.ms": str(MODEL_RETENTION_MS),
                **append_time}
    return {}


def topic_specs(names: TopicNames, partitions: int, privacy: PrivacyConfig | None = None,
                every_topic: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """kafka-python's dict form of CreateTopics: {name: {num_partitions, replication_factor,
    configs}}; ``every_topic``: settings added to every topic's own."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return {topic: {"num_partitions": 1 if topic == names.item_model else partitions,
                    "replication_factor": REPLICATION_FACTOR,
                    "configs": {**topic_configs(topic, names, privacy), **(every_topic or {})}}
            for topic in dict.fromkeys(names.all_topics())}


def ensure_topics(bootstrap: str, topic_names: TopicNames, partitions: int = 1,
                  privacy: PrivacyConfig | None = None,
                  every_topic: Mapping[str, str] | None = None,
                  **admin_kwargs: Any) -> TopicsResult:
    """Create the missing topics of ``topic_names``; existing ones are left as they are.

    Topics that already exist are not altered (their partition count or configs may differ
    from what would be created now). Returns once the new topics have leaders, so producers
    and consumers can use them straight away. ``every_topic``: see ``topic_specs``.
    """
    specs = topic_specs(topic_names, partitions, privacy, every_topic)
    result = TopicsResult()
    admin_kwargs.setdefault("bootstrap_timeout_ms", BOOTSTRAP_TIMEOUT_MS)
    admin_kwargs.setdefault("client_id", "recsys-topics")
    with KafkaAdminClient(bootstrap_servers=bootstrap, **admin_kwargs) as admin:
        existing = set(admin.list_topics())
        missing = {t: s for t, s in specs.items() if t not in existing}
        result.existing = [t for t in specs if t in existing]
        if missing:
            response = admin.create_topics(missing, timeout_ms=CREATE_TIMEOUT_MS, raise_errors=False)
            for topic in response["topics"]:
                error = for_code(topic["error_code"])
                if error is TopicAlreadyExistsError:  # created concurrently: fine
                    result.existing.append(topic["name"])
                elif topic["error_code"] != 0:
                    raise error(f"creating topic {topic['name']}: {topic.get('error_message')}")
                else:
                    result.created.append(topic["name"])
            admin.wait_for_topics(result.created, timeout_ms=CREATE_TIMEOUT_MS)
    return result


def create_topics(cfg: EngineConfig) -> int:
    """``recsys topics create``: every topic of ``cfg.topics`` with ``cfg.kafka.partitions``."""
    try:
        result = ensure_topics(cfg.kafka.bootstrap_servers, cfg.topics, cfg.kafka.partitions,
                               cfg.privacy, **client_kwargs(cfg.kafka))
    except KafkaError as e:
        print(f"topics: cannot create topics on {cfg.kafka.bootstrap_servers}: {e!r} "
              "(is the broker running? `recsys kafka status`)", file=sys.stderr)
        return 1
    specs = topic_specs(cfg.topics, cfg.kafka.partitions, cfg.privacy)
    for topic in specs:
        state = "created" if topic in result.created else "exists"
        extras = ", ".join(f"{k}={v}" for k, v in specs[topic]["configs"].items())
        print(f"topics: {state:7} {topic}" + (f" ({extras})" if extras and state == "created" else ""))
    print(f"topics: {len(result.created)} created, {len(result.existing)} already existed "
          f"on {cfg.kafka.bootstrap_servers}")
    return 0
