"""Federations of real ``twistd relayd`` processes on loopback.

Each relay is started from its own generated ini with free ports and its
peers' public keys pinned; clients are plain sockets speaking the JSON
lines protocol.  Every test checks what a user would: every intended
recipient got every message exactly once, and after faults the journals of
all relays hold the same set of messages.
"""
import hashlib
import json
import os
import signal
import socket
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.trial import unittest

from relayd import tls_ca
from relayd.identity import Identity, load_or_create
from relayd.journal import segments
from relayd.journal.replay import check
from tests.daemon import Relayd, free_port, wait_for_port

FEDERATION = """
[federation]
listen = tcp:{{fed}}:interface=127.0.0.1
keepalive = 1
dead_after = 4
backoff_initial = 0.2
backoff_max = 1
"""

INI = """
[relay]
id = {name}
data_dir = {{data_dir}}
[tcp]
listen = tcp:{{tcp}}:interface=127.0.0.1
[ratelimit]
messages = 100000
per_seconds = 1""" + FEDERATION

PEER = """
[peer:{name}]
endpoint = tcp:127.0.0.1:{port}
key = {key}
"""

DEADLINE = 30.0


class Client:
    """A blocking JSON-lines client that keeps every line it receives."""

    def __init__(self, port, peer_id):
        self.peer_id = peer_id
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""
        self.messages = []
        self.acks = []
        self.send_frame({"type": "hello", "id": peer_id})
        self.welcome = self._until(lambda: self._welcome, 10)

    _welcome = None

    def send_frame(self, frame):
        self.sock.sendall(json.dumps(frame).encode() + b"\n")

    def send(self, to, body):
        self.send_frame({"type": "send", "to": to, "body": body})

    def poll(self, timeout=0.05):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return
        except OSError:
            data = b""
        if not data:
            raise ConnectionError(f"{self.peer_id}: connection closed")
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            frame = json.loads(line)
            if frame.get("type") == "message":
                self.messages.append(frame)
            elif frame.get("type") == "ack":
                self.acks.append(frame)
            elif frame.get("type") == "welcome":
                self._welcome = frame

    def _until(self, predicate, timeout=DEADLINE):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            self.poll()
        raise AssertionError(f"{self.peer_id}: timed out; got {len(self.messages)} messages")

    def bodies(self):
        return [m["body"] for m in self.messages]

    def close(self):
        self.sock.close()


def wait_all(clients, predicate, timeout=DEADLINE):
    """Poll every client until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for c in clients:
            c.poll(0.02)
    raise AssertionError("timed out: " + ", ".join(f"{c.peer_id}={len(c.messages)}" for c in clients))


class Federation:
    """``n`` relays named relay1..relayN, linked along ``edges`` (pairs of indexes)."""

    def __init__(self, testcase, n, edges):
        self.testcase = testcase
        self.names = [f"relay{i + 1}" for i in range(n)]
        self.ports = [dict(tcp=free_port(), fed=free_port()) for _ in range(n)]
        workdirs = [testcase.mktemp() for _ in range(n)]
        keys = []
        for workdir, name in zip(workdirs, self.names):
            key, _ = load_or_create(os.path.join(workdir, "var", "identity.key"))
            keys.append(Identity(name, key).public_b64)
        self.relays = []
        for i, name in enumerate(self.names):
            ini = INI.format(name=name)
            for a, b in edges:
                if i in (a, b):
                    j = b if i == a else a
                    ini += PEER.format(name=self.names[j], port=self.ports[j]["fed"], key=keys[j])
            self.relays.append(Relayd(testcase, ini, workdir=workdirs[i], **self.ports[i]))
        self.clients = []
        testcase.addCleanup(self.close_clients)

    def start(self, *which):
        which = which or range(len(self.relays))
        for i in which:
            self.relays[i].start()
        for i in which:
            for port in self.ports[i].values():
                if not wait_for_port(port, 30, process=self.relays[i].process):
                    raise AssertionError(f"{self.names[i]} did not start:\n{self.relays[i].log()}")

    def links_up(self, i, count, timeout=DEADLINE):
        """Wait until relay ``i`` logged ``count`` links up since its last start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.relays[i].log().split("federation listening on")[-1]
            if log.count("federation: link to") - 2 * log.count(" down:") >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.names[i]}: links not up:\n{self.relays[i].log()[-3000:]}")

    def client(self, i, peer_id):
        c = Client(self.ports[i]["tcp"], peer_id)
        self.clients.append(c)
        return c

    def close_clients(self):
        for c in self.clients:
            c.close()

    def records(self, i):
        """Relay ``i``'s journal records (written to the OS before each ack)."""
        directory = os.path.join(self.relays[i].data_dir, "journal")
        for segment in segments.scan(directory):
            with open(os.path.join(directory, segment.name), "rb") as f:
                for line in f:
                    record, _ = check(line)
                    if record is not None:
                        yield record

    def message_ids(self, i):
        return {r["msg_id"] for r in self.records(i) if "from" in r and "msg_id" in r}

    def wait_receipts(self, peer, count, timeout=DEADLINE):
        """Until every running relay journalled ``count`` delivery receipts for ``peer``."""
        deadline = time.monotonic() + timeout
        running = [i for i, r in enumerate(self.relays) if r.process is not None]
        while time.monotonic() < deadline:
            if all(len({r["receipt"] for r in self.records(i) if r.get("to") == peer
                        and "receipt" in r}) >= count for i in running):
                return
            time.sleep(0.05)
        raise AssertionError(f"receipts for {peer} did not reach every relay")

    def converged(self, expected_count, timeout=DEADLINE):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sets = [self.message_ids(i) for i in range(len(self.relays))
                    if self.relays[i].process is not None]
            if all(len(s) == expected_count for s in sets) and all(s == sets[0] for s in sets):
                return sets[0]
            time.sleep(0.1)
        raise AssertionError("journals differ: " + ", ".join(
            f"{n}={len(self.message_ids(i))}" for i, n in enumerate(self.names)))


def assert_exactly_once(testcase, client, expected):
    bodies = client.bodies()
    testcase.assertEqual(len(bodies), len(set(bodies)), f"{client.peer_id} saw duplicates")
    testcase.assertEqual(set(bodies), set(expected))


class TopologyTests(unittest.TestCase):
    def exchange(self, fed, count):
        """A client per relay; each sends ``count`` broadcasts and one message to each other."""
        n = len(fed.relays)
        clients = [fed.client(i, f"user{i + 1}") for i in range(n)]
        for i, c in enumerate(clients):
            for k in range(count):
                c.send("*", f"all {i + 1}.{k}")
            for j in range(n):
                if j != i:
                    c.send(f"user{j + 1}", f"direct {i + 1}->{j + 1}")
        per_client = (n - 1) * count + (n - 1)
        wait_all(clients, lambda: all(len(c.messages) >= per_client for c in clients))
        time.sleep(0.3)
        for c in clients:
            c.poll(0.05)
        for i, c in enumerate(clients):
            expected = [f"all {j + 1}.{k}" for j in range(n) if j != i for k in range(count)]
            expected += [f"direct {j + 1}->{i + 1}" for j in range(n) if j != i]
            assert_exactly_once(self, c, expected)
        fed.converged(n * count + n * (n - 1))
        return clients

    def test_line_of_three(self):
        fed = Federation(self, 3, [(0, 1), (1, 2)])
        fed.start()
        fed.links_up(1, 2)
        clients = self.exchange(fed, 10)
        from_user1 = [m for m in clients[2].messages if m["from"] == "user1"]
        self.assertEqual(from_user1[0]["seen_by"], ["relay1", "relay2", "relay3"])
        # a message for a peer offline everywhere waits for it wherever it comes
        clients[0].send("zed", "stored for zed")
        fed.converged(3 * 10 + 6 + 1)
        zed = fed.client(2, "zed")
        zed._until(lambda: zed.messages)
        self.assertEqual(zed.welcome["pending"], 1)
        self.assertEqual(zed.bodies(), ["stored for zed"])
        zed.close()
        fed.wait_receipts("zed", 1)    # the receipt travels to relay1 and relay2
        for i in (0, 1):
            again = fed.client(i, "zed")
            self.assertEqual(again.welcome["pending"], 0)
            again.close()

    def test_full_mesh_of_five(self):
        edges = [(a, b) for a in range(5) for b in range(a + 1, 5)]
        fed = Federation(self, 5, edges)
        fed.start()
        for i in range(5):
            fed.links_up(i, 4)
        self.exchange(fed, 5)


BODIES = ["h\u00e9llo \u2603 \u65e5\u672c \U0001d11e", "lone \ud800 high", "\udfff",
          "\U0001f600 and a reversed pair \udc00\ud800"]


def protocol_id(message):
    """PROTOCOL.md's message id of a delivered message: SHA-256 of json.dumps of
    its fields as created (seen_by its origin only), sorted keys, ASCII escapes."""
    hashed = {"body": message["body"], "from": message["from"],
              "seen_by": message["seen_by"][:1], "timestamp": message["timestamp"],
              "to": message["to"]}
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()


class BodyTests(unittest.TestCase):
    def test_non_ascii_and_lone_surrogate_bodies_cross_with_their_ids(self):
        """Bodies the TCP parse accepts (non-ASCII text, lone surrogates sent
        as ``\\ud800`` escapes) reach a client of the other relay intact,
        live and by catch-up, with the id the sending relay acked."""
        fed = Federation(self, 2, [(0, 1)])
        fed.start()
        fed.links_up(1, 1)
        alice, bob = fed.client(0, "alice"), fed.client(1, "bob")
        for body in BODIES:
            alice.send("bob", body)
            alice.send("*", body)
        wait_all([alice, bob], lambda: len(alice.acks) == 8 and len(bob.messages) == 8)
        fed.relays[1].stop()
        for body in BODIES:
            alice.send("bob", "later " + body)       # journaled on relay1, caught up by relay2
        wait_all([alice], lambda: len(alice.acks) == 12)
        fed.start(1)
        bob = fed.client(1, "bob")
        wait_all([bob], lambda: len(bob.messages) == 4)
        acked = [a["msg_id"] for a in alice.acks]
        delivered = fed.clients[1].messages + bob.messages
        self.assertEqual(sorted(m["body"] for m in delivered),
                         sorted(BODIES * 2 + ["later " + b for b in BODIES]))
        self.assertEqual(sorted(m["msg_id"] for m in delivered), sorted(acked))
        for m in delivered:
            self.assertEqual(m["msg_id"], protocol_id(m))
            self.assertEqual(m["seen_by"], ["relay1", "relay2"])
        fed.converged(12)


class FaultTests(unittest.TestCase):
    def stream(self, sender, count, during, pace=0.02):
        """Send ``count`` broadcasts, calling ``during(k)`` before each."""
        for k in range(count):
            during(k)
            sender.send("*", f"m{k}")
            sender.poll(0)
            time.sleep(pace)

    def test_kill_9_mid_stream(self):
        fed = Federation(self, 3, [(0, 1), (1, 2)])
        fed.start()
        fed.links_up(1, 2)
        alice, carol = fed.client(0, "alice"), fed.client(2, "carol")
        middle = fed.relays[1]

        def during(k):
            if k == 30:
                middle.kill()
            elif k == 60:
                fed.start(1)
            carol.poll(0)

        self.stream(alice, 100, during)
        wait_all([alice, carol], lambda: len(alice.acks) == 100 and len(carol.messages) >= 100)
        assert_exactly_once(self, carol, [f"m{k}" for k in range(100)])
        fed.converged(100)

    def test_cut_link_while_messages_flow(self):
        fed = Federation(self, 3, [(0, 1), (1, 2), (0, 2)])
        fed.start()
        fed.links_up(2, 2)
        alice, bob = fed.client(0, "alice"), fed.client(1, "bob")
        carol = fed.client(2, "carol")
        cut = fed.relays[2]

        def during(k):
            if k == 20:
                carol.close()
                cut.stop()
            elif k == 40:
                fed.start(2)
            if 20 <= k < 40:
                bob.send("carol", f"to carol {k}")
            bob.poll(0)

        self.stream(alice, 60, during)
        wait_all([alice, bob], lambda: len(alice.acks) == 60 and len(bob.messages) >= 60)
        carol = fed.client(2, "carol")
        wait_all([carol], lambda: len(carol.messages) >= 20)
        time.sleep(0.3)
        carol.poll(0.05)
        assert_exactly_once(self, bob, [f"m{k}" for k in range(60)])
        assert_exactly_once(self, carol, [f"to carol {k}" for k in range(20, 40)])
        fed.converged(80)
        carol.close()
        fed.wait_receipts("carol", 20)
        for i in (0, 1):
            self.assertEqual(fed.client(i, "carol").welcome["pending"], 0)


def cert_fingerprint(pem_path):
    with open(pem_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


class MutualTLSTests(unittest.TestCase):
    def test_link_over_mutual_tls(self):
        """relay2's federation listener wants TLS with a client certificate from
        the private CA (``relayd ca``); relay1 dials it with ``tls:``; each
        pins the other's certificate fingerprint."""
        ca = os.path.abspath(self.mktemp())
        tls_ca.init_ca(ca)
        certs = os.path.abspath(self.mktemp())
        issued = {name: tls_ca.issue(ca, name, out_dir=certs) for name in ("relay1", "relay2")}
        roots = os.path.abspath(self.mktemp())
        os.makedirs(roots)
        with open(os.path.join(ca, "ca.pem"), "rb") as src, \
                open(os.path.join(roots, "ca.pem"), "wb") as dst:
            dst.write(src.read())
        fed = Federation(self, 2, [(0, 1)])
        relay1, relay2 = fed.relays
        for relay, other in ((relay1, "relay2"), (relay2, "relay1")):
            with open(relay.config, "a") as f:      # the last section is [peer:<other>]
                f.write(f"tls_fingerprint = {cert_fingerprint(issued[other][0])}\n")
        with open(relay1.config) as f:
            text = f.read()
        plain = f"endpoint = tcp:127.0.0.1:{fed.ports[1]['fed']}"
        cert, key = issued["relay1"]
        secure = (f"endpoint = tls:localhost:{fed.ports[1]['fed']}:trustRoots={roots}"
                  f":certificate={cert}:privateKey={key}")
        with open(relay1.config, "w") as f:
            f.write(text.replace(plain, secure))
        cert, key = issued["relay2"]
        with open(relay2.config, "a") as f:
            f.write(f"[tls]\ncert = {cert}\nkey = {key}\nclient_ca = {ca}/ca.pem\n"
                    f"require_client_cert = yes\nlisteners = federation\n")
        fed.start()
        fed.links_up(0, 1)
        bob = fed.client(1, "bob")
        fed.client(0, "alice").send("bob", "over tls")
        wait_all([bob], lambda: bob.messages)
        self.assertEqual(bob.bodies(), ["over tls"])


class StartTests(unittest.TestCase):
    def test_seed_relays_json_without_keys_is_refused_by_name(self):
        workdir = self.mktemp()
        os.makedirs(workdir)
        path = os.path.abspath(os.path.join(workdir, "relays.json"))
        with open(path, "w") as f:
            f.write('[{"id": "relay1", "ip": "127.0.0.1", "port": 55665},\n'
                    ' {"id": "relay2", "ip": "127.0.0.1", "port": 55666}]\n'
                    '### you need to delete the ip of the relay you are running\n')
        relay = Relayd(self, INI.format(name="relay1") + f"peers_file = {path}\n",
                       workdir=workdir, tcp=free_port(), fed=free_port())
        code, output = relay.run_to_exit()
        self.assertNotEqual(code, 0)
        self.assertIn(f"{path}: relay 'relay2': needs a key or a fingerprint", output)
        self.assertIn("ignored 1 comment line", output)


class RelaysJsonTests(unittest.TestCase):
    def test_one_relays_json_shared_by_every_relay(self):
        """The seed's file lists every relay, itself included, plus each "key"."""
        fed = Federation(self, 3, [])
        entries = []
        for name, ports, relay in zip(fed.names, fed.ports, fed.relays):
            key, _ = load_or_create(os.path.join(relay.data_dir, "identity.key"))
            entries.append({"id": name, "ip": "127.0.0.1", "port": ports["fed"],
                            "key": Identity(name, key).public_b64})
        path = os.path.abspath(os.path.join(self.mktemp() + ".json"))
        with open(path, "w") as f:
            json.dump(entries, f)
        for relay in fed.relays:
            with open(relay.config, "a") as f:
                f.write(f"peers_file = {path}\n")     # the last section is [federation]
        fed.start()
        fed.links_up(0, 2)
        users = [fed.client(i, f"user{i + 1}") for i in range(3)]
        users[0].send("*", "to everyone")
        users[2].send("user2", "to user2")
        wait_all(users, lambda: len(users[1].messages) == 2 and users[2].messages)
        assert_exactly_once(self, users[1], ["to everyone", "to user2"])
        assert_exactly_once(self, users[2], ["to everyone"])


class ReloadTests(unittest.TestCase):
    def test_peers_added_and_removed_on_sighup(self):
        fed = Federation(self, 2, [])
        fed.start()
        alice, bob = fed.client(0, "alice"), fed.client(1, "bob")
        configs = [r.config for r in fed.relays]
        pubs = [Identity(n, load_or_create(os.path.join(r.data_dir, "identity.key"))[0]).public_b64
                for n, r in zip(fed.names, fed.relays)]
        for i, path in enumerate(configs):
            j = 1 - i
            with open(path, "a") as f:
                f.write(PEER.format(name=fed.names[j], port=fed.ports[j]["fed"], key=pubs[j]))
            fed.relays[i].process.send_signal(signal.SIGHUP)
        fed.links_up(0, 1)
        alice.send("bob", "after reload")
        wait_all([bob], lambda: bob.messages)
        self.assertEqual(bob.bodies(), ["after reload"])
        # removing the peer drops the link but no client
        for i, path in enumerate(configs):
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(text.split("[peer:")[0])
            fed.relays[i].process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + DEADLINE
        while "peer relay2 removed" not in fed.relays[0].log() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        alice.send("*", "not federated")
        alice._until(lambda: len(alice.acks) == 2)
        time.sleep(0.5)
        bob.poll(0.05)
        self.assertEqual(bob.bodies(), ["after reload"])     # and bob is still connected
        self.assertEqual((len(fed.message_ids(0)), len(fed.message_ids(1))), (2, 1))
