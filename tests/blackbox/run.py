#!/usr/bin/env python3
"""Black-box tests of the mesh sidecar binary.

Run from the repository root:

    cargo build --examples
    python3 tests/blackbox/run.py                 # everything
    python3 tests/blackbox/run.py -k shutdown     # tests whose name contains "shutdown"

The binary comes from $MESH_SIDECAR (default target/debug/examples/sidecar). External tools
(curl, promtool, nghttpd, openssl, dnsmasq) must be installed; a missing one fails the tests that need it.
Exits 0 when every test passed, 1 otherwise.

A hang fails rather than stalls: each test has --test-timeout seconds (it then errors with
the stack where it was stuck, and its clean-ups run), and the whole run has --total-timeout
seconds, after which every process it started is killed and the run exits 1.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent


class TestTimeout(Exception):
    """Raised inside a test that ran longer than its time limit."""


class TimedResult(unittest.TextTestResult):
    """Arms SIGALRM for each test: a test stuck in a blocking call gets TestTimeout raised in it."""

    limit_s = 120.0

    def startTest(self, test):  # noqa: N802 (unittest's name)
        def expired(signum, frame):
            stack = "".join(traceback.format_stack(frame))
            raise TestTimeout(f"{test.id()} ran longer than {self.limit_s:g}s; it was here:\n{stack}")

        signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, self.limit_s)
        super().startTest(test)

    def stopTest(self, test):  # noqa: N802
        signal.setitimer(signal.ITIMER_REAL, 0)
        super().stopTest(test)


def start_watchdog(total_s: float, harness) -> None:
    """After total_s, dump every thread's stack, kill the suite's processes and exit 1."""

    def fire() -> None:
        print(f"\nblack-box suite FAILED: still running after {total_s:g}s (--total-timeout); stacks:", flush=True)
        faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
        harness.kill_leftovers()
        sys.stdout.flush()
        os._exit(1)

    t = threading.Timer(total_s, fire)
    t.daemon = True
    t.start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", dest="patterns", action="append", default=[], help="only tests whose id contains this substring (repeatable)")
    parser.add_argument("-f", "--failfast", action="store_true", help="stop at the first failure")
    parser.add_argument("-q", "--quiet", action="store_true", help="one character per test")
    parser.add_argument("--test-timeout", type=float, default=120, metavar="S", help="time limit of one test (default 120)")
    parser.add_argument("--total-timeout", type=float, default=900, metavar="S", help="time limit of the whole run (default 900)")
    opts = parser.parse_args()

    sys.dont_write_bytecode = True  # keep the source tree clean
    sys.path.insert(0, str(HERE))
    import harness  # noqa: E402  (needs the path above)

    print(f"mesh black-box suite: sidecar binary {harness.sidecar_binary()}", flush=True)
    loader = unittest.TestLoader()
    if opts.patterns:
        loader.testNamePatterns = [f"*{p}*" for p in opts.patterns]
    suite = loader.discover(start_dir=str(HERE), pattern="test_*.py", top_level_dir=str(HERE))
    if suite.countTestCases() == 0:
        print("no tests selected", file=sys.stderr)
        return 1
    TimedResult.limit_s = opts.test_timeout
    runner = unittest.TextTestRunner(verbosity=1 if opts.quiet else 2, failfast=opts.failfast, stream=sys.stdout,
                                     resultclass=TimedResult)
    start_watchdog(opts.total_timeout, harness)
    started = time.monotonic()
    result = runner.run(suite)
    elapsed = time.monotonic() - started
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped) - len(result.expectedFailures)
    print(f"black-box summary: {result.testsRun} run, {passed} passed, {len(result.failures)} failed, "
          f"{len(result.errors)} errors, {len(result.skipped)} skipped in {elapsed:.1f}s", flush=True)
    if not result.wasSuccessful():
        for test, _ in result.failures + result.errors:
            print(f"  FAILED: {test.id()}")
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
