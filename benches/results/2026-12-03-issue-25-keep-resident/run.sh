#!/usr/bin/env bash
# keep-resident per pool slot (--keep-resident-kib) against throughput and resident memory:
# thaw at 64 KiB (the old default), 8 MiB and 64 MiB, on the Rust hello, the JS template's
# component and the Python template's component, fresh instance per request (thaw's default),
# wrk -t2 -c32, a 2 s warm-up then SECS s; rounds alternate the variants. RSS is read from
# /proc after the run and again after 10 s idle.
#   [WORKLOADS="hello js python"] [KEEPS="64 8192 65536"] run.sh [SECS] [ROUNDS] > results.tsv
set -euo pipefail
cd "$(dirname "$0")/../../.."
secs=${1:-8}; rounds=${2:-3}
thaw=${THAW:-target/release/thaw}
declare -A wasm=([hello]=target/guests/wasm32-wasip2/release/hello.wasm
                 [js]=target/baselines/lang/js.wasm [python]=target/baselines/lang/python.wasm)
port=18480; admin=18481; token=bench-token-0123456789
work=$(mktemp -d); server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
rss() { awk '/^VmRSS/ {print $2}' /proc/$server/status; }
printf 'round\tworkload\tkeep_kib\trps\tp50\tp99\trss_kib\trss_idle_kib\n'
for r in $(seq 1 "$rounds"); do
  for w in ${WORKLOADS:-hello js python}; do
    for k in ${KEEPS:-64 8192 65536}; do
      rm -rf "$work/data"
      "$thaw" serve --data-dir "$work/data" --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin \
        --admin-token $token --keep-resident-kib $k 2>"$work/log" &
      server=$!
      for _ in $(seq 300); do curl -sf -o /dev/null http://127.0.0.1:$port/readyz && break; sleep 0.1; done
      cp "${wasm[$w]}" "$work/f.wasm"
      THAW_ADMIN_URL=http://127.0.0.1:$admin THAW_ADMIN_TOKEN=$token "$thaw" deploy "$work/f.wasm" --route /f >/dev/null \
        || { echo "deploy failed" >&2; cat "$work/log" >&2; exit 1; }
      for _ in $(seq 300); do curl -sf -o /dev/null http://127.0.0.1:$port/f && break; sleep 0.1; done
      wrk -t2 -c32 -d2s http://127.0.0.1:$port/f >/dev/null
      out=$(wrk -t2 -c32 -d${secs}s --latency http://127.0.0.1:$port/f)
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
      a=$(rss); sleep 10; b=$(rss)
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$w" "$k" "$rps" "$p50" "$p99" "$a" "$b"
      kill $server; wait $server 2>/dev/null || true; server=""
    done
  done
done
