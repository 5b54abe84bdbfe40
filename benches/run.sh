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
exec target/release/examples/bench --server target/release/whatsapp-host --criterion target/criterion "$@"
