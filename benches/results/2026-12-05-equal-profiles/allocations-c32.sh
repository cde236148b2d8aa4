#!/bin/bash
# usage: allocations-c32.sh BIN WASM: malloc and free calls per request at 32 connections (3 s).
# Needs the uprobes first: perf probe -x /lib/x86_64-linux-gnu/libc.so.6 --add malloc (and free)
B=$1; W=$2; shift 2
work=$(mktemp -d)
env "$@" THAW_DATA_DIR=$work/data $B serve --listen 127.0.0.1:18990 --admin-listen 127.0.0.1:18991 > $work/log 2>&1 & pid=$!
for i in $(seq 1 100); do curl -s -o /dev/null 127.0.0.1:18991/ && break; sleep 0.05; done
THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:18991 $B deploy $W --name hello > /dev/null
wrk -t1 -c32 -d1s http://127.0.0.1:18990/hello >/dev/null
perf stat -e 'probe_libc:malloc,probe_libc:free,context-switches' -p $pid -o $work/stat -- sleep 3 & sp=$!
n=$(wrk -t1 -c32 -d3s http://127.0.0.1:18990/hello | awk '/requests in/ {print $1}')
wait $sp
awk -v n=$n '/probe_libc:|context-switches/ {gsub(",","",$1); printf "%s %.2f/req  ", $2, $1/n} END {print "requests " n}' $work/stat
kill $pid; wait $pid 2>/dev/null; rm -rf $work
