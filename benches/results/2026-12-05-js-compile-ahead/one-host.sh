#!/bin/bash
# One host: the JS and Python templates as components and as source tiered up to their
# snapshots; wrk c=32 on each of FNS in turn (one-host-js.txt: the default, jscomp jssrc;
# one-host-py.txt: FNS="pycomp pysrc"), perf stat counts per request.
set -u
cd "$(dirname "$0")/../../.."
T=target/release/thaw; port=18780; admin=18781
work=$(mktemp -d)
export THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:$admin
$T serve --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin --engines target/engines > $work/serve.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf $work' EXIT
for i in $(seq 1 100); do curl -s -o /dev/null 127.0.0.1:$admin/ && break; sleep 0.2; done
$T deploy target/baselines/lang/js.wasm --name jscomp >/dev/null
$T deploy cli/templates/js/index.js --name jssrc >/dev/null
$T deploy target/baselines/lang/python.wasm --name pycomp >/dev/null
$T deploy cli/templates/python/app.py --name pysrc >/dev/null
for i in $(seq 1 120); do
  wrk -t1 -c2 -d1s http://127.0.0.1:$port/jssrc >/dev/null; wrk -t1 -c2 -d1s http://127.0.0.1:$port/pysrc >/dev/null
  n=$($T list --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for f in d if f.get("loaded_from")=="snapshot"))')
  [ "$n" = 2 ] && break
done
$T list --json | python3 -c 'import json,sys; [print(f["name"], f.get("loaded_from")) for f in json.load(sys.stdin)]'
for round in 1 2 3; do for f in ${FNS:-jscomp jssrc}; do
  wrk -t2 -c32 -d2s http://127.0.0.1:$port/$f >/dev/null
  perf stat -e task-clock,page-faults,tlb:tlb_flush,context-switches -p $pid -o $work/stat -- sleep 6 & sp=$!
  wrk -t2 -c32 -d6s http://127.0.0.1:$port/$f > $work/wrk; wait $sp
  reqs=$(grep "requests in" $work/wrk | awk '{print $1}')
  echo "round=$round $f rps=$(grep Requests/sec $work/wrk | awk '{print $2}') $(awk -v r=$reqs '/task-clock|page-faults|tlb_flush|context-switches/ {gsub(",","",$1); printf "%s=%.3f ", $2, $1/r}' $work/stat)"
done; done
