#!/bin/bash
# The Python template's component, wrk -c8, perf record with DWARF call graphs of the host.
set -u
cd "$(dirname "$0")/../../.."
T=target/release/thaw; port=18780; admin=18781
work=$(mktemp -d)
export THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:$admin
$T serve --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin --engines target/engines >> $work/serve.log 2>&1 & pid=$!
for i in $(seq 1 100); do curl -s -o /dev/null 127.0.0.1:$admin/ && break; sleep 0.2; done
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf $work' EXIT
$T deploy target/baselines/lang/python.wasm --name pycomp >/dev/null
wrk -t2 -c8 -d3s http://127.0.0.1:$port/pycomp >/dev/null
perf record -F 500 --call-graph dwarf,32768 -p $pid -o ${OUT:-/tmp}/perf.py.cg.data -- sleep 3 2>/dev/null & sp=$!
wrk -t2 -c8 -d3s http://127.0.0.1:$port/pycomp > /dev/null; wait $sp
