"""relay-chat's end-to-end store: mode 0600, and two processes of one id
(a long listen and a keys or send) do not undo each other's writes."""
import os
import stat

from twisted.trial import unittest

from relayd.e2ee import wire
from relayd.e2ee.store import SEEN_LIMIT, SPK_KEEP, SPK_ROTATE, Store, StoreError


class StoreTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.abspath(self.mktemp())

    def test_mode_and_round_trip(self):
        store = Store.open(self.path)
        keys = store.new_one_time(3)
        store.pin("bob", b"b" * 32)
        store.save()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        again = Store.open(self.path)
        kid = wire.key_id(keys[0].public_key().public_bytes_raw())
        self.assertEqual(again.one_time_for(kid).private_bytes_raw(), keys[0].private_bytes_raw())
        self.assertEqual(again.pinned("bob"), b"b" * 32)

    def test_two_processes_merge(self):
        listen, other = Store.open(self.path), Store.open(self.path)
        listen.new_one_time(2)
        listen.save()
        published = other.new_one_time(3)              # e.g. `relay-chat keys` meanwhile
        other.pin("carol", b"c" * 32)
        other.rooms["r"] = {"owner": "alice", "epoch": 2, "keys": {"2": "k2"}, "members": {}}
        other.save()
        used = wire.key_id(published[0].public_key().public_bytes_raw())
        listen.first_time("m1")
        listen.rooms["r"] = {"owner": "alice", "epoch": 1, "keys": {"1": "k1"}, "members": {}}
        listen.forget_one_time(used)
        listen.save()                                  # the long-running one writes last
        final = Store.open(self.path)
        self.assertEqual(len(final.opks), 4)            # 2 + 3, less the one used
        self.assertIsNone(final.one_time_for(used))
        self.assertEqual(final.pinned("carol"), b"c" * 32)
        self.assertEqual((final.rooms["r"]["epoch"], sorted(final.rooms["r"]["keys"])),
                         (2, ["1", "2"]))
        self.assertFalse(final.first_time("m1"))

    def test_a_forgotten_room_stays_forgotten(self):
        a, b = Store.open(self.path), Store.open(self.path)
        b.rooms["r"] = {"owner": "x", "epoch": 1, "keys": {"1": "k"}, "members": {}}
        b.save()
        a.forget_room("r")
        a.save()
        self.assertNotIn("r", Store.open(self.path).rooms)

    def test_signed_prekey_rotates_weekly_and_old_ones_are_kept_a_while(self):
        now = [1000.0]
        store = Store(self.path, clock=lambda: now[0])
        first = store.signed_prekey()
        kid = wire.key_id(first.public_key().public_bytes_raw())
        now[0] += SPK_ROTATE - 1
        self.assertEqual(store.signed_prekey().private_bytes_raw(), first.private_bytes_raw())
        now[0] += 1
        self.assertNotEqual(store.signed_prekey().private_bytes_raw(), first.private_bytes_raw())
        self.assertIsNotNone(store.signed_prekey_for(kid))      # mail in flight still opens
        now[0] += SPK_KEEP
        store.signed_prekey()
        self.assertIsNone(store.signed_prekey_for(kid))         # then it is gone for good
        self.assertEqual(len(store.spks), 1)

    def test_replay_memory_is_bounded(self):
        store = Store.open(self.path)
        for n in range(SEEN_LIMIT + 5):
            store.first_time(str(n))
        self.assertTrue(store.first_time("0"))        # forgotten: the oldest went first
        self.assertFalse(store.first_time(str(SEEN_LIMIT)))

    def test_damaged_file_is_an_error_that_names_it(self):
        with open(self.path, "w") as f:
            f.write("[1, 2]")
        with self.assertRaisesRegex(StoreError, "is not an end-to-end store"):
            Store.open(self.path)
