"""Cluster mode end to end: a three-node nats-server JetStream cluster and
relayd nodes (twistd subprocesses) on free loopback ports.

Clients on different nodes chat directly and in rooms; a peer offline on one
node gets its mail on another; kill -9 of a relayd node or of an engine node
while messages flow loses no message the sender was acked for.
"""
import base64
import collections
import json
import socket
import threading
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.trial import unittest

from relayd.tcp.protocol import auth_payload

from tests.daemon import Relayd, free_port, relay_ini
from tests.engine import nats_engine
from tests.test_metrics_docs import documented_metrics, exposed_metrics
from tests.test_ops_support import http_get

READY_LINE = "accepting messages"


def lines_after(lines):
    """What a closed connection's line reader still gives: b"" once it ended."""
    try:
        return lines.read()
    except OSError as e:
        return repr(e).encode()


def cluster_ini(urls, node, ratelimit=("messages = 100000",)):
    lines = "\n        ".join(ratelimit)
    return relay_ini(f"""
        [ratelimit]
        {lines}
        [http]
        listen = tcp:{{http}}:interface=127.0.0.1
        [cluster]
        engine = {", ".join(urls)}
        node = {node}
        timeout = 2
        liveness = 3
        """, id="clustered")


class Client:
    """A blocking JSON-lines client that acks what it gets and reconnects
    (to ``ports`` in turn) when its node goes away."""

    def __init__(self, ports, peer_id, acks=True):
        self.ports = list(ports)
        self.peer_id = peer_id
        self.acks = acks
        self.received = {}          # msg_id -> body
        self.counts = collections.Counter()     # msg_id -> times handed to this client
        self.lock = threading.Lock()
        self._connect()

    def _connect(self, deadline=30.0):
        end = time.monotonic() + deadline
        while True:
            port = self.ports[0]
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                self.file = self.sock.makefile("rb")
                self.request(type="hello", id=self.peer_id, acks=self.acks)
                welcome = self.read()
                if welcome.get("type") == "welcome":
                    return
            except OSError:
                pass
            self.ports.append(self.ports.pop(0))
            if time.monotonic() > end:
                raise AssertionError(f"{self.peer_id} could not connect to {self.ports}")
            time.sleep(0.2)

    def request(self, **obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def read(self):
        """The next object that is not a message (those are collected and acked)."""
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError
            obj = json.loads(line)
            if obj.get("type") != "message":
                return obj
            if self.acks:               # acked before it counts as received
                self.request(type="ack", ids=[obj["msg_id"]])
            with self.lock:
                self.received[obj["msg_id"]] = obj["body"]
                self.counts[obj["msg_id"]] += 1

    def send(self, **obj):
        """Send until acked (reconnecting to the next node if need be); the ack."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.request(type="send", **obj)
                reply = self.read()
                if reply.get("type") == "ack":
                    return reply
                time.sleep(0.1)         # refused (engine lost): retry
            except (OSError, EOFError):
                self.ports.append(self.ports.pop(0))
                self._connect()
        raise AssertionError(f"no ack for {obj}")

    def repeated(self):
        """``{body: times}`` of the messages handed to this client more than once."""
        with self.lock:
            return {self.received[msg_id]: n for msg_id, n in self.counts.items() if n > 1}

    def listen(self):
        """Collect messages in a thread, reconnecting when the node dies."""
        self._stop = False

        def run():
            while not self._stop:
                try:
                    self.read()
                except (OSError, EOFError, ValueError):
                    if self._stop:
                        return
                    self.ports.append(self.ports.pop(0))
                    self._connect()
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def wait_for(self, bodies, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                missing = set(bodies) - set(self.received.values())
            if not missing:
                return set()
            time.sleep(0.05)
        return missing

    def close(self):
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class ClusterTestMixin:
    def start_cluster(self, nodes=2, **ini):
        self.engine = nats_engine(self)
        self.relays = []
        for i in range(nodes):
            relay = Relayd(self, cluster_ini(self.engine.urls, "n%d" % i, **ini), tcp=free_port(),
                           http=free_port())
            relay.start(wait_tcp=[relay.ports["tcp"]])
            self.relays.append(relay)
        for relay in self.relays:
            self.wait_ready(relay)
        return [relay.ports["tcp"] for relay in self.relays]

    def wait_ready(self, relay, timeout=60.0):
        self.wait_log(relay, READY_LINE, timeout)

    def wait_log(self, relay, text, timeout=30.0):
        deadline = time.monotonic() + timeout
        while text not in relay.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the log:\n" + relay.log())
            time.sleep(0.1)

    def wait_metric(self, relay, name, least, timeout=30.0):
        """Wait until ``relay`` counts at least ``least`` in metric ``name``."""
        deadline = time.monotonic() + timeout
        while True:
            body = http_get(relay.ports["http"], "/metrics")[1].decode()
            values = [float(line.split()[1]) for line in body.splitlines()
                      if line.startswith(name + " ")]
            if values and values[0] >= least:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} stayed under {least}: {values}")
            time.sleep(0.1)

    def client(self, ports, peer_id):
        client = Client(ports, peer_id)
        self.addCleanup(client.close)
        return client

    def hello(self, port, peer_id, key=None):
        """Say hello as ``peer_id`` (proving ``key`` if given): ``(the
        answer, the socket, its line reader)``."""
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        lines = conn.makefile("rb")
        self.addCleanup(conn.close)
        self.addCleanup(lines.close)
        request = {"type": "hello", "id": peer_id}
        if key is not None:
            public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            request["key"] = base64.b64encode(public).decode()
        conn.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(lines.readline())
        if reply.get("type") == "challenge":
            signature = key.sign(auth_payload("clustered", peer_id, reply["challenge"]))
            conn.sendall(json.dumps({"type": "auth", "signature":
                                     base64.b64encode(signature).decode()}).encode() + b"\n")
            reply = json.loads(lines.readline())
        return reply, conn, lines


class ChatAcrossNodes(ClusterTestMixin, unittest.TestCase):

    def test_direct_room_and_offline_mail(self):
        a, b = self.start_cluster(2)
        alice = self.client([a, b], "alice")
        bob = self.client([b, a], "bob")
        carol = self.client([a, b], "carol")
        for client in (bob, carol):
            client.request(type="join", room="lobby")
            self.assertEqual(client.read()["type"], "joined")
        bob.listen()
        carol.listen()
        time.sleep(1.0)                 # both nodes' heartbeats and room subscriptions
        alice.send(to="bob", body="hello bob")
        alice.send(room="lobby", body="to the lobby")
        alice.listen()
        self.client([b], "bea").send(to="alice", body="hello alice")
        self.assertEqual(bob.wait_for({"hello bob", "to the lobby"}), set())
        self.assertEqual(carol.wait_for({"to the lobby"}), set())
        self.assertEqual(alice.wait_for({"hello alice"}), set())

        # bob goes offline; mail accepted on node b waits in the engine and
        # reaches him when he comes back on node a.
        bob.close()
        time.sleep(0.3)
        self.client([b], "bea").send(to="bob", body="while you were away")
        back = self.client([a], "bob")
        back.listen()
        self.assertEqual(back.wait_for({"while you were away"}), set())
        self.assertNotIn("while you were away", bob.received.values())

    def test_a_node_killed_and_restarted_does_not_offer_mail_delivered_elsewhere(self):
        a, b = self.start_cluster(2)
        self.client([a], "alice").send(to="bob", body="sent while bob was away")
        first = self.relays[0]
        first.kill()                    # its journal holds the message, its checkpoint not
        first.start(wait_tcp=[a])
        self.wait_ready(first)
        self.assertIn("1 stored messages for 1 peers replayed from this node's own journal "
                      "are left to the engine", first.log())
        bob = self.client([b], "bob")
        bob.listen()
        self.assertEqual(bob.wait_for({"sent while bob was away"}), set())
        bob.close()
        self.wait_metric(self.relays[1], "relayd_cluster_mail_settled_total", 1)
        back = self.client([a], "bob")
        back.listen()
        time.sleep(1.0)                 # its stored mail, from the node or the engine, by now
        self.assertEqual(back.received, {})

    def test_a_relay_made_a_cluster_node_hands_its_stored_mail_to_the_engine(self):
        tcp, http = free_port(), free_port()
        alone = Relayd(self, relay_ini(id="clustered"), tcp=tcp)
        alone.start(wait_tcp=[tcp])
        self.client([tcp], "alice").send(to="bob", body="sent before the cluster")
        alone.stop()
        self.engine = nats_engine(self)
        first = Relayd(self, cluster_ini(self.engine.urls, "n0"), workdir=alone.workdir,
                       tcp=tcp, http=http)
        second = Relayd(self, cluster_ini(self.engine.urls, "n1"), tcp=free_port(),
                        http=free_port())
        for relay in (first, second):
            relay.start(wait_tcp=[relay.ports["tcp"]])
            self.wait_ready(relay)
        self.wait_log(first, "1 stored messages for 1 peers, from this node's journal before "
                             "it joined the cluster, are now in the engine")
        bob = self.client([second.ports["tcp"]], "bob")
        bob.listen()
        self.assertEqual(bob.wait_for({"sent before the cluster"}), set())

    def test_health_stats_and_metrics_show_the_cluster(self):
        self.start_cluster(2)
        http = [relay.ports["http"] for relay in self.relays]
        time.sleep(1.5)                 # a heartbeat of each node (liveness 3 s)
        status, body, _ = http_get(http[0], "/health")
        self.assertEqual(status, 200, body)
        health = json.loads(body)["cluster"]
        self.assertEqual((health["node"], health["engine"], health["members"]),
                         ("n0", "connected", ["n0", "n1"]))
        status, body, _ = http_get(http[1], "/stats")
        stats = json.loads(body)["cluster"]
        self.assertEqual((stats["node"], stats["engine"], stats["members"]),
                         ("n1", "connected", ["n0", "n1"]))
        self.assertIn(stats["server"], self.engine.urls)
        status, body, _ = http_get(http[0], "/metrics")
        cluster = {name: kind for name, kind in exposed_metrics(body.decode()).items()
                   if name.startswith("relayd_cluster_")}
        self.assertEqual(cluster, {name: kind for name, kind in documented_metrics().items()
                                   if name.startswith("relayd_cluster_")})
        self.assertIn("relayd_cluster_engine_up 1.0", body.decode())
        self.assertIn("relayd_cluster_nodes 2.0", body.decode())
        for i in range(3):
            self.engine.kill(i)
        deadline = time.monotonic() + 20
        while http_get(http[0], "/health")[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        status, body, _ = http_get(http[0], "/health")
        self.assertEqual(status, 503)
        body = json.loads(body)
        self.assertIn("cluster engine", body["problems"]["cluster"])
        self.assertNotEqual(body["cluster"]["engine"], "connected")

    def test_an_id_claimed_with_a_key_on_one_node_is_owned_on_the_others(self):
        a, b = self.start_cluster(2)
        owner = Ed25519PrivateKey.generate()
        self.assertEqual(self.hello(a, "alice", owner)[0]["type"], "welcome")
        self.assert_owned_on(b, "alice")
        self.assertEqual(self.hello(b, "alice", Ed25519PrivateKey.generate())[0]["error"],
                         "id_owned")
        self.assertEqual(self.hello(b, "alice", owner)[0]["type"], "welcome")

    def test_two_keys_claiming_an_id_while_the_engine_is_away_end_with_one_owner(self):
        ports = self.start_cluster(2)
        for i in range(3):
            self.engine.kill(i)
        for relay in self.relays:
            self.wait_log(relay, "engine lost")
        keys = [Ed25519PrivateKey.generate() for _ in ports]
        sessions = []
        for port, key in zip(ports, keys):
            reply, conn, lines = self.hello(port, "alice", key)
            self.assertEqual(reply["type"], "welcome")      # each node takes its own claim
            sessions.append((conn, lines))
        self.engine.start()                 # both nodes share their claim: one is first
        conflict = "ownership conflict for alice"
        deadline = time.monotonic() + 60
        while not any(conflict in relay.log() for relay in self.relays):
            self.assertLess(time.monotonic(), deadline, "no node gave the id up")
            time.sleep(0.2)
        [loser] = [i for i, relay in enumerate(self.relays) if conflict in relay.log()]
        conn, lines = sessions[loser]
        self.assertEqual(json.loads(lines.readline())["error"], "id_owned")
        self.assertEqual(lines_after(lines), b"")                  # and the connection closed
        winner = 1 - loser
        conn, lines = sessions[winner]      # the winner's session goes on
        deadline = time.monotonic() + 30
        while True:                         # (the engine's streams may still be recovering)
            conn.sendall(b'{"type": "send", "to": "bob", "body": "still mine"}\n')
            answer = json.loads(lines.readline())
            if answer.get("error") != "journal_unavailable" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(answer.get("type"), "ack", answer)
        for port in ports:                  # both nodes agree
            self.assertEqual(self.hello(port, "alice", keys[loser])[0]["error"], "id_owned")
            self.assertEqual(self.hello(port, "alice", keys[winner])[0]["type"], "welcome")
        # the nodes follow the owners bucket again: a new claim on one is live on the other
        self.assertEqual(self.hello(ports[0], "dave", Ed25519PrivateKey.generate())[0]["type"],
                         "welcome")
        self.assert_owned_on(ports[1], "dave")

    def assert_owned_on(self, port, peer_id, timeout=10.0):
        """A hello without a key for ``peer_id`` gets id_owned on ``port`` (soon)."""
        deadline = time.monotonic() + timeout
        while self.hello(port, peer_id)[0].get("error") != "id_owned":
            self.assertLess(time.monotonic(), deadline, f"{peer_id} is not owned on {port}")
            time.sleep(0.1)

    def test_a_persistent_member_gets_room_mail_on_any_node(self):
        a, b = self.start_cluster(2)
        bob = self.client([a], "bob")
        bob.request(type="join", room="lobby", persist=True)
        self.assertEqual(bob.read()["type"], "joined")
        bob.close()
        carol = self.client([b], "carol")
        carol.request(type="join", room="lobby")
        self.assertEqual(carol.read()["type"], "joined")
        # the membership reaches node b, and bob's session entry leaves the
        # engine, through the engine (slower on a loaded machine)
        time.sleep(3.0)
        carol.send(room="lobby", body="first while away")
        # back on node a, which had nobody in the room when it was sent
        back = self.client([a], "bob")
        back.listen()
        self.assertEqual(back.wait_for({"first while away"}), set())
        back.close()
        # its ack deletes it from the engine (else it is rightly sent again)
        self.wait_metric(self.relays[0], "relayd_cluster_mail_settled_total", 1)
        carol.send(room="lobby", body="second while away")
        # back on node b, where it was sent
        again = self.client([b], "bob")
        again.listen()
        self.assertEqual(again.wait_for({"second while away"}), set())
        time.sleep(1.0)                 # anything sent twice would be here by now
        self.assertEqual(sorted(back.received.values()), ["first while away"])
        self.assertEqual(sorted(again.received.values()), ["second while away"])

    def test_an_address_banned_on_one_node_is_refused_by_the_others(self):
        a, b = self.start_cluster(2, ratelimit=("messages = 2", "per_seconds = 60",
                                                  "ban_after = 1"))
        mallory = self.client([a], "mallory")
        for _ in range(4):              # the third is refused, the fourth ignores the wait
            try:
                mallory.request(type="send", to="bob", body="spam")
                mallory.read()
            except (OSError, EOFError):
                break                   # banned: node a hung up
        deadline = time.monotonic() + 10
        while True:
            conn = socket.create_connection(("127.0.0.1", b), timeout=10)
            self.addCleanup(conn.close)
            conn.sendall(json.dumps({"type": "hello", "id": "other"}).encode() + b"\n")
            reply = json.loads(conn.makefile("rb").readline() or b"{}")
            if reply.get("error") == "banned" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(reply.get("error"), "banned", reply)

    def test_no_engine_refuses_with_a_clear_error(self):
        a, b = self.start_cluster(2)
        alice = self.client([a], "alice")
        for i in range(3):
            self.engine.kill(i)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            alice.request(type="send", to="bob", body="nobody stores this")
            reply = alice.read()
            if reply.get("error") == "cluster_unavailable":
                break
            time.sleep(0.2)
        self.assertEqual(reply["error"], "cluster_unavailable")
        self.assertIn("cluster engine", reply["message"])


class Failover(ClusterTestMixin, unittest.TestCase):
    SENDERS = 3
    EACH = 60

    def pair(self):
        """Senders on node 0 and a listening receiver on node 1, each
        reconnecting to the other node when its own dies."""
        a, b = self.start_cluster(2)
        senders = [self.client([a, b], "sender%d" % i) for i in range(self.SENDERS)]
        receiver = self.client([b, a], "receiver")
        receiver.listen()
        time.sleep(0.5)                 # both nodes' heartbeats seen
        return senders, receiver

    def run_load(self, senders, receiver, kill):
        """Every sender sends ``EACH`` messages (one unacked at a time, all
        senders at once); ``kill`` runs once a third of them are acked.
        Returns the bodies acked."""
        acked, lock = [], threading.Lock()

        def send_all(sender):
            for i in range(self.EACH):
                body = "%s-%d" % (sender.peer_id, i)
                sender.send(to=receiver.peer_id, body=body)
                with lock:
                    acked.append(body)
        threads = [threading.Thread(target=send_all, args=(s,), daemon=True) for s in senders]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acked) < len(senders) * self.EACH // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        kill()
        for thread in threads:
            thread.join(120)
        self.assertEqual(len(acked), len(senders) * self.EACH)
        return acked

    def test_kill_sender_node(self):
        senders, receiver = self.pair()
        acked = self.run_load(senders, receiver, self.relays[0].kill)
        self.assertEqual(receiver.wait_for(acked), set())

    def test_kill_receiver_node(self):
        senders, receiver = self.pair()
        acked = self.run_load(senders, receiver, self.relays[1].kill)
        self.assertEqual(receiver.wait_for(acked), set())

    def test_kill_engine_node(self):
        senders, receiver = self.pair()
        # kill the engine server the senders' node is linked to
        used = self.relays[0].log().split("cluster engine connected: ")[1].split()[0]
        acked = self.run_load(senders, receiver,
                              lambda: self.engine.kill(self.engine.urls.index(used)))
        self.assertEqual(receiver.wait_for(acked), set())
