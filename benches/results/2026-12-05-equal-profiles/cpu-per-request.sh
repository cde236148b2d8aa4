#!/bin/bash
# usage: cpu-per-request.sh BIN WASM [env...]: one host serving WASM as /hello; host CPU
# (perf stat task-clock of the server process) per request and requests/s, wrk -c32 for 5 s
B=$1; W=$2; shift 2
work=$(mktemp -d)
env "$@" THAW_DATA_DIR=$work/data $B serve --listen 127.0.0.1:18990 --admin-listen 127.0.0.1:18991 > $work/log 2>&1 & pid=$!
for i in $(seq 1 100); do curl -s -o /dev/null 127.0.0.1:18991/ && break; sleep 0.05; done
THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:18991 $B deploy $W --name hello > /dev/null
wrk -t1 -c32 -d1s http://127.0.0.1:18990/hello >/dev/null
perf stat -e task-clock -p $pid -o $work/stat -- sleep 5 & sp=$!
n=$(wrk -t1 -c32 -d5s http://127.0.0.1:18990/hello | awk '/requests in/ {print $1}')
wait $sp
awk -v n=$n '/task-clock/ {gsub(",","",$1); printf "cpu %.1f us/req  requests/s %.0f\n", $1*1000/n, n/5}' $work/stat
kill $pid; wait $pid 2>/dev/null; rm -rf $work
