"""Flink glue: the execution environment, Kafka sources and sinks, the micro-batch operator.

Everything on the record path except the engine itself is Java, reached through PyFlink's
gateway: the input deserializer (key and event time), keying, watermarks, the micro-batch Python
operator and the sink schemas (``deploy/java``). PyFlink's own DataStream wrappers would add a
Python operator per ``key_by``, per side output and per timestamp assigner.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pickle
from dataclasses import dataclass

from pyflink.common import Configuration
from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway
from pyflink.util.java_utils import get_j_env_configuration

from flink_jobs import gateway_watch
from flink_jobs.settings import prometheus_reporter_settings, restart_settings
from state_schemas.config import EngineConfig
from recsys.paths import PROJECT_ROOT, connector_jars

def prepare_python_environment() -> None:
    """Make the embedded (thread-mode) interpreter see this venv and the project.

    In thread mode the UDFs run in a CPython embedded in the JVM (pemja), which starts from the
    base interpreter's sys.path, not the venv's; PYTHONPATH must name the venv's site-packages
    and the project root before the JVM gateway starts.
    """
    paths = [str(PROJECT_ROOT), sysconfig.get_paths()["purelib"]]
    existing = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([existing] if existing else []))




def prometheus_reporter_jar() -> Path | None:
    """The PrometheusReporter plugin jar shipped inside the apache-flink pip package."""
    import pyflink

    jars = sorted((Path(pyflink.__file__).resolve().parent / "plugins" / "metrics-prometheus")
                  .glob("flink-metrics-prometheus-*.jar"))
    return jars[0] if jars else None


def prepare_local_reporter_classpath() -> None:
    """Put the PrometheusReporter on the classpath of the local (mini-cluster) JVM.

    The mini-cluster creates its metric registry without a plugin manager
    (``ReporterSetup.fromConfiguration(config, null)``), so reporters are found only on the JVM's
    classpath, never under ``plugins/``. PyFlink's gateway launcher adds ``HADOOP_CLASSPATH`` to
    that classpath, and reads it when the gateway JVM starts, i.e. before the first
    ``Configuration()``. A standalone or Kubernetes cluster loads the reporter as a plugin and
    ignores this. No effect when the gateway JVM is already running (e.g. under ``flink run``).
    """
    jar = prometheus_reporter_jar()
    if jar is None:
        return
    existing = os.environ.get("HADOOP_CLASSPATH", "")
    if str(jar) not in existing.split(os.pathsep):
        os.environ["HADOOP_CLASSPATH"] = os.pathsep.join([str(jar)] + ([existing] if existing else []))


def build_environment(cfg: EngineConfig) -> StreamExecutionEnvironment:
    prepare_python_environment()
    gateway_watch.install()  # before Configuration() starts the gateway JVM
    if cfg.job.prometheus_port:
        prepare_local_reporter_classpath()  # before Configuration() starts the gateway JVM
    conf = Configuration()
    # The micro-batch operators embed the interpreter in the JVM (PyFlink's "thread" mode).
    conf.set_string("python.execution-mode", "thread")
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    conf.set_string("pipeline.jars", ";".join(p.resolve().as_uri() for p in connector_jars()))
    conf.set_string("pipeline.name", cfg.job.name)
    for key, value in restart_settings(cfg).items():
        conf.set_string(key, value)
    if cfg.job.state_backend == "rocksdb":
        conf.set_string("state.backend.type", "rocksdb")
        conf.set_string("execution.checkpointing.incremental", "true")
    if cfg.job.checkpoint_dir:
        conf.set_string("execution.checkpointing.dir", cfg.job.checkpoint_dir)
    if cfg.job.prometheus_port:
        # Mini-cluster only: a session cluster's reporters come from the cluster's configuration.
        for key, value in prometheus_reporter_settings(cfg.job.prometheus_port).items():
            conf.set_string(key, value)
    if cfg.job.rest_port > 0:
        conf.set_string("rest.port", str(cfg.job.rest_port))
        conf.set_string("rest.address", "127.0.0.1")
        conf.set_string("rest.bind-address", "127.0.0.1")
    if cfg.job.savepoint_path:
        conf.set_string("execution.state-recovery.path", cfg.job.savepoint_path)
        conf.set_string("execution.state-recovery.ignore-unclaimed-state",
                        str(cfg.job.allow_non_restored_state).lower())
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(cfg.job.parallelism)
    env.set_max_parallelism(cfg.job.max_parallelism)
    env.set_buffer_timeout(cfg.job.buffer_timeout_ms)
    if cfg.job.checkpoint_interval_ms > 0:
        env.enable_checkpointing(cfg.job.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    return env


def _starting_offsets(jvm, cfg: EngineConfig):
    init = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer
    if cfg.kafka.starting_offsets == "earliest":
        return init.earliest()
    if cfg.kafka.starting_offsets == "latest":
        return init.latest()
    strategy = jvm.org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer \
        .OffsetResetStrategy.EARLIEST
    return init.committedOffsets(strategy)


def _array(jvm, java_type, values):
    arr = get_gateway().new_array(java_type, len(values))
    for i, v in enumerate(values):
        arr[i] = v
    return arr


@dataclass(frozen=True)
class SourceTopic:
    """One topic of an input source: the record kind it becomes (``state_schemas/records.py``),
    the JSON field holding its routing key, and whether that key is a user id to pseudonymise."""
    topic: str
    kind: int
    key_field: str
    pseudonymize: bool = False


def input_source(env: StreamExecutionEnvironment, cfg: EngineConfig, topics: list[SourceTopic],
                 name: str, uid: str):
    """A Kafka source of engine records, keyed and timestamped in Java (no Python operator):
    ``deploy/java/.../InputRecordDeserializer``, Java watermarks on the record's event time."""
    jvm = get_gateway().jvm
    flink = jvm.io.github.recsys.flink
    privacy = cfg.privacy
    deserializer = flink.InputRecordDeserializer(
        _array(jvm, jvm.java.lang.String, [t.topic for t in topics]),
        _array(jvm, jvm.int, [t.kind for t in topics]),
        _array(jvm, jvm.java.lang.String, [t.key_field for t in topics]),
        _array(jvm, jvm.boolean, [t.pseudonymize and privacy.pseudonymize_user_ids
                                  for t in topics]),
        cfg.validation.min_ts_ms, cfg.validation.max_future_skew_ms, privacy.key_env,
        privacy.key_file, privacy.pseudonym_hex_chars)
    builder = jvm.org.apache.flink.connector.kafka.source.KafkaSource.builder()
    builder.setBootstrapServers(cfg.kafka.bootstrap_servers)
    builder.setTopics(_array(jvm, jvm.java.lang.String, [t.topic for t in topics]))
    builder.setGroupId(cfg.consumer_group())
    builder.setStartingOffsets(_starting_offsets(jvm, cfg))
    builder.setDeserializer(deserializer)
    # Read only committed output of transactional producers (our own loop-backs too).
    builder.setProperty("isolation.level", "read_committed")
    builder.setProperty("client.id.prefix", f"{cfg.consumer_group()}-{uid}")
    builder.setProperty("partition.discovery.interval.ms", "60000")
    for key, value in cfg.kafka.client_properties.items():
        builder.setProperty(key, str(value))
    duration = jvm.java.time.Duration
    strategy = (jvm.org.apache.flink.api.common.eventtime.WatermarkStrategy
                .forBoundedOutOfOrderness(duration.ofMillis(cfg.job.watermark_out_of_orderness_ms))
                .withTimestampAssigner(flink.RecordTimestampAssigner())
                .withIdleness(duration.ofMillis(cfg.job.source_idleness_ms)))
    return (env._j_stream_execution_environment
            .fromSource(builder.build(), strategy, name, flink.EngineRecords.type()).uid(uid))


def keyed(j_stream):
    """Partition engine records by their key, in Java (PyFlink's key_by adds a Python operator).
    The key type is PyFlink's own (``Row(key)``), so keyed state of earlier releases restores."""
    flink = get_gateway().jvm.io.github.recsys.flink
    return j_stream.keyBy(flink.RecordKeySelector(), flink.EngineRecords.keyType())


def micro_batch(env: StreamExecutionEnvironment, j_keyed, j_broadcast, function, *, name: str,
                uid: str, state_names: tuple[str, ...], shared_state: str,
                legacy_shared_states: tuple[str, ...], max_records: int, max_delay_ms: int,
                state_ttl_ms: int, side_outputs: tuple[str, ...]):
    """Connect a keyed stream with a broadcast stream through a micro-batch Python operator
    (``deploy/java/.../MicroBatchPythonOperator``) calling ``function``
    (``flink_jobs.batch_host.BatchFunction``). Returns (main output, {side name: stream})."""
    gateway = get_gateway()
    jvm = gateway.jvm
    flink = jvm.io.github.recsys.flink
    record_type = flink.EngineRecords.type()
    tags = [jvm.org.apache.flink.util.OutputTag(side, record_type) for side in side_outputs]
    j_conf = get_j_env_configuration(env._j_stream_execution_environment)
    operator = flink.MicroBatchPythonOperator(
        j_conf, pickle.dumps(function), _array(jvm, jvm.java.lang.String, list(state_names)),
        state_ttl_ms, shared_state, _array(jvm, jvm.java.lang.String, list(legacy_shared_states)),
        max_records, max_delay_ms, _array(jvm, jvm.org.apache.flink.util.OutputTag, tags))
    out = (j_keyed.connect(j_broadcast.broadcast())
           .transform(name, record_type, operator).uid(uid).name(name))
    return out, {side: out.getSideOutput(tag) for side, tag in zip(side_outputs, tags)}


_GUARANTEES = {"exactly-once": "EXACTLY_ONCE", "at-least-once": "AT_LEAST_ONCE", "none": "NONE"}


def kafka_sink(cfg: EngineConfig, topic: str, name: str, guarantee: str):
    """A Kafka sink of engine records: key = the record key (UTF-8), value = the payload
    (None = tombstone, ``deploy/java/.../NullableRowFieldSchema``)."""
    jvm = get_gateway().jvm
    flink = jvm.io.github.recsys.flink
    kafka = jvm.org.apache.flink.connector.kafka.sink
    serializer = (kafka.KafkaRecordSerializationSchema.builder()
                  .setTopic(topic)
                  .setKeySerializationSchema(flink.NullableRowFieldSchema(0))
                  .setValueSerializationSchema(flink.NullableRowFieldSchema(4))
                  .build())
    delivery = getattr(jvm.org.apache.flink.connector.base.DeliveryGuarantee, _GUARANTEES[guarantee])
    builder = (kafka.KafkaSink.builder()
               .setBootstrapServers(cfg.kafka.bootstrap_servers)
               .setRecordSerializer(serializer)
               .setDeliveryGuarantee(delivery)
               .setProperty("transaction.timeout.ms", str(cfg.kafka.transaction_timeout_ms)))
    if guarantee == "exactly-once":
        builder = builder.setTransactionalIdPrefix(f"{cfg.transactional_id_prefix()}-{name}")
    for key, value in cfg.kafka.client_properties.items():
        builder = builder.setProperty(key, str(value))
    return builder.build()


def sink_to(j_stream, sink, name: str, uid: str) -> None:
    j_stream.sinkTo(sink).name(name).uid(uid)


def job_file() -> Path:
    return Path(__file__).resolve().parent / "recsys_job.py"
