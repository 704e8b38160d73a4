"""The [libp2p] service over real loopback sockets, driven by Python peers."""
import socket
from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.trial import unittest

from relayd import config
from relayd.libp2p import (envelope, identify, messages as m, multiaddr, noise, ping, protobuf,
                          varint, yamux)
from relayd.libp2p.peer import Peer, Pipe
from relayd.libp2p.peerid import KeyPair
from relayd.libp2p.service import Libp2pService
from relayd.libp2p.yamux import StreamHandler


def relay_settings(extra=""):
    text = "[libp2p]\nlisten = tcp:0:interface=127.0.0.1\n" + extra
    return config.parse(text)


def fake_daemon(settings, **extra):
    """What Libp2pService uses of the daemon, on the real reactor."""
    return SimpleNamespace(
        identity=SimpleNamespace(private_key=Ed25519PrivateKey.generate()),
        registry=CollectorRegistry(), settings=settings, reactor=reactor, tls=None,
        on_reload=lambda hook: None, **extra)


def start_relay(testcase, extra=""):
    settings = relay_settings(extra)
    daemon = fake_daemon(settings)
    service = Libp2pService(daemon, settings.libp2p, reactor)
    service.startService()
    testcase.addCleanup(lambda: service.running and service.stopService())
    return service


def port_of(service):
    return int(service.listen_addrs[0].split("/tcp/")[1].split("/")[0])


@defer.inlineCallbacks
def dial(testcase, service, keypair=None, early_muxers=()):
    peer = Peer(reactor, keypair or KeyPair(Ed25519PrivateKey.generate()),
                early_muxers=early_muxers)
    connector = reactor.connectTCP("127.0.0.1", port_of(service), peer)
    testcase.addCleanup(disconnect, peer, connector)
    yield peer.ready
    return peer


def disconnect(peer, connector):
    connector.disconnect()
    return peer.lost


def wait_until(check, timeout=5.0):
    """Poll ``check`` on the reactor until true (a bounded loop)."""
    start = reactor.seconds()

    def poll():
        if check():
            loop.stop()
        elif reactor.seconds() - start > timeout:
            raise AssertionError("condition not reached in time")
    loop = task.LoopingCall(poll)
    return loop.start(0.01)


@defer.inlineCallbacks
def ask_identify(connection):
    """The identify answer (a dict) the other end of a libp2p ``connection`` gives."""
    pipe = Pipe()
    connection.open_protocol(identify.PROTOCOL_ID, pipe)
    yield wait_until(lambda: pipe.fin)
    return identify.decode(varint.split_prefixed(bytes(pipe.received), 8192)[0])


class ReserveAndConnectTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.relay = start_relay(self)
        yield wait_until(lambda: self.relay.listen_addrs)

    @defer.inlineCallbacks
    def test_reserve_connect_and_relay_both_ways(self):
        a = yield dial(self, self.relay)
        b = yield dial(self, self.relay)
        msg_type, _, status, fields = yield a.reserve()
        self.assertEqual((msg_type, status), (m.STATUS, m.OK))
        rsvp = fields[3][0]
        rfields = protobuf.decode(rsvp)
        expire = rfields[1][0]
        self.assertLess(abs(expire - (reactor.seconds() + 3600)), 5)
        self.assertEqual([multiaddr.to_string(x) for x in rfields[2]], self.relay.listen_addrs)
        signer, _, payload = envelope.open_envelope(rfields[3][0], envelope.VOUCHER_DOMAIN)
        self.assertEqual(signer, self.relay.peer_id)
        self.assertEqual(protobuf.decode(payload), {1: [self.relay.peer_id.bytes],
                                                    2: [a.keypair.peer_id.bytes], 3: [expire]})
        self.assertEqual(m.decode_limit(fields[4][0]), (3600, 100 * 1024 * 1024))
        self.assertEqual([r["peer"] for r in self.relay.reservations()], [str(a.keypair.peer_id)])

        arriving = a.next_circuit()
        pipe_b = Pipe()
        msg_type, _, status, fields = yield b.connect(a.keypair.peer_id, pipe_b)
        self.assertEqual(status, m.OK)
        self.assertEqual(m.decode_limit(fields[4][0]), (3600, 100 * 1024 * 1024))
        pipe_a = yield arriving
        self.assertEqual(pipe_a.initiator, b.keypair.peer_id)
        self.assertEqual(pipe_a.limit, (3600, 100 * 1024 * 1024))
        self.assertEqual([(c["src"], c["dst"]) for c in self.relay.circuits()],
                         [(str(b.keypair.peer_id), str(a.keypair.peer_id))])

        payload = bytes(range(256)) * 4096                         # 1 MiB each way
        pipe_b.stream.write(payload)
        got = yield pipe_a.wait_for(len(payload))
        self.assertEqual(got, payload)
        pipe_a.stream.write(payload[::-1])
        got = yield pipe_b.wait_for(len(payload))
        self.assertEqual(got, payload[::-1])
        pipe_b.stream.close()
        yield wait_until(lambda: pipe_a.fin)
        pipe_a.stream.close()
        self.assertEqual((yield pipe_a.done), False)
        self.assertEqual((yield pipe_b.done), False)
        yield wait_until(lambda: not self.relay.circuits())
        stats = self.relay.stats()
        self.assertEqual(stats["relayed_bytes"], 2 * len(payload))
        self.assertGreater(stats["wire_bytes_in"], 2 * len(payload))     # plus Noise and Yamux
        self.assertGreater(stats["wire_bytes_out"], 2 * len(payload))
        self.assertEqual((stats["circuits_opened"], stats["circuits_closed"]), (1, 1))
        metrics = generate_latest(self.relay.daemon.registry).decode()
        self.assertIn("relayd_libp2p_relayed_bytes_total 2.097152e+06", metrics)
        self.assertIn('relayd_libp2p_circuits_closed_total{reason="closed"} 1.0', metrics)

    @defer.inlineCallbacks
    def test_identify_and_ping(self):
        a = yield dial(self, self.relay)
        info = yield ask_identify(a.connection)
        self.assertEqual(info["public_key"], self.relay.keypair.public_key)
        self.assertIn(m.HOP_PROTOCOL_ID, info["protocols"])
        self.assertNotIn(m.STOP_PROTOCOL_ID, info["protocols"])
        self.assertEqual(info["listen_addrs"], self.relay.listen_addrs)
        local = a.connection.transport.getHost()
        self.assertEqual(info["observed_addr"], f"/ip4/127.0.0.1/tcp/{local.port}")
        self.assertEqual(info["agent_version"], "relayd/0.1")
        pinger = Pipe()
        a.connection.open_protocol(ping.PROTOCOL_ID, pinger)
        yield pinger.opened
        pinger.stream.write(b"p" * 32 + b"q" * 32)
        self.assertEqual((yield pinger.wait_for(64)), b"p" * 32 + b"q" * 32)

    def peer_record(self, info):
        """``(seq, addrs)`` of the signed peer record in an identify answer."""
        signer, payload_type, payload = envelope.open_envelope(
            info["signed_peer_record"], envelope.PEER_RECORD_DOMAIN)
        self.assertEqual((signer, payload_type), (self.relay.peer_id, b"\x03\x01"))
        fields = protobuf.decode(payload)
        self.assertEqual(fields[1], [self.relay.peer_id.bytes])
        addrs = [multiaddr.to_string(protobuf.decode(a)[1][0]) for a in fields[3]]
        return fields[2][0], addrs

    @defer.inlineCallbacks
    def test_identify_carries_a_signed_peer_record_and_is_pushed_on_change(self):
        a = yield dial(self, self.relay)
        pushes = []

        class Sink(Pipe):
            def __init__(self, connection):
                super().__init__()
                pushes.append(self)
        a.handlers[identify.PUSH_PROTOCOL_ID] = Sink
        info = yield ask_identify(a.connection)
        seq, addrs = self.peer_record(info)
        self.assertEqual([addr + f"/p2p/{self.relay.peer_id}" for addr in addrs],
                         self.relay.listen_addrs)
        self.assertEqual(self.peer_record((yield ask_identify(a.connection)))[0], seq)   # same addrs, same seq

        self.relay.reconfigure(relay_settings("announce = /dns4/relay.example/tcp/4001\n").libp2p)
        yield wait_until(lambda: pushes and pushes[0].fin)
        pushed = identify.decode(varint.split_prefixed(bytes(pushes[0].received), 8192)[0])
        self.assertEqual(pushed["listen_addrs"], [f"/dns4/relay.example/tcp/4001/p2p/{self.relay.peer_id}"])
        new_seq, new_addrs = self.peer_record(pushed)
        self.assertEqual(new_addrs, ["/dns4/relay.example/tcp/4001"])
        self.assertGreater(new_seq, seq)
        self.relay.reconfigure(relay_settings("announce = /dns4/relay.example/tcp/4001\n").libp2p)
        self.assertEqual(len(pushes), 1)                          # nothing changed: no push

    @defer.inlineCallbacks
    def test_sockets_run_without_nagle_both_ways(self):
        """Small handshake messages leave at once (no Nagle + delayed ACK stalls)."""
        a = yield dial(self, self.relay)
        server_side, = self.relay.factory.connections
        for conn in (server_side, a.connection):
            sock = conn.transport.getHandle()
            self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    @defer.inlineCallbacks
    def test_muxer_agreed_inside_noise(self):
        """A dialer offering Yamux in its Noise payload skips the multistream round."""
        a = yield dial(self, self.relay, early_muxers=("/mplex/6.7.0", "/yamux/1.0.0"))
        self.assertEqual(a.connection.handshake.remote_muxers, ["/yamux/1.0.0"])
        self.assertEqual((yield a.reserve())[2], m.OK)
        b = yield dial(self, self.relay)                      # no offer: multistream as usual
        self.assertEqual((yield b.reserve())[2], m.OK)

    @defer.inlineCallbacks
    def test_identify_push_is_drained(self):
        a = yield dial(self, self.relay)
        pipe = Pipe()
        a.connection.open_protocol(identify.PUSH_PROTOCOL_ID, pipe)
        yield pipe.opened
        pipe.stream.write(varint.prefixed(identify.encode(
            a.keypair.public_key, ["/ip4/127.0.0.1/tcp/1"], [ping.PROTOCOL_ID],
            "/ip4/127.0.0.1/tcp/4001", "test")))
        pipe.stream.close()
        self.assertEqual((yield pipe.done), False)           # the relay closed its side too
        self.assertEqual(pipe.received, b"")

    @defer.inlineCallbacks
    def test_connect_without_reservation(self):
        b = yield dial(self, self.relay)
        stranger = KeyPair(Ed25519PrivateKey.generate()).peer_id
        _, _, status, _ = yield b.connect(stranger, Pipe())
        self.assertEqual(status, m.NO_RESERVATION)

    @defer.inlineCallbacks
    def test_reservation_ends_with_its_connection(self):
        keys = KeyPair(Ed25519PrivateKey.generate())
        peer = Peer(reactor, keys)
        connector = reactor.connectTCP("127.0.0.1", port_of(self.relay), peer)
        yield peer.ready
        _, _, status, _ = yield peer.reserve()
        self.assertEqual(status, m.OK)
        yield disconnect(peer, connector)
        yield wait_until(lambda: not self.relay.reservations())
        b = yield dial(self, self.relay)
        _, _, status, _ = yield b.connect(keys.peer_id, Pipe())
        self.assertEqual(status, m.NO_RESERVATION)

    @defer.inlineCallbacks
    def test_malformed_and_unexpected_requests(self):
        b = yield dial(self, self.relay)
        _, _, status, _ = yield b.hop(b"\x12\x05ab")
        self.assertEqual(status, m.MALFORMED_MESSAGE)
        _, _, status, _ = yield b.hop(m.hop(m.CONNECT))
        self.assertEqual(status, m.MALFORMED_MESSAGE)
        for truncated in (b"", b"\x00", b"\x12\x80"):                # peer ids cut short
            _, _, status, _ = yield b.hop(m.hop(m.CONNECT, peer=protobuf.encode([(1, truncated)])))
            self.assertEqual(status, m.MALFORMED_MESSAGE)
        _, _, status, _ = yield b.hop(m.hop(m.STATUS, status=m.OK))
        self.assertEqual(status, m.UNEXPECTED_MESSAGE)

    @defer.inlineCallbacks
    def test_target_that_refuses_stop(self):
        a = yield dial(self, self.relay)
        del a.handlers[m.STOP_PROTOCOL_ID]          # A cannot speak STOP: "na"
        yield a.reserve()
        b = yield dial(self, self.relay)
        _, _, status, _ = yield b.connect(a.keypair.peer_id, Pipe())
        self.assertEqual(status, m.CONNECTION_FAILED)
        self.assertEqual(self.relay.circuits(), [])

    @defer.inlineCallbacks
    def test_garbage_and_silence_are_dropped(self):
        closed = []

        class Raw(Protocol):
            def connectionMade(self):
                self.transport.write(b"\x13/multistream/1.0.0\n\x07/nonse\n" + b"\xff" * 64)

            def connectionLost(self, reason):
                closed.append(reason)
        factory = ClientFactory.forProtocol(Raw)
        reactor.connectTCP("127.0.0.1", port_of(self.relay), factory)
        yield wait_until(lambda: closed)
        # the relay still serves others
        a = yield dial(self, self.relay)
        _, _, status, _ = yield a.reserve()
        self.assertEqual(status, m.OK)

    @defer.inlineCallbacks
    def test_a_peer_that_floods_pings_and_never_reads_is_dropped(self):
        """The replies it never reads stop growing at MAX_UNREAD_OUTPUT: the
        connection is dropped and the relay serves others."""
        peer = yield dial(self, self.relay)
        [conn] = self.relay.factory.connections
        client = peer.connection
        client.transport.pauseProducing()                   # the peer reads nothing more
        pings = yamux.header(yamux.PING, yamux.SYN, 0, 7) * 5000
        for _ in range(160):    # 9.6 MB of pings, 24 MB of replies; straight to the socket
            client.transport.write(noise.encrypt_frames(client.handshake.send, pings))
        yield peer.lost
        self.assertEqual(conn.close_reason, "the peer does not read its output")
        self.assertLess(conn.bytes_in, 160 * len(pings))
        self.assertEqual(self.relay.factory.connections, set())
        other = yield dial(self, self.relay)
        self.assertEqual((yield other.reserve())[2], m.OK)


class Boom(StreamHandler):
    """A protocol handler with a bug."""

    def __init__(self, connection):
        pass

    def data_received(self, data):
        raise RuntimeError("a bug")


class InternalErrorTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_bug_a_peer_can_reach_drops_its_connection_and_is_logged_once(self):
        relay = start_relay(self)
        yield wait_until(lambda: relay.listen_addrs)
        relay.factory.handlers["/boom"] = Boom
        for _ in range(3):
            peer = yield dial(self, relay)
            pipe = Pipe()
            peer.connection.open_protocol("/boom", pipe)
            yield pipe.opened
            pipe.stream.write(b"x")
            yield peer.lost                             # the relay aborted the connection
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class LimitTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def start(self, extra=""):
        self.relay = start_relay(self, extra)
        yield wait_until(lambda: self.relay.listen_addrs)

    @defer.inlineCallbacks
    def two_peers(self, extra):
        """Start the relay with ``extra`` settings and connect peers a and b."""
        yield self.start(extra)
        a = yield dial(self, self.relay)
        b = yield dial(self, self.relay)
        return a, b

    @defer.inlineCallbacks
    def refused_dial(self):
        extra = Peer(reactor, KeyPair(Ed25519PrivateKey.generate()))
        reactor.connectTCP("127.0.0.1", port_of(self.relay), extra)
        yield self.assertFailure(extra.ready, ConnectionError)

    @defer.inlineCallbacks
    def circuit(self, a, b):
        arriving = a.next_circuit()
        pipe_b = Pipe()
        _, _, status, _ = yield b.connect(a.keypair.peer_id, pipe_b)
        self.assertEqual(status, m.OK)
        pipe_a = yield arriving
        return pipe_a, pipe_b

    @defer.inlineCallbacks
    def test_data_limit_resets_both_streams(self):
        a, b = yield self.two_peers("circuit_bytes = 1000\n")
        yield a.reserve()
        pipe_a, pipe_b = yield self.circuit(a, b)
        pipe_b.stream.write(b"x" * 5000)
        self.assertEqual((yield pipe_a.done), True)
        self.assertEqual((yield pipe_b.done), True)
        self.assertEqual(len(pipe_a.received), 1000)
        metrics = generate_latest(self.relay.daemon.registry).decode()
        self.assertIn('relayd_libp2p_circuits_closed_total{reason="data-limit"} 1.0', metrics)

    @defer.inlineCallbacks
    def test_reservation_caps(self):
        yield self.start("max_reservations = 2\nmax_reservations_per_peer = 1\n")
        keys = KeyPair(Ed25519PrivateKey.generate())
        first = yield dial(self, self.relay, keys)
        same_peer = yield dial(self, self.relay, keys)
        self.assertEqual((yield first.reserve())[2], m.OK)
        self.assertEqual((yield first.reserve())[2], m.OK)                # a refresh
        self.assertEqual((yield same_peer.reserve())[2], m.RESERVATION_REFUSED)
        other = yield dial(self, self.relay)
        self.assertEqual((yield other.reserve())[2], m.OK)
        third = yield dial(self, self.relay)
        self.assertEqual((yield third.reserve())[2], m.RESERVATION_REFUSED)
        stats = self.relay.stats()
        self.assertEqual((stats["reservations"], stats["reservations_accepted"],
                          stats["reservations_renewed"], stats["denied"]), (2, 2, 1, 2))
        metrics = generate_latest(self.relay.daemon.registry).decode()
        self.assertIn('relayd_libp2p_denials_total{reason="too-many-reservations-for-peer",'
                      'request="reservation"} 1.0', metrics)

    @defer.inlineCallbacks
    def test_per_ip_cap_and_rate_limit(self):
        a, b = yield self.two_peers("max_reservations_per_ip = 1\nreservation_rate = 3\n")
        self.assertEqual((yield a.reserve())[2], m.OK)
        self.assertEqual((yield b.reserve())[2], m.RESERVATION_REFUSED)    # per IP
        self.assertEqual((yield a.reserve())[2], m.OK)
        self.assertEqual((yield a.reserve())[2], m.RESERVATION_REFUSED)    # 4th request in a minute

    @defer.inlineCallbacks
    def test_announce_addresses_go_into_reservations(self):
        yield self.start("announce = /dns4/relay.example/tcp/4001\n")
        a = yield dial(self, self.relay)
        _, _, status, fields = yield a.reserve()
        addrs = protobuf.decode(fields[3][0])[2]
        self.assertEqual([multiaddr.to_string(x) for x in addrs],
                         [f"/dns4/relay.example/tcp/4001/p2p/{self.relay.peer_id}"])

    @defer.inlineCallbacks
    def test_connections_per_ip(self):
        yield self.start("max_connections_per_ip = 1\n")
        a = yield dial(self, self.relay)
        yield self.refused_dial()
        self.assertEqual(self.relay.factory.per_ip, {"127.0.0.1": 1})
        self.assertEqual((yield a.reserve())[2], m.OK)

    @defer.inlineCallbacks
    def test_stopping_says_go_away(self):
        yield self.start()
        a = yield dial(self, self.relay)
        frames = []
        session_feed = a.connection.session.feed

        def feed(data):
            frames.append(data)
            session_feed(data)
        a.connection.session.feed = feed
        yield self.relay.stopService()
        yield a.lost
        self.assertIn(b"\x00\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", b"".join(frames))

    @defer.inlineCallbacks
    def test_reload_applies_new_limits(self):
        a, b = yield self.two_peers("max_reservations = 1\n")
        self.assertEqual((yield a.reserve())[2], m.OK)
        self.assertEqual((yield b.reserve())[2], m.RESERVATION_REFUSED)
        self.relay.reconfigure(relay_settings("max_reservations = 2\ncircuit_bytes = 10\n").libp2p)
        self.assertEqual((yield b.reserve())[2], m.OK)
        _, _, _, fields = yield a.reserve()
        self.assertEqual(m.decode_limit(fields[4][0]), (3600, 10))

    @defer.inlineCallbacks
    def test_circuit_caps(self):
        a, b = yield self.two_peers("max_circuits_per_peer = 1\n")
        yield a.reserve()
        yield self.circuit(a, b)
        _, _, status, _ = yield b.connect(a.keypair.peer_id, Pipe())
        self.assertEqual(status, m.RESOURCE_LIMIT_EXCEEDED)

    @defer.inlineCallbacks
    def test_connection_cap_and_handshake_timeout(self):
        yield self.start("max_connections = 1\nhandshake_timeout = 0.2\n")
        sock = socket.create_connection(("127.0.0.1", port_of(self.relay)))
        self.addCleanup(sock.close)
        yield wait_until(lambda: len(self.relay.factory.connections) == 1)
        yield wait_until(lambda: not self.relay.factory.connections)     # silent: timed out
        a = yield dial(self, self.relay)
        self.assertEqual(self.relay.stats()["connections"], 1)
        yield self.refused_dial()
        self.assertEqual((yield a.reserve())[2], m.OK)
