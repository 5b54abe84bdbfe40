#!/usr/bin/env bash
# Builds whatsapp-host in release mode and prints every benchmark figure as one table:
# callbacks (example action, working action, 1M-row store), warm action call, sends,
# idle RSS and start-up. Everything runs on 127.0.0.1 with temporary data and is stopped after.
#
#   benches/run.sh                 # the whole table (about 3 minutes plus the first build)
#   benches/run.sh --only example  # some runs only; see `--help` of the driver for options
#
# Extra arguments go to the driver (examples/bench.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores" >&2
cargo build --release --bin whatsapp-host --example bench >&2
cargo bench --bench action_call -- --noplot >&2

# The pg runs need a PostgreSQL server: $WHATSAPP_HOST_BENCH_PG_URL, or a throwaway cluster on
# this machine with PostgreSQL's default durability (fsync and synchronous_commit on), removed
# on exit. Debian's postgresql must be installed (scripts/test.sh installs it).
if [ -z "${WHATSAPP_HOST_BENCH_PG_URL:-}" ]; then
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -z "$bin" ]; then
    echo "no PostgreSQL found for the pg runs: install Debian's postgresql, or set WHATSAPP_HOST_BENCH_PG_URL" >&2
    exit 1
  fi
  as_owner() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  cluster="$(mktemp -d /tmp/whatsapp-host-bench-pg.XXXXXX)"
  [ "$(id -u)" -eq 0 ] && chown postgres "$cluster"
  trap 'as_owner "$bin/pg_ctl" -D "$cluster/data" -m fast -w stop >/dev/null 2>&1; rm -rf "$cluster"' EXIT
  port=$((20000 + RANDOM % 30000))
  as_owner "$bin/initdb" -D "$cluster/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
  as_owner "$bin/pg_ctl" -D "$cluster/data" -l "$cluster/server.log" -w \
    -o "-p $port -k $cluster -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
  export WHATSAPP_HOST_BENCH_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
fi
target/release/examples/bench --server target/release/whatsapp-host --criterion target/criterion "$@"
