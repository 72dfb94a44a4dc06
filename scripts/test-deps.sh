#!/usr/bin/env bash
# Install the system packages that `make lint` and `make test` need and that are missing:
# make, python3 with venv, Java 17+ (Kafka, its tools, the schema registry), Maven (builds
# the registry), a PostgreSQL server (tests/services.py runs throwaway clusters) and
# Debian's chromium (the monitor's web page is tested in it), a C compiler and Python's
# headers (the Avro readers' C extension), and the two libraries
# mssql-python loads (queuestream[mssql], whose unit tests import it). Used by `make test` and by
# .ci/run, so that both install the same things the same way.
#
#   scripts/test-deps.sh          install what is missing (apt-get, as root or through sudo -n)
#
# Prints what it installs, or "nothing to install". Where it cannot install (no apt-get,
# not root and no password-less sudo) it stops at once with the command to run.
#
# Environment (all optional):
#   QUEUESTREAM_TEST_CHROMIUM   a Chromium binary to use instead of /usr/bin/chromium
#   PG_BIN                      a directory with the PostgreSQL server binaries
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

log() { printf 'test-deps: %s\n' "$*"; }
die() { printf 'test-deps: ERROR: %s\n' "$*" >&2; exit 1; }

java_ok() {
    command -v java >/dev/null 2>&1 || return 1
    local v
    v="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')"
    [[ "$v" =~ ^[0-9]+$ && "$v" -ge 17 ]]
}

# The same places scripts/postgres-local.sh looks in for initdb and pg_ctl.
postgres_ok() {
    [[ -n "${PG_BIN:-}" && -x "$PG_BIN/pg_ctl" ]] && return 0
    compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null && return 0
    command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1
}

missing=()
command -v make >/dev/null 2>&1 || missing+=(make)
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
java_ok || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
postgres_ok || missing+=(postgresql)
[[ -x "${QUEUESTREAM_TEST_CHROMIUM:-/usr/bin/chromium}" ]] || missing+=(chromium)
# The Avro readers' and writers' C extensions (schemas/avro/_creader.c, _cwriter.c, built by
# `make venv`): a C compiler and Python's headers (tests/unit/test_fast_reader.py and
# test_record_writer.py fail under CI=true without them).
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    missing+=(python3-dev)
fi
# queuestream[mssql]: mssql-python's bundled ODBC driver loads these (its unit tests import it).
if command -v ldconfig >/dev/null 2>&1; then
    ldconfig -p | grep -q 'libltdl\.so\.7' || missing+=(libltdl7)
    ldconfig -p | grep -q 'libgssapi_krb5\.so\.2' || missing+=(libgssapi-krb5-2)
fi

if ((${#missing[@]} == 0)); then
    log "nothing to install"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 \
    || die "missing: ${missing[*]}, and apt-get is not available: install them with the system's package manager (Java 17+ for openjdk-17-jre-headless, PostgreSQL 13+ server binaries for postgresql, or set PG_BIN / QUEUESTREAM_TEST_CHROMIUM)"
if [[ "$(id -u)" -eq 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    die "missing: ${missing[*]}. Install them as root, then run make test again: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
fi

log "installing: ${missing[*]}"
timeout 600 "${sudo[@]}" apt-get update -q || die "apt-get update failed"
timeout 900 "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || die "apt-get install ${missing[*]} failed"
log "installed: ${missing[*]}"
