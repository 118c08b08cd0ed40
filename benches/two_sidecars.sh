#!/usr/bin/env bash
# benches/two_sidecars.sh - two mesh sidecars in series (A outbound -> B inbound),
# plaintext or mutual TLS, in the foreground, for the peer benchmark harness.
#
# Usage:
#   benches/two_sidecars.sh plain|mtls PORT BACKEND_PORT WORKDIR
#
#   client -> 127.0.0.1:PORT           sidecar A, outbound listener
#          -> 127.0.0.1:PORT+1000      sidecar B, inbound listener (mTLS in `mtls` mode)
#          -> 127.0.0.1:BACKEND_PORT   the application (plaintext)
#
# Derived ports (all on 127.0.0.1; each must be free):
#   PORT+1000  B inbound      PORT+1001  B outbound (unused)   PORT+1002  B admin
#   PORT+1003  A inbound (unused)                              PORT+1004  A admin
# Keep PORT+1004 below the ephemeral range (sysctl net.ipv4.ip_local_port_range,
# usually 32768..): a client socket, or its TIME_WAIT, on a derived port makes that
# listener fail to bind (the harness's default ports, 28090.. -> 29090.., are fine).
#
# In `mtls` mode a CA (trust domain bench.mesh) and two workload identities are
# issued into WORKDIR/{ca,a,b} with meshctl: A = spiffe://bench.mesh/ns/bench/sa/a,
# B = spiffe://bench.mesh/ns/bench/sa/b. A's outbound requires B's ID
# (--outbound-peer-id), B's inbound is --inbound-mode strict. In `plain` mode
# neither sidecar has an identity and both hops are plaintext.
#
# The script stays in the foreground; TERM/INT stop both sidecars. Both are
# children of this script, so a harness that accounts CPU/RSS over the
# process tree sums both proxies.
#
# With the peer harness (run from /work/main):
#   ../bench-copy/run.sh \
#     --proxy 'plain2=benches/two_sidecars.sh plain {PORT} {BACKEND_PORT} {WORKDIR}' \
#     --proxy 'mtls2=benches/two_sidecars.sh mtls {PORT} {BACKEND_PORT} {WORKDIR}'
#
# Environment:
#   MESH_BIN   directory holding the `sidecar` and `meshctl` binaries
#              (default /work/main/target/release/examples; build them with
#              `cargo build --release --examples`)
#   MESH_LOG   log filter for both sidecars (default warn)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[ $# -eq 4 ] || usage
MODE="$1"; PORT="$2"; BACKEND_PORT="$3"; WORKDIR="$4"
case "$MODE" in plain|mtls) ;; *) usage ;; esac
for n in "$PORT" "$BACKEND_PORT"; do
  case "$n" in ''|*[!0-9]*) echo "ports must be numbers" >&2; exit 2 ;; esac
done
[ "$PORT" -ge 1 ] && [ "$((PORT + 1004))" -le 65535 ] || { echo "PORT out of range" >&2; exit 2; }

BIN="${MESH_BIN:-/work/main/target/release/examples}"
LOG="${MESH_LOG:-warn}"
for b in sidecar meshctl; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b (cargo build --release --examples, or set MESH_BIN)" >&2; exit 3; }
done
mkdir -p "$WORKDIR"

B_IN=$((PORT + 1000)); B_OUT=$((PORT + 1001)); B_ADMIN=$((PORT + 1002))
A_IN=$((PORT + 1003)); A_ADMIN=$((PORT + 1004))
TD=bench.mesh
A_ID="spiffe://$TD/ns/bench/sa/a"
B_ID="spiffe://$TD/ns/bench/sa/b"

A_TLS=(); B_TLS=()
if [ "$MODE" = mtls ]; then
  rm -rf "$WORKDIR/ca" "$WORKDIR/a" "$WORKDIR/b"
  "$BIN/meshctl" ca init --trust-domain "$TD" --out "$WORKDIR/ca" >"$WORKDIR/meshctl.log" 2>&1
  "$BIN/meshctl" ca issue --ca "$WORKDIR/ca" --id "$A_ID" --out "$WORKDIR/a" >>"$WORKDIR/meshctl.log" 2>&1
  "$BIN/meshctl" ca issue --ca "$WORKDIR/ca" --id "$B_ID" --out "$WORKDIR/b" >>"$WORKDIR/meshctl.log" 2>&1
  A_TLS=(--identity-dir "$WORKDIR/a" --outbound-peer-id "$B_ID")
  B_TLS=(--identity-dir "$WORKDIR/b" --inbound-mode strict)
fi

PID_A=""; PID_B=""
stop() {
  trap - TERM INT EXIT
  local p
  for p in $PID_A $PID_B; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $PID_A $PID_B; do wait "$p" 2>/dev/null || true; done
}
trap 'stop; exit 0' TERM INT
trap stop EXIT

"$BIN/sidecar" --log "$LOG" \
  --inbound-listen "127.0.0.1:$B_IN" --inbound-target "127.0.0.1:$BACKEND_PORT" \
  --outbound-listen "127.0.0.1:$B_OUT" --outbound-target "127.0.0.1:$BACKEND_PORT" \
  --admin-listen "127.0.0.1:$B_ADMIN" "${B_TLS[@]}" >"$WORKDIR/sidecar-b.log" 2>&1 &
PID_B=$!
"$BIN/sidecar" --log "$LOG" \
  --outbound-listen "127.0.0.1:$PORT" --outbound-target "127.0.0.1:$B_IN" \
  --inbound-listen "127.0.0.1:$A_IN" --inbound-target "127.0.0.1:$BACKEND_PORT" \
  --admin-listen "127.0.0.1:$A_ADMIN" "${A_TLS[@]}" >"$WORKDIR/sidecar-a.log" 2>&1 &
PID_A=$!
echo "$PID_A" >"$WORKDIR/sidecar-a.pid"; echo "$PID_B" >"$WORKDIR/sidecar-b.pid"
echo "two_sidecars $MODE: A pid $PID_A outbound 127.0.0.1:$PORT -> B pid $PID_B inbound 127.0.0.1:$B_IN -> 127.0.0.1:$BACKEND_PORT"

# Stay in the foreground until either sidecar exits or we are told to stop.
# `wait -n` returns when the first child exits; `wait` is interrupted by TERM.
set +e
wait -n "$PID_A" "$PID_B"
rc=$?
echo "two_sidecars: a sidecar exited (status $rc); stopping the other" >&2
exit "$rc"
