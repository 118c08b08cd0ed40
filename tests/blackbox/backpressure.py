"""Backpressure with bounded memory: a fast peer on one side of the sidecar, a slow one on the
other, and the sidecar's resident memory sampled while bytes move.

If the proxy applied no backpressure it would read the fast side (loopback, hundreds of MiB/s)
into memory as fast as it could, and its RSS would grow by hundreds of MiB within seconds. With
backpressure it holds at most a few buffers per stream, whatever the body size.

Used by test_backpressure.py (short runs, in CI) and benches/backpressure.py (the full 1 GiB
at 1 MiB/s run, ~17 minutes).
"""

from __future__ import annotations

import re
import select
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from harness import LOOPBACK, Sidecar, require_tool

MIB = 1024 * 1024
GIB = 1024 * MIB

# Every body is this 64 KiB pattern repeated, so both ends can check the bytes they got.
PATTERN = bytes(range(256)) * 256
_PATTERN2 = PATTERN * 2

# Small socket buffers on the slow side, so "bytes moved" is close to what the slow peer
# really consumed (a kernel buffer is not the proxy's memory, but it blurs the figures).
SLOW_SIDE_BUFFER = 64 * 1024


def pattern_at(offset: int, n: int) -> bytes:
    """n bytes (n <= 64 KiB) of the body pattern starting at body offset `offset`."""
    start = offset % len(PATTERN)
    return _PATTERN2[start:start + n]


class BodyMismatch(Exception):
    pass


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds on a thread, from start() to stop()."""

    def __init__(self, sidecar: Sidecar, interval: float = 0.05) -> None:
        self.sidecar = sidecar
        self.interval = interval
        self.samples: list[int] = []  # KiB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            v = self.sidecar.rss_kib()
            if v is not None:
                self.samples.append(v)
            self._stop.wait(self.interval)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak_kib(self) -> int:
        return max(self.samples) if self.samples else 0


class FastUpstream:
    """An HTTP/1.1 upstream on 127.0.0.1.

    ``GET /big?size=N`` answers N pattern bytes as fast as the connection takes them;
    ``GET /small`` answers a few bytes; ``POST /sink`` reads its Content-Length body at
    ``sink_rate`` bytes/s (checking the pattern) and then answers 200 with the byte count.
    """

    def __init__(self, sink_rate: float = MIB) -> None:
        self.sink_rate = sink_rate
        self.lock = threading.Lock()
        self.sent = 0  # body bytes of /big written into the proxy's connection
        self.received = 0  # body bytes of /sink read from it
        self.errors: list[str] = []
        self._stopped = threading.Event()
        self._conns: list[socket.socket] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by accepted sockets: the slow sink's receive buffer stays small.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_SIDE_BUFFER)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(16)
        self.addr = f"{LOOPBACK}:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(60)
        buf = b""
        try:
            with conn:
                while not self._stopped.is_set():
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    line = head.split(b"\r\n", 1)[0].decode("latin-1")
                    method, target, _ = line.split(" ", 2)
                    m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
                    length = int(m.group(1)) if m else 0
                    if method == "GET" and target.startswith("/big"):
                        size = int(re.search(r"size=(\d+)", target).group(1))
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                     b"Content-Length: %d\r\n\r\n" % size)
                        self._send_body(conn, size)
                    elif method == "POST" and target.startswith("/sink"):
                        buf = self._sink(conn, buf, length)
                        body = b"%d\n" % length
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    else:
                        buf = buf[length:]  # tiny bodies only on these routes
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        except OSError:
            pass  # the peer went away: how every short run ends
        except (BodyMismatch, ValueError, AttributeError) as e:
            with self.lock:
                self.errors.append(f"{type(e).__name__}: {e}")

    def _send_body(self, conn: socket.socket, size: int) -> None:
        sent = 0
        view = memoryview(PATTERN)
        while sent < size and not self._stopped.is_set():
            n = min(len(PATTERN), size - sent)
            conn.sendall(view[:n])  # blocks while the proxy does not read: that is the point
            sent += n
            with self.lock:
                self.sent += n

    def _sink(self, conn: socket.socket, buf: bytes, length: int) -> bytes:
        """Reads a `length`-byte body at sink_rate; returns whatever followed it."""
        got = 0
        started = time.monotonic()
        conn.settimeout(0.2)
        try:
            while got < length and not self._stopped.is_set():
                if buf:
                    data, buf = buf[: length - got], buf[length - got:]
                else:
                    allowance = int(self.sink_rate * (time.monotonic() - started)) - got
                    if allowance <= 0:
                        time.sleep(0.005)  # pacing the slow reader, not synchronisation
                        continue
                    try:
                        data = conn.recv(min(allowance, len(PATTERN), length - got))
                    except socket.timeout:
                        continue
                    if not data:
                        raise ConnectionResetError(f"upload ended after {got} of {length} bytes")
                if data != pattern_at(got, len(data)):
                    raise BodyMismatch(f"upload body differs at offset {got}")
                got += len(data)
                with self.lock:
                    self.received += len(data)
        finally:
            conn.settimeout(60)
        return buf

    def stop(self) -> None:
        self._stopped.set()
        self.sock.close()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class Result:
    """What one run moved and how the sidecar's memory behaved."""

    scenario: str
    seconds: float
    baseline_kib: int
    peak_kib: int
    moved: int  # bytes the slow peer consumed
    pushed: Optional[int]  # bytes the fast peer got into the proxy (None if unknown)
    complete: bool  # the whole body was moved
    samples: list[int] = field(default_factory=list)

    @property
    def growth_kib(self) -> int:
        return self.peak_kib - self.baseline_kib

    def summary(self) -> str:
        pushed = f", fast side pushed {self.pushed / MIB:.1f} MiB" if self.pushed is not None else ""
        return (f"{self.scenario}: {self.seconds:.1f}s, slow side moved {self.moved / MIB:.1f} MiB"
                f" ({self.moved / MIB / max(self.seconds, 1e-9):.2f} MiB/s){pushed}{', complete' if self.complete else ''};"
                f" sidecar RSS baseline {self.baseline_kib / 1024:.1f} MiB, peak {self.peak_kib / 1024:.1f} MiB,"
                f" growth {self.growth_kib / 1024:.2f} MiB")


def time_limit(size: int, rate: float, seconds: Optional[float]) -> float:
    """How long a run may last: `seconds`, or for a whole-body run (None) the nominal time
    plus half again and a minute, so a stalled transfer ends as a failure."""
    return seconds if seconds is not None else size / rate * 1.5 + 60


def _baseline(sidecar: Sidecar) -> int:
    rss = sidecar.rss_kib()
    if rss is None:
        raise AssertionError("sidecar exited before the run")
    return rss


def _warm_up(sidecar: Sidecar, upstream: FastUpstream) -> None:
    """One small request each way first, so pools and lazily built state are in the baseline."""
    for payload in (b"GET /small HTTP/1.1\r\nHost: bp\r\nConnection: close\r\n\r\n",
                    b"POST /small HTTP/1.1\r\nHost: bp\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"):
        with socket.create_connection((LOOPBACK, sidecar.outbound_port), timeout=10) as s:
            s.sendall(payload)
            data = b""
            while not data.endswith(b"\r\n\r\nok\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"warm-up request failed: {data[:300]!r}")


def http1_download(sidecar: Sidecar, upstream: FastUpstream, size: int, rate: float, seconds: Optional[float]) -> Result:
    """A client reads GET /big (size bytes) at `rate` bytes/s for `seconds` (None: to the end)."""
    _warm_up(sidecar, upstream)
    baseline = _baseline(sidecar)
    sampler = RssSampler(sidecar).start()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_SIDE_BUFFER)  # before connect: sets the window
    s.settimeout(10)
    got = 0
    started = time.monotonic()
    try:
        s.connect((LOOPBACK, sidecar.outbound_port))
        s.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: bp\r\n\r\n" % size)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise AssertionError(f"connection closed before the response head: {head!r}")
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"GET /big answered {head[:200]!r}")
        if rest != pattern_at(0, len(rest)):
            raise BodyMismatch("response body differs at offset 0")
        got = len(rest)
        s.settimeout(0.2)
        limit = time_limit(size, rate, seconds)
        while got < size:
            elapsed = time.monotonic() - started
            if elapsed >= limit:
                break
            allowance = int(rate * elapsed) - got
            if allowance <= 0:
                time.sleep(0.005)  # pacing the slow reader, not synchronisation
                continue
            try:
                data = s.recv(min(allowance, len(PATTERN), size - got))
            except socket.timeout:
                continue
            if not data:
                raise AssertionError(f"response ended after {got} of {size} bytes")
            if data != pattern_at(got, len(data)):
                raise BodyMismatch(f"response body differs at offset {got}")
            got += len(data)
    finally:
        elapsed = time.monotonic() - started
        sampler.stop()
        s.close()
    with upstream.lock:
        pushed = upstream.sent
    return Result("HTTP/1.1 download", elapsed, baseline, sampler.peak_kib, got, pushed, got == size, sampler.samples)


def http1_upload(sidecar: Sidecar, upstream: FastUpstream, size: int, seconds: Optional[float]) -> Result:
    """A client POSTs size bytes as fast as it can; the upstream reads at upstream.sink_rate."""
    _warm_up(sidecar, upstream)
    baseline = _baseline(sidecar)
    sampler = RssSampler(sidecar).start()
    s = socket.create_connection((LOOPBACK, sidecar.outbound_port), timeout=10)
    # Blocking without a timeout: a timed-out sendall would lose count of what it sent. The
    # sender is unblocked at the end by shutting the socket down.
    s.settimeout(None)
    pushed = 0
    done = threading.Event()
    send_error: list[str] = []

    def push() -> None:
        nonlocal pushed
        view = memoryview(PATTERN)
        try:
            s.sendall(b"POST /sink HTTP/1.1\r\nHost: bp\r\nContent-Length: %d\r\n\r\n" % size)
            while pushed < size and not done.is_set():
                n = min(len(PATTERN), size - pushed)
                s.sendall(view[:n])  # blocks while the proxy does not read: that is the point
                pushed += n
        except OSError as e:
            if not done.is_set():
                send_error.append(f"{type(e).__name__}: {e}")

    sender = threading.Thread(target=push, daemon=True)
    started = time.monotonic()
    sender.start()
    response = b""
    limit = time_limit(size, upstream.sink_rate, seconds)
    try:
        while True:
            elapsed = time.monotonic() - started
            with upstream.lock:
                received = upstream.received
            if received >= size:
                # The whole body is through; the upstream's answer follows.
                while b"\r\n\r\n" not in response:
                    if not select.select([s], [], [], 30)[0]:
                        raise AssertionError("no response 30s after the upload was through")
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    response += chunk
                if not response.startswith(b"HTTP/1.1 200"):
                    raise AssertionError(f"upload answered {response[:200]!r}")
                break
            if elapsed >= limit:
                break
            if send_error:
                raise AssertionError(f"upload failed after {pushed} bytes: {send_error[0]}")
            if upstream.errors:
                raise AssertionError(f"upstream failed: {upstream.errors[0]}")
            time.sleep(0.05)  # polling the upstream's count
    finally:
        elapsed = time.monotonic() - started
        done.set()
        sampler.stop()
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sender.join(5)
        s.close()
    with upstream.lock:
        received = upstream.received
    return Result("HTTP/1.1 upload", elapsed, baseline, sampler.peak_kib, received, pushed, received == size, sampler.samples)


def h2c_download(sidecar: Sidecar, file_name: str, size: int, rate: float, seconds: Optional[float],
                 warm_file: Optional[str] = None) -> Result:
    """curl with h2c prior knowledge reads `file_name` (size bytes, served by nghttpd) at `rate`.

    The proxy keeps HTTP/2 upstream for an HTTP/2 client, so here backpressure is HTTP/2 flow
    control on both sides: the proxy must not widen the upstream's window faster than the
    client takes the bytes.
    """
    curl = require_tool("curl")
    if warm_file:  # one small request first, so the baseline includes the connection state
        p = subprocess.run([curl, "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
                            f"{sidecar.outbound}/{warm_file}"], capture_output=True, timeout=30)
        if p.stdout != b"200":
            raise AssertionError(f"h2c warm-up answered {p.stdout!r}: {p.stderr.decode()}")
    baseline = _baseline(sidecar)
    sampler = RssSampler(sidecar).start()
    max_time = time_limit(size, rate, seconds)
    started = time.monotonic()
    try:
        p = subprocess.run(
            [curl, "-sS", "--http2-prior-knowledge", "--limit-rate", str(int(rate)), "--max-time", f"{max_time:g}",
             "-o", "/dev/null", "-w", "%{http_code} %{size_download}", f"{sidecar.outbound}/{file_name}"],
            capture_output=True, timeout=max_time + 30,
        )
    finally:
        elapsed = time.monotonic() - started
        sampler.stop()
    code, _, moved = p.stdout.decode().partition(" ")
    if code != "200":
        raise AssertionError(f"h2c download answered {p.stdout!r}: {p.stderr.decode()}")
    # curl exits 28 when --max-time ends the transfer: expected in a short run.
    if p.returncode not in (0, 28):
        raise AssertionError(f"curl failed ({p.returncode}): {p.stderr.decode()}")
    moved = int(moved)
    return Result("h2c download", elapsed, baseline, sampler.peak_kib, moved, None, moved == size, sampler.samples)
