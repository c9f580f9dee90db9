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

from flink_jobs import io  # noqa: E402
from flink_jobs.batch_host import ROLE_ITEM, ROLE_USER, BatchFunction  # noqa: E402
from state_schemas import records as rec  # noqa: E402
from state_schemas.config import ConfigError, EngineConfig, load_config  # noqa: E402
from state_schemas.legacy import LEGACY_CATALOG_STATE  # noqa: E402
from udfs import item_side, user_side  # noqa: E402

# Operator ids: part of the savepoint layout. "profiles" is the user operator's id since the
# first release, so the profiles of earlier releases restore into it.
USER_OPERATOR_UID = "profiles"
ITEM_OPERATOR_UID = "item-model"


def build_pipeline(env, cfg: EngineConfig) -> None:
    """Kafka -> user operator (profile + recommendation) -> item operator -> Kafka.

    ::

        user-events, user-attributes, recommendation-requests, privacy-requests
            --(Java: key, event time)--> keyBy(user) --+
        item-catalog, item-model-updates --broadcast-----+--> user operator --> recommendations
                                                         |        +--> user-profiles, events-dlq
                  pair updates, keyBy(item) <------------+--------+
                  item activity, broadcast <-------------+
            --> item operator --> item-similarity
                      +--> item-model-updates (read back above: the job graph has no cycles)
    """
    t = cfg.topics
    sinks = cfg.kafka.delivery_guarantees
    user_inputs = io.input_source(env, cfg, [
        io.SourceTopic(t.user_events, rec.KIND_EVENT, "user_id", pseudonymize=True),
        io.SourceTopic(t.user_attributes, rec.KIND_ATTRIBUTES, "user_id", pseudonymize=True),
        io.SourceTopic(t.recommendation_requests, rec.KIND_REQUEST, "user_id", pseudonymize=True),
        io.SourceTopic(t.privacy_requests, rec.KIND_PRIVACY, "user_id", pseudonymize=True),
    ], "kafka:user-inputs", "source-user-inputs")
    model_inputs = io.input_source(env, cfg, [
        io.SourceTopic(t.item_catalog, rec.KIND_CATALOG, "item_id"),
        io.SourceTopic(t.item_model, rec.KIND_MODEL_UPDATE, "item_id"),
    ], "kafka:model-inputs", "source-model-inputs")

    users, user_out = io.micro_batch(
        env, io.keyed(user_inputs), model_inputs, BatchFunction(cfg, ROLE_USER),
        name="user operator", uid=USER_OPERATOR_UID, state_names=user_side.STATE_NAMES,
        shared_state="item-model", legacy_shared_states=(LEGACY_CATALOG_STATE,),
        max_records=cfg.job.batch_max_records, max_delay_ms=cfg.job.batch_max_delay_ms,
        state_ttl_ms=cfg.user_state_backstop_ttl_ms(),
        side_outputs=("profiles", "dlq", "pairs", "activity"))
    io.sink_to(users, io.kafka_sink(cfg, t.recommendations, "recommendations",
                                    sinks["recommendations"]),
               "sink:recommendations", "sink-recommendations")
    io.sink_to(user_out["profiles"], io.kafka_sink(cfg, t.user_profiles, "profiles",
                                                   sinks["user_profiles"]),
               "sink:user-profiles", "sink-user-profiles")
    io.sink_to(user_out["dlq"], io.kafka_sink(cfg, t.events_dlq, "dlq", sinks["events_dlq"]),
               "sink:events-dlq", "sink-events-dlq")

    items, item_out = io.micro_batch(
        env, io.keyed(user_out["pairs"]), user_out["activity"], BatchFunction(cfg, ROLE_ITEM),
        name="item operator", uid=ITEM_OPERATOR_UID, state_names=item_side.STATE_NAMES,
        shared_state="item-stats", legacy_shared_states=(),
        max_records=cfg.job.batch_max_records, max_delay_ms=cfg.similarity.flush_interval_ms,
        state_ttl_ms=cfg.similarity.row_ttl_ms, side_outputs=("model",))
    io.sink_to(items, io.kafka_sink(cfg, t.item_similarity, "similarity",
                                    sinks["item_similarity"]),
               "sink:item-similarity", "sink-item-similarity")
    # Model updates are idempotent (they set rows and values), so at-least-once is exact
    # enough and makes them visible to the user operator without waiting for a checkpoint.
    io.sink_to(item_out["model"], io.kafka_sink(cfg, t.item_model, "model", "at-least-once"),
               "sink:item-model-updates", "sink-item-model-updates")


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
