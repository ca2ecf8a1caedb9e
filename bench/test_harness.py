#!/usr/bin/env python3
"""Self-tests of bench/harness.py's bookkeeping (no process is started, nothing is measured):
scenario selection, the table and the targets built from recorded results.

    python3 -m unittest bench/test_harness.py     (from the repository root)

The scenarios themselves are checked by running them (`bench/run.sh --short`); these tests
pin what a run cannot show by failing: a result recorded under one key and looked up under
another simply vanishes from the report.
"""

import contextlib
import io
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

    def test_allocation_pass_and_default(self):
        self.assertEqual(harness.parse_only("14a"), ["1", "4", "a"])
        self.assertEqual(harness.parse_only(",".join(harness.SCENARIOS))[-3:], ["10", "11", "a"])

    def test_unknown_scenario_is_refused(self):
        with self.assertRaises(ValueError):
            harness.parse_only("0")


class AuditScenario(unittest.TestCase):
    def test_audit_rows_reach_the_table_and_targets(self):
        b = FakeBench()
        self.addCleanup(b.cleanup)
        with contextlib.redirect_stdout(io.StringIO()):
            harness.s10_audit(b)
        self.assertEqual(b.errors, [])
        t = harness.table(b)
        for row in ("10 endpoint hit, audit off", "10 endpoint miss, audit fsync never"):
            self.assertIn(row, t)
        lines = "\n".join(harness.targets(b))
        self.assertIn("audit trail, endpoint hit, fsync = always", lines)
        self.assertIn("audit trail fsync = never", lines)


class Report(unittest.TestCase):
    """The table and targets from recorded results, as the scenarios record them."""

    def bench(self):
        b = FakeBench()
        self.addCleanup(b.cleanup)
        runs = {
            ("1", "nginx"): (100_000, 0.9, 0.6), ("1", "shim"): (80_000, 1.0, 0.9),
            ("1", "direct"): (160_000, None, 0.3), ("1", "l4-tokio"): (120_000, 0.96, 0.4),
            ("1", "l4-nginx"): (130_000, 0.91, 0.4),
            ("3", "nginx"): (70_000, 1.0, 0.7), ("3", "shim"): (77_000, 1.0, 0.8),
            ("6", "nginx"): (200_000, 1.0, 0.2), ("6", "shim"): (150_000, 1.0, 0.3),
            ("6user", "nginx"): (200_000, 1.0, 0.2), ("6user", "shim"): (100_000, 1.0, 0.5),
            ("11", "nginx"): (90_000, 1.0, 12.0), ("11", "shim"): (76_000, 1.0, 8.0),
            ("11", "direct"): (150_000, None, 5.0),
        }
        for (key, name), (rate, cpu, p99) in runs.items():
            for _ in range(2):
                b.record(key, name, rate=rate, p50=p99 / 2, p99=p99, cpu=cpu)
        b.extra["alloc"] = {
            "pass": dict(label="pass-through", per=7.5, requests=1000, scrape=20),
            "hit": dict(label="cache hit", per=12.25, requests=1000, scrape=20),
        }
        return b

    def test_targets(self):
        lines = "\n".join(harness.targets(self.bench()))
        # 0.8 x nginx with a worse p99
        self.assertIn("pass-through 1 KB: throughput 0.80x nginx (>= 1.0), p99 0.900 ms vs 0.600 ms (<=): NOT met", lines)
        # 12.5 µs against l4-nginx's 7.0 µs (0.91 / 130,000)
        self.assertIn("shim CPU/req vs floor 1.79x (12.5 µs vs l4-nginx 7.0 µs), nginx 1.29x (9.0 µs)", lines)
        self.assertIn("HTTP/2 1 KB: 1.10x nginx (>= 1.0): met", lines)
        self.assertIn("per-IP 429: 0.75x nginx limit_req (>= 0.8): NOT met", lines)
        self.assertIn("1,000 connections: shim 0.95x its 32-connection rate (>= 0.90), p99 8.000 ms (< 10 ms): met", lines)
        self.assertIn("allocations per request, pass-through: 7.5 (<= 8): met", lines)
        self.assertIn("allocations per request, cache hit: 12.2 (<= 10): NOT met", lines)

    def test_table(self):
        b = self.bench()
        t = harness.table(b)
        for row in ("6 per-IP 429", "6 per-user 429", "11 pass-through GET 1 KB, 1,000 conns", "l4-tokio", "l4-nginx"):
            self.assertIn(row, t)
        self.assertIn("| 1.79x ", t)  # the shim's CPU per request over the floor's
        a = harness.alloc_table(b)
        self.assertIn("12.2", a)
        self.assertIn("<= 10", a)

    def test_allocations_per_request(self):
        # Scrapes at 1000 and 1020 (one scrape: 20), after the run 1020 + 20 + 3000 requests x 3.
        per, scrape = harness.alloc_per_request(1000, 1020, 1020 + 20 + 9000, 3000)
        self.assertEqual((per, scrape), (3.0, 20))


if __name__ == "__main__":
    unittest.main()
