"""The kad-dht ``Message`` protobuf and its ``Record`` and ``Peer`` parts."""
from relayd.libp2p import multiaddr, protobuf
from relayd.libp2p.peerid import PeerId

PUT_VALUE, GET_VALUE, ADD_PROVIDER, GET_PROVIDERS, FIND_NODE, PING = range(6)
TYPE_NAMES = {PUT_VALUE: "put_value", GET_VALUE: "get_value", ADD_PROVIDER: "add_provider",
              GET_PROVIDERS: "get_providers", FIND_NODE: "find_node", PING: "ping"}
NOT_CONNECTED, CONNECTED = 0, 1
MAX_ADDRS = 16          # addresses kept per peer from a request
MAX_ADDR_BYTES = 256


class KadMessage:
    """A decoded request or reply; peers are ``(PeerId, [multiaddr text])``."""

    __slots__ = ("type", "key", "record", "closer", "providers")

    def __init__(self, type, key=b"", record=None, closer=(), providers=()):
        self.type = type
        self.key = key
        self.record = record            # (key, value) or None
        self.closer = list(closer)
        self.providers = list(providers)


def encode_peer(peer_id, addrs, connected=False):
    binary = []
    for addr in addrs:
        try:
            binary.append(multiaddr.to_bytes(addr))
        except ValueError:
            continue
    return protobuf.encode([(1, peer_id.bytes), (2, binary), (3, CONNECTED if connected else None)])


def decode_peer(data):
    """``(PeerId, addrs)``; addresses we cannot read are skipped, at most MAX_ADDRS kept."""
    fields = protobuf.decode(data)
    peer_id = PeerId(protobuf.first_bytes(fields, 1) or b"")
    addrs = []
    for raw in fields.get(2, [])[:MAX_ADDRS]:
        if isinstance(raw, bytes) and len(raw) <= MAX_ADDR_BYTES:
            try:
                addrs.append(multiaddr.to_string(raw))
            except ValueError:
                pass
    return peer_id, addrs


def encode_record(key, value, time_received=""):
    return protobuf.encode([(1, key), (2, value), (5, time_received or None)])


def decode_record(data):
    fields = protobuf.decode(data)
    return protobuf.first_bytes(fields, 1) or b"", protobuf.first_bytes(fields, 2) or b""


def encode(msg, connected=frozenset()):
    """Bytes of ``msg``; peers in ``connected`` are marked CONNECTED."""
    record = None if msg.record is None else encode_record(*msg.record)
    return protobuf.encode([
        (1, msg.type), (2, msg.key or None), (3, record),
        (8, [encode_peer(p, a, p in connected) for p, a in msg.closer]),
        (9, [encode_peer(p, a, p in connected) for p, a in msg.providers]),
    ])


def decode(data):
    """A KadMessage; ValueError when malformed."""
    fields = protobuf.decode(data)
    msg_type = protobuf.first_int(fields, 1, PUT_VALUE)
    if msg_type not in TYPE_NAMES:
        raise ValueError(f"unknown kad message type {msg_type}")
    raw_record = protobuf.first_bytes(fields, 3)
    return KadMessage(
        msg_type, protobuf.first_bytes(fields, 2) or b"",
        None if raw_record is None else decode_record(raw_record),
        [decode_peer(p) for p in fields.get(8, []) if isinstance(p, bytes)],
        [decode_peer(p) for p in fields.get(9, []) if isinstance(p, bytes)])
