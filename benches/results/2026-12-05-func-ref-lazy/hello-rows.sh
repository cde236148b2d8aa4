#!/bin/bash
# Rust hello rows, both builds interleaved: cold + warm (200 samples), then throughput (hello only).
cd /work/main
for b in after before after2 before2; do
  bin=/work/main/target/release/thaw-${b%2}
  timeout 900 $bin bench --out /tmp/bcold/rust-$b --thaw-samples 200 --languages /tmp/nolang \
    --only "thaw, cold from disk" --only "thaw, warm (pool hit)" > /tmp/bcold/rust-$b.log 2>&1
done
