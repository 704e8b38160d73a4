"""The JSON-lines parse (msgspec, the standard module for what it refuses):
every line gets the answer the standard module's parse (finite numbers
only) gave, and message
ids stay SHA-256 of ``json.dumps(entry, sort_keys=True)``, non-ASCII too."""
import hashlib
import json

from twisted.trial import unittest

from relayd.tcp import protocol
from tests.test_tcp_protocol import hello, make_service


standard_loads = protocol.standard_loads        # the parse before msgspec

UNLIMITED = "[ratelimit]\nmessages = 100000\n"

# Lines where msgspec and the standard module could part ways.
CORPUS = [
    b'{"type": "send", "to": "*", "body": "h\xc3\xa9llo \xe2\x98\x83 \xf0\x9f\x98\x80", "req": 1}',
    b'{"type": "send", "to": "*", "body": "\\u00e9\\ud83d\\ude00", "req": 2}',
    b'{"type": "send", "to": "*", "body": "x", "req": 123456789012345678901234567890}',
    b'{"type": "send", "to": "*", "body": "x", "req": -18446744073709551617}',
    b'{"type": "send", "to": "*", "body": "x", "req": 1e400}',
    b'{"type": "send", "to": "*", "body": "x", "req": -1e400}',
    b'{"type": "send", "to": "*", "body": "x", "req": 1.5e-400}',
    b'{"type": "send", "to": "*", "body": "x", "req": 0.1}',
    b'{"type": "send", "to": "*", "body": "x", "req": ' + b"7" * 5000 + b"}",
    b'{"type": "send", "to": "*", "body": NaN, "req": 3}',
    b'{"type": "send", "to": "*", "body": "x", "req": Infinity}',
    b'{"type": "ping", "type": "send", "to": "*", "body": "dup", "body": "last"}',
    b'{"type": "send", "to": "*", "body": "\\ud800", "req": 4}',
    b'{"type": "send", "to": "*", "body": "\\udc00x\\ud800", "req": 5}',
    b'{"type": "send", "to": "*", "body": "\xed\xa0\x80", "req": 6}',
    b'{"type": "send", "to": "*", "body": "\xff", "req": 7}',
    b'{"type": "send", "to": "*", "body": "\xc3", "req": 8}',
    b'\xef\xbb\xbf{"type": "ping"}',
    b'{"type": "ping"} x',
    b'{"type": "ping"}\x00',
    b'{"type": "send", "to": "*", "body": "a\x01b"}',
    b'{"type": "send", "to": "*", "body": "a\x7fb", "req": 9}',
    b'{"type": "ping", "req": 01}',
    b'{"type": "ping", "req": 1.}',
    b'  {"type": "ping", "req": [1, 2.5, true, null, {}]}\r',
    b'[1, 2]',
    b'"ping"',
    b'{"type": 5}',
    b'{"type": "ping", "x": ' + b"[" * 5000 + b"0" + b"]" * 5000 + b"}",
]


def answers(lines, loads=None):
    """What alice (and bob, who gets her broadcasts) read after ``lines``."""
    service = make_service(UNLIMITED)
    alice, bob = hello(service, "alice"), hello(service, "bob", port=2)
    original = protocol._loads
    if loads is not None:
        protocol._loads = loads
    try:
        for line in lines:
            alice.send(line + b"\n")
    finally:
        protocol._loads = original
    return alice.transport.value(), bob.transport.value()


class ParseTests(unittest.TestCase):
    def test_every_line_answered_as_the_standard_parse_answered(self):
        for line in CORPUS:
            with self.subTest(line=line[:80]):
                self.assertEqual(answers([line]), answers([line], standard_loads))

    def test_the_corpus_in_one_stream(self):
        self.assertEqual(answers(CORPUS), answers(CORPUS, standard_loads))

    def test_what_the_swap_could_change(self):
        alice, bob = answers(CORPUS[:17])
        acks = [json.loads(line) for line in alice.splitlines()]
        got = [json.loads(line) for line in bob.splitlines()]
        by_req = {a.get("req"): a for a in acks}
        # big integers come back whole; a float that underflows is 0.0
        self.assertEqual(by_req[123456789012345678901234567890]["type"], "ack")
        self.assertEqual(by_req[-18446744073709551617]["type"], "ack")
        self.assertEqual(by_req[0.0]["type"], "ack")
        # out of float range (1e400, -1e400), digits past Python's int limit,
        # NaN and Infinity: bad_json, as before the swap
        self.assertEqual([a.get("error") for a in acks if "error" in a],
                         ["bad_json"] * 5 + ["bad_utf8", "bad_utf8"])
        # the last of duplicate keys wins; lone surrogates (escaped or
        # UTF-8 encoded) are taken, and go out escaped
        bodies = [m["body"] for m in got]
        self.assertEqual(bodies, ["h\u00e9llo \u2603 \U0001F600", "\u00e9\U0001F600", "x", "x",
                                  "x", "x", "last", "\ud800", "\udc00x\ud800", "\ud800"])
        self.assertIn(b'"body": "\\ud800"', bob)


class MessageIdTests(unittest.TestCase):
    def test_ids_are_the_seed_formula_on_non_ascii_bodies(self):
        service = make_service(UNLIMITED)
        alice, bob = hello(service, "alice"), hello(service, "b\u00f6b", port=2)
        bodies = ["h\u00e9llo", "\u2603 \U0001F600", "\u4e2d\u6587", "\ud800", "\x00\x7f\u0080"]
        for body in bodies:
            alice.send(json.dumps({"type": "send", "to": "b\u00f6b", "body": body},
                                  ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")
        alice.send(json.dumps({"type": "send", "to": "*", "body": "\u00e9", "nonce": "n\u00ef"},
                              ensure_ascii=False).encode() + b"\n")
        messages = [json.loads(line) for line in bob.transport.value().splitlines()]
        acks = [json.loads(line) for line in alice.transport.value().splitlines()]
        self.assertEqual([m["body"] for m in messages], bodies + ["\u00e9"])
        self.assertEqual([m["msg_id"] for m in messages], [a["msg_id"] for a in acks])
        for m in messages[:-1]:
            hashed = {k: m[k] for k in ("from", "to", "body", "timestamp", "seen_by")}
            self.assertEqual(m["msg_id"], hashlib.sha256(
                json.dumps(hashed, sort_keys=True).encode()).hexdigest())
        hashed = {"from": "alice", "to": "*", "body": "\u00e9", "nonce": "n\u00ef"}
        self.assertEqual(messages[-1]["msg_id"], hashlib.sha256(
            json.dumps(hashed, sort_keys=True).encode()).hexdigest())
