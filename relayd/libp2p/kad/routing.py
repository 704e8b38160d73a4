"""The k-bucket routing table: peers by XOR distance of their SHA-256 key."""
import hashlib

K = 20
BITS = 256


def kad_id(key):
    """The point in the keyspace of a key or a peer id's bytes."""
    return int.from_bytes(hashlib.sha256(key).digest(), "big")


class Entry:
    __slots__ = ("peer_id", "addrs", "point", "connected", "last_seen")

    def __init__(self, peer_id, addrs, connected, now):
        self.peer_id = peer_id
        self.addrs = list(addrs)
        self.point = kad_id(peer_id.bytes)
        self.connected = connected
        self.last_seen = now


class RoutingTable:
    """256 buckets of at most ``k`` peers, bucket i holding the peers whose id
    shares exactly i leading bits with ours.  A full bucket takes a newcomer
    only in place of its least recently seen disconnected peer."""

    def __init__(self, own_peer_id, clock, k=K):
        self.own = kad_id(own_peer_id.bytes)
        self.own_peer_id = own_peer_id
        self.clock = clock
        self.k = k
        self.buckets = [dict() for _ in range(BITS)]    # PeerId -> Entry

    def _bucket(self, point):
        distance = point ^ self.own
        return self.buckets[BITS - distance.bit_length() if distance else BITS - 1]

    def add(self, peer_id, addrs, connected=True):
        """Insert or refresh ``peer_id``; False when its bucket had no room."""
        if peer_id == self.own_peer_id:
            return False
        now = self.clock.seconds()
        entry = Entry(peer_id, addrs, connected, now)
        bucket = self._bucket(entry.point)
        old = bucket.get(peer_id)
        if old is not None:
            old.addrs = entry.addrs or old.addrs
            old.connected, old.last_seen = connected, now
            return True
        if len(bucket) >= self.k:
            stale = [e for e in bucket.values() if not e.connected]
            if not stale:
                return False
            del bucket[min(stale, key=lambda e: e.last_seen).peer_id]
        bucket[peer_id] = entry
        return True

    def disconnected(self, peer_id):
        entry = self.get(peer_id)
        if entry is not None:
            entry.connected = False

    def remove(self, peer_id):
        self._bucket(kad_id(peer_id.bytes)).pop(peer_id, None)

    def get(self, peer_id):
        return self._bucket(kad_id(peer_id.bytes)).get(peer_id)

    def closest(self, key, count=None, exclude=()):
        """The ``count`` (default k) entries nearest to ``key``, nearest first."""
        target = kad_id(key)
        entries = [e for bucket in self.buckets for e in bucket.values() if e.peer_id not in exclude]
        entries.sort(key=lambda e: e.point ^ target)
        return entries[:count or self.k]

    def __len__(self):
        return sum(len(b) for b in self.buckets)

    def __iter__(self):
        for bucket in self.buckets:
            yield from bucket.values()
