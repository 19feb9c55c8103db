#!/usr/bin/env bash
# Starts what exists of the pipeline today, on embedded defaults: a collector
# and a node (node/examples/config.json) whose in-process shipper sends its
# outbox to the collector. Data under ${DATA_DIR:-./sesam-data}; a second
# start resumes from it. Ctrl-C stops both. (sesam-stack will replace this.)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sesam-target}"
cargo build --release --bin sesam-collector --bin sesam-node --bin sesam-shipper
bin="$CARGO_TARGET_DIR/release"
data="${DATA_DIR:-./sesam-data}"
mkdir -p "$data"
if [ ! -f "$data/tokens.toml" ]; then
  "$bin/sesam-collector" token add --tokens "$data/tokens.toml" --subscription demo --role shipper > "$data/shipper.token"
  "$bin/sesam-collector" token add --tokens "$data/tokens.toml" --subscription demo --role operator > "$data/operator.token"
fi
"$bin/sesam-collector" --data-dir "$data/collector" --listen 127.0.0.1:3100 --tokens "$data/tokens.toml" &
collector=$!
trap 'kill -TERM $collector ${node:-} 2>/dev/null; wait' EXIT INT TERM
sleep 1
"$bin/sesam-node" --config node/examples/config.json --data-dir "$data/node" --listen 127.0.0.1:9042 \
  --node-id demo-node --subscription demo --collector http://127.0.0.1:3100 --token-file "$data/shipper.token" &
node=$!
cat <<TXT

node API:        http://127.0.0.1:9042/api/pipes   (open: no --api-token-file in the demo)
collector API:   http://127.0.0.1:3100/api/v1/logs (operator token in $data/operator.token)
try:
  curl -X POST -d operation=start http://127.0.0.1:9042/api/pipes/orders/pump
  $bin/sesam-collector search '{pipe="orders"} |= "pump-failed"' --since 1h --token-file $data/operator.token
  curl -H "Authorization: Bearer \$(cat $data/operator.token)" http://127.0.0.1:3100/api/v1/sources
TXT
wait
