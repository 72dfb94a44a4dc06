# shellcheck shell=bash
# Functions shared by the local service scripts (kafka-local.sh, registry-local.sh,
# connect-local.sh, postgres-local.sh): reading the pid file, the up/down lock, starting a
# process in its own session, waiting for readiness, stopping a pid, the owner-pid watchdog,
# and the Maven settings the fetches use.
#
# Sourced, never run: it only defines functions (no variables, no side effects). Each
# script keeps its own commands, variables, messages and state layout, and passes what
# differs as arguments; it defines `log` and `die` (its own prefix and stream) before it
# calls these.

# service_central_settings FILE
# Writes Maven settings that route every repository to Maven Central: Apicurio's poms
# declare extra repositories (GitHub packages, Confluent, JitPack) that are unreachable here.
service_central_settings() {
    cat >"$1" <<'EOF'
<settings>
  <mirrors>
    <mirror><id>central-only</id><mirrorOf>*</mirrorOf><url>https://repo.maven.apache.org/maven2</url></mirror>
  </mirrors>
</settings>
EOF
}

# The header comment of the script that was run (line 2 up to `set -euo`), as its help.
service_usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[-1]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# service_running_pid PIDFILE PATTERN
# Prints the pid in PIDFILE when that process runs and its command line matches PATTERN
# (grep; empty: any process). Otherwise status 1, and a stale PIDFILE is removed.
service_running_pid() {
    local file="$1" pattern="$2" pid
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && { [[ -z "$pattern" ]] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern"; }; then
        printf '%s' "$pid"
        return 0
    fi
    rm -f "$file"
    return 1
}

# service_lock DIR SECONDS
# Takes the up/down lock of state directory DIR (DIR/.lock, on fd 9, held until the script
# exits), waiting at most SECONDS; status 1 when it timed out.
service_lock() {
    mkdir -p "$1"
    exec 9>"$1/.lock"
    flock -w "$2" 9
}

# service_launch NAME PIDFILE OUTFILE COMMAND...
# Starts COMMAND in its own session (a Ctrl-C in the calling terminal does not reach it),
# stdin /dev/null, stdout and stderr to OUTFILE, the locks' fds closed. The launching shell
# (process name NAME) writes its own pid to PIDFILE, then execs COMMAND (same pid).
# Prints that pid; status 1 when no pid file appeared within 10 s.
service_launch() {
    local name="$1" file="$2" out="$3"
    shift 3
    # shellcheck disable=SC2016
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' "$name" "$file" "$@" \
        </dev/null >"$out" 2>&1 8>&- 9>&- &
    local deadline=$((SECONDS + 10))
    while [[ ! -s "$file" ]] && ((SECONDS < deadline)); do sleep 0.1; done
    [[ -s "$file" ]] || return 1
    cat "$file"
}

# service_wait_ready PID SECONDS CHECK...
# Runs CHECK... every half second until it succeeds (status 0); status 1 as soon as process
# PID has exited, 2 once SECONDS have passed.
service_wait_ready() {
    local pid="$1" deadline=$((SECONDS + $2))
    shift 2
    until "$@"; do
        kill -0 "$pid" 2>/dev/null || return 1
        ((SECONDS < deadline)) || return 2
        sleep 0.5
    done
}

# service_stop PID PIDFILE SECONDS MESSAGE
# Stops process PID: SIGTERM, then SIGKILL (logging MESSAGE first) if it still runs after
# SECONDS; removes PIDFILE.
service_stop() {
    local pid="$1" file="$2" timeout="$3" message="$4"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$message"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$file"
}

# service_watchdog OWNER_VAR NAME WHAT SERVICE LOGFILE COMMAND...
# When the variable named OWNER_VAR is set (to a pid), starts a watchdog (process name NAME,
# own session, output appended to LOGFILE) that runs COMMAND -- the script's `down` -- once
# that process has exited; it ends by itself when the service stops first. SERVICE is the
# service's pid, or a file that exists while it runs (PostgreSQL's postmaster.pid). WHAT
# names the service in messages ("the broker"). Nothing when OWNER_VAR is unset or empty.
service_watchdog() {
    local var="$1" name="$2" what="$3" service="$4" out="$5"
    shift 5
    local owner="${!var:-}"
    [[ -n "$owner" ]] || return 0
    kill -0 "$owner" 2>/dev/null || die "$var=$owner is not a running process"
    # shellcheck disable=SC2016
    setsid bash -c '
        owner=$1 service=$2 what=$3; shift 3
        alive() {
            if [[ "$service" =~ ^[0-9]+$ ]]; then kill -0 "$service" 2>/dev/null; else [[ -f "$service" ]]; fi
        }
        while kill -0 "$owner" 2>/dev/null && alive; do sleep 2; done
        if alive; then
            echo "owner process $owner is gone: stopping $what"
            exec "$@"
        fi
    ' "$name" "$owner" "$service" "$what" "$@" \
        </dev/null >>"$out" 2>&1 8>&- 9>&- &
    log "watchdog: $what stops when process $owner exits"
}
