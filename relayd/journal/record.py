"""Journal record framing: ``<seq> <crc32> <json>\\n``.

``seq`` is the record's decimal sequence number (1, 2, 3… across every
segment of a journal), ``crc32`` eight lowercase hex digits of the CRC-32
(zlib) of the seq digits followed by the JSON bytes, so that a flipped bit
in either is caught.  A line that starts with ``{`` is a record of the
format before sequence numbers (a *legacy* record: JSON alone, no check).
"""
import zlib

from relayd import jsonfast


def frame(seq, body):
    """The journal line (with its newline) of JSON ``body`` as record ``seq``."""
    digits = b"%d" % seq
    return b"%s %08x %s\n" % (digits, zlib.crc32(body, zlib.crc32(digits)), body)


def python_frame_batch(first, bodies):
    """``frame`` for consecutive records from seq ``first``, as one bytes."""
    crc32 = zlib.crc32
    numbers = [b"%d" % seq for seq in range(first, first + len(bodies))]
    return b"".join([b"%s %08x %s\n" % (digits, crc32(body, crc32(digits)), body)
                     for digits, body in zip(numbers, bodies)])


try:        # the same in C, which lets the reactor thread run while it frames
    from relayd.journal._framing import frame_batch
except ImportError:             # no compiler (or zlib headers) when relayd was installed
    frame_batch = python_frame_batch


def parse(line):
    """``(seq, record, reason)`` of one line (with its newline).

    A good framed line gives ``(seq, record, None)``, a good legacy line
    ``(None, record, None)``; a bad one ``(seq or None, None, reason)``
    (the seq of a line that fails its checksum is not to be trusted).
    """
    if not line.endswith(b"\n"):
        return None, None, "torn line: no newline at end of segment"
    if line[:1] == b"{" or not line[:1].isdigit():
        record, reason = decode(line[:-1])
        return None, record, reason
    parts = line[:-1].split(b" ", 2)
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[1]) != 8:
        return None, None, "bad record frame"
    digits, crc, body = parts
    try:
        expected = int(crc, 16)
    except ValueError:
        return None, None, "bad record frame"
    seq = int(digits)
    if zlib.crc32(body, zlib.crc32(digits)) != expected:
        return seq, None, "checksum mismatch"
    record, reason = decode(body)
    return seq, record, reason


def decode(body):
    """``(record, None)`` for a JSON object, else ``(None, reason)``."""
    if not body.strip():
        return None, "empty line"
    try:
        record = jsonfast.loads_own(body)
    except UnicodeDecodeError:
        return None, "invalid UTF-8"
    except ValueError:
        return None, "invalid JSON"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    return record, None
