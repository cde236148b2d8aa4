#!/bin/bash
# Same-run A/B of the Rust hello rows: base (session start) vs head, interleaved, same wasm.
W=/work/main/target/guests/wasm32-wasip2/release/hello.wasm
for round in 1 2; do
  for build in base head; do
    if [ $build = base ]; then T=/tmp/base-target/release/thaw; extra=""; else T=/work/main/target/release/thaw; extra="--languages /nonexistent"; fi
    echo "== round $round build $build"
    $T bench --wasm $W $extra --only "thaw, cold from disk" --only "thaw, after deploy" --only "thaw, warm" \
      --thaw-samples 100 --deploy-samples 20 --out /tmp/ab-out 2>&1 | grep -E "^\| thaw" | grep -v "skipped"
  done
done
