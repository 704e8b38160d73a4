"""The journal on the real file pool thread, and a SIGKILL crash test.

Run as ``python -m tests.test_journal_threads DIR``, this module is the
crash test's child: it appends numbered lines as fast as the journal acks
them and prints each acked number.
"""
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from relayd.filepool import FilePool
from relayd.journal.service import Journal
from tests.test_journal import Consumer, replay_directory, segment_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(directory, consumer, **options):
    pool = FilePool(reactor)
    journal = Journal(directory, pool, reactor, consumer, **options)
    pool.startService()
    journal.privilegedStartService()
    journal.startService()
    return pool, journal


def stop(pool, journal):
    """Stop in the daemon's order: the journal queues its last work, then the pool drains."""
    done = journal.stopService()
    return defer.gatherResults([done, pool.stopService()])


class RealThreadTests(unittest.TestCase):

    def start(self, directory, **options):
        """``start`` with a cleanup, so that a failing test leaves no pool thread behind."""
        pool, journal = start(directory, Consumer(), **options)
        self.addCleanup(lambda: journal.running and stop(pool, journal))
        return pool, journal

    @defer.inlineCallbacks
    def test_many_appends_all_durable_in_order(self):
        directory = self.mktemp()
        pool, journal = self.start(directory, fsync="batch", segment_size=4096)
        acks = []
        for n in range(20000):
            journal.append(b'{"n": %d}' % n).addCallback(lambda _, n=n: acks.append(n))
            if n % 1000 == 999:
                yield deferLater(reactor, 0, lambda: None)
        yield stop(pool, journal)
        self.assertEqual(acks, list(range(20000)))
        consumer = replay_directory(directory)
        self.assertEqual([r["n"] for r in consumer.records], list(range(20000)))
        self.assertEqual(consumer.report.segments, len(segment_files(directory)))
        self.assertEqual(consumer.report.skipped, [])

    @defer.inlineCallbacks
    def test_always_policy_on_a_real_disk(self):
        directory = self.mktemp()
        pool, journal = self.start(directory, fsync="always")
        yield defer.gatherResults([journal.append(b'{"n": %d}' % n) for n in range(100)])
        self.assertEqual(journal.stats()["records_written"], 100)
        self.assertIsNotNone(journal.stats()["last_fsync_age"])
        yield stop(pool, journal)

    @defer.inlineCallbacks
    def test_stop_right_after_appends_loses_nothing(self):
        directory = self.mktemp()
        pool, journal = self.start(directory, fsync="never")
        acks = [journal.append(b'{"n": %d}' % n) for n in range(500)]
        yield stop(pool, journal)
        yield defer.gatherResults(acks)
        consumer = replay_directory(directory)
        self.assertEqual(consumer.report.records, 500)


    @defer.inlineCallbacks
    def test_a_slow_periodic_fsync_does_not_hold_up_acks(self):
        directory = self.mktemp()
        pool, journal = self.start(directory, fsync="batch", fsync_interval=0.01)
        release, threads = threading.Event(), []
        self.addCleanup(release.set)
        real = journal._writer._fsync

        def slow_fsync(fd):
            threads.append(threading.current_thread().name)
            release.wait(10)
            return real(fd)
        journal._writer._fsync = slow_fsync
        yield journal.append(b'{"n": 1}')
        for _ in range(500):
            if threads:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(threads), 1, "the periodic fsync started")
        yield defer.gatherResults([journal.append(b'{"n": %d}' % n) for n in range(2, 50)])
        self.assertFalse(release.is_set(), "acked while the fsync was still running")
        release.set()
        yield stop(pool, journal)
        self.assertIn("relayd-fsync", threads[0])
        self.assertEqual(replay_directory(directory).report.records, 49)


class CrashTests(unittest.TestCase):

    def test_sigkill_loses_no_acked_line(self):
        directory = os.path.abspath(self.mktemp())
        child = subprocess.Popen([sys.executable, "-m", "tests.test_journal_threads", directory],
                                 cwd=ROOT, stdout=subprocess.PIPE)
        self.addCleanup(child.stdout.close)
        output = b""
        deadline = time.monotonic() + 60
        try:
            while output.count(b"\n") < 20000 and time.monotonic() < deadline:
                ready, _, _ = select.select([child.stdout], [], [], 1.0)
                if ready:
                    chunk = os.read(child.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    output += chunk
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        output += child.stdout.read()
        acked = [int(n) for n in output.split(b"\n")[:-1]]
        self.assertGreaterEqual(len(acked), 20000, "the child did not ack enough lines in time")
        consumer = replay_directory(directory)
        replayed = [r["n"] for r in consumer.records]
        self.assertEqual(replayed, list(range(len(replayed))), "replay keeps order, no gaps")
        self.assertGreaterEqual(len(replayed), max(acked) + 1, "every acked line survived")
        self.assertLessEqual(len(consumer.report.skipped), 1, "at most the torn last line")


def child(directory):
    """Append numbered lines until killed (or 60 s), printing each acked number."""
    pool, journal = start(directory, Consumer(), fsync="batch")

    def acked(_, n):
        os.write(1, b"%d\n" % n)

    def pump(n=0):
        if journal.pending < 5000:
            for n in range(n, n + 200):
                journal.append(json.dumps({"n": n, "body": "crash test"}).encode()).addCallback(acked, n)
            n += 1
        reactor.callLater(0, pump, n)

    reactor.callWhenRunning(pump)
    reactor.callLater(60, reactor.stop)
    reactor.run()


if __name__ == "__main__":
    child(sys.argv[1])
