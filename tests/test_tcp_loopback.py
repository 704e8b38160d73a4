"""The TCP relay service on a real loopback socket, in this process."""
import json
import os

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from relayd import config
from relayd.daemon import build


class Collector(LineReceiver):
    delimiter = b"\n"

    def __init__(self):
        self.frames = []
        self.waiting = []
        self.lost = defer.Deferred()

    def lineReceived(self, line):
        self.frames.append(json.loads(line))
        ready = [d for count, d in self.waiting if len(self.frames) >= count]
        self.waiting = [(count, d) for count, d in self.waiting if len(self.frames) < count]
        for d in ready:
            d.callback(self.frames)

    def wait(self, count):
        if len(self.frames) >= count:
            return defer.succeed(self.frames)
        d = defer.Deferred()
        self.waiting.append((count, d))
        return d

    def connectionLost(self, reason):
        self.lost.callback(None)

    def request(self, **obj):
        self.sendLine(json.dumps(obj).encode())


class LoopbackTests(unittest.TestCase):
    timeout = 20

    def setUp(self):
        data_dir = os.path.abspath(self.mktemp())
        settings = config.parse(f"[relay]\ndata_dir = {data_dir}\n"
                                "[tcp]\nlisten = tcp:0:interface=127.0.0.1\n")
        self.daemon = build(settings, reactor)
        self.daemon.privilegedStartService()
        self.daemon.startService()
        self.addCleanup(self.daemon.stopService)
        tcp = self.daemon.getServiceNamed("tcp")
        self.port = tcp.services[0]._waitingForPort.result.getHost().port

    @defer.inlineCallbacks
    def connect(self, peer_id):
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Collector())
        self.addCleanup(lambda: (client.transport.loseConnection(), client.lost)[1])
        client.request(type="hello", id=peer_id)
        yield client.wait(1)
        return client

    @defer.inlineCallbacks
    def test_message_round_trip_and_journal(self):
        alice = yield self.connect("alice")
        bob = yield self.connect("bob")
        alice.request(type="send", to="bob", body="over loopback", nonce="n1")
        frames = yield bob.wait(2)
        self.assertEqual(frames[1]["body"], "over loopback")
        acks = yield alice.wait(2)
        self.assertEqual(acks[1]["msg_id"], frames[1]["msg_id"])
        self.assertEqual(self.daemon.stats()["tcp"]["messages_in"], 1)
        journal_dir = os.path.join(self.daemon.settings.relay.data_dir, "journal")
        lines = [json.loads(line) for name in sorted(os.listdir(journal_dir))
                 for line in open(os.path.join(journal_dir, name), "rb")]
        self.assertIn(frames[1]["msg_id"], [r.get("msg_id") for r in lines])
