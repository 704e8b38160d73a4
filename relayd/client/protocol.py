"""The client side of the JSON-lines relay protocol (docs/PROTOCOL.md section 1).

``RelayClientProtocol`` frames JSON lines, correlates each request with its
response through ``req``, runs the hello (and the Ed25519 challenge), and
hands everything the relay pushes (messages, connection-level errors) to
callbacks.  It neither reconnects nor retries: ``relayd.client.session``
does that on top of it.  Tests and load generators can use it directly::

    proto = RelayClientProtocol(on_message=print)
    # ... connect it with an endpoint, then:
    welcome = await proto.identify("alice")
    ack = await proto.request({"type": "send", "to": "bob", "body": "hi"})
"""
import base64
import json

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

# Lines from the relay are bounded by its [tcp] max_line (64 KiB by default);
# this leaves room for larger relay settings while still bounding memory.
MAX_INCOMING_LINE = 1 << 20


class ServerError(Exception):
    """The relay answered ``{"status": "error", ...}``."""

    def __init__(self, response):
        self.response = response
        self.code = response.get("error", "unknown")
        self.message = response.get("message", "")
        super().__init__(self.code)

    @property
    def retry_after(self):
        value = self.response.get("retry_after")
        return value if isinstance(value, (int, float)) else None

    def __str__(self):
        return f"{self.code}: {self.message}" if self.message else self.code


class ConnectionClosed(Exception):
    """The connection ended before the relay answered.

    ``error`` is the last error the relay pushed before closing (for
    example ``too_many_connections`` or ``idle_timeout``), if any.
    """

    def __init__(self, text, error=None):
        super().__init__(text)
        self.error = error


class ProtocolViolation(Exception):
    """The relay sent something this client cannot make sense of."""


def auth_payload(relay_id, peer_id, challenge):
    """The bytes a client signs to prove its key (PROTOCOL.md 1.2)."""
    return f"relayd-auth:{relay_id}:{peer_id}:{challenge}".encode("utf-8")


def encode(obj):
    """One request line, without its newline."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class RelayClientProtocol(LineOnlyReceiver):
    """One connection to a relay, speaking JSON lines.

    ``on_message(msg)`` gets every ``{"type": "message"}`` the relay pushes;
    ``on_error(ServerError)`` gets errors that answer no request (for
    example ``session_replaced``, ``idle_timeout``); ``on_lost(reason)`` is
    called once when the connection ends.

    With ``acks`` the hello asks the relay to keep each message stored
    until acked, and every message is acked (by its msg_id, one ``ack``
    line per chunk read) once ``on_message`` has returned.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_INCOMING_LINE
    log = Logger()

    def __init__(self, on_message=None, on_error=None, on_lost=None, acks=False):
        self.on_message = on_message
        self.acks = acks
        self._to_ack = []
        self.on_error = on_error
        self.on_lost = on_lost
        self.welcome = None
        self.last_error = None          # the last error that answered no request
        self._next_req = 0
        self._pending = {}
        self._closed = False

    def connectionMade(self):
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)      # small request/response lines: no Nagle delay
            except OSError:
                pass

    # -- requests -------------------------------------------------------

    def request(self, obj):
        """Send ``obj`` with a fresh ``req``; a Deferred of the response.

        It fails with ``ServerError`` for an error response and with
        ``ConnectionClosed`` if the connection ends first.
        """
        if not self.is_open:
            return fail(ConnectionClosed("not connected"))
        self._next_req += 1
        req = self._next_req
        d = Deferred(lambda _: self._pending.pop(req, None))
        self._pending[req] = d
        self.sendLine(encode(dict(obj, req=req)))
        return d

    def identify(self, peer_id, signer=None, relay_id=None):
        """Say hello as ``peer_id``; a Deferred of the welcome.

        With ``signer`` (an object with ``public_b64`` and ``sign(bytes)``,
        such as ``relayd.identity.Identity``) the id is proved: the relay's
        challenge is signed over ``relayd-auth:<relay>:<peer>:<challenge>``.
        The relay id is taken from the challenge when the relay names itself
        there, else ``relay_id`` must be given.
        """
        return Deferred.fromCoroutine(self._identify(peer_id, signer, relay_id))

    async def _identify(self, peer_id, signer, relay_id):
        hello = {"type": "hello", "id": peer_id}
        if self.acks:
            hello["acks"] = True
        if signer is not None:
            hello["key"] = signer.public_b64
        response = await self.request(hello)
        if response.get("type") == "challenge":
            if signer is None:
                raise ProtocolViolation("the relay sent a challenge to a hello without a key")
            relay = response.get("relay") or relay_id
            challenge = response.get("challenge")
            if not relay or not isinstance(challenge, str):
                raise ProtocolViolation("cannot sign the challenge: relay id unknown "
                                        "(the relay did not name itself; give the relay id)")
            signature = signer.sign(auth_payload(relay, peer_id, challenge))
            response = await self.request(
                {"type": "auth", "signature": base64.b64encode(signature).decode("ascii")})
        if response.get("type") != "welcome":
            raise ProtocolViolation(f"expected a welcome, got {response.get('type')!r}")
        self.welcome = response
        return response

    def close(self):
        if self.is_open:
            self.transport.loseConnection()

    def abort(self):
        if self.is_open:
            self.transport.abortConnection()

    # -- incoming -------------------------------------------------------

    def dataReceived(self, data):
        super().dataReceived(data)
        if self._to_ack and self.is_open:
            ids, self._to_ack = self._to_ack, []
            self.sendLine(encode({"type": "ack", "ids": ids}))

    def lineReceived(self, line):
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):     # RecursionError: nested too deeply
            self.log.warn("ignoring a line from the relay that is not JSON ({size} bytes)",
                          size=len(line))
            return
        if not isinstance(obj, dict):
            self.log.warn("ignoring a JSON line from the relay that is not an object")
            return
        req = obj.get("req")
        waiting = self._pending.pop(req, None) if _hashable(req) else None
        if waiting is not None:
            if obj.get("status") == "error":
                waiting.errback(ServerError(obj))
            else:
                waiting.callback(obj)
        elif obj.get("type") == "message":
            if self.on_message is not None:
                self.on_message(obj)
            msg_id = obj.get("msg_id")
            if self.acks and isinstance(msg_id, str):
                self._to_ack.append(msg_id)
        elif obj.get("status") == "error":
            self.last_error = ServerError(obj)
            if self.on_error is not None:
                self.on_error(self.last_error)
        else:
            self.log.debug("ignoring an unsolicited {type!r} from the relay", type=obj.get("type"))

    def lineLengthExceeded(self, line):
        self.log.error("the relay sent a line over {limit} bytes; closing", limit=self.MAX_LENGTH)
        self.abort()

    @property
    def is_open(self):
        return self.transport is not None and not self._closed

    def connectionLost(self, reason):
        # on_lost first, so that whoever retries a failed request below
        # already knows this connection is gone.
        self._closed = True
        if self.on_lost is not None:
            self.on_lost(reason)
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(ConnectionClosed(reason.getErrorMessage(), self.last_error))


def _hashable(value):
    return isinstance(value, (int, str)) and not isinstance(value, bool)
