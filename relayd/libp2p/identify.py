"""Identify (``/ipfs/id/1.0.0``) and identify push (``/ipfs/id/push/1.0.0``)."""
from relayd.libp2p import multiaddr, protobuf, varint
from relayd.libp2p.yamux import StreamHandler

PROTOCOL_ID = "/ipfs/id/1.0.0"
PUSH_PROTOCOL_ID = "/ipfs/id/push/1.0.0"
PROTOCOL_VERSION = "ipfs/0.1.0"
MAX_PUSH = 8 * 1024 * 10        # js sends up to 10 messages of at most 8 KiB


def encode(public_key, listen_addrs, protocols, observed_addr, agent_version,
           signed_peer_record=None):
    """The Identify protobuf; addresses are multiaddr text."""
    return protobuf.encode([
        (5, PROTOCOL_VERSION),
        (6, agent_version),
        (1, public_key),
        (2, [multiaddr.to_bytes(a) for a in listen_addrs]),
        (4, multiaddr.to_bytes(observed_addr)),
        (3, list(protocols)),
        (8, signed_peer_record),
    ])


def message_for(connection):
    """The relay's length-prefixed Identify for ``connection``'s peer."""
    info = connection.factory.identify_info()
    return varint.prefixed(encode(
        info["public_key"], info["listen_addrs"], info["protocols"],
        connection.remote_address, info["agent_version"], info.get("signed_peer_record")))


def decode(data):
    """``{"public_key", "listen_addrs", "protocols", "observed_addr", "agent_version"}``;
    ValueError when malformed."""
    fields = protobuf.decode(data)
    observed = protobuf.first_bytes(fields, 4)
    return {
        "public_key": protobuf.first_bytes(fields, 1),
        "listen_addrs": [multiaddr.to_string(a) for a in protobuf.all_bytes(fields, 2)],
        "protocols": [p.decode("utf-8") for p in protobuf.all_bytes(fields, 3)],
        "observed_addr": multiaddr.to_string(observed) if observed else None,
        "agent_version": (protobuf.first_bytes(fields, 6) or b"").decode("utf-8"),
        "signed_peer_record": protobuf.first_bytes(fields, 8),
    }


class IdentifyResponder(StreamHandler):
    """Writes one length-prefixed Identify message and half-closes (as the
    answer on ``/ipfs/id/1.0.0``, or as a push on a stream the relay opened)."""

    def __init__(self, connection):
        self.connection = connection

    def stream_opened(self, stream):
        self.stream = stream
        stream.write(message_for(self.connection))
        stream.close()


class IdentifyPushSink(StreamHandler):
    """Accepts pushed identify updates and discards them (bounded)."""

    def __init__(self, connection):
        self.received = 0

    def data_received(self, data):
        self.received += len(data)
        if self.received > MAX_PUSH:
            self.stream.reset()

    def read_closed(self):
        self.stream.close()
