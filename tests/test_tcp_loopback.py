"""The TCP relay service on a real loopback socket, in this process."""
import json
import os
import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from relayd import config
from relayd.daemon import build
from relayd.journal import segments
from relayd.journal.replay import check
from relayd.tcp.service import CLOSE_GRACE


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


def start_daemon(testcase, tcp="", extra=""):
    """A started daemon in this process with the relay on a free loopback port:
    ``(daemon, port)``; ``tcp`` adds [tcp] keys, ``extra`` more sections."""
    data_dir = os.path.abspath(testcase.mktemp())
    settings = config.parse(f"[relay]\ndata_dir = {data_dir}\n"
                            f"[tcp]\nlisten = tcp:0:interface=127.0.0.1\n{tcp}{extra}")
    daemon = build(settings, reactor)
    daemon.privilegedStartService()
    daemon.startService()
    testcase.addCleanup(daemon.stopService)
    listener = daemon.getServiceNamed("tcp").services[0]
    return daemon, listener._waitingForPort.result.getHost().port


class LoopbackTests(unittest.TestCase):
    timeout = 20

    def setUp(self):
        self.daemon, self.port = start_daemon(self)

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
        records = []
        for segment in segments.scan(journal_dir):
            with open(os.path.join(journal_dir, segment.name), "rb") as f:
                records.extend(check(line)[0] for line in f)
        self.assertIn(frames[1]["msg_id"], [r.get("msg_id") for r in records])


class SameTurnTests(unittest.TestCase):
    """A plain TCP reader gets its copy in the reactor turn that read the
    sender's line, before the message is durable; order holds when the
    kernel takes only part of a write."""
    timeout = 30

    def setUp(self):
        self.daemon, self.port = start_daemon(self, extra="[ratelimit]\nmessages = 100000\n")

    connect = LoopbackTests.connect

    def raw_reader(self, peer_id):
        """A blocking socket identified as ``peer_id`` (read by the test
        itself, so nothing it gets waits for the reactor)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(json.dumps({"type": "hello", "id": peer_id}).encode() + b"\n")
        return sock

    @defer.inlineCallbacks
    def test_a_copy_leaves_before_the_reactor_turns_again(self):
        alice = yield self.connect("alice")
        bob = self.raw_reader("bob")
        router = self.daemon.router
        while "bob" not in router.sessions:
            yield deferLater(reactor, 0.01, lambda: None)
        bob.recv(65536)                                  # the welcome
        line = json.dumps({"type": "send", "to": "bob", "body": "now"}).encode() + b"\n"
        router.sessions["alice"].dataReceived(line)      # as the reactor would, then no turn
        got = json.loads(bob.recv(65536))
        self.assertEqual((got["type"], got["body"]), ("message", "now"))
        self.assertNotIn("bob", router.mailboxes, "settled: its bytes are in the kernel")
        acks = yield alice.wait(2)
        self.assertEqual(acks[1]["msg_id"], got["msg_id"])

    @defer.inlineCallbacks
    def test_order_holds_past_what_the_kernel_takes_at_once(self):
        alice = yield self.connect("alice")
        bob = yield self.connect("bob")
        bob.MAX_LENGTH = 2 ** 20
        bob.transport.pauseProducing()
        count = 400
        alice.transport.write(b"".join(
            json.dumps({"type": "send", "to": "*", "body": "%04d" % i + "x" * 4000}).encode() + b"\n"
            for i in range(count)))
        yield alice.wait(1 + count)
        bob.transport.resumeProducing()
        frames = yield bob.wait(1 + count)
        self.assertEqual([f["body"][:4] for f in frames[1:]], ["%04d" % i for i in range(count)])


    @defer.inlineCallbacks
    def test_lines_for_a_session_whose_connection_was_lost_are_dropped(self):
        # the router may hold copies for a session until the journal batch
        # ends, after its connection was lost; handing them to the gone
        # transport raised in the journal's listener, and nothing was acked
        # after that (bench.federation's second run delivered nothing)
        bob = yield self.connect("bob")
        session = self.daemon.router.sessions["bob"]
        bob.transport.abortConnection()
        yield bob.lost
        while not session.transport.disconnected:
            yield deferLater(reactor, 0.01, lambda: None)
        sent = self.daemon.getServiceNamed("tcp").bytes_sent
        session.deliver_lines([b'{"type": "message"}\n'])
        self.assertEqual(self.daemon.getServiceNamed("tcp").bytes_sent, sent)


class SmallBuffers(unittest.TestCase):
    """A daemon with a 64 KiB output buffer and a rate limit load does not reach."""

    def setUp(self):
        self.daemon, self.port = start_daemon(
            self, tcp="output_buffer = 64KiB\n", extra="[ratelimit]\nmessages = 100000\n")

    connect = LoopbackTests.connect


class StoredMailTests(SmallBuffers):
    """More stored mail than ``output_buffer`` reaches a peer that reads it."""
    timeout = 60

    @defer.inlineCallbacks
    def test_all_stored_mail_is_delivered_in_order(self):
        count = 3000
        alice = yield self.connect("alice")
        alice.transport.write(b"".join(
            json.dumps({"type": "send", "to": "zed", "body": "%05d" % i + "x" * 200}).encode() + b"\n"
            for i in range(count)))
        yield alice.wait(1 + count)
        zed = yield self.connect("zed")
        self.assertEqual(zed.frames[0]["pending"], count)
        frames = yield zed.wait(1 + count)
        self.assertEqual([f.get("body", "")[:5] for f in frames[1:]], ["%05d" % i for i in range(count)])

    @defer.inlineCallbacks
    def test_a_reader_that_stops_is_dropped_as_slow_consumer(self):
        alice = yield self.connect("alice")
        bob = yield self.connect("bob")
        bob.MAX_LENGTH = 2 ** 20
        bob.transport.pauseProducing()          # bob stops reading
        errors = self.daemon.registry.get_sample_value
        sent = 0
        while sent < 800 and not errors("relayd_tcp_errors_total", {"code": "slow_consumer"}):
            alice.request(type="send", to="bob", body="x" * 50000)      # under output_buffer
            sent += 1
            yield alice.wait(1 + sent)
        self.assertEqual(errors("relayd_tcp_errors_total", {"code": "slow_consumer"}), 1.0)
        bob.transport.resumeProducing()
        started = reactor.seconds()
        yield bob.lost
        self.assertLess(reactor.seconds() - started, CLOSE_GRACE, "closed once drained")
        self.assertEqual(bob.frames[-1]["error"], "slow_consumer")


class FlowControlTests(SmallBuffers):
    """A pipelining sender slows down to its readers' pace; nobody is dropped."""
    timeout = 120

    @defer.inlineCallbacks
    def test_ten_thousand_in_flight_to_ten_readers(self):
        count, readers = 10000, 10
        clients = []
        for i in range(readers):
            client = yield self.connect(f"r{i}")
            clients.append(client)
        alice = yield self.connect("alice")
        alice.transport.write(b"".join(
            json.dumps({"type": "send", "to": "*", "body": "%05d" % i}).encode() + b"\n"
            for i in range(count)))
        yield alice.wait(1 + count)
        for client in clients:
            frames = yield client.wait(1 + count)
            self.assertEqual([f["body"] for f in frames[1:]], ["%05d" % i for i in range(count)])
        tcp = self.daemon.stats()["tcp"]
        self.assertEqual((tcp["connections"], tcp["congested"], tcp["throttled"]), (readers + 1, 0, 0))
        self.assertIsNone(self.daemon.registry.get_sample_value(
            "relayd_tcp_errors_total", {"code": "slow_consumer"}))


class BacklogTests(unittest.TestCase):
    def backlog(self, tcp="", listen="tcp:0:interface=127.0.0.1"):
        data_dir = os.path.abspath(self.mktemp())
        daemon = build(config.parse(f"[relay]\ndata_dir = {data_dir}\n[tcp]\nlisten = {listen}\n{tcp}"),
                       reactor)
        daemon.privilegedStartService()
        daemon.startService()
        self.addCleanup(daemon.stopService)
        return daemon.getServiceNamed("tcp").services[0]._waitingForPort.result.backlog

    def test_relayd_sets_the_listen_backlog(self):
        self.assertEqual(self.backlog(), 1024)
        self.assertEqual(self.backlog("backlog = 77\n"), 77)
        self.assertEqual(self.backlog(listen="tcp:0:interface=127.0.0.1:backlog=33"), 33)
