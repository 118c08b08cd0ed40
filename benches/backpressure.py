#!/usr/bin/env python3
"""Backpressure benchmark: the sidecar's memory while a fast peer meets a slow one.

Each scenario runs its own sidecar (the debug build by default) between a fast peer and one
that moves data at --rate, samples the sidecar's VmRSS every 50 ms, and reports baseline,
peak and growth. Scenarios run side by side.

    benches/backpressure.py                # short: 10 s per scenario (what CI checks)
    benches/backpressure.py --full         # the whole 1 GiB at 1 MiB/s: about 17 minutes
    benches/backpressure.py --scenario upload --seconds 60 --rate 4

Scenarios: `download` (HTTP/1.1 upstream offers the body as fast as it can, the client reads
slowly), `upload` (the client sends as fast as it can, the upstream reads slowly), `h2c`
(download over HTTP/2 prior knowledge on both legs, nghttpd upstream; needs nghttpd and curl).
Exits 1 if the RSS grew by more than --limit-mib in any scenario, or a --full run did not move
the whole body. The short checks also run in CI as tests/blackbox/test_backpressure.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, str(REPO / "tests" / "blackbox"))

import backpressure as bp  # noqa: E402
import harness  # noqa: E402

SCENARIOS = ("download", "upload", "h2c")


def run(scenario: str, size: int, rate: float, seconds, results: dict) -> None:
    upstream = h2 = sidecar = None
    try:
        if scenario == "h2c":
            h2 = harness.H2cBackend({"small": b"warm-up\n"})
            with open(f"{h2.dir}/big", "wb") as f:
                f.truncate(size)  # sparse: no disk used
            sidecar = harness.Sidecar(outbound_target=h2.addr)
            results[scenario] = bp.h2c_download(sidecar, "big", size, rate, seconds, warm_file="small")
        else:
            upstream = bp.FastUpstream(sink_rate=rate)
            sidecar = harness.Sidecar(outbound_target=upstream.addr)
            if scenario == "download":
                results[scenario] = bp.http1_download(sidecar, upstream, size, rate, seconds)
            else:
                results[scenario] = bp.http1_upload(sidecar, upstream, size, seconds)
            if upstream.errors:
                results[scenario] = f"upstream saw a bad body: {upstream.errors[0]}"
    except Exception as e:  # reported with the others
        results[scenario] = f"{type(e).__name__}: {e}"
    finally:
        for x in (sidecar, upstream, h2):
            if x is not None:
                try:
                    x.stop()
                except AssertionError as e:
                    results[scenario] = f"{results.get(scenario)}; sidecar did not stop cleanly: {e}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="move the whole body (1 GiB at 1 MiB/s: ~17 min)")
    parser.add_argument("--seconds", type=float, default=10, help="length of a short run (default 10)")
    parser.add_argument("--size-mib", type=int, default=1024, help="body size in MiB (default 1024)")
    parser.add_argument("--rate", type=float, default=1, help="slow side, MiB/s (default 1)")
    parser.add_argument("--limit-mib", type=float, default=8, help="allowed RSS growth (default 8)")
    parser.add_argument("--scenario", choices=SCENARIOS, action="append", help="repeatable; default: all")
    parser.add_argument("--sidecar", help="sidecar binary (default $MESH_SIDECAR or target/debug/examples/sidecar)")
    opts = parser.parse_args()
    if opts.sidecar:
        os.environ["MESH_SIDECAR"] = opts.sidecar
    size, rate = opts.size_mib * bp.MIB, opts.rate * bp.MIB
    seconds = None if opts.full else opts.seconds
    scenarios = opts.scenario or list(SCENARIOS)
    print(f"sidecar {harness.sidecar_binary()}; {opts.size_mib} MiB body, slow side {opts.rate:g} MiB/s, "
          + ("whole body" if opts.full else f"{opts.seconds:g} s") + f", scenarios {', '.join(scenarios)}", flush=True)

    results: dict = {}
    threads = [threading.Thread(target=run, args=(s, size, rate, seconds, results)) for s in scenarios]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    failed = False
    for s in scenarios:
        r = results.get(s, "no result")
        if isinstance(r, str):
            print(f"{s}: FAILED: {r}")
            failed = True
            continue
        ok = r.growth_kib < opts.limit_mib * 1024 and (r.complete or not opts.full)
        print(f"{'ok    ' if ok else 'FAILED'} {r.summary()}")
        failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
