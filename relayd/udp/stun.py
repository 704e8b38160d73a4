"""RFC 8489 STUN codec: just enough for a Binding server on a shared port.

``looks_like_stun`` demultiplexes STUN from the JSON rendezvous packets by
the top two bits of the first byte and the magic cookie.  ``parse`` checks
the header, the attribute framing and FINGERPRINT; ``respond`` builds the
reply a Binding server owes to a parsed message (or None to stay silent).
``classic_response`` answers an RFC 3489 Binding request (no magic cookie)
with a MAPPED-ADDRESS, never with more bytes than the request had.
"""
import binascii
import ipaddress
import struct
from dataclasses import dataclass, field

MAGIC_COOKIE = 0x2112A442
HEADER = struct.Struct("!HHI12s")
FINGERPRINT_XOR = 0x5354554E

BINDING = 0x001
REQUEST, INDICATION, SUCCESS, ERROR = 0b00, 0b01, 0b10, 0b11

MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
REALM = 0x0014
NONCE = 0x0015
MESSAGE_INTEGRITY_SHA256 = 0x001C
PASSWORD_ALGORITHM = 0x001D
USERHASH = 0x001E
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
FINGERPRINT = 0x8028

# Comprehension-required attributes (type < 0x8000) a Binding server knows;
# any other one in a request earns a 420 (RFC 8489 section 6.3.1).
KNOWN_REQUIRED = {MAPPED_ADDRESS, USERNAME, MESSAGE_INTEGRITY, ERROR_CODE,
                  UNKNOWN_ATTRIBUTES, REALM, NONCE, MESSAGE_INTEGRITY_SHA256,
                  PASSWORD_ALGORITHM, USERHASH, XOR_MAPPED_ADDRESS}

REASONS = {400: "Bad Request", 420: "Unknown Attribute"}


class StunError(ValueError):
    """A datagram that is not a well-formed STUN message (to be dropped)."""


@dataclass
class Message:
    method: int
    cls: int
    transaction_id: bytes
    attributes: list = field(default_factory=list)   # [(type, value bytes)]

    def get(self, attr_type):
        for t, value in self.attributes:
            if t == attr_type:
                return value
        return None


def looks_like_stun(data):
    """True when ``data`` has a STUN header: top bits 00 and the magic cookie."""
    return (len(data) >= HEADER.size and data[0] & 0xC0 == 0
            and data[4:8] == b"\x21\x12\xa4\x42")


def looks_like_classic(data):
    """True for an RFC 3489 Binding request: type 0x0001, no magic cookie, length matching."""
    return (len(data) >= 20 and data[:2] == b"\x00\x01" and data[4:8] != b"\x21\x12\xa4\x42"
            and struct.unpack_from("!H", data, 2)[0] == len(data) - 20 and len(data) % 4 == 0)


def classic_response(data, host, port):
    """The RFC 3489 Binding Response to ``data`` from ``host``:``port``, or None.

    None when it would be longer than the request (no amplification), for
    an IPv6 source (RFC 3489 knows IPv4 only), for a CHANGE-REQUEST asking
    for another address or port (this server has one), or when the
    attributes are malformed.  RESPONSE-ADDRESS is never honoured.
    """
    ip = ipaddress.ip_address(host)
    if ip.version != 4:
        return None
    offset = 20
    while offset < len(data):
        if offset + 4 > len(data):
            return None
        attr_type, attr_len = struct.unpack_from("!HH", data, offset)
        end = offset + 4 + attr_len
        if end > len(data) or attr_len % 4:
            return None
        if attr_type == CHANGE_REQUEST and (attr_len != 4 or data[offset + 4:end] != bytes(4)):
            return None
        offset = end
    mapped = struct.pack("!BBH", 0, 0x01, port) + ip.packed
    reply = (struct.pack("!HH", 0x0101, 4 + len(mapped)) + data[4:20]
             + struct.pack("!HH", MAPPED_ADDRESS, len(mapped)) + mapped)
    return reply if len(reply) <= len(data) else None


def _split_type(message_type):
    method = (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    cls = ((message_type & 0x0010) >> 4) | ((message_type & 0x0100) >> 7)
    return method, cls


def _join_type(method, cls):
    return ((method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2)
            | ((cls & 0b01) << 4) | ((cls & 0b10) << 7))


def message_class(data):
    """The class (REQUEST, INDICATION, SUCCESS or ERROR) of an encoded message."""
    return _split_type(struct.unpack_from("!H", data)[0])[1]


def _pad(n):
    return (4 - n % 4) % 4


def fingerprint(data):
    """The FINGERPRINT value for the message bytes that precede it."""
    return (binascii.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def parse(data):
    """Bytes -> Message, raising StunError for anything malformed."""
    if not looks_like_stun(data):
        raise StunError("not a STUN message")
    message_type, length, _cookie, txid = HEADER.unpack_from(data)
    if length % 4 or HEADER.size + length != len(data):
        raise StunError("length field does not match the datagram")
    method, cls = _split_type(message_type)
    attributes, offset = [], HEADER.size
    while offset < len(data):
        if offset + 4 > len(data):
            raise StunError("truncated attribute header")
        attr_type, attr_len = struct.unpack_from("!HH", data, offset)
        end = offset + 4 + attr_len
        if end > len(data):
            raise StunError("attribute runs past the end")
        value = data[offset + 4:end]
        if attr_type == FINGERPRINT:
            if attr_len != 4 or end != len(data):
                raise StunError("FINGERPRINT must be the last attribute")
            if struct.unpack("!I", value)[0] != fingerprint(data[:offset]):
                raise StunError("FINGERPRINT does not match")
        attributes.append((attr_type, value))
        offset = end + _pad(attr_len)
    if offset != len(data):
        raise StunError("attribute padding runs past the end")
    return Message(method, cls, txid, attributes)


def _xor_key(txid):
    return struct.pack("!I", MAGIC_COOKIE) + txid


def xor_address(host, port, txid):
    """XOR-MAPPED-ADDRESS value for ``host``:``port``."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    family = 0x01 if ip.version == 4 else 0x02
    key = _xor_key(txid)
    packed = bytes(a ^ b for a, b in zip(ip.packed, key))
    return struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + packed


def decode_xor_address(value, txid):
    """XOR-MAPPED-ADDRESS value -> (host, port)."""
    if len(value) not in (8, 20):
        raise StunError("bad XOR-MAPPED-ADDRESS length")
    _, family, xport = struct.unpack_from("!BBH", value)
    raw = bytes(a ^ b for a, b in zip(value[4:], _xor_key(txid)))
    if (family, len(raw)) not in ((0x01, 4), (0x02, 16)):
        raise StunError("bad XOR-MAPPED-ADDRESS family")
    return str(ipaddress.ip_address(raw)), xport ^ (MAGIC_COOKIE >> 16)


def encode(method, cls, txid, attributes, with_fingerprint=True):
    """Build a message from ``[(type, value)]``, appending FINGERPRINT."""
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\x00" * _pad(len(v))
                    for t, v in attributes)
    length = len(body) + (8 if with_fingerprint else 0)
    out = HEADER.pack(_join_type(method, cls), length, MAGIC_COOKIE, txid) + body
    if with_fingerprint:
        out += struct.pack("!HHI", FINGERPRINT, 4, fingerprint(out))
    return out


def error_code(code, reason=None):
    reason = (reason or REASONS[code]).encode("utf-8")
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason


def respond(message, host, port):
    """The reply to ``message`` from ``host``:``port``, or None to stay silent.

    Only requests get answers: a Binding request gets a success response
    with XOR-MAPPED-ADDRESS, an unknown comprehension-required attribute a
    420 listing them, any other method a 400.
    """
    if message.cls != REQUEST:
        return None
    txid = message.transaction_id
    if message.method != BINDING:
        return encode(message.method, ERROR, txid, [(ERROR_CODE, error_code(400))])
    unknown = [t for t, _ in message.attributes if t < 0x8000 and t not in KNOWN_REQUIRED]
    if unknown:
        listed = b"".join(struct.pack("!H", t) for t in dict.fromkeys(unknown))
        return encode(BINDING, ERROR, txid, [(ERROR_CODE, error_code(420)),
                                             (UNKNOWN_ATTRIBUTES, listed)])
    return encode(BINDING, SUCCESS, txid, [(XOR_MAPPED_ADDRESS, xor_address(host, port, txid))])
