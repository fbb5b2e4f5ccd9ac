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
template=$(mktemp /tmp/georouter-bench.XXXXXX.toml)
trap 'rm -f "$template"' EXIT
sed "s|@GEO_DB@|$repo/data/geo-whois-asn-country.mmdb|" "$here/georouter.toml.tmpl" > "$template"
export PROXY_CONFIG_TEMPLATE="$template"
export PROXY_CMD="exec $repo/target/release/georouter run -c \"\$PROXY_CONFIG\""
export PROXY_H2C_PORT=${PROXY_H2C_PORT:-28093}
export H2=${H2:-1}
for kv in "$@"; do export "${kv?}"; done
"$harness/compare.sh"
