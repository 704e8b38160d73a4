"""The rendezvous protocol over a fake datagram transport and a Clock."""
import base64
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from relayd import config
from relayd.udp import packets, proof, stun
from relayd.udp.metrics import UDPCollector
from relayd.udp.protocol import RendezvousProtocol

ALICE = ("192.0.2.1", 5001)
BOB = ("192.0.2.2", 5002)
EVE = ("198.51.100.66", 6666)


def udp_settings(**overrides):
    lines = "".join(f"{k} = {v}\n" for k, v in overrides.items())
    return config.parse("[udp]\n" + lines).udp


class Harness(unittest.TestCase):
    settings = {}

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1734200000)
        self.proto = RendezvousProtocol(udp_settings(**self.settings), self.clock)
        self.transport = FakeDatagramTransport()
        self.proto.makeConnection(self.transport)

    def send(self, packet, source):
        data = packet if isinstance(packet, bytes) else json.dumps(packet).encode()
        self.proto.datagramReceived(data, source)

    def take(self, to=None):
        """The packets written so far (to ``to`` only, if given), decoded; clears them."""
        out = [(json.loads(data), addr) for data, addr in self.transport.written
               if to is None or addr == to]
        self.transport.written = [(d, a) for d, a in self.transport.written
                                  if to is not None and a != to]
        return [p for p, _ in out] if to is not None else out

    def register(self, name, source):
        self.send({"type": "register", "name": name}, source)

    def prove(self, source):
        """Echo a cookie from ``source`` (as relay-chat does): no byte budget applies to it."""
        self.send({"type": "ping", "cookie": "", "pad": "x" * 200}, source)
        cookie = self.take(source)[-1]["cookie"]
        self.send({"type": "ping", "cookie": cookie}, source)
        self.assertNotIn("cookie", self.take(source)[-1])


class SeedPacketTests(Harness):
    def test_register_ack_peer_list_and_peer_joined(self):
        self.register("Alice", ALICE)
        ack, plist = self.take(ALICE)
        self.assertEqual(ack, {"type": "register_ack", "status": "success",
                               "your_address": "192.0.2.1:5001", "server_time": 1734200000.0,
                               "peer_name": "Alice"})
        self.assertEqual(plist, {"type": "peer_list", "peers": ["Alice"], "count": 1})
        self.register("Bob", BOB)
        self.assertEqual(self.take(ALICE), [{"type": "peer_joined", "peer_name": "Bob",
                                             "peers": ["Bob", "Alice"]}])
        self.assertEqual([p["type"] for p in self.take(BOB)], ["register_ack", "peer_list"])

    def test_exact_bytes_use_json_dumps_default_separators(self):
        self.send({"type": "ping"}, ALICE)     # unregistered and small: too small for a pong
        self.assertEqual(self.transport.written, [])
        self.register("Alice", ALICE)
        self.take()
        self.send({"type": "ping", "name": "Alice"}, ALICE)
        self.assertEqual(self.transport.written,
                         [(b'{"type": "pong", "server_time": 1734200000.0, '
                           b'"your_address": "192.0.2.1:5001"}', ALICE)])

    def test_relay_passes_payload_verbatim_whatever_its_type(self):
        self.register("Alice", ALICE)
        self.register("Bob", BOB)
        self.take()
        for payload in ['{"type": "secure_message", "x": 1}', {"a": [1, 2.5, None]}, 7, None]:
            self.send({"type": "relay", "target": "Bob", "source": "Alice", "payload": payload}, ALICE)
            [out] = self.take(BOB)
            self.assertEqual(out, {"type": "relayed_packet", "from_peer": "Alice",
                                   "via_relay": True, "payload": payload})

    def test_relay_source_is_the_registered_sender(self):
        self.register("Alice", ALICE)
        self.register("Bob", BOB)
        self.register("Eve", EVE)
        self.take()
        self.send({"type": "relay", "target": "Bob", "source": "Alice", "payload": "hi"}, EVE)
        self.assertEqual(self.take(BOB)[0]["from_peer"], "Eve")

    def test_keepalive_creates_and_refreshes(self):
        self.send({"type": "keepalive", "name": "Alice"}, ALICE)
        self.assertEqual(self.take(ALICE), [{"type": "keepalive_ack", "peer_name": "Alice",
                                             "server_time": 1734200000.0}])
        self.assertEqual(self.proto.table.get("Alice").address, ALICE)
        self.send({"type": "keepalive"}, ALICE)      # no name: ignored, as in the seed
        self.assertEqual(self.transport.written, [])

    def test_server_keepalive_and_stale_removal(self):
        self.register("Alice", ALICE)
        self.register("Bob", BOB)
        self.take()
        self.clock.advance(30)
        self.send({"type": "keepalive", "name": "Bob"}, BOB)
        self.take()
        self.clock.advance(31)
        self.proto.tick()
        self.assertEqual(self.take(BOB), [
            {"type": "peer_left", "peer_name": "Alice", "peers": ["Bob"]},
            {"type": "server_keepalive", "server_time": 1734200061.0, "peer_name": "Bob"}])
        self.assertEqual(self.take(), [])
        self.assertIsNone(self.proto.table.get("Alice"))


class WeaknessTests(Harness):
    def test_forged_register_and_keepalive_cannot_take_a_name(self):
        self.register("Bob", BOB)
        self.take()
        self.register("Bob", EVE)
        self.send({"type": "keepalive", "name": "Bob"}, EVE)
        self.assertEqual(self.proto.counts["error_name_taken"], 2)
        self.assertEqual(self.proto.table.get("Bob").address, BOB)
        self.send({"type": "register", "name": "Bob", "pad": "x" * 40}, EVE)
        self.assertEqual(self.take(EVE), [{"type": "error", "code": "name_taken", "name": "Bob"}])

    def test_stale_name_can_be_taken(self):
        self.register("Bob", BOB)
        self.clock.advance(61)
        self.register("Bob", EVE)
        self.assertEqual(self.proto.table.get("Bob").address, EVE)

    def test_owner_proves_key_to_move(self):
        key = Ed25519PrivateKey.generate()
        public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

        def prove(source, challenge):
            sig = base64.b64encode(key.sign(proof.signed_text("Bob", challenge))).decode()
            self.send({"type": "register", "name": "Bob", "key": public,
                       "challenge": challenge, "signature": sig}, source)

        self.send({"type": "register", "name": "Bob", "key": public}, BOB)
        ack = self.take(BOB)[0]
        self.assertFalse(ack["authenticated"])
        prove(BOB, ack["challenge"])
        ack = self.take(BOB)[0]
        self.assertTrue(ack["authenticated"])
        self.assertNotIn("challenge", ack)
        # A challenge made for one address does not work from another.
        prove(EVE, ack.get("challenge", self.proto.challenger.challenge(BOB, "Bob", self.clock.seconds())))
        self.assertEqual(self.take(EVE)[0]["code"], "auth_failed")
        # The owner, moved to a new address, asks, gets a challenge, proves.
        new = ("192.0.2.22", 7000)
        self.send({"type": "register", "name": "Bob", "key": public, "pad": "x" * 100}, new)
        refused = self.take(new)[0]
        self.assertEqual(refused["code"], "name_taken")
        prove(new, refused["challenge"])
        self.assertTrue(self.take(new)[0]["authenticated"])
        self.assertEqual(self.proto.table.get("Bob").address, new)
        # Challenges expire after their minute and the next.
        self.clock.advance(121)
        prove(new, refused["challenge"])
        self.assertEqual(self.take(new)[0]["code"], "auth_failed")
        # Odd challenges are refused, not internal errors.
        window, _, mac = self.proto.challenger.challenge(new, "Bob", self.clock.seconds()).partition(".")
        for odd in ("\u00b2." + mac, "9" * 5000 + "." + mac, window + ".\u00e9" + mac[1:]):
            prove(new, odd)
            self.assertEqual(self.take(new)[0]["code"], "auth_failed")
        self.assertEqual(self.proto.counts["dropped_internal_error"], 0)

    def test_a_name_with_a_lone_surrogate_is_refused(self):
        # JSON can escape what UTF-8 cannot encode (nor the log, nor the proof's HMAC).
        self.send({"type": "register", "name": "B\udc80b", "pad": "x" * 80}, BOB)
        self.assertEqual(self.take(BOB), [{"type": "error", "code": "bad_request",
                                           "detail": "name has a control, format, surrogate or separator character"}])
        self.assertEqual(len(self.proto.table), 0)
        self.register("B\u00f6b", BOB)
        self.assertEqual(self.take(BOB)[0]["peer_name"], "B\u00f6b")

    def test_names_follow_the_rule_for_every_id(self):
        # relayd.core.message.valid_peer_id: the same rule as on TCP.
        for name in ("a||b", "bell\x07", "*", "#room"):
            self.send({"type": "register", "name": name, "pad": "x" * 100}, BOB)
            [error] = self.take(BOB)
            self.assertEqual(error["code"], "bad_request")
            # relayd.names refuses the control character, valid_peer_id the rest
            self.assertRegex(error["detail"], r"^name(: | has a control)")
            self.send({"type": "keepalive", "name": name, "pad": "x" * 100}, BOB)
            self.assertEqual(self.take(BOB)[0]["code"], "bad_request")
        self.assertEqual(len(self.proto.table), 0)

    def test_unknown_target_gets_an_error(self):
        self.register("Alice", ALICE)
        self.take()
        self.send({"type": "relay", "target": "Nobody", "source": "Alice", "payload": "x"}, ALICE)
        self.assertEqual(self.take(ALICE), [{"type": "error", "code": "unknown_target",
                                             "target": "Nobody"}])

    def test_no_amplification_towards_unregistered_sources(self):
        self.register("Bob", BOB)
        self.take()
        requests = [{"type": "relay", "target": "Bob", "payload": 1}, b"{not json",
                    {"type": "ping"}, {"type": "connect", "target": "Bob"},
                    {"type": "register", "name": "Bob"}, {"type": "keepalive", "name": "Bob"},
                    {"type": "relay", "target": "Bob" * 20, "payload": 1}]
        for request in requests:
            data = request if isinstance(request, bytes) else json.dumps(request).encode()
            self.send(data, EVE)
            for reply, _ in self.transport.written:
                self.assertLessEqual(len(reply), len(data))
            self.transport.written = []
        self.assertGreaterEqual(self.proto.counts["dropped_amplification"], 4)
        padded = {"type": "ping", "pad": "x" * 80}
        self.send(padded, EVE)
        self.assertEqual(self.take(EVE)[0]["your_address"], "198.51.100.66:6666")

    def test_registered_sources_get_errors(self):
        self.register("Alice", ALICE)
        self.take()
        for data, code in ((b"{not json", "bad_json"), (b"[" * 5000, "bad_json"),
                           (b"\xff\xfe", "bad_utf8"),
                           (b"[1]", "bad_request"), (b'{"type": "dance"}', "unknown_type"),
                           (b'{"type": "relay", "target": "Alice"}', "bad_request")):
            self.send(data, ALICE)
            self.assertEqual(self.take(ALICE)[0]["code"], code)

    def test_datagram_size_cap(self):
        self.register("Alice", ALICE)
        self.register("Bob", BOB)
        self.take()
        self.send(b" " * 8193, ALICE)
        self.assertEqual(self.transport.written, [])
        # Escaping grows the wrapper past 8192: refused, not sent to Bob.
        payload = '"' * 4070
        self.send({"type": "relay", "target": "Bob", "payload": payload}, ALICE)
        self.assertEqual(self.take(ALICE), [{"type": "error", "code": "too_large", "limit": 8192}])
        self.assertEqual(self.take(BOB), [])

    def test_peer_list_and_announcements_are_bounded(self):
        for i in range(40):
            self.register(f"p{i}", (f"192.0.2.{100 + i}", 1000))
        self.take()
        self.register("last", ALICE)
        ack, plist = self.take(ALICE)
        self.assertEqual(plist["count"], 32)
        self.assertEqual(plist["peers"][0], "last")
        self.assertLessEqual(len(json.dumps(plist)), 1400)

    def test_lists_of_escaped_names_fit_in_a_datagram(self):
        # 62 emoji are 744 bytes once JSON-escaped: 32 of them would be 24 KB.
        for i in range(32):
            self.register("\U0001F600" * 62 + f"{i:02d}", (f"192.0.2.{100 + i}", 1000))
        self.prove(ALICE)
        self.register("last", ALICE)
        for data, _ in self.transport.written:
            self.assertLessEqual(len(data), 8192)
        plist = self.take(ALICE)[1]
        self.assertEqual(plist["peers"][0], "last")
        self.assertLess(plist["count"], 32)
        self.assertGreater(plist["count"], 1)
        self.assertEqual(self.proto.counts["dropped_too_large_out"], 0)

    def test_per_source_rate_limit(self):
        self.prove(ALICE)
        self.register("Alice", ALICE)
        self.take()
        for _ in range(500):
            self.send({"type": "ping", "name": "Alice"}, ALICE)
        self.assertEqual(len(self.take(ALICE)), 397)      # burst 400: 2 proved, 1 registered
        self.assertEqual(self.proto.counts["dropped_rate_limited"], 103)
        self.clock.advance(1)
        self.send({"type": "ping", "name": "Alice"}, ALICE)
        self.assertEqual(len(self.take(ALICE)), 1)

    def test_registrations_are_rate_limited_per_source(self):
        for i in range(12):
            self.register(f"n{i}", ("192.0.2.60", 2000 + i))
        self.assertEqual(len(self.proto.table), 10)

    def test_repeated_registers_are_rate_limited_too(self):
        # Each register is answered with a peer_list and announced to every
        # peer: repeating it (or spoofing it for a victim's address) must not
        # multiply that traffic beyond the claim rate.
        for source in (ALICE, BOB):
            self.prove(source)
        self.register("Bob", BOB)
        self.register("Alice", ALICE)
        self.take()
        for _ in range(50):
            self.register("Alice", ALICE)
        replies = self.take(ALICE)
        self.assertEqual(sum(r["type"] == "peer_list" for r in replies), 9)
        self.assertEqual(sum(r.get("code") == "rate_limited" for r in replies), 41)
        self.assertEqual(len(self.take(BOB)), 9)
        self.clock.advance(1)
        self.register("Alice", ALICE)
        self.assertEqual(self.take(ALICE)[0]["type"], "register_ack")
        self.send({"type": "keepalive", "name": "Alice"}, ALICE)    # a refresh: no token
        self.assertEqual(self.take(ALICE)[0]["type"], "keepalive_ack")

    def test_payloads_are_never_logged(self):
        with capturedLogs() as events:
            self.register("Alice", ALICE)
            self.register("Bob", BOB)
            self.send({"type": "relay", "target": "Bob", "payload": "SECRET-PAYLOAD"}, ALICE)
            self.send(b'{"type": "relay", "target": "Bob", "payload": "SECRET-PAYLOAD"', ALICE)
        self.assertTrue(events)
        for event in events:
            self.assertNotIn("SECRET-PAYLOAD", repr(event))
            self.assertIn(event["log_level"], (LogLevel.debug, LogLevel.info))


class NoListTests(Harness):
    settings = {"peer_list_max": 0}

    def test_an_empty_peer_list_is_still_sent(self):
        self.register("Alice", ALICE)
        self.assertEqual(self.take(ALICE)[1], {"type": "peer_list", "peers": [], "count": 0})


class SmallDatagramTests(Harness):
    settings = {"max_datagram": 576}

    def test_nothing_longer_than_max_datagram_is_sent(self):
        # 256 bytes of UTF-8 in, but 768 once escaped in the register_ack.
        name = "\U0001F600" * 64
        self.send(json.dumps({"type": "register", "name": name}, ensure_ascii=False).encode(),
                  ALICE)
        self.register("Bob", BOB)
        for data, _ in self.transport.written:
            self.assertLessEqual(len(data), 576)
        self.assertGreater(self.proto.counts["dropped_too_large_out"], 0)
        self.assertEqual(self.take(BOB)[0]["type"], "register_ack")


class ConnectTests(Harness):
    def test_connect_sends_both_endpoints_at_once(self):
        self.register("Alice", ALICE)
        self.register("Bob", BOB)
        self.take()
        self.send({"type": "connect", "target": "Bob"}, ALICE)
        self.assertEqual(self.take(), [
            ({"type": "connect_peer", "peer_name": "Bob", "address": "192.0.2.2:5002",
              "key": None, "authenticated": False}, ALICE),
            ({"type": "connect_peer", "peer_name": "Alice", "address": "192.0.2.1:5001",
              "key": None, "authenticated": False}, BOB)])

    def test_connect_needs_registration_and_a_known_target(self):
        self.send({"type": "connect", "target": "Bob", "pad": "x" * 60}, ALICE)
        self.assertEqual(self.take(ALICE)[0]["code"], "not_registered")
        self.register("Alice", ALICE)
        self.take()
        self.send({"type": "connect", "target": "Alice"}, ALICE)
        self.assertEqual(self.take(ALICE)[0]["code"], "unknown_target")


class IPv6Tests(Harness):
    def test_ipv6_and_mapped_addresses(self):
        v6 = ("2001:db8::5", 4000, 0, 0)
        self.register("six", v6)
        self.assertEqual(self.take(v6)[0]["your_address"], "[2001:db8::5]:4000")
        mapped = ("::ffff:192.0.2.7", 4001, 0, 0)
        self.register("four", mapped)
        self.assertEqual(self.take(mapped)[0]["your_address"], "192.0.2.7:4001")


class StunDemuxTests(Harness):
    def test_stun_on_the_same_port(self):
        txid = b"t" * 12
        self.send(stun.encode(stun.BINDING, stun.REQUEST, txid, []), ALICE)
        [(data, to)] = self.transport.written
        self.assertEqual(to, ALICE)
        message = stun.parse(data)
        self.assertEqual(stun.decode_xor_address(message.get(stun.XOR_MAPPED_ADDRESS), txid), ALICE)

    def test_binding_success_counts_as_success(self):
        # Issue 10: every success was counted as an error (class bits tested wrongly).
        self.send(stun.encode(stun.BINDING, stun.REQUEST, b"t" * 12, []), ALICE)
        self.send(stun.encode(0x003, stun.REQUEST, b"u" * 12, []), ALICE)
        metrics = generate_latest(self.registry()).decode()
        self.assertIn("relayd_udp_stun_success_total 1.0", metrics)
        self.assertIn("relayd_udp_stun_error_total 1.0", metrics)

    def registry(self):
        registry = CollectorRegistry()
        registry.register(UDPCollector(self.proto))
        return registry

    def test_classic_rfc_3489_request_on_the_same_port(self):
        padded = (b"\x00\x01\x00\x0c" + bytes(range(16))
                  + b"\x00\x03\x00\x04\x00\x00\x00\x00\x00\x06\x00\x00")
        self.send(padded[:20], ALICE)      # a bare 20-byte request: the answer would be 32
        self.assertEqual(self.transport.written, [])
        self.send(padded, ALICE)
        [(data, to)] = self.transport.written
        self.assertEqual((data[20:24], data[26:28], data[28:]),
                         (b"\x00\x01\x00\x08", (5001).to_bytes(2, "big"), bytes([192, 0, 2, 1])))
        self.assertEqual(self.proto.counts["stun_success"], 1)

    def test_malformed_stun_is_dropped(self):
        good = stun.encode(stun.BINDING, stun.REQUEST, b"t" * 12, [])
        self.send(good[:-1] + b"\x00", ALICE)
        self.send(good[:2] + b"\x00\x01" + good[4:], ALICE)
        self.assertEqual(self.transport.written, [])
        self.assertEqual(self.proto.counts["dropped_bad_stun"], 2)


class FastPathTests(Harness):
    """The relay path that keeps the payload as bytes answers exactly as the full parse."""

    CORPUS = [
        b'{"type": "relay", "target": "Bob", "source": "Alice", "payload": "{\\"a\\": 1}"}',
        b'{"type":"relay","target":"Bob","payload":{"x": [1, 2.5e3, null, "\\u00e9\\ud83d\\ude00"]}}',
        '{"type": "relay", "target": "Bob", "payload": "caf\u00e9 \U0001F600"}'.encode(),
        b'{"type": "relay", "target": "Bob", "payload": NaN}',
        b'{"type": "relay", "target": "Bob", "payload": "\\ud800"}',
        b'{"type": "relay", "target": "B\\udc80b", "payload": 1}',
        b'{"type": "relay", "target": "Nobody", "payload": 1}',
        b'{"type": "relay", "target": "", "payload": 1}',
        b'{"type": "relay", "target": 7, "payload": 1}',
        b'{"type": "relay", "target": "Bob"}',
        b'{"type": "relay", "target": "Bob", "payload": [1, }',
        b'{"type": "relay", "target": "Bob", "payload": "\xff"}',
        b'{"type": "relay", "target": "Bob", "payload": 1, "payload": 2}',
        b'{"type": "relay", "target": "' + b"B" * 65 + b'", "payload": 1}',
        b'{"type": 5, "target": "Bob", "payload": 1}',
        b'[{"type": "relay", "target": "Bob", "payload": 1}]',
        b'{"type": "relay", "target": "Bob", "payload": "' + b'\\"' * 4070 + b'"}',
        b'{"type": "relay", "target": "Bob", "payload": 1, "cookie": "x"}',
        b'{"type": "relay", "target": "Bob", "payload": 1, "z": [1, }',
        b'{"type": "relay", "target": "Bob", "payload": 1, "z": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"type": "relay", "target": "Bob", "payload": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    ]

    def answers(self, fast):
        if not fast:
            self.patch(packets, "relay_fields", lambda data: None)
        self.setUp()
        self.register("Alice", ALICE)
        self.register("Bob", BOB)
        self.take()
        out = []
        for data in self.CORPUS:
            self.send(data, ALICE)
            out.append([(json.loads(d), a) for d, a in self.transport.written])
            self.transport.written = []
        return out

    def test_same_answers_with_and_without_the_fast_path(self):
        fast = self.answers(fast=True)
        self.assertGreater(self.proto.counts["relayed"], 4)
        self.assertEqual(self.proto.counts["dropped_internal_error"], 0)
        self.assertEqual(fast, self.answers(fast=False))
