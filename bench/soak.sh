#!/usr/bin/env bash
# Soak: a bounded mixed load (default 1,000,000 operations: pass-through GETs, streamed
# downloads and uploads, cache hits and misses on the intercepted endpoint, a per-IP flood
# answered with 429s, and websocket sessions) against a release build of rocketchat-shim,
# with the shim's RSS sampled every 2 s. The load generator is examples/soak.rs (it also runs
# the stand-in Rocket.Chat in-process); see its header for the mix and the checks.
#
#   bash bench/soak.sh                      # about 2 to 4 minutes on 2 cores
#   SOAK_REQUESTS=200000 bash bench/soak.sh # a shorter run
#   SOAK_CLIENTS=2000000 bash bench/soak.sh # hits/misses from 2M addresses (rate-limit key churn)
#
# Prints a per-class table (operations, ok, 429, unexpected, p50/p99/max latency), the RSS
# samples and a verdict; exits non-zero on any unexpected answer, on upstream errors or open
# tunnels left in the shim's /metrics, on no 429 at all, or when RSS after warm-up (20 % of
# the operations) grows more than 20 %. Not part of CI: it takes minutes and both cores.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin rocketchat-shim --example soak
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

exec "$TARGET_DIR/release/examples/soak" \
  --shim "$TARGET_DIR/release/rocketchat-shim" \
  --requests "${SOAK_REQUESTS:-1000000}" \
  --workers "${SOAK_WORKERS:-32}" \
  --clients "${SOAK_CLIENTS:-10000}" \
  --sample-secs "${SOAK_SAMPLE_SECS:-2}"
