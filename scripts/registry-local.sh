#!/usr/bin/env bash
# Local Confluent-compatible schema registry for integration tests: Apicurio Registry
# 2.4.2.Final (in-memory H2 storage), serving the Confluent API at /apis/ccompat/v7.
#
# Apicurio publishes its app module to Maven Central only as a plain (un-augmented) jar,
# so `fetch` generates a tiny wrapper Maven project that depends on it and runs the Quarkus
# build (quarkus-maven-plugin) to produce a runnable jar. Only Maven Central is used.
# Why 2.4.2.Final: for 3.x (3.0.9, 3.3.2, 3.3.3) and 2.6.13.Final, modules the app needs are
# not served by Central here; 2.4.2.Final resolves with two substitutions (see the pom below).
#
#   scripts/registry-local.sh fetch    build the runnable registry into .cache/registry (once)
#   scripts/registry-local.sh up       start it on 127.0.0.1:$REGISTRY_PORT, print its URL (idempotent)
#   scripts/registry-local.sh down     stop it (idempotent)
#   scripts/registry-local.sh url      print the Confluent-compatible base URL
#   scripts/registry-local.sh status   exit 0 if running and answering, 3 if not
#
# Environment (all optional):
#   REGISTRY_PORT            HTTP port (default 8081); state (pid, log) in var/registry/<port>
#   REGISTRY_START_TIMEOUT   seconds to wait for readiness (default 60)
#   REGISTRY_STOP_TIMEOUT    seconds to wait after SIGTERM before SIGKILL (default 20)
#   REGISTRY_JAVA_OPTS       default "-Xmx256m"
#   REGISTRY_OWNER_PID       if set, `up` also starts a watchdog that stops the registry once
#                            that process has exited (used by the test fixture)
# Storage is in memory: every start begins empty.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/_service.sh
. "$(dirname "${BASH_SOURCE[0]}")/_service.sh"
APICURIO_VERSION="2.4.2.Final"
QUARKUS_VERSION="2.16.4.Final"
PORT="${REGISTRY_PORT:-8081}"
TIMEOUT="${REGISTRY_START_TIMEOUT:-60}"
STOP_TIMEOUT="${REGISTRY_STOP_TIMEOUT:-20}"
JAVA_OPTS="${REGISTRY_JAVA_OPTS:--Xmx256m}"
CACHE="$ROOT/.cache/registry"
BUILD="$CACHE/apicurio-$APICURIO_VERSION"
RUNNER="$BUILD/target/apicurio-registry-local-1-runner.jar"
VAR="$ROOT/var/registry/$PORT"
PIDFILE="$VAR/registry.pid"
LOG="$VAR/registry.log"
URL="http://127.0.0.1:$PORT/apis/ccompat/v7"

log() { echo "registry-local: $*" >&2; }
die() { log "$*"; exit 1; }

write_build_project() {
  mkdir -p "$BUILD/src/main/resources"
  service_central_settings "$CACHE/settings.xml"
  cat > "$BUILD/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.queuestream</groupId>
  <artifactId>apicurio-registry-local</artifactId>
  <version>1</version>
  <packaging>jar</packaging>
  <properties>
    <maven.compiler.release>17</maven.compiler.release>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>io.apicurio</groupId>
        <artifactId>apicurio-registry</artifactId>
        <version>$APICURIO_VERSION</version>
        <type>pom</type>
        <scope>import</scope>
      </dependency>
      <!-- 0.1.18.Final's Quarkus deployment artifact is not on Central; 0.1.10.Final has both halves -->
      <dependency>
        <groupId>io.apicurio</groupId>
        <artifactId>apicurio-common-app-components-config-index</artifactId>
        <version>0.1.10.Final</version>
      </dependency>
      <dependency>
        <groupId>io.apicurio</groupId>
        <artifactId>apicurio-common-app-components-config-index-deployment</artifactId>
        <version>0.1.10.Final</version>
      </dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>io.apicurio</groupId>
      <artifactId>apicurio-registry-app</artifactId>
      <version>$APICURIO_VERSION</version>
      <exclusions>
        <!-- JitPack-only coordinates; the same library is on Central as com.github.erosb:everit-json-schema -->
        <exclusion>
          <groupId>com.github.everit-org.json-schema</groupId>
          <artifactId>org.everit.json.schema</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>com.github.erosb</groupId>
      <artifactId>everit-json-schema</artifactId>
      <version>1.14.2</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>io.quarkus</groupId>
        <artifactId>quarkus-maven-plugin</artifactId>
        <version>$QUARKUS_VERSION</version>
        <executions>
          <execution>
            <goals><goal>build</goal></goals>
          </execution>
        </executions>
      </plugin>
    </plugins>
  </build>
</project>
EOF
}

fetch() {
  mkdir -p "$CACHE"
  exec 8>"$CACHE/.fetch.lock"
  flock -w 1200 8 || { log "timed out waiting for another fetch"; exit 1; }
  if [[ -f "$RUNNER" ]]; then
    exec 8>&-
    log "already built: $RUNNER"
    return 0
  fi
  command -v java >/dev/null || { log "java not found (need 17+)"; exit 1; }
  command -v mvn >/dev/null || { log "mvn not found"; exit 1; }
  command -v python3 >/dev/null || { log "python3 not found"; exit 1; }
  rm -rf "$BUILD"
  mkdir -p "$ROOT/var/registry"
  write_build_project
  local flog="$ROOT/var/registry/fetch.log"
  log "building Apicurio Registry $APICURIO_VERSION (log: $flog)"
  local mvn=(mvn -B -s "$CACHE/settings.xml" -f "$BUILD/pom.xml")
  # The app's own application.properties must be the wrapper's (Quarkus reads the app root's).
  "${mvn[@]}" dependency:copy -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION" \
    -DoutputDirectory="$BUILD/target/app-jar" >"$flog" 2>&1 || { tail -20 "$flog" >&2; exit 1; }
  python3 - "$BUILD/target/app-jar/apicurio-registry-app-$APICURIO_VERSION.jar" \
      "$BUILD/src/main/resources/application.properties" <<'EOPY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("application.properties"))
EOPY
  cat >> "$BUILD/src/main/resources/application.properties" <<'EOF'

# --- local wrapper: the app jar is a dependency, not the application root; index it for CDI
quarkus.index-dependency.registry-app.group-id=io.apicurio
quarkus.index-dependency.registry-app.artifact-id=apicurio-registry-app
EOF
  "${mvn[@]}" -DskipTests package >>"$flog" 2>&1 || { tail -30 "$flog" >&2; exit 1; }
  [[ -f "$RUNNER" ]] || { log "build finished but $RUNNER is missing"; exit 1; }
  exec 8>&-
  log "built $RUNNER"
}

# pid of our running registry, or nothing (removes a stale pid file)
running_pid() { service_running_pid "$PIDFILE" ''; }

ready() { curl -sf -o /dev/null --max-time 2 "$URL/subjects"; }

up() {
  fetch
  service_lock "$VAR" $((TIMEOUT + 30)) || die "timed out waiting for another up/down on port $PORT"
  local pid
  if pid="$(running_pid)"; then
    if ready; then log "already running (pid $pid)"; echo "$URL"; return 0; fi
  else
    if ready; then log "something else already serves $URL; not starting another"; exit 1; fi
    pid=""
  fi
  if [[ -z "$pid" ]]; then
    log "starting on 127.0.0.1:$PORT (log: $LOG)"
    # shellcheck disable=SC2086
    (cd "$BUILD/target" && exec setsid java $JAVA_OPTS \
        -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$PORT" \
        -jar "$RUNNER" >"$LOG" 2>&1 </dev/null 9>&-) &
    pid=$!
    echo "$pid" >"$PIDFILE"
  fi
  local waited=0
  service_wait_ready "$pid" "$TIMEOUT" ready || waited=$?
  if (( waited == 1 )); then
    rm -f "$PIDFILE"; log "registry exited during startup; last log lines:"; tail -30 "$LOG" >&2; exit 1
  elif (( waited == 2 )); then
    log "not ready after ${TIMEOUT}s; stopping it. Last log lines:"; tail -30 "$LOG" >&2; down; exit 1
  fi
  log "ready (pid $pid)"
  service_watchdog REGISTRY_OWNER_PID registry-watchdog "the registry" "$pid" "$VAR/watchdog.log" \
    env REGISTRY_PORT="$PORT" bash "${BASH_SOURCE[0]}" down
  echo "$URL"
}

down() {
  service_lock "$VAR" $((STOP_TIMEOUT + 30)) || die "timed out waiting for another up/down on port $PORT"
  local pid
  if ! pid="$(running_pid)"; then log "not running"; return 0; fi
  service_stop "$pid" "$PIDFILE" "$STOP_TIMEOUT" "pid $pid ignored SIGTERM; killing"
  log "stopped (pid $pid)"
}

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  url) echo "$URL" ;;
  status) if pid="$(running_pid)" && ready; then echo "running pid $pid $URL"; else echo "not running"; exit 3; fi ;;
  *) echo "usage: $0 fetch|up|down|url|status" >&2; exit 2 ;;
esac
