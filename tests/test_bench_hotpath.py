"""The hot-path encoders tuned with the benchmarks give byte for byte what
the reference ``json.dumps`` formulas give (docs/PROTOCOL.md 1.5)."""
import hashlib
import json
import random

from twisted.trial import unittest

from relayd.core import message

SAMPLES = ["alice", "", "bob\n\"quoted\"\\", "é中文😀", "\x00\x1f\x7f", "#room", "*", "a" * 300]
TIMES = [1734200000.123456, 0.0, 1e-7, 1.5e22, 3, float("nan")]


def reference(sender, to, body, timestamp, relay_id, room, nonce):
    """Seed 000's formula as docs/PROTOCOL.md states it."""
    entry = {"from": sender, "to": to, "body": body}
    if room is not None:
        entry["room"] = room
    hashed = dict(entry, nonce=nonce) if nonce is not None else dict(
        entry, timestamp=timestamp, seen_by=[relay_id])
    entry["timestamp"] = timestamp
    entry["seen_by"] = [relay_id]
    entry["msg_id"] = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()
    return entry, json.dumps(entry).encode()


class NewMessageTests(unittest.TestCase):
    def test_same_id_and_line_as_json_dumps(self):
        rng = random.Random(2)
        for _ in range(2000):
            args = (rng.choice(SAMPLES), rng.choice(SAMPLES), rng.choice(SAMPLES), rng.choice(TIMES),
                    rng.choice(SAMPLES), rng.choice([None] + SAMPLES), rng.choice([None] + SAMPLES))
            entry, line = message.new_message(*args)
            expected_entry, expected_line = reference(*args)
            self.assertEqual(line, expected_line, args)
            self.assertEqual(list(entry), list(expected_entry))
            self.assertEqual(entry["msg_id"], expected_entry["msg_id"])
            self.assertEqual(line, message.journal_line(entry))


class AckTests(unittest.TestCase):
    def test_ack_bytes_are_json_dumps_of_the_ack_object(self):
        from twisted.internet.testing import StringTransport
        from relayd.tcp.protocol import RelayProtocol, encode

        for duplicate in (False, True):
            for nonce in (None, "n1", "é\"\\"):
                for req in (None, 1, "r", {"a": [1, 2.5, None]}):
                    protocol = RelayProtocol(service=None)
                    protocol.transport = StringTransport()
                    protocol._ack(("ab" * 32, duplicate), nonce, req)
                    expected = {"status": "ok", "type": "ack", "msg_id": "ab" * 32, "duplicate": duplicate}
                    if nonce is not None:
                        expected["nonce"] = nonce
                    if req is not None:
                        expected["req"] = req
                    self.assertEqual(protocol.transport.value(), encode(expected))


class IdleSessionTests(unittest.TestCase):
    def test_rooms_start_shared_and_empty_and_work_once_joined(self):
        from relayd.tcp.protocol import RelayProtocol
        from tests.fakes import make_router

        router = make_router()
        a, b = RelayProtocol(service=None), RelayProtocol(service=None)
        a.peer_id, b.peer_id = "a", "b"
        router.leave(a, "never-joined")
        self.assertEqual(router.join(a, "r"), ["a"])
        self.assertEqual((a.rooms, b.rooms), ({"r"}, frozenset()))
        router.leave(a, "r")
        self.assertEqual((a.rooms, router.rooms()), (set(), {}))
