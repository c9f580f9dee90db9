"""``recsys tail TOPIC``: print a topic's records as they arrive, one line each.

Reads ``read_committed`` (the job writes transactionally, so only committed outputs are shown)
without a consumer group, so tailing never moves the job's committed offsets.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, TextIO

from kafka.errors import KafkaError

from state_schemas.config import EngineConfig, TopicNames
from recsys.kafka_io import Record, client_kwargs, open_consumer, poll_records

POLL_S = 0.5
TOPIC_WAIT_S = 5.0  # a topic being created right now (e.g. by the demo) still gets tailed


def resolve_topic(topics: TopicNames, name: str) -> str:
    """A TopicNames field (``recommendations``, ``user_profiles``) maps to its configured topic;
    anything else is taken as a literal topic name."""
    fields = {f.name for f in dataclasses.fields(TopicNames)}
    return getattr(topics, name) if name in fields else name


def format_record(record: Record) -> str:
    """``key<TAB>compact JSON value``; a tombstone prints as ``null``, a missing key as ``-``."""
    value: Any = record["value"]
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return f"{record['key'] if record['key'] is not None else '-'}\t{text}"


def tail(cfg: EngineConfig, topic: str, from_beginning: bool = False, max_records: int = 0,
         out: TextIO | None = None) -> int:
    """Print records until ``max_records`` were printed (0: until interrupted). Exit status 0,
    or 1 when the topic does not exist or the broker cannot be reached."""
    stream = out or sys.stdout
    name = resolve_topic(cfg.topics, topic)
    try:
        consumer = open_consumer(cfg.kafka.bootstrap_servers, name, from_beginning=from_beginning,
                                 topic_wait_s=TOPIC_WAIT_S, **client_kwargs(cfg.kafka))
    except LookupError:
        print(f"tail: topic {name!r} does not exist on {cfg.kafka.bootstrap_servers} "
              f"(the contract's topics: {', '.join(cfg.topics.all_topics())}; "
              "`recsys topics create` creates them)", file=sys.stderr)
        return 1
    except KafkaError as e:
        print(f"tail: cannot read {name!r} from {cfg.kafka.bootstrap_servers}: {e!r}", file=sys.stderr)
        return 1
    printed = 0
    try:
        while max_records <= 0 or printed < max_records:
            left = max_records - printed if max_records > 0 else None
            for record in poll_records(consumer, POLL_S, left):
                print(format_record(record), file=stream, flush=True)
                printed += 1
    finally:
        consumer.close(autocommit=False)
    return 0
