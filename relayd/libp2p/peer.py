"""A minimal libp2p peer on the same stack, for the client side of a relay:
dial, RESERVE, CONNECT through a relay, and accept STOP (tests, tools)."""
from twisted.internet import defer
from twisted.internet.protocol import ClientFactory

from relayd.libp2p import messages as m, ping, protobuf, varint
from relayd.libp2p.connection import Libp2pConnection
from relayd.libp2p.yamux import StreamHandler


class Pipe(StreamHandler):
    """A stream used as a byte pipe: collects what arrives, fires ``done`` at the end."""

    def __init__(self):
        self.received = bytearray()
        self.done = defer.Deferred()     # fires with True after a reset, False after FIN/FIN
        self.opened = defer.Deferred()   # fires once the stream's protocol is agreed
        self.fin = False
        self.waiters = []

    def stream_opened(self, stream):
        self.stream = stream
        self.opened.callback(self)

    def data_received(self, data):
        self.received += data
        for count, d in [w for w in self.waiters if len(self.received) >= w[0]]:
            self.waiters.remove((count, d))
            d.callback(bytes(self.received))

    def wait_for(self, count):
        """A Deferred firing once ``count`` bytes have arrived."""
        d = defer.Deferred()
        self.waiters.append((count, d))
        self.data_received(b"")
        return d

    def read_closed(self):
        self.fin = True

    def stream_closed(self, reset):
        if not self.done.called:
            self.done.callback(reset)


class Request(StreamHandler):
    """Writes one length-prefixed message, reads one reply, then hands the
    stream to ``then`` (a Pipe) with any bytes that followed the reply."""

    def __init__(self, message, decode, then=None):
        self.message = message
        self.decode = decode
        self.then = then
        self.reply = defer.Deferred()
        self.buf = b""

    def stream_opened(self, stream):
        self.stream = stream
        stream.write(varint.prefixed(self.message))

    def data_received(self, data):
        self.buf += data
        got = varint.split_prefixed(self.buf, m.MAX_MESSAGE)
        if got is None or self.reply.called:
            return
        message, rest = got
        decoded = self.decode(message)
        if self.then is not None:
            self.stream.attach(self.then)
            if rest:
                self.then.data_received(rest)
        self.reply.callback(decoded)

    def stream_closed(self, reset):
        if not self.reply.called:
            self.reply.errback(ConnectionError("stream closed before the reply"))


class StopAcceptor(StreamHandler):
    """Answers STOP CONNECT with OK and turns the stream into a Pipe."""

    def __init__(self, connection):
        self.peer = connection.factory
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        got = varint.split_prefixed(self.buf, m.MAX_MESSAGE)
        if got is None:
            return
        message, rest = got
        msg_type, initiator, _, fields = m.decode_stop(message)
        if msg_type != m.STOP_CONNECT or initiator is None:
            self.stream.reset()
            return
        self.stream.write(varint.prefixed(m.stop(m.STOP_STATUS, status=m.OK)))
        self.accepted(initiator, fields, rest)

    def accepted(self, initiator, fields, rest):
        """The circuit from ``initiator`` is open; ``rest``: bytes that followed."""
        pipe = Pipe()
        pipe.initiator = initiator
        pipe.limit = m.decode_limit(protobuf.first_bytes(fields, 3))
        self.stream.attach(pipe)
        if rest:
            pipe.data_received(rest)
        self.peer.circuits.append(pipe)
        for d in self.peer.circuit_waiters:
            d.callback(pipe)
        self.peer.circuit_waiters = []


class Peer(ClientFactory):
    """Dials one connection; ``ready`` fires with the muxed connection."""

    protocol = Libp2pConnection

    def __init__(self, reactor, keypair, handshake_timeout=10, early_muxers=()):
        self.reactor = reactor
        self.keypair = keypair
        self.early_muxers = early_muxers
        self.handshake_timeout = handshake_timeout
        self.handlers = {m.STOP_PROTOCOL_ID: StopAcceptor, ping.PROTOCOL_ID: ping.PingResponder}
        self.ready = defer.Deferred()
        self.lost = defer.Deferred()
        self.circuits = []
        self.circuit_waiters = []
        self.connection = None

    def buildProtocol(self, addr):
        proto = Libp2pConnection(initiator=True)
        proto.factory = self
        return proto

    def clientConnectionFailed(self, connector, reason):
        self.ready.errback(reason)

    def connection_ready(self, connection):
        self.connection = connection
        self.ready.callback(connection)

    def connection_lost(self, connection):
        if not self.ready.called:
            self.ready.errback(ConnectionError(connection.close_reason or "connection lost"))
        if not self.lost.called:
            self.lost.callback(connection.close_reason)

    def next_circuit(self):
        """A Deferred firing with the next Pipe the relay opens to us via STOP."""
        d = defer.Deferred()
        self.circuit_waiters.append(d)
        return d

    def hop(self, message, then=None):
        """Send a HopMessage; fires with ``(type, peer, status, fields)``."""
        request = Request(message, m.decode_hop, then)
        self.connection.open_protocol(m.HOP_PROTOCOL_ID, request)
        return request.reply

    def reserve(self):
        return self.hop(m.hop(m.RESERVE))

    def connect(self, target, pipe):
        """CONNECT to ``target`` (PeerId); after OK, ``pipe`` carries the circuit."""
        return self.hop(m.hop(m.CONNECT, peer=m.peer(target)), then=pipe)
