#!/usr/bin/env bash
# HTTP/2 settings by measurement: h2load against the router with each variant of
# its HTTP/2 windows, frame size and adaptive window, on the client side
# ([server]) and the region side ([upstream]). Three workloads, each a closed loop
# over h2c (TLS adds nothing that depends on these settings):
#   small     GET / (2 bytes), 16 connections x 16 streams: req/s, p50, p99
#   upload    PUT of 1 MiB, 4 connections x 8 streams: what the client side's
#             receive windows allow (MB/s)
#   download  GET of 1 MiB from an HTTP/2 region, 4 x 8: what the region side's
#             receive windows allow (MB/s)
# h2load runs on CPU 0, the router and its origin on CPU 1 (as ../shared/bench).
# Needs nginx, h2load and gawk (../shared/bench/setup.sh).
# Usage: bench/h2settings.sh [BINARY]; REPS=3 runs; VARIANTS="name ..." picks some.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/georouter}
reps=${REPS:-3}
tmp=$(mktemp -d /tmp/georouter-h2.XXXXXX)
# Uploads are PUT into memory (the origin must read every byte; nginx answers a
# POST to `return` without reading it).
shm=$(mktemp -d /dev/shm/georouter-h2.XXXXXX)
mkdir -p "$shm/up/up" "$shm/body" && chmod -R 777 "$shm"
router=
cleanup() {
  [ -n "$router" ] && kill "$router" 2>/dev/null
  [ -f "$tmp/origin.pid" ] && kill "$(cat "$tmp/origin.pid")" 2>/dev/null
  sleep 0.2; rm -rf "$tmp" "$shm"
}
trap cleanup EXIT
head -c 1048576 /dev/urandom > "$tmp/1m"
cat > "$tmp/origin.conf" <<CONF
daemon off; worker_processes 1; pid $tmp/origin.pid; error_log $tmp/origin.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; client_max_body_size 8m;
  client_body_temp_path $shm/body; proxy_temp_path $tmp; fastcgi_temp_path $tmp; uwsgi_temp_path $tmp; scgi_temp_path $tmp;
  server { listen 127.0.0.1:28280; listen 127.0.0.1:28281 http2;
    location = /1m { root $tmp; }
    location /up/ { dav_methods PUT; root $shm/up; }
    location / { return 200 "ok"; } } }
CONF
taskset -c 1 nginx -c "$tmp/origin.conf" &

# name|[server] lines|[upstream] lines (";" separates lines)
all_variants=(
  "defaults||"
  "rfc-64k|http2_stream_window = 65535;http2_connection_window = 65535|http2_stream_window = 65535;http2_connection_window = 65535"
  "server-4m-8m|http2_stream_window = 4194304;http2_connection_window = 8388608|"
  "server-adaptive|http2_adaptive_window = true|"
  "upstream-8m-16m||http2_stream_window = 8388608;http2_connection_window = 16777216"
  "upstream-adaptive||http2_adaptive_window = true"
  "frames-64k|http2_max_frame_size = 65536|http2_max_frame_size = 65536"
  "server-1m-2m|http2_connection_window = 2097152|"
  "server-1m-4m|http2_connection_window = 4194304|"
  "server-256k-1m|http2_stream_window = 262144|"
)
want=${VARIANTS:-}

policy() {  # policy SERVER UPSTREAM
  cat <<TOML
[server]
access_log = false
${1//;/$'\n'}
[upstream]
${2//;/$'\n'}
[[listeners]]
address = "127.0.0.1:28293"
[admin]
address = "127.0.0.1:0"
[health]
path = "/"
[[routes]]
name = "download"
path_prefix = "/1m"
regions = ["h2origin"]
[[routes]]
name = "rest"
path_prefix = "/"
regions = ["origin"]
[[regions]]
name = "origin"
endpoints = [{ url = "http://127.0.0.1:28280" }]
[[regions]]
name = "h2origin"
endpoints = [{ url = "http://127.0.0.1:28281", protocol = "http2" }]
TOML
}

# load NAME ARGS... -> "req/s p50 p99 MB/s" from h2load's summary and its log
load() {
  local log=$tmp/h2.log out
  rm -f "$log"  # h2load appends
  out=$(taskset -c 0 h2load --log-file="$log" "$@" 2>&1)
  local rps mbs failed
  failed=$(awk '/^requests:/{print $10}' <<<"$out")
  if [ "${failed:-1}" != 0 ]; then echo "h2load $*: $failed requests failed" >&2; grep -E "status codes" <<<"$out" >&2; fi
  rps=$(awk '/^finished in/{gsub(",","",$4); print $4}' <<<"$out")
  mbs=$(awk '/^finished in/{v=$6; u=$6; gsub(/[A-Za-z\/]/,"",v); if (u ~ /GB/) v*=1024; if (u ~ /KB/) v/=1024; print v}' <<<"$out")
  # the log: start time, status, microseconds
  sort -n -k3 "$log" | awk '{a[NR]=$3} END {printf "%s %s ", a[int(NR*0.5)], a[int(NR*0.99)]}'
  echo "$rps $mbs"
}

exec > >(tee "$tmp/runs.txt")
printf "%-18s %10s %8s %8s %12s %14s\n" variant "small r/s" "p50 us" "p99 us" "upload MB/s" "download MB/s"
for rep in $(seq "$reps"); do
  # Each round starts one variant later, so none is always first.
  rotated=("${all_variants[@]:rep-1}" "${all_variants[@]:0:rep-1}")
  for v in "${rotated[@]}"; do
    IFS='|' read -r name server upstream <<<"$v"
    if [ -n "$want" ] && [[ " $want " != *" $name "* ]]; then continue; fi
    policy "$server" "$upstream" > "$tmp/georouter.toml"
    taskset -c 1 "$bin" run -c "$tmp/georouter.toml" > "$tmp/router.log" 2>&1 &
    router=$!
    for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:28293/ && break; sleep 0.1; done
    # the download region's health check has passed once the route answers
    for _ in $(seq 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge http://127.0.0.1:28293/1m)" = 200 ] && break; sleep 0.1; done
    h2load -n 2000 -c 16 -m 16 http://127.0.0.1:28293/ > /dev/null  # warm-up
    read -r p50 p99 rps _ <<<"$(load -n 100000 -c 16 -m 16 http://127.0.0.1:28293/)"
    read -r _ _ up _ <<<"$(load -n 1500 -c 4 -m 8 -d "$tmp/1m" -H ':method: PUT' http://127.0.0.1:28293/up/f)"
    up=$(awk -v r="$up" 'BEGIN {printf "%.0f", r * 1.048576}')  # 1 MiB per request
    read -r _ _ _ down <<<"$(load -n 1500 -c 4 -m 8 http://127.0.0.1:28293/1m)"
    printf "%-18s %10s %8s %8s %12s %14s\n" "$name" "$rps" "$p50" "$p99" "$up" "$down"
    kill "$router"; wait "$router" 2>/dev/null || true; router=
  done
done
echo "median of $reps runs:"
gawk 'NR > 1 && !/^median/ { for (i = 2; i <= 6; i++) v[$1, i, ++n[$1, i]] = $i; if (!seen[$1]++) order[++k] = $1 }
  END { for (j = 1; j <= k; j++) { name = order[j]; printf "%-18s", name
          for (i = 2; i <= 6; i++) { c = n[name, i]; delete a; for (x = 1; x <= c; x++) a[x] = v[name, i, x]
            asort(a); printf " %12s", a[int((c + 1) / 2)] }
          print "" } }' "$tmp/runs.txt"
