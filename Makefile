# The two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PROMETHEUS_MULTIPROC_DIR ?= $(CURDIR)/var/prometheus_multiproc

.PHONY: run worker demo test test-fast lint services install clean monitoring monitoring-check

$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The client first in the same command: the worker depends on it, and it is not on PyPI.
	$(BIN)/python -m pip install --quiet -e './client[prometheus]' -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: migrate, then worker + beat + metrics endpoint (http://127.0.0.1:8001/metrics) in the foreground
run: $(STAMP)
	$(BIN)/panic-metrics migrate
	$(BIN)/celery -A workers.celery_app worker --beat --queues events,scheduled --loglevel INFO

## demo: fire a realistic stream of sample events at the running worker (another terminal)
demo: $(STAMP)
	$(BIN)/panic-metrics demo --rate 20

## test: lint, then the whole suite on real Redis and PostgreSQL (installed and started here)
# Test files run in TEST_WORKERS parallel processes (each with its own Redis,
# database and workers); TEST_WORKERS=0 runs them in this process, one by one.
TEST_WORKERS ?= 2
test: $(STAMP) lint services
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

## test-fast: unit tests only, no services, no slow ones
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not integration and not slow'

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

services:
	bash scripts/test-services.sh

## monitoring: regenerate the Prometheus rules and Grafana dashboards from monitoring/generator (thresholds.py)
monitoring: $(STAMP)
	$(BIN)/python -m monitoring.generator

## monitoring-check: the monitoring tests alone (promtool, amtool, docker-compose, live Prometheus); `make test` runs them too
monitoring-check: $(STAMP) services
	$(BIN)/python -m pytest tests/monitoring

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
