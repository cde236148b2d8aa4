#!/bin/bash
# One host: JS functions as components and as source (the source ones driven onto their
# snapshots); wrk -c8 on each in turn, host CPU time and page faults per request (perf stat).
set -u
# HANDLERS: a directory with handlers/*.js and, for each trivial-component*.js, its component
# (.wasm) built by `thaw build` in a `thaw new js-component` project with it as src/index.js.
# ENGINES: the engines directory (the run before the change used an engine built from the
# bootstrap of 62192bf). FNS, ROUNDS, SECS: which functions, how many rounds, seconds each.
: "${HANDLERS:?set HANDLERS}"
cd "$(dirname "$0")/../../.."
T=target/release/thaw; port=18780; admin=18781
work=$(mktemp -d)
export THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:$admin
$T serve --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin --engines ${ENGINES:-target/engines} > $work/serve.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf $work' EXIT
for i in $(seq 1 100); do curl -s -o /dev/null 127.0.0.1:$admin/ && break; sleep 0.2; done
$T deploy target/baselines/lang/js.wasm --name jscomp >/dev/null
$T deploy cli/templates/js/index.js --name jssrc >/dev/null
$T deploy $HANDLERS/trivial-component.wasm --name trivcomp >/dev/null
$T deploy $HANDLERS/trivial-source.js --name trivsrc >/dev/null
$T deploy $HANDLERS/trivial-component-direct.wasm --name trivcomp3 >/dev/null
$T deploy $HANDLERS/trivial-component-async-wrapper.wasm --name trivcomp2 >/dev/null
for i in $(seq 1 120); do
  wrk -t1 -c2 -d1s http://127.0.0.1:$port/jssrc >/dev/null; wrk -t1 -c2 -d1s http://127.0.0.1:$port/trivsrc >/dev/null
  n=$($T list --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for f in d if f.get("loaded_from")=="snapshot"))')
  [ "$n" = 2 ] && break
done
$T list --json | python3 -c 'import json,sys; [print(f["name"], f.get("loaded_from")) for f in json.load(sys.stdin)]'
for round in $(seq 1 ${ROUNDS:-2}); do for f in ${FNS:-jscomp jssrc trivcomp trivsrc}; do
  wrk -t2 -c8 -d1s http://127.0.0.1:$port/$f >/dev/null
  perf stat -e task-clock,page-faults -p $pid -o $work/stat -- sleep ${SECS:-4} & sp=$!
  wrk -t2 -c8 -d${SECS:-4}s http://127.0.0.1:$port/$f > $work/wrk; wait $sp
  reqs=$(grep "requests in" $work/wrk | awk '{print $1}')
  if [ -n "${PERF:-}" ]; then perf record -F 4000 -p $pid -o /work/research/jsgap/perf.$f.data -- sleep 4 2>/dev/null & sp=$!; wrk -t2 -c8 -d4s http://127.0.0.1:$port/$f > $work/wrk2; wait $sp; echo "perf $f $(grep 'requests in' $work/wrk2 | awk '{print $1}')"; fi
  echo "round=$round $f rps=$(grep Requests/sec $work/wrk | awk '{print $2}') $(awk -v r=$reqs '/task-clock|page-faults/ {gsub(",","",$1); printf "%s=%.3f ", $2, $1/r}' $work/stat)"
done; done
