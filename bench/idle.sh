#!/usr/bin/env bash
# Memory per idle connection: georouter against nginx, plain HTTP/1.1 and TLS.
# N keep-alive connections (default 8,000), one request each and then silent;
# the serving process's resident memory before, with them open, right after
# they close and AFTER seconds later (default 60). Needs nginx and openssl
# (../shared/bench/setup.sh) and python3.
# Usage: bench/idle.sh [N=8000] [AFTER=60] [TARGETS="nginx georouter"] [MODES="plain tls"] [GEOROUTER=binary]
set -euo pipefail
for kv in "$@"; do export "${kv?}"; done
N=${N:-8000}
AFTER=${AFTER:-60}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
for tool in nginx openssl python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (run ../shared/bench/setup.sh)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"
# GEOROUTER=path measures that binary instead of building this checkout.
if [ -z "${GEOROUTER:-}" ]; then
    cargo build --release --manifest-path "$repo/Cargo.toml" >&2
    GEOROUTER="$repo/target/release/georouter"
fi
tmp=$(mktemp -d /tmp/georouter-idle.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
conns=$((N + 1000))
cat > "$tmp/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $((2 * conns + 100));
pid $tmp/nginx.pid;
error_log $tmp/nginx.err warn;
events { worker_connections $((2 * conns)); }
http {
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    upstream origin { server 127.0.0.1:29080; keepalive 256; }
    server { listen 127.0.0.1:29080; location / { return 200 "ok"; } }
    server {
        listen 127.0.0.1:29081;
        listen 127.0.0.1:29091 ssl;
        ssl_certificate $tmp/cert.pem;
        ssl_certificate_key $tmp/key.pem;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
cat > "$tmp/georouter.toml" <<EOF
[server]
access_log = false
max_connections = $conns
idle_timeout = "600s"
[[listeners]]
address = "127.0.0.1:29082"
[[listeners]]
address = "127.0.0.1:29092"
[[listeners.tls.certificates]]
cert = "$tmp/cert.pem"
key = "$tmp/key.pem"
[listeners.tls.resumption]
session_cache = 0
tickets = false
[admin]
address = "127.0.0.1:0"
[health]
path = "/"
[[regions]]
name = "origin"
endpoints = [{ url = "http://127.0.0.1:29080" }]
EOF
setsid nginx -c "$tmp/nginx.conf" -g "daemon off;" &
pids+=($!)
setsid "$GEOROUTER" run -c "$tmp/georouter.toml" 2> "$tmp/georouter.log" &
pids+=($!)
georouter_pid=$!
for port in 29080 29081 29082 29091 29092; do
    for _ in $(seq 100); do curl -sk -o /dev/null "http://127.0.0.1:$port/" -m 1 2>/dev/null && break; \
        curl -sk -o /dev/null "https://127.0.0.1:$port/" -m 1 2>/dev/null && break; sleep 0.1; done
done
nginx_worker=$(pgrep -P "$(cat "$tmp/nginx.pid")" | head -1)
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
printf '%-10s %-5s %8s %10s %10s %10s %12s %10s\n' target mode conns "before KiB" "open KiB" "KiB/conn" "closed KiB" "+${AFTER}s KiB"
measure() { # name pid port mode
    local name=$1 pid=$2 port=$3 mode=$4
    local before with closed later
    before=$(rss "$pid")
    coproc CLIENTS { python3 "$here/idle_clients.py" 127.0.0.1 "$port" "$N" "$mode"; }
    read -r line <&"${CLIENTS[0]}"
    case $line in "open $N failed 0"*) ;; *) echo "$name $mode: $line" >&2; exit 1;; esac
    with=$(rss "$pid")
    echo close >&"${CLIENTS[1]}"
    read -r _ <&"${CLIENTS[0]}"
    wait "$CLIENTS_PID" 2>/dev/null || true
    sleep 1
    closed=$(rss "$pid")
    sleep "$AFTER"
    later=$(rss "$pid")
    printf '%-10s %-5s %8d %10d %10d %10.1f %12d %10d\n' "$name" "$mode" "$N" "$before" "$with" \
        "$(echo "($with - $before) / $N" | bc -l)" "$closed" "$later"
}
for mode in ${MODES:-plain tls}; do
    for target in ${TARGETS:-nginx georouter}; do
        case $target/$mode in
            nginx/plain) measure nginx "$nginx_worker" 29081 plain ;;
            nginx/tls) measure nginx "$nginx_worker" 29091 tls ;;
            georouter/plain) measure georouter "$georouter_pid" 29082 plain ;;
            georouter/tls) measure georouter "$georouter_pid" 29092 tls ;;
        esac
    done
done
