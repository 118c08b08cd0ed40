"""Graceful shutdown: SIGTERM / SIGINT / POST /shutdown drain in-flight requests, then exit.

Requests are held in flight at the backend (GET /hold) until the test releases them, so every
check below is an ordering the test controls ("refused while a request is still in flight",
"exits once the last request is answered") rather than a guess about how long things take.
The grace period is long (30 s) so that a drain which sits out the whole grace, instead of
ending with its last request, fails: the process must be gone well before it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time

from harness import BlackboxCase, can_connect, read_until_close, wait_until

GRACE_S = 30
# After the last in-flight request is answered the process should exit at once; this bound is
# generous for a loaded CI machine but far below GRACE_S.
EXIT_AFTER_DRAIN_S = 10
# Generous deadline for anything that should happen "promptly" (listener closed, /ready 503).
PROMPT_S = 10


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

    def hold_requests(self, sidecar, n: int) -> list[subprocess.Popen]:
        """n curl clients whose requests stay in flight at the backend until backend.release()."""
        curl = self.require_tool("curl")
        self.addCleanup(self.backend.release)  # runs before the sidecar's stop()
        clients = [
            subprocess.Popen(
                [curl, "-sS", "--http1.1", "--max-time", "60", "-D", "-", "-w", "\n%{http_code}", f"{sidecar.outbound}/hold?n={i}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            for i in range(n)
        ]
        for c in clients:
            self.addCleanup(lambda c=c: (c.poll() is None and c.kill(), c.wait()))
        arrived = wait_until(lambda: self.backend.count("/hold") >= n, PROMPT_S)
        self.assertTrue(arrived, f"only {self.backend.count('/hold')} of {n} requests reached the backend in {PROMPT_S}s"
                        + self.diag(sidecar))
        return clients

    def idle_keepalive_connection(self, sidecar) -> socket.socket:
        """A client connection that has had its response and now sits idle, kept alive."""
        s = socket.create_connection(("127.0.0.1", sidecar.outbound_port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(b"GET / HTTP/1.1\r\nHost: blackbox\r\n\r\n")
        data = b""
        while not data.endswith(self.backend.root_body):
            chunk = s.recv(4096)
            self.assertTrue(chunk, f"connection closed early: {data!r}")
            data += chunk
        return s

    def drain(self, trigger, n: int) -> None:
        """n requests in flight plus an idle keep-alive connection; trigger(); check the drain."""
        sidecar = self.start_sidecar(outbound_target=self.backend.addr, config_text=f'[shutdown]\ngrace = "{GRACE_S}s"\n')
        clients = self.hold_requests(sidecar, n)
        idle = self.idle_keepalive_connection(sidecar)

        trigger(sidecar)

        # While the requests are still held (so the process must still be running):
        # draining shows on /ready, both listeners refuse new connections, and the idle
        # keep-alive connection is closed rather than left to hold up the exit.
        states = []

        def not_ready():
            states.append(self.ready_state(sidecar))
            return states[-1] in ("503", "closed")

        self.assertTrue(wait_until(not_ready, PROMPT_S, 0.05), f"/ready still answered {states[-1]} {PROMPT_S}s after shutdown began")
        for name, port in (("outbound", sidecar.outbound_port), ("inbound", sidecar.inbound_port)):
            refused = wait_until(lambda port=port: not can_connect(port, 0.3), PROMPT_S, 0.05)
            self.assertTrue(refused, f"the {name} listener still accepts connections {PROMPT_S}s into the drain" + self.diag(sidecar))
        _, closed = read_until_close(idle, PROMPT_S)
        self.assertTrue(closed, "an idle keep-alive client connection should be closed at drain" + self.diag(sidecar))
        self.assertIsNone(sidecar.proc.poll(), "the sidecar exited while requests were still in flight" + self.diag(sidecar))
        self.assertEqual(sum(1 for c in clients if c.poll() is not None), 0, "a held request ended before it was released")

        # The last in-flight request finishes: the process exits at once, not at the grace end.
        self.backend.release()
        released_at = time.monotonic()
        rc = sidecar.wait(EXIT_AFTER_DRAIN_S)
        self.assertIsNotNone(rc, f"sidecar still running {EXIT_AFTER_DRAIN_S}s after its last in-flight request was answered "
                                 f"(grace {GRACE_S}s): the drain does not end with the connections" + self.diag(sidecar))
        self.assertEqual(rc, 0, self.diag(sidecar))
        print(f"[{n} in flight: exited {time.monotonic() - released_at:.2f}s after release] ", end="", flush=True)

        # Every in-flight request completed normally, and HTTP/1 clients were told not to
        # reuse the connection.
        results = []
        for c in clients:
            out, err = c.communicate(timeout=PROMPT_S)
            results.append((c.returncode, out, err))
        statuses = [out.rsplit(b"\n", 1)[-1].decode() for _, out, _ in results]
        self.assertEqual(statuses, ["200"] * n, f"curl errors: {[e.decode() for _, _, e in results if e]}")
        for rc_, out, _ in results:
            self.assertEqual(rc_, 0)
            self.assertIn(b"\r\n\r\nreleased\n", out)
        closes = sum(1 for _, out, _ in results if b"\nconnection: close\r\n" in out.lower())
        self.assertEqual(closes, n, "in-flight HTTP/1 responses during drain should carry `Connection: close`")

    def test_sigterm_drains_in_flight_requests(self) -> None:
        self.drain(lambda s: s.signal(signal.SIGTERM), 20)

    def test_sigint_drains_in_flight_requests(self) -> None:
        self.drain(lambda s: s.signal(signal.SIGINT), 2)

    def test_post_shutdown_drains_in_flight_requests(self) -> None:
        def post(sidecar) -> None:
            r = self.curl("-X", "POST", "-w", "\n%{http_code}", f"{sidecar.admin_url}/shutdown")
            self.assertEqual(r.stdout.rsplit(b"\n", 1)[-1], b"200", r.stdout)

        self.drain(post, 2)

    def test_grace_period_bounds_the_drain(self) -> None:
        # A request held far longer than the 1 s grace (until clean-up): the process must not
        # wait for it. It exits on its own, no sooner than the grace, and the held client is
        # cut off (no 200) rather than left hanging.
        sidecar = self.start_sidecar(outbound_target=self.backend.addr, config_text='[shutdown]\ngrace = "1s"\n')
        [client] = self.hold_requests(sidecar, 1)
        started = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        rc = sidecar.wait(PROMPT_S)
        elapsed = time.monotonic() - started
        self.assertIsNotNone(rc, f"sidecar ignored its 1s grace period: still running {PROMPT_S}s after SIGTERM "
                                 "with a request in flight" + self.diag(sidecar))
        self.assertEqual(rc, 0, self.diag(sidecar))
        self.assertGreaterEqual(elapsed, 0.9, "exited before the grace period although a request was in flight")
        self.assertIn("grace period over", sidecar.output())
        try:
            out, err = client.communicate(timeout=PROMPT_S)
        except subprocess.TimeoutExpired:
            self.fail(f"the held client connection was left open {PROMPT_S}s after the sidecar exited")
        self.assertNotEqual(out.rsplit(b"\n", 1)[-1], b"200", "the held request cannot have completed")
        self.assertNotEqual(client.returncode, 0, f"curl should report the cut connection; said {err!r}")
