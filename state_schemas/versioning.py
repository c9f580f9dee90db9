"""Version checks shared by every codec in ``state_schemas``."""

from __future__ import annotations

from typing import Any

import orjson


class StateVersionError(ValueError):
    """A value written by a version of the code this one cannot read."""


def load_versioned(blob: bytes | memoryview, version: int, what: str, fields: int) -> list[Any]:
    """An orjson array ``[version, field, ...]``: its ``fields`` fields, after checking the
    version first (a newer layout fails as a version error, not as a bad unpack)."""
    try:
        msg = orjson.loads(blob)
    except orjson.JSONDecodeError as e:
        raise StateVersionError(f"{what}: not a value this code wrote ({e})") from None
    if not isinstance(msg, list) or not msg or msg[0] != version:
        found = msg[0] if isinstance(msg, list) and msg else None
        raise StateVersionError(f"{what} version {found!r} is not supported "
                                f"(this code reads {version})")
    if len(msg) != fields + 1:
        raise StateVersionError(f"{what}: {len(msg) - 1} fields, expected {fields}")
    return msg[1:]


def check_binary_header(blob: bytes | memoryview, magic: bytes, version: int, what: str) -> None:
    """A binary state value starts with a 2-byte ``magic`` and a u8 version: refuse another
    kind of value, or a version this code does not read, as a version error."""
    if bytes(blob[:2]) != magic:
        raise StateVersionError(f"not {what} state value")
    if blob[2] != version:
        raise StateVersionError(f"{what} state version {blob[2]} is not supported "
                                f"(this code reads {version})")
