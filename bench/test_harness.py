#!/usr/bin/env python3
"""Self-tests of bench/harness.py's bookkeeping (no process is started, nothing is measured):
scenario selection, the table and the targets built from recorded results.

    python3 -m unittest bench/test_harness.py     (from the repository root)

The scenarios themselves are checked by running them (`bench/run.sh --short`); these tests
pin what a run cannot show by failing: a result recorded under one key and looked up under
another simply vanishes from the report.
"""

import os
import sys
import types
import unittest

sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

WRK_OUT = """Running 1s test @ http://127.0.0.1:1/x
  1 threads and 32 connections
  Latency Distribution
     50%  300.00us
     99%    1.50ms
  50000 requests in 1.00s, 60.00MB read
Requests/sec:  50000.00
"""


class FakeStandin:
    port = 1
    proc = None

    def restart(self):
        pass

    def stop(self):
        pass


class FakeBench(harness.Bench):
    """A Bench whose processes and load tools are canned: scenarios run through their
    bookkeeping only."""

    def __init__(self, **args):
        a = dict(rounds=2, secs=1, warm=1, short=True, keep=False, mem_rounds=1, standin="standin")
        a.update(args)
        super().__init__(types.SimpleNamespace(**a))
        self.standin = FakeStandin()

    def shim(self, up_port, trusted=False, tls=None, extra="", **limits):
        c = harness.Contender("shim", 2, None, 2)
        c.admin, c.tls_port = 3, None
        return c, None

    def wrk(self, *args, **kwargs):
        return harness.parse_wrk(WRK_OUT)

    def measure(self, contender, fn):
        return fn(), {"cpu": 0.5}

    def metrics(self, admin_port):
        return {"rcshim_audit_records_written_total": 10, "rcshim_audit_batches_total": 5}

    def stop(self, *procs):
        pass

    def cleanup(self):
        harness.shutil.rmtree(self.tmp, ignore_errors=True)


class Selection(unittest.TestCase):
    def test_single_digits_as_before(self):
        self.assertEqual(harness.parse_only("1458"), ["1", "4", "5", "8"])

    def test_two_digit_scenarios(self):
        self.assertEqual(harness.parse_only("10"), ["10"])
        self.assertEqual(harness.parse_only("1,10,11"), ["1", "10", "11"])

    def test_unknown_scenario_is_refused(self):
        with self.assertRaises(ValueError):
            harness.parse_only("0")


class AuditScenario(unittest.TestCase):
    def test_audit_rows_reach_the_table_and_targets(self):
        b = FakeBench()
        self.addCleanup(b.cleanup)
        harness.s10_audit(b)
        self.assertEqual(b.errors, [])
        t = harness.table(b)
        for row in ("10 endpoint hit, audit off", "10 endpoint miss, audit fsync never"):
            self.assertIn(row, t)
        lines = "\n".join(harness.targets(b))
        self.assertIn("audit trail, endpoint hit, fsync = always", lines)
        self.assertIn("audit trail fsync = never", lines)


if __name__ == "__main__":
    unittest.main()
