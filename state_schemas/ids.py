"""Stable 64-bit hashes of ids: how state refers to items and events it only needs to recognise.

Codes (``udfs.items.ItemTable``) are process-local and never persisted; hashes are the same in
every process and release. BLAKE2b with an 8-byte digest, read little-endian.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np


def id_hash(value: str) -> int:
    """Stable 64-bit hash of an id, as a Python int."""
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little")


def id_hashes(values: Iterable[str]) -> np.ndarray:
    """:func:`id_hash` of each value, as uint64."""
    return np.fromiter((id_hash(v) for v in values), dtype=np.uint64)
