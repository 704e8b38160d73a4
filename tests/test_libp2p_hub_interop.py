"""js-libp2p peers (@libp2p/kad-dht, @libp2p/gossipsub) using the real daemon
(twistd subprocess) as their only bootstrap node and GossipSub hub."""
import json
import time
import urllib.request

from twisted.trial import unittest

from tests.daemon import Relayd, free_port
from tests.test_libp2p_interop import INI, ensure_packages, js

KAD = "[kad]\nprotocol = {protocol}\n"


class HubTestCase(unittest.TestCase):
    """Starts the daemon with [libp2p] plus the given sections."""

    timeout = 600

    def setUp(self):
        ensure_packages()

    def start(self, extra, workdir=None):
        port = free_port()
        relay = Relayd(self, INI + extra, workdir=workdir, p2p=port, http=free_port())
        relay.start(wait_tcp=[port])
        deadline = time.monotonic() + 20
        while "/p2p/" not in relay.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        peer_id = relay.log().split("(peer id ")[1].split(")")[0]
        return relay, f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}", peer_id

    def http(self, relay, path):
        url = f"http://127.0.0.1:{relay.ports['http']}/{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()


class DhtInteropTests(HubTestCase):
    def test_peers_find_each_other_through_relayd_alone(self):
        protocol = "/myapp/kad/1.0.0"        # a private network's own DHT
        relay, addr, relay_id = self.start(KAD.format(protocol=protocol))
        got = js("dht", addr, protocol)
        providers = {p["id"]: p["addrs"] for p in got["providers"]}
        self.assertIn(got["a"], providers)
        self.assertTrue(any(a.startswith("/ip4/127.0.0.1/tcp/") for a in providers[got["a"]]))
        self.assertEqual(got["chats_received"],
                         [{"from": got["b"], "message": "found you through the DHT"}])
        self.assertIn(relay_id, got["relay_providers"])
        self.assertEqual(got["descord_relays"]["peer_id"], relay_id)
        self.assertEqual(got["descord_relays"]["mode"], "relay")

        stats = json.loads(self.http(relay, "stats"))["kad"]
        self.assertGreaterEqual(stats["requests"]["add_provider"], 1)
        self.assertGreaterEqual(stats["requests"]["get_providers"], 1)
        self.assertGreaterEqual(stats["routing_table"], 2)

        # provider records are kept across a restart
        workdir = relay.workdir
        relay.stop()
        again, addr2, _ = self.start(KAD.format(protocol=protocol), workdir=workdir)
        self.assertEqual(json.loads(self.http(again, "stats"))["kad"]["providers"],
                         stats["providers"])


class GossipInteropTests(HubTestCase):
    def test_three_js_peers_each_connected_only_to_relayd_get_every_message_once(self):
        relay, addr, relay_id = self.start("[gossipsub]\ntopics = libp2p-chat\n")
        got = js("gossip", addr, 3, "libp2p-chat", 3)
        sent = {f"{p}: message {n}" for p in got["peers"] for n in range(3)}
        for me, room in zip(got["peers"], got["received"]):
            texts = [m["text"] for m in room]
            self.assertEqual(sorted(texts), sorted(t for t in sent if not t.startswith(me)))
            self.assertEqual(len(texts), len(set(texts)))        # once each
            self.assertTrue(all(m["text"].startswith(m["from"] + ": ") for m in room))
        stats = json.loads(self.http(relay, "stats"))["gossipsub"]
        self.assertEqual(stats["delivered"], 9)
        self.assertEqual(stats["invalid"], 0)
