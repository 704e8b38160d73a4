"""The relay's key directory: publishing checked against the owned key, one-time
prekeys handed out once and kept across a restart, the require_encryption
policy, and look-ups over federation."""
import base64
import json
import os
from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.internet.task import Clock
from twisted.trial import unittest

from relayd.e2ee import wire
from relayd.identity import Identity
from relayd.keydir.directory import DamagedDirectory, KeyDirectory
from relayd.keydir.remote import RemoteKeys
from relayd.keydir.requests import EncryptionPolicy, KeyRequests
from tests.test_ownership import HeldPool
from tests import test_tcp_protocol
from tests.test_tcp_protocol import Client, make_service


def raw_x25519():
    return X25519PrivateKey.generate().public_key().public_bytes_raw()


def bundle(identity, peer_id, count):
    spk = wire.prekey_record(identity, wire.SPK_LABEL, peer_id, raw_x25519())
    return spk, [wire.prekey_record(identity, wire.OPK_LABEL, peer_id, raw_x25519())
                 for _ in range(count)]


class DirectoryRequests(unittest.TestCase):
    prove = test_tcp_protocol.KeyProofTests.prove

    def setUp(self):
        self.service = make_service("[e2ee]\nrequire_encryption = yes\n")
        self.path = os.path.abspath(self.mktemp())
        self.pool = HeldPool()
        self.directory = KeyDirectory(self.path, self.pool, self.service.router.ownership,
                                      "relay1", max_prekeys=5)
        self.directory.load()
        self.service.requests.update(KeyRequests(self.directory).handlers())
        self.service.send_checks.append(EncryptionPolicy(self.directory, True))
        self.keys = {}

    def connect(self, peer_id, port):
        key = self.keys.setdefault(peer_id, Ed25519PrivateKey.generate())
        client = Client(self.service, port=port)
        self.assertEqual(self.prove(client, peer_id, key)["type"], "welcome")
        return client, Identity(peer_id, key)

    def ask(self, client, **request):
        client.request(**request)
        return client.frames()[-1]

    def test_publish_then_each_one_time_prekey_goes_out_once(self):
        alice, alice_id = self.connect("alice", 1)
        spk, opks = bundle(alice_id, "alice", 3)
        answer = self.ask(alice, type="keys_publish", spk=spk, opks=opks)
        self.assertEqual((answer["type"], answer["opks"]), ("keys_published", 3))
        bob, _ = self.connect("bob", 2)
        handed = []
        for left in (2, 1, 0):
            keys = self.ask(bob, type="keys_fetch", id="alice")
            self.assertEqual((keys["ik"], keys["spk"], keys["opks_left"]),
                             (alice_id.public_b64, spk, left))
            handed.append(keys["opk"]["key"])
        self.assertEqual(sorted(handed), sorted(o["key"] for o in opks))
        keys = self.ask(bob, type="keys_fetch", id="alice")
        self.assertIsNone(keys["opk"])                  # none left: the signed prekey only
        self.assertEqual(self.ask(alice, type="keys_status"),
                         {"status": "ok", "type": "keys_status", "spk": spk["key"], "opks": 0})
        self.assertEqual(self.ask(bob, type="keys_fetch", id="nobody")["error"], "no_keys")

    def test_one_time_prekeys_go_only_to_sessions_that_proved_a_key(self):
        alice, alice_id = self.connect("alice", 1)
        spk, opks = bundle(alice_id, "alice", 2)
        self.ask(alice, type="keys_publish", spk=spk, opks=opks)
        plain = Client(self.service, port=3)
        plain.request(type="hello", id="dan")
        plain.frames()
        keys = self.ask(plain, type="keys_fetch", id="alice")
        self.assertEqual((keys["ik"], keys["opk"], keys["opks_left"]),
                         (alice_id.public_b64, None, 2))

    def test_a_prekey_not_signed_by_the_owned_key_is_refused(self):
        alice, _ = self.connect("alice", 1)
        spk, opks = bundle(Identity("x", Ed25519PrivateKey.generate()), "alice", 1)
        answer = self.ask(alice, type="keys_publish", spk=spk, opks=opks)
        self.assertEqual(answer["error"], "bad_keys")
        self.assertEqual(len(self.directory), 0)

    def test_an_unproved_session_cannot_publish(self):
        plain = Client(self.service, port=3)
        plain.request(type="hello", id="carol")
        plain.frames()
        spk, _ = bundle(Identity("carol", Ed25519PrivateKey.generate()), "carol", 0)
        self.assertEqual(self.ask(plain, type="keys_publish", spk=spk)["error"], "key_required")

    def test_kept_across_a_restart_and_bounded(self):
        alice, alice_id = self.connect("alice", 1)
        spk, opks = bundle(alice_id, "alice", 5)
        self.ask(alice, type="keys_publish", spk=spk, opks=opks)
        _, more = bundle(alice_id, "alice", 2)
        self.assertEqual(self.ask(alice, type="keys_publish", spk=spk, opks=more)["opks"], 5)
        while self.pool.jobs:
            self.pool.step()
        again = KeyDirectory(self.path, self.pool, self.service.router.ownership, "relay1", 5)
        again.load()
        self.assertEqual(again.status("alice")["opks"], 5)
        self.assertEqual(again.fetch("alice")["opk"], opks[2])    # the oldest two made room

    def test_prekeys_of_a_key_that_lost_the_id_are_never_handed_out(self):
        alice, alice_id = self.connect("alice", 1)
        spk, opks = bundle(alice_id, "alice", 2)
        self.ask(alice, type="keys_publish", spk=spk, opks=opks)
        bob, _ = self.connect("bob", 2)
        self.assertEqual(self.ask(bob, type="keys_fetch", id="alice")["type"], "keys")
        # a cluster's engine gives the id to another key (or the operator freed it)
        other = Identity("alice", Ed25519PrivateKey.generate())
        self.service.router.ownership.replace("alice", other.public_bytes)
        self.assertEqual(self.ask(bob, type="keys_fetch", id="alice")["error"], "no_keys")
        self.assertFalse(self.directory.keyed("alice"))
        self.assertNotIn("alice", self.directory.snapshot())        # dropped, and saved so
        new_spk, new_opks = bundle(other, "alice", 1)
        self.assertEqual(self.directory.publish("alice", new_spk, new_opks), 1)
        keys = self.ask(bob, type="keys_fetch", id="alice")
        self.assertEqual((keys["ik"], keys["spk"]), (other.public_b64, new_spk))

    def test_a_record_kept_before_its_key_was_named_is_checked_once(self):
        _, alice_id = self.connect("alice", 1)
        _, bob_id = self.connect("bob", 2)
        old = {"alice": bundle(alice_id, "alice", 1),
               "bob": bundle(Identity("x", Ed25519PrivateKey.generate()), "bob", 1)}
        with open(self.path, "w") as f:
            json.dump({peer: {"spk": spk, "opks": opks} for peer, (spk, opks) in old.items()}, f)
        directory = KeyDirectory(self.path, self.pool, self.service.router.ownership, "relay1")
        directory.load()
        self.assertEqual(directory.fetch("alice", take_opk=False)["spk"], old["alice"][0])
        self.assertEqual(directory.snapshot()["alice"]["ik"], alice_id.public_b64)
        self.assertIsNone(directory.fetch("bob"))                   # not signed by bob's key
        self.assertEqual(sorted(directory.snapshot()), ["alice"])

    def test_damaged_file_stops_the_start(self):
        with open(self.path, "w") as f:
            f.write("{not json")
        with self.assertRaises(DamagedDirectory):
            KeyDirectory(self.path, self.pool, self.service.router.ownership, "relay1").load()

    def test_require_encryption_refuses_plaintext_between_keyed_ids(self):
        alice, _ = self.connect("alice", 1)
        bob, bob_id = self.connect("bob", 2)
        self.ask(alice, type="send", to="carol", body="carol has no keys: fine")
        spk, opks = bundle(bob_id, "bob", 1)
        self.ask(bob, type="keys_publish", spk=spk, opks=opks)
        plain = Client(self.service, port=4)
        plain.request(type="hello", id="dan")
        plain.frames()
        self.assertEqual(self.ask(plain, type="send", to="bob", body="no key, no rule")["type"],
                         "ack")
        refused = self.ask(alice, type="send", to="bob", body="in the clear")
        self.assertEqual(refused["error"], "encryption_required")
        self.assertIn("end-to-end encrypted", refused["message"])
        self.assertEqual(self.ask(bob, type="send", to="alice", body="alice has no keys")["type"],
                         "ack")
        sealed = self.ask(alice, type="send", to="bob", body=wire.PREFIX + "dm AAAA")
        self.assertEqual(sealed["type"], "ack")
        answer = self.ask(alice, type="send", room="open", body="rooms are not DMs")
        self.assertEqual(answer["type"], "ack")


class FakeLink:
    def __init__(self, name, hub):
        self.name = name
        self.hub = hub
        self.sent = []

    def send(self, obj):
        self.sent.append(obj)


class FederatedLookups(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        ownership = SimpleNamespace(owner=lambda peer: self.owners.get(peer))
        self.owners = {}
        self.hub = SimpleNamespace(handlers={}, links={})
        self.directory = KeyDirectory(self.mktemp(), HeldPool(), ownership, "relay2")
        self.remote = RemoteKeys(self.hub, self.directory, self.clock, timeout=5)

    def test_answers_for_its_own_ids_and_asks_peers_for_others(self):
        carol = Identity("carol", Ed25519PrivateKey.generate())
        self.owners["carol"] = carol.public_bytes
        spk, opks = bundle(carol, "carol", 1)
        self.directory.publish("carol", spk, opks)
        link = FakeLink("relay1", self.hub)
        self.hub.handlers["keys_fetch"](link, {"type": "keys_fetch", "qid": 7, "id": "carol",
                                               "opk": True})
        answer = link.sent[-1]
        self.assertEqual((answer["type"], answer["qid"], answer["record"]["opk"]),
                         ("keys", 7, opks[0]))
        # the other way: relay2 asks its two peers about dave
        a, b = FakeLink("relay1", self.hub), FakeLink("relay3", self.hub)
        self.hub.links = {"relay1": [a], "relay3": [b]}
        results = []
        self.remote.fetch("dave").addCallback(results.append)
        qid = a.sent[-1]["qid"]
        self.hub.handlers["keys"](a, {"type": "keys", "qid": qid, "record": None})
        self.assertEqual(results, [])
        record = {"id": "dave", "ik": base64.b64encode(b"k" * 32).decode(), "spk": spk,
                  "opk": None, "opks_left": 0, "relay": "relay3", "extra": "dropped"}
        self.hub.handlers["keys"](b, {"type": "keys", "qid": qid, "record": record})
        self.assertEqual(results[0]["relay"], "relay3")
        self.assertNotIn("extra", results[0])

    def test_no_answer_is_none_after_the_timeout(self):
        self.hub.links = {"relay1": [FakeLink("relay1", self.hub)]}
        results = []
        self.remote.fetch("dave").addCallback(results.append)
        self.clock.advance(5)
        self.assertEqual(results, [None])
