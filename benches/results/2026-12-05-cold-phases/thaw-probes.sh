#!/bin/bash
# Where a thaw cold start from disk goes, phase by phase, by the same method as
# peer-probes.sh: uprobes on thaw's own functions (Loader::load_for, ArtifactCache::load,
# Component::deserialize_file, Linking::link, wasmtime's Instantiator::new) and syscall
# tracepoints, read from ftrace. The shape of thaw bench's cold rows: K names of one artifact
# (WASM), the host (--load lazy) restarted R times, each name's first request once per restart.
# Knobs: THAW (the binary), WASM, K (names, 20), R (restarts, 3).
# Usage (root): thaw-probes.sh; one `phases.py thaw` line per request (first of a restart: first=1),
# followed by that request's Server-Timing (`*_st`: thaw's own phases, which split instance from
# handler).
set -eu
cd "$(dirname "$0")/../../.."
here=benches/results/2026-12-05-cold-phases
B=${THAW:-target/release/thaw}; port=18790; admin=18791
. "$here/ftrace.sh"
Tr=$TRACEFS
cleanup() {
  ftrace_reset
  kill $pid 2>/dev/null || true; rm -rf "$work"
}
work=$(mktemp -d); pid=
trap cleanup EXIT
ftrace_reset
add() { add_probe thaw "$B" "$@"; }
# The load's hand-off to tokio's blocking pool, then the load on a pool thread
add p spawn 'tokio::runtime::blocking::pool::Spawner::spawn_task'
add p load 'thaw_runtime::function::Loader::load_for'
add r load_ret 'thaw_runtime::function::Loader::load_for'
add p cache 'thaw_runtime::engine::artifact::ArtifactCache::load'
add r cache_ret 'thaw_runtime::engine::artifact::ArtifactCache::load'
add p deser 'wasmtime::runtime::component::component::Component::deserialize_file'
add r deser_ret 'wasmtime::runtime::component::component::Component::deserialize_file'
add p link 'thaw_runtime::function::Linking::link'
add r link_ret 'thaw_runtime::function::Linking::link'
# The start of a component's instantiation: the request's own instance (thaw's call to it is
# inlined into the request's future), then the warm pool's refills.
add p inst 'wasmtime::runtime::component::instance::Instantiator::new'
echo mono > $Tr/trace_clock
echo 8192 > $Tr/buffer_size_kb
echo 1 > $Tr/events/thaw/enable
for s in accept4 recvfrom writev sendto; do
  echo 'comm ~ "thaw*" || comm ~ "tokio*"' > $Tr/events/syscalls/sys_enter_$s/filter
  echo 1 > $Tr/events/syscalls/sys_enter_$s/enable
done
export THAW_DATA_DIR=$work/data THAW_ADMIN_URL=http://127.0.0.1:$admin
start() {
  $B serve --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin --load lazy >> $work/serve.log 2>&1 &
  pid=$!
  for i in $(seq 1 200); do curl -s -o /dev/null 127.0.0.1:$admin/ && break; sleep 0.05; done
}
start
for k in $(seq 1 ${K:-20}); do $B deploy ${WASM:-target/baselines/lang/js-proxy.wasm} --name fn$k >/dev/null; done
for r in $(seq 1 ${R:-3}); do
  kill $pid; wait $pid 2>/dev/null || true; start; sleep 1
  # One client process for the restart's K requests, back to back as thaw bench sends them,
  # each on a new connection; the trace is split per request at each accept.
  urls=(); for k in $(seq 1 ${K:-20}); do urls+=(-o /dev/null http://127.0.0.1:$port/fn$k); done
  echo > $Tr/trace; echo 1 > $Tr/tracing_on
  curl -s -D $work/headers -H 'Connection: close' "${urls[@]}"
  echo 0 > $Tr/tracing_on
  python3 $here/phases.py thaw < $Tr/trace > $work/phases
  grep -i server-timing $work/headers | tr -d '\r' | while read -r st; do
    echo "$st" | grep -o '[a-z_]*;dur=[0-9.]*' | sed 's/;dur=/_st=/' | paste -sd' '
  done > $work/timings
  paste -d' ' $work/phases $work/timings
done
