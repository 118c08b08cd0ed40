"""Backpressure with bounded memory (issue 12, item 3), against the real sidecar binary.

A 1 GiB body offered by a fast peer to a slow one (~1 MiB/s) through the sidecar, for
RUN_S seconds: the sidecar's RSS may grow by at most RSS_GROWTH_LIMIT_MIB over its baseline.
Without backpressure the proxy would read the fast loopback side into memory at hundreds of
MiB/s and grow by hundreds of MiB within the run. The figures are printed with each test;
benches/backpressure.py --full runs the whole 1 GiB through (about 17 minutes).
"""

from __future__ import annotations

from backpressure import GIB, MIB, FastUpstream, Result, h2c_download, http1_download, http1_upload
from harness import BlackboxCase

RUN_S = 10
RATE = MIB  # bytes/s on the slow side
SIZE = GIB
RSS_GROWTH_LIMIT_MIB = 8
# Bytes the fast side may get ahead of the slow one: socket buffers on both legs (the kernel's
# autotuning may take several MiB each) plus the proxy's own few buffers. Without backpressure
# this is most of what the fast side can push in RUN_S, hundreds of MiB.
AHEAD_LIMIT_MIB = 64


class BoundedMemory(BlackboxCase):
    def start_upstream(self) -> FastUpstream:
        upstream = FastUpstream(sink_rate=RATE)
        self.addCleanup(upstream.stop)
        return upstream

    def check(self, r: Result, sidecar) -> None:
        print(f"\n    {r.summary()} ", end="", flush=True)
        # The slow side really moved data at about the rate (so the run measured a transfer,
        # not a stall); half the nominal amount allows for a slow start on a loaded machine.
        self.assertGreaterEqual(r.moved, RATE * RUN_S / 2, f"too little moved: {r.summary()}" + self.diag(sidecar))
        self.assertFalse(r.complete, "the whole body cannot have moved at this rate")
        self.assertLess(r.growth_kib, RSS_GROWTH_LIMIT_MIB * 1024,
                        f"sidecar RSS grew by {r.growth_kib / 1024:.1f} MiB: {r.summary()}" + self.diag(sidecar))
        if r.pushed is not None:
            self.assertLess(r.pushed - r.moved, AHEAD_LIMIT_MIB * MIB, f"the fast side was not held back: {r.summary()}")
        self.assertIsNone(sidecar.proc.poll(), "the sidecar exited during the transfer" + self.diag(sidecar))

    def test_http1_download_to_a_slow_client(self) -> None:
        upstream = self.start_upstream()
        sidecar = self.start_sidecar(outbound_target=upstream.addr)
        r = http1_download(sidecar, upstream, SIZE, RATE, RUN_S)
        self.check(r, sidecar)
        self.assertEqual(upstream.errors, [])

    def test_http1_upload_to_a_slow_upstream(self) -> None:
        upstream = self.start_upstream()
        sidecar = self.start_sidecar(outbound_target=upstream.addr)
        r = http1_upload(sidecar, upstream, SIZE, RUN_S)
        self.check(r, sidecar)
        self.assertEqual(upstream.errors, [])

    def test_h2c_download_to_a_slow_client(self) -> None:
        # nghttpd serves a sparse 1 GiB file (no disk used); the proxy speaks HTTP/2 on both
        # legs, so here backpressure is flow control.
        h2 = self.start_h2c_backend({"small": b"warm-up\n"})
        with open(f"{h2.dir}/big", "wb") as f:
            f.truncate(SIZE)
        sidecar = self.start_sidecar(outbound_target=h2.addr)
        r = h2c_download(sidecar, "big", SIZE, RATE, RUN_S, warm_file="small")
        self.check(r, sidecar)
