"""The one typed configuration object of the engine.

Defaults live here, in code. They can be overridden, in increasing precedence, by
  1. a TOML file (``--config FILE``; sections and keys mirror the dataclasses below),
  2. environment variables ``RECSYS__<SECTION>__<KEY>`` (e.g. ``RECSYS__PROFILE__RECENT_ITEMS_MAX=100``),
  3. ``--set section.key=value`` on the command line.

Operators receive the whole ``EngineConfig`` (it pickles) and read only their section, so there are
no magic numbers inside ``flink_jobs/``. Values coming from env/CLI are parsed as TOML literals
("3", "0.5", "true", '"text"', '["a","b"]'); a bare word that is not a literal is taken as a string.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# Event types of the contract, in one place (state_schemas/json/user-event.v1.json lists the same).
EVENT_TYPES: tuple[str, ...] = (
    "view", "click", "like", "share", "comment", "add_to_cart", "purchase", "rate", "not_interested",
)


@dataclass
class TopicNames:
    user_events: str = "user-events"
    user_attributes: str = "user-attributes"
    item_catalog: str = "item-catalog"
    recommendation_requests: str = "recommendation-requests"
    privacy_requests: str = "privacy-requests"
    recommendations: str = "recommendations"
    user_profiles: str = "user-profiles"
    item_similarity: str = "item-similarity"
    events_dlq: str = "events-dlq"
    # Internal: the item operator's model updates (neighbour rows, popularity), read back by the
    # user operator. A topic rather than an edge because the user operator feeds the item
    # operator, and a Flink job graph has no cycles.
    item_model: str = "item-model-updates"

    def input_topics(self) -> list[str]:
        return [self.user_events, self.user_attributes, self.item_catalog,
                self.recommendation_requests, self.privacy_requests]

    def compacted_topics(self) -> list[str]:
        return [self.user_profiles, self.item_similarity, self.recommendations]

    def all_topics(self) -> list[str]:
        return self.input_topics() + [self.recommendations, self.user_profiles,
                                      self.item_similarity, self.events_dlq, self.item_model]


@dataclass
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    # Empty: job.name (see EngineConfig.consumer_group). Two deployments on one Kafka cluster
    # need different job names, or different group ids and transactional id prefixes.
    group_id: str = ""
    # "earliest" replays the topics from the start on a fresh job (no checkpoint/savepoint);
    # "committed" resumes from the group's committed offsets, falling back to earliest.
    starting_offsets: str = "committed"
    partitions: int = 2
    # Exactly-once sinks write in Kafka transactions; the timeout must exceed the checkpoint
    # interval plus the longest expected outage, and stay <= the broker's
    # transaction.max.timeout.ms (15 min by default).
    # Per sink (keys: the output topics' fields in [topics]): exactly-once | at-least-once | none.
    # Exactly-once output is visible to read_committed consumers at each checkpoint; at-least-once
    # output at once. Recommendations default to at-least-once: a consumer sees them within
    # milliseconds, and a duplicate after a failure carries the same trigger_event_id or
    # request_id, so it is harmless on the compacted topic. State and the other sinks stay
    # exactly-once.
    delivery_guarantees: dict[str, str] = field(default_factory=lambda: {
        "recommendations": "at-least-once", "user_profiles": "exactly-once",
        "item_similarity": "exactly-once", "events_dlq": "exactly-once"})
    transaction_timeout_ms: int = 600_000
    # The largest record the job writes (below the producers' max.request.size and the topics'
    # max.message.bytes, 1 MiB by default): model updates are split to fit; a profile snapshot
    # that would not fit goes to the DLQ instead (reason snapshot_too_large).
    max_message_bytes: int = 900_000
    # Prefix of the exactly-once sinks' transactional ids; empty: job.name. Two jobs writing
    # with one prefix fence each other's transactions, so it must be unique per deployment.
    transactional_id_prefix: str = ""
    # Extra client properties passed to every Kafka source and sink (security.protocol,
    # sasl.mechanism, sasl.jaas.config, ssl.truststore.location, ...).
    client_properties: dict[str, str] = field(default_factory=dict)


@dataclass
class JobConfig:
    name: str = "recsys-engine"
    parallelism: int = 1
    # Exactly-once sinks make output visible to read_committed consumers at each checkpoint, so
    # this interval bounds the event -> recommendation latency seen downstream.
    checkpoint_interval_ms: int = 1_000
    # The user operator calls Python once per micro-batch of records, not once per record: a
    # batch is processed when it holds batch_max_records records, when its oldest record has
    # waited batch_max_delay_ms, and always before a checkpoint barrier (exactly-once). The delay
    # is the price in latency of the batching (see docs/scaling.md).
    batch_max_records: int = 1_000
    batch_max_delay_ms: int = 5
    # How long a partly filled network buffer may wait before it is sent, paid at each of the
    # job's keyed exchanges. Flink's default, 100 ms, put ~140 ms into the event ->
    # recommendation time at low rates; 10 ms costs little (full buffers go at once anyway).
    # 0 flushes every record (most CPU). See docs/scaling.md.
    buffer_timeout_ms: int = 10
    # Number of key groups: the upper bound of any operator's parallelism and part of the
    # savepoint layout (cannot change across a restore). 128 is Flink's own default here.
    max_parallelism: int = 128
    state_backend: str = "hashmap"  # hashmap | rocksdb (incremental checkpoints)
    checkpoint_dir: str = ""  # empty: job manager memory (mini-cluster); file:///... for real use
    watermark_out_of_orderness_ms: int = 5_000
    source_idleness_ms: int = 10_000
    # Restarts after a failure (a lost TaskManager, a broker outage): "exponential-delay" (Flink's
    # own default with checkpointing) retries forever, waiting restart_delay_ms, then up to
    # restart_max_delay_ms as failures repeat, and forgets past failures after
    # restart_reset_after_ms of running without one; restart_attempts > 0 caps the attempts
    # before that reset. "fixed-delay" retries restart_attempts times restart_delay_ms apart,
    # then fails the job; "none" fails it at once.
    restart_strategy: str = "exponential-delay"
    restart_attempts: int = 0
    restart_delay_ms: int = 1_000
    restart_max_delay_ms: int = 60_000
    restart_reset_after_ms: int = 600_000
    prometheus_port: str = ""  # e.g. "9249" or "9250-9260"; empty disables the reporter
    rest_port: int = 0  # >0: the local mini-cluster serves Flink's REST API there (savepoints)
    savepoint_path: str = ""  # start from this savepoint/checkpoint (state upgrade, migration)
    allow_non_restored_state: bool = False


@dataclass
class ValidationConfig:
    max_record_bytes: int = 64 * 1024
    dlq_raw_max_chars: int = 2_000
    # Timestamps before this (2000-01-01) or further than max_future_skew_ms ahead of the
    # wall clock are "absurd" and go to the DLQ.
    min_ts_ms: int = 946_684_800_000
    max_future_skew_ms: int = DAY_MS
    max_id_length: int = 256
    dedup_window_ms: int = DAY_MS
    dedup_max_ids_per_user: int = 1_000
    # Bounds that keep every number the engine derives finite and every structure it stores
    # or re-serialises small; a record beyond one goes to the DLQ (reasons out_of_range,
    # too_deep, attributes_limit), nothing is clamped.
    max_abs_value: float = 1e6         # |value| of an event (the rating of "rate")
    max_price: float = 1e12            # catalogue prices are in [0, max_price]
    max_nesting_depth: int = 8         # objects/arrays inside objects/arrays, e.g. in context
    max_attributes: int = 64           # attributes of one user after a merge
    max_attribute_key_chars: int = 64
    max_attribute_value_chars: int = 1_024


@dataclass
class ProfileConfig:
    interest_half_life_ms: int = 14 * DAY_MS
    # How much one event of each type moves interests (and item popularity). For "rate" the
    # weight is rate_weight_scale * (rating - rate_neutral): a 5 is positive, a 1 negative.
    event_weights: dict[str, float] = field(default_factory=lambda: {
        "view": 1.0, "click": 2.0, "like": 4.0, "share": 5.0, "comment": 4.0,
        "add_to_cart": 6.0, "purchase": 10.0, "rate": 1.0, "not_interested": -8.0,
    })
    rate_neutral: float = 2.5
    rate_weight_scale: float = 2.0
    interests_max: int = 64  # features kept per user (smallest decayed weight evicted)
    recent_items_max: int = 50
    not_interested_max: int = 200
    consumed_max: int = 1_000
    # Items with these events are "consumed" and not recommended again.
    consumed_event_types: list[str] = field(default_factory=lambda: [
        "like", "share", "comment", "add_to_cart", "purchase", "rate"])
    recent_window_ms: int = 7 * DAY_MS  # "recent" behaviour counters
    # Segments
    active_events_per_week: int = 20  # >= this many events in recent_window_ms: "high" activity
    casual_events_per_week: int = 3   # >= this: "medium"; below: "low"
    new_user_age_ms: int = 7 * DAY_MS
    dormant_after_ms: int = 30 * DAY_MS
    price_level_bounds: list[float] = field(default_factory=lambda: [20.0, 100.0])
    snapshot_min_interval_ms: int = 1_000  # rate limit of user-profiles snapshots per user
    # Attributes whose names look like personal data are dropped at the edge, never stored.
    pii_attribute_names: list[str] = field(default_factory=lambda: [
        "name", "first_name", "last_name", "full_name", "email", "e_mail", "phone",
        "phone_number", "mobile", "address", "street", "ssn", "passport", "ip", "ip_address",
    ])
    # > 0: a user with no event or attributes record for this long (processing time) is
    # dropped, with tombstones on user-profiles and recommendations, like a forget (but
    # without the forgotten-user marker). 0: keep users forever.
    inactive_user_ttl_ms: int = 0
    # Users whose decoded state a user-operator subtask keeps in memory (least recently seen
    # evicted, written back first): a user's state is decoded once while it stays cached, not
    # once per event. ~2-10 KB of memory each.
    state_cache_users: int = 20_000
    # A changed user's state goes back to keyed state this long after the change (or at the
    # next checkpoint, if sooner): writing it as the stream goes keeps checkpoints short (a
    # checkpoint must otherwise encode every user changed since the last one at once, and the
    # stream waits for it), while a user with many events in a row is encoded once for them.
    state_write_back_ms: int = 200


@dataclass
class SimilarityConfig:
    metric: str = "cosine"  # cosine | jaccard | popularity_penalised
    popularity_alpha: float = 0.5  # penalised: C / (N(i)^(1-alpha) * N(j)^alpha)
    top_k: int = 20
    max_pairs_per_item: int = 200  # co-occurrence entries kept per item
    history_max_items: int = 20  # the recent items a new interaction pairs with
    # What a user adds to the occurrence N(i) and co-occurrence C(i, j): "action", their
    # strongest action weights (N = sum_u w_ui, C = sum_u min(w_ui, w_uj), TencentRec), or
    # "binary", 1 for every positively weighted item (the binary interactions of SAR and EASE).
    pair_weights: str = "action"
    # > 0: the pair with the k-th newest of those items (k = 0, 1, ...) counts 2^(-k / this),
    # so items taken up one after the other weigh most (sequential rules, Ludewig & Jannach
    # 2018); 0: every pair counts fully.
    pair_half_life_items: float = 0.0
    history_window_ms: int = 30 * DAY_MS
    half_life_ms: int = 30 * DAY_MS
    # The item operator's micro-batch: pair updates and item activity are applied, and changed
    # rows published, at most this long after they arrive (and before every checkpoint).
    flush_interval_ms: int = 200
    emit_min_interval_ms: int = 5_000  # rate limit of item-similarity records per item
    min_cooccurrence: float = 0.0
    # > 0: events at or after this event time no longer update occurrence, co-occurrence,
    # neighbours or popularity (profiles still do). The evaluation's "frozen model" baseline.
    freeze_item_model_at_ms: int = 0
    hoeffding_delta: float = 0.05
    hoeffding_min_obs: int = 5
    # Which items enter the global models (popularity, occurrence, similarity rows): "all", or
    # "catalogue" (only items the item-catalog topic has announced), which keeps events naming
    # unknown ids from growing them. Users' profiles still record such events.
    admit: str = "all"
    # > 0: a similarity row not updated for this long is dropped from keyed state (Flink state
    # TTL), so rows of items nobody touches any more do not accumulate; 0 keeps them.
    row_ttl_ms: int = 0
    # EASE over the head of the catalogue (udfs/ease.py): > 0 keeps the Gram matrix of the
    # users' recent-item sets over up to this many of the most active items, and publishes
    # their EASE weights (signed: negative weights demote) as their neighbour rows; items
    # outside the head keep the item-CF rows of `metric`. 0: item-CF only. Memory: 4 * M^2
    # bytes of keyed state on one item-operator subtask; a refresh costs an M x M inverse.
    ease_head_items: int = 0
    ease_lambda: float = 300.0       # EASE's L2 regularisation (Steck 2019)
    ease_refresh_ms: int = 10_000    # processing time between refreshes of a changed Gram


# Shipped defaults of the recommender: chosen by `recsys tune deploy/tuning/ecommerce.toml` on
# a synthetic e-commerce stream (docs/tuning/ecommerce.md, protocol B HitRate@10). A setting
# moved from its previous default only where validation gained more than 1 % (so the metric
# stays cosine: jaccard gained 0.8 %); exploration_share stays 0.1 as a product choice, at a
# measured cost (validation HitRate@10 0.0868 without, 0.0819 with).
@dataclass
class VariantConfig:
    """Blend weights of one A/B variant."""
    traffic: float = 1.0  # share of users; shares are normalised over all variants
    w_collaborative: float = 1.0
    w_content: float = 1.0
    w_trending: float = 2.0
    w_segment: float = 0.2


@dataclass
class RecommendConfig:
    default_k: int = 10
    max_k: int = 100
    candidates_per_source: int = 200
    max_per_category: int = 5  # diversity cap; 0 disables
    trending_half_life_ms: int = 2 * DAY_MS
    trending_top_n: int = 500
    experiment_salt: str = "exp-2026-1"
    variants: dict[str, VariantConfig] = field(default_factory=lambda: {
        "control": VariantConfig(traffic=0.5),
        "content_heavy": VariantConfig(traffic=0.5, w_collaborative=0.7, w_content=2.0),
    })
    feedback_window_ms: int = HOUR_MS
    impressions_max: int = 100  # recommended items remembered per user for feedback attribution
    recency_half_life_ms: int = 3 * DAY_MS  # how fast a recent item's pull on neighbours fades
    # The part of a recent item's pull that never fades: its vote is
    # weight * (floor + (1 - floor) * 2^(-age / recency_half_life_ms)). 0 lets old items fade
    # out entirely; above 0 the latest items lead while the whole history still counts.
    recency_floor: float = 0.0
    # > 0: a recent item's pull also halves with every this many newer items of the user
    # (position in the user's sequence, newest = 0), multiplied into the time fade under the
    # floor. Time alone cannot order a burst of events stamped within seconds (a rating
    # session); the sequence can, and the next item follows the latest ones. 0: off.
    recency_half_life_items: float = 0.0
    # Ranked trending arrays (overall, per category, per segment) are rebuilt from the item
    # popularity at most this often (processing time), not on every activity record.
    trending_refresh_ms: int = 200
    # Items the recommender's columnar model holds (interned item codes); beyond it the items
    # touched longest ago are evicted (they come back with their next update).
    model_max_items: int = 1_000_000
    max_interest_categories: int = 3  # favourite categories searched for content candidates
    # Item cold start: besides its most popular items, each favourite category offers its
    # newest catalogue items that are not among them (listed within new_item_window_ms of the
    # newest listing, at most new_items_per_category, newest first), so an item nobody has
    # touched yet can match a user's interests. Of the k slots, ceil(exploration_share * k)
    # go to such new items when any matches the user's interests (0: no reserved slots).
    new_items_per_category: int = 20
    new_item_window_ms: int = 14 * DAY_MS
    exploration_share: float = 0.1
    max_reasons: int = 3  # reasons per recommended item
    min_reason_share: float = 0.1  # a source is a reason when it gives this share of the score


@dataclass
class PrivacyConfig:
    # Replace user ids at the edge by HMAC-SHA256(key, user_id) (hex, truncated), so raw ids are
    # never stored nor emitted. The key comes from the environment variable named here, or from
    # key_file; it is never logged. Changing the key orphans all existing profiles.
    pseudonymize_user_ids: bool = False
    key_env: str = "RECSYS_PSEUDONYM_KEY"
    key_file: str = ""
    pseudonym_hex_chars: int = 32
    # Erasure. After a forget, later events, attributes and requests for the user go to the DLQ
    # (reason forgotten_user, without their payload) for this long, so a late or replayed record
    # cannot bring the profile back: keep it at least as long as the input topics' retention.
    forgotten_marker_ttl_ms: int = 7 * DAY_MS
    # The compacted topics (profiles, similarities, recommendations) compact a key at most this
    # long after its tombstone or newer value is written (max.compaction.lag.ms), and keep a
    # tombstone this long afterwards (delete.retention.ms), so consumers replaying the topic
    # see the deletion. Bounds how long an erased user's old values stay readable.
    compaction_max_lag_ms: int = DAY_MS
    tombstone_retention_ms: int = DAY_MS


@dataclass
class ServeConfig:
    """The HTTP service (``recsys serve``): who may call it and how often."""
    # API keys, one "key:scope" per line (scope read: GET; write: POST events and refreshes, and
    # GET). Also from $RECSYS_API_KEYS ("key1:read,key2:write"), which takes precedence. Without
    # any key the service only listens on a loopback address.
    api_keys_file: str = ""
    # Token bucket per API key (per client address when no keys are configured).
    rate_limit_per_s: float = 50.0
    rate_limit_burst: int = 100
    body_timeout_s: float = 5.0  # to read a request body; slower clients get 408
    # Host header names accepted besides the loopback names (when bound to a loopback address,
    # only those are accepted: a DNS-rebinding page cannot reach the API through the browser).
    allowed_hosts: list[str] = field(default_factory=list)
    # Users whose latest profile and recommendation the service keeps in memory (each kind);
    # beyond it the least recently updated go, and a GET for them answers 404 until their next
    # update arrives.
    max_users_cached: int = 1_000_000


@dataclass
class EngineConfig:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicNames = field(default_factory=TopicNames)
    job: JobConfig = field(default_factory=JobConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def user_state_backstop_ttl_ms(self) -> int:
        """Flink's own state TTL on the user operator's state: a backstop, well beyond both the
        engine's inactive-user expiry (which writes tombstones) and the forgotten-user marker,
        for values that never get an expiry timer (written before it existed, never again)."""
        ttl = self.profile.inactive_user_ttl_ms
        return 2 * ttl + self.privacy.forgotten_marker_ttl_ms if ttl > 0 else 0

    def consumer_group(self) -> str:
        """The sources' consumer group: ``kafka.group_id``, else the job's name."""
        return self.kafka.group_id or self.job.name

    def transactional_id_prefix(self) -> str:
        """The exactly-once sinks' transactional id prefix: ``kafka.transactional_id_prefix``,
        else the job's name (unique per deployment, so deployments never fence each other)."""
        return self.kafka.transactional_id_prefix or self.job.name


class ConfigError(ValueError):
    pass


def _parse_literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a loaded value against the type of its default, converting where it is safe."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(default, str):
        return value if isinstance(value, str) else str(value)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return value
    return value


# Settings of earlier releases that no longer exist, with what to do instead: an old config file
# fails with this explanation rather than a bare "unknown setting".
REMOVED_SETTINGS: dict[str, str] = {
    "similarity.shards": "the item operator is keyed by item since the micro-batch engine; "
                         "remove the setting (its parallelism is job.parallelism)",
    "similarity.flush_max_batch": "it was never read; remove it (similarity.flush_interval_ms "
                                  "bounds the item operator's batches)",
    "recommend.trending_snapshot_every": "trending is part of the checkpointed item model now; "
                                         "remove the setting",
    "kafka.delivery_guarantee": "set kafka.delivery_guarantees.<sink> per sink instead "
                                "(recommendations, user_profiles, item_similarity, events_dlq)",
    "similarity.decay_landmark_ms": "the forward-decay landmark is chosen from the data and "
                                    "moved forward automatically; remove the setting",
    "job.execution_mode": "the job's Python runs in micro-batch operators that embed the "
                          "interpreter (PyFlink's thread mode) always; remove the setting",
    "validation.max_list_items": "it was never read; list lengths are bounded by the JSON "
                                 "Schemas and validation.max_record_bytes",
}


def _apply(obj: Any, values: Mapping[str, Any], where: str, merge_variants: bool = False) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if f"{where}{key}" in REMOVED_SETTINGS:
            raise ConfigError(f"setting {where}{key} was removed: {REMOVED_SETTINGS[where + key]}")
        if key not in fields:
            raise ConfigError(f"unknown setting {where}{key} (known: {', '.join(sorted(fields))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}{key} is a section; expected a table")
            _apply(current, value, f"{where}{key}.", merge_variants)
        elif key == "variants" and isinstance(obj, RecommendConfig):
            # A whole table (file, or `--set recommend.variants={...}`) replaces the variants;
            # `--set recommend.variants.control.w_content=2` changes one weight of one variant.
            if not isinstance(value, Mapping) or not value:
                raise ConfigError(f"{where}{key}: expected a non-empty table of variants")
            variants = dict(obj.variants) if merge_variants else {}
            for name, weights in value.items():
                if not isinstance(weights, Mapping):
                    raise ConfigError(f"{where}{key}.{name}: expected a table of weights")
                variant = dataclasses.replace(variants.get(name, VariantConfig()))
                _apply(variant, weights, f"{where}{key}.{name}.")
                variants[name] = variant
            obj.variants = variants
        elif key == "event_weights" and isinstance(obj, ProfileConfig):
            merged = dict(current)
            for et, w in _coerce(value, current, where + key).items():
                if et not in EVENT_TYPES:
                    raise ConfigError(f"{where}{key}: unknown event type {et!r}")
                merged[et] = _coerce(w, 0.0, f"{where}{key}.{et}")
            obj.event_weights = merged
        elif key == "delivery_guarantees" and isinstance(obj, KafkaConfig):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}{key}: expected a table of sink = guarantee")
            merged = dict(current)
            merged.update({str(k): _coerce(v, "", f"{where}{key}.{k}") for k, v in value.items()})
            obj.delivery_guarantees = merged
        elif key == "client_properties" and isinstance(obj, KafkaConfig):
            # Java client property names contain dots; a dotted --set key arrives nested.
            # Values may be secrets (sasl.jaas.config): errors name keys, never values.
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}{key}: expected a table of client properties")
            merged = dict(current)
            merged.update(_flatten_properties(value, where + key))
            obj.client_properties = merged
        else:
            setattr(obj, key, _coerce(value, current, where + key))


def _flatten_properties(value: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in value.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_properties(v, where, name + "."))
        elif isinstance(v, (str, int, float, bool)):
            out[name] = str(v).lower() if isinstance(v, bool) else str(v)
        else:
            raise ConfigError(f"{where}.{name}: expected a string value, got a {type(v).__name__}")
    return out


def _names_one_variant(dotted: str) -> bool:
    """True for keys below one variant (recommend.variants.NAME...), which merge."""
    return dotted.startswith("recommend.variants.")


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.split(".")
    out: dict[str, Any] = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | os.PathLike | None = None,
                overrides: list[str] | None = None,
                environ: Mapping[str, str] | None = None) -> EngineConfig:
    """Build the configuration: defaults, then file, then environment, then ``overrides``.

    ``overrides`` are ``"section.key=value"`` strings (the CLI's ``--set``).
    """
    cfg = EngineConfig()
    if path:
        _apply_file(cfg, Path(path), ())
    env = os.environ if environ is None else environ
    for name in sorted(env):
        if name.startswith("RECSYS__"):
            dotted = name[len("RECSYS__"):].lower().replace("__", ".")
            _apply(cfg, _nested(dotted, _parse_literal(env[name])), "", _names_one_variant(dotted))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        key, _, raw = item.partition("=")
        _apply(cfg, _nested(key.strip(), _parse_literal(raw.strip())), "",
               _names_one_variant(key.strip()))
    validate_config(cfg)
    return cfg


def _apply_file(cfg: EngineConfig, p: Path, chain: tuple[Path, ...]) -> None:
    """Apply a TOML file; a top-level ``extends = "other.toml"`` (relative to the file; or a
    list of files, applied in order) is applied first, so a file can build on a preset
    (``deploy/presets/``) and say only what differs."""
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist"
                          + (f" (extended by {chain[-1]})" if chain else ""))
    if p.resolve() in chain:
        raise ConfigError(f"config file {p}: extends itself through "
                          + " -> ".join(str(c) for c in chain))
    try:
        values = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p}: {e}") from e
    bases = values.pop("extends", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config file {p}: extends must be a file name or a list of them")
    for base in bases:
        _apply_file(cfg, p.parent / base, chain + (p.resolve(),))
    _apply(cfg, values, "")


def validate_config(cfg: EngineConfig) -> None:
    """Reject settings that would make the job misbehave rather than fail."""
    problems = []
    if cfg.job.state_backend not in ("hashmap", "rocksdb"):
        problems.append("job.state_backend must be 'hashmap' or 'rocksdb'")
    j = cfg.job
    if j.restart_strategy not in ("exponential-delay", "fixed-delay", "none"):
        problems.append("job.restart_strategy must be exponential-delay, fixed-delay or none")
    if j.restart_attempts < 0 or j.restart_delay_ms < 0:
        problems.append("job.restart_attempts and job.restart_delay_ms must be >= 0")
    if j.restart_strategy == "exponential-delay" and not (
            0 < j.restart_delay_ms <= j.restart_max_delay_ms and j.restart_reset_after_ms > 0):
        problems.append("job.restart_delay_ms must be > 0 and <= job.restart_max_delay_ms, and "
                        "job.restart_reset_after_ms > 0")
    sinks = {"recommendations", "user_profiles", "item_similarity", "events_dlq"}
    for sink, guarantee in cfg.kafka.delivery_guarantees.items():
        if sink not in sinks:
            problems.append(f"kafka.delivery_guarantees: unknown sink {sink!r} "
                            f"(known: {', '.join(sorted(sinks))})")
        elif guarantee not in ("exactly-once", "at-least-once", "none"):
            problems.append(f"kafka.delivery_guarantees.{sink} must be exactly-once, "
                            f"at-least-once or none")
    if not 0 < cfg.validation.dedup_window_ms <= 45 * DAY_MS:
        problems.append("validation.dedup_window_ms must be within (0, 45 days] (the dedup "
                        "window keeps minute offsets in 16 bits)")
    # Lengths stored in 16 bits by the state layouts (profile v3, similarity rows).
    for where, value in (("profile.consumed_max", cfg.profile.consumed_max),
                         ("profile.recent_items_max", cfg.profile.recent_items_max),
                         ("profile.interests_max", cfg.profile.interests_max),
                         ("profile.not_interested_max", cfg.profile.not_interested_max),
                         ("validation.dedup_max_ids_per_user",
                          cfg.validation.dedup_max_ids_per_user),
                         ("similarity.max_pairs_per_item", cfg.similarity.max_pairs_per_item),
                         ("similarity.top_k", cfg.similarity.top_k)):
        if not 0 < value <= 65_535:
            problems.append(f"{where} must be within 1..65535 (a 16-bit count in the state "
                            f"layout)")
    if not (cfg.serve.rate_limit_per_s > 0 and cfg.serve.rate_limit_burst >= 1
            and cfg.serve.body_timeout_s > 0):
        problems.append("serve.rate_limit_per_s and serve.body_timeout_s must be > 0, "
                        "serve.rate_limit_burst >= 1")
    if cfg.kafka.starting_offsets not in ("earliest", "latest", "committed"):
        problems.append("kafka.starting_offsets must be earliest, latest or committed")
    if cfg.similarity.metric not in ("cosine", "jaccard", "popularity_penalised"):
        problems.append("similarity.metric must be cosine, jaccard or popularity_penalised")
    if not 0.0 <= cfg.recommend.exploration_share <= 1.0:
        problems.append("recommend.exploration_share must be within [0, 1]")
    if not 0.0 <= cfg.recommend.recency_floor <= 1.0:
        problems.append("recommend.recency_floor must be within [0, 1]")
    if cfg.similarity.pair_weights not in ("action", "binary"):
        problems.append("similarity.pair_weights must be action or binary")
    if not (math.isfinite(cfg.similarity.pair_half_life_items)
            and cfg.similarity.pair_half_life_items >= 0.0):
        problems.append("similarity.pair_half_life_items must be a number >= 0")
    if not (math.isfinite(cfg.recommend.recency_half_life_items)
            and cfg.recommend.recency_half_life_items >= 0.0):
        problems.append("recommend.recency_half_life_items must be a number >= 0")
    if not cfg.similarity.ease_lambda > 0.0:
        problems.append("similarity.ease_lambda must be > 0")
    if not 0.0 < cfg.similarity.hoeffding_delta < 1.0:
        problems.append("similarity.hoeffding_delta must be within (0, 1)")
    if cfg.similarity.admit not in ("all", "catalogue"):
        problems.append("similarity.admit must be all or catalogue")
    if not 0.0 <= cfg.similarity.popularity_alpha <= 1.0:
        problems.append("similarity.popularity_alpha must be within [0, 1]")
    for name in ("top_k", "max_pairs_per_item", "history_max_items"):
        if getattr(cfg.similarity, name) <= 0:
            problems.append(f"similarity.{name} must be positive")
    if cfg.similarity.max_pairs_per_item < cfg.similarity.top_k:
        problems.append("similarity.max_pairs_per_item must be >= similarity.top_k")
    for name in ("interest_half_life_ms", "recent_items_max", "interests_max"):
        if getattr(cfg.profile, name) <= 0:
            problems.append(f"profile.{name} must be positive")
    if not cfg.recommend.variants:
        problems.append("recommend.variants must name at least one variant")
    elif sum(v.traffic for v in cfg.recommend.variants.values()) <= 0:
        problems.append("recommend.variants: traffic shares must add up to more than 0")
    if not cfg.job.parallelism <= cfg.job.max_parallelism <= 32_768:
        problems.append("job.max_parallelism must be between job.parallelism and 32768")
    # Lower bounds of single settings (a note says what the bound itself means).
    job, sim, prof, privacy = cfg.job, cfg.similarity, cfg.profile, cfg.privacy
    for where, value, least, note in (
            ("job.batch_max_records", job.batch_max_records, 1, ""),
            ("job.batch_max_delay_ms", job.batch_max_delay_ms, 0, ""),
            ("job.parallelism", job.parallelism, 1, ""),
            ("job.buffer_timeout_ms", job.buffer_timeout_ms, 0, ""),
            ("similarity.flush_interval_ms", sim.flush_interval_ms, 0, ""),
            ("similarity.hoeffding_min_obs", sim.hoeffding_min_obs, 1, ""),
            ("similarity.row_ttl_ms", sim.row_ttl_ms, 0, " (0: keep rows)"),
            ("similarity.ease_head_items", sim.ease_head_items, 0, " (0: no EASE)"),
            ("similarity.ease_refresh_ms", sim.ease_refresh_ms, 1, ""),
            ("similarity.freeze_item_model_at_ms", sim.freeze_item_model_at_ms, 0,
             " (0: never freeze)"),
            ("profile.state_write_back_ms", prof.state_write_back_ms, 0, ""),
            ("profile.state_cache_users", prof.state_cache_users, 1, ""),
            ("recommend.model_max_items", cfg.recommend.model_max_items, 16, ""),
            ("recommend.new_items_per_category", cfg.recommend.new_items_per_category, 0,
             " (0: no new-item lists)"),
            ("recommend.new_item_window_ms", cfg.recommend.new_item_window_ms, 0, ""),
            ("serve.max_users_cached", cfg.serve.max_users_cached, 1, ""),
            ("privacy.forgotten_marker_ttl_ms", privacy.forgotten_marker_ttl_ms, 0, ""),
            ("privacy.compaction_max_lag_ms", privacy.compaction_max_lag_ms, 0, ""),
            ("privacy.tombstone_retention_ms", privacy.tombstone_retention_ms, 0, "")):
        if value < least:
            problems.append(f"{where} must be >= {least}{note}")
    if problems:
        raise ConfigError("; ".join(problems))
