"""DNS namers against a real DNS server: a sidecar whose outbound target is a DNS name
(``/#/dns/<host>/<port>``, A records, or ``/#/srv/<srv name>``, SRV records) resolved by a
dnsmasq this file runs on a free loopback port, with records it rewrites while the test runs.

The upstreams are the replicas of test_balancer.py (answering ``x-upstream: <name>``), bound
to loopback aliases (127.0.0.2, 127.0.0.3, ...; Linux routes all of 127/8 to lo), because an
A record carries only an address: two replicas behind one name need two addresses on the same
port. What a user relies on, and what is checked here:

* A records added, removed and changed show up, in which replicas get traffic and in
  /endpoints.json, within a few seconds (records have a 1 s TTL and the namer a 1 s floor);
  requests keep succeeding through every change;
* NXDOMAIN: a name that does not exist is answered 503 "no such name" at once, and is served
  once it gets a record;
* a dead nameserver keeps the last good set serving, is counted in
  ``mesh_resolver_errors_total{namer="dns"}`` and logged, and a nameserver back with new
  records is followed again;
* SRV: ports and weights come from the records, targets are resolved, a higher (backup)
  priority is not used while the lowest one resolves, and a changed record is followed.

Every change's delay is printed, so CI output shows the figures.

dnsmasq serves the records: A records from a hosts file (``--addn-hosts``, re-read on SIGHUP),
SRV records from ``--srv-host`` arguments (SIGHUP does not re-read those, so an SRV change
restarts dnsmasq on the same port). ``--local=/mesh.test/`` makes every other name in
mesh.test NXDOMAIN, and ``--no-resolv`` means nothing is ever forwarded.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import harness
from harness import LOOPBACK, BlackboxCase, Sidecar, can_connect, wait_until
from test_balancer import Answer, Background, Upstream, get_once, summary
from test_metrics import samples

DOMAIN = "mesh.test"
HOST = f"hello.{DOMAIN}"
SRV_NAME = f"_http._tcp.hello.{DOMAIN}"

# Record TTL dnsmasq hands out (--local-ttl) and the namer's TTL floor (min_ttl): each name
# is asked again about every second.
TTL_S = 1

# A record change must be in force (traffic and /endpoints.json) within this after the
# server has it: TTL + 1 s is the issue's bound; 1 s more for a loaded 2-core CI machine.
CHANGE_DEADLINE_S = TTL_S + 2.0

# How long the tests keep the nameserver dead: several refresh periods.
OUTAGE_S = 3.5

# A dead nameserver on loopback does not refuse UDP queries in a way the resolver notices
# (the ICMP port unreachable is not reported to its socket), so a lookup fails by timing
# out: the namer's default timeout, 2 s, tried twice. The failure is then exported by the
# sidecar's 5 s housekeeping tick. So the first failed lookup is in /metrics at the latest
# TTL + 4 s + 5 s after the kill; 3 s more for a loaded machine.
DEAD_LOOKUP_S = 2 * 2.0
METRICS_TICK_S = 5
ERRORS_DEADLINE_S = TTL_S + DEAD_LOOKUP_S + METRICS_TICK_S + 3

# Answers from other replicas that must follow the last one from a removed replica before it
# counts as out of traffic.
DRAINED_AFTER = 20


def find_dnsmasq() -> str:
    """dnsmasq's path: on PATH, or in /usr/sbin (not on a normal user's PATH). Missing is a
    failure, never a skip."""
    found = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if found is None:
        raise AssertionError("required tool 'dnsmasq' is not installed; install it (Debian: apt-get install dnsmasq-base) "
                             "or run .ci/run, which installs it")
    return found


def free_dns_port() -> int:
    """A loopback port free for both UDP and TCP (dnsmasq serves both)."""
    for _ in range(20):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            tcp.bind((LOOPBACK, 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
        finally:
            tcp.close()
            udp.close()
    raise AssertionError("no loopback port free for both UDP and TCP")


class DnsServer:
    """dnsmasq in the foreground on 127.0.0.1:`port` (UDP and TCP), answering for mesh.test
    only: A records from a hosts file this object rewrites, SRV records from arguments."""

    def __init__(self, workdir: Path, hosts: dict[str, list[str]], srv: tuple[str, ...] = ()) -> None:
        self.exe = find_dnsmasq()
        self.dir = workdir
        self.hosts_file = workdir / "hosts"
        self.log_path = workdir / "dnsmasq.log"
        self.port = free_dns_port()
        self.proc: Optional[subprocess.Popen] = None
        self._write_hosts(hosts)
        self.start(srv)

    def _write_hosts(self, hosts: dict[str, list[str]]) -> None:
        tmp = self.dir / ".hosts.tmp"
        tmp.write_text("".join(f"{ip} {name}\n" for name, ips in hosts.items() for ip in ips))
        tmp.replace(self.hosts_file)

    def start(self, srv: tuple[str, ...] = ()) -> None:
        """Starts dnsmasq on self.port (again, after stop(): same port, maybe new SRV records)."""
        assert self.proc is None or self.proc.poll() is not None, "dnsmasq is already running"
        args = [
            self.exe, "--no-daemon", "--conf-file=/dev/null", f"--port={self.port}",
            f"--listen-address={LOOPBACK}", "--bind-interfaces", "--no-resolv", "--no-hosts",
            f"--addn-hosts={self.hosts_file}", f"--local=/{DOMAIN}/", f"--local-ttl={TTL_S}",
            f"--neg-ttl={TTL_S}", f"--pid-file={self.dir / 'dnsmasq.pid'}",
            # Started as root, dnsmasq would switch to "nobody", which cannot read the hosts
            # file in the test's private temporary directory; as another user it stays that
            # user and these are no-ops.
            "--user=root", "--group=root", "--log-facility=-", "--log-queries",
            *(f"--srv-host={s}" for s in srv),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        harness._live_processes.append(self.proc)  # killed at exit if a test leaves it behind
        up = wait_until(lambda: self.proc.poll() is not None or can_connect(self.port), 5)
        if self.proc.poll() is not None or not up:
            self.stop()
            raise AssertionError(f"dnsmasq did not start on port {self.port}:\n{self.log()[-2000:]}")

    def set_hosts(self, hosts: dict[str, list[str]]) -> float:
        """Rewrites the A records and has dnsmasq re-read them (SIGHUP); returns when dnsmasq
        has read the file (its log says so), as time.monotonic()."""
        reads = self.log().count(f"read {self.hosts_file}")
        self._write_hosts(hosts)
        self.proc.send_signal(signal.SIGHUP)
        if not wait_until(lambda: self.log().count(f"read {self.hosts_file}") > reads, 5):
            raise AssertionError(f"dnsmasq did not re-read its hosts file after SIGHUP:\n{self.log()[-2000:]}")
        return time.monotonic()

    def stop(self) -> None:
        """SIGKILL: a nameserver that dies, with no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self, hosts: dict[str, list[str]], srv: tuple[str, ...] = ()) -> float:
        """Restarts dnsmasq on the same port with new records; returns when it listens."""
        self.stop()
        self._write_hosts(hosts)
        self.start(srv)
        return time.monotonic()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class AliasUpstream(Upstream):
    """test_balancer's replica, bound to `host` (a 127.0.0.x alias) rather than 127.0.0.1."""

    def __init__(self, name: str, host: str, port: int) -> None:  # noqa: D107 (mirrors Upstream.__init__)
        self.name = name
        self.delay_s = 0.0
        self.status = 200
        self.lock = threading.Lock()
        self.answered: dict[int, int] = {}
        self.heads: list[bytes] = []
        self._conns: set[socket.socket] = set()
        self._closed = False
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.listen(128)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.addr = f"[{host}]:{self.port}" if family == socket.AF_INET6 else f"{host}:{self.port}"
        threading.Thread(target=self._accept_loop, daemon=True).start()


class DnsCase(BlackboxCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="blackbox-dns-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.dns: Optional[DnsServer] = None

    def start_dns(self, hosts: dict[str, list[str]], srv: tuple[str, ...] = ()) -> DnsServer:
        try:
            self.dns = DnsServer(self.dir, hosts, srv)
        except AssertionError as e:
            self.fail(str(e))
        self.addCleanup(self.dns.stop)
        return self.dns

    def start_upstreams(self, names_and_hosts: dict[str, str]) -> dict[str, AliasUpstream]:
        """One replica per (name, host), all on one free port."""
        for _ in range(10):
            try_port = self._free_port_on(next(iter(names_and_hosts.values())))
            started: list[AliasUpstream] = []
            try:
                for name, host in names_and_hosts.items():
                    started.append(AliasUpstream(name, host, try_port))
            except OSError:
                for u in started:
                    u.stop()
                continue
            for u in started:
                self.addCleanup(u.stop)
            return {u.name: u for u in started}
        self.fail(f"no port free on all of {sorted(names_and_hosts.values())}")

    @staticmethod
    def _free_port_on(host: str) -> int:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return s.getsockname()[1]

    def start_dns_sidecar(self, target: str) -> Sidecar:
        nameserver = f"{LOOPBACK}:{self.dns.port}"
        config = (f'[namers.dns]\nkind = "dns"\nnameserver = "{nameserver}"\nmin_ttl = "{TTL_S}s"\n'
                  f'[namers.srv]\nkind = "dns-srv"\nnameserver = "{nameserver}"\nmin_ttl = "{TTL_S}s"\n'
                  f'[balancer]\nfail_fast_timeout = "500ms"\n')
        return self.start_sidecar(config_text=config, outbound_target=target)

    def endpoints(self, sidecar: Sidecar, dst: str) -> dict[str, dict]:
        """/endpoints.json's endpoints of dst, by address ({} if dst is not listed)."""
        status, _, body = sidecar.admin("GET", "/endpoints.json")
        self.assertEqual(status, 200, body[:300])
        for d in json.loads(body)["destinations"]:
            if d["dst"] == dst:
                return {e["addr"]: e for e in d["endpoints"]}
        return {}

    def diag(self, sidecar: Sidecar) -> str:  # type: ignore[override]
        dns = f"\n--- dnsmasq log (tail) ---\n{self.dns.log()[-1500:]}" if self.dns else ""
        return super().diag(sidecar) + dns

    # ---- waiting for a change, and timing it

    def wait_shown(self, sidecar: Sidecar, dst: str, addrs: set[str], since: float, what: str) -> float:
        """Polls /endpoints.json until dst's endpoints are exactly addrs; the delay since `since`."""
        ok = wait_until(lambda: set(self.endpoints(sidecar, dst)) == addrs, CHANGE_DEADLINE_S + 2, interval=0.05)
        took = time.monotonic() - since
        self.assertTrue(ok, f"{what}: /endpoints.json shows {sorted(self.endpoints(sidecar, dst))}, not {sorted(addrs)}, "
                            f"{took:.1f} s after the change" + self.diag(sidecar))
        return took

    def wait_served(self, bg: Background, name: str, since: float, what: str, sidecar: Sidecar) -> float:
        """Waits for the first answer from replica `name` after `since`; its delay."""
        first = wait_until(lambda: next((a for a in bg.since(since) if a.upstream == name), None),
                           CHANGE_DEADLINE_S + 2, interval=0.02)
        self.assertIsNotNone(first, f"{what}: {name} got no traffic: {summary(bg.since(since))}" + self.diag(sidecar))
        return first.at - since

    def wait_drained(self, bg: Background, name: str, since: float, what: str, sidecar: Sidecar) -> float:
        """Waits until DRAINED_AFTER answers in a row after `since` came from other replicas;
        the delay from `since` to the last answer from `name` (0 if none came)."""

        def drained() -> Optional[float]:
            answers = bg.since(since)
            last = max((i for i, a in enumerate(answers) if a.upstream == name), default=-1)
            if len(answers) - last - 1 < DRAINED_AFTER:
                return None
            return answers[last].at - since if last >= 0 else 0.0

        took = wait_until(drained, CHANGE_DEADLINE_S + 2, interval=0.02)
        self.assertIsNotNone(took, f"{what}: {name} still gets traffic: {summary(bg.since(since))}" + self.diag(sidecar))
        return took

    def assert_all_ok(self, answers: list[Answer], what: str, sidecar: Sidecar) -> None:
        bad = [a for a in answers if a.status != 200]
        self.assertEqual(bad, [], f"{what}: {summary(answers)}" + self.diag(sidecar))

    def resolver_errors(self, sidecar: Sidecar, namer: str) -> float:
        return sum(v for l, v in samples(sidecar.metrics(), "mesh_resolver_errors_total") if l.get("namer") == namer)


class ARecords(DnsCase):
    def test_a_records_added_removed_and_changed(self) -> None:
        ups = self.start_upstreams({"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"})
        port = ups["a"].port
        addr = {n: u.addr for n, u in ups.items()}
        dns = self.start_dns({HOST: ["127.0.0.2", "127.0.0.3"]})
        dst = f"/#/dns/{HOST}/{port}"
        sidecar = self.start_dns_sidecar(dst)

        bg = Background(sidecar.outbound_port, 4)
        self.addCleanup(bg.stop)
        began = time.monotonic()
        self.assertTrue(wait_until(lambda: {a.upstream for a in bg.since(began)} >= {"a", "b"}, 10),
                        f"both A records' replicas should get traffic: {summary(bg.since(began))}" + self.diag(sidecar))
        e = self.endpoints(sidecar, dst)
        self.assertEqual(set(e), {addr["a"], addr["b"]})
        self.assertEqual({x["state"] for x in e.values()}, {"ready"}, e)
        print()

        # Changed: b's address becomes c's. c gets traffic, b none any more.
        at = dns.set_hosts({HOST: ["127.0.0.2", "127.0.0.4"]})
        shown = self.wait_shown(sidecar, dst, {addr["a"], addr["c"]}, at, "changed record")
        served = self.wait_served(bg, "c", at, "changed record", sidecar)
        drained = self.wait_drained(bg, "b", at, "changed record", sidecar)
        print(f"  dns A changed: in /endpoints.json after {shown:.2f} s, new replica served after {served:.2f} s, "
              f"old one's last answer after {drained:.2f} s", flush=True)
        for took in (shown, served, drained):
            self.assertLess(took, CHANGE_DEADLINE_S)

        # Removed: only c is left.
        at = dns.set_hosts({HOST: ["127.0.0.4"]})
        shown = self.wait_shown(sidecar, dst, {addr["c"]}, at, "removed record")
        drained = self.wait_drained(bg, "a", at, "removed record", sidecar)
        print(f"  dns A removed: in /endpoints.json after {shown:.2f} s, removed replica's last answer after "
              f"{drained:.2f} s", flush=True)
        for took in (shown, drained):
            self.assertLess(took, CHANGE_DEADLINE_S)

        # Added: b comes back next to c.
        at = dns.set_hosts({HOST: ["127.0.0.3", "127.0.0.4"]})
        shown = self.wait_shown(sidecar, dst, {addr["b"], addr["c"]}, at, "added record")
        served = self.wait_served(bg, "b", at, "added record", sidecar)
        print(f"  dns A added: in /endpoints.json after {shown:.2f} s, added replica served after {served:.2f} s",
              flush=True)
        for took in (shown, served):
            self.assertLess(took, CHANGE_DEADLINE_S)

        bg.stop()
        # A record change is not an outage: every request, through every change, was served.
        self.assert_all_ok(bg.since(0), "requests failed while records changed", sidecar)
        self.assertEqual(self.resolver_errors(sidecar, "dns"), 0, "no lookup failed")

    def test_endpoints_json_follows_records_without_traffic(self) -> None:
        ups = self.start_upstreams({"a": "127.0.0.2", "b": "127.0.0.3"})
        port = ups["a"].port
        dns = self.start_dns({HOST: ["127.0.0.2"]})
        dst = f"/#/dns/{HOST}/{port}"
        sidecar = self.start_dns_sidecar(dst)
        self.assertEqual(get_once(sidecar.outbound_port).status, 200)
        self.assertEqual(set(self.endpoints(sidecar, dst)), {ups["a"].addr})

        at = dns.set_hosts({HOST: ["127.0.0.2", "127.0.0.3"]})
        shown = self.wait_shown(sidecar, dst, {ups["a"].addr, ups["b"].addr}, at, "added record, no traffic")
        print(f"\n  dns A added, no traffic: in /endpoints.json after {shown:.2f} s", flush=True)
        self.assertLess(shown, CHANGE_DEADLINE_S)


    def test_a_and_aaaa_records_together(self) -> None:
        ups = self.start_upstreams({"v4": "127.0.0.2", "v6": "::1"})
        port = ups["v4"].port
        self.start_dns({HOST: ["127.0.0.2", "::1"]})
        dst = f"/#/dns/{HOST}/{port}"
        sidecar = self.start_dns_sidecar(dst)
        bg = Background(sidecar.outbound_port, 4)
        self.addCleanup(bg.stop)
        began = time.monotonic()
        self.assertTrue(wait_until(lambda: {a.upstream for a in bg.since(began)} >= {"v4", "v6"}, 10),
                        f"the A and the AAAA record's replicas should both get traffic: {summary(bg.since(began))}"
                        + self.diag(sidecar))
        bg.stop()
        self.assert_all_ok(bg.since(0), "requests to a dual-stack name", sidecar)
        self.assertEqual(set(self.endpoints(sidecar, dst)), {ups["v4"].addr, ups["v6"].addr})


class NoSuchName(DnsCase):
    def test_nxdomain_fails_at_once_until_the_name_exists(self) -> None:
        up = self.start_upstreams({"late": "127.0.0.2"})["late"]
        dns = self.start_dns({HOST: ["127.0.0.3"]})
        dst = f"/#/dns/nope.{DOMAIN}/{up.port}"
        sidecar = self.start_dns_sidecar(dst)

        # The first request may wait for the first lookup; after that, the sidecar knows.
        first = get_once(sidecar.outbound_port)
        self.assertEqual(first.status, 503, first)
        answers = [get_once(sidecar.outbound_port) for _ in range(5)]
        slowest = max(a.latency for a in answers)
        print(f"\n  NXDOMAIN: first answer {first.latency * 1000:.0f} ms, then at most {slowest * 1000:.0f} ms: "
              f"{answers[0].error}", flush=True)
        for a in answers:
            self.assertEqual(a.status, 503, a)
            self.assertIn("no such name", a.error)
            self.assertIn("NXDOMAIN", a.error)
            self.assertIn(f"nope.{DOMAIN}", a.error)
            self.assertLess(a.latency, 0.5, f"a name that does not exist must fail at once, not after fail-fast: {a}")
        self.assertEqual(up.count(), 0)

        # The name gets a record: it is asked again (negative TTL, 1 s floor) and served.
        at = dns.set_hosts({HOST: ["127.0.0.3"], f"nope.{DOMAIN}": ["127.0.0.2"]})
        ok = wait_until(lambda: get_once(sidecar.outbound_port).upstream == "late", CHANGE_DEADLINE_S + 2, interval=0.05)
        took = time.monotonic() - at
        self.assertTrue(ok, f"the new name is not served {took:.1f} s after it got a record: "
                            f"{get_once(sidecar.outbound_port)}" + self.diag(sidecar))
        print(f"  NXDOMAIN → record: served after {took:.2f} s", flush=True)
        self.assertLess(took, CHANGE_DEADLINE_S)


class DeadNameserver(DnsCase):
    def test_dead_nameserver_keeps_the_last_set(self) -> None:
        ups = self.start_upstreams({"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"})
        port = ups["a"].port
        dns = self.start_dns({HOST: ["127.0.0.2", "127.0.0.3"]})
        dst = f"/#/dns/{HOST}/{port}"
        sidecar = self.start_dns_sidecar(dst)
        bg = Background(sidecar.outbound_port, 4)
        self.addCleanup(bg.stop)
        began = time.monotonic()
        self.assertTrue(wait_until(lambda: {a.upstream for a in bg.since(began)} >= {"a", "b"}, 10),
                        summary(bg.since(began)) + self.diag(sidecar))
        # (possibly up to 5 s old, but no lookup has failed while dnsmasq ran)
        self.assertEqual(self.resolver_errors(sidecar, "dns"), 0)

        dns.stop()
        killed = time.monotonic()

        def warnings() -> list[str]:
            return [l for l in sidecar.output().splitlines() if "keeping the last good set" in l]

        noticed = wait_until(warnings, TTL_S + DEAD_LOOKUP_S + 2, interval=0.05)
        self.assertTrue(noticed, "no warning that the lookups failed" + self.diag(sidecar))
        print(f"\n  dead nameserver: failed lookup logged {time.monotonic() - killed:.2f} s after the kill", flush=True)
        self.assertIn(HOST, noticed[0])
        self.assertIn("WARN", noticed[0])
        # Several refresh periods without a nameserver, until the failures are counted too.
        counted = wait_until(lambda: time.monotonic() - killed >= OUTAGE_S and self.resolver_errors(sidecar, "dns") > 0,
                             ERRORS_DEADLINE_S, interval=0.2)
        errors = self.resolver_errors(sidecar, "dns")
        print(f"  dead nameserver: {errors:g} failed lookups in /metrics {time.monotonic() - killed:.1f} s after the kill",
              flush=True)
        self.assertTrue(counted, f"mesh_resolver_errors_total{{namer=\"dns\"}} is {errors}, expected > 0" + self.diag(sidecar))
        during = bg.since(killed)
        self.assert_all_ok(during, "requests failed while the nameserver was dead", sidecar)
        late = {a.upstream for a in bg.since(killed + OUTAGE_S - 1)}
        self.assertEqual(late, {"a", "b"}, "both replicas of the last good set still get traffic, seconds later")
        self.assertEqual(set(self.endpoints(sidecar, dst)), {ups["a"].addr, ups["b"].addr})
        self.assertEqual(len(warnings()), 1, f"one warning per outage, not one per retry: {warnings()}")

        # The nameserver is back, with other records: they are followed again.
        at = dns.restart({HOST: ["127.0.0.4"]})
        shown = self.wait_shown(sidecar, dst, {ups["c"].addr}, at, "nameserver back")
        served = self.wait_served(bg, "c", at, "nameserver back", sidecar)
        print(f"  dead nameserver back with new records: in /endpoints.json after {shown:.2f} s, "
              f"served after {served:.2f} s", flush=True)
        for took in (shown, served):
            self.assertLess(took, CHANGE_DEADLINE_S)
        bg.stop()
        self.assert_all_ok(bg.since(0), "requests failed during the outage or after it", sidecar)


class SrvRecords(DnsCase):
    def test_srv_ports_weights_and_a_changed_record(self) -> None:
        a = self.start_upstreams({"a": "127.0.0.2"})["a"]
        b = self.start_upstreams({"b": "127.0.0.3"})["b"]
        c = self.start_upstreams({"c": "127.0.0.3"})["c"]
        backup = self.start_upstreams({"backup": "127.0.0.4"})["backup"]
        self.assertEqual(len({a.port, b.port, c.port, backup.port}), 4, "distinct ports")
        hosts = {f"a.{DOMAIN}": ["127.0.0.2"], f"b.{DOMAIN}": ["127.0.0.3"], f"backup.{DOMAIN}": ["127.0.0.4"]}
        # --srv-host=<name>,<target>,<port>,<priority>,<weight>
        backup_srv = f"{SRV_NAME},backup.{DOMAIN},{backup.port},1,1"
        dns = self.start_dns(hosts, (f"{SRV_NAME},a.{DOMAIN},{a.port},0,1",
                                     f"{SRV_NAME},b.{DOMAIN},{b.port},0,3", backup_srv))
        dst = f"/#/srv/{SRV_NAME}"
        sidecar = self.start_dns_sidecar(dst)

        bg = Background(sidecar.outbound_port, 4)
        self.addCleanup(bg.stop)
        began = time.monotonic()
        self.assertTrue(wait_until(lambda: {x.upstream for x in bg.since(began)} >= {"a", "b"}, 10),
                        f"both SRV targets should get traffic: {summary(bg.since(began))}" + self.diag(sidecar))
        e = self.endpoints(sidecar, dst)
        self.assertEqual({k: v["weight"] for k, v in e.items()}, {a.addr: 1, b.addr: 3},
                         "the records' targets on the records' ports, with their weights; not the backup priority")

        # b's record changes port (to c's) and weight; a's weight changes too.
        at = dns.restart(hosts, (f"{SRV_NAME},a.{DOMAIN},{a.port},0,2",
                                 f"{SRV_NAME},b.{DOMAIN},{c.port},0,5", backup_srv))
        shown = self.wait_shown(sidecar, dst, {a.addr, c.addr}, at, "changed SRV record")
        served = self.wait_served(bg, "c", at, "changed SRV record", sidecar)
        drained = self.wait_drained(bg, "b", at, "changed SRV record", sidecar)
        print(f"\n  dns SRV changed: in /endpoints.json after {shown:.2f} s, new port served after {served:.2f} s, "
              f"old port's last answer after {drained:.2f} s", flush=True)
        for took in (shown, served, drained):
            self.assertLess(took, CHANGE_DEADLINE_S)
        weights = wait_until(lambda: {k: v["weight"] for k, v in self.endpoints(sidecar, dst).items()} == {a.addr: 2, c.addr: 5},
                             CHANGE_DEADLINE_S, interval=0.05)
        self.assertTrue(weights, f"weights not updated: {self.endpoints(sidecar, dst)}")

        bg.stop()
        self.assert_all_ok(bg.since(0), "requests failed while SRV records changed", sidecar)
        self.assertEqual(backup.count(), 0, "the backup priority got traffic while the primary resolved")
