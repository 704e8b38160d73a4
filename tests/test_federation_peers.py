"""Peer lists: [peer:NAME] sections, the seed's relays.json, keys and .onion endpoints."""
import base64
import io
import os

import txtorcon
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from relayd import config
from relayd.federation import keys, peers
from relayd.identity import Identity

SEED_EXAMPLE = """[
  { "id": "relay1", "ip": "127.0.0.1", "port": 55765, "key": "%s" },
  { "id": "relay2", "ip": "::1", "port": 55766, "fingerprint": "%s" }
]
### you need to delete the ip of the relay you are running from this list
"""


def identity(name):
    return Identity(name, Ed25519PrivateKey.generate())


class RelaysJsonTests(unittest.TestCase):
    def setUp(self):
        self.r1, self.r2 = identity("relay1"), identity("relay2")

    def test_seed_format_with_its_comment_line(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        text = SEED_EXAMPLE % (self.r1.public_b64, self.r2.fingerprint)
        found = peers.parse_relays_json(text, "relays.json", "relay3")
        self.assertEqual(sorted(found), ["relay1", "relay2"])
        self.assertEqual(found["relay1"].endpoint, "tcp:127.0.0.1:55765")
        self.assertEqual(found["relay2"].endpoint, r"tcp:\:\:1:55766")
        self.assertTrue(found["relay1"].accepts(self.r1.public_bytes))
        self.assertFalse(found["relay1"].accepts(self.r2.public_bytes))
        self.assertTrue(found["relay2"].accepts(self.r2.public_bytes))
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertIn("relays.json", warnings[0]["source"])

    def test_own_entry_is_ignored(self):
        text = SEED_EXAMPLE % (self.r1.public_b64, self.r2.fingerprint)
        self.assertEqual(sorted(peers.parse_relays_json(text, "relays.json", "relay1")), ["relay2"])

    def test_errors_name_the_file_and_relay(self):
        cases = [
            ("{", "not valid JSON"),
            ('{"id": "x"}', "JSON array"),
            ('[{"id": "relay2", "ip": "127.0.0.1", "port": 1}]', "needs a key or a fingerprint"),
            ('[{"id": "relay2", "ip": "127.0.0.1", "port": 70000, "key": "x"}]', "port"),
            ('[{"id": "relay2", "ip": "h", "port": 1, "key": "bm90IGEga2V5"}]', "32 bytes"),
            ('[{"id": "relay2", "ip": "h", "port": 1, "fingerprint": "md5:00"}]', "sha256:"),
        ]
        for text, why in cases:
            with self.assertRaises(peers.PeerError) as e:
                peers.parse_relays_json(text, "/etc/relays.json", "relay1")
            self.assertIn("/etc/relays.json", str(e.exception))
            self.assertIn(why, str(e.exception))

    def test_key_and_fingerprint_must_agree(self):
        with self.assertRaises(peers.PeerError):
            peers.expected_fingerprint(self.r1.public_b64, self.r2.fingerprint, "x")
        self.assertEqual(peers.expected_fingerprint(self.r1.public_b64, self.r1.fingerprint, "x"),
                         self.r1.fingerprint)


class SettingsTests(unittest.TestCase):
    def settings(self, text):
        return config.parse(text)

    def test_sections_and_peers_file_together(self):
        r2, r3 = identity("relay2"), identity("relay3")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[{"id": "relay3", "ip": "127.0.0.1", "port": 7003, "key": "%s"}]'
                    % r3.public_b64)
        s = self.settings(f"""
            [relay]
            id = relay1
            [federation]
            peers_file = {path}
            [peer:relay2]
            endpoint = tcp:127.0.0.1:7002
            key = {r2.public_b64}
            """)
        found = peers.load(s)
        self.assertEqual(sorted(found), ["relay2", "relay3"])
        self.assertEqual(s.federation.listen, "tcp:55765:interface=127.0.0.1")

    def test_peer_without_identity_is_refused(self):
        s = self.settings("[federation]\n[peer:relay2]\nendpoint = tcp:127.0.0.1:7002\n")
        with self.assertRaises(peers.PeerError) as e:
            peers.load(s)
        self.assertIn("[peer:relay2]", str(e.exception))

    def test_missing_endpoint_is_a_config_error(self):
        with self.assertRaises(config.ConfigError) as e:
            self.settings("[federation]\n[peer:relay2]\nkey = x\n")
        self.assertIn("[peer:relay2] endpoint", str(e.exception))

    def test_key_file_written_by_the_keys_command(self):
        work = self.mktemp()
        os.makedirs(work)
        ini = os.path.join(work, "relay2.ini")
        with open(ini, "w") as f:
            f.write(f"[relay]\nid = relay2\ndata_dir = {work}/var\n")
        self.assertEqual(keys.main([ini], io.StringIO()), 0)
        pub = os.path.join(work, "var", "identity.pub")
        self.assertTrue(os.path.exists(os.path.join(work, "var", "identity.key")))
        s = self.settings(f"[federation]\n[peer:relay2]\nendpoint = tcp:127.0.0.1:7002\n"
                          f"key_file = {pub}\n")
        peer = peers.load(s)["relay2"]
        with open(pub) as f:
            self.assertTrue(peer.accepts(base64.b64decode(f.read())))
        self.assertEqual(keys.main([ini], io.StringIO()), 0)       # idempotent: the key is kept
        with open(pub) as f:
            self.assertTrue(peer.accepts(base64.b64decode(f.read())))

    def test_missing_key_file_says_how_to_make_it(self):
        s = self.settings("[federation]\n[peer:relay2]\nendpoint = tcp:127.0.0.1:7002\n"
                          "key_file = /nonexistent/identity.pub\n")
        with self.assertRaises(peers.PeerError) as e:
            peers.load(s)
        self.assertIn("relayd.federation.keys", str(e.exception))


class OnionEndpointTests(unittest.TestCase):
    def test_onion_hosts_go_through_tor_socks(self):
        reactor = MemoryReactorClock()
        host = "a" * 56 + ".onion"
        for text in (f"tcp:{host}:55765", f"tor:{host}:55765"):
            endpoint = peers.client_endpoint(reactor, text, "tcp:127.0.0.1:9050")
            self.assertIsInstance(endpoint, txtorcon.TorClientEndpoint)
        self.assertIsInstance(peers.client_endpoint(reactor, "tcp:127.0.0.1:55765"),
                              endpoints.TCP4ClientEndpoint)

    def test_onion_peer_needs_tor_socks_in_the_config(self):
        s = config.parse("[federation]\n[peer:relay2]\nendpoint = tcp:%s.onion:55765\n"
                         "key = %s\n" % ("b" * 56, identity("relay2").public_b64))
        with self.assertRaises(peers.PeerError) as e:
            peers.load(s)
        self.assertIn("tor_socks", str(e.exception))

    def test_onion_without_socks_is_an_error(self):
        with self.assertRaises(peers.PeerError) as e:
            peers.client_endpoint(MemoryReactorClock(), "tcp:abc.onion:1")
        self.assertIn("tor_socks", str(e.exception))
