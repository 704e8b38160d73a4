"""A two-node cluster federated with a standalone relay, end to end: real
nats-servers (tests/engine.py) and twistd subprocesses on free loopback ports.

The cluster is one relay (id ``clustered``, one key given to both nodes) to
the standalone relay ``solo``, which lists it as one peer at node 0's
federation port.  Every test checks what users see: each message arrives,
and no client is handed the same message (msg_id) twice.
"""
import collections
import json
import os
import shutil
import threading
import time

from twisted.trial import unittest

from relayd.identity import Identity, load_or_create
from tests.daemon import Relayd, free_port, relay_ini, wait_for_port
from tests.engine import nats_engine
from tests.test_cluster_e2e import Client, cluster_ini
from tests.test_federation_e2e import FEDERATION, PEER
from tests.test_ops_support import http_get


def public_key(path):
    key, _ = load_or_create(path)
    return Identity("any", key).public_b64


class ClusterFederation(unittest.TestCase):

    def setUp(self):
        self.engine = nats_engine(self)
        solo_dir, node_dirs = self.mktemp(), [self.mktemp() for _ in range(2)]
        solo_key = public_key(os.path.join(solo_dir, "var", "identity.key"))
        # one relay, one key: every node gets the same identity.key
        cluster_key = public_key(os.path.join(node_dirs[0], "var", "identity.key"))
        os.makedirs(os.path.join(node_dirs[1], "var"), mode=0o700)
        shutil.copy2(os.path.join(node_dirs[0], "var", "identity.key"),
                     os.path.join(node_dirs[1], "var", "identity.key"))
        self.nodes, solo_fed = [], free_port()
        for i, workdir in enumerate(node_dirs):
            ini = cluster_ini(self.engine.urls, "n%d" % i) + (FEDERATION + PEER).format(
                name="solo", port=solo_fed, key=solo_key)
            self.nodes.append(Relayd(self, ini, workdir=workdir, tcp=free_port(),
                                     http=free_port(), fed=free_port()))
        ini = relay_ini("""
            [ratelimit]
            messages = 100000
            [http]
            listen = tcp:{http}:interface=127.0.0.1
            """, id="solo") + (FEDERATION + PEER).format(
                name="clustered", port=self.nodes[0].ports["fed"], key=cluster_key)
        self.solo = Relayd(self, ini, workdir=solo_dir, tcp=free_port(), http=free_port(),
                           fed=solo_fed)
        for relay in self.nodes + [self.solo]:
            relay.start(wait_tcp=[relay.ports["tcp"]])
        self.assertTrue(wait_for_port(solo_fed, 30, process=self.solo.process))
        self.leader = self.wait_leader()
        self.wait_linked()

    def health(self, node):
        status, body, _ = http_get(node.ports["http"], "/health")
        return json.loads(body).get("cluster", {})

    def wait_leader(self, among=None, timeout=60.0):
        """The node leading the federation (once exactly one does)."""
        among = among if among is not None else self.nodes
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leading = [node for node in among if self.health(node).get("federation_leader")]
            if len(leading) == 1:
                return leading[0]
            time.sleep(0.1)
        raise AssertionError("no federation leader:\n" + "\n".join(n.log()[-2000:] for n in among))

    def wait_linked(self, timeout=60.0):
        """Until the solo relay has a link up to the cluster (from its last start of a link)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.solo.log()
            if log.count("link to clustered up") > log.count("link to clustered down"):
                return
            time.sleep(0.1)
        raise AssertionError("no link from solo to the cluster:\n" + self.solo.log()[-3000:])

    def wait_receipts_in(self, relay, peer, count=1, timeout=60.0):
        """Until ``relay`` counted ``count`` receipts from its federation peer ``peer``."""
        series = 'relayd_federation_items_in_total{kind="receipts",peer="%s"}' % peer
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, body, _ = http_get(relay.ports["http"], "/metrics")
            for line in body.decode().splitlines():
                if line.startswith(series) and float(line.split()[-1]) >= count:
                    return
            time.sleep(0.1)
        raise AssertionError("no receipt from %s:\n%s" % (peer, relay.log()[-3000:]))

    def client(self, relays, peer_id):
        client = Client([relay.ports["tcp"] for relay in relays], peer_id)
        self.addCleanup(client.close)
        return client

    def test_clients_on_both_nodes_chat_with_the_standalone_relay(self):
        a, b = self.nodes
        alice, bea, sol = self.client([a], "alice"), self.client([b], "bea"), \
            self.client([self.solo], "sol")
        for client in (alice, bea, sol):
            client.request(type="join", room="lobby")
            self.assertEqual(client.read()["type"], "joined")
        time.sleep(1.0)                 # the nodes' room subscriptions and heartbeats
        alice.send(to="sol", body="alice to sol")
        sol.send(to="alice", body="sol to alice")
        sol.send(to="bea", body="sol to bea")
        bea.send(to="sol", body="bea to sol")
        for client in (alice, bea, sol):
            client.send(room="lobby", body="lobby from " + client.peer_id)
        for client in (alice, bea, sol):
            client.listen()             # what came during the sends is counted already
        lobby = {"lobby from alice", "lobby from bea", "lobby from sol"}
        self.assertEqual(sol.wait_for({"alice to sol", "bea to sol"} | lobby - {"lobby from sol"}),
                         set())
        self.assertEqual(alice.wait_for({"sol to alice"} | lobby - {"lobby from alice"}), set())
        self.assertEqual(bea.wait_for({"sol to bea"} | lobby - {"lobby from bea"}), set())
        time.sleep(2.0)                 # anything sent twice would be here by now
        self.assertEqual(sorted(sol.received.values()),
                         sorted({"alice to sol", "bea to sol"} | lobby - {"lobby from sol"}))
        self.assertEqual(sorted(alice.received.values()),
                         sorted({"sol to alice"} | lobby - {"lobby from alice"}))
        self.assertEqual(sorted(bea.received.values()),
                         sorted({"sol to bea"} | lobby - {"lobby from bea"}))
        for client in (alice, bea, sol):
            self.assertEqual(client.repeated(), {}, client.peer_id)

    def test_kill_the_federation_leader_under_load(self):
        """Senders on both nodes to ``sol`` and from ``sol`` to a peer on the
        node that survives; the leader is killed a third of the way in."""
        follower = [node for node in self.nodes if node is not self.leader][0]
        sol = self.client([self.solo], "sol")
        sol.listen()
        bob = self.client([follower], "bob")
        bob.listen()
        time.sleep(0.5)
        senders = [self.client([self.leader, follower], "lead-sender"),
                   self.client([follower], "follow-sender"),
                   self.client([self.solo], "solo-sender")]
        targets = {"lead-sender": "sol", "follow-sender": "sol", "solo-sender": "bob"}
        each, acked = 40, collections.defaultdict(list)

        def send_all(sender):
            for i in range(each):
                body = "%s-%d" % (sender.peer_id, i)
                sender.send(to=targets[sender.peer_id], body=body)
                acked[sender.peer_id].append(body)
        threads = [threading.Thread(target=send_all, args=(s,), daemon=True) for s in senders]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while sum(map(len, acked.values())) < len(senders) * each // 3 \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        self.leader.kill()
        self.assertIs(self.wait_leader([follower]), follower)
        for thread in threads:
            thread.join(120)
        self.assertEqual({peer: len(bodies) for peer, bodies in acked.items()},
                         {peer: each for peer in targets})
        self.assertEqual(sol.wait_for(acked["lead-sender"] + acked["follow-sender"], 60), set())
        self.assertEqual(bob.wait_for(acked["solo-sender"], 60), set())
        time.sleep(2.0)                 # anything sent twice would be here by now
        self.assertEqual(sol.repeated(), {})
        self.assertEqual(bob.repeated(), {})

    def test_a_message_delivered_on_one_side_is_not_handed_again_on_the_other(self):
        """Mail for a peer offline everywhere waits on both sides; once it
        reaches the peer on one, the receipt takes it out of the other."""
        a, b = self.nodes
        self.client([a], "alice").send(to="dan", body="for dan, from the cluster")
        self.client([self.solo], "sol").send(to="eve", body="for eve, from solo")
        time.sleep(1.0)                 # both items across the link
        dan = self.client([self.solo], "dan")
        eve = self.client([b], "eve")
        for client in (dan, eve):
            client.listen()
        self.assertEqual(dan.wait_for({"for dan, from the cluster"}), set())
        self.assertEqual(eve.wait_for({"for eve, from solo"}), set())
        self.wait_receipts_in(self.leader, "solo")
        self.wait_receipts_in(self.solo, "clustered")
        time.sleep(0.5)                 # the engine's copy is deleted once the receipt is in
        for client in (dan, eve):
            client.close()
        dan_again = self.client([b], "dan")
        eve_again = self.client([self.solo], "eve")
        for client in (dan_again, eve_again):
            client.listen()
        time.sleep(2.0)                 # stored mail is handed at once on connection
        self.assertEqual(dan_again.received, {})
        self.assertEqual(eve_again.received, {})
