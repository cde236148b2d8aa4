#!/usr/bin/env bash
# WASIp3 hello (functions/p3, `wasi:http/handler@0.3.0`): thaw against `wasmtime serve -Sp3`,
# side by side in one run. Throughput and latency percentiles with wrk at 1, 32 and 128
# connections, each server alone on the machine with the load generator, rounds alternating.
#
#   benches/p3-throughput.sh [SECONDS_PER_POINT] [ROUNDS]      (defaults: 10, 2)
#
# Needs: a release thaw (cargo build --release -p thaw-cli), wrk (Debian), the wasmtime CLI
# ($THAW_WASMTIME, else the one scripts/test installs under target/tools). Prints one line per
# point: round, server, connections, requests/s, p50, p99.
#
# Servers:
#   thaw            thaw's defaults: one request per instance (isolation), warm pool
#   thaw-reuse      thaw with reuse as wasmtime serve does it: 128 requests per instance, 16 at once
#   wasmtime        `wasmtime serve -Scli -Sp3` at its defaults (p3 instances reused, 128/16)
#   wasmtime-best   the same with the pooling allocator, PAGEMAP_SCAN and 64 MiB kept resident
#                   (the settings WASMTIME-48-NOTES.md found 2.5x faster for a JS component)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-2}
thaw=target/release/thaw
wasmtime=${THAW_WASMTIME:-target/tools/pip/wasmtime_cli/wasmtime}
wasm=target/guests/wasm32-wasip2/release/p3.wasm
port=18380
admin=18381

(cd functions && cargo build --quiet --release --target wasm32-wasip2 -p p3 --target-dir ../target/guests)
[ -x "$thaw" ] || { echo "build thaw first: cargo build --release -p thaw-cli" >&2; exit 1; }
[ -x "$wasmtime" ] || { echo "no wasmtime CLI at $wasmtime (set THAW_WASMTIME)" >&2; exit 1; }

work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() {
  for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$port/hello" >/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server did not answer on $port" >&2
  exit 1
}

start() {
  case "$1" in
    thaw | thaw-reuse)
      rm -rf "$work/data"
      "$thaw" serve --data-dir "$work/data" --listen "127.0.0.1:$port" \
        --admin-listen "127.0.0.1:$admin" --admin-token bench-token-0123456789 2>"$work/server.log" &
      server=$!
      for _ in $(seq 1 300); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && break
        sleep 0.1
      done
      local reuse=()
      [ "$1" = thaw-reuse ] && reuse=(--reuse-max-requests 128 --reuse-max-concurrent 16)
      "$thaw" deploy "$wasm" --name p3 --route / "${reuse[@]}" \
        --admin "http://127.0.0.1:$admin" --admin-token bench-token-0123456789 >/dev/null
      ;;
    wasmtime)
      "$wasmtime" serve -Scli -Sp3 --addr "127.0.0.1:$port" "$wasm" 2>"$work/server.log" &
      server=$!
      ;;
    wasmtime-best)
      "$wasmtime" serve -Scli -Sp3 \
        -O pooling-allocator=y,pooling-pagemap-scan=y,pooling-memory-keep-resident=67108864 \
        --addr "127.0.0.1:$port" "$wasm" 2>"$work/server.log" &
      server=$!
      ;;
  esac
  wait_for
}

stop() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
}

# wrk's "Requests/sec" and the 50% and 99% latencies.
point() {
  local connections=$1 threads=2
  [ "$connections" = 1 ] && threads=1
  wrk -t"$threads" -c"$connections" -d2s "http://127.0.0.1:$port/hello" >/dev/null
  wrk -t"$threads" -c"$connections" -d"${secs}s" --latency "http://127.0.0.1:$port/hello" \
    | awk '/Requests\/sec/ { rps = $2 } /^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 }
           /Non-2xx/ { bad = $4 } END { printf "%s %s %s%s\n", rps, p50, p99, (bad ? " non-2xx=" bad : "") }'
}

echo "# $(date -u +%FT%TZ) $(nproc) CPUs, $(uname -r), thaw $(git rev-parse --short HEAD), $("$wasmtime" --version)"
echo "# round server connections rps p50 p99"
for round in $(seq 1 "$rounds"); do
  order=(thaw thaw-reuse wasmtime wasmtime-best)
  # Alternate the order so no server always runs first (or last) on a warming machine.
  [ $((round % 2)) = 0 ] && order=(wasmtime-best wasmtime thaw-reuse thaw)
  for name in "${order[@]}"; do
    start "$name"
    for c in 1 32 128; do
      echo "$round $name $c $(point "$c")"
    done
    stop
  done
done
