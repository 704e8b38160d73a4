"""Numbers from untrusted input: 1e400, NaN, Infinity, huge or non-whole
numbers get a clear error on every path and break nothing."""
import json

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial import unittest

from relayd import finitejson
from relayd.udp import packets
from tests.test_federation_link import Relay, join
from tests.test_tcp_loopback import Collector, start_daemon

BAD_CURSORS = [
    b'[1e400, []]', b'[0, [1e400]]', b'[-1e400, []]', b'[NaN, []]', b'[Infinity, []]',
    b'["5", []]', b'[1.5, []]', b'[true, []]', b'[-1, []]', b'[0, [0]]',
    b'[' + str(2 ** 70).encode() + b', []]', b'[0, [' + str(2 ** 64).encode() + b']]',
    b'[0]', b'[0, [], 1]', b'5', b'null', b'{"low": 0}', b'[0, "12"]',
]


class FederationSyncTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.r = [Relay(self, "relay1", self.clock), Relay(self, "relay2", self.clock)]

    def test_bad_cursors_are_bad_frames_and_the_link_stays_up(self):
        client, server, pump = join(self.r[0], self.r[1])
        with capturedLogs() as events:
            for cursor in BAD_CURSORS:
                client.send_raw(b'{"type": "sync", "have": {"relay1": ' + cursor + b'}}\n')
            client.send_raw(b'{"type": "sync", "have": []}\n')
            client.send_raw(b'{"type": "sync", "have": {"relay\\u202e": [0, []]}}\n')
            pump.flush()
        reported = [e["error"] for e in events if e.get("log_format", "").startswith(
            "federation: {peer} reports")]
        self.assertEqual(reported, ["bad_frame"] * (len(BAD_CURSORS) + 2))
        self.assertEqual((client.state, server.state), ("up", "up"))
        self.assertEqual(self.r[1].hub.metrics.bad_frames.labels("relay1")._value.get(),
                         len(BAD_CURSORS) + 2)
        # the link still works: a good sync is answered
        self.r[1].send(self.r[1].client("bob"), "*", "hello")
        pump.flush()
        client.send({"type": "sync", "have": {}})
        pump.flush()
        self.assertEqual(len(self.r[0].message_ids()), 1)

    def test_warnings_about_bad_frames_are_bounded(self):
        client, server, pump = join(self.r[0], self.r[1])
        with capturedLogs() as events:
            for _ in range(500):
                client.send_raw(b'{"type": "sync", "have": {"relay1": [1e400, []]}}\n')
            pump.flush()
        warnings = [e for e in events if e.get("log_namespace", "").endswith("hub.Hub")
                    and "bad" in e.get("log_format", "")]
        self.assertLessEqual(len(warnings), 25)
        self.assertEqual(self.r[1].hub.metrics.bad_frames.labels("relay1")._value.get(), 500)

    def test_huge_item_seqs_are_bad_items(self):
        client, server, pump = join(self.r[0], self.r[1])
        entry = {"msg_id": "ab" * 32, "from": "alice", "to": "*", "body": "hi",
                 "seen_by": ["relay1"], "timestamp": 1.0}
        client.send({"type": "msg", "origin": "relay1", "seq": 2 ** 64, "entry": entry})
        pump.flush()
        self.assertEqual(server.state, "up")
        self.assertEqual(self.r[1].index.wants(), {})


class FiniteJsonTests(unittest.TestCase):
    def test_non_finite_numbers_are_malformed_json(self):
        for text in ('{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}', '{"a": 1e400}',
                     '[-1e999]', '{"a": ' + "9" * 5000 + "}"):
            self.assertRaises(ValueError, finitejson.loads, text)
        self.assertEqual(finitejson.loads(b'{"a": 1.5e300, "b": -2, "c": 10}'),
                         {"a": 1.5e300, "b": -2, "c": 10})

    def test_udp_packets_with_non_finite_numbers_are_bad_json(self):
        for data in (b'{"type": "register", "name": "a", "t": NaN}',
                     b'{"type": "relay", "target": "b", "payload": {"x": 1e400}}'):
            with self.assertRaises(packets.PacketError) as e:
                packets.decode(data)
            self.assertEqual(e.exception.code, "bad_json")


class TcpTests(unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_non_finite_numbers_get_bad_json_and_the_connection_goes_on(self):
        daemon, port = start_daemon(self)
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collector())
        self.addCleanup(lambda: (client.transport.loseConnection(), client.lost)[1])
        client.request(type="hello", id="alice")
        yield client.wait(1)
        for line in (b'{"type": "ping", "req": NaN}', b'{"type": "ping", "req": 1e400}',
                     b'{"type": "history", "limit": Infinity}',
                     b'{"type": "send", "to": "bob", "body": "x", "req": -Infinity}'):
            client.transport.write(line + b"\n")
        client.request(type="ping", req=7)
        frames = yield client.wait(6)
        self.assertEqual([f.get("error") for f in frames[1:5]], ["bad_json"] * 4)
        self.assertEqual(frames[5]["type"], "pong")
        self.assertEqual(frames[5]["req"], 7)
        for frame in frames:          # every reply is strict JSON
            json.loads(json.dumps(frame, allow_nan=False))
