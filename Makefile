# The two commands a newcomer needs: `make run` and `make test`. Both set themselves up.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
RECSYS := $(VENV)/bin/recsys
PORT ?= 9092
SECONDS ?= 0
HTTP_PORT ?= 8080
PYTEST_ARGS ?=

.PHONY: setup test-tools run test test-unit test-integration bench clean

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

## make bench: similarity kernel (vectorised vs reference) and event->recommendation latency;
## JSON reports under reports/.
bench: setup
	$(PY) bench/bench_similarity_kernel.py --out reports/bench_similarity_kernel.json
	$(PY) bench/latency_probe.py --rate 50 --seconds 30 --out reports/latency_probe.json
	$(PY) bench/bench_serve.py --seconds 20 --out reports/bench_serve.json

clean:
	-$(RECSYS) kafka stop --port $(PORT)
	rm -rf var reports/*.json
