#!/bin/bash
set -u
T=/work/main/target/release/thaw
export THAW_DATA_DIR=/tmp/exp/data THAW_ADMIN_URL=http://127.0.0.1:18081
rm -rf $THAW_DATA_DIR
$T serve --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:18081 --engines /work/main/target/engines > /tmp/exp/serve.log 2>&1 &
echo $! > /tmp/exp/pid
for i in $(seq 1 100); do curl -s -o /dev/null 127.0.0.1:18081/ && break; sleep 0.5; done
$T deploy /work/main/target/baselines/lang/js.wasm --name jscomp
$T deploy /work/main/cli/templates/js/index.js --name jssrc
$T deploy /work/main/cli/templates/python/app.py --name pysrc
$T deploy /work/main/cli/templates/python/app.py --name pyeng
$T deploy /work/main/cli/templates/js/index.js --name jseng
# traffic until both tier up
start=$(date +%s)
for i in $(seq 1 3000); do
  curl -s -o /dev/null 127.0.0.1:18080/jssrc; curl -s -o /dev/null 127.0.0.1:18080/pysrc
  if [ $((i % 20)) = 0 ]; then
    n=$($T list --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for f in d if f.get("loaded_from")=="snapshot"))')
    [ "$n" = 2 ] && break
  fi
  sleep 0.1
done
echo "tier-up after $(( $(date +%s) - start )) s"
$T list --json | python3 -c 'import json,sys; [print(f["name"], f.get("loaded_from")) for f in json.load(sys.stdin)]'
