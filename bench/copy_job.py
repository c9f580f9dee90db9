"""Ceiling job: Kafka -> Kafka copy on the same mini-cluster, with no Python function at all.

(``--python-map`` adds one Python identity map, thread mode: the per-record cost of one hop
into the embedded interpreter and back, a floor for any PyFlink operator.)

Built with PyFlink's DataStream API from Java parts only: ``KafkaSource`` with Flink's Java
``SimpleStringSchema`` -> ``KafkaSink`` with the same schema. The job graph holds no Python
operator, so no Python worker runs; PyFlink only submits it. Same checkpoint interval, delivery
guarantee (exactly-once, Kafka transactions), read_committed source and parallelism as the
recsys job it is compared with. Runs until killed (``bench/bench_e2e.py`` stops it once the
output topic holds every input record).

    .venv/bin/python bench/copy_job.py --bootstrap 127.0.0.1:PORT --source IN --sink OUT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyflink.common import Configuration, Types, WatermarkStrategy  # noqa: E402
from pyflink.common.serialization import SimpleStringSchema  # noqa: E402
from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment  # noqa: E402
from pyflink.datastream.connectors.base import DeliveryGuarantee  # noqa: E402
from pyflink.datastream.connectors.kafka import (  # noqa: E402
    KafkaOffsetsInitializer, KafkaRecordSerializationSchema, KafkaSink, KafkaSource)

from recsys.paths import connector_jars  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--sink", required=True)
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--checkpoint-ms", type=int, default=1000)
    ap.add_argument("--guarantee", default="exactly-once",
                    choices=["exactly-once", "at-least-once", "none"])
    ap.add_argument("--checkpoint-dir", default="")
    ap.add_argument("--txn-prefix", default="copy")
    ap.add_argument("--python-map", action="store_true",
                    help="put ONE Python identity map between source and sink (thread mode): "
                         "the cost of crossing into Python and back, per record")
    args = ap.parse_args()
    if args.python_map:  # the embedded interpreter must see the venv: before the gateway starts
        from flink_jobs.io import prepare_python_environment
        prepare_python_environment()

    conf = Configuration()
    conf.set_string("pipeline.jars", ";".join(p.resolve().as_uri() for p in connector_jars()))
    conf.set_string("pipeline.name", "kafka-copy-ceiling")
    if args.checkpoint_dir:
        conf.set_string("execution.checkpointing.dir", args.checkpoint_dir)
    if args.python_map:
        conf.set_string("python.execution-mode", "thread")
        conf.set_string("python.executable", sys.executable)
        conf.set_string("python.client.executable", sys.executable)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(args.parallelism)
    if args.checkpoint_ms > 0:
        env.enable_checkpointing(args.checkpoint_ms, CheckpointingMode.EXACTLY_ONCE)

    source = (KafkaSource.builder()
              .set_bootstrap_servers(args.bootstrap)
              .set_topics(args.source)
              .set_group_id(f"copy-{args.txn_prefix}")
              .set_starting_offsets(KafkaOffsetsInitializer.earliest())
              .set_value_only_deserializer(SimpleStringSchema())
              .set_property("isolation.level", "read_committed")
              .build())
    serializer = (KafkaRecordSerializationSchema.builder()
                  .set_topic(args.sink)
                  .set_value_serialization_schema(SimpleStringSchema())
                  .build())
    guarantee = {"exactly-once": DeliveryGuarantee.EXACTLY_ONCE,
                 "at-least-once": DeliveryGuarantee.AT_LEAST_ONCE,
                 "none": DeliveryGuarantee.NONE}[args.guarantee]
    builder = (KafkaSink.builder()
               .set_bootstrap_servers(args.bootstrap)
               .set_record_serializer(serializer)
               .set_delivery_guarantee(guarantee)
               .set_property("transaction.timeout.ms", "600000"))
    if guarantee == DeliveryGuarantee.EXACTLY_ONCE:
        builder = builder.set_transactional_id_prefix(args.txn_prefix)
    stream = env.from_source(source, WatermarkStrategy.no_watermarks(), "kafka:in",
                             type_info=Types.STRING())
    if args.python_map:
        stream = stream.map(lambda s: s, output_type=Types.STRING()).name("python-identity")
    stream.sink_to(builder.build()).name("kafka:out")
    env.execute("kafka-copy-ceiling")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
