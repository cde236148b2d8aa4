#!/usr/bin/env bash
# Static assets: thaw serving a function's assets against Debian's nginx serving the same
# directory, side by side in one run. Throughput and latency percentiles with wrk for a 4 KB
# and a 1 MB file, each server alone on the machine with the load generator, rounds
# alternating.
#
#   benches/assets-vs-nginx.sh [SECONDS_PER_POINT] [ROUNDS] [CONNECTIONS]   (defaults: 5, 3, 32)
#
# Needs: a release thaw (cargo build --release -p thaw-cli), wrk and nginx (Debian). Prints
# one line per point: round, server, file, requests/s, p50, p99.
#
# Servers:
#   thaw            `thaw deploy --assets DIR` (a function of files only) at its defaults
#                   (from memory)
#   nginx           nginx with `sendfile on` and `access_log off`, two workers (one per core)
#   nginx-cached    the same with `open_file_cache` (no open/stat per request): its best
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
conns=${3:-32}
thaw=target/release/thaw
nginx=$(command -v nginx || echo /usr/sbin/nginx)
port=18480
admin=18481
[ -x "$thaw" ] || { echo "build thaw first: cargo build --release -p thaw-cli" >&2; exit 1; }
[ -x "$nginx" ] || { echo "no nginx (scripts/install-services installs it)" >&2; exit 1; }

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/site"
head -c 4096 /dev/urandom > "$work/site/4k.bin"
head -c 1048576 /dev/urandom > "$work/site/1m.bin"
# nginx's workers run as another user when it is started as root: they must read the files.
chmod -R a+rX "$work"

wait_port() { for _ in $(seq 1 200); do curl -sf -o /dev/null "http://127.0.0.1:$port$1" && return 0; sleep 0.05; done; return 1; }

point() { # server file
  wrk -t2 -c"$conns" -d1s "http://127.0.0.1:$port$2" >/dev/null
  wrk -t2 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port$2" \
    | awk -v r="$round" -v s="$1" -v f="$2" '
        /Requests\/sec/ { rps = $2 }
        /^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 }
        END { printf "%s %s %s %s %s %s\n", r, s, f, rps, p50, p99 }'
}

run_thaw() {
  rm -rf "$work/data"
  "$thaw" serve --data-dir "$work/data" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    >/dev/null 2>"$work/thaw.log" &
  local pid=$!
  for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$admin/" && break; sleep 0.05; done
  THAW_ADMIN_URL="http://127.0.0.1:$admin" THAW_DATA_DIR="$work/data" \
    "$thaw" deploy --name site --route /s --assets "$work/site" >/dev/null
  wait_port /s/4k.bin
  point thaw /s/4k.bin
  point thaw /s/1m.bin
  kill $pid; wait $pid 2>/dev/null || true
}

run_nginx() { # name extra-http-config
  cat > "$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp;
  uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
  $2
  server { listen 127.0.0.1:$port; location /s/ { alias $work/site/; } }
}
CONF
  mkdir -p "$work/tmp"
  "$nginx" -c "$work/nginx.conf" -g 'daemon off;' &
  local pid=$!
  wait_port /s/4k.bin
  point "$1" /s/4k.bin
  point "$1" /s/1m.bin
  kill $pid; wait $pid 2>/dev/null || true
}

echo "round server file requests/s p50 p99"
for round in $(seq 1 "$rounds"); do
  run_thaw
  run_nginx nginx ""
  run_nginx nginx-cached "open_file_cache max=1000 inactive=60s; open_file_cache_valid 60s;"
done
