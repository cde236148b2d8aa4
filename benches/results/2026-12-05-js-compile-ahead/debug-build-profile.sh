#!/bin/bash
# The profile of debug-build-profile.txt: the trivial handler as a component and as source,
# both built on componentize-js --use-debug-build (function names), served from their artifacts
# after a restart, perf record per request. Paths are the author's (see the README).
set -u
cd "$(dirname "$0")/../../.."
T=target/release/thaw; port=18780; admin=18781
work=$(mktemp -d)
export THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:$admin
start() { $T serve --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin --engines /work/research/jsgap/eng-dbg/out >> $work/serve.log 2>&1 & pid=$!; for i in $(seq 1 100); do curl -s -o /dev/null 127.0.0.1:$admin/ && break; sleep 0.2; done; }
start
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; mkdir -p /work/research/jsgap/art; find $work/data -name "*.cwasm" -exec cp {} /work/research/jsgap/art/ \; ; rm -rf $work' EXIT
$T deploy /work/research/jsgap/triv-dbg/fn-js.wasm --name trivcomp >/dev/null
$T deploy /work/research/jsgap/triv-src.js --name trivsrc >/dev/null
for i in $(seq 1 120); do
  wrk -t1 -c2 -d1s http://127.0.0.1:$port/trivsrc >/dev/null
  n=$($T list --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for f in d if f.get("loaded_from")=="snapshot"))')
  [ "$n" = 1 ] && break
done
kill $pid; wait $pid 2>/dev/null
start
for f in trivcomp trivsrc; do wrk -t1 -c2 -d2s http://127.0.0.1:$port/$f >/dev/null; done
sleep 3
$T list --json | python3 -c 'import json,sys; [print(f["name"], f.get("loaded_from")) for f in json.load(sys.stdin)]'
for round in 1 2; do for f in trivcomp trivsrc; do
  wrk -t2 -c8 -d1s http://127.0.0.1:$port/$f >/dev/null
  perf record -F 4000 -p $pid -o /work/research/jsgap/perf.dbg.$f.data -- sleep 4 2>/dev/null & sp=$!
  wrk -t2 -c8 -d4s http://127.0.0.1:$port/$f > $work/wrk; wait $sp
  echo "round=$round $f $(grep 'requests in' $work/wrk | awk '{print $1}')"
done; done
