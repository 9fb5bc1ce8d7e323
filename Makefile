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
$(RUN_STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -c constraints.txt -e '.[api,embedded,telemetry]'
	touch $(RUN_STAMP)

# Everything: every adapter's driver, Spark, and the test tools; `test` includes the
# `testing` extra (src/wotr_testing: the pytest plugin and the native stack, `wotr stack`).
$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	touch $(BENCH_STAMP)

## Measure every hop beside its ceiling on the native stack (brought up by the harness); report under bench/results/.
## Bounded: about 30 minutes. BENCH_ARGS="--quick" (a few minutes) | "--no-etl" | "--profile" | "--wait-quiet 30".
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

## Install everything, bring the native stack up when it is not running, run every suite,
## then the short fault matrix (`python -m chaos --quick`: ~4 min, on a chaos stack of its own).
test: $(STAMP) chromium
	$(WOTR) stack up
	CI=$${CI:-true} $(PY) -m pytest  # the CI command: a service that cannot be had fails, never skips
	$(MAKE) --no-print-directory examples
	$(PY) -m chaos --quick

## The fault matrix under load (kill -9 every component, count every event; ~25 min) on a
## stack of its own (~/.local/share/wotr-chaos, ports +20000); writes docs/reliability.md.
## CHAOS_ARGS="--list" | "--only api-kill9" | "--quick".
.PHONY: chaos
chaos: $(STAMP)
	$(PY) -m chaos $(CHAOS_ARGS)

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

## Zip the sources for spark-submit's --py-files: dist/wotr-etl.zip (docs/etl.md, "On a cluster").
.PHONY: etl-package
etl-package: $(STAMP)
	$(PY) -m wotr_apps.etl.submit --package dist/wotr-etl.zip

## Pin every third-party package in constraints.txt, which every install above uses (-c):
## re-resolve all extras (test, bench) to the newest versions pyproject.toml allows, then
## `make install` applies them. LOCK_ARGS="-c constraints.txt" keeps today's pins and only
## adds what a new dependency brings in.
.PHONY: lock
LOCK_ARGS ?=
lock: | $(VENV)/bin/python
	$(PY) -m pip install --quiet --dry-run --ignore-installed --report $(VENV)/lock-report.json $(LOCK_ARGS) '.[test,bench]'
	$(PY) -c "$$WOTR_LOCK_SCRIPT" $(VENV)/lock-report.json > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -f $(VENV)/lock-report.json

# pip's installation report -> constraints.txt: every package but wotr itself, name==version.
define WOTR_LOCK_SCRIPT
import json, platform, sys
report = json.load(open(sys.argv[1]))
pins = sorted(((i["metadata"]["name"], i["metadata"]["version"]) for i in report["install"]
               if not i.get("is_direct") and i["metadata"]["name"].lower() != "wotr"), key=lambda p: p[0].lower())
print("# Every third-party package of wotr and of all its extras (test, bench), pinned.")
print("# make, deployment/docker/Dockerfile and CI (make test) install with -c constraints.txt.")
print("# Generated by `make lock` (see the Makefile) for CPython %s on %s; do not edit by hand." % (
    ".".join(platform.python_version_tuple()[:2]), platform.system()))
for name, version in pins:
    print(f"{name}=={version}")
endef
export WOTR_LOCK_SCRIPT

lint: $(STAMP)
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .wotr .pytest_cache

# The reference deployment on Docker Compose: build, up, ingest, compose-etl, down, ps, logs.
include deployment/compose/Makefile.include
