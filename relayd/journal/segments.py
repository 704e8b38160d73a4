"""Segment file names and discovery.

A segment is ``relay_log.<index>.jsonl`` with a zero-padded index, so that
lexical order is write order.  A bare seed-000 ``relay_log.jsonl`` copied
into the directory counts as index 0 and is replayed first.
"""
import os
import re
from dataclasses import dataclass

_NAME = re.compile(r"relay_log(?:\.([0-9]+))?\.jsonl\Z")


@dataclass
class Segment:
    index: int
    name: str
    size: int
    mtime: float


def segment_name(index):
    return f"relay_log.{index:08d}.jsonl"


def segment_index(name):
    """The index of a segment file name, or None for any other file."""
    match = _NAME.match(name)
    if match is None:
        return None
    return int(match.group(1)) if match.group(1) is not None else 0


def scan(directory):
    """Every segment in ``directory``, oldest first."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            index = segment_index(entry.name)
            if index is None or not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            found.append(Segment(index, entry.name, st.st_size, st.st_mtime))
    found.sort(key=lambda s: s.index)
    return found
