#!/usr/bin/env bash
# Idempotent set-up used by `make run`, `make test`, `make bench`:
#   .venv (Python 3.11) with the pinned requirements and this project installed editable,
#   the Flink Kafka connector jar and the Kafka broker jars from Maven Central in .cache/jars/.
# Each step is skipped when its inputs (requirements.txt, pyproject.toml, deploy/jars/pom.xml)
# have not changed since it last succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || { echo "setup: Python 3.11 is required (found $("$PY" --version 2>&1))" >&2; exit 1; }
command -v java >/dev/null || { echo "setup: Java 17 is required (java not on PATH)" >&2; exit 1; }
command -v mvn >/dev/null || { echo "setup: Maven is required (mvn not on PATH)" >&2; exit 1; }

stamp() { cat "$@" | sha256sum | cut -c1-16; }

mkdir -p .cache
venv_stamp=$(stamp requirements.txt pyproject.toml)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.stamp 2>/dev/null)" != "$venv_stamp" ]; then
  echo "setup: creating .venv and installing requirements (first time: a few minutes)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$venv_stamp" > .venv/.stamp
fi

jar_stamp=$(stamp deploy/jars/pom.xml)
if [ "$(cat .cache/jars/.stamp 2>/dev/null)" != "$jar_stamp" ]; then
  echo "setup: resolving the Flink Kafka connector and Kafka broker jars from Maven Central"
  rm -rf .cache/jars
  for profile in connector kafka; do
    mvn -q -B -f deploy/jars/pom.xml dependency:copy-dependencies -P"$profile" \
      -DincludeScope=runtime -DoutputDirectory="$ROOT/.cache/jars/$profile"
  done
  echo "$jar_stamp" > .cache/jars/.stamp
fi

extras_stamp=$(stamp deploy/java/pom.xml $(find deploy/java/src -type f | sort))
if [ "$(cat .cache/jars/extras/.stamp 2>/dev/null)" != "$extras_stamp" ]; then
  echo "setup: building the job's Java extras (deploy/java)"
  rm -rf .cache/jars/extras deploy/java/target
  pyflink_dir=$(.venv/bin/python -c 'import pathlib, pyflink; print(pathlib.Path(pyflink.__file__).parent)')
  connector_jar=$(ls "$ROOT"/.cache/jars/connector/flink-sql-connector-kafka-*.jar | head -n 1)
  mvn -q -B -f deploy/java/pom.xml package -DskipTests \
    -Dpyflink.dir="$pyflink_dir" -Dkafka.connector.jar="$connector_jar"
  mkdir -p .cache/jars/extras
  cp deploy/java/target/recsys-flink-extras.jar .cache/jars/extras/
  rm -rf deploy/java/target
  echo "$extras_stamp" > .cache/jars/extras/.stamp
fi
