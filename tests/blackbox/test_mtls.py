"""Mesh TLS (mTLS) between workloads, checked with real external peers.

Identities come from `meshctl ca`; the peers are curl and `openssl s_client` (clients of the
inbound side), `openssl s_server` (a TLS server the outbound side connects to), a raw HTTP/1
backend and nghttpd in verbose h2c mode (apps that show exactly which headers reached them).
Everything runs on 127.0.0.1.

What a user relies on, and what is checked here:

* the inbound side terminates mesh TLS (TLS 1.3, client certificate required and verified)
  and tells the app who the client is in ``l5d-client-id`` — its verified identity, never a
  value the client sent itself — over HTTP/1.1 and HTTP/2;
* the outbound side speaks mTLS to its target and insists on the identity it was told;
* handshakes without a valid client certificate, or below TLS 1.3, serve nothing and are
  counted; strict mode closes plaintext, permissive mode serves it (unauthenticated);
* the authorization policy answers 403 to identities it does not allow;
* re-issued credentials are picked up while the proxy runs; broken ones are refused with a
  warning naming the file, and the credentials in force stay.
"""

from __future__ import annotations

import calendar
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import harness
from harness import BlackboxCase, RawBackend, Sidecar, can_connect, free_ports, meshctl_binary, raw_exchange, wait_until

TD = "td.test"

# Every external command gets this long at most (a TLS handshake on loopback takes ms).
TOOL_TIMEOUT_S = 20

# The identity directory is polled every second; a rotation must be in force well within
# this (a handshake and a debug-build reload included).
ROTATION_DEADLINE_S = 5


def spiffe(ns: str, sa: str) -> str:
    return f"spiffe://{TD}/ns/{ns}/sa/{sa}"


def mesh_name(ns: str, sa: str) -> str:
    """The SNI a mesh peer uses for this workload (its certificate's DNS SAN)."""
    return f"{sa}.{ns}.serviceaccount.identity.{TD}"


A_ID, B_ID = spiffe("a", "client"), spiffe("b", "server")
B_NAME = mesh_name("b", "server")

# One HTTP/1.1 request, as openssl s_client sends it (then waits for the server to close).
REQUEST = b"GET /s_client HTTP/1.1\r\nHost: s-client\r\nConnection: close\r\n\r\n"


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric(text: str, name: str, **labels: str) -> Optional[float]:
    """The sum of the samples of `name` whose labels include `labels`; None if there are none."""
    total: Optional[float] = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^(\w+)(\{.*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total = (total or 0.0) + float(m.group(3))
    return total


def h1_header_values(raw: bytes, path: str, name: str) -> Optional[list[str]]:
    """The values of header `name` in the (first) HTTP/1 request for `path` in `raw`; None
    if there is no such request. A list, so a forged value kept next to the real one shows."""
    m = re.search(rb"(?:^|\n)[A-Z]+ " + re.escape(path.encode()) + rb" HTTP/1\.[01]\r\n(.*?)\r\n\r\n", raw, re.S)
    if m is None:
        return None
    out = []
    for line in m.group(1).decode("latin-1").split("\r\n"):
        k, _, v = line.partition(":")
        if k.strip().lower() == name:
            out.append(v.strip())
    return out


class VerboseH2cApp:
    """nghttpd in plain-text (h2c) mode with -v: its log lists every header of every request
    it received, so a test sees what the proxy sent the app over HTTP/2. It speaks nothing
    but HTTP/2, so a request that reached it came over HTTP/2."""

    def __init__(self, files: dict[str, bytes]) -> None:
        exe = harness.require_tool("nghttpd")
        self.dir = Path(tempfile.mkdtemp(prefix="blackbox-mtls-h2c-"))
        for name, data in files.items():
            (self.dir / name).write_bytes(data)
        self.log_path = self.dir / "nghttpd.log"
        self.log = open(self.log_path, "wb")
        for _ in range(3):
            self.port = free_ports(1)[0]
            self.proc = subprocess.Popen(
                [exe, "-v", "--no-tls", "-a", harness.LOOPBACK, "-d", str(self.dir), str(self.port)],
                stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            harness._live_processes.append(self.proc)
            wait_until(lambda: self.proc.poll() is not None or can_connect(self.port), 5)
            if self.proc.poll() is None and can_connect(self.port):
                break
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        else:
            raise AssertionError(f"nghttpd did not start: {self.log_path.read_text(errors='replace')}")
        self.addr = f"{harness.LOOPBACK}:{self.port}"

    def requests(self) -> list[list[tuple[str, str]]]:
        """Every request's header list (pseudo-headers included), in log order."""
        streams: dict[tuple[str, str], list[tuple[str, str]]] = {}
        line = re.compile(r"^\[id=(\d+)\]\s*\[[^\]]*\] recv \(stream_id=(\d+)\) (:?[^:\s]+): ?(.*)$")
        for text in self.log_path.read_text(errors="replace").splitlines():
            m = line.match(text)
            if m:
                streams.setdefault((m.group(1), m.group(2)), []).append((m.group(3).lower(), m.group(4)))
        return list(streams.values())

    def header_values(self, path: str, name: str) -> Optional[list[str]]:
        """The values of `name` in the request for `path`; None if no such request arrived."""
        for headers in self.requests():
            if (":path", path) in headers:
                return [v for k, v in headers if k == name]
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class TlsServer:
    """`openssl s_server -www` presenting a given certificate whatever SNI it is asked for,
    requiring a client certificate from `ca`. Its page describes the client certificate."""

    def __init__(self, openssl: str, ident: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="blackbox-mtls-s_server-"))
        self.log_path = self.dir / "s_server.log"
        self.log = open(self.log_path, "wb")
        for _ in range(3):
            self.port = free_ports(1)[0]
            self.proc = subprocess.Popen(
                [openssl, "s_server", "-accept", f"{harness.LOOPBACK}:{self.port}",
                 "-cert", str(ident / "cert.pem"), "-key", str(ident / "key.pem"),
                 "-CAfile", str(ident / "ca.pem"), "-Verify", "3", "-tls1_3", "-www"],
                stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            harness._live_processes.append(self.proc)
            # Read "ACCEPT" in the log rather than probing with a connection it would log.
            wait_until(lambda: self.proc.poll() is not None or b"ACCEPT" in self.log_path.read_bytes(), 5)
            if self.proc.poll() is None and b"ACCEPT" in self.log_path.read_bytes():
                break
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        else:
            raise AssertionError(f"openssl s_server did not start: {self.log_path.read_text(errors='replace')}")
        self.addr = f"{harness.LOOPBACK}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class MtlsCase(BlackboxCase):
    """A CA for trust domain td.test, identities a/client (A) and b/server (B), helpers."""

    def setUp(self) -> None:
        self.openssl = self.require_tool("openssl")
        self.tmp = Path(tempfile.mkdtemp(prefix="blackbox-mtls-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.ca = self.tmp / "ca"
        self.meshctl("ca", "init", "--trust-domain", TD, "--out", str(self.ca))
        self.a = self.issue("a", "client")
        self.b = self.issue("b", "server")

    # --- tools ------------------------------------------------------------------------

    def run_tool(self, *args: str, stdin: bytes = b"", timeout: float = TOOL_TIMEOUT_S) -> subprocess.CompletedProcess:
        env = dict(os.environ, NO_COLOR="1")
        try:
            return subprocess.run([str(a) for a in args], input=stdin, capture_output=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            self.fail(f"{args[:3]} still running after {timeout}s; output so far: {e.stdout!r} {e.stderr!r}")

    def meshctl(self, *args: str) -> str:
        binary = meshctl_binary()
        self.assertTrue(binary.is_file(), f"meshctl binary {binary} not found (cargo build --examples)")
        p = self.run_tool(str(binary), *args)
        self.assertEqual(p.returncode, 0, f"meshctl {args}: {p.stderr.decode(errors='replace')}")
        return p.stdout.decode()

    def issue(self, ns: str, sa: str, out: Optional[Path] = None, ca: Optional[Path] = None,
              lifetime: Optional[str] = None) -> Path:
        out = out or self.tmp / f"{ns}-{sa}"
        extra = ("--lifetime", lifetime) if lifetime else ()
        self.meshctl("ca", "issue", "--ca", str(ca or self.ca), "--id", spiffe(ns, sa), "--out", str(out), *extra)
        return out

    def file_serial(self, cert: Path) -> str:
        p = self.run_tool(self.openssl, "x509", "-in", str(cert), "-noout", "-serial")
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        return p.stdout.decode().strip().partition("=")[2].upper()

    def file_not_after(self, cert: Path) -> int:
        p = self.run_tool(self.openssl, "x509", "-in", str(cert), "-noout", "-enddate")
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        text = p.stdout.decode().strip().partition("=")[2]  # e.g. "Nov 30 07:58:54 2026 GMT"
        return calendar.timegm(time.strptime(" ".join(text.split()), "%b %d %H:%M:%S %Y %Z"))

    def s_client(self, port: int, servername: str, ident: Optional[Path], *extra: str,
                 request: bytes = REQUEST) -> tuple[int, str]:
        """openssl s_client to 127.0.0.1:port, presenting ident's certificate (if any) and
        verifying the server against A's bundle; sends `request` (empty: handshake only)
        and reads until the server closes. Returns (exit code, stdout + stderr)."""
        args = [self.openssl, "s_client", "-connect", f"{harness.LOOPBACK}:{port}", "-servername", servername,
                "-CAfile", str(self.a / "ca.pem")]
        if ident is not None:
            args += ["-cert", str(ident / "cert.pem"), "-key", str(ident / "key.pem")]
        if request:
            args.append("-ign_eof")
        p = self.run_tool(*args, *extra, stdin=request)
        return p.returncode, p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")

    def served_serial(self, port: int, servername: str = B_NAME) -> str:
        """The serial of the certificate the server at port presents in a new handshake."""
        rc, out = self.s_client(port, servername, self.a, request=b"")
        pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
        if pem is None:
            return f"<no certificate; s_client exit {rc}: {out[-500:]}>"
        p = self.run_tool(self.openssl, "x509", "-noout", "-serial", stdin=pem.group(0).encode())
        return p.stdout.decode().strip().partition("=")[2].upper()

    def curl_mtls(self, port: int, path: str, ident: Path, *extra: str, servername: str = B_NAME):
        """curl over mesh TLS to the inbound port as `ident`; stdout ends with
        "\\n<status> <http version>"."""
        return self.curl(
            "--cert", str(ident / "cert.pem"), "--key", str(ident / "key.pem"), "--cacert", str(ident / "ca.pem"),
            "--resolve", f"{servername}:{port}:{harness.LOOPBACK}",
            "-w", "\n%{http_code} %{http_version}", *extra, f"https://{servername}:{port}{path}",
        )

    # --- processes --------------------------------------------------------------------

    def start_raw_backend(self) -> RawBackend:
        b = RawBackend()
        self.addCleanup(b.stop)
        return b

    def start_h2c_app(self, files: dict[str, bytes]) -> VerboseH2cApp:
        app = VerboseH2cApp(files)
        self.addCleanup(app.stop)
        return app

    def start_tls_server(self, ident: Path) -> TlsServer:
        s = TlsServer(self.openssl, ident)
        self.addCleanup(s.stop)
        return s

    def start_b(self, app_addr: str, *flags: str, ident: Optional[Path] = None, mode: str = "strict") -> Sidecar:
        """Sidecar B: identity b/server, inbound to the app."""
        return self.start_sidecar(inbound_target=app_addr,
                                  extra_args=("--identity-dir", str(ident or self.b), "--inbound-mode", mode, *flags))

    def start_a(self, target: str, peer_id: str = B_ID) -> Sidecar:
        """Sidecar A: identity a/client, outbound over mTLS to `target`, which must be `peer_id`."""
        return self.start_sidecar(outbound_target=target,
                                  extra_args=("--identity-dir", str(self.a), "--outbound-peer-id", peer_id))

    @staticmethod
    def status(r: subprocess.CompletedProcess) -> tuple[bytes, str]:
        """(body, "<status> <version>") of a curl run made with curl_mtls' -w."""
        body, _, tail = r.stdout.rpartition(b"\n")
        return body, tail.decode(errors="replace")

    def handshake_errors(self, sidecar: Sidecar) -> float:
        v = metric(sidecar.metrics(), "mesh_tls_handshake_errors_total", direction="inbound")
        self.assertIsNotNone(v, "mesh_tls_handshake_errors_total{direction=\"inbound\"} missing from /metrics")
        return v


class MtlsInbound(MtlsCase):
    def test_curl_http11_over_mtls_app_sees_verified_client_id(self) -> None:
        app = self.start_raw_backend()
        b = self.start_b(app.addr)
        # A forged l5d-client-id must be replaced by the identity the certificate proves.
        r = self.curl_mtls(b.inbound_port, "/who", self.a, "--http1.1", "-H", "l5d-client-id: spiffe://td.test/ns/evil/sa/x")
        self.assertEqual(r.returncode, 0, r.stderr.decode() + self.diag(b))
        body, tail = self.status(r)
        self.assertEqual(tail, "200 1.1", self.diag(b))
        self.assertEqual(body, RawBackend.root_body)
        self.assertEqual(h1_header_values(app.raw(), "/who", "l5d-client-id"), [A_ID],
                         f"the app must see exactly A's verified identity; it received:\n{app.raw()!r}")
        metrics = b.metrics()
        self.assertEqual(metric(metrics, "mesh_request_total", direction="inbound", tls="true", peer_id=A_ID), 1,
                         f"one inbound request counted with tls=\"true\" and A's peer_id:\n{metrics}")

    def test_curl_http2_over_mtls_reaches_the_app_as_http2(self) -> None:
        page = b"<p>served over h2c after mesh TLS</p>\n" * 10
        app = self.start_h2c_app({"page.html": page})
        b = self.start_b(app.addr)
        r = self.curl_mtls(b.inbound_port, "/page.html", self.a, "--http2", "-H", "l5d-client-id: forged")
        self.assertEqual(r.returncode, 0, r.stderr.decode() + self.diag(b))
        body, tail = self.status(r)
        self.assertEqual(tail, "200 2", "curl negotiated h2 over mesh TLS (ALPN) and got 200" + self.diag(b))
        self.assertEqual(body, page)
        # nghttpd speaks only h2c, so the request reached it as HTTP/2; its log shows the headers.
        seen = wait_until(lambda: app.header_values("/page.html", "l5d-client-id"), 5)
        self.assertEqual(seen, [A_ID], f"nghttpd log:\n{app.log_path.read_text(errors='replace')[-3000:]}")

    def test_failed_handshakes_serve_nothing_and_are_counted(self) -> None:
        app = self.start_raw_backend()
        b = self.start_b(app.addr)
        other_ca = self.tmp / "other-ca"
        self.meshctl("ca", "init", "--trust-domain", TD, "--out", str(other_ca))
        # Same identity as A, same trust domain, but signed by a CA B does not trust.
        impostor = self.issue("a", "client", out=self.tmp / "impostor", ca=other_ca)
        no_spiffe = self.cert_without_spiffe_id()
        cases = [
            ("no client certificate", None, ()),
            ("client certificate from another CA", impostor, ()),
            ("client certificate without a SPIFFE ID", no_spiffe, ()),
            ("TLS 1.2 (with a valid client certificate)", self.a, ("-tls1_2",)),
        ]
        for what, ident, extra in cases:
            with self.subTest(what):
                before = self.handshake_errors(b)
                rc, out = self.s_client(b.inbound_port, B_NAME, ident, *extra)
                self.assertNotIn("HTTP/1.1 ", out, f"{what}: an HTTP response came back (s_client exit {rc}):\n{out}")
                counted = wait_until(lambda: self.handshake_errors(b) == before + 1, 3)
                self.assertTrue(counted, f"{what}: mesh_tls_handshake_errors_total went from {before} to "
                                         f"{self.handshake_errors(b)}, expected +1" + self.diag(b))
                if extra == ("-tls1_2",):
                    self.assertIn("alert protocol version", out, f"TLS 1.2 must be refused by the server:\n{out}")
        self.assertEqual(app.raw(), b"", "nothing may reach the app from a failed handshake")
        self.assertIn("mesh TLS handshake failed", b.output())

        # The control: a valid certificate over TLS 1.3 is served, both sides verified.
        before = self.handshake_errors(b)
        rc, out = self.s_client(b.inbound_port, B_NAME, self.a)
        self.assertIn("Verification: OK", out)
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertRegex(out, r"New, TLSv1\.3, Cipher is|Protocol\s*:\s*TLSv1\.3")
        self.assertIn("HTTP/1.1 200 OK", out, f"s_client exit {rc}:\n{out}" + self.diag(b))
        self.assertEqual(h1_header_values(app.raw(), "/s_client", "l5d-client-id"), [A_ID])
        self.assertEqual(self.handshake_errors(b), before, "a good handshake is not an error")

    def cert_without_spiffe_id(self) -> Path:
        """A client certificate signed by the mesh CA but without a URI SAN (made with openssl
        from the CA's key, since meshctl always writes a SPIFFE ID)."""
        out = self.tmp / "no-spiffe"
        out.mkdir()
        ext = out / "ext.cnf"
        ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:client.a.example\n")
        p = self.run_tool(self.openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                          "-nodes", "-keyout", str(out / "key.pem"), "-subj", "/CN=no-spiffe-id", "-out", str(out / "req.csr"))
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        p = self.run_tool(self.openssl, "x509", "-req", "-in", str(out / "req.csr"), "-CA", str(self.ca / "ca.pem"),
                          "-CAkey", str(self.ca / "ca.key"), "-set_serial", "4242", "-days", "1",
                          "-extfile", str(ext), "-out", str(out / "cert.pem"))
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        p = self.run_tool(self.openssl, "verify", "-CAfile", str(self.ca / "ca.pem"), str(out / "cert.pem"))
        self.assertEqual(p.returncode, 0, f"the test certificate must chain to the mesh CA: {p.stdout!r} {p.stderr!r}")
        return out

    def test_strict_mode_closes_plaintext(self) -> None:
        app = self.start_raw_backend()
        b = self.start_b(app.addr, mode="strict")
        data, closed = raw_exchange(b.inbound_port, b"GET /plain HTTP/1.1\r\nHost: b\r\n\r\n", timeout=5)
        self.assertEqual(data, b"", "strict mode must not answer plaintext")
        self.assertTrue(closed, "strict mode must close a plaintext connection" + self.diag(b))
        r = self.curl("-o", "/dev/null", "-w", "%{http_code}", f"{b.inbound}/plain")
        self.assertIn(r.returncode, (52, 56), f"curl: expected empty reply/reset, got exit {r.returncode}: {r.stderr!r}")
        self.assertEqual(r.stdout, b"000")
        self.assertEqual(app.raw(), b"", "nothing reaches the app")
        self.assertEqual(metric(b.metrics(), "mesh_authz_decisions_total", rule="inbound_mode=strict", decision="deny"), 2)

    def test_permissive_mode_serves_plaintext_without_client_id(self) -> None:
        app = self.start_raw_backend()
        b = self.start_b(app.addr, mode="permissive")
        r = self.curl("-w", "\n%{http_code} %{http_version}", "-H", f"l5d-client-id: {A_ID}", f"{b.inbound}/plain")
        self.assertEqual(r.returncode, 0, r.stderr.decode() + self.diag(b))
        self.assertEqual(self.status(r), (RawBackend.root_body, "200 1.1"))
        self.assertEqual(h1_header_values(app.raw(), "/plain", "l5d-client-id"), [],
                         "plaintext is unauthenticated: a client-supplied l5d-client-id must be removed")
        # The same port still terminates mesh TLS.
        r = self.curl_mtls(b.inbound_port, "/tls", self.a, "--http1.1")
        self.assertEqual(self.status(r)[1], "200 1.1", r.stderr.decode() + self.diag(b))
        self.assertEqual(h1_header_values(app.raw(), "/tls", "l5d-client-id"), [A_ID])
        metrics = b.metrics()
        self.assertEqual(metric(metrics, "mesh_request_total", direction="inbound", tls="false"), 1, metrics)
        self.assertEqual(metric(metrics, "mesh_request_total", direction="inbound", tls="true", peer_id=A_ID), 1, metrics)

    def test_tls_for_another_name_passes_through_in_permissive_mode_only(self) -> None:
        # The app itself speaks TLS (its own certificate); a client asking for another SNI
        # must reach it untouched in permissive mode, and be closed in strict mode.
        app_ident = self.issue("b", "app-tls")
        app = self.start_tls_server(app_ident)
        want = self.file_serial(app_ident / "cert.pem")
        permissive = self.start_b(app.addr, mode="permissive")
        self.assertEqual(self.served_serial(permissive.inbound_port, "app.example"), want,
                         "permissive: TLS for another name must reach the app (its certificate)" + self.diag(permissive))
        # ... and the mesh name is still terminated by the proxy with B's certificate.
        self.assertEqual(self.served_serial(permissive.inbound_port, B_NAME), self.file_serial(self.b / "cert.pem"))
        strict = self.start_b(app.addr, mode="strict")
        rc, out = self.s_client(strict.inbound_port, "app.example", self.a, request=b"")
        self.assertNotIn("BEGIN CERTIFICATE", out, f"strict: no handshake for another name (exit {rc}):\n{out}")

    def test_policy_denies_identities_outside_the_pattern(self) -> None:
        app = self.start_raw_backend()
        b = self.start_b(app.addr, "--inbound-policy", f"spiffe://{TD}/ns/x/*")
        r = self.curl_mtls(b.inbound_port, "/denied", self.a, "--http1.1", "-D", "-")
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        _, tail = self.status(r)
        self.assertEqual(tail, "403 1.1", r.stdout.decode(errors="replace") + self.diag(b))
        error = re.search(r"(?im)^l5d-proxy-error:\s*(.+?)\s*$", r.stdout.decode(errors="replace"))
        self.assertIsNotNone(error, f"a 403 from the policy carries l5d-proxy-error:\n{r.stdout!r}")
        self.assertIn(A_ID, error.group(1), "the error names the denied identity")
        self.assertEqual(app.raw(), b"", "a denied request never reaches the app")
        # An identity the pattern matches is allowed, with its own l5d-client-id.
        x = self.issue("x", "worker")
        r = self.curl_mtls(b.inbound_port, "/allowed", x, "--http1.1")
        self.assertEqual(self.status(r)[1], "200 1.1", r.stderr.decode() + self.diag(b))
        self.assertEqual(h1_header_values(app.raw(), "/allowed", "l5d-client-id"), [spiffe("x", "worker")])
        metrics = b.metrics()
        for decision in ("deny", "allow"):
            n = metric(metrics, "mesh_authz_decisions_total", direction="inbound", port="default", decision=decision)
            self.assertEqual(n, 1, f'one decision="{decision}" (one request each way):\n{metrics}')


class MtlsOutbound(MtlsCase):
    def test_full_chain_app_sees_a_identity_not_the_forged_one(self) -> None:
        # curl (plaintext) -> A outbound -> mTLS -> B inbound (strict) -> app.
        app = self.start_raw_backend()
        b = self.start_b(app.addr)
        a = self.start_a(f"{harness.LOOPBACK}:{b.inbound_port}")
        r = self.curl("-w", "\n%{http_code} %{http_version}", "-H", f"l5d-client-id: {spiffe('b', 'admin')}",
                      f"{a.outbound}/chain")
        self.assertEqual(r.returncode, 0, r.stderr.decode() + self.diag(a) + self.diag(b))
        self.assertEqual(self.status(r), (RawBackend.root_body, "200 1.1"), self.diag(a) + self.diag(b))
        self.assertEqual(h1_header_values(app.raw(), "/chain", "l5d-client-id"), [A_ID],
                         f"the app must see A's identity only; it received:\n{app.raw()!r}")
        metrics = b.metrics()
        self.assertEqual(metric(metrics, "mesh_request_total", direction="inbound", tls="true", peer_id=A_ID), 1, metrics)
        self.assertEqual(self.handshake_errors(b), 0)

    def test_full_chain_http2(self) -> None:
        page = b"h2 through two sidecars and mesh TLS\n"
        app = self.start_h2c_app({"chain.txt": page})
        b = self.start_b(app.addr)
        a = self.start_a(f"{harness.LOOPBACK}:{b.inbound_port}")
        r = self.curl("--http2-prior-knowledge", "-H", "l5d-client-id: forged", "-w", "\n%{http_code} %{http_version}",
                      f"{a.outbound}/chain.txt")
        self.assertEqual(r.returncode, 0, r.stderr.decode() + self.diag(a) + self.diag(b))
        self.assertEqual(self.status(r), (page, "200 2"), self.diag(a) + self.diag(b))
        seen = wait_until(lambda: app.header_values("/chain.txt", "l5d-client-id"), 5)
        self.assertEqual(seen, [A_ID], f"nghttpd log:\n{app.log_path.read_text(errors='replace')[-3000:]}")

    def test_peer_identity_mismatch_is_502_naming_both(self) -> None:
        # openssl s_server presents B's certificate whatever name it is asked for, as a
        # workload other than the one expected at that address would.
        server = self.start_tls_server(self.b)
        wrong = spiffe("other", "x")
        a = self.start_a(server.addr, peer_id=wrong)
        r = self.curl("-D", "-", "-o", "/dev/null", "-w", "%{http_code}", f"{a.outbound}/")
        out = r.stdout.decode(errors="replace")
        self.assertTrue(out.endswith("502"), out + self.diag(a))
        error = re.search(r"(?im)^l5d-proxy-error:\s*(.+?)\s*$", out)
        self.assertIsNotNone(error, f"a 502 from a failed handshake carries l5d-proxy-error:\n{out}")
        self.assertIn(wrong, error.group(1), "the expected identity is named")
        self.assertIn(B_ID, error.group(1), "the presented identity is named")
        # The control: expecting B, the same server is reached, and A showed its certificate.
        right = self.start_a(server.addr, peer_id=B_ID)
        r = self.curl("-w", "\n%{http_code}", f"{right.outbound}/")
        body, _, code = r.stdout.rpartition(b"\n")
        self.assertEqual(code, b"200", r.stderr.decode() + self.diag(right))
        self.assertIn(f"URI:{A_ID}".encode(), body, "s_server saw A's client certificate")

    def test_wrong_peer_id_towards_a_sidecar_is_502(self) -> None:
        # A asks for another workload of the trust domain; B terminates every mesh name of
        # its trust domain and presents its own certificate, so A refuses it naming both
        # identities, and nothing reaches the app.
        app = self.start_raw_backend()
        b = self.start_b(app.addr)
        other = spiffe("other", "x")
        a = self.start_a(f"{harness.LOOPBACK}:{b.inbound_port}", peer_id=other)
        r = self.curl("-D", "-", "-o", "/dev/null", "-w", "%{http_code}", f"{a.outbound}/")
        out = r.stdout.decode(errors="replace")
        self.assertTrue(out.endswith("502"), out + self.diag(a))
        self.assertRegex(out, rf"(?im)^l5d-proxy-error:.*127\.0\.0\.1:{b.inbound_port}")
        error = next((l for l in out.splitlines() if l.lower().startswith("l5d-proxy-error:")), "")
        self.assertIn(other, error, "names the expected identity")
        self.assertIn(B_ID, error, "names the presented identity")
        self.assertEqual(app.raw(), b"")


class MtlsRotation(MtlsCase):
    def test_reissued_credentials_are_used_and_bad_ones_refused(self) -> None:
        app = self.start_raw_backend()
        ident = self.issue("b", "server", out=self.tmp / "b-live")
        b = self.start_b(app.addr, ident=ident)
        first = self.file_serial(ident / "cert.pem")
        self.assertEqual(self.served_serial(b.inbound_port), first)
        expiry = lambda: metric(b.metrics(), "mesh_identity_cert_expiry_timestamp_seconds", identity=B_ID)  # noqa: E731
        self.assertEqual(expiry(), self.file_not_after(ident / "cert.pem"))

        # Re-issue in place (2 h instead of 24 h) while B runs: new handshakes use it.
        self.issue("b", "server", out=ident, lifetime="2h")
        second = self.file_serial(ident / "cert.pem")
        self.assertNotEqual(second, first)
        started = time.monotonic()
        served = wait_until(lambda: self.served_serial(b.inbound_port) == second, ROTATION_DEADLINE_S, interval=0.2)
        self.assertTrue(served, f"after {time.monotonic() - started:.1f}s B still serves "
                                f"{self.served_serial(b.inbound_port)}, not the new serial {second}" + self.diag(b))
        self.assertTrue(wait_until(lambda: expiry() == self.file_not_after(ident / "cert.pem"), 3),
                        f"the expiry gauge follows the new certificate: {expiry()}")
        self.assertIn("identity credentials rotated", b.output())
        r = self.curl_mtls(b.inbound_port, "/after-rotation", self.a, "--http1.1")
        self.assertEqual(self.status(r)[1], "200 1.1", r.stderr.decode() + self.diag(b))

        # A key.pem that does not match cert.pem: refused with a warning naming the file,
        # and the credentials in force stay.
        mark = len(b.output())
        stranger = self.issue("c", "stranger")
        replace_file(ident / "key.pem", (stranger / "key.pem").read_bytes())
        key_path = str(ident / "key.pem")

        def warned_since(at: int) -> list[str]:
            return [line for line in b.output()[at:].splitlines() if "WARN" in line and key_path in line]

        self.assertTrue(wait_until(lambda: warned_since(mark), ROTATION_DEADLINE_S),
                        f"no warning naming {key_path} within {ROTATION_DEADLINE_S}s" + self.diag(b))
        self.assertIn("does not match", warned_since(mark)[0])
        self.assertEqual(self.served_serial(b.inbound_port), second, "the credentials in force stay")
        r = self.curl_mtls(b.inbound_port, "/after-bad-key", self.a, "--http1.1")
        self.assertEqual(self.status(r)[1], "200 1.1", r.stderr.decode() + self.diag(b))
        self.assertEqual(h1_header_values(app.raw(), "/after-bad-key", "l5d-client-id"), [A_ID])

        # SIGHUP re-reads the directory now and reports the (still) bad key again.
        mark = len(b.output())
        b.signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: warned_since(mark), 3), "SIGHUP re-checks the identity files" + self.diag(b))
        self.assertEqual(self.served_serial(b.inbound_port), second)


def replace_file(path: Path, data: bytes) -> None:
    """Replaces path's content in one step (a rename), so the poller never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
