"""Rate limits per IP and temporary bans."""
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fakes import make_guard


class GuardTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.guard = make_guard(self.clock, messages=10, per_seconds=10, ban_after=3,
                                ban_window=60, ban_duration=600)

    def test_seed_default_ten_per_ten_seconds(self):
        self.assertEqual([self.guard.allow("1.2.3.4") for _ in range(10)], [None] * 10)
        wait = self.guard.allow("1.2.3.4")
        self.assertAlmostEqual(wait, 1.0)
        self.assertIsNone(self.guard.allow("5.6.7.8"), "another IP has its own budget")
        self.clock.advance(1.0)
        self.assertIsNone(self.guard.allow("1.2.3.4"))

    def test_repeat_offender_is_banned(self):
        banned = []
        self.guard.on_ban.append(banned.append)
        for _ in range(13):
            self.guard.allow("1.2.3.4")
        self.assertEqual(banned, [], "the first refusal only says when to come back")
        self.guard.allow("1.2.3.4")
        self.assertEqual(banned, ["1.2.3.4"])
        self.assertAlmostEqual(self.guard.banned("1.2.3.4"), 600)
        self.clock.advance(601)
        self.assertIsNone(self.guard.banned("1.2.3.4"))

    def test_a_client_that_waits_as_told_is_never_banned(self):
        """Each new message is sent at once; a refused one again after its
        retry_after (rounded to milliseconds, as the TCP answer does)."""
        sent = 0
        for _ in range(100):
            wait = self.guard.allow("1.2.3.4")
            if wait is not None:
                self.clock.advance(round(wait, 3))
                wait = self.guard.allow("1.2.3.4")
            self.assertIsNone(wait)
            sent += 1
        self.assertEqual((sent, self.guard.bans()), (100, {}))
        self.assertEqual(self.guard.rate_limited, 90)

    def test_coming_back_before_retry_after_is_a_strike(self):
        wait = [self.guard.allow("1.2.3.4") for _ in range(11)][-1]
        for _ in range(3):
            self.clock.advance(wait / 2)
            wait = self.guard.allow("1.2.3.4")
            self.assertIsNotNone(wait)
        self.assertEqual(list(self.guard.bans()), ["1.2.3.4"])

    def test_admin_ban_and_unban(self):
        self.guard.ban("9.9.9.9", 60)
        self.assertEqual(list(self.guard.bans()), ["9.9.9.9"])
        self.assertTrue(self.guard.unban("9.9.9.9"))
        self.assertFalse(self.guard.unban("9.9.9.9"))
        self.assertEqual(self.guard.bans(), {})

    def test_sweep_bounds_memory(self):
        for i in range(100):
            self.guard.allow(f"10.0.0.{i}")
        self.clock.advance(11)
        self.guard.sweep()
        self.assertEqual(self.guard._buckets, {})
