"""Checkpoints: a start loads the saved state and replays only what follows it."""
import json
import os

from twisted.logger import capturedLogs
from twisted.trial import unittest

from relayd.core.dedup import DedupWindow
from relayd.core.history import History
from relayd.core.mailbox import Mailboxes
from relayd.federation.index import Index
from relayd.journal import checkpoint, record, segments
from relayd.journal.replay import Start
from tests.test_journal import JournalTestMixin, ManualPool, line
from tests.test_journal_replay import SegmentFiles, framed


class Counted:
    """A state part: the records' ``n`` values it has seen."""

    def __init__(self):
        self.seen = []

    def snapshot(self):
        return list(self.seen)

    def load(self, data):
        self.seen = list(data)


class CheckpointTests(JournalTestMixin, unittest.TestCase):

    def start(self, **options):
        """A journal whose consumer and state part both track ``n``."""
        journal = self.make(start=False, **options)
        self.state = state = Counted()
        journal.add_state("counted", state.snapshot, state.load)
        journal.consumer.restore = lambda record: state.seen.append(record["n"])
        journal.privilegedStartService()
        journal.startService()
        return journal

    def write(self, journal, numbers):
        for n in numbers:
            d = journal.append(line(n))
            d.addCallback(lambda _, n=n: self.state.seen.append(n))
        self.clock.advance(0)

    def restart(self, journal, **options):
        self.successResultOf(journal.stopService())
        return self.start(**options)

    def test_a_start_replays_only_what_follows_the_checkpoint(self):
        journal = self.start(checkpoint_interval=10)
        self.write(journal, [1, 2, 3])
        self.clock.advance(10)                      # periodic checkpoint after 3
        self.write(journal, [4, 5])
        journal.stopService()                       # final checkpoint after 5 (queued first)
        journal = self.start()
        self.assertEqual(self.state.seen, [1, 2, 3, 4, 5])
        self.assertEqual(journal.report.records, 0)
        self.assertIn("record 5", journal.report.checkpoint)

    def test_after_a_crash_the_tail_after_the_checkpoint_is_replayed(self):
        journal = self.start(checkpoint_interval=10)
        self.write(journal, [1, 2, 3])
        self.clock.advance(10)
        self.write(journal, [4, 5])
        journal._writer.close(True)                 # "kill -9": no final checkpoint
        os.close(journal._lock)
        journal._lock = None
        journal.running = False
        journal = self.start()
        self.assertEqual(self.state.seen, [1, 2, 3, 4, 5])
        self.assertEqual(journal.report.records, 2)
        self.assertEqual(journal.report.gaps, [])

    def test_checkpoint_after_bytes_written(self):
        journal = self.start(checkpoint_interval=0, checkpoint_bytes=100)
        self.write(journal, [1, 2, 3])
        self.clock.advance(0)
        self.assertEqual(self.registry.get_sample_value("relayd_journal_checkpoints_total"), 1)
        start, parts = checkpoint.read(self.directory)
        self.assertEqual((start.seq, parts), (3, {"counted": [1, 2, 3]}))

    def test_the_snapshot_holds_what_the_position_covers(self):
        """Records written but not yet called back on the reactor are replayed, not lost."""
        pool = ManualPool()
        journal = self.start(pool=pool, checkpoint_interval=10)
        self.write(journal, [1])
        pool.run_all()
        self.write(journal, [2])                    # its batch waits on the pool
        self.clock.advance(10)                      # checkpoint: covers 1 only
        pool.run_all()
        start, parts = checkpoint.read(self.directory)
        self.assertEqual((start.seq, parts["counted"]), (1, [1]))

    def test_a_damaged_checkpoint_is_reported_and_everything_replayed(self):
        journal = self.start()
        self.write(journal, [1, 2])
        self.successResultOf(journal.stopService())
        path = os.path.join(self.directory, checkpoint.FILE_NAME)
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            data[-5] ^= 0x01
            f.seek(0)
            f.write(data)
        with capturedLogs() as events:
            journal = self.start()
        self.assertEqual(self.state.seen, [1, 2], "rebuilt by the full replay")
        self.assertEqual(journal.report.records, 2)
        self.assertTrue(any("checksum mismatch" in str(e.get("reason")) for e in events))
        self.assertEqual(
            self.registry.get_sample_value("relayd_journal_checkpoint_damaged_total"), 1)

    def test_a_checkpoint_without_a_registered_part_means_a_full_replay(self):
        journal = self.start()
        self.write(journal, [1])
        self.successResultOf(journal.stopService())
        checkpoint.write(self.directory, Start("relay_log.00000001.jsonl", 0, 1), {"other": 1})
        journal = self.start()
        self.assertEqual(self.state.seen, [1])
        self.assertEqual(journal.report.records, 1)

    def test_a_checkpoint_that_cannot_be_loaded_means_a_full_replay_from_scratch(self):
        journal = self.start()
        self.write(journal, [1, 2])
        self.successResultOf(journal.stopService())
        start, _ = checkpoint.read(self.directory)
        checkpoint.write(self.directory, start, {"counted": 5})    # checksum fine, content not
        journal = self.start()
        self.assertEqual(self.state.seen, [1, 2], "no half-loaded state left behind")
        self.assertEqual(journal.report.records, 2)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(
            self.registry.get_sample_value("relayd_journal_checkpoint_damaged_total"), 1)

    def test_a_torn_temporary_file_is_ignored_and_removed(self):
        journal = self.start()
        self.write(journal, [1])
        journal = self.restart(journal)
        with open(os.path.join(self.directory, checkpoint.FILE_NAME + ".tmp"), "wb") as f:
            f.write(b'{"version": 1, "seg')
        journal = self.restart(journal)
        self.assertEqual(self.state.seen, [1])
        temporary = os.path.join(self.directory, checkpoint.FILE_NAME + ".tmp")
        self.assertFalse(os.path.exists(temporary))

    def test_a_failed_checkpoint_write_is_counted_and_the_old_one_kept(self):
        journal = self.start(checkpoint_interval=10)
        self.write(journal, [1])
        self.clock.advance(10)
        real = checkpoint.write

        def full(directory, start, parts):
            raise OSError(28, "No space left on device")
        self.patch(checkpoint, "write", full)
        self.write(journal, [2])
        with capturedLogs() as events:
            self.clock.advance(10)
        self.assertEqual(
            self.registry.get_sample_value("relayd_journal_checkpoint_errors_total"), 1)
        self.assertTrue(any("No space" in str(e.get("error")) for e in events))
        self.assertEqual(checkpoint.read(self.directory)[0].seq, 1)
        self.patch(checkpoint, "write", real)
        journal = self.restart(journal)
        self.assertEqual(self.state.seen, [1, 2])


class CheckpointFileTests(unittest.TestCase):

    def test_round_trip_and_damage(self):
        directory = self.mktemp()
        os.makedirs(directory)
        self.assertIsNone(checkpoint.read(directory))
        checkpoint.write(directory, Start("s", 10, 3), {"a": [1, "é"]})
        self.assertEqual(checkpoint.read(directory), (Start("s", 10, 3), {"a": [1, "é"]}))
        path = os.path.join(directory, checkpoint.FILE_NAME)
        with open(path, "rb") as f:
            data = f.read()
        for damaged, reason in [(data[:-3], "torn"), (b"x" + data, "bad header"),
                                (data.replace(b'"version": 1', b'"version": 9'), "version 9")]:
            with open(path, "wb") as f:
                f.write(damaged)
            with self.assertRaises(checkpoint.Damaged) as caught:
                checkpoint.read(directory)
            self.assertIn(reason, str(caught.exception))

    def test_stored_mail_with_a_lone_surrogate_body_loads_back(self):
        # the TCP parse takes a body such as "\ud800" (json.dumps escapes it
        # in the stored line); msgspec alone refuses that escape
        from twisted.internet.task import Clock
        from relayd.core import message
        from relayd.daemon import _stored_entry
        entry = {"from": "alice", "to": "bob", "body": "\ud800x", "timestamp": 1.0,
                 "seen_by": ["relay1"], "msg_id": "m1"}
        boxes = Mailboxes(Clock(), 10, 3600)
        boxes.put("bob", entry, message.delivery_line(message.journal_line(entry)))
        directory = self.mktemp()
        os.makedirs(directory)
        checkpoint.write(directory, Start("s", 10, 3), {"mailboxes": boxes.snapshot()})
        _, parts = checkpoint.read(directory)
        copy = Mailboxes(Clock(), 10, 3600)
        copy.load_snapshot(parts["mailboxes"], _stored_entry)
        self.assertEqual([e["body"] for e, _ in copy.peek("bob")], ["\ud800x"])


class EncodeTests(unittest.TestCase):

    def test_big_values_are_encoded_in_pieces_of_about_chunk_scalars(self):
        self.patch(checkpoint, "CHUNK", 10)
        value = {"ids": [f"{n:064x}" for n in range(95)], "small": {"a": 1},
                 "nested": [[n, [n] * 25] for n in range(3)], "empty": [], "text": "\ud800é"}
        pieces = []
        checkpoint.encode(value, pieces)
        self.assertEqual(json.loads(b"".join(pieces)), json.loads(json.dumps(value)))
        self.assertGreater(len(pieces), 10)
        self.assertLessEqual(max(len(p) for p in pieces), 30 * 67)

    def test_runs_of_plain_scalars_in_lists_and_dicts_are_sliced_in_chunks(self):
        self.patch(checkpoint, "CHUNK", 10)
        ids = [f"{n:064x}" for n in range(95)]
        for value in (ids, dict(zip(ids, range(95))), ids[:40] + [[1, [2]]] + ids[40:]):
            pieces = []
            checkpoint.encode(value, pieces)
            self.assertEqual(json.loads(b"".join(pieces)), json.loads(json.dumps(value)))
            self.assertLessEqual(max(len(p) for p in pieces), 10 * 80)
        pieces = []
        checkpoint.encode(ids, pieces)
        self.assertEqual(len(pieces), 2 + 10 + 9)  # the brackets, ten slices and the commas between


class ComponentSnapshotTests(unittest.TestCase):
    """Each state part survives a JSON round trip as a checkpoint stores it."""

    def round_trip(self, snapshot):
        """``snapshot`` as a checkpoint stores it and reads it back."""
        pieces = []
        checkpoint.encode(snapshot() if callable(snapshot) else snapshot, pieces)
        return json.loads(b"".join(pieces))

    def test_dedup_window_leaves_out_unsettled_ids(self):
        from twisted.internet.task import Clock
        clock = Clock()
        window = DedupWindow(clock, 60, 10)
        for n in range(3):
            window.add(f"id{n}")
        copy = DedupWindow(clock, 60, 10)
        copy.load_snapshot(self.round_trip(window.snapshot(exclude={"id1"})))
        self.assertEqual((("id0" in copy), ("id1" in copy), ("id2" in copy)), (True, False, True))

    def test_mailboxes_keep_order_and_lines(self):
        from twisted.internet.task import Clock
        boxes = Mailboxes(Clock(), 10, 3600)
        for n in range(3):
            boxes.put("bob", {"msg_id": f"m{n}", "timestamp": 0.0}, b"line %d" % n)
        copy = Mailboxes(Clock(), 10, 3600)
        copy.load_snapshot(self.round_trip(boxes.snapshot()),
                           lambda line: {"msg_id": line.decode(), "timestamp": 0.0})
        self.assertEqual([(e["msg_id"], line) for e, line in copy.peek("bob")],
                         [("line 0", b"line 0"), ("line 1", b"line 1"), ("line 2", b"line 2")])

    def test_history(self):
        history = History(2)
        for n in range(3):
            history.add({"from": "a", "to": "b", "n": n, "timestamp": 1.0})
        copy = History(2)
        copy.load_snapshot(self.round_trip(history.snapshot()))
        self.assertEqual([e["n"] for e in copy.recent(("pair", "a", "b"), 10, 0)], [1, 2])

    def test_federation_index_leaves_out_pending_seqs(self):
        index = Index("me")
        for seq in (1, 2, 3, 5):
            index.add("other", seq)
        index.next_own()
        copy = Index("me")
        copy.load_snapshot(self.round_trip(index.snapshot(exclude=[("other", 2)])))
        self.assertEqual([copy.has("other", s) for s in (1, 2, 3, 5)], [True, False, True, True])
        self.assertEqual(copy.next_own(), 2)


class CheckpointPositionTests(SegmentFiles, unittest.TestCase):
    """Where a checkpoint ends, and what a replay from there reports."""

    def write_records(self, index, seqs):
        return self.write_segment(index, b"".join(framed(seq, seq) for seq in seqs))

    def start_after(self, segment, offset, seq):
        checkpoint.write(self.directory, Start(segment, offset, seq), {"counted": []})
        journal = self.make(start=False)
        state = []
        journal.add_state("counted", lambda: state, state.extend)
        journal.privilegedStartService()
        journal.startService()
        return journal

    def test_a_pruned_checkpoint_segment_is_not_reported_missing(self):
        first = self.write_records(1, [1, 2])
        os.unlink(os.path.join(self.directory, first))
        self.write_records(2, [3, 4])
        journal = self.start_after(first, 100, 2)
        self.assertEqual(self.replayed(), [3, 4])
        self.assertEqual((journal.report.missing_segments, journal.report.gaps), ([], []))

    def test_new_segments_follow_a_checkpoint_whose_segments_are_all_gone(self):
        journal = self.start_after(segments.segment_name(5), 100, 7)
        journal.append(line(8))
        self.clock.advance(0)
        self.successResultOf(journal.stopService())
        self.assertEqual([s.name for s in segments.scan(self.directory)],
                         [segments.segment_name(6)])
        self.consumer.records.clear()
        self.start_after(segments.segment_name(5), 100, 7)
        self.assertEqual(self.replayed(), [8], "not skipped as older than the checkpoint")

    def test_records_lost_after_the_checkpoint_show_as_a_gap(self):
        first = self.write_records(1, [1, 2, 3])
        size = len(record.frame(1, line(1)) + record.frame(2, line(2)))
        with open(os.path.join(self.directory, first), "r+b") as f:
            f.truncate(size + 5)                   # record 3 torn off
        self.write_records(3, [6])
        journal = self.start_after(first, size, 2)
        report = journal.report
        self.assertEqual(report.missing_segments, ["relay_log.00000002.jsonl"])
        self.assertEqual([g[:2] for g in report.gaps], [(3, 5)])
        self.assertEqual(report.skipped[0][2], "torn line: no newline at end of segment")
        self.assertEqual(self.replayed(), [6])

    def test_a_legacy_journal_is_covered_by_the_first_checkpoint(self):
        with open(os.path.join(self.directory, "relay_log.jsonl"), "wb") as f:
            f.write(line(1) + b"\n" + line(2) + b"\n")
        journal = self.make(start=False)
        state = []
        journal.add_state("counted", lambda: list(state), lambda data: state.extend(data))
        journal.consumer.restore = lambda record: state.append(record["n"])
        journal.privilegedStartService()
        journal.startService()
        self.assertEqual(journal.report.legacy, 2)
        self.successResultOf(journal.stopService())
        journal = self.make(start=False)
        state.clear()
        journal.add_state("counted", lambda: list(state), lambda data: state.extend(data))
        journal.consumer.restore = lambda record: state.append(record["n"])
        journal.startService()
        self.addCleanup(self.stop, journal)
        self.assertEqual(state, [1, 2])
        self.assertEqual((journal.report.records, journal.report.missing_segments), (0, []))
