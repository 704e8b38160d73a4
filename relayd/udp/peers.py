"""Who is registered where: names, addresses, keys, staleness.

A name belongs to the address that registered it until it goes stale (no
datagram for ``stale_after`` seconds) or until the holder of the name's
Ed25519 key proves it from another address.  One address holds one name.
The table is plain data with the clock passed in, so tests drive it directly.
"""
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

TOUCH_GRAIN = 1.0      # seconds: last_seen is kept to this precision


@dataclass
class Peer:
    name: str
    address: tuple
    last_seen: float
    key: Optional[bytes] = None       # raw Ed25519 public key, once proven
    pending_names: Optional[list] = None   # the rest of a peer_list cut by the byte budget

    @property
    def authenticated(self):
        return self.key is not None


class TableFull(Exception):
    """``max_peers`` names are registered already."""


class NameTaken(Exception):
    """The name is held by another address (and no proof was given)."""


class PeerTable:
    def __init__(self, max_peers, stale_after, changed=None):
        self.max_peers = max_peers
        self.stale_after = stale_after
        self.changed = changed             # called whenever a name or address changes hands
        self._by_name = OrderedDict()      # name -> Peer, least recently seen first
        self._by_address = {}              # address -> Peer

    def __len__(self):
        return len(self._by_name)

    def __iter__(self):
        return iter(list(self._by_name.values()))

    def get(self, name):
        return self._by_name.get(name)

    def at(self, address):
        return self._by_address.get(address)

    def is_stale(self, peer, now):
        return now - peer.last_seen > self.stale_after

    def claim(self, name, address, now, key=None):
        """Register ``name`` at ``address``; returns (peer, name this address gave up).

        ``key`` is an Ed25519 public key the caller has already verified a
        proof for: it binds the name to that key, and lets its holder move
        the name to a new address.  Raises NameTaken or TableFull.
        """
        current = self._by_name.get(name)
        if current is not None and current.address != address:
            if self.is_stale(current, now):
                self.remove(name)
                current = None
            elif key is None or key != current.key:
                raise NameTaken(name)
        if current is not None and key is not None and current.key not in (None, key):
            raise NameTaken(name)
        here = self._by_address.get(address)
        gave_up = here.name if here is not None and here.name != name else None
        if current is None and here is None and len(self._by_name) >= self.max_peers:
            raise TableFull()
        if gave_up is not None:
            self.remove(gave_up)
        if current is not None:
            self.remove(name)
            key = key or current.key
        peer = Peer(name, address, now, key)
        self._by_name[name] = peer
        self._by_address[address] = peer
        self._changed()
        return peer, gave_up

    def touch(self, peer, now):
        """Mark ``peer`` seen at ``now`` (to the second: a relayed stream touches it once)."""
        if now - peer.last_seen >= TOUCH_GRAIN:
            peer.last_seen = now
            self._by_name.move_to_end(peer.name)

    def remove(self, name):
        peer = self._by_name.pop(name, None)
        if peer is not None:
            self._by_address.pop(peer.address, None)
            self._changed()
        return peer

    def _changed(self):
        if self.changed is not None:
            self.changed()

    def sweep(self, now):
        """Remove and return the peers not seen for ``stale_after`` seconds."""
        gone = []
        for peer in list(self._by_name.values()):
            if not self.is_stale(peer, now):
                break
            gone.append(self.remove(peer.name))
        return gone

    def recent_names(self, limit):
        """Up to ``limit`` names, most recently seen first."""
        out = []
        for name in reversed(self._by_name):
            if len(out) >= limit:
                break
            out.append(name)
        return out
