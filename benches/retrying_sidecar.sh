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
export MESH_EXTRA_TOML='
[routers.bench.service."/svc/bench"]
timeout = "10s"
per_try_timeout = "5s"
retries = { on = ["5xx", "connect-failure"], max_attempts = 3 }
'
exec "$(dirname "$0")/routed_sidecar.sh" "$@"
