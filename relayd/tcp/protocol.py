"""One client connection of the TCP message relay (both dialects).

The first bytes decide the dialect: ``{`` starts the JSON-lines protocol,
anything else is a seed-000 client whose first chunk is its peer id.  The
protocol frames, parses, validates and rate-limits; the router does the rest.

Output: after every write the socket transport is marked as having paused
its producer (us, or TLS's wrapper around us), so it resumes us once it has
handed everything to the kernel.  That is when the directed messages of clients
that cannot ack are settled; bytes written meanwhile wait in our own queue
and go out, up to ``WRITE_CHUNK`` at a time, at each drain.  The router's
copies for a plain TCP connection whose transport is empty are sent at once
(one ``send`` in the reactor turn that read the sender's line, not a turn
later; TLS keeps the transport's path); what the kernel does not take goes
to the transport as above.  A queue over ``[tcp] output_buffer`` pauses
reading from the connections that send (the TCP service's flow control); a
connection whose transport has not drained for ``[tcp] stall_timeout`` is
dropped as ``slow_consumer``.
"""
import base64
import json
import os
from collections import deque
from json.encoder import encode_basestring_ascii

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from relayd import finitejson
from relayd.core import message
from relayd.core.interfaces import ISession
from relayd.core.membership import MembershipFull
from relayd.jsonfast import loads as _fast
from relayd.identity import verify
from relayd.tcp import errors
from relayd.tcp.framing import FrameTooLong, LegacySplitter, LineSplitter

JSON = "json"
LEGACY = "legacy"
MAX_LISTED = 1000
WRITE_CHUNK = 65536         # bytes of the queue handed to the transport at one drain
HARD_LIMIT = 32             # a queue over this many output_buffers is dropped at once
NO_QUEUE = ()               # the queue of a connection that has never had to queue


def auth_payload(relay_id, peer_id, challenge):
    """The bytes a client signs to prove it owns ``peer_id``."""
    return f"relayd-auth:{relay_id}:{peer_id}:{challenge}".encode()


def encode(obj):
    return json.dumps(obj).encode() + b"\n"


def _loads(line):
    """``standard_loads(line)``, by msgspec where it accepts the line (it then
    gives the same value).  What it refuses (bad JSON, NaN, numbers out of
    float range, lone surrogates, UTF-8 encoded surrogates, a BOM, deep
    nesting) takes the standard parse, which answers as it always did."""
    try:
        return _fast(line)
    except ValueError:
        return standard_loads(line)


def standard_loads(line):
    """``json.loads(line)`` with finite numbers only (``relayd.finitejson``),
    without guessing the encoding of a line that starts ``{``."""
    if line[:1] == b"{" and line[1:2] != b"\x00":
        # the encoding is not guessed: a line that starts ``{`` is UTF-8
        return finitejson.decode(line.decode("utf-8", "surrogatepass"))
    return finitejson.decode(line.decode(json.detect_encoding(line), "surrogatepass"))


_ACK_HEAD = b'{"status": "ok", "type": "ack", "msg_id": "'
_ACK_DUPLICATE = (b'", "duplicate": false', b'", "duplicate": true')     # by bool


def _socket_side(transport):
    """The transport that writes to the socket (under TLS, the one below it)."""
    if isinstance(transport, TLSMemoryBIOProtocol):
        return transport.transport
    return transport


@implementer(IPushProducer, ISession)
class RelayProtocol(Protocol):
    log = Logger()
    rooms = frozenset()     # until the first join (the router then sets a set): idle sessions stay small
    closed_at = None        # when close() was called

    def __init__(self, service):
        self.service = service
        self.peer_id = None
        self.dialect = None
        self.address = None
        self.authenticated = False
        self.connected_at = 0.0
        self.last_activity = 0.0
        self._splitter = None
        self._challenge = None
        self.acks = False           # the client acks messages (hello "acks": true)
        self.line_started = None    # when the line being received began
        self.stalled_since = None   # when the transport last took bytes it has not drained
        self._paused = False        # the transport holds bytes the kernel has not taken
        self._socket = None         # the socket transport, when it says it drained
        self._direct = None         # its socket, when plain TCP (copies are sent at once)
        self._queue = NO_QUEUE      # then a deque of (bytes, receipts) waiting for the transport to drain
        self._queued = 0
        self._in_transport = []     # directed entries whose bytes the transport holds
        self._congested = False
        self._closing = False
        self.throttled = False      # not read (flow control) until unthrottle()
        self._unhandled = []        # frames read and not handled while throttled

    # --- connection lifecycle -------------------------------------------------

    def connectionMade(self):
        peer = self.transport.getPeer()
        address = (getattr(peer, "host", "?"), getattr(peer, "port", 0))
        # A TCP transport already holds this tuple (the accept() address): share it.
        client = getattr(self.transport, "client", None)
        self.address = client if client == address else address
        self.connected_at = self.last_activity = self.service.clock.seconds()
        self.transport.registerProducer(self, True)
        socket = _socket_side(self.transport)
        if hasattr(socket, "producerPaused") and getattr(socket, "producer", None) is not None:
            self._socket = socket       # it says when it drained
            if socket is self.transport and isinstance(socket, tcp.Connection):
                self._direct = socket.socket
        refusal = self.service.admit(self)
        if refusal is not None:
            code, text, extra = refusal
            self.close(code, text, **extra)
            return
        for option in ("setTcpNoDelay", "setTcpKeepAlive"):
            setter = getattr(self.transport, option, None)
            if setter is not None:
                setter(True)

    def connectionLost(self, reason):
        # nothing more is written: the router may still hold lines for this
        # session until it is detached (they stay unsettled, sent again later)
        self._closing = True
        self._socket = self._direct = None
        self.service.release(self)
        if self.peer_id is not None:
            self.service.router.detach(self)

    # IPushProducer: the socket transport pauses us at every write and
    # resumes us once it has handed everything to the kernel.
    def pauseProducing(self):
        if not self._paused:
            self._paused = True
            self.stalled_since = self.service.clock.seconds()

    def resumeProducing(self):
        self._paused = False
        self.stalled_since = None
        router = self.service.router
        if self._in_transport:
            handed, self._in_transport = self._in_transport, []
            router.handed(self, handed)
        while self._queue and not self._paused and not self._closing:
            self._hand_chunk()
        if self._congested and self._queued <= self.service.output_buffer // 2:
            self._congested = False
            self.service.congestion(self, False)
        if self.peer_id is not None and not self._closing and not self._queue:
            router.resume(self)

    def stopProducing(self):
        pass

    # --- session interface used by the router ---------------------------------

    def writable(self):
        return not (self._paused or self._queue or self._closing)

    def deliver_lines(self, lines, receipts=()):
        """Write ``lines`` after what is queued; ``receipts`` (directed
        entries among them) are settled once their bytes reach the kernel,
        unless the client acks."""
        if self._closing:
            return
        self._out(lines[0] if len(lines) == 1 else b"".join(lines),
                  () if self.acks or not receipts else receipts, now=True)

    def _out(self, data, receipts=(), now=False):
        if self._paused or self._queue:
            if not self._queue:
                self._queue = deque()   # most connections never need one (760 bytes each)
            self._queue.append((data, receipts))
            self._queued += len(data)
            limit = self.service.output_buffer
            if self._queued > limit and not self._congested:
                self._congested = True
                self.service.congestion(self, True)
            if self._queued > limit * HARD_LIMIT:
                self._too_slow()
            return
        if now and self._direct is not None:
            data = self._send_now(data, receipts)
            if not data:
                return
        self._hand(data, receipts)

    def _send_now(self, data, receipts):
        """Send ``data`` on the socket now; returns what the kernel did not
        take.  Only called while the transport is empty (it resumed us, see
        ``resumeProducing``), so the stream keeps its order; an error is left
        for the transport to find."""
        try:
            sent = self._direct.send(data)
        except OSError:
            return data
        self.service.bytes_sent += sent
        if sent < len(data):
            return data[sent:]
        if receipts:
            self.service.router.handed(self, receipts)
        return b""

    def _hand_chunk(self):
        """Give the transport the oldest queued bytes, up to ``WRITE_CHUNK``."""
        parts, receipts, size = [], [], 0
        queue = self._queue
        while queue and size < WRITE_CHUNK:
            data, entries = queue.popleft()
            parts.append(data)
            receipts.extend(entries)
            size += len(data)
        self._queued -= size
        self._hand(b"".join(parts), receipts)

    def _hand(self, data, receipts):
        self._send_bytes(data)
        socket = self._socket
        if socket is not None:
            # Resumed once everything written is in the kernel (under TLS
            # the bytes may reach the socket transport a moment later).
            if not socket.producerPaused:
                socket.producerPaused = True
                socket.producer.pauseProducing()
            self._in_transport.extend(receipts)
        elif receipts:
            self.service.router.handed(self, receipts)

    def _send_bytes(self, data):
        """Write ``data``, counted in ``relayd_tcp_sent_bytes_total``."""
        self.service.bytes_sent += len(data)
        self.transport.write(data)

    def stalled(self):
        """The transport has not drained for ``stall_timeout``."""
        self._too_slow()

    def _too_slow(self):
        self.close("slow_consumer", "your connection could not keep up; messages were dropped",
                   flush=False)

    def _write(self, data):
        """Write ``data`` after the messages the router still holds for us."""
        self.service.router.release(self)
        if not self._closing:
            self._out(data)

    def close(self, code, text, flush=True, **extra):
        """Send an error after what is queued (``flush``; else the queue is
        dropped), then nothing more, and disconnect (once).  Whatever
        directed messages were not settled stay stored for the peer's next
        session."""
        if self._closing:
            return
        if flush:
            self.service.router.release(self)
            if self._closing:           # what was held overflowed the queue
                return
        self._closing = True
        self.closed_at = self.service.clock.seconds()
        self.service.m_errors.labels(code).inc()
        tail = errors.frame(code, text, **extra)
        if flush and self._queue:
            tail = b"".join(data for data, _ in self._queue) + tail
        self._queue = NO_QUEUE
        self._queued = 0
        if self._congested:
            self._congested = False
            self.service.congestion(self, False)
        self._send_bytes(tail)
        # A paused producer would keep the transport open once drained.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def send(self, obj, req=None):
        if self._closing:
            return
        if req is not None:
            obj["req"] = req
        self._write(encode(obj))

    def error(self, code, text, req=None, **extra):
        if self._closing:
            return
        if req is not None:
            extra["req"] = req
        self.service.m_errors.labels(code).inc()
        self._write(errors.frame(code, text, **extra))

    # --- input ------------------------------------------------------------------

    def dataReceived(self, data):
        self.service.bytes_received += len(data)
        if self._closing:
            return
        if self._splitter is None:
            stripped = data.lstrip()
            if not stripped:
                return
            if stripped[:1] == b"{":
                self.dialect = JSON
                self._splitter = LineSplitter(self.service.max_line)
            else:
                self.dialect = LEGACY
                data = self._legacy_register(data)
                if data is None:
                    return
        try:
            frames = self._splitter.feed(data)
        except FrameTooLong:
            self.close("line_too_long", "a line is longer than the limit", limit=self.service.max_line)
            return
        # Only complete lines count as activity; the line clock runs from
        # the start of the line still incomplete.
        if frames:
            self.last_activity = self.service.clock.seconds()
            self.line_started = self.last_activity if self._splitter.pending else None
        elif self.line_started is None and self._splitter.pending:
            self.line_started = self.service.clock.seconds()
        if self._unhandled:
            self._unhandled.extend(frames)
        else:
            self._handle(frames)

    def _handle(self, frames):
        """Handle ``frames`` in order; those after a message sent while
        readers are congested wait for ``unthrottle``."""
        handle = self._json_line if self.dialect == JSON else self._legacy_frame
        for n, frame in enumerate(frames):
            if self._closing:
                break
            if self.throttled:
                self._unhandled = frames[n:]
                break
            handle(frame)
        # What these lines sent goes out now, before it is durable.
        self.service.router.flush()

    def unthrottle(self):
        """Readers caught up: handle what was read meanwhile, read again."""
        self.throttled = False
        frames, self._unhandled = self._unhandled, []
        if frames and not self._closing:
            self._handle(frames)
        if not self.throttled:
            self.transport.resumeProducing()

    # --- seed-000 dialect ----------------------------------------------------------

    def _legacy_register(self, data):
        """Take the peer id from the first chunk; returns what follows it, if anything."""
        head, newline, rest = data.partition(b"\n")
        try:
            peer_id = head.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.close("bad_utf8", "the peer id is not UTF-8")
            return None
        if len(head) >= self.service.max_line:
            self.close("line_too_long", "the peer id is longer than the limit", limit=self.service.max_line)
            return None
        reason = message.valid_peer_id(peer_id)
        if reason is not None:
            self.close("bad_id", reason)
            return None
        if self.service.require_auth:
            self.close("auth_required", "this relay requires clients to prove their id with a key")
            return None
        if self.service.router.ownership.owner(peer_id) is not None:
            self.close("id_owned", "this id is owned by a key; connect with a client that proves it")
            return None
        self._splitter = LegacySplitter(self.service.max_line)
        self._identified(peer_id)
        return rest if newline else None

    def _legacy_frame(self, frame):
        target, obj, code = frame
        if code is not None:
            self.error(code, errors.TEXT[code])
            return
        target = target.strip()
        if target == "RELAY":
            self.error("relay_forbidden", "clients may not send RELAY|| lines; relays use the federation port")
            return
        if not isinstance(obj, dict):
            self.error("bad_json", "the message must be a JSON object")
            return
        body = obj.get("text", "")
        if not isinstance(body, str):
            self.error("bad_request", "text must be a string", field="text")
            return
        if target in ("", message.BROADCAST):
            self._submit(message.BROADCAST, body, None, None, None, legacy=True)
            return
        room = target[1:] if target.startswith("#") else None
        reason = message.valid_peer_id(target) if room is None else message.valid_room(room)
        if reason is not None:
            self.error("bad_request", reason, field="target")
            return
        self._submit(target, body, room, None, None, legacy=True)

    # --- JSON-lines dialect ----------------------------------------------------------

    def _json_line(self, line):
        if not line.strip():
            return
        try:
            request = _loads(line)
        except UnicodeDecodeError:
            self.error("bad_utf8", errors.TEXT["bad_utf8"])
            return
        except (ValueError, RecursionError):        # RecursionError: nested too deeply
            self.error("bad_json", errors.TEXT["bad_json"])
            return
        if not isinstance(request, dict):
            self.error("bad_json", "each line must be a JSON object")
            return
        req = request.get("req")
        kind = request.get("type")
        handler = (self._handlers.get(kind) or self.service.requests.get(kind)
                   if isinstance(kind, str) else None)
        if handler is None:
            self.error("unknown_type", f"unknown request type {kind!r}", req=req)
            return
        if self.peer_id is None and kind not in ("hello", "auth", "ping"):
            self.error("not_identified", "send hello first", req=req)
            return
        handler(self, request, req)

    def _hello(self, request, req):
        if self.peer_id is not None or self._challenge is not None:
            self.error("already_identified", "this connection already sent hello", req=req)
            return
        peer_id = request.get("id")
        reason = message.valid_peer_id(peer_id)
        if reason is not None:
            self.error("bad_id", reason, req=req)
            return
        acks = request.get("acks", False)
        if not isinstance(acks, bool):
            self.error("bad_request", "acks must be true or false", field="acks", req=req)
            return
        self.acks = acks
        key = request.get("key")
        if key is None:
            if self.service.require_auth:
                self.error("auth_required", "this relay requires a key proof", req=req)
            elif self.service.router.ownership.owner(peer_id) is not None:
                self.error("id_owned", "this id is owned by a key; prove it", req=req)
            else:
                self._identified(peer_id, req=req)
            return
        try:
            public = base64.b64decode(key, validate=True)
        except (ValueError, TypeError):
            public = b""
        if len(public) != 32:
            self.error("bad_request", "key must be a base64 32-byte Ed25519 public key", field="key", req=req)
            return
        owner = self.service.router.ownership.owner(peer_id)
        if owner is not None and owner != public:
            self.error("id_owned", "this id is owned by another key", req=req)
            return
        self._challenge = (peer_id, public, os.urandom(32).hex())
        self.send({"status": "ok", "type": "challenge", "challenge": self._challenge[2],
                   "relay": self.service.router.relay_id}, req)

    def _auth(self, request, req):
        if self._challenge is None:
            self.error("bad_request", "auth must follow a hello with a key", req=req)
            return
        peer_id, public, challenge = self._challenge
        self._challenge = None
        try:
            signature = base64.b64decode(request.get("signature") or "", validate=True)
        except (ValueError, TypeError):
            signature = b""
        payload = auth_payload(self.service.router.relay_id, peer_id, challenge)
        if not verify(public, signature, payload):
            self.error("auth_failed", "the signature does not verify", req=req)
            return
        ownership = self.service.router.ownership
        if ownership.owner(peer_id) is None:
            # A new claim is kept for good: it costs one message of the
            # address's rate limit, so the table cannot be flooded.
            wait = self.service.guard.allow(self.address[0])
            if wait is not None:
                self.error("rate_limited", "too many new ids claimed; slow down", req=req,
                           retry_after=round(wait, 3))
                return
        if not ownership.claim(peer_id, public):
            self.error("id_owned", "this id is owned by another key", req=req)
            return
        self.authenticated = True
        self._identified(peer_id, req=req)

    def _identified(self, peer_id, req=None):
        self.peer_id = peer_id
        router = self.service.router
        stored = router.attach(self)
        self.log.info("{dialect} client {peer_id} identified from {ip} ({auth})", dialect=self.dialect,
                      peer_id=peer_id, ip=self.address[0],
                      auth="key proven" if self.authenticated else "no key")
        if self.dialect == JSON:
            welcome = {"status": "ok", "type": "welcome", "id": peer_id, "relay": router.relay_id,
                       "authenticated": self.authenticated, "pending": len(stored)}
            if self.acks:
                welcome["acks"] = True
            self.send(welcome, req)
        router.deliver_stored(self, stored)

    def _send_request(self, request, req):
        body = request.get("body", request.get("text"))
        if not isinstance(body, str):
            self.error("bad_request", "body must be a string", field="body", req=req)
            return
        nonce = request.get("nonce")
        if nonce is not None and not (isinstance(nonce, str) and 0 < len(nonce) <= message.MAX_NONCE):
            self.error("bad_request", "nonce must be a string of 1 to 128 characters", field="nonce", req=req)
            return
        to, room = request.get("to"), request.get("room")
        if room is not None:
            reason = message.valid_room(room)
            if reason is not None or to is not None:
                self.error("bad_request", reason or "give either to or room", field="room", req=req)
                return
            to = message.room_target(room)
        elif to != message.BROADCAST:
            reason = message.valid_peer_id(to)
            if reason is not None:
                self.error("bad_request", reason, field="to", req=req)
                return
        for check in self.service.send_checks:
            refusal = check(self.peer_id, to, body)
            if refusal is not None:
                self.error(*refusal, req=req)
                return
        self._submit(to, body, room, nonce, req)

    def _submit(self, to, body, room, nonce, req, legacy=False):
        wait = self.service.guard.allow(self.address[0])
        if wait is not None:
            self.error("rate_limited", "too many messages; slow down", req=req,
                       retry_after=round(wait, 3))
            return
        if self.service.congested:
            self.service.throttle(self)
        self.service.router.submit(self, to, body, room=room, nonce=nonce,
                                   done=lambda result: self._ack(result, nonce, req, legacy))

    def _ack(self, result, nonce, req, legacy=False):
        """``send`` of ``{"status", "type", "msg_id", "duplicate"[, "nonce"][, "req"]}``,
        put together by hand: this is one of the hot path's three encodings
        (or the seed's ack, or the error if the journal refused it)."""
        if isinstance(result, Failure):
            self.error("journal_unavailable", "the message could not be stored; retry later", req=req)
            return
        if self._closing:
            return
        if legacy:
            self.service.router.hold(self, b'{"status": "ok", "msg_id": "' + result[0].encode() + b'"}\n')
            return
        msg_id, duplicate = result
        ack = _ACK_HEAD + msg_id.encode() + _ACK_DUPLICATE[duplicate]
        if nonce is not None:
            ack += b', "nonce": ' + encode_basestring_ascii(nonce).encode()
        if req is not None:
            ack += b', "req": ' + json.dumps(req).encode()
        # with the copies the router writes at the end of the journal batch
        self.service.router.hold(self, ack + b"}\n")

    def _ack_request(self, request, req):
        """``{"type": "ack", "ids": [msg_id, ...]}``: messages the client
        has; no answer unless it is malformed."""
        ids = request.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            self.error("bad_request", "ids must be a list of message ids", field="ids", req=req)
            return
        self.service.router.acknowledged(self, ids)

    def _join(self, request, req):
        room = request.get("room")
        reason = message.valid_room(room)
        if reason is not None:
            self.error("bad_request", reason, field="room", req=req)
            return
        persist = request.get("persist", False)
        if not isinstance(persist, bool):
            self.error("bad_request", "persist must be true or false", field="persist", req=req)
            return
        try:
            members = self.service.router.join(self, room, persist)
        except MembershipFull as e:
            self.error(e.code, str(e), req=req)
            return
        joined = {"status": "ok", "type": "joined", "room": room, "members": members[:MAX_LISTED]}
        if persist:
            joined["persist"] = True
        self.send(joined, req)

    def _leave(self, request, req):
        room = request.get("room")
        if not isinstance(room, str):
            self.error("bad_request", "room must be a string", field="room", req=req)
            return
        self.service.router.leave(self, room)
        self.send({"status": "ok", "type": "left", "room": room}, req)

    def _peers(self, request, req):
        peers = sorted(self.service.router.sessions)
        self.send({"status": "ok", "type": "peers", "peers": peers[:MAX_LISTED],
                   "truncated": len(peers) > MAX_LISTED}, req)

    def _rooms(self, request, req):
        rooms = self.service.router.members
        listed = dict(sorted((room, len(m)) for room, m in rooms.items())[:MAX_LISTED])
        self.send({"status": "ok", "type": "rooms", "rooms": listed,
                   "truncated": len(rooms) > MAX_LISTED}, req)

    def _ping(self, request, req):
        self.send({"status": "ok", "type": "pong", "time": self.service.clock.seconds()}, req)

    def _history(self, request, req):
        limit = request.get("limit", 50)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            self.error("bad_request", "limit must be a positive whole number", field="limit", req=req)
            return
        limit = min(limit, self.service.history_limit)
        room, with_peer = request.get("room"), request.get("with")
        if room is not None and not isinstance(room, str):
            self.error("bad_request", "room must be a string", field="room", req=req)
            return
        if room is not None and room not in self.rooms:
            self.error("not_in_room", "join the room to read its history", req=req)
            return
        if with_peer is not None and not isinstance(with_peer, str):
            self.error("bad_request", "with must be a peer id", field="with", req=req)
            return
        entries = self.service.router.visible_history(self.peer_id, room, with_peer, limit)
        self.send({"status": "ok", "type": "history", "messages": entries}, req)

    _handlers = {
        "hello": _hello, "auth": _auth, "send": _send_request, "join": _join,
        "leave": _leave, "peers": _peers, "rooms": _rooms, "ping": _ping,
        "history": _history, "ack": _ack_request,
    }
