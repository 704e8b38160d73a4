"""The dedup window: bounded in size at once, in time within a second."""
from twisted.internet.task import Clock
from twisted.trial import unittest

from relayd.core.dedup import DedupWindow


class DedupWindowTests(unittest.TestCase):
    def test_size_bound_drops_the_oldest(self):
        window = DedupWindow(Clock(), 3600, 3)
        for msg_id in "abcd":
            window.add(msg_id)
        self.assertEqual(len(window), 3)
        self.assertNotIn("a", window)
        self.assertTrue(window.check("d"))
        self.assertFalse(window.check("a"))
        self.assertEqual(window.hits, 1)

    def test_ids_expire_after_the_window(self):
        clock = Clock()
        window = DedupWindow(clock, 60, 1000)
        window.add("old")
        clock.advance(30)
        window.add("newer")
        clock.advance(31)
        window.add("newest")
        self.assertNotIn("old", window)
        self.assertIn("newer", window)
        clock.advance(61)
        window.add("latest")
        self.assertEqual(list(window._ids), ["latest"])

    def test_replayed_ids_keep_their_own_time(self):
        clock = Clock()
        clock.advance(1000)
        window = DedupWindow(clock, 60, 1000)
        window.add("from the journal", when=900)
        clock.advance(2)
        window.add("fresh")
        self.assertNotIn("from the journal", window)
        self.assertIn("fresh", window)
