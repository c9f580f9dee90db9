"""The streaming job: Kafka in, profiles / similarities / recommendations / dead letters out.

Runs unchanged on the local mini-cluster (``recsys job run``) and on a Flink cluster
(``flink run -py flink_jobs/recsys_job.py --pyFiles ... -- --config FILE``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # started as a script by `flink run -py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyflink.common import Types  # noqa: E402
from pyflink.common.watermark_strategy import TimestampAssigner  # noqa: E402

from flink_jobs import io  # noqa: E402
from flink_jobs.operators import (  # noqa: E402
    ACTIVITY_TAG, CATALOG_STATE, DLQ_TAG, MODEL_STATE, OCCURRENCE_STATE, PAIRS_TAG, PICKLED,
    PROFILE_TAG, ParseInput, ProfileOperator, RecommendOperator, SimilarityOperator,
    SplitProfileOutput, similarity_message)
from recsys.config import ConfigError, EngineConfig, load_config  # noqa: E402
from state_schemas.internal import ModelUpdate  # noqa: E402
from udfs.validation import (  # noqa: E402
    KIND_ATTRIBUTES, KIND_EVENT, KIND_ITEM, KIND_PRIVACY, KIND_REQUEST)


class RecordTimestamp(TimestampAssigner):
    """Event time is the record's ``ts`` field (epoch ms)."""

    def extract_timestamp(self, value, record_timestamp: int) -> int:
        return value[2]["ts"]  # InputRecord.record


def parsed(env, cfg: EngineConfig, topic: str, kind: str):
    """One input topic, validated: (records, dead letters)."""
    stream = (io.read_topic(env, cfg, topic)
              .process(ParseInput(cfg, kind, topic), output_type=PICKLED)
              .name(f"parse:{topic}").uid(f"parse-{topic}"))
    return stream, stream.get_side_output(DLQ_TAG)


def build_pipeline(env, cfg: EngineConfig) -> None:
    t = cfg.topics
    events, dlq_events = parsed(env, cfg, t.user_events, KIND_EVENT)
    attributes, dlq_attributes = parsed(env, cfg, t.user_attributes, KIND_ATTRIBUTES)
    items, dlq_items = parsed(env, cfg, t.item_catalog, KIND_ITEM)
    requests, dlq_requests = parsed(env, cfg, t.recommendation_requests, KIND_REQUEST)
    privacy, dlq_privacy = parsed(env, cfg, t.privacy_requests, KIND_PRIVACY)

    user_inputs = (events.union(attributes, requests, privacy)
                   .assign_timestamps_and_watermarks(io.event_time_strategy(cfg, RecordTimestamp()))
                   .name("event-time").uid("event-time"))

    profiles = (user_inputs
                .key_by(lambda r: r[1], key_type=Types.STRING())  # InputRecord.key
                .connect(items.broadcast(CATALOG_STATE))
                .process(ProfileOperator(cfg), output_type=PICKLED)
                .name("profiles").uid("profiles"))

    triggers = (profiles.process(SplitProfileOutput(), output_type=PICKLED)
                .name("split-profile-output").uid("split-profile-output"))
    activity = profiles.get_side_output(ACTIVITY_TAG)
    neighbor_updates = (profiles.get_side_output(PAIRS_TAG)
                        .key_by(lambda b: b[0], key_type=Types.INT())  # PairShardBatch.shard
                        .connect(activity.broadcast(OCCURRENCE_STATE))
                        .process(SimilarityOperator(cfg), output_type=PICKLED)
                        .name("item-similarity").uid("item-similarity"))

    model_updates = (items.map(lambda r: ModelUpdate("item", r), output_type=PICKLED)
                     .union(activity.map(lambda a: ModelUpdate("activity", a), output_type=PICKLED),
                            neighbor_updates.map(lambda n: ModelUpdate("neighbors", n),
                                                 output_type=PICKLED)))
    recommendations = (triggers
                       .key_by(lambda trig: trig[0], key_type=Types.STRING())  # .user_id
                       .connect(model_updates.broadcast(MODEL_STATE))
                       .process(RecommendOperator(cfg), output_type=io.KAFKA_RECORD)
                       .name("recommendations").uid("recommendations"))

    recommendations.sink_to(io.kafka_sink(cfg, t.recommendations, "recommendations")) \
        .name("sink:recommendations").uid("sink-recommendations")
    triggers.get_side_output(PROFILE_TAG).sink_to(io.kafka_sink(cfg, t.user_profiles, "profiles")) \
        .name("sink:user-profiles").uid("sink-user-profiles")
    (neighbor_updates.map(similarity_message, output_type=io.KAFKA_RECORD)
     .sink_to(io.kafka_sink(cfg, t.item_similarity, "similarity"))
     .name("sink:item-similarity").uid("sink-item-similarity"))
    (dlq_events.union(dlq_attributes, dlq_items, dlq_requests, dlq_privacy,
                      profiles.get_side_output(DLQ_TAG))
     .sink_to(io.kafka_sink(cfg, t.events_dlq, "dlq"))
     .name("sink:events-dlq").uid("sink-events-dlq"))


def run(cfg: EngineConfig, detached: bool = False):
    """Run the job; blocks until it ends (a streaming job runs until cancelled)."""
    from recsys.kafka_io import KafkaUnavailable, check_connection

    try:
        check_connection(cfg.kafka)
        if cfg.privacy.pseudonymize_user_ids:
            from udfs.privacy import load_pseudonym_key

            load_pseudonym_key(cfg.privacy)  # fail here, not in every task manager
    except (KafkaUnavailable, ConfigError) as e:
        print(f"recsys job: {e}", file=sys.stderr)
        return 2
    env = io.build_environment(cfg)
    build_pipeline(env, cfg)
    if detached:
        return env.execute_async(cfg.job.name)
    env.execute(cfg.job.name)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="recsys streaming job")
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    return run(load_config(args.config, args.overrides))


if __name__ == "__main__":
    sys.exit(main())
