"""Per-origin sequence cursors, rebuilt from the journal at start.

Every federated item (a message or a delivery receipt) gets a sequence
number from the relay where it originated, and every relay journals a
item's record with its ``(origin, seq)``:

* the message record itself ends with ``"fed": origin, "seq": n``;
* ``{"receipt": msg_id, "to": peer, "timestamp": t, "fed": origin, "seq": n}``
  for a receipt (the router's replay also applies it to the mailboxes).

A journal written before that holds a companion record ``{"fed": origin,
"seq": n, "ref": msg_id}`` after each message instead; it is still read
(and still written when a message held already arrives under another seq,
or an unsequenced one found at start gets its seq).

For each origin the index keeps the contiguous watermark ``low`` (every
seq up to it is held) and the few seqs held above it; that pair is the
cursor a relay sends when a link comes up.  ``{"fed_cursors": {origin:
low}}`` checkpoints, journaled now and then, keep the watermarks when old
segments are pruned.

A seq whose item the origin's own journal refused will never exist: the
origin journals ``{"fed_lost": origin, "first": a, "last": b}`` for it,
never hands it out again, and says so to a peer that asks for it (the
``lost`` of its ``synced`` answer); the peer journals the same record once
and counts the seqs as held.  A hole that no peer fills otherwise (the
items are past retention everywhere, or were refused as bad, or the origin
is not linked or runs an older version) is given up once it has outlived
``GIVE_UP_ROUNDS`` repair rounds while every peer was up: the same record
is journaled, the seqs count as held, and they are not asked for again,
after a restart either.
"""
import json

from relayd.core import message

MAX_ABOVE_SENT = 1000
GIVE_UP_ROUNDS = 3
MAX_LOST_KEPT = 1000          # runs of own lost seqs remembered to tell peers (the oldest go)


class Cursor:
    """Every seq up to ``low`` is held, and those in ``above``; ``low + 1``
    never is in ``above`` (each change merges it into ``low``)."""

    __slots__ = ("low", "above")

    def __init__(self):
        self.low = 0
        self.above = set()

    def has(self, seq):
        return seq <= self.low or seq in self.above

    def add(self, seq):
        if seq <= self.low:
            return
        if seq == self.low + 1:         # the usual case: the next one
            self.low = seq
            if self.above:
                self._merge()
        else:
            self.above.add(seq)

    def _merge(self):
        while self.low + 1 in self.above:
            self.low += 1
            self.above.discard(self.low)

    def raise_low(self, low):
        """Count everything up to ``low`` as held (a checkpoint older segments backed)."""
        if low > self.low:
            self.low = low
            self.above = {s for s in self.above if s > low}
            self._merge()

    def fill(self, first, last):
        """Count ``first..last`` as held."""
        if first <= self.low + 1:
            self.raise_low(last)
        else:
            for seq in range(first, last + 1):
                self.add(seq)

    def discard(self, seq):
        if seq <= self.low:         # reopen a hole below the watermark
            self.above.update(range(seq + 1, self.low + 1))
            self.low = seq - 1
        self.above.discard(seq)

    def high(self):
        return max(self.above, default=self.low)

    def gaps(self):
        """``[(first, last)]`` of the seqs lacked below the highest one held."""
        out, prev = [], self.low
        for seq in sorted(self.above):
            if seq > prev + 1:
                out.append((prev + 1, seq - 1))
            prev = seq
        return out


def seq_ranges(seqs):
    """``[[first, last], ...]`` of the runs of consecutive numbers in ``seqs``."""
    out = []
    for seq in sorted(seqs):
        if out and seq == out[-1][1] + 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


def companion_line(origin, seq, msg_id):
    return json.dumps({"fed": origin, "seq": seq, "ref": msg_id}).encode()


def checkpoint_line(cursors):
    """A journal record of every origin's watermark: after the segments that
    backed them are pruned, a replay still starts from these cursors."""
    return json.dumps({"fed_cursors": {o: c.low for o, c in cursors.items()}}).encode()


def lost_line(origin, first, last):
    """A journal record of seqs given up: no peer holds them."""
    return json.dumps({"fed_lost": origin, "first": first, "last": last}).encode()


# How far beyond our own counter a peer may say our items go: a lost journal
# restarts the counter at 1 below everything the peers hold (they tell us, and
# it moves past), but no relay issues 2^40 items, while a forged seq near 2^63
# would leave no seq for our next item that a peer accepts.
MAX_OWN_AHEAD = 2 ** 40


class Index:
    """The cursors and the own sequence counter."""

    def __init__(self, relay_id):
        self.relay_id = relay_id
        self.cursors = {}
        self.unsequenced = {}           # own items found in the journal without a seq
        self._next = 1
        self._rounds = {}               # (origin, low) of a lasting hole -> repair rounds survived
        self.lost_own = []              # [first, last] runs of own seqs that will never exist

    def has(self, origin, seq):
        cursor = self.cursors.get(origin)
        return cursor is not None and cursor.has(seq)

    def add(self, origin, seq):
        cursor = self.cursors.get(origin)
        if cursor is None:
            cursor = self.cursors[origin] = Cursor()
        cursor.add(seq)
        if origin == self.relay_id and seq >= self._next:
            self._next = seq + 1

    def discard(self, origin, seq):
        cursor = self.cursors.get(origin)
        if cursor is not None:
            cursor.discard(seq)

    def next_own(self):
        seq = self._next
        self.add(self.relay_id, seq)
        return seq

    def own_plausible(self, seq):
        """Whether a peer's item or claim of our own ``seq`` could be one we
        issued before (see MAX_OWN_AHEAD)."""
        return seq < self._next + MAX_OWN_AHEAD

    def seen_own(self, seq):
        """A peer holds our item ``seq``: never hand that seq out again (after a
        lost journal the counter would otherwise restart below it)."""
        if seq >= self._next:
            self._next = seq + 1
            return True
        return False

    def never(self, first, last):
        """Own seqs ``first..last`` will never exist (the journal refused
        their item): not handed out again, and told to peers that ask."""
        self.seen_own(last)
        runs = self.lost_own
        if runs and first <= runs[-1][1] + 1:       # not after the last run: merge (rare)
            merged = []
            for run in sorted(runs + [[first, last]]):
                if merged and run[0] <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], run[1])
                else:
                    merged.append(run)
            runs[:] = merged
        else:
            runs.append([first, last])
        del runs[:-MAX_LOST_KEPT]

    def lost_for(self, held):
        """The runs of ``lost_own`` a peer holding ``held`` (a ``catchup.Held``
        of our origin, or None) lacks some of."""
        return [list(run) for run in self.lost_own if held is None or not held.covers(*run)]

    def fill_lost(self, origin, runs):
        """``origin`` says its seqs in ``runs`` (sorted, disjoint) will never
        exist: count the ones in a hole as held; returns ``[(first, last)]``
        filled.  Seqs above the highest held are not a hole yet and stay lacked."""
        cursor = self.cursors.get(origin)
        if cursor is None:
            return []
        filled = []
        gaps, i = cursor.gaps(), 0
        for first, last in runs:
            while i < len(gaps) and gaps[i][1] < first:
                i += 1
            j = i
            while j < len(gaps) and gaps[j][0] <= last:
                filled.append((max(first, gaps[j][0]), min(last, gaps[j][1])))
                j += 1
        for first, last in filled:
            cursor.fill(first, last)
        return filled

    def lasting(self, holes, everyone_asked):
        """Count one more repair round for each of ``holes`` (``(origin, low)``
        that outlived the last round), if ``everyone_asked`` (every peer was up
        to be asked); returns ``[(origin, first, last)]`` given up now: those
        seqs count as held from now on."""
        self._rounds = {key: self._rounds.get(key, 0) + (1 if everyone_asked else 0)
                        for key in holes}
        lost = []
        for (origin, low), rounds in list(self._rounds.items()):
            cursor = self.cursors.get(origin)
            if rounds < GIVE_UP_ROUNDS or cursor is None or cursor.low != low or not cursor.above:
                continue
            last = min(cursor.above) - 1
            cursor.fill(low + 1, last)
            del self._rounds[(origin, low)]
            lost.append((origin, low + 1, last))
        return lost

    def wants(self, ranges=False):
        """What this relay holds, for a ``sync`` frame: ``{origin: [low, [above...]]}``,
        or with ``ranges`` ``{origin: [low, [], [[first, last], ...]]}`` (up to
        ``MAX_ABOVE_SENT`` ranges, however many seqs they hold)."""
        if ranges:
            return {origin: [c.low, [], seq_ranges(c.above)[:MAX_ABOVE_SENT]]
                    for origin, c in self.cursors.items()}
        return {origin: [c.low, sorted(c.above)[:MAX_ABOVE_SENT]]
                for origin, c in self.cursors.items()}

    # --- checkpoints ----------------------------------------------------------------

    def snapshot(self, exclude=()):
        """The cursors, the own counter and the unsequenced items, for a
        checkpoint; ``exclude`` holds ``(origin, seq)`` not yet durable."""
        cursors = {}
        for origin, c in self.cursors.items():
            cursors[origin] = [c.low, sorted(c.above)]
        for origin, seq in exclude:
            cursor = cursors.get(origin)
            if cursor is None:
                continue
            copy = Cursor()
            copy.low, copy.above = cursor[0], set(cursor[1])
            copy.discard(seq)
            cursors[origin] = [copy.low, sorted(copy.above)]
        return {"cursors": cursors, "next": self._next, "lost_own": [list(run) for run in self.lost_own],
                "unsequenced": [[list(key), record] for key, record in self.unsequenced.items()]}

    def load_snapshot(self, data):
        """Replace the index with a ``snapshot()``."""
        self.cursors = {}
        for origin, (low, above) in data["cursors"].items():
            cursor = self.cursors[origin] = Cursor()
            cursor.low, cursor.above = low, set(above)
            cursor._merge()
        self._next = data["next"]
        self.lost_own = data.get("lost_own", [])       # absent from older checkpoints
        self.unsequenced = {tuple(key): record for key, record in data["unsequenced"]}

    # --- journal replay -----------------------------------------------------------

    def restore(self, record):
        lost = record.get("fed_lost")
        if isinstance(lost, str) and isinstance(record.get("first"), int) \
                and isinstance(record.get("last"), int):
            self.cursors.setdefault(lost, Cursor()).fill(record["first"], record["last"])
            if lost == self.relay_id:
                self.never(record["first"], record["last"])
            return
        checkpoint = record.get("fed_cursors")
        if isinstance(checkpoint, dict):
            for origin, low in checkpoint.items():
                if isinstance(low, int):
                    self.cursors.setdefault(origin, Cursor()).raise_low(low)
                    if origin == self.relay_id:
                        self.seen_own(low)
            return
        origin = record.get("fed")
        if isinstance(origin, str) and isinstance(record.get("seq"), int):
            self.add(origin, record["seq"])
            if "receipt" in record:
                if origin == self.relay_id:
                    self.unsequenced.pop(("r", record["receipt"], record.get("to")), None)
            elif origin == self.relay_id and "ref" in record:
                self.unsequenced.pop(("m", record["ref"]), None)
        elif message.is_message(record):
            seen_by = record.get("seen_by")
            if isinstance(seen_by, list) and seen_by and seen_by[0] == self.relay_id:
                self.unsequenced[("m", record["msg_id"])] = record
        elif "receipt" in record:
            self.unsequenced[("r", record["receipt"], record.get("to"))] = record

    def restore_done(self, report):
        pass


class JournalTee:
    """The journal's consumer at start: the router first, then the index."""

    def __init__(self, *consumers):
        self.consumers = consumers

    def restore(self, record):
        for consumer in self.consumers:
            consumer.restore(record)

    def restore_done(self, report):
        for consumer in self.consumers:
            consumer.restore_done(report)
