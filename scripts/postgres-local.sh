#!/usr/bin/env bash
# A throwaway local PostgreSQL cluster for development and tests -- no Docker needed.
#
#   scripts/postgres-local.sh install   apt-get install postgresql if no server binaries are found
#   scripts/postgres-local.sh up        init (once) and start a cluster on 127.0.0.1:$PGPORT_LOCAL (idempotent)
#   scripts/postgres-local.sh down      stop it (idempotent)
#   scripts/postgres-local.sh status    exit 0 if running, 3 if not
#   scripts/postgres-local.sh url       print the SQLAlchemy URL
#
# Superuser `postgres`, trust authentication, listens on 127.0.0.1 only (plus a
# Unix socket inside the state directory).
#
# Environment (all optional):
#   PGPORT_LOCAL        port (default 55432)
#   PG_STATE_DIR        cluster directory: data/, postgres.log, run/ (default var/postgres/<port>)
#   PG_BIN              directory with initdb/pg_ctl (default: newest /usr/lib/postgresql/*/bin)
#   PG_START_TIMEOUT    seconds to wait for readiness (default 60)
#   PG_STOP_TIMEOUT     seconds to wait for a fast shutdown before an immediate one (default 30)
#   PG_FSYNC            "off" trades crash safety for speed (tests use it; default on)
#   PG_OWNER_PID        if set, `up` also starts a watchdog that stops the server once
#                       that process has exited (used by the test fixtures)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/_service.sh
. "$(dirname "${BASH_SOURCE[0]}")/_service.sh"
PORT="${PGPORT_LOCAL:-55432}"
STATE_DIR="${PG_STATE_DIR:-$ROOT/var/postgres/$PORT}"
DATA_DIR="$STATE_DIR/data"
LOG_FILE="$STATE_DIR/postgres.log"
SOCKET_DIR="$STATE_DIR/run"
START_TIMEOUT="${PG_START_TIMEOUT:-60}"
STOP_TIMEOUT="${PG_STOP_TIMEOUT:-30}"
FSYNC="${PG_FSYNC:-on}"
PG_USER_OS=postgres   # OS account used when running as root

log() { printf 'postgres-local: %s\n' "$*"; }
die() { printf 'postgres-local: ERROR: %s\n' "$*" >&2; exit 1; }

find_pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        [[ -x "$PG_BIN/pg_ctl" && -x "$PG_BIN/initdb" ]] || die "PG_BIN=$PG_BIN has no pg_ctl/initdb"
        printf '%s' "$PG_BIN"
        return 0
    fi
    local d best=""
    # newest major version wins
    while IFS= read -r d; do
        [[ -x "$d/pg_ctl" && -x "$d/initdb" ]] && best="$d"
    done < <(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V)
    if [[ -z "$best" ]] && command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        best="$(dirname "$(command -v pg_ctl)")"
    fi
    [[ -n "$best" ]] || return 1
    printf '%s' "$best"
}

require_pg_bin() {
    if ! BIN="$(find_pg_bin)"; then
        [[ -z "${PG_BIN:-}" ]] || exit 1   # find_pg_bin already said what is wrong with PG_BIN
        die "no PostgreSQL server binaries (initdb, pg_ctl) found under /usr/lib/postgresql/*/bin or on PATH. Run: scripts/postgres-local.sh install  (as root; it runs apt-get install postgresql), or set PG_BIN."
    fi
}

cmd_install() {
    local bin
    if bin="$(find_pg_bin)"; then
        log "PostgreSQL server already installed: $("$bin/postgres" --version 2>/dev/null || echo "$bin")"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "no PostgreSQL server found and apt-get is not available; install PostgreSQL 13+ server binaries with your package manager and set PG_BIN to their bin directory."
    if [[ "$(id -u)" -ne 0 ]]; then
        die "no PostgreSQL server found; installing needs root: sudo $0 install  (or: sudo apt-get install -y postgresql)"
    fi
    log "installing PostgreSQL with apt-get ..."
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -q || die "apt-get update failed"
    timeout 900 apt-get install -y -q --no-install-recommends postgresql || die "apt-get install postgresql failed"
    bin="$(find_pg_bin)" || die "apt-get installed postgresql, but initdb/pg_ctl are still not found under /usr/lib/postgresql/*/bin"
    log "installed: $("$bin/postgres" --version)"
}

# Run a PostgreSQL binary; as root through the unprivileged postgres account
# (the server refuses to run as root).
as_pg() {
    if [[ "$(id -u)" -eq 0 ]]; then
        (cd / && runuser -u "$PG_USER_OS" -- "$@")
    else
        "$@"
    fi
}

# as root: the postgres account must reach the state dir through every parent
check_traversable() {
    [[ "$(id -u)" -eq 0 ]] || return 0
    id "$PG_USER_OS" >/dev/null 2>&1 || die "running as root, but there is no '$PG_USER_OS' OS account to run the server as (the postgresql package creates it; or run this script as a non-root user)"
    local d="$STATE_DIR"
    while [[ "$d" != "/" ]]; do
        d="$(dirname "$d")"
        if ! runuser -u "$PG_USER_OS" -- test -x "$d"; then
            die "the '$PG_USER_OS' account cannot enter $d (needed to reach $STATE_DIR). Fix with: chmod o+x $d  -- or set PG_STATE_DIR to a directory under /tmp."
        fi
    done
}

is_running() {
    [[ -f "$DATA_DIR/PG_VERSION" ]] && as_pg "$BIN/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1
}

ready() {
    "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -t 2 >/dev/null 2>&1
}

url() {
    printf 'postgresql+psycopg://postgres@127.0.0.1:%s/postgres\n' "$PORT"
}

cmd_up() {
    require_pg_bin
    if is_running; then
        log "already running on 127.0.0.1:$PORT (data $DATA_DIR); nothing to do."
        return 0
    fi
    if ready; then
        die "something else already answers on 127.0.0.1:$PORT; stop it or choose another port with PGPORT_LOCAL=..."
    fi
    mkdir -p "$STATE_DIR"
    check_traversable
    if [[ ! -f "$DATA_DIR/PG_VERSION" ]]; then
        mkdir -p "$DATA_DIR" "$SOCKET_DIR"
        if [[ "$(id -u)" -eq 0 ]]; then
            chown -R "$PG_USER_OS:" "$STATE_DIR"
        fi
        chmod 700 "$DATA_DIR"
        log "initdb $DATA_DIR ($("$BIN/postgres" --version))"
        if ! as_pg "$BIN/initdb" -D "$DATA_DIR" -U postgres --auth=trust --encoding=UTF8 --locale=C \
                >"$STATE_DIR/initdb.log" 2>&1; then
            cat "$STATE_DIR/initdb.log" >&2
            die "initdb failed (log: $STATE_DIR/initdb.log)"
        fi
        as_pg tee -a "$DATA_DIR/postgresql.conf" >/dev/null <<EOF

# --- added by scripts/postgres-local.sh ---
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCKET_DIR'
max_connections = 200
fsync = $FSYNC
synchronous_commit = $FSYNC
full_page_writes = $FSYNC
EOF
        # trust, 127.0.0.1 only
        as_pg tee "$DATA_DIR/pg_hba.conf" >/dev/null <<EOF
# generated by scripts/postgres-local.sh: throwaway cluster, trust on loopback only
local all all                trust
host  all all 127.0.0.1/32   trust
EOF
    fi
    if [[ "$(id -u)" -eq 0 ]]; then
        # the log file and socket dir must be writable by the server
        mkdir -p "$SOCKET_DIR"
        touch "$LOG_FILE"
        chown "$PG_USER_OS:" "$STATE_DIR" "$SOCKET_DIR" "$LOG_FILE"
    fi

    log "starting on 127.0.0.1:$PORT"
    local start=$SECONDS
    if ! as_pg "$BIN/pg_ctl" start -D "$DATA_DIR" -l "$LOG_FILE" -w -t "$START_TIMEOUT" >/dev/null; then
        tail -n 25 "$LOG_FILE" >&2 || true
        die "pg_ctl start failed or timed out after ${START_TIMEOUT}s (log: $LOG_FILE)"
    fi
    local deadline=$((SECONDS + START_TIMEOUT))
    until ready; do
        if ((SECONDS >= deadline)); then
            tail -n 25 "$LOG_FILE" >&2 || true
            as_pg "$BIN/pg_ctl" stop -D "$DATA_DIR" -m immediate >/dev/null 2>&1 || true
            die "server did not accept connections within ${START_TIMEOUT}s (PG_START_TIMEOUT); stopped it. Log: $LOG_FILE"
        fi
        sleep 0.2
    done
    log "ready on 127.0.0.1:$PORT after $((SECONDS - start)) s: $(url)"
    # the server runs while postmaster.pid exists
    service_watchdog PG_OWNER_PID pg-watchdog "the server" "$DATA_DIR/postmaster.pid" \
        "$STATE_DIR/watchdog.log" "${BASH_SOURCE[0]}" down
}

cmd_down() {
    local bin
    if ! bin="$(find_pg_bin)"; then
        log "no PostgreSQL binaries installed, so nothing can be running; nothing to do."
        return 0
    fi
    BIN="$bin"
    if ! is_running; then
        log "not running on 127.0.0.1:$PORT (data $DATA_DIR); nothing to do."
        return 0
    fi
    log "stopping 127.0.0.1:$PORT"
    if ! as_pg "$BIN/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t "$STOP_TIMEOUT" >/dev/null 2>&1; then
        log "fast shutdown did not finish within ${STOP_TIMEOUT}s; immediate shutdown"
        as_pg "$BIN/pg_ctl" stop -D "$DATA_DIR" -m immediate -w -t 30 >/dev/null 2>&1 \
            || die "could not stop the server in $DATA_DIR (log: $LOG_FILE)"
    fi
    log "stopped"
}

cmd_status() {
    require_pg_bin
    if is_running && ready; then
        log "running on 127.0.0.1:$PORT (data $DATA_DIR): $(url)"
        return 0
    fi
    log "not running on 127.0.0.1:$PORT"
    return 3
}

case "${1:-}" in
    install) cmd_install ;;
    up)      cmd_up ;;
    down)    cmd_down ;;
    status)  cmd_status ;;
    url)     url ;;
    -h|--help|help) service_usage ;;
    *) service_usage >&2; exit 2 ;;
esac
