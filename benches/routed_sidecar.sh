#!/usr/bin/env bash
# benches/routed_sidecar.sh - one mesh sidecar whose outbound listener routes every request
# through a dtab router (identify → delegate (cached) → pick → the per-request stack) to the
# backend, for the peer benchmark harness; compare it with the plain sidecar in one run:
#
#   ../bench-copy/run.sh --proxy 'plain=target/release/examples/sidecar --outbound-listen 127.0.0.1:{PORT} --outbound-target 127.0.0.1:{BACKEND_PORT} --inbound-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log warn' \
#       --proxy 'routed=benches/routed_sidecar.sh {PORT} {BACKEND_PORT} {WORKDIR}'
#
# The load generators send `Host: 127.0.0.1:PORT`, which the host identifier refuses (an IP
# names no service), so the router names every request with the static identifier; the dtab
# rewrites that name twice before `/$/inet` binds it, as a small real dtab would.
#
# Usage: benches/routed_sidecar.sh PORT BACKEND_PORT WORKDIR  (stays in the foreground)
# MESH_EXTRA_TOML, if set, is appended to the configuration (benches/retrying_sidecar.sh).
set -euo pipefail
port=$1 backend=$2 work=$3
bin=${MESH_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/examples}
mkdir -p "$work"
cat > "$work/routed.toml" <<TOML
[outbound]
router = "bench"

[routers.bench]
identifier = { kind = "static", path = "/svc/bench" }
dtab = """
/host     => /\$/inet/127.0.0.1;
/svc      => /host/$backend;
/svc/bench => /svc;
"""
${MESH_EXTRA_TOML:-}
TOML
exec "$bin/sidecar" --config "$work/routed.toml" \
    --outbound-listen "127.0.0.1:$port" \
    --inbound-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log "${MESH_LOG:-warn}"
