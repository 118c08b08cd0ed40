"""Graceful shutdown: SIGTERM / SIGINT / POST /shutdown drain in-flight requests, then exit."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

from harness import BlackboxCase, can_connect, read_until_close, wait_until

CONCURRENT = 20
SLOW_MS = 1500
GRACE_S = 5


class GracefulShutdown(BlackboxCase):
    def setUp(self) -> None:
        self.backend = self.start_backend()

    def ready_state(self, sidecar) -> str:
        """'200', '503', or 'closed' when the admin server no longer answers."""
        try:
            status, _, _ = sidecar.admin("GET", "/ready", timeout=1)
            return str(status)
        except OSError:
            return "closed"

    def test_sigterm_drains_in_flight_requests(self) -> None:
        curl = self.require_tool("curl")
        sidecar = self.start_sidecar(outbound_target=self.backend.addr, config_text=f'[shutdown]\ngrace = "{GRACE_S}s"\n')
        url = f"{sidecar.outbound}/slow?ms={SLOW_MS}"
        launched = time.monotonic()
        clients = [
            subprocess.Popen(
                [curl, "-sS", "--http1.1", "--max-time", "15", "-D", "-", "-w", "\n%{http_code}", url],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            for _ in range(CONCURRENT)
        ]
        for c in clients:
            self.addCleanup(lambda c=c: (c.poll() is None and c.kill(), c.wait()))

        # SIGTERM once every request is in flight at the backend (and at least 300 ms in).
        arrived = wait_until(lambda: self.backend.count("/slow") >= CONCURRENT, 5)
        self.assertTrue(arrived, f"only {self.backend.count('/slow')} of {CONCURRENT} requests reached the backend in 5s")
        time.sleep(max(0.0, 0.3 - (time.monotonic() - launched)))
        sigterm_at = time.monotonic()
        sidecar.signal(signal.SIGTERM)

        # Draining is visible: /ready says 503 (or the admin server is gone).
        states = []

        def not_ready():
            states.append(self.ready_state(sidecar))
            return states[-1] in ("503", "closed")

        self.assertTrue(wait_until(not_ready, 1.0, 0.05), f"/ready still answered {states[-1]} 1s after SIGTERM")

        # New connections are refused once draining has begun.
        refused = wait_until(lambda: not can_connect(sidecar.outbound_port, 0.3), 1.0, 0.05)
        self.assertTrue(refused, "the outbound listener still accepts connections 1s after SIGTERM")
        r = self.curl("-o", "/dev/null", "-w", "%{http_code}", f"{sidecar.outbound}/", timeout=5)
        self.assertEqual(r.returncode, 7, f"a new request during drain should fail to connect; curl said {r.returncode} {r.stdout!r}")

        # The process exits on its own, successfully, within the grace period.
        rc = sidecar.wait(GRACE_S + 3)
        exited_after = time.monotonic() - sigterm_at
        self.assertIsNotNone(rc, f"sidecar still running {GRACE_S + 3}s after SIGTERM" + self.diag(sidecar))
        self.assertEqual(rc, 0, self.diag(sidecar))
        self.assertLess(exited_after, GRACE_S + 0.5, "exit must come within the grace period")

        # Every in-flight request completed normally.
        results = []
        for c in clients:
            out, err = c.communicate(timeout=15)
            results.append((c.returncode, out, err))
        statuses = [out.rsplit(b"\n", 1)[-1].decode() for _, out, _ in results]
        self.assertEqual(statuses, ["200"] * CONCURRENT, f"curl errors: {[e.decode() for _, _, e in results if e]}")
        for rc_, out, _ in results:
            self.assertEqual(rc_, 0)
            self.assertIn(f"slept {SLOW_MS}ms".encode(), out)
        # HTTP/1 clients are told not to reuse the connection.
        closes = sum(1 for _, out, _ in results if b"\nconnection: close\r\n" in out.lower())
        self.assertEqual(closes, CONCURRENT, "in-flight HTTP/1 responses during drain should carry `Connection: close`")
        self.assertGreaterEqual(exited_after, 0.5, "the sidecar exited before its in-flight requests could finish")

    def test_idle_keepalive_connection_does_not_delay_exit(self) -> None:
        sidecar = self.start_sidecar(outbound_target=self.backend.addr, config_text=f'[shutdown]\ngrace = "{GRACE_S}s"\n')
        s = socket.create_connection(("127.0.0.1", sidecar.outbound_port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(b"GET / HTTP/1.1\r\nHost: blackbox\r\n\r\n")
        data = b""
        while not data.endswith(b"hello from the blackbox backend\n"):
            chunk = s.recv(4096)
            self.assertTrue(chunk, f"connection closed early: {data!r}")
            data += chunk
        started = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        _, closed = read_until_close(s, 3)
        self.assertTrue(closed, "an idle keep-alive client connection should be closed at drain")
        rc = sidecar.wait(GRACE_S)
        self.assertEqual(rc, 0, self.diag(sidecar))
        self.assertLess(time.monotonic() - started, 2.0, "an idle connection must not hold the process until the grace ends")

    def test_sigint_exits_zero(self) -> None:
        sidecar = self.start_sidecar(outbound_target=self.backend.addr)
        sidecar.signal(signal.SIGINT)
        self.assertEqual(sidecar.wait(5), 0, self.diag(sidecar))

    def test_post_shutdown_drains_and_exits(self) -> None:
        sidecar = self.start_sidecar(outbound_target=self.backend.addr)
        r = self.curl("-X", "POST", "-w", "\n%{http_code}", f"{sidecar.admin_url}/shutdown")
        self.assertEqual(r.stdout.rsplit(b"\n", 1)[-1], b"200", r.stdout)
        self.assertEqual(sidecar.wait(5), 0, self.diag(sidecar))
        self.assertFalse(can_connect(sidecar.outbound_port), "outbound listener still open after exit")

    def test_grace_period_bounds_the_drain(self) -> None:
        curl = self.require_tool("curl")
        sidecar = self.start_sidecar(outbound_target=self.backend.addr, config_text='[shutdown]\ngrace = "1s"\n')
        client = subprocess.Popen(
            [curl, "-sS", "--max-time", "15", "-o", "/dev/null", "-w", "%{http_code}", f"{sidecar.outbound}/slow?ms=8000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.addCleanup(lambda: (client.poll() is None and client.kill(), client.wait()))
        self.assertTrue(wait_until(lambda: self.backend.count("/slow") >= 1, 5), "request did not reach the backend")
        started = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        rc = sidecar.wait(6)
        elapsed = time.monotonic() - started
        self.assertIsNotNone(rc, "sidecar ignored its 1s grace period" + self.diag(sidecar))
        self.assertLess(elapsed, 2.5, f"took {elapsed:.1f}s to exit with a 1s grace")
        self.assertGreaterEqual(elapsed, 0.9, "exited before the grace period although a request was in flight")
        self.assertIn("grace period over", sidecar.output())
        out, _ = client.communicate(timeout=15)
        self.assertNotEqual(out, b"200", "the 8s request cannot have completed")
