"""End-to-end encryption formats: known-answer vectors of the primitives and
HPKE, then sealing and opening direct and room messages."""
import json
from types import SimpleNamespace

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from twisted.trial import unittest

from relayd.e2ee import seal, wire
from relayd.e2ee.wire import BadEnvelope
from relayd.identity import Identity

H = bytes.fromhex


class Vectors(unittest.TestCase):
    def test_x25519_rfc7748_section_6_1(self):
        alice = X25519PrivateKey.from_private_bytes(
            H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
        bob_public = H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        self.assertEqual(alice.public_key().public_bytes_raw(),
                         H("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"))
        self.assertEqual(alice.exchange(X25519PublicKey.from_public_bytes(bob_public)),
                         H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"))

    def test_ed25519_rfc8032_test_1(self):
        key = Ed25519PrivateKey.from_private_bytes(
            H("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
        self.assertEqual(key.public_key().public_bytes_raw(),
                         H("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"))
        self.assertEqual(key.sign(b""), H(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
            "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"))

    def test_hpke_rfc9180_a_2_1_base_mode(self):
        """Our suite (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305)
        is the RFC's: the RFC's key schedule, written here with public
        primitives, opens its first encryption (the vectors use an AAD, which
        the library's public single-shot API leaves empty), and the library's
        ``Suite`` and that schedule open each other's sealing."""
        sk_r = X25519PrivateKey.from_private_bytes(
            H("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb"))
        self.assertEqual(sk_r.public_key().public_bytes_raw(),
                         H("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a"))
        enc = H("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a")
        ct = H("1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db"
               "21993c62ce81883d2dd1b51a28")
        info = H("4f6465206f6e2061204772656369616e2055726e")
        aead, nonce = rfc9180_first(enc, sk_r, info)
        self.assertEqual(aead.decrypt(nonce, ct, H("436f756e742d30")),
                         b"Beauty is truth, truth beauty")

        sealed = seal.SUITE.encrypt(b"from the library", sk_r.public_key(), info=info)
        aead, nonce = rfc9180_first(sealed[:32], sk_r, info)
        self.assertEqual(aead.decrypt(nonce, sealed[32:], b""), b"from the library")
        sk_e = X25519PrivateKey.generate()
        enc = sk_e.public_key().public_bytes_raw()
        aead, nonce = rfc9180_first(enc, sk_r, info, sk_e)
        ct = aead.encrypt(nonce, b"to the library", b"")
        self.assertEqual(seal.SUITE.decrypt(enc + ct, sk_r, info=info), b"to the library")


def _labeled(suite_id, label, data):
    return b"HPKE-v1" + suite_id + label + data


def _extract(suite_id, salt, label, ikm):
    mac = hmac.HMAC(salt or bytes(32), hashes.SHA256())
    mac.update(_labeled(suite_id, label, ikm))
    return mac.finalize()


def _expand(suite_id, prk, label, info, length):
    return HKDFExpand(hashes.SHA256(), length,
                      length.to_bytes(2, "big") + _labeled(suite_id, label, info)).derive(prk)


def rfc9180_first(enc, sk_r, info, sk_e=None):
    """``(ChaCha20Poly1305, nonce)`` of the first message of RFC 9180 base mode,
    DHKEM(X25519, HKDF-SHA256) (4.1, 5.1), HKDF-SHA256, ChaCha20Poly1305, for
    the receiver's ``sk_r`` (or, with ``sk_e``, the sender's ephemeral key)."""
    pk_r = sk_r.public_key()
    dh = (sk_e.exchange(pk_r) if sk_e is not None
          else sk_r.exchange(X25519PublicKey.from_public_bytes(enc)))
    kem = b"KEM\x00\x20"
    eae_prk = _extract(kem, b"", b"eae_prk", dh)
    shared = _expand(kem, eae_prk, b"shared_secret", enc + pk_r.public_bytes_raw(), 32)
    suite = b"HPKE\x00\x20\x00\x01\x00\x03"
    context = (b"\x00" + _extract(suite, b"", b"psk_id_hash", b"")
               + _extract(suite, b"", b"info_hash", info))
    secret = _extract(suite, shared, b"secret", b"")
    return (ChaCha20Poly1305(_expand(suite, secret, b"key", context, 32)),
            _expand(suite, secret, b"base_nonce", context, 12))    # sequence number 0


def identity(name):
    return Identity(name, Ed25519PrivateKey.generate())


class DirectMessages(unittest.TestCase):
    def setUp(self):
        self.alice = identity("alice")
        self.prekey = X25519PrivateKey.generate()
        self.raw = self.prekey.public_key().public_bytes_raw()

    def sealed(self, text="hello bob", which=seal.OPK):
        return seal.seal_dm(self.alice, "alice", "bob", self.raw, which,
                            {"k": "text", "body": text, "mid": "m1", "ts": 1.0})

    def open(self, body, sender="alice", recipient="bob"):
        kind, envelope = wire.parse_body(body)
        self.assertEqual(kind, wire.DM)
        return seal.open_dm(envelope, sender, recipient, self.prekey)

    def test_round_trip_names_sender_key_and_prekey(self):
        body = self.sealed()
        self.assertTrue(body.startswith("relayd-e2ee/1 dm "))
        self.assertNotIn("hello", body)
        which, kid = seal.dm_key(wire.parse_body(body)[1])
        self.assertEqual((which, kid), (seal.OPK, wire.key_id(self.raw)))
        content = self.open(body)
        self.assertEqual(content["body"], "hello bob")
        self.assertEqual(content["ik"], self.alice.public_bytes)

    def test_a_flipped_byte_anywhere_is_refused(self):
        envelope = bytearray(wire.parse_body(self.sealed())[1])
        for i in (0, 5, 12, 40, len(envelope) - 1):
            broken = bytearray(envelope)
            broken[i] ^= 1
            with self.assertRaises(BadEnvelope):
                seal.dm_key(bytes(broken))
                seal.open_dm(bytes(broken), "alice", "bob", self.prekey)

    def test_relabelled_sender_or_recipient_is_refused(self):
        body = self.sealed()
        with self.assertRaises(BadEnvelope):
            self.open(body, sender="mallory")
        with self.assertRaises(BadEnvelope):
            self.open(body, recipient="carol")

    def test_a_forged_signature_is_refused(self):
        """Someone who knows only the prekey (the relay) cannot sign as alice:
        sealing with another identity but claiming alice's key fails."""
        mallory = SimpleNamespace(public_b64=self.alice.public_b64,    # claims alice's key
                                  sign=identity("mallory").sign)       # signs with its own
        body = seal.seal_dm(mallory, "alice", "bob", self.raw, seal.OPK,
                            {"k": "text", "body": "x", "mid": "m", "ts": 1.0})
        with self.assertRaisesRegex(BadEnvelope, "signature"):
            self.open(body)

    def test_bodies_are_padded_to_buckets(self):
        sizes = {len(self.sealed("x" * n)) for n in (1, 10, 40)}
        self.assertEqual(len(sizes), 1)
        self.assertGreater(len(self.sealed("x" * 300)), max(sizes))


class Padding(unittest.TestCase):
    def test_buckets_and_round_trip(self):
        for n, size in ((0, 256), (252, 256), (253, 1024), (5000, 16384), (20000, 32768)):
            padded = wire.pad(b"a" * n)
            self.assertEqual(len(padded), size)
            self.assertEqual(wire.unpad(padded), b"a" * n)

    def test_bad_padding_is_refused(self):
        padded = bytearray(wire.pad(b"abc"))
        padded[-1] = 1
        with self.assertRaises(BadEnvelope):
            wire.unpad(bytes(padded))

    def test_context_parts_cannot_be_shifted(self):
        self.assertNotEqual(wire.context(b"l", "a|b", "c"), wire.context(b"l", "a", "b|c"))


class RoomMessages(unittest.TestCase):
    def test_round_trip_and_wrong_key_or_room(self):
        alice, key = identity("alice"), bytes(range(32))
        body = seal.seal_room(alice, "alice", "secret", 3, key,
                              {"k": "text", "body": "plans", "mid": "r1", "ts": 2.0})
        kind, envelope = wire.parse_body(body)
        self.assertEqual(kind, wire.ROOM)
        self.assertEqual(seal.room_epoch(envelope), (3, wire.key_id(key)))
        self.assertEqual(seal.open_room(envelope, "alice", "secret", key)["body"], "plans")
        with self.assertRaises(BadEnvelope):
            seal.open_room(envelope, "alice", "secret", bytes(32))
        with self.assertRaises(BadEnvelope):
            seal.open_room(envelope, "alice", "other", key)
        with self.assertRaises(BadEnvelope):
            seal.open_room(envelope, "bob", "secret", key)


class Prekeys(unittest.TestCase):
    def test_signed_prekey_checks(self):
        alice = identity("alice")
        raw = X25519PrivateKey.generate().public_key().public_bytes_raw()
        record = {"key": wire.b64(raw),
                  "sig": wire.b64(alice.sign(wire.prekey_text(wire.OPK_LABEL, "alice", raw)))}
        self.assertEqual(
            wire.check_prekey(record, wire.OPK_LABEL, "alice", alice.public_bytes), raw)
        for label, peer in ((wire.SPK_LABEL, "alice"), (wire.OPK_LABEL, "bob")):
            with self.assertRaises(BadEnvelope):
                wire.check_prekey(record, label, peer, alice.public_bytes)
        with self.assertRaises(BadEnvelope):
            wire.check_prekey(json.loads('{"key": "!!", "sig": ""}'), wire.OPK_LABEL, "alice",
                              alice.public_bytes)
