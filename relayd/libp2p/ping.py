"""Ping (``/ipfs/ping/1.0.0``): echo 32-byte blocks until the opener half-closes."""
from relayd.libp2p.yamux import StreamHandler

PROTOCOL_ID = "/ipfs/ping/1.0.0"
SIZE = 32
MAX_STREAMS_PER_CONNECTION = 2


class PingResponder(StreamHandler):
    def __init__(self, connection):
        self.connection = connection
        self.buf = b""
        self.counted = False

    def stream_opened(self, stream):
        self.stream = stream
        active = self.connection.ping_streams
        if active >= MAX_STREAMS_PER_CONNECTION:
            stream.reset()
            return
        self.connection.ping_streams = active + 1
        self.counted = True
        stream.register_producer(stream)    # echoes waiting for window stop the opener's credit

    def data_received(self, data):
        self.buf += data
        whole = len(self.buf) - len(self.buf) % SIZE
        if whole:
            self.stream.write(self.buf[:whole])
            self.buf = self.buf[whole:]

    def read_closed(self):
        self.stream.close()

    def stream_closed(self, reset):
        if self.counted:
            self.connection.ping_streams -= 1
            self.counted = False
