"""Catch-up: the items a peer lacks, read from the journal on the file pool.

``Summaries`` keeps, per block of a segment (``BLOCK_LINES`` lines), the
range of seqs of each origin it holds (read once for a closed segment, and
from where it stopped for the one being written), so that a round reads
only the blocks that hold something the peer lacks, oldest first, and
stops once no block left can hold an item older than those it picked: its
cost follows the items it sends, not the size of the journal nor of the
peer's backlog.  Two passes: the first picks the ``limit`` oldest
``(origin, seq)`` records the peer lacks (receipts and messages are
complete there; a journal of the previous format names a message by the
``ref`` of a companion record), holding at most ``2 * limit`` at a time,
the second picks up the messages named by ``ref`` (searched in the same
segments and the one before each, then, for any not found there, in every
segment).  Items come back sorted by origin and seq, at most ``limit`` of
them, with a flag saying whether more are left.
"""
import os
from bisect import bisect_right
from itertools import accumulate

from twisted.internet import defer
from twisted.logger import Logger

from relayd.core import message
from relayd.federation.frames import MAX_SEQ, BadItem, msg_frame, receipt_frame
from relayd.journal import segments
from relayd.journal.replay import check


class Held:
    """What a peer holds of one origin: every seq up to ``low``, and the
    ``[first, last]`` ranges above it (any order, may overlap)."""

    __slots__ = ("low", "starts", "ends")

    def __init__(self, low, ranges=()):
        self.low, self.starts, self.ends = low, [], []
        for first, last in sorted(r for r in ranges if r[1] > low):
            first = max(first, low + 1)
            if self.ends and first <= self.ends[-1] + 1:
                self.ends[-1] = max(self.ends[-1], last)
            else:
                self.starts.append(first)
                self.ends.append(last)

    def covers(self, first, last):
        """True when every seq from ``first`` to ``last`` is held."""
        if last <= self.low:
            return True
        first = max(first, self.low + 1)
        i = bisect_right(self.starts, first) - 1
        return i >= 0 and last <= self.ends[i]

    def top(self):
        return self.ends[-1] if self.ends else self.low


def lacks(wants, origin, seq):
    held = wants.get(origin)
    return held is None or not held.covers(seq, seq)


def parse_have(have):
    """``{origin: Held}`` of a ``sync`` frame's ``have``; raises BadItem."""
    if not isinstance(have, dict):
        raise BadItem("sync needs have: {origin: [low, [seqs above]]}")
    wants = {}
    for origin, cursor in have.items():
        try:
            low, above, *extra = cursor
            ranges = [(int(s), int(s)) for s in above]
            for first, last in (extra[0] if extra else ()):
                if int(first) > int(last):
                    raise ValueError
                ranges.append((int(first), int(last)))
            wants[origin] = Held(int(low), ranges)
        except (TypeError, ValueError):
            raise BadItem(f"bad cursor for origin {origin!r}") from None
    return wants


FED_MARK = b'"fed": '
ID_MARK = b'"msg_id": "'


BLOCK_LINES = 4096         # journal lines summarised together


def _lines(directory, names):
    for name in names:
        try:
            f = open(os.path.join(directory, name), "rb")
        except FileNotFoundError:      # pruned meanwhile
            continue
        with f:
            yield from f


def _fed_key(line):
    """``(origin, seq, record)`` of a journal line with an ``(origin, seq)``, else None."""
    if FED_MARK not in line:
        return None
    record, _ = check(line)
    if record is None:
        return None
    origin, seq = record.get("fed"), record.get("seq")
    if not isinstance(origin, str) or not isinstance(seq, int):
        return None
    return origin, seq, record


class Block:
    """Lines ``start`` to ``end`` (byte offsets) of segment ``name``:
    ``ranges`` is ``{origin: [lowest seq, highest seq]}`` of their items."""

    __slots__ = ("name", "start", "end", "lines", "ranges")

    def __init__(self, name, start):
        self.name, self.start, self.end, self.lines, self.ranges = name, start, start, 0, {}

    def may_lack(self, wants):
        return any(_may_lack(wants, origin, low, high)
                   for origin, (low, high) in self.ranges.items())

    def oldest_lacked(self, wants):
        """A key no older than the oldest item here the peer may lack (of a
        block that ``may_lack``: some origin has a seq above what is held)."""
        keys = []
        for origin, (low, high) in self.ranges.items():
            held = wants.get(origin)
            first = low if held is None else max(low, held.low + 1)
            if first <= high:
                keys.append((origin, first))
        return min(keys)


class Summaries:
    """The blocks of every segment, in journal order.  Used on the file
    thread only."""

    def __init__(self):
        self._segments = {}            # name -> [Block, ...]

    def update(self, directory):
        """Read what was appended since the last call; the segment names, oldest first."""
        found = segments.scan(directory)
        names = [s.name for s in found]
        for name in set(self._segments) - set(names):
            del self._segments[name]
        for segment in found:
            blocks = self._segments.setdefault(segment.name, [Block(segment.name, 0)])
            if segment.size > blocks[-1].end:
                self._read(os.path.join(directory, segment.name), blocks)
        return names

    @staticmethod
    def _read(path, blocks):
        """Add the items of the whole lines after the last block's end."""
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return
        with f:
            block = blocks[-1]
            f.seek(block.end)
            for line in f:
                if not line.endswith(b"\n"):
                    break                   # being written: read it next time
                if block.lines == BLOCK_LINES:
                    block = Block(block.name, block.end)
                    blocks.append(block)
                block.end += len(line)
                block.lines += 1
                key = _fed_key(line)
                if key is None:
                    continue
                origin, seq, _ = key
                span = block.ranges.get(origin)
                if span is None:
                    block.ranges[origin] = [seq, seq]
                elif seq < span[0]:
                    span[0] = seq
                elif seq > span[1]:
                    span[1] = seq

    def lacked(self, names, wants):
        """The blocks that may hold an item the peer lacks, in journal order."""
        return [block for name in names for block in self._segments[name]
                if block.may_lack(wants)]


def _may_lack(wants, origin, low, high):
    held = wants.get(origin)
    return held is None or not held.covers(low, high)


def _block_records(directory, block):
    """The records with an ``(origin, seq)`` in ``block``; other lines are not parsed."""
    try:
        f = open(os.path.join(directory, block.name), "rb")
    except FileNotFoundError:          # pruned meanwhile
        return
    with f:
        f.seek(block.start)
        offset = block.start
        for line in f:
            offset += len(line)
            key = _fed_key(line)
            if key is not None:
                yield key
            if offset >= block.end:
                break


def _messages(directory, names, ids):
    """The message records whose msg_id is in ``ids`` (found without parsing others)."""
    for line in _lines(directory, names):
        at = line.rfind(ID_MARK)
        if at >= 0 and line[at + len(ID_MARK):at + len(ID_MARK) + 64].decode("latin-1") in ids:
            record, _ = check(line)
            if record is not None and "from" in record:
                yield message.entry_of(record)


class Smallest:
    """The ``limit`` smallest keys offered, each with the first value offered
    for it, and whether more keys were offered; never holds more than
    ``2 * limit`` of them, however many are offered."""

    def __init__(self, limit):
        self.limit = limit
        self.items = {}
        self.bound = None       # once trimmed: the largest key that can still be kept
        self.more = False

    def offer(self, key, value):
        if self.bound is not None and key > self.bound:
            self.more = True
            return
        self.items.setdefault(key, value)
        if len(self.items) > 2 * self.limit:
            self._trim()

    def _trim(self):
        keys = sorted(self.items)
        if len(keys) > self.limit:
            self.more = True
            self.bound = keys[self.limit - 1]
            for key in keys[self.limit:]:
                del self.items[key]

    def full_bound(self):
        """The largest key kept once ``limit`` keys are held, else None."""
        if len(self.items) < self.limit:
            return None
        self._trim()
        return self.bound if self.bound is not None else max(self.items)

    def result(self):
        """``({key: value}, more)`` for the ``limit`` smallest keys."""
        self._trim()
        return self.items, self.more


def collect(directory, wants, limit, recent=(), summaries=None):
    """``(items, more)``: items are ``(origin, seq, kind, record)``, kind "m" or "r".

    ``wants`` maps origin -> ``Held`` (what the peer holds of it);
    ``recent`` holds items not yet on disk, in the same shape; ``summaries``
    (a ``Summaries`` kept between calls) spares reading segments that hold
    nothing the peer lacks.  Memory stays within a few times ``limit``
    items, whatever the journal holds.
    """
    if summaries is None:
        summaries = Summaries()
    names = summaries.update(directory)
    lacked = summaries.lacked(names, wants)
    gone = set()
    while True:
        items, more, missing = _pick(directory, names, lacked, wants, limit, recent, gone)
        if items or not more:
            return items, more
        gone |= missing         # messages pruned under their seq record: look past them


def _neighbours(names, read):
    """The segments in ``read`` and the one before each, in journal order."""
    return [name for i, name in enumerate(names)
            if name in read or (i + 1 < len(names) and names[i + 1] in read)]


def _pick(directory, names, lacked, wants, limit, recent, gone):
    """One try of ``collect``: (items, more, keys whose message is found nowhere)."""
    picked = Smallest(limit)

    def offer(origin, seq, item):
        if lacks(wants, origin, seq) and (origin, seq) not in gone:
            picked.offer((origin, seq), item)

    # floors[i]: no older than any item the blocks from lacked[i] on may lack
    floors = list(accumulate((block.oldest_lacked(wants) for block in reversed(lacked)), min))
    floors.reverse()
    read = set()
    for block, floor in zip(lacked, floors):
        bound = picked.full_bound()
        if bound is not None and floor > bound:
            picked.more = True          # the blocks left hold only items newer than these
            break
        read.add(block.name)
        for origin, seq, record in _block_records(directory, block):
            if "receipt" in record:
                offer(origin, seq, ("r", record))
            elif isinstance(record.get("ref"), str):
                offer(origin, seq, ("ref", record["ref"]))
            elif message.is_message(record):
                offer(origin, seq, ("m", message.entry_of(record)))
    for origin, seq, kind, record in recent:
        offer(origin, seq, (kind, record))
    chosen, more = picked.result()
    refs = {}
    for key, (kind, value) in chosen.items():
        if kind == "ref":
            refs.setdefault(value, []).append(key)
    near = _neighbours(names, read)
    for where in (near, [name for name in names if name not in near]):
        if not refs:
            break
        for record in _messages(directory, where, refs):
            for key in refs.pop(record["msg_id"], ()):
                chosen[key] = ("m", record)
    missing = {key for keys in refs.values() for key in keys}
    if missing:
        held = {(origin, seq): (kind, record) for origin, seq, kind, record in recent}
        for key in missing:
            if key in held:
                chosen[key] = held[key]
            else:
                del chosen[key]
        missing -= held.keys()
    return [key + chosen[key] for key in sorted(chosen)], more, missing


def _merged(results):
    """One answer from the journal's and the own items' ``(items, more)``."""
    items = sorted(results[0][0] + results[1][0], key=lambda item: item[:2])
    return items, results[0][1] or results[1][1]


class CatchUpServer:
    """Answers a peer's ``sync`` with the items it lacks: one journal read at a
    time per link, a newer request served when the running one ends."""

    log = Logger()

    def __init__(self, hub):
        self.hub = hub
        self._serving = {}             # link -> None while a read runs, or the request to serve next
        self._summaries = Summaries()  # touched on the file thread only
        # own(held, limit) -> Deferred[(items, more)]: our own items, when they
        # are read from elsewhere than the journal (a cluster's federation stream)
        self.own = None

    def request(self, link, frame):
        """Handle a ``sync`` frame; raises BadItem when it is malformed."""
        wants = parse_have(frame.get("have"))
        own = wants.get(self.hub.relay_id)
        top = own.top() if own is not None else 0
        if not self.hub.index.own_plausible(top):
            raise BadItem(f"have says seq {top} of our own items, far beyond any we issued")
        if self.own is None and self.hub.index.seen_own(top):
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
        limit = hub.settings.sync_batch
        if self.own is None:
            d = hub.file_pool.run(collect, hub.journal.directory, wants, limit,
                                  list(hub.recent), self._summaries)
        else:
            journal_wants = dict(wants)
            journal_wants[hub.relay_id] = Held(MAX_SEQ)
            d = defer.gatherResults(
                [hub.file_pool.run(collect, hub.journal.directory, journal_wants, limit,
                                   list(hub.recent), self._summaries),
                 self.own(wants.get(hub.relay_id), limit)], consumeErrors=True)
            d.addCallbacks(_merged, lambda f: f.value.subFailure)
        d.addCallbacks(self._send, self._failed, callbackArgs=(link, wants), errbackArgs=(link,))

    def _send(self, result, link, wants):
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
            self.log.info("federation: sent {count} missed items to {peer}",
                          count=len(items), peer=name)
        synced = {"type": "synced", "sent": len(items), "more": more}
        lost = self.hub.index.lost_for(wants.get(self.hub.relay_id))
        if lost:
            synced["lost"] = lost       # our seqs the peer lacks that will never exist
        link.send(synced)
        if again is not None:
            self._start(link, again)

    def _failed(self, failure, link):
        self._serving.pop(link, None)
        self.log.failure("federation: catch-up read for {peer} failed", failure, peer=link.name)
