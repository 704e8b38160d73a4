"""Framing: coalesced and split segments give exactly the frames sent."""
from twisted.trial import unittest

from relayd.tcp.framing import FrameTooLong, LegacySplitter, LineSplitter

MESSAGES = [b'bob||{"from": "alice", "text": "hello"}', b'carol||{"text": "caf\xc3\xa9 || {x}"}',
            b'*||{"text": "line\\nbreak"}']
EXPECTED = [("bob", {"from": "alice", "text": "hello"}, None),
            ("carol", {"text": "caf\u00e9 || {x}"}, None), ("*", {"text": "line\nbreak"}, None)]


class LegacyTests(unittest.TestCase):
    def feed_in_pieces(self, stream, size):
        splitter = LegacySplitter(65536)
        frames = []
        for i in range(0, len(stream), size):
            frames.extend(splitter.feed(stream[i:i + size]))
        return frames

    def test_coalesced_without_newlines(self):
        self.assertEqual(self.feed_in_pieces(b"".join(MESSAGES), 10000), EXPECTED)

    def test_split_at_every_byte(self):
        for separator in (b"", b"\n", b"\r\n"):
            stream = separator.join(MESSAGES) + separator
            self.assertEqual(self.feed_in_pieces(stream, 1), EXPECTED, separator)

    def test_every_split_point(self):
        stream = b"".join(MESSAGES)
        for cut in range(1, len(stream)):
            splitter = LegacySplitter(65536)
            frames = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])
            self.assertEqual(frames, EXPECTED, cut)

    def test_malformed_then_good(self):
        splitter = LegacySplitter(65536)
        frames = splitter.feed(b'no separator\nbob||not json\nbob||{"text": "ok"}\n')
        self.assertEqual(frames, [(None, None, "bad_json"), (None, None, "bad_json"),
                                  ("bob", {"text": "ok"}, None)])

    def test_bad_utf8(self):
        splitter = LegacySplitter(65536)
        frames = splitter.feed(b'bob||{"text": "\xff\xfe"}\nbob||{"text": "ok"}\n')
        self.assertEqual(frames, [(None, None, "bad_utf8"), ("bob", {"text": "ok"}, None)])

    def test_nested_too_deeply(self):
        for tail in (b"\n", b""):
            splitter = LegacySplitter(65536)
            frames = splitter.feed(b'bob||{"text": ' + b"[" * 5000 + tail)
            self.assertEqual(frames, [(None, None, "bad_json")], tail)
            self.assertEqual(splitter.feed(b'bob||{"text": "ok"}\n'), [("bob", {"text": "ok"}, None)])

    def test_oversized(self):
        splitter = LegacySplitter(100)
        self.assertRaises(FrameTooLong, splitter.feed, b'bob||{"text": "' + b"x" * 200)


class LineTests(unittest.TestCase):
    def test_lines(self):
        splitter = LineSplitter(100)
        self.assertEqual(splitter.feed(b'{"a": 1}\n{"b"'), [b'{"a": 1}'])
        self.assertEqual(splitter.feed(b': 2}\n'), [b'{"b": 2}'])

    def test_too_long(self):
        splitter = LineSplitter(10)
        self.assertRaises(FrameTooLong, splitter.feed, b"x" * 11)
        self.assertRaises(FrameTooLong, LineSplitter(10).feed, b"x" * 20 + b"\n")
