"""relay-chat p2p: the installed CLI as a libp2p chat peer against the real
daemon (DHT bootstrap, GossipSub hub) and unmodified js-libp2p peers."""
import base64
import json
import os
import subprocess
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial import unittest

from relayd.client.p2p import read_key
from relayd.libp2p import chat
from relayd.libp2p.peerid import KeyPair
from tests.daemon import free_port
from tests.test_bridge_e2e import json_lines
from tests.test_client_cli import command
from tests.test_libp2p_hub_interop import HubTestCase
from tests.test_libp2p_interop import INTEROP, NODE, SCRIPT
from tests.test_nat_traversal import netns_unavailable, run

HUB = """
[tcp]
listen = tcp:{tcp}:interface=127.0.0.1
[kad]
[gossipsub]
bridge = libp2p-chat
"""


def p2p(*args, timeout=60):
    return subprocess.run(command() + ["p2p", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)


class KeyFileTests(unittest.TestCase):
    def test_genkey_writes_seed_003s_format_once(self):
        path = self.mktemp()
        done = p2p("genkey", path)
        self.assertEqual(done.returncode, 0, done.stderr)
        with open(path) as f:
            text = f.read()
        self.assertTrue(text.startswith("CAESQ"))                 # PrivateKey{Ed25519, 64 bytes}
        self.assertEqual(len(base64.b64decode(text)), 68)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(done.stdout.decode().strip(), str(read_key(path).peer_id))
        again = p2p("genkey", path)
        self.assertEqual(again.returncode, 1)
        self.assertIn("refusing to overwrite", again.stderr.decode())

    def test_the_legacy_96_byte_form_and_bad_files(self):
        key = Ed25519PrivateKey.generate()
        keypair = KeyPair(key)
        from cryptography.hazmat.primitives import serialization
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        pub = keypair.public_key[4:]
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(base64.b64encode(b"\x08\x01\x12\x60" + seed + pub + pub).decode())
        self.assertEqual(read_key(path).peer_id, keypair.peer_id)
        with open(path, "w") as f:
            f.write(base64.b64encode(b"\x08\x01\x12\x20" + seed).decode())   # the README's made-up form
        done = p2p("ping", "--key", path, "/ip4/127.0.0.1/tcp/1")
        self.assertEqual(done.returncode, 1)
        self.assertIn("does not hold an Ed25519 libp2p private key", done.stderr.decode())

    def test_chat_bytes_are_one_json_string_and_a_newline(self):
        self.assertEqual(chat.encode("Hello, this is a test message!"),
                         b'"Hello, this is a test message!"\n')
        self.assertRaises(ValueError, chat.decode, b'{"text": "an object"}\n')


class P2pPeerTests(HubTestCase):
    def start_hub(self):
        tcp = free_port()
        relay, addr, relay_id = self.start(HUB.format(tcp=tcp))
        return relay, addr, relay_id, tcp

    def background(self, args, node=False):
        argv = [NODE, SCRIPT, *args] if node else command() + ["p2p", *args]
        proc = subprocess.Popen(argv, cwd=INTEROP if node else None, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        return proc

    def test_dht_find_send_and_listen_with_a_js_peer(self):
        relay, addr, relay_id, _ = self.start_hub()
        done = p2p("ping", addr, "--count", "2")
        pongs = done.stdout.decode().splitlines()
        self.assertEqual(len(pongs), 2, done.stderr)
        self.assertTrue(all(p.startswith(f"pong from {relay_id}: ") and p.endswith(" ms")
                            for p in pongs))

        key = self.mktemp()
        me = p2p("genkey", key).stdout.decode().strip()
        listener = self.background(["listen", "--key", key, "--bootstrap", addr, "--count", "1"])
        listening = listener.stdout.readline().decode()
        self.assertTrue(listening.startswith("listening on /ip4/127.0.0.1/tcp/"))
        self.assertEqual(listener.stdout.readline().decode(),
                         "advertised /private-chat/1.0.0 to 1 peers\n")
        js = self.background(["chat-peer", addr, "1"], node=True)
        lines = json_lines(js.stdout)
        js_peer = next(lines)["ready"]

        found = p2p("dht", "--bootstrap", addr, "--json").stdout.decode().splitlines()
        self.assertEqual(sorted(json.loads(line)["peer"] for line in found), sorted([me, js_peer]))
        where = p2p("find", "--bootstrap", addr, js_peer)
        self.assertTrue(where.stdout.decode().startswith("/ip4/127.0.0.1/tcp/"), where.stderr)
        sent = p2p("send", "--bootstrap", addr, js_peer, "hello", "js")
        self.assertEqual(sent.returncode, 0, sent.stderr)

        result = next(lines)
        self.assertEqual(len(result["chats"]), 1)
        self.assertEqual(result["chats"][0]["message"], "hello js")
        self.assertEqual(result["answered"], [me])                  # js found the listener
        out, err = listener.communicate(timeout=60)
        self.assertEqual(listener.returncode, 0, err)
        self.assertEqual(out.decode(), f"{js_peer}: hello relay-chat\n")

        missing = p2p("find", "--bootstrap", addr, str(KeyPair(Ed25519PrivateKey.generate()).peer_id))
        self.assertEqual(missing.returncode, 3)
        self.assertIn("no address for", missing.stderr.decode())
        refused = p2p("ping", "/ip4/127.0.0.1/tcp/%d" % free_port(), "--timeout", "5")
        self.assertEqual(refused.returncode, 2)

    def test_room_with_relay_chat_users(self):
        relay, addr, relay_id, tcp = self.start_hub()
        chat_cli = command() + ["-q", "--server", f"127.0.0.1:{tcp}", "--id", "zoe"]
        zoe = subprocess.Popen(chat_cli + ["listen", "--join", "libp2p-chat", "--count", "1",
                                           "--json", "--timeout", "30"], stdout=subprocess.PIPE)
        self.addCleanup(lambda: zoe.poll() is None and zoe.kill())
        rooms = command() + ["-q", "--server", f"127.0.0.1:{tcp}", "--id", "ops", "rooms", "--json"]
        deadline = time.monotonic() + 20
        while not json.loads(subprocess.run(rooms, stdout=subprocess.PIPE, timeout=30)
                             .stdout or b"{}").get("libp2p-chat"):
            self.assertLess(time.monotonic(), deadline, "zoe never joined")
            time.sleep(0.1)
        room = self.background(["room", "--relay", addr, "--say", "hi from p2p", "--count", "1"])
        got = json.loads(zoe.communicate(timeout=60)[0])
        self.assertEqual((got["body"], got["via"]), ("hi from p2p", "gossipsub"))
        subprocess.run(chat_cli + ["send", "--room", "libp2p-chat", "hello p2p"], check=True,
                       stdout=subprocess.PIPE, timeout=60)
        out, err = room.communicate(timeout=60)
        self.assertEqual(room.returncode, 0, err)
        self.assertEqual(out.decode(), "zoe: hello p2p\n")

    def test_con_send_and_listen_through_the_relays_circuit(self):
        relay, addr, relay_id, _ = self.start_hub()
        js = self.background(["chat-reserved", addr, "1"], node=True)
        lines = json_lines(js.stdout)
        js_peer = next(lines)["ready"]          # reachable only through relayd
        con = p2p("con", "--relay", addr, js_peer)
        self.assertEqual(con.returncode, 0, con.stderr)
        said = con.stdout.decode().splitlines()
        self.assertEqual(said[0], f"connected to {js_peer} through the relay {addr}")
        self.assertIn("/private-chat/1.0.0", said[1])
        self.assertTrue(said[1].startswith("remote supports: "))
        no_relay = p2p("con", "--bootstrap", addr, js_peer)
        self.assertEqual(no_relay.returncode, 3)
        sent = p2p("send", "--relay", addr, js_peer, "through", "the", "circuit")
        self.assertEqual(sent.returncode, 0, sent.stderr)
        self.assertEqual(next(lines)["chats"][0]["message"], "through the circuit")

        listener = self.background(["listen", "--relay", addr, "--count", "1"])
        self.assertTrue(listener.stdout.readline().startswith(b"listening on "))
        circuit = listener.stdout.readline().decode().split(" at ")[1].strip()
        self.assertTrue(circuit.startswith(f"{addr}/p2p-circuit/p2p/12D3KooW"))
        said = subprocess.run([NODE, SCRIPT, "say", circuit, "hello through relayd"], cwd=INTEROP,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(said.returncode, 0, said.stderr[-2000:])
        js_sender = json.loads(said.stdout.decode().splitlines()[-1])["peer"]
        out, err = listener.communicate(timeout=60)
        self.assertEqual(out.decode().splitlines()[-1], f"{js_sender}: hello through relayd")
        self.assertIn("reservation accepted", relay.log())


class MdnsTests(unittest.TestCase):
    """Two relay-chat p2p peers in one network namespace (multicast on its lo)."""

    def setUp(self):
        reason = netns_unavailable()
        if reason:
            raise unittest.SkipTest(reason)
        self.ns = f"rcmdns{os.getpid() % 100000}"
        run("ip", "netns", "add", self.ns)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", self.ns], capture_output=True)
        run("ip", "link", "set", "lo", "up", ns=self.ns)
        run("ip", "link", "set", "lo", "multicast", "on", ns=self.ns)
        run("ip", "route", "add", "224.0.0.0/4", "dev", "lo", ns=self.ns)

    def p2p(self, *args):
        return ["ip", "netns", "exec", self.ns] + command() + ["p2p", *args]

    def test_a_listener_is_found_on_the_local_network_and_reached(self):
        listener = subprocess.Popen(self.p2p("listen", "--mdns", "--count", "1"),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: listener.poll() is None and listener.kill())
        addr = listener.stdout.readline().decode().split("listening on ")[1].strip()
        self.assertEqual(listener.stdout.readline(), b"announced on mDNS\n")
        found = subprocess.run(self.p2p("mdns", "--wait", "2"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(found.returncode, 0, found.stderr)
        peer = addr.split("/p2p/")[1]
        self.assertEqual(found.stdout.decode(), f"{peer} {addr}\n")
        sent = subprocess.run(self.p2p("send", addr, "hello", "neighbour"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(sent.returncode, 0, sent.stderr)
        out, _ = listener.communicate(timeout=60)
        self.assertTrue(out.decode().endswith(": hello neighbour\n"))

    def test_nobody_there(self):
        found = subprocess.run(self.p2p("mdns", "--wait", "1"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=60)
        self.assertEqual((found.returncode, found.stdout), (3, b""))
