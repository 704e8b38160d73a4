"""Anti-amplification: what an unproven address makes relayd send is bounded by what it sent.

Issue 10: a spoofed ``register`` used to draw a ``register_ack``, a whole
``peer_list`` and a ``peer_joined`` to every registered peer.  Now every
address that has not proved it receives there (cookie echo or key proof)
has a byte budget: the bytes it sent plus ``budget.ALLOWANCE`` (refilled at
``budget.REFILL`` a second), whatever the number of peers.
"""
import base64
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relayd.udp import budget, proof, stun
from relayd.udp.budget import (ALLOWANCE, IP_ALLOWANCE, IP_REFILL, REFILL, ByteBudgets, ProvenAddresses,
                               SourceBudgets)
from tests.test_udp_protocol import ALICE, BOB, Harness

VICTIM = ("203.0.113.9", 4444)


def wire(packet):
    return packet if isinstance(packet, bytes) else json.dumps(packet).encode()


class Network(Harness):
    """``peers`` proven peers with 12-character names; announcements to all of them."""

    settings = {"announce_limit": 1000, "max_sources": 4096}
    peers = 60

    def setUp(self):
        super().setUp()
        for i in range(self.peers):
            address = (f"10.0.{i // 200}.{i % 200 + 1}", 7000)
            self.prove(address)
            self.register(f"member-{i:05d}", address)
        self.take()

    def bytes_for(self, requests, source):
        """(bytes in, bytes out to anyone) for ``requests`` sent from ``source``."""
        sent_before = len(self.transport.written)
        size_in = 0
        for request in requests:
            data = wire(request)
            size_in += len(data)
            self.proto.datagramReceived(data, source)
        size_out = sum(len(d) for d, _ in self.transport.written[sent_before:])
        return size_in, size_out


SCENARIOS = {
    # name: the requests one fresh spoofed address sends, in order
    "register (seed)": [{"type": "register", "name": "Mallory"}],
    "register with key": [{"type": "register", "name": "Mallory",
                           "key": base64.b64encode(b"k" * 32).decode()}],
    "register, asking a cookie": [{"type": "register", "name": "Mallory", "cookie": ""}],
    "keepalive claiming a name": [{"type": "keepalive", "name": "Mallory"}],
    "ping": [{"type": "ping"}],
    "ping, asking a cookie": [{"type": "ping", "cookie": ""}],
    "bad JSON": [b"{not json"],
    "STUN Binding": [stun.encode(stun.BINDING, stun.REQUEST, b"t" * 12, [], with_fingerprint=False)],
    "register + connect": [{"type": "register", "name": "Mallory"},
                           {"type": "connect", "target": "member-00001"}],
    "register + relay": [{"type": "register", "name": "Mallory"},
                         {"type": "relay", "target": "member-00001", "source": "Mallory",
                          "payload": "x" * 100}],
    "register + 20 keepalives": [{"type": "register", "name": "Mallory"}]
                                + [{"type": "keepalive", "name": "Mallory"}] * 20,
}


class Factors:
    def factors(self):
        out = {}
        for i, (name, requests) in enumerate(SCENARIOS.items()):
            source = (f"198.51.100.{i + 1}", 5000)
            mine = f"Mal{i:04d}".encode()              # a name of its own, as long
            out[name] = self.bytes_for([wire(r).replace(b"Mallory", mine) for r in requests], source)
        return out

    def test_every_request_type_stays_within_its_bytes_plus_the_allowance(self):
        for name, (size_in, size_out) in self.factors().items():
            self.assertLessEqual(size_out, size_in + ALLOWANCE, name)


class FactorTests(Factors, Network):
    def test_the_bound_does_not_grow_with_the_peers(self):
        # With 60 peers a spoofed register used to fan out 60 peer_joined.
        size_in, size_out = self.bytes_for([{"type": "register", "name": "Mallory"}], VICTIM)
        self.assertLess(size_out / size_in, (size_in + ALLOWANCE) / size_in + 0.01)
        self.assertGreater(self.proto.counts["dropped_budget"], self.peers // 2)


class ManyPeersFactorTests(Factors, Network):
    peers = 250


class SustainedTests(Network):
    def test_a_spoofed_flood_over_time_is_bounded_by_the_refill(self):
        # One spoofed register or keepalive a second for 100 s, for one victim.
        size_in = size_out = 0
        for second in range(100):
            request = {"type": "register" if second % 2 else "keepalive", "name": "Mallory"}
            got_in, got_out = self.bytes_for([request], VICTIM)
            size_in, size_out = size_in + got_in, size_out + got_out
            self.clock.advance(1)
        self.assertLessEqual(size_out, size_in + ALLOWANCE + REFILL * 100)

    def test_a_spoofed_registration_does_not_draw_every_later_notice(self):
        # "Victim" registered by a spoofer; then 50 real peers join.
        _, victim_out = self.bytes_for([{"type": "register", "name": "Victim"}], VICTIM)
        for i in range(50):
            address = (f"10.9.0.{i + 1}", 7000)
            self.prove(address)
            self.register(f"joiner-{i:03d}", address)
        received = sum(len(d) for d, to in self.transport.written if to == VICTIM)
        self.assertLessEqual(received, len(wire({"type": "register", "name": "Victim"})) + ALLOWANCE)


class ManyPortsTests(Network):
    settings = dict(Network.settings, claim_rate=10000, claim_burst=10000)
    peers = 20

    def test_spoofing_many_ports_of_one_victim_is_bounded_by_the_ip_budget(self):
        size_in = size_out = 0
        for second in range(5):
            for port in range(1000, 1100):
                got_in, got_out = self.bytes_for(
                    [{"type": "register", "name": f"m{port}"}], (VICTIM[0], port))
                size_in, size_out = size_in + got_in, size_out + got_out
            self.clock.advance(1)
        self.assertLessEqual(size_out, size_in + IP_ALLOWANCE + IP_REFILL * 5)


class SeedClientTests(Harness):
    """Seed-001 clients cannot echo a cookie: they must keep working, within the budget."""

    def test_register_ack_list_and_notices_in_a_small_network(self):
        self.register("Alice", ALICE)
        self.register("Bob", BOB)
        self.assertEqual([p["type"] for p in self.take(BOB)], ["register_ack", "peer_list"])
        self.assertEqual(self.take(ALICE)[-1]["type"], "peer_joined")

    def test_many_seed_clients_behind_one_nat_all_get_their_ack(self):
        # As many at once as claim_burst lets one IP register, then one a second.
        for port in range(1000, 1040):
            self.register(f"natted-{port}", ("192.0.2.99", port))
            self.assertEqual(self.take(("192.0.2.99", port))[0]["type"], "register_ack")
            if port >= 1009:
                self.clock.advance(1)

    def test_the_rest_of_a_long_peer_list_follows_keepalives(self):
        everyone = [f"peer-with-a-longish-name-{i:04d}" for i in range(32)]
        for i, name in enumerate(everyone):
            address = (f"10.1.0.{i + 1}", 7000)
            self.prove(address)
            self.register(name, address)
        self.take()
        self.register("Alice", ALICE)
        ack, first = self.take(ALICE)
        self.assertEqual(ack["type"], "register_ack")
        self.assertGreater(first["more"], 0)
        self.assertEqual(first["count"], len(first["peers"]))
        seen = list(first["peers"])
        for _ in range(60):
            self.clock.advance(15)              # the seed's keepalive interval
            self.send({"type": "keepalive", "name": "Alice"}, ALICE)
            lists = [p for p in self.take(ALICE) if p["type"] == "peer_list"]
            for plist in lists:
                seen += plist["peers"]
            if lists and "more" not in lists[-1]:
                break
        self.assertEqual(sorted(seen), sorted(self.proto._names()))

    def test_relaying_is_not_cut_for_seed_senders(self):
        self.register("Alice", ALICE)
        self.register("Bob", BOB)
        self.take()
        for i in range(5000):
            self.send({"type": "relay", "target": "Bob", "source": "Alice",
                       "payload": json.dumps({"n": i})}, ALICE)
            self.clock.advance(0.01)
        self.assertEqual(len(self.take(BOB)), 5000)
        self.assertEqual(self.proto.counts["dropped_budget"], 0)

    def test_a_wrapper_much_larger_than_the_request_is_paid_for(self):
        # A long escaped name makes every relayed_packet 750 bytes longer than its relay.
        name = "\U0001F600" * 62
        self.send(json.dumps({"type": "register", "name": name}, ensure_ascii=False).encode(), ALICE)
        self.register("B", BOB)
        self.take()
        request = json.dumps({"type": "relay", "target": "B", "payload": 1}).encode()
        for _ in range(100):
            self.send(request, ALICE)
        relayed = sum(len(d) for d, to in self.transport.written if to == BOB)
        self.assertLessEqual(relayed, 100 * (len(request) + budget.RELAY_SLACK) + ALLOWANCE + 512)
        self.assertGreater(self.proto.counts["dropped_budget"], 90)


class ProofTests(Network):
    peers = 40

    def test_a_cookie_echo_gets_everything_at_once(self):
        self.send({"type": "ping", "cookie": "", "pad": "x" * 200}, ALICE)
        cookie = self.take(ALICE)[0]["cookie"]
        self.send({"type": "register", "name": "Alice", "cookie": cookie}, ALICE)
        ack, plist = self.take(ALICE)
        self.assertNotIn("cookie", ack)
        self.assertEqual(plist["count"], 32)
        self.assertNotIn("more", plist)
        self.assertEqual(len(self.take()), self.peers)            # peer_joined to every one
        self.assertEqual(self.proto.counts["dropped_budget"], 0)

    def test_a_cookie_proves_only_the_address_it_was_sent_to(self):
        self.send({"type": "ping", "cookie": "", "pad": "x" * 200}, ALICE)
        cookie = self.take(ALICE)[0]["cookie"]
        self.send({"type": "register", "name": "Mallory", "cookie": cookie}, VICTIM)
        self.assertNotIn(VICTIM, self.proto.proven)
        self.assertGreater(self.proto.counts["dropped_budget"], 0)

    def test_a_late_cookie_sends_the_rest_of_the_list(self):
        self.send({"type": "register", "name": "Alice", "cookie": ""}, ALICE)
        ack, plist = self.take(ALICE)
        self.assertGreater(plist.get("more", 0), 0)
        self.send({"type": "keepalive", "name": "Alice", "cookie": ack["cookie"]}, ALICE)
        rest = [p for p in self.take(ALICE) if p["type"] == "peer_list"]
        self.assertEqual(plist["count"] + sum(p["count"] for p in rest), 32)
        self.assertNotIn("more", rest[-1])

    def test_a_key_proof_proves_the_address(self):
        key = Ed25519PrivateKey.generate()
        public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
        self.send({"type": "register", "name": "Alice", "key": public, "pad": "x" * 256}, ALICE)
        challenge = self.take(ALICE)[0]["challenge"]
        signature = base64.b64encode(key.sign(proof.signed_text("Alice", challenge))).decode()
        self.send({"type": "register", "name": "Alice", "key": public, "challenge": challenge,
                   "signature": signature}, ALICE)
        self.assertIn(ALICE, self.proto.proven)
        self.assertTrue(self.take(ALICE)[0]["authenticated"])

    def test_proof_lapses_after_stale_after_of_silence(self):
        self.prove(ALICE)
        self.clock.advance(61)
        self.proto.tick()
        self.assertNotIn(ALICE, self.proto.proven)


class BudgetUnitTests(Harness):
    def test_byte_budget_refills_to_the_allowance_and_banks_received_bytes(self):
        budgets = ByteBudgets(cap=2000, allowance=100, refill=10)
        self.assertTrue(budgets.allow("a", 0, 100))
        self.assertFalse(budgets.allow("a", 0, 1))
        self.assertEqual(budgets.balance("a", 5), 50)
        budgets.deposit("a", 5, 500)
        self.assertEqual(budgets.balance("a", 100), 550)      # above the allowance: kept
        budgets.deposit("a", 100, 5000)
        self.assertEqual(budgets.balance("a", 100), 2000)     # the cap

    def test_an_address_pays_from_its_own_budget_and_its_ips(self):
        budgets = SourceBudgets(cap=20000)
        a, b = ("192.0.2.1", 1), ("192.0.2.2", 1)
        self.assertFalse(budgets.charge({a: 0, b: 0}, 0, ALLOWANCE + 1))
        budgets.deposit(b, 0, 100)
        self.assertFalse(budgets.charge({a: 0, b: 0}, 0, ALLOWANCE + 1))  # a cannot: neither pays
        self.assertEqual(budgets.balance(b, 0), ALLOWANCE + 100)
        self.assertTrue(budgets.charge({a: 10}, 0, ALLOWANCE - 10))
        self.assertFalse(budgets.charge({a: 10}, 0, 1))
        self.assertTrue(budgets.charge({a: 0, b: 300}, 0, 1))       # each keeps its own reserve
        self.assertFalse(budgets.charge({a: 0, b: 300}, 0, 400))
        # Many ports of one IP share its budget.
        spent = sum(budgets.charge({("198.51.100.7", port): 0}, 0, ALLOWANCE)
                    for port in range(1, 100))
        self.assertEqual(spent, 8)

    def test_proven_addresses_are_bounded(self):
        proven = ProvenAddresses(ttl=10, max_addresses=2)
        for port in (1, 2, 3):
            proven.add(("h", port), 0)
        self.assertEqual(len(proven), 2)
        self.assertFalse(proven.touch(("h", 1), 0))
        self.assertTrue(proven.touch(("h", 3), 5))
        proven.sweep(12)
        self.assertEqual(list(proven._seen), [("h", 3)])
