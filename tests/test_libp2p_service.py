"""[libp2p] settings, daemon wiring, start-up log, stats and the periodic report."""
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from relayd import config, daemon as daemon_module
from relayd.libp2p.peer import Peer
from relayd.libp2p.peerid import KeyPair
from relayd.libp2p.service import Libp2pService

from tests.test_libp2p_relay import dial, disconnect, wait_until


class SettingsTests(unittest.TestCase):
    def test_defaults(self):
        s = config.parse("[libp2p]\n").libp2p
        self.assertEqual(s.listen, "tcp:4001:interface=127.0.0.1")
        self.assertEqual(s.announce, [])
        self.assertEqual((s.max_reservations, s.max_reservations_per_peer, s.max_reservations_per_ip),
                         (1024, 3, 8))
        self.assertEqual((s.max_circuits, s.max_circuits_per_peer), (512, 5))
        self.assertEqual((s.reservation_ttl, s.circuit_duration, s.circuit_bytes),
                         (3600, 3600, 100 * 1024 * 1024))
        self.assertEqual((s.reservation_rate, s.circuit_rate, s.rate_window), (60, 60, 60))
        self.assertEqual((s.max_connections, s.max_connections_per_ip, s.idle_timeout),
                         (4096, 64, 600))
        self.assertEqual((s.handshake_timeout, s.connect_timeout, s.stats_interval), (15, 10, 60))

    def test_units_and_announce(self):
        s = config.parse("[libp2p]\nannounce = /dns4/relay.example/tcp/4001, /ip4/203.0.113.5/tcp/4001\n"
                         "circuit_bytes = 1GiB\ncircuit_duration = 2m\n").libp2p
        self.assertEqual(s.announce, ["/dns4/relay.example/tcp/4001", "/ip4/203.0.113.5/tcp/4001"])
        self.assertEqual((s.circuit_bytes, s.circuit_duration), (1024 ** 3, 120))

    def test_errors_name_section_and_key(self):
        for text, key in [("announce = 203.0.113.5:4001", "announce"),
                          ("max_circuits = many", "max_circuits"),
                          ("listen = nonsense:1", "listen"),
                          ("circuit_bytes = 5 parsecs", "circuit_bytes")]:
            with self.assertRaises(config.ConfigError) as caught:
                config.parse("[libp2p]\n" + text + "\n")
            self.assertIn(f"[libp2p] {key}", str(caught.exception))


def has_ipv6_loopback():
    import socket
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class DaemonTests(unittest.TestCase):
    timeout = 30

    def build(self, extra="", listen="tcp:0:interface=127.0.0.1"):
        data_dir = self.mktemp()
        settings = config.parse(f"[relay]\ndata_dir = {data_dir}\n[libp2p]\n"
                                f"listen = {listen}\n{extra}")
        return daemon_module.build(settings, reactor)

    def test_build_wires_without_listening(self):
        d = self.build()
        service = d.getServiceNamed("libp2p")
        self.assertIsInstance(service, Libp2pService)
        self.assertIsNone(service.factory)
        self.assertEqual(service.stats()["listen_addrs"], [])

    @defer.inlineCallbacks
    def test_peer_id_from_the_relay_key_logged_and_in_stats(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        d = self.build('announce = /dns4/relay.example/tcp/4001\n')
        d.startService()
        self.addCleanup(d.stopService)
        service = d.getServiceNamed("libp2p")
        yield wait_until(lambda: service.listen_addrs)
        self.assertIsNone(service.health())
        peer_id = KeyPair(d.identity.private_key).peer_id
        self.assertEqual(service.peer_id, peer_id)
        port = int(service.listen_addrs[0].split("/")[4])
        self.assertEqual(service.listen_addrs, [f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}"])
        self.assertEqual(service.announce_addrs(), [f"/dns4/relay.example/tcp/4001/p2p/{peer_id}"])
        started = [e for e in events if "listening on" in e.get("log_format", "")]
        self.assertEqual(started[0]["addrs"], service.listen_addrs[0])
        stats = d.stats()["libp2p"]
        self.assertEqual(stats["peer_id"], str(peer_id))
        self.assertEqual(stats["listen_addrs"], service.listen_addrs)
        peer = yield dial(self, service)
        yield peer.reserve()
        self.assertEqual(d.stats()["libp2p"]["reservations"], 1)
        self.assertEqual(service.reservations()[0]["ip"], "127.0.0.1")
        del events[:]
        service.log_stats()
        report = [e for e in events if "libp2p_stats" in e]
        self.assertEqual(report[0]["libp2p_stats"]["reservations"], 1)
        self.assertTrue(os.path.exists(os.path.join(d.settings.relay.data_dir, "identity.key")))

    @defer.inlineCallbacks
    def test_ipv6_listener(self):
        if not has_ipv6_loopback():
            raise unittest.SkipTest("this machine has no IPv6 loopback")
        daemon = self.build(listen="tcp6:0:interface=\\:\\:1")
        daemon.startService()
        self.addCleanup(daemon.stopService)
        service = daemon.getServiceNamed("libp2p")
        yield wait_until(lambda: service.listen_addrs)
        self.assertTrue(service.listen_addrs[0].startswith("/ip6/::1/tcp/"))
        peer = Peer(reactor, KeyPair(Ed25519PrivateKey.generate()))
        connector = reactor.connectTCP("::1", int(service.listen_addrs[0].split("/")[4]), peer)
        self.addCleanup(disconnect, peer, connector)
        yield peer.ready
        self.assertEqual((yield peer.reserve())[2], 100)
        self.assertEqual(service.reservations()[0]["ip"], "::1")
