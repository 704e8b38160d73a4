"""relayd.jsonfast: what the standard module gives for valid JSON, ValueError for the rest."""
import json

from twisted.trial import unittest

from relayd import jsonfast

SAMPLES = [
    {"type": "message", "from": "alice", "to": "#room", "body": "h\u00e9llo \U0001F600 \u2028",
     "ts": 1734200000.123, "n": 12345678901234567890123, "ok": True, "none": None,
     "list": [1, 2.5, -0.0, "x", {"nested": []}]},
    [], "", 0, -1.5e-300,
]


class LoadsTests(unittest.TestCase):
    def test_same_objects_as_json_loads(self):
        for sample in SAMPLES:
            for text in (json.dumps(sample), json.dumps(sample, ensure_ascii=False),
                         json.dumps(sample, indent=2)):
                self.assertEqual(jsonfast.loads(text.encode("utf-8")), json.loads(text))
                self.assertEqual(jsonfast.loads(text), json.loads(text))

    def test_duplicate_keys_keep_the_last_as_json_loads_does(self):
        self.assertEqual(jsonfast.loads(b'{"a": 1, "a": 2}'), {"a": 2})

    def test_everything_not_strict_json_is_a_value_error(self):
        for data in (b"{not json", b'{"a": 1', b"\xff\xfe", b"[NaN]", b"[Infinity]", b"[1e400]",
                     b'["\\ud800"]', b"[" * 100000 + b"]" * 100000, b"", b"1 2"):
            self.assertRaises(ValueError, jsonfast.loads, data)


class LoadsOwnTests(unittest.TestCase):
    def test_what_json_dumps_wrote_reads_back_lone_surrogates_too(self):
        for value in ({"body": "\ud800x", "n": 1}, ["\udc00"], {"a": [1.5, None, True]}):
            self.assertEqual(jsonfast.loads_own(json.dumps(value).encode()), value)

    def test_malformed_is_still_a_value_error(self):
        for data in (b"{", b"[1,]", b"\xff", b"\"\xed\xa0\x80\"", b"[" * 100000 + b"]" * 100000):
            self.assertRaises(ValueError, jsonfast.loads_own, data)


class DumpsTests(unittest.TestCase):
    def test_compact_utf8_that_json_reads_back(self):
        for sample in SAMPLES:
            data = jsonfast.dumps_compact(sample)
            self.assertIsInstance(data, bytes)
            self.assertEqual(json.loads(data.decode("utf-8")), sample)
        self.assertEqual(jsonfast.dumps_compact({"a": [1, "\u00e9"]}), '{"a":[1,"\u00e9"]}'.encode())

    def test_what_utf8_cannot_carry_is_a_value_error(self):
        self.assertRaises(ValueError, jsonfast.dumps_compact, {"a": "\ud800"})
        self.assertRaises(ValueError, jsonfast.dumps_compact, {"a": object()})

    def test_dumps_own_writes_lone_surrogates_as_escapes(self):
        self.assertEqual(jsonfast.dumps_own({"a": [1, "\u00e9"]}), '{"a":[1,"\u00e9"]}'.encode())
        value = {"body": "x\ud800\u00e9", "seq": 2}
        self.assertEqual(jsonfast.dumps_own(value), b'{"body":"x\\ud800\\u00e9","seq":2}')
        self.assertEqual(jsonfast.loads_own(jsonfast.dumps_own(value)), value)
