#!/bin/bash
# The Rust hello's rows, this build beside the reference run's (0052d2e, the build of
# 2026-11-27-languages-suite: cold 734 us, warm 360 us, 21k requests/s at 32 connections),
# each with the hello it was built with, interleaved REF, HEAD, HEAD, REF. The peer
# (`wasmtime serve`) runs in HEAD's throughput runs only: the reference build's bench looks for
# the wasmtime CLI beside its own target directory. REF is a release build of 0052d2e in a worktree
# (`git worktree add /work/ref 0052d2e`, then scripts/setup-bench's cargo build there).
# usage: hello-vs-reference.sh [OUT] (default: hello-vs-reference beside this script; a
# relative OUT is taken from this script's directory too)
set -eu
cd "$(dirname "$0")"
REF=${REF:-/work/ref/target/release/thaw}; HEAD=${HEAD:-$PWD/../../../target/release/thaw}
OUT=${1:-hello-vs-reference}
mkdir -p /tmp/nolang "$OUT"
n=0
for t in REF HEAD HEAD REF; do
  n=$((n + 1)); bin=${!t}
  "$bin" bench --only "thaw, cold from disk" --only "thaw, warm (pool hit)" --only throughput \
    --thaw-samples 200 --languages /tmp/nolang --out "$OUT/$n-$t" > /dev/null 2>&1
  echo "$n $t: $(ls "$OUT/$n-$t")"
done
