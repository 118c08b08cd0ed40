"""Shared pieces of the black-box suite: a backend, sidecar processes, tools, raw sockets.

Everything listens on 127.0.0.1 only, on ports found by binding port 0. Every process and
thread started here is stopped by the test that started it (``addCleanup``) and, as a last
resort, when the interpreter exits.
"""

from __future__ import annotations

import atexit
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]

# Which Debian package provides each external tool, for the failure message.
TOOL_PACKAGES = {
    "curl": "curl",
    "promtool": "prometheus",
    "nghttpd": "nghttp2-server",
}

_live_processes: list[subprocess.Popen] = []

# Sidecar.stop(): how long a SIGTERMed sidecar with nothing in flight may take to exit.
STOP_TIMEOUT_S = 10


@atexit.register
def kill_leftovers() -> None:
    """SIGKILLs every process the suite started that is still running."""
    for p in _live_processes:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def sidecar_binary() -> Path:
    """$MESH_SIDECAR (relative to the current directory), else the repo's debug build."""
    env = os.environ.get("MESH_SIDECAR")
    if env:
        return Path(env).resolve()
    return REPO_ROOT / "target" / "debug" / "examples" / "sidecar"


def meshctl_binary() -> Path:
    """$MESH_MESHCTL (relative to the current directory), else ``meshctl`` next to the sidecar
    binary (both are examples of one package, built by ``cargo build --examples``)."""
    env = os.environ.get("MESH_MESHCTL")
    if env:
        return Path(env).resolve()
    return sidecar_binary().with_name("meshctl")


def require_tool(name: str) -> str:
    """The path of an external tool; a missing tool is a test failure, never a skip."""
    path = shutil.which(name)
    if path is None:
        pkg = TOOL_PACKAGES.get(name, name)
        raise AssertionError(
            f"required tool {name!r} is not on PATH; install it (Debian: apt-get install {pkg}) "
            f"or run .ci/run, which installs it"
        )
    return path


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def closed_port() -> int:
    """A loopback port with nothing listening on it (connects are refused)."""
    return free_ports(1)[0]


def wait_until(pred, timeout: float, interval: float = 0.02):
    """Polls pred until it returns a truthy value or timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def can_connect(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# Backend


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: bytes


# http.server parses headers with http.client, which refuses more than 99 header lines; the
# proxy's own limit (100 headers) must be what the limit tests see, so lift the backend's.
http.client._MAXHEADERS = 1000  # type: ignore[attr-defined]


class _BackendHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the proxy can pool upstream connections
    server_version = "blackbox-backend"
    timeout = 30

    def log_message(self, fmt, *args):  # quiet
        pass

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                if not line.endswith(b"\n"):
                    raise ValueError("truncated chunk size line")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers until blank line
                    while self.rfile.readline(8192).strip():
                        pass
                    return bytes(out)
                data = self.rfile.read(size)
                if len(data) != size:
                    raise ValueError("truncated chunk")
                out += data
                if self.rfile.read(2) != b"\r\n":
                    raise ValueError("missing CRLF after chunk")
        n = int(self.headers.get("Content-Length", "0") or 0)
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            raise ValueError("truncated body")
        return data

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        backend: Backend = self.server.backend  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        with backend.lock:
            backend.started.append(seen)
        try:
            if url.path == "/" and self.command in ("GET", "HEAD"):
                self._send(200, backend.root_body)
            elif url.path == "/echo" and self.command == "POST":
                self._send(200, body, self.headers.get("Content-Type", "application/octet-stream"))
            elif url.path == "/slow" and self.command == "GET":
                ms = int(parse_qs(url.query).get("ms", ["1000"])[0])
                time.sleep(min(ms, 30_000) / 1000)
                self._send(200, f"slept {ms}ms\n".encode())
            elif url.path == "/headers" and self.command == "GET":
                self._send(200, json.dumps(seen.headers).encode(), "application/json")
            elif url.path == "/hold" and self.command == "GET":
                # In flight until the test calls backend.release(): an explicit gate, so a
                # test knows a request is in flight without guessing how long it takes.
                if backend.gate.wait(HOLD_LIMIT_S):
                    self._send(200, b"released\n")
                else:
                    self._send(503, b"never released\n")
            else:
                self._send(404, b"not found\n")
        finally:
            with backend.lock:
                backend.completed.append(seen)

    do_GET = do_POST = do_HEAD = do_PUT = _handle


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        # A client (the proxy) that went away first is part of several tests, not an error.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


# How long GET /hold waits for release() before giving up: longer than any test needs, shorter
# than the per-test timeout, so a forgotten release cannot hang the suite.
HOLD_LIMIT_S = 40


class Backend:
    """A threaded HTTP/1.1 server on 127.0.0.1: GET /, POST /echo, GET /slow?ms=N, GET /headers,
    GET /hold (answers 200 once release() is called)."""

    root_body = b"hello from the blackbox backend\n"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.started: list[Seen] = []  # requests whose head and body were read
        self.completed: list[Seen] = []  # requests answered
        self.server = _Server((LOOPBACK, 0), _BackendHandler)
        self.server.backend = self  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.addr = f"{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def paths(self, which: str = "started") -> list[str]:
        with self.lock:
            return [s.path for s in getattr(self, which)]

    def count(self, path_prefix: str, which: str = "started") -> int:
        return sum(1 for p in self.paths(which) if p.startswith(path_prefix))

    def release(self) -> None:
        """Lets every held request (GET /hold), current and future, answer 200."""
        self.gate.set()

    def stop(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


class RawBackend:
    """An upstream that records every byte the proxy sends it and never rejects anything.

    Each complete request (head, then a Content-Length or chunked body found leniently) is
    answered ``200`` with ``root_body``, on a keep-alive connection. Because it accepts any
    bytes, "the backend saw none of it" is true only if the proxy really forwarded nothing,
    which a strict backend (one that rejects malformed input itself) cannot show.
    """

    root_body = Backend.root_body

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._received: list[bytearray] = []  # one buffer per accepted connection
        self._conns: list[socket.socket] = []
        self._closed = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.addr = f"{LOOPBACK}:{self.port}"
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            buf = bytearray()
            with self.lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.append(conn)
                self._received.append(buf)
            threading.Thread(target=self._serve, args=(conn, buf), daemon=True).start()

    def _serve(self, conn: socket.socket, record: bytearray) -> None:
        conn.settimeout(30)
        pending = bytearray()

        def more() -> bool:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return False
            if not chunk:
                return False
            with self.lock:
                record.extend(chunk)
            pending.extend(chunk)
            return True

        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    if not more():
                        return
                head_end = pending.index(b"\r\n\r\n") + 4
                head = bytes(pending[:head_end]).lower()
                length = re.search(rb"\r\ncontent-length:[ \t]*(\d+)", head)
                if re.search(rb"\r\ntransfer-encoding:[^\r]*chunked", head):
                    while True:
                        if pending.startswith(b"0\r\n\r\n", head_end):
                            body_end = head_end + 5
                            break
                        at = pending.find(b"\r\n0\r\n\r\n", head_end)
                        if at >= 0:
                            body_end = at + 7
                            break
                        if not more():
                            return
                elif length:
                    body_end = head_end + int(length.group(1))
                    while len(pending) < body_end:
                        if not more():
                            return
                else:
                    body_end = head_end
                del pending[:body_end]
                body = b"" if head.startswith(b"head ") else self.root_body
                response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                            b"Content-Length: %d\r\n\r\n" % len(self.root_body)) + body
                try:
                    conn.sendall(response)
                except OSError:
                    return

    def raw(self) -> bytes:
        """Everything received so far, all connections, in accept order."""
        with self.lock:
            return b"".join(bytes(b) for b in self._received)

    def count(self, path: str) -> int:
        """How many request lines for exactly this path the backend received."""
        line = re.compile(rb"(?:^|\n)[A-Z]+ " + re.escape(path.encode("latin-1")) + rb" HTTP/1\.[01]\r\n")
        with self.lock:
            return sum(len(line.findall(bytes(b))) for b in self._received)

    def saw(self, fragment: bytes) -> bool:
        """Whether these bytes appear anywhere in what any connection received."""
        with self.lock:
            return any(fragment in b for b in self._received)

    def stop(self) -> None:
        with self.lock:
            self._closed = True
            conns = list(self._conns)
        self.sock.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------------------
# nghttpd (h2c backend)


class H2cBackend:
    """nghttpd in plain-text mode (h2c prior knowledge) serving files from a temp dir."""

    def __init__(self, files: dict[str, bytes]) -> None:
        exe = require_tool("nghttpd")
        self.dir = tempfile.mkdtemp(prefix="blackbox-h2c-")
        for name, data in files.items():
            Path(self.dir, name).write_bytes(data)
        self.log = open(Path(self.dir, "nghttpd.log"), "wb")
        for _ in range(3):
            self.port = free_ports(1)[0]
            self.proc = subprocess.Popen(
                [exe, "--no-tls", "-a", LOOPBACK, "-d", self.dir, str(self.port)],
                stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            _live_processes.append(self.proc)
            wait_until(lambda: self.proc.poll() is not None or can_connect(self.port), 5)
            if self.proc.poll() is None and can_connect(self.port):
                break
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        else:
            raise AssertionError(f"nghttpd did not start: {Path(self.dir, 'nghttpd.log').read_text(errors='replace')}")
        self.addr = f"{LOOPBACK}:{self.port}"

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


# --------------------------------------------------------------------------------------
# Sidecar


class Sidecar:
    """One sidecar process on free loopback ports, with its output captured to a file."""

    def __init__(
        self,
        outbound_target: Optional[str] = None,
        inbound_target: Optional[str] = None,
        config_text: Optional[str] = None,
        log: str = "info",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        binary = sidecar_binary()
        if not binary.is_file():
            raise AssertionError(f"sidecar binary {binary} not found; build it with `cargo build --examples` or set MESH_SIDECAR")
        self.dir = Path(tempfile.mkdtemp(prefix="blackbox-sidecar-"))
        self.config_path: Optional[Path] = None
        if config_text is not None:
            self.config_path = self.dir / "sidecar.toml"
            self.config_path.write_text(config_text)
        self.output_path = self.dir / "output.log"
        self.proc: Optional[subprocess.Popen] = None
        self.unclean_exit_reason: Optional[str] = None  # set by kill(): stop() then allows rc != 0
        last_error = ""
        for _ in range(3):  # a port picked here may be taken by someone else before we bind it
            self.admin_port, self.outbound_port, self.inbound_port = free_ports(3)
            args = [
                str(binary),
                "--admin-listen", f"{LOOPBACK}:{self.admin_port}",
                "--outbound-listen", f"{LOOPBACK}:{self.outbound_port}",
                "--inbound-listen", f"{LOOPBACK}:{self.inbound_port}",
                "--log", log,
            ]
            if outbound_target:
                args += ["--outbound-target", outbound_target]
            if inbound_target:
                args += ["--inbound-target", inbound_target]
            if self.config_path:
                args += ["--config", str(self.config_path)]
            args += list(extra_args)
            self.args = args
            env = dict(os.environ, NO_COLOR="1")
            env.pop("MESH_LOG", None)
            self.output_path.write_bytes(b"")
            # O_APPEND: every line stays, whoever else writes to the file.
            with open(self.output_path, "ab") as out:
                self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            _live_processes.append(self.proc)
            if self._wait_live(15):
                return
            last_error = self.output()
            self._kill()
            if "cannot listen" not in last_error:
                break
        raise AssertionError(f"sidecar did not become live; args {self.args}\noutput:\n{last_error}")

    def _wait_live(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                status, _, _ = self.admin("GET", "/live", timeout=1)
                if status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    @property
    def outbound(self) -> str:
        return f"http://{LOOPBACK}:{self.outbound_port}"

    @property
    def inbound(self) -> str:
        return f"http://{LOOPBACK}:{self.inbound_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    def admin(self, method: str, path: str, body: Optional[bytes] = None, timeout: float = 5):
        """(status, headers, body) from the admin server; raises OSError if unreachable."""
        req = urllib.request.Request(self.admin_url + path, data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def metrics(self) -> str:
        status, _, body = self.admin("GET", "/metrics")
        if status != 200:
            raise AssertionError(f"/metrics answered {status}")
        return body.decode()

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> Optional[int]:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> Optional[int]:
        """The process's resident set size (VmRSS) in KiB, or None once it has exited."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def kill(self, reason: str) -> None:
        """SIGKILLs the sidecar on purpose; stop() will then not insist on exit code 0."""
        self.unclean_exit_reason = reason
        self._kill()

    def stop(self) -> None:
        """SIGTERM (if still running) and check that the process ended cleanly.

        Fails unless the exit code was 0 (or the test said why not with kill(reason)) and the
        output has no `panicked at`: a task that panicked inside the proxy is a bug even when
        every request the test made got its answer.
        """
        problems = []
        try:
            if self.proc is None:
                return
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                if self.wait(STOP_TIMEOUT_S) is None:
                    self._kill()
                    problems.append(f"still running {STOP_TIMEOUT_S}s after SIGTERM; killed")
            rc = self.proc.returncode
            if rc != 0 and self.unclean_exit_reason is None and not problems:
                problems.append(f"exit code {rc} (expected 0)")
            output = self.output()
            if "panicked at" in output:
                problems.append("a panic in its output")
            if problems:
                tail = output[-4000:]
                raise AssertionError(f"sidecar {self.args}: {'; '.join(problems)}\n--- sidecar output (tail) ---\n{tail}")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# curl


def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    exe = require_tool("curl")
    return subprocess.run(
        [exe, "--silent", "--show-error", "--max-time", str(int(timeout)), *args],
        capture_output=True, timeout=timeout + 5,
    )


# --------------------------------------------------------------------------------------
# Raw sockets


def parse_status(data: bytes) -> Optional[int]:
    """The status code of the first HTTP/1 response in data, or None."""
    if not data.startswith(b"HTTP/1."):
        return None
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def response_headers(data: bytes) -> dict:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    out = {}
    for line in head.split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip().lower(), []).append(v.strip())
    return out


def read_until_close(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Reads until the peer closes or timeout; returns (data, closed_by_peer)."""
    sock.settimeout(0.1)
    data = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


def raw_exchange(port: int, payload: bytes, timeout: float = 5) -> tuple[bytes, bool]:
    """Sends payload on a new connection and reads until close/timeout: (data, closed)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        try:
            s.sendall(payload)
        except (ConnectionResetError, BrokenPipeError):
            return b"", True
        return read_until_close(s, timeout)


class BlackboxCase(unittest.TestCase):
    """A TestCase with helpers that clean up after themselves."""

    maxDiff = None

    def start_backend(self) -> Backend:
        b = Backend()
        self.addCleanup(b.stop)
        return b

    def start_sidecar(self, **kw) -> Sidecar:
        s = Sidecar(**kw)
        self.addCleanup(s.stop)
        return s

    def start_h2c_backend(self, files: dict[str, bytes]) -> H2cBackend:
        b = H2cBackend(files)
        self.addCleanup(b.stop)
        return b

    def curl(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
        try:
            return curl(*args, timeout=timeout)
        except AssertionError as e:
            self.fail(str(e))

    def require_tool(self, name: str) -> str:
        try:
            return require_tool(name)
        except AssertionError as e:
            self.fail(str(e))

    @staticmethod
    def diag(sidecar: Sidecar) -> str:
        return f"\n--- sidecar output (last 3000 chars) ---\n{sidecar.output()[-3000:]}"
