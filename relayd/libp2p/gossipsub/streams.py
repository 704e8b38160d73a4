"""GossipSub over libp2p streams: each side writes length-prefixed RPCs on
a stream it opened and reads the other's on the stream it accepted."""
from relayd.libp2p import varint
from relayd.libp2p.gossipsub import messages as gm
from relayd.libp2p.readers import PrefixedMessages
from relayd.libp2p.yamux import StreamHandler

PROTOCOLS = ("/meshsub/1.1.0", "/meshsub/1.0.0")


class StreamLink:
    """What the router sends through: our outbound stream to a peer."""

    def __init__(self, stream):
        self.stream = stream

    def send(self, rpc):
        self.stream.write(varint.prefixed(rpc))

    def queued(self):
        return self.stream.queued


class Inbound(PrefixedMessages):
    """The peer's stream to us: RPCs in."""

    def __init__(self, pubsub, connection):
        self.pubsub = pubsub
        self.connection = connection

    @property
    def limit(self):
        return self.pubsub.router.params.max_message_size + 4096

    def stream_opened(self, stream):
        self.stream = stream
        self.pubsub.open_outbound(self.connection)

    def message_received(self, rpc):
        self.pubsub.router.handle_rpc(self.connection.remote_peer, gm.decode(rpc))

    def malformed(self):
        self.pubsub.router.malformed(self.connection.remote_peer)


class Outbound(StreamHandler):
    """Our stream to the peer; on refusal the next protocol version is tried."""

    def __init__(self, pubsub, connection, protocols):
        self.pubsub = pubsub
        self.connection = connection
        self.protocols = protocols
        self.opened = False

    def stream_opened(self, stream):
        self.stream = stream
        self.opened = True
        self.pubsub.outbound_ready(self.connection, self.protocols[0], StreamLink(stream))

    def stream_closed(self, reset):
        self.pubsub.outbound_closed(self.connection, self.protocols[1:] if not self.opened else ())


class PubSub:
    """Ties the router to libp2p connections: one outbound stream per peer,
    opened when the peer opens its own or when identify lists meshsub."""

    def __init__(self, router):
        self.router = router
        self.outbound = {}          # PeerId -> connection carrying our stream (or opening it)

    def handler(self, connection):
        return Inbound(self, connection)

    def peer_identified(self, info, connection):
        if any(p in info.protocols for p in PROTOCOLS):
            self.open_outbound(connection)

    def peer_gone(self, peer_id):
        self.outbound.pop(peer_id, None)
        self.router.remove(peer_id)

    def open_outbound(self, connection, protocols=PROTOCOLS):
        peer = connection.remote_peer
        if self.outbound.get(peer) is not None or not protocols:
            return
        self.outbound[peer] = connection
        if connection.open_protocol(protocols[0], Outbound(self, connection, protocols)) is None:
            del self.outbound[peer]

    def outbound_ready(self, connection, protocol, link):
        self.router.attach(connection.remote_peer, link)

    def outbound_closed(self, connection, untried):
        peer = connection.remote_peer
        if self.outbound.get(peer) is connection:
            del self.outbound[peer]
            state = self.router.peers.get(peer)
            if state is not None:
                state.link = None
            if untried:
                self.open_outbound(connection, untried)
