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
        self.assertFalse(window.admit("d"))
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

    def test_admit_is_check_and_add_in_one(self):
        window = DedupWindow(Clock(), 3600, 2)
        self.assertEqual([window.admit(i) for i in ("a", "b", "a", "c", "a")],
                         [True, True, False, True, True])      # "c" pushed "a" out
        self.assertEqual(window.hits, 1)
        self.assertEqual(sorted(window._ids), ["a", "c"])

    def test_an_id_discarded_and_admitted_again_keeps_its_new_place(self):
        window = DedupWindow(Clock(), 3600, 3)
        window.admit("x")
        window.discard("x")                 # its journal write failed
        self.assertNotIn("x", window)
        for msg_id in ("a", "x", "b", "c"):  # the retry of "x" among others
            self.assertTrue(window.admit(msg_id))
        self.assertEqual(sorted(window._ids), ["b", "c", "x"])     # "a" went, not the new "x"
        window.admit("d")
        self.assertEqual(sorted(window._ids), ["b", "c", "d"])
        self.assertEqual((len(window._order), window._stale), (3, {}))

    def test_a_discarded_id_is_swept_with_its_second(self):
        clock = Clock()
        window = DedupWindow(clock, 60, 1000)
        window.admit("gone")
        window.discard("gone")
        window.admit("kept")
        clock.advance(62)
        window.admit("fresh")
        self.assertEqual(sorted(window._ids), ["fresh"])
        self.assertEqual((list(window._order), window._stale), (["fresh"], {}))

    def test_an_id_outlives_the_window_by_less_than_two_seconds(self):
        clock = Clock()
        clock.advance(100.1)
        window = DedupWindow(clock, 60, 1000)
        window.admit("a")                   # second 100
        clock.advance(60.4)                 # 160.5: "a" is past the window, second 100 is not
        window.admit("b")
        self.assertIn("a", window)
        clock.advance(1.5)                  # 162.0: the next sweep, second 100 is past
        window.admit("c")
        self.assertNotIn("a", window)
        self.assertIn("b", window)

    def test_a_time_that_is_not_a_number_counts_as_now(self):
        clock = Clock()
        clock.advance(1000)
        window = DedupWindow(clock, 60, 1000)
        for when in ("yesterday", float("nan"), float("inf"), None):
            window.add(repr(when), when=when)
        clock.advance(30)
        window.admit("later")
        self.assertEqual(len(window), 5)

    def test_a_snapshot_round_trip_keeps_order_runs_and_discards(self):
        clock = Clock()
        source = DedupWindow(clock, 3600, 10)
        for n, msg_id in enumerate("abcdef"):
            clock.advance(n % 2)
            source.admit(msg_id)
        source.discard("b")
        window = DedupWindow(clock, 3600, 3)
        window.load_snapshot(source.snapshot(exclude=["f"]))
        self.assertEqual(sorted(window._ids), ["c", "d", "e"])      # within the bound, newest kept
        window.admit("b")                                            # new again
        self.assertEqual(sorted(window._ids), ["b", "d", "e"])

    def test_a_snapshot_of_the_format_with_a_time_per_id_loads(self):
        clock = Clock()
        clock.advance(1000)
        window = DedupWindow(clock, 60, 10)
        window.load_snapshot({"ids": ["old", "a", "b"], "times": [900.5, 990.2, 995.0],
                              "unsettled": ["b"]})
        self.assertEqual(sorted(window._ids), ["a", "old"])
        window.admit("c")                                            # the sweep: "old" is past
        self.assertEqual(sorted(window._ids), ["a", "c"])

    def test_a_snapshot_that_does_not_add_up_is_refused(self):
        window = DedupWindow(Clock(), 60, 10)
        for bad in ({"ids": ["a", "b"], "runs": [[5, 1]], "unsettled": []},
                    {"ids": ["a"], "runs": [[5, 1]], "discarded": [["a", 2]], "unsettled": []},
                    {"ids": ["a", "b", "a"], "runs": [[5, 3]], "unsettled": []},
                    {"ids": ["a", "b"], "runs": [[5, 2]], "discarded": [["a", 0]], "unsettled": []},
                    {"ids": ["a", "a", "a"], "runs": [[5, 3]], "discarded": [["a", 1]],
                     "unsettled": []}):
            with self.assertRaises(ValueError):
                window.load_snapshot(bad)
