#!/usr/bin/env bash
# The request path before and after issue 21, side by side: each round runs both builds in
# turn, so drift on a shared machine hits both alike.
#   BASE_THAW, HEAD_THAW: release `thaw` binaries; BASE_INVOKE, HEAD_INVOKE: release builds
#   of benches/benches/invoke.rs; HELLO: functions/hello built for wasm32-wasip2.
# End to end: `thaw serve` with hello, `wrk -t2 -c32 -d10s` on /hello (the data plane's
# parsing, the path and Host checks, routing, admission, the pool, the guest).
# In process: criterion's invoke-hello/{fresh-pooling,pool-hit} rows.
set -euo pipefail
rounds=${ROUNDS:-3}
for round in $(seq "$rounds"); do
  for build in base head; do
    thaw_var="${build^^}_THAW"; invoke_var="${build^^}_INVOKE"
    dir=$(mktemp -d)
    "${!thaw_var}" serve --data-dir "$dir" --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:18081 \
      --admin-token bench-token-0123456789 >/dev/null 2>"$dir/log" &
    pid=$!
    for _ in $(seq 100); do curl -s 127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
    curl -s -X PUT -H 'Authorization: Bearer bench-token-0123456789' \
      -H 'content-type: application/wasm' --data-binary @"$HELLO" \
      127.0.0.1:18081/v1/functions/hello >/dev/null
    wrk -t2 -c32 -d3s http://127.0.0.1:18080/hello >/dev/null # warm-up
    echo "round $round $build wrk $(wrk -t2 -c32 -d10s http://127.0.0.1:18080/hello | grep Requests/sec)"
    kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$dir"
    "${!invoke_var}" --bench 'invoke-hello/(fresh-pooling|pool-hit)$' 2>/dev/null \
      | grep -E '^invoke-hello|time:' | paste - - | sed "s/^/round $round $build /"
  done
done
