#!/bin/bash
# Cold JS over HTTP: Server-Timing of the first request after each restart (--load lazy).
set -u
cd /work/main
T=${T:-target/release/thaw-after}; port=18790; admin=18791
work=$(mktemp -d)
export THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:$admin
start() { env ${PAD:+MALLOC_TOP_PAD_=$PAD} $T serve --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin --load lazy >> $work/serve.log 2>&1 & pid=$!; for i in $(seq 1 200); do curl -s -o /dev/null 127.0.0.1:$admin/ && break; sleep 0.05; done; }
start
$T deploy ${WASM:-target/baselines/lang/js-proxy.wasm} --name js >/dev/null
for r in $(seq 1 ${N:-15}); do
  kill $pid; wait $pid 2>/dev/null; start; sleep 1
  a=$(awk "{print \$10}" /proc/$pid/stat); curl -s -o /dev/null -D - -w "total=%{time_starttransfer}\n" http://127.0.0.1:$port/js | grep -i "server-timing\|total="; b=$(awk "{print \$10}" /proc/$pid/stat); echo faults=$((b-a)); curl -s -o /dev/null http://127.0.0.1:$port/js; a=$(awk "{print \$10}" /proc/$pid/stat); curl -s -o /dev/null -D - http://127.0.0.1:$port/js | grep -i server-timing; b=$(awk "{print \$10}" /proc/$pid/stat); echo warmfaults=$((b-a))
done
kill $pid; wait $pid 2>/dev/null; rm -rf $work
