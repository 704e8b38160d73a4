"""Relay logic in memory (iosim) on a Clock: expiry, duration, timeouts, idle, early bytes."""
import itertools

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.test import iosim
from twisted.trial import unittest

from relayd import config
from relayd.libp2p import messages as m, varint
from relayd.libp2p.events import RelayEvents
from relayd.libp2p.peer import Peer, Pipe, Request
from relayd.libp2p.peerid import KeyPair
from relayd.libp2p.relay import Relay
from relayd.libp2p.service import Libp2pFactory
from relayd.libp2p.yamux import StreamHandler

PORTS = itertools.count(40000)


class Harness:
    def __init__(self, extra=""):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.settings = config.parse("[libp2p]\n" + extra).libp2p
        self.keypair = KeyPair(Ed25519PrivateKey.generate())
        self.registry = CollectorRegistry()
        self.events = RelayEvents(self.registry, self.clock)
        self.relay = Relay(self.clock, self.settings, self.keypair, self.events,
                           lambda: [f"/ip4/127.0.0.1/tcp/4001/p2p/{self.keypair.peer_id}"])
        self.factory = Libp2pFactory(self.clock, self.keypair, self.relay, self.settings, None)
        self.pumps = []

    def link(self, client_protocol):
        server = self.factory.buildProtocol(None)
        peer_addr = IPv4Address("TCP", "10.0.0.1", next(PORTS))
        host_addr = IPv4Address("TCP", "127.0.0.1", 4001)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True, host_addr, peer_addr),
            client_protocol, iosim.FakeTransport(client_protocol, False, peer_addr, host_addr),
            greet=False)
        self.pumps.append(pump)
        self.settle()
        return server

    def peer(self):
        peer = Peer(self.clock, KeyPair(Ed25519PrivateKey.generate()))
        self.link(peer.buildProtocol(None))
        return peer

    def settle(self):
        for _ in range(1000):
            if not any([p.pump() for p in self.pumps]):
                return
        raise AssertionError("connections never settled")

    def advance(self, seconds):
        self.clock.advance(seconds)
        self.settle()

    def result(self, d):
        self.settle()
        out = []
        d.addBoth(out.append)
        assert out, "no result yet"
        return out[0]

    def metrics(self):
        return generate_latest(self.registry).decode()


class Mute(StreamHandler):
    """A target that accepts the STOP stream and never answers."""

    def __init__(self, connection):
        pass


class TimerTests(unittest.TestCase):
    def test_reservation_expires_unless_renewed(self):
        h = Harness("reservation_ttl = 60\n")
        a = h.peer()
        status = h.result(a.reserve())[2]
        self.assertEqual(status, m.OK)
        h.advance(59)
        self.assertEqual(h.result(a.reserve())[2], m.OK)          # renewed: a fresh 60 s
        h.advance(59)
        self.assertEqual(len(h.relay.reservations()), 1)
        self.assertEqual(h.relay.reservations()[0]["expires"], 1_700_000_000 + 59 + 60)
        h.advance(2)
        self.assertEqual(h.relay.reservations(), [])
        self.assertIn('relayd_libp2p_reservation_events_total{event="expired"} 1.0', h.metrics())
        self.assertIn('relayd_libp2p_reservation_events_total{event="renewed"} 1.0', h.metrics())

    def test_circuit_duration_limit_resets_both_sides(self):
        h = Harness("circuit_duration = 10\n")
        a, b = h.peer(), h.peer()
        h.result(a.reserve())
        arriving = a.next_circuit()
        pipe_b = Pipe()
        self.assertEqual(h.result(b.connect(a.keypair.peer_id, pipe_b))[2], m.OK)
        pipe_a = h.result(arriving)
        pipe_b.stream.write(b"hello")
        h.settle()
        self.assertEqual(bytes(pipe_a.received), b"hello")
        h.advance(9)
        self.assertFalse(pipe_a.done.called)
        h.advance(1)
        self.assertEqual((h.result(pipe_a.done), h.result(pipe_b.done)), (True, True))
        self.assertEqual(h.relay.circuits(), [])
        self.assertIn('relayd_libp2p_circuits_closed_total{reason="duration-limit"} 1.0', h.metrics())

    def test_target_that_never_answers_stop(self):
        h = Harness("connect_timeout = 5\n")
        a, b = h.peer(), h.peer()
        a.handlers[m.STOP_PROTOCOL_ID] = Mute
        h.result(a.reserve())
        reply = b.connect(a.keypair.peer_id, Pipe())
        h.settle()
        self.assertFalse(reply.called)
        self.assertEqual(len(h.relay.circuits()), 1)               # the slot is held meanwhile
        h.advance(5)
        self.assertEqual(h.result(reply)[2], m.CONNECTION_FAILED)
        self.assertEqual(h.relay.circuits(), [])
        self.assertIn('reason="connection-failed"', h.metrics())

    def test_initiator_gone_while_stop_runs(self):
        h = Harness()
        a, b = h.peer(), h.peer()
        a.handlers[m.STOP_PROTOCOL_ID] = Mute
        h.result(a.reserve())
        reply = b.connect(a.keypair.peer_id, Pipe())
        h.settle()
        b.connection.transport.loseConnection()
        h.settle()
        self.assertIsInstance(h.result(reply).value, ConnectionError)
        self.assertEqual(h.relay.circuits(), [])
        self.assertIn('reason="connection-failed"', h.metrics())

    def test_handshake_timeout(self):
        h = Harness("handshake_timeout = 3\n")
        server = h.link(Protocol())
        h.advance(2.9)
        self.assertEqual(len(h.factory.connections), 1)
        h.advance(0.2)
        self.assertTrue(server.transport.disconnecting or server.transport.disconnected)
        self.assertEqual(server.close_reason, "handshake timeout")

    def test_idle_connections_without_reservation_are_closed(self):
        h = Harness("idle_timeout = 60\n")
        a, b = h.peer(), h.peer()
        h.result(a.reserve())
        idle = Pipe()
        b.connection.open_protocol("/ipfs/ping/1.0.0", idle)
        h.settle()
        h.factory.sweep_idle(h.clock.seconds())
        h.advance(60)
        h.factory.sweep_idle(h.clock.seconds())
        self.assertEqual(len(h.factory.connections), 2)       # a holds a reservation, b a stream
        idle.stream.reset()
        h.settle()
        h.factory.sweep_idle(h.clock.seconds())
        h.advance(59)
        h.factory.sweep_idle(h.clock.seconds())
        self.assertEqual(len(h.factory.connections), 2)
        h.advance(1)
        h.factory.sweep_idle(h.clock.seconds())
        h.settle()
        self.assertEqual(h.relay.reservations()[0]["peer"], str(a.keypair.peer_id))
        self.assertEqual([c.remote_peer for c in h.factory.connections], [a.keypair.peer_id])

    def test_bytes_sent_before_the_circuit_is_up_are_kept(self):
        h = Harness()
        a, b = h.peer(), h.peer()
        h.result(a.reserve())
        arriving = a.next_circuit()
        pipe_b = Pipe()

        class Eager(Request):
            def stream_opened(self, stream):
                self.stream = stream
                stream.write(varint.prefixed(self.message) + b"early bytes")
        request = Eager(m.hop(m.CONNECT, peer=m.peer(a.keypair.peer_id)), m.decode_hop, pipe_b)
        b.connection.open_protocol(m.HOP_PROTOCOL_ID, request)
        self.assertEqual(h.result(request.reply)[2], m.OK)
        pipe_a = h.result(arriving)
        h.settle()
        self.assertEqual(bytes(pipe_a.received), b"early bytes")

    def test_connect_rate_limit_comes_before_the_reservation_lookup(self):
        """Once over ``circuit_rate``, a reserved target and an unknown one get
        the same answer: the reservation table cannot be probed without limit."""
        h = Harness("circuit_rate = 2\n")
        a, b = h.peer(), h.peer()
        a.handlers[m.STOP_PROTOCOL_ID] = Mute
        h.result(a.reserve())
        strangers = [KeyPair(Ed25519PrivateKey.generate()).peer_id for _ in range(3)]
        statuses = [h.result(b.connect(peer, Pipe()))[2] for peer in strangers]
        self.assertEqual(statuses, [m.NO_RESERVATION, m.NO_RESERVATION, m.RESOURCE_LIMIT_EXCEEDED])
        self.assertEqual(h.result(b.connect(a.keypair.peer_id, Pipe()))[2], m.RESOURCE_LIMIT_EXCEEDED)
        self.assertEqual(h.relay.circuits(), [])
        self.assertIn('relayd_libp2p_denials_total{reason="rate-limited",request="circuit"} 2.0',
                      h.metrics())

    def test_rate_limiter_window_slides(self):
        h = Harness("circuit_rate = 2\nrate_window = 10\n")
        limiter = h.relay.limits.circuit_rate
        self.assertEqual([limiter.allow("ip") for _ in range(3)], [True, True, False])
        h.advance(10)
        self.assertTrue(limiter.allow("ip"))
        h.advance(20)
        limiter.prune()
        self.assertEqual(limiter.events, {})


class Garbage(Protocol):
    def connectionMade(self):
        self.transport.write(b"\x03abc")


class DenialLogTests(unittest.TestCase):
    def test_garbage_connections_are_all_counted_but_logged_at_a_bounded_rate(self):
        h = Harness("handshake_timeout = 5\n")
        with capturedLogs() as logged:
            for _ in range(30):
                h.link(Garbage())
            for _ in range(5):
                h.link(Protocol())                  # silent until the handshake times out
            h.advance(5)
        self.assertEqual(h.factory.connections, set())
        aborts = [e for e in logged if e.get("libp2p_event") == "aborted"]
        self.assertEqual(len(aborts), 20)
        self.assertIn("multistream", aborts[0]["kind"])
        self.assertEqual(len([e for e in logged if "only counted" in e["log_format"]]), 1)
        metrics = h.metrics()
        self.assertIn('relayd_libp2p_connections_aborted_total{reason="multistream"} 30.0', metrics)
        self.assertIn('relayd_libp2p_connections_aborted_total{reason="handshake-timeout"} 5.0',
                      metrics)

    def test_log_is_bounded_over_all_sources_too(self):
        events = RelayEvents(CollectorRegistry(), Clock())
        with capturedLogs() as logged:
            for n in range(300):
                events.aborted("noise", "bad tag", f"10.0.{n // 256}.{n % 256}")
        self.assertEqual(len([e for e in logged if e.get("libp2p_event") == "aborted"]), 200)

    def test_denials_are_all_counted_but_logged_at_a_bounded_rate(self):
        clock = Clock()
        events = RelayEvents(CollectorRegistry(), clock)
        with capturedLogs() as logged:
            for _ in range(25):
                events.denied("RESERVE", "rate limited", "12D3KooWpeer", "10.0.0.9")
            events.denied("RESERVE", "rate limited", "12D3KooWother", "10.0.0.10")
            clock.advance(60)
            events.denied("CONNECT", "no reservation", "12D3KooWpeer", "10.0.0.9")
        denials = [e for e in logged if e.get("libp2p_event") == "denied"]
        warnings = [e for e in logged if "only counted" in e["log_format"]]
        self.assertEqual(len(denials), 20 + 1 + 1)
        self.assertEqual([w["source"] for w in warnings], ["10.0.0.9"])
        self.assertEqual(events.totals["denied"], 27)
