#!/bin/bash
# thaw bench's cold-from-disk rows of the wasi:http-only JS and Python components
# (scripts/setup-bench's target/baselines/lang), with the peer's, once per build in the order
# given; each build's thaw is told where the baselines are, so a binary outside target/ runs
# the same setups. usage: cold-languages.sh OUT NAME=BIN...
set -eu
t=$(cd "$(dirname "$0")/../../.." && pwd)/target
out=$1; shift
n=0
for build in "$@"; do
  n=$((n + 1)); name=${build%%=*}; bin=${build#*=}
  "$bin" bench --thaw-samples 60 --only "(wasi:http only): thaw, cold" \
    --only "(wasi:http only): wasmtime serve" \
    --wasm "$t/guests/wasm32-wasip2/release/hello.wasm" --baselines "$t/baselines" \
    --languages "$t/baselines/lang" --wasmtime "$t/tools/pip/wasmtime_cli/wasmtime" \
    --out "$out/$n-$name" > /dev/null 2>&1
  echo "$n $name: $(ls "$out/$n-$name")"
done
