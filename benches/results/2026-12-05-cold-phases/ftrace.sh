# Shared by peer-probes.sh and thaw-probes.sh (sourced): uprobes on a binary's own functions
# and ftrace's state, set and put back.
TRACEFS=/sys/kernel/tracing

# A symbol of BIN (or 0xADDR) as the file offset a uprobe takes: both binaries map their text
# segment at offset + 0x1000. nm's line is 16 hex digits, the type, then the name, which must
# match exactly.
probe_offset() {
  local bin=$1 a=$2
  [[ $a == 0x* ]] || a=0x$(nm -C "$bin" | awk -v s="$2" 'substr($0, 20) == s { print $1; exit }')
  [ "$a" != 0x ] || { echo "no symbol $2 in $bin" >&2; exit 1; }
  printf '0x%x' $((a - 0x1000))
}

# add_probe GROUP BIN p|r EVENT SYMBOL: an entry (p) or return (r) probe.
add_probe() {
  echo "$3:$1/$4 $(realpath "$2"):$(probe_offset "$2" "$5")" >> $TRACEFS/uprobe_events
}

# Tracing off, no events, no probes, filters and clock and buffer back to the defaults.
ftrace_reset() {
  echo 0 > $TRACEFS/tracing_on; echo 0 > $TRACEFS/events/enable; echo > $TRACEFS/uprobe_events
  for f in $TRACEFS/events/syscalls/sys_enter_*/filter $TRACEFS/events/sched/sched_process_exec/filter; do
    echo 0 > "$f"
  done
  echo local > $TRACEFS/trace_clock; echo 1408 > $TRACEFS/buffer_size_kb
}
