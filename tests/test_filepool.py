"""write_atomically: the one way relayd replaces a file (tables, keys,
checkpoints, the e2e store)."""
import os
import stat

from twisted.trial import unittest

from relayd.filepool import write_atomically
from tests.test_journal_full_disk import SIZE, mount_tmpfs


class WriteAtomicallyTests(unittest.TestCase):
    def test_replaces_the_file_with_the_mode_asked_for(self):
        path = os.path.join(self.mktemp())
        write_atomically(path, b"old", 0o600)
        write_atomically(path, b"new", 0o600, sync_directory=True)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(os.path.dirname(os.path.abspath(path))),
                         [os.path.basename(path)])

    def test_a_full_disk_leaves_the_old_file_and_no_temporary_one(self):
        path = os.path.join(mount_tmpfs(self), "table.json")
        write_atomically(path, b"old")
        self.assertRaises(OSError, write_atomically, path, b"x" * (2 * SIZE))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertEqual(os.listdir(os.path.dirname(path)), ["table.json"])
