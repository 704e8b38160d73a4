"""The shared stream readers (relayd.libp2p.readers) on a real Yamux session:
length-prefixed messages, and whole streams read to the peer's close."""
from twisted.trial import unittest

from relayd.libp2p import varint, yamux
from relayd.libp2p.readers import PrefixedMessages, WholeStream
from tests.test_libp2p_wire import frames


class Messages(PrefixedMessages):
    limit = 10

    def __init__(self):
        self.got, self.bad = [], 0

    def message_received(self, message):
        if message == b"bad":
            raise ValueError("refused")
        self.got.append(message)
        if message == b"stop":
            self.stream.reset()

    def malformed(self):
        self.bad += 1


class Whole(WholeStream):
    limit = 8

    def __init__(self):
        self.got = []

    def whole_received(self, data):
        self.got.append(data)


class ReaderTests(unittest.TestCase):
    def open(self, handler):
        """An inbound stream 1 read by ``handler``; feed(data, fin) sends it data."""
        self.sent = []
        self.session = yamux.Session(self.sent.append, False, lambda s: s.attach(handler),
                                     lambda reason: None)
        self.session.feed(yamux.header(yamux.WINDOW_UPDATE, yamux.SYN, 1, 0))

    def feed(self, data, fin=False):
        self.session.feed(yamux.header(yamux.DATA, yamux.FIN if fin else 0, 1, len(data)) + data)

    def wire_flags(self):
        return [flags for _, flags, _, _, _ in frames(b"".join(self.sent))]

    def test_messages_split_across_reads_and_several_in_one(self):
        reader = Messages()
        self.open(reader)
        whole = varint.prefixed(b"one") + varint.prefixed(b"two") + varint.prefixed(b"three")
        self.feed(whole[:2])
        self.assertEqual(reader.got, [])
        self.feed(whole[2:10])                  # the rest of one, two, part of three
        self.assertEqual(reader.got, [b"one", b"two"])
        self.feed(whole[10:], fin=True)
        self.assertEqual(reader.got, [b"one", b"two", b"three"])
        self.assertIn(yamux.FIN, self.wire_flags(), "the peer's close closes ours")

    def test_too_long_or_refused_resets_and_reads_no_further(self):
        for first in (varint.prefixed(b"x" * 11), varint.prefixed(b"bad")):
            reader = Messages()
            self.open(reader)
            self.feed(first + varint.prefixed(b"after"))
            self.assertEqual((reader.got, reader.bad), ([], 1))
            self.assertIn(yamux.RST, self.wire_flags())

    def test_a_handler_that_resets_stops_the_loop(self):
        reader = Messages()
        self.open(reader)
        self.feed(varint.prefixed(b"stop") + varint.prefixed(b"after"))
        self.assertEqual((reader.got, reader.bad), ([b"stop"], 0))

    def test_whole_stream_until_close_and_its_limit(self):
        reader = Whole()
        self.open(reader)
        self.feed(b"1234")
        self.feed(b"5678", fin=True)
        self.assertEqual(reader.got, [b"12345678"])
        reader = Whole()
        self.open(reader)
        self.feed(b"123456789", fin=True)
        self.assertEqual(reader.got, [])
        self.assertIn(yamux.RST, self.wire_flags())
