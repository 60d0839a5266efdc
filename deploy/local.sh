#!/usr/bin/env bash
# Local stack for development and tests: a project-private PostgreSQL on
# 127.0.0.1:55432 and Redis on 127.0.0.1:56379, so that nothing collides with
# (or touches) services already on the standard ports 5432 and 6379.
#
#   bash deploy/local.sh up     start PostgreSQL and Redis (reuses what answers)
#   bash deploy/local.sh down   stop the PostgreSQL and Redis this script started
#   bash deploy/local.sh test   up, build, run the whole test suite, stop again
#   bash deploy/local.sh run    up, build, migrate, run the three programs in
#                               the foreground with demo data, restarting any
#                               that exits; Ctrl-C stops all (--standby: a
#                               second projector waits beside the first)
#   bash deploy/local.sh bench  release build, run benches/ on a PostgreSQL and
#                               Redis of its own in memory (--smoke: seconds;
#                               BENCH_STACK=shared: on this stack instead)
#   bash deploy/local.sh install TOOL...  installs the Debian packages of the
#                               tools the tests of deploy/ need (promtool,
#                               amtool, systemd-analyze), starting no service
#
# See deploy/README.md for the layout of the stack directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# Where cargo puts the binaries this script builds and then runs.
readonly TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

readonly PG_HOST=127.0.0.1
# The ports can be moved (for example to try the script next to a running
# stack); everything documented assumes the defaults.
readonly PG_PORT="${LOCAL_PG_PORT:-55432}"
readonly REDIS_HOST=127.0.0.1
readonly REDIS_PORT="${LOCAL_REDIS_PORT:-56379}"
# Seconds to wait for a server (or the three programs) to answer.
readonly SERVICE_TIMEOUT="${STACK_TIMEOUT:-60}"
readonly READY_TIMEOUT=120

# The superuser owns the tables and applies the migrations; the programs run
# as the roles of deploy/roles.sql (least privilege: DESIGN.md, Write model).
# Trust authentication on 127.0.0.1 (initdb -A trust), so no passwords.
# The database `run` uses; another name gives a run of its own on the same
# server (the tests of `run` use one each).
readonly PG_DATABASE="${LOCAL_PG_DATABASE:-courses}"
readonly DATABASE_URL_APP="postgres://postgres@${PG_HOST}:${PG_PORT}/${PG_DATABASE}"
readonly DATABASE_URL_COMMAND="postgres://course_sales_command@${PG_HOST}:${PG_PORT}/${PG_DATABASE}"
readonly DATABASE_URL_PROJECTOR="postgres://course_sales_projector@${PG_HOST}:${PG_PORT}/${PG_DATABASE}"
readonly DATABASE_URL_TEST="postgres://postgres@${PG_HOST}:${PG_PORT}/postgres"
readonly REDIS_URL_LOCAL="redis://${REDIS_HOST}:${REDIS_PORT}"

# Set by start_stack: which services this invocation started (1) or reused (0).
STARTED_PG=0
STARTED_REDIS=0
STACK=""
PGBIN=""

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# ---------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------

POLICY_RC=/usr/sbin/policy-rc.d
POLICY_BACKUP=""
POLICY_INSTALLED=0

# Puts back whatever /usr/sbin/policy-rc.d was before the install.
restore_policy_rc() {
  if [[ "$POLICY_INSTALLED" -eq 1 ]]; then
    if [[ -n "$POLICY_BACKUP" && -f "$POLICY_BACKUP" ]]; then
      $SUDO mv -f "$POLICY_BACKUP" "$POLICY_RC"
    else
      $SUDO rm -f "$POLICY_RC"
    fi
    POLICY_INSTALLED=0
  fi
}

newest_pg_bin() {
  local dir
  # Directories are named by major version; sort -V puts the newest last.
  dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null \
    | sort -V | tail -n 1)"
  [[ -n "$dir" ]] && dirname "$dir"
}

# ensure_packages PKG... installs the Debian packages that are missing.
# Debian starts a package's default service on install (for postgresql that
# is a cluster on 5432); a policy-rc.d that exits 101 forbids that.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    case "$pkg" in
      postgresql) [[ -n "$(newest_pg_bin || true)" ]] || missing+=(postgresql) ;;
      redis-server)
        command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
          || missing+=(redis-server) ;;
      # The Schemathesis test makes a virtual environment: Debian ships
      # venv (and the ensurepip it needs) apart from python3.
      python3-venv)
        command -v python3 >/dev/null && python3 -c 'import ensurepip, venv' 2>/dev/null \
          || missing+=(python3 python3-venv) ;;
      # The checks of deploy/: promtool tests the alerting rules, amtool the
      # Alertmanager configuration, systemd-analyze verifies the units.
      promtool) command -v promtool >/dev/null || missing+=(prometheus) ;;
      amtool) command -v amtool >/dev/null || missing+=(prometheus-alertmanager) ;;
      systemd-analyze) command -v systemd-analyze >/dev/null || missing+=(systemd) ;;
      *) command -v "$pkg" >/dev/null || missing+=("$pkg") ;;
    esac
  done
  [[ "${#missing[@]}" -eq 0 ]] && return 0

  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  SUDO=""
  if ! is_root; then
    command -v sudo >/dev/null || die "missing ${missing[*]}: run as root or install them"
    SUDO="sudo"
    [[ "${CI:-}" == "true" ]] && SUDO="sudo -n"
  fi

  # Tests install their tools in parallel: one install at a time, so that
  # one's policy-rc.d is not removed under another's.
  exec 8>"${TMPDIR:-/tmp}/course-sales-packages.lock"
  flock -w 600 8 || die "another install holds ${TMPDIR:-/tmp}/course-sales-packages.lock"
  log "installing ${missing[*]}"
  if [[ -e "$POLICY_RC" ]]; then
    POLICY_BACKUP="$(mktemp)"
    $SUDO cp -p "$POLICY_RC" "$POLICY_BACKUP"
  fi
  trap restore_policy_rc EXIT
  trap 'restore_policy_rc; exit 130' INT
  trap 'restore_policy_rc; exit 143' TERM
  POLICY_INSTALLED=1
  printf '#!/bin/sh\n# Installed by deploy/local.sh while it installs packages.\nexit 101\n' \
    | $SUDO tee "$POLICY_RC" >/dev/null
  $SUDO chmod 755 "$POLICY_RC"

  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"

  restore_policy_rc
  trap - EXIT INT TERM
  exec 8>&-
}
SUDO=""

# ---------------------------------------------------------------------------
# Stack directory
# ---------------------------------------------------------------------------

# as_pg CMD... runs CMD as the owner of the PostgreSQL data: `postgres` when
# we are root (the server refuses to run as root), else the current user.
as_pg() {
  if is_root; then
    # cd first: postgres may not be allowed into the caller's directory.
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# Picks the stack directory: .stack/ in the checkout when the server's user
# can write there, else a per-checkout folder under /var/tmp (a checkout under
# /root, for example, is closed to `postgres`).
choose_stack_dir() {
  # Named outright (the benchmark's stack in memory): used as it is.
  if [[ -n "${LOCAL_STACK_DIR:-}" ]]; then
    use_stack_dir "$LOCAL_STACK_DIR"
    return
  fi
  # One stack per checkout and pair of ports: `down` with other ports must
  # never stop the servers of the default ones.
  local name=".stack"
  if [[ "$PG_PORT" != 55432 || "$REDIS_PORT" != 56379 ]]; then
    name=".stack-$PG_PORT-$REDIS_PORT"
  fi
  local dir="$ROOT/$name"
  if ! is_root; then
    use_stack_dir "$dir"
    return
  fi
  if mkdir -p "$dir" 2>/dev/null && chown postgres:postgres "$dir" \
    && runuser -u postgres -- test -w "$dir" 2>/dev/null; then
    STACK="$dir"
    return
  fi
  use_stack_dir "/var/tmp/course-sales-stack-$(checkout_hash)${name#.stack}"
}

# Makes `$1` the stack directory, owned by the server's user when root.
use_stack_dir() {
  mkdir -p "$1"
  if is_root; then
    chown postgres:postgres "$1"
    chmod 755 "$1"
  fi
  STACK="$1"
}

# A short name of this checkout for folders outside it: the first 10 hex
# digits of the SHA-256 of its path.
checkout_hash() { printf '%s' "$ROOT" | sha256sum | cut -c1-10; }

pg_data() { printf '%s/postgres/data' "$STACK"; }
pg_sock() { printf '%s/postgres/socket' "$STACK"; }
pg_log() { printf '%s/postgres/postgres.log' "$STACK"; }
redis_dir() { printf '%s/redis' "$STACK"; }
redis_pidfile() { printf '%s/redis/redis.pid' "$STACK"; }
redis_log() { printf '%s/redis/redis.log' "$STACK"; }

# Serialises concurrent `up`s (two test runs starting at once). Released as
# soon as the servers answer; fd 9 is closed for the daemons so that they do
# not inherit the lock.
lock_stack() {
  exec 9>"$STACK/lock"
  if ! flock -w "$SERVICE_TIMEOUT" 9; then
    die "another deploy/local.sh holds $STACK/lock"
  fi
}
unlock_stack() { exec 9>&-; }

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

pg_answers() { "$PGBIN/pg_isready" -q -h "$PG_HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1; }

# Our own cluster, running from our own data directory?
pg_ours_running() {
  [[ -f "$(pg_data)/PG_VERSION" ]] && as_pg "$PGBIN/pg_ctl" -D "$(pg_data)" status >/dev/null 2>&1
}

write_pg_settings() {
  local conf
  conf="$(pg_data)/course-sales.conf"
  # Durability settings (fsync, synchronous_commit) stay at their defaults,
  # so that a crash or a kill behaves here as it would in production.
  as_pg tee "$conf" >/dev/null <<EOF
# Written by deploy/local.sh on every start; edit the script, not this file.
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = '$(pg_sock)'
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
max_slot_wal_keep_size = 4GB
max_connections = 300
shared_buffers = 256MB
EOF
  if ! grep -q "^include_if_exists = 'course-sales.conf'" "$(pg_data)/postgresql.conf"; then
    printf "\ninclude_if_exists = 'course-sales.conf'\n" | as_pg tee -a "$(pg_data)/postgresql.conf" >/dev/null
  fi
}

start_postgres() {
  if pg_answers; then
    log "postgresql: something already answers on $PG_HOST:$PG_PORT, reusing it"
    check_foreign_postgres
    return
  fi
  local data log_file
  data="$(pg_data)"
  log_file="$(pg_log)"
  as_pg mkdir -p "$STACK/postgres" "$(pg_sock)"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    log "postgresql: initdb in $data"
    as_pg "$PGBIN/initdb" -D "$data" -A trust -U postgres --encoding=UTF8 --locale=C \
      >"$STACK/postgres/initdb.log" 2>&1 \
      || die "initdb failed, see $STACK/postgres/initdb.log"
  fi
  write_pg_settings
  if pg_ours_running; then
    log "postgresql: our cluster runs but does not answer yet"
  else
    log "postgresql: starting on $PG_HOST:$PG_PORT (log: $log_file)"
    as_pg "$PGBIN/pg_ctl" -D "$data" -l "$log_file" -W start >/dev/null 9>&- \
      || die "pg_ctl start failed, see $log_file"
    STARTED_PG=1
  fi
  local waited=0
  until pg_answers; do
    # pg_ctl start returns before the postmaster has written its pid file,
    # so only a server still absent after a couple of seconds has failed.
    if [[ "$waited" -ge 2 ]] && ! pg_ours_running; then
      tail -n 20 "$log_file" >&2 || true
      die "postgresql exited during start-up, see $log_file"
    fi
    if [[ "$waited" -ge "$SERVICE_TIMEOUT" ]]; then
      tail -n 20 "$log_file" >&2 || true
      die "postgresql did not answer on $PG_HOST:$PG_PORT within ${SERVICE_TIMEOUT}s, see $log_file"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  if [[ "$STARTED_PG" -eq 1 ]]; then printf '%s\n' "$data" >"$STACK/postgres.started"; fi
}

# A reused server was configured by someone else: say so when it lacks what
# the projector and the tests need, rather than let them fail obscurely.
check_foreign_postgres() {
  local settings wal slots senders
  settings="$("$PGBIN/psql" -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -XtAq -F ' ' \
    -c "SELECT current_setting('wal_level'), current_setting('max_replication_slots'),
               current_setting('max_wal_senders')" 2>/dev/null)" || {
    log "postgresql: warning: cannot connect as postgres without a password to check its settings"
    return 0
  }
  read -r wal slots senders <<<"$settings"
  if [[ "$wal" != "logical" ]]; then
    log "postgresql: warning: wal_level is $wal, the projector needs logical"
  fi
  if [[ "$slots" -lt 64 || "$senders" -lt 64 ]]; then
    log "postgresql: warning: max_replication_slots=$slots max_wal_senders=$senders (the stack uses 64: parallel tests each take a slot)"
  fi
}

ensure_database() {
  local name="$1" exists
  exists="$("$PGBIN/psql" -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -XtAq \
    -c "SELECT 1 FROM pg_database WHERE datname = '$name'")"
  if [[ "$exists" != "1" ]]; then
    log "postgresql: creating database $name"
    "$PGBIN/createdb" -h "$PG_HOST" -p "$PG_PORT" -U postgres "$name"
  fi
}

# The service roles are cluster-wide: created (or left as they are) on every
# start, before anything migrates, because the migrations grant them their
# table rights only if they exist.
ensure_roles() {
  "$PGBIN/psql" -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Xq \
    -v ON_ERROR_STOP=1 -f "$ROOT/deploy/roles.sql" >/dev/null \
    || die "could not create the service roles (deploy/roles.sql)"
}

stop_postgres() {
  if pg_ours_running; then
    log "postgresql: stopping (pg_ctl stop -m fast)"
    as_pg "$PGBIN/pg_ctl" -D "$(pg_data)" -m fast -w stop >/dev/null
  fi
  rm -f "$STACK/postgres.started"
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

# redis-cli waits forever on a listener that never answers; bound it.
rcli() { timeout 3 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" "$@"; }

redis_answers() {
  [[ "$(rcli ping 2>/dev/null)" == "PONG" ]]
}

# The pid of the Redis that answers on our port, if it is the one whose pid
# file is in our stack directory.
redis_ours_pid() {
  local pidfile running
  pidfile="$(redis_pidfile)"
  [[ -f "$pidfile" ]] || return 1
  running="$(rcli info server 2>/dev/null \
    | tr -d '\r' | sed -n 's/^process_id://p')"
  [[ -n "$running" && "$running" == "$(cat "$pidfile")" ]] && printf '%s' "$running"
}

start_redis() {
  if redis_answers; then
    log "redis: something already answers on $REDIS_HOST:$REDIS_PORT, reusing it"
    local policy
    policy="$(rcli config get maxmemory-policy 2>/dev/null \
      | tail -n 1)"
    if [[ "$policy" != "noeviction" ]]; then
      log "redis: warning: maxmemory-policy is ${policy:-unknown}, views need noeviction"
    fi
    return
  fi
  mkdir -p "$(redis_dir)"
  rm -f "$(redis_pidfile)"
  log "redis: starting on $REDIS_HOST:$REDIS_PORT (log: $(redis_log))"
  # Settings are in deploy/redis.conf; only the runtime paths are given here.
  redis-server "$ROOT/deploy/redis.conf" \
    --port "$REDIS_PORT" --bind "$REDIS_HOST" --daemonize yes \
    --pidfile "$(redis_pidfile)" --logfile "$(redis_log)" --dir "$(redis_dir)" 9>&- \
    || die "redis-server failed to start, see $(redis_log)"
  STARTED_REDIS=1
  local waited=0 pid
  until redis_answers; do
    pid="$(cat "$(redis_pidfile)" 2>/dev/null || true)"
    if [[ "$waited" -ge 2 ]] && { [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; }; then
      tail -n 20 "$(redis_log)" >&2 || true
      die "redis exited during start-up, see $(redis_log)"
    fi
    if [[ "$waited" -ge "$SERVICE_TIMEOUT" ]]; then
      tail -n 20 "$(redis_log)" >&2 || true
      die "redis did not answer on $REDIS_HOST:$REDIS_PORT within ${SERVICE_TIMEOUT}s, see $(redis_log)"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  printf '%s\n' "$(redis_pidfile)" >"$STACK/redis.started"
}

stop_redis() {
  local pid
  if pid="$(redis_ours_pid)"; then
    log "redis: stopping (shutdown nosave)"
    rcli shutdown nosave >/dev/null 2>&1 || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null && [[ "$waited" -lt 20 ]]; do
      sleep 0.5
      waited=$((waited + 1))
    done
  fi
  rm -f "$STACK/redis.started"
}

# ---------------------------------------------------------------------------
# Stack
# ---------------------------------------------------------------------------

prepare() {
  ensure_packages postgresql redis-server "$@"
  PGBIN="$(newest_pg_bin)" || die "no PostgreSQL server binaries under /usr/lib/postgresql"
  choose_stack_dir
}

start_stack() {
  lock_stack
  start_postgres
  [[ "$PG_DATABASE" =~ ^[a-z_][a-z0-9_]*$ ]] \
    || die "LOCAL_PG_DATABASE must be a plain lower-case name, not $PG_DATABASE"
  ensure_database "$PG_DATABASE"
  ensure_roles
  start_redis
  unlock_stack
  log "postgresql: $DATABASE_URL_APP"
  log "redis:      redis://$REDIS_HOST:$REDIS_PORT"
}

# Stops only what this invocation started (test and run).
stop_started() {
  [[ "$STARTED_PG" -eq 1 ]] && stop_postgres
  [[ "$STARTED_REDIS" -eq 1 ]] && stop_redis
  STARTED_PG=0
  STARTED_REDIS=0
}

cmd_up() {
  prepare
  start_stack
}

# Stops the services that run out of this stack directory: those the script
# started. A server somebody else runs on 55432 or 56379 is left alone.
cmd_down() {
  prepare
  local stopped=0
  if pg_ours_running; then stop_postgres; stopped=1; fi
  if redis_ours_pid >/dev/null; then stop_redis; stopped=1; fi
  rm -f "$STACK/postgres.started" "$STACK/redis.started"
  if [[ "$stopped" -eq 0 ]]; then
    log "nothing started by this script is running"
  fi
  if pg_answers; then log "postgresql on $PG_PORT still answers: not ours, left alone"; fi
  if redis_answers; then log "redis on $REDIS_PORT still answers: not ours, left alone"; fi
}

# install TOOL...: the packages of the tools named (see ensure_packages).
cmd_install() {
  [[ $# -gt 0 ]] || die "install needs the names of tools"
  ensure_packages "$@"
}

cmd_test() {
  # openssl: the TLS tests make their CA and certificates with it.
  prepare python3-venv promtool amtool systemd-analyze openssl
  trap stop_started EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  start_stack
  cd "$ROOT"
  local status=0
  cargo build --workspace --bins || status=$?
  if [[ "$status" -eq 0 ]]; then
    # The outage test stops and starts PostgreSQL: only ever our own.
    if pg_ours_running; then export TEST_PG_CONTROL="$ROOT/deploy/local.sh"; fi
    TEST_DATABASE_URL="$DATABASE_URL_TEST" TEST_REDIS_URL="$REDIS_URL_LOCAL" \
      cargo test --workspace --no-fail-fast || status=$?
  fi
  exit "$status"
}

# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------

# The programs `run` supervises, one index each: KEYS[i] names what to start
# (see program_env), PIDS[i] is its process while it runs ("" while it waits
# for a restart), SEDS[i] the process that prefixes its log lines.
KEYS=()
NAMES=()
BINARIES=()
PREFIXES=()
PIDS=()
SEDS=()
STARTED_AT=()
DELAYS=()
RESTART_AT=()
# The background sleep the supervisor waits on, so that shutdown can end it.
NAP_PID=""
# Where the standby projector listens (run --standby).
STANDBY_ADDR=""
# Back-off of restarts, in seconds: doubled on every exit up to the most, and
# back to the least once a program has run this long.
readonly RESTART_LEAST=1
readonly RESTART_MOST=30
readonly RESTART_HEALTHY=60

# Milliseconds since the epoch, into NOW_MS (no subshell: the loop runs often).
NOW_MS=0
now_ms() {
  local us="${EPOCHREALTIME//[.,]/}"
  NOW_MS=$((us / 1000))
}

# nap SECONDS sleeps in the background and waits for it, so that Ctrl-C and
# SIGTERM run their trap at once rather than after the sleep. Bash reports a
# program killed by a signal ("line N: 1234 Killed ...") while it waits:
# that goes to /dev/null, the supervisor's own line says it better.
nap() {
  sleep "$1" &
  NAP_PID=$!
  wait "$NAP_PID" 2>/dev/null || true
  NAP_PID=""
}

# program_env KEY sets ENV_ARGS to the VAR=VALUE list program KEY runs with
# (on top of the script's environment).
ENV_ARGS=()
program_env() {
  case "$1" in
    command) ENV_ARGS=(DATABASE_URL="$DATABASE_URL_COMMAND") ;;
    projector) ENV_ARGS=(DATABASE_URL="$DATABASE_URL_PROJECTOR") ;;
    # The same slot, key prefix and database: it waits while the other holds
    # the slot, and takes over when that one dies.
    standby) ENV_ARGS=(DATABASE_URL="$DATABASE_URL_PROJECTOR" PROJECTOR_ADDR="$STANDBY_ADDR") ;;
    query) ENV_ARGS=() ;;
  esac
}

# add_program KEY NAME BINARY PREFIX registers a program and starts it.
add_program() {
  local i="${#KEYS[@]}"
  KEYS[i]="$1"
  NAMES[i]="$2"
  BINARIES[i]="$3"
  PREFIXES[i]="$4"
  DELAYS[i]=0
  RESTART_AT[i]=0
  launch "$i"
}

# launch I starts program I, its output through a sed of its own that
# prefixes every line, so that the logs can be told apart. The sed is a child
# of this shell (not of the program), so shutdown can wait for it to print the
# program's last lines and know it is gone.
launch() {
  local i="$1" fd
  program_env "${KEYS[$i]}"
  # The sed ignores INT/TERM so that it keeps printing while the program
  # shuts down; it ends when the program's output closes.
  exec {fd}> >(trap '' INT TERM; exec sed -u "s/^/[${PREFIXES[$i]}] /")
  SEDS[i]=$!
  env "${ENV_ARGS[@]}" "$TARGET_DIR/debug/${BINARIES[$i]}" >&"$fd" 2>&1 {fd}>&- &
  PIDS[i]=$!
  exec {fd}>&-
  now_ms
  STARTED_AT[i]="$NOW_MS"
}

# reap I: program I has exited; logs its status and schedules its restart.
reap() {
  local i="$1" status=0 ran delay
  wait "${PIDS[$i]}" 2>/dev/null || status=$?
  PIDS[i]=""
  now_ms
  ran=$(((NOW_MS - STARTED_AT[i]) / 1000))
  delay="${DELAYS[$i]}"
  if [[ "$delay" -eq 0 || "$ran" -ge "$RESTART_HEALTHY" ]]; then
    delay="$RESTART_LEAST"
  else
    delay=$((delay * 2))
    if [[ "$delay" -gt "$RESTART_MOST" ]]; then delay="$RESTART_MOST"; fi
  fi
  DELAYS[i]="$delay"
  RESTART_AT[i]=$((NOW_MS + delay * 1000))
  log "${NAMES[$i]} exited (status $status); restarting in $delay s"
}

# Keeps every program running until Ctrl-C or SIGTERM (whose traps end the
# script): a program that exits is restarted after its back-off, the others
# are left alone.
supervise() {
  local i
  while true; do
    for i in "${!KEYS[@]}"; do
      if [[ -n "${PIDS[$i]}" ]]; then
        kill -0 "${PIDS[$i]}" 2>/dev/null || reap "$i"
      else
        now_ms
        if [[ "$NOW_MS" -ge "${RESTART_AT[$i]}" ]]; then
          log "restarting ${NAMES[$i]}"
          launch "$i"
        fi
      fi
    done
    nap 0.2
  done
}

# SIGTERM to every program, up to 10 s for them to exit, then SIGKILL; then
# the log prefixers, which end once their program's output closes.
stop_programs() {
  local i pid waited
  for pid in "${PIDS[@]}"; do
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
  done
  for i in "${!PIDS[@]}"; do
    pid="${PIDS[$i]}"
    [[ -n "$pid" ]] || continue
    waited=0
    while kill -0 "$pid" 2>/dev/null && [[ "$waited" -lt 100 ]]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "${NAMES[$i]} did not stop within 10s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
  for pid in "${SEDS[@]}"; do
    waited=0
    while kill -0 "$pid" 2>/dev/null && [[ "$waited" -lt 20 ]]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  SEDS=()
}

run_cleanup() {
  local status=$?
  set +e
  # A second Ctrl-C must not cut the shutdown short and leave programs behind.
  trap - EXIT
  trap '' INT TERM
  [[ -n "$NAP_PID" ]] && kill "$NAP_PID" 2>/dev/null
  stop_programs
  stop_started
  exit "$status"
}

# host:port from an address variable, for the URLs printed and probed.
addr() { printf 'http://%s' "$1"; }

# wait_ready URL... waits until every URL answers /ready with 200. A program
# that exits before then stops the run: that is a start-up error (a port in
# use, a bad setting), which restarting would only repeat.
wait_ready() {
  local start=$SECONDS url i all
  while true; do
    all=1
    for i in "${!PIDS[@]}"; do
      if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
        die "${NAMES[$i]} exited before it was ready (its log is above)"
      fi
    done
    for url in "$@"; do
      if ! curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
        all=0
        break
      fi
    done
    [[ "$all" -eq 1 ]] && return 0
    if [[ $((SECONDS - start)) -ge "$READY_TIMEOUT" ]]; then
      die "not every program answered with 200 within ${READY_TIMEOUT}s (last waiting on $url)"
    fi
    nap 1
  done
}

cmd_run() {
  local standby="${STANDBY:-0}"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --standby) standby=1 ;;
      *) usage >&2; exit 2 ;;
    esac
    shift
  done
  prepare curl
  trap run_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  start_stack
  cd "$ROOT"
  cargo build --workspace --bins

  export REDIS_URL="$REDIS_URL_LOCAL"
  STANDBY_ADDR="${PROJECTOR_STANDBY_ADDR:-127.0.0.1:8084}"
  local command_url query_url projector_url standby_url="" url urls
  command_url="$(addr "${COMMAND_API_ADDR:-127.0.0.1:8081}")"
  query_url="$(addr "${QUERY_API_ADDR:-127.0.0.1:8082}")"
  projector_url="$(addr "${PROJECTOR_ADDR:-127.0.0.1:8083}")"
  urls=("$command_url" "$query_url" "$projector_url")
  if [[ "$standby" == "1" ]]; then
    standby_url="$(addr "$STANDBY_ADDR")"
    urls+=("$standby_url")
  fi
  for url in "${urls[@]}"; do
    if curl -fsS -o /dev/null --max-time 2 "$url/health" 2>/dev/null; then
      die "something already answers on $url: stop it first (another deploy/local.sh run?)"
    fi
  done

  log "applying migrations"
  DATABASE_URL="$DATABASE_URL_APP" "$TARGET_DIR/debug/command-api" migrate

  log "command-api connects as course_sales_command, projector as course_sales_projector"
  add_program command command-api command-api command
  add_program projector projector projector projector
  add_program query query-api query-api query
  wait_ready "$command_url/ready" "$projector_url/ready" "$query_url/ready"
  if [[ -n "$standby_url" ]]; then
    # Started once the first projector is active, so that it is the standby.
    add_program standby "standby projector" projector standby
    wait_ready "$standby_url/health"
  fi

  local courses
  courses="$("$PGBIN/psql" "$DATABASE_URL_APP" -XtAq -c 'SELECT count(*) FROM courses')"
  if [[ "$courses" == "0" ]]; then
    log "loading demo data"
    COMMAND_API_URL="$command_url" bash "$ROOT/deploy/demo-data.sh"
  else
    log "database already has $courses courses, demo data not loaded"
  fi

  printf 'ready: command-api %s  query-api %s  projector %s%s  (Ctrl-C stops everything)\n' \
    "$command_url" "$query_url" "$projector_url" \
    "${standby_url:+  standby projector $standby_url}"

  supervise
}

# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------

# Runs every benchmark scenario against the stack (README: Benchmarks) and
# writes the report to benches/results/; extra arguments go to the bench
# binary (--smoke for the seconds-long version). Stops what it started.
#
# The figures are taken on a PostgreSQL and a Redis of their own (ports
# 55433 and 56380, or LOCAL_BENCH_PG_PORT and LOCAL_BENCH_REDIS_PORT), whose
# data lives in memory (/dev/shm) and is deleted afterwards: on a disk shared
# with other machines every commit's WAL flush waits as long as the disk
# likes, and those stalls, not the code, decided which round was fast.
# BENCH_STACK=shared measures on the development stack (its disk) instead.
cmd_bench() {
  if [[ "${BENCH_STACK:-memory}" == memory && -z "${LOCAL_STACK_DIR:-}" ]]; then
    # A full run's databases take several GiB (seeded, then copied).
    local free_gib
    free_gib="$(df --output=avail -BG /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9)"
    if [[ -d /dev/shm && -w /dev/shm && "${free_gib:-0}" -ge 8 ]]; then
      local dir
      dir="/dev/shm/course-sales-bench-$(checkout_hash)"
      log "benchmark stack in memory: $dir"
      LOCAL_STACK_DIR="$dir" \
        LOCAL_PG_PORT="${LOCAL_BENCH_PG_PORT:-55433}" \
        LOCAL_REDIS_PORT="${LOCAL_BENCH_REDIS_PORT:-56380}" \
        exec bash "${BASH_SOURCE[0]}" bench "$@"
    fi
    log "no writable /dev/shm with 8 GiB free: the benchmark runs on the development stack's disk"
  fi
  prepare
  trap 'stop_started; drop_memory_stack' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  start_stack
  cd "$ROOT"
  cargo build --release --bins
  "$TARGET_DIR/release/bench" --database-url "$DATABASE_URL_TEST" \
    --redis-url "$REDIS_URL_LOCAL" "$@"
}

# Deletes the benchmark's stack in memory once its servers have stopped
# (one still running, left by an earlier run, keeps it).
drop_memory_stack() {
  [[ -n "${LOCAL_STACK_DIR:-}" && "$STACK" == /dev/shm/* ]] || return 0
  pg_answers || redis_answers || rm -rf "$STACK"
}

# pg-stop / pg-start: stop and start this project's own PostgreSQL cluster
# (for the test that proves reads survive a PostgreSQL outage).
cmd_pg() {
  PGBIN="$(newest_pg_bin)" || die "no PostgreSQL server binaries under /usr/lib/postgresql"
  choose_stack_dir
  [[ -f "$(pg_data)/PG_VERSION" ]] || die "no project cluster in $(pg_data)"
  case "$1" in
    stop) as_pg "$PGBIN/pg_ctl" -D "$(pg_data)" -m fast -w stop >/dev/null ;;
    start) as_pg "$PGBIN/pg_ctl" -D "$(pg_data)" -l "$(pg_log)" -w start >/dev/null 9>&- ;;
  esac
}

usage() {
  sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
  case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    test) cmd_test ;;
    run) shift; cmd_run "$@" ;;
    bench) shift; cmd_bench "$@" ;;
    install) shift; cmd_install "$@" ;;
    pg-stop) cmd_pg stop ;;
    pg-start) cmd_pg start ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
