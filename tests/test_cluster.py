"""Cluster mode: the node's logic over a fake engine link, the [cluster]
config, and the real link against a real nats-server."""
import json

from twisted.internet import defer, task
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from relayd import config
from relayd.cluster.link import CONNECTED, CONNECTING, DISCONNECTED, EngineLink
from relayd.cluster.node import REFUSAL, RETRY, ClusterNode, t
from relayd.cluster.ownership import SharedOwnership
from relayd.core import message
from relayd.core.abuse import AbuseGuard
from relayd.journal.replay import ReplayReport
from tests.fakes import FakeSession, MemoryJournal, make_router


class FakeLink:
    """The engine as the node sees it: a stream, KV buckets and subjects, in memory."""

    def __init__(self):
        self.state = CONNECTED
        self.server = "nats://fake"
        self.watchers = []
        self.stream = {}                # seq -> (subject, data)
        self.msg_ids = {}               # Nats-Msg-Id -> seq
        self.kv = {}
        self.revisions = {}             # (bucket, key) -> revision of its last put
        self.published = []             # (subject, data), core
        self.subscriptions = {}         # subject -> callback
        self.followers = {}             # subject -> callback(seq, data) of a stream's new messages
        self.consumer = None            # (subject prefix, callback)
        self.seq = 0

    def watch(self, callback):
        self.watchers.append(callback)

    def set_state(self, state):
        self.state = state
        for callback in self.watchers:
            callback(state)

    def ensure_stream(self, name, subjects, replicas, max_age):
        self.stream_name = name
        return defer.succeed(None)

    def ensure_kv(self, bucket, replicas, ttl=None):
        self.kv.setdefault(bucket, {})
        return defer.succeed(None)

    def consume(self, stream, subject, durable, callback):
        self.consumer = (subject[:-1], callback)
        return defer.succeed(None)

    def subscribe(self, subject, callback):
        self.subscriptions[subject] = callback
        return defer.succeed(subject)

    def unsubscribe(self, handle):
        self.subscriptions.pop(handle, None)
        self.followers.pop(handle, None)
        return defer.succeed(None)

    def follow(self, stream, subject, callback):
        self.followers[subject] = callback
        return defer.succeed(subject)

    def stored(self, bucket, key, value):
        """A KV write the engine stored: the bucket's followers see it."""
        self.kv[bucket][key] = value
        self.revisions[bucket, key] = self.revisions.get((bucket, key), 0) + 1
        follower = self.followers.get("$KV.%s.>" % bucket)
        if follower is not None:
            follower(self.revisions[bucket, key], value)

    def store(self, subject, data, msg_id=None):
        if msg_id in self.msg_ids:
            return defer.succeed((self.msg_ids[msg_id], True))
        self.seq += 1
        self.stream[self.seq] = (subject, data)
        self.msg_ids[msg_id] = self.seq
        return defer.succeed((self.seq, False))

    def delete(self, stream, seq):
        return defer.succeed(self.stream.pop(seq, None) is not None)

    def messages(self, stream, subject, limit, start=1):
        return defer.succeed([(seq, data) for seq, (subj, data) in sorted(self.stream.items())
                              if seq >= start and matches(subject, subj)][:limit])

    def purge(self, stream, subject):
        for seq, (subj, _) in list(self.stream.items()):
            if matches(subject, subj):
                del self.stream[seq]
        return defer.succeed(True)

    def publish(self, subject, data):
        self.published.append((subject, data))
        return defer.succeed(None)

    def kv_put(self, bucket, key, value):
        self.stored(bucket, key, value)
        return defer.succeed(None)

    def kv_get(self, bucket, key):
        return defer.succeed(self.kv[bucket].get(key))

    def kv_entry(self, bucket, key):
        value = self.kv[bucket].get(key)
        return defer.succeed(None if value is None else
                             (value, self.revisions.get((bucket, key), 0)))

    def kv_create(self, bucket, key, value):
        if key in self.kv[bucket]:
            return defer.succeed(False)
        self.stored(bucket, key, value)
        return defer.succeed(True)

    def kv_delete(self, bucket, key, revision=None):
        if revision is not None and (key not in self.kv[bucket] or
                                     self.revisions.get((bucket, key), 0) != revision):
            return defer.succeed(False)
        return defer.succeed(self.kv[bucket].pop(key, None) is not None)

    def kv_items(self, bucket):
        return defer.succeed(dict(self.kv[bucket]))


def logged(events):
    return "\n".join(formatEvent(event) for event in events)


def matches(pattern, subject):
    """``subject`` matches the NATS ``pattern`` (``*`` tokens only)."""
    want, got = pattern.split("."), subject.split(".")
    return len(want) == len(got) and all(w in ("*", g) for w, g in zip(want, got))


def bodies(session):
    return [json.loads(line)["body"] for line in session.lines]


class Settings:
    node = "a"
    replicas = 3
    liveness = 10.0
    timeout = 5.0


def make_node(link, node="a", owners=None, replayed=(), handover=None):
    """A started node linked to ``link``, its router having replayed the
    journal lines ``replayed``."""
    clock = task.Clock()
    clock.advance(1000)
    router = make_router(clock, "relay")
    for line in replayed:
        router.restore(json.loads(line))
    router.restore_done(ReplayReport())
    if owners:
        router.ownership.owners.update(owners)
    router.ownership = SharedOwnership(router.ownership)
    settings = Settings()
    settings.node = node
    local = MemoryJournal()
    cluster = ClusterNode(settings, "relay", router, link, local, clock, handover=handover)
    cluster.share_ownership(router.ownership)
    router.journal = cluster
    cluster.startService()
    cluster._engine_state(CONNECTED)
    return cluster, router, local, clock


class NodeTests(unittest.TestCase):

    def setUp(self):
        self.link = FakeLink()
        self.node, self.router, self.local, self.clock = make_node(self.link)
        self.mail = self.node.prefix + ".mail."

    def bob_mail(self, node, entry):
        """The subject of ``entry`` as mail for bob held for ``node`` (``_``: offline)."""
        return self.node._mail_subject(node, "bob", entry["msg_id"] if node == "_" else None)

    def subjects(self):
        """The subjects stored to, a mail subject without its msg_id token."""
        return [subject.rsplit(".", 1)[0] if subject.startswith(self.mail) else subject
                for subject, _ in self.link.stream.values()]

    def test_direct_to_a_peer_on_another_node_goes_to_that_nodes_subject(self):
        self.link.kv[self.node.nodes_kv]["b"] = b"{}"
        self.link.kv[self.node.sessions_kv][t("bob")] = b"b"
        alice = FakeSession("alice")
        self.router.attach(alice)
        acked = self.successResultOf(self.router.submit(alice, "bob", "hi"))
        self.assertEqual([subject for subject, _ in self.link.stream.values()],
                         [self.mail + "b." + t("bob") + ".-"])
        self.assertFalse(acked[1])
        self.assertEqual(len(self.local.lines), 1)      # the node's own journal too
        # the engine holds it for bob: not this node's mailbox
        self.assertEqual(self.router.mailboxes.peek("bob"), [])

    def test_a_dead_nodes_session_entry_counts_as_offline(self):
        self.link.kv[self.node.sessions_kv][t("bob")] = b"b"        # b has no live entry
        alice = FakeSession("alice")
        self.router.attach(alice)
        msg_id, _ = self.successResultOf(self.router.submit(alice, "bob", "hi"))
        # offline in the whole cluster: a subject of its own, for a receipt to delete
        self.assertEqual([subject for subject, _ in self.link.stream.values()],
                         [self.mail + "_." + t("bob") + "." + t(msg_id)])

    def test_local_peer_settles_and_the_engine_lets_go(self):
        alice, bob = FakeSession("alice"), FakeSession("bob")
        self.router.attach(alice)
        self.router.attach(bob)
        self.assertEqual(self.link.kv[self.node.sessions_kv][t("bob")], b"a")
        self.successResultOf(self.router.submit(alice, "bob", "hi"))
        self.assertEqual(self.subjects(), [self.mail + "_." + t("bob")])
        self.router.flush()
        self.assertEqual(bodies(bob), ["hi"])
        self.router.handed(bob, [{"msg_id": json.loads(bob.lines[0])["msg_id"]}])
        self.assertEqual(self.link.stream, {})

    def test_a_message_to_oneself_is_not_kept_in_the_engine(self):
        alice = FakeSession("alice")
        self.router.attach(alice)
        self.successResultOf(self.router.submit(alice, "alice", "note to self"))
        self.assertEqual(self.link.stream, {})

    def test_mail_from_the_consumer_reaches_the_peer_and_is_deleted_when_settled(self):
        bob = FakeSession("bob")
        self.router.attach(bob)
        entry, line = message.new_message("alice", "bob", "hi", 5.0, "relay")
        seq, _ = self.successResultOf(self.link.store(self.bob_mail("a", entry), line,
                                                      entry["msg_id"]))
        self.link.consumer[1](seq, line)
        self.router.flush()
        self.assertEqual(bodies(bob), ["hi"])
        self.assertEqual(len(self.link.stream), 1)      # not stored twice
        self.router.handed(bob, [entry])
        self.assertEqual(self.link.stream, {})

    def test_mail_for_a_peer_that_moved_follows_it(self):
        self.link.kv[self.node.nodes_kv]["c"] = b"{}"
        self.link.kv[self.node.sessions_kv][t("bob")] = b"c"
        entry, line = message.new_message("alice", "bob", "hi", 5.0, "relay")
        seq, _ = self.successResultOf(self.link.store(self.bob_mail("a", entry), line,
                                                      entry["msg_id"]))
        self.link.consumer[1](seq, line)
        self.assertEqual(list(self.link.stream.values()), [(self.bob_mail("c", entry), line)])
        # offline: it stays where it is
        del self.link.kv[self.node.sessions_kv][t("bob")]
        [(seq, _)] = self.link.stream.items()
        self.link.consumer[1](seq, line)
        self.assertEqual(list(self.link.stream), [seq])

    def test_mail_waiting_in_the_engine_is_delivered_on_attach(self):
        entry, line = message.new_message("alice", "bob", "while away", 5.0, "relay")
        self.link.store(self.bob_mail("zz", entry), line, entry["msg_id"])
        bob = FakeSession("bob")
        self.router.attach(bob)
        self.router.flush()
        self.assertEqual(bodies(bob), ["while away"])

    def test_mail_accepted_here_is_delivered_again_from_the_engine(self):
        alice = FakeSession("alice")
        self.router.attach(alice)
        self.successResultOf(self.router.submit(alice, "bob", "for later"))
        bob = FakeSession("bob")
        self.router.attach(bob)
        self.assertEqual(bodies(bob), ["for later"])
        self.router.handed(bob, [{"msg_id": json.loads(bob.lines[0])["msg_id"]}])
        self.assertEqual(self.link.stream, {})

    def test_room_messages_go_to_the_room_subject_once_stored(self):
        alice = FakeSession("alice")
        self.router.attach(alice)
        self.router.join(alice, "lobby")
        room_subject = self.node.prefix + ".room." + t("lobby")
        self.assertIn(room_subject, self.link.subscriptions)
        self.successResultOf(self.router.submit(alice, message.room_target("lobby"), "hey",
                                                room="lobby"))
        self.assertEqual(self.subjects(), [self.node.prefix + ".log.room." + t("lobby")])
        [(subject, data)] = self.link.published
        self.assertEqual(subject, room_subject)
        self.assertTrue(data.startswith(b"a 1 "))
        self.router.leave(alice, "lobby")
        self.clock.advance(0)           # at the end of the turn
        self.assertNotIn(room_subject, self.link.subscriptions)

    def test_room_message_from_another_node_is_delivered_not_stored_again(self):
        bob = FakeSession("bob")
        self.router.attach(bob)
        self.router.join(bob, "lobby")
        entry, line = message.new_message("carol", message.room_target("lobby"), "hey", 5.0,
                                          "relay", room="lobby")
        callback = self.link.subscriptions[self.node.prefix + ".room." + t("lobby")]
        callback(b"b 7 " + line)
        callback(b"a 8 " + line)        # this node's own publication: ignored
        self.router.flush()
        self.assertEqual(bodies(bob), ["hey"])
        self.assertEqual(self.link.stream, {})

    def test_without_the_engine_sends_are_refused(self):
        alice = FakeSession("alice")
        self.router.attach(alice)
        self.link.set_state(DISCONNECTED)
        self.assertEqual(self.node.refusal("alice", "bob", "x"), REFUSAL)
        self.assertEqual(self.node.health(), "cluster engine disconnected")
        failure = self.failureResultOf(self.router.submit(alice, "bob", "x"))
        self.assertIn("unreachable", failure.getErrorMessage())
        self.link.set_state(CONNECTED)
        self.assertIsNone(self.node.refusal("alice", "bob", "x"))
        self.successResultOf(self.router.submit(alice, "bob", "x"))

    def test_a_message_the_engine_lost_is_not_kept_here_to_be_acked_as_a_repeat(self):
        alice = FakeSession("alice")
        self.router.attach(alice)
        writing = defer.Deferred()
        self.link.store = lambda subject, data, msg_id=None: writing
        sent = self.router.submit(alice, "bob", "x", nonce="n1")
        self.assertEqual(self.local.lines, [])      # not here before the engine has it
        writing.errback(ConnectionError("engine connection lost"))
        self.failureResultOf(sent)
        self.assertEqual(self.local.lines, [])
        # the node restarts on its journal; the sender's retry must reach the engine
        del self.link.store
        node, router, _, _ = make_node(self.link, replayed=self.local.lines)
        router.attach(alice)
        msg_id, repeat = self.successResultOf(router.submit(alice, "bob", "x", nonce="n1"))
        self.assertFalse(repeat)
        self.assertEqual(list(self.link.msg_ids), [msg_id])

    def test_a_message_is_journaled_here_once_the_engine_holds_it(self):
        alice = FakeSession("alice")
        self.router.attach(alice)
        writing = defer.Deferred()
        store = self.link.store
        self.link.store = lambda subject, data, msg_id=None: writing
        sent = self.router.submit(alice, "bob", "x")
        self.assertEqual(self.local.lines, [])
        store(self.node._mail_subject("_", "bob"), b"x", "m").chainDeferred(writing)
        self.successResultOf(sent)
        self.assertEqual([json.loads(line)["body"] for line in self.local.lines], ["x"])

    def test_a_peer_that_came_while_the_engine_was_away_is_registered_on_its_return(self):
        entry, line = message.new_message("alice", "bob", "waiting", 5.0, "relay")
        self.link.store(self.bob_mail("_", entry), line, entry["msg_id"])
        self.link.set_state(DISCONNECTED)
        bob = FakeSession("bob")
        self.router.attach(bob)
        self.assertNotIn(t("bob"), self.link.kv[self.node.sessions_kv])
        self.link.set_state(CONNECTED)
        self.assertEqual(self.link.kv[self.node.sessions_kv][t("bob")], b"a")
        self.router.flush()
        self.assertEqual(bodies(bob), ["waiting"])

    def test_heartbeat_lists_the_members(self):
        self.link.kv[self.node.nodes_kv]["b"] = b'{"sessions": 3, "at": 1}'
        self.clock.advance(Settings.liveness)
        self.assertEqual(sorted(self.node.stats()["members"]), ["a", "b"])
        self.assertEqual(json.loads(self.link.kv[self.node.nodes_kv]["a"])["sessions"], 0)

    def test_the_admin_console_lists_the_nodes(self):
        from twisted.application.service import MultiService
        from relayd.ops.commands import AdminCommands
        self.link.kv[self.node.nodes_kv]["b"] = b'{"sessions": 3, "at": 1}'
        self.router.attach(FakeSession("alice"))
        self.clock.advance(Settings.liveness)
        daemon = MultiService()
        self.node.setServiceParent(daemon)
        shown = str(AdminCommands(daemon).nodes())
        self.assertEqual([line.split() for line in shown.splitlines()[-2:]],
                         [["a", "1", "True"], ["b", "3", "False"]], shown)

    def test_the_admin_console_locates_a_peer_on_any_node(self):
        from twisted.application.service import MultiService
        from relayd.ops.commands import AdminCommands
        self.link.kv[self.node.nodes_kv]["b"] = b'{"sessions": 1, "at": 1}'
        self.link.kv[self.node.sessions_kv][t("bob")] = b"b"
        self.link.kv[self.node.sessions_kv][t("carol")] = b"gone"     # a node not alive
        self.router.attach(FakeSession("alice"))
        self.clock.advance(Settings.liveness)
        daemon = MultiService()
        self.node.setServiceParent(daemon)
        commands = AdminCommands(daemon)
        shown = {peer: str(self.successResultOf(commands.locate(peer)))
                 for peer in ("alice", "bob", "carol", "dave")}
        self.assertEqual(shown, {"alice": "alice is connected to node a",
                                 "bob": "bob is connected to node b",
                                 "carol": "carol is not connected to any node",
                                 "dave": "dave is not connected to any node"})
        self.link.set_state(DISCONNECTED)
        self.assertIn("cannot tell", str(self.successResultOf(commands.locate("bob"))))

    def test_a_stopped_node_leaves_the_cluster(self):
        self.clock.advance(Settings.liveness)
        self.assertIn("a", self.link.kv[self.node.nodes_kv])
        self.successResultOf(defer.maybeDeferred(self.node.stopService))
        self.assertNotIn("a", self.link.kv[self.node.nodes_kv])
        self.link.set_state(CONNECTED)          # a late state change does nothing
        self.assertFalse(self.node.ready)

    def test_detach_drops_only_its_own_session_entry(self):
        bob = FakeSession("bob")
        self.router.attach(bob)
        self.link.kv[self.node.sessions_kv][t("bob")] = b"b"        # bob moved to b
        self.router.detach(bob)
        self.assertEqual(self.link.kv[self.node.sessions_kv][t("bob")], b"b")
        bob = FakeSession("bob")
        self.router.attach(bob)
        self.router.detach(bob)
        self.assertNotIn(t("bob"), self.link.kv[self.node.sessions_kv])

    def test_a_quick_detach_drops_the_entry_its_attach_was_still_writing(self):
        """Else the entry would name this node for good, and the other nodes
        would pass bob's room messages here instead of storing them."""
        writes, put = [], self.link.kv_put

        def slow_put(bucket, key, value):
            written = defer.Deferred()
            writes.append(lambda: written.callback(put(bucket, key, value)))
            return written
        self.patch(self.link, "kv_put", slow_put)
        bob = FakeSession("bob")
        self.router.attach(bob)
        self.router.detach(bob)
        for write in writes:
            write()
        self.assertNotIn(t("bob"), self.link.kv[self.node.sessions_kv])

    def test_a_detach_keeps_the_entry_another_node_wrote_after_its_read(self):
        """bob leaves this node and reaches node b while this node's read of
        his entry is on its way back: b's entry stays, or the other nodes
        would take bob for offline and store what they could pass on live."""
        reads, entry = [], self.link.kv_entry

        def slow_read(bucket, key):
            read, found = defer.Deferred(), self.successResultOf(entry(bucket, key))
            reads.append(lambda: read.callback(found))      # read now, answered later
            return read
        bob = FakeSession("bob")
        self.router.attach(bob)
        self.patch(self.link, "kv_entry", slow_read)
        self.router.detach(bob)
        self.link.kv_put(self.node.sessions_kv, t("bob"), b"b")     # node b writes
        [answer] = reads
        answer()                                # "it names this node": stale
        self.assertEqual(self.link.kv[self.node.sessions_kv][t("bob")], b"b")


class OwnershipTests(unittest.TestCase):
    KEY_A, KEY_B = b"a" * 32, b"b" * 32

    def test_claims_are_shared_and_learned(self):
        link = FakeLink()
        node, router, _, _ = make_node(link, owners={"old": self.KEY_A})
        owners = link.kv[node.owners_kv]
        # a claim made before the cluster, and a new one, reach the engine
        self.assertEqual(sorted(owners), sorted([t("old")]))
        self.assertTrue(router.ownership.claim("alice", self.KEY_A))
        self.assertEqual(sorted(owners), sorted([t("old"), t("alice")]))
        # another node's claim, published while linked: owned here too
        link.kv_create(node.owners_kv, t("bob"), SharedOwnership.record("bob", self.KEY_B))
        self.assertEqual(router.ownership.owner("bob"), self.KEY_B)
        self.assertFalse(router.ownership.claim("bob", self.KEY_A))
        # a second node starting on the same engine learns both
        other, other_router, _, _ = make_node(link, node="b")
        self.assertEqual(other_router.ownership.owner("alice"), self.KEY_A)
        self.assertEqual(other_router.ownership.owner("old"), self.KEY_A)

    def test_claims_made_while_the_engine_is_away_are_shared_on_its_return(self):
        link = FakeLink()
        node, router, _, _ = make_node(link)
        link.set_state(DISCONNECTED)
        self.assertTrue(router.ownership.claim("alice", self.KEY_A))
        self.assertEqual(link.kv[node.owners_kv], {})
        link.set_state(CONNECTED)
        self.assertEqual(list(link.kv[node.owners_kv]), [t("alice")])

    def test_a_claim_that_lost_to_the_engines_gives_the_id_up(self):
        link = FakeLink()
        node, router, _, _ = make_node(link)
        lost = []
        router.ownership.lost.append(lost.append)
        alice = FakeSession("alice")
        router.attach(alice)
        link.set_state(DISCONNECTED)
        self.assertTrue(router.ownership.claim("alice", self.KEY_A))     # proved here
        # meanwhile another node's claim with another key reached the engine
        link.kv[node.owners_kv][t("alice")] = SharedOwnership.record("alice", self.KEY_B)
        with capturedLogs() as events:
            link.set_state(CONNECTED)
        self.assertIn("ownership conflict for alice", logged(events))
        self.assertEqual(router.ownership.owner("alice"), self.KEY_B)
        self.assertEqual(lost, ["alice"])
        self.assertFalse(router.ownership.claim("alice", self.KEY_A))
        self.assertEqual(link.kv[node.owners_kv][t("alice")],
                         SharedOwnership.record("alice", self.KEY_B))
        # the bucket's own claim, seen again: nothing is lost twice
        link.followers["$KV.%s.>" % node.owners_kv](9, SharedOwnership.record("alice",
                                                                             self.KEY_B))
        self.assertEqual(lost, ["alice"])

    def test_a_claim_the_engine_failed_is_shared_again(self):
        link = FakeLink()
        node, router, _, clock = make_node(link)
        create = link.kv_create
        self.patch(link, "kv_create", lambda *a: defer.fail(TimeoutError("nats: timeout")))
        with capturedLogs() as events:
            self.assertTrue(router.ownership.claim("alice", self.KEY_A))
        self.assertIn("could not share the key claim of alice", logged(events))
        self.assertEqual(link.kv[node.owners_kv], {})
        self.patch(link, "kv_create", create)
        clock.advance(RETRY)
        self.assertEqual(list(link.kv[node.owners_kv]), [t("alice")])


class TableFollowingTests(unittest.TestCase):
    """A node follows each shared bucket's stream with a consumer of its
    current link, whatever became of the last link's."""
    KEY = b"k" * 32

    def setUp(self):
        self.link = FakeLink()
        self.node, self.router, _, self.clock = make_node(self.link)
        self.owners = "$KV.%s.>" % self.node.owners_kv

    def claim_elsewhere(self, peer_id):
        self.link.kv_create(self.node.owners_kv, t(peer_id), SharedOwnership.record(peer_id,
                                                                                   self.KEY))

    def test_a_new_link_follows_afresh(self):
        unfollowed = []
        unsubscribe = self.link.unsubscribe
        self.patch(self.link, "unsubscribe",
                   lambda handle: unfollowed.append(handle) or unsubscribe(handle))
        self.link.set_state(DISCONNECTED)
        self.assertIn(self.owners, unfollowed)
        self.assertNotIn(self.owners, self.link.followers)
        self.link.set_state(CONNECTED)
        self.claim_elsewhere("carol")
        self.assertEqual(self.router.ownership.owner("carol"), self.KEY)

    def test_a_follow_the_engine_failed_is_tried_again(self):
        follow = self.link.follow
        self.link.set_state(DISCONNECTED)
        self.patch(self.link, "follow", lambda *a: defer.fail(TimeoutError("nats: timeout")))
        with capturedLogs() as events:
            self.link.set_state(CONNECTED)
        self.assertIn("could not follow the cluster's %s" % self.node.owners_kv, logged(events))
        self.patch(self.link, "follow", follow)
        self.clock.advance(RETRY)
        self.claim_elsewhere("carol")
        self.assertEqual(self.router.ownership.owner("carol"), self.KEY)

    def test_a_follow_answered_after_the_link_was_lost_is_dropped(self):
        self.link.set_state(DISCONNECTED)
        answers = []
        self.patch(self.link, "follow", lambda *a: answers.append(defer.Deferred()) or answers[-1])
        self.link.set_state(CONNECTED)
        self.link.set_state(DISCONNECTED)
        unfollowed = []
        self.patch(self.link, "unsubscribe", lambda handle: unfollowed.append(handle) or
                   defer.succeed(None))
        for answer in answers:
            answer.callback("stale consumer")
        self.assertEqual(len(unfollowed), len(answers))
        self.assertEqual(self.node._followers, {})


class SharedStateTests(unittest.TestCase):
    """Bans and persistent room memberships made on one node hold on all."""

    def setUp(self):
        self.link = FakeLink()
        self.a, self.router_a, _, self.clock = make_node(self.link, node="a")
        self.b, self.router_b, _, _ = make_node(self.link, node="b")

    def guard(self, node):
        guard = AbuseGuard(node.clock, 10, 1.0, 3, 60.0, 600.0)
        node.share_guard(guard)
        return guard

    def test_a_ban_and_its_lifting_reach_the_other_nodes(self):
        guard_a, guard_b = self.guard(self.a), self.guard(self.b)
        self.a._setup()                 # with the guards: the bans table too
        self.b._setup()
        bans = self.link.kv[self.a.bans_kv]
        dropped = []
        guard_b.on_ban.append(dropped.append)
        guard_a.ban("192.0.2.7", 300)
        record = bans[t("192.0.2.7")]
        self.assertEqual(json.loads(record), {"ip": "192.0.2.7", "until": 1300.0})
        # b follows the bucket's stream: the stored ban reaches it
        self.assertEqual(guard_b.banned("192.0.2.7"), 300.0)
        self.assertEqual(dropped, ["192.0.2.7"])        # its connections there are dropped
        self.b._learn_ban(record)                       # seen again: nothing changes
        self.assertEqual(dropped, ["192.0.2.7"])
        self.assertEqual(list(bans), [t("192.0.2.7")])
        self.assertTrue(guard_b.unban("192.0.2.7"))     # lifted on b ...
        lifted = bans[t("192.0.2.7")]
        self.assertEqual(json.loads(lifted)["until"], 0)
        self.a._learn_ban(lifted)
        self.assertIsNone(guard_a.banned("192.0.2.7"))  # ... lifted on a
        self.assertEqual(json.loads(bans[t("192.0.2.7")])["until"], 0)
        self.b._learn_ban(b"")                          # a deleted entry: ignored

    def test_a_node_starting_learns_the_bans_in_force(self):
        guard_a = self.guard(self.a)
        self.a._setup()
        guard_a.ban("192.0.2.7", 300)
        guard_a.ban("192.0.2.8", 5)
        self.clock.advance(10)
        late, _, _, _ = make_node(self.link, node="c")
        late.clock.advance(10)
        guard_c = self.guard(late)
        late._setup()
        self.assertEqual(guard_c.bans(), {"192.0.2.7": 290.0})

    def test_bans_made_while_the_engine_is_away_are_shared_on_its_return(self):
        guard_a = self.guard(self.a)
        self.a._setup()
        self.link.set_state(DISCONNECTED)
        guard_a.ban("192.0.2.7", 300)
        self.assertEqual(self.link.kv[self.a.bans_kv], {})
        self.link.set_state(CONNECTED)
        self.assertEqual(list(self.link.kv[self.a.bans_kv]), [t("192.0.2.7")])

    def hold_puts(self):
        """Puts wait until the test ends them: ``(Deferred, args)`` of each,
        in order; ``store`` ends one as the engine would."""
        held, self.put = [], self.link.kv_put

        def put(*args):
            held.append((defer.Deferred(), args))
            return held[-1][0]
        self.patch(self.link, "kv_put", put)
        return held

    def store(self, held):
        d, args = held
        self.put(*args).chainDeferred(d)

    def test_a_change_the_engine_failed_is_put_again(self):
        guard_a = self.guard(self.a)
        self.a._setup()
        held = self.hold_puts()
        guard_a.ban("192.0.2.7", 300)
        self.patch(self.link, "kv_put", self.put)
        with capturedLogs() as events:
            held[0][0].errback(TimeoutError("nats: timeout"))
        self.assertIn("could not share a change with the cluster", logged(events))
        self.assertEqual(self.link.kv[self.a.bans_kv], {})
        self.clock.advance(RETRY)
        self.assertEqual(json.loads(self.link.kv[self.a.bans_kv][t("192.0.2.7")])["until"],
                         1300.0)

    def test_a_failed_change_is_not_put_over_a_later_one(self):
        guard_a = self.guard(self.a)
        self.a._setup()
        held = self.hold_puts()
        guard_a.ban("192.0.2.7", 300)
        guard_a.unban("192.0.2.7")
        self.patch(self.link, "kv_put", self.put)
        self.store(held[1])             # the lifting is stored ...
        held[0][0].errback(TimeoutError("nats: timeout"))  # ... the ban before it failed
        self.clock.advance(RETRY)
        self.assertEqual(json.loads(self.link.kv[self.a.bans_kv][t("192.0.2.7")])["until"], 0)

    def test_changes_made_while_the_link_was_down_are_read_on_its_return(self):
        guard_b = self.guard(self.b)
        self.b._setup()
        self.link.set_state(DISCONNECTED)
        # while b is away, a's ban and a join on a reach the engine; b hears neither live
        self.link.kv[self.b.bans_kv][t("192.0.2.9")] = json.dumps(
            {"ip": "192.0.2.9", "until": 2000.0}).encode()
        bob = FakeSession("bob")
        self.link.set_state(CONNECTED)
        self.link.followers.pop("$KV.%s.>" % self.b.members_kv)     # b's consumer, cut off
        self.router_a.attach(bob)
        self.router_a.join(bob, "lobby", persist=True)
        self.link.set_state(DISCONNECTED)
        self.assertEqual(self.router_b.memberships.rooms_of("bob"), ())
        self.link.set_state(CONNECTED)      # b follows the buckets again, and reads them
        self.assertEqual(guard_b.bans(), {"192.0.2.9": 1000.0})
        self.assertEqual(self.router_b.memberships.rooms_of("bob"), {"lobby"})

    def learn_members(self, node):
        bucket = self.link.kv[node.members_kv]
        for value in bucket.values():
            node._learn_member(value)

    def test_a_persistent_join_and_leave_hold_on_every_node(self):
        bob = FakeSession("bob")
        self.router_a.attach(bob)
        self.router_a.join(bob, "lobby", persist=True)
        self.learn_members(self.b)
        self.assertEqual(self.router_b.memberships.rooms_of("bob"), {"lobby"})
        # bob comes back on node b: he is in the room there at once
        self.router_a.detach(bob)
        again = FakeSession("bob")
        self.router_b.attach(again)
        self.assertEqual(again.rooms, {"lobby"})
        self.router_b.leave(again, "lobby")
        self.learn_members(self.a)
        self.assertEqual(self.router_a.memberships.rooms_of("bob"), ())

    def test_room_mail_for_an_offline_member_waits_in_the_engine_for_any_node(self):
        bob = FakeSession("bob")
        self.router_a.attach(bob)
        self.router_a.join(bob, "lobby", persist=True)
        self.router_a.detach(bob)
        self.learn_members(self.b)
        carol = FakeSession("carol")
        self.router_b.attach(carol)
        self.router_b.join(carol, "lobby")
        self.successResultOf(self.router_b.submit(carol, message.room_target("lobby"),
                                                  "while away", room="lobby"))
        mail = self.b.prefix + ".mail._." + t("bob") + "."
        self.assertTrue([subject for subject, _ in self.link.stream.values()
                         if subject.startswith(mail)])
        self.assertEqual(self.router_b.mailboxes.peek("bob"), [])   # the engine has it
        # bob comes back on node a, which never saw the message
        back = FakeSession("bob", router=self.router_a)
        self.router_a.attach(back)
        self.router_a.flush()
        self.assertEqual(bodies(back), ["while away"])
        # settled: the engine lets it go
        self.assertNotIn(mail, [subject for subject, _ in self.link.stream.values()])

    def bob_joins_the_lobby_on_a(self):
        bob = FakeSession("bob")
        self.router_a.attach(bob)
        self.router_a.join(bob, "lobby", persist=True)
        self.learn_members(self.b)
        return bob

    def carol_on_b_with_a_alive(self):
        carol = FakeSession("carol")
        self.router_b.attach(carol)
        self.link.kv[self.a.nodes_kv]["a"] = b"{}"
        self.b.members["a"] = {}
        return carol

    def test_a_member_attached_to_another_node_gets_it_live_not_stored(self):
        self.bob_joins_the_lobby_on_a()
        carol = self.carol_on_b_with_a_alive()
        self.successResultOf(self.router_b.submit(carol, message.room_target("lobby"),
                                                  "live", room="lobby"))
        self.assertEqual([subject for subject, _ in self.link.stream.values()],
                         [self.b.prefix + ".log.room." + t("lobby")])
        self.assertEqual(self.router_b.mailboxes.peek("bob"), [])

    def test_a_member_leaving_another_node_gets_what_that_node_was_passed(self):
        """bob leaves node a; until the engine has dropped his session entry
        (and ``timeout`` after), node b may take him for attached to a and
        pass a room message to a, live: a keeps the room and stores the
        message for him in the engine."""
        bob = self.bob_joins_the_lobby_on_a()
        dan = FakeSession("dan")
        self.router_a.attach(dan)
        self.router_a.join(dan, "hall")             # not persistent
        forgotten = defer.Deferred()
        self.patch(self.link, "kv_delete", lambda bucket, key, revision: forgotten)   # a slow engine
        self.router_a.detach(bob)
        self.router_a.detach(dan)
        self.clock.advance(0)
        self.assertEqual(sorted(self.a.rooms), ["lobby"])     # nothing is held for dan
        carol = self.carol_on_b_with_a_alive()
        self.successResultOf(self.router_b.submit(carol, message.room_target("lobby"),
                                                  "as bob leaves", room="lobby"))
        mail = self.b.prefix + ".mail._." + t("bob") + "."
        self.assertFalse([s for s, _ in self.link.stream.values() if s.startswith(mail)])
        [data] = [d for s, d in self.link.published if s == self.a._room_subject("lobby")]
        self.a._remote(data)
        self.assertTrue([s for s, _ in self.link.stream.values() if s.startswith(mail)])
        back = FakeSession("bob", router=self.router_b)
        self.router_b.attach(back)
        self.router_b.flush()
        self.assertEqual(bodies(back), ["as bob leaves"])
        # the entry is gone and the margin over: a lets the room go
        forgotten.callback(None)
        self.clock.advance(4.9)
        self.assertIn("lobby", self.a.rooms)
        self.clock.advance(0.2)
        self.assertNotIn("lobby", self.a.rooms)


class ConfigTests(unittest.TestCase):
    HEAD = "[relay]\nid = r\n"

    def assertConfigError(self, text, *fragments):
        with self.assertRaises(config.ConfigError) as cm:
            config.validate(config.parse(self.HEAD + text, "relay.ini"))
        for fragment in fragments:
            self.assertIn(fragment, str(cm.exception))

    def test_valid(self):
        s = config.validate(config.parse(
            self.HEAD + "[cluster]\nengine = nats://127.0.0.1:4222, nats://127.0.0.1:4223\n"
            "node = n-1\n"))
        self.assertEqual(s.cluster.engine, ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"])
        self.assertEqual((s.cluster.node, s.cluster.replicas, s.cluster.liveness), ("n-1", 3, 10))

    def test_errors(self):
        self.assertConfigError("[cluster]\nnode = a\n", "[cluster] engine", "required")
        self.assertConfigError("[cluster]\nengine = http://x:1\nnode = a\n", "[cluster] engine")
        self.assertConfigError("[cluster]\nengine = nats://x:1\nnode = a.b\n", "[cluster] node")
        self.assertConfigError("[cluster]\nengine = nats://x:1\nnode = a\nreplicas = 7\n",
                               "[cluster] replicas")


class LinkTests(unittest.TestCase):
    """The real link, against a real nats-server (one node, JetStream R1)."""

    def setUp(self):
        from tests.engine import nats_engine
        self.engine = nats_engine(self, nodes=1)
        from twisted.internet import reactor
        self.link = EngineLink(reactor, self.engine.urls, "test", timeout=5.0)
        self.states = []
        self.link.watch(self.states.append)
        self.link.startService()
        self.addCleanup(self.link.stopService)

    def connected(self):
        d = defer.Deferred()
        if self.link.state == CONNECTED:
            return defer.succeed(None)
        self.link.watch(lambda state: state == CONNECTED and not d.called and d.callback(None))
        return d

    @defer.inlineCallbacks
    def test_operations_and_reconnect(self):
        yield self.connected()
        yield self.link.ensure_stream("T", ["t.>"], 1, 60.0)
        yield self.link.ensure_kv("K", 1, ttl=30.0)
        seq, duplicate = yield self.link.store("t.mail.x", b"one", "id1")
        again = yield self.link.store("t.mail.x", b"one", "id1")
        self.assertEqual(again, (seq, True))
        yield self.link.store("t.mail.y", b"two", "id2")
        found = yield self.link.messages("T", "t.mail.*", 10)
        self.assertEqual([data for _, data in found], [b"one", b"two"])
        self.assertTrue((yield self.link.delete("T", seq)))
        self.assertFalse((yield self.link.delete("T", seq)))
        last, _ = yield self.link.store("t.mail.z", b"three", "id3")
        self.assertTrue((yield self.link.delete("T", last)))
        self.assertFalse((yield self.link.delete("T", last)))      # the last: another err_code
        yield self.link.kv_put("K", "k", b"v")
        self.assertEqual((yield self.link.kv_get("K", "k")), b"v")
        self.assertEqual((yield self.link.kv_items("K")), {"k": b"v"})
        yield self.link.kv_delete("K", "k")
        self.assertIsNone((yield self.link.kv_get("K", "k")))
        got = defer.Deferred()
        yield self.link.subscribe("core.x", got.callback)
        yield self.link.publish("core.x", b"hello")
        self.assertEqual((yield got), b"hello")
        # the server goes away and comes back: the link says so and reconnects
        self.engine.kill(0)
        for _ in range(200):            # at most 10 s
            if self.link.state != CONNECTED:
                break
            yield task.deferLater(self._reactor(), 0.05)
        self.engine.start(0)
        yield self.connected()
        self.assertEqual(self.states[:2], [CONNECTING, CONNECTED])
        self.assertIn(DISCONNECTED, self.states)
        self.assertEqual(self.states[-1], CONNECTED)

    @defer.inlineCallbacks
    def test_federation_operations(self):
        yield self.connected()
        yield self.link.ensure_stream("F", ["f.fed", "f.mail.>"], 1, 60.0)
        yield self.link.ensure_kv("L", 1, ttl=30.0)
        # the leader's key: created once, then only updated at its revision
        first = yield self.link.kv_claim("L", "leader", b"a")
        self.assertIsNone((yield self.link.kv_claim("L", "leader", b"b")))
        second = yield self.link.kv_claim("L", "leader", b"a", first)
        self.assertIsNone((yield self.link.kv_claim("L", "leader", b"a", first)))
        # a node that lost track of its revision takes back its own entry
        third = yield self.link.kv_claim("L", "leader", b"a")
        self.assertLess(first, second)
        self.assertLess(second, third)
        # a delete at a revision: only while nobody wrote the key since
        self.assertEqual((yield self.link.kv_entry("L", "leader")), (b"a", third))
        self.assertFalse((yield self.link.kv_delete("L", "leader", second)))
        self.assertEqual((yield self.link.kv_get("L", "leader")), b"a")
        self.assertTrue((yield self.link.kv_delete("L", "leader", third)))
        self.assertIsNone((yield self.link.kv_entry("L", "leader")))
        # an ordered consumer from now on, and the stream's last seq
        got = []
        subscription = yield self.link.follow("F", "f.fed", lambda seq, data: got.append(
            (seq, data)))
        seqs = []
        for data in (b"x", b"y"):
            seqs.append((yield self.link.store("f.fed", data, data.decode()))[0])
        self.assertEqual((yield self.link.last_seq("F")), seqs[-1])
        for _ in range(100):
            if len(got) == 2:
                break
            yield task.deferLater(self._reactor(), 0.05)
        self.assertEqual(got, list(zip(seqs, [b"x", b"y"])))
        yield self.link.unsubscribe(subscription)
        self.assertEqual((yield self.link.messages("F", "f.fed", 10, seqs[1])), [(seqs[1], b"y")])
        # purge by subject, wildcards allowed
        yield self.link.store("f.mail.a.p.m1", b"1", "m1")
        yield self.link.store("f.mail._.p.m2", b"2", "m2")
        yield self.link.purge("F", "f.mail.*.p.m1")
        self.assertEqual([data for _, data in (yield self.link.messages("F", "f.mail.>", 10))],
                         [b"2"])

    def _reactor(self):
        from twisted.internet import reactor
        return reactor
