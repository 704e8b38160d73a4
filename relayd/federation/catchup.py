"""Catch-up reads: the items a peer lacks, from the journal (file pool thread).

Two passes over the segments: the first finds the ``(origin, seq)``
records the peer lacks (receipts are complete there; messages are named
by ``ref``), the second picks up those messages' records.  Items come back
sorted by origin and seq, at most ``limit`` of them, with a flag saying
whether more are left.
"""
import os

from relayd.journal import segments
from relayd.journal.replay import check


def lacks(wants, origin, seq):
    low, above = wants.get(origin, (0, ()))
    return seq > low and seq not in above


FED_MARK = b'"fed": '
ID_MARK = b'"msg_id": "'


def _lines(directory):
    for segment in segments.scan(directory):
        try:
            f = open(os.path.join(directory, segment.name), "rb")
        except FileNotFoundError:      # pruned meanwhile
            continue
        with f:
            yield from f


def _fed_records(directory):
    """The records with an ``(origin, seq)``; other lines are not parsed."""
    for line in _lines(directory):
        if FED_MARK in line:
            record, _ = check(line)
            if record is not None:
                yield record


def _messages(directory, ids):
    """The message records whose msg_id is in ``ids`` (found without parsing others)."""
    for line in _lines(directory):
        at = line.rfind(ID_MARK)
        if at >= 0 and line[at + len(ID_MARK):at + len(ID_MARK) + 64].decode("latin-1") in ids:
            record, _ = check(line)
            if record is not None and "from" in record:
                yield record


def collect(directory, wants, limit, recent=()):
    """``(items, more)``: items are ``(origin, seq, kind, record)``, kind "m" or "r".

    ``wants`` maps origin -> (low, set of seqs above low) held by the peer;
    ``recent`` holds items not yet on disk, in the same shape.
    """
    found, refs = {}, {}
    for record in _fed_records(directory):
        origin, seq = record.get("fed"), record.get("seq")
        if not isinstance(origin, str) or not isinstance(seq, int) or not lacks(wants, origin, seq):
            continue
        if "receipt" in record:
            found[(origin, seq)] = (origin, seq, "r", record)
        elif isinstance(record.get("ref"), str):
            refs.setdefault(record["ref"], (origin, seq))
    if refs:
        for record in _messages(directory, refs):
            found[refs[record["msg_id"]]] = refs[record["msg_id"]] + ("m", record)
    for origin, seq, kind, record in recent:
        if lacks(wants, origin, seq):
            found.setdefault((origin, seq), (origin, seq, kind, record))
    items = [found[k] for k in sorted(found)]
    return items[:limit], len(items) > limit
