#!/bin/bash
# usage: syscalls-c32.sh BIN WASM [env...]: system calls and context switches per request,
# wrk -c32 for 3 s (../2026-12-05-cold-phases/syscalls-c32.sh with more calls counted)
B=$1; W=$2; shift 2
work=$(mktemp -d)
env "$@" THAW_DATA_DIR=$work/data $B serve --listen 127.0.0.1:18990 --admin-listen 127.0.0.1:18991 > $work/log 2>&1 & pid=$!
for i in $(seq 1 100); do curl -s -o /dev/null 127.0.0.1:18991/ && break; sleep 0.05; done
THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:18991 $B deploy $W --name hello > /dev/null
wrk -t1 -c32 -d1s http://127.0.0.1:18990/hello >/dev/null
perf stat -e 'syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_madvise,syscalls:sys_enter_ioctl,syscalls:sys_enter_clock_gettime,syscalls:sys_enter_mmap,syscalls:sys_enter_mprotect,context-switches' -p $pid -o $work/stat -- sleep 3 & sp=$!
n=$(wrk -t1 -c32 -d3s http://127.0.0.1:18990/hello | awk '/requests in/ {print $1}')
wait $sp
awk -v n=$n '/syscalls:|context-switches/ {gsub(",","",$1); printf "%s %.2f/req  ", $2, $1/n} END {print "requests " n}' $work/stat
kill $pid; wait $pid 2>/dev/null; rm -rf $work
