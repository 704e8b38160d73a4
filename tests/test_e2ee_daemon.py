"""End-to-end encryption with relay-chat processes against real twistd relays:
what the journals hold, offline recipients, replays, key changes, private
rooms, require_encryption, and a peer homed on a federated relay."""
import base64
import json
import os
import socket
import subprocess
import time
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from relayd.client import keys
from relayd.e2ee import seal
from relayd.tcp.protocol import auth_payload
from tests.daemon import REPO, Relayd, free_port, relay_ini
from tests import test_client_e2e, test_e2e_daemon
from tests.test_federation_e2e import Federation

INI = relay_ini("""
[ratelimit]
messages = 1000
per_seconds = 1
[e2ee]
require_encryption = yes
[http]
listen = tcp:{http}:interface=127.0.0.1
""", id="relayT")


def everything_written(*directories):
    """Every byte of every file under ``directories`` (journals, tables, logs)."""
    data = b""
    for top in directories:
        for root, _, files in os.walk(top):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    data += f.read()
    return data


def journal_bodies(data_dir):
    """The bodies of the messages in the relay's journal (checked records)."""
    return [r["body"] for r in test_e2e_daemon.journal_records(data_dir) if "body" in r]


class ProvedClient:
    """A raw JSON-lines socket proving ``peer_id`` with its key file."""

    def __init__(self, port, peer_id, key_file):
        identity = keys.load(key_file, peer_id)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=test_client_e2e.WAIT)
        self.reader = self.sock.makefile("rb")
        challenge = self.ask({"type": "hello", "id": peer_id, "key": identity.public_b64})
        signature = identity.sign(auth_payload(challenge["relay"], peer_id, challenge["challenge"]))
        self.welcome = self.ask({"type": "auth", "signature": base64.b64encode(signature).decode()})

    def ask(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")
        return json.loads(self.reader.readline())

    def close(self):
        self.reader.close()
        self.sock.close()


class Chat:
    """relay-chat run as a subprocess, as in test_client_e2e."""
    args = test_client_e2e.RelayChatE2E.args
    run_chat = test_client_e2e.RelayChatE2E.run_chat
    start_chat = test_client_e2e.RelayChatE2E.start_chat
    reap = test_client_e2e.RelayChatE2E.reap
    wait_line = test_client_e2e.RelayChatE2E.wait_line


class OneRelay(Chat, SynchronousTestCase):
    def setUp(self):
        self.port, self.http = free_port(), free_port()
        self.relay = Relayd(self, INI, tcp=self.port, http=self.http)
        self.relay.start(wait_tcp=[self.port, self.http])
        self.keys = {}
        for name in ("alice", "bob"):
            self.keys[name] = os.path.join(self.relay.workdir, name + ".key")
            code, _, err = self.run_chat("genkey", self.keys[name], server=False)
            self.assertEqual(code, 0, err)

    def as_(self, name, *args):
        return ("--id", name, "--key", self.keys[name]) + args

    def test_offline_recipient_reads_and_no_relay_file_holds_the_plaintext(self):
        code, out, err = self.run_chat(*self.as_("bob", "keys"))
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"^bob sha256:[0-9a-f]{32} one-time prekeys on the relay: 50\n$")
        errors = ""
        for n in range(2):                                   # bob is offline
            code, out, err = self.run_chat(*self.as_("alice", "send", "--to", "bob",
                                                     f"CANARY-{n} meet at noon"))
            self.assertEqual(code, 0, err)
            errors += err
        self.assertEqual(errors.count("pinned the key of bob on first use"), 1)
        code, out, err = self.run_chat(*self.as_("bob", "listen", "--json", "--count", "2",
                                                 "--timeout", str(test_client_e2e.WAIT)))
        self.assertEqual(code, 0, err)
        got = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([(m["from"], m["body"], m["e2ee"]) for m in got],
                         [("alice", f"CANARY-{n} meet at noon", True) for n in range(2)])
        bodies = journal_bodies(self.relay.data_dir)
        self.assertEqual(len(bodies), 2)
        self.assertTrue(all(b.startswith("relayd-e2ee/1 dm ") for b in bodies))
        self.assertNotIn(b"CANARY", everything_written(self.relay.data_dir))
        self.assertNotIn("CANARY", self.relay.log())
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/stats", timeout=10) as page:
            stats = page.read()
        self.assertNotIn(b"CANARY", stats)
        self.assertEqual(json.loads(stats)["e2ee"], {"ids": 1, "prekeys": 48, "handed_out": 2})

        # A replay of a stored ciphertext (here by someone holding alice's session)
        # is refused by bob's client, not shown.
        replayer = ProvedClient(self.port, "alice", self.keys["alice"])
        self.addCleanup(replayer.close)
        ack = replayer.ask({"type": "send", "to": "bob", "body": bodies[0], "nonce": "again"})
        self.assertEqual(ack["type"], "ack")
        # So is a fresh ciphertext with one byte flipped on its way.
        prekey = replayer.ask({"type": "keys_fetch", "id": "bob"})["opk"]["key"]
        body = seal.seal_dm(keys.load(self.keys["alice"], "alice"), "alice", "bob",
                            base64.b64decode(prekey), seal.OPK,
                            {"k": "text", "body": "CANARY flipped", "mid": "f" * 32, "ts": 1.0})
        i = len(body) // 2
        flipped = body[:i] + ("B" if body[i] == "A" else "A") + body[i + 1:]
        ack = replayer.ask({"type": "send", "to": "bob", "body": flipped, "nonce": "flipped"})
        self.assertEqual(ack["type"], "ack")
        # A plaintext DM between two keyed ids is refused by [e2ee] require_encryption.
        refused = replayer.ask({"type": "send", "to": "bob", "body": "CANARY in the clear"})
        self.assertEqual(refused["error"], "encryption_required")
        code, out, err = self.run_chat(*self.as_("bob", "listen", "--count", "1",
                                                 "--timeout", "3"))
        self.assertEqual((code, out), (4, ""), err)
        self.assertEqual(err.count("refused an encrypted message from 'alice'"), 2, err)
        self.assertIn("already used", err)
        self.assertIn("does not decrypt", err)

        # A plain client (no key) still talks to keyed ids in the clear.
        code, out, err = self.run_chat("--id", "dan", "send", "--to", "bob", "plain hello")
        self.assertEqual(code, 0, err)
        self.assertIn("plain hello", journal_bodies(self.relay.data_dir))
        self.assertNotIn(b"CANARY", everything_written(self.relay.data_dir))

    def test_a_changed_key_is_refused_loudly_and_verify_shows_it(self):
        for name in ("alice", "bob"):
            self.assertEqual(self.run_chat(*self.as_(name, "keys"))[0], 0)
        code, out, err = self.run_chat(*self.as_("alice", "verify", "bob"))
        self.assertEqual(code, 0, err)
        safety = [line for line in out.splitlines() if line.startswith("safety number: ")]
        code, bob_out, err = self.run_chat(*self.as_("bob", "verify", "alice"))
        self.assertEqual(code, 0, err)
        self.assertIn(safety[0], bob_out)                    # both sides see the same number
        # alice's pin for bob no longer matches what the relay serves
        store = self.keys["alice"] + ".e2ee"
        with open(store) as f:
            data = json.load(f)
        data["pins"]["bob"] = base64.b64encode(b"\x01" * 32).decode()
        with open(store, "w") as f:
            json.dump(data, f)
        code, out, err = self.run_chat(*self.as_("alice", "send", "--to", "bob", "CANARY"))
        self.assertEqual(code, 1)
        self.assertIn("THE KEY OF bob HAS CHANGED", err)
        code, out, err = self.run_chat(*self.as_("alice", "verify", "bob"))
        self.assertEqual(code, 3)
        self.assertIn("ANOTHER key", err)
        code, out, err = self.run_chat(*self.as_("alice", "verify", "bob", "--accept"))
        self.assertEqual(code, 0, err)
        self.assertEqual(self.run_chat(*self.as_("alice", "send", "--to", "bob", "ok"))[0], 0)
        self.assertEqual(os.stat(store).st_mode & 0o777, 0o600)

    def wait_joined(self, room, members=1):
        """Until the relay counts ``members`` in ``room``."""
        deadline = time.monotonic() + test_client_e2e.WAIT
        while time.monotonic() < deadline:
            code, out, err = self.run_chat("--id", "watcher", "rooms", "--json")
            if json.loads(out or "{}").get(room, 0) >= members:
                return
            time.sleep(0.2)
        self.fail(f"#{room} never had {members} member(s)")

    def test_chat_console_encrypts_too(self):
        self.assertEqual(self.run_chat(*self.as_("bob", "keys"))[0], 0)
        done = subprocess.run(self.args(*self.as_("alice", "chat")), input="/to bob\nCHATCANARY\n",
                              cwd=REPO, env=test_client_e2e.ENV, capture_output=True, text=True,
                              timeout=test_client_e2e.WAIT)
        self.assertEqual(done.returncode, 0, done.stderr)
        code, out, err = self.run_chat(*self.as_("bob", "listen", "--count", "1",
                                                 "--timeout", str(test_client_e2e.WAIT)))
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"alice -> bob: CHATCANARY\n$")
        self.assertNotIn(b"CHATCANARY", everything_written(self.relay.data_dir))

    def test_private_room(self):
        self.assertEqual(self.run_chat(*self.as_("bob", "keys"))[0], 0)
        code, out, err = self.run_chat(*self.as_("alice", "room-invite", "secret", "bob"))
        self.assertEqual(code, 0, err)
        bob = self.start_chat(*self.as_("bob", "listen", "--join", "#secret", "--count", "1",
                                        "--timeout", str(test_client_e2e.WAIT)))
        self.wait_line(bob.stderr, "#secret: key of epoch 1 from alice")
        code, out, err = self.run_chat(*self.as_("alice", "send", "--room", "secret",
                                                 "ROOMCANARY"))
        self.assertEqual(code, 0, err)
        out, err = bob.communicate(timeout=test_client_e2e.WAIT)
        self.assertEqual(bob.returncode, 0, err)
        self.assertRegex(out, r"alice -> #secret: ROOMCANARY\n$")
        # bob is removed: the key is rotated, and bob cannot read what follows
        code, out, err = self.run_chat(*self.as_("alice", "room-remove", "secret", "bob"))
        self.assertEqual(code, 0, err)
        self.assertIn("#secret: bob removed; key rotated to epoch 2", err)
        bob = self.start_chat(*self.as_("bob", "listen", "--join", "#secret", "--count", "1",
                                        "--timeout", "8"))
        self.wait_line(bob.stderr, "connected as bob")
        self.wait_joined("secret")
        code, out, err = self.run_chat(*self.as_("alice", "send", "--room", "secret",
                                                 "ROOMCANARY after"))
        self.assertEqual(code, 0, err)
        out, err = bob.communicate(timeout=test_client_e2e.WAIT)
        self.assertEqual((bob.returncode, out), (4, ""), err)
        self.assertIn("no key for epoch 2 of #secret", err)
        # a member who leaves tells the owner, whose client rotates the key
        code, out, err = self.run_chat(*self.as_("alice", "room-invite", "secret", "bob"))
        self.assertEqual(code, 0, err)
        code, out, err = self.run_chat(*self.as_("bob", "listen", "--count", "1",
                                                 "--timeout", "3"))
        self.assertIn("#secret: key of epoch 2 from alice", err)
        code, out, err = self.run_chat(*self.as_("bob", "room-leave", "secret"))
        self.assertEqual(code, 0, err)
        code, out, err = self.run_chat(*self.as_("alice", "listen", "--count", "1",
                                                 "--timeout", "3"))
        self.assertIn("#secret: bob removed; key rotated to epoch 3", err)
        self.assertNotIn(b"ROOMCANARY", everything_written(self.relay.data_dir))
        self.assertTrue(any(b.startswith("relayd-e2ee/1 room ")
                            for b in journal_bodies(self.relay.data_dir)))


class Federated(Chat, SynchronousTestCase):
    def test_a_peer_of_another_relay(self):
        fed = Federation(self, 2, [(0, 1)])
        fed.start()
        fed.links_up(0, 1)
        fed.links_up(1, 1)
        keyfile = {}
        for name in ("alice", "carol"):
            keyfile[name] = os.path.abspath(self.mktemp())
            self.assertEqual(self.run_chat("genkey", keyfile[name], server=False)[0], 0)
        self.port = fed.ports[1]["tcp"]                      # carol's home is relay2
        code, out, err = self.run_chat("--id", "carol", "--key", keyfile["carol"], "keys")
        self.assertEqual(code, 0, err)
        self.port = fed.ports[0]["tcp"]                      # alice is on relay1
        code, out, err = self.run_chat("--id", "alice", "--key", keyfile["alice"], "send",
                                       "--to", "carol", "FEDCANARY over two relays")
        self.assertEqual(code, 0, err)
        self.port = fed.ports[1]["tcp"]
        code, out, err = self.run_chat("--id", "carol", "--key", keyfile["carol"], "listen",
                                       "--count", "1", "--timeout", str(test_client_e2e.WAIT))
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"alice -> carol: FEDCANARY over two relays\n$")
        for relay in fed.relays:
            self.assertNotIn(b"FEDCANARY", everything_written(relay.data_dir))
            self.assertNotIn("FEDCANARY", relay.log())
