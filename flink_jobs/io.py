"""Flink glue: the execution environment, Kafka sources and sinks, built from ``EngineConfig``."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
from pyflink.common.serialization import DeserializationSchema, SerializationSchema
from pyflink.java_gateway import get_gateway
from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy, KafkaOffsetsInitializer, KafkaRecordSerializationSchema, KafkaSink,
    KafkaSource)

from recsys.config import EngineConfig
from recsys.paths import PROJECT_ROOT, connector_jars

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
# Kafka records leave the job as Row(key bytes, value bytes); value None is a tombstone.
KAFKA_RECORD = Types.ROW([BYTES, BYTES])


def prepare_python_environment() -> None:
    """Make the embedded (thread-mode) interpreter see this venv and the project.

    In thread mode the UDFs run in a CPython embedded in the JVM (pemja), which starts from the
    base interpreter's sys.path, not the venv's; PYTHONPATH must name the venv's site-packages
    and the project root before the JVM gateway starts.
    """
    paths = [str(PROJECT_ROOT), sysconfig.get_paths()["purelib"]]
    existing = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([existing] if existing else []))


PROMETHEUS_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


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


def prometheus_reporter_settings(port: str) -> dict[str, str]:
    """Flink configuration of the PrometheusReporter, named ``prom``, on ``port`` (or a range).

    Label values are kept as they are (``filterLabelValueCharacters: false``): the default filter
    would turn the histogram's ``le="+Inf"`` into ``"_Inf"`` (which breaks
    ``histogram_quantile``) and ``user-events`` into ``user_events``.
    """
    return {
        "metrics.reporter.prom.factory.class": PROMETHEUS_FACTORY,
        "metrics.reporter.prom.port": str(port),
        "metrics.reporter.prom.filterLabelValueCharacters": "false",
    }


def build_environment(cfg: EngineConfig) -> StreamExecutionEnvironment:
    prepare_python_environment()
    if cfg.job.prometheus_port:
        prepare_local_reporter_classpath()  # before Configuration() starts the gateway JVM
    conf = Configuration()
    conf.set_string("python.execution-mode", cfg.job.execution_mode)
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    conf.set_string("pipeline.jars", ";".join(p.resolve().as_uri() for p in connector_jars()))
    conf.set_string("pipeline.name", cfg.job.name)
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", str(cfg.job.restart_attempts))
    conf.set_string("restart-strategy.fixed-delay.delay", f"{cfg.job.restart_delay_ms} ms")
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


def _starting_offsets(cfg: EngineConfig) -> KafkaOffsetsInitializer:
    if cfg.kafka.starting_offsets == "earliest":
        return KafkaOffsetsInitializer.earliest()
    if cfg.kafka.starting_offsets == "latest":
        return KafkaOffsetsInitializer.latest()
    return KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST)


def null_safe_bytes_schema() -> DeserializationSchema:
    """Raw value bytes; a tombstone becomes b"" (deploy/java: NullSafeByteArraySchema).

    Flink's ByteArraySchema yields null for a tombstone, which the source drops silently; the
    edge must see it to dead-letter it.
    """
    jvm = get_gateway().jvm
    return DeserializationSchema(jvm.io.github.recsys.flink.NullSafeByteArraySchema())


def row_field_schema(index: int) -> SerializationSchema:
    """Field ``index`` (bytes) of Row(key, value); None stays None, so a None value is a
    tombstone (deploy/java: NullableRowFieldSchema; Flink's RowFieldExtractorSchema writes b"")."""
    jvm = get_gateway().jvm
    return SerializationSchema(jvm.io.github.recsys.flink.NullableRowFieldSchema(index))


def kafka_source(cfg: EngineConfig, topic: str) -> KafkaSource:
    """Raw bytes of each record: decoding is the edge's job, so bad bytes reach the DLQ."""
    builder = (KafkaSource.builder()
               .set_bootstrap_servers(cfg.kafka.bootstrap_servers)
               .set_topics(topic)
               .set_group_id(cfg.kafka.group_id)
               .set_starting_offsets(_starting_offsets(cfg))
               .set_value_only_deserializer(null_safe_bytes_schema())
               # Read only committed output of transactional producers (our own loop-backs too).
               .set_property("isolation.level", "read_committed")
               .set_property("client.id.prefix", f"{cfg.kafka.group_id}-{topic}")
               .set_property("partition.discovery.interval.ms", "60000"))
    for key, value in cfg.kafka.client_properties.items():
        builder = builder.set_property(key, str(value))
    return builder.build()


def read_topic(env: StreamExecutionEnvironment, cfg: EngineConfig, topic: str):
    return env.from_source(kafka_source(cfg, topic), WatermarkStrategy.no_watermarks(),
                           f"kafka:{topic}", type_info=BYTES).uid(f"source-{topic}")


def kafka_sink(cfg: EngineConfig, topic: str, name: str) -> KafkaSink:
    guarantee = {"exactly-once": DeliveryGuarantee.EXACTLY_ONCE,
                 "at-least-once": DeliveryGuarantee.AT_LEAST_ONCE,
                 "none": DeliveryGuarantee.NONE}[cfg.kafka.delivery_guarantee]
    serializer = (KafkaRecordSerializationSchema.builder()
                  .set_topic(topic)
                  .set_key_serialization_schema(row_field_schema(0))
                  .set_value_serialization_schema(row_field_schema(1))
                  .build())
    builder = (KafkaSink.builder()
               .set_bootstrap_servers(cfg.kafka.bootstrap_servers)
               .set_record_serializer(serializer)
               .set_delivery_guarantee(guarantee)
               .set_property("transaction.timeout.ms", str(cfg.kafka.transaction_timeout_ms)))
    if guarantee == DeliveryGuarantee.EXACTLY_ONCE:
        builder = builder.set_transactional_id_prefix(f"{cfg.kafka.transactional_id_prefix}-{name}")
    for key, value in cfg.kafka.client_properties.items():
        builder = builder.set_property(key, str(value))
    return builder.build()


def event_time_strategy(cfg: EngineConfig, timestamp_assigner) -> WatermarkStrategy:
    return (WatermarkStrategy
            .for_bounded_out_of_orderness(Duration.of_millis(cfg.job.watermark_out_of_orderness_ms))
            .with_idleness(Duration.of_millis(cfg.job.source_idleness_ms))
            .with_timestamp_assigner(timestamp_assigner))


def job_file() -> Path:
    return Path(__file__).resolve().parent / "recsys_job.py"
