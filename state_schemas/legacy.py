"""The catalogue state written by releases before the micro-batch engine, read once and migrated.

Those releases stored state as pickled plain containers (never pickled project classes); the
catalogue (broadcast state ``catalog`` of operator ``profiles``) held per item a tuple
``(1, item_id, title, categories, tags, price, available, updated_at)``. The user operator reads
it once at start (``legacy_catalog_record``). Their profiles (pickled dicts) are read by
``state_schemas.profile_state.decode_profile``. Nothing writes these formats any more.
"""

from __future__ import annotations

import pickle
from typing import Any


LEGACY_CATALOG_STATE = "catalog"


def legacy_catalog_record(value: bytes) -> dict[str, Any]:
    """An entry of the old ``catalog`` broadcast state as an ``item-catalog`` record."""
    from state_schemas.versioning import StateVersionError

    entry = pickle.loads(value)
    if not isinstance(entry, tuple) or entry[0] != 1 or len(entry) != 8:
        raise StateVersionError("catalogue state entry of an unknown version")
    _, item_id, title, categories, tags, price, available, updated_at = entry
    return {"item_id": item_id, "ts": int(updated_at), "title": title,
            "categories": list(categories), "tags": list(tags), "price": price,
            "available": bool(available)}


__all__ = ["LEGACY_CATALOG_STATE", "legacy_catalog_record"]
