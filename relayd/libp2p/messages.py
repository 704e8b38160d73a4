"""Circuit Relay v2 messages: HopMessage, StopMessage, Peer, Reservation, Limit."""
from relayd.libp2p import protobuf
from relayd.libp2p.peerid import PeerId

HOP_PROTOCOL_ID = "/libp2p/circuit/relay/0.2.0/hop"
STOP_PROTOCOL_ID = "/libp2p/circuit/relay/0.2.0/stop"
MAX_MESSAGE = 4096

# HopMessage.Type
RESERVE, CONNECT, STATUS = 0, 1, 2
# StopMessage.Type
STOP_CONNECT, STOP_STATUS = 0, 1
# Status
OK = 100
RESERVATION_REFUSED = 200
RESOURCE_LIMIT_EXCEEDED = 201
PERMISSION_DENIED = 202
CONNECTION_FAILED = 203
NO_RESERVATION = 204
MALFORMED_MESSAGE = 400
UNEXPECTED_MESSAGE = 401


def limit(duration, data):
    """Limit{duration (s), data (bytes per direction)}; zero means unlimited and is left out."""
    return protobuf.encode([(1, int(duration) or None), (2, int(data) or None)])


def peer(peer_id, addrs=()):
    return protobuf.encode([(1, peer_id.bytes), (2, list(addrs))])


def reservation(expire, addrs, voucher=None):
    """``addrs`` are binary multiaddrs."""
    return protobuf.encode([(1, int(expire)), (2, list(addrs)), (3, voucher)])


def hop(msg_type, peer=None, reservation=None, limit=None, status=None):
    return protobuf.encode([(1, msg_type), (2, peer), (3, reservation), (4, limit), (5, status)])


def stop(msg_type, peer=None, limit=None, status=None):
    return protobuf.encode([(1, msg_type), (2, peer), (3, limit), (4, status)])


def _decode(data, name, status_field):
    fields = protobuf.decode(data)
    msg_type = protobuf.first_int(fields, 1)
    if msg_type is None:
        raise ValueError(f"{name} without type")
    return (msg_type, _peer(protobuf.first_bytes(fields, 2)),
            protobuf.first_int(fields, status_field), fields)


def decode_hop(data):
    """``(type, peer PeerId or None, status, fields)``; ValueError when malformed."""
    return _decode(data, "HopMessage", 5)


def decode_stop(data):
    """``(type, peer PeerId or None, status, fields)``; ValueError when malformed."""
    return _decode(data, "StopMessage", 4)


def _peer(data):
    if data is None:
        return None
    peer_id = protobuf.first_bytes(protobuf.decode(data), 1)
    if peer_id is None:
        raise ValueError("Peer without id")
    return PeerId(peer_id)


def decode_limit(data):
    """``(duration, data)`` from a Limit protobuf (0 when absent)."""
    fields = protobuf.decode(data or b"")
    return protobuf.first_int(fields, 1, 0), protobuf.first_int(fields, 2, 0)
