"""Pseudonymisation of user ids (no pyflink).

With ``privacy.pseudonymize_user_ids`` on, every user id is replaced at the job's edge by a keyed
HMAC-SHA256, so raw ids never reach state, logs or output topics. The mapping is stable for a
given key (profiles survive restarts) and cannot be inverted without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Mapping

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
