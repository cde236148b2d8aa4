#!/bin/bash
# Interleaved throughput rounds: in each round every build in turn, one host alone with wrk
# (../2026-12-05-cold-phases/throughput-c32.sh: 2 s of warm-up, 5 s at 32 connections), all
# serving the same WASM. usage: rounds.sh ROUNDS WASM NAME=BIN... ; prints "round name rps".
set -eu
here=$(cd "$(dirname "$0")" && pwd)
rounds=$1; wasm=$2; shift 2
for r in $(seq 1 "$rounds"); do
  for build in "$@"; do
    name=${build%%=*}; bin=${build#*=}
    rps=$("$here/../2026-12-05-cold-phases/throughput-c32.sh" "$bin" "$wasm" | awk '/Requests\/sec/ {print $2}')
    echo "$r $name $rps"
  done
done
