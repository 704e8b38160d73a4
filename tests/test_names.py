"""One rule for ids and names on every path, and one escaping helper for people."""
import json
from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.trial import unittest

from relayd import config, names
from relayd.core import message
from relayd.federation import frames
from relayd.federation.peers import PeerError, parse_relays_json
from relayd.ops.commands import AdminCommands
from relayd.udp.protocol import RendezvousProtocol
from tests.test_ops_support import NO_SSH, OpsRelay
from tests.seedclient import LineClient, SeedClient
from tests.test_tcp_loopback import Collector, start_daemon

# every kind of character the rule refuses, with a name for failure messages
REFUSED = {
    "lone surrogate": "a\ud800b",
    "low surrogate": "\udc80",
    "C0 control": "a\x01b",
    "DEL": "a\x7fb",
    "C1 control (NEL)": "a\x85b",
    "C1 control (CSI)": "a\x9bb",
    "bidi override": "admin\u202egnp.exe",
    "bidi isolate": "a\u2066b",
    "zero-width space": "ad\u200bmin",
    "zero-width joiner": "a\u200db",
    "byte order mark": "\ufeffalice",
    "soft hyphen": "ali\u00adce",
    "line separator": "a\u2028b",
    "paragraph separator": "a\u2029b",
    "no-break space": "a\u00a0b",
    "ideographic space": "a\u3000b",
    "private use": "a\ue000b",
    "unassigned": "a\U000e0fffb",
    "not NFC (e + combining acute)": "caf\u0065\u0301",
    "leading space": " alice",
    "trailing space": "alice ",
    "too long": "x" * (names.MAX_NAME + 1),
    "empty": "",
}
ACCEPTED = ["alice", "Bob 2", "caf\u00e9", "\u65e5\u672c\u8a9e", "\u0645\u0631\u062d\u0628\u0627",
            "emoji\U0001f600", "a-b_c.d@e", "x" * names.MAX_NAME]


class RuleTests(unittest.TestCase):
    def test_refused_and_accepted(self):
        self.assertEqual([k for k, v in REFUSED.items() if names.valid(v)], [])
        self.assertEqual([v for v in ACCEPTED if not names.valid(v)], [])
        self.assertIsNotNone(names.problem(None))
        self.assertIsNotNone(names.problem(5))

    def test_peer_ids_and_rooms_delegate_to_the_rule(self):
        for kind, value in REFUSED.items():
            self.assertIsNotNone(message.valid_peer_id(value), kind)
            self.assertIsNotNone(message.valid_room(value), kind)
        for value in ACCEPTED:
            self.assertIsNone(message.valid_peer_id(value), value)
            self.assertIsNone(message.valid_room(value), value)
        self.assertIn("surrogate", message.valid_peer_id("a\ud800"))
        self.assertIn("NFC", message.valid_room("caf\u0065\u0301"))

    def test_relay_names_in_config_and_relays_json(self):
        with self.assertRaises(config.ConfigError) as e:
            config.parse("[relay]\nid = relay\u202e1\n")
        self.assertIn("[relay] id", str(e.exception))
        with self.assertRaises(config.ConfigError):
            config.parse("[peer:a\u200bb]\nendpoint = tcp:127.0.0.1:1\n")
        with self.assertRaises(PeerError):
            parse_relays_json(json.dumps([{"id": "r\u2028", "ip": "127.0.0.1", "port": 1}]),
                              "relays.json", "me")


class ShownTests(unittest.TestCase):
    def test_valid_names_show_as_themselves(self):
        for value in ACCEPTED:
            self.assertEqual(names.shown(value), value)

    def test_unprintable_characters_are_escaped(self):
        self.assertEqual(names.shown("a\ud800b"), "a\\ud800b")
        self.assertEqual(names.shown("x\u202ey\n\x85"), "x\\u202ey\\n\\x85")
        self.assertEqual(names.shown("a\u2028b").encode("ascii"), b"a\\u2028b")

    def test_long_text_is_cut(self):
        self.assertEqual(names.shown("x" * 1000, 10), "x" * 10 + "...")
        self.assertEqual(names.shown(123), "123")


class TcpPathTests(unittest.TestCase):
    """The JSON-lines and the seed dialect, over a real loopback socket."""
    timeout = 20

    def setUp(self):
        self.daemon, self.port = start_daemon(self)

    @defer.inlineCallbacks
    def client(self):
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port),
                                       Collector())
        self.addCleanup(lambda: (client.transport.loseConnection(), client.lost)[1])
        return client

    def raw_line(self, client, text):
        # json.dumps writes a lone surrogate as the escape "\ud800": valid JSON text
        client.transport.write(text.encode() + b"\n")

    @defer.inlineCallbacks
    def test_hello_with_a_refused_id_is_bad_id(self):
        client = yield self.client()
        for count, value in enumerate(REFUSED.values(), 1):
            client.request(type="hello", id=value)
            frames_ = yield client.wait(count)
            self.assertEqual(frames_[-1]["error"], "bad_id", ascii(value))
        self.assertEqual(self.daemon.router.sessions, {})
        self.raw_line(client, '{"type": "hello", "id": "x\\ud800"}')
        frames_ = yield client.wait(len(REFUSED) + 1)
        self.assertEqual(frames_[-1]["error"], "bad_id")

    @defer.inlineCallbacks
    def test_targets_and_rooms_follow_the_rule(self):
        client = yield self.client()
        client.request(type="hello", id="caf\u00e9")
        yield client.wait(1)
        client.request(type="send", to="bob\u202e", body="x")
        client.request(type="send", room="r\u2029", body="x")
        client.request(type="join", room="r\x9b")
        client.request(type="join", room="caf\u0065\u0301")
        got = yield client.wait(5)
        self.assertEqual([f.get("error") for f in got[1:]], ["bad_request"] * 4)
        self.assertEqual(self.daemon.router.members, {})

    def test_seed_dialect_id_follows_the_rule(self):
        seed = SeedClient(self.port, "eve\u202e")
        self.addCleanup(seed.close)
        d = threads.deferToThread(seed.read_objects, 1, 5.0)     # the daemon runs on this thread

        def check(objects):
            self.assertEqual([o.get("error") for o in objects], ["bad_id"])
            self.assertEqual(self.daemon.router.sessions, {})
        return d.addCallback(check)


class UdpPathTests(unittest.TestCase):
    def test_register_with_a_refused_name_registers_nothing(self):
        proto = RendezvousProtocol(config.parse("[udp]\n").udp, Clock())
        proto.makeConnection(FakeDatagramTransport())
        for value in REFUSED.values():
            if 0 < len(value) <= 64:
                proto.datagramReceived(json.dumps({"type": "register", "name": value,
                                                   "pad": "x" * 200}).encode(),
                                       ("192.0.2.1", 5001))
        self.assertEqual(len(proto.table), 0)
        proto.datagramReceived(json.dumps({"type": "register", "name": "caf\u00e9"}).encode(),
                               ("192.0.2.1", 5001))
        self.assertEqual(len(proto.table), 1)


class FederationPathTests(unittest.TestCase):
    ENTRY = {"from": "alice", "to": "bob", "body": "x", "timestamp": 1.0,
             "seen_by": ["relay1"], "msg_id": "ab" * 32}

    def test_entries_follow_the_rule(self):
        frames.check_entry(dict(self.ENTRY))
        frames.check_entry(dict(self.ENTRY, to="#caf\u00e9", room="caf\u00e9"))
        frames.check_entry(dict(self.ENTRY, to="*"))
        for bad in ({"from": "a\ud800"}, {"to": "b\u202e"}, {"to": "#r\x85", "room": "r"},
                    {"room": "r\u2028"}, {"seen_by": ["relay\u200b1"]}, {"from": "x||y"}):
            with self.assertRaises(frames.BadItem, msg=ascii(bad)):
                frames.check_entry(dict(self.ENTRY, **bad))
        with self.assertRaises(frames.BadItem):
            frames.item_key({"origin": "relay\u202e", "seq": 1})
        with self.assertRaises(frames.BadItem):
            frames.check_receipt({"msg_id": "ab" * 32, "to": "bob\u2029", "timestamp": 1})


class ConsoleTests(unittest.TestCase):
    """What a person reads: the console escapes whatever a session holds."""

    def test_clients_and_rooms_escape_names(self):
        class Router:
            def clients(self):
                return [{"id": "eve\u202e\ud800", "ip": "127.0.0.1", "rooms": ["r\x85"]}]

            def rooms(self):
                return {"r\u2028": ["eve\ud800"]}

        daemon = type("Daemon", (), {"router": Router()})()
        commands = AdminCommands(daemon)
        out = commands.clients() + "\n" + commands.rooms()
        out.encode("ascii")     # nothing unprintable reaches the terminal
        self.assertIn("eve\\u202e\\ud800", out)
        self.assertIn("r\\x85", out)
        self.assertIn("r\\u2028 (1): eve\\ud800", out)


class DaemonTests(unittest.TestCase):
    """End to end: ids refused on the wire keep the console and the text log whole."""
    timeout = 120
    skip = NO_SSH

    def test_console_answers_and_text_log_keeps_lines_after_hostile_ids(self):
        ops = OpsRelay(self)
        port = ops.ports["tcp"]
        for hostile in ("mallory\ud800", "mallory\u202e", "mallory\x85", "mallory\u2028"):
            client = LineClient(port)
            client.sock.sendall(b'{"type": "hello", "id": ' + json.dumps(hostile).encode() + b"}\n")
            self.assertEqual(client.read()["error"], "bad_id", ascii(hostile))
            client.close()
        alice = LineClient(port, "alice")
        self.addCleanup(alice.close)
        alice.request(type="join", room="lobby")
        alice.read()
        code, out, err = ops.admin("clients()")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("alice", out)
        self.assertNotIn("mallory", out)
        code, out, _ = ops.admin("rooms()")
        self.assertEqual((code, out), (0, "lobby (1): alice\n"))
        log = ops.relay.log()
        self.assertIn("client alice identified", log)
        self.assertNotIn("mallory", log)
