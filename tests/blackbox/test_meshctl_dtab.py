"""`meshctl dtab`: parse, lookup, eval, bind and delegate print exactly what other tools parse,
and exit 0, 1 (a binding or connection failure) or 2 (a syntax error). `delegate --admin`
is checked against a stand-in admin server that serves a canned `/delegator.json`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import http.server
from urllib.parse import parse_qs, urlsplit

from harness import LOOPBACK, BlackboxCase, meshctl_binary


class MeshctlDtab(BlackboxCase):
    def meshctl(self, *args: str, timeout: float = 20) -> tuple[int, str, str]:
        binary = meshctl_binary()
        self.assertTrue(binary.is_file(), f"meshctl binary {binary} not found (cargo build --examples)")
        env = dict(os.environ, NO_COLOR="1")
        env.pop("RUST_BACKTRACE", None)
        p = subprocess.run([str(binary), *args], capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def ok(self, *args: str) -> str:
        rc, out, err = self.meshctl(*args)
        self.assertEqual(rc, 0, f"meshctl {args}: {err}")
        return out

    def test_parse_prints_the_canonical_form(self) -> None:
        cases = [
            ("/svc => /#/fs; /svc/web => 0.7 * /a & 0.3 * /b # canary\n", "/svc=>/#/fs;/svc/web=>0.70*/a & 0.30*/b\n"),
            ("/a => (/b | /c) & /d | ~;", "/a=>(/b | /c) & /d | ~\n"),
            ("/a/*/c => /d", "/a/*/c=>/d\n"),
            ("", "\n"),
        ]
        for text, want in cases:
            with self.subTest(text=text):
                self.assertEqual(self.ok("dtab", "parse", text), want)

    def test_parse_error_exits_2_with_the_position(self) -> None:
        rc, out, err = self.meshctl("dtab", "parse", "/svc => /a;\n/svc x")
        self.assertEqual(rc, 2)
        self.assertEqual(out, "")
        self.assertEqual(err, "error: at offset 17: expected '=>', found 'x'\n  /svc x\n       ^\n")
        rc, _, err = self.meshctl("dtab", "parse", "/a => " + "(" * 100)
        self.assertEqual(rc, 2)
        self.assertIn("at offset 70", err)

    def test_lookup_is_one_step(self) -> None:
        dtab = "/svc => /#/fs; /svc/web => /svc/web-v2"
        self.assertEqual(self.ok("dtab", "lookup", "--dtab", dtab, "/svc/web/api"), "/svc/web-v2/api | /#/fs/web/api\n")
        self.assertEqual(self.ok("dtab", "lookup", "--dtab", dtab, "/svc/api"), "/#/fs/api\n")
        self.assertEqual(self.ok("dtab", "lookup", "--dtab", dtab, "/other"), "~\n")
        rc, _, err = self.meshctl("dtab", "lookup", "--dtab", dtab, "svc")
        self.assertEqual(rc, 2, err)

    def test_eval_prints_json(self) -> None:
        cases = [
            ("(~|$|/foo) & (/bar|/blah) & ~ & /FOO", ["/bar", "/FOO"]),
            ("~ | $ | /blah", []),
            ("! | /ok", None),
            ("~", None),
            ("/ok & !", ["/ok"]),
        ]
        for tree, want in cases:
            with self.subTest(tree=tree):
                out = self.ok("dtab", "eval", tree)
                self.assertEqual(json.loads(out), want)
        self.assertEqual(self.ok("dtab", "eval", "/bar & /FOO"), '["/bar","/FOO"]\n')
        self.assertEqual(self.ok("dtab", "eval", "!"), "null\n")

    def test_bind_prints_addresses_with_weights(self) -> None:
        out = self.ok("dtab", "bind", "--dtab", "/svc => 0.7*/$/inet/127.0.0.1/8080 & 0.3*/$/inet/127.0.0.2/9090", "/svc/web")
        self.assertEqual(
            out,
            '{"result":"bound","addrs":[{"addr":"127.0.0.1:8080","weight":0.7},{"addr":"127.0.0.2:9090","weight":0.3}]}\n',
        )
        out = self.ok("dtab", "bind", "--dtab", "/svc => /#/fs | /$/inet/127.0.0.1/80", "/svc/web")
        self.assertEqual(out, '{"result":"bound","addrs":[{"addr":"127.0.0.1:80","weight":1.0}]}\n')
        for dtab, want in [("/a => !", "fail"), ("/a => $", "empty"), ("/a => /$/nil", "empty"), ("/b => /c", "neg"), ("/a => /#/fs", "neg")]:
            with self.subTest(dtab=dtab):
                self.assertEqual(self.ok("dtab", "bind", "--dtab", dtab, "/a"), '{"result":"%s"}\n' % want)

    def test_bind_errors_exit_1(self) -> None:
        rc, out, err = self.meshctl("dtab", "bind", "--dtab", "/a => /b; /b => /a", "/a")
        self.assertEqual(rc, 1)
        self.assertEqual(out, "")
        self.assertIn("depth", err)
        rc, _, err = self.meshctl("dtab", "bind", "--dtab", "/a => /$/nonsense", "/a")
        self.assertEqual(rc, 1)
        self.assertIn("/$/nonsense", err)
        rc, _, err = self.meshctl("dtab", "bind", "--dtab", "/a => ", "/a")
        self.assertEqual(rc, 2, err)

    def test_delegate_explains_every_step(self) -> None:
        out = self.ok("dtab", "delegate", "--dtab", "/svc => /#/fs; /svc/web => /$/inet/127.0.0.1/80 | /svc/old", "/svc/web")
        self.assertEqual(
            out,
            "/svc/web  -> alt\n"
            "  /svc/web  via /svc/web=>/$/inet/127.0.0.1/80 | /svc/old  -> alt\n"
            "    /$/inet/127.0.0.1/80  -> bound 127.0.0.1:80\n"
            "    /svc/old\n"
            "      /#/fs/old  via /svc=>/#/fs  -> neg\n"
            "  /#/fs/web  via /svc=>/#/fs  -> neg\n",
        )
        out = self.ok("dtab", "delegate", "--dtab", "/a => /a", "/a")
        self.assertTrue(out.rstrip().endswith("-> error: max delegation depth 100 reached at /a"), out[-200:])

    def serve_admin(self, status: int, body: bytes) -> tuple[str, list[dict[str, list[str]]]]:
        """A stand-in admin server answering every GET with `status` and `body`; returns its
        address and the parsed queries it received."""
        seen: list[dict[str, list[str]]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                seen.append({"url_path": [url.path], **parse_qs(url.query)})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return f"{LOOPBACK}:{server.server_address[1]}", seen

    def test_delegate_admin_renders_the_proxys_answer(self) -> None:
        answer = {
            "path": "/svc/web",
            "dentry": None,
            "type": "delegate",
            "delegate": {
                "path": "/#/fs/web",
                "dentry": {"prefix": "/svc", "dst": "/#/fs"},
                "type": "bound",
                "bound": {"id": "/#/fs/web", "endpoints": 3},
            },
        }
        # The shape the sidecar's /delegator.json answers: the tree under "delegation".
        envelope = {"router": "default", "path": "/svc/web", "dtab": "/svc=>/#/fs", "delegation": answer}
        addr, seen = self.serve_admin(200, json.dumps(envelope).encode())
        out = self.ok("dtab", "delegate", "--admin", addr, "/svc/web", "--dtab", "/svc/web => /a & /b # x")
        self.assertEqual(out, "/svc/web\n  /#/fs/web  via /svc=>/#/fs  -> bound /#/fs/web (3 endpoints)\n")
        self.assertEqual(len(seen), 1)
        # The query survives percent-encoding: spaces, `&`, `#`, `=>` and `/` intact.
        self.assertEqual(seen[0], {"url_path": ["/delegator.json"], "path": ["/svc/web"], "dtab": ["/svc/web => /a & /b # x"]})

    def test_delegate_admin_failures_exit_1(self) -> None:
        addr, _ = self.serve_admin(400, b"bad dtab")
        rc, out, err = self.meshctl("dtab", "delegate", "--admin", addr, "/svc/web")
        self.assertEqual(rc, 1)
        self.assertIn("HTTP 400", err)
        self.assertIn("bad dtab", err)
        # Nothing listening.
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        rc, _, err = self.meshctl("dtab", "delegate", "--admin", f"{LOOPBACK}:{port}", "/svc/web")
        self.assertEqual(rc, 1, err)
        # Accepts but never answers: gives up after 5 s.
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind((LOOPBACK, 0))
        silent.listen(1)
        rc, _, err = self.meshctl("dtab", "delegate", "--admin", f"{LOOPBACK}:{silent.getsockname()[1]}", "/svc/web", timeout=15)
        self.assertEqual(rc, 1)
        self.assertIn("5s", err)
