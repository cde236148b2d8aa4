#!/bin/bash
# Where a `wasmtime serve` cold start goes, phase by phase. The peer ships with symbols, so
# uprobes on its own functions (ServeCommand::execute, Config::new, Engine::new,
# Component::deserialize_file, Linker::instantiate_pre, InstancePre's instantiate_async)
# and a few syscall tracepoints mark the phases. ftrace, not `perf record`:
# perf's per-thread events made every thread the peer starts cost milliseconds more.
# Usage (root): peer-probes.sh <cwasm> [N] [serve options...]; one line per sample, from
# `phases.py line`; `phases.py sum` summarises the lines.
set -eu
W=${W:-/work/main/target/tools/pip/wasmtime_cli/wasmtime}
cwasm=$1; n=${2:-10}; shift; [ $# -gt 0 ] && shift
here=$(cd "$(dirname "$0")" && pwd)
. "$here/ftrace.sh"
T=$TRACEFS
pid=
cleanup() {
  ftrace_reset
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
}
trap cleanup EXIT
ftrace_reset
add() { add_probe peer "$W" "$@"; }
add p exec '<wasmtime_cli::commands::serve::ServeCommand>::execute'
add p config '<wasmtime::config::Config>::new'
add p engine '<wasmtime::engine::Engine>::new'
add r engine_ret '<wasmtime::engine::Engine>::new'
add p wasi_linker '<wasmtime_cli::common::RunCommon>::add_wasmtime_wasi_to_linker::<wasmtime_cli::commands::serve::Host>'
add r wasi_linker_ret '<wasmtime_cli::common::RunCommon>::add_wasmtime_wasi_to_linker::<wasmtime_cli::commands::serve::Host>'
add p detect '<wasmtime::engine::Engine>::detect_precompiled'  # in load_module, after the file is mapped
add p deser '<wasmtime::runtime::component::component::Component>::deserialize_file::<&std::path::Path>'
add r deser_ret '<wasmtime::runtime::component::component::Component>::deserialize_file::<&std::path::Path>'
add p deser2 '<wasmtime::runtime::component::component::Component>::deserialize_file::<&std::path::PathBuf>'
add r deser2_ret '<wasmtime::runtime::component::component::Component>::deserialize_file::<&std::path::PathBuf>'
add r ipre_ret '<wasmtime::runtime::component::linker::Linker<wasmtime_cli::commands::serve::Host>>::instantiate_pre'
# InstancePre<serve::Host>::instantiate_async's future (two monomorphic copies): first poll in,
# last poll out.
add p inst 0x14a1190
add r inst_ret 0x14a1190
add p inst2 0x15ea980
add r inst2_ret 0x15ea980
echo mono > $T/trace_clock
echo 8192 > $T/buffer_size_kb
echo 1 > $T/events/peer/enable
echo 'filename ~ "*wasmtime"' > $T/events/sched/sched_process_exec/filter
echo 1 > $T/events/sched/sched_process_exec/enable
for s in listen accept4 recvfrom writev sendto; do
  echo 'comm ~ "wasmtime*" || comm ~ "tokio*"' > $T/events/syscalls/sys_enter_$s/filter
  echo 1 > $T/events/syscalls/sys_enter_$s/enable
done
port=18899
for i in $(seq 1 "$n"); do
  echo > $T/trace
  echo 1 > $T/tracing_on
  "$W" serve -Scli "$@" --allow-precompiled --addr 127.0.0.1:$port "$cwasm" >/dev/null 2>&1 &
  pid=$!
  for t in $(seq 1 2000); do curl -s -o /dev/null 127.0.0.1:$port/ && break; sleep 0.002; done
  echo 0 > $T/tracing_on
  kill $pid; wait $pid 2>/dev/null || true
  [ -n "${RAW:-}" ] && cp $T/trace "$RAW.$i"
  python3 "$here/phases.py" line < $T/trace
done
