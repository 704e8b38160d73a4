"""The TCP relay protocol over StringTransport: both dialects, errors, limits."""
import base64
import json
from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from zope.interface import implementer

from relayd import config
from relayd.core.interfaces import IDurableEventSubscriber
from relayd.tcp.protocol import auth_payload
from relayd.tcp.service import CLOSE_GRACE, TcpRelayService
from tests.fakes import make_guard, make_router


def make_service(ini="", reactor=None):
    reactor = reactor or MemoryReactorClock()
    reactor.advance(1000)
    settings = config.parse("[tcp]\nlisten = tcp:0:interface=127.0.0.1\n" + ini)
    router = make_router(reactor)
    guard = make_guard(reactor, settings.ratelimit.messages, settings.ratelimit.per_seconds,
                       settings.ratelimit.ban_after, settings.ratelimit.ban_window,
                       settings.ratelimit.ban_duration)
    daemon = SimpleNamespace(reactor=reactor, settings=settings, registry=None,
                             on_reload=lambda hook: None)
    return TcpRelayService(daemon, settings.tcp, router, guard)


class Client:
    """One fake connection to the service."""

    def __init__(self, service, ip="127.0.0.1", port=40000):
        self.protocol = service.factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", ip, port))
        self.protocol.makeConnection(self.transport)

    def send(self, data):
        self.protocol.dataReceived(data)

    def request(self, **obj):
        self.send(json.dumps(obj).encode() + b"\n")

    def frames(self):
        data = self.transport.value()
        self.transport.clear()
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    @property
    def closed(self):
        return self.transport.disconnecting


def hello(service, peer_id, **kw):
    client = Client(service, **kw)
    client.request(type="hello", id=peer_id)
    client.frames()
    return client


class JsonDialectTests(unittest.TestCase):
    def setUp(self):
        self.service = make_service()

    def test_hello_welcome(self):
        client = Client(self.service)
        client.request(type="hello", id="alice", req=1)
        [welcome] = client.frames()
        self.assertEqual(welcome, {"status": "ok", "type": "welcome", "id": "alice", "relay": "relay1",
                                   "authenticated": False, "pending": 0, "req": 1})

    def test_send_ack_and_delivery(self):
        alice, bob = hello(self.service, "alice"), hello(self.service, "bob", port=2)
        alice.request(type="send", to="bob", body="hi", nonce="n1", req="r")
        [ack] = alice.frames()
        self.assertEqual((ack["status"], ack["type"], ack["nonce"], ack["req"], ack["duplicate"]),
                         ("ok", "ack", "n1", "r", False))
        [msg] = bob.frames()
        self.assertEqual((msg["type"], msg["from"], msg["to"], msg["body"], msg["msg_id"]),
                         ("message", "alice", "bob", "hi", ack["msg_id"]))

    def test_rooms_peers_history_ping(self):
        alice, bob = hello(self.service, "alice"), hello(self.service, "bob", port=2)
        alice.request(type="join", room="general")
        self.assertEqual(alice.frames()[0]["members"], ["alice"])
        bob.request(type="join", room="general")
        bob.frames()
        alice.request(type="send", room="general", body="yo")
        alice.frames()
        self.assertEqual(bob.frames()[0]["room"], "general")
        bob.request(type="rooms")
        self.assertEqual(bob.frames()[0]["rooms"], {"general": 2})
        bob.request(type="peers")
        self.assertEqual(bob.frames()[0]["peers"], ["alice", "bob"])
        bob.request(type="history", room="general")
        self.assertEqual([m["body"] for m in bob.frames()[0]["messages"]], ["yo"])
        bob.request(type="leave", room="general")
        bob.frames()
        bob.request(type="history", room="general")
        self.assertEqual(bob.frames()[0]["error"], "not_in_room")
        bob.request(type="ping")
        self.assertEqual(bob.frames()[0]["type"], "pong")

    def test_a_persistent_join_keeps_room_messages_for_later(self):
        alice, bob = hello(self.service, "alice"), hello(self.service, "bob", port=2)
        bob.request(type="join", room="general", persist=True, req=1)
        self.assertEqual(bob.frames(), [{"status": "ok", "type": "joined", "room": "general",
                                         "members": ["bob"], "persist": True, "req": 1}])
        bob.protocol.connectionLost(None)
        alice.request(type="send", room="general", body="kept")
        [ack] = alice.frames()
        bob = Client(self.service, port=3)
        bob.request(type="hello", id="bob")
        welcome, msg = bob.frames()
        self.assertEqual((welcome["pending"], msg["room"], msg["body"], msg["msg_id"]),
                         (1, "general", "kept", ack["msg_id"]))
        bob.request(type="rooms")
        self.assertEqual(bob.frames()[0]["rooms"], {"general": 1}, "back in the room")

    def test_persistent_join_errors(self):
        self.service.router.memberships.max_rooms_per_peer = 1
        bob = hello(self.service, "bob")
        bob.request(type="join", room="a", persist="yes")
        bob.request(type="join", room="a", persist=True)
        bob.request(type="join", room="b", persist=True)
        bob.request(type="join", room="b")
        self.assertEqual([f.get("error", f.get("type")) for f in bob.frames()],
                         ["bad_request", "joined", "too_many_rooms", "joined"])

    def test_errors_keep_the_connection(self):
        client = Client(self.service)
        client.send(b"{not json\n")
        client.request(type="send", to="bob", body="x")
        client.request(type="hello", id="a||b")
        client.send(b'{"type": "hello", "id": "\xff"}\n')
        client.request(type="fly")
        client.request(type="hello", id="alice")
        client.request(type="hello", id="alice")
        client.request(type="send", to="bob", body=5)
        client.request(type="send", to="bob", room="r", body="x")
        client.request(type="history", limit=-1)
        client.request(type="history", room={"a": 1})
        client.request(type="history", room=["general"])
        codes = [f.get("error", f.get("type")) for f in client.frames()]
        self.assertEqual(codes, ["bad_json", "not_identified", "bad_id", "bad_utf8", "unknown_type",
                                 "welcome", "already_identified", "bad_request", "bad_request",
                                 "bad_request", "bad_request", "bad_request"])
        self.assertFalse(client.closed)

    def test_deeply_nested_json_is_bad_json(self):
        client = hello(self.service, "alice")
        client.send(b'{"type": "ping", "x": ' + b"[" * 5000 + b"\n")
        client.request(type="ping")
        self.assertEqual([f.get("error", f.get("type")) for f in client.frames()], ["bad_json", "pong"])

    def test_line_too_long_closes(self):
        service = make_service("max_line = 1000\n")
        client = hello(service, "alice")
        client.send(b'{"type": "send", "to": "bob", "body": "' + b"x" * 2000)
        [error] = client.frames()
        self.assertEqual((error["error"], error["limit"]), ("line_too_long", 1000))
        self.assertTrue(client.closed)

    def test_rate_limit_with_retry_after_then_ban(self):
        alice = hello(self.service, "alice")
        for i in range(10):
            alice.request(type="send", to="*", body=str(i))
        self.assertEqual({f["type"] for f in alice.frames()}, {"ack"})
        alice.request(type="send", to="*", body="too many")
        [error] = alice.frames()
        self.assertEqual(error["error"], "rate_limited")
        self.assertAlmostEqual(error["retry_after"], 1.0, places=2)
        for i in range(5):      # ban_after = 5 more before that retry_after: banned
            alice.request(type="send", to="*", body="more")
        frames = alice.frames()
        self.assertEqual([f["error"] for f in frames], ["rate_limited"] * 4 + ["banned"])
        self.assertTrue(alice.closed)
        again = Client(self.service)
        self.assertEqual(again.frames()[0]["error"], "banned")
        self.assertTrue(again.closed)

    def test_same_id_reconnect_replaces(self):
        old = hello(self.service, "bob")
        new = hello(self.service, "bob", port=2)
        self.assertEqual(old.frames()[0]["error"], "session_replaced")
        self.assertTrue(old.closed)
        old.protocol.connectionLost(None)
        self.assertIs(self.service.router.sessions["bob"], new.protocol)

    def test_store_and_forward_counts_pending(self):
        alice = hello(self.service, "alice")
        alice.request(type="send", to="dave", body="one")
        alice.request(type="send", to="dave", body="two")
        dave = Client(self.service, port=3)
        dave.request(type="hello", id="dave")
        frames = dave.frames()
        self.assertEqual(frames[0]["pending"], 2)
        self.assertEqual([f["body"] for f in frames[1:]], ["one", "two"])

    def test_journal_failure_is_reported(self):
        alice = hello(self.service, "alice")
        self.service.router.journal.fail = True
        alice.request(type="send", to="*", body="x")
        self.assertEqual(alice.frames()[0]["error"], "journal_unavailable")


class KeyProofTests(unittest.TestCase):
    def setUp(self):
        self.service = make_service()
        self.key = Ed25519PrivateKey.generate()
        self.public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def prove(self, client, peer_id, key=None):
        key = key or self.key
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        client.request(type="hello", id=peer_id, key=base64.b64encode(public).decode())
        answer = client.frames()[0]
        if answer["status"] == "error":
            return answer
        challenge = answer["challenge"]
        self.assertEqual(answer["relay"], "relay1")
        signature = key.sign(auth_payload("relay1", peer_id, challenge))
        client.request(type="auth", signature=base64.b64encode(signature).decode())
        return client.frames()[0]

    def test_proof_owns_the_id(self):
        welcome = self.prove(Client(self.service), "alice")
        self.assertEqual((welcome["type"], welcome["authenticated"]), ("welcome", True))
        impostor = Client(self.service, port=2)
        impostor.request(type="hello", id="alice")
        self.assertEqual(impostor.frames()[0]["error"], "id_owned")
        other = self.prove(Client(self.service, port=3), "alice", Ed25519PrivateKey.generate())
        self.assertEqual(other["error"], "id_owned")
        legacy = Client(self.service, port=4)
        legacy.send(b"alice")
        self.assertEqual(legacy.frames()[0]["error"], "id_owned")
        self.assertEqual(self.prove(Client(self.service, port=5), "alice")["type"], "welcome")

    def test_new_claims_count_against_the_rate_limit(self):
        for i in range(10):
            self.assertEqual(self.prove(Client(self.service, port=10 + i), f"id{i}")["type"], "welcome")
        refused = self.prove(Client(self.service, port=30), "one-too-many")
        self.assertEqual(refused["error"], "rate_limited")
        self.assertIsNone(self.service.router.ownership.owner("one-too-many"))
        self.assertEqual(self.prove(Client(self.service, port=31), "id3")["type"], "welcome",
                         "proving an id already owned claims nothing new")

    def test_bad_signature(self):
        client = Client(self.service)
        client.request(type="hello", id="alice", key=base64.b64encode(self.public).decode())
        client.frames()
        client.request(type="auth", signature=base64.b64encode(b"x" * 64).decode())
        self.assertEqual(client.frames()[0]["error"], "auth_failed")
        self.assertNotIn("alice", self.service.router.sessions)

    def test_require_auth(self):
        service = make_service("require_auth = yes\n")
        client = Client(service)
        client.request(type="hello", id="alice")
        self.assertEqual(client.frames()[0]["error"], "auth_required")
        legacy = Client(service, port=2)
        legacy.send(b"bob")
        self.assertEqual(legacy.frames()[0]["error"], "auth_required")


class LegacyDialectTests(unittest.TestCase):
    def setUp(self):
        self.service = make_service()

    def test_seed_client_unchanged(self):
        bob = hello(self.service, "bob", port=2)
        alice = Client(self.service)
        alice.send(b"alice")
        self.assertEqual(alice.transport.value(), b"", "the seed sends nothing on registration")
        alice.send(b'bob||{"from": "alice", "text": "hi"}')
        raw = alice.transport.value()
        self.assertRegex(raw, rb'^\{"status": "ok", "msg_id": "[0-9a-f]{64}"\}\n$')
        [msg] = bob.frames()
        self.assertEqual((msg["from"], msg["to"], msg["body"]), ("alice", "bob", "hi"))
        for key in ("timestamp", "seen_by", "msg_id"):
            self.assertIn(key, msg)

    def test_coalesced_registration_and_messages(self):
        carol = hello(self.service, "carol", port=3)
        alice = Client(self.service)
        alice.send(b'alice\n*||{"text": "a"}*||{"text": "b"}\n*||{"te')
        alice.send(b'xt": "c"}')
        self.assertEqual([m["body"] for m in carol.frames()], ["a", "b", "c"])
        self.assertEqual(len(alice.frames()), 3)

    def test_targets_a_room_a_peer_or_everyone_and_refuses_bad_ones(self):
        bob = hello(self.service, "bob", port=2)
        bob.request(type="join", room="general")
        bob.frames()
        alice = Client(self.service)
        alice.send(b"alice")
        alice.send(b'#general||{"text": "room"}\nbob||{"text": "direct"}\n||{"text": "all"}\n')
        self.assertEqual([(m["to"], m.get("room"), m["body"]) for m in bob.frames()],
                         [("#general", "general", "room"), ("bob", None, "direct"),
                          ("*", None, "all")])
        self.assertEqual([f["status"] for f in alice.frames()], ["ok"] * 3)
        alice.send('#bad\u202eroom||{"text": "x"}\nbad\u202epeer||{"text": "x"}\n'.encode())
        self.assertEqual([(f["error"], f.get("field")) for f in alice.frames()],
                         [("bad_request", "target")] * 2)
        self.assertEqual(bob.frames(), [])

    def test_relay_lines_refused(self):
        alice = Client(self.service)
        alice.send(b"alice")
        alice.send(b'RELAY||{"msg_id": "x", "from": "mallory", "to": "*", "body": "spoof"}\n')
        self.assertEqual(alice.frames()[0]["error"], "relay_forbidden")

    def test_malformed_gets_json_error(self):
        alice = Client(self.service)
        alice.send(b"alice")
        alice.send(b"bob||hello\n")
        self.assertEqual(alice.frames()[0]["error"], "bad_json")
        self.assertFalse(alice.closed)

    def test_deeply_nested_json_is_bad_json(self):
        alice = Client(self.service)
        alice.send(b"alice")
        alice.send(b'bob||{"text": ' + b"[" * 5000 + b"\n")
        self.assertEqual([f["error"] for f in alice.frames()], ["bad_json"])
        self.assertFalse(alice.closed)


class ConnectionLimitTests(unittest.TestCase):
    def test_reload_keeps_the_bound_listen_address(self):
        service = make_service("max_connections = 5\n")
        service.configure(config.parse("[tcp]\nlisten = tcp:1:interface=127.0.0.1\n"
                                       "max_connections = 7\n").tcp)
        self.assertEqual((service.stats()["listen"], service.max_connections),
                         ("tcp:0:interface=127.0.0.1", 7))

    def test_per_ip_and_total(self):
        service = make_service("max_connections_per_ip = 2\nmax_connections = 3\n")
        a, _ = Client(service), Client(service, port=2)
        c = Client(service, port=3)
        self.assertEqual(c.frames()[0]["error"], "too_many_connections")
        d = Client(service, ip="10.0.0.2")
        self.assertFalse(d.closed)
        e = Client(service, ip="10.0.0.3")
        self.assertEqual(e.frames()[0]["error"], "too_many_connections")
        a.protocol.connectionLost(None)
        self.assertFalse(Client(service, ip="10.0.0.3").closed)

    def test_idle_and_handshake_timeouts(self):
        reactor = MemoryReactorClock()
        service = make_service("idle_timeout = 60\nhandshake_timeout = 10\n", reactor)
        service.startService()
        self.addCleanup(service.stopService)
        silent = Client(service)
        chatty = hello(service, "alice", port=2)
        legacy = Client(service, port=3)
        legacy.send(b"bob")
        reactor.advance(12)
        self.assertEqual(silent.frames()[0]["error"], "idle_timeout")
        self.assertFalse(chatty.closed)
        reactor.advance(30)
        chatty.request(type="ping")
        reactor.advance(40)
        self.assertFalse(chatty.closed)
        reactor.advance(30)
        self.assertTrue(chatty.closed)
        self.assertFalse(legacy.closed, "seed clients cannot ping; TCP keepalive covers them")

    def test_a_full_reader_throttles_senders_and_is_dropped_only_when_stalled(self):
        reactor = MemoryReactorClock()
        service = make_service("output_buffer = 2000\nstall_timeout = 20\n", reactor)
        service.startService()
        self.addCleanup(service.stopService)
        alice, bob = hello(service, "alice"), hello(service, "bob", port=2)
        carol = hello(service, "carol", port=3)
        bob.protocol.pauseProducing()           # bob's transport holds bytes
        for i in range(10):
            alice.request(type="send", to="bob", body="x" * 300)
        self.assertFalse(bob.closed, "a full reader is not dropped")
        self.assertEqual(service.congested, {bob.protocol})
        self.assertEqual(alice.transport.producerState, "paused", "the sender is not read")
        self.assertEqual(carol.transport.producerState, "producing", "who does not send is read")
        alice.frames()
        alice.send(b"".join(json.dumps({"type": "send", "to": "bob", "body": str(i)}).encode()
                            + b"\n" for i in range(3)))        # already read when paused
        self.assertEqual(len(alice.frames()), 0, "not handled while the readers are full")
        reactor.advance(15)
        bob.protocol.resumeProducing()          # progress: the queue goes out, then the 3
        self.assertEqual([f["body"] for f in bob.frames() if f.get("type") == "message"][-4:],
                         ["x" * 300, "0", "1", "2"])
        self.assertEqual([f["type"] for f in alice.frames()], ["ack"] * 7,
                         "the 4 sends after the congestion and the 3, handled once bob caught up")
        self.assertEqual((service.congested, alice.transport.producerState), (set(), "producing"))
        bob.protocol.pauseProducing()
        reactor.advance(15)
        self.assertFalse(bob.closed, "15 s without progress is within stall_timeout")
        reactor.advance(10)
        self.assertTrue(bob.closed)
        self.assertIn(b"slow_consumer", bob.transport.value())
        self.assertFalse(alice.closed)

    def test_a_closed_connection_that_does_not_drain_is_cut(self):
        reactor = MemoryReactorClock()
        service = make_service("stall_timeout = 5\n", reactor)
        service.startService()
        self.addCleanup(service.stopService)
        alice, bob = hello(service, "alice"), hello(service, "bob", port=2)
        bob.protocol.pauseProducing()
        alice.request(type="send", to="bob", body="x" * 300)
        reactor.advance(6)
        self.assertTrue(bob.closed)
        reactor.advance(CLOSE_GRACE - 1)
        self.assertFalse(bob.transport.disconnected, "a closed connection may still drain")
        reactor.advance(5)
        self.assertTrue(bob.transport.disconnected, "aborted")
        self.assertFalse(alice.transport.disconnecting)

    def test_a_queue_past_its_hard_limit_is_dropped_at_once(self):
        service = make_service("output_buffer = 2000\n")
        bob = hello(service, "bob")
        bob.protocol.pauseProducing()
        for i in range(1000):                   # asks, and does not read the answers
            bob.request(type="peers")
        self.assertTrue(bob.closed)
        self.assertTrue(bob.transport.value().endswith(
            b'"error": "slow_consumer", "message": '
            b'"your connection could not keep up; messages were dropped"}\n'))

    def test_a_line_trickled_byte_by_byte_is_cut_at_the_line_timeout(self):
        reactor = MemoryReactorClock()
        service = make_service("line_timeout = 30\nidle_timeout = 300\n", reactor)
        service.startService()
        self.addCleanup(service.stopService)
        slow = hello(service, "slow")
        busy = hello(service, "busy", port=2)
        for byte in b'{"type": "ping", "pad": "' + b"x" * 40:
            slow.send(bytes([byte]))
            busy.send(b'{"type": "pi')
            busy.send(b'ng"}\n{"type"')        # lines complete, a new one starts
            busy.send(b': "ping"}\n')
            reactor.advance(2)
            if slow.closed:
                break
        self.assertTrue(slow.closed)
        self.assertEqual(slow.frames()[-1]["error"], "line_timeout")
        self.assertFalse(busy.closed)

    def test_the_closing_error_is_the_last_frame(self):
        service = make_service()
        alice, bob = hello(service, "alice"), hello(service, "bob", port=2)
        service.router.kick("bob")
        alice.request(type="send", to="*", body="after the kick")
        self.assertEqual([f.get("error") for f in bob.frames()], ["kicked"])

    def test_what_is_held_goes_out_before_the_closing_error(self):
        from tests.test_bench_hotpath import BatchJournal
        service = make_service()
        service.router.journal = journal = BatchJournal()
        alice, bob = hello(service, "alice"), hello(service, "bob", port=2)


        @implementer(IDurableEventSubscriber)
        class Kick:
            def durable(self, event):
                service.router.kick("bob")

            def delivered(self, entry, peer, timestamp):
                pass
        service.router.subscribe(Kick())
        for body in ("held", "after the kick"):        # held until durable
            service.router.submit(alice.protocol, "*", body)
        journal.commit()                                # bob is kicked at the first
        self.assertEqual([f.get("body", f.get("error")) for f in bob.frames()],
                         ["held", "after the kick", "kicked"])

    def test_answers_to_a_reader_queue_behind_its_messages(self):
        service = make_service("output_buffer = 2000\n")
        bob = hello(service, "bob")
        bob.protocol.pauseProducing()
        for i in range(200):
            bob.request(type="peers", req=i)
        self.assertFalse(bob.closed)
        self.assertEqual(bob.transport.value(), b"")
        self.assertEqual(service.congested, {bob.protocol})
        while bob.protocol._queue:
            bob.protocol.resumeProducing()
        self.assertEqual([f["req"] for f in bob.frames()], list(range(200)))
        self.assertEqual(service.congested, set())


class AckTests(unittest.TestCase):
    def test_acked_messages_leave_the_mailbox_and_unacked_come_back(self):
        service = make_service()
        alice = hello(service, "alice")
        bob = Client(service, port=2)
        bob.request(type="hello", id="bob", acks=True)
        self.assertTrue(bob.frames()[0]["acks"])
        for text in ("one", "two"):
            alice.request(type="send", to="bob", body=text)
        ids = [f["msg_id"] for f in bob.frames()]
        bob.request(type="ack", ids=ids[:1])
        self.assertEqual(bob.frames(), [], "an ack gets no answer")
        bob.protocol.connectionLost(None)
        again = Client(service, port=3)
        again.request(type="hello", id="bob", acks=True)
        frames = again.frames()
        self.assertEqual(frames[0]["pending"], 1)
        self.assertEqual([f["body"] for f in frames[1:]], ["two"])
        again.request(type="ack", ids=ids[1:])
        self.assertNotIn("bob", service.router.mailboxes)
        receipts = [json.loads(l)["receipt"] for l in service.router.journal.lines if b'"receipt"' in l]
        self.assertEqual(receipts, ids)

    def test_malformed_acks(self):
        service = make_service()
        bob = Client(service)
        bob.request(type="hello", id="bob", acks="yes")
        self.assertEqual(bob.frames()[0]["field"], "acks")
        bob.request(type="hello", id="bob", acks=True)
        bob.frames()
        bob.request(type="ack", ids="abc")
        self.assertEqual(bob.frames()[0]["field"], "ids")

    def test_without_acks_a_message_is_settled_only_once_written_out(self):
        service = make_service()
        alice, bob = hello(service, "alice"), hello(service, "bob", port=2)
        bob.protocol.pauseProducing()           # its transport has not drained
        alice.request(type="send", to="bob", body="in flight")
        self.assertEqual(service.router.mailboxes.count("bob"), 1)
        bob.protocol.resumeProducing()
        self.assertEqual(bob.frames()[0]["body"], "in flight")
        self.assertNotIn("bob", service.router.mailboxes)
