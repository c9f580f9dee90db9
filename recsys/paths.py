"""Where the project's runtime files are: jars, local data, logs."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("RECSYS_CACHE_DIR", PROJECT_ROOT / ".cache"))
JARS_DIR = CACHE_DIR / "jars"
KAFKA_JARS_DIR = JARS_DIR / "kafka"
CONNECTOR_JARS_DIR = JARS_DIR / "connector"
EXTRAS_JARS_DIR = JARS_DIR / "extras"  # built from deploy/java
VAR_DIR = Path(os.environ.get("RECSYS_VAR_DIR", PROJECT_ROOT / "var"))  # broker data, logs, pids
SAMPLE_DATA_DIR = PROJECT_ROOT / "data" / "sample"


def connector_jars() -> list[Path]:
    """The jars the job ships: the Flink Kafka connector and the project's Java extras."""
    jars = sorted(CONNECTOR_JARS_DIR.glob("*.jar"))
    extras = sorted(EXTRAS_JARS_DIR.glob("*.jar"))
    if not jars or not extras:
        raise FileNotFoundError(
            f"no Flink Kafka connector jar in {CONNECTOR_JARS_DIR} or extras jar in "
            f"{EXTRAS_JARS_DIR}; run scripts/setup.sh (or make setup)")
    return jars + extras
