"""Catch-up: the items a peer lacks, read from the journal on the file pool.

Two passes over the segments: the first finds the ``(origin, seq)``
records the peer lacks (receipts are complete there; messages are named
by ``ref``), the second picks up those messages' records.  Items come back
sorted by origin and seq, at most ``limit`` of them, with a flag saying
whether more are left.
"""
import os

from twisted.logger import Logger

from relayd.core import message
from relayd.federation.frames import BadItem, msg_frame, receipt_frame
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


class CatchUpServer:
    """Answers a peer's ``sync`` with the items it lacks: one journal read at a
    time per link, a newer request served when the running one ends."""

    log = Logger()

    def __init__(self, hub):
        self.hub = hub
        self._serving = {}             # link -> None while a read runs, or the request to serve next

    def request(self, link, frame):
        """Handle a ``sync`` frame; raises BadItem when it is malformed."""
        have = frame.get("have")
        if not isinstance(have, dict):
            raise BadItem("sync needs have: {origin: [low, [seqs above]]}")
        wants = {}
        for origin, cursor in have.items():
            try:
                low, above = cursor
                wants[origin] = (int(low), frozenset(int(s) for s in above))
            except (TypeError, ValueError):
                raise BadItem(f"bad cursor for origin {origin!r}") from None
        own = wants.get(self.hub.relay_id)
        top = max(own[1], default=own[0]) if own is not None else 0
        if self.hub.index.seen_own(top):
            self.log.warn("federation: {peer} holds items of ours up to seq {seq}, beyond our "
                          "journal (was it lost?); new items continue after it",
                          peer=link.name, seq=top)
        self._start(link, wants)

    def forget(self, link):
        self._serving.pop(link, None)

    def _start(self, link, wants):
        if link in self._serving:
            self._serving[link] = wants
            return
        self._serving[link] = None
        hub = self.hub
        d = hub.file_pool.run(collect, hub.journal.directory, wants, hub.settings.sync_batch,
                              list(hub.recent))
        d.addCallbacks(self._send, self._failed, callbackArgs=(link,), errbackArgs=(link,))

    def _send(self, result, link):
        again = self._serving.pop(link, None)
        if link.state != "up":
            return
        items, more = result
        name = link.name
        for origin, seq, kind, record in items:
            if kind == "m":
                link.send_raw(msg_frame(origin, seq, message.journal_line(record)))
            else:
                link.send_raw(receipt_frame(origin, seq, record["receipt"], record["to"],
                                            record["timestamp"]))
        if items:
            self.hub.peer_stats(name).caught_up += len(items)
            self.hub.metrics.caught_up.labels(name).inc(len(items))
            self.log.info("federation: sent {count} missed items to {peer}",
                          count=len(items), peer=name)
        link.send({"type": "synced", "sent": len(items), "more": more})
        if again is not None:
            self._start(link, again)

    def _failed(self, failure, link):
        self._serving.pop(link, None)
        self.log.failure("federation: catch-up read for {peer} failed", failure, peer=link.name)
