"""A journal on a filesystem that fills up: a tiny tmpfs mounted for the test."""
import errno
import json
import os
import subprocess

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from relayd.journal.service import Journal
from relayd.ops.ratelog import LogLimiter
from tests.fakes import FakeSession, make_router
from tests.test_journal import Consumer, InlinePool, read_lines, segment_files

SIZE = 64 * 1024


def mount_tmpfs(testcase):
    """A fresh ``SIZE``-byte tmpfs, unmounted at cleanup; skips where it cannot be mounted."""
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", directory],
                          capture_output=True)
    if done.returncode != 0:
        raise unittest.SkipTest("mounting a tmpfs needs root (CAP_SYS_ADMIN): "
                                + done.stderr.decode(errors="replace").strip())
    testcase.addCleanup(subprocess.run, ["umount", "-l", directory], check=True)
    return directory


class FullDiskTests(unittest.TestCase):

    def setUp(self):
        self.mount = mount_tmpfs(self)
        self.directory = os.path.join(self.mount, "journal")
        self.clock = Clock()
        self.clock.advance(1000)
        self.router = make_router(self.clock)
        self.journal = Journal(self.directory, InlinePool(), self.clock, Consumer(),
                               prune_interval=0, checkpoint_interval=0)
        self.journal.privilegedStartService()
        self.journal.startService()
        self.addCleanup(self.stop)
        self.router.journal = self.journal
        self.alice, self.bob = FakeSession("alice"), FakeSession("bob")
        self.router.attach(self.alice)
        self.router.attach(self.bob)

    def stop(self):
        if self.journal.running:
            d = self.journal.stopService()
            d.addErrback(lambda f: f.trap(OSError))
            return d

    def submit(self, body, nonce):
        """Submit one message; its ``(msg_id, duplicate)`` or its Failure."""
        results = []
        self.router.submit(self.alice, "bob", body, nonce=nonce).addBoth(results.append)
        self.clock.advance(0)
        return results[0]

    def fill(self):
        """Send messages until the disk is full; the ids acked."""
        acked = []
        for n in range(10000):
            result = self.submit("x" * 500, f"fill{n}")
            if not isinstance(result, tuple):
                self.assertEqual(result.value.errno, errno.ENOSPC)
                return acked
            acked.append(result[0])
        self.fail("the disk never filled")

    def test_a_full_disk_refuses_messages_logs_once_and_recovers(self):
        ballast = os.path.join(self.mount, "ballast")
        with open(ballast, "wb") as f:
            f.write(b"\0" * (SIZE // 4))
        acked = self.fill()
        self.assertGreater(len(acked), 10)
        files = segment_files(self.directory)
        self.assertIn("No space left", self.journal.health())
        with capturedLogs() as events:
            for n in range(200):
                self.assertEqual(self.submit("y" * 500, f"full{n}").value.errno, errno.ENOSPC)
        self.assertEqual(segment_files(self.directory), files, "no new segment per failed batch")
        errors = [e for e in events if e["log_level"] >= LogLevel.error]
        self.assertLessEqual(len(errors), 2, [e["log_format"] for e in errors])
        self.assertFalse([e for e in events if e["log_level"] == LogLevel.critical])
        # A minute later the next failure is logged with the count of those left out.
        self.clock.advance(60)
        with capturedLogs() as events:
            self.submit("y" * 500, "later")
        self.assertTrue(any("200 more like it" in e.get("repeats", "") for e in events),
                        [e.get("repeats") for e in events])
        # Space comes back: writes succeed, health clears, nothing acked was lost.
        os.unlink(ballast)
        after = self.submit("z", "after")
        self.assertIsInstance(after, tuple)
        self.assertIsNone(self.journal.health())
        self.successResultOf(self.journal.stopService())
        stored = {json.loads(r).get("msg_id") for r in read_lines(self.directory)}
        self.assertLessEqual(set(acked) | {after[0]}, stored)


class LogLimiterTests(unittest.TestCase):

    def test_first_logged_then_counted_then_summarised(self):
        clock = Clock()
        limiter = LogLimiter(clock, per_window=2, window=60)
        self.assertEqual([limiter.admit("k") for _ in range(5)],
                         [(True, 0), (True, 0), (False, 0), (False, 0), (False, 0)])
        self.assertEqual(limiter.pending("k"), 3)
        self.assertEqual(limiter.admit("other"), (True, 0))
        clock.advance(60)
        self.assertEqual(limiter.admit("k"), (True, 3))
        self.assertEqual(limiter.admit("k"), (True, 0))

    def test_keys_are_bounded(self):
        clock = Clock()
        limiter = LogLimiter(clock, max_keys=3)
        for n in range(10):
            self.assertEqual(limiter.admit(n), (True, 0))
        self.assertLessEqual(len(limiter._windows), 3)
