#!/usr/bin/env bash
# Instructions per request, base against head, under callgrind (deterministic where wall
# clocks on a shared machine are not). `thaw serve` runs under valgrind with instrumentation
# off; after 20 warm-up requests it is switched on for 300 sequential `curl GET /hello`, then
# off, and the total Ir of all threads is summed. Two modes: `fresh` (--warm-max 0
# --on-demand-allocation: a new instance per request) and `warm` (the default pool: a pool
# hit per request).
#   BASE_THAW, HEAD_THAW: release `thaw` binaries; HELLO: functions/hello for wasm32-wasip2.
set -euo pipefail
one() { # build binary mode
  local build=$1 thaw=$2 mode=$3 dir port=18090 admin=18091
  dir=$(mktemp -d)
  local flags=()
  [ "$mode" = fresh ] && flags=(--warm-max 0 --on-demand-allocation)
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/cg.%p" \
    "$thaw" serve --data-dir "$dir/data" --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin \
    --admin-token bench-token-0123456789 "${flags[@]}" >/dev/null 2>"$dir/log" &
  local pid=$!
  for _ in $(seq 600); do curl -s 127.0.0.1:$port/healthz >/dev/null && break; sleep 0.2; done
  curl -s -X PUT -H 'Authorization: Bearer bench-token-0123456789' -H 'content-type: application/wasm' \
    --data-binary @"$HELLO" 127.0.0.1:$admin/v1/functions/hello >/dev/null
  for _ in $(seq 20); do curl -s 127.0.0.1:$port/hello >/dev/null; done
  callgrind_control -i on "$pid" >/dev/null
  for _ in $(seq 300); do curl -s 127.0.0.1:$port/hello >/dev/null; done
  callgrind_control -i off "$pid" >/dev/null
  callgrind_control -d "$pid" >/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local ir
  ir=$(cat "$dir"/cg.* | awk '/^summary:|^totals:/ { s += $2 } END { print s }')
  echo "$mode $build Ir $ir"
  rm -rf "$dir"
}
for mode in fresh warm; do
  one base "$BASE_THAW" "$mode"
  one head "$HEAD_THAW" "$mode"
done
