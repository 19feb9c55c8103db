#!/usr/bin/env bash
# Starts what exists of the pipeline today, on embedded defaults: a collector
# and a node (node/examples/config.json) whose in-process shipper sends its
# outbox to the collector, and a metrics agent pushing host metrics and the
# node's metrics to the collector by remote-write. Data under ${DATA_DIR:-./sesam-data}; a second
# start resumes from it. Ctrl-C stops both. (sesam-stack will replace this.)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sesam-target}"
cargo build --release --bin sesam-collector --bin sesam-node --bin sesam-shipper --bin sesam-metrics-agent
bin="$CARGO_TARGET_DIR/release"
data="${DATA_DIR:-./sesam-data}"
mkdir -p "$data"
if [ ! -f "$data/tokens.toml" ]; then
  "$bin/sesam-collector" token add --tokens "$data/tokens.toml" --subscription demo --role shipper > "$data/shipper.token"
  "$bin/sesam-collector" token add --tokens "$data/tokens.toml" --subscription demo --role operator > "$data/operator.token"
fi
"$bin/sesam-collector" --data-dir "$data/collector" --listen 127.0.0.1:3100 --tokens "$data/tokens.toml" --egress-allow 127.0.0.1/32 &
collector=$!
trap 'kill -TERM $collector ${node:-} ${agent:-} 2>/dev/null; wait' EXIT INT TERM
sleep 1
"$bin/sesam-node" --config node/examples/config.json --data-dir "$data/node" --listen 127.0.0.1:9042 \
  --node-id demo-node --subscription demo --collector http://127.0.0.1:3100 --token-file "$data/shipper.token" &
node=$!
sleep 1
"$bin/sesam-metrics-agent" --interval 15s --remote-write http://127.0.0.1:3100/api/v1/write \
  --token-file "$data/shipper.token" --scrape sesam-node=http://127.0.0.1:9042/api/metrics \
  --instance demo-host --subscription demo --listen 127.0.0.1:9101 &
agent=$!
cat <<TXT

node API:        http://127.0.0.1:9042/api/pipes   (open: no --api-token-file in the demo)
collector API:   http://127.0.0.1:3100/api/v1/logs (operator token in $data/operator.token)
try:
  curl -X POST -d operation=start http://127.0.0.1:9042/api/pipes/orders/pump
  $bin/sesam-collector search '{pipe="orders"} |= "pump-failed"' --since 1h --token-file $data/operator.token
  curl -H "Authorization: Bearer \$(cat $data/operator.token)" http://127.0.0.1:3100/api/v1/sources
  curl -G -H "Authorization: Bearer \$(cat $data/operator.token)" --data-urlencode 'match[]={__name__=~"node_load1|sesam_pump_.*"}' http://127.0.0.1:3100/federate
  curl http://127.0.0.1:9101/metrics   (the agent, pulled)
TXT
wait
