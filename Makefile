# wotr — two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WOTR := $(VENV)/bin/wotr
STAMP := $(VENV)/.installed-test
RUN_STAMP := $(VENV)/.installed-run
BENCH_STAMP := $(VENV)/.installed-bench
EXAMPLE_STAMP := $(VENV)/.installed-example

.PHONY: run test chromium install stack-up stack-down stack-status lint clean run-etl bench-etl bench examples

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# What `make run` needs: the API and the embedded adapters, no drivers for servers.
$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[api,embedded,telemetry]'
	touch $(RUN_STAMP)

# Everything: every adapter's driver, Spark, and the test tools; `test` includes the
# `testing` extra (src/wotr_testing: the pytest plugin and the native stack, `wotr stack`).
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

## Measure every hop beside its ceiling on the native stack (brought up by the harness); report under bench/results/.
bench: $(BENCH_STAMP)
	$(PY) -m bench $(BENCH_ARGS)

## Serve API, consumer and relay on 127.0.0.1:8000, embedded profile (no servers needed).
run: $(RUN_STAMP)
	$(WOTR) serve

## Headless Chromium for the browser test (tests/unit/test_cors_browser.py): Debian's
## package, installed only when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

## Install everything, bring the native stack up when it is not running, run every suite.
test: $(STAMP) chromium
	$(WOTR) stack up
	$(PY) -m pytest
	$(MAKE) --no-print-directory examples

# The example project that embeds wotr (examples/external-project), installed beside wotr
# from this checkout; its own suite uses wotr's pytest fixtures.
$(EXAMPLE_STAMP): $(STAMP) examples/external-project/pyproject.toml
	$(PY) -m pip install --quiet --no-deps -e examples/external-project
	touch $(EXAMPLE_STAMP)

## Run the example external project's test suite against this checkout.
examples: $(EXAMPLE_STAMP)
	cd examples/external-project && $(abspath $(PY)) -m pytest -q

stack-up: $(STAMP)
	$(WOTR) stack up

stack-down: $(STAMP)
	$(WOTR) stack down

stack-status: $(STAMP)
	$(WOTR) stack status

## Run the PySpark ETL once: ETL_ARGS="--date 2026-11-26" | "--since 2026-11-20" | "--history".
run-etl: $(STAMP)
	$(WOTR) etl $(ETL_ARGS)

## Benchmark the ETL on generated events (EVENTS, default 100000) and print rows/s.
bench-etl: $(STAMP)
	$(PY) -m wotr_apps.etl.bench --events $(or $(EVENTS),100000)

lint: $(STAMP)
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .wotr .pytest_cache

# The reference deployment on Docker Compose: build, up, ingest, compose-etl, down, ps, logs.
include deployment/compose/Makefile.include
