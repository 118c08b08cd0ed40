"""HTTP/1.1 through the outbound listener, as curl sees it."""

from __future__ import annotations

import json

from harness import Backend, BlackboxCase


class Http1ThroughSidecar(BlackboxCase):
    def setUp(self) -> None:
        self.backend = self.start_backend()
        self.sidecar = self.start_sidecar(outbound_target=self.backend.addr)

    def test_get_status_and_body(self) -> None:
        r = self.curl("--http1.1", "-w", "\n%{http_code} %{http_version}", f"{self.sidecar.outbound}/")
        self.assertEqual(r.returncode, 0, r.stderr.decode() + self.diag(self.sidecar))
        body, _, tail = r.stdout.rpartition(b"\n")
        self.assertEqual(tail, b"200 1.1")
        self.assertEqual(body, Backend.root_body)

    def test_unknown_path_status_is_passed_through(self) -> None:
        r = self.curl("-o", "/dev/null", "-w", "%{http_code}", f"{self.sidecar.outbound}/no-such-page")
        self.assertEqual(r.stdout, b"404", r.stderr.decode())

    def test_post_echo_content_length(self) -> None:
        payload = "x=1&greeting=hello+mesh&" + "a" * 5000
        r = self.curl("--data-binary", payload, "-H", "Content-Type: text/plain", f"{self.sidecar.outbound}/echo")
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(r.stdout.decode(), payload)

    def test_post_echo_chunked(self) -> None:
        payload = "chunked body " * 1000
        r = self.curl("--data-binary", payload, "-H", "Transfer-Encoding: chunked", f"{self.sidecar.outbound}/echo")
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(r.stdout.decode(), payload)

    def test_keepalive_reuses_the_client_connection(self) -> None:
        # Two URLs in one curl run: the second must ride on the first connection.
        r = self.curl(
            "--http1.1",
            "-o", "/dev/null", "-o", "/dev/null",
            "-w", "%{http_code} %{num_connects}\n",
            f"{self.sidecar.outbound}/", f"{self.sidecar.outbound}/?second",
        )
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        lines = r.stdout.decode().split()
        self.assertEqual(lines, ["200", "1", "200", "0"], f"expected 1 new connection then reuse; got {r.stdout!r}")
        self.assertEqual(self.backend.count("/"), 2)

    def test_hop_by_hop_and_host_headers(self) -> None:
        r = self.curl("-H", "Connection: keep-alive, X-Drop-Me", "-H", "X-Drop-Me: 1", "-H", "X-Keep-Me: 2",
                      f"{self.sidecar.outbound}/headers")
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        seen = json.loads(r.stdout)
        self.assertEqual(seen.get("x-keep-me"), "2")
        self.assertNotIn("x-drop-me", seen, "header named in Connection must not be forwarded")
        self.assertEqual(seen.get("host"), f"127.0.0.1:{self.sidecar.outbound_port}")
