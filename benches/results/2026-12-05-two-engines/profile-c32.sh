#!/bin/bash
# One thaw host alone at 32 connections: perf stat (task-clock, context switches) and a
# frame-pointer perf record of 5 s, after 2 s of warm-up; prints requests/s.
# usage: profile-c32.sh BIN WASM OUT [env...]
B=$1; W=$2; O=$3; shift 3
work=$(mktemp -d); port=18990; admin=18991
env "$@" THAW_DATA_DIR=$work/data $B serve --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin > $work/log 2>&1 &
pid=$!
for i in $(seq 1 200); do curl -s -o /dev/null 127.0.0.1:$admin/ && break; sleep 0.05; done
THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:$admin $B deploy $W --name hello >/dev/null
wrk -t1 -c32 -d2s http://127.0.0.1:$port/hello > /dev/null
perf stat -e task-clock,context-switches,page-faults -p $pid -o $O.stat -- sleep 5 & ps1=$!
perf record -q -F 1999 -g -p $pid -o $O.data -- sleep 5 2>/dev/null & ps2=$!
wrk -t1 -c32 -d5s http://127.0.0.1:$port/hello | grep Requests/sec
wait $ps1 $ps2
kill $pid; wait $pid 2>/dev/null; rm -rf $work
