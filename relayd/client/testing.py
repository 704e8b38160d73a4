"""A scripted in-memory relay for testing clients without the daemon.

``FakeRelay`` is a protocol factory speaking the JSON-lines protocol of
docs/PROTOCOL.md section 1 closely enough for client tests: hello with or
without a key (challenge, Ed25519 check), send with nonce dedup, delivery to
a peer / a room / everyone, join, leave, peers, rooms, history, ping, ack
(the ids acked are kept in ``acked``).  Tests
steer it with a few attributes (``refuse``, ``full``, ``swallow_acks``,
``send_errors``, ``silent``, ``name_in_challenge``) and read what it saw (``requests``, ``stored``).
``MemoryEndpoint`` connects clients to it in memory (iosim).
"""
import base64
import hashlib
import json
import secrets

from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from twisted.test import iosim
from zope.interface import implementer

from relayd.client.protocol import auth_payload
from relayd.identity import verify


class FakeRelay(Factory):
    def __init__(self, relay_id="relay1", clock=None):
        self.relay_id = relay_id
        self.acked = []
        self.clock = clock
        self.connections = set()    # every open connection
        self.sessions = {}          # peer id -> protocol
        self.rooms = {}             # room -> set of peer ids
        self.owners = {}            # peer id -> raw public key
        self.by_nonce = {}          # (sender, nonce) -> msg_id
        self.stored = []            # accepted messages, in order
        self.requests = []          # every request object received
        self.refuse = None          # an error code to answer every hello with
        self.full = False           # close new connections with too_many_connections
        self.swallow_acks = 0       # store (and deliver) this many sends without acking
        self.send_errors = []       # error codes to answer the next sends with
        self.answer_pings = True
        self.silent = False         # read everything, answer nothing (a frozen relay)
        self.name_in_challenge = True

    def buildProtocol(self, addr):
        proto = FakeRelayProtocol()
        proto.relay = self
        return proto

    def now(self):
        return self.clock.seconds() if self.clock is not None else 1734200000.0

    def sent(self, kind):
        return [r for r in self.requests if r.get("type") == kind]


class FakeRelayProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    relay = None

    def __init__(self):
        self.peer_id = None
        self.requested_id = None
        self.pending_key = None
        self.challenge = None

    def connectionMade(self):
        self.relay.connections.add(self)
        if self.relay.full:
            self.error(None, "too_many_connections")
            self.transport.loseConnection()

    def reply(self, request, **fields):
        if "req" in request:
            fields["req"] = request["req"]
        self.push(dict({"status": "ok"}, **fields))

    def error(self, request, code, **extra):
        fields = {"status": "error", "error": code, "message": code.replace("_", " ")}
        if request is not None and "req" in request:
            fields["req"] = request["req"]
        self.push(dict(fields, **extra))

    def push(self, obj):
        self.sendLine(json.dumps(obj).encode())

    def lineReceived(self, line):
        request = json.loads(line)
        self.relay.requests.append(request)
        if self.relay.silent:
            return
        kind = request.get("type")
        if kind not in ("hello", "auth") and self.peer_id is None:
            return self.error(request, "not_identified")
        getattr(self, "do_" + kind, self.do_unknown)(request)

    def do_ack(self, request):
        self.relay.acked.extend(request["ids"])

    def do_unknown(self, request):
        self.error(request, "unknown_type")

    def do_hello(self, request):
        relay, peer = self.relay, request["id"]
        if relay.refuse:
            return self.error(request, relay.refuse)
        key = request.get("key")
        if key is not None:
            self.pending_key, self.challenge = base64.b64decode(key), secrets.token_hex(32)
            self.requested_id = peer
            extra = {"relay": relay.relay_id} if relay.name_in_challenge else {}
            return self.reply(request, type="challenge", challenge=self.challenge, **extra)
        if peer in relay.owners:
            return self.error(request, "id_owned")
        self.identified(request, peer, False)

    def do_auth(self, request):
        peer = self.requested_id
        signature = base64.b64decode(request["signature"])
        data = auth_payload(self.relay.relay_id, peer, self.challenge)
        owner = self.relay.owners.get(peer, self.pending_key)
        if owner != self.pending_key or not verify(self.pending_key, signature, data):
            return self.error(request, "auth_failed")
        self.relay.owners[peer] = self.pending_key
        self.identified(request, peer, True)

    def identified(self, request, peer, authenticated):
        old = self.relay.sessions.get(peer)
        if old is not None:
            old.error(None, "session_replaced")
            old.transport.loseConnection()
        self.peer_id = peer
        self.relay.sessions[peer] = self
        self.reply(request, type="welcome", id=peer, relay=self.relay.relay_id,
                   authenticated=authenticated, pending=0)

    def do_send(self, request):
        relay = self.relay
        if relay.send_errors:
            return self.error(request, relay.send_errors.pop(0), retry_after=2.0)
        room, to = request.get("room"), request.get("to")
        nonce = request.get("nonce")
        known = relay.by_nonce.get((self.peer_id, nonce)) if nonce else None
        if known is not None:
            return self.reply(request, type="ack", msg_id=known, nonce=nonce, duplicate=True)
        entry = {"from": self.peer_id, "to": "#" + room if room else to,
                 "body": request.get("body", request.get("text"))}
        if room:
            entry["room"] = room
        entry["timestamp"] = relay.now()
        entry["seen_by"] = [relay.relay_id]
        entry["msg_id"] = hashlib.sha256(
            json.dumps(dict(entry, nonce=nonce), sort_keys=True).encode()).hexdigest()
        if nonce:
            relay.by_nonce[(self.peer_id, nonce)] = entry["msg_id"]
        relay.stored.append(entry)
        if room:
            targets = relay.rooms.get(room, set())
        elif to == "*":
            targets = set(relay.sessions)
        else:
            targets = {to}
        for peer in sorted(targets - {self.peer_id}):
            if peer in relay.sessions:
                relay.sessions[peer].push(dict({"type": "message"}, **entry))
        if relay.swallow_acks:
            relay.swallow_acks -= 1
            return
        self.reply(request, type="ack", msg_id=entry["msg_id"], nonce=nonce, duplicate=False)

    def do_join(self, request):
        members = self.relay.rooms.setdefault(request["room"], set())
        members.add(self.peer_id)
        self.reply(request, type="joined", room=request["room"], members=sorted(members))

    def do_leave(self, request):
        self.relay.rooms.get(request["room"], set()).discard(self.peer_id)
        self.reply(request, type="left", room=request["room"])

    def do_peers(self, request):
        self.reply(request, type="peers", peers=sorted(self.relay.sessions))

    def do_rooms(self, request):
        self.reply(request, type="rooms",
                   rooms={r: len(m) for r, m in self.relay.rooms.items() if m})

    def do_ping(self, request):
        if self.relay.answer_pings:
            self.reply(request, type="pong", time=self.relay.now())

    def do_history(self, request):
        if "room" in request:
            messages = [m for m in self.relay.stored if m.get("room") == request["room"]]
        else:
            pair = {self.peer_id, request["with"]}
            messages = [m for m in self.relay.stored if {m["from"], m["to"]} == pair]
        self.reply(request, type="history", messages=messages[-request.get("limit", 50):])

    def connectionLost(self, reason):
        self.relay.connections.discard(self)
        if self.relay.sessions.get(self.peer_id) is self:
            del self.relay.sessions[self.peer_id]


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """Connects to ``relay`` over iosim; ``down = True`` refuses connections.

    ``flush()`` moves the bytes of every connection until all are quiet.
    """

    def __init__(self, relay):
        self.relay = relay
        self.pumps = []
        self.down = False

    def connect(self, factory):
        if self.down:
            return fail(ConnectionRefusedError())
        server = self.relay.buildProtocol(None)
        client = factory.buildProtocol(None)
        self.pumps.append(iosim.connect(server, iosim.makeFakeServer(server),
                                        client, iosim.makeFakeClient(client), greet=False))
        return succeed(client)

    def flush(self):
        for _ in range(20):
            moved = [pump.pump() for pump in self.pumps]
            if not any(moved):
                break

    def drop(self):
        """The relay's side closes every connection (a crash, a restart)."""
        for pump in self.pumps:
            pump.serverIO.loseConnection()
        self.flush()
        self.pumps = []
