#!/usr/bin/env bash
# What idle loaded functions cost: N copies of the Rust hello (each made distinct by a custom
# section, so each has its own artifact), deployed, then the host restarted with
# `--load background` (the default). Prints the host's resident set from
# /proc/PID/smaps_rollup at four points: idle with no functions, right after the background
# load, after the functions have been idle past `--warm-idle-secs` (their code pages given
# back, see runtime/src/function/trim.rs), and past `--unload-idle-secs` (their code
# unloaded). After each of the last two, the first request to five functions against a
# second request to each (curl's time to first byte).
#
#   benches/density.sh [N] [WARM_IDLE_SECS] [UNLOAD_IDLE_SECS]      (defaults: 300, 10, 40)
#
# Needs: a release thaw (cargo build --release -p thaw-cli), python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300}
idle=${2:-10}
unload=${3:-40}
thaw=target/release/thaw
port=18680
admin=18681
token=density-token-0123456789abcdef
[ -x "$thaw" ] || { echo "build thaw first: cargo build --release -p thaw-cli" >&2; exit 1; }
(cd functions && cargo build --quiet --release --target wasm32-wasip2 -p hello --target-dir ../target/guests)
work=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
python3 - "$n" "$work" <<'PY'
import sys
n, work = int(sys.argv[1]), sys.argv[2]
src = open('target/guests/wasm32-wasip2/release/hello.wasm', 'rb').read()
def leb(v):
    out = bytearray()
    while True:
        b = v & 0x7f; v >>= 7
        if v: out.append(b | 0x80)
        else: out.append(b); return bytes(out)
for i in range(n):
    name = b'thaw-density'; payload = leb(len(name)) + name + str(i).encode()
    open(f'{work}/h{i}.wasm', 'wb').write(src + b'\x00' + leb(len(payload)) + payload)
PY
serve() {
  "$thaw" serve --data-dir "$work/data" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --admin-token "$token" --warm-idle-secs "$idle" --unload-idle-secs "$unload" 2>>"$work/log" &
  server=$!
  for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && return 0; sleep 0.1; done
  echo "host not ready" >&2; exit 1
}
rss() { awk -v what="$1" '/^(Rss|Anonymous|Pss_File):/ { v[$1] = $2 } END {
  printf "%-28s rss %7d KiB  anonymous %7d KiB  file %7d KiB\n", what, v["Rss:"], v["Anonymous:"], v["Pss_File:"] }' \
  "/proc/$server/smaps_rollup"; }
serve
rss "no functions"
for i in $(seq 0 $((n - 1))); do
  "$thaw" deploy "$work/h$i.wasm" --name "h$i" --admin "http://127.0.0.1:$admin" --admin-token "$token" >/dev/null
done
kill "$server"; wait "$server" 2>/dev/null || true
serve
rss "$n loaded"
started=$(date +%s)
firsts() { # label first-function
  for i in $(seq "$2" $(($2 + 4))); do
    first=$(curl -s -o /dev/null -w '%{time_starttransfer}' "http://127.0.0.1:$port/h$i")
    second=$(curl -s -o /dev/null -w '%{time_starttransfer}' "http://127.0.0.1:$port/h$i")
    echo "h$i first $1 ${first}s, second ${second}s"
  done
}
sleep $((idle * 2 + 2))
rss "$n loaded, idle ${idle}s+"
firsts "after idle" 1
sleep $((unload + 12 - ($(date +%s) - started)))
rss "$n idle past ${unload}s"
firsts "after unload" 10
