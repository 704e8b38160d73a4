"""A libp2p host for clients: listens and dials on TCP with the same
connection stack as the relay, serves identify and ping, and lets its user
add protocol handlers (chat, GossipSub, ...)."""
import os

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory

from relayd.libp2p import identify, messages as m, ping, yamux
from relayd.libp2p.connection import Libp2pConnection
from relayd.libp2p.multiaddr import from_address
from relayd.libp2p.peer import Request, StopAcceptor as _PipeStopAcceptor
from relayd.libp2p.peerid import PeerId

AGENT_VERSION = "relay-chat/0.1"


def split_multiaddr(text):
    """``/ip4|ip6/<host>/tcp/<port>[/p2p/<id>]`` -> ``(family, host, port, PeerId or None)``."""
    parts = text.strip("/").split("/")
    try:
        family, host, proto, port = parts[:4]
        if family not in ("ip4", "ip6") or proto != "tcp":
            raise ValueError
        peer_id = None
        rest = parts[4:]
        if rest:
            if len(rest) != 2 or rest[0] not in ("p2p", "ipfs"):
                raise ValueError
            peer_id = PeerId.from_string(rest[1])
        return family, host, int(port), peer_id
    except (ValueError, IndexError):
        raise ValueError(f"{text!r}: expected /ip4/<address>/tcp/<port>[/p2p/<peer id>]") from None


class _Dial(Factory):
    def __init__(self, host, expected):
        self.host = host
        self.expected = expected

    def buildProtocol(self, addr):
        proto = Libp2pConnection(initiator=True)
        proto.factory = self.host
        self.host.pending[proto] = (defer.Deferred(), self.expected)
        self.proto = proto
        return proto


class Host(Factory):
    """``handlers``: protocol id -> handler factory(connection); ``observers``
    get ``connection_ready``/``connection_lost``; ``listen_addrs`` are
    announced in identify."""

    early_muxers = (yamux.PROTOCOL_ID,)
    handshake_timeout = 15

    def __init__(self, reactor, keypair):
        self.reactor = reactor
        self.keypair = keypair
        self.handlers = {identify.PROTOCOL_ID: identify.IdentifyResponder,
                         identify.PUSH_PROTOCOL_ID: identify.IdentifyPushSink,
                         ping.PROTOCOL_ID: ping.PingResponder}
        self.observers = []
        self.connections = {}       # PeerId -> [muxed connections]
        self.pending = {}           # dialled connection -> (Deferred, expected PeerId)
        self.listen_addrs = []

    @property
    def peer_id(self):
        return self.keypair.peer_id

    def buildProtocol(self, addr):
        proto = Libp2pConnection(initiator=False)
        proto.factory = self
        return proto

    def identify_info(self):
        return {"public_key": self.keypair.public_key, "listen_addrs": self.listen_addrs,
                "protocols": list(self.handlers), "agent_version": AGENT_VERSION}

    @defer.inlineCallbacks
    def listen(self, endpoint):
        """Listen on a server endpoint; fires with our full multiaddr."""
        port = yield endpoint.listen(self)
        addr = from_address(port.getHost())
        self.listen_addrs.append(addr)
        return f"{addr}/p2p/{self.peer_id}"

    def dial(self, multiaddr, timeout=10):
        """A Deferred firing with a muxed connection to ``multiaddr`` (reused when
        one is open); fails when the peer is not the one its ``/p2p/`` names."""
        family, host, port, expected = split_multiaddr(multiaddr)
        for conn in self.connections.get(expected, ()):
            return defer.succeed(conn)
        endpoint = (TCP6ClientEndpoint if family == "ip6" else TCP4ClientEndpoint)(
            self.reactor, host, port, timeout=timeout)
        dial = _Dial(self, expected)
        d = endpoint.connect(dial)
        d.addCallback(lambda proto: self.pending[proto][0])
        return d

    def connection_ready(self, connection):
        waiting = self.pending.pop(connection, None)
        if waiting is not None and waiting[1] is not None and waiting[1] != connection.remote_peer:
            connection.abort("unexpected peer id")
            waiting[0].errback(ConnectionError(
                f"the peer is {connection.remote_peer}, not {waiting[1]}"))
            return
        self.connections.setdefault(connection.remote_peer, []).append(connection)
        for observer in self.observers:
            observer.connection_ready(connection)
        if waiting is not None:
            waiting[0].callback(connection)

    def connection_lost(self, connection):
        waiting = self.pending.pop(connection, None)
        if waiting is not None:
            waiting[0].errback(ConnectionError(connection.close_reason or "connection lost"))
        conns = self.connections.get(connection.remote_peer)
        if conns and connection in conns:
            conns.remove(connection)
            if not conns:
                del self.connections[connection.remote_peer]
            for observer in self.observers:
                observer.connection_lost(connection)


class _PingRequest(yamux.StreamHandler):
    def __init__(self, clock, payload):
        self.clock = clock
        self.payload = payload
        self.buf = b""
        self.done = defer.Deferred()

    def stream_opened(self, stream):
        self.stream = stream
        self.started = self.clock.seconds()
        stream.write(self.payload)

    def data_received(self, data):
        self.buf += data
        if len(self.buf) >= len(self.payload) and not self.done.called:
            rtt = self.clock.seconds() - self.started
            self.stream.close()
            if self.buf[:len(self.payload)] == self.payload:
                self.done.callback(rtt)
            else:
                self.done.errback(ConnectionError("the ping came back altered"))

    def stream_closed(self, reset):
        if not self.done.called:
            self.done.errback(ConnectionError("the peer closed the ping stream"))


def ping_once(connection, clock):
    """One ``/ipfs/ping/1.0.0`` round trip; fires with the round-trip time in seconds."""
    request = _PingRequest(clock, os.urandom(ping.SIZE))
    connection.open_protocol(ping.PROTOCOL_ID, request)
    return request.done


class _StreamTransport:
    """What a connection running inside a relayed stream writes to."""

    def __init__(self, stream, peer_address):
        self.stream = stream
        self.peer_address = peer_address

    def write(self, data):
        self.stream.write(data)

    def registerProducer(self, producer, streaming):
        self.stream.register_producer(_Producer(producer))

    def getPeer(self):
        return self.peer_address

    def abortConnection(self):
        self.stream.reset()

    def loseConnection(self):
        self.stream.close()


class _Producer:
    def __init__(self, producer):
        self.producer = producer

    def pause(self):
        self.producer.pauseProducing()

    def resume(self):
        self.producer.resumeProducing()


class _Circuit(yamux.StreamHandler):
    """The hop stream once the relay said OK: carries a whole libp2p
    connection (Noise, Yamux) to the target, end to end."""

    def __init__(self, proto, peer_address):
        self.proto = proto
        self.peer_address = peer_address
        self.early = b""
        self.started = False

    def start(self):
        self.started = True
        self.proto.makeConnection(_StreamTransport(self.stream, self.peer_address))
        if self.early:
            self.proto.dataReceived(self.early)

    def data_received(self, data):
        if self.started:
            self.proto.dataReceived(data)
        else:
            self.early += data

    def read_closed(self):
        self.stream.close()

    def stream_closed(self, reset):
        if self.started:
            self.proto.connectionLost(ConnectionError("the circuit closed"))


@defer.inlineCallbacks
def dial_circuit(host, relay_multiaddr, target):
    """A connection to ``target`` (PeerId) through the relay's circuit (a HOP
    CONNECT); fires once Noise and Yamux run end to end."""
    relay = yield host.dial(relay_multiaddr)
    proto = Libp2pConnection(initiator=True)
    proto.factory = host
    circuit = _Circuit(proto, relay.transport.getPeer())
    request = Request(m.hop(m.CONNECT, peer=m.peer(target)), m.decode_hop, then=circuit)
    relay.open_protocol(m.HOP_PROTOCOL_ID, request)
    _, _, status, _ = yield request.reply
    if status != m.OK:
        circuit.stream.reset()
        raise ConnectionError(f"the relay refused the circuit (status {status})")
    ready = defer.Deferred()
    host.pending[proto] = (ready, target)
    circuit.start()
    connection = yield ready
    return connection


class StopAcceptor(_PipeStopAcceptor):
    """A circuit the relay opens to us (STOP CONNECT): say OK, then serve the
    initiator's connection inside the stream."""

    def __init__(self, connection):
        self.host = connection.factory
        self.relay_address = connection.transport.getPeer()
        self.buf = b""

    def accepted(self, initiator, fields, rest):
        proto = Libp2pConnection(initiator=False)
        proto.factory = self.host
        circuit = _Circuit(proto, self.relay_address)
        self.stream.attach(circuit)
        circuit.early = rest
        circuit.start()


@defer.inlineCallbacks
def reserve(host, relay_multiaddr):
    """Take a reservation on the relay and accept its circuits; fires with our
    circuit address ``<relay>/p2p-circuit/p2p/<us>``."""
    host.handlers[m.STOP_PROTOCOL_ID] = StopAcceptor
    relay = yield host.dial(relay_multiaddr)
    request = Request(m.hop(m.RESERVE), m.decode_hop)
    relay.open_protocol(m.HOP_PROTOCOL_ID, request)
    _, _, status, _ = yield request.reply
    if status != m.OK:
        raise ConnectionError(f"the relay refused the reservation (status {status})")
    return f"{relay_multiaddr}/p2p-circuit/p2p/{host.peer_id}"
