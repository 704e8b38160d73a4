"""Checkpoints: the state a replay rebuilds, saved with the journal position it covers.

A checkpoint file holds one header line and one body line::

    {"version": 1, "segment": ..., "offset": ..., "seq": ..., "length": n, "crc32": c}
    {"<part>": <that part's snapshot>, ...}

``length`` and ``crc32`` (zlib) cover the body's bytes.  ``write`` runs on
the file thread: it finishes each part (a part given as a function is
called there), encodes it in pieces of ``CHUNK`` items (one encoder call
holds the GIL, and so the reactor thread, for the whole of its input),
writes a temporary file, fsyncs it and renames it over the previous
checkpoint (then fsyncs the directory), so a crash leaves either the old
checkpoint or the new one.  ``read`` raises ``Damaged`` for anything that
fails those checks.
"""
import json
import os
import zlib
from operator import itemgetter

from relayd import jsonfast
from relayd.filepool import write_atomically

from relayd.journal.replay import Start

FILE_NAME = "checkpoint.json"
VERSION = 1
CHUNK = 5000          # list items or dict entries encoded in one call
SCALARS = frozenset((str, int, float, bool, type(None)))   # JSON with nothing inside
_value = itemgetter(1)                  # a dict item's value


def _size(value, limit=CHUNK):
    """The scalars and containers in ``value``, counted until past ``limit``:
    a cheap measure of the time its encoding takes."""
    if not isinstance(value, (list, tuple, dict)):
        return 1
    if len(value) > limit:
        return limit + 1            # each item counts at least one
    if isinstance(value, dict):
        value = value.values()
    count = 1
    for item in value:
        count += _size(item, limit - count) if isinstance(item, (list, tuple, dict)) else 1
        if count > limit:
            break
    return count


def encode(value, out):
    """Append the JSON of ``value`` to the list ``out`` (bytes-like pieces) in pieces of about
    ``CHUNK`` scalars each (bigger lists and dicts are split, recursively;
    ``CHUNK = 5000`` keeps each encoder call to a few milliseconds).  A run
    of ``CHUNK`` plain scalars (the dedup window's ids and times) is one
    slice and one encoder call, with no Python step per item."""
    if not isinstance(value, (list, tuple, dict)) or _size(value) <= CHUNK:
        out.append(jsonfast.dumps_own(value))
        return
    is_dict = isinstance(value, dict)
    items = list(value.items()) if is_dict else value
    out.append(b"{" if is_dict else b"[")
    batch, weight, first = [], 0, True

    def flush():
        nonlocal batch, weight, first
        if batch:
            if not first:
                out.append(b",")
            # the items without their brackets, not copied
            out.append(memoryview(jsonfast.dumps_own(dict(batch) if is_dict else batch))[1:-1])
            batch, weight, first = [], 0, False

    for start in range(0, len(items), CHUNK):
        piece = items[start:start + CHUNK]
        if SCALARS.issuperset(map(type, map(_value, piece) if is_dict else piece)):
            flush()
            batch = piece
            flush()
            continue
        for item in piece:
            inner = item[1] if is_dict else item
            size = _size(inner) if isinstance(inner, (list, tuple, dict)) else 1
            if size > CHUNK:
                flush()
                if is_dict:
                    out.append((b"" if first else b",") + jsonfast.dumps_own(str(item[0])) + b":")
                    encode(item[1], out)
                else:
                    out.append(b"" if first else b",")
                    encode(item, out)
                first = False
                continue
            if weight + size > CHUNK:
                flush()
            batch.append(item)
            weight += size
    flush()
    out.append(b"}" if is_dict else b"]")


class Damaged(Exception):
    """The checkpoint file is unreadable, torn, of another version or fails its checksum."""


def write(directory, start, parts):
    """Save ``parts`` (``{name: JSON-able snapshot, or a function returning
    one}``) as covering the journal up to ``start`` (a ``replay.Start``);
    returns the file's size."""
    pieces = []
    encode({name: part() if callable(part) else part for name, part in parts.items()}, pieces)
    body = b"".join(pieces)
    header = json.dumps({"version": VERSION, "segment": start.segment, "offset": start.offset,
                         "seq": start.seq, "length": len(body),
                         "crc32": zlib.crc32(body)}).encode()
    data = header + b"\n" + body + b"\n"
    write_atomically(os.path.join(directory, FILE_NAME), data, 0o600, sync_directory=True)
    return len(data)


def read(directory):
    """``(Start, parts)`` of the checkpoint in ``directory``, or None if there is none."""
    path = os.path.join(directory, FILE_NAME)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Damaged(f"unreadable: {e.strerror}") from None
    header, _, rest = data.partition(b"\n")
    try:
        head = json.loads(header)
        version, length, crc = head["version"], head["length"], head["crc32"]
        start = Start(str(head["segment"]), int(head["offset"]), int(head["seq"]))
    except (ValueError, TypeError, KeyError, RecursionError):
        raise Damaged("bad header") from None
    if version != VERSION:
        raise Damaged(f"version {version!r}, this relayd reads version {VERSION}")
    body = rest[:-1]
    if len(body) != length or not rest.endswith(b"\n"):
        raise Damaged(f"torn: {len(body)} of {length} bytes")
    if zlib.crc32(body) != crc:
        raise Damaged("checksum mismatch")
    try:
        parts = jsonfast.loads_own(body)
    except ValueError:
        raise Damaged("bad body") from None
    if not isinstance(parts, dict):
        raise Damaged("bad body")
    return start, parts


def remove_temporary(directory):
    """Drop a temporary file a crash mid-write left."""
    _remove(os.path.join(directory, FILE_NAME + ".tmp"))


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
