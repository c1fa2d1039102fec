#!/usr/bin/env bash
# Bring up, on loopback, the real services the Fleetstream test suite needs; reuse what already runs.
#
#   scripts/services.sh [up]     start (or reuse) Kafka, PostgreSQL and the Python venv, then smoke-test them
#   scripts/services.sh status   report each service and run the smoke checks (exit 1 if anything is down)
#   scripts/services.sh down     stop what this script started (Kafka JVM; PostgreSQL if it started it)
#   scripts/services.sh env      print `export ...` lines:  eval "$(scripts/services.sh env)"
#   scripts/services.sh kafka-run-class CLASS [ARGS...]
#                                run a Kafka main class with the cached jars, e.g.
#                                org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
#
# Services:
#   * Apache Kafka (pinned below) in KRaft mode, broker+controller in one JVM: PLAINTEXT 127.0.0.1:9092,
#     CONTROLLER 127.0.0.1:9093. Jars come from Maven Central via `mvn dependency:copy-dependencies`.
#   * PostgreSQL 15 (Debian's cluster 15/main) on 127.0.0.1:5432, role fleet/fleet (SUPERUSER), db fleet.
#   * A Python venv with confluent-kafka and fastavro (scripts/services/requirements.txt).
#
# State and caches live in ${FLEET_SERVICES_DIR:-$HOME/.cache/fleetstream-services}.
# Needs: Debian 12, root (or passwordless sudo) for apt-get and the PostgreSQL cluster; Java 17+ and Maven.
set -Eeuo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HELPERS="$SCRIPT_DIR/services"
DIR=${FLEET_SERVICES_DIR:-$HOME/.cache/fleetstream-services}

KAFKA_VERSION=4.1.2
LOG4J_VERSION=2.25.3 # the log4j2 version kafka-server $KAFKA_VERSION itself depends on
HOST=127.0.0.1
KAFKA_PORT=9092
CONTROLLER_PORT=9093
KAFKA_BROKERS="$HOST:$KAFKA_PORT"
KAFKA_HEAP_OPTS="-Xmx512m -Xms256m"
KAFKA_READY_TIMEOUT=${FLEET_KAFKA_READY_TIMEOUT:-90}

PG_VERSION=15
PG_CLUSTER=main
PG_PORT=5432
PG_USER=fleet
PG_PASSWORD=fleet
PG_DB=fleet
PG_BIN="/usr/lib/postgresql/$PG_VERSION/bin"
POSTGRES_URL="postgres://$PG_USER:$PG_PASSWORD@$HOST:$PG_PORT/$PG_DB?sslmode=disable"

KAFKA_LIBS="$DIR/kafka-$KAFKA_VERSION/libs"
KAFKA_HOME="$DIR/kafka" # config, data, logs, pid: shared across versions
KAFKA_CONF="$KAFKA_HOME/config"
KAFKA_DATA="$KAFKA_HOME/data"
KAFKA_LOGS="$KAFKA_HOME/logs"
KAFKA_PID="$KAFKA_HOME/kafka.pid"
VENV="$DIR/venv"
VENV_PY="$VENV/bin/python"
PG_MARKER="$DIR/postgres.started-by-services-sh"

T0=$(date +%s)

# ---------------------------------------------------------------------------------------------- output
say() { printf '[services %5ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
step() { printf '\n[services %5ss] == %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
ok() { say "ok: $*"; }
tail_log() { # FILE [LINES]
  local f=$1 n=${2:-40}
  if [[ -s $f ]]; then
    printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2 || true
    printf -- '----- end of %s -----\n' "$f" >&2
  else
    printf -- '(log %s is missing or empty)\n' "$f" >&2
  fi
}
die() { # MESSAGE [LOGFILE...]
  local msg=$1
  shift || true
  printf '\n[services %5ss] ERROR: %s\n' "$(($(date +%s) - T0))" "$msg" >&2
  local f
  for f in "$@"; do tail_log "$f" 60; done
  (($#)) && printf '[services %5ss] ERROR: %s (log tails above)\n' "$(($(date +%s) - T0))" "$msg" >&2
  exit 1
}
on_err() { printf '[services] ERROR: command failed (exit %s) at line %s: %s\n' "$1" "$2" "$3" >&2; }
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

# ---------------------------------------------------------------------------------------------- helpers
port_open() { # HOST PORT
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# Commands run through as_root/as_postgres may start daemons (pg_ctlcluster, apt postinst scripts):
# `9>&-` keeps our flock fd (see lock()) out of them, or they would hold $DIR/.lock forever.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@" 9>&-
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@" 9>&-
  else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

as_postgres() {
  if [[ $(id -un) == postgres ]]; then
    "$@" 9>&-
  elif [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@" 9>&-
  elif command -v sudo >/dev/null 2>&1 && sudo -n -u postgres true 2>/dev/null; then
    sudo -n -u postgres "$@" 9>&-
  else
    die "need root (or passwordless sudo) to run as postgres: $*"
  fi
}

APT_UPDATED=0
apt_install() { # PKG...
  local log="$DIR/apt.log"
  mkdir -p "$DIR"
  if [[ $APT_UPDATED -eq 0 ]]; then
    say "apt-get update (log: $log)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update >"$log" 2>&1 ||
      die "apt-get update failed" "$log"
    APT_UPDATED=1
  fi
  say "apt-get install -y $* (log: $log)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$log" 2>&1 ||
    die "apt-get install $* failed" "$log"
}

render() { # TEMPLATE OUT: substitute @NAME@ placeholders
  sed -e "s|@KAFKA_VERSION@|$KAFKA_VERSION|g" \
    -e "s|@LOG4J_VERSION@|$LOG4J_VERSION|g" \
    -e "s|@HOST@|$HOST|g" \
    -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
    -e "s|@DATA_DIR@|$KAFKA_DATA|g" \
    "$1" >"$2.tmp"
  mv -f "$2.tmp" "$2"
}

java_bin() {
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then echo "$JAVA_HOME/bin/java"; else echo java; fi
}

# True if PID is a Kafka JVM running our server.properties.
is_our_kafka() {
  local cmd
  [[ $1 =~ ^[0-9]+$ && -r /proc/$1/cmdline ]] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"kafka.Kafka $KAFKA_CONF/server.properties"* ]]
}

# Prints the pid of the Kafka JVM started by this script (pid file, else a scan of /proc for our config path).
kafka_pid() {
  local pid p
  if [[ -s $KAFKA_PID ]]; then
    pid=$(<"$KAFKA_PID")
    if is_our_kafka "$pid"; then
      echo "$pid"
      return 0
    fi
  fi
  for p in /proc/[0-9]*; do
    if is_our_kafka "${p#/proc/}"; then
      echo "${p#/proc/}"
      return 0
    fi
  done
  return 1
}

# ---------------------------------------------------------------------------------------------- prerequisites
ensure_prereqs() {
  step "prerequisites"
  local pkgs=()
  command -v java >/dev/null 2>&1 || [[ -n ${JAVA_HOME:-} ]] || pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
  [[ -x $PG_BIN/postgres ]] || pkgs+=("postgresql-$PG_VERSION")
  command -v pg_ctlcluster >/dev/null 2>&1 || pkgs+=(postgresql-common)
  [[ -x $PG_BIN/psql || -x /usr/bin/psql ]] || pkgs+=("postgresql-client-$PG_VERSION")
  if [[ ! -x /usr/bin/python3 ]]; then
    pkgs+=(python3 python3-venv)
  elif ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    pkgs+=(python3-venv)
  fi
  command -v flock >/dev/null 2>&1 || pkgs+=(util-linux)
  if ((${#pkgs[@]})); then
    apt_install "${pkgs[@]}"
  fi
  local jv
  jv=$("$(java_bin)" -version 2>&1 | sed -n 1p)
  if ! [[ $jv =~ \"([0-9]+) ]] || ((BASH_REMATCH[1] < 17)); then
    die "Kafka $KAFKA_VERSION needs Java 17+, found: $jv"
  fi
  ok "java: $jv; maven: $(command -v mvn); postgres $PG_VERSION at $PG_BIN; $(/usr/bin/python3 -V)"
}

# ---------------------------------------------------------------------------------------------- Kafka
ensure_kafka_jars() {
  step "Kafka $KAFKA_VERSION jars"
  if [[ -f $KAFKA_LIBS/.complete ]]; then
    ok "cached in $KAFKA_LIBS ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars)"
    return
  fi
  local work="$DIR/kafka-$KAFKA_VERSION" log="$DIR/kafka-$KAFKA_VERSION/mvn.log"
  mkdir -p "$work"
  render "$HELPERS/pom.xml.in" "$work/pom.xml"
  rm -rf "$work/libs.tmp"
  say "fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION + runtime deps from Maven Central with" \
    "$(mvn -v 2>/dev/null | sed -n '1s/\x1b\[[0-9;]*m//gp') (log: $log)"
  (cd "$work" && mvn -B -q -f pom.xml dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory=libs.tmp) >"$log" 2>&1 ||
    die "mvn dependency:copy-dependencies failed" "$log"
  [[ -f $work/libs.tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn" "$log"
  touch "$work/libs.tmp/.complete"
  rm -rf "$KAFKA_LIBS"
  mv "$work/libs.tmp" "$KAFKA_LIBS"
  ok "$(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$KAFKA_LIBS" | cut -f1)) in $KAFKA_LIBS"
}

kafka_java() { # run a Kafka main class in the foreground with the tools log config
  "$(java_bin)" -Xmx256m -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="file:$HELPERS/tools-log4j2.xml" \
    -cp "$KAFKA_LIBS/*" "$@"
}

write_kafka_config() {
  mkdir -p "$KAFKA_CONF" "$KAFKA_DATA" "$KAFKA_LOGS"
  render "$HELPERS/server.properties.in" "$KAFKA_CONF/server.properties"
  cp -f "$HELPERS/log4j2.xml" "$KAFKA_CONF/log4j2.xml"
}

format_kafka_storage() {
  if [[ -f $KAFKA_DATA/meta.properties ]]; then
    ok "storage already formatted: $KAFKA_DATA ($(grep -m1 '^cluster.id=' "$KAFKA_DATA/meta.properties" || true))"
    return
  fi
  local log="$KAFKA_LOGS/storage-format.log" cid
  cid=$(kafka_java kafka.tools.StorageTool random-uuid 2>"$log") || die "StorageTool random-uuid failed" "$log"
  say "formatting KRaft storage $KAFKA_DATA (cluster id $cid, --standalone)"
  kafka_java kafka.tools.StorageTool format --standalone -t "$cid" \
    -c "$KAFKA_CONF/server.properties" >>"$log" 2>&1 || die "StorageTool format failed" "$log"
  echo "$cid" >"$KAFKA_HOME/cluster.id"
  ok "formatted ($(tail -n1 "$log"))"
}

# Starts the broker in the background unless one already runs. Sets KAFKA_STARTED=1 when it did.
KAFKA_STARTED=0
start_kafka() {
  step "Kafka broker on $KAFKA_BROKERS (controller $HOST:$CONTROLLER_PORT)"
  local pid
  if pid=$(kafka_pid); then
    ok "already running (pid $pid), reusing"
    return
  fi
  if port_open "$HOST" "$KAFKA_PORT"; then
    ok "something already listens on $KAFKA_BROKERS (not started by this script): reusing it, will verify"
    return
  fi
  if port_open "$HOST" "$CONTROLLER_PORT"; then
    die "port $CONTROLLER_PORT (Kafka CONTROLLER listener) is taken by another process: $(ss -ltnpH "sport = :$CONTROLLER_PORT" 2>/dev/null | awk '{print $NF}' | xargs)"
  fi
  ensure_kafka_jars
  write_kafka_config
  format_kafka_storage
  local out="$KAFKA_LOGS/kafka.out"
  : >"$out"
  say "starting kafka.Kafka (heap $KAFKA_HEAP_OPTS; logs: $KAFKA_LOGS/server.log, $out)"
  # setsid+nohup: the JVM gets its own session and outlives this script and its terminal.
  # shellcheck disable=SC2086
  # 9>&- : do not hand the JVM our flock fd, or it would hold $DIR/.lock forever.
  setsid nohup "$(java_bin)" $KAFKA_HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dkafka.logs.dir="$KAFKA_LOGS" -Dlog4j2.configurationFile="file:$KAFKA_CONF/log4j2.xml" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF/server.properties" >"$out" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$KAFKA_PID"
  KAFKA_STARTED=1
  ok "started, pid $pid (readiness is checked after PostgreSQL and the venv)"
}

wait_kafka_ready() {
  step "waiting for Kafka on $KAFKA_BROKERS to be ready (timeout ${KAFKA_READY_TIMEOUT}s)"
  local deadline=$(($(date +%s) + KAFKA_READY_TIMEOUT)) pid="" logs=("$KAFKA_LOGS/kafka.out" "$KAFKA_LOGS/server.log")
  pid=$(kafka_pid) || pid=""
  until port_open "$HOST" "$KAFKA_PORT"; do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$KAFKA_PID"
      die "the Kafka JVM (pid $pid) exited during startup" "${logs[@]}"
    fi
    if [[ -z $pid ]] && ! pid=$(kafka_pid); then
      die "Kafka is not running and nothing listens on $KAFKA_BROKERS" "${logs[@]}"
    fi
    (($(date +%s) < deadline)) || die "port $KAFKA_PORT not open after ${KAFKA_READY_TIMEOUT}s" "${logs[@]}"
    sleep 0.5
  done
  say "port $KAFKA_PORT accepts connections; asking the broker for metadata"
  local left=$((deadline - $(date +%s)))
  ((left >= 10)) || left=10
  "$VENV_PY" "$HELPERS/smoke.py" ready --bootstrap "$KAFKA_BROKERS" --timeout "$left" && return
  if [[ -n $pid ]]; then
    die "Kafka on $KAFKA_BROKERS (pid $pid) did not become ready" "${logs[@]}"
  fi
  local who
  who=$(ss -ltnpH "sport = :$KAFKA_PORT" 2>/dev/null | awk '{print $NF}' | xargs) || who="?"
  die "the process listening on $KAFKA_BROKERS ($who) was not started by this script and does not answer as a Kafka broker; stop it or free port $KAFKA_PORT"
}

stop_kafka() {
  step "Kafka"
  local pid
  if ! pid=$(kafka_pid); then
    rm -f "$KAFKA_PID"
    if port_open "$HOST" "$KAFKA_PORT"; then
      say "something listens on $KAFKA_BROKERS but was not started by this script: left alone"
    else
      ok "not running"
    fi
    return
  fi
  say "stopping Kafka (pid $pid, SIGTERM, controlled shutdown)"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 60; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "still running after 30s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$KAFKA_PID"
  ok "stopped"
}

# ---------------------------------------------------------------------------------------------- PostgreSQL
pg_psql_admin() { # run psql as the postgres superuser over the unix socket
  as_postgres "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"
}

pg_check_fleet() {
  PGPASSWORD=$PG_PASSWORD PGSSLMODE=disable PGCONNECT_TIMEOUT=5 \
    "$PG_BIN/psql" -X -qAt -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -c 'select 1' 2>&1
}

pg_log() { echo "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"; }

ensure_postgres() {
  step "PostgreSQL $PG_VERSION on $HOST:$PG_PORT"
  local log
  log=$(pg_log)
  if "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2; then
    ok "already accepting connections on $HOST:$PG_PORT, reusing"
  else
    if ! pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {f=1} END {exit !f}'; then
      say "cluster $PG_VERSION/$PG_CLUSTER missing: pg_createcluster"
      as_root pg_createcluster "$PG_VERSION" "$PG_CLUSTER" --port "$PG_PORT" >"$DIR/pg_createcluster.log" 2>&1 ||
        die "pg_createcluster failed" "$DIR/pg_createcluster.log"
    fi
    local port
    port=$(pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $3}')
    [[ $port == "$PG_PORT" ]] || die "cluster $PG_VERSION/$PG_CLUSTER is configured for port $port, not $PG_PORT"
    say "pg_ctlcluster $PG_VERSION $PG_CLUSTER start"
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start >"$DIR/pg_ctlcluster.log" 2>&1 || {
      # "already running" is fine (e.g. listening on the socket only); anything else is not.
      grep -qi 'already running' "$DIR/pg_ctlcluster.log" ||
        die "pg_ctlcluster $PG_VERSION $PG_CLUSTER start failed" "$DIR/pg_ctlcluster.log" "$log"
    }
    touch "$PG_MARKER"
    local i
    for ((i = 0; i < 60; i++)); do
      "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 1 && break
      sleep 0.5
    done
    "$PG_BIN/pg_isready" -h "$HOST" -p "$PG_PORT" -t 2 >/dev/null ||
      die "PostgreSQL is not accepting TCP connections on $HOST:$PG_PORT (listen_addresses?)" "$log"
    ok "started"
  fi

  say "ensuring role '$PG_USER' (LOGIN SUPERUSER, password set) and database '$PG_DB'"
  local sqllog="$DIR/pg_setup.log"
  pg_psql_admin >"$sqllog" 2>&1 <<SQL || die "creating role/database failed" "$sqllog" "$log"
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN SUPERUSER CREATEDB PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_USER WITH LOGIN SUPERUSER CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END
\$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER'
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = '$PG_DB')\gexec
SQL

  local out
  if ! out=$(pg_check_fleet); then
    say "password login over TCP failed ($out); adding a pg_hba.conf rule for $PG_USER on $HOST/32"
    local hba
    hba=$(pg_psql_admin -At -c 'SHOW hba_file') || die "cannot read hba_file" "$log"
    local rule="host    all             $PG_USER           $HOST/32            scram-sha-256"
    if ! as_root grep -qF "$rule" "$hba"; then
      # prepend (first matching rule wins), rewriting in place to keep owner and mode
      # shellcheck disable=SC2016 # expanded by the inner sh
      as_root sh -c '{ printf "# added by fleetstream scripts/services.sh\n%s\n" "$2"; cat "$1"; } >"$1.fleet" &&
        cat "$1.fleet" >"$1" && rm -f "$1.fleet"' _ "$hba" "$rule" || die "cannot edit $hba"
    fi
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" reload >/dev/null 2>&1 || true
    sleep 1
    out=$(pg_check_fleet) || die "psql -h $HOST -U $PG_USER $PG_DB still fails: $out" "$log"
  fi
  ok "psql -h $HOST -U $PG_USER $PG_DB -c 'select 1' -> $out"
}

stop_postgres() {
  step "PostgreSQL"
  if [[ ! -f $PG_MARKER ]]; then
    if "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2 2>/dev/null; then
      say "running but not started by this script: left alone"
    else
      ok "not running"
    fi
    return
  fi
  say "pg_ctlcluster $PG_VERSION $PG_CLUSTER stop"
  as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop >"$DIR/pg_ctlcluster.log" 2>&1 ||
    grep -qi 'not running' "$DIR/pg_ctlcluster.log" ||
    die "pg_ctlcluster stop failed" "$DIR/pg_ctlcluster.log" "$(pg_log)"
  rm -f "$PG_MARKER"
  ok "stopped"
}

# ---------------------------------------------------------------------------------------------- Python venv
ensure_venv() {
  step "Python venv $VENV"
  local req="$HELPERS/requirements.txt" stamp="$VENV/.fleet-requirements" log="$DIR/pip.log"
  local want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [[ -x $VENV_PY ]] && "$VENV_PY" -c 'import sys' >/dev/null 2>&1 && [[ -f $stamp && $(<"$stamp") == "$want" ]] &&
    "$VENV_PY" -c 'import confluent_kafka, fastavro' >/dev/null 2>&1; then
    ok "up to date ($("$VENV_PY" -V); $(grep -v '^#' "$req" | xargs))"
    return
  fi
  local base=${FLEET_PYTHON_BASE:-/usr/bin/python3}
  if [[ ! -x $VENV_PY ]] || ! "$VENV_PY" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$VENV"
    say "creating venv with $base ($("$base" -V 2>&1))"
    if ! "$base" -m venv "$VENV" >"$log" 2>&1; then
      [[ $base == /usr/bin/python3 ]] || die "$base -m venv failed" "$log"
      rm -rf "$VENV"
      apt_install python3-venv
      "$base" -m venv "$VENV" >"$log" 2>&1 || die "$base -m venv failed" "$log"
    fi
  fi
  say "pip install -r scripts/services/requirements.txt (log: $log)"
  "$VENV_PY" -m pip install --disable-pip-version-check -q -r "$req" >>"$log" 2>&1 ||
    die "pip install failed" "$log"
  "$VENV_PY" -c 'import confluent_kafka, fastavro' >>"$log" 2>&1 || die "venv imports fail after install" "$log"
  echo "$want" >"$stamp"
  ok "installed ($("$VENV_PY" -V); $(grep -v '^#' "$req" | xargs))"
}

# ---------------------------------------------------------------------------------------------- commands
print_env() {
  cat <<EOF
export FLEET_KAFKA_BROKERS=$KAFKA_BROKERS
export FLEET_POSTGRES_URL='$POSTGRES_URL'
EOF
  printf 'export FLEET_PYTHON=%q\n' "$VENV_PY"
}

lock() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  if ! flock -n 9; then
    say "another services.sh holds $DIR/.lock; waiting (up to 10 min)"
    flock -w 600 9 || die "timed out waiting for $DIR/.lock"
  fi
}

cmd_up() {
  lock
  say "state dir: $DIR"
  ensure_prereqs
  start_kafka # runs in the background; PostgreSQL and the venv are set up while it boots
  ensure_postgres
  ensure_venv
  wait_kafka_ready
  step "smoke tests"
  "$VENV_PY" "$HELPERS/smoke.py" kafka --bootstrap "$KAFKA_BROKERS" --timeout 60 ||
    die "Kafka produce/consume smoke test failed" "$KAFKA_LOGS/server.log"
  "$VENV_PY" "$HELPERS/smoke.py" avro || die "fastavro smoke test failed"
  step "all services up in $(($(date +%s) - T0))s"
  say "Kafka      $KAFKA_BROKERS ($( ((KAFKA_STARTED)) && echo started || echo reused); pid $(kafka_pid || echo 'n/a, external'))"
  say "PostgreSQL $POSTGRES_URL"
  say "Python     $VENV_PY"
  say "use them with:  eval \"\$(scripts/services.sh env)\""
  print_env >&2
}

cmd_status() {
  local bad=0 pid
  say "state dir: $DIR"
  step "Kafka $KAFKA_BROKERS"
  if pid=$(kafka_pid); then say "JVM pid $pid (started by this script, Kafka $KAFKA_VERSION)"; else say "no Kafka JVM started by this script"; fi
  if ! port_open "$HOST" "$KAFKA_PORT"; then
    say "DOWN: nothing listens on $KAFKA_BROKERS"
    bad=1
  elif [[ ! -x $VENV_PY ]]; then
    say "port open, but venv $VENV missing: cannot run the smoke test (run: scripts/services.sh up)"
    bad=1
  elif "$VENV_PY" "$HELPERS/smoke.py" ready --bootstrap "$KAFKA_BROKERS" --timeout 10 &&
    "$VENV_PY" "$HELPERS/smoke.py" kafka --bootstrap "$KAFKA_BROKERS" --timeout 30; then
    ok "Kafka UP"
  else
    say "Kafka UNHEALTHY"
    tail_log "$KAFKA_LOGS/server.log" 20
    bad=1
  fi

  step "PostgreSQL $HOST:$PG_PORT"
  pg_lsclusters 2>/dev/null | awk -v v="$PG_VERSION" 'NR==1 || $1==v' >&2 || true
  local out
  if out=$(pg_check_fleet); then
    ok "PostgreSQL UP (psql as $PG_USER -> $out)"
  else
    say "PostgreSQL DOWN: $out"
    bad=1
  fi

  step "Python venv $VENV"
  if [[ -x $VENV_PY ]] && "$VENV_PY" "$HELPERS/smoke.py" avro; then
    ok "venv UP ($("$VENV_PY" -V))"
  else
    say "venv MISSING or broken"
    bad=1
  fi

  if ((bad)); then
    step "some services are DOWN (run: scripts/services.sh up)"
    exit 1
  fi
  step "all services UP"
}

cmd_down() {
  lock
  stop_kafka
  stop_postgres
  step "down (caches kept in $DIR)"
}

cmd_kafka_run_class() {
  [[ -f $KAFKA_LIBS/.complete ]] || { lock; ensure_kafka_jars; } >&2
  kafka_java "$@"
}

main() {
  local cmd=${1:-up}
  (($#)) && shift
  case $cmd in
  up) cmd_up ;;
  down | stop) cmd_down ;;
  status) cmd_status ;;
  env) print_env ;;
  kafka-run-class) cmd_kafka_run_class "$@" ;;
  -h | --help | help) sed -n '2,/^set -E/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' ;;
  *) die "unknown command '$cmd' (use: up | down | status | env | kafka-run-class)" ;;
  esac
}

main "$@"
