#!/usr/bin/env bash
# Gray-failure drills at a fixed open-loop rate (RATE, default 500 req/s)
# against the release binary (GEOROUTER=path for another build): a survivor
# without the capacity, a hung region, a hung endpoint, resets with a healthy
# sibling endpoint, a soak with 1% resets and region bounces.
# Usage: bench/gray.sh [survivor|survivor-default|hung-region|hung-endpoint|resets|soak|all] [SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
[ -n "${GEOROUTER:-}" ] || cargo build --release --locked --quiet
# The load and the simulated regions run in a debug build (500 req/s is light);
# the router under test is the release binary, a separate process.
cargo run --locked --quiet --example gray -- "${1:-all}" "${2:-20}"
