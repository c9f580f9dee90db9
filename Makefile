# The two commands a newcomer needs: `make run` and `make test`. Both set themselves up.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
RECSYS := $(VENV)/bin/recsys
PORT ?= 9092
SECONDS ?= 0
HTTP_PORT ?= 8080
PYTEST_ARGS ?=

.PHONY: setup test-tools run test test-unit test-integration bench bench-quick profile eval clean

setup:
	@bash scripts/setup.sh

## Tools only the tests need (headless Chromium, wrk, Prometheus + promtool), via apt-get.
test-tools:
	@bash scripts/install_test_tools.sh
	@bash scripts/install_prometheus.sh

## make run: local broker + topics + the job on the mini-cluster + the bundled sample stream,
## printing profiles and recommendations as they arrive (Ctrl-C stops everything).
run: setup
	$(RECSYS) demo --port $(PORT) --http-port $(HTTP_PORT) --seconds $(SECONDS)

## make test: unit tests, then integration tests against a real broker and real Flink jobs.
test: setup test-tools
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup test-tools
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

## make bench: the real stack end to end in one run (own Kafka broker on a free port, ~15 min on
## the 2-core machine): throughput and event->recommendation latency on a synthetic Zipf workload
## and the ml-100k replay, the machine's ceilings (no-Python Flink copy job, raw Kafka consume),
## similarity kernel, thread vs process, parallelism 1 vs 2, state size and skew, recovery after
## a killed TaskManager, the HTTP
## service under load. Writes reports/bench.{json,md} and friends.
bench: setup test-tools
	$(PY) bench/bench_state_size.py --out reports/state_size.json
	$(PY) bench/bench_recovery.py --out reports/recovery.json
	$(PY) bench/bench_unknown_ids.py --out reports/unknown_ids.json
	$(PY) bench/bench_ease.py --out reports/ease.json
	$(PY) bench/bench_e2e.py --out-json reports/bench.json --out-md reports/bench.md
	$(PY) bench/bench_serve.py --seconds 20 --out reports/bench_serve.json

bench-quick: setup
	$(PY) bench/bench_e2e.py --quick --out-json reports/bench.json --out-md reports/bench.md

## make profile: where the time goes (py-spy on the running job; offline replay of the hot path)
profile: setup
	$(VENV)/bin/pip install -q py-spy
	$(PY) bench/profile_job.py --out reports/profile_job.json
	$(PY) bench/bench_hot_path.py --out reports/hot_path.json

## make eval: MovieLens-100k through the real job: protocol A (top-10 vs the published
## Recommenders table + popularity) and B (prequential, live vs frozen, A/B); writes
## reports/eval.json + reports/eval_*.png and prints the table (~18 min on the 2-core machine,
## from a fresh clone including set-up).
eval: setup
	$(PY) -m recsys.evaluation --config deploy/ml-100k.toml --out reports

clean:
	-$(RECSYS) kafka stop --port $(PORT)
	rm -rf var reports/*.json
