#!/usr/bin/env bash
# Runs every test, as CI does. Installs what the integration tests need when it is missing:
# Stoplight Prism (npm, pinned by package-lock.json), Debian's chromium + chromium-driver, and
# Debian's postgresql.
#
# PostgreSQL: the tests use the server in $WHATSAPP_HOST_TEST_PG_URL (a postgres:// URL whose
# user may CREATE DATABASE; each test makes a database of its own). When it is unset, this
# starts a throwaway cluster in a temporary folder on a free port of 127.0.0.1 and removes it
# on exit.
#
# Phases: `cargo test --locked` (every suite, on the embedded SQLite store), then the callback,
# dispatch, crash-safety, dashboard, conversation and template suites again with
# WHATSAPP_HOST_TEST_STORE=postgres,
# skipping the tests named `*sqlite_only` (they are about SQLite's files).
#
# With arguments, only PostgreSQL is provisioned and one `cargo test --locked ARGS...` runs
# instead of the phases, e.g. `scripts/test.sh --test integration -- instances::`.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# Phase timings, printed at the end (and on failure).
timings=()
phase_start=0
phase_name=""
phase() {
  phase_name="$1"
  phase_start=$(date +%s)
  echo "== $phase_name"
}
phase_done() {
  timings+=("$(printf '%5ss  %s%s' "$(($(date +%s) - phase_start))" "$phase_name" "${1:-}")")
  phase_name=""
}
report() {
  if [ -n "$phase_name" ]; then phase_done " (failed)"; fi
  if [ "${#timings[@]}" -gt 0 ]; then
    echo "== how long each phase took"
    printf '%s\n' "${timings[@]}"
  fi
}

if [ "$#" -eq 0 ]; then
  if [ ! -x node_modules/.bin/prism ]; then
    phase "installing Stoplight Prism (npm ci)"
    npm ci --no-audit --no-fund
    phase_done
  fi
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    phase "installing chromium and chromium-driver (apt)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver
    phase_done
  fi
fi

# ---- PostgreSQL ---------------------------------------------------------------------------

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# A TCP port nobody listens on, from a random start.
free_port() {
  local port=$((20000 + RANDOM % 30000))
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    port=$((port + 1))
  done
  echo "$port"
}

cluster=""
stop_cluster() {
  local status=$?
  if [ -n "$cluster" ]; then
    echo "== stopping the throwaway PostgreSQL cluster"
    as_owner "$(pg_bin)/pg_ctl" -D "$cluster/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$cluster"
  fi
  report
  exit "$status"
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

# initdb and postgres refuse to run as root: as root, the cluster belongs to `postgres` (the
# Debian package's user), or to `nobody` where there is no such user.
owner=postgres
if ! id -u postgres >/dev/null 2>&1; then owner=nobody; fi
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$owner" -- "$@"
  else
    "$@"
  fi
}

if [ -n "${WHATSAPP_HOST_TEST_PG_URL:-}" ]; then
  echo "== PostgreSQL: using \$WHATSAPP_HOST_TEST_PG_URL"
else
  if [ -z "$(pg_bin)" ]; then
    phase "installing postgresql (apt)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql
    phase_done
  fi
  phase "starting a throwaway PostgreSQL cluster"
  bin="$(pg_bin)"
  if [ "$(id -u)" -eq 0 ]; then
    # In /tmp, which the postgres user can reach whatever root's TMPDIR is.
    cluster="$(mktemp -d /tmp/whatsapp-host-pg.XXXXXX)"
    chown "$owner" "$cluster"
  else
    cluster="$(mktemp -d "${TMPDIR:-/tmp}/whatsapp-host-pg.XXXXXX")"
  fi
  port="$(free_port)"
  as_owner "$bin/initdb" -D "$cluster/data" -U postgres --auth=trust -E UTF8 --locale=C \
    --no-sync >"$cluster/initdb.log" 2>&1 || { cat "$cluster/initdb.log"; exit 1; }
  # Only reachable from this machine; fsync off because the cluster is thrown away (the tests
  # kill hosts, never the database), and room for every test's connection pool.
  as_owner "$bin/pg_ctl" -D "$cluster/data" -l "$cluster/server.log" -w -t 60 \
    -o "-p $port -k $cluster -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=500" \
    start >/dev/null || { cat "$cluster/server.log"; exit 1; }
  export WHATSAPP_HOST_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "   on 127.0.0.1:$port, in $cluster"
  phase_done
fi

# ---- the tests ----------------------------------------------------------------------------

if [ "$#" -gt 0 ]; then
  phase "cargo test --locked $*"
  cargo test --locked "$@"
  phase_done
  exit 0
fi

phase "cargo test --locked (every suite, embedded SQLite store)"
env -u WHATSAPP_HOST_TEST_STORE cargo test --locked
phase_done

# The backend matrix: the suites that exercise the store through the server, on PostgreSQL.
phase "cargo test --locked: callback, dispatch, crash-safety, dashboard (pages and browser), conversation and template suites on PostgreSQL"
WHATSAPP_HOST_TEST_STORE=postgres cargo test --locked --test integration -- \
  callbacks:: inbound:: crash_safety:: dashboard:: dashboard_browser:: conversation:: templates:: \
  --skip sqlite_only
phase_done
