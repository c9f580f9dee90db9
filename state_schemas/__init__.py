"""The base of the import graph: the typed configuration (``config.py``) and an explicit,
versioned schema or codec for every message and every piece of state.

* Messages on Kafka: JSON Schema files (``json/*.json``), validated at the job's edge; the
  compiled validators (fastjsonschema) are cached per process, a few microseconds per record.
* Records between the operators: ``records.py``.
* State: ``profile_state.py`` (profiles, impression logs, forgotten-user markers),
  ``item_state.py`` (similarity rows, the EASE Gram matrix, item counters),
  ``model_state.py`` (the recommender's replicated item model), ``legacy.py`` (the old
  catalogue state); version errors are ``versioning.StateVersionError``.
* ``codecs.py``: every state and record codec behind one typed interface (``Codec[T]``).

Imports nothing of the project.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable

SCHEMA_DIR = Path(__file__).resolve().parent / "json"

# Logical message name -> schema file. The version is part of the file name; a new version is a
# new file, and readers keep accepting the old one until producers have moved.
MESSAGE_SCHEMAS: dict[str, str] = {
    "user-event": "user-event.v1.json",
    "user-attributes": "user-attributes.v1.json",
    "item-catalog": "item-catalog.v1.json",
    "recommendation-request": "recommendation-request.v1.json",
    "privacy-request": "privacy-request.v1.json",
    "recommendation": "recommendation.v1.json",
    "user-profile": "user-profile.v1.json",
    "item-similarity": "item-similarity.v1.json",
    "events-dlq": "events-dlq.v1.json",
}
MESSAGE_SCHEMA_VERSION = 1


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (as a dict) of a logical message name such as ``"user-event"``."""
    try:
        file = MESSAGE_SCHEMAS[name]
    except KeyError:
        raise KeyError(f"no schema named {name!r}; known: {sorted(MESSAGE_SCHEMAS)}") from None
    return json.loads((SCHEMA_DIR / file).read_text())


@functools.cache
def validator(name: str) -> Callable[[Any], Any]:
    """A compiled validator raising ``fastjsonschema.JsonSchemaValueException`` on bad data."""
    import fastjsonschema

    return fastjsonschema.compile(load_schema(name))
