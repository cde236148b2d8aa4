#!/bin/bash
# One thaw host alone with wrk: deploys WASM as "hello", 2 s of warm-up, then 5 s at 32
# connections; prints requests/s. Used for the bisection and the experiments in README.md.
# usage: throughput-c32.sh BIN WASM [env...]; prints requests/s at c=32 (2 s warm-up, 5 s)
B=$1; W=$2; shift 2
work=$(mktemp -d); port=18990; admin=18991
env "$@" THAW_DATA_DIR=$work/data $B serve --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin > $work/log 2>&1 &
pid=$!
for i in $(seq 1 200); do curl -s -o /dev/null 127.0.0.1:$admin/ && break; sleep 0.05; done
THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:$admin $B deploy $W --name hello >/dev/null
curl -s 127.0.0.1:$port/hello | head -c 60; echo
wrk -t1 -c32 -d2s http://127.0.0.1:$port/hello > /dev/null
wrk -t1 -c32 -d5s http://127.0.0.1:$port/hello | grep Requests/sec
kill $pid; wait $pid 2>/dev/null; rm -rf $work
