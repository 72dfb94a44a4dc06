# queuestream developer tasks. Services run locally from packages/jars (no Docker needed):
#   Kafka:      scripts/kafka-local.sh     (KAFKA_PORT, default 9092)
#   PostgreSQL: scripts/postgres-local.sh  (PGPORT_LOCAL, default 55432)
#   Kafka Connect (Debezium's JDBC sink): scripts/connect-local.sh (CONNECT_PORT, default 8083)
# Tests start their own throwaway services (see tests/services.py).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.queuestream-installed
KAFKA_JARS_STAMP := .cache/kafka/lib/.complete
LINT_PATHS := queuestream producer consumers schemas bench tests
MYPY_PATHS := queuestream producer consumers schemas bench tests
# make test: pytest-xdist workers (the tests mostly wait on Kafka and the databases, so
# more workers than cores pay off); the slowest tests are listed at the end of each run.
PYTEST_WORKERS ?= 4
PYTEST_ARGS ?=
# make bench: its own broker (port BENCH_KAFKA_PORT) with the full JIT (kafka-local.sh's
# default -XX:TieredStopAtLevel=1 starts fast but caps broker throughput), arguments
# for bench/producer.py in BENCH_ARGS, e.g. make bench BENCH_ARGS="--rows 50000 --json"
BENCH_KAFKA_PORT ?= 9192
BENCH_KAFKA_HEAP_OPTS ?= -Xms512m -Xmx1g
BENCH_KAFKA_JVM_OPTS ?= -XX:+UseParallelGC -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true
BENCH_ARGS ?=

.PHONY: help venv test-deps kafka-jars registry-jar connect-plugins kafka-up kafka-down kafka-status pg-up pg-down test demo bench bench-consumers bench-recovery bench-freshness bench-sweep bench-soak bench-state bench-memory bench-kafka-up bench-kafka-down lint schema-history clean distclean

help:
	@echo "make venv        create .venv and install queuestream[test,dev,mssql] (editable)"
	@echo "make test        run the test suite (starts its own Kafka, PostgreSQL and schema registry;"
	@echo "                 installs missing system packages first, see make test-deps)"
	@echo "make test-deps   install what the tests need and is missing (Java, Maven, PostgreSQL,"
	@echo "                 Chromium; scripts/test-deps.sh, as CI does)"
	@echo "make kafka-up    start a local Kafka broker on 127.0.0.1:\$${KAFKA_PORT:-9092}"
	@echo "make kafka-down  stop it"
	@echo "make pg-up       start a local PostgreSQL on 127.0.0.1:\$${PGPORT_LOCAL:-55432}"
	@echo "make pg-down     stop it"
	@echo "make demo        run 'queuestream demo' against the local broker"
	@echo "make bench       run bench/producer.py against a local broker on \$${BENCH_KAFKA_PORT:-9192} (full JIT)"
	@echo "                 and the local PostgreSQL; options in BENCH_ARGS (see bench/producer.py --help)"
	@echo "make bench-consumers  run bench/consumers.py the same way (rows applied/s into PostgreSQL)"
	@echo "make bench-recovery   run bench/recovery.py the same way (rebuild vs consumer, monitor, replay)"
	@echo "make bench-freshness  run bench/freshness.py the same way: produce --interval 1 and both"
	@echo "                      consumers live under 10,000 rows/s; p50/p95/p99 refresh start -> commit"
	@echo "make bench-sweep      run bench/sweep.py the same way (sweep of 1,000,000 unchanged rows, state rebuild)"
	@echo "make bench-memory     run bench/memory.py the same way (ONE refresh of 1,000,000 rows: peak RSS"
	@echo "                      of the producer and of each consumer, real processes)"
	@echo "make bench-soak       run bench/soak.py: producer and both consumers under steady load for"
	@echo "                      10 minutes; RSS growth, lag and errors (BENCH_ARGS=\"--minutes 2 --json\")"
	@echo "make bench-state      run bench/state.py: one refresh's writes into the producer's local"
	@echo "                      state, empty and holding 1,000,000 rows (no service needed)"
	@echo "make bench-kafka-down  stop the benchmark's broker"
	@echo "make lint        ruff + mypy"
	@echo "make schema-history  record the current .avsc files in schemas/avro/history (after a contract change)"
	@echo "make clean       stop local services, remove var/ and tool caches (keeps .venv, .cache)"
	@echo "make distclean   clean + remove .venv and .cache"

# Re-installs whenever pyproject.toml or the C extension it builds changes.
$(VENV_STAMP): pyproject.toml $(wildcard schemas/avro/_c*.c schemas/avro/_*.h)
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): install python3-venv (apt-get install -y python3-venv) or set PYTHON=python3.X" >&2; exit 1; }
	$(VPY) -m pip install -q -e '.[test,dev,mssql]'
	@touch $@

venv: $(VENV_STAMP)

# System packages (Java, Maven, PostgreSQL, Chromium, ...): installed when missing (root or
# sudo -n), else it stops with the command to run. .ci/run uses the same script.
test-deps:
	@scripts/test-deps.sh

# scripts/kafka-local.sh fetch is a no-op once the pinned jars are present.
kafka-jars:
	@scripts/kafka-local.sh fetch

# scripts/registry-local.sh fetch builds the schema registry once (Maven Central, ~30-60 s cold).
registry-jar:
	@scripts/registry-local.sh fetch

# scripts/connect-local.sh fetch downloads Debezium's JDBC sink and Apicurio's converter
# into .cache/connect once (Maven Central, ~80 MB).
connect-plugins:
	@scripts/connect-local.sh fetch

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

# Prerequisites in this order: the system packages before the jars (Java, Maven).
test: test-deps venv kafka-jars registry-jar connect-plugins
	$(VPY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15 $(PYTEST_ARGS)

demo: venv kafka-up
	KAFKA_BOOTSTRAP_SERVERS="$${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$${KAFKA_PORT:-9092}}" $(VENV)/bin/queuestream demo

# A broker already running on BENCH_KAFKA_PORT is reused as it is (JVM flags included).
bench-kafka-up: kafka-jars
	@KAFKA_PORT=$(BENCH_KAFKA_PORT) KAFKA_HEAP_OPTS="$(BENCH_KAFKA_HEAP_OPTS)" \
		KAFKA_JVM_OPTS="$(BENCH_KAFKA_JVM_OPTS)" scripts/kafka-local.sh up

bench-kafka-down:
	@KAFKA_PORT=$(BENCH_KAFKA_PORT) scripts/kafka-local.sh down

bench: venv bench-kafka-up pg-up
	@KAFKA_PORT=$(BENCH_KAFKA_PORT) $(VPY) -m bench.producer $(BENCH_ARGS)

bench-consumers: venv bench-kafka-up pg-up
	@KAFKA_PORT=$(BENCH_KAFKA_PORT) $(VPY) -m bench.consumers $(BENCH_ARGS)

bench-recovery: venv bench-kafka-up pg-up
	@KAFKA_PORT=$(BENCH_KAFKA_PORT) $(VPY) -m bench.recovery $(BENCH_ARGS)

bench-freshness: venv bench-kafka-up pg-up
	@KAFKA_PORT=$(BENCH_KAFKA_PORT) $(VPY) -m bench.freshness $(BENCH_ARGS)

bench-sweep: venv bench-kafka-up pg-up
	@KAFKA_PORT=$(BENCH_KAFKA_PORT) $(VPY) -m bench.sweep $(BENCH_ARGS)

bench-memory: venv bench-kafka-up pg-up
	@KAFKA_PORT=$(BENCH_KAFKA_PORT) $(VPY) -m bench.memory $(BENCH_ARGS)

bench-state: venv
	@$(VPY) -m bench.state $(BENCH_ARGS)

bench-soak: venv bench-kafka-up pg-up
	@KAFKA_PORT=$(BENCH_KAFKA_PORT) $(VPY) -m bench.soak $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy $(MYPY_PATHS)

schema-history: venv
	$(VPY) -m schemas.avro.record_history

clean:
	@for d in var/kafka/*/; do [ -d "$$d" ] || continue; KAFKA_PORT="$$(basename "$$d")" scripts/kafka-local.sh down || true; done
	@for d in var/postgres/*/; do [ -d "$$d" ] || continue; PGPORT_LOCAL="$$(basename "$$d")" scripts/postgres-local.sh down || true; done
	@for d in var/registry/*/; do [ -d "$$d" ] || continue; REGISTRY_PORT="$$(basename "$$d")" scripts/registry-local.sh down || true; done
	@for d in var/connect/*/; do [ -d "$$d" ] || continue; CONNECT_PORT="$$(basename "$$d")" scripts/connect-local.sh down || true; done
	rm -rf var .pytest_cache .mypy_cache .ruff_cache build dist
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .cache
