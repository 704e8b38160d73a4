"""Seed 003's chat protocol (``/private-chat/1.0.0``): one stream per
message, carrying one JSON string and ``\\n`` (Go's ``json.Encoder``), then
closed.  Anything but a JSON string is refused, as the seed does."""
import json

from twisted.internet import defer

from relayd.libp2p.readers import WholeStream
from relayd.libp2p.yamux import StreamHandler

PROTOCOL_ID = "/private-chat/1.0.0"
MAX_MESSAGE = 64 * 1024


def encode(text):
    return json.dumps(text).encode() + b"\n"


def decode(data):
    """The text of one chat message; ValueError when it is not one JSON string."""
    text = json.loads(data.decode("utf-8"))
    if not isinstance(text, str):
        raise ValueError("a chat message is one JSON string")
    return text


class ChatReceiver(WholeStream):
    """Reads one message until the sender closes; ``on_message(peer, text)``."""

    limit = MAX_MESSAGE

    def __init__(self, connection, on_message):
        self.peer = connection.remote_peer
        self.on_message = on_message

    def whole_received(self, data):
        try:
            text = decode(data)
        except ValueError:
            return
        self.on_message(self.peer, text)


class ChatSender(StreamHandler):
    """Writes one message and closes; ``done`` fires once the stream is closed."""

    def __init__(self, text):
        self.data = encode(text)
        self.done = defer.Deferred()

    def stream_opened(self, stream):
        self.stream = stream
        stream.write(self.data)
        stream.close()

    def read_closed(self):
        self.stream.close()

    def stream_closed(self, reset):
        if not self.done.called:
            if reset:
                self.done.errback(ConnectionError("the peer refused the chat stream"))
            else:
                self.done.callback(None)


def send(connection, text):
    """Send ``text`` on a new stream of ``connection``; fires when it is closed."""
    sender = ChatSender(text)
    connection.open_protocol(PROTOCOL_ID, sender)
    return sender.done
