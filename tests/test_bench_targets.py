"""The targets table of ``make bench``: how a row is judged, and that a
short run of the whole harness (``python -m bench --short``) prints a row
for every target of issues 9, 12 and 15.  No timing is asserted: the
short run's figures mean nothing, only that each benchmark produced them."""
import os
import subprocess
import sys

from twisted.trial import unittest

from bench import targets, udp_relay
from bench.targets import TARGETS, Row, Target

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table_rows(text):
    """``{figure cell: cells}`` of the Markdown table in ``text``."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| #"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[2]] = cells
    return rows


def failures(output):
    """The tracebacks of the benchmarks that failed in ``output``, each up to
    the line that reports the failure."""
    found = []
    for part in output.split("Traceback (most recent call last):")[1:]:
        found.append("Traceback (most recent call last):" + part.split("\nbench failed=")[0])
    return "\n".join(found)[-6000:] + "\n"


class JudgeTests(unittest.TestCase):
    def test_ratio_at_least(self):
        target = Target("tcp_fanout", 9, "f", "msgs/s", "mosquitto", ">=", 1.5, by_ratio=True)
        self.assertTrue(target.met(150, 100))
        self.assertFalse(target.met(149, 100))
        self.assertFalse(target.met(150, None), "no reference: not met")
        self.assertFalse(target.met(150, 0))
        self.assertEqual(target.goal(), ">= 1.5x mosquitto")

    def test_ratio_at_most(self):
        target = Target("tcp_latency", 9, "p99", "ms", "mosquitto", "<=", 1.0, by_ratio=True)
        self.assertTrue(target.met(1.0, 1.0))
        self.assertFalse(target.met(1.2, 1.0))

    def test_absolute_bounds(self):
        under = Target("restart", 9, "restart", "s", "", "<=", 2.0)
        self.assertTrue(under.met(2.0, None))
        self.assertFalse(under.met(2.01, None))
        self.assertEqual(under.goal(), "<= 2 s")
        zero = Target("crash", 9, "lost", "", "", "==", 0)
        self.assertTrue(zero.met(0, None))
        self.assertFalse(zero.met(1, None))
        printed = Target("libp2p_hub", 12, "dht", "/s", "js-libp2p", ">", 0, text="printed")
        self.assertFalse(printed.met(0.0, 50))
        self.assertTrue(printed.met(0.5, None), "no ratio: the reference is only shown")
        self.assertFalse(printed.met(None, 50))

    def test_a_row_whose_conditions_failed_is_missed_whatever_the_figure(self):
        self.assertEqual(Row("restart", 0.5).verdict, "met")
        self.assertEqual(Row("restart", 0.5, valid=False).verdict,
                         "MISSED (run outside the target's conditions)")
        self.assertEqual(Row("restart", 3.0).verdict, "MISSED")
        self.assertEqual(Row("restart", ran=False).verdict, "MISSED (not run)")

    def test_table_lists_every_target_of_the_benchmarks_run(self):
        self.addCleanup(targets.ROWS.clear)
        targets.ROWS.clear()
        targets.record("fanout_10", 300.0, 100.0, note="3 runs")
        targets.record("crash_lost", 2, note="6 kills")
        targets.record("fanout_10_intact", 0, note="200 in flight", valid=False)
        rows = table_rows(targets.table(["tcp_fanout", "crash"]))
        wanted = [t.figure for t in TARGETS.values() if t.bench in ("tcp_fanout", "crash")]
        self.assertEqual(sorted(figure.split(" [")[0] for figure in rows), sorted(wanted))
        fanout = rows[TARGETS["fanout_10"].figure + " [3 runs]"]
        self.assertEqual(fanout[3:], ["300 msgs/s", "100 (mosquitto)", "3.00", ">= 1.5x mosquitto",
                                      "met"])
        crash = rows[TARGETS["crash_lost"].figure + " [6 kills]"]
        self.assertEqual(crash[-1], "MISSED")
        invalid = rows[TARGETS["fanout_10_intact"].figure + " [200 in flight]"]
        self.assertEqual(invalid[3:], ["0", "-", "", "== 0", "MISSED (run outside the target's conditions)"])
        not_run = rows[TARGETS["fanout_100"].figure]
        self.assertEqual((not_run[3], not_run[-1]), ("-", "MISSED (not run)"))

    def test_a_cpu_time_too_short_to_see_gives_no_figure_and_a_missed_row(self):
        self.addCleanup(targets.ROWS.clear)
        targets.ROWS.clear()
        self.assertIsNone(udp_relay.per_cpu_second(10000, 0.0))
        self.assertEqual(udp_relay.compared(300000.0, None, 0.5)["result"], "MISSED")
        self.assertEqual(udp_relay.compared(300000.0, 500000.0, 0.5)["result"], "met")
        targets.record("udp_10k", 300000.0, None, note="coturn 0 %")
        row = table_rows(targets.table(["udp_relay"]))[TARGETS["udp_10k"].figure + " [coturn 0 %]"]
        self.assertEqual((row[4], row[-1]), ("- (no coturn figure)", "MISSED"))


class ShortRunTests(unittest.TestCase):
    def test_every_target_gets_a_row(self):
        done = subprocess.run([sys.executable, "-m", "bench", "--short"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        output = done.stdout.decode("utf-8", "replace")
        self.assertEqual(done.returncode, 0, failures(output) + output[-3000:])
        table = output[output.index("Targets (issues 9, 12, 15)"):]
        rows = table_rows(table)
        self.assertEqual(len(rows), len(TARGETS), table)
        for figure, cells in rows.items():
            self.assertNotEqual(cells[-1], "MISSED (not run)", figure)
            self.assertNotEqual(cells[3], "-", figure)
        for key in TARGETS:
            self.assertIn(f"target key={key} ", output)
