#!/usr/bin/env python3
"""Black-box tests of the mesh sidecar binary.

Run from the repository root:

    cargo build --examples
    python3 tests/blackbox/run.py                 # everything
    python3 tests/blackbox/run.py -k shutdown     # tests whose name contains "shutdown"

The binary comes from $MESH_SIDECAR (default target/debug/examples/sidecar). External tools
(curl, promtool, nghttpd) must be installed; a missing one fails the tests that need it.
Exits 0 when every test passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", dest="patterns", action="append", default=[], help="only tests whose id contains this substring (repeatable)")
    parser.add_argument("-f", "--failfast", action="store_true", help="stop at the first failure")
    parser.add_argument("-q", "--quiet", action="store_true", help="one character per test")
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
    runner = unittest.TextTestRunner(verbosity=1 if opts.quiet else 2, failfast=opts.failfast, stream=sys.stdout)
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
