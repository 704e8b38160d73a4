"""Session: reconnects, the outbox (same nonce until acked), dedup, refusals.

The relay is the scripted FakeRelay, joined to the session over iosim by an
endpoint that hands out in-memory connections; time is a Clock.
"""
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relayd.client.protocol import ServerError
from relayd.client.session import MessageTooLong, RecentIds, Session
from relayd.client.testing import FakeRelay, MemoryEndpoint


class SessionTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.relay = FakeRelay(clock=self.clock)
        self.endpoint = MemoryEndpoint(self.relay)
        self.statuses = []

    def session(self, peer_id="alice", endpoint=None, **kw):
        received = []
        session = Session(self.clock, endpoint or self.endpoint, peer_id,
                          on_message=received.append, on_status=self.statuses.append,
                          retry_policy=lambda attempt: 1.0, **kw)
        session.received = received
        session.start()
        self.endpoint.flush()
        self.addCleanup(self.stop, session)
        return session

    def stop(self, session):
        d = session.stop()
        self.endpoint.flush()
        self.successResultOf(d)

    def reconnect(self):
        self.clock.advance(1.0)
        self.endpoint.flush()

    def sends(self):
        return self.relay.sent("send")

    def test_identifies_and_reports(self):
        alice = self.session()
        self.assertIs(self.successResultOf(alice.ready()), alice.protocol)
        self.assertEqual(self.statuses, ["connected as alice to relay relay1"])
        self.assertIn("alice", self.relay.sessions)

    def test_send_is_acked_and_delivered(self):
        alice, bob = self.session("alice"), self.session("bob")
        d = alice.send("hi", to="bob")
        self.endpoint.flush()
        ack = self.successResultOf(d)
        self.assertEqual(ack["type"], "ack")
        self.assertEqual([m["body"] for m in bob.received], ["hi"])
        self.assertEqual(alice.unacked, 0)
        self.assertEqual(len(self.sends()[0]["nonce"]), 32)

    def test_each_message_has_its_own_nonce(self):
        alice = self.session()
        alice.send("one", to="*")
        alice.send("two", to="*")
        self.endpoint.flush()
        nonces = [r["nonce"] for r in self.sends()]
        self.assertEqual(len(set(nonces)), 2)

    def test_lost_ack_is_resent_with_the_same_nonce_and_delivered_once(self):
        alice, bob = self.session("alice"), self.session("bob")
        self.relay.swallow_acks = 1
        d = alice.send("only once", to="bob")
        self.endpoint.flush()
        self.assertNoResult(d)
        self.assertEqual(alice.unacked, 1)
        self.endpoint.drop()
        self.assertIsNone(alice.protocol)
        self.reconnect()
        ack = self.successResultOf(d)
        self.assertTrue(ack["duplicate"])
        first, again = self.sends()
        self.assertEqual(first["nonce"], again["nonce"])
        self.assertEqual(len(self.relay.stored), 1)
        self.assertEqual([m["body"] for m in bob.received], ["only once"])

    def test_messages_written_while_down_go_out_in_order_after_reconnecting(self):
        alice = self.session()
        self.endpoint.down = True
        self.endpoint.drop()
        acks = [alice.send(text, to="*") for text in ("a", "b", "c")]
        self.reconnect()
        self.assertEqual(alice.unacked, 3)
        self.endpoint.down = False
        self.reconnect()
        self.assertEqual([self.successResultOf(d)["duplicate"] for d in acks], [False] * 3)
        self.assertEqual([r["body"] for r in self.sends()], ["a", "b", "c"])
        self.assertTrue(any("cannot connect" in s for s in self.statuses))

    def test_a_redelivered_message_is_shown_once(self):
        alice, bob = self.session("alice"), self.session("bob")
        alice.send("hi", to="bob")
        self.endpoint.flush()
        msg = dict({"type": "message"}, **self.relay.stored[0])
        self.relay.sessions["bob"].push(msg)
        self.endpoint.flush()
        self.assertEqual(len(bob.received), 1)
        self.assertEqual(bob.duplicates, 1)
        self.assertEqual(self.relay.acked, [msg["msg_id"]] * 2, "a repeat is acked too")
        hellos = [r for r in self.relay.requests if r["type"] == "hello"]
        self.assertTrue(all(h["acks"] for h in hellos))

    def test_recent_ids_are_bounded(self):
        ids = RecentIds(2)
        self.assertEqual([ids.add(k) for k in "abab"], [True, True, False, False])
        ids.add("c")
        self.assertTrue(ids.add("a"))

    def test_rate_limited_send_waits_retry_after_then_goes_out(self):
        alice = self.session()
        self.relay.send_errors = ["rate_limited"]
        d = alice.send("hi", to="*")
        self.endpoint.flush()
        self.assertNoResult(d)
        self.clock.advance(1.9)
        self.endpoint.flush()
        self.assertEqual(len(self.sends()), 1)
        self.clock.advance(0.1)
        self.endpoint.flush()
        self.assertFalse(self.successResultOf(d)["duplicate"])

    def test_a_final_error_fails_the_send(self):
        alice = self.session()
        self.relay.send_errors = ["bad_request"]
        d = alice.send("hi", to="*")
        self.endpoint.flush()
        self.assertEqual(self.failureResultOf(d, ServerError).value.code, "bad_request")
        self.assertEqual(alice.unacked, 0)

    def test_too_long_is_refused_locally(self):
        alice = self.session(max_line=100)
        self.failureResultOf(alice.send("x" * 100, to="bob"), MessageTooLong)
        self.assertEqual(self.sends(), [])

    def test_rooms_are_joined_again_after_reconnecting(self):
        alice, bob = self.session("alice"), self.session("bob")
        self.successResultOf_later(alice.join("general"))
        self.endpoint.drop()
        self.reconnect()
        bob.send("hello room", room="general")
        self.endpoint.flush()
        self.assertEqual([m["to"] for m in alice.received], ["#general"])

    def test_a_persistent_join_is_asked_again_as_persistent(self):
        alice = self.session("alice")
        self.successResultOf_later(alice.join("general", persist=True))
        self.successResultOf_later(alice.join("lobby"))
        self.endpoint.drop()
        self.reconnect()
        self.endpoint.flush()
        joins = [(r["room"], r.get("persist", False)) for r in self.relay.sent("join")]
        self.assertEqual(joins, [("general", True), ("lobby", False)] * 2)
        self.successResultOf_later(alice.leave("general"))
        self.assertEqual(alice.rooms, {"lobby": False})

    def successResultOf_later(self, d):
        self.endpoint.flush()
        return self.successResultOf(d)

    def test_queries_wait_for_the_connection(self):
        self.endpoint.down = True
        alice = self.session()
        d = alice.request({"type": "peers"})
        self.assertNoResult(d)
        self.endpoint.down = False
        self.reconnect()
        self.assertEqual(self.successResultOf(d)["peers"], ["alice"])

    def test_first_failure_can_be_final(self):
        self.endpoint.down = True
        alice = self.session()
        self.failureResultOf(alice.ready(fail_after=1), ConnectionRefusedError)
        d = alice.ready(fail_after=2)
        self.reconnect()
        self.failureResultOf(d, ConnectionRefusedError)

    def test_a_relay_that_does_not_answer_hello_is_left(self):
        self.relay.silent = True
        alice = self.session(handshake_timeout=5.0)
        d = alice.ready(fail_after=1)
        self.clock.advance(5.0)
        self.endpoint.flush()
        self.failureResultOf(d, TimeoutError)
        self.relay.silent = False
        self.reconnect()
        self.assertIsNotNone(alice.protocol)

    def test_refusal_stops_the_session(self):
        self.relay.refuse = "id_owned"
        fatal = []
        alice = self.session(on_fatal=fatal.append)
        self.assertEqual([e.code for e in fatal], ["id_owned"])
        self.assertEqual(self.failureResultOf(alice.ready(), ServerError).value.code, "id_owned")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_full_relay_refuses_a_new_session_but_not_a_returning_one(self):
        self.relay.full = True
        fatal = []
        self.session("newcomer", on_fatal=fatal.append)
        self.assertEqual([e.code for e in fatal], ["too_many_connections"])
        self.relay.full = False
        alice = self.session(on_fatal=fatal.append)
        self.relay.full = True
        self.endpoint.drop()
        self.reconnect()
        self.assertIsNone(alice.protocol)
        self.assertEqual(len(fatal), 1)
        self.assertTrue(any("too_many_connections" in s for s in self.statuses))
        self.relay.full = False
        self.clock.advance(60)
        self.endpoint.flush()
        self.assertIsNotNone(alice.protocol)

    def test_replaced_session_does_not_fight_back(self):
        fatal = []
        self.session("alice", on_fatal=fatal.append)
        self.session("alice", keepalive=0)
        self.assertEqual([e.code for e in fatal], ["session_replaced"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unanswered_keepalive_reconnects(self):
        alice = self.session(keepalive=5.0)
        first = alice.protocol
        self.clock.advance(5.0)
        self.endpoint.flush()
        self.assertIs(alice.protocol, first)
        self.relay.answer_pings = False
        self.clock.advance(5.0)
        self.endpoint.flush()
        self.clock.advance(5.0)
        self.endpoint.flush()
        self.assertIsNone(alice.protocol)
        self.reconnect()
        self.assertIsNot(alice.protocol, first)
        self.assertEqual(alice.connections, 2)

    def test_stop_does_not_reconnect(self):
        alice = self.session()
        d = alice.stop()
        self.endpoint.flush()
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.failureResultOf(alice.ready(), CancelledError)

    def test_a_cancelled_send_is_not_sent_again(self):
        alice = self.session()
        self.relay.swallow_acks = 1
        d = alice.send("give up", to="*")
        self.endpoint.flush()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(alice.unacked, 0)
        self.endpoint.drop()
        self.reconnect()
        self.assertEqual(len(self.sends()), 1)

    def test_drained(self):
        alice = self.session()
        self.successResultOf(alice.drained())
        alice.send("x", to="*")
        d = alice.drained()
        self.assertNoResult(d)
        self.endpoint.flush()
        self.successResultOf(d)
