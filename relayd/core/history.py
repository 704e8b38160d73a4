"""Recent messages per conversation, for the ``history`` request."""
from collections import deque


def conversation(entry):
    """The conversation an entry belongs to: a room, a peer pair or everyone."""
    room = entry.get("room")
    if room is not None:
        return ("room", room)
    to = entry["to"]
    if to == "*":
        return ("all",)
    return ("pair",) + tuple(sorted((entry["from"], to)))


class History:
    """A bounded deque of entries per conversation."""

    def __init__(self, per_conversation, max_conversations=100000):
        self.per_conversation = per_conversation
        self.max_conversations = max_conversations
        self._logs = {}

    def add(self, entry):
        key = conversation(entry)
        log = self._logs.get(key)
        if log is None:
            if len(self._logs) >= self.max_conversations:
                self._logs.pop(next(iter(self._logs)))
            log = self._logs[key] = deque(maxlen=self.per_conversation)
        log.append(entry)

    def snapshot(self):
        """``[(key, [entry, ...]), ...]``, for a checkpoint (entries are never
        changed once added, so only the logs are copied)."""
        return [(key, list(log)) for key, log in self._logs.items()]

    def load_snapshot(self, data):
        """Replace every conversation with a ``snapshot()``."""
        self._logs = {tuple(key): deque(entries, maxlen=self.per_conversation)
                      for key, entries in data}

    def recent(self, key, limit, horizon):
        log = self._logs.get(key, ())
        entries = [e for e in log if e.get("timestamp", 0) >= horizon]
        return entries[-limit:]
