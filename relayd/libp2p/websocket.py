"""libp2p over WebSocket (``/ws``, and ``/tls/ws`` behind the ``[tls]`` certificate).

Browsers reach a relay only this way.  Each binary WebSocket message carries
bytes of the same multistream -> Noise -> Yamux stack as TCP; the
``Libp2pConnection`` on top sees the WebSocket as its transport and does not
know the difference, so the peer id, limits and metrics are those of TCP.
autobahn does the WebSocket framing, masking and handshake.
"""
from autobahn.twisted.websocket import (
    WebSocketClientFactory, WebSocketClientProtocol, WebSocketServerFactory,
    WebSocketServerProtocol)
from twisted.internet.interfaces import ITCPTransport

MAX_MESSAGE = 1024 * 1024       # js sends one Noise frame (<= 64 KiB) per message
MAX_OPENING_HANDSHAKE = 16 * 1024   # autobahn buffers the HTTP request without a bound


class _Quiet:
    """autobahn logs a line for every bad handshake or frame, which untrusted
    peers trigger at will: the inner connection's abort reports those instead,
    counted and logged within the libp2p bounds."""

    def _drop(self, *args, **kwargs):
        pass

    debug = info = warn = error = failure = _drop


class _Carrier:
    """What both roles share: the WebSocket is the inner connection's transport."""

    log = _Quiet()
    inner = None
    opened = False

    def connectionMade(self):
        super().connectionMade()
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    def onOpen(self):
        self.opened = True

    def onMessage(self, payload, is_binary):
        if not is_binary:
            self.inner.abort("text message on a libp2p WebSocket", "websocket")
            return
        self.inner.dataReceived(payload)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.inner is not None:
            inner, self.inner = self.inner, None
            if inner.close_reason is None and (self.failedByMe or not self.opened):
                why = self.wasNotCleanReason or "closed before the WebSocket handshake"
                inner.close_reason, inner.close_kind = f"WebSocket: {why}"[:200], "websocket"
            inner.connectionLost(reason)

    # --- the inner connection's transport -------------------------------------------
    def write(self, data):
        if self.state == self.STATE_OPEN:
            self.sendMessage(data, isBinary=True)

    def registerProducer(self, producer, streaming):
        self.transport.registerProducer(producer, streaming)

    def loseConnection(self):
        self.sendClose()
        self.transport.loseConnection()     # after the close frame; no wait for the echo

    def abortConnection(self):
        self.transport.abortConnection()

    def getPeer(self):
        return self.transport.getPeer()

    def getHost(self):
        return self.transport.getHost()


class ServerCarrier(_Carrier, WebSocketServerProtocol):
    def connectionMade(self):
        super().connectionMade()
        self.inner.makeConnection(self)     # its handshake timeout covers the WebSocket's too

    def onConnect(self, request):
        return None                     # any path, no subprotocol (as js-libp2p dials)

    def dataReceived(self, data):
        if self.state == self.STATE_CONNECTING and len(self.data) + len(data) > MAX_OPENING_HANDSHAKE:
            self.inner.abort("WebSocket: opening handshake over 16 KiB", "websocket")
            return
        super().dataReceived(data)


class ClientCarrier(_Carrier, WebSocketClientProtocol):
    def onOpen(self):
        super().onOpen()
        self.inner.makeConnection(self)


def _options(factory):
    # autobahn's own timers are off: they run on the global reactor, in batches
    # that outlive the connection; the libp2p connection's timeouts cover them
    factory.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE,
                               openHandshakeTimeout=0, closeHandshakeTimeout=0,
                               autoFragmentSize=0)
    if factory.isServer:
        factory.setProtocolOptions(webStatus=False)    # no HTML page for plain GETs


class ServerFactory(WebSocketServerFactory):
    """Accepts WebSocket connections for ``libp2p`` (the TCP factory), which
    builds the inner connection (and applies its connection caps)."""

    noisy = False

    protocol = ServerCarrier

    def __init__(self, libp2p, suffix):
        super().__init__()
        self.libp2p = libp2p
        self.suffix = suffix                # "/ws" or "/tls/ws"
        _options(self)

    def buildProtocol(self, addr):
        inner = self.libp2p.buildProtocol(addr)
        if inner is None:
            return None
        inner.transport_suffix = self.suffix
        carrier = super().buildProtocol(addr)
        carrier.inner = inner
        return carrier


class ClientFactory(WebSocketClientFactory):
    """Dials ``url`` and runs ``libp2p`` (e.g. ``relayd.libp2p.peer.Peer``) inside."""

    protocol = ClientCarrier

    def __init__(self, libp2p, url):
        super().__init__(url)
        self.libp2p = libp2p
        _options(self)
        self.setProtocolOptions(serverConnectionDropTimeout=0)

    def buildProtocol(self, addr):
        carrier = super().buildProtocol(addr)
        carrier.inner = self.libp2p.buildProtocol(addr)
        carrier.inner.transport_suffix = "/ws"
        return carrier

    def clientConnectionFailed(self, connector, reason):
        self.libp2p.clientConnectionFailed(connector, reason)
