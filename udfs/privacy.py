"""Pseudonymisation of user ids, and redaction of personal data in free text (no pyflink).

With ``privacy.pseudonymize_user_ids`` on, every user id is replaced at the job's edge by a keyed
HMAC-SHA256, so raw ids never reach state, logs or output topics. The mapping is stable for a
given key (profiles survive restarts) and cannot be inverted without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Mapping

import orjson

from state_schemas.config import ConfigError, PrivacyConfig


def load_pseudonym_key(cfg: PrivacyConfig, environ: Mapping[str, str] | None = None) -> bytes:
    """The HMAC key from the environment variable ``cfg.key_env`` or the file ``cfg.key_file``."""
    env = os.environ if environ is None else environ
    value = env.get(cfg.key_env, "")
    if not value and cfg.key_file:
        try:
            value = Path(cfg.key_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"privacy.key_file cannot be read: {e.strerror}") from None
    if len(value) < 16:
        raise ConfigError(f"pseudonymisation is on but no key of at least 16 characters was found "
                          f"in ${cfg.key_env} or privacy.key_file")
    return value.encode("utf-8")


def pseudonymize(user_id: str, key: bytes, hex_chars: int = 32) -> str:
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:hex_chars]


# Personal data that can hide in any text: email addresses, and phone numbers written with a
# leading "+" or with separators (at least 9 digits, so timestamps, prices and dates are not).
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d ()-]{7,}\d(?![\w.])")
REDACTED = "[redacted]"


def _phone_or_keep(m: re.Match[str]) -> str:
    text = m.group(0)
    digits = sum(c.isdigit() for c in text)
    shaped = text.startswith("+") or any(c in " ()-" for c in text)
    return REDACTED if digits >= 9 and shaped else text


def redact_personal_text(text: str) -> str:
    """``text`` with email- and phone-shaped substrings replaced by ``[redacted]``: for dead
    letters' raw text (even truncated or not valid UTF-8) and attribute values."""
    if "@" in text:
        text = _EMAIL.sub(REDACTED, text)
    return _PHONE.sub(_phone_or_keep, text)


_USER_ID_VALUE = re.compile(r'("user_id"\s*:\s*")((?:[^"\\]|\\.)*)"')


def pseudonymize_raw_user_ids(text: str, key: bytes, hex_chars: int) -> str | None:
    """``text`` (a dead letter's raw JSON, possibly truncated) with every ``"user_id": "..."``
    value replaced by its pseudonym, or None when a raw id might remain (a ``user_id`` that is
    not a complete string value, or escapes that could spell the name differently): the caller
    then withholds the raw text rather than store a raw id."""
    if "\\u" in text:
        return None
    replaced = 0

    def swap(m: re.Match[str]) -> str:
        nonlocal replaced
        replaced += 1
        try:
            raw_id = orjson.loads(f'"{m.group(2)}"')
        except orjson.JSONDecodeError:
            raw_id = m.group(2)
        return f'{m.group(1)}{pseudonymize(raw_id, key, hex_chars)}"'

    out = _USER_ID_VALUE.sub(swap, text)
    return out if replaced == text.count("user_id") else None
