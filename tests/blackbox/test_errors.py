"""Proxy failures answered by the proxy itself: 502/504 with an l5d-proxy-error header."""

from __future__ import annotations

import socket
import time

from harness import BlackboxCase, closed_port, response_headers


class ProxyErrors(BlackboxCase):
    def error_response(self, url: str, *extra: str):
        r = self.curl(*extra, "-D", "-", "-o", "/dev/null", "-w", "%{http_code}", url)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        head, code = r.stdout[: -3], int(r.stdout[-3:])
        head = head.replace(b"HTTP/2 ", b"HTTP/1.1 ", 1)  # parse h2 heads the same way
        return code, response_headers(head)

    def test_502_when_target_refuses(self) -> None:
        port = closed_port()
        sidecar = self.start_sidecar(outbound_target=f"127.0.0.1:{port}")
        code, headers = self.error_response(f"{sidecar.outbound}/")
        self.assertEqual(code, 502, self.diag(sidecar))
        self.assertIn("l5d-proxy-error", headers, f"headers: {headers}")
        self.assertTrue(headers["l5d-proxy-error"][0], "l5d-proxy-error must say why")
        # The sidecar keeps serving after the failure.
        status, _, _ = sidecar.admin("GET", "/ready")
        self.assertEqual(status, 200)

    def test_502_over_h2c(self) -> None:
        sidecar = self.start_sidecar(outbound_target=f"127.0.0.1:{closed_port()}")
        code, headers = self.error_response(f"{sidecar.outbound}/", "--http2-prior-knowledge")
        self.assertEqual(code, 502, self.diag(sidecar))
        self.assertIn("l5d-proxy-error", headers, f"headers: {headers}")

    def test_502_is_counted(self) -> None:
        port = closed_port()
        sidecar = self.start_sidecar(outbound_target=f"127.0.0.1:{port}")
        self.error_response(f"{sidecar.outbound}/")
        metrics = sidecar.metrics()
        lines = [l for l in metrics.splitlines() if l.startswith("mesh_response_total{") and 'status_code="502"' in l]
        self.assertEqual(len(lines), 1, metrics)
        self.assertTrue(lines[0].endswith(" 1"), lines[0])

    def test_504_when_connect_times_out(self) -> None:
        # A listener whose accept queue is full: the kernel drops further SYNs, so connecting
        # to it hangs until the proxy's connect timeout.
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(lsock.close)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        port = lsock.getsockname()[1]
        for _ in range(4):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.addCleanup(c.close)
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
        time.sleep(0.1)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", port))
            self.fail("could not make a black-hole listener on this machine (connect succeeded)")
        except socket.timeout:
            pass
        finally:
            probe.close()

        sidecar = self.start_sidecar(
            outbound_target=f"127.0.0.1:{port}",
            config_text='[limits]\nconnect_timeout = "300ms"\n',
        )
        started = time.monotonic()
        code, headers = self.error_response(f"{sidecar.outbound}/")
        elapsed = time.monotonic() - started
        self.assertEqual(code, 504, self.diag(sidecar))
        self.assertIn("l5d-proxy-error", headers, f"headers: {headers}")
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 3.0, "the connect timeout is 300ms")
