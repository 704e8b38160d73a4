"""The GossipSub <-> room bridge on real daemons: a js-libp2p gossipsub peer,
relay-chat (the installed CLI) and raw-socket clients share one room across
two federated relays, only the first of which speaks libp2p."""
import json
import subprocess
import time
import urllib.request

from twisted.trial import unittest

from tests.daemon import free_port
from tests.test_client_cli import command as relay_chat_command
from tests.test_federation_e2e import DEADLINE, Federation, wait_all
from tests.test_libp2p_interop import INTEROP, NODE, SCRIPT, ensure_packages

HUB = """
[http]
listen = tcp:{http}:interface=127.0.0.1
[libp2p]
listen = tcp:{p2p}:interface=127.0.0.1
[gossipsub]
bridge = libp2p-chat
"""
ROOM = "libp2p-chat"


def json_lines(pipe):
    """Yields the JSON lines a process prints, skipping anything else."""
    for line in iter(pipe.readline, b""):
        if line.startswith(b"{"):
            yield json.loads(line)


class BridgeTests(unittest.TestCase):
    timeout = 300

    def setUp(self):
        ensure_packages()

    def start(self):
        fed = Federation(self, 2, [(0, 1)])
        hub = fed.relays[0]
        hub.ports.update(p2p=free_port(), http=free_port())
        with open(hub.config, "a") as f:
            f.write(HUB.format(**hub.ports))
        fed.start()
        fed.links_up(0, 1)
        fed.links_up(1, 1)
        deadline = time.monotonic() + DEADLINE
        while "(peer id " not in hub.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        relay_id = hub.log().split("(peer id ")[1].split(")")[0]
        return fed, f"/ip4/127.0.0.1/tcp/{hub.ports['p2p']}/p2p/{relay_id}", relay_id

    def relay_chat(self, fed, i, *args):
        done = subprocess.run(relay_chat_command() + ["--server", f"127.0.0.1:{fed.ports[i]['tcp']}",
                                                 *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr.decode())
        return done.stdout.decode()

    def test_one_room_across_libp2p_relay_chat_and_federation(self):
        fed, addr, relay_id = self.start()
        alice, carol = fed.client(0, "alice"), fed.client(1, "carol")
        for member in (alice, carol):
            member.send_frame({"type": "join", "room": ROOM})
        # erin stays a member of the room after relay-chat exits
        self.relay_chat(fed, 0, "--id", "erin", "listen", "--join", ROOM, "--timeout", "0.5")
        js = subprocess.Popen([NODE, SCRIPT, "bridge", addr, ROOM, "hello from libp2p", "2"],
                              cwd=INTEROP, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: js.poll() is None and js.kill())
        lines = json_lines(js.stdout)
        js_peer = next(lines)["ready"]

        # libp2p -> room: both relays' members get it once, from the libp2p peer id
        wait_all([alice, carol], lambda: alice.messages and carol.messages)
        for member in (alice, carol):
            [got] = member.messages
            self.assertEqual((got["from"], got["body"], got["room"], got["via"]),
                             (js_peer, "hello from libp2p", ROOM, "gossipsub"))

        # room -> libp2p: relay-chat on the hub, a raw client on the federated relay
        self.relay_chat(fed, 0, "--id", "bob", "send", "--room", ROOM, "hello from relay-chat")
        carol.send_frame({"type": "send", "room": ROOM, "body": "hello from the other relay"})
        heard = next(lines)["heard"]
        js.wait(30)
        self.assertEqual(sorted(heard, key=lambda h: h["text"]), [
            {"from": relay_id, "text": "bob: hello from relay-chat"},
            {"from": relay_id, "text": "carol: hello from the other relay"}])

        # kept in history on both relays, journaled once
        for i in (0, 1):
            history = [json.loads(line) for line in self.relay_chat(
                fed, i, "--id", "dave", "history", "--room", ROOM, "--json").splitlines()]
            self.assertEqual([(m["from"], m["body"]) for m in history][0],
                             (js_peer, "hello from libp2p"))
        journaled = [r for r in fed.records(0) if r.get("body") == "hello from libp2p"]
        self.assertEqual(len(journaled), 1)
        wait_all([alice], lambda: len(alice.messages) == 3)
        time.sleep(1)
        alice.poll()
        self.assertEqual(sorted(alice.bodies()), ["hello from libp2p", "hello from relay-chat",
                                                  "hello from the other relay"])
        url = f"http://127.0.0.1:{fed.relays[0].ports['http']}/stats"
        with urllib.request.urlopen(url, timeout=10) as response:
            bridge = json.loads(response.read())["gossipsub"]["bridge"]
        self.assertEqual((bridge["in"], bridge["out"]), (1, 2))

        # the offline member gets all three from its mailbox, in order
        stored = [json.loads(line) for line in self.relay_chat(
            fed, 0, "--id", "erin", "listen", "--json", "--count", "3", "--timeout", "30"
        ).splitlines()]
        self.assertEqual([(m["from"], m["body"]) for m in stored], [
            (js_peer, "hello from libp2p"), ("bob", "hello from relay-chat"),
            ("carol", "hello from the other relay")])
