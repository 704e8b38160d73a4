"""The journal's record framing: the C version (relayd/journal/_framing.c)
gives the Python version's bytes."""
import os
import random
import zlib

from twisted.trial import unittest

from relayd.journal import record
from tests.cbuild import assert_compiles_without_warnings

try:
    from relayd.journal import _framing
except ImportError:
    _framing = None

SKIP = None if _framing is not None else "the native framing is not built (no C compiler or zlib headers?)"
SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "relayd", "journal", "_framing.c")


class PythonFramingTests(unittest.TestCase):
    def test_a_record_is_seq_crc_and_json(self):
        body = b'{"from": "alice", "body": "hi"}'
        crc = zlib.crc32(b"42" + body)
        self.assertEqual(record.python_frame_batch(42, [body, b"{}"]),
                         b"42 %08x %s\n43 %08x {}\n" % (crc, body, zlib.crc32(b"43{}")))
        self.assertEqual(record.parse(record.python_frame_batch(42, [body]))[:2], (42, {"from": "alice", "body": "hi"}))


class NativeFramingTests(unittest.TestCase):
    skip = SKIP

    def test_the_journal_frames_with_it(self):
        self.assertIs(record.frame_batch, _framing.frame_batch)

    def test_same_bytes_as_the_python_framing(self):
        rng = random.Random(9)
        for _ in range(3000):
            first = rng.choice([0, 1, 9, 10, 99, 100, 12345, 2 ** 32, 2 ** 63 - 10, rng.randrange(2 ** 62)])
            bodies = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
                      for _ in range(rng.randrange(0, 8))]
            self.assertEqual(_framing.frame_batch(first, bodies), record.python_frame_batch(first, bodies))
        big = [b"x" * 100000, b'{"a": 1}'] * 50
        self.assertEqual(_framing.frame_batch(7, big), record.python_frame_batch(7, big))

    def test_anything_but_bytes_is_refused(self):
        for bodies in ([b"{}", "{}"], [None], 5):
            with self.assertRaises(TypeError):
                _framing.frame_batch(1, bodies)
            with self.assertRaises(TypeError):
                record.python_frame_batch(1, bodies)

    def test_the_source_compiles_without_warnings(self):
        assert_compiles_without_warnings(self, SOURCE)
