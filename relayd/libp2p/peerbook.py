"""What relayd learns about each connected peer by asking it (identify as
the requesting side): its protocols and listen addresses.

Services that must know whether a peer speaks their protocol (the DHT's
routing table, GossipSub) listen here instead of each asking again.
"""
from twisted.logger import Logger

from relayd.libp2p import identify, varint
from relayd.libp2p.readers import WholeStream

MAX_IDENTIFY = 64 * 1024


class IdentifyRequest(WholeStream):
    """Reads the peer's Identify message(s) until it half-closes."""

    limit = MAX_IDENTIFY

    def __init__(self, done):
        self.done = done

    def whole_received(self, buf):
        info = None
        try:
            while buf:
                got = varint.split_prefixed(buf, MAX_IDENTIFY)
                if got is None:
                    break
                message, buf = got
                info = identify.decode(message)
        except ValueError:
            info = None
        self.done(info)

    def stream_closed(self, reset):
        if reset:
            self.done(None)


class PeerInfo:
    __slots__ = ("peer_id", "protocols", "addrs", "connections")

    def __init__(self, peer_id):
        self.peer_id = peer_id
        self.protocols = frozenset()
        self.addrs = []
        self.connections = set()


class PeerBook:
    """Identified peers; listeners get ``peer_identified(info, connection)``
    and ``peer_gone(peer_id)`` (when its last connection closed)."""

    log = Logger(namespace="relayd.libp2p")

    def __init__(self):
        self.peers = {}         # PeerId -> PeerInfo
        self.listeners = []

    def connection_ready(self, connection):
        info = self.peers.get(connection.remote_peer)
        if info is None:
            info = self.peers[connection.remote_peer] = PeerInfo(connection.remote_peer)
        info.connections.add(connection)
        asked = []

        def answered(result):
            if asked or result is None or connection not in info.connections:
                return
            asked.append(True)
            info.protocols = frozenset(result["protocols"])
            info.addrs = result["listen_addrs"][:16]
            for listener in self.listeners:
                listener.peer_identified(info, connection)
        connection.open_protocol(identify.PROTOCOL_ID, IdentifyRequest(answered))

    def connection_lost(self, connection):
        info = self.peers.get(connection.remote_peer)
        if info is None:
            return
        info.connections.discard(connection)
        if not info.connections:
            del self.peers[connection.remote_peer]
            for listener in self.listeners:
                listener.peer_gone(info.peer_id)

    def addrs(self, peer_id):
        info = self.peers.get(peer_id)
        return info.addrs if info is not None else []
