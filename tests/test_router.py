"""The router: routing rules, dedup, store-and-forward, replay."""
import json

from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer

from relayd.core import message
from relayd.core.interfaces import IDurableEventSubscriber
from relayd.core.membership import MembershipFull
from relayd.core.delivery import STORED_CHUNK
from tests.fakes import FakeSession, make_router


def bodies(session):
    return [json.loads(line)["body"] for line in session.lines]


class RoutingTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.router = make_router(self.clock)
        self.alice, self.bob, self.carol = (FakeSession(n) for n in ("alice", "bob", "carol"))
        for s in (self.alice, self.bob, self.carol):
            self.router.attach(s)

    def test_directed_only_to_target(self):
        results = []
        self.router.submit(self.alice, "bob", "hi").addCallback(results.append)
        self.assertEqual(bodies(self.bob), ["hi"])
        self.assertEqual(self.carol.lines, [])
        self.assertEqual(self.alice.lines, [])
        self.assertFalse(results[0][1])

    def test_broadcast_never_echoes(self):
        self.router.submit(self.alice, "*", "all")
        self.assertEqual(bodies(self.bob), ["all"])
        self.assertEqual(bodies(self.carol), ["all"])
        self.assertEqual(self.alice.lines, [])

    def test_room_members_only(self):
        self.router.join(self.alice, "r")
        self.router.join(self.bob, "r")
        self.router.submit(self.alice, "#r", "room", room="r")
        self.assertEqual(bodies(self.bob), ["room"])
        self.assertEqual(self.carol.lines, [])
        self.assertEqual(json.loads(self.bob.lines[0])["room"], "r")

    def test_retry_with_nonce_is_delivered_once(self):
        results = []
        self.router.submit(self.alice, "bob", "hi", nonce="n1").addCallback(results.append)
        self.router.submit(self.alice, "bob", "hi", nonce="n1").addCallback(results.append)
        self.assertEqual(bodies(self.bob), ["hi"])
        self.assertEqual(results[0][0], results[1][0])
        self.assertEqual([r[1] for r in results], [False, True])

    def test_retry_while_pending_is_acked_after_the_original(self):
        self.router.journal.hold = True
        results = []
        self.router.submit(self.alice, "bob", "hi", nonce="n1").addCallback(results.append)
        self.router.submit(self.alice, "bob", "hi", nonce="n1").addCallback(results.append)
        self.assertEqual(results, [])
        self.assertEqual(self.bob.lines, [])
        self.router.journal.release()
        self.assertEqual([r[1] for r in results], [False, True])
        self.assertEqual(len(self.bob.lines), 1)

    def test_journal_failure_fails_and_forgets(self):
        self.router.journal.fail = True
        failures = []
        self.router.submit(self.alice, "bob", "hi", nonce="n1").addErrback(failures.append)
        self.assertEqual(len(failures), 1)
        self.assertNotIn("bob", self.router.mailboxes, "not kept for a later session")
        self.router.journal.fail = False
        results = []
        self.router.submit(self.alice, "bob", "hi", nonce="n1").addCallback(results.append)
        self.assertFalse(results[0][1], "a retry after a failure is stored, not a duplicate")
        self.assertEqual(bodies(self.bob), ["hi", "hi"], "sent before it was durable, then again")
        self.assertEqual(len({json.loads(line)["msg_id"] for line in self.bob.lines}), 1,
                         "a repeat the recipient drops by msg_id")

    def test_copies_wait_for_a_flush_or_the_journal(self):
        self.router.journal.hold = True
        self.router.submit(self.alice, "*", "x")
        self.assertEqual(self.bob.lines, [])
        self.router.flush()
        self.assertEqual(bodies(self.bob), ["x"], "out before it is durable")
        self.router.submit(self.alice, "*", "y")
        self.router.journal.release()
        self.assertEqual(bodies(self.bob), ["x", "y"], "out once durable at the latest")


class SharedCopiesTests(unittest.TestCase):
    """A sender's consecutive copies to one audience are held once for all
    its readers and joined once (``delivery._Run``); each reader's stream
    still has everything in the order it happened."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.router = make_router(self.clock)
        self.router.journal.hold = True        # one journal batch, one flush
        self.alice, self.bob, self.carol = (FakeSession(n) for n in ("alice", "bob", "carol"))
        for s in (self.alice, self.bob, self.carol):
            self.router.attach(s)

    def flush(self):
        self.router.journal.release()

    def test_a_batch_of_broadcasts_is_one_shared_write(self):
        writes = []
        self.bob.deliver_lines = lambda lines, receipts=(): writes.append(("bob", lines))
        self.carol.deliver_lines = lambda lines, receipts=(): writes.append(("carol", lines))
        for n in range(3):
            self.router.submit(self.alice, "*", str(n))
        self.flush()
        [(_, bob_lines), (_, carol_lines)] = sorted(writes, key=lambda w: w[0])
        self.assertIs(bob_lines[0], carol_lines[0])
        self.assertEqual([json.loads(x)["body"] for x in bob_lines[0].splitlines()], ["0", "1", "2"])
        self.assertEqual(self.router.delivery.delivered, 6)

    def test_the_senders_acks_do_not_split_it(self):
        for n in range(3):
            self.router.submit(self.alice, "*", str(n))
            self.router.hold(self.alice, b'{"ack": %d}\n' % n)
        self.flush()
        self.assertEqual(bodies(self.bob), ["0", "1", "2"])
        self.assertEqual(len(self.alice.lines), 3)

    def test_a_directed_message_keeps_its_place(self):
        self.router.submit(self.alice, "*", "b1")
        self.router.submit(self.carol, "bob", "direct")
        self.router.hold(self.bob, b'{"body": "held"}\n')
        self.router.submit(self.alice, "*", "b2")
        self.flush()
        self.assertEqual(bodies(self.bob), ["b1", "direct", "held", "b2"])
        self.assertEqual(bodies(self.carol), ["b1", "b2"])

    def test_senders_interleave_in_order(self):
        self.router.submit(self.alice, "*", "a1")
        self.router.submit(self.bob, "*", "b1")
        self.router.submit(self.alice, "*", "a2")
        self.flush()
        self.assertEqual(bodies(self.carol), ["a1", "b1", "a2"])
        self.assertEqual(bodies(self.bob), ["a1", "a2"])
        self.assertEqual(bodies(self.alice), ["b1"])

    def test_a_session_that_arrives_gets_only_what_follows(self):
        self.router.submit(self.alice, "*", "before")
        dave = FakeSession("dave")
        self.router.attach(dave)
        self.router.submit(self.alice, "*", "after")
        self.flush()
        self.assertEqual(bodies(dave), ["after"])
        self.assertEqual(bodies(self.bob), ["before", "after"])

    def test_a_session_that_leaves_is_not_counted(self):
        self.router.submit(self.alice, "*", "one")
        self.router.detach(self.carol)
        self.router.submit(self.alice, "*", "two")
        self.flush()
        self.assertEqual(bodies(self.carol), [])
        self.assertEqual(self.router.delivery.delivered, 3)

    def test_room_joins_and_leaves_take_effect_at_once(self):
        for s in (self.alice, self.bob):
            self.router.join(s, "r")
        self.router.submit(self.alice, "#r", "one", room="r")
        self.router.join(self.carol, "r")
        self.router.submit(self.alice, "#r", "two", room="r")
        self.router.leave(self.bob, "r")
        self.router.submit(self.alice, "#r", "three", room="r")
        self.flush()
        self.assertEqual(bodies(self.bob), ["one", "two"])
        self.assertEqual(bodies(self.carol), ["two", "three"])

    def test_a_release_writes_what_was_routed_so_far(self):
        self.router.submit(self.alice, "*", "one")
        self.router.release(self.bob)
        self.assertEqual(bodies(self.bob), ["one"])
        self.router.submit(self.alice, "*", "two")
        self.flush()
        self.assertEqual(bodies(self.bob), ["one", "two"])
        self.assertEqual(bodies(self.carol), ["one", "two"])

    def test_a_stored_member_splits_the_run(self):
        for s in (self.alice, self.bob):
            self.router.join(s, "r", persist=True)
        self.router.submit(self.alice, "#r", "one", room="r")
        self.router.detach(self.bob)
        self.router.submit(self.alice, "#r", "two", room="r")
        self.flush()
        self.assertEqual(bodies(self.bob), [])
        self.assertEqual([e["body"] for e, _ in self.router.delivery.mailboxes.peek("bob")], ["two"])


class StoreAndForwardTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.router = make_router(self.clock, mailbox_max=3, mailbox_ttl=100)
        self.alice = FakeSession("alice")
        self.router.attach(self.alice)

    def test_offline_peer_gets_messages_in_order(self):
        for text in ("one", "two", "three"):
            self.router.submit(self.alice, "dave", text)
        dave = FakeSession("dave", router=self.router)
        stored = self.router.attach(dave)
        self.assertEqual(len(stored), 3)
        self.router.deliver_stored(dave, stored)
        self.assertEqual(bodies(dave), ["one", "two", "three"])
        receipts = [json.loads(l) for l in self.router.journal.lines if b"receipt" in l]
        self.assertEqual(len(receipts), 3)
        self.assertEqual(self.router.attach(FakeSession("dave")), [])

    def test_stored_messages_go_out_while_the_session_is_writable(self):
        router = make_router(self.clock, mailbox_max=100)
        router.attach(self.alice)
        for n in range(70):
            router.submit(self.alice, "dave", str(n))
        dave = FakeSession("dave", router=router)
        dave.writable = lambda: not dave.lines      # full after the first write
        router.deliver_stored(dave, router.attach(dave))
        self.assertEqual(bodies(dave), [str(n) for n in range(STORED_CHUNK)])
        router.submit(self.alice, "dave", "live")
        self.assertEqual(len(dave.lines), STORED_CHUNK, "stored behind the rest, not written ahead")
        self.assertEqual(router.mailboxes.count("dave"), 70 - STORED_CHUNK + 1)
        dave.writable = lambda: True
        router.resume(dave)
        self.assertEqual(bodies(dave), [str(n) for n in range(70)] + ["live"])
        self.assertNotIn("dave", router.mailboxes)
        receipts = [l for l in router.journal.lines if b'"receipt"' in l]
        self.assertEqual(len(receipts), 71)
        router.submit(self.alice, "dave", "direct")
        self.assertEqual(bodies(dave)[-1], "direct")

    def test_mailbox_is_bounded(self):
        for text in ("1", "2", "3", "4"):
            self.router.submit(self.alice, "dave", text)
        self.assertEqual([e["body"] for e, _ in self.router.attach(FakeSession("dave"))],
                         ["2", "3", "4"])

    def test_mailbox_expires(self):
        self.router.submit(self.alice, "dave", "old")
        self.clock.advance(101)
        self.assertEqual(self.router.attach(FakeSession("dave")), [])


class SettlementTests(unittest.TestCase):
    """A directed message leaves the mailbox only once settled."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.router = make_router(self.clock)
        self.alice = FakeSession("alice")
        self.router.attach(self.alice)

    def receipts(self):
        return [json.loads(l)["receipt"] for l in self.router.journal.lines if b'"receipt"' in l]

    def test_an_acking_session_settles_on_ack_only(self):
        bob = FakeSession("bob")
        bob.acks = True
        self.router.attach(bob)
        ids = []
        for text in ("one", "two"):
            self.router.submit(self.alice, "bob", text).addCallback(lambda r: ids.append(r[0]))
        self.assertEqual(bodies(bob), ["one", "two"])
        self.assertEqual((self.router.mailboxes.count("bob"), self.receipts()), (2, []))
        self.router.acknowledged(bob, [ids[0], "f" * 64])
        self.assertEqual(self.receipts(), [ids[0]])
        self.router.acknowledged(bob, [ids[0]])
        self.assertEqual(self.receipts(), [ids[0]], "an ack counts once")
        self.router.detach(bob)                 # gone before acking "two"
        again = FakeSession("bob")
        again.acks = True
        stored = self.router.attach(again)
        self.router.deliver_stored(again, stored)
        self.assertEqual(bodies(again), ["two"])
        self.router.acknowledged(again, [ids[1]])
        self.assertNotIn("bob", self.router.mailboxes)

    def test_a_session_that_cannot_ack_settles_when_handed(self):
        bob = FakeSession("bob")                 # no router: never handed to the kernel
        self.router.attach(bob)
        self.router.submit(self.alice, "bob", "in flight")
        self.assertEqual(bodies(bob), ["in flight"])
        self.assertEqual(self.receipts(), [])
        self.router.detach(bob)                  # an abrupt disconnect
        again = FakeSession("bob", router=self.router)
        self.router.deliver_stored(again, self.router.attach(again))
        self.assertEqual(bodies(again), ["in flight"])
        self.assertEqual(len(self.receipts()), 1)
        self.assertNotIn("bob", self.router.mailboxes)

    def test_a_replaced_session_does_not_settle(self):
        old = FakeSession("bob")
        self.router.attach(old)
        self.router.submit(self.alice, "bob", "x")
        entry = self.router.mailboxes.peek("bob")[0][0]
        self.router.attach(FakeSession("bob", port=2))
        self.router.handed(old, [entry])
        self.assertEqual(self.router.mailboxes.count("bob"), 1)


class PersistentRoomTests(unittest.TestCase):
    """A persistent member's room messages wait in its mailbox while it is away."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.router = make_router(self.clock, mailbox_max=3)
        self.alice = FakeSession("alice")
        self.router.attach(self.alice)
        self.router.join(self.alice, "general")

    def away(self, peer, persist=True):
        session = FakeSession(peer)
        self.router.attach(session)
        self.router.join(session, "general", persist)
        self.router.detach(session)

    def back(self, peer, acks=False):
        session = FakeSession(peer, router=self.router)
        session.acks = acks
        self.router.deliver_stored(session, self.router.attach(session))
        return session

    def test_an_offline_member_gets_room_messages_in_order_once(self):
        self.away("bob")
        self.away("carol", persist=False)
        for text in ("one", "two"):
            self.router.submit(self.alice, "#general", text, room="general")
        self.assertEqual(self.router.mailboxes.count("carol"), 0, "a plain join ends with the session")
        bob = self.back("bob")
        self.assertEqual(bodies(bob), ["one", "two"])
        self.assertEqual({json.loads(line)["room"] for line in bob.lines}, {"general"})
        self.assertNotIn("bob", self.router.mailboxes, "settled once written")
        self.assertEqual(self.router.members["general"], {"alice", "bob"}, "back in the room")
        self.router.submit(self.alice, "#general", "live", room="general")
        self.assertEqual(bodies(bob), ["one", "two", "live"])
        self.assertNotIn("bob", self.router.mailboxes, "a live copy is not stored")

    def test_stored_until_acked(self):
        self.away("bob")
        ids = []
        self.router.submit(self.alice, "#general", "hi", room="general").addCallback(
            lambda r: ids.append(r[0]))
        bob = self.back("bob", acks=True)
        self.router.detach(bob)
        bob = self.back("bob", acks=True)
        self.assertEqual(bodies(bob), ["hi"])
        self.router.acknowledged(bob, ids)
        self.assertNotIn("bob", self.router.mailboxes)

    def test_leave_ends_it(self):
        self.away("bob")
        bob = self.back("bob")
        self.router.leave(bob, "general")
        self.router.detach(bob)
        self.router.submit(self.alice, "#general", "after", room="general")
        self.assertNotIn("bob", self.router.mailboxes)
        self.assertEqual(self.back("bob").rooms, set())

    def test_the_sender_is_not_stored_for(self):
        self.router.join(self.alice, "general", persist=True)
        self.router.detach(self.alice)
        self.router.accept_remote(message.new_entry("alice", "#general", "echo", 1000.0, "relay2",
                                                    room="general"), None)
        self.assertNotIn("alice", self.router.mailboxes)
        dave = FakeSession("dave")
        self.router.attach(dave)
        self.router.submit(dave, "#general", "x", room="general")
        self.assertEqual(self.router.mailboxes.count("alice"), 1)

    def test_federated_and_bridged_messages_are_stored_too(self):
        self.away("bob")
        entry = message.new_entry("QmPeer", "#general", "from gossipsub", 1000.0, "relay1",
                                  room="general")
        self.router.accept_remote(entry, "gossipsub")
        self.assertEqual(bodies(self.back("bob")), ["from gossipsub"])

    def test_per_peer_cap_applies(self):
        self.away("bob")
        for n in range(5):
            self.router.submit(self.alice, "#general", str(n), room="general")
        self.assertEqual(bodies(self.back("bob")), ["2", "3", "4"])

    def test_bounds(self):
        router = make_router(self.clock)
        router.memberships.max_rooms_per_peer = 1
        router.memberships.max_members_per_room = 1
        bob, carol = FakeSession("bob"), FakeSession("carol")
        router.attach(bob)
        router.attach(carol)
        router.join(bob, "a", persist=True)
        with self.assertRaises(MembershipFull) as caught:
            router.join(bob, "b", persist=True)
        self.assertEqual(caught.exception.code, "too_many_rooms")
        with self.assertRaises(MembershipFull) as caught:
            router.join(carol, "a", persist=True)
        self.assertEqual(caught.exception.code, "room_full")
        self.assertEqual(router.join(carol, "a"), ["bob", "carol"], "a plain join still works")

    def test_a_failed_write_stores_nothing(self):
        self.away("bob")
        self.router.journal.fail = True
        self.failureResultOf(self.router.submit(self.alice, "#general", "lost", room="general"))
        self.assertNotIn("bob", self.router.mailboxes)

    def test_replay_rebuilds_membership_and_stored_room_messages(self):
        self.away("bob")
        self.away("carol")
        self.router.submit(self.alice, "#general", "one", room="general")
        carol = self.back("carol")
        self.router.submit(self.alice, "#general", "two", room="general")
        self.router.leave(carol, "general")
        second = ReplayTests().replayed(self.router.journal.lines, self.clock)
        self.assertEqual(second.memberships.snapshot(), {"bob": ["general"]})
        self.assertEqual([e["body"] for e, _ in second.attach(FakeSession("bob"))], ["one", "two"])
        self.assertEqual(second.attach(FakeSession("carol")), [])
        self.assertEqual(second.members, {"general": {"bob"}})

    def test_a_stored_room_message_is_one_journal_record(self):
        self.away("bob")
        lines = self.router.journal.lines
        before = len(lines)
        self.router.submit(self.alice, "#general", "one", room="general")
        self.assertEqual(len(lines), before + 1)
        record = json.loads(lines[-1])
        self.assertEqual((record["body"], record["held_for"]), ("one", ["bob"]))
        self.assertNotIn("held_for", json.loads(self.router.mailboxes.peek("bob")[0][1]),
                         "the recipient's line is the message alone")

    def test_an_older_journal_held_record_still_replays(self):
        entry = message.new_entry("alice", "#general", "old", 1000.0, "relay1", room="general")
        held = json.dumps({"held": entry["msg_id"], "for": ["bob"]}).encode()
        second = ReplayTests().replayed([message.journal_line(entry), held], self.clock)
        self.assertEqual([e for e, _ in second.attach(FakeSession("bob"))], [entry])

    def test_checkpoint_round_trip(self):
        self.away("bob")
        router = make_router(self.clock)
        router.memberships.load_snapshot(self.router.memberships.snapshot())
        self.assertEqual(router.memberships.members("general"), {"bob"})


@implementer(IDurableEventSubscriber)
class Recorder:
    def __init__(self):
        self.events, self.deliveries = [], []

    def durable(self, event):
        self.events.append(event)

    def delivered(self, entry, peer, timestamp, seq):
        self.deliveries.append((entry["msg_id"], peer, seq))


class SubscriberTests(unittest.TestCase):
    def test_subscribers_get_durable_events_and_deliveries(self):
        router = make_router()
        recorder = Recorder()
        router.subscribe(recorder)
        alice, bob = FakeSession("alice"), FakeSession("bob", router=router)
        router.attach(alice)
        router.attach(bob)
        router.journal.hold = True
        router.submit(alice, "bob", "hi")
        entry = dict(router.mailboxes.peek("bob")[0][0], seen_by=["relay0", "relay9"],
                     msg_id="a" * 64, to="carol")
        link = object()
        router.accept_remote(entry, link)
        self.assertEqual(recorder.events, [], "nothing before it is durable")
        router.journal.release()
        self.assertEqual([(e.entry["body"], e.origin, e.source) for e in recorder.events],
                         [("hi", "relay1", None), ("hi", "relay0", link)])
        self.assertEqual(recorder.deliveries, [(recorder.events[0].entry["msg_id"], "bob", None)])

    def test_a_subscriber_must_provide_the_interface(self):
        self.assertRaises(TypeError, make_router().subscribe, object())


class SessionTests(unittest.TestCase):
    def test_reconnect_replaces_cleanly(self):
        router = make_router()
        old, new = FakeSession("bob"), FakeSession("bob", port=2)
        router.attach(old)
        router.join(old, "r")
        router.attach(new)
        self.assertEqual(old.closed, "session_replaced")
        router.detach(old)                    # the old connection's close arrives late
        self.assertIs(router.sessions["bob"], new)
        self.assertEqual(router.rooms(), {})
        router.detach(new)
        self.assertEqual(router.sessions, {})

    def test_kick(self):
        router = make_router()
        bob = FakeSession("bob")
        router.attach(bob)
        self.assertTrue(router.kick("bob"))
        self.assertEqual(bob.closed, "kicked")
        self.assertFalse(router.kick("nobody"))


class ReplayTests(unittest.TestCase):
    def replayed(self, lines, clock=None):
        router = make_router(clock)
        for line in lines:
            router.restore(json.loads(line))
        return router

    def test_replay_rebuilds_dedup_and_mailboxes(self):
        clock = Clock()
        clock.advance(1000)
        first = make_router(clock)
        alice = FakeSession("alice")
        first.attach(alice)
        first.submit(alice, "dave", "stored", nonce="n1")
        first.submit(alice, "erin", "delivered later")
        erin = FakeSession("erin", router=first)
        first.deliver_stored(erin, first.attach(erin))
        second = self.replayed(first.journal.lines, clock)
        self.assertEqual([e["body"] for e, _ in second.attach(FakeSession("dave"))], ["stored"])
        self.assertEqual(second.attach(FakeSession("erin")), [])
        results = []
        second.submit(FakeSession("alice"), "dave", "stored", nonce="n1").addCallback(results.append)
        self.assertTrue(results[0][1], "the dedup window survived the restart")

    def test_history_visibility(self):
        clock = Clock()
        clock.advance(1000)
        router = make_router(clock)
        alice, bob = FakeSession("alice"), FakeSession("bob")
        router.attach(alice)
        router.attach(bob)
        router.submit(alice, "bob", "private")
        router.submit(alice, "*", "public")
        router.submit(alice, "#r", "room", room="r")
        self.assertEqual([e["body"] for e in router.visible_history("bob", with_peer="alice")], ["private"])
        self.assertEqual([e["body"] for e in router.visible_history("carol")], ["public"])
        self.assertEqual([e["body"] for e in router.visible_history("bob", room="r")], ["room"])
        self.assertEqual(router.visible_history("carol", with_peer="bob"), [])
        self.assertTrue(all(message.is_message(e) for e in router.visible_history("bob", room="r")))

    def test_history_follows_the_journal_retention(self):
        clock = Clock()
        clock.advance(1000)
        kept, expiring = make_router(clock, retention=0), make_router(clock, retention=86400)
        for router in (kept, expiring):
            router.submit(FakeSession("alice"), "*", "old")
        clock.advance(2 * 86400)
        self.assertEqual([e["body"] for e in kept.visible_history("bob")], ["old"], "0 keeps forever")
        self.assertEqual(expiring.visible_history("bob"), [])
