"""HTTP/2 with prior knowledge (h2c) through the sidecar.

The proxy keeps HTTP/2 upstream when the client speaks it, so the backend here is nghttpd in
plain-text mode (Debian package nghttp2-server), which speaks only h2c.
"""

from __future__ import annotations

import re

from harness import BlackboxCase

PAGE = b"<h1>served over h2c by nghttpd</h1>\n" * 20


class H2cThroughSidecar(BlackboxCase):
    def setUp(self) -> None:
        self.h2 = self.start_h2c_backend({"index.html": PAGE, "other.txt": b"second file\n"})

    def test_h2c_prior_knowledge_outbound(self) -> None:
        sidecar = self.start_sidecar(outbound_target=self.h2.addr)
        r = self.curl("--http2-prior-knowledge", "-w", "\n%{http_code} %{http_version}", f"{sidecar.outbound}/index.html")
        self.assertEqual(r.returncode, 0, r.stderr.decode() + self.diag(sidecar))
        body, _, tail = r.stdout.rpartition(b"\n")
        self.assertEqual(tail, b"200 2", self.diag(sidecar))
        self.assertEqual(body, PAGE)

    def test_h2c_requests_are_counted_as_http2(self) -> None:
        # One URL per curl run: curl 7.88 (Debian 12) fails reusing a prior-knowledge h2c
        # connection for a second URL ("Error in the HTTP2 framing layer") even against
        # nghttpd directly, so multiplexing is not checked with curl here.
        sidecar = self.start_sidecar(outbound_target=self.h2.addr)
        for path in ("/index.html", "/other.txt"):
            r = self.curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                          f"{sidecar.outbound}{path}")
            self.assertEqual(r.returncode, 0, r.stderr.decode() + self.diag(sidecar))
            self.assertEqual(r.stdout, b"200 2")
        metrics = sidecar.metrics()
        self.assertRegex(metrics, re.compile(r'^mesh_detect_total\{[^}]*protocol="http/2"[^}]*\} 2$', re.M))
        self.assertRegex(metrics, re.compile(r'^mesh_response_total\{[^}]*status_code="200"[^}]*\} 2$', re.M))

    def test_h2c_missing_file_is_404(self) -> None:
        sidecar = self.start_sidecar(outbound_target=self.h2.addr)
        r = self.curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", f"{sidecar.outbound}/nope")
        self.assertEqual(r.stdout, b"404", r.stderr.decode())

    def test_h2c_through_two_sidecars(self) -> None:
        # app -> sidecar A outbound -> sidecar B inbound -> nghttpd: a mesh hop.
        b = self.start_sidecar(inbound_target=self.h2.addr)
        a = self.start_sidecar(outbound_target=f"127.0.0.1:{b.inbound_port}")
        r = self.curl("--http2-prior-knowledge", "-w", "\n%{http_code} %{http_version}", f"{a.outbound}/index.html")
        self.assertEqual(r.returncode, 0, r.stderr.decode() + self.diag(a) + self.diag(b))
        body, _, tail = r.stdout.rpartition(b"\n")
        self.assertEqual(tail, b"200 2")
        self.assertEqual(body, PAGE)
        self.assertRegex(b.metrics(), re.compile(r'^mesh_request_total\{[^}]*direction="inbound"[^}]*\} 1$', re.M))

    def test_h2c_header_list_limit(self) -> None:
        # DESIGN.md §5: HTTP/2 header lists are capped at 16 KiB.
        sidecar = self.start_sidecar(outbound_target=self.h2.addr)
        for size, expected in ((8 * 1024, b"200"), (20 * 1024, b"431")):
            r = self.curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
                          "-H", "X-Big: " + "a" * size, f"{sidecar.outbound}/index.html")
            self.assertEqual(r.stdout, expected, f"{size}-byte header over h2c: {r.stderr.decode()}")
