"""js-libp2p peers (@libp2p/kad-dht, @libp2p/gossipsub) using the real daemon
(twistd subprocess) as their only bootstrap node and GossipSub hub."""
import json
import os
import socket
import subprocess
import time
import urllib.request

from twisted.trial import unittest

from tests.daemon import REPO, Relayd, free_port
from tests.test_bridge_e2e import json_lines
from tests.test_client_cli import command
from tests.test_libp2p_interop import INI, INTEROP, NODE, SCRIPT, ensure_packages, js

KAD = "[kad]\nprotocol = {protocol}\n"


class HubTestCase(unittest.TestCase):
    """Starts the daemon with [libp2p] plus the given sections."""

    timeout = 600

    def setUp(self):
        ensure_packages()

    def start(self, extra, workdir=None, **ports):
        """The daemon, its libp2p multiaddr and peer id; ``ports`` fill
        placeholders that ``extra`` adds."""
        port = free_port()
        relay = Relayd(self, INI + extra, workdir=workdir, p2p=port, http=free_port(), **ports)
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
        self.assertIn('relayd_kad_requests_total{type="add_provider"}', self.http(relay, "metrics"))

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
        self.assertIn('relayd_gossipsub_messages_total{event="delivered"} 9.0',
                      self.http(relay, "metrics"))


class ShippedConfigTests(HubTestCase):
    def test_make_run_is_a_working_hub(self):
        """etc/relay.ini as shipped (on free ports): seed-003 peers meet in its
        DHT, and a seed-004 peer and relay-chat share its libp2p-chat room."""
        with open(os.path.join(REPO, "etc", "relay.ini")) as f:
            ini = f.read()
        for old, new in (("data_dir = var", "data_dir = {data_dir}"), ("tcp:55665:", "tcp:{tcp}:"),
                         ("tcp:9001:", "tcp:{http}:"), ("tcp:4001:", "tcp:{p2p}:"),
                         ("tcp:4002:", "tcp:{ws}:"), ("quic_listen = 127.0.0.1:4001",
                                                      "quic_listen = 127.0.0.1:{quic}"),
                         ("listen = 8000", "listen = {udp}")):
            self.assertIn(old, ini)
            ini = ini.replace(old, new)
        ports = dict(tcp=free_port(), http=free_port(), p2p=free_port(), ws=free_port(),
                     quic=free_port(socket.SOCK_DGRAM), udp=free_port(socket.SOCK_DGRAM))
        relay = Relayd(self, ini, **ports)
        relay.start(wait_tcp=[ports["p2p"], ports["tcp"]])
        peer_id = relay.log().split("(peer id ")[1].split(")")[0]
        addr = f"/ip4/127.0.0.1/tcp/{ports['p2p']}/p2p/{peer_id}"

        got = js("dht", addr, "/ipfs/kad/1.0.0")
        self.assertEqual(got["chats_received"],
                         [{"from": got["b"], "message": "found you through the DHT"}])

        peer = subprocess.Popen([NODE, SCRIPT, "bridge", addr, "libp2p-chat", "hi all", "1"],
                                cwd=INTEROP, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: peer.poll() is None and peer.kill())
        lines = json_lines(peer.stdout)
        js_peer = next(lines)["ready"]
        chat = command() + ["--server", f"127.0.0.1:{ports['tcp']}", "--id", "alice", "-q"]
        subprocess.run(chat + ["send", "--room", "libp2p-chat", "hello libp2p"], check=True,
                       timeout=60, stdout=subprocess.PIPE)
        self.assertEqual(next(lines)["heard"], [{"from": peer_id, "text": "alice: hello libp2p"}])
        history = subprocess.run(chat + ["history", "--room", "libp2p-chat"], check=True,
                                 timeout=60, stdout=subprocess.PIPE).stdout.decode()
        self.assertIn(f"{js_peer}", history)
        self.assertIn("hi all", history)


class IpnsInteropTests(HubTestCase):
    def test_an_ipns_name_published_and_resolved_through_relayd(self):
        relay, addr, relay_id = self.start(KAD.format(protocol="/ipfs/kad/1.0.0"))
        got = js("ipns", addr)
        self.assertEqual([(r["seq"], r["value"]) for r in got["resolved"]],
                         [(1, "/ipfs/bafkqaaa"), (2, "/ipfs/bafkqabtimvwgy3yk")])
        # relayd took both versions (js-made records pass its validator) and holds
        # the name beside its two relay advertisements
        stats = json.loads(self.http(relay, "stats"))["kad"]
        self.assertEqual((stats["records_refused"], stats["records"]), (0, 3))
        self.assertGreaterEqual(stats["requests"]["put_value"], 2)
