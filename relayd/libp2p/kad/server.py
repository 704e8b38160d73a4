"""Answers kad-dht requests from the routing table, provider and record stores."""
import hashlib

from twisted.logger import Logger

from relayd.libp2p import varint
from relayd.libp2p.kad import messages as km
from relayd.libp2p.peerid import PeerId
from relayd.libp2p.readers import PrefixedMessages

PROTOCOL_ID = "/ipfs/kad/1.0.0"
MAX_MESSAGE = 64 * 1024
MAX_KEY = 256


def rendezvous_key(text):
    """The provider key of a rendezvous string, as go-libp2p's discovery
    makes it: the sha2-256 multihash of its bytes (CIDv1 raw)."""
    return b"\x12\x20" + hashlib.sha256(text.encode()).digest()


class KadStream(PrefixedMessages):
    """One inbound kad stream: each length-prefixed request gets its reply."""

    limit = MAX_MESSAGE

    def __init__(self, dht, connection):
        self.dht = dht
        self.connection = connection

    def message_received(self, request):
        if not self.dht.allow(self.connection.ip):
            self.dht.rate_limited += 1
            self.stream.reset()
            return
        reply = self.dht.handle(self.connection.remote_peer, km.decode(request))
        if reply is not None:
            self.stream.write(varint.prefixed(reply))

    def malformed(self):
        self.dht.malformed += 1


class Dht:
    """The DHT server's state and request logic (I/O-free)."""

    log = Logger(namespace="relayd.kad")

    def __init__(self, own_peer_id, table, providers, records, book, own_addrs, protocol_id):
        self.own_peer_id = own_peer_id
        self.table = table
        self.providers = providers
        self.records = records
        self.book = book
        self.own_addrs = own_addrs      # () -> our multiaddrs, without /p2p
        self.protocol_id = protocol_id
        self.own_keys = set()           # keys relayd itself provides
        self.requests = dict.fromkeys(km.TYPE_NAMES.values(), 0)
        self.malformed = self.rate_limited = 0
        self.limiter = None             # a RateLimiter of requests per source IP, or None
        self.changed = False            # providers or records changed since the last save

    def allow(self, ip):
        return self.limiter is None or self.limiter.allow(ip)

    # --- peers ----------------------------------------------------------------------
    def peer_identified(self, info, connection):
        if self.protocol_id in info.protocols:
            self.table.add(info.peer_id, info.addrs)

    def peer_gone(self, peer_id):
        self.table.disconnected(peer_id)

    def _addrs(self, peer_id, stored=()):
        return list(stored) or self.book.addrs(peer_id)

    def _closer(self, key, sender):
        closer = [(e.peer_id, e.addrs) for e in self.table.closest(key, exclude={sender})]
        try:
            target = PeerId(key)
        except ValueError:
            return closer
        # a connected peer looked up by id is answered even when it is no DHT server
        if target != sender and target in self.book.peers and target not in dict(closer):
            closer.insert(0, (target, self.book.addrs(target)))
            del closer[self.table.k:]
        return closer

    # --- requests -------------------------------------------------------------------
    def handle(self, sender, msg):
        """The reply bytes for ``msg`` from ``sender``, or None; raises ValueError
        or Invalid for a request to refuse."""
        self.requests[km.TYPE_NAMES[msg.type]] += 1
        if len(msg.key) > MAX_KEY:
            raise ValueError("key too long")
        connected = frozenset(self.book.peers)
        if msg.type == km.PING:
            return km.encode(km.KadMessage(km.PING))
        if msg.type == km.FIND_NODE:
            return km.encode(km.KadMessage(km.FIND_NODE, msg.key, closer=self._closer(msg.key, sender)),
                             connected)
        if msg.type == km.GET_PROVIDERS:
            found = [(p, self._addrs(p, a)) for p, a in self.providers.get(msg.key)]
            if msg.key in self.own_keys:
                found.insert(0, (self.own_peer_id, self.own_addrs()))
            return km.encode(km.KadMessage(km.GET_PROVIDERS, msg.key, providers=found,
                                           closer=self._closer(msg.key, sender)), connected)
        if msg.type == km.ADD_PROVIDER:
            for peer_id, addrs in msg.providers:
                if peer_id == sender and msg.key:       # a peer adds only itself
                    self.changed |= self.providers.add(msg.key, peer_id, self._addrs(peer_id, addrs))
            return None
        if msg.type == km.GET_VALUE:
            stored = self.records.get(msg.key)
            record = None if stored is None else (msg.key, stored[0])
            return km.encode(km.KadMessage(km.GET_VALUE, msg.key, record=record,
                                           closer=self._closer(msg.key, sender)), connected)
        # PUT_VALUE
        if msg.record is None or msg.record[0] != msg.key:
            raise ValueError("PUT_VALUE without a record for its key")
        self.records.put(msg.key, msg.record[1], sender)
        self.changed = True
        return km.encode(km.KadMessage(km.PUT_VALUE, msg.key, record=msg.record))
