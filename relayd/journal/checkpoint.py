"""Checkpoints: the state a replay rebuilds, saved with the journal position it covers.

A checkpoint file holds one header line and one body line::

    {"version": 1, "segment": ..., "offset": ..., "seq": ..., "length": n, "crc32": c}
    {"<part>": <that part's snapshot>, ...}

``length`` and ``crc32`` (zlib) cover the body's bytes.  ``write`` runs on
the file thread: it encodes, writes a temporary file, fsyncs it and renames
it over the previous checkpoint (then fsyncs the directory), so a crash
leaves either the old checkpoint or the new one.  ``read`` raises
``Damaged`` for anything that fails those checks.
"""
import json
import os
import zlib

import orjson

from relayd.journal.replay import Start

FILE_NAME = "checkpoint.json"
VERSION = 1


class Damaged(Exception):
    """The checkpoint file is unreadable, torn, of another version or fails its checksum."""


def write(directory, start, parts):
    """Save ``parts`` (``{name: JSON-able snapshot}``) as covering the journal up
    to ``start`` (a ``replay.Start``); returns the file's size."""
    try:
        body = orjson.dumps(parts)
    except TypeError:           # a lone surrogate in a string: orjson refuses, json escapes it
        body = json.dumps(parts, separators=(",", ":")).encode()
    header = json.dumps({"version": VERSION, "segment": start.segment, "offset": start.offset,
                         "seq": start.seq, "length": len(body),
                         "crc32": zlib.crc32(body)}).encode()
    path = os.path.join(directory, FILE_NAME)
    temporary = path + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                 0o600)
    try:
        data = memoryview(header + b"\n" + body + b"\n")
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
        os.fsync(fd)
    except OSError:
        os.close(fd)
        _remove(temporary)
        raise
    os.close(fd)
    os.replace(temporary, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
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
        parts = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            parts = json.loads(body)
        except (ValueError, RecursionError):
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
