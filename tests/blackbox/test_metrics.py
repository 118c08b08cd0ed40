"""/metrics: valid Prometheus text (promtool) that counts the traffic actually sent."""

from __future__ import annotations

import re
import subprocess

from harness import BlackboxCase

REQUESTS = 5


def samples(text: str, name: str) -> list[tuple[dict, float]]:
    """All samples of one metric name: ([labels], value)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out.append((labels, float(m.group(4))))
    return out


class Metrics(BlackboxCase):
    def setUp(self) -> None:
        self.backend = self.start_backend()
        self.sidecar = self.start_sidecar(outbound_target=self.backend.addr)
        # REQUESTS requests on one connection, plus one 404 on another.
        urls = [f"{self.sidecar.outbound}/?n={i}" for i in range(REQUESTS)]
        r = self.curl("--http1.1", *(["-o", "/dev/null"] * REQUESTS), "-w", "%{http_code}\n", *urls)
        self.assertEqual(r.stdout.decode().split(), ["200"] * REQUESTS, r.stderr.decode())
        r = self.curl("-o", "/dev/null", "-w", "%{http_code}", f"{self.sidecar.outbound}/missing")
        self.assertEqual(r.stdout, b"404")

    def scrape_with_curl(self) -> bytes:
        r = self.curl("-w", "", f"{self.sidecar.admin_url}/metrics")
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        return r.stdout

    def test_promtool_check_metrics_passes(self) -> None:
        promtool = self.require_tool("promtool")
        text = self.scrape_with_curl()
        p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
        self.assertEqual(
            p.returncode, 0,
            f"promtool check metrics exited {p.returncode}:\n{p.stdout.decode()}{p.stderr.decode()}\n--- scraped ---\n{text.decode()[:4000]}",
        )

    def test_request_and_response_counters(self) -> None:
        text = self.scrape_with_curl().decode()
        dst = self.backend.addr
        req = [v for l, v in samples(text, "mesh_request_total") if l.get("direction") == "outbound" and l.get("dst") == dst]
        self.assertEqual(req, [REQUESTS + 1], f"mesh_request_total for dst={dst}:\n{text}")

        ok = [v for l, v in samples(text, "mesh_response_total")
              if l.get("direction") == "outbound" and l.get("dst") == dst and l.get("status_code") == "200"]
        self.assertEqual(ok, [REQUESTS], text)
        nf = [v for l, v in samples(text, "mesh_response_total")
              if l.get("direction") == "outbound" and l.get("dst") == dst and l.get("status_code") == "404"]
        self.assertEqual(nf, [1], text)

    def test_latency_histogram(self) -> None:
        text = self.scrape_with_curl().decode()
        dst = self.backend.addr
        buckets = [(l, v) for l, v in samples(text, "mesh_response_latency_seconds_bucket") if l.get("dst") == dst]
        self.assertTrue(buckets, f"no mesh_response_latency_seconds_bucket lines for dst={dst}:\n{text}")
        inf = [v for l, v in buckets if l.get("le") == "+Inf"]
        self.assertEqual(inf, [REQUESTS + 1], text)
        values = [v for _, v in buckets]
        self.assertEqual(values, sorted(values), "histogram buckets must be cumulative")
        count = [v for l, v in samples(text, "mesh_response_latency_seconds_count") if l.get("dst") == dst]
        self.assertEqual(count, [REQUESTS + 1], text)
        total = [v for l, v in samples(text, "mesh_response_latency_seconds_sum") if l.get("dst") == dst]
        self.assertEqual(len(total), 1)
        self.assertGreater(total[0], 0)

    def test_tcp_counters(self) -> None:
        text = self.scrape_with_curl().decode()
        dst = self.backend.addr
        opened = [v for l, v in samples(text, "mesh_tcp_open_total") if l.get("dst") == dst]
        self.assertEqual(opened, [2], f"two client connections were made:\n{text}")
        read = [v for l, v in samples(text, "mesh_tcp_read_bytes_total") if l.get("dst") == dst]
        self.assertTrue(read and read[0] > 0, text)
