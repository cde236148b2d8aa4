#!/bin/bash
# One host: JS functions as components and as source (driven onto their snapshots); N
# sequential requests each, the medians of Server-Timing handler and guest cpu. HANDLERS as in
# side-by-side.sh.
set -u
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
for round in $(seq 1 ${ROUNDS:-2}); do for f in ${FNS:-jscomp jssrc trivcomp trivsrc trivcomp2}; do
  for i in $(seq 1 ${N:-200}); do curl -s -o /dev/null -D - http://127.0.0.1:$port/$f | grep -i server-timing; sleep 0.002; done > $work/st
  python3 - $f $work/st <<'PY'
import sys,re,statistics as s
f=sys.argv[1]; rows=[l for l in open(sys.argv[2])]
def col(k): return [float(m.group(1)) for l in rows for m in [re.search(k+r";dur=([0-9.]+)",l)] if m]
kinds=[re.search(r'desc="([^"]+)"',l).group(1) for l in rows]
h=col("handler"); c=col("cpu")
print(f"{f:9} n={len(rows)} pool-hit={kinds.count('pool-hit')} handler p50={s.median(h)*1e3:.0f}us p10={sorted(h)[len(h)//10]*1e3:.0f} cpu p50={(s.median(c)*1e3 if c else -1):.0f}us p10={(sorted(c)[len(c)//10]*1e3 if c else -1):.0f}")
PY
done; done
