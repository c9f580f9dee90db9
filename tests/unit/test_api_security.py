"""The HTTP API's access rules (recsys/serving/security.py), without a server."""

from __future__ import annotations

import pytest

from recsys.serving.security import (READ, WRITE, Authenticator, TokenBuckets, check_bind,
                                 HostCheck, host_name, load_api_keys, parse_api_keys)
from state_schemas.config import ConfigError, ServeConfig

READER = "reader-key-0123456789"
WRITER = "writer-key-0123456789"


def test_keys_parse_with_scopes_and_write_implies_read():
    keys = parse_api_keys(f"{READER}:read, {WRITER}:write\n# a comment\n", "test")
    auth = Authenticator(keys)
    assert auth.caller({"X-API-Key": READER}, "p").scopes == {READ}
    assert auth.caller({"Authorization": f"Bearer {WRITER}"}, "p").scopes == {READ, WRITE}
    assert auth.caller({"authorization": f"bearer {WRITER}"}, "p") is None  # header names: case
    assert auth.caller({"X-API-Key": "wrong-key-0123456789"}, "p") is None
    assert auth.caller({}, "p") is None
    # the identity used for rate limits names the key by its digest, never the key itself
    assert READER not in auth.caller({"X-API-Key": READER}, "p").identity


@pytest.mark.parametrize("bad", ["justakey0123456789", "tiny7:read", f"{READER}:admin"])
def test_bad_key_entries_are_config_errors_that_do_not_show_the_key(bad):
    with pytest.raises(ConfigError) as e:
        parse_api_keys(bad, "$RECSYS_API_KEYS")
    assert bad.split(":")[0] not in str(e.value)


def test_keys_come_from_the_environment_first_then_the_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"{READER}:read\n")
    cfg = ServeConfig(api_keys_file=str(f))
    assert len(load_api_keys(cfg, {})) == 1
    assert len(load_api_keys(cfg, {"RECSYS_API_KEYS": f"{READER}:read,{WRITER}:write"})) == 2
    assert load_api_keys(ServeConfig(), {}) == {}
    with pytest.raises(ConfigError, match="cannot read"):
        load_api_keys(ServeConfig(api_keys_file=str(tmp_path / "missing")), {})


def test_without_keys_everyone_may_write_but_only_on_loopback():
    assert Authenticator({}).caller({}, "127.0.0.1").scopes == {READ, WRITE}
    assert check_bind("127.0.0.1", False) is None
    assert check_bind("::1", False) is None
    assert check_bind("localhost", False) is None
    assert "without API keys" in check_bind("0.0.0.0", False)
    assert check_bind("0.0.0.0", True) is None


def test_token_bucket_grants_the_burst_then_the_rate():
    b = TokenBuckets(rate_per_s=2.0, burst=3)
    assert [b.take("k", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = b.take("k", 100.0)
    assert wait == pytest.approx(0.5)
    assert b.take("k", 100.5) == 0.0  # one token back after 1/rate
    assert b.take("other", 100.5) == 0.0  # buckets are per caller


def test_token_buckets_forget_the_least_recent_callers():
    b = TokenBuckets(1.0, 1, max_callers=2)
    for caller in ("a", "b", "c"):
        b.take(caller, 0.0)
    assert b.take("a", 0.0) == 0.0  # "a" was dropped: a fresh bucket


@pytest.mark.parametrize("header,ok", [
    ("127.0.0.1:8080", True), ("localhost:8080", True), ("[::1]:8080", True), ("localhost", True),
    ("evil.example:8080", False), ("127.0.0.1.evil.example", False), (None, False), ("", False)])
def test_loopback_service_answers_only_to_loopback_host_names(header, ok):
    assert HostCheck("127.0.0.1", ServeConfig()).allows(header) is ok


def test_allowed_hosts_and_non_loopback_binds():
    assert HostCheck("127.0.0.1", ServeConfig(allowed_hosts=["Recsys.Internal"])).allows(
        "recsys.internal:8080")
    assert HostCheck("0.0.0.0", ServeConfig()).allows("anything.example")  # keys protect it there
    assert host_name("[::1]:80") == "::1" and host_name("A.Example:80") == "a.example"
