"""relay-chat's end-to-end layer against an in-memory relay with the real key
directory: offline delivery, replays, tampering, key changes, private rooms."""
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.defer import fail, succeed
from twisted.trial import unittest

from relayd.client.protocol import ServerError
from relayd.e2ee import wire
from relayd.e2ee.layer import OPK_TARGET, E2EE, E2EEError, KeyChanged, safety_number
from relayd.e2ee.store import Store
from relayd.identity import Identity
from relayd.keydir.directory import KeyDirectory, NotOwned


class ImmediatePool:
    def run(self, f, *args):
        return succeed(f(*args))


class MemoryRelay:
    """Keys via the real KeyDirectory; messages kept until someone reads them."""

    def __init__(self, path):
        self.owners = {}
        self.directory = KeyDirectory(path, ImmediatePool(), self, "relay1")
        self.mail = []

    def owner(self, peer_id):
        return self.owners.get(peer_id)

    def take(self, peer_id, room=None):
        mine = [m for m in self.mail if m["to"] == peer_id or (room and m.get("room") == room)]
        if room is None:
            self.mail = [m for m in self.mail if m not in mine]
        return mine


class FakeSession:
    def __init__(self, relay, peer_id):
        self.relay, self.peer_id = relay, peer_id

    def request(self, obj):
        d = self.relay.directory
        kind = obj["type"]
        try:
            if kind == "keys_status":
                return succeed(d.status(self.peer_id))
            if kind == "keys_publish":
                return succeed({"opks": d.publish(self.peer_id, obj["spk"], obj["opks"])})
            record = d.fetch(obj["id"], obj.get("opk", True))
        except (wire.BadEnvelope, NotOwned) as e:
            return fail(ServerError({"status": "error", "error": "bad_keys", "message": str(e)}))
        if record is None:
            return fail(ServerError({"status": "error", "error": "no_keys"}))
        return succeed(record)

    def send(self, body, to=None, room=None):
        msg = {"type": "message", "from": self.peer_id, "to": to or "#" + room, "body": body}
        if room is not None:
            msg["room"] = room
        self.relay.mail.append(msg)
        return succeed({"type": "ack"})


class Person:
    def __init__(self, testcase, relay, name, key=None):
        self.identity = Identity(name, key or Ed25519PrivateKey.generate())
        relay.owners[name] = self.identity.public_bytes
        self.reports = []
        self.store = Store.open(os.path.join(testcase.dir, name + ".e2ee"))
        self.layer = E2EE(self.identity, name, self.store, self.reports.append)
        self.layer.session = FakeSession(relay, name)
        self.shown = []
        self.on_message = self.layer.incoming(self.shown.append)
        self.relay = relay
        self.name = name

    def read(self, room=None):
        for msg in self.relay.take(self.name, room):
            self.on_message(msg)
        return [m["body"] for m in self.shown]


class LayerTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.relay = MemoryRelay(os.path.join(self.dir, "prekeys.json"))
        self.alice = Person(self, self.relay, "alice")
        self.bob = Person(self, self.relay, "bob")
        for p in (self.alice, self.bob):
            self.successResultOf(p.layer.publish())

    def test_offline_recipient_reads_what_the_relay_kept_as_ciphertext(self):
        for n in range(3):
            self.successResultOf(self.alice.layer.send(f"canary-{n}", to="bob"))
        self.assertFalse(any("canary" in m["body"] for m in self.relay.mail))
        self.assertTrue(all(m["body"].startswith("relayd-e2ee/1 dm ") for m in self.relay.mail))
        self.assertEqual(self.bob.read(), ["canary-0", "canary-1", "canary-2"])
        self.assertEqual(len(self.bob.store.opks), 47)          # used ones are gone
        self.assertEqual(os.stat(self.bob.store.path).st_mode & 0o777, 0o600)
        self.assertTrue(any("pinned the key of alice" in r for r in self.bob.reports))

    def test_a_busy_recipient_tops_up_its_one_time_prekeys(self):
        for n in range(41):
            self.successResultOf(self.alice.layer.send(f"m{n}", to="bob"))
            self.bob.read()
        self.assertEqual(len(self.bob.shown), 41)
        # bob checks every 10 used: at 40 the relay held 10, below OPK_LOW: back to 50,
        # then one more went
        self.assertEqual(self.relay.directory.status("bob")["opks"], OPK_TARGET - 1)

    def test_a_replayed_ciphertext_is_refused(self):
        self.successResultOf(self.alice.layer.send("once", to="bob"))
        msg = self.relay.mail[0]
        self.relay.directory._table["bob"]["opks"].clear()      # the signed prekey then
        self.successResultOf(self.alice.layer.send("also once", to="bob"))
        spk_msg = self.relay.mail[1]
        self.assertEqual(self.bob.read(), ["once", "also once"])
        self.bob.on_message(dict(msg, msg_id="x" * 64))
        self.bob.on_message(dict(spk_msg, msg_id="y" * 64))
        self.assertEqual(len(self.bob.shown), 2)
        self.assertIn("already used", self.bob.reports[-2])
        self.assertIn("replayed", self.bob.reports[-1])

    def test_a_tampered_ciphertext_is_refused_and_reported(self):
        self.successResultOf(self.alice.layer.send("intact", to="bob"))
        body = self.relay.mail[0]["body"]
        i = len(body) // 2
        self.relay.mail[0]["body"] = body[:i] + ("A" if body[i] != "A" else "B") + body[i + 1:]
        self.assertEqual(self.bob.read(), [])
        self.assertIn("refused an encrypted message from 'alice'", self.bob.reports[-1])

    def test_names_in_reports_cannot_drive_the_terminal(self):
        self.successResultOf(self.alice.layer.invite("evil\x1b[2J", ["bob"]))
        self.bob.read()
        self.assertIn("key of epoch 1 from alice", self.bob.reports[-1])
        self.assertNotIn("\x1b", self.bob.reports[-1])

    def test_a_relay_cannot_relabel_the_sender(self):
        self.successResultOf(self.alice.layer.send("from alice", to="bob"))
        self.relay.mail[0]["from"] = "carol"
        self.assertEqual(self.bob.read(), [])

    def test_a_changed_key_is_shown_loudly_and_nothing_is_sent_or_shown(self):
        self.successResultOf(self.alice.layer.send("hi", to="bob"))
        self.bob.read()
        new_bob = Person(self, self.relay, "bob-new")
        # the relay now says bob's key is another one (a takeover, or a new install)
        self.relay.owners["bob"] = new_bob.identity.public_bytes
        self.relay.directory._table.pop("bob")
        new_bob.layer.me = "bob"
        new_bob.layer.session.peer_id = "bob"
        self.successResultOf(new_bob.layer.publish())
        failure = self.failureResultOf(self.alice.layer.send("secret", to="bob"), KeyChanged)
        self.assertIn("THE KEY OF bob HAS CHANGED", str(failure.value))
        self.assertEqual(self.relay.mail, [])
        # and a message signed by the new key is refused by alice
        self.successResultOf(new_bob.layer.send("trust me", to="alice"))
        self.assertEqual(self.alice.read(), [])
        self.assertIn("HAS CHANGED", self.alice.reports[-1])

    def test_no_keys_means_plaintext_with_a_warning_unless_pinned(self):
        self.successResultOf(self.alice.layer.send("hello", to="carol"))
        self.assertEqual(self.relay.mail[-1]["body"], "hello")
        self.assertIn("sent unencrypted", self.alice.reports[-1])
        self.successResultOf(self.alice.layer.send("hi", to="bob"))
        self.relay.directory._table.pop("bob")
        self.failureResultOf(self.alice.layer.send("again", to="bob"), E2EEError)

    def test_safety_numbers_match_on_both_sides(self):
        a, b = self.alice.identity.public_bytes, self.bob.identity.public_bytes
        self.assertEqual(safety_number("alice", a, "bob", b), safety_number("bob", b, "alice", a))
        self.assertRegex(safety_number("alice", a, "bob", b), r"^(\d{5} ){11}\d{5}$")


class PrivateRoomTests(unittest.TestCase):
    setUp = LayerTests.setUp

    def test_members_read_and_a_removed_member_cannot_after_rotation(self):
        carol = Person(self, self.relay, "carol")
        self.successResultOf(carol.layer.publish())
        self.successResultOf(self.alice.layer.invite("secret", ["bob", "carol"]))
        self.bob.read(), carol.read()                          # the key shares
        self.assertEqual(self.bob.store.rooms["secret"]["epoch"], 1)
        self.successResultOf(self.alice.layer.send("room canary 1", room="secret"))
        self.assertNotIn("canary", self.relay.mail[-1]["body"])
        self.assertEqual(self.bob.read("secret"), ["room canary 1"])
        self.assertEqual(carol.read("secret"), ["room canary 1"])
        self.relay.mail.clear()
        self.successResultOf(self.alice.layer.remove("secret", "carol"))
        self.assertEqual([m["to"] for m in self.relay.mail], ["bob"])
        self.bob.read()
        self.successResultOf(self.alice.layer.send("room canary 2", room="secret"))
        self.assertEqual(self.bob.read("secret")[-1], "room canary 2")
        self.assertEqual(carol.read("secret"), ["room canary 1"])
        self.assertIn("no key for epoch 2 of #secret", carol.reports[-1])

    def test_a_leaving_member_makes_the_owner_rotate(self):
        self.successResultOf(self.alice.layer.invite("secret", ["bob"]))
        self.bob.read()
        self.successResultOf(self.bob.layer.leave("secret"))
        self.assertNotIn("secret", self.bob.store.rooms)
        self.alice.read()
        self.assertEqual(self.alice.store.rooms["secret"]["epoch"], 2)
        self.assertEqual(list(self.alice.store.rooms["secret"]["members"]), ["alice"])

    def test_a_late_joiner_gets_history_keys_only_when_shared(self):
        self.successResultOf(self.alice.layer.invite("secret", ["bob"]))
        self.successResultOf(self.alice.layer.remove("secret", "bob"))     # epoch 2
        carol = Person(self, self.relay, "carol")
        self.successResultOf(carol.layer.publish())
        self.successResultOf(self.alice.layer.invite("secret", ["carol"]))
        carol.read()
        self.assertEqual(sorted(carol.store.rooms["secret"]["keys"]), ["2"])
        self.successResultOf(self.alice.layer.invite("secret", ["carol"], history=True))
        carol.read()
        self.assertEqual(sorted(carol.store.rooms["secret"]["keys"]), ["1", "2"])

    def test_only_the_owner_hands_out_keys(self):
        self.successResultOf(self.alice.layer.invite("secret", ["bob"]))
        self.bob.read()
        mallory = Person(self, self.relay, "mallory")
        self.successResultOf(mallory.layer.publish())
        body = self.successResultOf(mallory.layer.seal_dm("bob", {
            "k": "roomkey", "room": "secret", "epoch": 9, "keys": {"9": wire.b64(bytes(32))},
            "members": {}, "owner": "mallory"}))
        self.successResultOf(mallory.layer.session.send(body, to="bob"))
        self.bob.read()
        self.assertEqual(self.bob.store.rooms["secret"]["epoch"], 1)
        self.assertIn("not its owner", self.bob.reports[-1])
