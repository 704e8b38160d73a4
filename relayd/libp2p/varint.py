"""Unsigned LEB128 varints (multiformats unsigned-varint) and length prefixes."""


class Incomplete(ValueError):
    """More bytes are needed before the value can be read (malformed, to a
    caller that holds the whole input)."""


MAX_VARINT_BYTES = 9    # multiformats caps varints at 63 bits / 9 bytes


def encode(value):
    if value < 0:
        raise ValueError("varint must not be negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode(buf, pos=0):
    """``(value, next_pos)``; raises Incomplete or ValueError (overlong/non-minimal)."""
    value = shift = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            raise Incomplete()
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise ValueError("non-minimal varint")
            return value, pos + i + 1
        shift += 7
    raise ValueError("varint longer than 9 bytes")


def prefixed(data):
    """``uvarint(len(data)) || data``."""
    return encode(len(data)) + data


def split_prefixed(buf, limit):
    """Take one length-prefixed message from ``buf``.

    Returns ``(message, rest)``, or None when ``buf`` holds no complete
    message yet; raises ValueError when the declared length exceeds ``limit``.
    """
    try:
        length, pos = decode(buf)
    except Incomplete:
        return None
    if length > limit:
        raise ValueError(f"message of {length} bytes exceeds the limit of {limit}")
    if len(buf) < pos + length:
        return None
    return bytes(buf[pos:pos + length]), bytes(buf[pos + length:])
