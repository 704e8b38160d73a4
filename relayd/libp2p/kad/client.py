"""Kademlia queries from a client host: provide a key and find its
providers or a peer, starting from one bootstrap peer and walking to the
closer peers answers name (at most ``MAX_ASKED`` peers per query)."""
from twisted.internet import defer

from relayd.libp2p.kad import messages as km
from relayd.libp2p.kad.routing import kad_id
from relayd.libp2p.kad.server import PROTOCOL_ID
from relayd.libp2p.peer import Request

MAX_ASKED = 20
ALPHA = 3


def ask(connection, message, protocol=PROTOCOL_ID):
    """Send one request; fires with the reply (a KadMessage)."""
    request = Request(km.encode(message), km.decode)
    connection.open_protocol(protocol, request)
    return request.reply


def tell(connection, message, protocol=PROTOCOL_ID):
    """Send a request that gets no reply (ADD_PROVIDER)."""
    ask(connection, message, protocol).addErrback(lambda _: None)


class Walk:
    """One query: ask the bootstrap peer, then the closest peers not asked yet."""

    def __init__(self, host, bootstrap, key, protocol=PROTOCOL_ID):
        self.host = host
        self.bootstrap = bootstrap
        self.key = key
        self.protocol = protocol
        self.known = {}             # PeerId -> addrs, from closerPeers
        self.asked = set()
        self.replies = []           # (PeerId, KadMessage)

    def _connect(self, peer_id):
        addrs = [a for a in self.known.get(peer_id, ()) if "/tcp/" in a and "/p2p-circuit" not in a]
        if not addrs:
            return defer.fail(ConnectionError("no address"))
        return self.host.dial(f"{addrs[0]}/p2p/{peer_id}")

    @defer.inlineCallbacks
    def run(self, message_type):
        """Fires with every (PeerId, reply) collected."""
        first = yield self.host.dial(self.bootstrap)
        yield self._ask(first, message_type)
        while len(self.asked) < MAX_ASKED:
            target = kad_id(self.key)
            todo = sorted((p for p in self.known if p not in self.asked and p != self.host.peer_id),
                          key=lambda p: kad_id(p.bytes) ^ target)[:ALPHA]
            if not todo:
                break
            yield defer.DeferredList([self._ask_peer(p, message_type) for p in todo])
        return self.replies

    @defer.inlineCallbacks
    def _ask_peer(self, peer_id, message_type):
        self.asked.add(peer_id)
        try:
            connection = yield self._connect(peer_id)
            yield self._ask(connection, message_type)
        except Exception:
            pass

    @defer.inlineCallbacks
    def _ask(self, connection, message_type):
        self.asked.add(connection.remote_peer)
        reply = yield ask(connection, km.KadMessage(message_type, self.key), self.protocol)
        self.replies.append((connection.remote_peer, reply))
        for peer_id, addrs in reply.closer:
            self.known.setdefault(peer_id, addrs)


@defer.inlineCallbacks
def find_providers(host, bootstrap, key, protocol=PROTOCOL_ID):
    """``{PeerId: addrs}`` of the providers of ``key``."""
    replies = yield Walk(host, bootstrap, key, protocol).run(km.GET_PROVIDERS)
    found = {}
    for _, reply in replies:
        for peer_id, addrs in reply.providers:
            found.setdefault(peer_id, addrs)
    return found


@defer.inlineCallbacks
def find_peer(host, bootstrap, peer_id, protocol=PROTOCOL_ID):
    """The addresses of ``peer_id`` as the DHT knows them ([] when unknown)."""
    walk = Walk(host, bootstrap, peer_id.bytes, protocol)
    yield walk.run(km.FIND_NODE)
    return walk.known.get(peer_id, [])


@defer.inlineCallbacks
def provide(host, bootstrap, key, addrs, protocol=PROTOCOL_ID):
    """Announce ``host`` as a provider of ``key`` (with ``addrs``) to the
    closest peers found, the bootstrap peer included; fires with their count."""
    walk = Walk(host, bootstrap, key, protocol)
    replies = yield walk.run(km.FIND_NODE)
    message = km.KadMessage(km.ADD_PROVIDER, key, providers=[(host.peer_id, addrs)])
    told = 0
    for peer_id, _ in replies:
        for connection in host.connections.get(peer_id, ())[:1]:
            tell(connection, message, protocol)
            told += 1
    return told
