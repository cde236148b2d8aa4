#!/usr/bin/env bash
# WASIp3 hello: thaw with reuse 128/16 or `wasmtime serve -Sp3` at its best settings, alone with
# wrk; perf stat (CPU, context switches, syscalls) and, with PERF=1, perf record. Usage:
# profile.sh thaw|wasmtime CONNECTIONS SECONDS; group.py PERF_DATA REQUESTS groups the samples.
cd "$(dirname "$0")/../../.."
port=18380; admin=18381; which=$1; c=$2; secs=$3
out=${OUT:-/tmp/p3-profile}; mkdir -p "$out"
rm -rf /tmp/p3data
if [ $which = thaw ]; then
  target/release/thaw serve --data-dir /tmp/p3data --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin --admin-token bench-token-0123456789 2>/tmp/p3server.log &
  pid=$!
  for _ in $(seq 300); do curl -sf -o /dev/null http://127.0.0.1:$port/readyz && break; sleep 0.1; done
  target/release/thaw deploy target/guests/wasm32-wasip2/release/p3.wasm --name p3 --route / --reuse-max-requests 128 --reuse-max-concurrent 16 --admin http://127.0.0.1:$admin --admin-token bench-token-0123456789 >/dev/null
else
  target/tools/pip/wasmtime_cli/wasmtime serve -Scli -Sp3 -O pooling-allocator=y,pooling-pagemap-scan=y,pooling-memory-keep-resident=67108864 --addr 127.0.0.1:$port target/guests/wasm32-wasip2/release/p3.wasm 2>/tmp/p3server.log &
  pid=$!
fi
for _ in $(seq 300); do curl -sf -o /dev/null http://127.0.0.1:$port/hello && break; sleep 0.1; done
t=1; [ $c -gt 1 ] && t=2
wrk -t$t -c$c -d2s http://127.0.0.1:$port/hello >/dev/null
perf stat -e task-clock,context-switches,cpu-migrations,page-faults,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_accept4 -p $pid -o $out/stat.$which.$c.txt -- sleep $secs &
sp=$!
wrk -t$t -c$c -d${secs}s http://127.0.0.1:$port/hello | grep -E "Requests/sec"
wait $sp
if [ "${PERF:-0}" = 1 ]; then
  perf record -F 2000 -p $pid -o $out/perf.$which.$c.data -- sleep $secs 2>/dev/null &
  sp=$!
  wrk -t$t -c$c -d${secs}s http://127.0.0.1:$port/hello | grep -E "Requests/sec"
  wait $sp
fi
kill $pid; wait $pid 2>/dev/null
cat $out/stat.$which.$c.txt | grep -E "task-clock|context|migr|faults|sys_enter"
