"""py-libp2p peers (tests/interop/peers.py, in their own venv) beside js-libp2p
peers, using the real daemon (twistd subprocess) as their only bootstrap node
and GossipSub hub: seed 003 (a /private-chat/1.0.0 provider found through
relayd's DHT) and seed 004 (a GossipSub room, bridged to relay-chat)."""
import json
import subprocess

from tests.daemon import free_port
from tests.pylibp2p import PEER, ensure_pylibp2p, py
from tests.test_bridge_e2e import json_lines
from tests.test_client_cli import command
from tests.test_libp2p_hub_interop import KAD, HubTestCase
from tests.test_libp2p_interop import INTEROP, NODE, SCRIPT, js

ROOM = "libp2p-chat"
JS = [NODE, SCRIPT]          # the command that starts a js peer (cwd INTEROP)


class PyHubTestCase(HubTestCase):
    def setUp(self):
        super().setUp()
        ensure_pylibp2p()

    def spawn(self, command, *args):
        """Start a peer (``command`` + ``args``, stdin a pipe for "go"); returns
        it and the JSON lines it prints.  Its stderr goes to a file, which a
        failure shows."""
        err = open(self.mktemp(), "w+b")
        peer = subprocess.Popen(command + list(map(str, args)), cwd=INTEROP, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err)
        peer.stderr = err
        self.addCleanup(err.close)
        self.addCleanup(peer.stdout.close)
        self.addCleanup(peer.stdin.close)
        self.addCleanup(lambda: peer.poll() is None and peer.kill())
        return peer, json_lines(peer.stdout)

    def stderr(self, peer):
        peer.stderr.seek(0)
        return peer.stderr.read().decode(errors="replace")[-3000:]

    def result(self, peer, lines):
        """The peer's last line, once it exited cleanly."""
        got = next(lines, None)
        status = peer.wait(60)
        if status != 0 or got is None or "error" in got:
            raise AssertionError(f"peer failed ({status}): {got}\n{self.stderr(peer)}")
        return got

    def ready(self, peer, lines):
        got = next(lines, None)
        if got is None or "ready" not in got:
            raise AssertionError(f"peer not ready: {got}\n{self.stderr(peer)}")
        return got


class PyDhtTests(PyHubTestCase):
    def test_py_provider_found_through_relayd_by_py_and_js_peers(self):
        relay, addr, relay_id = self.start(KAD.format(protocol="/ipfs/kad/1.0.0"))
        a, lines = self.spawn(PEER, "--key", "secp256k1", "provide", addr, 2)
        ready = self.ready(a, lines)
        self.assertTrue(ready["advertised"])
        a_id = ready["ready"]

        # py B is a DHT client (as go-libp2p peers behind NAT are), js B a server
        got_py = py("find", addr, a_id, "hello from py-libp2p", "client")
        got_js = js("find", addr, a_id, "hello from js-libp2p")
        for got in (got_py, got_js):
            providers = {p["id"]: p["addrs"] for p in got["providers"]}
            # relayd handed out A's own loopback address, and B dialled it
            self.assertTrue(any(a.startswith("/ip4/127.0.0.1/tcp/") for a in providers[a_id]))
            self.assertNotIn(relay_id, providers)
        # relayd advertises itself as a relay, to py-libp2p's lookups too
        self.assertEqual(got_py["relay_providers"], [relay_id])
        self.assertEqual((got_py["descord_relays"]["peer_id"], got_py["descord_relays"]["mode"]),
                         (relay_id, "relay"))
        chats = self.result(a, lines)["chats"]
        self.assertEqual(sorted((c["from"], c["message"]) for c in chats), sorted([
            (got_py["peer"], "hello from py-libp2p"), (got_js["peer"], "hello from js-libp2p")]))

        stats = json.loads(self.http(relay, "stats"))["kad"]
        self.assertGreaterEqual(stats["requests"]["add_provider"], 1)
        self.assertGreaterEqual(stats["requests"]["get_providers"], 2)
        # relayd's routing table holds the two DHT servers, A and js B, not the client
        self.assertEqual(stats["routing_table"], 2)

    def test_js_provider_found_through_relayd_by_a_py_peer(self):
        relay, addr, relay_id = self.start(KAD.format(protocol="/ipfs/kad/1.0.0"))
        a, lines = self.spawn(JS, "chat-peer", addr, 1)
        a_id = self.ready(a, lines)["ready"]
        got = py("find", addr, a_id, "hello js, from py-libp2p")
        self.assertIn(a_id, [p["id"] for p in got["providers"]])
        self.assertEqual(self.result(a, lines)["chats"],
                         [{"from": got["peer"], "message": "hello js, from py-libp2p"}])


class PyGossipTests(PyHubTestCase):
    def test_py_and_js_peers_each_connected_only_to_relayd_get_every_message_once(self):
        relay, addr, relay_id = self.start(f"[gossipsub]\ntopics = {ROOM}\n")
        each = 3
        # relayd checks each message's signature: Ed25519 and Secp256k1 keys
        # from py-libp2p, Ed25519 from js-libp2p
        peers, lines = zip(*[self.spawn(PEER, "member", addr, ROOM, each, 2 * each),
                             self.spawn(PEER, "--key", "secp256k1", "member", addr, ROOM, each,
                                        2 * each),
                             self.spawn(JS, "member", addr, ROOM, each, 2 * each)])
        ready = [self.ready(p, line) for p, line in zip(peers, lines)]
        ids = [r["ready"] for r in ready]
        # py-libp2p offers /meshsub/2.0.0 down to 1.0.0; relayd's newest is 1.1.0
        self.assertEqual([r["protocol"] for r in ready[:2]], ["/meshsub/1.1.0"] * 2)
        for p in peers:
            p.stdin.write(b"go\n")
            p.stdin.flush()
        results = [self.result(p, line) for p, line in zip(peers, lines)]

        sent = {f"{me}: message {n}" for me in ids for n in range(each)}
        for me, got in zip(ids[:2], results):   # py-libp2p's own publications, once each
            self.assertEqual(got["own"], [f"{me}: message {n}" for n in range(each)])
        for me, got in zip(ids, results):
            texts = [m["text"] for m in got["heard"]]
            self.assertEqual(sorted(texts), sorted(t for t in sent if not t.startswith(me)))
            self.assertEqual(len(texts), len(set(texts)))        # once each
            self.assertTrue(all(m["text"].startswith(m["from"] + ": ") for m in got["heard"]))
        stats = json.loads(self.http(relay, "stats"))["gossipsub"]
        self.assertEqual((stats["delivered"], stats["invalid"]), (3 * each, 0))


class PyBridgeTests(PyHubTestCase):
    def test_relay_chat_user_and_py_peer_share_the_bridged_room(self):
        relay, addr, relay_id = self.start(
            f"[tcp]\nlisten = tcp:{{tcp}}:interface=127.0.0.1\n[gossipsub]\nbridge = {ROOM}\n",
            tcp=free_port())
        chat = command() + ["--server", f"127.0.0.1:{relay.ports['tcp']}", "-q"]

        def relay_chat(*args):
            return subprocess.run(chat + list(args), check=True, timeout=60,
                                  stdout=subprocess.PIPE).stdout.decode()

        relay_chat("--id", "bob", "listen", "--join", ROOM, "--timeout", "0.5")   # bob joins
        peer, lines = self.spawn(PEER, "--key", "rsa", "member", addr, ROOM, 1, 1)  # an RSA key
        py_id = self.ready(peer, lines)["ready"]
        relay_chat("--id", "alice", "send", "--room", ROOM, "hello py-libp2p")
        peer.stdin.write(b"go\n")
        peer.stdin.flush()
        # the py peer hears alice once, published by relayd in seed 004's format
        self.assertEqual(self.result(peer, lines)["heard"],
                         [{"from": relay_id, "text": "alice: hello py-libp2p"}])
        # bob hears alice and the py peer, whose signed peer id is its sender
        heard = [json.loads(line) for line in relay_chat(
            "--id", "bob", "listen", "--json", "--count", "2", "--timeout", "30").splitlines()]
        self.assertEqual([(m["from"], m["body"], m["room"]) for m in heard],
                         [("alice", "hello py-libp2p", ROOM), (py_id, "message 0", ROOM)])
