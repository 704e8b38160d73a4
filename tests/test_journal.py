"""The journal service with an inline file pool and a fake clock."""
import errno
import json
import os

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from relayd.journal import record, segments
from relayd.journal.commit import JournalClosed
from relayd.journal.lock import JournalLocked
from relayd.journal.replay import replay
from relayd.journal.service import Journal


class InlinePool:
    """A FilePool stand-in that runs each job at once, on the calling thread."""

    def run(self, f, *args, **kwargs):
        return maybeDeferred(f, *args, **kwargs)


class ManualPool:
    """A FilePool stand-in whose jobs run, in order, only when the test says."""

    def __init__(self):
        self.jobs = []

    def run(self, f, *args, **kwargs):
        d = Deferred()
        self.jobs.append((d, f, args, kwargs))
        return d

    def run_next(self):
        d, f, args, kwargs = self.jobs.pop(0)
        maybeDeferred(f, *args, **kwargs).chainDeferred(d)

    def run_all(self):
        while self.jobs:
            self.run_next()


class Consumer:
    def __init__(self):
        self.records = []
        self.report = None

    def restore(self, record):
        self.records.append(record)

    def restore_done(self, report):
        self.report = report


def line(n):
    return json.dumps({"n": n, "body": "x" * 10}).encode()


def replay_directory(directory):
    """A Consumer fed with a replay of ``directory`` (the service is not started)."""
    consumer = Consumer()
    consumer.restore_done(replay(directory, segments.scan(directory), consumer.restore))
    return consumer


def segment_files(directory):
    """The segment file names in ``directory``, oldest first."""
    return [s.name for s in segments.scan(directory)]


def read_lines(directory):
    """The JSON of every record in ``directory``, oldest first; each framed
    line's checksum and sequence number (1, 2, 3...) are checked."""
    out, last = [], None
    for name in segment_files(directory):
        with open(os.path.join(directory, name), "rb") as f:
            for raw in f:
                seq, _, reason = record.parse(raw)
                if seq is None:
                    out.append(raw.rstrip(b"\n"))
                    continue
                assert reason is None, (raw, reason)
                assert last is None or seq == last + 1, (raw, last)
                last = seq
                out.append(raw.rstrip(b"\n").split(b" ", 2)[2])
    return out


class JournalTestMixin:
    """Builds a started Journal on a temp directory; stops it at cleanup."""

    def make(self, pool=None, start=True, **options):
        if not hasattr(self, "directory"):
            self.directory = self.mktemp()
        self.clock = Clock()
        self.pool = pool if pool is not None else InlinePool()
        self.consumer = Consumer()
        self.registry = CollectorRegistry()
        options.setdefault("prune_interval", 0)
        journal = Journal(self.directory, self.pool, self.clock, self.consumer,
                          registry=self.registry, **options)
        if start:
            journal.privilegedStartService()
            journal.startService()
            self.addCleanup(self.stop, journal)
        return journal

    def stop(self, journal):
        if journal.running:
            d = journal.stopService()
            if isinstance(self.pool, ManualPool):
                self.pool.run_all()
            return d

    def count_calls(self, journal, attribute):
        """Wrap the writer's seam ``attribute`` and return its call list."""
        calls = []
        real = getattr(journal._writer, attribute)

        def wrapped(*args):
            calls.append(args)
            return real(*args)
        setattr(journal._writer, attribute, wrapped)
        return calls


class GroupCommitTests(JournalTestMixin, unittest.TestCase):

    def test_one_write_per_batch_in_order(self):
        journal = self.make()
        writes = self.count_calls(journal, "_write")
        acked = []
        for n in range(5):
            journal.append(line(n)).addCallback(lambda _, n=n: acked.append(n))
        self.assertEqual((writes, acked, journal.pending), ([], [], 5))
        self.clock.advance(0)
        self.assertEqual(len(writes), 1)
        self.assertEqual(acked, [0, 1, 2, 3, 4])
        self.assertEqual(read_lines(self.directory), [line(n) for n in range(5)])
        self.assertEqual(journal.pending, 0)

    def test_each_append_fires_with_its_sequence_number(self):
        journal = self.make()
        seqs = []
        for n in range(3):
            journal.append(line(n)).addCallback(seqs.append)
        self.clock.advance(0)
        journal.append(line(3)).addCallback(seqs.append)
        self.clock.advance(0)
        self.assertEqual(seqs, [1, 2, 3, 4])

    def test_added_lines_are_told_once_per_batch_in_order_with_appends(self):
        journal = self.make()
        heard, acked = [], []
        journal.listener = lambda count, result: heard.append((count, result))
        journal.add(line(0))
        journal.append(line(1)).addCallback(acked.append)
        journal.add(line(2))
        self.assertEqual((heard, journal.pending), ([], 3))
        self.clock.advance(0)
        self.assertEqual((heard, acked), ([(2, 1)], [2]))
        self.assertEqual(read_lines(self.directory), [line(n) for n in range(3)])
        self.assertRaises(TypeError, journal.add, "not bytes")
        journal.stopService()
        self.assertRaises(JournalClosed, journal.add, line(3))

    def test_a_line_that_is_not_bytes_fails_alone(self):
        journal = self.make()
        ok = [journal.append(line(1)), journal.append(line(2))]
        bad = journal.append("not bytes")
        self.clock.advance(0)
        self.assertIn("must be bytes", str(self.failureResultOf(bad, TypeError).value))
        for d in ok:
            self.successResultOf(d)
        self.assertEqual(read_lines(self.directory), [line(1), line(2)])
        later = journal.append(line(3))
        self.clock.advance(0)
        self.successResultOf(later)
        self.assertEqual(journal.pending, 0)

    def test_batch_interval_delays_the_write(self):
        journal = self.make(batch_interval=0.005)
        writes = self.count_calls(journal, "_write")
        d = journal.append(line(1))
        self.clock.advance(0.004)
        journal.append(line(2))
        self.assertEqual(writes, [])
        self.clock.advance(0.001)
        self.assertEqual(len(writes), 1)
        self.successResultOf(d)

    def test_next_batch_gathers_while_one_is_written(self):
        journal = self.make(pool=ManualPool())
        writes = self.count_calls(journal, "_write")
        first = journal.append(line(1))
        self.clock.advance(0)
        self.assertEqual(len(self.pool.jobs), 1)
        later = [journal.append(line(n)) for n in (2, 3, 4)]
        self.clock.advance(0)
        self.assertEqual(len(self.pool.jobs), 1, "no second job while the first is in flight")
        self.assertEqual(journal.pending, 4)
        self.pool.run_next()
        self.successResultOf(first)
        self.assertNoResult(later[0])
        self.assertEqual(len(self.pool.jobs), 1, "the gathered lines go out as one batch")
        self.pool.run_next()
        for d in later:
            self.successResultOf(d)
        self.assertEqual(len(writes), 2)
        self.assertEqual(read_lines(self.directory), [line(n) for n in (1, 2, 3, 4)])

    def test_lag_and_pending_in_stats(self):
        journal = self.make(pool=ManualPool())
        journal.append(line(1))
        self.clock.advance(0)
        self.clock.advance(2.5)
        stats = journal.stats()
        self.assertEqual((stats["pending"], stats["lag_seconds"]), (1, 2.5))
        self.assertIsNone(journal.health())
        self.clock.advance(10)
        self.assertIn("behind", journal.health())
        self.pool.run_all()
        stats = journal.stats()
        self.assertEqual((stats["pending"], stats["lag_seconds"], stats["records_written"]), (0, 0, 1))
        self.assertIsNone(journal.health())

    def test_metrics(self):
        journal = self.make()
        for n in range(3):
            journal.append(line(n))
        self.clock.advance(0)
        value = self.registry.get_sample_value
        self.assertEqual(value("relayd_journal_records_total"), 3)
        self.assertEqual(value("relayd_journal_bytes_total"),
                         sum(len(record.frame(n + 1, line(n))) for n in range(3)))
        self.assertEqual(value("relayd_journal_write_seconds_count"), 1)
        self.assertEqual(value("relayd_journal_segments"), 1)
        self.assertEqual(value("relayd_journal_segment_bytes"), value("relayd_journal_bytes_total"))
        self.assertEqual(value("relayd_journal_pending"), 0)


class FsyncPolicyTests(JournalTestMixin, unittest.TestCase):

    def write_batches(self, journal, count):
        for n in range(count):
            journal.append(line(n))
            self.clock.advance(0)

    def test_always_fsyncs_every_batch_before_the_ack(self):
        journal = self.make(fsync="always")
        fsyncs = self.count_calls(journal, "_fsync")
        acked = []
        journal.append(line(1)).addCallback(lambda _: acked.append(len(fsyncs)))
        self.clock.advance(0)
        self.assertEqual(acked, [1])
        self.write_batches(journal, 2)
        self.assertEqual(len(fsyncs), 3)
        self.assertEqual(journal.stats()["last_fsync_age"], 0)

    def test_batch_fsyncs_on_a_timer_and_only_when_dirty(self):
        journal = self.make(fsync="batch", fsync_interval=1.0)
        fsyncs = self.count_calls(journal, "_fsync")
        self.write_batches(journal, 3)
        self.assertEqual(fsyncs, [])
        self.assertIsNone(journal.stats()["last_fsync_age"])
        self.clock.advance(1.0)
        self.assertEqual(len(fsyncs), 1)
        self.clock.advance(5.0)
        self.assertEqual(len(fsyncs), 1, "no fsync without new writes")
        self.assertEqual(journal.stats()["last_fsync_age"], 5.0)
        self.write_batches(journal, 1)
        self.successResultOf(journal.stopService())
        self.assertEqual(len(fsyncs), 2, "stopService fsyncs")

    def test_batch_fsyncs_rolled_segments_off_the_write_path(self):
        journal = self.make(fsync="batch", fsync_interval=1.0, segment_size=1)
        fsyncs = self.count_calls(journal, "_fsync")
        self.write_batches(journal, 3)
        self.assertEqual(fsyncs, [], "rolling does not fsync on the write path")
        self.assertEqual(len(journal._writer.retired), 3)
        self.clock.advance(1.0)
        self.assertEqual(len(fsyncs), 3)
        self.assertEqual(journal._writer.retired, [])
        self.assertEqual(self.registry.get_sample_value("relayd_journal_fsyncs_total"), 3)

    def test_a_stalled_fsync_shows_in_health(self):
        journal = self.make(fsync="batch", fsync_interval=1.0, pool=ManualPool())
        journal.append(line(1))
        self.clock.advance(0)
        self.pool.run_all()
        self.clock.advance(1.0)
        self.pool.run_next()          # take_unsynced; the fsync job now waits
        self.clock.advance(10.5)
        self.assertIn("fsync has been running for 10.5s", journal.health())
        self.pool.run_all()
        self.assertIsNone(journal.health())

    def test_never_leaves_fsync_to_the_os_until_shutdown(self):
        journal = self.make(fsync="never")
        fsyncs = self.count_calls(journal, "_fsync")
        self.write_batches(journal, 3)
        self.clock.advance(3600)
        self.assertEqual(fsyncs, [])
        self.successResultOf(journal.stopService())
        self.assertEqual(len(fsyncs), 1)

    def test_unknown_policy_is_refused(self):
        self.assertRaises(ValueError, Journal, self.mktemp(), InlinePool(), Clock(), Consumer(),
                          fsync="sometimes")


class LifecycleTests(JournalTestMixin, unittest.TestCase):

    def test_stop_flushes_pending_lines_and_closes(self):
        journal = self.make()
        acks = [journal.append(line(n)) for n in range(3)]
        self.successResultOf(journal.stopService())
        for d in acks:
            self.successResultOf(d)
        self.assertIsNone(journal._writer.fd)
        self.assertEqual(read_lines(self.directory), [line(n) for n in range(3)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_queues_its_work_on_the_pool_at_once(self):
        journal = self.make(pool=ManualPool())
        d = journal.append(line(1))
        stopped = journal.stopService()
        self.assertEqual(len(self.pool.jobs), 2, "final write and close queued synchronously")
        self.pool.run_all()
        self.successResultOf(d)
        self.successResultOf(stopped)
        self.assertEqual(read_lines(self.directory), [line(1)])

    def test_append_after_stop_fails(self):
        journal = self.make()
        self.successResultOf(journal.stopService())
        self.failureResultOf(journal.append(line(1)), JournalClosed)

    def test_restart_replays_and_writes_a_new_segment(self):
        journal = self.make()
        for n in range(3):
            journal.append(line(n))
        self.successResultOf(journal.stopService())
        first = segment_files(self.directory)
        journal = self.make()
        self.assertEqual(self.consumer.records, [json.loads(line(n)) for n in range(3)])
        self.assertEqual(self.consumer.report.records, 3)
        self.assertEqual(self.consumer.report.segments, 1)
        journal.append(line(3))
        self.clock.advance(0)
        now = segment_files(self.directory)
        self.assertEqual(len(now), 2)
        self.assertEqual(now[0], first[0])
        self.assertEqual(journal.stats()["segments"], 2)

    def test_start_without_privileged_start_replays(self):
        journal = self.make(start=False)
        self.assertIsNone(self.consumer.report)
        journal.startService()
        self.addCleanup(self.stop, journal)
        self.assertEqual(self.consumer.report.records, 0)
        self.assertTrue(os.path.isdir(self.directory))

    def test_one_daemon_per_journal_directory(self):
        first = self.make()
        second = Journal(self.directory, InlinePool(), Clock(), Consumer())
        error = self.assertRaises(JournalLocked, second.privilegedStartService)
        self.assertIn("in use by another relayd", str(error))
        self.successResultOf(first.stopService())
        second.privilegedStartService()
        second.startService()
        self.successResultOf(second.stopService())

    def test_name(self):
        self.assertEqual(self.make(start=False).name, "journal")


class WriteErrorTests(JournalTestMixin, unittest.TestCase):

    def full_disk(self, journal):
        """Make the next segment a /dev/full file: writes fail with ENOSPC."""
        real = journal._writer._open

        def open_full(path, flags, mode):
            return os.open("/dev/full", os.O_WRONLY)
        journal._writer._open = open_full
        return lambda: setattr(journal._writer, "_open", real)

    def test_disk_full_fails_the_batch_then_recovers(self):
        if not os.path.exists("/dev/full"):
            raise unittest.SkipTest("no /dev/full on this system")
        journal = self.make()
        heal = self.full_disk(journal)
        with capturedLogs() as events:
            failed = [journal.append(line(n)) for n in range(2)]
            self.clock.advance(0)
            failed.append(journal.append(line(2)))
            self.clock.advance(0)
            for d in failed:
                self.assertEqual(self.failureResultOf(d, OSError).value.errno, errno.ENOSPC)
            self.assertIn("No space left", journal.health())
            self.assertEqual(self.registry.get_sample_value("relayd_journal_write_errors_total"), 2)
            heard = []
            journal.listener = lambda count, result: heard.append((count, result))
            journal.add(line(3))
            self.clock.advance(0)
            [(count, failure)] = heard
            self.assertEqual((count, failure.value.errno), (1, errno.ENOSPC))
            heal()
            ok = journal.append(line(3))
            self.clock.advance(0)
            self.successResultOf(ok)
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1, "a repeated error is logged once")
        self.assertTrue(any(e.get("failed") == 3 for e in events), "recovery is logged")
        self.assertIsNone(journal.health())
        self.assertEqual(read_lines(self.directory), [line(3)])

    def test_partial_write_is_cut_off_and_the_segment_goes_on(self):
        journal = self.make()
        journal.append(line(1))
        self.clock.advance(0)
        real = journal._writer._write

        def half_then_fail(fd, data):
            if len(data) > 4:
                return real(fd, data[:len(data) // 2])
            raise OSError(errno.EIO, "I/O error")
        journal._writer._write = half_then_fail
        failed = journal.append(line(2))
        self.clock.advance(0)
        self.failureResultOf(failed, OSError)
        journal._writer._write = real
        journal.append(line(3))
        self.clock.advance(0)
        self.assertEqual(len(segment_files(self.directory)), 1, "no new segment for a failed batch")
        self.assertEqual(read_lines(self.directory), [line(1), line(3)])

    def test_unwritable_directory_fails_and_recovers(self):
        journal = self.make()

        def refuse(path, flags, mode):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        real, journal._writer._open = journal._writer._open, refuse
        failed = journal.append(line(1))
        self.clock.advance(0)
        self.failureResultOf(failed, PermissionError)
        self.assertIn("Permission denied", journal.health())
        journal._writer._open = real
        ok = journal.append(line(2))
        self.clock.advance(0)
        self.successResultOf(ok)
        self.assertEqual(read_lines(self.directory), [line(2)])
        self.assertEqual(segment_files(self.directory), [segments.segment_name(1)],
                         "a failed creation does not use up a segment number")

    def test_fsync_failure_is_reported(self):
        journal = self.make(fsync="batch", fsync_interval=1.0)
        journal.append(line(1))
        self.clock.advance(0)

        def broken(fd):
            raise OSError(errno.EIO, "Input/output error")
        journal._writer._fsync = broken
        self.clock.advance(1.0)
        self.assertIn("Input/output error", journal.health())
        self.assertIsNone(journal._writer.fd, "the segment is abandoned after a failed fsync")
        self.assertTrue(journal._fsync_loop.running)
