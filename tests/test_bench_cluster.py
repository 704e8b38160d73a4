"""Smoke test of bench/cluster.py: tiny counts against real relayd processes
and a real three-node engine; parseable figures for both systems. No timing
is asserted: the figures are in docs/PERFORMANCE.md."""
import os
import subprocess
import sys

from twisted.trial import unittest

from bench.report import parse
from tests.engine import NATS_SERVER, REDIS_SERVER, engine_missing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    done = subprocess.run([sys.executable, "-m", "bench.cluster", *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)
    output = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        raise AssertionError(f"bench.cluster exited with {done.returncode}:\n{output}")
    return output


class ClusterBenchTests(unittest.TestCase):
    def setUp(self):
        reason = engine_missing(NATS_SERVER)
        if reason:
            raise unittest.SkipTest(reason)

    def test_load_reports_one_process_and_two_nodes(self):
        output = run("load", "--messages", "20", "--window", "5", "--pairs", "10",
                     "--per-pair", "2", "--seconds", "60")
        lines = [parse(line) for line in output.splitlines() if line.strip()]
        figures = {(bench, fields.get("system")): fields for bench, fields in lines}
        for bench in ("cluster_broadcast", "cluster_pairs"):
            self.assertEqual(figures[bench, "single0"]["nodes"], "1", output)
            self.assertEqual(figures[bench, "cluster0"]["nodes"], "2", output)
            self.assertEqual(figures[bench, "cluster0"]["errors"], "0", output)
            self.assertGreater(float(figures[bench, "cluster0"]["msgs_per_s"]), 0)
        self.assertEqual(len([b for b, _ in lines if b == "cluster_ratio"]), 2, output)

    def test_connections_reports_one_process_and_two_nodes(self):
        output = run("connections", "--count", "30", "--per-client", "20")
        held = {fields["system"]: fields for bench, fields in
                (parse(line) for line in output.splitlines() if line.strip())
                if bench == "cluster_connections"}
        self.assertEqual((held["single0"]["held"], held["cluster0"]["held"]), ("30", "60"),
                         output)
        self.assertIn("two_nodes_over_one=2.000", output)

    def test_engines_spike_measures_both(self):
        reason = engine_missing(REDIS_SERVER)
        if reason:
            raise unittest.SkipTest(reason)
        output = run("engines", "--count", "50", "--window", "10")
        engines = {fields["engine"]: fields for bench, fields in
                    (parse(line) for line in output.splitlines() if line.strip())
                    if bench == "cluster_engine"}
        self.assertEqual(sorted(engines), ["nats_jetstream_r3", "redis_replica_wait"], output)
        for figures in engines.values():
            self.assertEqual(figures["writes"], "50")
