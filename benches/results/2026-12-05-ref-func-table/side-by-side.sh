#!/bin/bash
# Two thaw builds side by side: BEFORE (the binary without the vendored ref.func patch) and
# AFTER (target/release/thaw). One host per build, both up at once on their own data
# directories, each serving the Python and JS templates as components and as source tiered
# up to their snapshots. The hosts are measured in turn (the idle one uses no CPU), ROUNDS
# rounds over FNS, wrk -t2 -c32, perf stat counts of the measured host per request.
set -u
cd "$(dirname "$0")/../../.."
BEFORE=${BEFORE:?path of the thaw binary to compare against}; AFTER=${AFTER:-target/release/thaw}
FNS=${FNS:-pycomp pysrc jscomp jssrc}; ROUNDS=${ROUNDS:-3}
work=$(mktemp -d); pids=()
trap 'kill ${pids[@]} 2>/dev/null; wait 2>/dev/null; rm -rf $work' EXIT
start() { # name binary port
  local d=$work/$1; mkdir -p $d
  export THAW_DATA_DIR=$d/data THAW_ADMIN_URL=http://127.0.0.1:$(($3+1))
  $2 serve --listen 127.0.0.1:$3 --admin-listen 127.0.0.1:$(($3+1)) \
    --engines target/engines > $d/serve.log 2>&1 &
  pids+=($!); echo $! > $d/pid
  for i in $(seq 1 100); do curl -s -o /dev/null 127.0.0.1:$(($3+1))/ && break; sleep 0.2; done
  $2 deploy target/baselines/lang/python.wasm --name pycomp >/dev/null
  $2 deploy cli/templates/python/app.py --name pysrc >/dev/null
  $2 deploy target/baselines/lang/js.wasm --name jscomp >/dev/null
  $2 deploy cli/templates/js/index.js --name jssrc >/dev/null
  for i in $(seq 1 120); do
    wrk -t1 -c2 -d1s http://127.0.0.1:$3/pysrc >/dev/null; wrk -t1 -c2 -d1s http://127.0.0.1:$3/jssrc >/dev/null
    n=$($2 list --json | python3 -c 'import json,sys; print(sum(1 for f in json.load(sys.stdin) if f.get("loaded_from")=="snapshot"))')
    [ "$n" = 2 ] && break
  done
  echo "$1: $($2 list --json | python3 -c 'import json,sys; print(" ".join(f["name"]+"="+str(f.get("loaded_from")) for f in json.load(sys.stdin)))')"
}
start before $BEFORE 18780
start after $AFTER 18790
for round in $(seq 1 $ROUNDS); do for f in $FNS; do for host in before after; do
  port=$([ $host = before ] && echo 18780 || echo 18790); pid=$(cat $work/$host/pid)
  wrk -t2 -c32 -d2s http://127.0.0.1:$port/$f >/dev/null
  perf stat -e task-clock,page-faults,context-switches -p $pid -o $work/stat -- sleep 6 & sp=$!
  wrk -t2 -c32 -d6s http://127.0.0.1:$port/$f > $work/wrk; wait $sp
  reqs=$(grep "requests in" $work/wrk | awk '{print $1}')
  echo "round=$round $f $host rps=$(grep Requests/sec $work/wrk | awk '{print $2}') non2xx=$(grep -c Non-2xx $work/wrk) $(awk -v r=$reqs '/task-clock|page-faults|context-switches/ {gsub(",","",$1); printf "%s=%.4f ", $2, $1/r}' $work/stat)"
done; done; done
