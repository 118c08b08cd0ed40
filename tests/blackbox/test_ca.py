"""`meshctl ca`: the certificate authority's files, checked by a real X.509 implementation
(openssl): a root and an intermediate issue workload certificates whose chain verifies and
whose URI SAN is the SPIFFE ID; keys are private; IDs outside the trust domain are refused."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from harness import BlackboxCase, meshctl_binary, require_tool


class MeshctlCa(BlackboxCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="blackbox-ca-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.openssl = require_tool("openssl")

    def run_tool(self, *args: str, timeout: float = 20) -> tuple[int, str, str]:
        env = dict(os.environ, NO_COLOR="1")
        env.pop("RUST_BACKTRACE", None)
        p = subprocess.run(list(args), capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def meshctl(self, *args: str) -> tuple[int, str, str]:
        binary = meshctl_binary()
        self.assertTrue(binary.is_file(), f"meshctl binary {binary} not found (cargo build --examples)")
        return self.run_tool(str(binary), *args)

    def ok(self, *args: str) -> str:
        rc, out, err = self.meshctl(*args)
        self.assertEqual(rc, 0, f"meshctl {args}: {err}")
        return out

    def openssl_out(self, *args: str) -> str:
        rc, out, err = self.run_tool(self.openssl, *args)
        self.assertEqual(rc, 0, f"openssl {args}: {out}{err}")
        return out

    def test_root_issues_a_verifiable_workload_certificate(self) -> None:
        ca, web = self.tmp / "ca", self.tmp / "web"
        self.ok("ca", "init", "--trust-domain", "cluster.local", "--out", str(ca))
        self.assertEqual(stat.S_IMODE((ca / "ca.key").stat().st_mode), 0o600)
        self.ok("ca", "issue", "--ca", str(ca), "--id", "spiffe://cluster.local/ns/default/sa/web", "--out", str(web))
        for name in ("cert.pem", "key.pem", "ca.pem"):
            self.assertTrue((web / name).is_file(), name)
        self.assertEqual(stat.S_IMODE((web / "key.pem").stat().st_mode), 0o600)
        out = self.openssl_out("verify", "-CAfile", str(web / "ca.pem"), str(web / "cert.pem"))
        self.assertIn("OK", out)
        text = self.openssl_out("x509", "-in", str(web / "cert.pem"), "-noout", "-ext", "subjectAltName,extendedKeyUsage,keyUsage")
        self.assertIn("URI:spiffe://cluster.local/ns/default/sa/web", text)
        self.assertIn("TLS Web Client Authentication", text)
        self.assertIn("TLS Web Server Authentication", text)
        # The key is an ECDSA P-256 key that matches the certificate.
        key = self.openssl_out("pkey", "-in", str(web / "key.pem"), "-pubout")
        cert_key = self.openssl_out("x509", "-in", str(web / "cert.pem"), "-noout", "-pubkey")
        self.assertEqual(key, cert_key)
        self.assertIn("prime256v1", self.openssl_out("pkey", "-in", str(web / "key.pem"), "-noout", "-text"))
        # Default lifetime 24 h, as `ca inspect` and openssl both see it.
        inspect = self.ok("ca", "inspect", str(web / "cert.pem"))
        self.assertIn("identity:   spiffe://cluster.local/ns/default/sa/web", inspect)
        self.assertIn("issuer:     O=mesh, CN=mesh root CA cluster.local", inspect)
        rc, _, _ = self.run_tool(self.openssl, "x509", "-in", str(web / "cert.pem"), "-noout", "-checkend", str(23 * 3600))
        self.assertEqual(rc, 0, "valid for at least 23 h more")
        rc, _, _ = self.run_tool(self.openssl, "x509", "-in", str(web / "cert.pem"), "-noout", "-checkend", str(25 * 3600))
        self.assertEqual(rc, 1, "expires within 25 h")

    def test_intermediate_chain_verifies_against_the_root(self) -> None:
        ca, inter, api = self.tmp / "ca", self.tmp / "int", self.tmp / "api"
        self.ok("ca", "init", "--trust-domain", "td.example", "--out", str(ca))
        self.ok("ca", "init", "--ca", str(ca), "--out", str(inter))
        self.ok("ca", "issue", "--ca", str(inter), "--id", "spiffe://td.example/ns/prod/sa/api", "--out", str(api), "--lifetime", "2h")
        # cert.pem carries the intermediate; ca.pem is the root alone.
        self.assertEqual((api / "cert.pem").read_text().count("BEGIN CERTIFICATE"), 2)
        self.assertEqual((api / "ca.pem").read_text(), (ca / "ca.pem").read_text())
        out = self.openssl_out("verify", "-CAfile", str(api / "ca.pem"), "-untrusted", str(api / "cert.pem"), str(api / "cert.pem"))
        self.assertIn("OK", out)
        # A certificate from another CA does not verify against this bundle.
        other = self.tmp / "other"
        self.ok("ca", "init", "--trust-domain", "td.example", "--out", str(other))
        rc, out, err = self.run_tool(self.openssl, "verify", "-CAfile", str(other / "ca.pem"), "-untrusted", str(api / "cert.pem"), str(api / "cert.pem"))
        self.assertNotEqual(rc, 0, out + err)

    def test_refusals_name_what_is_wrong(self) -> None:
        ca = self.tmp / "ca"
        self.ok("ca", "init", "--trust-domain", "cluster.local", "--out", str(ca))
        cases = [
            (["--id", "spiffe://other.example/ns/a/sa/b"], "outside this CA's trust domain cluster.local"),
            (["--id", "http://cluster.local/ns/a/sa/b"], "invalid SPIFFE ID"),
            (["--id", "spiffe://cluster.local/ns/a/sa/b", "--lifetime", "0s"], "invalid certificate lifetime"),
        ]
        for extra, why in cases:
            with self.subTest(extra=extra):
                rc, out, err = self.meshctl("ca", "issue", "--ca", str(ca), "--out", str(self.tmp / "x"), *extra)
                self.assertEqual(rc, 1, out + err)
                self.assertEqual(out, "")
                self.assertIn(why, err)
                self.assertFalse((self.tmp / "x" / "key.pem").exists(), "nothing written")
        rc, _, err = self.meshctl("ca", "init", "--trust-domain", "Not A Domain!", "--out", str(self.tmp / "y"))
        self.assertEqual(rc, 1)
        self.assertIn("invalid trust domain", err)
        rc, _, err = self.meshctl("ca", "issue", "--ca", str(self.tmp / "missing"), "--id", "spiffe://cluster.local/ns/a/sa/b", "--out", str(self.tmp / "z"))
        self.assertEqual(rc, 1)
        self.assertIn("ca.pem", err)
        (self.tmp / "garbage.pem").write_text("not a certificate\n")
        rc, _, err = self.meshctl("ca", "inspect", str(self.tmp / "garbage.pem"))
        self.assertEqual(rc, 1)
        self.assertIn("garbage.pem", err)
