"""state_schemas.config: defaults, then TOML file, then RECSYS__ environment, then --set; strict types."""

from __future__ import annotations

import dataclasses
import pickle
import struct
from pathlib import Path

import pytest

from state_schemas.config import (
    DAY_MS,
    EVENT_TYPES,
    REMOVED_SETTINGS,
    ConfigError,
    EngineConfig,
    TopicNames,
    VariantConfig,
    load_config,
)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "engine.toml"
    path.write_text(text)
    return path


def load(*overrides: str, path: Path | None = None, **environ: str) -> EngineConfig:
    """load_config isolated from the developer's shell (environ defaults to empty)."""
    return load_config(path, list(overrides), environ=environ)


# --------------------------------------------------------------------------- defaults

def test_defaults_equal_the_dataclass_defaults() -> None:
    assert load().to_dict() == EngineConfig().to_dict()


def test_default_values_that_other_modules_rely_on() -> None:
    cfg = load()
    assert cfg.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert cfg.kafka.delivery_guarantees == {
        "recommendations": "at-least-once", "user_profiles": "exactly-once",
        "item_similarity": "exactly-once", "events_dlq": "exactly-once"}
    # The sinks' transactions must fit in the broker's default transaction.max.timeout.ms (15 min).
    assert cfg.kafka.transaction_timeout_ms <= 900_000
    assert cfg.job.parallelism == 1
    assert set(cfg.profile.event_weights) == set(EVENT_TYPES)
    assert sum(v.traffic for v in cfg.recommend.variants.values()) > 0


def test_topic_names_are_distinct_and_compacted_ones_are_outputs() -> None:
    names = TopicNames()
    assert len(set(names.all_topics())) == len(names.all_topics()) == 10
    assert set(names.compacted_topics()) == {"user-profiles", "item-similarity", "recommendations"}
    assert set(names.input_topics()).isdisjoint(names.compacted_topics())
    assert names.events_dlq in names.all_topics()
    # The internal model-update topic is neither an input nor compacted.
    assert names.item_model == "item-model-updates" and names.item_model in names.all_topics()
    assert names.item_model not in names.input_topics() + names.compacted_topics()


def test_config_pickles_for_the_operators() -> None:
    cfg = load("similarity.top_k=7")
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_default_instances_do_not_share_mutable_state() -> None:
    a, b = load(), load()
    a.profile.event_weights["view"] = 99.0
    a.recommend.variants["control"].traffic = 0.9
    a.kafka.delivery_guarantees["recommendations"] = "none"
    assert b.profile.event_weights["view"] == 1.0
    assert b.recommend.variants["control"].traffic == 0.5
    assert b.kafka.delivery_guarantees["recommendations"] == "at-least-once"


# --------------------------------------------------------------------------- TOML file

def test_toml_file_overrides_defaults_and_keeps_the_rest(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
[kafka]
bootstrap_servers = "broker-1:9093,broker-2:9093"
partitions = 6
client_properties = { "security.protocol" = "SASL_SSL", "sasl.mechanism" = "PLAIN" }

[similarity]
top_k = 30
popularity_alpha = 1      # an integer where a float is expected is fine

[job]
checkpoint_interval_ms = 10_000
""")
    cfg = load(path=path)
    assert cfg.kafka.bootstrap_servers == "broker-1:9093,broker-2:9093"
    assert cfg.kafka.partitions == 6
    assert cfg.kafka.client_properties == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}
    assert cfg.similarity.top_k == 30
    assert cfg.similarity.popularity_alpha == 1.0 and isinstance(cfg.similarity.popularity_alpha, float)
    assert cfg.job.checkpoint_interval_ms == 10_000
    assert cfg.consumer_group() == "recsys-engine"  # untouched default: the job's name
    assert cfg.similarity.metric == "cosine"


def test_group_and_transactional_ids_follow_the_job_name_unless_set() -> None:
    # Two deployments with different job names never share a consumer group or fence each
    # other's transactions; explicit settings win.
    a, b = load(RECSYS__JOB__NAME="shop-eu"), load(RECSYS__JOB__NAME="shop-us")
    assert (a.consumer_group(), a.transactional_id_prefix()) == ("shop-eu", "shop-eu")
    assert b.transactional_id_prefix() == "shop-us" != a.transactional_id_prefix()
    c = load(RECSYS__JOB__NAME="shop-eu", RECSYS__KAFKA__GROUP_ID="g",
             RECSYS__KAFKA__TRANSACTIONAL_ID_PREFIX="t")
    assert (c.consumer_group(), c.transactional_id_prefix()) == ("g", "t")


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(path=tmp_path / "nope.toml")


def test_a_file_extends_a_preset_and_says_only_what_differs(tmp_path: Path) -> None:
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "base.toml").write_text("[similarity]\ntop_k = 70\nmetric = \"jaccard\"\n")
    (tmp_path / "site.toml").write_text('extends = "presets/base.toml"\n[similarity]\ntop_k = 30\n')
    cfg = load(path=tmp_path / "site.toml")
    assert (cfg.similarity.top_k, cfg.similarity.metric) == (30, "jaccard")   # file over preset
    (presets / "loop.toml").write_text('extends = "../loop2.toml"\n')
    (tmp_path / "loop2.toml").write_text('extends = "presets/loop.toml"\n')
    with pytest.raises(ConfigError, match="extends itself"):
        load(path=tmp_path / "loop2.toml")
    # a list: applied in order, each later one over the earlier, the file over them all
    (presets / "more.toml").write_text("[similarity]\ntop_k = 90\nmin_cooccurrence = 2.0\n")
    (tmp_path / "both.toml").write_text(
        'extends = ["presets/base.toml", "presets/more.toml"]\n[similarity]\nmin_cooccurrence = 3.0\n')
    cfg = load(path=tmp_path / "both.toml")
    assert (cfg.similarity.top_k, cfg.similarity.metric, cfg.similarity.min_cooccurrence) == (
        90, "jaccard", 3.0)
    (tmp_path / "bad.toml").write_text('extends = 3\n')
    with pytest.raises(ConfigError, match="extends must be a file name or a list"):
        load(path=tmp_path / "bad.toml")
    (tmp_path / "gone.toml").write_text('extends = "presets/nope.toml"\n')
    with pytest.raises(ConfigError, match="does not exist .extended by"):
        load(path=tmp_path / "gone.toml")


def test_the_shipped_ratings_preset_and_ml100k_file_load() -> None:
    from recsys.paths import PROJECT_ROOT

    ratings = load(path=PROJECT_ROOT / "deploy/presets/ratings.toml")
    ml = load(path=PROJECT_ROOT / "deploy/ml-100k.toml")
    assert ratings.profile.rate_neutral == ml.profile.rate_neutral == 0.0
    assert ml.similarity == ratings.similarity and ml.recommend == ratings.recommend
    assert ml.profile == ratings.profile and set(ml.recommend.variants) == {"tuned"}
    assert ml.similarity.ease_head_items > 0  # the preset runs EASE over the head
    # protocol B's file: the data set's settings with the streaming preset over the ratings one
    stream = load(path=PROJECT_ROOT / "deploy/ml-100k-next-item.toml")
    next_item = load(path=PROJECT_ROOT / "deploy/presets/next_item.toml")
    assert stream.recommend == next_item.recommend and stream.similarity.ease_head_items == \
        next_item.similarity.ease_head_items
    assert stream.validation.min_ts_ms == ml.validation.min_ts_ms
    assert stream.job.checkpoint_dir == ml.job.checkpoint_dir
    assert stream.recommend.recency_half_life_items > 0  # the latest items lead


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="engine.toml"):
        load(path=write_toml(tmp_path, "[kafka\npartitions = 2\n"))


# --------------------------------------------------------------------------- environment

def test_env_variable_overrides_a_setting() -> None:
    cfg = load(RECSYS__PROFILE__RECENT_ITEMS_MAX="100", RECSYS__SIMILARITY__METRIC="jaccard")
    assert cfg.profile.recent_items_max == 100
    assert cfg.similarity.metric == "jaccard"  # a bare word is taken as a string


def test_env_values_are_toml_literals() -> None:
    cfg = load(RECSYS__KAFKA__GROUP_ID='"quoted group"',
               RECSYS__PROFILE__PRICE_LEVEL_BOUNDS="[10, 50.5]",
               RECSYS__SIMILARITY__POPULARITY_ALPHA="0.25")
    assert cfg.kafka.group_id == "quoted group"
    assert cfg.profile.price_level_bounds == [10, 50.5]
    assert cfg.similarity.popularity_alpha == 0.25


def test_env_ignores_variables_without_the_double_underscore_prefix() -> None:
    cfg = load(RECSYS_VAR_DIR="/tmp/x", RECSYS_CACHE_DIR="/tmp/y", OTHER__JOB__PARALLELISM="4")
    assert cfg.to_dict() == EngineConfig().to_dict()


def test_process_environment_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS__JOB__PARALLELISM", "3")
    assert load_config().job.parallelism == 3


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[similarity]\ntop_k = 30\n")
    assert load(path=path, RECSYS__SIMILARITY__TOP_K="40").similarity.top_k == 40


# --------------------------------------------------------------------------- --set and precedence

def test_set_overrides_env_which_overrides_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[similarity]\ntop_k = 30\nmax_pairs_per_item = 300\n")
    cfg = load("similarity.top_k=50", path=path, RECSYS__SIMILARITY__TOP_K="40",
               RECSYS__SIMILARITY__MAX_PAIRS_PER_ITEM="250")
    assert cfg.similarity.top_k == 50              # --set beats env and file
    assert cfg.similarity.max_pairs_per_item == 250  # env beats file


def test_later_set_wins_and_whitespace_is_ignored() -> None:
    cfg = load("job.parallelism=2", " job.parallelism = 4 ")
    assert cfg.job.parallelism == 4


def test_set_quoted_bootstrap_servers_like_the_cli() -> None:
    # recsys.config_args.config_from_arguments quotes --bootstrap-servers; unquoted host:port also works (not a TOML literal).
    assert load('kafka.bootstrap_servers="h:1"').kafka.bootstrap_servers == "h:1"
    assert load("kafka.bootstrap_servers=h:2,h:3").kafka.bootstrap_servers == "h:2,h:3"


def test_set_without_equals_sign_is_rejected() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        load("job.parallelism")


# --------------------------------------------------------------------------- type errors

@pytest.mark.parametrize("override, where", [
    ('job.parallelism="two"', "job.parallelism"),
    ("job.parallelism=2.5", "job.parallelism"),
    ("job.parallelism=true", "job.parallelism"),  # a bool is not an int
    ('similarity.popularity_alpha="half"', "similarity.popularity_alpha"),
    ("similarity.popularity_alpha=false", "similarity.popularity_alpha"),
    ("profile.price_level_bounds=3", "profile.price_level_bounds"),
    ("kafka.client_properties=3", "kafka.client_properties"),
    ("kafka=3", "kafka"),  # a section needs a table
    ("recommend.variants=[1]", "recommend.variants"),
])
def test_wrong_types_are_config_errors(override: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load(override)


def test_wrong_type_in_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="job.checkpoint_interval_ms"):
        load(path=write_toml(tmp_path, '[job]\ncheckpoint_interval_ms = "5s"\n'))


def test_wrong_type_in_env_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="similarity.top_k"):
        load(RECSYS__SIMILARITY__TOP_K="many")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------- unknown keys

@pytest.mark.parametrize("override, match", [
    ("nosuchsection.key=1", "unknown setting nosuchsection"),
    ("kafka.nosuchkey=1", "unknown setting kafka.nosuchkey"),
    ("recommend.variants.control.w_magic=1.0", "unknown setting recommend.variants.control.w_magic"),
])
def test_unknown_keys_are_config_errors(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match.replace(".", r"\.")):
        load(override)


def test_unknown_key_error_lists_the_known_keys() -> None:
    with pytest.raises(ConfigError, match="known: .*bootstrap_servers"):
        load("kafka.bootstrap=1")


def test_unknown_key_in_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="similarity.topk"):
        load(path=write_toml(tmp_path, "[similarity]\ntopk = 3\n"))


def test_unknown_env_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="job.paralellism"):
        load(RECSYS__JOB__PARALELLISM="2")


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("override, match", [
    ('job.state_backend="redis"', "state_backend"),
    ('kafka.delivery_guarantees.recommendations="maybe"',
     "kafka.delivery_guarantees.recommendations must be exactly-once, at-least-once or none"),
    ('kafka.delivery_guarantees.item_model="exactly-once"', "unknown sink 'item_model'"),
    ("validation.dedup_window_ms=0", "dedup_window_ms"),
    ("validation.dedup_window_ms=3888000001", "dedup_window_ms"),  # 45 days + 1 ms
    ("job.batch_max_records=0", "job.batch_max_records must be >= 1"),
    ("job.batch_max_delay_ms=-1", "job.batch_max_delay_ms must be >= 0"),
    ("profile.state_cache_users=0", "profile.state_cache_users must be >= 1"),
    ("recommend.model_max_items=15", "recommend.model_max_items must be >= 16"),
    ("similarity.flush_interval_ms=-1", "similarity.flush_interval_ms must be >= 0"),
    ('kafka.starting_offsets="middle"', "starting_offsets"),
    ('similarity.metric="euclid"', "similarity.metric"),
    ('similarity.pair_weights="ratings"', "similarity.pair_weights must be action or binary"),
    ("similarity.pair_half_life_items=-1", "similarity.pair_half_life_items must be a number >= 0"),
    ("similarity.popularity_alpha=1.5", "popularity_alpha"),
    ("similarity.top_k=0", "similarity.top_k must be positive"),
    ("similarity.max_pairs_per_item=10", "max_pairs_per_item must be >= similarity.top_k"),
    ("profile.interests_max=0", "profile.interests_max"),
    ("job.parallelism=0", "job.parallelism"),
    ("recommend.variants={a={traffic=0.0}}", "traffic shares"),
])
def test_invalid_values_are_rejected(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load(override)


def test_all_validation_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load('job.state_backend="x"', "job.parallelism=0")
    assert "state_backend" in str(info.value) and "parallelism" in str(info.value)


# --------------------------------------------------------------------------- variants

def test_variants_table_from_file_replaces_the_defaults(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
[recommend.variants.a]
traffic = 0.2
w_content = 2

[recommend.variants.b]
traffic = 0.8
w_collaborative = 0.0
w_trending = 1.5
""")
    variants = load(path=path).recommend.variants
    assert list(variants) == ["a", "b"]
    assert variants["a"] == VariantConfig(traffic=0.2, w_content=2.0)
    assert isinstance(variants["a"].w_content, float)
    assert variants["b"] == VariantConfig(traffic=0.8, w_collaborative=0.0, w_trending=1.5)


def test_variants_from_an_inline_table_on_the_command_line() -> None:
    cfg = load("recommend.variants={solo={traffic=1.0, w_segment=0.0}}")
    assert cfg.recommend.variants == {"solo": VariantConfig(traffic=1.0, w_segment=0.0)}


def test_empty_variants_table_is_rejected() -> None:
    with pytest.raises(ConfigError, match="non-empty table"):
        load("recommend.variants={}")


def test_variant_weight_of_wrong_type_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"recommend\.variants\.a\.traffic"):
        load('recommend.variants={a={traffic="most"}}')


# --------------------------------------------------------------------------- event weights

def test_event_weights_merge_with_the_defaults(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[profile.event_weights]\npurchase = 20\nview = 0.5\n")
    weights = load(path=path).profile.event_weights
    assert weights["purchase"] == 20.0 and isinstance(weights["purchase"], float)
    assert weights["view"] == 0.5
    assert weights["click"] == 2.0  # not mentioned: default kept
    assert set(weights) == set(EVENT_TYPES)


def test_event_weights_merge_across_layers(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[profile.event_weights]\npurchase = 20\n")
    cfg = load("profile.event_weights={share=7}", path=path,
               RECSYS__PROFILE__EVENT_WEIGHTS="{like=3}")
    weights = cfg.profile.event_weights
    assert (weights["purchase"], weights["like"], weights["share"]) == (20.0, 3.0, 7.0)


def test_event_weights_reject_unknown_event_types() -> None:
    with pytest.raises(ConfigError, match="unknown event type 'teleport'"):
        load("profile.event_weights={teleport=1.0}")


def test_event_weights_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match="profile.event_weights"):
        load("profile.event_weights=3")


# --------------------------------------------------------------------------- delivery guarantees

SINKS = {"recommendations", "user_profiles", "item_similarity", "events_dlq"}


def test_delivery_guarantees_cover_every_output_sink() -> None:
    guarantees = load().kafka.delivery_guarantees
    assert set(guarantees) == SINKS
    # The sinks are named by the fields of [topics] of the output topics.
    assert SINKS <= {f.name for f in dataclasses.fields(TopicNames)}
    assert guarantees["recommendations"] == "at-least-once"
    assert {guarantees[s] for s in SINKS - {"recommendations"}} == {"exactly-once"}


def test_one_sink_guarantee_set_on_the_command_line_merges() -> None:
    cfg = load('kafka.delivery_guarantees.recommendations="exactly-once"')
    assert cfg.kafka.delivery_guarantees == dict.fromkeys(SINKS, "exactly-once")
    cfg = load("kafka.delivery_guarantees.events_dlq=none")  # a bare word is a string
    assert cfg.kafka.delivery_guarantees["events_dlq"] == "none"
    assert cfg.kafka.delivery_guarantees["recommendations"] == "at-least-once"


def test_delivery_guarantees_merge_across_file_env_and_set(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[kafka.delivery_guarantees]\nuser_profiles = "at-least-once"\n')
    cfg = load('kafka.delivery_guarantees={item_similarity="none"}', path=path,
               RECSYS__KAFKA__DELIVERY_GUARANTEES__RECOMMENDATIONS='"exactly-once"')
    assert cfg.kafka.delivery_guarantees == {
        "recommendations": "exactly-once", "user_profiles": "at-least-once",
        "item_similarity": "none", "events_dlq": "exactly-once"}


@pytest.mark.parametrize("override, match", [
    ('kafka.delivery_guarantees.recommendations="exactly_once"', "recommendations must be"),
    ('kafka.delivery_guarantees.recommendation="none"', "unknown sink 'recommendation'"),
    ('kafka.delivery_guarantees.user_events="none"', "unknown sink 'user_events'"),
    ("kafka.delivery_guarantees=3", "kafka.delivery_guarantees"),
])
def test_bad_delivery_guarantees_are_config_errors(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load(override)


def test_unknown_sink_error_lists_the_known_sinks() -> None:
    with pytest.raises(ConfigError) as info:
        load('kafka.delivery_guarantees.dlq="none"')
    assert all(sink in str(info.value) for sink in SINKS)


# --------------------------------------------------------------------------- removed settings

def test_removed_settings_are_the_documented_ones() -> None:
    assert set(REMOVED_SETTINGS) == {
        "similarity.shards", "similarity.flush_max_batch", "recommend.trending_snapshot_every",
        "kafka.delivery_guarantee", "validation.max_list_items", "similarity.decay_landmark_ms",
        "job.execution_mode"}
    for name in REMOVED_SETTINGS:  # none of them is still a field
        section, key = name.split(".")
        assert key not in {f.name for f in dataclasses.fields(getattr(EngineConfig(), section))}


@pytest.mark.parametrize("name", sorted(REMOVED_SETTINGS))
def test_a_removed_setting_on_the_command_line_says_what_to_do(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(f"{name}=1")
    message = str(info.value)
    assert f"setting {name} was removed" in message
    assert REMOVED_SETTINGS[name] in message
    assert "unknown setting" not in message


@pytest.mark.parametrize("name", sorted(REMOVED_SETTINGS))
def test_a_removed_setting_in_a_file_or_the_environment_says_what_to_do(
        tmp_path: Path, name: str) -> None:
    section, key = name.split(".")
    path = write_toml(tmp_path, f"[{section}]\n{key} = 4\n")
    with pytest.raises(ConfigError, match=f"{name.replace('.', '[.]')} was removed"):
        load(path=path)
    with pytest.raises(ConfigError, match=f"{name.replace('.', '[.]')} was removed"):
        load(**{f"RECSYS__{section.upper()}__{key.upper()}": "4"})


def test_the_old_delivery_guarantee_points_to_the_per_sink_setting() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.delivery_guarantees\.<sink>"):
        load('kafka.delivery_guarantee="exactly-once"')


# --------------------------------------------------------------------------- new settings

def test_new_settings_defaults() -> None:
    cfg = load()
    assert (cfg.job.batch_max_records, cfg.job.batch_max_delay_ms) == (1_000, 5)
    assert cfg.profile.state_cache_users == 20_000
    assert cfg.recommend.model_max_items == 1_000_000
    assert cfg.validation.dedup_window_ms == DAY_MS


def test_new_settings_accept_their_boundary_values() -> None:
    cfg = load("job.batch_max_records=1", "job.batch_max_delay_ms=0",
               "profile.state_cache_users=1", "recommend.model_max_items=16",
               f"validation.dedup_window_ms={45 * DAY_MS}", "similarity.flush_interval_ms=0")
    assert (cfg.job.batch_max_records, cfg.job.batch_max_delay_ms) == (1, 0)
    assert (cfg.profile.state_cache_users, cfg.recommend.model_max_items) == (1, 16)
    assert cfg.validation.dedup_window_ms == 45 * DAY_MS
    assert cfg.similarity.flush_interval_ms == 0


@pytest.mark.parametrize("override", ['job.batch_max_records="many"', "job.batch_max_delay_ms=0.5",
                                      "profile.state_cache_users=true",
                                      "recommend.model_max_items=1e6"])
def test_new_settings_are_typed(override: str) -> None:
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load(override)


# Counts the binary state layouts store in 16 bits (state_schemas/profile_state.py: u16 n_days,
# n_interests, n_recent, n_consumed, n_dedup; state_schemas/item_state.py: u16 n_entries,
# n_neighbors), like the 16-bit dedup minutes that bound validation.dedup_window_ms.
U16_BOUNDED = ["profile.consumed_max=70000", "validation.dedup_max_ids_per_user=70000",
               "profile.interests_max=70000", "profile.recent_items_max=70000",
               "similarity.max_pairs_per_item=70000"]


@pytest.mark.parametrize("override", U16_BOUNDED)
def test_sizes_beyond_the_16_bit_state_counts_are_rejected(override: str) -> None:
    try:
        load(override)
    except ConfigError:
        return
    raise AssertionError(f"{override} was accepted")


def test_the_16_bit_state_counts_really_are_limits() -> None:
    """What the check above guards against, shown on the codec."""
    from state_schemas.profile_state import UserProfile, encode_profile

    encode_profile(UserProfile("u", consumed=dict.fromkeys(range(65_535))))
    with pytest.raises(struct.error):
        encode_profile(UserProfile("u", consumed=dict.fromkeys(range(65_536))))


# --------------------------------------------------------------------------- former defects

def test_event_weight_that_is_not_a_number_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="profile.event_weights"):
        load('profile.event_weights={view="lots"}')


def test_variant_that_is_not_a_table_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="recommend.variants.control"):
        load("recommend.variants.control=1")


def test_overriding_one_variant_weight_keeps_the_other_variants() -> None:
    cfg = load("recommend.variants.control.traffic=0.3")
    assert set(cfg.recommend.variants) == {"control", "content_heavy"}


def test_client_property_set_with_dotted_name_is_a_flat_string() -> None:
    cfg = load("kafka.client_properties.security.protocol=SASL_SSL")
    assert cfg.kafka.client_properties == {"security.protocol": "SASL_SSL"}


def test_event_weight_booleans_are_rejected_and_dotted_keys_merge() -> None:
    with pytest.raises(ConfigError, match=r"profile\.event_weights\.like"):
        load("profile.event_weights.like=true")
    weights = load("profile.event_weights.share=9").profile.event_weights
    assert weights["share"] == 9.0 and weights["view"] == 1.0


def test_overriding_one_variant_weight_keeps_its_other_weights() -> None:
    variants = load("recommend.variants.content_heavy.w_content=2.0").recommend.variants
    assert variants == {
        "control": VariantConfig(traffic=0.5),
        "content_heavy": VariantConfig(traffic=0.5, w_collaborative=0.7, w_content=2.0),
    }


def test_env_override_of_one_variant_keeps_the_variants_of_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[recommend.variants.a]\ntraffic = 0.2\n[recommend.variants.b]\ntraffic = 0.8\n")
    cfg = load(path=path, RECSYS__RECOMMEND__VARIANTS__B__W_TRENDING="0.9")
    assert cfg.recommend.variants == {"a": VariantConfig(traffic=0.2),
                                      "b": VariantConfig(traffic=0.8, w_trending=0.9)}


def test_dotted_key_for_a_new_variant_adds_it() -> None:
    variants = load("recommend.variants.bold.traffic=0.25").recommend.variants
    assert set(variants) == {"control", "content_heavy", "bold"}
    assert variants["bold"] == VariantConfig(traffic=0.25)


def test_client_properties_merge_across_layers_as_strings(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[kafka.client_properties]\n"sasl.mechanism" = "PLAIN"\n'
                                "request.timeout.ms = 30000\n")
    cfg = load("kafka.client_properties.ssl.endpoint.identification.algorithm=https", path=path,
               RECSYS__KAFKA__CLIENT_PROPERTIES__ENABLE__IDEMPOTENCE="true")
    assert cfg.kafka.client_properties == {
        "sasl.mechanism": "PLAIN",
        "request.timeout.ms": "30000",  # the Java client wants strings
        "enable.idempotence": "true",
        "ssl.endpoint.identification.algorithm": "https",
    }


def test_client_property_with_a_list_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.client_properties"):
        load("kafka.client_properties.bootstrap.servers=[1, 2]")


def test_restart_strategy_defaults_to_unlimited_exponential_delay() -> None:
    from flink_jobs.settings import restart_settings

    opts = restart_settings(load())
    assert opts["restart-strategy.type"] == "exponential-delay"
    # no cap on attempts: a job that keeps failing keeps retrying, ever more slowly
    assert "restart-strategy.exponential-delay.attempts-before-reset-backoff" not in opts
    assert opts["restart-strategy.exponential-delay.initial-backoff"] == "1000 ms"
    assert opts["restart-strategy.exponential-delay.max-backoff"] == "60000 ms"
    assert opts["restart-strategy.exponential-delay.reset-backoff-threshold"] == "600000 ms"
    capped = restart_settings(load("job.restart_attempts=50"))
    assert capped["restart-strategy.exponential-delay.attempts-before-reset-backoff"] == "50"


def test_fixed_delay_and_none_restart_strategies() -> None:
    from flink_jobs.settings import restart_settings

    fixed = restart_settings(load('job.restart_strategy="fixed-delay"', "job.restart_attempts=3",
                                  "job.restart_delay_ms=2000"))
    assert fixed == {"restart-strategy.type": "fixed-delay",
                     "restart-strategy.fixed-delay.attempts": "3",
                     "restart-strategy.fixed-delay.delay": "2000 ms"}
    assert restart_settings(load('job.restart_strategy="none"')) == {"restart-strategy.type": "none"}


@pytest.mark.parametrize("bad", ['job.restart_strategy="sometimes"', "job.restart_delay_ms=0",
                                 "job.restart_max_delay_ms=10", "job.restart_attempts=-1"])
def test_bad_restart_settings_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"job\.restart"):
        load(bad)
