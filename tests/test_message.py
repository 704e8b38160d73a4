"""Message ids are seed-000 compatible and stable across retries."""
import hashlib
import json

from twisted.trial import unittest

from relayd.core import message


class IdTests(unittest.TestCase):
    def test_seed_formula(self):
        entry = message.new_entry("alice", "bob", "hi", 1734200000.5, "relay1")
        self.assertEqual(list(entry), ["from", "to", "body", "timestamp", "seen_by", "msg_id"])
        hashed = {"from": "alice", "to": "bob", "body": "hi", "timestamp": 1734200000.5,
                  "seen_by": ["relay1"]}
        expected = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()
        self.assertEqual(entry["msg_id"], expected)

    def test_timestamp_changes_the_id_without_a_nonce(self):
        a = message.new_entry("alice", "bob", "hi", 1.0, "relay1")
        b = message.new_entry("alice", "bob", "hi", 2.0, "relay1")
        self.assertNotEqual(a["msg_id"], b["msg_id"])

    def test_nonce_makes_retries_identical(self):
        a = message.new_entry("alice", "bob", "hi", 1.0, "relay1", nonce="n1")
        b = message.new_entry("alice", "bob", "hi", 2.0, "relay1", nonce="n1")
        c = message.new_entry("alice", "bob", "hi", 2.0, "relay1", nonce="n2")
        d = message.new_entry("mallory", "bob", "hi", 2.0, "relay1", nonce="n1")
        self.assertEqual(a["msg_id"], b["msg_id"])
        self.assertNotEqual(a["msg_id"], c["msg_id"])
        self.assertNotEqual(a["msg_id"], d["msg_id"])
        self.assertNotIn("nonce", a)

    def test_lines(self):
        entry = message.new_entry("alice", "#r", "hi", 1.0, "relay1", room="r")
        line = message.journal_line(entry)
        self.assertEqual(json.loads(line), entry)
        delivered = json.loads(message.delivery_line(line))
        self.assertEqual(delivered.pop("type"), "message")
        self.assertEqual(delivered, entry)

    def test_peer_id_rules(self):
        self.assertIsNone(message.valid_peer_id("alice"))
        for bad in ("", "a" * 129, "RELAY||x", "a\nb", "*", "#room", 5, None):
            self.assertIsNotNone(message.valid_peer_id(bad), bad)
