#!/bin/bash
# Cold starts as thaw bench's cold rows take them, with thaw's Server-Timing: K names of one
# artifact (WASM), a host with --load lazy restarted R times, each name's first request once
# per restart (the first of each restart marked *: the first load in a fresh process).
# Knobs for experiments: T (thaw binary), PRE (LD_PRELOAD, e.g. Debian's libmimalloc.so.2),
# TUN (GLIBC_TUNABLES), LOG (THAW_LOG), SERVELOG (where the host's log goes).
set -u
cd "$(dirname "$0")/../../.."
T=${T:-target/release/thaw}; port=18790; admin=18791
work=$(mktemp -d)
export THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:$admin
start() {
  env ${LOG:+THAW_LOG=$LOG} ${PRE:+LD_PRELOAD=$PRE} ${TUN:+GLIBC_TUNABLES=$TUN} $T serve \
    --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin --load lazy \
    >> ${SERVELOG:-$work/serve.log} 2>&1 &
  pid=$!
  for i in $(seq 1 200); do curl -s -o /dev/null 127.0.0.1:$admin/ && break; sleep 0.05; done
}
start
for k in $(seq 1 ${K:-10}); do
  $T deploy ${WASM:-target/baselines/lang/js-proxy.wasm} --name fn$k >/dev/null
done
for r in $(seq 1 ${R:-3}); do
  kill $pid; wait $pid 2>/dev/null; start; sleep 1
  for k in $(seq 1 ${K:-10}); do
    curl -s -o /dev/null -D - -w 'ttfb=%{time_starttransfer}\n' http://127.0.0.1:$port/fn$k \
      | grep -i "server-timing\|ttfb" | sed 's/server-timing: start;desc="disk", //' \
      | paste -sd' ' | sed "s/^/$([ $k = 1 ] && echo '*' || echo ' ') /"
  done
done
kill $pid; wait $pid 2>/dev/null; rm -rf $work
