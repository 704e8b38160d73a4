"""Store-and-forward: messages kept, in order, for peers that are offline
(or still reading what was kept for them)."""
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

    def peek(self, peer):
        """Every live stored ``(entry, line)`` for ``peer``, oldest first; they
        stay stored until ``remove``d (expired ones are dropped now)."""
        if peer not in self._boxes:
            return []
        self._expire(peer, self.clock.seconds() - self.ttl)
        return list(self._boxes.get(peer, {}).values())

    def drain(self):
        """Empty every mailbox: ``{peer: [(entry, line), ...]}`` oldest first."""
        boxes, self._boxes = self._boxes, {}
        return {peer: list(box.values()) for peer, box in boxes.items()}

    def __contains__(self, peer):
        return peer in self._boxes

    def count(self, peer):
        return len(self._boxes.get(peer, ()))

    def expire(self):
        horizon = self.clock.seconds() - self.ttl
        for peer in list(self._boxes):
            self._expire(peer, horizon)

    def _expire(self, peer, horizon):
        box = self._boxes[peer]
        for msg_id in [m for m, (e, _) in box.items() if e.get("timestamp", 0) < horizon]:
            del box[msg_id]
            self.dropped += 1
        if not box:
            del self._boxes[peer]

    def snapshot(self):
        """For a checkpoint: a function (to call on another thread) returning
        ``{peer: [line, ...]}`` oldest first, each stored line as text (ASCII
        JSON).  Nothing stored is changed later, so only the boxes are copied
        here."""
        boxes = [(peer, list(box.values())) for peer, box in self._boxes.items()]
        return lambda: {peer: [line.decode() for _, line in stored] for peer, stored in boxes}

    def load_snapshot(self, data, entry_of):
        """Replace every mailbox with a ``snapshot()``; ``entry_of(line)`` is
        the entry stored beside each line."""
        boxes = {}
        for peer, lines in data.items():
            box = boxes[peer] = OrderedDict()
            for text in lines:
                line = text.encode()
                entry = entry_of(line)
                box[entry["msg_id"]] = (entry, line)
        self._boxes = boxes

    def total(self):
        return sum(len(b) for b in self._boxes.values())

    def __len__(self):
        return len(self._boxes)
