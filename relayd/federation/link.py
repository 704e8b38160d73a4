"""One federation link: JSON lines, the handshake, keepalive, then items.

Frames are JSON objects, one per line (``\\n``), at most ``max_line``
bytes; a read is split into its lines at once (Twisted's ``LineReceiver``
cuts one line at a time and copies the rest of the read each time).  Until
the handshake has succeeded only ``hello`` and ``auth`` are read, at most
``HANDSHAKE_LINE`` bytes each (an unauthenticated connection holds no
more); afterwards every frame goes to the hub.  A link that stays silent
for ``dead_after`` seconds is dropped (each side pings every ``keepalive``).

Output: while the transport holds more than it takes at once (it paused us),
frames wait in the link's own queue and go out ``WRITE_CHUNK`` at a time as
it drains, so each drain is progress.  The hub stops queueing items once the
queue holds ``[federation] link_buffer`` bytes: the peer is *behind*, and
once the queue has drained it is told to catch up from the journal
(``synced`` with ``skipped``).  A link is dropped only when the transport has
drained nothing for ``dead_after`` seconds.
"""
import hashlib
from collections import deque

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from relayd.federation.handshake import Handshake, HandshakeError
from relayd.jsonfast import dumps_own, loads_own

HELLO, AUTH, UP, CLOSED = "hello", "auth", "up", "closed"
HANDSHAKE_LINE = 16384
WRITE_CHUNK = 131072    # bytes of the queue handed to the transport at one drain


def encode(obj):
    return dumps_own(obj) + b"\n"


@implementer(IPushProducer)
class Link(Protocol):
    """A link; as the transport's producer it learns when the peer stops
    reading.  What is sent meanwhile waits in ``queue`` (``queued`` bytes),
    which the hub keeps under ``link_buffer``; a peer whose transport drains
    nothing for ``dead_after`` seconds is dropped (it catches up when it
    reconnects)."""

    log = Logger()
    MAX_LENGTH = HANDSHAKE_LINE     # bytes in a line, newline excluded

    def __init__(self, hub, expected=None):
        self.hub = hub
        self.expected = expected        # the peer name an outbound link dialled
        self.peer = None
        self.state = HELLO
        self.registered = False         # known to the hub as an up link
        # outbound only: fires once authenticated, fails if closed before
        self.ready = defer.Deferred() if expected is not None else None
        self.handshake = None
        self.last_heard = 0.0
        self.stalled_since = None       # when the transport paused us, if it did
        self.sync_have = None           # the cursors of the last sync sent (hub)
        self.queue = deque()            # frames the transport has not taken yet
        self.queued = 0                 # their bytes
        self.skipped = 0                # items the hub left to catch-up since the queue filled
        self._timer = None
        self._buffer = b""              # the start of a line whose newline has not arrived
        self._reading = False           # in dataReceived (a line's handling may read more)

    @property
    def ranges(self):
        """True when both sides speak ``have`` with seq ranges (PROTOCOL.md)."""
        return self.handshake is not None and "have-ranges" in self.handshake.peer_features

    @property
    def name(self):
        return self.peer.name if self.peer is not None else self.expected or "?"

    def connectionMade(self):
        self.MAX_LENGTH = min(HANDSHAKE_LINE, self.hub.settings.max_line)
        setter = getattr(self.transport, "setTcpNoDelay", None)
        if setter is not None:
            setter(True)
        self.last_heard = self.hub.clock.seconds()
        self.transport.registerProducer(self, True)
        self.handshake = Handshake(self.hub.identity)
        self.send(self.handshake.hello())
        self._timer = self.hub.clock.callLater(self.hub.settings.handshake_timeout, self._tick)

    def send(self, obj):
        self.send_raw(encode(obj))

    def send_raw(self, data):
        """Write ``data``, after what is queued; queued while the transport is paused."""
        if self.stalled_since is None and not self.queue:
            self.transport.write(data)
        else:
            self.queue.append(data)
            self.queued += len(data)

    def dataReceived(self, data):
        """Hand each whole line to ``lineReceived``, in order, until the link
        closes; a line, or the start of one, longer than ``MAX_LENGTH`` fails it."""
        self.last_heard = self.hub.clock.seconds()
        if b"\n" not in data or self._reading:
            self._buffer += data
            if not self._reading:
                self._check_unfinished()
            return
        self._reading = True
        try:
            lines = (self._buffer + data).split(b"\n")
            while len(lines) > 1:
                self._buffer = lines.pop()
                for line in lines:
                    if len(line) > self.MAX_LENGTH:
                        self._buffer = b""
                        self.lineLengthExceeded(line)
                        return
                    self.lineReceived(line)
                    if self.state == CLOSED or self.transport.disconnecting:
                        return
                lines = self._buffer.split(b"\n")     # more arrived while a line was handled
            self._check_unfinished()
        finally:
            self._reading = False

    def _check_unfinished(self):
        if len(self._buffer) > self.MAX_LENGTH:
            line, self._buffer = self._buffer, b""
            self.lineLengthExceeded(line)

    def lineReceived(self, line):
        if self.state == CLOSED:
            return
        try:
            # a peer's json.dumps may have escaped a lone surrogate in a body:
            # msgspec refuses it, the standard module reads it as it always did
            frame = loads_own(line)
        except (ValueError, RecursionError):        # RecursionError: nested too deeply
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            self.fail("bad_frame", "each line must be a JSON object with a type")
            return
        if self.state == UP:
            self.hub.receive(self, frame, line)
            return
        try:
            self._handshake(frame)
        except HandshakeError as e:
            self.hub.metrics.refused.inc()
            if self.hub.refusal_log.allow(getattr(self.transport.getPeer(), "host", "?")):
                self.log.warn("federation: refused a link from {address} ({expected}): {why}",
                              address=self.address(), expected=self.expected or "inbound",
                              why=str(e))
            self.fail("auth_failed", str(e))

    def _handshake(self, frame):
        kind = frame["type"]
        if self.state == HELLO and kind == "hello":
            peer, auth = self.handshake.receive_hello(frame, self.hub.find_peer)
            if self.expected is not None and peer.name != self.expected:
                raise HandshakeError(f"dialled {self.expected!r} but {peer.name!r} answered")
            if peer.tls_fingerprint is not None:
                self._check_certificate(peer)
            self.peer = peer
            self.state = AUTH
            self.send(auth)
        elif self.state == AUTH and kind == "auth":
            self.handshake.receive_auth(frame)
            if self.hub.find_peer(self.peer.name) != self.peer:
                # a reload removed or changed the peer while it was authenticating
                raise HandshakeError(f"relay {self.peer.name!r} is no longer a configured peer")
            self.state = UP
            self.MAX_LENGTH = self.hub.settings.max_line
            self._timer.cancel()
            self._timer = self.hub.clock.callLater(self.hub.settings.keepalive, self._tick)
            self.registered = True
            self.hub.link_up(self)
            if self.ready is not None:
                self.ready.callback(self)
        elif kind == "error":
            # unauthenticated text: quoted, so that it cannot forge log lines, and cut short
            raise HandshakeError(f"the other side refused: {str(frame.get('message'))[:200]!r}")
        else:
            raise HandshakeError(f"unexpected {kind!r} frame during the handshake")

    def _check_certificate(self, peer):
        """The peer's TLS certificate must have its pinned SHA-256 fingerprint."""
        get = getattr(self.transport, "getPeerCertificate", None)
        cert = get() if get is not None else None
        if cert is None:
            raise HandshakeError(f"relay {peer.name!r} has a pinned TLS certificate "
                                 f"but the link presented none")
        der = cert.to_cryptography().public_bytes(serialization.Encoding.DER)
        if "sha256:" + hashlib.sha256(der).hexdigest() != peer.tls_fingerprint:
            raise HandshakeError(f"relay {peer.name!r} presented a TLS certificate that is "
                                 f"not the pinned one")

    def _tick(self):
        """Handshake timeout, then keepalive and dead-link detection."""
        self._timer = None
        if self.state != UP:
            self.fail("timeout", "handshake not completed in time")
            return
        settings = self.hub.settings
        now = self.hub.clock.seconds()
        if now - self.last_heard > settings.dead_after:
            self.log.warn("federation: link to {peer} silent for {seconds}s, dropping it",
                          peer=self.name, seconds=settings.dead_after)
            self.close()
            return
        if self.stalled_since is not None and now - self.stalled_since > settings.dead_after:
            self.log.warn("federation: {peer} has read nothing for {seconds}s, dropping the link",
                          peer=self.name, seconds=settings.dead_after)
            self.close()
            return
        self.send({"type": "ping"})
        self._timer = self.hub.clock.callLater(settings.keepalive, self._tick)

    def pauseProducing(self):
        if self.stalled_since is None:
            self.stalled_since = self.hub.clock.seconds()

    def resumeProducing(self):
        """The transport handed all it held to the kernel: give it the next
        chunk (a write past its buffer pauses us again at once)."""
        self.stalled_since = None
        queue = self.queue
        while queue and self.stalled_since is None and self.state != CLOSED:
            parts, size = [], 0
            while queue and size < WRITE_CHUNK:
                parts.append(queue.popleft())
                size += len(parts[-1])
            self.queued -= size
            self.transport.write(b"".join(parts))
        if self.skipped and not queue and self.state == UP:
            self.hub.caught_up(self)

    def stopProducing(self):
        pass

    def lineLengthExceeded(self, line):
        self.fail("too_long", f"a frame is longer than {self.MAX_LENGTH} bytes")

    def fail(self, code, text):
        if self.state != CLOSED:
            self.send({"type": "error", "error": code, "message": text})
        self.close()

    def close(self):
        self.state = CLOSED
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.state = CLOSED
        self.queue.clear()
        self.queued = 0
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.registered:
            self.registered = False
            self.hub.link_down(self, reason.getErrorMessage())
        if self.ready is not None and not self.ready.called:
            self.ready.errback(HandshakeError(f"link closed before authentication: "
                                              f"{reason.getErrorMessage()}"))

    def address(self):
        peer = self.transport.getPeer()
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


class LinkFactory(Factory):
    """Builds links for the listener (``expected=None``) or for one peer's dialer."""

    noisy = False

    def __init__(self, hub, expected=None, watch=None):
        self.hub = hub
        self.expected = expected
        self.watch = watch              # called with each new link (a dialer's backoff)

    def buildProtocol(self, addr):
        link = Link(self.hub, self.expected)
        link.factory = self
        if self.watch is not None:
            self.watch(link)
        return link
