#!/usr/bin/env bash
# Instructions per proxied request (valgrind callgrind), HTTP/1.1 and h2c: a
# repeatable cost measure on a noisy machine, for choices (allocator, pooling,
# copies) whose effect is smaller than the throughput runs' spread.
# Needs valgrind, nginx and h2load (../shared/bench/setup.sh, apt-get install valgrind).
# Usage: bench/instructions.sh [BINARY] [REQUESTS]
# MODES="h1" runs one mode only. KEEP=DIR keeps the callgrind profiles of the larger runs (callgrind_annotate
# --inclusive=yes DIR/cg.h1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/georouter}
n=${2:-20000}
tmp=$(mktemp -d /tmp/georouter-ir.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] && cp "$tmp"/cg.* "$KEEP"/; [ -f "$tmp/origin.pid" ] && kill "$(cat "$tmp/origin.pid" 2>/dev/null)" 2>/dev/null; sleep 0.2; rm -rf "$tmp"' EXIT
cat > "$tmp/origin.conf" <<CONF
daemon off; worker_processes 1; pid $tmp/origin.pid; error_log $tmp/origin.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $tmp; proxy_temp_path $tmp; fastcgi_temp_path $tmp; uwsgi_temp_path $tmp; scgi_temp_path $tmp;
  server { listen 127.0.0.1:28180; location / { return 200 "ok"; } } }
CONF
nginx -c "$tmp/origin.conf" &
sed -e 's/${PROXY_PORT}/28183/; s/${PROXY_H2C_PORT}/28193/; s/${ORIGIN_ADDR}/127.0.0.1:28180/' \
    -e "s|@GEO_DB@|$here/../data/geo-whois-asn-country.mmdb|" \
  "$here/georouter.toml.tmpl" > "$tmp/georouter.toml"
# Start-up (policy, the geo database walk that checks every record) is paid
# once; it is taken out by running each mode at n and 4n requests:
# per request = (I(4n) - I(n)) / 3n.
run() {  # run MODE REQUESTS -> total instructions
  local mode=$1 count=$2 vg
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$mode.$count" "$bin" run -c "$tmp/georouter.toml" \
    > "$tmp/vg.$mode.log" 2>&1 &
  vg=$!
  for _ in $(seq 150); do curl -s -o /dev/null http://127.0.0.1:28183/ && break; sleep 0.2; done
  if [ "$mode" = h1 ]; then h2load --h1 -n "$count" -c "${CONNS:-64}" http://127.0.0.1:28183/ > /dev/null
  else h2load -n "$count" -c 16 -m 16 http://127.0.0.1:28193/ > /dev/null; fi
  kill -INT "$vg"; wait "$vg" || true
  cp "$tmp/cg.$mode.$count" "$tmp/cg.$mode"
  callgrind_annotate "$tmp/cg.$mode.$count" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}'
}
for mode in ${MODES:-h1 h2c}; do
  small=$(run "$mode" "$n")
  large=$(run "$mode" $((4 * n)))
  echo "$mode: $(( (large - small) / (3 * n) )) instructions per request" \
    "(start-up $(( (4 * small - large) / 3 / 1000000 ))M, taken out; $n and $((4 * n)) requests)"
done
