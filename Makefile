# queuestream developer tasks. Services run locally from packages/jars (no Docker needed):
#   Kafka:      scripts/kafka-local.sh     (KAFKA_PORT, default 9092)
#   PostgreSQL: scripts/postgres-local.sh  (PGPORT_LOCAL, default 55432)
# Tests start their own throwaway services (see tests/services.py).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.queuestream-installed
KAFKA_JARS_STAMP := .cache/kafka/lib/.complete
LINT_PATHS := queuestream producer consumers schemas
PYTEST_ARGS ?=

.PHONY: help venv kafka-jars kafka-up kafka-down kafka-status pg-up pg-down test demo bench lint clean distclean

help:
	@echo "make venv        create .venv and install queuestream[test,dev] (editable)"
	@echo "make test        run the test suite (starts its own Kafka and PostgreSQL)"
	@echo "make kafka-up    start a local Kafka broker on 127.0.0.1:\$${KAFKA_PORT:-9092}"
	@echo "make kafka-down  stop it"
	@echo "make pg-up       start a local PostgreSQL on 127.0.0.1:\$${PGPORT_LOCAL:-55432}"
	@echo "make pg-down     stop it"
	@echo "make demo        run 'queuestream demo' against the local broker"
	@echo "make bench       run bench/producer.py against local Kafka and PostgreSQL"
	@echo "make lint        ruff + mypy"
	@echo "make clean       stop local services, remove var/ and tool caches (keeps .venv, .cache)"
	@echo "make distclean   clean + remove .venv and .cache"

# Re-installs whenever pyproject.toml changes.
$(VENV_STAMP): pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): install python3-venv (apt-get install -y python3-venv) or set PYTHON=python3.X" >&2; exit 1; }
	$(VPY) -m pip install -q -e '.[test,dev]'
	@touch $@

venv: $(VENV_STAMP)

# scripts/kafka-local.sh fetch is a no-op once the pinned jars are present.
kafka-jars:
	@scripts/kafka-local.sh fetch

kafka-up:
	@scripts/kafka-local.sh up

kafka-down:
	@scripts/kafka-local.sh down

kafka-status:
	@scripts/kafka-local.sh status

pg-up:
	@scripts/postgres-local.sh up

pg-down:
	@scripts/postgres-local.sh down

test: venv kafka-jars
	$(VPY) -m pytest -q $(PYTEST_ARGS)

demo: venv kafka-up
	$(VENV)/bin/queuestream demo

bench: venv kafka-up pg-up
	$(VPY) bench/producer.py

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy $(LINT_PATHS)

clean:
	@for d in var/kafka/*/; do [ -d "$$d" ] || continue; KAFKA_PORT="$$(basename "$$d")" scripts/kafka-local.sh down || true; done
	@for d in var/postgres/*/; do [ -d "$$d" ] || continue; PGPORT_LOCAL="$$(basename "$$d")" scripts/postgres-local.sh down || true; done
	rm -rf var .pytest_cache .mypy_cache .ruff_cache build dist
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .cache
