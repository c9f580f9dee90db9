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

from state_schemas.config import KafkaConfig

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
    taken from a PLAIN/SCRAM ``sasl.jaas.config``, and PEM trust/key stores
    (``ssl.truststore.type=PEM``, ``ssl.keystore.type=PEM``) give ``ssl_cafile``/``ssl_certfile``.
    Properties without a simple equivalent (JKS truststores, ...) are skipped with a warning,
    once per name.
    """
    props = dict(kafka.client_properties)
    kwargs: dict[str, Any] = {}
    handled = {"sasl.jaas.config"}
    for store, kwarg in (("truststore", "ssl_cafile"), ("keystore", "ssl_certfile")):
        location = props.get(f"ssl.{store}.location")
        if location and str(props.get(f"ssl.{store}.type", "")).strip().upper() == "PEM":
            kwargs[kwarg] = str(location)  # a PEM keystore file holds the key and the certificates
            handled |= {f"ssl.{store}.location", f"ssl.{store}.type"}
    for name, value in props.items():
        kwarg = _PROPERTY_KWARGS.get(name)
        if kwarg == "ssl_check_hostname":
            kwargs[kwarg] = str(value).strip().lower() == "https"
        elif kwarg is not None:
            kwargs[kwarg] = str(value)
        elif name not in handled and name not in _warned_properties:
            _warned_properties.add(name)
            log.warning("kafka client property %s has no kafka-python equivalent; the Python "
                        "tools ignore it", name)
    # JAAS option values are Java-escaped inside their quotes (\" and \\).
    jaas = {k: re.sub(r"\\(.)", r"\1", v)
            for k, v in _JAAS_OPTION.findall(str(props.get("sasl.jaas.config", "")))}
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

    A refused SASL login is reported within about a second: kafka-python (3.0.12) drops the
    broker's SaslAuthenticate error response, which arrives together with the connection close,
    sees only "socket disconnected" and retries until its timeout. So the bootstrap runs in
    short, growing attempts, and when one fails with SASL or TLS configured, one TLS handshake
    and PLAIN/SCRAM login over a plain blocking socket reads the broker's answer. A refused login
    raises KafkaUnavailable ``from`` a SaslAuthenticationFailedError, which callers may inspect.
    No message contains the password.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import (IllegalSaslStateError, KafkaError, KafkaTimeoutError,
                              SaslAuthenticationFailedError, UnsupportedSaslMechanismError)
    from kafka.net.compat import KafkaNetClient

    auth_errors = (SaslAuthenticationFailedError, UnsupportedSaslMechanismError, IllegalSaslStateError)
    where = kafka.bootstrap_servers
    kwargs = client_kwargs(kafka)
    protocol = str(kwargs.get("security_protocol", "PLAINTEXT")).upper()
    mechanism_name = str(kwargs.get("sasl_mechanism", ""))
    user = kwargs.get("sasl_plain_username")
    login = (f"SASL {mechanism_name} login" + (f" of user {user!r}" if user else "")
             if protocol.startswith("SASL_") else "login")

    def auth_failed(error: BaseException) -> KafkaUnavailable:
        detail = f"{type(error).__name__}: {error}" if not isinstance(error, SaslAuthenticationFailedError) \
            else str(error.args[0] if error.args else error)
        return KafkaUnavailable(
            f"Kafka at {where} refused the {login}: authentication failed ({detail}); check "
            "kafka.client_properties: security.protocol, sasl.mechanism and the user name and "
            "password in sasl.jaas.config")

    def refusal() -> tuple[str, str] | None:
        """Why the broker refuses us, read over a plain blocking socket: ("tls", reason) for a
        failed TLS handshake, ("sasl", the broker's reason) for a refused PLAIN/SCRAM login;
        None if neither (or no broker answered, or another SASL mechanism is configured)."""
        import socket
        import ssl

        from kafka.errors import for_code
        from kafka.net.sasl import get_sasl_mechanism
        from kafka.protocol.parser import KafkaProtocol
        from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest

        sasl = protocol.startswith("SASL_") and mechanism_name in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
        if not sasl and protocol not in ("SSL", "SASL_SSL"):
            return None
        for server in where.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                sock = socket.create_connection((host, int(port)), timeout=min(5.0, timeout_s))
            except (OSError, ValueError):
                continue
            try:
                if protocol in ("SSL", "SASL_SSL"):
                    context = ssl.create_default_context(cafile=kwargs.get("ssl_cafile"))
                    context.check_hostname = bool(kwargs.get("ssl_check_hostname", True))
                    if kwargs.get("ssl_certfile"):
                        context.load_cert_chain(kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"),
                                                kwargs.get("ssl_password"))
                    try:
                        sock = context.wrap_socket(sock, server_hostname=host)
                    except ssl.SSLError as e:
                        return "tls", f"{type(e).__name__}: {e}"
                if not sasl:
                    return None
                wire = KafkaProtocol(client_id="recsys-preflight")

                def call(request: Any) -> Any:
                    wire.send_request(request)
                    sock.sendall(wire.send_bytes())
                    while True:
                        data = sock.recv(65536)
                        if not data:
                            raise ConnectionError("closed by the broker")
                        responses = wire.receive_bytes(data)
                        if responses:
                            return responses[0][1]

                handshake = call(SaslHandshakeRequest(mechanism=mechanism_name, version=1))
                if handshake.error_code:
                    error = for_code(handshake.error_code)
                    if error is UnsupportedSaslMechanismError:
                        return "sasl", (f"the broker does not offer SASL mechanism {mechanism_name}; "
                                        f"it offers {', '.join(handshake.mechanisms) or 'none'}")
                    return "sasl", (f"SASL handshake refused with {error.__name__} (is the listener "
                                    f"at {server.strip()} a {protocol} one?)")
                mechanism = get_sasl_mechanism(mechanism_name)(host=host, **kwargs)
                while not mechanism.is_done():
                    response = call(SaslAuthenticateRequest(auth_bytes=mechanism.auth_bytes(), version=1))
                    if response.error_code:
                        return "sasl", response.error_message or for_code(response.error_code).__name__
                    mechanism.receive(response.auth_bytes)
                return None
            except Exception:  # noqa: BLE001 - no clear answer from this server: try the next one
                continue
            finally:
                sock.close()
        return None

    clients: list[KafkaNetClient] = []

    def net_client(**configs: Any) -> KafkaNetClient:  # to close an admin client never built
        clients.append(KafkaNetClient(**configs))
        return clients[-1]

    deadline = time.monotonic() + timeout_s
    attempt_s = 1.0
    while True:
        attempt_ms = max(100, int(min(attempt_s, deadline - time.monotonic()) * 1000))
        try:
            admin = KafkaAdminClient(bootstrap_servers=where, request_timeout_ms=int(timeout_s * 1000),
                                     bootstrap_timeout_ms=attempt_ms, client_id="recsys-preflight",
                                     kafka_client=net_client, **kwargs)
            break
        except KafkaTimeoutError:
            for client in clients:
                client.close()
            clients.clear()
            refused = refusal()
            if refused is not None and refused[0] == "tls":
                raise KafkaUnavailable(
                    f"the TLS handshake with Kafka at {where} failed ({refused[1]}); check "
                    "kafka.client_properties: ssl.truststore.type/location (the CA that signed the "
                    "broker's certificate) and ssl.endpoint.identification.algorithm") from None
            if refused is not None:
                error = SaslAuthenticationFailedError(refused[1])
                raise auth_failed(error) from error
            if time.monotonic() >= deadline:
                hint = ("" if "security_protocol" in kwargs else
                        "; if the broker requires SASL or TLS, set kafka.client_properties")
                raise KafkaUnavailable(f"no Kafka broker answered at {where} within {timeout_s:g} s "
                                       f"(is it running, and is kafka.bootstrap_servers right?{hint})") from None
            attempt_s *= 2
        except auth_errors as e:
            raise auth_failed(e) from e
        except KafkaError as e:
            raise KafkaUnavailable(f"Kafka at {where} refused the connection: {type(e).__name__}: {e} "
                                   f"(check kafka.client_properties: security protocol, "
                                   f"SASL mechanism, user and password)") from None
    try:
        admin.list_topics()
    except auth_errors as e:
        raise auth_failed(e) from e
    except KafkaError as e:
        raise KafkaUnavailable(f"Kafka at {where} answered but a metadata request failed: "
                               f"{type(e).__name__}: {e}") from None
    finally:
        admin.close()
