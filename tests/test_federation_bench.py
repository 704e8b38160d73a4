"""Smoke test of ``bench.federation`` with tiny counts: it runs three real
relays and prints parseable figures. No timing is asserted."""
import os
import subprocess
import sys

from twisted.trial import unittest

from bench.report import parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FederationBenchTests(unittest.TestCase):
    def test_prints_every_figure(self):
        done = subprocess.run(
            [sys.executable, "-m", "bench.federation", "--seconds", "0.3", "--warmup", "0.1",
             "--window", "200", "--repeat", "1", "--rate", "50", "--latency-seconds", "0.5",
             "--mesh", "0"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        output = done.stdout.decode("utf-8", "replace")
        self.assertEqual(done.returncode, 0, output)
        lines = [parse(line) for line in output.splitlines() if line.strip()]
        found = {(bench, fields.get("hops")) for bench, fields in lines}
        for want in [("federation_throughput", "2"), ("federation_latency", "0"),
                     ("federation_latency", "2"), ("federation_flood", None)]:
            self.assertIn(want, found, output)
        for hops in ("0", "2"):     # one relay alone, then the line
            [run] = [f for b, f in lines if b == "federation_throughput" and f.get("hops") == hops]
            self.assertEqual((run["lost"], run["dropped"]), ("0", "0"))
            self.assertGreater(float(run["delivered_per_s"]), 0)
        [median] = [f for b, f in lines if b == "federation_throughput" and f.get("run") == "median"]
        self.assertEqual(median["lost"], "0")
        flood = [f for b, f in lines if b == "federation_flood"][0]
        self.assertEqual(float(flood["frames_per_msg"]), 2.0)
