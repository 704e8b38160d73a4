"""Federation from a cluster, over fakes: the leader election on a KV key
with a TTL, the seqs own items get from the federation stream, catch-up from
that stream, and what a node puts in it."""
import json
from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.trial import unittest

from relayd.cluster.federation import ClusterHub, ClusterIndex, Election, FederationLeader
from relayd.cluster.link import CONNECTED, DISCONNECTED
from relayd.core import message
from relayd.federation.catchup import Held
from relayd.federation.metrics import FederationMetrics
from relayd.identity import Identity
from tests.fakes import FakeSession
from tests.test_cluster import FakeLink, Settings, make_node, matches
from tests.test_federation_link import SETTINGS, InlinePool

TTL = 3.0


class EngineLink(FakeLink):
    """``FakeLink`` with what federation asks of the engine: KV entries that
    expire ``TTL`` after their last write, compare-and-set, and an ordered
    consumer of a subject."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.entries = {}               # (bucket, key) -> (value, revision, written at)
        self.revision = 0
        self.down = False               # requests fail (a partition)
        self.fed, self.fed_ids = {}, {}     # the federation stream: seq -> data, msg_id -> seq

    def kv_claim(self, bucket, key, value, revision=None):
        if self.down:
            return defer.fail(TimeoutError("nats: timeout"))
        entry = self.entries.get((bucket, key))
        if entry is not None and self.clock.seconds() - entry[2] >= TTL:
            entry = None                # expired
        if revision is None and entry is not None and entry[0] == value:
            revision = entry[1]         # its own entry: taken back
        if (entry[1] if entry else None) != revision:
            return defer.succeed(None)
        self.revision += 1
        self.entries[(bucket, key)] = (value, self.revision, self.clock.seconds())
        return defer.succeed(self.revision)

    def kv_delete(self, bucket, key, revision=None):
        entry = self.entries.get((bucket, key))
        if revision is not None and (entry is None or entry[1] != revision):
            return defer.succeed(False)
        self.entries.pop((bucket, key), None)
        return super().kv_delete(bucket, key)

    def holder(self, bucket):
        entry = self.entries.get((bucket, "leader"))
        return entry[0] if entry and self.clock.seconds() - entry[2] < TTL else None

    def store(self, subject, data, msg_id=None):
        if not subject.endswith(".fed"):
            return super().store(subject, data, msg_id)
        # the federation stream: a stream of its own, numbered from 1
        if msg_id in self.fed_ids:
            return defer.succeed((self.fed_ids[msg_id], True))
        seq = self.fed_ids[msg_id] = len(self.fed) + 1
        self.fed[seq] = data
        if subject in self.followers:
            self.followers[subject](seq, data)
        return defer.succeed((seq, False))

    def messages(self, stream, subject, limit, start=1):
        if not subject.endswith(".fed"):
            return super().messages(stream, subject, limit, start)
        return defer.succeed([(seq, data) for seq, data in sorted(self.fed.items())
                              if seq >= start][:limit])

    def last_seq(self, stream):
        return defer.succeed(len(self.fed))


class Elections(unittest.TestCase):

    def setUp(self):
        self.clock = task.Clock()
        self.link = EngineLink(self.clock)
        self.events = []

    def election(self, node, link=None, can_run=lambda: True):
        link = link or self.link
        e = Election(link, "LEADER", node, self.clock, TTL, 3,
                     lambda: self.events.append((node, "lead")),
                     lambda: self.events.append((node, "stand by")), can_run)
        self.addCleanup(lambda: e._loop.running and e._loop.stop())
        return e

    def test_one_node_leads_and_keeps_its_key(self):
        a, b = self.election("a"), self.election("b")
        a.start()
        b.start()
        self.assertEqual((a.leading, b.leading), (True, False))
        self.clock.pump([TTL / 3.0] * 12)           # four TTLs: a refreshes its entry
        self.assertEqual((a.leading, b.leading), (True, False))
        self.assertEqual(self.events, [("a", "lead")])

    def test_another_node_takes_over_once_the_leaders_entry_expires(self):
        a, b = self.election("a"), self.election("b")
        a.start()
        b.start()
        a._loop.stop()                              # a is killed: it refreshes no more
        self.clock.pump([TTL / 3.0] * 2)
        self.assertFalse(b.leading)                 # not before the entry expires
        self.clock.pump([TTL / 3.0] * 2)
        self.assertTrue(b.leading)
        self.assertEqual(self.link.holder("LEADER"), b"b")

    def test_a_leader_that_cannot_refresh_stands_down_at_once(self):
        a, b = self.election("a"), self.election("b")
        a.start()
        b.start()
        self.link.down = True
        self.clock.advance(TTL / 3.0)
        self.assertEqual((a.leading, b.leading), (False, False))
        self.link.down = False
        self.clock.pump([TTL / 3.0] * 3)
        self.assertEqual(sum([a.leading, b.leading]), 1)

    def test_a_leader_whose_entry_another_took_stands_down(self):
        a, b = self.election("a"), self.election("b")
        a.start()
        a._loop.stop()
        self.clock.advance(TTL)                     # a stalled past its TTL...
        b.start()                                   # ...and b took the key
        self.assertTrue(b.leading)
        a._loop.start(TTL / 3.0)                    # a wakes up: its revision is stale
        self.assertEqual((a.leading, b.leading), (False, True))
        self.assertEqual(self.events, [("a", "lead"), ("b", "lead"), ("a", "stand by")])

    def test_losing_the_engine_stands_down(self):
        a = self.election("a")
        a.start()
        a.engine_lost()
        self.assertEqual(self.events, [("a", "lead"), ("a", "stand by")])

    def test_a_leader_back_from_an_engine_outage_takes_its_key_back(self):
        a, b = self.election("a"), self.election("b")
        a.start()
        b.start()
        a.engine_lost()
        self.clock.advance(TTL / 3.0)               # its entry has not expired yet
        self.assertEqual((a.leading, b.leading), (True, False))
        self.assertEqual(self.events, [("a", "lead"), ("a", "stand by"), ("a", "lead")])

    def test_a_node_that_cannot_run_does_not_try(self):
        ready = []
        a = self.election("a", can_run=lambda: bool(ready))
        a.start()
        self.assertFalse(a.leading)
        ready.append(True)
        self.clock.advance(TTL / 3.0)
        self.assertTrue(a.leading)

    def test_stopping_frees_the_key_for_the_next_tick_of_another(self):
        a, b = self.election("a"), self.election("b")
        a.start()
        b.start()
        a.stop()
        self.assertIsNone(self.link.holder("LEADER"))
        self.clock.advance(TTL / 3.0)
        self.assertTrue(b.leading)

    def test_a_stalled_leader_stopping_leaves_the_key_another_took(self):
        a, b = self.election("a"), self.election("b")
        a.start()
        a._loop.stop()
        self.clock.advance(TTL)                     # a stalled past its TTL...
        b.start()                                   # ...and b took the key
        a.stop()
        self.assertEqual(self.link.holder("LEADER"), b"b")
        self.assertTrue(b.leading)


class Wire:
    """An up federation link as the hub uses it."""

    state = "up"
    queued = skipped = 0

    def __init__(self, name):
        self.name = name
        self.peer = SimpleNamespace(name=name)
        self.frames = []

    def send_raw(self, data):
        self.frames.append(json.loads(data))

    def send(self, frame):
        self.frames.append(frame)


class Standby:
    """The FederationService as the leader drives it."""

    def __init__(self):
        self.leading = False
        self.standby_problem = None

    def lead(self):
        self.leading = True

    def stand_by(self):
        self.leading = False


class LeaderTests(unittest.TestCase):
    """A node's FederationLeader, hub and cluster node over one fake engine."""

    def setUp(self):
        link = EngineLink(task.Clock())
        self.node, self.router, _, self.clock = make_node(link)
        link.clock = self.clock
        self.link = link
        self.node.federate()
        self.key = Ed25519PrivateKey.generate()
        self.hub, self.service, self.leader = self.leader_node()
        self.router.subscribe(self.hub)
        self.router.sequencer = self.hub
        self.wire = Wire("solo")
        self.hub.links["solo"] = [self.wire]

    def leader_node(self, key=None):
        """A hub, federation service and leader (started) on this node's engine."""
        hub = ClusterHub("relay", self.router, self.node.journal, ClusterIndex("relay"),
                         self.clock, InlinePool(), FederationMetrics(CollectorRegistry()),
                         SimpleNamespace(**SETTINGS))
        hub.identity = Identity("relay", key or self.key)
        settings = Settings()
        settings.liveness = TTL
        service = Standby()
        leader = FederationLeader(self.node, hub, service, self.link, self.clock, settings)
        leader.startService()
        self.addCleanup(leader.stopService)
        return hub, service, leader

    def fed_items(self):
        return sorted(self.link.fed.items())

    def test_the_leader_links_up_and_own_items_carry_their_stream_seq(self):
        self.assertTrue(self.leader.leading)
        self.assertTrue(self.service.leading)
        alice = FakeSession("alice")
        self.router.attach(alice)
        self.successResultOf(self.router.submit(alice, "sol", "one"))
        self.successResultOf(self.router.submit(alice, "sol", "two"))
        [(first, _), (second, _)] = self.fed_items()
        self.assertEqual([(f["origin"], f["seq"], f["entry"]["body"]) for f in self.wire.frames],
                         [("relay", first, "one"), ("relay", second, "two")])
        self.assertEqual(self.hub.index.cursors["relay"].low, second)

    def test_a_receipt_made_here_goes_out_with_its_stream_seq(self):
        alice, bob = FakeSession("alice"), FakeSession("bob")
        self.router.attach(alice)
        self.router.attach(bob)
        acked = self.successResultOf(self.router.submit(alice, "bob", "hi"))
        self.router.flush()
        self.router.handed(bob, [{"msg_id": acked[0]}])
        receipts = [f for f in self.wire.frames if f["type"] == "receipt"]
        [(seq, data)] = [item for item in self.fed_items() if b'"receipt"' in item[1]]
        self.assertEqual([(r["seq"], r["msg_id"], r["to"]) for r in receipts],
                         [(seq, acked[0], "bob")])

    def test_a_peers_message_enters_the_cluster_and_not_the_stream(self):
        entry, _ = message.new_message("sol", "bob", "from solo", 5.0, "solo")
        self.hub.receive(self.wire, {"type": "msg", "origin": "solo", "seq": 1,
                                     "entry": entry})
        mail = [subject for subject, _ in self.link.stream.values()
                if matches(self.node.prefix + ".mail.*.*.*", subject)]
        self.assertEqual(len(mail), 1)
        self.assertEqual(self.fed_items(), [])
        self.assertTrue(self.hub.index.has("solo", 1))

    def test_a_peers_receipt_deletes_the_engines_copy(self):
        entry, _ = message.new_message("sol", "dan", "for dan", 5.0, "solo")
        self.hub.receive(self.wire, {"type": "msg", "origin": "solo", "seq": 1, "entry": entry})
        self.assertEqual(len(self.link.stream), 1)
        self.hub.receive(self.wire, {"type": "receipt", "origin": "solo", "seq": 2,
                                     "msg_id": entry["msg_id"], "to": "dan",
                                     "timestamp": 6.0})
        self.assertEqual(self.link.stream, {})

    def test_an_echo_of_an_own_item_is_dropped(self):
        alice = FakeSession("alice")
        self.router.attach(alice)
        self.successResultOf(self.router.submit(alice, "sol", "one"))
        [frame] = self.wire.frames
        held = len(self.link.stream)
        self.hub.receive(self.wire, dict(frame))
        self.assertEqual(len(self.link.stream), held)
        self.assertEqual(self.hub.peer_stats("solo").dedup_hits, 1)

    def test_catch_up_of_own_items_reads_the_stream(self):
        alice = FakeSession("alice")
        self.router.attach(alice)
        for i in range(5):
            self.successResultOf(self.router.submit(alice, "sol", "m%d" % i))
        seqs = [seq for seq, _ in self.fed_items()]
        items, more = self.successResultOf(self.leader.own_items(
            Held(seqs[0], [(seqs[2], seqs[2])]), 10))
        self.assertEqual([(origin, seq, kind, record["body"]) for origin, seq, kind, record
                          in items],
                         [("relay", seqs[1], "m", "m1"), ("relay", seqs[3], "m", "m3"),
                          ("relay", seqs[4], "m", "m4")])
        self.assertFalse(more)
        items, more = self.successResultOf(self.leader.own_items(None, 2))
        self.assertEqual(([seq for _, seq, _, _ in items], more), (seqs[:2], True))

    def test_a_new_leader_starts_from_the_stream_and_the_shared_cursors(self):
        entry, _ = message.new_message("sol", "bob", "from solo", 5.0, "solo")
        self.hub.receive(self.wire, {"type": "msg", "origin": "solo", "seq": 1, "entry": entry})
        self.clock.advance(TTL / 3.0)               # the cursors go to the engine
        alice = FakeSession("alice")
        self.router.attach(alice)
        self.successResultOf(self.router.submit(alice, "sol", "one"))
        self.leader.stopService()
        self.assertFalse(self.service.leading)
        # another node's hub, with an empty journal, takes over
        hub, service, _ = self.leader_node()
        self.assertTrue(service.leading)
        self.assertEqual(hub.index.wants(), {"relay": [1, []], "solo": [1, []]})

    def test_a_node_with_another_relay_key_never_leads(self):
        self.leader.stopService()
        _, service, leader = self.leader_node(Ed25519PrivateKey.generate())
        self.clock.advance(TTL * 2)
        self.assertFalse(service.leading)
        self.assertIn("is not the cluster's", service.standby_problem)
        self.assertIsNone(self.link.holder(leader.election.bucket))

    def test_losing_the_engine_closes_the_links(self):
        self.link.set_state(DISCONNECTED)
        self.assertFalse(self.service.leading)
        self.assertNotIn(self.node.fed_subject, self.link.followers)    # no more items
        self.link.set_state(CONNECTED)
        self.clock.advance(TTL)                     # the node is ready again, and retries
        self.assertTrue(self.service.leading)


class NodeStreamTests(unittest.TestCase):
    """What a federated node puts in the federation stream."""

    def setUp(self):
        self.link = EngineLink(task.Clock())
        self.node, self.router, _, self.clock = make_node(self.link)
        self.node.federate()

    def fed(self):
        return [json.loads(data) for _, data in sorted(self.link.fed.items())]

    def test_a_clients_message_and_receipt_go_in_once(self):
        alice, bob = FakeSession("alice"), FakeSession("bob")
        self.router.attach(alice)
        self.router.attach(bob)
        msg_id, _ = self.successResultOf(self.router.submit(alice, "bob", "hi"))
        self.successResultOf(self.router.submit(alice, "*", "to all"))
        self.router.flush()
        self.router.handed(bob, [{"msg_id": msg_id}])
        fed = self.fed()
        self.assertEqual([record.get("body") or record.get("receipt") for record in fed],
                         ["hi", "to all", msg_id])
        self.assertEqual(fed[0]["msg_id"], msg_id)

    def test_messages_from_other_nodes_are_not_put_in_again(self):
        bob = FakeSession("bob")
        self.router.attach(bob)
        entry, line = message.new_message("alice", "bob", "hi", 5.0, "relay")
        seq, _ = self.successResultOf(self.link.store(
            self.node._mail_subject("a", "bob", entry["msg_id"]), line, entry["msg_id"]))
        self.link.consumer[1](seq, line)
        self.router.flush()
        self.assertEqual(self.fed(), [])
