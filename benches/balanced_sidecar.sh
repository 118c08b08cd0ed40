#!/usr/bin/env bash
# benches/balanced_sidecar.sh - one mesh sidecar whose outbound target is a bound name with
# two endpoints (the same backend reached as 127.0.0.1 and as ::ffff:127.0.0.1), so every
# request goes through the P2C + Peak-EWMA balancer; for the peer benchmark harness:
#
#   ../bench-copy/run.sh --proxy 'single=target/release/examples/sidecar --outbound-listen 127.0.0.1:{PORT} --outbound-target 127.0.0.1:{BACKEND_PORT} --inbound-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log warn' \
#       --proxy 'balanced=benches/balanced_sidecar.sh {PORT} {BACKEND_PORT} {WORKDIR}'
#
# Usage: benches/balanced_sidecar.sh PORT BACKEND_PORT WORKDIR  (stays in the foreground)
set -euo pipefail
port=$1 backend=$2 work=$3
bin=${MESH_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/examples}
mkdir -p "$work"
cat > "$work/balanced.toml" <<TOML
[namers.st]
kind = "static"
services.backend = ["127.0.0.1:$backend", "[::ffff:127.0.0.1]:$backend"]
TOML
exec "$bin/sidecar" --config "$work/balanced.toml" \
    --outbound-listen "127.0.0.1:$port" --outbound-target /#/st/backend \
    --inbound-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log "${MESH_LOG:-warn}"
