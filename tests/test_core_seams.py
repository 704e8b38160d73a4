"""The router's two halves alone: the pipeline against a recording
``IDelivery``, delivery against a recording ``IRecorder``."""
import json

from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from relayd.core.dedup import DedupWindow
from relayd.core.delivery import Delivery
from relayd.core.history import History
from relayd.core.interfaces import IDelivery, IRecorder, ISequencer
from relayd.core.mailbox import Mailboxes
from relayd.core.membership import Memberships
from relayd.core.pipeline import Pipeline
from tests.fakes import FakeSession, MemoryJournal


@implementer(IDelivery)
class RecordingDelivery:
    def __init__(self, stored=()):
        self.calls = []
        self.stored = stored

    def route(self, entry, line):
        self.calls.append(("route", entry["body"], line))
        return self.stored

    def refused(self, entry):
        self.calls.append(("refused", entry["body"]))

    def flush(self):
        self.calls.append(("flush",))


@implementer(IRecorder)
class RecordingRecorder:
    def __init__(self):
        self.records = []

    def receipt(self, entry, peer):
        self.records.append(("receipt", entry["body"], peer))

    def membership(self, peer, room, joined):
        self.records.append(("member", peer, room, joined))


@implementer(ISequencer)
class CountingSequencer:
    def __init__(self):
        self.seq = 0

    def message_key(self, entry):
        self.seq += 1
        return ("relay1", self.seq)

    def receipt_key(self):
        return self.message_key(None)

    def refused(self, entry):
        self.seq -= 1


def pipeline(delivery):
    clock = Clock()
    clock.advance(1000)
    p = Pipeline("relay1", clock, DedupWindow(clock, 60, 100), History(10))
    p.journal, p.delivery = MemoryJournal(), delivery
    return p


class PipelineTests(unittest.TestCase):
    def test_provides_the_recorder_interface(self):
        verifyObject(IRecorder, pipeline(RecordingDelivery()))

    def test_routed_before_durable_flushed_after(self):
        delivery = RecordingDelivery()
        p = pipeline(delivery)
        p.journal.hold = True
        d = p.submit("alice", "bob", "hi")
        self.assertEqual([c[0] for c in delivery.calls], ["route"])
        self.assertTrue(delivery.calls[0][2].startswith(b'{"type": "message", '))
        self.assertNoResult(d)
        p.journal.release()
        self.assertEqual([c[0] for c in delivery.calls], ["route", "flush"])
        self.assertFalse(self.successResultOf(d)[1])

    def test_one_record_names_the_members_stored_for_and_its_seq(self):
        p = pipeline(RecordingDelivery(stored={"carol", "bob"}))
        p.sequencer = CountingSequencer()
        events = []
        p.subscribers.append(type("S", (), {"durable": lambda self, e: events.append(e)})())
        p.submit("alice", "#r", "x", room="r")
        [record] = [json.loads(line) for line in p.journal.lines]
        self.assertEqual((record["held_for"], record["fed"], record["seq"]), (["bob", "carol"], "relay1", 1))
        self.assertEqual((events[0].origin, events[0].seq), ("relay1", 1))
        self.assertNotIn(b"held_for", events[0].line)

    def test_done_is_called_instead_of_a_deferred(self):
        p = pipeline(RecordingDelivery())
        p.journal.hold = True
        results = []
        self.assertIsNone(p.submit("alice", "bob", "hi", nonce="n", done=results.append))
        p.submit("alice", "bob", "hi", nonce="n", done=results.append)    # a retry meanwhile
        p.journal.release()
        self.assertEqual([duplicate for _, duplicate in results], [False, True])
        p.journal.fail = True
        p.submit("alice", "bob", "lost", done=results.append)
        self.assertIsInstance(results[-1].value, OSError)

    def test_a_batch_is_one_call_back_and_one_flush(self):
        delivery = RecordingDelivery()
        p = pipeline(delivery)
        p.journal.hold = True
        acks = [p.submit("alice", "*", str(n)) for n in range(3)]
        p.journal.release()
        self.assertEqual([c[0] for c in delivery.calls], ["route"] * 3 + ["flush"])
        self.assertEqual([self.successResultOf(d)[1] for d in acks], [False] * 3)
        self.assertEqual(p.received, 3)

    def test_a_journal_that_refuses_at_once_fails_the_message(self):
        delivery = RecordingDelivery()
        p = pipeline(delivery)

        def refuse(line):
            raise RuntimeError("stopped")
        p.journal.add = refuse
        self.failureResultOf(p.submit("alice", "bob", "late"), RuntimeError)
        self.assertEqual([c[0] for c in delivery.calls], ["route", "refused", "flush"])
        self.assertEqual(len(p.unsettled()), 0)

    def test_a_refused_message_is_unrouted_and_forgotten(self):
        delivery = RecordingDelivery()
        p = pipeline(delivery)
        p.sequencer = CountingSequencer()
        p.journal.fail = True
        self.failureResultOf(p.submit("alice", "bob", "lost"), OSError)
        self.assertEqual([c[0] for c in delivery.calls], ["route", "refused", "flush"])
        self.assertEqual((p.journal_failures, p.sequencer.seq), (1, 0))
        self.assertFalse(p.holds(json.loads(p.journal.lines[0])["msg_id"]))


class BrokenSubscriber:
    """A subscriber with a bug."""

    def durable(self, event):
        raise UnicodeEncodeError("utf-8", event.entry["body"], 0, 1, "surrogates not allowed")

    def delivered(self, entry, peer, timestamp, seq):
        raise KeyError("seq")


class SubscriberFaultTests(unittest.TestCase):
    """A subscriber that raises costs its own event, nothing else: the
    batch's acks, the other subscribers and the flush go on."""

    def test_a_raising_subscriber_holds_up_nothing(self):
        delivery = RecordingDelivery()
        p = pipeline(delivery)
        told = []
        p.subscribers[:] = [BrokenSubscriber(), type("S", (), {
            "durable": lambda self, e: told.append(e.entry["body"]),
            "delivered": lambda self, entry, peer, timestamp, seq: told.append(peer)})()]
        p.journal.hold = True
        acks = [p.submit("alice", "#r", body, room="r") for body in ("\ud800", "two")]
        p.journal.release()
        p.journal.hold = False
        self.assertEqual([self.successResultOf(d)[1] for d in acks], [False, False])
        self.assertEqual([c[0] for c in delivery.calls], ["route", "route", "flush"])
        self.assertEqual(told, ["\ud800", "two"])
        p.receipt({"msg_id": "a" * 64, "body": "x"}, "bob")
        self.assertEqual(told[-1], "bob")
        self.assertFalse(self.successResultOf(p.submit("alice", "#r", "after", room="r"))[1])
        # logged once a minute per subscriber and error, not once per message
        logged = self.flushLoggedErrors(UnicodeEncodeError, KeyError)
        self.assertEqual(sorted(type(f.value).__name__ for f in logged),
                         ["KeyError", "UnicodeEncodeError"])


    def test_a_failing_ack_leaves_the_rest_of_the_batch_acked(self):
        delivery = RecordingDelivery()
        p = pipeline(delivery)
        p.journal.hold = True
        results = []

        def broken(result):
            raise RuntimeError("a bug in an ack")
        p.submit("alice", "bob", "one", done=broken)
        p.submit("alice", "bob", "two", done=results.append)
        p.journal.release()
        self.assertEqual([duplicate for _, duplicate in results], [False])
        self.assertEqual(delivery.calls[-1], ("flush",))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class DeliveryTests(unittest.TestCase):
    def setUp(self):
        clock = Clock()
        self.recorder = RecordingRecorder()
        self.delivery = Delivery(clock, Mailboxes(clock, 10, 3600), Memberships(4, 4), self.recorder)

    def test_a_session_that_fails_to_write_is_closed_and_the_others_get_theirs(self):
        broken, bob, carol = (FakeSession(peer, router=self.delivery)
                              for peer in ("broken", "bob", "carol"))
        broken.deliver_lines = lambda lines, receipts=(): 1 / 0
        for session in (bob, broken, carol):
            self.delivery.attach(session)
        for body in ("a", "b"):
            self.delivery.route(self.entry("*", body), b"line-%s\n" % body.encode())
            self.delivery.flush()
        self.delivery.route(self.entry("broken", "c"), b"line-c\n")
        self.delivery.release(broken)
        self.assertEqual(bob.lines, [b"line-a\n", b"line-b\n"])
        self.assertEqual(carol.lines, bob.lines)
        self.assertEqual(broken.closed, "internal_error")
        # logged once a minute, not once a write; its mail stays stored
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual([e["body"] for e, _ in self.delivery.mailboxes.peek("broken")], ["c"])

    def entry(self, to, body, room=None):
        return {"from": "alice", "to": to, "body": body, **({"room": room} if room else {}),
                "msg_id": body * 8}

    def test_provides_the_delivery_interface(self):
        verifyObject(IDelivery, self.delivery)

    def test_copies_wait_for_flush_and_settling_records_a_receipt(self):
        bob = FakeSession("bob", router=self.delivery)
        self.delivery.attach(bob)
        self.assertEqual(self.delivery.route(self.entry("bob", "a"), b"line-a\n"), ())
        self.assertEqual(bob.lines, [])
        self.delivery.flush()
        self.assertEqual(bob.lines, [b"line-a\n"])
        self.assertEqual(self.recorder.records, [("receipt", "a", "bob")])
        self.assertNotIn("bob", self.delivery.mailboxes)

    def test_route_returns_the_offline_persistent_members(self):
        bob = FakeSession("bob")
        self.delivery.attach(bob)
        self.delivery.join(bob, "r", persist=True)
        self.delivery.detach(bob)
        self.assertEqual(self.recorder.records, [("member", "bob", "r", True)])
        self.assertEqual(self.delivery.route(self.entry("#r", "b", room="r"), b"line-b\n"), {"bob"})
        self.assertEqual(self.delivery.mailboxes.count("bob"), 1)
        self.delivery.refused(self.entry("#r", "b", room="r"))
        self.assertNotIn("bob", self.delivery.mailboxes)
