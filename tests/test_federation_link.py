"""Federation links and the hub in memory: handshake, forwarding, dedup,
hop limit, receipts and catch-up between relays joined by iosim pumps.

``Relay`` here is a router, index and hub with a synchronous file journal,
so the catch-up reads run against real segment files.
"""
import base64
import json
import os
from dataclasses import replace
from types import SimpleNamespace

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.test import iosim
from twisted.trial import unittest

from relayd.core import message
from relayd.core.dedup import DedupWindow
from relayd.core.history import History
from relayd.core.mailbox import Mailboxes
from relayd.core.router import Router
from relayd.federation import frames
from relayd.federation.frames import BadFrame, BadItem, check_entry, msg_frame, relayed_line
from relayd.federation.hub import Hub
from relayd.federation.index import Index, JournalTee, companion_line
from relayd.federation import catchup
from relayd.federation import index as fed_index
from relayd.federation import handshake
from relayd.federation.handshake import transcript
from relayd.federation.link import Link
from relayd.federation.metrics import FederationMetrics
from relayd.federation.peers import Peer, fingerprint
from relayd.identity import Identity
from relayd.jsonfast import dumps_own
from relayd.journal.replay import replay
from relayd.journal.segments import scan, segment_name
from tests.fakes import FakeSession

SETTINGS = dict(max_hops=16, max_line=1 << 20, handshake_timeout=10.0, keepalive=15.0,
                dead_after=45.0, sync_batch=1000, repair_interval=60.0, link_buffer=4 << 20)


class FileJournal:
    """Appends each line to one segment file at once; ``fail`` makes appends fail."""

    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "relay_log.00000001.jsonl")
        self.fail = False
        self.states = {}
        self.listener = None

    def add_state(self, name, snapshot, load):
        self.states[name] = (snapshot, load)

    def append(self, line):
        if self.fail:
            return defer.fail(OSError(28, "No space left on device"))
        with open(self.path, "ab") as f:
            f.write(line + b"\n")
        return defer.succeed(None)

    def add(self, line):
        self.append(line).addBoth(lambda result: self.listener(1, result))

    def records(self):
        out = []
        replay(self.directory, scan(self.directory), out.append)
        return out


class InlinePool:
    def run(self, f, *args):
        return defer.maybeDeferred(f, *args)


class Session(FakeSession):
    """A client whose bytes reach it at once (what it is sent is settled), as JSON."""

    def __init__(self, peer_id, router=None):
        super().__init__(peer_id, port=1, router=router)

    def deliver_lines(self, lines, receipts=()):
        start = len(self.lines)
        super().deliver_lines(lines, receipts)
        self.lines[start:] = [json.loads(line) for line in self.lines[start:]]

    def bodies(self):
        return [m["body"] for m in self.lines]


class Relay:
    """One relay's federation stack in memory."""

    def __init__(self, testcase, relay_id, clock, key=None, **settings):
        self.id = relay_id
        self.clock = clock
        self.testcase = testcase
        self.directory = testcase.mktemp()
        self.journal = FileJournal(self.directory)
        self.registry = CollectorRegistry()
        self.start(key or Ed25519PrivateKey.generate(), settings)

    def start(self, key, settings):
        """(Re)build the stack from the journal, as a restart would."""
        clock = self.clock
        self.router = Router(self.id, clock, DedupWindow(clock, 3600, 100000),
                             Mailboxes(clock, 1000, 3600), History(100), {}, retention=3600,
                             registry=CollectorRegistry())
        self.router.journal = self.journal
        self.index = Index(self.id)
        tee = JournalTee(self.router, self.index)
        replay(self.directory, scan(self.directory), tee.restore)
        self.hub = Hub(self.id, self.router, self.journal, self.index, clock, InlinePool(),
                       FederationMetrics(CollectorRegistry()),
                       SimpleNamespace(**dict(SETTINGS, **settings)))
        self.hub.identity = Identity(self.id, key)
        self.router.subscribe(self.hub)
        self.router.sequencer = self.hub
        self.hub.sequence_leftovers()

    def restart(self):
        self.start(self.hub.identity.private_key, vars(self.hub.settings))

    def trust(self, other):
        self.hub.peers[other.id] = Peer(other.id, "tcp:127.0.0.1:9", fingerprint(
            other.hub.identity.public_bytes))

    def client(self, peer_id):
        session = Session(peer_id, self.router)
        self.router.deliver_stored(session, self.router.attach(session))
        return session

    def send(self, session, to, body):
        return self.router.submit(session, to, body)

    def message_ids(self):
        return {r["msg_id"] for r in self.journal.records() if "from" in r and "msg_id" in r}


def join(a, b, clock=None):
    """Trust both ways and connect ``a`` (dialling) to ``b``; returns (a_link, b_link, pump)."""
    a.trust(b)
    b.trust(a)
    client, server, pump = iosim.connectedServerAndClient(
        lambda: Link(b.hub), lambda: Link(a.hub, expected=b.id), greet=False)
    pump.flush()
    return client, server, pump


def flush(*pumps):
    for _ in range(20):
        if not any(p.pump() for p in pumps):
            break


class HandshakeTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.a = Relay(self, "relay1", self.clock)
        self.b = Relay(self, "relay2", self.clock)

    def test_trusted_peers_authenticate(self):
        client, server, pump = join(self.a, self.b)
        self.assertEqual((client.state, server.state), ("up", "up"))
        self.assertEqual(list(self.a.hub.links), ["relay2"])
        self.assertEqual(list(self.b.hub.links), ["relay1"])
        self.assertTrue(client.ready.called)
        row = self.a.hub.peer_rows()[0]
        self.assertEqual((row["peer"], row["state"], row["connects"]), ("relay2", "up", 1))

    def test_seq_ranges_only_when_both_sides_list_them(self):
        client, server, _ = join(self.a, self.b)
        self.assertEqual((client.ranges, server.ranges), (True, True))

        class OldLink(Link):
            """A relay of the version before features: its hello lists none."""

            def send(self, frame):
                frame.pop("features", None)
                super().send(frame)
        c = Relay(self, "relay3", self.clock)
        self.a.trust(c)
        c.trust(self.a)
        c.index.add("relay9", 5)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: Link(self.a.hub), lambda: OldLink(c.hub, expected="relay1"), greet=False)
        sent = []
        real_send = server.send
        server.send = lambda frame: (sent.append(frame), real_send(frame))
        pump.flush()
        self.assertEqual((client.state, server.state), ("up", "up"))
        self.assertFalse(server.ranges, "relay1 heard no features from relay3")
        self.a.index.add("relay9", 7)
        self.a.hub.ask_sync(server)
        self.assertEqual(sent[-1]["have"]["relay9"], [0, [7]], "the old form, to an old relay")

    def test_have_parses_both_forms(self):
        wants = catchup.parse_have({"r1": [3, [5, 9]], "r2": [0, [4], [[6, 8], [10, 10]]]})
        self.assertEqual([s for s in range(1, 12) if catchup.lacks(wants, "r1", s)],
                         [4, 6, 7, 8, 10, 11])
        self.assertEqual([s for s in range(1, 12) if catchup.lacks(wants, "r2", s)],
                         [1, 2, 3, 5, 9, 11])
        self.assertTrue(catchup.lacks(wants, "r3", 1))
        for bad in ({"r1": 5}, {"r1": [1]}, {"r1": [0, [], [[5, 2]]]}, {"r1": [0, ["x"]]}, []):
            self.assertRaises(BadItem, catchup.parse_have, bad)

    def test_wrong_key_is_refused(self):
        self.a.trust(self.b)
        impostor = Relay(self, "relay1", self.clock)   # relay1's name, another key
        self.b.trust(self.a)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: Link(self.b.hub), lambda: Link(impostor.hub, expected="relay2"), greet=False)
        impostor.trust(self.b)
        pump.flush()
        self.assertEqual(self.b.hub.links, {})
        self.assertEqual(server.state, "closed")
        self.failureResultOf(client.ready)

    def test_unknown_relay_is_refused(self):
        stranger = Relay(self, "relay9", self.clock)
        stranger.trust(self.b)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: Link(self.b.hub), lambda: Link(stranger.hub, expected="relay2"), greet=False)
        pump.flush()
        self.assertEqual(self.b.hub.links, {})
        self.assertEqual(self.b.hub.metrics.refused._value.get(), 1)
        self.failureResultOf(client.ready)

    def test_dialled_peer_must_answer_with_its_own_name(self):
        c = Relay(self, "relay3", self.clock)
        self.a.trust(c)
        self.a.trust(self.b)
        c.trust(self.a)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: Link(c.hub), lambda: Link(self.a.hub, expected="relay2"), greet=False)
        pump.flush()
        self.assertEqual(self.a.hub.links, {})
        self.failureResultOf(client.ready)

    def inbound(self):
        """relay2's side of a link from relay1; returns (link, transport)."""
        link = Link(self.b.hub)
        transport = iosim.FakeTransport(link, isServer=True)
        link.makeConnection(transport)
        return link, transport

    def hello_from_a(self):
        """relay2's side of a link that got relay1's hello; returns (link, transport)."""
        self.a.trust(self.b)
        self.b.trust(self.a)
        link, transport = self.inbound()
        link.dataReceived(json.dumps({"type": "hello", "proto": "relayd-federation/1",
                                      "relay": "relay1", "key": self.a.hub.identity.public_b64,
                                      "nonce": "ab" * 16}).encode() + b"\n")
        return link, transport

    def test_forged_signature_is_refused(self):
        link, transport = self.hello_from_a()
        link.dataReceived(b'{"type": "auth", "sig": "' + b"A" * 88 + b'"}\n')
        self.assertEqual(link.state, "closed")
        self.assertIn(b"auth_failed", b"".join(transport.stream))

    def test_peer_removed_during_the_handshake_is_refused(self):
        link, transport = self.hello_from_a()
        del self.b.hub.peers["relay1"]              # a reload drops relay1 meanwhile
        signature = self.a.hub.identity.sign(
            transcript("relay1", "relay2", "ab" * 16, link.handshake.nonce))
        link.dataReceived(json.dumps({"type": "auth", "sig": base64.b64encode(
            signature).decode()}).encode() + b"\n")
        self.assertEqual(link.state, "closed")
        self.assertEqual(self.b.hub.links, {})
        self.assertIn(b"no longer a configured peer", b"".join(transport.stream))

    def test_an_unauthenticated_refusal_is_logged_quoted_and_short(self):
        link, transport = self.inbound()
        with capturedLogs() as events:
            refusal = {"type": "error", "message": "no\nforged line" + "x" * 500}
            link.dataReceived(json.dumps(refusal).encode() + b"\n")
        self.assertEqual(link.state, "closed")
        [text] = [formatEvent(e) for e in events if "refused a link" in formatEvent(e)]
        self.assertNotIn("\n", text)
        self.assertIn("'no\\nforged line", text)
        self.assertLess(len(text), 400)

    def test_unauthenticated_side_may_not_send_long_lines(self):
        link, transport = self.inbound()
        link.dataReceived(b"x" * 20000)
        self.assertEqual(link.state, "closed")
        self.assertIn(b"too_long", b"".join(transport.stream))

    def test_authenticated_links_take_frames_up_to_max_line(self):
        client, server, pump = join(self.a, self.b)
        self.assertEqual(server.MAX_LENGTH, 1 << 20)
        client.send({"type": "pong", "pad": "x" * 20000})
        pump.flush()
        self.assertEqual(server.state, "up")

    def test_silent_handshake_times_out(self):
        link, transport = self.inbound()
        self.clock.advance(10.1)
        self.assertEqual(link.state, "closed")
        self.assertTrue(transport.disconnecting)

    def test_dead_link_is_dropped_and_live_one_pinged(self):
        client, server, pump = join(self.a, self.b)
        self.clock.advance(15)
        pump.flush()
        self.assertEqual(client.state, "up")       # pings answered
        for _ in range(4):
            self.clock.advance(15)                   # nothing pumped for more than 45 s
        self.assertEqual(client.state, "closed")

    def test_garbage_closes_the_link(self):
        client, server, pump = join(self.a, self.b)
        client.transport.write(b"not json\n")
        pump.flush()
        self.assertEqual(server.state, "closed")
        self.assertEqual(self.b.hub.links, {})

    def test_deeply_nested_json_closes_the_link(self):
        client, server, pump = join(self.a, self.b)
        client.transport.write(b"[" * 5000 + b"\n")
        pump.flush()
        self.assertEqual(server.state, "closed")
        self.assertEqual(self.b.hub.links, {})


class LineSplitTests(unittest.TestCase):
    """``Link.dataReceived`` splits reads into lines as LineReceiver did."""

    def setUp(self):
        self.link = Link(Relay(self, "relay2", Clock()).hub)
        self.transport = iosim.FakeTransport(self.link, isServer=True)
        self.link.makeConnection(self.transport)
        self.lines = []
        self.link.lineReceived = self.lines.append
        self.link.MAX_LENGTH = 10

    def test_lines_in_one_read_or_cut_anywhere_arrive_whole_and_in_order(self):
        data = b"a\nbb\n\nccc\r\ndddddddddd\ne"
        for size in (len(data), 1, 2, 3, 5):
            del self.lines[:]
            self.link._buffer = b""
            for i in range(0, len(data), size):
                self.link.dataReceived(data[i:i + size])
            self.assertEqual(self.lines, [b"a", b"bb", b"", b"ccc\r", b"d" * 10])
            self.assertEqual(self.link._buffer, b"e")
        self.assertEqual(self.link.state, "hello")

    def test_a_long_line_fails_the_link_and_nothing_after_it_is_read(self):
        self.link.dataReceived(b"a\n" + b"x" * 11 + b"\nb\n")
        self.assertEqual(self.lines, [b"a"])
        self.assertEqual(self.link.state, "closed")
        self.assertIn(b"too_long", b"".join(self.transport.stream))

    def test_an_unfinished_line_fails_the_link_once_longer_than_the_limit(self):
        self.link.dataReceived(b"a\n" + b"x" * 10)
        self.assertEqual(self.link.state, "hello")
        self.link.dataReceived(b"x")
        self.assertEqual((self.lines, self.link.state), ([b"a"], "closed"))

    def test_a_line_that_closes_the_link_ends_the_read(self):
        self.link.lineReceived = lambda line: (self.lines.append(line), self.link.close())
        self.link.dataReceived(b"a\nb\n")
        self.assertEqual(self.lines, [b"a"])

    def test_a_read_during_a_line_is_taken_after_that_read(self):
        def line_received(line):
            self.lines.append(line)
            if line == b"a":
                self.link.dataReceived(b"c\nd")
        self.link.lineReceived = line_received
        self.link.dataReceived(b"a\nb\n")
        self.link.dataReceived(b"\n")
        self.assertEqual(self.lines, [b"a", b"b", b"c", b"d"])


class ThreeRelays(unittest.TestCase):
    """relay1, relay2 and relay3 on one clock, not yet linked."""

    def setUp(self):
        self.clock = Clock()
        self.r = [Relay(self, f"relay{i}", self.clock) for i in (1, 2, 3)]

    def relay_broadcasts(self, count, prefix="m"):
        """Link relay1 - relay2 and broadcast ``count`` messages from relay1."""
        _, _, pump = join(self.r[0], self.r[1])
        alice = self.r[0].client("alice")
        for i in range(count):
            self.r[0].send(alice, "*", f"{prefix}{i}")
        flush(pump)
        return pump


class ForwardingTests(ThreeRelays):
    def line(self):
        """relay1 - relay2 - relay3."""
        _, _, p1 = join(self.r[0], self.r[1])
        _, _, p2 = join(self.r[1], self.r[2])
        return p1, p2

    def test_message_crosses_a_line_with_origin_id_and_seen_by(self):
        pumps = self.line()
        alice, bob = self.r[0].client("alice"), self.r[2].client("bob")
        d = self.r[0].send(alice, "bob", "hi")
        flush(*pumps)
        msg_id, _ = self.successResultOf(d)
        self.assertEqual(bob.bodies(), ["hi"])
        self.assertEqual(bob.lines[0]["msg_id"], msg_id)
        self.assertEqual(bob.lines[0]["seen_by"], ["relay1", "relay2", "relay3"])
        for relay in self.r:
            self.assertEqual(relay.message_ids(), {msg_id})

    def test_mesh_delivers_once_and_counts_dedup(self):
        pumps = list(self.line()) + [join(self.r[2], self.r[0])[2]]
        sessions = [relay.client(f"u{i}") for i, relay in enumerate(self.r)]
        for i, relay in enumerate(self.r):
            relay.send(sessions[i], "*", f"from {i}")
        flush(*pumps)
        for i, session in enumerate(sessions):
            self.assertEqual(sorted(session.bodies()), sorted(f"from {j}" for j in range(3) if j != i))
        hits = sum(row["dedup_hits"] for relay in self.r for row in relay.hub.peer_rows())
        self.assertGreater(hits, 0)

    def test_never_sent_back_to_its_source(self):
        client, server, pump = join(self.r[0], self.r[1])
        alice = self.r[0].client("alice")
        self.r[0].send(alice, "*", "hi")
        pump.flush()
        self.assertEqual(self.r[1].hub.peer_rows()[0]["messages_out"], 0)
        self.assertEqual(self.r[0].hub.peer_rows()[0]["dedup_hits"], 0)

    def test_two_links_between_a_pair_deliver_once_and_take_over(self):
        a, b = self.r[0], self.r[1]
        first, _, p1 = join(a, b)
        _, _, p2 = join(b, a)
        self.assertEqual(len(a.hub.links["relay2"]), 2)
        bob = b.client("bob")
        alice = a.client("alice")
        a.send(alice, "*", "one")
        flush(p1, p2)
        first.transport.loseConnection()
        flush(p1, p2)
        self.assertEqual(len(a.hub.links["relay2"]), 1)
        a.send(alice, "*", "two")
        flush(p1, p2)
        self.assertEqual(bob.bodies(), ["one", "two"])

    def test_hop_limit_stops_forwarding(self):
        for relay in self.r:
            relay.hub.settings.max_hops = 2
        pumps = self.line()
        carol = self.r[2].client("carol")
        self.r[0].send(self.r[0].client("alice"), "*", "hi")
        flush(*pumps)
        self.assertEqual(carol.bodies(), [])
        self.assertEqual(self.r[1].hub.hop_limited, 1)

    def test_receipt_clears_the_copies_stored_elsewhere(self):
        pumps = self.line()
        alice = self.r[0].client("alice")
        self.r[0].send(alice, "dave", "stored")
        flush(*pumps)
        self.assertEqual([r.router.mailboxes.count("dave") for r in self.r], [1, 1, 1])
        dave = self.r[1].client("dave")
        flush(*pumps)
        self.assertEqual(dave.bodies(), ["stored"])
        self.assertEqual([r.router.mailboxes.count("dave") for r in self.r], [0, 0, 0])
        self.r[2].restart()        # the journal keeps the receipt
        self.assertEqual(self.r[2].router.mailboxes.count("dave"), 0)

    def test_live_delivery_stores_nothing_elsewhere_for_long(self):
        pumps = self.line()
        bob = self.r[2].client("bob")
        self.r[0].send(self.r[0].client("alice"), "bob", "hi")
        flush(*pumps)
        self.assertEqual(bob.bodies(), ["hi"])
        self.assertEqual([r.router.mailboxes.count("bob") for r in self.r], [0, 0, 0])

    def test_receipt_before_its_message(self):
        a, b = self.r[0], self.r[1]
        a.trust(b)
        b.trust(a)
        link = Link(b.hub)
        link.makeConnection(iosim.FakeTransport(link, isServer=True))
        link.peer, link.state = b.hub.peers["relay1"], "up"
        entry = {"from": "alice", "to": "dave", "body": "x", "timestamp": 1.0,
                 "seen_by": ["relay1"], "msg_id": "ab" * 32}
        b.hub.receive(link, {"type": "receipt", "origin": "relay3", "seq": 1,
                             "msg_id": entry["msg_id"], "to": "dave", "timestamp": 2.0})
        b.hub.receive(link, {"type": "msg", "origin": "relay1", "seq": 1, "entry": entry})
        self.assertEqual(b.router.mailboxes.count("dave"), 0)
        b.restart()
        self.assertEqual(b.router.mailboxes.count("dave"), 0)

    def test_bad_item_is_answered_not_fatal(self):
        client, server, pump = join(self.r[0], self.r[1])
        client.send({"type": "msg", "origin": "relay1", "seq": 1, "entry": {"msg_id": "x"}})
        client.send({"type": "nonsense"})
        pump.flush()
        self.assertEqual(server.state, "up")
        self.assertEqual(self.r[1].message_ids(), set())

    def test_a_seq_of_our_own_far_beyond_any_issued_is_a_bad_item(self):
        """A forged or damaged item of relay2's own origin, or a sync saying
        relay1 holds such, with a seq near 2^63 would leave relay2 no seq
        its peers accept: refused; relay2's next item still gets seq 1."""
        client, server, pump = join(self.r[0], self.r[1])
        entry = {"msg_id": "ab" * 32, "from": "alice", "to": "*", "body": "hi",
                 "seen_by": ["relay2"], "timestamp": self.clock.seconds()}
        far = 2 ** 63 - 1
        client.send({"type": "msg", "origin": "relay2", "seq": far, "entry": entry})
        client.send({"type": "receipt", "origin": "relay2", "seq": far, "msg_id": "ab" * 32,
                     "to": "bob", "timestamp": self.clock.seconds()})
        client.send({"type": "sync", "have": {"relay2": [far, []]}})
        pump.flush()
        self.assertEqual(server.state, "up")
        self.assertEqual(self.r[1].hub.metrics.bad_frames.labels("relay1")._value.get(), 3)
        self.r[1].send(self.r[1].client("carol"), "*", "mine")
        flush(pump)
        self.assertEqual(self.r[0].index.wants()["relay2"][0], 1)
        # a lost journal: relay1 holds relay2's items up to 5, and relay2 goes on after them
        client.send({"type": "sync", "have": {"relay2": [5, []]}})
        pump.flush()
        self.assertEqual(self.r[1].index.next_own(), 6)

    def test_infinite_or_nan_times_are_bad_items(self):
        client, server, pump = join(self.r[0], self.r[1])
        entry = {"msg_id": "ab" * 32, "from": "alice", "to": "*", "body": "hi",
                 "seen_by": ["relay1"], "timestamp": float("inf")}
        client.send({"type": "msg", "origin": "relay1", "seq": 1, "entry": entry})
        client.send({"type": "receipt", "origin": "relay1", "seq": 2, "msg_id": "ab" * 32,
                     "to": "bob", "timestamp": float("nan")})
        pump.flush()
        self.assertEqual(server.state, "up")
        self.assertEqual(self.r[1].journal.records(), [])
        self.assertEqual(self.r[1].index.wants(), {})

    def test_journal_failure_is_asked_for_again(self):
        client, server, pump = join(self.r[0], self.r[1])
        self.r[1].journal.fail = True
        self.r[0].send(self.r[0].client("alice"), "*", "hi")
        pump.flush()
        self.assertEqual(self.r[1].message_ids(), set())
        self.r[1].journal.fail = False
        self.clock.advance(15)
        flush(pump)
        self.assertEqual(len(self.r[1].message_ids()), 1)
        self.assertEqual(self.r[1].index.wants()["relay1"], [1, []])

    def test_a_full_disk_is_logged_once_not_per_item(self):
        client, server, pump = join(self.r[0], self.r[1])
        self.r[1].journal.fail = True
        alice = self.r[0].client("alice")
        with capturedLogs() as events:
            for i in range(50):
                self.r[0].send(alice, "*", f"m{i}")
            pump.flush()
        errors = [e for e in events if e["log_level"] >= LogLevel.error]
        self.assertLessEqual(len(errors), 2, [formatEvent(e) for e in errors])
        self.assertFalse([e for e in events if e["log_level"] == LogLevel.critical])


BODIES = ["plain", "h\u00e9llo \u2028 \U0001f600", "lone \ud800 surrogate", "lone low \udc00",
          'quote " backslash \\ slash / tab \t nl \n del \x7f nul \x00']


def journaled_messages(relay):
    """Each message line of ``relay``'s journal, as written."""
    with open(relay.journal.path, "rb") as f:
        return [line.rstrip(b"\n") for line in f if b'"from"' in line]


class FrameTests(unittest.TestCase):
    def test_a_msg_frame_has_its_keys_as_dumps_own_writes_them(self):
        for origin in ("relay1", 'a "quoted" \\ id', "r\u00e9lais", "\u4e2d\u7ee7"):
            for seq in (1, 2 ** 63 - 1):
                head = dumps_own({"type": "msg", "origin": origin, "seq": seq})[:-1]
                self.assertEqual(msg_frame(origin, seq, b"{}"), head + b',"entry":{}}\n')

    def test_names_of_every_type_are_checked_each_time(self):
        entry = message.new_entry("alice", "*", "hi", 1.5, "relay1")
        for _ in range(2):      # the second time from what the first remembered
            check_entry(dict(entry))
            for key, bad in (("from", ["alice"]), ("from", {}), ("to", 5), ("from", "a||b"),
                             ("seen_by", [["relay1"]]), ("seen_by", ["relay1", " x"]),
                             ("msg_id", "A" * 64), ("msg_id", "a" * 63)):
                self.assertRaises(BadItem, check_entry, dict(entry, **{key: bad}))
        self.assertRaises(BadItem, frames.item_key, {"origin": ["relay1"], "seq": 1})
        self.assertEqual(frames.item_key({"origin": "relay1", "seq": 1}), ("relay1", 1))

    def test_names_longer_than_any_name_are_refused_and_not_remembered(self):
        entry = message.new_entry("alice", "*", "hi", 1.5, "relay1")
        kept = frames._peer_id_problem.cache_info
        before = kept().currsize
        for n in range(3):
            self.assertRaises(BadItem, check_entry, dict(entry, **{"from": "x" * 100_000 + str(n)}))
        self.assertEqual(kept().currsize, before)
        self.assertRaises(BadItem, check_entry, dict(entry, **{"from": f"x||{id(self)}-{before}"}))
        self.assertEqual(kept().currsize, before + 1)      # a name-sized string is remembered


class RelayedLineTests(unittest.TestCase):
    """A peer's entry is journaled from the frame's bytes only when they are
    exactly what ``journal_line`` would write for it."""

    def frame(self, body="hi", room=None):
        entry, line = message.new_message("alice", "#r" if room else "*", body, 1734200000.125,
                                          "relay1", room=room)
        return msg_frame("relay1", 7, line).rstrip(b"\n")

    def relayed(self, frame_line, appended="relay2"):
        entry = json.loads(frame_line)["entry"]
        if appended is not None:
            entry["seen_by"].append(appended)
        return entry, relayed_line(frame_line, entry, appended)

    def test_the_entry_is_cut_from_the_frame_with_this_relay_appended(self):
        for body in BODIES:
            for room in (None, "r"):
                entry, line = self.relayed(self.frame(body, room))
                self.assertEqual(line, message.journal_line(entry))
                self.assertEqual(json.loads(line)["body"], body)
        entry, line = self.relayed(self.frame(), appended=None)
        self.assertEqual(line, message.journal_line(entry))

    def test_bytes_in_any_other_form_are_not_used(self):
        frame = self.frame("hi")
        variants = [
            frame.replace(b'"to": "*"', b'"to": "*", "to": "bob"'),         # a repeated key
            frame.replace(b'"body": "hi"', b'"body": "h\\u0069"'),        # another escape of "hi"
            frame.replace(b'"body": "hi"', b'"body": "h\\/"'),
            self.frame("\u00e9").replace(b"\\u00e9", "\u00e9".encode()),  # raw UTF-8
            self.frame("\u00e9").replace(b"\\u00e9", b"\\u00E9"),        # upper-case hex
            frame.replace(b"1734200000.125", b"1734200000.1250"),          # another number form
            frame.replace(b'"msg_id"', b'"held_for": ["bob"], "msg_id"'),   # a key more
            frame.replace(b',"entry"', b',"x":1,"entry"'),                  # a frame key more
            frame[:-1] + b',"entry":' + self.frame("other")[len(b'{"type":"msg","origin":"relay1",'
                                                             b'"seq":7,"entry":'):],  # twice
            frame.replace(b", ", b","),                                     # compact
        ]
        for variant in variants:
            entry, line = self.relayed(variant)
            self.assertIsNone(line, variant)


class RawEntryTests(ThreeRelays):
    def test_bodies_cross_a_line_intact_and_are_journaled_as_json_dumps_writes_them(self):
        _, _, p1 = join(self.r[0], self.r[1])
        _, _, p2 = join(self.r[1], self.r[2])
        bob = self.r[2].client("bob")
        alice = self.r[0].client("alice")
        for body in BODIES:
            self.r[0].send(alice, "bob", body)
        flush(p1, p2)
        self.assertEqual(bob.bodies(), BODIES)
        self.assertEqual([m["seen_by"] for m in bob.lines], [["relay1", "relay2", "relay3"]] * 5)
        self.assertEqual({m["msg_id"] for m in bob.lines}, self.r[0].message_ids())
        for relay in self.r:
            lines = journaled_messages(relay)
            self.assertEqual(len(lines), len(BODIES))
            for line in lines:
                entry = message.entry_of(json.loads(line))
                self.assertTrue(line.startswith(message.journal_line(entry)[:-1] + b", "), line)

    def test_an_entry_in_another_form_is_journaled_and_forwarded_in_the_journal_form(self):
        _, server, p1 = join(self.r[0], self.r[1])
        _, _, p2 = join(self.r[1], self.r[2])
        flush(p1, p2)
        bob = self.r[2].client("bob")
        client = self.r[0].hub.links["relay2"][0]
        entry = {"from": "alice", "to": "bob", "body": "caf\u00e9 \ud800", "timestamp": 5.5,
                 "seen_by": ["relay1"], "msg_id": "cd" * 32}
        compact = json.dumps(entry, separators=(",", ":"))
        # a repeated key: the parse keeps the last one, and so does what is journaled
        repeated = compact.replace('"body":', '"body":"forged","body":', 1)
        client.send_raw(b'{"type":"msg","origin":"relay9","seq":1,"entry":%s}\n' % repeated.encode())
        flush(p1, p2)
        self.assertEqual(bob.bodies(), ["caf\u00e9 \ud800"])
        for relay in self.r[1:]:
            [line] = journaled_messages(relay)
            self.assertEqual(line.count(b'"body"'), 1)
            self.assertTrue(line.startswith(message.journal_line(
                message.entry_of(json.loads(line)))[:-1] + b", "), line)


class CatchUpTests(ThreeRelays):
    def test_messages_sent_while_a_link_was_down_arrive_after(self):
        client, _, pump = join(self.r[0], self.r[1])
        alice, bob = self.r[0].client("alice"), self.r[1].client("bob")
        self.r[0].send(alice, "*", "before")
        pump.flush()
        client.transport.loseConnection()
        pump.flush()
        for i in range(5):
            self.r[0].send(alice, "*", f"during {i}")
        self.r[1].restart()
        bob = self.r[1].client("bob")
        _, _, pump = join(self.r[0], self.r[1])
        flush(pump)
        self.assertEqual(bob.bodies(), [f"during {i}" for i in range(5)])
        self.assertEqual(self.r[0].message_ids(), self.r[1].message_ids())

    def test_catch_up_passes_along_a_line(self):
        p1, p2 = (join(self.r[0], self.r[1])[2], None)
        alice = self.r[0].client("alice")
        for i in range(3):
            self.r[0].send(alice, "*", f"m{i}")
        flush(p1)
        carol = self.r[2].client("carol")
        _, _, p2 = join(self.r[1], self.r[2])
        flush(p1, p2)
        self.assertEqual(carol.bodies(), ["m0", "m1", "m2"])
        self.assertEqual(self.r[2].index.cursors["relay1"].low, 3)

    def test_catch_up_comes_in_batches(self):
        for relay in self.r:
            relay.hub.settings.sync_batch = 2
        alice = self.r[0].client("alice")
        for i in range(7):
            self.r[0].send(alice, "*", f"m{i}")
        bob = self.r[1].client("bob")
        _, _, pump = join(self.r[0], self.r[1])
        flush(pump)
        self.assertEqual(bob.bodies(), [f"m{i}" for i in range(7)])

    def hole_below_many_items(self):
        """relay1 holds relay9's items 2..12 but never had 1 (pruned before it
        came), and a sync lists at most 3 seqs (or ranges) above a hole."""
        self.patch(fed_index, "MAX_ABOVE_SENT", 3)
        for relay in self.r:
            relay.hub.settings.sync_batch = 2
        for seq in range(2, 13):
            msg_id = f"{seq:064x}"
            self.r[0].journal.append(message.journal_line({
                "msg_id": msg_id, "from": "zoe", "to": "*", "body": f"z{seq}",
                "seen_by": ["relay9"], "timestamp": 1.0}))
            self.r[0].journal.append(companion_line("relay9", seq, msg_id))
        self.r[0].restart()
        _, _, pump = join(self.r[0], self.r[1])
        flush(pump)
        return pump

    def test_a_hole_no_peer_can_fill_does_not_loop_the_catch_up(self):
        # without ranges, beyond the seqs a sync lists relay2 would be sent the
        # same items forever: it stops asking once a round changes nothing
        self.patch(handshake, "FEATURES", ())
        pump = self.hole_below_many_items()
        self.assertFalse(pump.pump())                   # quiet, not asking again and again
        self.assertEqual(self.r[1].index.cursors["relay9"].above, set(range(2, 7)))

    def test_with_ranges_everything_above_a_hole_is_caught_up(self):
        pump = self.hole_below_many_items()
        self.assertFalse(pump.pump())
        self.assertEqual(self.r[1].index.cursors["relay9"].above, set(range(2, 13)))
        self.assertEqual(self.r[1].index.wants(True)["relay9"], [0, [], [[2, 12]]])

    def test_receipts_are_caught_up_too(self):
        alice = self.r[0].client("alice")
        self.r[0].send(alice, "dave", "stored")
        _, _, pump = join(self.r[0], self.r[1])
        flush(pump)
        self.assertEqual(self.r[1].router.mailboxes.count("dave"), 1)
        self.r[1].hub.drop_peer("relay1")
        flush(pump)
        self.r[0].client("dave")
        _, _, pump = join(self.r[0], self.r[1])
        flush(pump)
        self.assertEqual(self.r[1].router.mailboxes.count("dave"), 0)

    def test_own_messages_without_seq_are_sequenced_at_start(self):
        alice = self.r[0].client("alice")
        self.r[0].send(alice, "*", "old")
        with open(self.r[0].journal.path, "rb") as f:
            records = [json.loads(line) for line in f]
        with open(self.r[0].journal.path, "wb") as f:      # as a journal from before federation
            f.writelines(message.journal_line(message.entry_of(r)) + b"\n"
                         for r in records if "fed" not in r or "from" in r)
        self.r[0].restart()
        self.assertEqual(self.r[0].index.cursors["relay1"].low, 1)
        bob = self.r[1].client("bob")
        _, _, pump = join(self.r[0], self.r[1])
        flush(pump)
        self.assertEqual(bob.bodies(), ["old"])

    def test_cursors_survive_a_restart(self):
        self.relay_broadcasts(4)
        self.r[1].restart()
        self.assertEqual(self.r[1].index.wants(), {"relay1": [4, []]})
        self.r[0].restart()
        self.r[0].send(self.r[0].client("alice"), "*", "after")
        self.assertEqual(self.r[0].index.cursors["relay1"].low, 5)


class CollectTests(unittest.TestCase):
    """``catchup.collect`` straight over a journal of relay1's messages."""

    def journal(self, count, gone=()):
        journal = FileJournal(self.mktemp())
        for seq in range(1, count + 1):
            msg_id = f"{seq:064x}"
            if seq not in gone:
                journal.append(message.journal_line({
                    "msg_id": msg_id, "from": "alice", "to": "*", "body": f"m{seq}",
                    "seen_by": ["relay1"], "timestamp": 1.0}))
            journal.append(companion_line("relay1", seq, msg_id))
        return journal.directory

    def test_a_batch_is_the_oldest_items_lacked_and_memory_stays_bounded(self):
        held = []
        offer = catchup.Smallest.offer

        def spy(picked, key, value):
            offer(picked, key, value)
            held.append(len(picked.items))
        self.patch(catchup.Smallest, "offer", spy)
        items, more = catchup.collect(self.journal(500), {"relay1": catchup.Held(100, [(102, 102)])}, 10)
        self.assertEqual([seq for _, seq, _, _ in items], [101] + list(range(103, 112)))
        self.assertEqual({kind for _, _, kind, _ in items}, {"m"})
        self.assertEqual(items[0][3]["body"], "m101")
        self.assertTrue(more)
        self.assertEqual(len(held), 399)           # every item lacked was offered
        self.assertLessEqual(max(held), 20)

    def test_the_last_batch_says_no_more(self):
        items, more = catchup.collect(self.journal(30), {"relay1": catchup.Held(25)}, 10)
        self.assertEqual([seq for _, seq, _, _ in items], [26, 27, 28, 29, 30])
        self.assertFalse(more)

    def test_messages_pruned_under_their_seq_records_are_looked_past(self):
        items, more = catchup.collect(self.journal(30, gone=range(1, 16)), {}, 10)
        self.assertEqual([seq for _, seq, _, _ in items], [16, 17, 18, 19, 20])
        self.assertTrue(more)
        items, more = catchup.collect(self.journal(30, gone=range(1, 31)), {}, 10)
        self.assertEqual((items, more), ([], False))


class SummaryTests(unittest.TestCase):
    """A round reads the segments that hold what the peer lacks, not the whole journal."""

    def segment(self, directory, index, seqs):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, segment_name(index)), "ab") as f:
            for seq in seqs:
                msg_id = f"{seq:064x}"
                f.write(message.journal_line({
                    "msg_id": msg_id, "from": "alice", "to": "*", "body": f"m{seq}",
                    "seen_by": ["relay1"], "timestamp": 1.0}) + b"\n")
                f.write(companion_line("relay1", seq, msg_id) + b"\n")

    def test_only_segments_with_lacked_items_are_read(self):
        directory = self.mktemp()
        for index in range(1, 6):
            self.segment(directory, index, range(index * 100 - 99, index * 100 + 1))
        opened = []
        real_open = open

        def spy(path, mode="r", *args, **kwargs):
            opened.append(os.path.basename(path))
            return real_open(path, mode, *args, **kwargs)
        summaries = catchup.Summaries()
        catchup.collect(directory, {}, 10, summaries=summaries)        # reads every segment once
        catchup.open = spy              # shadows the builtin in that module only
        self.addCleanup(delattr, catchup, "open")
        items, more = catchup.collect(directory, {"relay1": catchup.Held(450)}, 10,
                                      summaries=summaries)
        self.assertEqual([seq for _, seq, _, _ in items], list(range(451, 461)))
        self.assertEqual(set(opened), {segment_name(4), segment_name(5)})
        # A segment being written is read on from where the last round stopped.
        self.segment(directory, 5, [501, 502])
        opened.clear()
        items, more = catchup.collect(directory, {"relay1": catchup.Held(500)}, 10,
                                      summaries=summaries)
        self.assertEqual([seq for _, seq, _, _ in items], [501, 502])
        self.assertFalse(more)
        self.assertEqual(set(opened), {segment_name(4), segment_name(5)})

    def sequenced(self, directory, index, origin, seqs):
        """Messages of ``origin`` as this journal format writes them."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, segment_name(index)), "ab") as f:
            for seq in seqs:
                f.write(message.sequenced_line(message.journal_line({
                    "msg_id": f"{seq:064x}", "from": "alice", "to": "*", "body": f"{origin} {seq}",
                    "seen_by": [origin], "timestamp": 1.0}), (origin, seq)) + b"\n")

    def test_a_round_reads_the_blocks_it_sends_from_not_the_whole_backlog(self):
        self.patch(catchup, "BLOCK_LINES", 10)
        directory = self.mktemp()
        self.sequenced(directory, 1, "relay1", range(1, 1001))
        summaries = catchup.Summaries()
        catchup.collect(directory, {}, 5, summaries=summaries)         # summarises every block
        parsed = []
        fed_key = catchup._fed_key

        def spy(line):
            parsed.append(line)
            return fed_key(line)
        self.patch(catchup, "_fed_key", spy)
        items, more = catchup.collect(directory, {"relay1": catchup.Held(20)}, 5,
                                      summaries=summaries)
        self.assertEqual([seq for _, seq, _, _ in items], [21, 22, 23, 24, 25])
        self.assertTrue(more)
        self.assertLessEqual(len(parsed), 10)      # one block of the 98 the peer lacks
        items, more = catchup.collect(directory, {"relay1": catchup.Held(998)}, 5,
                                      summaries=summaries)
        self.assertEqual([seq for _, seq, _, _ in items], [999, 1000])
        self.assertFalse(more)

    def test_an_older_item_in_a_later_block_is_still_sent_first(self):
        self.patch(catchup, "BLOCK_LINES", 10)
        directory = self.mktemp()
        self.sequenced(directory, 1, "relay2", range(1, 31))     # three blocks of relay2
        self.sequenced(directory, 1, "relay1", range(1, 11))     # then one of relay1
        items, more = catchup.collect(directory, {}, 5, summaries=catchup.Summaries())
        self.assertEqual([(origin, seq) for origin, seq, _, _ in items],
                         [("relay1", seq) for seq in range(1, 6)])
        self.assertTrue(more)
        items, more = catchup.collect(directory, {"relay1": catchup.Held(10),
                                                  "relay2": catchup.Held(28)}, 5,
                                      summaries=catchup.Summaries())
        self.assertEqual([(origin, seq) for origin, seq, _, _ in items],
                         [("relay2", 29), ("relay2", 30)])
        self.assertFalse(more)

    def test_a_message_far_from_its_seq_record_is_still_found(self):
        directory = self.mktemp()
        self.segment(directory, 1, [1])
        self.segment(directory, 2, [2])
        self.segment(directory, 3, [3])
        with open(os.path.join(directory, segment_name(3)), "ab") as f:
            f.write(companion_line("relay1", 4, f"{1:064x}") + b"\n")   # an old message, new seq
        items, _ = catchup.collect(directory, {"relay1": catchup.Held(3)}, 10,
                                   summaries=catchup.Summaries())
        self.assertEqual([(seq, record["body"]) for _, seq, _, record in items], [(4, "m1")])


class RepairTests(ThreeRelays):
    def test_a_lasting_hole_is_caught_up_while_links_stay_up(self):
        pump = self.relay_broadcasts(3)
        b = self.r[1]
        b.index.discard("relay1", 2)               # as if that item's frame was lost
        self.assertEqual(b.index.wants()["relay1"], [1, [3]])
        self.assertFalse(b.hub.repair())           # a hole may be an item still on its way
        flush(pump)
        self.assertTrue(b.hub.repair())            # still there: ask the peers
        flush(pump)
        self.assertEqual(b.index.wants()["relay1"], [3, []])
        self.assertFalse(b.hub.repair())


class CheckpointTests(ThreeRelays):
    def test_cursors_outlive_pruned_segments(self):
        self.relay_broadcasts(5)
        self.r[1].hub.checkpoint()
        with open(self.r[1].journal.path, "rb") as f:
            lines = f.readlines()
        with open(self.r[1].journal.path, "wb") as f:
            f.writelines(lines[-1:])          # as if every older segment was pruned
        self.r[1].restart()
        self.assertEqual(self.r[1].index.wants(), {"relay1": [5, []]})

    def test_a_relay_that_lost_its_journal_does_not_reuse_seqs(self):
        self.relay_broadcasts(3, "old ")
        os.remove(self.r[0].journal.path)
        self.r[0].restart()
        bob = self.r[1].client("bob")
        _, _, pump = join(self.r[0], self.r[1])
        flush(pump)
        self.r[0].send(self.r[0].client("alice"), "*", "new")
        flush(pump)
        self.assertEqual(bob.bodies(), ["new"])
        self.assertEqual(self.r[1].index.wants()["relay1"], [4, []])


class StalledPeerTests(unittest.TestCase):
    def test_a_peer_that_stops_reading_is_dropped(self):
        clock = Clock()
        a, b = Relay(self, "relay1", clock), Relay(self, "relay2", clock)
        client, server, pump = join(a, b)
        client.pauseProducing()         # what the transport does when its buffer fills
        clock.advance(15)
        pump.flush()
        clock.advance(15)
        pump.flush()
        self.assertEqual(client.state, "up")
        client.resumeProducing()        # the transport drained: what waited goes out
        pump.flush()
        clock.advance(30)
        pump.flush()
        self.assertEqual(client.state, "up")
        client.pauseProducing()
        for _ in range(4):
            clock.advance(15)
            pump.flush()
        self.assertEqual(client.state, "closed")


class CatchUpNudgeTests(unittest.TestCase):
    def test_a_synced_naming_skipped_items_is_answered_even_if_nothing_changed(self):
        clock = Clock()
        a, b = Relay(self, "relay1", clock), Relay(self, "relay2", clock)
        link, _, _ = join(a, b)
        sent = []
        real_send = link.send
        link.send = lambda frame: (sent.append(frame), real_send(frame))
        a.hub.receive(link, {"type": "synced", "sent": 0, "more": True})
        self.assertEqual(sent, [], "the same have would get the same answer")
        a.hub.receive(link, {"type": "synced", "sent": 0, "more": True, "skipped": 5})
        self.assertEqual([frame["type"] for frame in sent], ["sync"])


class PinnedCertificateTests(unittest.TestCase):
    """A peer with ``tls_fingerprint`` must present exactly that certificate."""

    def setUp(self):
        from relayd import tls_ca
        ca = self.mktemp()
        tls_ca.init_ca(ca)
        self.certs = {}
        for name in ("good", "other"):
            cert_path, _ = tls_ca.issue(ca, name)
            with open(cert_path, "rb") as f:
                self.certs[name] = x509.load_pem_x509_certificate(f.read())
        self.clock = Clock()
        self.a = Relay(self, "relay1", self.clock)
        self.b = Relay(self, "relay2", self.clock)
        self.a.trust(self.b)
        self.b.trust(self.a)
        pin = "sha256:" + self.certs["good"].fingerprint(hashes.SHA256()).hex()
        self.b.hub.peers["relay1"] = replace(self.b.hub.peers["relay1"], tls_fingerprint=pin)

    def connect(self, presented):
        link = Link(self.b.hub)
        transport = iosim.FakeTransport(link, isServer=True)
        cert = None if presented is None else SimpleNamespace(
            to_cryptography=lambda: self.certs[presented])
        transport.getPeerCertificate = lambda: cert
        link.makeConnection(transport)
        hello = Link(self.a.hub, expected="relay2")
        hello.makeConnection(iosim.FakeTransport(hello, isServer=False))
        link.dataReceived(json.dumps(hello.handshake.hello()).encode() + b"\n")
        return link, b"".join(transport.stream)

    def test_pinned_certificate_is_accepted(self):
        link, sent = self.connect("good")
        self.assertEqual(link.state, "auth")

    def test_other_certificate_is_refused(self):
        link, sent = self.connect("other")
        self.assertEqual(link.state, "closed")
        self.assertIn(b"not the pinned one", sent)

    def test_no_certificate_is_refused(self):
        link, sent = self.connect(None)
        self.assertEqual(link.state, "closed")
        self.assertIn(b"presented none", sent)


class LostItemTests(ThreeRelays):
    def test_a_hole_no_peer_fills_is_recorded_once_and_not_asked_for_again(self):
        pump = self.relay_broadcasts(3)
        b = self.r[1]
        b.index.discard("relay1", 2)
        a = self.r[0]                     # item 2 is gone there too (past retention)
        with open(a.journal.path, "rb") as f:
            lines = f.readlines()
        msg_id = next(r["msg_id"] for r in map(json.loads, lines) if r.get("seq") == 2)
        with open(a.journal.path, "wb") as f:
            f.writelines(line for line in lines if msg_id.encode() not in line)
        a.hub.recent.clear()
        asked = []
        real = b.hub.ask_sync
        b.hub.ask_sync = lambda link, have=None: (asked.append(link), real(link, have))
        with capturedLogs() as events:
            for _ in range(1 + fed_index.GIVE_UP_ROUNDS):
                b.hub.repair()
                flush(pump)
        lost = [e for e in events if "recorded as lost" in e["log_format"]]
        self.assertEqual(len(lost), 1)
        self.assertEqual((lost[0]["first"], lost[0]["last"]), (2, 2))
        self.assertEqual(b.index.wants()["relay1"], [3, []])
        asked.clear()
        b.hub.repair()
        b.hub.repair()
        self.assertEqual(asked, [], "a lost item is not asked for again")
        b.restart()
        self.assertEqual(b.index.wants()["relay1"], [3, []], "the loss is journaled")

    def origin_refuses_seq_2(self):
        """relay1 - relay2; relay1's journal refuses its second message (seq 2)."""
        a, b = self.r[0], self.r[1]
        _, self.b_link, pump = join(a, b)
        alice = a.client("alice")
        a.send(alice, "*", "m1")
        append = a.journal.append
        a.journal.append = lambda line: (setattr(a.journal, "append", append),
                                         defer.fail(OSError(5, "Input/output error")))[1]
        refused = a.send(alice, "*", "refused")     # one write fails
        a.send(alice, "*", "m3")
        flush(pump)
        self.failureResultOf(refused, OSError)
        self.assertEqual(b.index.wants()["relay1"], [1, [3]])
        return a, b, pump

    def test_a_seq_its_origin_never_journaled_is_recorded_lost_at_the_first_ask(self):
        a, b, pump = self.origin_refuses_seq_2()
        asked = []
        real = b.hub.ask_sync
        b.hub.ask_sync = lambda link, have=None: (asked.append(link), real(link, have))
        with capturedLogs() as events:
            self.assertFalse(b.hub.repair())        # the hole is noted
            flush(pump)
            self.assertTrue(b.hub.repair())         # it lasted: relay1 is asked, says "never"
            flush(pump)
        self.assertEqual(len(asked), 1)
        self.assertEqual(b.index.wants()["relay1"], [3, []])
        lost = [e for e in events if "will never exist" in e["log_format"]]
        self.assertEqual([(e["peer"], e["ranges"]) for e in lost], [("relay1", "2")])
        self.assertEqual([r for r in b.journal.records() if "fed_lost" in r],
                         [{"fed_lost": "relay1", "first": 2, "last": 2}])
        asked.clear()
        for _ in range(1 + fed_index.GIVE_UP_ROUNDS):
            self.assertFalse(b.hub.repair())
            flush(pump)
        self.assertEqual(asked, [], "a lost item is not asked for again")
        self.assertEqual(len([r for r in b.journal.records() if "fed_lost" in r]), 1)
        b.restart()
        self.assertEqual(b.index.wants()["relay1"], [3, []], "the loss is journaled")

    def test_the_origin_keeps_its_refused_seqs_across_a_restart(self):
        a, b, pump = self.origin_refuses_seq_2()
        self.b_link.transport.loseConnection()
        pump.flush()
        a.restart()
        self.assertEqual(a.index.wants()["relay1"], [3, []])     # no hole in its own items
        self.assertEqual(a.index.lost_own, [[2, 2]])
        a.hub.checkpoint()
        checkpoint = a.index.snapshot()
        a.index.load_snapshot(json.loads(json.dumps(checkpoint)))
        self.assertEqual(a.index.lost_own, [[2, 2]])
        _, _, pump = join(a, b)
        flush(pump)
        self.assertEqual(b.index.wants()["relay1"], [3, []])      # told at the link's first sync
        a.send(a.client("alice"), "*", "m4")
        flush(pump)
        self.assertEqual([(r["body"], r["seq"]) for r in b.journal.records() if "body" in r],
                         [("m1", 1), ("m3", 3), ("m4", 4)])     # seq 2 is not handed out again
        self.assertEqual(b.index.wants()["relay1"], [4, []])

    def test_a_peer_answers_lost_only_for_its_own_seqs_and_only_what_the_asker_lacks(self):
        a, b, pump = self.origin_refuses_seq_2()
        link = b.hub.links["relay1"][0]
        b.hub.ask_sync(link, {"relay1": [2, []]})   # holds 2 (as if lost): nothing to say
        frames = []
        real = b.hub._synced
        b.hub._synced = lambda link, frame: (frames.append(frame), real(link, frame))
        flush(pump)
        self.assertNotIn("lost", frames[-1])
        b.hub.ask_sync(link)
        flush(pump)
        self.assertEqual(frames[-1]["lost"], [[2, 2]])
        self.assertEqual(b.index.wants()["relay1"], [3, []])
        c = self.r[2]                 # relay3 asks relay2, which is not relay1's origin: only
        _, _, pump = join(b, c)       # the origin's word counts; relay3 gives up after rounds
        flush(pump)
        self.assertEqual(c.index.wants()["relay1"], [1, [3]])

    def test_a_malformed_lost_list_is_a_bad_frame(self):
        a, b, pump = self.origin_refuses_seq_2()
        link = b.hub.links["relay1"][0]
        for lost in ([[3, 2]], [["2", 2]], [[0, 2]], "2", [[1, 2, 3]], [[2, 2]] * 1001):
            with self.assertRaises(BadFrame):
                b.hub._lost(link, lost)
        self.assertEqual(b.index.wants()["relay1"], [1, [3]])
        b.hub._lost(link, [[2, 9]])                  # only the hole is filled, not seqs to come
        self.assertEqual(b.index.wants()["relay1"], [3, []])

    def test_a_hole_is_not_given_up_while_a_peer_is_down(self):
        b = self.r[1]
        b.index.add("relay1", 1)
        b.index.add("relay1", 3)
        for _ in range(2 * fed_index.GIVE_UP_ROUNDS):
            self.assertEqual(b.index.lasting({("relay1", 1)}, everyone_asked=False), [])
        self.assertEqual(b.index.wants()["relay1"], [1, [3]])
        for _ in range(fed_index.GIVE_UP_ROUNDS - 1):
            self.assertEqual(b.index.lasting({("relay1", 1)}, everyone_asked=True), [])
        self.assertEqual(b.index.lasting({("relay1", 1)}, everyone_asked=True), [("relay1", 2, 2)])


def kinds(records):
    """What each journal record is, in order."""
    return [("message" if "from" in r else "companion" if "ref" in r else
             "receipt" if "receipt" in r else "other", r.get("fed"), r.get("seq"))
            for r in records]


def previous_format(journal):
    """Rewrite ``journal`` as the version before one record per item wrote
    it: a companion record after each message, and an own receipt as the
    router's plain record followed by the federation's copy."""
    lines = []
    for r in journal.records():
        if "from" in r and "fed" in r:
            lines.append(message.journal_line(message.entry_of(r)))
            lines.append(companion_line(r["fed"], r["seq"], r["msg_id"]))
        elif "receipt" in r and r.get("fed") == journal.relay_id:
            lines.append(message.receipt_line(r["receipt"], r["to"], r["timestamp"]))
            lines.append(json.dumps(r).encode())
        else:
            lines.append(json.dumps(r).encode())
    with open(journal.path, "wb") as f:
        f.writelines(line + b"\n" for line in lines)


class OneRecordPerItemTests(ThreeRelays):
    def deliver(self):
        _, _, pump = join(self.r[0], self.r[1])
        alice, bob = self.r[0].client("alice"), self.r[1].client("bob")
        self.r[0].send(alice, "bob", "hi")
        flush(pump)
        self.assertEqual(bob.bodies(), ["hi"])
        return pump

    def test_a_delivered_federated_message_is_one_record_per_item(self):
        # the previous version wrote 3 records at the sender (message, companion,
        # receipt copy) and 4 at the recipient's relay (message, companion,
        # receipt, receipt copy); now each item is one record carrying its seq
        self.deliver()
        expected = [("message", "relay1", 1), ("receipt", "relay2", 1)]
        self.assertEqual(kinds(self.r[0].journal.records()), expected)
        self.assertEqual(kinds(self.r[1].journal.records()), expected)
        line = open(self.r[1].journal.path, "rb").readline()
        self.assertTrue(line.rstrip().endswith(b', "fed": "relay1", "seq": 1}'))

    def test_clients_and_peers_get_the_message_without_its_seq(self):
        pump = self.deliver()
        alice = self.r[0].client("alice")
        self.r[0].send(alice, "dave", "stored")
        flush(pump)
        self.r[1].restart()                # dave's message comes from the replay
        dave = self.r[1].client("dave")
        self.assertEqual(dave.bodies(), ["stored"])
        self.assertEqual([sorted(m) for m in dave.lines],
                         [["body", "from", "msg_id", "seen_by", "timestamp", "to", "type"]])
        _, _, pump = join(self.r[1], self.r[2])
        flush(pump)
        with open(self.r[2].journal.path, "rb") as f:
            lines = [line for line in f if b'"from"' in line]
        self.assertEqual([line.count(b'"fed"') for line in lines], [1, 1])
        self.assertEqual([json.loads(line)["seen_by"] for line in lines],
                         [["relay1", "relay2", "relay3"]] * 2)

    def test_a_journal_of_the_previous_format_replays_and_catches_up(self):
        self.deliver()
        cursors = [r.index.wants() for r in self.r[:2]]
        for relay in self.r[:2]:
            relay.journal.relay_id = relay.id
            previous_format(relay.journal)
            relay.restart()
        self.assertEqual(kinds(self.r[1].journal.records()),
                         [("message", None, None), ("companion", "relay1", 1),
                          ("receipt", None, None), ("receipt", "relay2", 1)])
        self.assertEqual([r.index.wants() for r in self.r[:2]], cursors)
        self.assertEqual([r.index.unsequenced for r in self.r[:2]], [{}, {}])
        self.assertEqual(self.r[1].router.mailboxes.count("bob"), 0)
        self.r[0].client("bob")            # the receipt replayed: nothing is sent again
        # a new relay catches up from the old records, and new ones follow in the new form
        _, _, pump = join(self.r[1], self.r[2])
        flush(pump)
        self.assertEqual(kinds(self.r[2].journal.records()),
                         [("message", "relay1", 1), ("receipt", "relay2", 1)])
        self.assertEqual(self.r[2].router.mailboxes.count("bob"), 0)
        self.assertEqual(self.r[2].index.wants(), cursors[1])
