"""The ``/ipns/`` record validator (specs.ipfs.tech/ipns/ipns-record).

A record at ``/ipns/<peer id bytes>`` is an ``IpnsEntry`` protobuf whose
``signatureV2`` (field 8) is the key's signature over ``"ipns-signature:"``
and the DAG-CBOR ``data`` (field 9); the key is the ``pubKey`` field (7) or
the one inlined in the peer id.  ``data`` must say ``ValidityType`` 0 (an end
of life) with ``Validity`` still ahead; V1 fields, when present, must match
it.  The higher ``Sequence`` wins, then the later end of life.
"""
import calendar
import re

from relayd.libp2p import protobuf
from relayd.libp2p.peerid import PeerId, verify

PREFIX = b"ipns-signature:"
_RFC3339 = re.compile(rb"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d+)?Z$")


class CborError(ValueError):
    pass


def _cbor(data, pos, depth=0):
    """One CBOR item (unsigned ints, byte and text strings, maps): ``(value, pos)``."""
    if pos >= len(data) or depth > 4:
        raise CborError("truncated or too deep")
    major, info = data[pos] >> 5, data[pos] & 31
    pos += 1
    if info < 24:
        arg = info
    elif info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise CborError("truncated")
        arg, pos = int.from_bytes(data[pos:pos + size], "big"), pos + size
    else:
        raise CborError("indefinite lengths are not DAG-CBOR")
    if major == 0:
        return arg, pos
    if major in (2, 3):
        if pos + arg > len(data):
            raise CborError("truncated string")
        raw = bytes(data[pos:pos + arg])
        return (raw if major == 2 else raw.decode("utf-8")), pos + arg
    if major == 5:
        out = {}
        for _ in range(arg):
            key, pos = _cbor(data, pos, depth + 1)
            out[key], pos = _cbor(data, pos, depth + 1)
        return out, pos
    raise CborError(f"unexpected CBOR major type {major}")


def decode_data(data):
    value, pos = _cbor(data, 0)
    if pos != len(data) or not isinstance(value, dict):
        raise CborError("data is not one CBOR map")
    return value


def end_of_life(validity):
    found = _RFC3339.match(validity)
    if not found:
        raise ValueError("Validity is not an RFC 3339 UTC time")
    return calendar.timegm(tuple(int(x) for x in found.groups()) + (0, 0, 0))


def validate(key, value, now):
    """The record's rank; raises ValueError when it is not valid (or has
    expired at ``now``, UNIX seconds)."""
    peer_id = PeerId(key[len(b"/ipns/"):])
    fields = protobuf.decode(value)
    signature = protobuf.first_bytes(fields, 8)
    data = protobuf.first_bytes(fields, 9)
    if signature is None or data is None:
        raise ValueError("an IPNS record needs signatureV2 and data")
    public_key = protobuf.first_bytes(fields, 7) or peer_id.public_key()
    if public_key is None or PeerId.from_public_key(public_key) != peer_id:
        raise ValueError("the record's key is not the name's")
    if not verify(public_key, signature, PREFIX + data):
        raise ValueError("signatureV2 does not verify")
    entry = decode_data(data)
    sequence, validity = entry.get("Sequence"), entry.get("Validity")
    if entry.get("ValidityType") != 0 or not isinstance(validity, bytes) \
            or not isinstance(sequence, int) or not isinstance(entry.get("Value"), bytes):
        raise ValueError("data lacks Value, Sequence or an end-of-life Validity")
    for number, name in ((1, "Value"), (4, "Validity"), (5, "Sequence")):
        v1 = protobuf.first(fields, number)
        if v1 is not None and v1 != entry[name]:
            raise ValueError(f"the V1 field {name} does not match data")
    eol = end_of_life(validity)
    if eol <= now:
        raise ValueError("the record has expired")
    return sequence * 10 ** 12 + eol
