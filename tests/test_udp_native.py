"""The native relay path (relayd.udp._fastrelay) against the Python one.

The same datagrams from the same client sockets go through a rendezvous
with the native path and one without it: every client must receive the same
bytes in the same order, and the counters must agree.  The protocol runs on
a Clock, so both runs see the same times.
"""
import json
import os
import random
import socket
import subprocess
import sys

from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial import unittest

from relayd.udp import fastpath, packets, stun
from relayd.udp.port import RendezvousPort
from relayd.udp.protocol import RendezvousProtocol
from tests.cbuild import assert_compiles_without_warnings
from tests.test_udp_protocol import udp_settings

NATIVE = fastpath._fastrelay
SKIP = None if NATIVE is not None else "the native extension is not built (no C compiler?)"
START = 1734200000.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "relayd", "udp", "_fastrelay.c")


def relay(target, payload, **extra):
    """A relay packet; an unproven sender's is relayed natively when ``extra`` makes
    it at least as long as its relayed_packet (less the slack)."""
    return json.dumps({"type": "relay", "target": target, "payload": payload, **extra}).encode()


PAYLOADS = ["x" * 118, "", "h\u00e9llo \u4e16\u754c \U0001f600", {"n": [1, -0.5, 2e-3, 1E+9, 0]},
            [True, False, None, {"deep": [[[{}]]]}], 12345678901234567890, -0.0, "\\\"/\b\f\n\r\t"]


def corpus():
    """Relay packets and near-misses: what the fast path must take or leave as Python does."""
    rng = random.Random(15)
    base = []
    for payload in PAYLOADS:
        for ascii_only in (True, False):
            for separators in ((", ", ": "), (",", ":")):
                base.append(json.dumps({"type": "relay", "target": "bob", "payload": payload},
                                       ensure_ascii=ascii_only, separators=separators).encode())
    base += [b' {"payload" :\t[1 , 2]\n, "target":"bob" ,"type":"relay"}\r\n',
             b'{"type": "relay", "target": "b\\u00f6b", "payload": 1}',
             b'{"type": "relay", "target": "b\xc3\xb6b", "payload": 1}',
             b'{"type": "relay", "target": "", "payload": 1}',
             b'{"type": "relay", "target": "bob"}',
             b'{"type": "relay", "target": 7, "payload": 1}',
             b'{"type": "relay", "target": "bob", "payload": 1, "cookie": null}',
             b'{"type": "relay", "target": "bob", "payload": 1, "cookie": "c"}',
             b'{"type": "rel\\u0061y", "target": "bob", "payload": 1}',
             b'{"t\\u0079pe": "relay", "target": "bob", "payload": 1}',
             b'{"type": "ping", "type": "relay", "target": "bob", "payload": 1}',
             b'{"type": "relay", "target": "bob", "payload": 1, "payload": 2}',
             b'{"type": "relay", "target": "bob", "payload": NaN}',
             b'{"type": "relay", "target": "bob", "payload": 01}',
             b'{"type": "relay", "target": "bob", "payload": 1.}',
             b'{"type": "relay", "target": "bob", "payload": "\\ud800"}',
             b'{"type": "relay", "target": "bob", "payload": "\\udc00\\ud800"}',
             b'{"type": "relay", "target": "bob", "payload": "\\ud83d\\ude00"}',
             b'{"type": "relay", "target": "bob", "payload": "\xed\xa0\x80"}',
             b'{"type": "relay", "target": "bob", "payload": "\xc0\xaf"}',
             b'{"type": "relay", "target": "bob", "payload": "\x01"}',
             b'{"type": "relay", "target": "bob", "payload": [1,]}',
             b'{"type": "relay", "target": "bob", "payload": ' + b"[" * 40 + b"]" * 40 + b"}",
             b'{"type": "relay", "target": "bob", "payload": {"a" 1}}',
             b'{"type": "relay", "target": "bob", "payload": 1} x',
             b'[{"type": "relay", "target": "bob", "payload": 1}]',
             b'{"type": "relay", "target": "' + b"n" * 65 + b'", "payload": 1}']
    out = list(base)
    for data in base[:12]:
        out += [data[:cut] for cut in range(len(data))]
        for _ in range(200):
            i = rng.randrange(len(data))
            byte = rng.choice(b'"\\{}[],: \x00\x1f\x7f\x80\xc3\xed\xff0-eEuntfl')
            out.append(data[:i] + bytes([byte]) + data[i + 1:])
    return out


class RelayFieldsTests(unittest.TestCase):
    skip = SKIP

    def test_the_native_parser_takes_nothing_the_python_path_would_not(self):
        taken = 0
        for data in corpus():
            native = NATIVE.relay_fields(data)
            if native is None:
                continue
            python = packets.relay_fields(data)
            self.assertIsNotNone(python, data)
            self.assertEqual(native, (python[0].encode("utf-8"), bytes(python[1])), data)
            taken += 1
        self.assertGreater(taken, 40)

    def test_plain_relays_of_every_payload_are_taken_with_their_bytes(self):
        for payload in PAYLOADS:
            data = relay("bob", payload)
            self.assertEqual(NATIVE.relay_fields(data),
                             (b"bob", json.dumps(payload).encode()), data)


class Client:
    """A loopback socket that records what the rendezvous sends it."""

    def __init__(self, host):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                  socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)

    def take(self):
        out = []
        try:
            while True:
                out.append(self.sock.recv(65536))
        except BlockingIOError:
            return out


class Rendezvous:
    """A RendezvousProtocol on a Clock behind a real RendezvousPort."""

    def __init__(self, host, native, interface=None, **settings):
        self.clock = Clock()
        self.clock.advance(START)
        self.protocol = RendezvousProtocol(
            udp_settings(native_relay="yes" if native else "no", **settings), self.clock)
        self.port = RendezvousPort(0, self.protocol, interface=interface or host,
                                   maxPacketSize=self.protocol.max_datagram + 1, reactor=reactor)
        self.port.startListening()
        self.address = (host, self.port.getHost().port)
        self.expected = 0

    def send(self, client, data):
        client.sock.sendto(data, self.address)
        self.expected += 1

    def register(self, client, name, **extra):
        self.send(client, json.dumps({"type": "register", "name": name, **extra}).encode())

    @defer.inlineCallbacks
    def settle(self):
        """Until the rendezvous has read every datagram sent to it."""
        for _ in range(10000):
            if self.protocol.counts["received"] >= self.expected:
                return
            yield task.deferLater(reactor, 0.001, lambda: None)
        raise AssertionError("the rendezvous did not read what was sent")


class PathsAgree(unittest.TestCase):
    """One script through both paths; ``host`` is the loopback address."""

    skip = SKIP
    host = "127.0.0.1"
    interface = None         # the rendezvous's, when not ``host``

    def setUp(self):
        try:
            self.clients = [Client(self.host) for _ in range(5)]
        except OSError:
            raise unittest.SkipTest(f"no loopback at {self.host}")
        for client in self.clients:
            self.addCleanup(client.sock.close)

    @defer.inlineCallbacks
    def run_both(self, script, **settings):
        """``script(rendezvous, clients)`` (a generator of Deferreds) on both paths:
        (what each client received, counts) of each, native first."""
        results = []
        for native in (True, False):
            rendezvous = Rendezvous(self.host, native, self.interface, **settings)
            try:
                yield from_script(script, rendezvous, self.clients)
                results.append(([c.take() for c in self.clients], rendezvous.protocol.counts,
                                 rendezvous.protocol.fast))
            finally:
                yield rendezvous.port.stopListening()
        (native_out, native_counts, fast), (python_out, python_counts, no_fast) = results
        self.assertIsNone(no_fast)
        self.assertEqual(native_out, python_out)
        self.assertEqual(native_counts, python_counts)
        return native_out, native_counts, fast

    @defer.inlineCallbacks
    def test_relays_errors_and_table_changes(self):
        def script(rv, c):
            rv.register(c[0], "alice")
            rv.register(c[1], "bob")
            rv.register(c[2], "\u00e7arol-" + "l" * 50)
            yield rv.settle()
            for _ in range(3):
                for i, payload in enumerate(PAYLOADS):
                    rv.send(c[0], relay("bob", payload, seq=i))
                    rv.send(c[1], relay("\u00e7arol-" + "l" * 50, payload))
                    rv.send(c[2], relay("bob", payload))      # wrapper beyond the slack
                rv.send(c[0], relay("nobody", 1))
                rv.send(c[0], relay("bob", 1, cookie="stale"))
                rv.send(c[0], b'{"type": "relay", "target": "bob", "payload": NaN}')
                rv.send(c[0], relay("bob", "x" * 960))          # relayed_packet too large
                rv.send(c[0], b" " * 1100)                      # datagram too large
                rv.send(c[3], relay("bob", 1))                  # not registered
                rv.send(c[3], stun.encode(stun.BINDING, stun.REQUEST, b"t" * 12, []))
                yield rv.settle()
                rv.clock.advance(1.5)
            rv.register(c[1], "bob2")
            rv.send(c[0], relay("bob", 1))                      # bob is gone
            rv.send(c[0], relay("bob2", 2))
            yield rv.settle()

        out, counts, fast = yield self.run_both(script, max_datagram=1024)
        self.assertGreater(fast.relay.relayed, 0)
        self.assertEqual(counts["error_unknown_target"], 4)
        relayed = [json.loads(d) for d in out[1] if d.startswith(b'{"type": "relayed_packet"')]
        self.assertEqual([p["payload"] for p in relayed if p["from_peer"] == "alice"][:len(PAYLOADS)],
                         json.loads(json.dumps(PAYLOADS)))

    @defer.inlineCallbacks
    def test_the_rate_limit_is_the_same_on_both_paths(self):
        def script(rv, c):
            rv.register(c[0], "alice")
            rv.register(c[1], "bob")
            yield rv.settle()
            for round_ in range(3):
                for i in range(40):
                    rv.send(c[0], relay("bob", i, source="alice"))
                yield rv.settle()
                rv.clock.advance(0.25)

        _, counts, fast = yield self.run_both(script, rate=20, burst=30)
        self.assertGreater(counts["dropped_rate_limited"], 0)
        self.assertGreater(fast.relay.relayed, 0)

    @defer.inlineCallbacks
    def test_a_sender_relaying_only_natively_stays_registered(self):
        def script(rv, c):
            rv.register(c[0], "alice")
            rv.register(c[1], "bob")
            yield rv.settle()
            for _ in range(20):
                for _ in range(5):
                    rv.send(c[0], relay("bob", "hi", source="alice"))
                    rv.send(c[1], relay("alice", "ho", source="bob"))
                yield rv.settle()
                rv.clock.advance(5)
                rv.protocol.tick()
            self.assertEqual(sorted(p.name for p in rv.protocol.table), ["alice", "bob"])

        _, counts, fast = yield self.run_both(script, stale_after=30)
        self.assertEqual(counts["stale"], 0)
        self.assertGreater(fast.relay.relayed, 100)


class PathsAgreeIPv6(PathsAgree):
    host = "::1"


class PathsAgreeDualStack(PathsAgree):
    """IPv4 clients of a rendezvous on ``::`` (their addresses IPv4-mapped)."""
    interface = "::"


def from_script(script, rendezvous, clients):
    return defer.inlineCallbacks(script)(rendezvous, clients)


class StartTests(unittest.TestCase):
    """Which relay path runs, and the one log line that says so."""

    def listen(self, **settings):
        protocol = RendezvousProtocol(udp_settings(**settings), reactor)
        port = RendezvousPort(0, protocol, interface="127.0.0.1", reactor=reactor)
        with capturedLogs() as events:
            port.startListening()
        self.addCleanup(port.stopListening)
        lines = [e["log_format"].format(**e) for e in events if "relay path" in e["log_format"]]
        return protocol, lines

    def test_native_when_built(self):
        if NATIVE is None:
            raise unittest.SkipTest(SKIP)
        protocol, lines = self.listen()
        self.assertIsNotNone(protocol.fast)
        self.assertEqual(lines, ["udp relay path: native (recvmmsg/sendmmsg)"])

    def test_python_when_turned_off(self):
        protocol, lines = self.listen(native_relay="no")
        self.assertIsNone(protocol.fast)
        self.assertEqual(lines, ["udp relay path: python ([udp] native_relay = no)"])

    def test_python_when_not_built(self):
        self.patch(fastpath, "_fastrelay", None)
        protocol, lines = self.listen()
        self.assertIsNone(protocol.fast)
        self.assertEqual(lines, ["udp relay path: python (the native extension is not built)"])


class ProvenSenders(unittest.TestCase):
    skip = SKIP

    @defer.inlineCallbacks
    def test_proven_senders_relay_short_payloads_natively_until_no_longer_proven(self):
        alice, bob = Client("127.0.0.1"), Client("127.0.0.1")
        self.addCleanup(alice.sock.close)
        self.addCleanup(bob.sock.close)
        rv = Rendezvous("127.0.0.1", True, stale_after=30)
        self.addCleanup(rv.port.stopListening)
        rv.send(alice, json.dumps({"type": "ping", "cookie": "", "pad": "x" * 200}).encode())
        yield rv.settle()
        cookie = json.loads(alice.take()[-1])["cookie"]
        rv.register(alice, "alice", cookie=cookie)
        rv.register(bob, "bob")
        yield rv.settle()
        for _ in range(10):
            rv.send(alice, relay("bob", 1))           # the wrapper is longer than the slack
        yield rv.settle()
        self.assertEqual(rv.protocol.fast.relay.relayed, 9)
        self.assertEqual(len([d for d in bob.take() if b"relayed_packet" in d]), 10)
        rv.clock.advance(31)
        rv.protocol.tick()                            # alice is stale, no longer proven
        self.assertEqual(rv.protocol.fast.sources, {})


class BuildTests(unittest.TestCase):
    def test_no_compiler_skips_the_extension_without_failing_the_install(self):
        out = os.path.abspath(self.mktemp())
        done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "-b", out,
                               "-t", out + "-tmp"], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "CC": "false"}, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn('building extension "relayd.udp._fastrelay" failed', done.stderr)
        self.assertFalse(os.path.exists(out))

    def test_the_source_compiles_without_warnings(self):
        assert_compiles_without_warnings(self, SOURCE)


class OnTheReactorClock(unittest.TestCase):
    """The daemon's setting: the protocol on the reactor's clock, so the native
    call waits for datagrams while the reactor has nothing else to do."""

    skip = SKIP

    @defer.inlineCallbacks
    def test_relays_flow_and_the_reactor_keeps_its_timers(self):
        protocol = RendezvousProtocol(udp_settings(), reactor)
        port = RendezvousPort(0, protocol, interface="127.0.0.1",
                              maxPacketSize=protocol.max_datagram + 1, reactor=reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        if port._epoll is None:
            raise unittest.SkipTest("not the epoll reactor: the native call does not wait")
        alice, bob = Client("127.0.0.1"), Client("127.0.0.1")
        self.addCleanup(alice.sock.close)
        self.addCleanup(bob.sock.close)
        server = ("127.0.0.1", port.getHost().port)
        for client, name in ((alice, "alice"), (bob, "bob")):
            client.sock.sendto(json.dumps({"type": "register", "name": name}).encode(), server)
        timer = task.deferLater(reactor, 0.05, lambda: "fired")
        received = []
        for round_ in range(50):
            for i in range(4):
                alice.sock.sendto(relay("bob", round_ * 4 + i, source="alice"), server)
            yield task.deferLater(reactor, 0.001, lambda: None)
            received += [d for d in bob.take() if d.startswith(b'{"type": "relayed_packet"')]
        self.assertEqual((yield timer), "fired")
        for _ in range(1000):
            if len(received) == 200:
                break
            yield task.deferLater(reactor, 0.001, lambda: None)
            received += [d for d in bob.take() if d.startswith(b'{"type": "relayed_packet"')]
        self.assertEqual([json.loads(d)["payload"] for d in received], list(range(200)))
        self.assertGreater(protocol.fast.relay.relayed, 150)
