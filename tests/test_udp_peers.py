"""Peer table ownership and staleness; per-source token buckets."""
from twisted.trial import unittest

from relayd.udp.peers import NameTaken, PeerTable, TableFull
from relayd.udp.ratelimit import TokenBuckets

A = ("192.0.2.1", 1000)
B = ("192.0.2.2", 2000)
KEY1, KEY2 = b"1" * 32, b"2" * 32


class PeerTableTests(unittest.TestCase):
    def setUp(self):
        self.table = PeerTable(max_peers=3, stale_after=60)

    def test_name_belongs_to_its_address_until_stale(self):
        self.table.claim("alice", A, 0)
        self.assertRaises(NameTaken, self.table.claim, "alice", B, 59)
        peer, _ = self.table.claim("alice", B, 61)
        self.assertEqual(self.table.get("alice").address, B)
        self.assertIsNone(self.table.at(A))
        self.assertIs(self.table.at(B), peer)

    def test_a_proven_key_moves_the_name(self):
        self.table.claim("alice", A, 0, key=KEY1)
        self.assertRaises(NameTaken, self.table.claim, "alice", B, 1)
        self.assertRaises(NameTaken, self.table.claim, "alice", B, 1, key=KEY2)
        peer, _ = self.table.claim("alice", B, 2, key=KEY1)
        self.assertEqual((peer.address, peer.key), (B, KEY1))

    def test_a_key_does_not_take_a_name_registered_without_one(self):
        self.table.claim("alice", A, 0)
        self.assertRaises(NameTaken, self.table.claim, "alice", B, 1, key=KEY1)

    def test_refresh_keeps_the_key_and_a_different_key_is_refused(self):
        self.table.claim("alice", A, 0, key=KEY1)
        peer, _ = self.table.claim("alice", A, 5)
        self.assertEqual(peer.key, KEY1)
        self.assertRaises(NameTaken, self.table.claim, "alice", A, 6, key=KEY2)

    def test_one_name_per_address(self):
        self.table.claim("alice", A, 0)
        _, gave_up = self.table.claim("carol", A, 1)
        self.assertEqual(gave_up, "alice")
        self.assertIsNone(self.table.get("alice"))

    def test_max_peers(self):
        for i in range(3):
            self.table.claim(f"p{i}", ("192.0.2.9", i), 0)
        self.assertRaises(TableFull, self.table.claim, "p3", ("192.0.2.9", 3), 0)
        self.table.claim("renamed", ("192.0.2.9", 0), 0)    # a rename does not grow the table

    def test_sweep_removes_only_stale_peers(self):
        self.table.claim("alice", A, 0)
        bob, _ = self.table.claim("bob", B, 0)
        self.table.touch(bob, 50)
        self.assertEqual([p.name for p in self.table.sweep(70)], ["alice"])
        self.assertEqual([p.name for p in self.table], ["bob"])

    def test_recent_names_are_bounded_newest_first(self):
        for i in range(3):
            self.table.claim(f"p{i}", ("192.0.2.9", i), i)
        self.assertEqual(self.table.recent_names(2), ["p2", "p1"])


class TokenBucketTests(unittest.TestCase):
    def test_burst_then_rate(self):
        buckets = TokenBuckets(rate=2, burst=3)
        self.assertEqual([buckets.allow("a", 0) for _ in range(4)], [True, True, True, False])
        self.assertTrue(buckets.allow("b", 0))
        self.assertTrue(buckets.allow("a", 0.5))
        self.assertFalse(buckets.allow("a", 0.5))

    def test_table_is_bounded(self):
        buckets = TokenBuckets(rate=1, burst=1, max_keys=2)
        for key in "abc":
            buckets.allow(key, 0)
        self.assertEqual(len(buckets), 2)
