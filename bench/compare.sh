#!/usr/bin/env bash
# Whole-proxy benchmark: georouter next to nginx, HAProxy and no proxy, through the
# shared harness (../../shared/bench). Extra arguments are passed as environment,
# e.g. `bench/compare.sh ROUNDS=5 DURATION=6`. Needs `../shared/bench/setup.sh` once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
harness=${HARNESS:-$repo/../shared/bench}
cargo build --release --manifest-path "$repo/Cargo.toml"
export PROXY_NAME=georouter
export PROXY_CONFIG_TEMPLATE="$here/georouter.toml.tmpl"
export PROXY_CMD="exec $repo/target/release/georouter run -c \"\$PROXY_CONFIG\""
export PROXY_H2C_PORT=${PROXY_H2C_PORT:-28093}
export H2=${H2:-1}
for kv in "$@"; do export "${kv?}"; done
exec "$harness/compare.sh"
