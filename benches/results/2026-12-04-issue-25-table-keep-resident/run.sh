#!/usr/bin/env bash
# keep-resident 8 MiB vs 64 MiB after the pagemap fix: JS/Python component, wrk c=32, faults per request.
set -euo pipefail
cd /work/main
thaw=target/release/thaw; port=18680; admin=18681; tok=bench-token-0123456789
wasm=$1; secs=${2:-6}
for round in 1 2; do for kib in 16 1024; do
  work=$(mktemp -d)
  THAW_X_TABLE_KIB=$kib $thaw serve --data-dir $work/data --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin --admin-token $tok   2>>$work/log >/dev/null & pid=$!
  for i in $(seq 300); do curl -sf -o /dev/null http://127.0.0.1:$port/readyz && break; sleep 0.05; done
  $thaw deploy $wasm --name f --route / --admin http://127.0.0.1:$admin --admin-token $tok >/dev/null
  wrk -t2 -c32 -d2s http://127.0.0.1:$port/ >/dev/null
  perf stat -e task-clock,page-faults,tlb:tlb_flush -p $pid -o $work/stat -- sleep $secs & sp=$!
  wrk -t2 -c32 -d${secs}s http://127.0.0.1:$port/ > $work/wrk; wait $sp
  reqs=$(grep "requests in" $work/wrk | awk '{print $1}')
  rss=$(awk '/VmRSS/ {print $2/1024}' /proc/$pid/status)
  echo "round=$round kib=$kib rps=$(grep Requests/sec $work/wrk | awk '{print $2}') rss_mib=$rss $(awk -v r=$reqs '/task-clock|page-faults|tlb_flush/ {gsub(",","",$1); printf "%s=%.2f ", $2, $1/r}' $work/stat)"
  kill $pid; wait $pid 2>/dev/null || true; rm -rf $work
done; done
