"""Stream handlers for the two ways libp2p protocols read a stream: a run of
length-prefixed messages, or everything the peer writes until it half-closes."""
from relayd.libp2p import varint
from relayd.libp2p.yamux import StreamHandler


class PrefixedMessages(StreamHandler):
    """Hands each length-prefixed message the peer writes to
    ``message_received(message)``.  A bad prefix, a message longer than
    ``limit``, or ValueError from ``message_received`` calls ``malformed()``
    and resets the stream; nothing after it is read.  The peer's half-close
    closes ours."""

    buf = b""

    def malformed(self):
        """A malformed message ended the stream."""

    def data_received(self, data):
        self.buf += data
        while not self.stream.closed:
            try:
                got = varint.split_prefixed(self.buf, self.limit)
                if got is None:
                    return
                message, self.buf = got
                self.message_received(message)
            except ValueError:
                self.malformed()
                self.stream.reset()

    def read_closed(self):
        self.stream.close()


class WholeStream(StreamHandler):
    """Collects what the peer writes until it half-closes (past ``limit``
    bytes the stream is reset), then closes ours and hands it all to
    ``whole_received(data)``."""

    limit = 64 * 1024
    buf = b""

    def data_received(self, data):
        self.buf += data
        if len(self.buf) > self.limit:
            self.stream.reset()

    def read_closed(self):
        self.stream.close()
        self.whole_received(self.buf)
