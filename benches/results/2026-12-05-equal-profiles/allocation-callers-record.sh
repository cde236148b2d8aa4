#!/bin/bash
# usage: allocation-callers-record.sh BIN WASM OUT: every 8th malloc with its DWARF call stack,
# 1 s at 32 connections; then F=8 python3 allocation-callers.py OUT 40 1
B=$1; W=$2; O=$3
work=$(mktemp -d)
THAW_DATA_DIR=$work/data $B serve --listen 127.0.0.1:18990 --admin-listen 127.0.0.1:18991 > $work/log 2>&1 & pid=$!
for i in $(seq 1 100); do curl -s -o /dev/null 127.0.0.1:18991/ && break; sleep 0.05; done
THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:18991 $B deploy $W --name hello > /dev/null
wrk -t1 -c32 -d1s http://127.0.0.1:18990/hello >/dev/null
perf record -q -e probe_libc:malloc -c 8 --call-graph dwarf,16384 -p $pid -o $O -- sleep 1 2>/dev/null & sp=$!
wrk -t1 -c32 -d1s http://127.0.0.1:18990/hello | awk '/requests in/ {print $1}' > $O.n
wait $sp
kill $pid; wait $pid 2>/dev/null; rm -rf $work
