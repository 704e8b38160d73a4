"""The federation service on a memory reactor: dialers per peer, reload, views."""
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from relayd import config
from relayd.federation.service import build_federation
from relayd.identity import Identity
from tests.test_federation_link import InlinePool, Relay

KEYS = {name: Identity(name, Ed25519PrivateKey.generate()).public_b64
        for name in ("relay2", "relay3")}


def ini(data_dir, *peers, extra=""):
    text = f"[relay]\nid = relay1\ndata_dir = {data_dir}\n[federation]\nlisten = tcp:0\n"
    for name in peers:
        text += f"[peer:{name}]\nendpoint = tcp:127.0.0.1:{7000 + int(name[-1])}\n" \
                f"key = {KEYS[name]}\n"
    return config.parse(text + extra)


class FakeDaemon:
    """What build_federation uses of relayd.daemon.Daemon."""

    def __init__(self, testcase, settings):
        self.settings = settings
        self.reactor = MemoryReactorClock()
        self.registry = CollectorRegistry()
        self.file_pool = InlinePool()
        self.identity = Identity("relay1", Ed25519PrivateKey.generate())
        relay = Relay(testcase, "relay1", self.reactor)
        self.router = relay.router
        self.journal = relay.journal
        self.hooks = []
        self.children = []

    def on_reload(self, hook):
        self.hooks.append(hook)

    def reload(self, settings):
        self.settings = settings
        for hook in self.hooks:
            hook(settings)

    # the service parent interface
    def addService(self, service):
        self.children.append(service)


class FakeLink:
    """An up link as the hub sees it; fail() closes it at once."""

    ranges = False

    def __init__(self, hub, peer):
        self.hub, self.peer, self.name, self.sent = hub, peer, peer.name, []

    def address(self):
        return "127.0.0.1:1"

    def send(self, frame):
        self.sent.append(frame)

    def fail(self, code, text):
        self.hub.link_down(self, text)


class ServiceTests(unittest.TestCase):
    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.daemon = FakeDaemon(self, ini(self.data_dir, "relay2"))
        self.service = build_federation(self.daemon)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def dialled(self):
        return sorted(port for _, port, *_ in self.daemon.reactor.tcpClients)

    def test_dials_each_peer_and_listens(self):
        self.assertEqual(self.service.name, "federation")
        self.assertEqual(sorted(self.service.dialers), ["relay2"])
        self.assertEqual(self.dialled(), [7002])
        self.assertEqual(len(self.daemon.reactor.tcpServers), 1)
        with open(os.path.join(self.data_dir, "identity.pub")) as f:
            self.assertEqual(f.read().strip(), self.daemon.identity.public_b64)
        self.assertIn(self.service.hub, self.daemon.router.subscribers)

    def test_reload_adds_and_removes_peers(self):
        self.daemon.reload(ini(self.data_dir, "relay3"))
        self.assertEqual(sorted(self.service.dialers), ["relay3"])
        self.assertEqual(self.dialled(), [7002, 7003])
        self.assertEqual([c.name for c in self.service if c.name], ["peer:relay3"])

    def test_a_removed_peer_leaves_the_views_with_its_last_link(self):
        hub = self.service.hub
        hub.link_up(FakeLink(hub, hub.peers["relay2"]))
        self.assertEqual(self.service.health(), None)
        self.assertEqual(self.daemon.registry.get_sample_value(
            "relayd_federation_link_ups_total", {"peer": "relay2"}), 1)
        self.daemon.reload(ini(self.data_dir, "relay3"))
        self.assertEqual([(r["peer"], r["state"]) for r in self.service.peers()],
                         [("relay3", "down")])
        self.assertEqual(self.service.stats()["peers"], 1)
        self.assertIn("relay3", self.service.health())
        self.assertNotIn("relay2", hub._stats)
        for name in ("relayd_federation_link_ups_total", "relayd_federation_links"):
            self.assertIsNone(self.daemon.registry.get_sample_value(name, {"peer": "relay2"}))

    def test_unchanged_peer_keeps_its_dialer(self):
        dialer = self.service.dialers["relay2"]
        self.daemon.reload(ini(self.data_dir, "relay2", "relay3"))
        self.assertIs(self.service.dialers["relay2"], dialer)

    def test_bad_peer_list_keeps_the_old_one(self):
        bad = config.parse("[relay]\nid = relay1\n[federation]\nlisten = tcp:0\n"
                           "[peer:relay9]\nendpoint = tcp:127.0.0.1:1\n")
        self.daemon.reload(bad)
        self.assertEqual(sorted(self.service.dialers), ["relay2"])
        self.assertEqual(sorted(self.service.hub.peers), ["relay2"])

    def test_a_reload_without_federation_keeps_it_until_restart(self):
        self.daemon.reload(config.parse("[relay]\nid = relay1\n"))
        self.assertEqual(sorted(self.service.dialers), ["relay2"])
        self.assertEqual(sorted(self.service.hub.peers), ["relay2"])

    def test_a_peer_that_refuses_the_handshake_is_redialled_ever_more_slowly(self):
        """A link that closes before it authenticates is a failed attempt:
        the redial waits double (default backoff_initial 0.5 s, with up to
        1 s of jitter), and no error is logged (trial fails a test that
        logs one)."""
        reactor = self.daemon.reactor
        waits = []
        for _ in range(3):
            factory = reactor.tcpClients[-1][2]
            protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7002))
            protocol.makeConnection(StringTransport())
            protocol.dataReceived(b'{"type": "error", "message": "not you"}\n')
            protocol.connectionLost(Failure(ConnectionDone()))
            dialled, waited = len(reactor.tcpClients), 0.0
            while len(reactor.tcpClients) == dialled and waited < 60:
                reactor.advance(0.05)
                waited += 0.05
            waits.append(waited)
        self.assertTrue(1.0 <= waits[0] < 2.05, waits)
        self.assertTrue(2.0 <= waits[1] < 3.05, waits)
        self.assertTrue(4.0 <= waits[2] < 5.05, waits)

    def test_views(self):
        rows = self.service.peers()
        self.assertEqual([(r["peer"], r["state"]) for r in rows], [("relay2", "down")])
        stats = self.service.stats()
        self.assertEqual((stats["peers"], stats["links_up"]), (1, 0))
        self.assertIn("relay2", self.service.health())


class StartTests(unittest.TestCase):
    def test_bad_peers_file_stops_the_start_with_its_name(self):
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        path = os.path.join(data_dir, "relays.json")
        with open(path, "w") as f:
            f.write('[{"id": "relay2", "ip": "127.0.0.1", "port": 1}]')
        daemon = FakeDaemon(self, config.parse(
            f"[relay]\nid = relay1\n[federation]\nlisten = tcp:0\npeers_file = {path}\n"))
        service = build_federation(daemon)
        with self.assertRaises(SystemExit) as e:
            service.privilegedStartService()
        self.assertIn(path, str(e.exception))
