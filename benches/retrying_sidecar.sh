#!/usr/bin/env bash
# benches/retrying_sidecar.sh - the routed sidecar of benches/routed_sidecar.sh with a
# resilience policy on its one service (total and per-try timeouts, retries on 5xx with a
# budget), for measuring what the policy costs when no retry is needed:
#
#   ../bench-copy/run.sh --proxy 'routed=benches/routed_sidecar.sh {PORT} {BACKEND_PORT} {WORKDIR}' \
#       --proxy 'retrying=benches/retrying_sidecar.sh {PORT} {BACKEND_PORT} {WORKDIR}'
#
# Usage: benches/retrying_sidecar.sh PORT BACKEND_PORT WORKDIR  (stays in the foreground)
set -euo pipefail
port=$1 backend=$2 work=$3
bin=${MESH_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/examples}
mkdir -p "$work"
cat > "$work/retrying.toml" <<TOML
[outbound]
router = "bench"

[routers.bench]
identifier = { kind = "static", path = "/svc/bench" }
dtab = """
/host     => /\$/inet/127.0.0.1;
/svc      => /host/$backend;
/svc/bench => /svc;
"""

[routers.bench.service."/svc/bench"]
timeout = "10s"
per_try_timeout = "5s"
retries = { on = ["5xx", "connect-failure"], max_attempts = 3 }
TOML
exec "$bin/sidecar" --config "$work/retrying.toml" \
    --outbound-listen "127.0.0.1:$port" \
    --inbound-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log "${MESH_LOG:-warn}"
