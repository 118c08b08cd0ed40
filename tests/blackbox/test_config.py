"""Configuration files: bad ones stop the sidecar at start-up with a precise message; good
ones change what the sidecar does (observed through its traffic, not read back from
/config.json, which would only show the file was parsed). `meshctl check` judges the same files
the same way, without starting anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

from harness import REPO_ROOT, BlackboxCase, free_ports, meshctl_binary, parse_status, raw_exchange, sidecar_binary

# (name, file text, key or word the message must name, line, value fragment)
# "{P}" in the text becomes a free loopback port.
BAD_CONFIGS = [
    ("unknown_key", '[limits]\nheader_timeout = "5s"\n', "header_timeout", 2, None),
    ("unknown_section", "[nonsense]\nx = 1\n", "nonsense", 1, None),
    # A key of the other direction (DESIGN.md §4: `router` is outbound's) is not inbound's.
    ("key_of_the_other_listener", '[inbound]\nrouter = "default"\n', "inbound.router", 2, None),
    ("bad_duration", '[limits]\nidle_timeout = "soon"\n', "limits.idle_timeout", 2, "soon"),
    ("duration_not_a_string", "[shutdown]\ngrace = 30\n", "shutdown.grace", 2, "30"),
    ("bad_address", '[admin]\nlisten = "nope"\n', "admin.listen", 2, "nope"),
    ("port_out_of_range", '[outbound]\ntarget = "127.0.0.1:99999"\n', "outbound.target", 2, "99999"),
    ("zero_limit", "[limits]\nmax_request_headers = 0\n", "limits.max_request_headers", 2, "0"),
    ("zero_duration", '[limits]\nconnect_timeout = "0s"\n', "limits.connect_timeout", 2, "0s"),
    ("header_bytes_too_small", '[limits]\nmax_request_header_bytes = "1KiB"\n', "limits.max_request_header_bytes", 2, None),
    ("target_is_own_listener", '[outbound]\nlisten = "127.0.0.1:{P}"\ntarget = "127.0.0.1:{P}"\n', "outbound.target", 3, "127.0.0.1:{P}"),
    ("syntax_error", "[admin]\nlisten = \n", None, 2, None),
]


class InvalidConfig(BlackboxCase):
    def run_sidecar(self, args: list[str], timeout: float = 10) -> tuple[int, str, float]:
        binary = sidecar_binary()
        self.assertTrue(binary.is_file(), f"sidecar binary {binary} not found")
        env = dict(os.environ, NO_COLOR="1")
        for var in ("MESH_LOG", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE"):  # keep messages short
            env.pop(var, None)
        started = time.monotonic()
        try:
            p = subprocess.run([str(binary), *args], capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            self.fail(f"sidecar with {args} was still running after {timeout}s (it should have refused to start); "
                      f"output: {(e.stdout or b'').decode(errors='replace')}{(e.stderr or b'').decode(errors='replace')}")
        return p.returncode, p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace"), time.monotonic() - started

    def test_bad_config_files(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="blackbox-config-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        for name, text, key, line, value in BAD_CONFIGS:
            with self.subTest(name):
                admin, outbound, inbound, p = free_ports(4)
                text = text.replace("{P}", str(p))
                value = value.replace("{P}", str(p)) if value else value
                path = tmp / f"{name}.toml"
                path.write_text(text)
                args = ["--config", str(path), "--admin-listen", f"127.0.0.1:{admin}", "--inbound-listen", f"127.0.0.1:{inbound}"]
                if "listen" not in text or "[outbound]" not in text:
                    args += ["--outbound-listen", f"127.0.0.1:{outbound}"]
                rc, out, elapsed = self.run_sidecar(args)
                self.assertNotEqual(rc, 0, f"{name}: sidecar accepted\n{text}\noutput: {out}")
                self.assertLess(elapsed, 5, f"{name}: took {elapsed:.1f}s to reject the file")
                self.assertIn(f"{path}:{line}", out, f"{name}: message must name file:line\n{out}")
                if key:
                    self.assertIn(key, out, f"{name}: message must name the key\n{out}")
                if value:
                    self.assertIn(value, out, f"{name}: message must show the value\n{out}")

    def test_missing_config_file(self) -> None:
        path = "/nonexistent/blackbox/sidecar.toml"
        admin, outbound, inbound = free_ports(3)
        rc, out, _ = self.run_sidecar(["--config", path, "--admin-listen", f"127.0.0.1:{admin}",
                                       "--outbound-listen", f"127.0.0.1:{outbound}", "--inbound-listen", f"127.0.0.1:{inbound}"])
        self.assertNotEqual(rc, 0)
        self.assertIn(path, out)

    def test_target_flag_pointing_at_own_listener(self) -> None:
        admin, outbound, inbound = free_ports(3)
        rc, out, _ = self.run_sidecar(["--admin-listen", f"127.0.0.1:{admin}", "--outbound-listen", f"127.0.0.1:{outbound}",
                                       "--inbound-listen", f"127.0.0.1:{inbound}", "--outbound-target", f"127.0.0.1:{outbound}"])
        self.assertNotEqual(rc, 0, out)
        self.assertIn("outbound.target", out)

    def test_port_in_use_is_named(self) -> None:
        import socket

        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        admin, inbound = free_ports(2)
        rc, out, _ = self.run_sidecar(["--admin-listen", f"127.0.0.1:{admin}", "--outbound-listen", f"127.0.0.1:{port}",
                                       "--inbound-listen", f"127.0.0.1:{inbound}"])
        self.assertNotEqual(rc, 0, out)
        self.assertIn(f"127.0.0.1:{port}", out)
        self.assertIn("outbound", out)

    def test_sample_config_is_accepted(self) -> None:
        # The sample listens on fixed ports; the harness's flags move every listener to a free
        # one. Traffic through the flag's outbound port shows both that the sample starts a
        # working sidecar and that flags override the file.
        backend = self.start_backend()
        sample = (REPO_ROOT / "examples" / "config" / "sidecar.toml").read_text()
        sidecar = self.start_sidecar(config_text=sample, outbound_target=backend.addr)
        r = self.curl("-w", "\n%{http_code}", f"{sidecar.outbound}/")
        self.assertEqual(r.stdout, backend.root_body + b"\n200", r.stderr.decode() + self.diag(sidecar))
        self.assertEqual(backend.count("/"), 1)

    def test_file_values_take_effect(self) -> None:
        # Each value differs from its default, and each is observed in the traffic: the file's
        # target is where requests go (there is no default target), its header limit answers
        # 431 at 11 headers (default 100), its response timeout answers 504 for a request the
        # backend holds for 40 s (default 60 s).
        backend = self.start_backend()
        self.addCleanup(backend.release)
        sidecar = self.start_sidecar(config_text=(
            f'[outbound]\ntarget = "{backend.addr}"\n'
            '[limits]\nmax_request_headers = 10\nresponse_timeout = "500ms"\n'
        ))

        r = self.curl("-w", "\n%{http_code}", f"{sidecar.outbound}/")
        self.assertEqual(r.stdout, backend.root_body + b"\n200", "the file's outbound.target is not used: "
                         + r.stderr.decode() + self.diag(sidecar))

        for n, expected in ((10, 200), (11, 431)):
            head = f"GET /?headers={n} HTTP/1.1\r\nHost: blackbox\r\nConnection: close\r\n"
            head += "".join(f"X-H{i}: v\r\n" for i in range(n - 2)) + "\r\n"
            data, _ = raw_exchange(sidecar.outbound_port, head.encode())
            self.assertEqual(parse_status(data), expected, f"{n} headers with max_request_headers = 10: {data[:300]!r}")
        self.assertEqual(backend.count("/?headers="), 1, "only the request within the limit reaches the backend")

        started = time.monotonic()
        r = self.curl("-o", "/dev/null", "-w", "%{http_code}", f"{sidecar.outbound}/hold", timeout=20)
        elapsed = time.monotonic() - started
        self.assertEqual(r.stdout, b"504", "the file's response_timeout is not applied: " + r.stderr.decode() + self.diag(sidecar))
        self.assertGreaterEqual(elapsed, 0.45, "answered 504 before the 500ms response timeout")
        self.assertLess(elapsed, 15, "the 504 came long after the configured 500ms response timeout")


class MeshctlCheck(BlackboxCase):
    """`meshctl check FILE`: exit 0 and `FILE: ok` for a valid file; exit 1 and one line naming
    file, line, key and value for an invalid one (the BAD_CONFIGS the sidecar refuses)."""

    def meshctl(self, *args: str, timeout: float = 10) -> tuple[int, str, str]:
        binary = meshctl_binary()
        self.assertTrue(binary.is_file(), f"meshctl binary {binary} not found (cargo build --examples)")
        env = dict(os.environ, NO_COLOR="1")
        for var in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE"):
            env.pop(var, None)
        try:
            p = subprocess.run([str(binary), *args], capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            self.fail(f"meshctl {args} still running after {timeout}s")
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def test_sample_config_is_ok(self) -> None:
        sample = REPO_ROOT / "examples" / "config" / "sidecar.toml"
        rc, out, err = self.meshctl("check", str(sample))
        self.assertEqual((rc, out, err), (0, f"{sample}: ok\n", ""))

    def test_bad_config_files(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="blackbox-meshctl-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        for name, text, key, line, value in BAD_CONFIGS:
            with self.subTest(name):
                (p,) = free_ports(1)
                text = text.replace("{P}", str(p))
                value = value.replace("{P}", str(p)) if value else value
                path = tmp / f"{name}.toml"
                path.write_text(text)
                rc, out, err = self.meshctl("check", str(path))
                self.assertEqual(rc, 1, f"{name}: meshctl check must exit 1\n{text}\nstdout: {out}\nstderr: {err}")
                self.assertEqual(out, "", f"{name}: nothing on stdout for an invalid file")
                self.assertEqual(len(err.splitlines()), 1, f"{name}: one error line expected\n{err}")
                self.assertIn(f"{path}:{line}", err, f"{name}: message must name file:line\n{err}")
                if key:
                    self.assertIn(key, err, f"{name}: message must name the key\n{err}")
                if value:
                    self.assertIn(value, err, f"{name}: message must show the value\n{err}")

    def test_missing_file(self) -> None:
        path = "/nonexistent/blackbox/sidecar.toml"
        rc, out, err = self.meshctl("check", path)
        self.assertEqual(rc, 1, err)
        self.assertIn(path, err)

    def test_nothing_is_bound(self) -> None:
        # Every address in the file is taken; a check that bound anything would fail on them.
        import socket

        busy = []
        for _ in range(3):
            s = socket.socket()
            self.addCleanup(s.close)
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            busy.append(s.getsockname()[1])
        admin, outbound, inbound = busy
        tmp = Path(tempfile.mkdtemp(prefix="blackbox-meshctl-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        path = tmp / "busy.toml"
        path.write_text(f'[admin]\nlisten = "127.0.0.1:{admin}"\n[outbound]\nlisten = "127.0.0.1:{outbound}"\n'
                        f'[inbound]\nlisten = "127.0.0.1:{inbound}"\n')
        rc, out, err = self.meshctl("check", str(path))
        self.assertEqual((rc, out, err), (0, f"{path}: ok\n", ""))

    def test_version(self) -> None:
        version = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
        rc, out, err = self.meshctl("--version")
        self.assertEqual((rc, out.strip()), (0, f"meshctl {version}"), err)
