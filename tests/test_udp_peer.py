"""relay-chat peer: end-to-end channel, and two clients through a real relay on loopback."""
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer, reactor, task
from twisted.internet.testing import FakeDatagramTransport, StringTransport
from twisted.trial import unittest

from relayd.client import e2e
from relayd.client.e2e import Channel, E2EError, ReplayWindow
from relayd.client.console import Console
from relayd.client.udp_peer import PeerClient, open_peer, parse_address
from relayd.identity import Identity
from tests.test_udp_service import start_service


def identity(name):
    return Identity(name, Ed25519PrivateKey.generate())


class ChannelTests(unittest.TestCase):
    def setUp(self):
        self.alice_id, self.bob_id = identity("alice"), identity("bob")
        self.alice = Channel(self.alice_id, "alice", "bob")
        self.bob = Channel(self.bob_id, "bob", "alice")
        self.assertTrue(self.bob.accept_hello(self.alice.hello()))
        self.assertTrue(self.alice.accept_hello(self.bob.hello()))

    def test_round_trip_both_ways(self):
        self.assertEqual(self.bob.open(self.alice.seal({"k": "text", "body": "hi"})),
                         {"k": "text", "body": "hi"})
        self.assertEqual(self.alice.open(self.bob.seal({"k": "text", "body": "yo"}))["body"], "yo")

    def test_ciphertext_hides_the_text(self):
        frame = self.alice.seal({"k": "text", "body": "attack at dawn"})
        self.assertNotIn("dawn", repr(frame))

    def test_replay_and_tampering_are_refused(self):
        frame = self.alice.seal({"k": "text", "body": "once"})
        self.bob.open(frame)
        self.assertRaises(E2EError, self.bob.open, frame)
        forged = dict(self.alice.seal({"k": "text", "body": "x"}), n=99)
        self.assertRaises(E2EError, self.bob.open, forged)
        # A frame from Alice to Bob does not open as Bob-to-Alice (direction keys differ).
        self.assertRaises(E2EError, self.alice.open, self.alice.seal({"k": "x"}))

    def test_repeated_hello_is_not_a_new_session(self):
        self.assertFalse(self.bob.accept_hello(self.alice.hello()))

    def test_replayed_hello_of_an_earlier_session_is_refused(self):
        old = self.alice.seal({"k": "text", "body": "once"})
        self.bob.open(old)
        old_hello = self.alice.hello()
        restarted = Channel(self.alice_id, "alice", "bob")
        self.assertTrue(self.bob.accept_hello(restarted.hello()))
        sent = self.bob.seal({"k": "x"})["n"]
        # Keying Alice's old ephemeral key again would reuse Bob's nonces
        # and reopen the old session's frames.
        self.assertRaises(E2EError, self.bob.accept_hello, old_hello)
        self.assertRaises(E2EError, self.bob.open, old)
        self.assertEqual(self.bob.seal({"k": "x"})["n"], sent + 1)

    def test_own_ephemeral_key_is_replaced_after_many_sessions(self):
        self.patch(e2e, "MAX_PEER_SESSIONS", 2)
        first = self.bob.eph_public
        alice = Channel(self.alice_id, "alice", "bob")
        self.assertTrue(self.bob.accept_hello(alice.hello()))
        self.assertEqual(self.bob.eph_public, first)
        alice = Channel(self.alice_id, "alice", "bob")
        self.assertTrue(self.bob.accept_hello(alice.hello()))
        self.assertNotEqual(self.bob.eph_public, first)
        self.assertTrue(alice.accept_hello(self.bob.hello()))
        self.assertEqual(alice.open(self.bob.seal({"k": "text", "body": "hi"}))["body"], "hi")

    def test_forged_or_unexpected_hello(self):
        mallory = Channel(identity("mallory"), "alice", "bob")
        bob = Channel(self.bob_id, "bob", "alice")
        self.assertRaises(E2EError, bob.accept_hello, mallory.hello(), self.alice_id.public_bytes)
        hello = dict(self.alice.hello(), eph=mallory.hello()["eph"])
        self.assertRaises(E2EError, bob.accept_hello, hello)
        self.assertRaises(E2EError, bob.accept_hello, dict(self.alice.hello(), to="carol"))

    def test_a_frame_that_does_not_hold_an_object(self):
        self.assertRaises(E2EError, self.bob.open, self.alice.seal(["not", "a", "dict"]))

    def test_replay_window(self):
        window = ReplayWindow(size=4)
        self.assertEqual([window.accept(n) for n in (0, 2, 1, 2, 9, 5, 6, 4)],
                         [True, True, True, False, True, False, True, False])


class BadInputTests(unittest.TestCase):
    """Whatever arrives, from the relay or from anyone, is ignored without an exception."""

    RELAY = ("192.0.2.9", 8000)

    def test_malformed_datagrams_are_ignored(self):
        client = PeerClient(task.Clock(), identity("alice"), "alice", "bob", self.RELAY, print)
        client.makeConnection(FakeDatagramTransport())
        self.addCleanup(client.stopProtocol)
        deep = "[" * 5000
        for packet in (deep, {"type": "relayed_packet", "from_peer": "bob", "payload": deep},
                       {"type": "connect_peer", "peer_name": "bob", "address": "192.0.2.7:9",
                        "authenticated": True, "key": "not base64!"},
                       {"type": "connect_peer", "peer_name": "bob", "address": 7}):
            data = (packet if isinstance(packet, str) else json.dumps(packet)).encode()
            client.datagramReceived(data, self.RELAY)
            client.datagramReceived(data, ("198.51.100.1", 4000))
        self.assertIsNone(client.peer_address)


class CookieTests(unittest.TestCase):
    """The client echoes the relay's address cookie in its first register."""

    RELAY = ("192.0.2.9", 8000)

    def setUp(self):
        self.clock = task.Clock()
        self.client = PeerClient(self.clock, identity("alice"), "alice", "bob", self.RELAY, print)
        self.transport = FakeDatagramTransport()
        self.client.makeConnection(self.transport)
        self.addCleanup(self.client.stopProtocol)

    def sent(self):
        out = [json.loads(data) for data, _ in self.transport.written]
        self.transport.written = []
        return out

    def test_asks_for_a_cookie_and_registers_with_it(self):
        [ping] = self.sent()
        self.assertEqual((ping["type"], ping["cookie"]), ("ping", ""))
        self.client.datagramReceived(json.dumps({"type": "pong", "cookie": "7.abc"}).encode(),
                                     self.RELAY)
        [register] = self.sent()
        self.assertEqual((register["type"], register["cookie"]), ("register", "7.abc"))
        self.assertNotIn("pad", register)

    def test_registers_without_a_cookie_when_the_relay_has_none(self):
        self.sent()
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual([p["type"] for p in self.sent()], ["ping", "ping"])
        self.clock.advance(1)
        [register] = self.sent()
        self.assertNotIn("cookie", register)
        self.assertIn("pad", register)


class LoopbackPeerTests(unittest.TestCase):
    """Two clients and a relay on 127.0.0.1: a direct path, and relayed text."""

    def setUp(self):
        self.service = start_service(self)
        self.relay = ("127.0.0.1", self.service.port)
        self.lines = {"alice": [], "bob": []}

    def client(self, name, target, punch_time=1.0):
        client = PeerClient(reactor, identity(name), name, target, self.relay,
                            self.lines[name].append, punch_time=punch_time)
        port = reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return client, port

    @defer.inlineCallbacks
    def wait_for(self, name, text, timeout=10):
        for _ in range(int(timeout / 0.05)):
            if any(text in line for line in self.lines[name]):
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"{name} never showed {text!r}: {self.lines[name]}")

    @defer.inlineCallbacks
    def test_direct_path_and_messages(self):
        alice, _ = self.client("alice", "bob")
        bob, _ = self.client("bob", "alice")
        path = yield alice.path_ready
        self.assertEqual(path[0], "direct")
        yield bob.path_ready
        relayed = self.service.stats().get("relayed", 0)
        alice.send_text("hello \x1b[31mbob")
        yield self.wait_for("bob", "alice: hello \\x1b[31mbob")
        self.assertIn("vouched for by the relay", "\n".join(self.lines["alice"] + self.lines["bob"]))
        # The text took the direct path: the relay forwarded nothing more.
        self.assertEqual(self.service.stats().get("relayed", 0), relayed)
        # Both proved their addresses by a cookie echo: nothing they drew was cut.
        self.assertEqual(len(self.service.protocol.proven), 2)
        self.assertNotIn("dropped_budget", self.service.stats())

    @defer.inlineCallbacks
    def test_relay_fallback_when_direct_frames_are_lost(self):
        alice, _ = self.client("alice", "bob", punch_time=0.5)
        bob, _ = self.client("bob", "alice", punch_time=0.5)
        for client in (alice, bob):     # a firewall that drops everything but the relay
            original = client.datagramReceived
            client.datagramReceived = (lambda c, o: lambda data, addr: (
                o(data, addr) if addr[:2] == c.relay else None))(client, original)
        self.assertEqual((yield alice.path_ready), "relay")
        yield bob.path_ready
        bob.send_text("via the relay")
        yield self.wait_for("alice", "bob: via the relay")
        self.assertGreater(self.service.stats()["relayed"], 0)

    @defer.inlineCallbacks
    def test_chat_console_peer_command(self):
        """relay-chat chat's /peer NAME talks to a relay-chat peer through the same relay."""
        out = StringTransport()
        console = Console(None, lambda code: None, lambda name, show: defer.ensureDeferred(
            open_peer(reactor, identity("alice"), "alice", name, "127.0.0.1:%d" % self.relay[1],
                      show, bind="127.0.0.1", punch_time=1.0)))
        console.makeConnection(out)
        self.addCleanup(console.close_peer)
        bob, _ = self.client("bob", "alice")
        console.dataReceived(b"/peer bob\n")
        yield bob.path_ready
        yield console.peer[0].path_ready
        console.dataReceived(b"hello from the console\n")
        yield self.wait_for("bob", "alice: hello from the console")
        bob.send_text("hi console")
        for _ in range(200):
            if b"bob: hi console" in out.value():
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertIn(b"bob: hi console", out.value())


class ParseTests(unittest.TestCase):
    def test_addresses(self):
        self.assertEqual(parse_address("192.0.2.1:8000"), ("192.0.2.1", 8000))
        self.assertEqual(parse_address("[2001:db8::1]:8000"), ("2001:db8::1", 8000))
        self.assertRaises(ValueError, parse_address, "nohost")
