"""Small kafka-python helpers shared by the CLI tools (topics, tail, sample producer) and tests.

Records are JSON objects with string keys. Consumers read ``read_committed`` by default because
the job writes its outputs in Kafka transactions: a ``read_uncommitted`` reader would also see
records of aborted transactions (duplicates after a restart). Consumers assign partitions
directly and use no consumer group, so tools and tests never commit offsets or disturb each other.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.serializer import Serializer

from recsys.config import KafkaConfig

log = logging.getLogger(__name__)

Record = dict[str, Any]

# Java client property -> kafka-python keyword, for the properties with a direct equivalent.
_PROPERTY_KWARGS: dict[str, str] = {
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.plain.username": "sasl_plain_username",
    "sasl.plain.password": "sasl_plain_password",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "sasl.kerberos.service.name": "sasl_kerberos_service_name",
    "ssl.cafile": "ssl_cafile",
    "ssl.certfile": "ssl_certfile",
    "ssl.keyfile": "ssl_keyfile",
    "ssl.password": "ssl_password",
    "ssl.key.password": "ssl_password",
    "ssl.endpoint.identification.algorithm": "ssl_check_hostname",
    "client.id": "client_id",
}
_JAAS_OPTION = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')
_warned_properties: set[str] = set()


def client_kwargs(kafka: KafkaConfig) -> dict[str, Any]:
    """kafka-python keyword arguments equivalent to ``kafka.client_properties``.

    The Flink job passes client_properties to the Java client verbatim; the Python tools need
    the same security settings under kafka-python's names. ``username``/``password`` are also
    taken from a PLAIN/SCRAM ``sasl.jaas.config``. Properties without a simple equivalent (JKS
    truststores, ...) are skipped with a warning, once per name.
    """
    props = dict(kafka.client_properties)
    kwargs: dict[str, Any] = {}
    for name, value in props.items():
        kwarg = _PROPERTY_KWARGS.get(name)
        if kwarg == "ssl_check_hostname":
            kwargs[kwarg] = str(value).strip().lower() == "https"
        elif kwarg is not None:
            kwargs[kwarg] = str(value)
        elif name != "sasl.jaas.config" and name not in _warned_properties:
            _warned_properties.add(name)
            log.warning("kafka client property %s has no kafka-python equivalent; the Python "
                        "tools ignore it", name)
    jaas = dict(_JAAS_OPTION.findall(str(props.get("sasl.jaas.config", ""))))
    if "username" in jaas:
        kwargs.setdefault("sasl_plain_username", jaas["username"])
    if "password" in jaas:
        kwargs.setdefault("sasl_plain_password", jaas["password"])
    return kwargs


# --------------------------------------------------------------------------- producing

class _KeySerializer(Serializer):
    """str keys as UTF-8; bytes unchanged; None stays None (no key)."""

    def serialize(self, topic: str, headers: list, data: Any) -> bytes | None:
        if data is None or isinstance(data, (bytes, bytearray)):
            return data
        return str(data).encode("utf-8")


class _JsonSerializer(Serializer):
    """Compact UTF-8 JSON; None stays None (a tombstone); bytes are sent as they are, so tests
    can produce deliberately malformed records."""

    def serialize(self, topic: str, headers: list, data: Any) -> bytes | None:
        if data is None or isinstance(data, (bytes, bytearray)):
            return data
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_producer(bootstrap: str, **kwargs: Any) -> KafkaProducer:
    """A producer of JSON values with str keys; acks=all and idempotence, like the job's sinks."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "key_serializer": _KeySerializer(),
        "value_serializer": _JsonSerializer(),
        "acks": "all",
        "linger_ms": 5,
        "client_id": "recsys-tools",
    }
    config.update(kwargs)
    return KafkaProducer(**config)


def _key_of(record: Any, key_field: str | None) -> str | None:
    if key_field is None or not isinstance(record, Mapping):
        return None
    key = record.get(key_field)
    return None if key is None else str(key)


def produce_json(bootstrap: str, topic: str, records: Iterable[Any], key_field: str | None = None,
                 timeout_s: float = 30.0, **producer_kwargs: Any) -> int:
    """Send ``records`` (JSON-encodable values) to ``topic``, keyed by ``record[key_field]``;
    flush and raise if any send failed. Returns the number of records sent."""
    producer = json_producer(bootstrap, **producer_kwargs)
    try:
        futures = [producer.send(topic, key=_key_of(r, key_field), value=r) for r in records]
        producer.flush(timeout=timeout_s)
        for future in futures:
            future.get(timeout=timeout_s)  # re-raises the delivery error, if any
        return len(futures)
    finally:
        producer.close(timeout=timeout_s)


# --------------------------------------------------------------------------- consuming

def decode_value(raw: bytes | None) -> Any:
    """Parsed JSON; None for a tombstone; the text itself when it is not JSON."""
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def decode_record(message: Any) -> Record:
    """A ConsumerRecord as a plain dict (what tests compare and ``tail`` prints)."""
    key = message.key
    return {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": key.decode("utf-8", errors="replace") if key is not None else None,
        "value": decode_value(message.value),
        "timestamp": message.timestamp,
    }


def _partitions(consumer: KafkaConsumer, topics: Sequence[str], timeout_s: float) -> list[TopicPartition]:
    """All partitions of ``topics``, waiting up to ``timeout_s`` for topics still being created."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {t: consumer.partitions_for_topic(t) for t in topics}
        missing = [t for t, parts in found.items() if not parts]
        if not missing:
            return [TopicPartition(t, p) for t in topics for p in sorted(found[t])]
        if time.monotonic() >= deadline:
            raise LookupError(f"topic(s) {', '.join(missing)} do not exist on the broker")
        time.sleep(0.2)


def open_consumer(bootstrap: str, topics: Sequence[str] | str, *, from_beginning: bool = True,
                  read_committed: bool = True, topic_wait_s: float = 5.0,
                  **consumer_kwargs: Any) -> KafkaConsumer:
    """A group-less consumer assigned to every partition of ``topics``, positioned at the
    beginning or the end. Raises LookupError if a topic does not exist after ``topic_wait_s``."""
    topic_list = [topics] if isinstance(topics, str) else list(topics)
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": None,
        "enable_auto_commit": False,
        "isolation_level": "read_committed" if read_committed else "read_uncommitted",
        "auto_offset_reset": "earliest" if from_beginning else "latest",
        "allow_auto_create_topics": False,
        "client_id": "recsys-tools",
    }
    config.update(consumer_kwargs)
    consumer = KafkaConsumer(**config)
    try:
        partitions = _partitions(consumer, topic_list, topic_wait_s)
        consumer.assign(partitions)
        if from_beginning:
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.seek_to_end(*partitions)
            for tp in partitions:  # resolve "end" now, not at the first poll, so records
                consumer.position(tp)  # produced after this call are not skipped
    except BaseException:
        consumer.close()
        raise
    return consumer


def poll_records(consumer: KafkaConsumer, timeout_s: float, max_records: int | None = None) -> list[Record]:
    """One poll, decoded, in partition-then-offset order."""
    batch = consumer.poll(timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records)
    return [decode_record(m) for tp in sorted(batch, key=lambda tp: (tp.topic, tp.partition))
            for m in batch[tp]]


def consume(bootstrap: str, topics: Sequence[str] | str, *, from_beginning: bool = True,
            timeout_s: float = 10.0, until: Callable[[list[Record]], bool] | None = None,
            max_records: int | None = None, read_committed: bool = True,
            **consumer_kwargs: Any) -> list[Record]:
    """Read records of ``topics`` until ``until(records)`` is true, ``max_records`` were read, or
    ``timeout_s`` passed (without ``until``/``max_records`` it always reads for ``timeout_s``).

    Returns what was read even on timeout: callers assert on the content, which gives better
    failure messages than an exception here.
    """
    deadline = time.monotonic() + timeout_s
    consumer = open_consumer(bootstrap, topics, from_beginning=from_beginning,
                             read_committed=read_committed,
                             topic_wait_s=max(0.0, timeout_s), **consumer_kwargs)
    records: list[Record] = []
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return records
            left = None if max_records is None else max_records - len(records)
            records += poll_records(consumer, min(remaining, 0.5), left)
            if max_records is not None and len(records) >= max_records:
                return records
            if until is not None and until(records):
                return records
    finally:
        consumer.close(autocommit=False)


# --------------------------------------------------------------------------- pre-flight

class KafkaUnavailable(RuntimeError):
    """Kafka cannot be reached or refused our credentials; the message says which and where."""


def check_connection(kafka: KafkaConfig, timeout_s: float = 15.0) -> None:
    """Fail fast, with a clear message, on an unreachable broker or wrong credentials.

    The Flink Kafka source and sink retry such errors for a long time (a job looks "running"
    while doing nothing), so the job runner checks once before submitting.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError, KafkaTimeoutError

    where = kafka.bootstrap_servers
    try:
        admin = KafkaAdminClient(bootstrap_servers=where, request_timeout_ms=int(timeout_s * 1000),
                                 bootstrap_timeout_ms=int(timeout_s * 1000),
                                 client_id="recsys-preflight", **client_kwargs(kafka))
    except KafkaTimeoutError:
        raise KafkaUnavailable(f"no Kafka broker answered at {where} within {timeout_s:g} s "
                               f"(is it running, and is kafka.bootstrap_servers right?)") from None
    except KafkaError as e:
        raise KafkaUnavailable(f"Kafka at {where} refused the connection: {type(e).__name__}: {e} "
                               f"(check kafka.client_properties: security protocol, "
                               f"SASL mechanism, user and password)") from None
    try:
        admin.list_topics()
    except KafkaError as e:
        raise KafkaUnavailable(f"Kafka at {where} answered but a metadata request failed: "
                               f"{type(e).__name__}: {e}") from None
    finally:
        admin.close()
