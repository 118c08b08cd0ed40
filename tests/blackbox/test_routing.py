"""Dtab routing (issue 16), seen from outside: a sidecar whose outbound listener runs a router
(``[outbound] router = "default"``) that names each request — by its Host, path, method and
host, a header, or one static name — and rewrites the name with a dtab to a file namer's
names. Three upstreams (``Upstream`` from test_balancer: every answer carries
``x-upstream: <name>`` and its body is ``<name> <status>``) are the names ``hello``,
``world-v1`` and ``world-v2``.

What a user relies on, and what is checked here:

* each identifier names requests as documented; an IP-literal Host is a 400 naming why, a
  name without endpoints a 404 (or the configured status) naming the name, a dtab that
  cannot bind a 502 — and the keep-alive connection survives all of them;
* ``l5d-dtab`` / ``l5d-ctx-dtab`` from a trusted client reroute one request, travel to the
  next hop as ``l5d-ctx-dtab`` only, and from an untrusted one are removed and ignored;
* a weighted union splits traffic by its weights, an alternation falls back while its first
  name has no endpoints and returns when it has them again;
* HTTP/2 streams on one connection are routed each by its own ``:authority``;
* the configuration file is reloaded when it changes and on SIGHUP, rerouting an open
  keep-alive connection; an invalid dtab is refused with a warning and the old one stays;
* ``/delegator.json``, ``/dtabs`` and ``meshctl dtab delegate --admin`` explain routing;
* ``mesh_request_total`` counts by logical name, and names that reach nothing as "unknown".
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Optional

from harness import LOOPBACK, BlackboxCase, Sidecar, meshctl_binary, parse_status, raw_exchange, response_headers, wait_until
from test_balancer import Upstream
from test_metrics import samples

# Every client request gives up after this long (a routed answer takes milliseconds).
REQUEST_TIMEOUT_S = 10

# The file namer polls about every 500 ms: an endpoints edit is in force within this.
NAMER_DEADLINE_S = 2.0

# The configuration file is polled every second: a changed file is in force within this.
RELOAD_DEADLINE_S = 3.0

DTAB = "/svc => /#/fs;\n/svc/world => /svc/world-v1;"
DTAB_CANONICAL = "/svc=>/#/fs;/svc/world=>/svc/world-v1"
HOST_IDENTIFIER = '{ kind = "host", prefix = "/svc" }'


# --------------------------------------------------------------------------------------
# Clients


class Reply:
    """One HTTP/1.1 answer: status, which upstream served it, and l5d-proxy-error."""

    def __init__(self, status: int, upstream: str, error: str, body: bytes) -> None:
        self.status, self.upstream, self.error, self.body = status, upstream, error, body

    def __repr__(self) -> str:
        return f"Reply({self.status}, upstream={self.upstream!r}, error={self.error!r})"


def send(conn: http.client.HTTPConnection, host: str, path: str = "/", method: str = "GET",
         headers: Optional[dict] = None) -> Reply:
    """One request on `conn` (kept open unless the proxy closes it)."""
    conn.request(method, path, headers={"Host": host, **(headers or {})})
    r = conn.getresponse()
    body = r.read()
    if r.will_close:
        conn.close()
    return Reply(r.status, r.getheader("x-upstream", ""), r.getheader("l5d-proxy-error", ""), body)


def head_lines(head: bytes) -> tuple[str, dict[str, list[str]]]:
    """A request head as (request line, {lowercased name: [values]})."""
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], fields


# A minimal HTTP/2 client (prior knowledge, no TLS): enough to open many streams with
# different :authority on ONE connection before reading any answer. It never decodes HPACK;
# an answer is identified by its DATA, which Upstream makes "<name> <status>".
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_literal(index: int, value: str) -> bytes:
    """A literal header field without indexing whose name is static-table entry `index`."""
    v = value.encode()
    assert index < 15 and len(v) < 127
    return bytes([index, len(v)]) + v


def h2_get_all(port: int, authorities: list[str], timeout: float = REQUEST_TIMEOUT_S) -> dict[int, tuple[str, bytes]]:
    """Sends GET / for each authority as its own stream on one connection, all before reading;
    returns {stream id: (authority, body)}. Fails on RST_STREAM or GOAWAY."""
    streams = {1 + 2 * i: a for i, a in enumerate(authorities)}
    out = bytearray(H2_PREFACE + h2_frame(SETTINGS, 0, 0))
    for sid, authority in streams.items():
        # :method GET (static 2), :scheme http (6), :path / (4), :authority (name index 1)
        block = bytes([0x82, 0x86, 0x84]) + hpack_literal(1, authority)
        out += h2_frame(HEADERS, END_STREAM | END_HEADERS, sid, block)
    bodies: dict[int, bytearray] = {sid: bytearray() for sid in streams}
    done: set[int] = set()
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(bytes(out))
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while len(done) < len(streams):
            if time.monotonic() > deadline:
                raise AssertionError(f"h2: streams {sorted(set(streams) - done)} not answered in {timeout}s")
            while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                chunk = s.recv(65536)
                if not chunk:
                    raise AssertionError(f"h2: connection closed with streams {sorted(set(streams) - done)} open")
                buf += chunk
            length = int.from_bytes(buf[:3], "big")
            kind, flags = buf[3], buf[4]
            sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload = bytes(buf[9:9 + length])
            del buf[:9 + length]
            if kind == SETTINGS and not flags & ACK:
                s.sendall(h2_frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                s.sendall(h2_frame(PING, ACK, 0, payload))
            elif kind in (RST_STREAM, GOAWAY):
                raise AssertionError(f"h2: frame type {kind} on stream {sid}: {payload!r}")
            elif kind == DATA and sid in bodies:
                pad = payload[0] if flags & 0x8 else 0
                bodies[sid] += payload[1:len(payload) - pad] if flags & 0x8 else payload
            if kind in (DATA, HEADERS) and flags & END_STREAM and sid in streams:
                done.add(sid)
    return {sid: (streams[sid], bytes(bodies[sid])) for sid in streams}


# --------------------------------------------------------------------------------------
# Fixture


def router_config(namer_dir: Path, dtab: str = DTAB, identifier: str = HOST_IDENTIFIER, extra: str = "") -> str:
    """A sidecar file routing the outbound listener with one router, `default`."""
    return (
        f'[outbound]\nrouter = "default"\n'
        f'[namers.fs]\nkind = "file"\ndir = "{namer_dir}"\n'
        f'[routers.default]\nidentifier = {identifier}\ndtab = """\n{dtab}\n"""\n{extra}'
    )


class RoutingCase(BlackboxCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="blackbox-routing-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.ups: dict[str, Upstream] = {}
        for name in ("hello", "world-v1", "world-v2"):
            u = Upstream(name)
            self.addCleanup(u.stop)
            self.ups[name] = u
            self.write_name(name, u.addr)

    def write_name(self, name: str, *lines: str) -> None:
        """Replaces a name's endpoints file at once (rename), as a deployment tool would."""
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text("".join(f"{line}\n" for line in lines))
        os.replace(tmp, self.dir / name)

    def start_router(self, dtab: str = DTAB, identifier: str = HOST_IDENTIFIER, extra: str = "") -> Sidecar:
        return self.start_sidecar(config_text=router_config(self.dir, dtab, identifier, extra))

    def connect(self, sidecar: Sidecar) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(LOOPBACK, sidecar.outbound_port, timeout=REQUEST_TIMEOUT_S)
        self.addCleanup(conn.close)
        return conn

    def counts(self) -> dict[str, int]:
        return {n: u.count() for n, u in self.ups.items()}

    def last_head(self, name: str) -> tuple[str, dict[str, list[str]]]:
        u = self.ups[name]
        with u.lock:
            self.assertTrue(u.heads, f"{name} received nothing")
            return head_lines(u.heads[-1])

    def wait_counts(self, want: dict[str, int], timeout: float = 2) -> None:
        # An upstream counts an answer just after sending it.
        self.assertTrue(wait_until(lambda: self.counts() == want, timeout), f"{self.counts()} != {want}")


# --------------------------------------------------------------------------------------
# Naming and errors


class HostRouting(RoutingCase):
    def test_host_names_the_service_through_the_dtab(self) -> None:
        sidecar = self.start_router()
        conn = self.connect(sidecar)
        cases = [
            ("hello", "hello"),  # /svc/hello -> /#/fs/hello
            ("HELLO:4140", "hello"),  # lowercased, the port dropped
            ("world", "world-v1"),  # /svc/world -> /svc/world-v1 -> /#/fs/world-v1
            ("world:8080", "world-v1"),
            ("world-v2", "world-v2"),  # no specific dentry: /svc => /#/fs
        ]
        for host, want in cases:
            with self.subTest(host=host):
                r = send(conn, host)
                self.assertEqual((r.status, r.upstream), (200, want), f"{r}" + self.diag(sidecar))
        self.wait_counts({"hello": 2, "world-v1": 2, "world-v2": 1})
        # What the upstream sees: the request as sent, Host included.
        line, fields = self.last_head("world-v2")
        self.assertEqual(line, "GET / HTTP/1.1")
        self.assertEqual(fields.get("host"), ["world-v2"])

    def test_requests_that_name_nothing_are_answered_clearly_on_a_live_connection(self) -> None:
        dtab = DTAB + "\n/svc/bad => /$/nope/x;\n/svc/gone => !;\n/svc/none => $;"
        sidecar = self.start_router(dtab)
        conn = self.connect(sidecar)
        self.assertEqual(send(conn, "hello").status, 200)
        sock = conn.sock
        cases = [
            # (Host, status, text in l5d-proxy-error)
            ("127.0.0.1:4140", 400, "IP address"),
            ("[::1]:80", 400, "IP address"),
            ("nosuch", 404, "no route to /svc/nosuch: "),
            ("bad", 502, "/$/nope/x"),
            ("gone", 404, "no route to /svc/gone"),
            ("none", 404, "no route to /svc/none"),
        ]
        for host, status, text in cases:
            with self.subTest(host=host):
                r = send(conn, host)
                self.assertEqual(r.status, status, f"{r}" + self.diag(sidecar))
                self.assertIn(text, r.error)
                self.assertEqual(r.upstream, "")
        # HTTP/1.0 without a Host names no service.
        data, _ = raw_exchange(sidecar.outbound_port, b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(parse_status(data), 400, data[:300])
        self.assertIn("no Host header", response_headers(data).get("l5d-proxy-error", [""])[0])
        # The missing file is named, so an operator knows what to create.
        self.assertIn(str(self.dir / "nosuch"), send(conn, "nosuch").error)
        # Not one of them closed the keep-alive connection or reached an upstream.
        self.assertEqual(send(conn, "hello").status, 200)
        self.assertIs(conn.sock, sock, "the proxy closed the connection after a routing error")
        self.wait_counts({"hello": 2, "world-v1": 0, "world-v2": 0})

    def test_no_route_status_is_configurable(self) -> None:
        sidecar = self.start_router(extra="no_route_status = 503\n")
        r = send(self.connect(sidecar), "nosuch")
        self.assertEqual(r.status, 503, r)
        self.assertIn("no route to /svc/nosuch", r.error)


class Identifiers(RoutingCase):
    """Each identifier kind: (identifier, dtab, extra, [(method, Host, path, headers, status,
    upstream, request line the upstream sees)])."""

    TABLE = [
        ("path, consumed", '{ kind = "path", segments = 1, consume = true }', "/svc => /#/fs", "", [
            ("GET", "whatever", "/hello/x/y?q=1", {}, 200, "hello", "GET /x/y?q=1 HTTP/1.1"),
            ("GET", "hello", "/world-v2", {}, 200, "world-v2", "GET / HTTP/1.1"),
            ("GET", "hello", "/", {}, 400, "", "fewer than 1 segments"),
        ]),
        ("path, two segments kept", '{ kind = "path", segments = 2 }',
         "/svc => /#/fs; /svc/api/users => /#/fs/world-v1", "", [
             ("GET", "hello", "/api/users/7", {}, 200, "world-v1", "GET /api/users/7 HTTP/1.1"),
             ("GET", "hello", "/api", {}, 400, "", "fewer than 2 segments"),
         ]),
        ("method-host", '{ kind = "method-host", prefix = "/m" }',
         "/m/1.1/GET => /#/fs; /m/1.1/POST/hello => /#/fs/world-v2", "", [
             ("GET", "hello", "/", {}, 200, "hello", "GET / HTTP/1.1"),
             ("POST", "hello", "/", {}, 200, "world-v2", "POST / HTTP/1.1"),
             ("PUT", "hello", "/", {}, 404, "", "no route to /m/1.1/PUT/hello"),
         ]),
        ("header", '{ kind = "header", name = "l5d-name" }', "/svc => /#/fs", "", [
            ("GET", "hello", "/", {"l5d-name": "world-v1"}, 200, "world-v1", "GET / HTTP/1.1"),
            ("GET", "hello", "/", {"l5d-name": "/world-v2"}, 200, "world-v2", "GET / HTTP/1.1"),
            ("GET", "hello", "/", {}, 400, "", "no l5d-name header"),
        ]),
        ("static", '{ kind = "static", path = "/svc/everything" }', "/svc/everything => /#/fs/world-v2", "", [
            ("GET", "hello", "/a", {}, 200, "world-v2", "GET /a HTTP/1.1"),
            # Nothing is read from the Host, so an IP literal is fine here.
            ("GET", "127.0.0.1:9", "/b", {}, 200, "world-v2", "GET /b HTTP/1.1"),
        ]),
        ("host, port kept", '{ kind = "host", prefix = "/svc", keep_port = true }',
         "/svc => /#/fs; /svc/world:8080 => /#/fs/world-v2", "", [
             ("GET", "world:8080", "/", {}, 200, "world-v2", "GET / HTTP/1.1"),
             ("GET", "hello:80", "/", {}, 404, "", "no route to /svc/hello:80"),
         ]),
    ]

    def test_each_identifier_kind(self) -> None:
        for title, identifier, dtab, extra, requests in self.TABLE:
            with self.subTest(identifier=title):
                sidecar = Sidecar(config_text=router_config(self.dir, dtab, identifier, extra))
                try:
                    conn = http.client.HTTPConnection(LOOPBACK, sidecar.outbound_port, timeout=REQUEST_TIMEOUT_S)
                    try:
                        for method, host, path, headers, status, upstream, seen in requests:
                            before = self.counts()
                            r = send(conn, host, path, method, headers)
                            what = f"{title}: {method} {path} Host {host} {headers}: {r}"
                            self.assertEqual((r.status, r.upstream), (status, upstream), what + self.diag(sidecar))
                            if upstream:
                                want = dict(before, **{upstream: before[upstream] + 1})
                                self.wait_counts(want)
                                self.assertEqual(self.last_head(upstream)[0], seen, what)
                            else:
                                self.assertIn(seen, r.error, what)
                                self.assertEqual(self.counts(), before, what)
                    finally:
                        conn.close()
                finally:
                    sidecar.stop()


# --------------------------------------------------------------------------------------
# Per-request overrides


class Overrides(RoutingCase):
    OVERRIDE = "/svc/world => /svc/world-v2"

    def test_trusted_client_overrides_one_request_and_the_override_travels(self) -> None:
        sidecar = self.start_router()
        conn = self.connect(sidecar)
        self.assertEqual(send(conn, "world").upstream, "world-v1")

        r = send(conn, "world", headers={"l5d-dtab": self.OVERRIDE})
        self.assertEqual((r.status, r.upstream), (200, "world-v2"), r)
        _, fields = self.last_head("world-v2")
        self.assertEqual(fields.get("l5d-ctx-dtab"), ["/svc/world=>/svc/world-v2"], fields)
        self.assertNotIn("l5d-dtab", fields)

        # An incoming l5d-ctx-dtab (from the previous hop) is honoured and passed on.
        r = send(conn, "world", headers={"l5d-ctx-dtab": self.OVERRIDE})
        self.assertEqual((r.status, r.upstream), (200, "world-v2"), r)
        _, fields = self.last_head("world-v2")
        self.assertEqual(fields.get("l5d-ctx-dtab"), ["/svc/world=>/svc/world-v2"], fields)

        # Both: the context first, the client's own dentries after it (later ones win).
        r = send(conn, "world", headers={"l5d-ctx-dtab": self.OVERRIDE, "l5d-dtab": "/svc/world => /svc/hello"})
        self.assertEqual((r.status, r.upstream), (200, "hello"), r)
        _, fields = self.last_head("hello")
        self.assertEqual(fields.get("l5d-ctx-dtab"), ["/svc/world=>/svc/world-v2;/svc/world=>/svc/hello"], fields)
        self.assertNotIn("l5d-dtab", fields)

        # Only that request: the next one, on the same connection, goes by the router's dtab
        # and carries no dtab header.
        r = send(conn, "world")
        self.assertEqual(r.upstream, "world-v1", r)
        _, fields = self.last_head("world-v1")
        self.assertNotIn("l5d-ctx-dtab", fields)

        # A bad override is refused with its reason, not ignored.
        r = send(conn, "world", headers={"l5d-dtab": "/svc/world =>"})
        self.assertEqual(r.status, 400, r)
        self.assertIn("invalid l5d-dtab header", r.error)
        self.wait_counts({"hello": 1, "world-v1": 2, "world-v2": 2})

    def test_untrusted_sources_cannot_override_routing(self) -> None:
        # The client is 127.0.0.1: trusted by "127.0.0.1/32", by nothing else here.
        for sources, trusted in ((["mesh"], False), (["10.0.0.0/8", "mesh"], False), (["127.0.0.1/32"], True)):
            with self.subTest(trusted_sources=sources):
                extra = f"trusted_sources = {json.dumps(sources)}\n"
                sidecar = Sidecar(config_text=router_config(self.dir, extra=extra))
                try:
                    conn = http.client.HTTPConnection(LOOPBACK, sidecar.outbound_port, timeout=REQUEST_TIMEOUT_S)
                    try:
                        r = send(conn, "world", headers={"l5d-dtab": self.OVERRIDE, "l5d-ctx-dtab": self.OVERRIDE})
                    finally:
                        conn.close()
                    want = "world-v2" if trusted else "world-v1"
                    self.assertEqual((r.status, r.upstream), (200, want), f"{sources}: {r}" + self.diag(sidecar))
                    _, fields = self.last_head(want)
                    self.assertNotIn("l5d-dtab", fields)
                    if trusted:
                        # The context first, then the client's own dentries.
                        self.assertEqual(fields.get("l5d-ctx-dtab"), ["/svc/world=>/svc/world-v2;/svc/world=>/svc/world-v2"])
                    else:
                        self.assertNotIn("l5d-ctx-dtab", fields, "an untrusted client's dtab header was forwarded")
                        # Not even a bad header is looked at: it is removed, not refused.
                        conn = http.client.HTTPConnection(LOOPBACK, sidecar.outbound_port, timeout=REQUEST_TIMEOUT_S)
                        try:
                            r = send(conn, "world", headers={"l5d-dtab": "/svc/world =>"})
                        finally:
                            conn.close()
                        self.assertEqual((r.status, r.upstream), (200, "world-v1"), r)
                finally:
                    sidecar.stop()


# --------------------------------------------------------------------------------------
# Trees: union and alternation


class Trees(RoutingCase):
    def test_weighted_union_splits_traffic(self) -> None:
        sidecar = self.start_router("/svc => /#/fs;\n/svc/world => 0.9 * /svc/world-v1 & 0.1 * /svc/world-v2;")
        conn = self.connect(sidecar)
        self.assertEqual(send(conn, "world").status, 200)
        sock = conn.sock
        got = {"world-v1": 0, "world-v2": 0}
        started = time.monotonic()
        for i in range(1000):
            r = send(conn, "world")
            self.assertEqual(r.status, 200, f"request {i}: {r}" + self.diag(sidecar))
            got[r.upstream] = got.get(r.upstream, 0) + 1
            self.assertLess(time.monotonic() - started, 60, f"1000 requests took over 60 s: {got}")
        self.assertIs(conn.sock, sock, "the keep-alive connection was not kept")
        share = got["world-v1"] / 1000
        print(f"\n  weighted union 0.9/0.1: world-v1 {got['world-v1']}, world-v2 {got['world-v2']} of 1000 "
              f"({share:.1%} / {1 - share:.1%}) in {time.monotonic() - started:.2f} s", flush=True)
        self.assertEqual(set(got), {"world-v1", "world-v2"}, got)
        self.assertGreaterEqual(share, 0.86, got)
        self.assertLessEqual(share, 0.94, got)

    def test_alternation_falls_back_while_the_first_name_is_empty(self) -> None:
        sidecar = self.start_router("/svc => /#/fs;\n/svc/world => /svc/world-v2 | /svc/world-v1;")
        conn = self.connect(sidecar)
        answers: list[Reply] = []

        def served_by(name: str) -> bool:
            r = send(conn, "world")
            answers.append(r)
            return r.upstream == name

        self.assertTrue(served_by("world-v2"), answers)
        for change, write, want in [
            ("emptied", lambda: self.write_name("world-v2"), "world-v1"),
            ("restored", lambda: self.write_name("world-v2", self.ups["world-v2"].addr), "world-v2"),
            ("removed", lambda: (self.dir / "world-v2").unlink(), "world-v1"),
        ]:
            write()
            t = time.monotonic()
            ok = wait_until(lambda: served_by(want), NAMER_DEADLINE_S + 1, interval=0.02)
            took = time.monotonic() - t
            print(f"\n  alternation: world-v2 {change}, served by {want} after {took * 1000:.0f} ms", flush=True)
            self.assertTrue(ok, f"world-v2 {change}: never served by {want}; last {answers[-3:]}" + self.diag(sidecar))
            self.assertLess(took, NAMER_DEADLINE_S)
            # Steady afterwards, not flapping.
            for _ in range(20):
                self.assertTrue(served_by(want), f"after world-v2 {change}: {answers[-1]}")
        # Nothing failed while the alternation switched.
        self.assertEqual([a for a in answers if a.status != 200], [])


# --------------------------------------------------------------------------------------
# HTTP/2


class Http2(RoutingCase):
    """The proxy keeps the client's HTTP version, so here the names are nghttpd (h2c)
    upstreams, each serving an index.html that names it."""

    def setUp(self) -> None:
        super().setUp()
        for name in ("hello", "world-v1", "world-v2"):
            self.write_name(name, self.start_h2c_backend({"index.html": f"{name} h2\n".encode()}).addr)

    def test_streams_on_one_connection_route_by_their_own_authority(self) -> None:
        sidecar = self.start_router()
        authorities = ["hello", "world", "world-v2:80", "nosuch"] * 5
        answers = h2_get_all(sidecar.outbound_port, authorities)
        want = {"hello": b"hello h2\n", "world": b"world-v1 h2\n", "world-v2:80": b"world-v2 h2\n",
                "nosuch": b"no route to /svc/nosuch"}
        self.assertEqual(len(answers), 20)
        for sid, (authority, body) in sorted(answers.items()):
            self.assertTrue(body.startswith(want[authority]), f"stream {sid} ({authority}): {body!r}" + self.diag(sidecar))

    def test_curl_prior_knowledge(self) -> None:
        sidecar = self.start_router()
        for host, want in (("world", "world-v1"), ("hello", "hello")):
            with self.subTest(host=host):
                r = self.curl("--http2-prior-knowledge", "-H", f"Host: {host}", "-D", "/dev/stderr",
                              "-w", "\n%{http_version} %{http_code}", f"{sidecar.outbound}/")
                out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
                self.assertEqual(r.returncode, 0, err)
                self.assertEqual(out, f"{want} h2\n\n2 200", err + self.diag(sidecar))


# --------------------------------------------------------------------------------------
# Reload


class Reload(RoutingCase):
    def rewrite(self, sidecar: Sidecar, dtab: str, identifier: str = HOST_IDENTIFIER, extra: str = "") -> None:
        """Replaces the sidecar's config file at once (rename) with a new router section."""
        assert sidecar.config_path is not None
        tmp = sidecar.config_path.with_name(".sidecar.toml.tmp")
        tmp.write_text(router_config(self.dir, dtab, identifier, extra))
        os.replace(tmp, sidecar.config_path)

    def dtabs(self, sidecar: Sidecar) -> dict:
        status, _, body = sidecar.admin("GET", "/dtabs")
        self.assertEqual(status, 200, body[:300])
        return json.loads(body)

    @staticmethod
    def reloads(sidecar: Sidecar) -> int:
        return sum(1 for line in sidecar.output().splitlines() if "configuration reloaded" in line)

    def test_changed_file_reroutes_an_open_connection(self) -> None:
        sidecar = self.start_router()
        conn = self.connect(sidecar)
        self.assertEqual(send(conn, "world").upstream, "world-v1")
        sock, local = conn.sock, conn.sock.getsockname()
        self.assertEqual(self.dtabs(sidecar), {"default": DTAB_CANONICAL})

        self.rewrite(sidecar, "/svc => /#/fs;\n/svc/world => /svc/world-v2;")
        t = time.monotonic()
        answers: list[Reply] = []

        def rerouted() -> bool:
            answers.append(send(conn, "world"))
            return answers[-1].upstream == "world-v2"

        ok = wait_until(rerouted, RELOAD_DEADLINE_S + 1, interval=0.05)
        took = time.monotonic() - t
        print(f"\n  reload: the changed file rerouted the open connection after {took * 1000:.0f} ms "
              f"({len(answers)} requests)", flush=True)
        self.assertTrue(ok, f"never rerouted: {answers[-3:]}" + self.diag(sidecar))
        self.assertLess(took, RELOAD_DEADLINE_S)
        self.assertEqual([a for a in answers if a.status != 200], [])
        self.assertIs(conn.sock, sock, "the client had to reconnect")
        self.assertEqual(conn.sock.getsockname(), local)
        self.assertEqual(self.dtabs(sidecar), {"default": "/svc=>/#/fs;/svc/world=>/svc/world-v2"})
        self.assertEqual(self.ups["world-v2"].count() + self.ups["world-v1"].count(), len(answers) + 1)
        # Only the router changed: no warning about sections that need a restart.
        self.assertEqual([l for l in sidecar.output().splitlines() if "WARN" in l], [], self.diag(sidecar))

    def test_reload_applies_the_identifier_and_trusted_sources(self) -> None:
        sidecar = self.start_router()
        conn = self.connect(sidecar)
        override = {"l5d-dtab": "/svc/hello => /svc/world-v2"}
        self.assertEqual(send(conn, "hello", headers=override).upstream, "world-v2")
        sock = conn.sock

        # Every request is now /svc/everything, and loopback may no longer override.
        self.rewrite(sidecar, "/svc => /#/fs;\n/svc/everything => /svc/world-v1;",
                     identifier='{ kind = "static", path = "/svc/everything" }', extra='trusted_sources = ["mesh"]\n')
        ok = wait_until(lambda: send(conn, "hello", headers=override).upstream == "world-v1", RELOAD_DEADLINE_S + 1,
                        interval=0.05)
        self.assertTrue(ok, "the reloaded identifier is not in force" + self.diag(sidecar))
        r = send(conn, "127.0.0.1", headers={"l5d-dtab": "/svc/everything => /svc/hello"})
        self.assertEqual((r.status, r.upstream), (200, "world-v1"), r)
        _, fields = self.last_head("world-v1")
        self.assertNotIn("l5d-ctx-dtab", fields, "the reloaded trusted_sources are not in force")
        self.assertIs(conn.sock, sock, "the client had to reconnect")

    def test_sighup_reloads_before_the_next_poll(self) -> None:
        sidecar = self.start_router()
        conn = self.connect(sidecar)
        self.assertEqual(send(conn, "world").upstream, "world-v1")
        sock = conn.sock

        # SIGHUP with the file unchanged still reloads it (the poll alone never would).
        n = self.reloads(sidecar)
        sidecar.signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: self.reloads(sidecar) == n + 1, 3),
                        "SIGHUP did not reload the file" + self.diag(sidecar))

        # Find the poll's phase: a changed file is picked up by a poll tick, seen here within
        # 10 ms. The ticks are then 1 s apart.
        self.rewrite(sidecar, "/svc => /#/fs;\n/svc/world => /svc/hello;")
        n = self.reloads(sidecar)
        self.assertTrue(wait_until(lambda: self.reloads(sidecar) > n, RELOAD_DEADLINE_S, interval=0.01),
                        "the changed file was never reloaded" + self.diag(sidecar))
        tick = time.monotonic()
        self.assertEqual(send(conn, "world").upstream, "hello")
        # Right after that tick, change the file and signal: the new dtab must be in force well
        # before the next tick (tick + 1 s), which the poll alone could not do.
        while time.monotonic() < tick + 0.1:
            time.sleep(0.01)
        self.rewrite(sidecar, "/svc => /#/fs;\n/svc/world => /svc/world-v2;")
        sidecar.signal(signal.SIGHUP)
        ok = wait_until(lambda: send(conn, "world").upstream == "world-v2", 2, interval=0.01)
        took = time.monotonic() - tick
        print(f"\n  reload: SIGHUP rerouted {took * 1000:.0f} ms after the poll tick (next tick at ~1000 ms)", flush=True)
        self.assertTrue(ok, "SIGHUP never put the new dtab in force" + self.diag(sidecar))
        self.assertLess(took, 0.6, "the new dtab came with the poll, not with SIGHUP")
        self.assertIs(conn.sock, sock, "the client had to reconnect")

    def test_invalid_dtab_keeps_the_one_in_force(self) -> None:
        sidecar = self.start_router()
        conn = self.connect(sidecar)
        self.assertEqual(send(conn, "world").upstream, "world-v1")

        self.rewrite(sidecar, "/svc => /#/fs;\n/svc/world => (;")
        warned = wait_until(
            lambda: [l for l in sidecar.output().splitlines() if "configuration not reloaded" in l], RELOAD_DEADLINE_S)
        self.assertTrue(warned, "no warning for the invalid dtab" + self.diag(sidecar))
        print(f"\n  reload: {warned[0].strip()[:300]}", flush=True)
        self.assertIn("WARN", warned[0])
        self.assertIn("invalid dtab", warned[0])
        self.assertIn(str(sidecar.config_path), warned[0])
        self.assertEqual(self.dtabs(sidecar), {"default": DTAB_CANONICAL})
        for _ in range(5):
            self.assertEqual(send(conn, "world").upstream, "world-v1")

        # The watcher is still alive: a valid file after it is applied.
        self.rewrite(sidecar, "/svc => /#/fs;\n/svc/world => /svc/world-v2;")
        self.assertTrue(wait_until(lambda: send(conn, "world").upstream == "world-v2", RELOAD_DEADLINE_S, interval=0.05),
                        "a valid file after an invalid one was not applied" + self.diag(sidecar))


# --------------------------------------------------------------------------------------
# Admin and meshctl


def walk(node: dict):
    """Every step of a delegation tree, depth first."""
    yield node
    for key in ("delegate",):
        if isinstance(node.get(key), dict):
            yield from walk(node[key])
    for child in node.get("alt") or []:
        yield from walk(child)
    for branch in node.get("union") or []:
        yield from walk(branch["tree"])


class Admin(RoutingCase):
    def delegator(self, sidecar: Sidecar, path: str, dtab: Optional[str] = None) -> tuple[int, bytes]:
        query = {"path": path} if dtab is None else {"path": path, "dtab": dtab}
        status, _, body = sidecar.admin("GET", "/delegator.json?" + urllib.parse.urlencode(query))
        return status, body

    def explain(self, sidecar: Sidecar, path: str, dtab: Optional[str] = None) -> dict:
        status, body = self.delegator(sidecar, path, dtab)
        self.assertEqual(status, 200, body[:500])
        return json.loads(body)

    def test_delegator_json_explains_a_binding(self) -> None:
        self.write_name("hello", self.ups["hello"].addr, f"{LOOPBACK}:9")  # two endpoints
        sidecar = self.start_router()
        doc = self.explain(sidecar, "/svc/world")
        self.assertEqual((doc["router"], doc["path"], doc["dtab"]), ("default", "/svc/world", DTAB_CANONICAL))
        d = doc["delegation"]
        self.assertEqual((d["path"], d["dentry"], d["type"]), ("/svc/world", None, "alt"), d)
        # The specific dentry first, rewritten again by /svc => /#/fs, bound with 1 endpoint.
        first = d["alt"][0]
        self.assertEqual((first["path"], first["dentry"], first["type"]),
                         ("/svc/world-v1", {"prefix": "/svc/world", "dst": "/svc/world-v1"}, "delegate"), first)
        bound = first["delegate"]
        self.assertEqual(bound["dentry"], {"prefix": "/svc", "dst": "/#/fs"})
        self.assertEqual((bound["type"], bound["bound"]), ("bound", {"id": "/#/fs/world-v1", "endpoints": 1, "state": "ready"}), bound)

        hello = [s for s in walk(self.explain(sidecar, "/svc/hello")["delegation"]) if s["type"] == "bound"]
        self.assertEqual([s["bound"] for s in hello], [{"id": "/#/fs/hello", "endpoints": 2, "state": "ready"}])

        # A dtab in the query extends the router's, as l5d-dtab would.
        doc = self.explain(sidecar, "/svc/world", "/svc/world => /svc/world-v2")
        self.assertEqual(doc["dtab"], DTAB_CANONICAL + ";/svc/world=>/svc/world-v2")
        first = [s for s in walk(doc["delegation"]) if s["type"] == "bound"][0]
        self.assertEqual(first["bound"], {"id": "/#/fs/world-v2", "endpoints": 1, "state": "ready"})

    def test_delegator_json_node_types(self) -> None:
        sidecar = self.start_router()
        cases = [
            ("/other", None, "neg"),
            ("/svc/x", "/svc/x => !", "fail"),
            ("/svc/x", "/svc/x => $", "empty"),
            ("/svc/x", "/svc/x => /$/nope/y", "error"),
            ("/svc/x", "/svc/x => 0.7 * /svc/world-v1 & 0.3 * /svc/world-v2", "union"),
            ("/svc/x", "/svc/x => /svc/world-v2 | /svc/world-v1", "alt"),
            ("/svc/hello", None, "delegate"),
            ("/#/fs/hello", None, "bound"),
        ]
        for path, dtab, kind in cases:
            with self.subTest(path=path, dtab=dtab):
                steps = list(walk(self.explain(sidecar, path, dtab)["delegation"]))
                self.assertIn(kind, [s["type"] for s in steps], steps)
                if kind == "union":
                    u = next(s for s in steps if s["type"] == "union")
                    self.assertEqual(sorted(b["weight"] for b in u["union"]), [0.3, 0.7], u)
                if kind == "error":
                    e = next(s for s in steps if s["type"] == "error")
                    self.assertEqual(e["kind"], "unknown_builtin", e)
                    self.assertIn("/$/nope/y", e["error"])

    def test_delegator_json_refuses_bad_queries(self) -> None:
        sidecar = self.start_router()
        for query, status, text in [
            ("", 400, "missing parameter: path"),
            ("?path=svc", 400, "invalid path"),
            ("?path=/svc/a&dtab=" + urllib.parse.quote("/svc =>"), 400, "invalid dtab"),
            ("?path=/svc/a&router=nope", 404, "no running router"),
            ("?path=/svc/a&what=1", 400, "unknown parameter"),
        ]:
            with self.subTest(query=query):
                got, _, body = sidecar.admin("GET", "/delegator.json" + query)
                self.assertEqual(got, status, body[:300])
                self.assertIn(text, body.decode(errors="replace"))

    def test_dtabs_lists_each_router(self) -> None:
        sidecar = self.start_router("/svc => /#/fs;  # the default\n/svc/world => 0.25*/svc/world-v1 & 0.75*/svc/world-v2;")
        status, _, body = sidecar.admin("GET", "/dtabs")
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(json.loads(body), {"default": "/svc=>/#/fs;/svc/world=>0.25*/svc/world-v1 & 0.75*/svc/world-v2"})

    def test_meshctl_delegate_asks_the_running_proxy(self) -> None:
        binary = meshctl_binary()
        self.assertTrue(binary.is_file(), f"meshctl binary {binary} not found (cargo build --examples)")
        sidecar = self.start_router()
        admin = f"{LOOPBACK}:{sidecar.admin_port}"

        def delegate(*extra: str) -> str:
            env = dict(os.environ, NO_COLOR="1")
            p = subprocess.run([str(binary), "dtab", "delegate", "--admin", admin, "/svc/world", *extra],
                               capture_output=True, timeout=20, env=env, stdin=subprocess.DEVNULL)
            out = p.stdout.decode(errors="replace")
            self.assertEqual(p.returncode, 0, f"stdout:\n{out}\nstderr:\n{p.stderr.decode(errors='replace')}")
            return out

        out = delegate()
        print(f"\n  meshctl dtab delegate --admin:\n{out}", flush=True)
        lines = out.splitlines()
        self.assertTrue(lines and lines[0].startswith("/svc/world") and lines[0].endswith("-> alt"), out)
        self.assertIn("/#/fs/world-v1  via /svc=>/#/fs  -> bound /#/fs/world-v1 (1 endpoint)", out)
        self.assertIn("/svc/world-v1  via /svc/world=>/svc/world-v1", out)

        out = delegate("--dtab", "/svc/world => /svc/world-v2")
        self.assertIn("-> bound /#/fs/world-v2 (1 endpoint)", out)


# --------------------------------------------------------------------------------------
# Metrics


class RoutingMetrics(RoutingCase):
    def test_requests_are_counted_by_logical_name(self) -> None:
        sidecar = self.start_router()
        conn = self.connect(sidecar)
        for _ in range(3):
            self.assertEqual(send(conn, "hello").status, 200)
        for _ in range(2):
            self.assertEqual(send(conn, "world").status, 200)
        # Names that reach no endpoint: 20 distinct hosts, an IP literal, a bad override.
        for i in range(20):
            self.assertEqual(send(conn, f"nosuch-{i}").status, 404)
        self.assertEqual(send(conn, "127.0.0.1").status, 400)
        self.assertEqual(send(conn, "world", headers={"l5d-dtab": "/svc =>"}).status, 400)

        def outbound() -> dict[str, float]:
            return {l["dst"]: v for l, v in samples(sidecar.metrics(), "mesh_request_total")
                    if l.get("direction") == "outbound" and "dst" in l}

        want = {"/svc/hello": 3, "/svc/world": 2, "unknown": 22}
        got = wait_until(lambda: (lambda m: m if all(m.get(k) == v for k, v in want.items()) else None)(outbound()), 5)
        print(f"\n  metrics: mesh_request_total outbound by dst: {outbound()}", flush=True)
        self.assertIsNotNone(got, f"mesh_request_total: {outbound()}, want {want}")
        # Neither a client's arbitrary hosts nor the bound names become labels.
        self.assertEqual([d for d in got if "nosuch" in d or d.startswith("/#/")], [], got)
