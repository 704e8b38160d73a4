"""libp2p over QUIC: the certificate extension that proves a peer id, and the
handshake over real UDP loopback with an aioquic client."""
import datetime
import socket
import ssl

import aioquic
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import generate_latest
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import capturedLogs
from twisted.trial import unittest

from relayd.libp2p import multistream, quic
from relayd.libp2p.ping import PROTOCOL_ID as PING
from relayd.libp2p.peerid import KeyPair
from tests.daemon import free_port
from tests.test_libp2p_relay import start_relay, wait_until


class CertificateTests(unittest.TestCase):
    def test_the_extension_proves_the_peer_id(self):
        keys = KeyPair(Ed25519PrivateKey.generate())
        cert, key = quic.certificate(keys)
        self.assertEqual(quic.peer_of(cert), keys.peer_id)
        self.assertEqual(cert.public_key().public_numbers(), key.public_key().public_numbers())

    def test_a_certificate_without_a_valid_extension_proves_nothing(self):
        keys = KeyPair(Ed25519PrivateKey.generate())
        cert, _ = quic.certificate(keys)
        other_key = ec.generate_private_key(ec.SECP256R1())
        # the same extension on another key: the signature covers the certificate's key
        moved = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
                 .public_key(other_key.public_key()).serial_number(1)
                 .not_valid_before(cert.not_valid_before_utc)
                 .not_valid_after(cert.not_valid_after_utc)
                 .add_extension(cert.extensions.get_extension_for_oid(quic.EXTENSION_OID).value,
                                critical=False)
                 .sign(other_key, hashes.SHA256()))
        self.assertRaises(ValueError, quic.peer_of, moved)
        plain = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
                 .public_key(other_key.public_key()).serial_number(1)
                 .not_valid_before(cert.not_valid_before_utc)
                 .not_valid_after(cert.not_valid_after_utc).sign(other_key, hashes.SHA256()))
        e = self.assertRaises(ValueError, quic.peer_of, plain)
        self.assertIn("without the libp2p extension", str(e))


class Client(DatagramProtocol):
    """An aioquic client on the reactor: handshakes, then reports how it ended."""

    def __init__(self, port, cert=None, key=None):
        self.port = port
        self.quic = QuicConnection(configuration=QuicConfiguration(
            is_client=True, alpn_protocols=[quic.ALPN], verify_mode=ssl.CERT_NONE,
            certificate=cert, private_key=key))
        self.events = []
        self.timer = None

    def startProtocol(self):
        self.quic.connect(("127.0.0.1", self.port), reactor.seconds())
        self.flush()

    def datagramReceived(self, data, addr):
        self.quic.receive_datagram(data, addr, reactor.seconds())
        self.flush()

    def flush(self):
        event = self.quic.next_event()
        while event is not None:
            self.events.append(event)
            event = self.quic.next_event()
        for data, addr in self.quic.datagrams_to_send(reactor.seconds()):
            self.transport.write(data, addr)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        at = self.quic.get_timer()
        self.timer = None if at is None else reactor.callLater(
            max(0, at - reactor.seconds()), self.on_timer)

    def on_timer(self):
        self.quic.handle_timer(reactor.seconds())
        self.flush()

    def terminated(self):
        return [e for e in self.events if isinstance(e, events.ConnectionTerminated)]


class HandshakeTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.relay = start_relay(self, f"quic_listen = 127.0.0.1:{self.udp_port}\n")
        yield wait_until(lambda: len(self.relay.listen_addrs) == 2)

    def collector(self):
        """``(datagrams received, UDP port)`` of a socket that only collects."""
        answers = []

        class Collector(DatagramProtocol):
            def datagramReceived(self, data, addr):
                answers.append(data)
        port = reactor.listenUDP(0, Collector(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return answers, port

    def connect(self, cert=None, key=None):
        client = Client(self.udp_port, cert, key)
        port = reactor.listenUDP(0, client, interface="127.0.0.1")

        def cleanup():
            if client.timer is not None and client.timer.active():
                client.timer.cancel()
            return port.stopListening()
        self.addCleanup(cleanup)
        return client

    @defer.inlineCallbacks
    def test_peer_ids_come_from_the_certificate(self):
        self.assertEqual(self.relay.listen_addrs[1],
                         f"/ip4/127.0.0.1/udp/{self.udp_port}/quic-v1/p2p/{self.relay.peer_id}")
        keys = KeyPair(Ed25519PrivateKey.generate())
        client = self.connect(*quic.certificate(keys))
        yield wait_until(lambda: self.relay.factory.peers)
        self.assertEqual(list(self.relay.factory.peers), [keys.peer_id])
        server_cert = quic._Libp2pQuicConnection.peer_certificate(client.quic)
        self.assertEqual(quic.peer_of(server_cert), self.relay.peer_id)
        self.assertEqual(self.relay.stats()["connections"], 1)

    @defer.inlineCallbacks
    def test_streams_negotiate_protocols_and_end_on_stop_sending(self):
        client = self.connect(*quic.certificate(KeyPair(Ed25519PrivateKey.generate())))
        yield wait_until(lambda: self.relay.factory.peers)
        ping = bytes(range(32))
        client.quic.send_stream_data(0, multistream.message(multistream.HEADER)
                                     + multistream.message(PING) + ping)
        client.flush()
        received = lambda: b"".join(e.data for e in client.events            # noqa: E731
                                    if isinstance(e, events.StreamDataReceived))
        yield wait_until(lambda: received().endswith(ping))
        server_side, = self.relay.factory.connections
        self.assertEqual((len(server_side.session.streams), server_side.ping_streams), (1, 1))
        client.quic.stop_stream(0, 0)                     # the reader goes away: the stream ends
        client.flush()
        yield wait_until(lambda: not server_side.session.streams)
        self.assertEqual(server_side.ping_streams, 0)

    @defer.inlineCallbacks
    def test_a_client_without_a_libp2p_certificate_is_closed(self):
        with capturedLogs():
            client = self.connect()                               # no certificate at all
            yield wait_until(client.terminated)
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([])
            plain = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(key.public_key()).serial_number(1)
                     .not_valid_before(datetime.datetime(2020, 1, 1))
                     .not_valid_after(datetime.datetime(2100, 1, 1)).sign(key, hashes.SHA256()))
            other = self.connect(plain, key)
            yield wait_until(other.terminated)
        self.assertEqual(self.relay.factory.peers, {})
        yield wait_until(lambda: 'reason="tls"} 2.0' in generate_latest(
            self.relay.daemon.registry).decode())

    @defer.inlineCallbacks
    def test_an_unproven_address_gets_only_a_retry_smaller_than_its_initial(self):
        answers, port = self.collector()
        client = QuicConnection(configuration=QuicConfiguration(
            is_client=True, alpn_protocols=[quic.ALPN], verify_mode=ssl.CERT_NONE))
        client.connect(("127.0.0.1", self.udp_port), reactor.seconds())
        (initial, _), = client.datagrams_to_send(reactor.seconds())
        port.write(initial, ("127.0.0.1", self.udp_port))
        yield wait_until(lambda: answers)
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(answers), 1)
        header = pull_quic_header(Buffer(data=answers[0]), host_cid_length=8)
        self.assertEqual(header.packet_type, QuicPacketType.RETRY)
        self.assertLess(len(answers[0]), len(initial))
        self.assertEqual(self.relay.factory.connections, set())   # no state before the echo

    @defer.inlineCallbacks
    def test_garbage_datagrams_get_no_answer(self):
        answers, port = self.collector()
        for datagram in (b"\x00" * 40, b"\xc0\x00\x00\x00\x01\x08" + b"x" * 100,   # short Initial
                         b"\xc0\xff\x00\x00\x99" + b"y" * 1300):                   # unknown version
            port.write(datagram, ("127.0.0.1", self.udp_port))
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(answers, [])
        self.assertEqual(self.relay.factory.connections, set())


class AioquicInternalsTests(unittest.TestCase):
    """The aioquic internals ``quic._Libp2pQuicConnection`` uses (aioquic has no
    public API for them), between two connections in memory: each test fails
    naming the one that moved in another aioquic version."""

    def moved(self, what):
        return (f"aioquic {aioquic.__version__}: {what} changed (relayd read the internals in "
                f"{quic.AIOQUIC_CHECKED}); update relayd/libp2p/quic.py _Libp2pQuicConnection")

    def setUp(self):
        self.now = 1000.0
        server_keys, client_keys = KeyPair(Ed25519PrivateKey.generate()), KeyPair(
            Ed25519PrivateKey.generate())
        self.client_cert = quic.certificate(client_keys)
        cert, key = quic.certificate(server_keys)
        small = dict(alpn_protocols=[quic.ALPN], verify_mode=ssl.CERT_NONE,
                     max_stream_data=64 * 1024, max_data=16 * 1024 * 1024)
        self.client = QuicConnection(configuration=QuicConfiguration(
            is_client=True, certificate=self.client_cert[0], private_key=self.client_cert[1],
            **small))
        self.received = bytearray()
        self.client.connect(("127.0.0.1", 2), self.now)
        (initial, _), = self.client.datagrams_to_send(self.now)
        header = pull_quic_header(Buffer(data=initial), host_cid_length=8)
        self.server = quic._Libp2pQuicConnection(
            configuration=QuicConfiguration(is_client=False, certificate=cert, private_key=key,
                                            **small),
            original_destination_connection_id=header.destination_cid)
        self.server.receive_datagram(initial, ("127.0.0.1", 1), self.now)
        self.pump()

    def pump(self):
        for _ in range(10000):
            moved = False
            for sender, receiver, addr in ((self.client, self.server, ("127.0.0.1", 1)),
                                           (self.server, self.client, ("127.0.0.1", 2))):
                for data, _ in sender.datagrams_to_send(self.now):
                    receiver.receive_datagram(data, addr, self.now)
                    moved = True
            event = self.server.next_event()
            while event is not None:
                if isinstance(event, events.StreamDataReceived):
                    self.received += event.data
                event = self.server.next_event()
            while self.client.next_event() is not None:
                pass
            if not moved:
                self.now += 0.05            # let delayed acks go out
                if not any(c.get_timer() and c.get_timer() <= self.now + 0.05
                           for c in (self.client, self.server)):
                    return
                for c in (self.client, self.server):
                    if c.get_timer() is not None and c.get_timer() <= self.now:
                        c.handle_timer(self.now)

    def test_the_overridden_methods_exist(self):
        for name in ("_initialize", "_write_stream_limits"):
            self.assertTrue(callable(getattr(QuicConnection, name, None)),
                            self.moved(f"QuicConnection.{name}"))

    def test_the_client_is_asked_for_its_certificate(self):
        cert = self.server.peer_certificate()
        self.assertIsNotNone(cert, self.moved("tls.Context._request_client_certificate or "
                                              "_peer_certificate"))
        self.assertEqual(cert, self.client_cert[0])

    def test_queued_counts_bytes_until_acknowledged(self):
        stream_id = self.server.get_next_available_stream_id()
        self.server.send_stream_data(stream_id, b"x" * 1000)
        self.assertEqual(self.server.queued(stream_id), 1000,
                         self.moved("QuicConnection._streams or QuicStream.sender._buffer"))
        self.pump()
        self.assertEqual(self.server.queued(stream_id), 0)
        self.assertEqual(self.server.queued(stream_id + 4), 0)      # no such stream

    def test_a_held_back_stream_gets_no_more_credit(self):
        stream_id = self.client.get_next_available_stream_id()
        self.server.held_back.add(stream_id)
        self.client.send_stream_data(stream_id, b"y" * (256 * 1024))
        self.pump()
        self.assertEqual(len(self.received), 64 * 1024,
                         self.moved("QuicConnection._write_stream_limits (credit granted)"))
        self.server.held_back.discard(stream_id)
        self.server.send_ping(1)                # anything that makes the server send a packet
        self.pump()
        self.assertEqual(len(self.received), 256 * 1024)
