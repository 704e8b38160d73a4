"""Start-up replay: torn and corrupt lines are skipped, never fatal, nothing after them lost."""
import errno
import io
import json
import os

from twisted.logger import capturedLogs
from twisted.trial import unittest

from relayd.journal import record, replay as replay_module, segments
from relayd.journal.replay import check
from tests.test_journal import JournalTestMixin, line, read_lines, segment_files


def good(n):
    return line(n) + b"\n"


class CheckTests(unittest.TestCase):

    def test_good_line(self):
        self.assertEqual(check(good(1)), (json.loads(line(1)), None))

    def test_bad_lines(self):
        cases = {
            b'{"n": 1': "torn line: no newline at end of segment",
            b'{"n": 1\n': "invalid JSON",
            b"\x00\x00\x00\n": "invalid JSON",
            b'{"n": "\xff\xfe"}\n': "invalid UTF-8",
            b'{"n": ' + b"[" * 5000 + b"\n": "invalid JSON",
            b"[1, 2]\n": "not a JSON object",
            b'"text"\n': "not a JSON object",
            b"\n": "empty line",
            b"   \n": "empty line",
        }
        for raw, reason in cases.items():
            self.assertEqual(check(raw), (None, reason), raw)


class SegmentFiles(JournalTestMixin):
    """Writes segment files by hand, then replays them through a Journal."""

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def write_segment(self, index, data):
        name = segments.segment_name(index)
        with open(os.path.join(self.directory, name), "wb") as f:
            f.write(data)
        return name

    def replayed(self):
        return [r["n"] for r in self.consumer.records]


class ReplayTests(SegmentFiles, unittest.TestCase):

    def test_truncated_last_line_is_skipped_and_reported(self):
        whole = good(1) + good(2) + good(3)
        name = self.write_segment(1, whole[:-9])
        with capturedLogs() as events:
            journal = self.make()
        self.assertEqual(self.replayed(), [1, 2])
        report = self.consumer.report
        self.assertEqual(report.skipped, [(name, 3, "torn line: no newline at end of segment")])
        self.assertEqual((report.records, report.segments), (2, 1))
        warnings = [e for e in events if e.get("segment") == name and e.get("line") == 3]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(journal.stats()["torn_lines_at_start"], 1)
        self.assertEqual(self.registry.get_sample_value("relayd_journal_torn_lines_total"), 1)

    def test_garbage_in_the_middle_keeps_everything_after_it(self):
        first = self.write_segment(1, good(1) + b"#garbage\n" + good(2) + b'{"n": "\xc3\x28"}\n'
                                   + good(3) + b"[4]\n" + b"\n" + good(4))
        second = self.write_segment(2, b'{"n": 5, "torn' + good(6) + good(7))
        self.make()
        self.assertEqual(self.replayed(), [1, 2, 3, 4, 7])
        self.assertEqual(self.consumer.report.skipped, [
            (first, 2, "invalid JSON"), (first, 4, "invalid UTF-8"),
            (first, 6, "not a JSON object"), (first, 7, "empty line"),
            (second, 1, "invalid JSON")])
        self.assertEqual(self.consumer.report.segments, 2)

    def test_segments_replay_in_index_order_seed_log_first(self):
        with open(os.path.join(self.directory, "relay_log.jsonl"), "wb") as f:
            f.write(good(0))
        self.write_segment(10, good(10))
        self.write_segment(9, good(9))
        with open(os.path.join(self.directory, "notes.txt"), "wb") as f:
            f.write(b"not a segment\n")
        self.make()
        self.assertEqual(self.replayed(), [0, 9, 10])

    def test_writes_after_a_torn_tail_go_to_a_new_segment(self):
        self.write_segment(1, good(1) + b'{"n": 2, "bo')
        journal = self.make()
        journal.append(line(3))
        self.clock.advance(0)
        self.successResultOf(journal.stopService())
        self.assertEqual(segment_files(self.directory),
                         [segments.segment_name(1), segments.segment_name(2)])
        self.make()
        self.assertEqual(self.replayed(), [1, 3])
        self.assertEqual(len(self.consumer.report.skipped), 1)
        self.assertEqual(read_lines(self.directory)[-1], line(3))

    def test_a_record_the_consumer_rejects_is_skipped(self):
        self.write_segment(1, good(1) + good(2) + good(3))

        class Picky:
            records = []
            report = None

            def restore(self, record):
                if record["n"] == 2:
                    raise KeyError("to")
                self.records.append(record)

            def restore_done(self, report):
                self.report = report
        journal = self.make(start=False)
        journal.consumer = picky = Picky()
        journal.startService()
        self.addCleanup(self.stop, journal)
        self.assertEqual([r["n"] for r in picky.records], [1, 3])
        self.assertEqual(picky.report.skipped[0][1:], (2, "rejected by the consumer: KeyError"))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_empty_directory(self):
        self.make()
        report = self.consumer.report
        self.assertEqual((report.records, report.skipped, report.segments), (0, [], 0))

    def test_an_unreadable_segment_is_reported_and_the_rest_replayed(self):
        self.write_segment(1, good(1))
        bad = self.write_segment(2, good(2) + good(22))
        self.write_segment(3, good(3))

        class FailingRead(io.BytesIO):
            """Reads one line, then fails like a bad sector."""

            def readline(self, limit=-1):
                if self.tell():
                    raise OSError(errno.EIO, "Input/output error")
                return super().readline(limit)

        def fake_open(path, mode):
            if path.endswith(bad):
                return FailingRead(good(2) + good(22))
            return open(path, mode)
        replay_module.open = fake_open      # shadows the builtin in that module only
        self.addCleanup(delattr, replay_module, "open")
        self.make()
        self.assertEqual(self.replayed(), [1, 2, 3])
        self.assertEqual(self.consumer.report.skipped, [(bad, 2, "unreadable: Input/output error")])

    def test_an_overlong_line_is_skipped_without_reading_it_whole(self):
        self.patch(replay_module, "MAX_LINE", 100)
        name = self.write_segment(1, good(1) + b"\0" * 1000 + b"\n" + good(2) + b"\0" * 500)
        self.make()
        self.assertEqual(self.replayed(), [1, 2])
        self.assertEqual(self.consumer.report.skipped,
                         [(name, 2, "line too long"), (name, 4, "line too long")])


def framed(seq, n):
    return record.frame(seq, line(n))


class IntegrityTests(SegmentFiles, unittest.TestCase):
    """Checksums and sequence numbers: what replay reports, and what it never delivers."""

    def test_a_flipped_bit_in_a_body_is_reported_and_not_delivered(self):
        data = bytearray(framed(1, 1) + framed(2, 2) + framed(3, 3))
        at = len(framed(1, 1)) + framed(2, 2).index(b"xxx")
        data[at] ^= 0x01                      # "x" -> "y": still valid JSON
        name = self.write_segment(1, bytes(data))
        with capturedLogs() as events:
            journal = self.make()
        self.assertEqual(self.replayed(), [1, 3])
        report = self.consumer.report
        self.assertEqual(report.skipped, [(name, 2, "checksum mismatch")])
        self.assertEqual(report.gaps, [(2, 2, name, 3)])
        self.assertTrue(any(e.get("reason") == "checksum mismatch" and e.get("segment") == name
                            for e in events))
        value = self.registry.get_sample_value
        self.assertEqual(value("relayd_journal_torn_lines_total"), 1)
        self.assertEqual(value("relayd_journal_missing_records_total"), 1)
        journal.append(line(4))
        self.clock.advance(0)
        self.successResultOf(journal.stopService())
        self.make()
        self.assertEqual(self.replayed(), [1, 3, 4], "new records follow seq 3")
        self.assertEqual(self.consumer.report.gaps, [(2, 2, name, 3)])

    def test_a_flipped_bit_in_a_seq_is_caught(self):
        data = bytearray(framed(1, 1) + framed(2, 2) + framed(3, 3))
        data[len(framed(1, 1))] ^= 0x04     # "2" -> "6"
        name = self.write_segment(1, bytes(data))
        self.make()
        self.assertEqual(self.replayed(), [1, 3])
        self.assertEqual(self.consumer.report.skipped, [(name, 2, "checksum mismatch")])

    def test_a_deleted_segment_is_reported_by_name_with_its_records(self):
        self.write_segment(1, framed(1, 1) + framed(2, 2))
        gone = segments.segment_name(2)
        third = self.write_segment(3, framed(5, 5) + framed(6, 6))
        with capturedLogs() as events:
            journal = self.make()
        self.assertEqual(self.replayed(), [1, 2, 5, 6])
        report = self.consumer.report
        self.assertEqual(report.missing_segments, [gone])
        self.assertEqual(report.gaps, [(3, 4, third, 1)])
        self.assertEqual(report.skipped, [])
        self.assertTrue(any(e.get("segment") == gone for e in events))
        value = self.registry.get_sample_value
        self.assertEqual(value("relayd_journal_missing_segments_total"), 1)
        self.assertEqual(value("relayd_journal_missing_records_total"), 2)
        self.assertEqual(journal.stats()["missing_segments_at_start"], [gone])

    def test_a_torn_framed_last_line_is_skipped_and_the_next_seq_follows_the_good_ones(self):
        whole = framed(1, 1) + framed(2, 2) + framed(3, 3)
        name = self.write_segment(1, whole[:-5])
        journal = self.make()
        self.assertEqual(self.replayed(), [1, 2])
        self.assertEqual(self.consumer.report.skipped,
                         [(name, 3, "torn line: no newline at end of segment")])
        self.assertEqual(self.consumer.report.gaps, [])
        journal.append(line(4))
        self.clock.advance(0)
        self.successResultOf(journal.stopService())
        self.assertEqual(read_lines(self.directory)[-1], line(4))   # checks seq 3 follows 2

    def test_duplicated_and_reordered_records(self):
        name = self.write_segment(1, framed(1, 1) + framed(3, 3) + framed(2, 2) + framed(3, 33)
                                  + framed(4, 4) + framed(4, 4) + framed(6, 6))
        with capturedLogs() as events:
            self.make()
        self.assertEqual(self.replayed(), [1, 3, 2, 4, 6])
        report = self.consumer.report
        self.assertEqual(report.skipped, [(name, 4, "duplicate sequence number 3"),
                                          (name, 6, "duplicate sequence number 4")])
        self.assertEqual(report.reordered, 1)
        self.assertEqual(report.gaps, [(5, 5, name, 7)])
        self.assertTrue(any(e.get("seq") == 2 and "out of order" in e["log_format"]
                            for e in events))

    def test_legacy_records_are_read_once_and_reported(self):
        self.write_segment(1, good(1) + good(2))
        with capturedLogs() as events:
            journal = self.make()
        self.assertEqual(self.replayed(), [1, 2])
        self.assertEqual(self.consumer.report.legacy, 2)
        self.assertTrue(any(e.get("count") == 2 and "before checksums" in e["log_format"]
                            for e in events))
        self.assertEqual(self.registry.get_sample_value("relayd_journal_legacy_records_total"), 2)
        journal.append(line(3))
        self.clock.advance(0)
        self.successResultOf(journal.stopService())
        self.make()
        self.assertEqual(self.replayed(), [1, 2, 3], "the upgraded relay keeps its stored mail")

    def test_an_unchecked_line_among_checksummed_ones_is_refused(self):
        name = self.write_segment(1, framed(1, 1) + good(2) + framed(2, 3))
        self.make()
        self.assertEqual(self.replayed(), [1, 3])
        self.assertEqual(self.consumer.report.skipped,
                         [(name, 2, "unchecked record after checksummed ones")])
