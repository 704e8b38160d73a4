"""Signed envelopes (libp2p RFC 0002) and the relay reservation voucher."""
from relayd.libp2p import protobuf, varint
from relayd.libp2p.peerid import PeerId, verify

VOUCHER_DOMAIN = b"libp2p-relay-rsvp"
VOUCHER_TYPE = b"\x03\x02"
PEER_RECORD_DOMAIN = b"libp2p-peer-record"
PEER_RECORD_TYPE = b"\x03\x01"         # the multicodec libp2p-peer-record, as a varint


def _signed_bytes(domain, payload_type, payload):
    return b"".join(varint.prefixed(part) for part in (domain, payload_type, payload))


def seal(keypair, domain, payload_type, payload):
    """Envelope{public_key=1, payload_type=2, payload=3, signature=5} signed by ``keypair``."""
    signature = keypair.sign(_signed_bytes(domain, payload_type, payload))
    return protobuf.encode([(1, keypair.public_key), (2, payload_type), (3, payload), (5, signature)])


def open_envelope(data, domain):
    """``(signer PeerId, payload_type, payload)``; ValueError when the signature does not verify."""
    fields = protobuf.decode(data)
    public_key = protobuf.first_bytes(fields, 1)
    payload_type = protobuf.first_bytes(fields, 2) or b""
    payload = protobuf.first_bytes(fields, 3) or b""
    signature = protobuf.first_bytes(fields, 5) or b""
    if public_key is None or not verify(public_key, signature, _signed_bytes(domain, payload_type, payload)):
        raise ValueError("envelope signature does not verify")
    return PeerId.from_public_key(public_key), payload_type, payload


def voucher(keypair, peer, expiration):
    """The sealed reservation voucher for ``peer`` (a PeerId), valid until ``expiration`` (UNIX s)."""
    payload = protobuf.encode([(1, keypair.peer_id.bytes), (2, peer.bytes), (3, expiration)])
    return seal(keypair, VOUCHER_DOMAIN, VOUCHER_TYPE, payload)


def peer_record(keypair, seq, addrs):
    """The sealed PeerRecord (RFC 0003) of ``keypair``'s peer: ``seq`` must grow
    whenever ``addrs`` (binary multiaddrs without /p2p) change."""
    payload = protobuf.encode([(1, keypair.peer_id.bytes), (2, seq),
                               (3, [protobuf.encode([(1, addr)]) for addr in addrs])])
    return seal(keypair, PEER_RECORD_DOMAIN, PEER_RECORD_TYPE, payload)
