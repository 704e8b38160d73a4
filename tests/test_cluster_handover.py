"""A cluster node's own journal at restart: the mail it restores is the
engine's to deliver, except the mail of a journal from before the node
joined the cluster, handed to the engine once."""
import json
import os

from twisted.internet import defer, task
from twisted.trial import unittest

from relayd.cluster import handover
from relayd.cluster.handover import Handover
from relayd.cluster.link import CONNECTED, DISCONNECTED
from relayd.core import message
from tests.fakes import FakeSession
from tests.test_cluster import FakeLink, bodies, make_node
from tests.test_ownership import HeldPool


class HandoverTests(unittest.TestCase):

    def setUp(self):
        self.link = FakeLink()
        self.path = os.path.abspath(self.mktemp())
        self.pool = HeldPool()

    def start(self, node, replayed=()):
        """A node started on ``replayed`` with its handover loaded from ``self.path``."""
        record = Handover(self.path, self.pool, task.Clock())
        record.startService()
        started = make_node(self.link, node, replayed=replayed, handover=record)
        while self.pool.jobs:           # the file written, if it is
            self.pool.step()
        return started

    def test_mail_delivered_on_another_node_is_not_offered_again_after_a_restart(self):
        a, router_a, journal_a, clock = self.start("a")
        _, router_b, _, _ = self.start("b")
        alice = FakeSession("alice")
        router_a.attach(alice)
        self.successResultOf(router_a.submit(alice, "bob", "hi"))
        self.successResultOf(router_a.submit(alice, "carol", "for later"))
        # a restarts on its journal, which holds both messages and no receipt
        _, router_a2, _, _ = self.start("a", journal_a.lines)
        self.assertEqual(router_a2.mailboxes.total(), 0)
        bob = FakeSession("bob")
        router_b.attach(bob)
        router_b.flush()
        self.assertEqual(bodies(bob), ["hi"])
        router_b.handed(bob, [json.loads(line) for line in bob.lines])
        router_b.detach(bob)
        clock.advance(10)
        bob_again, carol = FakeSession("bob"), FakeSession("carol")
        for session in (bob_again, carol):
            router_a2.attach(session)
        router_a2.flush()
        self.assertEqual(bodies(bob_again), [])         # had it on b
        self.assertEqual(bodies(carol), ["for later"])  # still in the engine: delivered once

    def test_a_journal_from_before_the_cluster_hands_its_mail_to_the_engine_once(self):
        dm, dm_line = message.new_message("alice", "bob", "sent before", 5.0, "relay")
        room, room_line = message.new_message("alice", "#lobby", "room, before", 6.0, "relay",
                                              room="lobby")
        journal = [dm_line, message.held_line(room_line, ["carol"])]
        self.link.set_state(DISCONNECTED)
        a, router_a, _, _ = self.start("a", journal)
        self.assertEqual(router_a.mailboxes.total(), 0)
        self.assertEqual(self.link.stream, {})
        self.assertFalse(os.path.exists(self.path))     # not before the engine has it
        self.link.set_state(CONNECTED)
        self.assertEqual(len(self.link.stream), 2)
        self.pool.step()
        self.assertTrue(os.path.exists(self.path))
        _, router_b, _, _ = self.start("b")
        bob, carol = FakeSession("bob"), FakeSession("carol")
        for session in (bob, carol):
            router_b.attach(session)
        router_b.flush()
        self.assertEqual(bodies(bob), ["sent before"])
        self.assertEqual(bodies(carol), ["room, before"])
        router_b.handed(bob, [dm])
        router_b.handed(carol, [room])
        self.assertEqual(self.link.stream, {})
        # the next start leaves that journal's mail to the engine, which has let it go
        _, router_a2, _, _ = self.start("a", journal)
        self.assertEqual(self.link.stream, {})
        bob_again = FakeSession("bob")
        router_a2.attach(bob_again)
        router_a2.flush()
        self.assertEqual(bodies(bob_again), [])

    def test_a_peer_attached_during_the_handover_gets_its_mail(self):
        dm, dm_line = message.new_message("alice", "bob", "sent before", 5.0, "relay")
        self.link.set_state(DISCONNECTED)
        a, router_a, _, _ = self.start("a", [dm_line])
        bob = FakeSession("bob")
        router_a.attach(bob)
        router_a.flush()
        self.assertEqual(bodies(bob), [])
        self.link.set_state(CONNECTED)
        router_a.flush()
        self.assertEqual(bodies(bob), ["sent before"])
        router_a.handed(bob, [dm])
        self.assertEqual(self.link.stream, {})

    def test_a_failed_handover_is_tried_again_when_the_engine_is_back(self):
        dm, dm_line = message.new_message("alice", "bob", "sent before", 5.0, "relay")
        self.link.set_state(DISCONNECTED)
        self.start("a", [dm_line])
        store = self.link.store
        self.link.store = lambda *a: defer.fail(ConnectionError("engine lost"))
        self.link.set_state(CONNECTED)
        self.assertFalse(self.pool.jobs)
        self.link.store = store
        self.link.set_state(DISCONNECTED)
        self.link.set_state(CONNECTED)
        self.assertEqual([json.loads(data)["body"] for _, data in self.link.stream.values()],
                         ["sent before"])
        self.pool.step()
        self.assertTrue(os.path.exists(self.path))

    def test_a_big_journal_is_handed_over_a_window_at_a_time(self):
        self.patch(handover, "WINDOW", 3)
        journal = [message.new_message("alice", "peer%d" % i, "m%d" % i, 5.0 + i, "relay")[1]
                   for i in range(7)]
        self.link.set_state(DISCONNECTED)
        self.start("a", journal)
        store, writing = self.link.store, []

        def held_store(*args):
            d = defer.Deferred()
            writing.append((d, args))
            return d
        self.link.store = held_store
        self.link.set_state(CONNECTED)
        in_flight = []
        while writing:
            in_flight.append(len(writing))
            now, writing[:] = list(writing), []
            for d, args in now:
                store(*args).chainDeferred(d)
        self.assertEqual(in_flight, [3, 3, 1])
        self.assertEqual(len(self.link.stream), 7)
        self.pool.step()
        self.assertTrue(os.path.exists(self.path))

    def test_a_first_start_with_no_mail_marks_the_journal_at_once(self):
        self.start("a")
        self.assertTrue(os.path.exists(self.path))
