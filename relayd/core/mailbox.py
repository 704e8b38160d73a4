"""Store-and-forward: messages kept, in order, for peers that are offline."""
from collections import OrderedDict


class Mailboxes:
    """Per-peer FIFO of ``(msg_id -> (entry, line))``, bounded in count and age."""

    def __init__(self, clock, max_per_peer, ttl):
        self.clock = clock
        self.max_per_peer = max_per_peer
        self.ttl = ttl
        self._boxes = {}
        self.dropped = 0

    def put(self, peer, entry, line):
        box = self._boxes.setdefault(peer, OrderedDict())
        box[entry["msg_id"]] = (entry, line)
        while len(box) > self.max_per_peer:
            box.popitem(last=False)
            self.dropped += 1

    def remove(self, peer, msg_id):
        box = self._boxes.get(peer)
        if box is not None:
            box.pop(msg_id, None)
            if not box:
                del self._boxes[peer]

    def take(self, peer):
        """Every live stored ``(entry, line)`` for ``peer``, oldest first."""
        box = self._boxes.pop(peer, None)
        if not box:
            return []
        horizon = self.clock.seconds() - self.ttl
        return [(e, l) for e, l in box.values() if e.get("timestamp", 0) >= horizon]

    def count(self, peer):
        return len(self._boxes.get(peer, ()))

    def expire(self):
        horizon = self.clock.seconds() - self.ttl
        for peer in list(self._boxes):
            box = self._boxes[peer]
            for msg_id in [m for m, (e, _) in box.items() if e.get("timestamp", 0) < horizon]:
                del box[msg_id]
                self.dropped += 1
            if not box:
                del self._boxes[peer]

    def total(self):
        return sum(len(b) for b in self._boxes.values())

    def __len__(self):
        return len(self._boxes)
