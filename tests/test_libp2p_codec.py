"""varints, protobuf, keys and peer ids, multiaddrs, signed envelopes: spec vectors."""
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial import unittest

from relayd.libp2p import envelope, identify, messages, multiaddr, protobuf, varint
from relayd.libp2p.peerid import KeyPair, PeerId, b58decode, b58encode, decode_public_key

SPEC_KEY = bytes.fromhex("080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e")
SPEC_ID = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"


def seeded(seed):
    """rust-libp2p's ``ed25519_from_bytes([seed, 0, ...])``, as seed 004's relay does."""
    return KeyPair(Ed25519PrivateKey.from_private_bytes(bytes([seed]) + bytes(31)))


class VarintTests(unittest.TestCase):
    def test_spec_examples(self):
        # multiformats/unsigned-varint README
        for value, encoded in [(1, "01"), (127, "7f"), (128, "8001"), (255, "ff01"),
                               (300, "ac02"), (16384, "808001")]:
            self.assertEqual(varint.encode(value).hex(), encoded)
            self.assertEqual(varint.decode(bytes.fromhex(encoded)), (value, len(encoded) // 2))

    def test_incomplete_and_bad(self):
        self.assertRaises(varint.Incomplete, varint.decode, b"\x80")
        self.assertRaises(ValueError, varint.decode, b"\x81\x00")          # not minimal
        self.assertRaises(ValueError, varint.decode, b"\xff" * 10)
        self.assertRaises(ValueError, varint.encode, -1)

    def test_length_prefix_keeps_the_rest(self):
        self.assertEqual(varint.split_prefixed(b"\x03abcdef", 10), (b"abc", b"def"))
        self.assertIsNone(varint.split_prefixed(b"\x05abc", 10))
        self.assertRaises(ValueError, varint.split_prefixed, b"\x0bhello world", 10)


class ProtobufTests(unittest.TestCase):
    def test_round_trip_in_field_order(self):
        data = protobuf.encode([(1, 2), (2, b"ab"), (3, ["x", "y"]), (4, None), (5, 100)])
        self.assertEqual(data.hex(), "0802" "12026162" "1a0178" "1a0179" "2864")
        self.assertEqual(protobuf.decode(data), {1: [2], 2: [b"ab"], 3: [b"x", b"y"], 5: [100]})

    def test_skips_fixed_width_fields(self):
        data = bytes.fromhex("0d01020304" "0801")                        # fixed32 field 1, then 1=1
        self.assertEqual(protobuf.decode(data), {1: [1]})

    def test_malformed(self):
        for bad in (b"\x12\x05ab", b"\x08", b"\x0b", b"\x00\x01"):
            self.assertRaises(ValueError, protobuf.decode, bad)
        self.assertRaises(ValueError, protobuf.first_bytes, {1: [5]}, 1)

    def test_messages_with_wrong_field_types_are_value_errors(self):
        """A varint where bytes belong (or the reverse) is malformed, never a TypeError."""
        good = identify.encode(SPEC_KEY, ["/ip4/1.2.3.4/tcp/1"], ["/ipfs/ping/1.0.0"],
                               "/ip4/5.6.7.8/tcp/2", "x")
        self.assertEqual(identify.decode(good)["protocols"], ["/ipfs/ping/1.0.0"])
        for number in (1, 2, 3, 4, 6):
            self.assertRaises(ValueError, identify.decode, protobuf.encode([(number, 7)]))
        for number in (2, 3):                                   # repeated: every value counts
            self.assertRaises(ValueError, identify.decode, good + protobuf.encode([(number, 7)]))
        self.assertRaises(ValueError, messages.decode_limit, protobuf.encode([(1, b"x")]))
        self.assertRaises(ValueError, messages.decode_hop, protobuf.encode([(1, 1), (2, 5)]))


class PeerIdTests(unittest.TestCase):
    def test_spec_vector(self):
        peer = PeerId.from_public_key(SPEC_KEY)
        self.assertEqual(str(peer), SPEC_ID)
        self.assertEqual(peer.bytes, b"\x00\x24" + SPEC_KEY)
        self.assertEqual(PeerId.from_string(SPEC_ID), peer)
        self.assertEqual(peer.public_key(), SPEC_KEY)
        self.assertEqual(decode_public_key(SPEC_KEY), (1, SPEC_KEY[4:]))

    def test_seed_004_deterministic_relay_ids(self):
        expected = {0: "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
                    1: "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X",
                    2: "12D3KooWH3uVF6wv47WnArKHk5p6cvgCJEb74UTmxztmQDc298L3",
                    42: "12D3KooWR2KSRQWyanR1dPvnZkXt296xgf3FFn8135szya3zYYwY"}
        for seed, text in expected.items():
            self.assertEqual(str(seeded(seed).peer_id), text)

    def test_cid_form_is_accepted(self):
        # CIDv1, libp2p-key codec, base32: "b" + base32(01 72 <multihash>)
        import base64
        cid = "b" + base64.b32encode(b"\x01\x72" + b"\x00\x24" + SPEC_KEY).decode().lower().rstrip("=")
        self.assertEqual(str(PeerId.from_string(cid)), SPEC_ID)

    def test_sha256_ids_for_long_keys(self):
        peer = PeerId.from_public_key(b"\x08\x00\x12\x80\x02" + bytes(256))
        self.assertEqual(peer.bytes[:2], b"\x12\x20")
        self.assertIsNone(peer.public_key())
        self.assertTrue(str(peer).startswith("Qm"))

    def test_bad_ids(self):
        for text in ("", "0OIl", "12D3KooW", "bafzzzz"):
            self.assertRaises(ValueError, PeerId.from_string, text)

    def test_base58_leading_zeros(self):
        self.assertEqual(b58encode(b"\0\0\x01"), "112")
        self.assertEqual(b58decode("112"), b"\0\0\x01")


class MultiaddrTests(unittest.TestCase):
    def test_circuit_vector(self):
        text = f"/ip4/127.0.0.1/tcp/4001/p2p/{SPEC_ID}/p2p-circuit"
        binary = multiaddr.to_bytes(text)
        self.assertEqual(binary.hex(), "047f000001" "060fa1" "a50326" "0024" + SPEC_KEY.hex() + "a202")
        self.assertEqual(multiaddr.to_string(binary), text)

    def test_ip6_dns_and_ipfs_alias(self):
        self.assertEqual(multiaddr.to_string(multiaddr.to_bytes("/ip6/::1/tcp/1")), "/ip6/::1/tcp/1")
        self.assertEqual(multiaddr.to_string(multiaddr.to_bytes("/dns4/relay.example/tcp/4001")),
                         "/dns4/relay.example/tcp/4001")
        self.assertEqual(multiaddr.to_bytes(f"/ipfs/{SPEC_ID}"), multiaddr.to_bytes(f"/p2p/{SPEC_ID}"))

    def test_bad(self):
        for text in ("ip4/1.2.3.4", "/ip4/300.1.1.1", "/tcp/70000", "/foo/1", "/ip4"):
            self.assertRaises(ValueError, multiaddr.to_bytes, text)
        self.assertRaises(ValueError, multiaddr.to_string, b"\x04\x7f")
        self.assertRaises(ValueError, multiaddr.to_string, b"\x99\x01")

    def test_config_list(self):
        self.assertEqual(multiaddr.multiaddr_list("/ip4/1.2.3.4/tcp/1, /dns4/x/tcp/2"),
                         ["/ip4/1.2.3.4/tcp/1", "/dns4/x/tcp/2"])
        self.assertRaises(ValueError, multiaddr.multiaddr_list, "1.2.3.4:1")


class EnvelopeTests(unittest.TestCase):
    def test_voucher_verifies_and_is_canonical(self):
        relay, peer = seeded(7), seeded(8)
        sealed = envelope.voucher(relay, peer.peer_id, 1700000000)
        signer, payload_type, payload = envelope.open_envelope(sealed, envelope.VOUCHER_DOMAIN)
        self.assertEqual(signer, relay.peer_id)
        self.assertEqual(payload_type, b"\x03\x02")
        self.assertEqual(payload, protobuf.encode(
            [(1, relay.peer_id.bytes), (2, peer.peer_id.bytes), (3, 1700000000)]))
        # Ed25519 is deterministic, so the whole envelope is too
        self.assertEqual(sealed, envelope.voucher(relay, peer.peer_id, 1700000000))

    def test_tampering_and_wrong_domain_fail(self):
        relay, peer = seeded(7), seeded(8)
        sealed = envelope.voucher(relay, peer.peer_id, 1700000000)
        self.assertRaises(ValueError, envelope.open_envelope, sealed, b"libp2p-peer-record")
        tampered = sealed.replace(b"\x18\x80\xe2\xcf\xaa\x06", b"\x18\x81\xe2\xcf\xaa\x06")
        self.assertNotEqual(tampered, sealed)
        self.assertRaises(ValueError, envelope.open_envelope, tampered, envelope.VOUCHER_DOMAIN)


class KeyTypeTests(unittest.TestCase):
    """Peers may hold RSA, Secp256k1 or ECDSA keys; their signatures must verify."""

    def check(self, key_type, private, raw, sign):
        from relayd.libp2p.peerid import encode_public_key, verify
        proto = encode_public_key(raw, key_type)
        signature = sign(private, b"data")
        self.assertTrue(verify(proto, signature, b"data"))
        self.assertFalse(verify(proto, signature, b"other"))
        return PeerId.from_public_key(proto)

    def test_rsa_secp256k1_ecdsa(self):
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
        der = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        key = rsa.generate_private_key(65537, 2048)
        peer = self.check(0, key, key.public_key().public_bytes(*der),
                          lambda k, d: k.sign(d, padding.PKCS1v15(), hashes.SHA256()))
        self.assertTrue(str(peer).startswith("Qm"))                     # sha2-256 multihash
        ecdsa = (lambda k, d: k.sign(d, ec.ECDSA(hashes.SHA256())))
        key = ec.generate_private_key(ec.SECP256K1())
        point = key.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.CompressedPoint)
        self.assertTrue(str(self.check(2, key, point, ecdsa)).startswith("16Uiu2"))
        key = ec.generate_private_key(ec.SECP256R1())
        self.check(3, key, key.public_key().public_bytes(*der), ecdsa)

    def test_unknown_or_mismatched_types_fail(self):
        from relayd.libp2p.peerid import encode_public_key, verify
        self.assertFalse(verify(encode_public_key(bytes(32), 9), b"sig", b"data"))
        self.assertFalse(verify(encode_public_key(SPEC_KEY[4:], 0), b"sig", b"data"))
