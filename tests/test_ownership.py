"""The key ownership table: first proof wins, kept across restarts, written in few writes."""
import os

from twisted.internet import defer
from twisted.trial import unittest

from relayd.core.ownership import DamagedTable, Ownership

KEY_A, KEY_B = b"a" * 32, b"b" * 32


class HeldPool:
    """A file pool whose jobs run when ``step()`` says so."""

    def __init__(self):
        self.jobs = []

    def run(self, f, *args):
        d = defer.Deferred()
        self.jobs.append((f, args, d))
        return d

    def step(self):
        f, args, d = self.jobs.pop(0)
        defer.maybeDeferred(f, *args).chainDeferred(d)


class OwnershipTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.abspath(self.mktemp())
        self.pool = HeldPool()
        self.table = Ownership(self.path, self.pool)
        self.table.load()

    def reloaded(self):
        table = Ownership(self.path, self.pool)
        table.load()
        return table

    def test_first_proof_wins_and_survives_a_restart(self):
        self.assertTrue(self.table.claim("alice", KEY_A))
        self.assertFalse(self.table.claim("alice", KEY_B))
        self.assertTrue(self.table.claim("alice", KEY_A))
        self.pool.step()
        again = self.reloaded()
        self.assertEqual((again.owner("alice"), len(again)), (KEY_A, 1))

    def test_claims_during_a_write_go_into_one_more_write(self):
        for n in range(5):
            self.table.claim(f"peer{n}", KEY_A)
        self.assertEqual(len(self.pool.jobs), 1, "one write at a time")
        self.pool.step()
        self.assertEqual(len(self.pool.jobs), 1, "the four later claims together")
        self.assertEqual(len(self.reloaded()), 1)
        self.pool.step()
        self.assertEqual(self.pool.jobs, [])
        self.assertEqual(len(self.reloaded()), 5)

    def test_save_fires_once_a_write_holding_its_change_ended(self):
        first = self.table.save()
        self.table.claim("alice", KEY_A)                 # during the first write
        second = self.table.save()
        self.assertNoResult(first)
        self.pool.step()
        self.successResultOf(first)
        self.assertNoResult(second)                      # alice is in the next write
        self.assertIsNone(self.reloaded().owner("alice"))
        self.pool.step()
        self.successResultOf(second)
        self.assertEqual(self.reloaded().owner("alice"), KEY_A)

    def test_a_failed_write_is_logged_and_the_next_change_writes_again(self):
        os.makedirs(self.path)                           # the rename cannot replace a directory
        written = self.table.save()
        self.pool.step()
        self.assertIsNone(self.successResultOf(written))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        os.rmdir(self.path)
        self.table.claim("alice", KEY_A)
        self.pool.step()
        self.assertEqual(self.reloaded().owner("alice"), KEY_A)

    def test_a_damaged_table_stops_the_start_and_is_left_alone(self):
        for damage in ("{not json", '{"alice": "not base64!"}', '["alice"]'):
            with open(self.path, "w") as f:
                f.write(damage)
            with self.assertRaises(DamagedTable) as cm:
                self.reloaded()
            self.assertIn(self.path, str(cm.exception))
            with open(self.path) as f:
                self.assertEqual(f.read(), damage)
