#!/usr/bin/env bash
# HTTP/3 against the router's own HTTP/2 and HTTP/1.1 over TLS on the same box
# (Debian's nginx 1.22 has no HTTP/3 to compare with): requests per second and
# the router's CPU per request, keep-alive and a new connection per request.
# Load: examples/h3_load.rs for HTTP/3 (this h2load has no QUIC), h2load for
# TLS HTTP/2, wrk for TLS HTTP/1.1 with `Connection: close` (a full handshake
# each: resumption is off on both sides for a like-for-like handshake count).
# Needs nginx, h2load, wrk, openssl (../shared/bench/setup.sh).
# Usage: bench/h3.sh [BINARY] [REQUESTS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/georouter}
n=${2:-40000}
load=$here/../target/release/examples/h3_load
[ -x "$load" ] || (cd "$here/.." && cargo build --release --example h3_load)
for tool in nginx h2load wrk openssl; do
  command -v "$tool" >/dev/null || { echo "$tool not found: run ../shared/bench/setup.sh" >&2; exit 1; }
done
tmp=$(mktemp -d /tmp/georouter-h3.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$tmp/origin.pid" ] && kill "$(cat "$tmp/origin.pid")" 2>/dev/null; sleep 0.2; rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=a.test -addext subjectAltName=DNS:a.test -addext basicConstraints=critical,CA:FALSE \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
cat > "$tmp/origin.conf" <<CONF
daemon off; worker_processes 1; pid $tmp/origin.pid; error_log $tmp/origin.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $tmp; proxy_temp_path $tmp; fastcgi_temp_path $tmp; uwsgi_temp_path $tmp; scgi_temp_path $tmp;
  server { listen 127.0.0.1:28280; location / { return 200 "ok"; } } }
CONF
nginx -c "$tmp/origin.conf" &
cat > "$tmp/georouter.toml" <<TOML
[server]
access_log = false
workers = 1
[[listeners]]
address = "127.0.0.1:28443"
[[listeners.tls.certificates]]
cert = "$tmp/cert.pem"
key = "$tmp/key.pem"
server_names = ["a.test"]
[listeners.tls.resumption]
session_cache = 0
tickets = false
[listeners.http3]
[admin]
address = "127.0.0.1:0"
[geo]
database = "$here/../data/geo-whois-asn-country.mmdb"
[health]
path = "/"
[[regions]]
name = "origin"
endpoints = [{ url = "http://127.0.0.1:28280" }]
TOML
"$bin" run -c "$tmp/georouter.toml" > "$tmp/router.log" 2>&1 &
router=$!
for _ in $(seq 100); do curl -sk -o /dev/null --resolve a.test:28443:127.0.0.1 https://a.test:28443/ && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$router/stat"; }
hz=$(getconf CLK_TCK)
report() {  # report NAME REQUESTS SECONDS TICKS
  awk -v name="$1" -v r="$2" -v s="$3" -v t="$4" -v hz="$hz" \
    'BEGIN { printf "%-26s %9.0f req/s %8.1f µs CPU/request\n", name, r / s, t / hz * 1e6 / r }'
}
measure() {  # measure NAME REQUESTS COMMAND... (the command prints requests= seconds=)
  local name=$1 r=$2 before after out secs
  shift 2
  before=$(ticks)
  out=$("$@")
  after=$(ticks)
  secs=$(echo "$out" | sed -n 's/.*seconds=\([0-9.]*\).*/\1/p')
  if echo "$out" | grep -q 'failed=[1-9]'; then echo "$name: failures: $out" >&2; fi
  report "$name" "$r" "$secs" $((after - before))
}
h2() {  # h2 REQUESTS -> requests= seconds=
  h2load -n "$1" -c 16 -m 16 -H ':authority: a.test' https://127.0.0.1:28443/ 2>&1 |
    awk '/^finished in/ { t = $3; sub(",", "", t); if (t ~ /ms$/) { sub("ms", "", t); t /= 1000 } else sub("s", "", t); print "requests='"$1"' seconds=" t }
         /succeeded,/ { if ($10 + 0 > 0) print "failed=" $10 }'
}
h1close() {  # h1close SECONDS -> requests= seconds=
  wrk -t1 -c16 -d"$1s" -H 'Host: a.test' -H 'Connection: close' https://127.0.0.1:28443/ 2>&1 |
    awk '/requests in/ { gsub(",", "", $1); print "requests=" $1 " seconds='"$1"'" }'
}
echo "georouter $("$bin" --version | head -1), 1 worker, $n requests keep-alive, $((n / 20)) new connections"
"$load" 127.0.0.1:28443 a.test "$tmp/cert.pem" 2000 16 16 > /dev/null  # warm-up
measure "h3 keep-alive (16x16)" "$n" "$load" 127.0.0.1:28443 a.test "$tmp/cert.pem" "$n" 16 16
measure "h2 TLS keep-alive (16x16)" "$n" h2 "$n"
measure "h3 new connections (16)" $((n / 20)) "$load" 127.0.0.1:28443 a.test "$tmp/cert.pem" $((n / 20)) 16 1 new
before=$(ticks)
out=$(h1close 10)
after=$(ticks)
r=$(echo "$out" | sed -n 's/.*requests=\([0-9]*\).*/\1/p')
report "h1 TLS new connections (16)" "$r" 10 $((after - before))
