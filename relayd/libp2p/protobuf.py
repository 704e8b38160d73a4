"""A tiny protobuf codec: varint (0), fixed64 (1) and length-delimited (2) fields.

The libp2p messages relayd speaks are small and use only these wire types
(fixed64 for AutoNAT v2's nonce); encoding writes fields in the order given,
which is the canonical (deterministic) order the specs require for keys,
records and vouchers.
"""
from relayd.libp2p import varint

VARINT, FIXED64, BYTES = 0, 1, 2


class Fixed64(int):
    """An int encoded as a fixed64 field."""


def encode(fields):
    """``fields``: iterable of ``(number, value)``; ints are varints, bytes/str/lists of
    them are length-delimited (a list repeats the field); None is skipped."""
    out = bytearray()
    for number, value in fields:
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Fixed64):
                out += varint.encode(number << 3 | FIXED64) + int(item).to_bytes(8, "little")
            elif isinstance(item, bool) or isinstance(item, int):
                out += varint.encode(number << 3 | VARINT) + varint.encode(int(item))
            else:
                if isinstance(item, str):
                    item = item.encode("utf-8")
                out += varint.encode(number << 3 | BYTES) + varint.prefixed(bytes(item))
    return bytes(out)


def decode(data):
    """``{number: [values]}`` (ints, fixed64 as Fixed64, or bytes); skips fixed32;
    ValueError when malformed."""
    fields = {}
    pos = 0
    try:
        while pos < len(data):
            key, pos = varint.decode(data, pos)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise ValueError("field number 0")
            if wire == VARINT:
                value, pos = varint.decode(data, pos)
            elif wire == BYTES:
                length, pos = varint.decode(data, pos)
                if pos + length > len(data):
                    raise ValueError("truncated field")
                value, pos = bytes(data[pos:pos + length]), pos + length
            elif wire == FIXED64:
                if pos + 8 > len(data):
                    raise ValueError("truncated field")
                value, pos = Fixed64(int.from_bytes(data[pos:pos + 8], "little")), pos + 8
            elif wire == 5:
                pos += 4
                if pos > len(data):
                    raise ValueError("truncated field")
                continue
            else:
                raise ValueError(f"unsupported wire type {wire}")
            fields.setdefault(number, []).append(value)
    except varint.Incomplete:
        raise ValueError("truncated varint") from None
    return fields


def first(fields, number, default=None):
    values = fields.get(number)
    return values[0] if values else default


def first_bytes(fields, number):
    """The first value of a length-delimited field, or None; ValueError if it is a varint."""
    value = first(fields, number)
    if value is not None and not isinstance(value, bytes):
        raise ValueError(f"field {number} is not length-delimited")
    return value


def all_bytes(fields, number):
    """Every value of a repeated length-delimited field; ValueError if one is a varint."""
    values = fields.get(number, [])
    if any(not isinstance(value, bytes) for value in values):
        raise ValueError(f"field {number} is not length-delimited")
    return values


def first_int(fields, number, default=None):
    value = first(fields, number, default)
    if value is not None and not isinstance(value, int):
        raise ValueError(f"field {number} is not a varint")
    return value
