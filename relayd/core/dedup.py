"""A dedup window of message ids, bounded in time and in size."""
from collections import OrderedDict


class DedupWindow:
    """Remembers ids for ``window`` seconds, at most ``max_entries`` of them."""

    def __init__(self, clock, window, max_entries):
        self.clock = clock
        self.window = window
        self.max_entries = max_entries
        self._ids = OrderedDict()      # msg_id -> time added (oldest first)
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
        self._ids[msg_id] = now if when is None else when
        self._expire(now)

    def discard(self, msg_id):
        self._ids.pop(msg_id, None)

    def _expire(self, now):
        ids = self._ids
        horizon = now - self.window
        while ids:
            oldest_id, added = next(iter(ids.items()))
            if added >= horizon and len(ids) <= self.max_entries:
                break
            del ids[oldest_id]
