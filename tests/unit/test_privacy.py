import pytest

from state_schemas.config import ConfigError, PrivacyConfig
from udfs.privacy import load_pseudonym_key, pseudonymize


def test_pseudonym_is_stable_keyed_and_not_the_id():
    a = pseudonymize("alice", b"k" * 16)
    assert a == pseudonymize("alice", b"k" * 16)
    assert a != pseudonymize("alice", b"j" * 16)
    assert a != pseudonymize("bob", b"k" * 16)
    assert "alice" not in a and len(a) == 32


def test_key_from_env_or_file(tmp_path):
    cfg = PrivacyConfig(pseudonymize_user_ids=True)
    assert load_pseudonym_key(cfg, {"RECSYS_PSEUDONYM_KEY": "s" * 20}) == b"s" * 20
    f = tmp_path / "key"
    f.write_text("f" * 20 + "\n")
    cfg.key_file = str(f)
    assert load_pseudonym_key(cfg, {}) == b"f" * 20


def test_missing_or_short_key_is_a_config_error_without_the_value():
    with pytest.raises(ConfigError) as e:
        load_pseudonym_key(PrivacyConfig(pseudonymize_user_ids=True), {"RECSYS_PSEUDONYM_KEY": "short"})
    assert "short" not in str(e.value)
