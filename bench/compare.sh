#!/usr/bin/env bash
# Whole-proxy benchmark: georouter next to nginx, HAProxy and no proxy, through the
# shared harness (../../shared/bench). Extra arguments are passed as environment,
# e.g. `bench/compare.sh ROUNDS=5 DURATION=6`. Needs `../shared/bench/setup.sh` once.
# TLS=1 adds the harness's TLS rounds: georouter gets a TLS listener on
# PROXY_TLS_PORT (28103) with the harness's certificate and, like the peers, no
# session resumption (RESUMPTION=1 keeps georouter's defaults), so that
# `tls-hs` measures full handshakes.
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
if [ "${TLS:-0}" = 1 ]; then
    export PROXY_TLS_PORT=${PROXY_TLS_PORT:-28103}
    resumption=$'session_cache = 0\ntickets = false'
    if [ "${RESUMPTION:-0}" = 1 ]; then
        resumption='# the defaults: a session cache and rotating tickets'
    fi
    # The harness substitutes ${PROXY_TLS_PORT}, ${TLS_CERT} and ${TLS_KEY_FILE}.
    cat >> "$template" <<EOF

[[listeners]]
name = "tls"
address = "127.0.0.1:\${PROXY_TLS_PORT}"
[[listeners.tls.certificates]]
cert = "\${TLS_CERT}"
key = "\${TLS_KEY_FILE}"
[listeners.tls.resumption]
$resumption
EOF
fi
"$harness/compare.sh"
