"""Provider records: who provides which key, until when, within limits."""
import base64

from relayd.libp2p.peerid import PeerId


class ProviderStore:
    """``key -> {PeerId: (expires, addrs)}`` with at most ``per_key`` providers
    a key (the newest win), ``per_peer`` keys a provider and ``max_keys`` keys."""

    def __init__(self, clock, ttl, per_key=20, per_peer=1000, max_keys=100000):
        self.clock = clock
        self.ttl = ttl
        self.per_key = per_key
        self.per_peer = per_peer
        self.max_keys = max_keys
        self.keys = {}          # key -> {PeerId: (expires, addrs)}
        self.counts = {}        # PeerId -> keys it provides
        self.refused = 0

    def add(self, key, peer_id, addrs, expires=None):
        """Record ``peer_id`` as a provider of ``key``; False when a limit refused it."""
        now = self.clock.seconds()
        expires = now + self.ttl if expires is None else expires
        providers = self.keys.get(key)
        if providers is not None and peer_id in providers:
            providers[peer_id] = (expires, list(addrs) or providers[peer_id][1])
            return True
        if self.counts.get(peer_id, 0) >= self.per_peer or (
                providers is None and len(self.keys) >= self.max_keys):
            self.refused += 1
            return False
        if providers is None:
            providers = self.keys[key] = {}
        if len(providers) >= self.per_key:
            oldest = min(providers, key=lambda p: providers[p][0])
            self._drop(key, oldest)
            providers = self.keys.setdefault(key, {})
        providers[peer_id] = (expires, list(addrs))
        self.counts[peer_id] = self.counts.get(peer_id, 0) + 1
        return True

    def _drop(self, key, peer_id):
        providers = self.keys[key]
        del providers[peer_id]
        if not providers:
            del self.keys[key]
        self.counts[peer_id] -= 1
        if not self.counts[peer_id]:
            del self.counts[peer_id]

    def get(self, key):
        """``[(PeerId, addrs)]`` of the live providers of ``key``."""
        now = self.clock.seconds()
        return [(p, addrs) for p, (expires, addrs) in self.keys.get(key, {}).items() if expires > now]

    def expire(self):
        now = self.clock.seconds()
        for key in list(self.keys):
            for peer_id, (expires, _) in list(self.keys[key].items()):
                if expires <= now:
                    self._drop(key, peer_id)

    def __len__(self):
        return sum(len(p) for p in self.keys.values())

    # --- persistence (JSON-able snapshots) ------------------------------------------
    def snapshot(self):
        return [[b64(key), b64(peer_id.bytes), expires, addrs]
                for key, providers in self.keys.items()
                for peer_id, (expires, addrs) in providers.items()]

    def restore(self, rows):
        """Load a snapshot, skipping expired and unreadable rows."""
        now = self.clock.seconds()
        for key, peer, expires, addrs in rows:
            if expires > now:
                self.add(base64.b64decode(key), PeerId(base64.b64decode(peer)),
                         [a for a in addrs if isinstance(a, str)], expires)


def b64(data):
    return base64.b64encode(data).decode()
