"""Malformed and abusive HTTP/1 requests on a raw socket (DESIGN.md §5).

The upstream here is a RawBackend: it records every byte it receives and rejects nothing, so
"the backend never saw this request" shows the proxy refused it. (A strict backend rejects
most of these inputs itself, and then that check holds whatever the proxy does.) Each test
that expects a request through checks that it arrived, which shows the recorder works.
"""

from __future__ import annotations

import socket
import time

from harness import BlackboxCase, RawBackend, Sidecar, parse_status, raw_exchange, read_until_close, response_headers

HEADER_TIMEOUT_S = 1.0


def request(path: str, *headers: str, body: bytes = b"", method: str = "POST") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: blackbox\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    return head.encode("latin-1") + body


class MalformedHttp1(BlackboxCase):
    @classmethod
    def setUpClass(cls) -> None:
        # Sharing one backend and sidecar keeps this class fast; each test uses its own path
        # so "did the backend see it" stays per test.
        cls.backend = RawBackend()
        try:
            cls.sidecar = Sidecar(
                outbound_target=cls.backend.addr,
                config_text=f'[limits]\nheader_read_timeout = "{HEADER_TIMEOUT_S:g}s"\n',
            )
        except BaseException:
            cls.backend.stop()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            cls.sidecar.stop()
        finally:
            cls.backend.stop()

    def exchange(self, payload: bytes, timeout: float = 3) -> tuple[bytes, bool]:
        return raw_exchange(self.sidecar.outbound_port, payload, timeout)

    def assert_rejected(self, payload: bytes, status: int, path: str, must_close: bool = True) -> bytes:
        data, closed = self.exchange(payload)
        self.assertEqual(parse_status(data), status, f"response to {payload[:200]!r}:\n{data[:500]!r}" + self.diag(self.sidecar))
        if must_close:
            self.assertTrue(closed, f"connection left open after {status}: {data[:300]!r}")
        self.assert_never_forwarded(path)
        return data

    def assert_never_forwarded(self, path: str) -> None:
        # Any byte of the request upstream (even a mangled head) would contain its path.
        raw = self.backend.raw()
        self.assertNotIn(path.encode(), raw, f"{path} reached the backend; it received:\n{raw[-1000:]!r}")

    # -- framing ---------------------------------------------------------------------

    def test_content_length_with_transfer_encoding(self) -> None:
        payload = request("/echo?case=cl-te", "Content-Length: 5", "Transfer-Encoding: chunked", body=b"0\r\n\r\n")
        self.assert_rejected(payload, 400, "/echo?case=cl-te")

    def test_transfer_encoding_then_content_length(self) -> None:
        payload = request("/echo?case=te-cl", "Transfer-Encoding: chunked", "Content-Length: 3", body=b"0\r\n\r\n")
        self.assert_rejected(payload, 400, "/echo?case=te-cl")

    def test_duplicate_content_length(self) -> None:
        payload = request("/echo?case=dup-cl", "Content-Length: 5", "Content-Length: 5", body=b"hello")
        self.assert_rejected(payload, 400, "/echo?case=dup-cl")

    def test_conflicting_content_length(self) -> None:
        payload = request("/echo?case=conflict-cl", "Content-Length: 5", "Content-Length: 6", body=b"hello!")
        self.assert_rejected(payload, 400, "/echo?case=conflict-cl")

    def test_content_length_list(self) -> None:
        payload = request("/echo?case=cl-list", "Content-Length: 5, 5", body=b"hello")
        self.assert_rejected(payload, 400, "/echo?case=cl-list")

    def test_smuggled_request_is_not_forwarded(self) -> None:
        # The classic CL.TE smuggle: if the proxy used Content-Length and the backend chunked,
        # "GET /smuggled" would become a second request. Neither request may reach the backend.
        smuggled = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: blackbox\r\n\r\n"
        payload = request("/echo?case=smuggle", f"Content-Length: {len(smuggled)}", "Transfer-Encoding: chunked", body=smuggled)
        self.assert_rejected(payload, 400, "/echo?case=smuggle")
        self.assertFalse(self.backend.saw(b"/smuggled"), "the smuggled request reached the backend")

    def test_bad_chunk_size(self) -> None:
        payload = request("/echo?case=bad-chunk", "Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n")
        data, closed = self.exchange(payload)
        status = parse_status(data)
        # Either a 400, or the connection closed without any response; never a success.
        self.assertTrue(status == 400 or (status is None and closed),
                        f"bad chunk size: status {status}, closed {closed}, data {data[:300]!r}" + self.diag(self.sidecar))
        self.assertTrue(closed, "connection must be closed after a framing error")
        # The proxy may have sent the head upstream before reading the body, but never the
        # unparseable chunk: a proxy that passed the bytes through would leave the backend to
        # decide how to frame them. (The backend answers as soon as it sees "0\r\n\r\n", so
        # a pass-through would also have turned the 400 above into its 200.)
        self.assertFalse(self.backend.saw(b"zz\r\nhello"), f"the bad chunk reached the backend: {self.backend.raw()[-500:]!r}")

    def test_nul_in_header_value(self) -> None:
        payload = request("/?case=nul", "X-Evil: a\x00b", method="GET")
        self.assert_rejected(payload, 400, "/?case=nul")

    def test_bare_lf_line_endings(self) -> None:
        # DESIGN.md §5: "reject ... bare LF/NUL in headers". A bare LF where CRLF belongs is
        # a classic parser-disagreement (smuggling) vector.
        payload = b"GET /?case=bare-lf HTTP/1.1\r\nHost: blackbox\r\nX-A: b\nX-B: c\r\n\r\n"
        self.assert_rejected(payload, 400, "/?case=bare-lf")

    # -- size limits -----------------------------------------------------------------

    def test_too_many_headers(self) -> None:
        headers = [f"X-H{i}: v" for i in range(200)]
        self.assert_rejected(request("/?case=200-headers", *headers, method="GET"), 431, "/?case=200-headers", must_close=False)

    def test_header_block_too_large(self) -> None:
        payload = request("/?case=70k", "X-Big: " + "a" * (70 * 1024), method="GET")
        self.assert_rejected(payload, 431, "/?case=70k", must_close=False)

    def test_header_count_boundary(self) -> None:
        # 100 headers (Host included) are allowed; the 101st gets 431 from the proxy itself.
        for n, expected in ((100, 200), (101, 431)):
            path = f"/?case=count-{n}"
            headers = [f"X-H{i}: v" for i in range(n - 2)] + ["Connection: close"]
            data, _ = self.exchange(request(path, *headers, method="GET"))
            self.assertEqual(parse_status(data), expected, f"{n} headers: {data[:300]!r}")
            if expected == 200:
                self.assertEqual(self.backend.count(path), 1, f"{n} headers")
            else:
                self.assert_never_forwarded(path)

    def test_header_bytes_boundary(self) -> None:
        # Request line + headers: up to 60 KiB is allowed, more gets 431 (DESIGN.md §5).
        for size, expected in ((59 * 1024, 200), (60 * 1024 + 1024, 431), (62 * 1024, 431)):
            path = f"/?case=bytes-{size}"
            head = f"GET {path} HTTP/1.1\r\nHost: blackbox\r\nConnection: close\r\nX-Pad: ".encode()
            payload = head + b"p" * (size - len(head) - 4) + b"\r\n\r\n"
            self.assertEqual(len(payload), size)
            data, _ = self.exchange(payload)
            self.assertEqual(parse_status(data), expected,
                             f"{size}-byte request head ({size - 60 * 1024:+d} bytes from 60 KiB): {data[:200]!r}")
            if expected == 200:
                self.assertEqual(self.backend.count(path), 1, f"{size}-byte head")
            else:
                self.assert_never_forwarded(path)

    def test_requests_under_the_limits_pass(self) -> None:
        headers = [f"X-H{i}: v" for i in range(80)] + ["X-Big: " + "b" * (40 * 1024)]
        data, _ = self.exchange(request("/?case=under-limits", *headers, "Connection: close", method="GET"))
        self.assertEqual(parse_status(data), 200, data[:300])
        self.assertEqual(self.backend.count("/?case=under-limits"), 1)

    # -- slow clients ----------------------------------------------------------------

    def test_slow_request_line_is_disconnected(self) -> None:
        s = socket.create_connection(("127.0.0.1", self.sidecar.outbound_port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(b"GET /?case=slow-line HT")  # half a request line, then nothing
        started = time.monotonic()
        data, closed = read_until_close(s, HEADER_TIMEOUT_S + 4)
        elapsed = time.monotonic() - started
        self.assertTrue(closed, f"still connected {elapsed:.1f}s after half a request line (header timeout {HEADER_TIMEOUT_S}s)"
                        + self.diag(self.sidecar))
        self.assertGreaterEqual(elapsed, HEADER_TIMEOUT_S * 0.8, "closed before the header timeout")
        self.assertLess(elapsed, HEADER_TIMEOUT_S + 2.5, "closed long after the header timeout")
        self.assertNotEqual(parse_status(data), 200)
        self.assert_never_forwarded("/?case=slow-line")

    def test_trickled_headers_are_disconnected(self) -> None:
        # A slowloris client that keeps sending a header byte every 200 ms: the timeout runs
        # from the first byte of the head, so activity must not extend it.
        s = socket.create_connection(("127.0.0.1", self.sidecar.outbound_port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(b"GET /?case=trickle HTTP/1.1\r\nHost: blackbox\r\nX-Slow: ")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < HEADER_TIMEOUT_S + 4:
            time.sleep(0.2)
            try:
                s.sendall(b"a")
            except OSError:
                closed = True
                break
            s.settimeout(0.01)
            try:
                if s.recv(65536) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            except OSError:
                closed = True
                break
        elapsed = time.monotonic() - started
        self.assertTrue(closed, f"a trickling client was still connected after {elapsed:.1f}s" + self.diag(self.sidecar))
        self.assertLess(elapsed, HEADER_TIMEOUT_S + 2.5)
        self.assert_never_forwarded("/?case=trickle")

    def test_idle_keepalive_is_not_a_header_timeout(self) -> None:
        # Waiting between requests on a keep-alive connection is not a slow header.
        s = socket.create_connection(("127.0.0.1", self.sidecar.outbound_port), timeout=5)
        self.addCleanup(s.close)
        for i in range(2):
            s.sendall(f"GET /?case=keepalive-{i} HTTP/1.1\r\nHost: blackbox\r\n\r\n".encode())
            data = b""
            while b"hello from the blackbox backend\n" not in data:
                chunk = s.recv(4096)
                self.assertTrue(chunk, f"request {i}: connection closed; got {data!r}")
                data += chunk
            self.assertEqual(parse_status(data), 200)
            if i == 0:
                time.sleep(HEADER_TIMEOUT_S * 2)
        self.assertEqual(self.backend.count("/?case=keepalive-0") + self.backend.count("/?case=keepalive-1"), 2)


class ErrorResponsesCloseConnection(BlackboxCase):
    def test_400_response_says_connection_close(self) -> None:
        backend = self.start_backend()
        sidecar = self.start_sidecar(outbound_target=backend.addr)
        data, closed = raw_exchange(sidecar.outbound_port, request("/echo", "Content-Length: 1", "Content-Length: 1", body=b"x"))
        self.assertEqual(parse_status(data), 400, data)
        self.assertTrue(closed)
        headers = response_headers(data)
        self.assertIn("close", ",".join(headers.get("connection", [])).lower(), f"headers: {headers}")


class SplitRequestLine(BlackboxCase):
    """A request line that arrives in two parts, the pause longer than the detect timeout.

    The connection began with a plausible HTTP/1 request line, so it must still get the HTTP
    treatment (framing checks, limits, header timeout), not be tunnelled to the app as opaque
    bytes.
    """

    def test_framing_checks_survive_a_pause_in_the_request_line(self) -> None:
        backend = RawBackend()
        self.addCleanup(backend.stop)
        sidecar = self.start_sidecar(outbound_target=backend.addr, config_text='[limits]\ndetect_timeout = "200ms"\n')
        s = socket.create_connection(("127.0.0.1", sidecar.outbound_port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(b"POST /echo?case=split HT")
        time.sleep(0.6)
        try:
            s.sendall(b"TP/1.1\r\nHost: blackbox\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        except OSError:
            pass  # closed by the proxy: acceptable
        data, _ = read_until_close(s, 2)
        self.assertFalse(backend.saw(b"/echo?case=split"),
                         f"a CL+TE request reached the backend after a pause in its request line; client got {data[:200]!r}"
                         + self.diag(sidecar))
        self.assertIn(parse_status(data), (400, None), data[:200])
