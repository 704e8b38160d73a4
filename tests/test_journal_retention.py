"""Segment rolling and pruning by age and by size."""
import os

from twisted.trial import unittest

from relayd.journal import retention, segments
from tests.test_journal import JournalTestMixin, line, read_lines, segment_files


class SelectTests(unittest.TestCase):

    def test_by_age_never_the_active_segment(self):
        listing = [("a", 10, 0.0), ("b", 10, 50.0), ("c", 10, 99.0), ("d", 10, 1.0)]
        self.assertEqual(retention.select(listing, "d", 100.0, 40.0, 0),
                         [("a", "age"), ("b", "age")])

    def test_by_size_oldest_first(self):
        listing = [("a", 10, 0.0), ("b", 10, 0.0), ("c", 10, 0.0), ("d", 10, 0.0)]
        self.assertEqual(retention.select(listing, "d", 1.0, 0, 25),
                         [("a", "size"), ("b", "size")])

    def test_active_segment_survives_even_over_size(self):
        listing = [("a", 10, 0.0), ("b", 100, 0.0)]
        self.assertEqual(retention.select(listing, "b", 1.0, 0, 50), [("a", "size")])

    def test_age_then_size(self):
        listing = [("a", 10, 0.0), ("b", 10, 90.0), ("c", 10, 95.0), ("d", 10, 99.0)]
        self.assertEqual(retention.select(listing, None, 100.0, 50.0, 15),
                         [("a", "age"), ("b", "size"), ("c", "size")])

    def test_zero_switches_a_rule_off(self):
        listing = [("a", 10, 0.0), ("b", 10, 0.0)]
        self.assertEqual(retention.select(listing, None, 1e9, 0, 0), [])


class NamingTests(unittest.TestCase):

    def test_lexical_order_is_write_order(self):
        names = [segments.segment_name(i) for i in (1, 2, 9, 10, 11, 100, 12345)]
        self.assertEqual(sorted(names), names)
        self.assertEqual([segments.segment_index(n) for n in names], [1, 2, 9, 10, 11, 100, 12345])

    def test_other_files_are_not_segments(self):
        for name in ("relay_log.jsonl.bak", "x.jsonl", "relay_log.1.json", "relay_log..jsonl"):
            self.assertIsNone(segments.segment_index(name), name)
        self.assertEqual(segments.segment_index("relay_log.jsonl"), 0)


class RollingAndPruningTests(JournalTestMixin, unittest.TestCase):

    def fill(self, journal, count, size=100):
        """Write ``count`` batches, one segment each (segment_size is one batch)."""
        for n in range(count):
            journal.append(line(n) + b" " * size)
            self.clock.advance(0)
            self.clock.advance(10)

    def test_segments_roll_past_segment_size(self):
        journal = self.make(segment_size=250)
        for n in range(10):
            journal.append(line(n) + b" " * 100)
            self.clock.advance(0)
        names = segment_files(self.directory)
        self.assertEqual(len(names), 5)
        self.assertEqual(names, [segments.segment_name(i) for i in range(1, 6)])
        self.assertEqual(read_lines(self.directory), [line(n) + b" " * 100 for n in range(10)])
        self.assertEqual(journal.stats()["segments"], 5)
        self.assertEqual(journal.stats()["bytes"], sum(
            os.path.getsize(os.path.join(self.directory, n)) for n in names))

    def test_prune_by_age(self):
        journal = self.make(segment_size=1, retention=25)
        self.fill(journal, 4)        # last records at t = 0, 10, 20, 30; now = 40
        summary = self.successResultOf(journal.prune())
        self.assertEqual([r["segment"] for r in summary["removed"]],
                         [segments.segment_name(1), segments.segment_name(2)])
        self.assertEqual({r["reason"] for r in summary["removed"]}, {"age"})
        self.assertEqual(segment_files(self.directory),
                         [segments.segment_name(3), segments.segment_name(4)])
        self.assertEqual((summary["segments"], journal.stats()["segments"]), (2, 2))
        self.assertEqual(self.registry.get_sample_value("relayd_journal_pruned_segments_total"), 2)

    def test_prune_by_size_keeps_the_active_segment(self):
        journal = self.make(segment_size=10 ** 6, max_size=1)
        self.fill(journal, 3)
        summary = self.successResultOf(journal.prune())
        self.assertEqual(summary["removed"], [])
        self.assertEqual(summary["active"], segments.segment_name(1))

    def test_prune_by_size_oldest_first(self):
        journal = self.make(segment_size=1)
        self.fill(journal, 5)
        size = os.path.getsize(os.path.join(self.directory, segments.segment_name(1)))
        journal.max_size = 2 * size
        summary = self.successResultOf(journal.prune())
        self.assertEqual([r["segment"] for r in summary["removed"]],
                         [segments.segment_name(i) for i in (1, 2, 3)])
        self.assertEqual(summary["removed_bytes"], 3 * size)
        self.assertEqual(summary["bytes"], 2 * size)

    def test_pruning_runs_on_a_timer(self):
        journal = self.make(segment_size=1, retention=15, prune_interval=60)
        self.fill(journal, 3)        # t = 0, 10, 20; now = 30
        self.assertEqual(len(segment_files(self.directory)), 3)
        self.clock.advance(30)       # t = 60: all three are older than 15 s
        self.assertEqual(segment_files(self.directory), [])
        self.assertEqual(self.registry.get_sample_value("relayd_journal_prunes_total"), 2)

    def test_old_segments_found_at_start_are_aged_by_mtime(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        path = os.path.join(self.directory, segments.segment_name(1))
        with open(path, "wb") as f:
            f.write(line(1) + b"\n")
        os.utime(path, (100, 100))
        journal = self.make(retention=50)
        self.clock.advance(149)
        self.assertEqual(self.successResultOf(journal.prune())["removed"], [])
        self.clock.advance(2)
        self.assertEqual(len(self.successResultOf(journal.prune())["removed"]), 1)

    def test_prune_notices_files_removed_by_hand(self):
        journal = self.make(segment_size=1)
        self.fill(journal, 3)
        os.remove(os.path.join(self.directory, segments.segment_name(1)))
        summary = self.successResultOf(journal.prune())
        self.assertEqual((summary["segments"], journal.stats()["segments"]), (2, 2))
