"""The message cache (what IHAVE offers and IWANT serves) and the seen cache."""
from collections import OrderedDict


class MessageCache:
    """``history`` windows of message ids, shifted once a heartbeat; the
    newest ``gossip`` windows are offered in IHAVE.  At most ``max_per_window``
    messages a window are kept, so memory is bounded however fast peers publish."""

    def __init__(self, history=5, gossip=3, max_per_window=5000):
        self.gossip = gossip
        self.max_per_window = max_per_window
        self.windows = [[] for _ in range(history)]
        self.messages = {}          # id -> Message
        self.transmissions = {}     # id -> {PeerId: times sent on IWANT}

    def put(self, msg_id, message):
        window = self.windows[0]
        if msg_id in self.messages or len(window) >= self.max_per_window:
            return False
        window.append((msg_id, message.topic))
        self.messages[msg_id] = message
        return True

    def get(self, msg_id):
        return self.messages.get(msg_id)

    def get_for_peer(self, msg_id, peer, limit):
        """The message for an IWANT from ``peer``, at most ``limit`` times per peer."""
        message = self.messages.get(msg_id)
        if message is None:
            return None
        counts = self.transmissions.setdefault(msg_id, {})
        if counts.get(peer, 0) >= limit:
            return None
        counts[peer] = counts.get(peer, 0) + 1
        return message

    def gossip_ids(self, topic):
        return [msg_id for window in self.windows[:self.gossip] for msg_id, t in window if t == topic]

    def shift(self):
        for msg_id, _ in self.windows.pop():
            self.messages.pop(msg_id, None)
            self.transmissions.pop(msg_id, None)
        self.windows.insert(0, [])

    def __len__(self):
        return len(self.messages)


class SeenCache:
    """Ids seen in the last ``ttl`` seconds, at most ``max_entries`` of them."""

    def __init__(self, clock, ttl=120.0, max_entries=100000):
        self.clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        self.entries = OrderedDict()     # id -> first seen

    def add(self, msg_id):
        """True when ``msg_id`` is new (and now remembered)."""
        if msg_id in self.entries:
            return False
        self.entries[msg_id] = self.clock.seconds()
        if len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return True

    def __contains__(self, msg_id):
        return msg_id in self.entries

    def expire(self):
        horizon = self.clock.seconds() - self.ttl
        entries = self.entries
        while entries:
            msg_id, seen = next(iter(entries.items()))
            if seen > horizon:
                break
            del entries[msg_id]

    def __len__(self):
        return len(self.entries)
