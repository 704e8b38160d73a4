"""[libp2p] allow_peers_file / deny_peers_file: who may reserve and use circuits."""
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer, reactor
from twisted.logger import capturedLogs
from twisted.trial import unittest

from relayd import config
from relayd.libp2p import access, messages as m
from relayd.libp2p.peer import Pipe
from relayd.libp2p.peerid import KeyPair
from relayd.libp2p.service import Libp2pService
from tests.test_libp2p_codec import SPEC_ID
from tests.test_libp2p_relay import dial, fake_daemon, wait_until
from tests.test_libp2p_timers import Harness
from tests.test_ops_support import InlinePool


def new_id():
    return KeyPair(Ed25519PrivateKey.generate()).peer_id


class ParseTests(unittest.TestCase):
    def test_ids_comments_and_blank_lines(self):
        other = new_id()
        text = f"# operators\n{SPEC_ID}\n\n  {other}   # bob\n"
        self.assertEqual({str(p) for p in access.parse(text, "allow_peers_file")},
                         {SPEC_ID, str(other)})

    def test_a_bad_line_names_the_key_and_line(self):
        e = self.assertRaises(ValueError, access.parse, f"{SPEC_ID}\n\nnot-a-peer\n", "deny_peers_file")
        self.assertIn("[libp2p] deny_peers_file: line 3: 'not-a-peer'", str(e))


class RelayAccessTests(unittest.TestCase):
    def test_deny_list_refuses_reservations_and_circuits(self):
        h = Harness()
        a, b, c = h.peer(), h.peer(), h.peer()
        h.relay.set_access(access.PeerAccess(deny=frozenset({b.keypair.peer_id})))
        self.assertEqual(h.result(a.reserve())[2], m.OK)
        self.assertEqual(h.result(b.reserve())[2], m.PERMISSION_DENIED)
        self.assertEqual(h.result(b.connect(a.keypair.peer_id, Pipe()))[2], m.PERMISSION_DENIED)
        self.assertEqual(h.result(c.connect(a.keypair.peer_id, Pipe()))[2], m.OK)
        metrics = h.metrics()
        self.assertIn('relayd_libp2p_denials_total{reason="peer-denied",request="reservation"} 1.0',
                      metrics)
        self.assertIn('relayd_libp2p_denials_total{reason="peer-denied",request="circuit"} 1.0',
                      metrics)

    def test_allow_list_admits_only_its_peers_and_a_new_list_revokes(self):
        h = Harness()
        a, b, c = h.peer(), h.peer(), h.peer()
        h.relay.set_access(access.PeerAccess(allow=frozenset({a.keypair.peer_id, b.keypair.peer_id})))
        self.assertEqual(h.result(a.reserve())[2], m.OK)
        self.assertEqual(h.result(c.reserve())[2], m.PERMISSION_DENIED)
        self.assertEqual(h.result(c.connect(a.keypair.peer_id, Pipe()))[2], m.PERMISSION_DENIED)
        h.relay.set_access(access.PeerAccess(allow=frozenset({b.keypair.peer_id})))
        self.assertEqual(h.relay.reservations(), [])                        # a's is revoked
        self.assertEqual(h.result(b.connect(a.keypair.peer_id, Pipe()))[2], m.NO_RESERVATION)
        self.assertIn('relayd_libp2p_reservation_events_total{event="revoked"} 1.0', h.metrics())
        self.assertIn('reason="peer-not-allowed",request="reservation"', h.metrics())


class ServiceAccessTests(unittest.TestCase):
    timeout = 30

    def write(self, path, *peers):
        with open(path, "w") as f:
            f.write("".join(f"{p}\n" for p in peers))

    @defer.inlineCallbacks
    def test_lists_are_read_at_start_and_on_reload(self):
        deny = self.mktemp()
        self.write(deny)
        settings = config.parse("[libp2p]\nlisten = tcp:0:interface=127.0.0.1\n"
                                f"deny_peers_file = {deny}\n")
        relay = Libp2pService(fake_daemon(settings, file_pool=InlinePool()), settings.libp2p, reactor)
        relay.startService()
        self.addCleanup(relay.stopService)
        yield wait_until(lambda: relay.listen_addrs)
        a = yield dial(self, relay)
        self.assertEqual((yield a.reserve())[2], m.OK)

        self.write(deny, a.keypair.peer_id)
        relay.reconfigure(settings.libp2p)                     # what SIGHUP does
        self.assertEqual(relay.reservations(), [])
        self.assertEqual((yield a.reserve())[2], m.PERMISSION_DENIED)

        with open(deny, "a") as f:
            f.write("garbage\n")
        with capturedLogs() as logged:
            relay.reconfigure(settings.libp2p)
        self.assertIn("line 2: 'garbage'", logged[-1]["error"])
        self.assertEqual((yield a.reserve())[2], m.PERMISSION_DENIED)      # the old lists stay

    def test_a_bad_list_stops_the_start(self):
        allow = self.mktemp()
        self.write(allow, "12D3KooW-nope")
        settings = config.parse(f"[libp2p]\nlisten = tcp:0\nallow_peers_file = {allow}\n")
        relay = Libp2pService(fake_daemon(settings), settings.libp2p, reactor)
        e = self.assertRaises(ValueError, relay.privilegedStartService)
        self.assertIn("[libp2p] allow_peers_file: line 1", str(e))
