"""One libp2p connection over TCP: multistream -> Noise XX -> multistream -> Yamux.

``Libp2pConnection`` plays either role (relayd listens; tests and benchmarks
dial).  Once Yamux runs, each inbound stream negotiates its protocol with
multistream-select and is handed to the handler registered for it; outbound
streams come from ``open_protocol``.  Leftover bytes are passed on at every
layer.
"""
import weakref

from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relayd.libp2p import multistream, noise, yamux
from relayd.libp2p.multiaddr import from_address
from relayd.ops.ratelog import LogLimiter

NEGOTIATING, HANDSHAKE, SECURED, MUXED, CLOSED = range(5)
# Bytes written while the transport holds our output unread: only control frames
# (pings, window updates, resets) go out then, so a peer that makes this many
# without reading is dropped instead of growing the buffer without bound.
MAX_UNREAD_OUTPUT = 1024 * 1024


_limiters = weakref.WeakKeyDictionary()


def _internal_errors(clock):
    """The log limiter for unexpected errors in the connections run on ``clock``:
    each distinct error (its type and where it was raised) once a minute."""
    limiter = _limiters.get(clock)
    if limiter is None:
        limiter = _limiters[clock] = LogLimiter(clock)
    return limiter


class InboundNegotiation(yamux.StreamHandler):
    """Runs multistream-select as responder, then attaches the chosen handler."""

    def __init__(self, connection):
        self.connection = connection
        self.listener = multistream.Listener(connection.handlers)

    def data_received(self, data):
        try:
            reply = self.listener.feed(data)
        except multistream.NegotiationFailed:
            self.stream.reset()
            return
        if reply:
            self.stream.write(reply)
        if self.listener.result is not None:
            protocol, leftover = self.listener.result
            handler = self.connection.handlers[protocol](self.connection)
            self.stream.attach(handler)
            if leftover:
                handler.data_received(leftover)

    def read_closed(self):
        self.stream.reset()


class OutboundNegotiation(yamux.StreamHandler):
    """Proposes one protocol, then attaches ``handler``; resets the stream on refusal."""

    def __init__(self, protocol, handler):
        self.dialer = multistream.Dialer(protocol)
        self.handler = handler

    def stream_opened(self, stream):
        self.stream = stream
        stream.write(self.dialer.start())

    def data_received(self, data):
        try:
            self.dialer.feed(data)
        except multistream.NegotiationFailed:
            self.stream.reset()
            return
        if self.dialer.result is not None:
            leftover = self.dialer.result[1]
            self.stream.attach(self.handler)
            if leftover:
                self.handler.data_received(leftover)

    def read_closed(self):
        self.stream.reset()

    def stream_closed(self, reset):
        self.handler.stream_closed(True)


@implementer(IPushProducer)
class Libp2pConnection(Protocol):
    """The connection; the factory supplies ``keypair``, ``early_muxers`` (muxers
    offered inside Noise, () for none), ``handlers``
    (protocol id -> handler factory taking the connection), ``reactor``,
    ``handshake_timeout`` and ``connection_ready``/``connection_lost`` hooks."""

    log = Logger()
    transport_suffix = ""       # what follows /tcp/<port> in addresses: "/ws" over WebSocket

    def __init__(self, initiator=False):
        self.initiator = initiator
        self.state = NEGOTIATING
        self.remote_peer = None
        self.session = None
        self.handshake = None
        self.deframer = noise.Deframer()
        self.negotiation = None
        self.timeout = None
        self.bytes_in = self.bytes_out = 0
        self.close_reason = self.close_kind = None
        self.ping_streams = 0
        self.unread = None              # bytes written since the transport paused us
        self.idle_since = None
        self.ip = None

    @property
    def handlers(self):
        return self.factory.handlers

    @property
    def remote_address(self):
        """``/ip4/<host>/tcp/<port>`` (``/ws`` ...) of the remote as seen from here."""
        return from_address(self.transport.getPeer()) + self.transport_suffix

    # --- Twisted protocol -----------------------------------------------------------
    def connectionMade(self):
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)  # Nagle + delayed ACKs stall every handshake step
        self.timeout = self.factory.reactor.callLater(
            self.factory.handshake_timeout, self._handshake_timed_out)
        self.transport.registerProducer(self, True)
        if self.initiator:
            self.negotiation = multistream.Dialer(noise.PROTOCOL_ID)
            self._raw_write(self.negotiation.start())
        else:
            self.negotiation = multistream.Listener({noise.PROTOCOL_ID})

    def dataReceived(self, data):
        self.bytes_in += len(data)
        try:
            if self.state == NEGOTIATING:
                data = self._negotiate_raw(data)
            if self.state == HANDSHAKE and data:
                self._handshake(data)
            elif self.state in (SECURED, MUXED) and data:
                self._decrypt(data)
        except multistream.NegotiationFailed as e:
            self.abort(str(e), "multistream")
        except noise.HandshakeError as e:
            self.abort(str(e), "noise")
        except ValueError as e:
            self.abort(str(e), "malformed")
        except Exception:
            failure = Failure()
            _internal_errors(self.factory.reactor).failure(
                self.log, (failure.frames[-1][1:3] if failure.frames else None,),
                "libp2p connection handler failed", failure)
            self.abort("internal error", "internal")

    def connectionLost(self, reason):
        self.state = CLOSED
        self._cancel_timeout()
        if self.session is not None:
            self.session.connection_lost()
        self.factory.connection_lost(self)

    def pauseProducing(self):
        if self.unread is None:         # the transport says so again at every write
            self.unread = 0
        if self.session is not None:
            self.session.pause_writing()

    def resumeProducing(self):
        self.unread = None
        if self.session is not None:
            self.session.resume_writing()

    def stopProducing(self):
        pass

    # --- layers ---------------------------------------------------------------------
    def _raw_write(self, data):
        if self.unread is not None:
            self.unread += len(data)
            if self.unread > MAX_UNREAD_OUTPUT:
                self.abort("the peer does not read its output", "slow-reader")
                return
        self.bytes_out += len(data)
        self.transport.write(data)

    def _negotiate_raw(self, data):
        reply = self.negotiation.feed(data)
        if reply:
            self._raw_write(reply)
        if self.negotiation.result is None:
            return b""
        leftover = self.negotiation.result[1]
        self.state = HANDSHAKE
        self.handshake = noise.Handshake(self.factory.keypair, self.initiator,
                                         self.factory.early_muxers)
        if self.initiator:
            self._raw_write(noise.frame(self.handshake.write_message()))
        return leftover

    def _handshake(self, data):
        messages = self.deframer.feed(data)
        while messages and self.state == HANDSHAKE:
            self.handshake.read_message(messages.pop(0))
            if not self.handshake.complete:
                self._raw_write(noise.frame(self.handshake.write_message()))
            if self.handshake.complete:
                self._secured()
        self._plaintexts(messages)

    def _secured(self):
        self.state = SECURED
        self.remote_peer = self.handshake.remote_peer
        if self._inlined_muxer():
            self._muxed(b"")
        elif self.initiator:
            self.negotiation = multistream.Dialer(yamux.PROTOCOL_ID)
            self.write(self.negotiation.start())
        else:
            self.negotiation = multistream.Listener({yamux.PROTOCOL_ID})

    def _decrypt(self, data):
        self._plaintexts(self.deframer.feed(data))

    def _plaintexts(self, messages):
        for message in messages:
            if self.state == CLOSED:
                return
            self._on_plaintext(self.handshake.recv.decrypt(b"", message))

    def _on_plaintext(self, data):
        if self.state == MUXED:
            self.session.feed(data)
            return
        reply = self.negotiation.feed(data)
        if reply:
            self.write(reply)
        if self.negotiation.result is not None:
            self._muxed(self.negotiation.result[1])

    def _inlined_muxer(self):
        """True when Noise already agreed on Yamux: the first muxer of the
        initiator's list that the responder offers (the libp2p Noise spec)."""
        ours, theirs = self.handshake.muxers, self.handshake.remote_muxers
        initiator_list = ours if self.initiator else theirs
        other = theirs if self.initiator else ours
        common = [m for m in initiator_list if m in other]
        return bool(common) and common[0] == yamux.PROTOCOL_ID

    def _muxed(self, leftover):
        self.negotiation = None
        self._cancel_timeout()
        self.state = MUXED
        self.session = yamux.Session(self.write, self.initiator, self._inbound_stream,
                                     lambda reason: self.abort(reason, "yamux"))
        self.factory.connection_ready(self)
        if leftover and self.state == MUXED:
            self.session.feed(leftover)

    def write(self, plaintext):
        """Encrypt and send (after the handshake)."""
        if self.state in (SECURED, MUXED):
            self._raw_write(noise.encrypt_frames(self.handshake.send, plaintext))

    def _inbound_stream(self, stream):
        stream.attach(InboundNegotiation(self))

    def open_protocol(self, protocol, handler):
        """Open a stream that speaks ``protocol`` via ``handler``; None when impossible."""
        if self.state != MUXED:
            return None
        return self.session.open_stream(OutboundNegotiation(protocol, handler))

    # --- ending ---------------------------------------------------------------------
    def _handshake_timed_out(self):
        self.timeout = None
        self.abort("handshake timeout", "handshake-timeout")

    def _cancel_timeout(self):
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()
        self.timeout = None

    def abort(self, reason, kind="policy"):
        """Drop the connection at once (protocol error, timeout, policy): nothing
        more is read or written.  ``kind`` is a short word for counting; the
        factory's ``connection_lost`` sees both as ``close_reason``/``close_kind``."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        if self.close_reason is None:
            self.close_reason, self.close_kind = reason, kind
        self.transport.abortConnection()

    def close(self):
        """GoAway, then close after pending writes."""
        if self.state == CLOSED:
            return
        if self.session is not None:
            self.session.go_away()
        self.transport.loseConnection()
