"""RelayClientProtocol: framing, request correlation, hello and key proof."""
import base64
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from relayd.client.protocol import (
    ConnectionClosed, ProtocolViolation, RelayClientProtocol, ServerError, auth_payload)
from relayd.client.testing import FakeRelay
from relayd.identity import Identity, verify


def sent_lines(transport):
    return [json.loads(line) for line in transport.value().splitlines()]


class StringTransportTests(SynchronousTestCase):
    def setUp(self):
        self.messages, self.errors, self.lost = [], [], []
        self.proto = RelayClientProtocol(on_message=self.messages.append,
                                         on_error=self.errors.append,
                                         on_lost=self.lost.append)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def feed(self, *objs):
        self.proto.dataReceived(b"".join(json.dumps(o).encode() + b"\n" for o in objs))

    def test_requests_are_lines_with_a_fresh_req(self):
        self.proto.request({"type": "peers"})
        self.proto.request({"type": "rooms"})
        self.assertTrue(self.transport.value().endswith(b"\n"))
        self.assertEqual(sent_lines(self.transport),
                         [{"type": "peers", "req": 1}, {"type": "rooms", "req": 2}])

    def test_responses_are_matched_by_req_in_any_order(self):
        first = self.proto.request({"type": "peers"})
        second = self.proto.request({"type": "rooms"})
        self.feed({"status": "ok", "type": "rooms", "rooms": {}, "req": 2},
                  {"status": "ok", "type": "peers", "peers": ["a"], "req": 1})
        self.assertEqual(self.successResultOf(first)["peers"], ["a"])
        self.assertEqual(self.successResultOf(second)["type"], "rooms")

    def test_error_response_fails_the_request(self):
        d = self.proto.request({"type": "send", "to": "bob", "body": "x"})
        self.feed({"status": "error", "error": "rate_limited", "message": "slow down",
                   "retry_after": 2.5, "req": 1})
        error = self.failureResultOf(d, ServerError).value
        self.assertEqual((error.code, error.retry_after), ("rate_limited", 2.5))
        self.assertEqual(str(error), "rate_limited: slow down")

    def test_messages_go_to_the_callback(self):
        msg = {"type": "message", "from": "alice", "to": "bob", "body": "hi", "msg_id": "ab"}
        self.feed(msg)
        self.assertEqual(self.messages, [msg])

    def test_split_and_coalesced_lines(self):
        data = b"".join(json.dumps({"type": "message", "body": str(i)}).encode() + b"\n"
                        for i in range(3))
        for i in range(0, len(data), 7):
            self.proto.dataReceived(data[i:i + 7])
        self.assertEqual([m["body"] for m in self.messages], ["0", "1", "2"])

    def test_unsolicited_error_is_reported_and_remembered(self):
        self.feed({"status": "error", "error": "idle_timeout", "message": "bye"})
        self.assertEqual([e.code for e in self.errors], ["idle_timeout"])
        d = self.proto.request({"type": "ping"})
        self.proto.connectionLost(Failure(ConnectionDone()))
        closed = self.failureResultOf(d, ConnectionClosed).value
        self.assertEqual(closed.error.code, "idle_timeout")
        self.assertEqual(len(self.lost), 1)

    def test_request_after_close_fails_at_once(self):
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(self.proto.request({"type": "ping"}), ConnectionClosed)

    def test_garbage_from_the_relay_is_ignored(self):
        d = self.proto.request({"type": "ping"})
        self.proto.dataReceived(b"not json\n[1, 2]\n\xff\xfe\n" + b"[" * 100000 + b"\n")
        self.feed({"status": "ok", "type": "pong", "req": 1})
        self.assertEqual(self.successResultOf(d)["type"], "pong")
        self.assertFalse(self.transport.disconnecting)

    def test_an_endless_line_aborts_the_connection(self):
        self.proto.dataReceived(b"x" * (self.proto.MAX_LENGTH + 10))
        self.assertTrue(self.transport.disconnecting)

    def test_hello_without_key(self):
        d = self.proto.identify("alice")
        self.assertEqual(sent_lines(self.transport), [{"type": "hello", "id": "alice", "req": 1}])
        self.feed({"status": "ok", "type": "welcome", "id": "alice", "relay": "relay1",
                   "authenticated": False, "pending": 0, "req": 1})
        self.assertEqual(self.successResultOf(d)["relay"], "relay1")
        self.assertEqual(self.proto.welcome["id"], "alice")

    def test_refused_hello(self):
        d = self.proto.identify("alice")
        self.feed({"status": "error", "error": "id_owned", "req": 1})
        self.assertEqual(self.failureResultOf(d, ServerError).value.code, "id_owned")

    def test_challenge_is_signed_exactly_as_the_protocol_says(self):
        identity = Identity(None, Ed25519PrivateKey.generate())
        d = self.proto.identify("alice", identity)
        hello = sent_lines(self.transport)[0]
        self.assertEqual(base64.b64decode(hello["key"]), identity.public_bytes)
        challenge = "ab" * 32
        self.feed({"status": "ok", "type": "challenge", "challenge": challenge,
                   "relay": "relay7", "req": 1})
        auth = sent_lines(self.transport)[1]
        self.assertEqual(auth["type"], "auth")
        data = b"relayd-auth:relay7:alice:" + challenge.encode()
        self.assertEqual(auth_payload("relay7", "alice", challenge), data)
        self.assertTrue(verify(identity.public_bytes, base64.b64decode(auth["signature"]), data))
        self.assertNoResult(d)

    def test_challenge_uses_the_given_relay_id_when_the_relay_is_unnamed(self):
        identity = Identity(None, Ed25519PrivateKey.generate())
        d = self.proto.identify("alice", identity, relay_id="relay7")
        self.feed({"status": "ok", "type": "challenge", "challenge": "cd" * 32, "req": 1})
        auth = sent_lines(self.transport)[1]
        data = auth_payload("relay7", "alice", "cd" * 32)
        self.assertTrue(verify(identity.public_bytes, base64.b64decode(auth["signature"]), data))
        self.feed({"status": "ok", "type": "welcome", "authenticated": True, "req": 2})
        self.assertTrue(self.successResultOf(d)["authenticated"])

    def test_challenge_without_any_relay_id(self):
        d = self.proto.identify("alice", Identity(None, Ed25519PrivateKey.generate()))
        self.feed({"status": "ok", "type": "challenge", "challenge": "cd" * 32, "req": 1})
        self.failureResultOf(d, ProtocolViolation)


class FakeRelayTests(SynchronousTestCase):
    """Against the scripted relay over iosim: key proof end to end."""

    def connect(self, relay):
        client = RelayClientProtocol()
        server = relay.buildProtocol(None)
        pump = iosim.connect(server, iosim.makeFakeServer(server),
                             client, iosim.makeFakeClient(client))
        return client, pump

    def test_key_proof_and_ownership(self):
        relay = FakeRelay()
        key = Identity(None, Ed25519PrivateKey.generate())
        client, pump = self.connect(relay)
        d = client.identify("alice", key)
        pump.flush()
        self.assertTrue(self.successResultOf(d)["authenticated"])

        other, pump = self.connect(relay)
        d = other.identify("alice", Identity(None, Ed25519PrivateKey.generate()))
        pump.flush()
        self.assertEqual(self.failureResultOf(d, ServerError).value.code, "auth_failed")

        plain, pump = self.connect(relay)
        d = plain.identify("alice")
        pump.flush()
        self.assertEqual(self.failureResultOf(d, ServerError).value.code, "id_owned")
