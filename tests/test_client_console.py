"""The interactive console: commands, targets, output, quitting."""
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from relayd.client.console import Console
from relayd.client.render import clean, message_line, rooms_lines
from relayd.client.session import Session
from relayd.client.testing import FakeRelay, MemoryEndpoint


class ConsoleHarness(SynchronousTestCase):
    """A console for alice, and bob, both on a scripted relay in memory."""

    def setUp(self):
        self.clock = Clock()
        self.relay = FakeRelay(clock=self.clock)
        self.endpoint = MemoryEndpoint(self.relay)
        self.done = []
        self.console = Console(None, self.done.append)
        self.session = Session(self.clock, self.endpoint, "alice", keepalive=0,
                               on_message=self.console.show_message,
                               on_status=self.console.status,
                               retry_policy=lambda attempt: 1.0)
        self.console.session = self.session
        self.out = StringTransport()
        self.console.makeConnection(self.out)
        self.session.start()
        self.endpoint.flush()
        self.bob = Session(self.clock, self.endpoint, "bob", keepalive=0)
        self.bob.received = []
        self.bob.on_message = self.bob.received.append
        self.bob.start()
        self.endpoint.flush()
        self.addCleanup(self.stop)

    def stop(self):
        for session in (self.session, self.bob):
            session.stop()
        self.endpoint.flush()

    def type(self, *lines):
        for line in lines:
            self.console.dataReceived(line.encode() + b"\n")
        self.endpoint.flush()

    def output(self):
        text = self.out.value().decode()
        self.out.clear()
        return text.splitlines()


class ConsoleTests(ConsoleHarness):
    def test_status_lines(self):
        self.assertEqual(self.output(), ["*** type /help for commands",
                                         "*** connected as alice to relay relay1"])

    def test_to_sets_the_target_for_plain_lines(self):
        self.type("/to bob hello", "and again")
        self.assertEqual([m["body"] for m in self.bob.received], ["hello", "and again"])
        self.assertEqual([r["to"] for r in self.relay.sent("send")], ["bob", "bob"])

    def test_plain_line_without_target(self):
        self.output()
        self.type("hello?")
        self.assertEqual(self.relay.sent("send"), [])
        self.assertIn("no target yet", self.output()[0])

    def test_join_sends_to_the_room_and_shows_members(self):
        self.bob.join("general")
        self.endpoint.flush()
        self.type("/join #general", "hi room")
        self.assertIn("*** joined #general; members: alice, bob", self.output())
        self.assertEqual(self.relay.sent("send")[-1]["room"], "general")
        self.assertEqual([m["to"] for m in self.bob.received], ["#general"])

    def test_room_without_joining(self):
        self.type("/room general hey", "/to #random ho")
        self.assertEqual([r["room"] for r in self.relay.sent("send")], ["general", "random"])

    def test_leave_the_current_room(self):
        self.type("/join general")
        self.type("/leave")
        self.assertEqual(self.relay.sent("leave")[-1]["room"], "general")
        self.assertIsNone(self.console.target)

    def test_incoming_messages_are_printed(self):
        self.output()
        self.bob.send("hi alice", to="alice")
        self.endpoint.flush()
        [line] = self.output()
        self.assertRegex(line, r"^\[\d\d:\d\d:\d\d\] bob -> alice: hi alice$")

    def test_peers_rooms_history(self):
        self.type("/to bob one")
        self.output()
        self.type("/peers", "/rooms", "/history bob 5")
        lines = self.output()
        self.assertEqual(lines[0], "*** peers: alice, bob")
        self.assertEqual(lines[1], "*** rooms: (none)")
        self.assertEqual(lines[2], "*** history: 1 message(s)")
        self.assertTrue(lines[3].endswith("alice -> bob: one"))
        self.assertEqual(self.relay.sent("history")[-1]["limit"], 5)

    def test_double_slash_sends_a_slash(self):
        self.type("/to bob x", "//not a command")
        self.assertEqual(self.bob.received[-1]["body"], "/not a command")

    def test_unknown_command(self):
        self.output()
        self.type("/frobnicate")
        self.assertIn("unknown command /frobnicate", self.output()[0])

    def test_server_refusal_of_a_send_is_shown(self):
        self.relay.send_errors = ["bad_request"]
        self.type("/to bob x")
        self.assertIn("*** not sent: bad_request: bad request", self.output())

    def test_quit_waits_for_acks(self):
        self.relay.swallow_acks = 1
        self.type("/to bob x", "/quit")
        self.assertEqual(self.done, [])
        self.assertIn("waiting for 1 unacked message(s)", self.output()[-1])
        self.endpoint.drop()
        self.clock.advance(1.0)
        self.endpoint.flush()
        self.assertEqual(self.done, [0])

    def test_end_of_input_quits(self):
        self.console.readConnectionLost()
        self.assertEqual(self.done, [0])


class FakePeer:
    """A PeerClient and its UDP port, as far as the console sees them."""

    def __init__(self, target):
        self.target = target
        self.sent = []
        self.failed = Deferred()
        self.listening = True

    def send_text(self, text):
        self.sent.append(text)

    def stopListening(self):
        self.listening = False


class PeerCommandTests(ConsoleHarness):
    """/peer: end-to-end chat over UDP from the same console."""

    def setUp(self):
        super().setUp()
        self.opening = []               # (name, Deferred) per open_peer call
        self.console.open_peer = self.open_peer
        self.output()

    def open_peer(self, name, show):
        d = Deferred()
        self.opening.append((name, d))
        return d

    def opened(self, index=-1):
        name, d = self.opening[index]
        peer = FakePeer(name)
        d.callback((peer, peer))
        return peer

    def test_plain_lines_go_to_the_peer_until_another_target(self):
        self.type("/peer carol")
        self.type("too early")
        carol = self.opened()
        self.type("hi carol", "/to bob", "hi bob")
        self.assertEqual(carol.sent, ["hi carol"])
        self.assertEqual([m["body"] for m in self.bob.received], ["hi bob"])
        self.assertIn("*** not connected to carol yet; message not sent", self.output())
        self.type("/peer carol", "again")           # the open conversation, not a new one
        self.assertEqual((len(self.opening), carol.sent[-1]), (1, "again"))

    def test_another_peer_replaces_the_first(self):
        self.type("/peer carol")
        carol = self.opened()
        self.type("/peer dave", "/peer erin")
        dave, erin = self.opened(1), self.opened(2)
        self.assertFalse(carol.listening)
        self.assertFalse(dave.listening)            # superseded while it was opening
        self.assertTrue(erin.listening)
        self.type("hi")
        self.assertEqual(erin.sent, ["hi"])

    def test_a_refusal_closes_it_and_quitting_closes_it(self):
        self.type("/peer carol")
        carol = self.opened()
        carol.failed.callback("the relay refused us: name_taken")
        self.assertFalse(carol.listening)
        self.assertIn("*** the relay refused us: name_taken", self.output())
        self.type("/peer dave")
        dave = self.opened()
        self.type("/quit")
        self.assertEqual((self.done, dave.listening), ([0], False))

    def test_without_a_udp_relay(self):
        self.console.open_peer = None
        self.type("/peer carol")
        self.assertIn("no UDP relay", self.output()[-1])


class RenderTests(SynchronousTestCase):
    def test_message_line(self):
        msg = {"from": "alice", "to": "#general", "body": "hi", "timestamp": 0}
        self.assertRegex(message_line(msg), r"^\[\d\d:\d\d:\d\d\] alice -> #general: hi$")

    def test_control_characters_are_escaped(self):
        self.assertEqual(clean("a\x1b[2Jb\nc"), "a\\x1b[2Jb\\nc")
        self.assertEqual(clean("héllo ✓"), "héllo ✓")

    def test_bad_timestamp(self):
        self.assertIn("[--:--:--]", message_line({"timestamp": "soon"}))
        sealed = {"from": "alice", "to": "bob", "body": "relayd-e2ee/1 dm AAECAwQ="}
        self.assertTrue(message_line(sealed).endswith("alice -> bob: [end-to-end encrypted dm]"))

    def test_rooms(self):
        self.assertEqual(rooms_lines({"b": 1, "a": 2}), ["a 2", "b 1"])
