#!/bin/bash
# What one request costs the server, counted by perf stat over SECONDS of wrk at 32
# connections, one host alone serving WASM as /hello.
# usage: per-request.sh EVENTS SECONDS BIN WASM [env...]
#   EVENTS: perf stat's -e list; each is printed per request (task-clock as µs of CPU).
# The runs here:
#   host CPU:   per-request.sh task-clock 5 BIN hello.wasm                    (cpu-per-request.txt)
#   syscalls:   per-request.sh syscalls:sys_enter_writev,...,context-switches 3 BIN hello.wasm
#   allocations per-request.sh probe_libc:malloc,probe_libc:free 3 BIN hello.wasm (allocations.txt;
#               first: perf probe -x /lib/x86_64-linux-gnu/libc.so.6 --add malloc, and free)
set -eu
events=$1; seconds=$2; B=$3; W=$4; shift 4
work=$(mktemp -d)
env "$@" THAW_DATA_DIR=$work/data "$B" serve --listen 127.0.0.1:18990 --admin-listen 127.0.0.1:18991 > $work/log 2>&1 & pid=$!
for i in $(seq 1 100); do curl -s -o /dev/null 127.0.0.1:18991/ && break; sleep 0.05; done
THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:18991 "$B" deploy "$W" --name hello > /dev/null
wrk -t1 -c32 -d1s http://127.0.0.1:18990/hello >/dev/null
perf stat -e "$events" -p $pid -o $work/stat -- sleep "$seconds" & sp=$!
n=$(wrk -t1 -c32 -d"${seconds}s" http://127.0.0.1:18990/hello | awk '/requests in/ {print $1}')
wait $sp
awk -v n="$n" -v s="$seconds" '
  /task-clock/ {gsub(",","",$1); printf "cpu %.1f us/req  ", $1*1000/n; next}
  /^ *[0-9,.]+ +[a-z_]+[:a-z_-]*/ && $2 != "seconds" {gsub(",","",$1); printf "%s %.2f/req  ", $2, $1/n}
  END {printf "requests/s %.0f\n", n/s}' $work/stat
kill $pid; wait $pid 2>/dev/null; rm -rf $work
