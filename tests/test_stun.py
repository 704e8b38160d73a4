"""The STUN codec against the RFC 5769 test vectors, and the Binding server replies."""
import struct

from twisted.trial import unittest

from relayd.udp import stun


def unhex(text):
    return bytes.fromhex("".join(text.split()))


TXID = unhex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")

# RFC 5769 section 2.1: request with SOFTWARE, PRIORITY, ICE-CONTROLLED,
# USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
SAMPLE_REQUEST = unhex("""
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf""")

# RFC 5769 section 2.2: success response, XOR-MAPPED-ADDRESS 192.0.2.1:32853.
SAMPLE_IPV4_RESPONSE = unhex("""
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96""")

# RFC 5769 section 2.3: XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853.
SAMPLE_IPV6_RESPONSE = unhex("""
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c""")


class VectorTests(unittest.TestCase):
    def test_sample_request_parses_with_its_fingerprint(self):
        message = stun.parse(SAMPLE_REQUEST)
        self.assertEqual((message.method, message.cls), (stun.BINDING, stun.REQUEST))
        self.assertEqual(message.transaction_id, TXID)
        self.assertEqual(message.get(stun.SOFTWARE), b"STUN test client")
        self.assertEqual(message.get(stun.USERNAME), b"evtj:h6vY")
        self.assertEqual([t for t, _ in message.attributes],
                         [0x8022, 0x0024, 0x8029, 0x0006, 0x0008, 0x8028])

    def test_ipv4_response_decodes_to_the_rfc_address(self):
        message = stun.parse(SAMPLE_IPV4_RESPONSE)
        self.assertEqual((message.method, message.cls), (stun.BINDING, stun.SUCCESS))
        self.assertEqual(message.get(stun.SOFTWARE), b"test vector")
        self.assertEqual(stun.decode_xor_address(message.get(stun.XOR_MAPPED_ADDRESS), TXID),
                         ("192.0.2.1", 32853))

    def test_ipv6_response_decodes_to_the_rfc_address(self):
        message = stun.parse(SAMPLE_IPV6_RESPONSE)
        self.assertEqual(stun.decode_xor_address(message.get(stun.XOR_MAPPED_ADDRESS), TXID),
                         ("2001:db8:1234:5678:11:2233:4455:6677", 32853))

    def test_encoder_reproduces_the_vector_address_attributes(self):
        self.assertEqual(stun.xor_address("192.0.2.1", 32853, TXID), SAMPLE_IPV4_RESPONSE[40:48])
        self.assertEqual(stun.xor_address("2001:db8:1234:5678:11:2233:4455:6677", 32853, TXID),
                         SAMPLE_IPV6_RESPONSE[40:60])

    def test_fingerprint_matches_the_vectors(self):
        for vector in (SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE):
            self.assertEqual(stun.fingerprint(vector[:-8]), struct.unpack("!I", vector[-4:])[0])

    def test_message_type_round_trip(self):
        for method, cls in ((stun.BINDING, stun.REQUEST), (stun.BINDING, stun.ERROR),
                            (0xABC, stun.INDICATION), (0x003, stun.SUCCESS)):
            message = stun.parse(stun.encode(method, cls, TXID, []))
            self.assertEqual((message.method, message.cls), (method, cls))

    def test_encoded_response_is_what_the_sample_encodes(self):
        # SOFTWARE and MESSAGE-INTEGRITY aside, the encoder yields the same
        # header layout, address attribute and a valid FINGERPRINT.
        ours = stun.encode(stun.BINDING, stun.SUCCESS, TXID,
                           [(stun.XOR_MAPPED_ADDRESS, stun.xor_address("192.0.2.1", 32853, TXID))])
        self.assertEqual(ours[:2], SAMPLE_IPV4_RESPONSE[:2])
        self.assertEqual(ours[4:20], SAMPLE_IPV4_RESPONSE[4:20])
        self.assertEqual(stun.parse(ours).get(stun.XOR_MAPPED_ADDRESS), SAMPLE_IPV4_RESPONSE[40:48])


class MalformedTests(unittest.TestCase):
    def test_json_is_not_stun(self):
        self.assertFalse(stun.looks_like_stun(b'{"type": "register", "name": "alice"}'))
        self.assertFalse(stun.looks_like_stun(b"\x00\x01\x00\x00"))

    def test_bad_messages_raise(self):
        good = stun.encode(stun.BINDING, stun.REQUEST, TXID, [(stun.SOFTWARE, b"x")])
        corrupt_fp = good[:-1] + bytes([good[-1] ^ 1])
        bad_length = good[:2] + b"\x00\x07" + good[4:]
        truncated = good[:-3]
        overrun = stun.encode(stun.BINDING, stun.REQUEST, TXID, [], with_fingerprint=False)
        overrun = overrun[:2] + b"\x00\x04" + overrun[4:] + b"\x00\x06\x00\x09"
        fp_not_last = stun.encode(stun.BINDING, stun.REQUEST, TXID,
                                  [(stun.FINGERPRINT, b"\0\0\0\0"), (stun.SOFTWARE, b"ab")])
        for data in (corrupt_fp, bad_length, truncated, overrun, fp_not_last):
            self.assertRaises(stun.StunError, stun.parse, data)

    def test_bad_address_attribute(self):
        self.assertRaises(stun.StunError, stun.decode_xor_address, b"\x00\x03\x00\x00", TXID)
        self.assertRaises(stun.StunError, stun.decode_xor_address,
                          b"\x00\x02\x00\x00" + b"\x00" * 4, TXID)


class RespondTests(unittest.TestCase):
    def test_binding_success_carries_the_address_and_fingerprint(self):
        request = stun.parse(stun.encode(stun.BINDING, stun.REQUEST, TXID, []))
        reply = stun.respond(request, "203.0.113.7", 40000)
        message = stun.parse(reply)       # checks FINGERPRINT
        self.assertEqual(message.attributes[-1][0], stun.FINGERPRINT)
        self.assertEqual((message.cls, message.transaction_id), (stun.SUCCESS, TXID))
        self.assertEqual(stun.decode_xor_address(message.get(stun.XOR_MAPPED_ADDRESS), TXID),
                         ("203.0.113.7", 40000))

    def test_ipv4_mapped_sources_get_an_ipv4_address(self):
        request = stun.parse(stun.encode(stun.BINDING, stun.REQUEST, TXID, []))
        message = stun.parse(stun.respond(request, "::ffff:192.0.2.9", 1234))
        self.assertEqual(stun.decode_xor_address(message.get(stun.XOR_MAPPED_ADDRESS), TXID),
                         ("192.0.2.9", 1234))

    def test_unknown_required_attribute_gets_420(self):
        # The RFC 5769 request carries PRIORITY (0x0024), an ICE attribute a
        # plain Binding server does not understand.
        message = stun.parse(stun.respond(stun.parse(SAMPLE_REQUEST), "192.0.2.1", 32853))
        self.assertEqual(message.cls, stun.ERROR)
        self.assertEqual(message.get(stun.ERROR_CODE)[2:4], b"\x04\x14")
        self.assertEqual(message.get(stun.UNKNOWN_ATTRIBUTES), b"\x00\x24")

    def test_other_method_gets_400(self):
        message = stun.parse(stun.respond(stun.parse(stun.encode(0x003, stun.REQUEST, TXID, [])),
                                          "192.0.2.1", 1))
        self.assertEqual((message.method, message.cls), (0x003, stun.ERROR))
        self.assertEqual(message.get(stun.ERROR_CODE)[2:], b"\x04\x00Bad Request")

    def test_indications_and_responses_get_nothing(self):
        for cls in (stun.INDICATION, stun.SUCCESS, stun.ERROR):
            message = stun.parse(stun.encode(stun.BINDING, cls, TXID, []))
            self.assertIsNone(stun.respond(message, "192.0.2.1", 1))


CLASSIC_TXID = bytes(range(16))


def classic(attributes=b""):
    """An RFC 3489 Binding request: a 16-byte transaction id, no magic cookie."""
    return struct.pack("!HH", 0x0001, len(attributes)) + CLASSIC_TXID + attributes


class ClassicTests(unittest.TestCase):
    """RFC 3489 requests get a MAPPED-ADDRESS, but never more bytes than they sent."""

    USERNAME = struct.pack("!HH", 0x0006, 8) + b"classic!"
    NO_CHANGE = struct.pack("!HHI", stun.CHANGE_REQUEST, 4, 0)

    def test_recognised_apart_from_rfc_8489_and_json(self):
        self.assertTrue(stun.looks_like_classic(classic()))
        self.assertFalse(stun.looks_like_classic(stun.encode(stun.BINDING, stun.REQUEST, TXID, [])))
        self.assertFalse(stun.looks_like_classic(b'{"type": "ping", "pad": "xxxxxxxxxx"}'))
        self.assertFalse(stun.looks_like_classic(classic()[:-1]))

    def test_a_request_as_long_as_the_answer_gets_a_mapped_address(self):
        request = classic(self.NO_CHANGE + self.USERNAME)
        reply = stun.classic_response(request, "192.0.2.1", 32853)
        self.assertEqual(len(reply), 32)
        self.assertLessEqual(len(reply), len(request))
        self.assertEqual(reply[:4], b"\x01\x01\x00\x0c")
        self.assertEqual(reply[4:20], CLASSIC_TXID)
        self.assertEqual(reply[20:], struct.pack("!HHBBH4s", stun.MAPPED_ADDRESS, 8, 0, 1, 32853,
                                                 bytes([192, 0, 2, 1])))

    def test_no_answer_where_it_would_amplify_or_mislead(self):
        for request, host in ((classic(), "192.0.2.1"),                        # 20 < 32 bytes
                              (classic(self.NO_CHANGE), "192.0.2.1"),          # 28 < 32
                              (classic(struct.pack("!HHI", stun.CHANGE_REQUEST, 4, 6)
                                       + self.USERNAME), "192.0.2.1"),         # another address
                              (classic(self.USERNAME * 2), "2001:db8::1"),     # IPv4 only
                              (classic(self.USERNAME[:-4] + b"\0" * 4 + b"\x00\x06\x00\x09"),
                               "192.0.2.1")):                                  # overrun
            self.assertIsNone(stun.classic_response(request, host, 1))
